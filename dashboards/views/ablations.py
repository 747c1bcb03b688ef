"""Ablations: the loss change of each ablation per domain, and the masked-fraction curve (loss change
against the share of routed experts disabled), from the `ablations` table of `analyses.ablate`; and
the causal importance of each expert (`expert_importance`, `analyses.importance`) against its load."""

from __future__ import annotations

import json
import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analyses.metrics._common import listed
from dashboards import charts, compute, data, ui


MASKED_CAPTION = ("Each point is one ablation, named as its command named it (`--top 4 --control` writes `top4` and "
                  "`top4-control`). Mode: reroute, each token's top-k chosen again among the experts left; zero, "
                  "the disabled experts' outputs dropped. Rule: top-N, each layer's N most loaded experts (by the "
                  "run's loads, or by the evaluated tokens' with `--loads-from baseline`: the run's domain mix can "
                  "differ from the sample's); random, N drawn at random per layer (the control); chosen, experts "
                  "named with `--experts`; token top-R, each token's own R best experts (`--token-top R`, "
                  "DeepSeekMoE's Figure 4: its x-axis is this share, R / E).")


def masked_caption(pooled: pd.DataFrame) -> str:
    """MASKED_CAPTION, and where every (mode, rule) has one size only, that its points are no curve yet."""
    one_each = pooled.groupby(["mode", "rule"]).frac.nunique().max() < 2
    return MASKED_CAPTION + (" Each rule has one size here, so each is one point: a curve needs several sizes "
                             "(`--spec analyses/sweeps/top_vs_random.yaml`)." if one_each else "")


def rule_of(spec: str) -> str:
    """The selection rule of an ablation's spec JSON: top-N, random, each token's own top-R or chosen experts."""
    try:
        s = json.loads(spec) if isinstance(spec, str) else {}
    except ValueError:
        return "?"
    s = s.get("ablation", s) if isinstance(s, dict) else {}
    if s.get("top"):
        return f"top-N{' (' + s['domain'] + ')' if s.get('domain') else ''}"
    if s.get("random"):
        return "random"
    if s.get("token_top"):
        return "token top-R"
    if s.get("shared") and not s.get("experts"):
        return "shared"
    return "chosen"


def main() -> None:
    st.title("Ablations")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    sweep(ref)
    importance(ref)


def one_evaluation(ref: data.RunRef, ab):
    """The rows of one command (part file) when several wrote ablations: each evaluated its own tokens,
    so their rows, often under the same names, must not be averaged together. The latest by default."""
    if "part" not in ab or ab.part.nunique() <= 1:
        return ab
    parts = (ref.info.get("ablation_parts") or {})
    order = sorted(ab.part.unique(), key=lambda p: -float((parts.get(p) or {}).get("written") or 0))

    def label(p: str) -> str:
        rows = ab[ab.part == p]
        toks = rows[rows.domain == "all"].tokens.max() if (rows.domain == "all").any() else rows.tokens.sum()
        when = (parts.get(p) or {}).get("written")
        stamp = time.strftime(" · %Y-%m-%d %H:%M", time.localtime(when)) if when else ""
        pending = (parts.get(p) or {}).get("pending")  # a sweep interrupted (analyses/ablate/sweep.py)
        left = f", unfinished: {len(pending)} to go" if pending else ""
        return f"{rows.ablation.nunique()} ablations on {int(toks):,} tokens{stamp}{left} ({p[:6]})"

    st.caption(f"{len(order)} commands wrote ablations into this run, each on its own tokens: one is shown at a time.")
    pick = st.selectbox("Evaluation", order, format_func=label, key="abl_part")
    return ab[ab.part == pick].drop(columns="part")


