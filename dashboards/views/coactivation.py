"""Co-activation and flow: which experts a layer picks together, and expert paths: how tokens' top-1
experts at one layer map to their top-1 experts at the next chosen layers (a Sankey; two layers: the
flow between them), the most common paths and how much a path tells about the domain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analyses.metrics._common import listed
from dashboards import charts, compute, data, research, ui

MAX_LINKS = 20
# the tables' columns in pixels, within the page's column at 1024 px less a vertical scroll bar (`ui.PAGE_PX`):
# sized to their headers and values, the common paths took 740 px of the 562, the domain share and example
# tokens out of view, and the paths per domain 341 px of the right 2/5's 216 beside the domain information
# chart (a tour), now below it at the page's width. A longer cell (a path through many layers, the examples) wraps
PATH_COLUMNS = {"path": 110, "tokens": 58, "share": 80, "domain": 76, "domain share": 64, "example tokens": 150}
SUMMARY_COLUMNS = {"domain": 110, "tokens": 90, "paths": 90, "perplexity": 100, "top-10 share": 110}


def main() -> None:
    st.title("Co-activation & flow")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    layers = data.moe_layers(ref)
    if not layers:
        st.info("The run's model has no MoE layers.")
        return
    E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or 0)
    if ui.lacks_per_token(ref, "Co-activation and expert paths"):
        return
    ui.caption_sample(ref)

    layer = ui.layer_picker(layers, "co_layer", ref=ref)
    with ui.guard("the co-activation heatmap"):
        ids = data.layer_topk(ref, layer)
        if ids.size == 0:
            st.info(f"No routing rows for {data.layer_label(ref, layer)} yet.")
        else:
            E = E or int(ids.max()) + 1
            co = compute.coactivation(ids, E)
            counts = np.bincount(ids.ravel().astype(np.int64), minlength=E)
            co_plot = co.copy()
            np.fill_diagonal(co_plot, np.nan)
            st.plotly_chart(charts.heatmap(
                co_plot, list(range(E)), list(range(E)), xlabel="expert j", ylabel="expert i",
                zlabel="N(i,j)/N(i)", fmt=".3f", customdata=np.repeat(counts[:, None], E, 1),
                extra_hover="<br>N(i) = %{customdata:,}",
                title=f"{data.layer_label(ref, layer)}: co-activation N(Eᵢ, Eⱼ) / N(Eᵢ) over {len(ids):,} tokens "
                      f"(pairs within the top-{ids.shape[1]})",
                height=560), key="coact")
            st.caption(coactivation_caption(counts))

    paths(ref, layers)


def coactivation_caption(counts: np.ndarray, most: int = 6) -> str:
    """The heatmap's caption; `counts` [N]: the tokens that chose each expert. An expert no token chose
    has a row of no value (0 / 0): on 300 tokens layer 1's expert 3 drew a white band across the
    heatmap that the caption, naming only the diagonal as blank, left unexplained (a browser tour). The
    experts are named as a sentence names them, 'experts 3, 7 and 9' (it read 'experts 3, 7, 9')."""
    idle = [int(e) for e in np.flatnonzero(np.asarray(counts) == 0)]
    blank = "the diagonal is left blank"
    if idle:
        named = listed(map(str, idle), most)
        blank += (f", and so is the row of expert {named}, which no token chose" if len(idle) == 1 else
                  f", and so are the rows of experts {named}, which no token chose")
    return ("Row i: of the tokens that chose expert i, the share that also chose expert j "
            f"(`analyses.metrics.coactivation`; {blank}).")


def paths(ref: data.RunRef, layers: list[int]) -> None:
    """Top-1 expert paths through the chosen layers: a Sankey, the most common paths, path statistics."""
    st.subheader("Expert paths")
    if len(layers) < 2:  # nothing the widgets below could change
        st.info("Expert paths need two or more MoE layers; this model has "
                f"{len(layers) or 'no'} MoE layer{'' if len(layers) == 1 else 's'}.")
        return
    c1, c2, c3 = st.columns([3, 1.2, 1])
    chosen = sorted(c1.multiselect("MoE layers (a path: the top-1 expert at each, in layer order)", layers,
                                   default=layers, key="path_layers", format_func=lambda x: data.layer_label(ref, x)))
    n_links = c2.slider("Largest flows per layer step", 5, 100, MAX_LINKS, step=5, key="path_links")
    if len(chosen) < 2:
        st.info("Pick at least two MoE layers: a path is a token's top-1 expert at each chosen layer.")
        return
    p = None
    with ui.guard("the expert paths"):
        p = research.expert_paths(ref, tuple(chosen))
        if not p["tokens"]:
            st.info(f"No token is routed at all of layers {listed(map(str, chosen))} yet.")
            return
        by = "expert"
        # offered by the domains of the tokens drawn, not run.json's list: one domain (an import's stream,
        # a corpus without domain folders) paints every flow alike, and a run.json may list none
        if len(path_domains(p)) > 1:
            by = c3.radio("Colour by", ["expert", "domain"], horizontal=True, key="path_color",
                          help="domain: each flow and node in the most common domain of its tokens")
        st.plotly_chart(path_sankey(p["flows"], p["nodes"], chosen, n_links, by), key="sankey")
        if by == "domain":
            dcol = ui.domain_colors()
            st.markdown(" · ".join(f"<span style='color:{dcol.get(d, '#888')};font-weight:600'>■ {ui.html_text(d)}"
                                   "</span>" for d in sorted(p["nodes"].domain.unique())) + " — the most common "
                        "domain of each node's and each flow's tokens (hover: its share)", unsafe_allow_html=True)
        shown = p["flows"].groupby("step").head(n_links)
        st.caption(f"The {n_links} largest flows between each pair of consecutive chosen layers "
                   f"({int(shown.n.sum()) / p['flows'].n.sum():.0%} of the token transitions), over the "
                   f"{p['tokens']:,} tokens routed at every chosen layer. Expert ids are not shared across layers: "
                   "E5 at one layer and E5 at the next are unrelated." + research.sample_note(ref, p["windows"]))
    if not p or not p["tokens"]:
        return
    with ui.guard("the path statistics"):
        path_stats(ref, p)
    with ui.guard("the most common paths"):
        tok = ui.tokenizer_for(ref)
        com = p["common"]
        # no domain columns with fewer than two domains (common_paths leaves them out): every path's domain
        # was the one domain, 'in domain' 1.00 on every row; the statistics below say the run has one
        domains = {"domain": com.top_domain, "domain share": com.top_domain_share} if "top_domain" in com else {}
        table = pd.DataFrame({
            "path": [" → ".join(f"E{e}" for e in path) for path in com.path], "tokens": com["count"],
            "share": com.share, **domains,
            "example tokens": ["  ".join(ui.token_text(tok, ids, stream=False))
                               for ids in com.token_ids]})
        st.markdown(f"**Most common paths** (layers {' → '.join(map(str, chosen))})")
        ui.wrapped_table(table, {c: w for c, w in PATH_COLUMNS.items() if c in table}, {
            "share": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=float(com.share.max())),
            "domain share": st.column_config.NumberColumn(
                format="%.2f", label="in domain", help="domain share: the share of the path's tokens in its domain")},
            key="common_paths")


def path_sankey(flows: pd.DataFrame, nodes: pd.DataFrame, chosen: list[int], n_links: int, by: str):
    """The layered Sankey of the `n_links` largest flows of each layer step, coloured by expert or domain."""
    shown = flows.groupby("step").head(n_links)
    dcol = ui.domain_colors()

    def colour(expert: int, domain: str) -> str:
        return charts.expert_color(expert) if by == "expert" else dcol.get(domain, "#888888")

    columns, index = [], {}
    for c, layer in enumerate(chosen):
        used = set(shown[shown.step == c].src) | set(shown[shown.step == c - 1].dst)
        col = nodes[(nodes.col == c) & nodes.expert.isin(used)].sort_values("expert")
        size = [max(shown[(shown.step == c) & (shown.src == e)].n.sum(), shown[(shown.step == c - 1)
                    & (shown.dst == e)].n.sum()) for e in col.expert]
        index |= {(c, int(e)): i for i, e in enumerate(col.expert)}
        columns.append([(f"L{layer}·E{e}", colour(e, d), s) for e, d, s in zip(col.expert, col.domain, size)])
    links = [(int(s), index[(s, int(a))], index[(s + 1, int(b))], int(n),
              colour(a, d) if by == "domain" else charts.expert_color(a), f"mostly {d} ({ds:.0%})")
             for s, a, b, n, d, ds in zip(shown.step, shown.src, shown.dst, shown.n, shown.domain, shown.domain_share)]
    title = f"Top-1 expert paths through layers {listed(map(str, chosen))}"
    return charts.layered_sankey(columns, links, title=title, height=max(480, min(900, 40 * max(map(len, columns)))))


def path_domains(p: dict) -> list[str]:
    """The domains of the tokens on `research.expert_paths`' paths (its summary's rows but "all")."""
    summ = p["summary"]
    return sorted(summ.domain[summ.domain != "all"])


def path_stats(ref: data.RunRef, p: dict) -> None:
    """Distinct paths and perplexity, and how much the path tells about the domain vs each layer alone."""
    summ, info = p["summary"], p["information"]
    al = summ[summ.domain == "all"].iloc[0]
    path = info[info.unit == "path"].iloc[0]
    single = info[info.unit != "path"]
    c = st.columns(5)
    c[0].metric("Distinct paths", f"{int(al.distinct_paths):,}", help="distinct top-1 paths among the tokens")
    c[1].metric("Path perplexity", f"{al.perplexity:.1f}", help="e^H(path): the effective number of paths")
    c[2].metric("Top-10 paths' share", f"{al.top10_share:.1%}")
    doms = path_domains(p)
    if len(doms) < 2:
        ui.one_domain_note(ref, doms, "The domain information of paths")
        return
    best = single.ami.max()
    c[3].metric("Path AMI", f"{path.ami:.3f}", f"{path.ami - best:+.3f} vs best layer",
                help="adjusted mutual information of (domain, path), against the best single layer: 0 = no more "
                     "than chance")
    learned = bool(np.isfinite(path.heldout_accuracy))  # NaN: fewer than two domains left to learn from
    c[4].metric("Domain accuracy", f"{path.heldout_accuracy:.1%}" if learned else "n/a",
                f"{100 * (path.heldout_accuracy - path.majority_baseline):+.1f} pp vs majority" if learned else None,
                help="held out: the domain guessed as the path's majority domain on training windows, scored "
                     "on every 5th window, against always guessing the majority domain")
    left_out = set(path.left_out)  # one window each: held out whole
    if not learned and left_out >= set(doms):  # it read 'nan%' (a tour)
        ui.all_held_out_note(ref, "The domain accuracy")
    else:  # a capped run's domain of one window read as misses, 58.5% for five domains (a tour)
        ui.left_out_note(info, unmeasured=None if learned else "The domain accuracy")
    left, right = st.columns([3, 2])
    fig = go.Figure()
    for col, name, color in (("ami", "domain AMI", "#4C78A8"), ("heldout_accuracy", "held-out accuracy", "#F58518")):
        fig.add_trace(go.Bar(x=info.unit, y=info[col], name=name, marker_color=color,
                             hovertemplate=f"%{{x}}<br>{name} %{{y:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=info.unit, y=[float(path.majority_baseline)] * len(info), mode="lines",
                             name="majority baseline (accuracy)", line=dict(color="#444", dash="dot"),
                             hovertemplate="always the majority domain: %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group")
    # the two measures share the axis, both from 0 to 1; it stood untitled (a tour)
    fig.update_yaxes(title="AMI or accuracy (0 to 1)")
    left.plotly_chart(charts.fit_title(charts.style(fig, "Domain information: each layer alone vs the whole path",
                                                    340), 0.6), key="path_info")
    # the module's name broken after a dot only: it is longer than the column's line at 1024 px
    right.caption("AMI is chance-adjusted: a path has many more values than one layer's expert, and plug-in "
                  "mutual information would grow with them even without any domain signal "
                  f"({ui.code_html('analyses.metrics.domain_information', '.')}).", unsafe_allow_html=True)
    st.markdown("**Paths per domain** (distinct paths, perplexity and the top-10 paths' share of each domain's tokens)")
    ui.wrapped_table(summ[["domain", "tokens", "distinct_paths", "perplexity", "top10_share"]]
                     .rename(columns={"distinct_paths": "paths", "top10_share": "top-10 share"}), SUMMARY_COLUMNS,
                     {"perplexity": st.column_config.NumberColumn(format="%.1f"),
                      "top-10 share": st.column_config.NumberColumn(format="%.3f")}, key="path_summary")


with ui.guard("this page"):
    main()
