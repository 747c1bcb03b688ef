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
                  "the disabled experts' outputs dropped (renormalised: the remaining weights rescaled to the "
                  "token's original sum). Rule: top-N, each layer's N most loaded experts (by the "
                  "run's loads, or by the evaluated tokens' with `--loads-from baseline`: the run's domain mix can "
                  "differ from the sample's); random, N drawn at random per layer (the control); chosen, experts "
                  "named with `--experts`; token top-R, each token's own R best experts (`--token-top R`, "
                  "DeepSeekMoE's Figure 4: its x-axis is this share, R / E); + shared, the shared expert disabled too "
                  "(not counted in the share).")


# the sweep's table in pixels, within the page's column at 1024 px less a vertical scroll bar (`ui.PAGE_PX`; a
# sweep's ablations times its domains scroll): its eleven columns took 823 px of the 562, the loss change
# and routes out of view (a tour). The losses stay in view; each ablation's mode and rule (the curve's legend
# names them) and its routes changed moved to a table under an expander (`ui.EXPANDER_PX`, less a scroll bar)
SWEEP_COLUMNS = {"domain": 76, "n_disabled": 68, "tokens": 64, "baseline_loss": 72, "loss": 68, "delta": 76}
MORE_SWEEP = {"domain": 76, "mode": 64, "rule": 124, "routing_changed": 68, "experts_changed": 70}
NAME_PX = 108  # each table's first column, the ablation's name, as its command named it
SWEEP_CONFIG = {  # headers shorter than the table's names, which their help gives
    "n_disabled": st.column_config.NumberColumn(label="disabled", help="n_disabled: routed experts disabled, "
                                                "summed over the layers"),
    "baseline_loss": st.column_config.NumberColumn(label="baseline", format="%.4f", help="baseline_loss: mean "
                                                   "surprisal of the same tokens with nothing disabled, nats"),
    "loss": st.column_config.NumberColumn(format="%.4f", help="loss: mean surprisal under the ablation, nats"),
    "delta": st.column_config.NumberColumn(label="Δ loss", format="%+.4f", help="delta: loss − baseline_loss, nats"),
    "routing_changed": st.column_config.NumberColumn(
        label="rerouted", format="%.3f", help="routing_changed: share of (token, MoE layer after the first ablated "
        "one) whose top-k set differs from the baseline's"),
    "experts_changed": st.column_config.NumberColumn(
        label="replaced", format="%.3f", help="experts_changed: mean share of the top-k experts replaced, over the "
        "same (token, layer) pairs")}
# the experts whose ranks disagree, at the page's width below the ρ chart: in the right 3/5 beside it (328 px
# at 1024 px) their seven columns took 480 px, the causal rank and the gap out of view (a tour)
GAP_COLUMNS = {"layer": 60, "expert": 64, "load_share": 84, "load_rank": 76, "delta": 80, "causal_rank": 88,
               "rank_gap": 72}
GAP_CONFIG = {
    "load_share": st.column_config.NumberColumn(label="load share", format="%.4f", help="load_share: the expert's "
                                                "share of the layer's top-k assignments"),
    "load_rank": st.column_config.NumberColumn(label="load rank", help="load_rank: 1 = the most loaded"),
    "delta": st.column_config.NumberColumn(label="Δ loss", format="%+.4f", help="delta: the loss change when the "
                                           "expert is removed, nats"),
    "causal_rank": st.column_config.NumberColumn(label="causal rank", help="causal_rank: 1 = the largest Δ loss"),
    "rank_gap": st.column_config.NumberColumn(label="rank gap", help="rank_gap: load_rank − causal_rank; > 0: more "
                                              "important than its load suggests")}


def masked_caption(pooled: pd.DataFrame) -> str:
    """MASKED_CAPTION, and where every (mode, rule) has one size only, that its points are no curve yet."""
    one_each = pooled.groupby(["mode", "rule"]).frac.nunique().max() < 2
    return MASKED_CAPTION + (" Each rule has one size here, so each is one point: a curve needs several sizes "
                             "(`--spec analyses/sweeps/top_vs_random.yaml`)." if one_each else "")


