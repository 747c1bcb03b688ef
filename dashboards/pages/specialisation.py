"""Specialisation: domain x expert per layer (share and lift), NMI per layer, and the top tokens of a
chosen expert with snippets in context."""

from __future__ import annotations


import numpy as np
import pandas as pd
import streamlit as st

from dashboards import charts, compute, data, ui


def snippet_html(tok, ids: list[int], centre: int, color: str) -> str:
    parts = []
    for j, t in enumerate(ui.token_text(tok, ids)):
        t = ui.html_text(t).replace("\n", "↵")
        if j == centre:
            parts.append(f"<b style='background:{color};color:{charts.text_color(color)};padding:0 3px;"
                         f"border-radius:3px'>{t}</b>")
        else:
            parts.append(t)
    return "<span style='font-family:monospace;white-space:pre-wrap'>…" + "".join(parts) + "…</span>"


def main() -> None:
    st.title("Specialisation")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or 0)
    de = None
    with ui.guard("the domain × expert tables"):
        de = data.domain_expert(ref)
        if de.empty:
            st.info("No expert loads recorded yet.")
    if de is None or de.empty:
        return
    E = E or int(de.expert.max() + 1)
    layers = compute.layer_order(de.layer)
    c1, c2 = st.columns([1, 2])
    layer = c1.selectbox("MoE layer", layers, key="sp_layer")
    view = c2.radio("Show", ["lift", "share"], horizontal=True, key="sp_view",
                    captions=["P(domain | expert) / P(domain): > 1 = over-serves the domain",
                              "P(domain | expert): each expert's load split over domains"])
    doms, C = compute.contingency(de, layer, E)
    share, lift = compute.metric("domain_share")(C), compute.metric("lift")(C)
    if len(doms) < 2:
        ui.one_domain_note(ref, doms, "Domain specialisation (share, lift, NMI)")
        tops = pd.DataFrame({"expert": np.argsort(-C.sum(0))})  # the busiest expert first
        top_tokens(ref, layer, E, tops)
        return
    with ui.guard("the domain × expert heatmap"):
        if view == "lift":
            z, cs, mid, zl, other = lift, charts.DIVERGING, 1.0, "lift", share
        else:
            z, cs, mid, zl, other = share, charts.SEQUENTIAL, None, "share", lift
        custom = np.dstack([C, other])
        hover = "<br>assignments: %{customdata[0]:,}<br>" + ("share" if view == "lift" else "lift") + \
                ": %{customdata[1]:.3f}"
        st.plotly_chart(charts.heatmap(z, list(range(E)), doms, title=f"{layer}: domain × expert ({zl})",
                                       xlabel="expert", ylabel="domain", zlabel=zl, colorscale=cs, zmid=mid,
                                       fmt=".3f", customdata=custom, extra_hover=hover), key="dom_exp")

    best = np.nanargmax(np.nan_to_num(lift, nan=-1), axis=0)
    tops = pd.DataFrame({"expert": range(E), "domain": [doms[i] for i in best],
                         "lift": [lift[i, e] for e, i in enumerate(best)],
                         "share": [share[i, e] for e, i in enumerate(best)],
                         "assignments": C.sum(0).astype(int)})
    # experts with a handful of assignments have noisy lifts: rank those with at least a tenth of the mean
    tops = tops[tops.assignments >= 0.1 * C.sum() / max(E, 1)].sort_values("lift", ascending=False)
    with ui.guard("NMI per layer"):
        nmi = compute.nmi_by_layer(de, E)
        left, right = st.columns([2, 3])
        left.plotly_chart(charts.bars(nmi.layer, nmi.nmi, title="NMI(domain; expert) per layer", xlabel="layer",
                                      ylabel="NMI", colors="#4C78A8", height=320), key="nmi")
        with right:
            st.markdown("**Most domain-specific experts of this layer**")
            st.dataframe(tops.head(8), hide_index=True, width="stretch",
                         column_config={"lift": st.column_config.NumberColumn(format="%.2f"),
                                        "share": st.column_config.ProgressColumn(format="%.2f", min_value=0,
                                                                                 max_value=1)})
        st.caption("NMI = I(domain; expert) / H(domain) over top-k assignments (`analyses.metrics.domain_nmi`).")
    top_tokens(ref, layer, E, tops)


def top_tokens(ref, layer: str, E: int, tops: pd.DataFrame) -> None:
    """An expert's most routed tokens (default: the first of `tops`), with snippets in context."""
    st.subheader("Top tokens of an expert")
    lnum = int(layer.removeprefix("layer"))
    c1, c2 = st.columns([1, 3])
    default = int(tops.expert.iloc[0]) if len(tops) else 0
    expert = c1.number_input("Expert", 0, max(E - 1, 0), default, key="sp_expert")
    with c1, ui.guard("vocabulary specialisation"):
        tt = data.token_top1(ref, lnum)
        if len(tt):
            vs = compute.metric("vocabulary_specialisation")(tt.token_id.to_numpy(), tt.e1.to_numpy(), min_count=5)
            st.metric(f"Vocabulary specialisation, {layer}", f"{vs:.2f}", help=(
                "For each token id seen at least 5 times, the share of its occurrences whose top-1 expert is "
                f"its most common one, averaged over ids (OLMoE); no preference gives about 1/N = {1 / E:.3f}."))
    ui.caption_sample(ref)
    with ui.guard("the expert's top tokens"):
        top = data.expert_top_tokens(ref, lnum, int(expert), 15)
        if top.empty:
            st.info(f"Expert {expert} is never chosen at {layer} in the sampled tokens.")
            return
        tok = ui.tokenizer_for(ref)
        top.insert(0, "token", [repr(t) for t in ui.token_text(tok, top.token_id, stream=False)])
        with c2:
            st.dataframe(top.rename(columns={"n": "routed here", "total": "occurrences", "share": "share to expert"}),
                         hide_index=True, width="stretch", height=250,
                         column_config={"share to expert": st.column_config.ProgressColumn(
                             format="%.2f", min_value=0, max_value=1)})
        pick = st.selectbox("Snippets for token", top.token_id.tolist(), key="sp_token",
                            format_func=lambda i: f"{top.set_index('token_id').token[i]} (id {i})")
        snip = data.token_snippets(ref, lnum, int(expert), int(pick))
        color = charts.expert_color(int(expert))
        dcol = ui.domain_colors()
        for _, s in snip.iterrows():
            badge = f"<span style='color:{dcol.get(s.domain, '#888')};font-weight:600'>{ui.html_text(s.domain)}</span>"
            st.markdown(f"{badge} · window {s.seq_id}, pos {s.pos}: " + snippet_html(tok, s.ids, s.centre, color),
                        unsafe_allow_html=True)


with ui.guard("this page"):
    main()