def sweep(ref: data.RunRef) -> None:
    """The `ablations` table: loss change per domain and the masked-fraction curve."""
    missing = (f"Run `{ref.name}` has no ablations yet. Run a sweep over it, e.g. top-4 against random-4, with"
               + ui.command_block(ui.analysis_command(ref, 'ablate', '--top 4 --control'))
               + "It writes `ablations/` into the run directory; the results appear here.")
    with ui.guard("the ablation results"):
        ab = ui.result_table(ref, "ablations", data.ablations, missing)
        if ab is None:
            return
        ab = one_evaluation(ref, ab)
        name = "ablation" if "ablation" in ab.columns else "name"
        ab["rule"] = ab["spec"].map(rule_of) if "spec" in ab.columns else "?"
        colors = ui.domain_colors()
        per = ab[ab.domain != "all"] if (ab.domain != "all").any() else ab
        if per[name].nunique() > 6:  # many ablations: a heatmap reads better than grouped bars
            t = per.pivot_table(index=name, columns="domain", values="delta", aggfunc="mean")
            t = t.loc[per.drop_duplicates(name)[name]]  # the sweep's order
            st.plotly_chart(charts.heatmap(t.to_numpy(), list(t.columns), list(t.index),
                                           title="Loss change per domain for each ablation (nats)", xlabel="domain",
                                           ylabel="ablation", zlabel="Δ loss", colorscale=charts.DIVERGING, zmid=0.0,
                                           fmt="+.4f"), key="delta_domain")
        else:
            fig = go.Figure()
            for dom, g in per.groupby("domain"):
                fig.add_trace(go.Bar(x=g[name], y=g.delta, name=dom, marker_color=colors.get(dom),
                                     customdata=g[["loss", "baseline_loss", "tokens"]].to_numpy(),
                                     hovertemplate=f"{dom} · %{{x}}<br>Δ loss %{{y:+.4f}} nats<br>"
                                                   "loss %{customdata[0]:.4f} vs %{customdata[1]:.4f}"
                                                   "<br>tokens %{customdata[2]:,}<extra></extra>"))
            fig.update_layout(barmode="group")
            fig.update_yaxes(title="Δ loss (nats)")
            fig.add_hline(y=0, line_color="#444")
            st.plotly_chart(charts.style(fig, "Loss change per domain for each ablation", 420), key="delta_domain")

        pooled = ab[ab.domain == "all"] if (ab.domain == "all").any() else \
            ab.groupby([name, "mode", "rule", "n_disabled"], as_index=False).delta.mean()
        E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or 0)
        n_layers = len(data.moe_layers(ref)) or 1
        pooled = pooled.assign(frac=pooled.n_disabled / (E * n_layers) if E else pooled.n_disabled)
        xl = "share of routed experts disabled" if E else "experts disabled"
        fig = go.Figure()
        for i, ((mode, rule), g) in enumerate(pooled.groupby(["mode", "rule"])):
            color = charts.DOMAIN_PALETTE[i % len(charts.DOMAIN_PALETTE)]
            mean = g.groupby("frac", as_index=False).delta.mean()  # repeated draws (seeds) averaged
            fig.add_trace(go.Scatter(x=mean.frac, y=mean.delta, mode="lines+markers", name=f"{mode} · {rule}",
                                     line=dict(color=color), legendgroup=f"{mode}{rule}", hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=g.frac, y=g.delta, mode="markers", marker=dict(color=color, size=8),
                                     legendgroup=f"{mode}{rule}", showlegend=False,
                                     customdata=g[[name, "n_disabled"]].to_numpy(),
                                     hovertemplate="%{customdata[0]}<br>" + xl + " %{x:.3f} (%{customdata[1]})"
                                                   "<br>Δ loss %{y:+.4f} nats<extra></extra>"))
        fig.update_xaxes(title=xl, tickformat=".0%" if E else None, rangemode="tozero")  # no negative shares
        fig.update_yaxes(title="Δ loss, all tokens (nats)", rangemode="tozero")  # a 0.0005 gap looked large
        st.plotly_chart(charts.style(fig, "Masked-fraction curve", 400), key="masked_curve")
        st.caption(masked_caption(pooled))
        cols = [c for c in (name, "mode", "rule", "n_disabled", "domain", "tokens", "baseline_loss", "loss", "delta",
                            "routing_changed", "experts_changed") if c in ab.columns]
        st.dataframe(ab[cols].sort_values([name, "domain"]), hide_index=True, width="stretch")