def rule_of(spec: str) -> str:
    """The selection rule of an ablation's spec JSON: top-N, random, each token's own top-R or chosen experts,
    `+ shared` where the shared expert goes too (it is not in n_disabled: `top2` and `top2+shared` sat at one
    share, averaged as one rule's two draws; a sweep user's tour), or the shared expert alone."""
    try:
        s = json.loads(spec) if isinstance(spec, str) else {}
    except ValueError:
        return "?"
    s = s.get("ablation", s) if isinstance(s, dict) else {}
    if s.get("top"):
        rule = f"top-N{' (' + s['domain'] + ')' if s.get('domain') else ''}"
    elif s.get("random"):
        rule = "random"
    elif s.get("token_top"):
        rule = "token top-R"
    elif s.get("shared") and not s.get("experts"):
        return "shared"
    else:
        rule = "chosen"
    return rule + (" + shared" if s.get("shared") else "")


def mode_of(ab: pd.DataFrame) -> pd.Series:
    """Each row's mode, `zero renormalised` where the remaining weights were rescaled: a different ablation
    from plain zero at the same share, which the curve averaged with it (a sweep user's tour)."""
    renorm = ab["renormalise"].fillna(False).astype(bool) if "renormalise" in ab else False
    return ab["mode"].where(~renorm, ab["mode"] + " renormalised")


def main() -> None:
    st.title("Ablations")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    sweep(ref)
    importance(ref)


def evaluation_of(entry: dict, part: str) -> str:
    """What makes two commands' rows comparable: the windows they evaluated (`windows_digest`), the
    model and tokenizer, and the precision. A part whose run.json entry has no digest is its own."""
    if not entry.get("windows_digest"):
        return f"part:{part}"
    opts = entry.get("options") or {}
    ckpt, tok = entry.get("checkpoint") or {}, entry.get("tokenizer") or {}
    return json.dumps([entry["windows_digest"], ckpt.get("fingerprint"), ckpt.get("sample"), tok.get("fingerprint"),
                       opts.get("dtype"), opts.get("gemm")])


