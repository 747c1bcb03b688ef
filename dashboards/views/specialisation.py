"""Specialisation: domain x expert per layer (share and lift), I(domain; expert) / H(domain) per
layer, the top tokens of a chosen expert with snippets in context, and token-id dependence (how much
of routing the token id alone predicts, against context baselines)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analyses.metrics.specialisation import VOCAB_MIN_COUNT
from dashboards import charts, compute, data, research, ui


# the tables' columns in pixels at 1024 px, the sidebar open: the most domain-specific experts in the right
# 3/5 of the page (328 px) took 406 and the top tokens in its right 3/4 (413 px) 453, sized to their headers,
# their last columns behind a sideways scroll bar (a tour). Neither scrolls down (8 rows; every row shown)
EXPERT_COLUMNS = {"expert": 52, "domain": 76, "lift": 50, "share": 80, "assignments": 62}
TOKEN_COLUMNS = {"token": 92, "token_id": 60, "routed here": 88, "occurrences": 60, "share to expert": 96}
TOKEN_CONFIG = {  # three headers shorter than the names, which their help gives
    "token_id": st.column_config.NumberColumn(label="id", help="token_id: the token's id in the vocabulary"),
    "occurrences": st.column_config.NumberColumn(label="seen", help="occurrences: the token's, in the sampled tokens"),
    "share to expert": st.column_config.ProgressColumn(label="share", help="share to expert: routed here / occurrences",
                                                       format="%.2f", min_value=0, max_value=1)}


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


PREDICTOR_LABELS = {"token_id": "token id", "prev_token": "previous token", "position": "position",
                    "prev_and_position": "previous token + position", "token_and_prev": "token id + previous",
                    "majority": "majority (floor)"}
PREDICTOR_COLORS = {"token_id": "#4C78A8", "prev_token": "#F58518", "position": "#54A24B",
                    "prev_and_position": "#B279A2", "token_and_prev": "#72B7B2", "majority": "#BAB0AC"}


def main() -> None:
    st.title("Specialisation")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    if len(domain_views(ref)) >= 2:  # with one domain the page has said so once, above
        domain_probe(ref)
    token_dependence(ref)


def domain_views(ref: data.RunRef) -> list[str]:
    """Domain x expert per layer, I(domain; expert) / H(domain), the most domain-specific experts and
    an expert's top tokens; returns the domains of the expert loads."""
    E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or 0)
    de = ui.rows("the domain × expert tables", lambda: data.domain_expert(ref), "No expert loads recorded yet.")
    if de is None:
        return []
    E = E or int(de.expert.max() + 1)
    layers = compute.layer_order(de.layer)
    # a layer to pick only where a view below reads one: one domain (no heatmap) and no per-token tables (no
    # top tokens), as an SGLang stat or per_pass import, left the picker above two notes, changing nothing (a tour)
    pick = de.domain.nunique() >= 2 or all(data.has_table(ref, t) for t in ("tokens", "routing"))
    c1, c2, c3 = st.columns([1, 2, 1]) if pick else (None, None, None)
    layer = c1.selectbox("MoE layer", layers, key="sp_layer") if pick else layers[0]
    doms, C = compute.contingency(de, layer, E)
    if len(doms) < 2:  # no heatmap to switch, so no lift / share radio (it was drawn and did nothing)
        ui.one_domain_note(ref, doms, "Domain specialisation (share, lift, I / H(domain))")
        tops = pd.DataFrame({"expert": np.argsort(-C.sum(0))})  # the busiest expert first
        top_tokens(ref, layer, E, tops)
        return doms
    share, lift = _domain_heatmap(layer, doms, C, E, c2, c3)
    tops = _specific_experts(doms, C, share, lift, E)
    _nmi_and_experts(de, E, tops)
    top_tokens(ref, layer, E, tops)
    return doms


