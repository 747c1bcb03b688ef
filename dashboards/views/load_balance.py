"""Load balance: layer x expert relative load, per-layer balance metrics, load over the run's batches
and the balancing bias beside the loads. A training run's page covers its last N steps (the slider):
every figure and number on it, totals and per-step views alike."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards import charts, compute, data, ui

# the balance table's columns in pixels, within the page's column at 1024 px less a vertical scroll bar
# (`ui.PAGE_PX`; a model of 58 MoE layers scrolls): sized to their headers, the seven took 596 px of its 562
# and Gini scrolled out of view (a tour). Three headers shortened, their whole names in their help
BALANCE_COLUMNS = {"layer": 70, "maxvio_global": 76, "maxvio_batch_mean": 112, "balancedness": 102, "cv": 52,
                   "normalised_entropy": 72, "gini": 52}
SHORT = {"maxvio_global": ("MaxVio", "MaxVio (global): (max − mean) / mean of the layer's loads summed over the "
                                     "steps shown"),
         "maxvio_batch_mean": ("MaxVio (batch)", "MaxVio (batch mean): each batch's MaxVio, averaged over the batches"),
         "normalised_entropy": ("entropy", "norm. entropy: the entropy of the experts' load shares / ln N")}


def metric_column(c: str):
    """The balance table's column of metric `c`: three decimals, under its short header (`SHORT`) if it has one."""
    label, help_ = SHORT.get(c, (None, None))
    return st.column_config.NumberColumn(format="%.3f", label=label, help=help_)


def n_experts(ref: data.RunRef, loads) -> int:
    return int((ref.info.get("model_args") or {}).get("n_routed_experts") or loads["expert"].max() + 1)


def step_word(ref: data.RunRef) -> str:
    """What one step of expert_load is: a training step, a recorded batch, or a server's forward pass."""
    return "step" if ref.kind == "train" else "forward pass" if (ref.info.get("source") or {}).get("name") else "batch"


def balance_section(ref: data.RunRef, loads, by_step, E: int, what: str) -> None:
    """The balance metrics per layer as a table (per-GPU views for a chosen GPU count), MaxVio
    (global) per layer, and MaxVio per batch; `what` names the steps they cover."""
    with ui.guard("the balance metrics"):
        st.subheader(f"Balance per layer, {what}")
        choices = compute.gpu_choices(E)
        gpus = st.selectbox("GPUs (expert parallel)", [None, *choices], key="lb_gpus", disabled=not choices,
                            format_func=lambda g: (f"{g} GPUs, {E // g} expert{'s' if E // g > 1 else ''} each"
                                                   if g else "none: per expert"),
                            help="Per-GPU loads of the contiguous placement (experts split in order, no replicas): "
                                 "adds the imbalance ratio (max / mean − 1 of the GPU loads, averaged over "
                                 "batches, as TensorRT-LLM's EP load balancer reports it) and the per-GPU "
                                 "balancedness. The Serving page replays real placements.")
        table = compute.balance_rows(loads, by_step, E, gpus)
        labels = compute.balance_columns(gpus)
        st.caption("MaxVio = (max − mean) / mean load (Wang et al. 2024); balancedness = mean / max; "
                   "entropy normalised by ln N. Definitions: `analyses.metrics`, docs/metrics.md.")
        # the per-GPU columns in a table of their own: beside the seven per-expert ones the table scrolled
        # sideways and cut the last column off at a laptop's width (a dashboard review)
        per_gpu = [c for c in ("imbalance_ratio", "gpu_balancedness") if c in labels and c in table.columns]
        cols = ["layer"] + [c for c in labels if c not in per_gpu and c in table.columns]
        ui.wrapped_table(table[cols].rename(columns=labels), {labels.get(c, c): BALANCE_COLUMNS[c] for c in cols},
                         {labels[c]: metric_column(c) for c in cols[1:]}, key="lb_table")
        if per_gpu:
            st.dataframe(table[["layer", *per_gpu]].rename(columns=labels), hide_index=True, width="stretch",
                         key="lb_gpu_table",
                         column_config={labels[c]: st.column_config.NumberColumn(format="%.3f") for c in per_gpu})
    left, right = st.columns([1, 2])
    with left, ui.guard("the MaxVio bars"):
        st.plotly_chart(charts.bars(table.layer, table.maxvio_global, title="MaxVio (global) per layer",
                                    xlabel="layer", ylabel="MaxVio", colors="#E45756", height=340), key="maxvio_bars")
    one = one_step_note(ref, by_step, what)
    if one:
        right.caption(one)
    elif by_step is not None and len(by_step):
        with right, ui.guard("the load over batches"):
            mv = compute.maxvio_over_steps(by_step, E)
            series = {lab: (g.step, g.maxvio) for lab, g in mv.groupby("layer", sort=False)}
            xl = step_word(ref)
            few = mv.step.nunique() < 3  # a line of one or two points draws (next to) nothing: mark them
            st.plotly_chart(charts.lines(series, title=f"MaxVio per {xl}, {what}", xlabel=xl, markers=few,
                                         ylabel=f"MaxVio of the {xl}", height=340), key="maxvio_steps")
            note = batch_order_note(ref)
            if note:
                st.caption(note)


