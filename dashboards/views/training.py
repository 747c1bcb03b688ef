"""Training: the dynamics of a run written by `python -m model.train` (loss per domain, MaxVio per
gate, the balancing bias over steps, learning rate and throughput)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards import charts, compute, data, training_data, ui
from dashboards.training_data import smooth


def has_rows(ev) -> bool:
    """Whether the evaluation metrics were read and hold a step."""
    return ev is not None and len(ev) > 0


def headline(info: dict, tm, ev) -> None:
    """One row of figures: step, tokens seen, recent and validation loss, the balancing mode."""
    last = tm.iloc[-1]
    m = st.columns(5)
    m[0].metric("Step", f"{int(last.step):,} / {info.get('steps', '?')}")
    m[1].metric("Tokens seen", f"{int(last.tokens_seen):,}")
    m[2].metric("LM loss (last 20)", f"{tm.lm_loss.tail(20).mean():.3f}")
    m[3].metric("Val loss", f"{ev.val_loss.iloc[-1]:.3f}" if has_rows(ev) else "—")
    m[4].metric("Balancing", str((info.get("flags") or {}).get("balance", "?")))


def eval_markers(fig, ev, col: str, color, hover: str, name: str | None = None, size: int = 8) -> None:
    """Diamonds for the evaluation column `col` (when the evaluations have it); a `name` puts them
    in the legend."""
    if col in ev:
        fig.add_trace(go.Scatter(x=ev.step, y=ev[col], mode="markers", name=name, showlegend=name is not None,
                                 marker=dict(size=size, color=color, symbol="diamond"),
                                 hovertemplate=hover + "<extra></extra>"))


def loss_charts(tm, ev, domains: list[str], w: int) -> None:
    """The LM and MTP losses, and the loss per domain, with the validation losses as diamonds."""
    left, right = st.columns(2)
    names = {"lm_loss": "LM loss", "mtp_loss": "MTP loss"}  # the legend named the columns (a tour)
    series = {names[k]: (tm.step, smooth(tm[k], w)) for k in names if k in tm}
    fig = charts.lines(series, title="Loss", xlabel="step", ylabel="nats", colors={"LM loss": "#4C78A8",
                                                                                   "MTP loss": "#B279A2"})
    if has_rows(ev):
        eval_markers(fig, ev, "val_loss", "#E45756", "step %{x}<br>val loss %{y:.4f}", name="val loss", size=9)
    left.plotly_chart(fig, key="loss")
    colors = ui.domain_colors()
    per = {d: (tm.step, smooth(tm[f"loss_{d}"].astype(float).interpolate(limit_area="inside"), w))
           for d in domains if f"loss_{d}" in tm}
    fig = charts.lines(per, title="Training loss per domain", xlabel="step", ylabel="nats", colors=colors)
    if has_rows(ev):
        for d in domains:
            eval_markers(fig, ev, f"val_loss_{d}", colors.get(d), f"{d}<br>step %{{x}}<br>val loss %{{y:.4f}}")
    right.plotly_chart(fig, key="loss_domain")


def balance_charts(tm, ev, gates: dict[str, str], w: int) -> None:
    """MaxVio per gate (validation MaxVio_global as diamonds) and the norm of each gate's bias; `gates`:
    run.json's gate name -> its label."""
    gcolors = {g: charts.EXPERT_PALETTE[i % len(charts.EXPERT_PALETTE)] for i, g in enumerate(gates.values())}
    left, right = st.columns(2)
    mv = {gates[g]: (tm.step, smooth(tm[f"maxvio_{g}"], w)) for g in gates if f"maxvio_{g}" in tm}
    fig = charts.lines(mv, title="MaxVio_batch per gate", xlabel="step", ylabel="MaxVio", colors=gcolors)
    if has_rows(ev):
        for g in gates:
            eval_markers(fig, ev, f"val_maxvio_{g}", gcolors[gates[g]],
                         f"{gates[g]}<br>step %{{x}}<br>MaxVio_global (val) %{{y:.3f}}")
    left.plotly_chart(fig, key="maxvio")
    bn = {gates[g]: (tm.step, tm[f"bias_norm_{g}"]) for g in gates if f"bias_norm_{g}" in tm}
    right.plotly_chart(charts.lines(bn, title="Balancing bias norm per gate", xlabel="step", ylabel="‖bias‖",
                                    colors=gcolors), key="bias_norm")
    st.caption("Lines: per training batch, averaged over the smoothing window centred on each step (the bias "
               "norm as logged); diamonds: the validation set (its loss, per domain too, and MaxVio_global).")