def _domain_heatmap(layer: str, doms: list[str], C: np.ndarray, E: int, c2, c3) -> tuple[np.ndarray, np.ndarray]:
    """The heatmap step of `domain_views`: the lift / share and expert-order radios (in the columns `c2`
    and `c3`) and the layer's domain x expert heatmap; returns the layer's share and lift."""
    view = c2.radio("Show", ["lift", "share"], horizontal=True, key="sp_view",
                    captions=["P(domain | expert) / P(domain): > 1 = over-serves the domain",
                              "P(domain | expert): each expert's load split over domains"])
    order_by = c3.radio("Experts", ["by domain", "by id"], horizontal=True, key="sp_order",
                        captions=["grouped by the domain each over-serves most", "0 to N - 1"])
    share, lift = compute.metric("domain_share")(C), compute.metric("lift")(C)
    with ui.guard("the domain × expert heatmap"):
        if view == "lift":
            z, cs, mid, zl, other = lift, charts.DIVERGING, 1.0, "lift", share
        else:
            z, cs, mid, zl, other = share, charts.SEQUENTIAL, None, "share", lift
        order = compute.experts_by_domain(lift) if order_by == "by domain" else np.arange(E)
        custom = np.dstack([C, other])[:, order]
        hover = "<br>assignments: %{customdata[0]:,}<br>" + ("share" if view == "lift" else "lift") + \
                ": %{customdata[1]:.3f}"
        st.plotly_chart(charts.heatmap(z[:, order], order, doms, title=f"{layer}: domain × expert ({zl})",
                                       xlabel="expert", ylabel="domain", zlabel=zl, colorscale=cs, zmid=mid,
                                       fmt=".3f", customdata=custom, extra_hover=hover), key="dom_exp")
    return share, lift


def _specific_experts(doms: list[str], C: np.ndarray, share: np.ndarray, lift: np.ndarray, E: int) -> pd.DataFrame:
    """The ranking step of `domain_views`: each expert's most over-served domain, its lift and share
    there, most domain-specific first (experts with too few assignments left out)."""
    best = np.nanargmax(np.nan_to_num(lift, nan=-1), axis=0)
    tops = pd.DataFrame({"expert": range(E), "domain": [doms[i] for i in best],
                         "lift": [lift[i, e] for e, i in enumerate(best)],
                         "share": [share[i, e] for e, i in enumerate(best)],
                         "assignments": C.sum(0).astype(int)})
    # experts with a handful of assignments have noisy lifts: rank those with at least a tenth of the mean
    return tops[tops.assignments >= 0.1 * C.sum() / max(E, 1)].sort_values("lift", ascending=False)


def _nmi_and_experts(de: pd.DataFrame, E: int, tops: pd.DataFrame) -> None:
    """The per-layer step of `domain_views`: I(domain; expert) / H(domain) of every layer beside the
    chosen layer's most domain-specific experts (`tops`), and what the metric is."""
    with ui.guard(f"{compute.DOMAIN_NMI_LABEL} per layer"):
        dn = compute.domain_nmi_by_layer(de, E)
        left, right = st.columns([2, 3])
        left.plotly_chart(charts.fit_title(charts.bars(
            dn.layer, dn.domain_nmi, title=f"{compute.DOMAIN_NMI_LABEL} per layer", xlabel="layer",
            ylabel="I / H(domain)", colors="#4C78A8", height=320), 0.4), key="nmi")
        with right:
            st.markdown("**Most domain-specific experts of this layer**")
            ui.wrapped_table(tops.head(8), EXPERT_COLUMNS, {
                "lift": st.column_config.NumberColumn(format="%.2f"),
                "share": st.column_config.ProgressColumn(format="%.2f", min_value=0, max_value=1),
                "assignments": st.column_config.NumberColumn(
                    label="load", help="assignments: the expert's top-k assignments at this layer, every domain")})
        st.caption("I(domain; expert) / H(domain) over top-k assignments: the share of the domain's entropy that "
                   "the chosen expert removes (`analyses.metrics.domain_nmi`). Not the symmetric NMI "
                   "2I / (H(domain) + H(expert)), the `nmi` column of `specialisation_table` (docs/metrics.md).")