def one_step_note(ref: data.RunRef, by_step, what: str) -> str | None:
    """Why the page draws no load over steps: the steps it covers are one (a run under one batch of
    windows, a dump of one forward pass, a training window of one step), whose chart of one point a
    layer showed no change and whose MaxVio equals the global one. None for two steps or more."""
    if by_step is None or not len(by_step) or by_step["step"].nunique() > 1:
        return None
    xl, size = step_word(ref), (ref.info.get("options") or {}).get("batch_size")
    plural = "steps" if xl == "step" else f"{xl}es"
    return (f"One {xl} ({what}): no load over {plural} to draw, and its MaxVio is the global one."
            # no `--batch-size 8` code span: the caption's narrow column broke it after its first hyphen
            + (f" A run of more windows than its batch size ({size}) shows whether the same experts stay hot "
               f"from {xl} to {xl}." if xl == "batch" and size else ""))


def batch_order_note(ref: data.RunRef) -> str | None:
    """What else moves along a recorded run's batch axis: the batches' domain mix (a rise at the end
    of a run read as routing drift; a review). None for training runs, imports and one-domain runs."""
    if ref.kind == "train" or (ref.info.get("source") or {}).get("name") or len(ref.info.get("domains") or []) < 2:
        return None
    if (ref.info.get("options") or {}).get("order", "corpus") == "domains":
        return ("Batches follow the record's `--order domains`: the domains take turns until the smaller ones run "
                "out, so the last batches hold only the largest ones. A change along this axis can be the batches' "
                "domain mix rather than a change of routing.")
    return ("Batches follow the corpus order (`--order corpus`): each domain's documents come together, so the "
            "load follows the domain being read.")


def load_and_bias(ref: data.RunRef, layer: str, rel_E, raw_E, E: int, what: str = "whole run") -> None:
    """One layer's relative load per expert over `what` (the steps the page sums), with its balancing
    bias below when the run has one."""
    b = data.bias(ref)
    b = b[b.layer == layer]
    has_bias = len(b) > 0 and bool((b.bias != 0).any())  # all zero: trained without one (--balance none)
    fig = make_subplots(rows=2 if has_bias else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.6, 0.4] if has_bias else None)
    fig.add_trace(go.Bar(x=list(range(E)), y=rel_E, marker_color=[charts.expert_color(e) for e in range(E)],
                         customdata=raw_E, name="relative load",
                         hovertemplate="expert %{x}<br>relative load %{y:.3f}<br>assignments %{customdata:,}"
                                       "<extra></extra>"), row=1, col=1)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555", row=1, col=1)
    fig.update_yaxes(title_text="relative load", row=1, col=1)
    if has_bias:
        fig.add_trace(go.Bar(x=b.expert, y=b.bias, marker_color="#72B7B2", name="bias",
                             hovertemplate="expert %{x}<br>bias %{y:.5f}<extra></extra>"), row=2, col=1)
        fig.update_yaxes(title_text="bias", row=2, col=1)
        corr = np.corrcoef(rel_E[b.expert.to_numpy()], b.bias)[0, 1] if len(b) > 1 else np.nan
    fig.update_xaxes(title_text="expert", type="category", row=2 if has_bias else 1, col=1)
    src = "at the last step" if ref.kind == "train" else "of the checkpoint"
    # the load is summed over the page's window, the bias is one step's: a title saying "at the last step"
    # for both read as the last step's load (a dashboard tour)
    title = f"{layer}: relative load ({what})" + (f" and balancing bias {src}" if has_bias else "")
    st.plotly_chart(charts.fit_title(charts.style(fig, title, 460, showlegend=False), 0.6), key="load_bias")
    if has_bias:
        st.caption(f"Correlation of relative load and bias across experts: {corr:+.2f}. The bias is added to "
                   "the selection score only, so a higher bias means more tokens; aux-loss-free balancing "
                   "lowers the bias of overloaded experts until the loads even out.")
    elif len(b):
        st.caption("The balancing bias is zero for every expert: a model trained without aux-loss-free "
                   "balancing, or one whose bias was zeroed (e.g. `analyses.variants no-router-bias`).")
    elif (ref.info.get("source") or {}).get("name"):
        held = "loads and routes" if data.has_table(ref, "routing") else "loads"  # a stat or per_pass dump: loads only
        st.caption(f"No balancing bias: a serving engine's dump records {held}, not the router's bias.")
    else:
        st.caption("No balancing bias found (the checkpoint is not readable from here, or has none).")