def one_evaluation(ref: data.RunRef, ab):
    """The rows of one evaluation when several commands wrote ablations: those that evaluated other tokens
    (or another model or precision) must not be averaged together, while a sweep scripted as one command
    per ablation, each on the same tokens, is one evaluation (it was one part a time, one ablation each:
    no curve, a sweep user's tour). A name measured by two of its commands shows the latest. The evaluation
    of the latest command by default."""
    if "part" not in ab or ab.part.nunique() <= 1:
        return ab
    parts = (ref.info.get("ablation_parts") or {})
    latest = sorted(ab.part.unique(), key=lambda p: -float((parts.get(p) or {}).get("written") or 0))
    groups: dict[str, list[str]] = {}
    for p in latest:  # each evaluation's commands, latest first; keyed by its latest command's part
        groups.setdefault(evaluation_of(parts.get(p) or {}, p), []).append(p)
    members = {g[0]: g for g in groups.values()}

    def rows_of(first: str):
        rows = ab[ab.part.isin(members[first])]
        rank = {p: i for i, p in enumerate(members[first])}  # 0: the latest
        newest = rows.groupby("ablation").part.agg(lambda x: min(x, key=rank.get))
        return rows[rows.part == rows.ablation.map(newest)]

    def label(p: str) -> str:
        rows = rows_of(p)
        toks = rows[rows.domain == "all"].tokens.max() if (rows.domain == "all").any() else rows.tokens.sum()
        when = (parts.get(p) or {}).get("written")
        # in UTC, as the Overview's times (it was the server's local time, unsaid: a bug hunt)
        stamp = time.strftime(" · %Y-%m-%d %H:%M UTC", time.gmtime(when)) if when else ""
        pending = (parts.get(p) or {}).get("pending")  # a sweep interrupted (analyses/ablate/sweep.py)
        left = f", unfinished: {len(pending)} to go" if pending else ""
        more = f", {len(members[p])} commands" if len(members[p]) > 1 else ""
        return f"{rows.ablation.nunique()} ablations on {int(toks):,} tokens{stamp}{left} ({p[:6]}{more})"

    if len(members) == 1:
        return rows_of(latest[0]).drop(columns="part")
    st.caption(f"{len(latest)} commands wrote ablations into this run, on {len(members)} different samples of tokens "
               "(or models): one is shown at a time, its commands together.")
    pick = st.selectbox("Evaluation", list(members), format_func=label, key="abl_part")
    return rows_of(pick).drop(columns="part")


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
            # dropna=False: an ablation whose every delta is NaN (the model's, kept: run.py add_loss) stays, blank
            t = per.pivot_table(index=name, columns="domain", values="delta", aggfunc="mean", dropna=False)
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
            ab.groupby([c for c in (name, "mode", "renormalise", "rule", "n_disabled") if c in ab], as_index=False
                       ).delta.mean()
        pooled = pooled.assign(mode=mode_of(pooled))  # the curve's series: zero renormalised apart from zero
        E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or 0)
        n_layers = len(data.moe_layers(ref)) or 1
        pooled = pooled.assign(frac=pooled.n_disabled / (E * n_layers) if E else pooled.n_disabled)
        xl = "share of routed experts disabled" if E else "experts disabled"
        fig = go.Figure()
        for i, ((mode, rule), g) in enumerate(pooled.groupby(["mode", "rule"])):
            color = charts.DOMAIN_PALETTE[i % len(charts.DOMAIN_PALETTE)]
            # repeated draws (seeds) averaged, a NaN one included (a gap): not the mean of the others
            mean = g.groupby("frac", as_index=False).delta.agg(lambda x: x.mean(skipna=False))
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
        sweep_tables(ab, name)


def sweep_tables(ab: pd.DataFrame, name: str) -> None:
    """Each ablation's losses per domain, and under an expander its mode, rule and routes changed."""
    # in the sweep's order, as the heatmap's rows, `all` first: sorted by name, top16 came before top2 and
    # random16-s0 between random1-s1 and random2-s0, and the rows no longer matched the heatmap's (a tour)
    order = {n: i for i, n in enumerate(ab[name].drop_duplicates())}
    ab = ab.assign(_at=ab[name].map(order), _all=ab.domain != "all").sort_values(["_at", "_all", "domain"])
    ab[name] = [ui.break_name(str(x), NAME_PX) for x in ab[name]]  # a long name wrapped after a `-` or `_`

    def table(columns: dict[str, int], key: str) -> None:
        shown = {name: NAME_PX} | {c: w for c, w in columns.items() if c in ab.columns}
        ui.wrapped_table(ab[list(shown)], shown, SWEEP_CONFIG, key=key)

    table(SWEEP_COLUMNS, "abl_table")
    with st.expander("Each ablation's mode, rule and routes changed"):
        table(MORE_SWEEP, "abl_more")


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
        if len(layers) > 1:  # the chart and the table below it each at the page's width (`GAP_COLUMNS`)
            st.plotly_chart(charts.bars([data.layer_label(ref, x) for x in rho.layer], rho.rho, ylabel="Spearman ρ",
                                        title=f"Spearman ρ(load share, Δ loss) per layer ({dom})",
                                        colors="#4C78A8", fmt=".3f", height=380), key="imp_rho")
        st.markdown("**Experts whose load rank and causal rank disagree most** (rank 1 = largest, ties share "
                    "their average rank; a positive gap: more important than its load suggests)")
        ui.wrapped_table(gaps[list(GAP_COLUMNS)], GAP_COLUMNS, GAP_CONFIG, key="imp_gaps")
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