def gate_over_steps(ref, info: dict, tm, gates: dict[str, str]) -> None:
    """One gate's per-expert bias and relative load over the steps, as two heatmaps."""
    gate = st.selectbox("Gate", list(gates), key="tr_gate", format_func=gates.get)
    steps = int(info.get("step") or tm.step.max())
    # at most ~200 rows of the steps the run logged loads at (`--load-every N`: N, 2N, ...): a stride counted
    # over every step kept every other logged step of a 420-step run of --load-every 7 (a hunt)
    logged = max(1, int((info.get("flags") or {}).get("load_every") or 1))
    bb = training_data.bias_by_step(ref, gate, logged * max(1, steps // logged // 200))
    if bb.empty:
        st.info("No per-expert loads logged for this gate.")
        return
    E = int(bb.expert.max()) + 1
    bias_m = bb.pivot_table(index="step", columns="expert", values="bias").reindex(columns=range(E))
    load_m = bb.pivot_table(index="step", columns="expert", values="load", fill_value=0).reindex(
        columns=range(E), fill_value=0)
    rel = np.array([compute.metric("relative_load")(r) if r.sum() > 0 else np.full(E, np.nan)
                    for r in load_m.to_numpy(float)])
    left, right = st.columns(2)
    lim = float(np.nanmax(np.abs(bias_m.to_numpy()))) or 1.0
    left.plotly_chart(charts.heatmap(bias_m.to_numpy(), list(range(E)), bias_m.index, title=f"{gates[gate]}: bias",
                                     xlabel="expert", ylabel="step", zlabel="bias", colorscale="PuOr", zmid=0,
                                     fmt=".4f", height=460, y_numeric=True).update_traces(zmin=-lim, zmax=lim),
                      key="bias_heat")
    right.plotly_chart(charts.heatmap(rel, list(range(E)), load_m.index, title=f"{gates[gate]}: relative load",
                                      xlabel="expert", ylabel="step", zlabel="relative load",
                                      colorscale=charts.DIVERGING, zmid=1.0, fmt=".3f", height=460,
                                      y_numeric=True),
                       key="load_heat")


def settled_bias(info: dict, gates: dict[str, str]) -> None:
    """MaxVio of each gate's pooled loads over the bias settling after the last step (run.json's
    `bias_settle`), where the run had one. NOTE: the shipped model carries the settled bias, which no
    table holds (router_bias ends at the last step), and the page said nothing of the phase (a tour)."""
    settle = info.get("bias_settle") or {}
    history = settle.get("maxvio_pooled") if isinstance(settle, dict) else None
    if not isinstance(history, dict) or not all(isinstance(h, list) for h in history.values()):
        if settle:  # a hand-edited or foreign run.json: one line, not a Python error
            raise data.DataError("run.json's bias_settle has no maxvio_pooled mapping of each gate to its MaxVio "
                                 "values")
        return
    pooled = {g: h for g, h in history.items() if h}
    if not pooled:
        return
    st.subheader("The bias settled after the last step")
    colors = {label: charts.EXPERT_PALETTE[i % len(charts.EXPERT_PALETTE)] for i, label in enumerate(gates.values())}
    series = {gates.get(g, g): (list(range(len(h))), h) for g, h in pooled.items()}
    st.plotly_chart(charts.lines(series, title="MaxVio of pooled loads while the bias settled", xlabel="settle update",
                                 ylabel="MaxVio", colors=colors, height=300), key="settle")
    st.caption(settle_caption(settle, pooled))


def settle_caption(settle: dict, pooled: dict[str, list]) -> str:
    """What the settling chart's points are. A run trained before the measure after the last update (train/
    balance.py settle_biases: `updates` + 1 values a gate) holds `updates` values, the last taken before the
    last update: the caption called it where the bias settled, which that run never measured."""
    updates, per, took = settle.get("updates"), settle.get("batches_per_update"), settle.get("seconds")
    older = isinstance(updates, int) and all(len(h) == updates for h in pooled.values())
    last = ("the last point the loads before the last update (this run predates the measure after it: where the "
            "bias settled was not measured)" if older else "the last point where it settled")
    return (f"With the weights frozen, the bias moved {updates if updates is not None else '?'} times by a step "
            f"decaying to 0, each on the loads pooled over {per or '?'} fresh training batches; update 0 is where "
            f"training left it, {last}" + (f" ({took:.0f} s)" if isinstance(took, (int, float)) else "")
            + ". The run's model carries the settled bias; the bias heatmap above ends at the last training step.")


def lr_and_throughput(tm, w: int) -> None:
    left, right = st.columns(2)
    left.plotly_chart(charts.lines({"lr": (tm.step, tm.lr)}, title="Learning rate", xlabel="step", ylabel="lr",
                                   fmt=".2e", height=280), key="lr")
    right.plotly_chart(charts.lines({"tokens/s": (tm.step, smooth(tm.tokens_per_s, w))}, title="Throughput",
                                    xlabel="step", ylabel="tokens/s", fmt=",.0f", height=280), key="tps")


def main() -> None:
    st.title("Training")
    ref = ui.selected_run(("train",))
    if ref is None:
        return
    info = ref.info
    tm = ui.rows("the training metrics", lambda: training_data.train_metrics(ref), "No steps logged yet.")
    if tm is None:
        return
    gates = {g: data.layer_label(ref, data.layer_number(ref, g))
             for g in info.get("gates") or [c[7:] for c in tm.columns if c.startswith("maxvio_")]}
    w = 10
    with ui.guard("the training curves"):
        ev = None
        with ui.guard("the evaluation metrics"):
            ev = training_data.eval_metrics(ref)
        headline(info, tm, ev)
        w = st.slider("Smoothing (steps)", 1, 100, 10, key="tr_smooth")
        domains = sorted(info.get("domains") or [c[5:] for c in tm.columns if c.startswith("loss_")])
        loss_charts(tm, ev, domains, w)
        balance_charts(tm, ev, gates, w)

    st.subheader("Bias and load of one gate over steps")
    with ui.guard("the per-expert bias"):
        gate_over_steps(ref, info, tm, gates)
    with ui.guard("the bias settling"):
        settled_bias(info, gates)
    with st.expander("Learning rate and throughput"):
        lr_and_throughput(tm, w)


with ui.guard("this page"):
    main()