def top_tokens(ref, layer: str, E: int, tops: pd.DataFrame) -> None:
    """An expert's most routed tokens (default: the first of `tops`), with snippets in context."""
    st.subheader("Top tokens of an expert")
    if ui.lacks_per_token(ref, "An expert's top tokens"):
        return
    lnum = data.layer_number(ref, layer)
    c1, c2 = st.columns([1, 3])
    default = int(tops.expert.iloc[0]) if len(tops) else 0
    expert = c1.number_input("Expert", 0, max(E - 1, 0), default, key="sp_expert")
    with c1, ui.guard("vocabulary specialisation"):
        vs, base = research.vocabulary_specialisation(ref, lnum)
        if vs == vs:  # NaN: no id seen VOCAB_MIN_COUNT times in the sample
            st.metric(f"Vocabulary specialisation, {layer}", f"{vs:.2f}", f"{vs - base:+.2f} vs no specialisation",
                      help=(f"For each token id seen at least {VOCAB_MIN_COUNT} times, the share of its occurrences "
                            "whose top-1 expert is its most common one, averaged over ids (OLMoE). Without "
                            "specialisation (the top-1 experts shuffled across the same tokens) it is "
                            f"{base:.3f}, not 1/N = {1 / E:.3f}: an id seen a few times has a clear favourite by "
                            "chance, and a busy expert takes more than 1/N of every id."))
        else:  # the column stood empty under the expert picker, unexplained (an SGLang import, a browser tour)
            st.caption(f"Vocabulary specialisation, {layer}: not measured, no token id occurs {VOCAB_MIN_COUNT} "
                       "times or more in the sampled tokens.")
    ui.caption_sample(ref)
    with ui.guard("the expert's top tokens"):
        top = data.expert_top_tokens(ref, lnum, int(expert), 15)
        if top.empty:
            st.info(f"Expert {expert} is never chosen at {layer} in the sampled tokens.")
            return
        tok = ui.tokenizer_for(ref)
        top.insert(0, "token", ui.token_text(tok, top.token_id, stream=False))
        with c2:  # every row (most=40): at 250 px the 15 rows scrolled inside the table, the 7th cut in half
            shown = top.rename(columns={"n": "routed here", "total": "occurrences", "share": "share to expert"})
            ui.wrapped_table(shown, TOKEN_COLUMNS, TOKEN_CONFIG, most=40)
        pick = st.selectbox("Snippets for token", top.token_id.tolist(), key="sp_token",
                            format_func=lambda i: f"{top.set_index('token_id').token[i]} (id {i})")
        snip = data.token_snippets(ref, lnum, int(expert), int(pick))
        color = charts.expert_color(int(expert))
        dcol = ui.domain_colors()
        for _, s in snip.iterrows():
            badge = f"<span style='color:{dcol.get(s.domain, '#888')};font-weight:600'>{ui.html_text(s.domain)}</span>"
            st.markdown(f"{badge} · window {s.seq_id}, pos {s.pos}: " + snippet_html(tok, s.ids, s.centre, color),
                        unsafe_allow_html=True)