def importance(ref: data.RunRef) -> None:
    """Per layer, each expert's load share against the loss change of removing it, and where they disagree."""
    st.subheader("Causal importance vs load")
    missing = (f"Run `{ref.name}` has no expert importance yet. Measure the loss change of removing each routed "
               f"expert with"
               + ui.command_block(ui.analysis_command(ref, 'importance'))
               + "It writes `expert_importance/` into the run directory; each expert's load against its causal "
               "importance appears here.")
    with ui.guard("the causal importance"):
        imp = ui.result_table(ref, "expert_importance", data.expert_importance, missing)
        if imp is None:
            return
        doms = sorted(imp.domain.unique(), key=lambda d: (d != "all", d))
        layers = sorted(int(x) for x in imp.layer.unique())
        c1, c2 = st.columns([1, 3])
        dom = c1.selectbox("Domain", doms, key="imp_domain", help="`all`: every token; else that domain's tokens")
        shown = c2.multiselect("Layers", layers, default=layers[:4], key="imp_layers",
                               format_func=lambda x: data.layer_label(ref, x))
        d = imp[imp.domain == dom]
        by_layer = {x: d[d.layer == x] for x in layers}
        mixed = [x for x, g in by_layer.items() if "tokens" in g and g.tokens.nunique() > 1]
        if mixed:  # a later measurement of some experts (a notebook's quick look) replaced theirs at another budget
            st.warning(f"Layer{'s' if len(mixed) > 1 else ''} {listed(map(str, mixed))}: the experts were measured "
                       f"on different token budgets ({int(d.tokens.min()):,} to {int(d.tokens.max()):,} tokens), so "
                       "their Δ loss and ρ mix them. Measure every expert again at one budget with"
                       + ui.command_block(ui.analysis_command(ref, 'importance')))
        rho = pd.DataFrame({"layer": layers, "rho": [compute.spearman(g.load_share, g.delta)
                                                      for g in by_layer.values()]})
        cols = st.columns(2)
        rho_of = dict(zip(rho.layer, rho.rho))
        for i, layer in enumerate(shown):
            scatter = importance_scatter(by_layer[layer], data.layer_label(ref, layer), rho_of[layer], dom)
            cols[i % 2].plotly_chart(scatter, key=f"imp_scatter_{layer}")
        gaps = compute.rank_disagreement(d, dom, shown or layers, top=10)
        left, right = st.columns([2, 3]) if len(layers) > 1 else (None, st.container())
        if left is not None:
            left.plotly_chart(charts.bars([data.layer_label(ref, x) for x in rho.layer], rho.rho, ylabel="Spearman ρ",
                                          title=f"Spearman ρ(load share, Δ loss) per layer ({dom})",
                                          colors="#4C78A8", fmt=".3f", height=380), key="imp_rho")
        right.markdown("**Experts whose load rank and causal rank disagree most** (rank 1 = largest, ties share "
                       "their average rank; a positive gap: more important than its load suggests)")
        right.dataframe(gaps[["layer", "expert", "load_share", "load_rank", "delta", "causal_rank", "rank_gap"]],
                        hide_index=True, width="stretch", key="imp_gaps",
                        column_config={"load_share": st.column_config.NumberColumn(format="%.4f"),
                                       "delta": st.column_config.NumberColumn("Δ loss", format="%+.4f")})
        st.caption("Δ loss: mean surprisal with the expert removed (rerouted to the next-best experts at that layer "
                   "only) minus the baseline, nats. Spearman ρ near 1: the busiest experts are the ones that matter.")


def importance_scatter(g: pd.DataFrame, layer: str, rho: float, dom: str) -> go.Figure:
    fig = go.Figure(go.Scatter(
        x=g.load_share, y=g.delta, mode="markers+text", text=[str(e) for e in g.expert], textposition="top center",
        textfont=dict(size=9, color="#555"), marker=dict(size=9, color=[charts.expert_color(e) for e in g.expert]),
        customdata=g[["expert", "load", "loss", "baseline_loss"]].to_numpy(),
        hovertemplate="expert %{customdata[0]}<br>load share %{x:.4f} (%{customdata[1]:,})<br>Δ loss %{y:+.4f} nats"
                      "<br>loss %{customdata[2]:.4f} vs %{customdata[3]:.4f}<extra></extra>"))
    fig.update_xaxes(title="load share", tickformat=".1%")
    fig.update_yaxes(title="Δ loss when removed (nats)")
    fig.add_hline(y=0, line_color="#999")
    why = None if pd.notna(rho) else compute.rho_undefined_why(g.load_share, g.delta)
    shown = f"{rho:.3f}" if why is None else f"nan<br><sup>{why}</sup>"  # e.g. one expert measured
    return charts.style(fig, f"{layer} ({dom}): Spearman ρ = {shown}", 360)


with ui.guard("this page"):
    main()