def load_per_batch(ref: data.RunRef, layer: str, by_step, E: int) -> None:
    """One layer's relative load per expert in each batch (at most ~300 rows drawn)."""
    steps, tb = compute.batch_table(by_step, layer, E)
    every = max(1, len(steps) // 300)
    relb = np.array([compute.metric("relative_load")(r) if r.sum() > 0 else np.full(E, np.nan)
                     for r in tb[::every]])
    st.plotly_chart(charts.heatmap(relb, list(range(E)), steps[::every],
                                   title=f"{layer}: relative load per {step_word(ref)}", xlabel="expert",
                                   ylabel=step_word(ref), zlabel="relative load",
                                   colorscale=charts.DIVERGING, zmid=1.0, fmt=".3f", height=460,
                                   y_numeric=True),
                    key="load_steps")


def main() -> None:
    st.title("Load balance")
    ref = ui.selected_run()
    if ref is None:
        return
    window = None
    steps = int(ref.info.get("step") or 0)
    if ref.kind == "train" and steps > 1:  # a run at step 0 or 1 has no window to choose (a 1..1 slider fails)
        window = st.slider("Loads summed over the last N steps", 1, steps, min(50, steps), key="lb_window")
    loads = ui.rows("the load heatmap", lambda: data.total_loads(ref, window), "No expert loads recorded yet.")
    if loads is None:
        return
    E = n_experts(ref, loads)
    layers, rel = compute.relative_loads(loads, E)
    _, raw = compute.load_matrix(loads, E)
    what = ("last step" if window == 1 else f"last {window} steps") if window else "whole run"
    with ui.guard("the load heatmap"):
        st.plotly_chart(charts.heatmap(
            rel, list(range(E)), layers, title=f"Relative load (load / mean load), {what}", xlabel="expert",
            ylabel="", zlabel="relative load", colorscale=charts.DIVERGING, zmid=1.0, fmt=".3f",
            customdata=raw, extra_hover="<br>assignments: %{customdata:,}"), key="rel_heatmap")

    by_step = None
    with ui.guard("the per-batch loads"):
        by_step = compute.last_steps(data.loads_by_step(ref), window)  # the steps `loads` sums
    balance_section(ref, loads, by_step, E, what)

    st.subheader("One layer")
    layer = ui.layer_picker(layers, "lb_layer")
    if layer is None:
        return
    c1, c2 = st.columns([3, 2])
    i = layers.index(layer)
    with c1, ui.guard("the loads and bias"):
        load_and_bias(ref, layer, rel[i], raw[i], E, what)
    with c2, ui.guard("the per-batch loads"):
        if by_step is not None and len(by_step) and not one_step_note(ref, by_step, what):
            load_per_batch(ref, layer, by_step, E)


with ui.guard("this page"):
    main()