def domain_probe(ref: data.RunRef) -> None:
    """Held-out accuracy of a logistic-regression probe of the token's domain from each layer's routing,
    beside the same probe trained on shuffled domains and the majority domain."""
    if not all(data.has_table(ref, t) for t in ("tokens", "routing")):
        return  # the token-id dependence below says which per-token table is missing
    st.subheader("Domain probe")
    # fitted on demand: 2 x (layers + 1) logistic regressions, about a second on 2 cores (and scikit-learn's
    # import, 0.7 s, the first time), which took the page over its 2 s budget (bench_dashboard.py)
    if not st.toggle("Fit a linear probe of each token's domain from its routing (about a second, then cached)",
                     key="probe_on"):
        st.caption("How much of the domain a logistic regression reads from each layer's routing, on held-out "
                   "windows, beside the same probe trained on shuffled domains "
                   "(`analyses.metrics.domain_probe_from_run`).")
        return
    # a choice only where the run holds every expert's score: a radio of weights alone did nothing (a tour)
    if (ref.info.get("options") or {}).get("router_logits") == "full":
        features = st.radio("Features", ["weights", "scores"], horizontal=True, key="probe_features",
                            captions=["gate weights of the top-k experts (0 elsewhere)", "every expert's router score"])
    else:
        features = "weights"
        st.caption("Features: the gate weights of the top-k experts (0 elsewhere); a run recorded with "
                   "`--router-logits full` can use every expert's router score instead.")
    with ui.guard("the domain probe"), st.spinner("Fitting the probes…"):
        df, windows = research.domain_probe(ref, features)
        fig = go.Figure()
        for col, name, color in (("accuracy", "probe", "#4C78A8"),
                                 ("balanced_accuracy", "balanced accuracy", "#72B7B2"),
                                 ("shuffled", "probe on shuffled domains", "#BAB0AC")):
            fig.add_trace(go.Bar(x=df.unit, y=df[col], name=name, marker_color=color,
                                 hovertemplate=f"%{{x}}<br>{name}: %{{y:.3f}}<extra></extra>"))
        # in the legend, as on the Co-activation page: add_hline's annotation sat on the last bars
        fig.add_trace(go.Scatter(x=df.unit, y=[float(df.majority.iloc[0])] * len(df), mode="lines",
                                 name="majority domain", line=dict(color="#444", dash="dot"),
                                 hovertemplate="always the majority domain: %{y:.3f}<extra></extra>"))
        fig.update_layout(barmode="group")
        fig.update_yaxes(title="held-out accuracy", tickformat=".0%", range=[0, 1])
        st.plotly_chart(charts.style(fig, "The token's domain read linearly from its routing", 360), key="probe")
        ui.left_out_note(df)  # a domain of one window in the windows read: held out whole, scored on the others
        st.caption(f"A logistic regression (`analyses.metrics.domain_probe_from_run`) learns the domain from one "
                   f"layer's routing ({df.n_features.iloc[0]} features a layer) on 4 of every 5 windows and is "
                   f"scored on the 5th ({int(df.n_test.iloc[0]):,} held-out tokens, {int(df.n_train.iloc[0]):,} "
                   f"training ones: at most {research.PROBE_ROWS:,} of each, drawn at random). Above the "
                   "shuffled-domain bar, the routing carries the domain; `all layers` reads every layer's features "
                   "side by side. `python -m analyses.report` fits it on up to 50,000 tokens of each."
                   + research.sample_note(ref, windows))


def token_dependence(ref: data.RunRef) -> None:
    """Held-out accuracy of predicting each layer's top-1 expert from the token id vs context baselines,
    and OLMoE's vocabulary specialisation for the input and the next token."""
    st.subheader("Token-id dependence")
    if ui.lacks_per_token(ref, "Token-id dependence"):
        return
    with ui.guard("the token-id dependence"):
        td, windows = research.token_dependence(ref)
        top1 = td[td.target == "top1"]
        x = [data.layer_label(ref, v) for v in top1.layer]
        fig = go.Figure()
        for p in PREDICTOR_LABELS:
            fig.add_trace(go.Bar(x=x, y=top1[p], name=PREDICTOR_LABELS[p], marker_color=PREDICTOR_COLORS[p],
                                 hovertemplate=f"%{{x}}<br>{PREDICTOR_LABELS[p]}: %{{y:.3f}}<extra></extra>"))
        fig.update_layout(barmode="group")
        fig.update_yaxes(title="held-out accuracy", tickformat=".0%", rangemode="tozero")
        left, right = st.columns([3, 2])
        if len(top1) and not top1.train_tokens.any():  # every window held out: NaN accuracies, an empty chart
            ui.all_held_out_note(ref, "Each predictor", left)
        else:
            left.plotly_chart(charts.fit_title(charts.style(
                fig, "Predicting the top-1 expert: held-out accuracy per predictor", 380), 0.6), key="tokdep")
            ui.left_out_note(top1, left)
        vs = go.Figure()
        for col, name, color in (("vocab_spec_input", "input token", "#4C78A8"),
                                 ("vocab_spec_next", "next token", "#E45756")):
            vs.add_trace(go.Bar(x=x, y=top1[col], name=name, marker_color=color,
                                hovertemplate=f"%{{x}}<br>{name}: %{{y:.3f}}<extra></extra>"))
        vs.update_layout(barmode="group")
        vs.update_yaxes(title="vocabulary specialisation", range=[0, 1])
        right.plotly_chart(charts.fit_title(charts.style(vs, "Vocabulary specialisation: input vs next token", 380),
                                            0.4), key="vocab_spec")
        test = int(top1.test_tokens.iloc[0]) if len(top1) else 0
        st.caption(f"Each predictor learns the majority expert of its key (token id, previous token id, position, "
                   f"...) on 4 of every 5 windows and is scored on the 5th ({test:,} held-out tokens; keys never "
                   "seen in training fall back as in `analyses.metrics.token_dependence`). High token-id "
                   "accuracy: routing is largely context-independent (OpenMoE); the gap to `token id + previous` "
                   "is what one token of context adds. Vocabulary specialisation (OLMoE): per token id, the share "
                   "of its occurrences routed to its most common top-1 expert, averaged over ids; against the next "
                   "token it asks whether experts specialise in what is predicted rather than what is read. Here "
                   "every id counts, those seen once too (each trivially 1.0), so VS input lies above the metric "
                   f"beside the expert picker, which counts ids seen at least {VOCAB_MIN_COUNT} times."
                   + research.sample_note(ref, windows))
        dependence_tables(td)


# the token-id dependence's columns in pixels, within the page's column at 1024 px less a vertical scroll bar
# (`ui.PAGE_PX`; two rows a layer scroll for a model of many): its twelve columns took 790 px of the 562, the
# vocabulary specialisation, unseen ids and held-out tokens out of view (a tour); they moved to a table of
# their own under an expander (`MORE_DEPENDENCE`, within `ui.EXPANDER_PX`), and the accuracies stay in view
DEPENDENCE_COLUMNS = {"layer": 56, "target": 58, "token id": 68, "prev": 52, "pos": 52, "prev + pos": 80,
                      "token + prev": 92, "majority": 70}
MORE_DEPENDENCE = {"layer": 56, "target": 58, "VS input": 80, "VS next": 80, "unseen": 70, "held-out": 80}
SHORT = {"token_id": "token id", "prev_token": "prev", "position": "pos", "prev_and_position": "prev + pos",
         "token_and_prev": "token + prev", "majority": "majority", "vocab_spec_input": "VS input",
         "vocab_spec_next": "VS next", "test_tokens": "held-out"}


def dependence_tables(td: pd.DataFrame) -> None:
    """The token-id dependence's accuracies per layer and target, and under an expander each layer's
    vocabulary specialisation, unseen ids and held-out tokens."""
    table = td[["layer", "target", *PREDICTOR_LABELS, "unseen", "vocab_spec_input", "vocab_spec_next",
                "test_tokens"]].rename(columns=SHORT)
    three = {c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if table[c].dtype.kind == "f"}
    helps = {SHORT[p]: three[SHORT[p]] | {"help": PREDICTOR_LABELS[p]} for p in PREDICTOR_LABELS}
    ui.wrapped_table(table[list(DEPENDENCE_COLUMNS)], DEPENDENCE_COLUMNS, three | helps, key="tokdep_table")
    with st.expander("Vocabulary specialisation, unseen ids and held-out tokens"):
        ui.wrapped_table(table[list(MORE_DEPENDENCE)], MORE_DEPENDENCE, three, key="tokdep_more")
    st.caption("Accuracies per predictor (prev: the previous token's id; pos: the position in the window); "
               "VS: vocabulary specialisation against the input and the next token. "
               "target `topk`: the whole top-k set predicted (one label per distinct set); `unseen`: share of "
               "held-out tokens whose id never occurs in training.")


with ui.guard("this page"):
    main()
