"""Token explorer: one document with each token coloured by its top-1 expert at a chosen layer (hover:
top-k ids, weights and token loss) and a layer-by-layer route view of one token."""

from __future__ import annotations


import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards import charts, data, ui

MAX_TOKENS = 1200


def token_html(texts, top1, tips) -> str:
    spans = []
    for t, e, tip in zip(texts, top1, tips):
        t = ui.html_text(t).replace("\n", "↵<br>")
        # NOTE: no raw newline may reach the markdown (it would end the HTML block)
        tip = ui.html_text(tip).replace("\n", "&#10;")
        if e is None:
            spans.append(f"<span title='{tip}'>{t}</span>")
            continue
        bg = charts.expert_color(e)
        spans.append(f"<span class='tok' title='{tip}' style='background:{bg};"
                     f"color:{charts.text_color(bg)}'>{t}</span>")
    style = ("<style>.tokdoc{font-family:ui-monospace,monospace;font-size:0.9rem;line-height:1.9;"
             "white-space:pre-wrap;border:1px solid #ddd;border-radius:8px;padding:12px;max-height:420px;"
             "overflow-y:auto}.tokdoc .tok{border-radius:3px;padding:1px 1px;margin:0 1px}</style>")
    return style + "<div class='tokdoc'>" + "".join(spans) + "</div>"


def main() -> None:
    st.title("Token explorer")
    ref = ui.selected_run(("probe",))
    if ref is None:
        return
    docs = ui.rows("the document list", lambda: data.documents(ref), "No tokens recorded yet.")
    if docs is None:
        return
    doms = sorted(docs.domain.dropna().unique())
    # a domain to pick only among two or more: a run of one domain (an SGLang import, a corpus of one folder)
    # offered `all` and that domain, the same documents either way (a tour)
    if len(doms) >= 2:
        c1, c2, c3 = st.columns([1, 2, 1])
        dom = c1.selectbox("Domain", ["all"] + doms, key="te_domain")
    else:
        (c2, c3), dom = st.columns([3, 1]), "all"
    sub = docs if dom == "all" else docs[docs.domain == dom]
    doc_id = c2.selectbox("Document", sub.doc_id.tolist(), key="te_doc",
                          format_func=lambda d: f"{d}  ({int(sub.set_index('doc_id').tokens[d]):,} tokens)")
    d = docs.set_index("doc_id").loc[doc_id]

    with ui.guard("the document's tokens"):
        toks = data.doc_tokens(ref, doc_id, int(d.seq_lo), int(d.seq_hi), MAX_TOKENS)
        if len(toks) >= MAX_TOKENS:
            st.caption(f"First {MAX_TOKENS:,} tokens of the document.")
        tok = ui.tokenizer_for(ref)
        texts = ui.token_text(tok, toks.token_id)
        route = doc_routing(ref, toks)
        # a layer to pick only where there are routes to colour by (the picker changed nothing without them)
        layers = data.moe_layers(ref) if route is not None else []
        layer = (c3.selectbox("MoE layer", layers, key="te_layer", format_func=lambda x: data.layer_label(ref, x))
                 if layers else None)
        top1, tips = routes_and_tips(route, layer, toks, texts)
        st.markdown(f"**{ui.html_text(str(doc_id))}** · " + (
            f"coloured by the top-1 expert at {data.layer_label(ref, layer)}; hover a token for its route."
            if layer is not None else "hover a token for its id and loss."))
        st.markdown(token_html(texts, top1, tips), unsafe_allow_html=True)
        if any(e is not None for e in top1):
            st.markdown(expert_chips(top1), unsafe_allow_html=True)

        if toks.loss.isna().all():  # an import has none at all; a recorded document of one token has no target
            st.caption("No per-token loss in this run (a serving engine's dump records routing, not losses)."
                       if (ref.info.get("source") or {}).get("name") else
                       "No per-token loss in this document: none of its tokens has a finite loss (a window of one "
                       "token holds no prediction to score).")
        else:
            loss_chart(toks, texts, top1)
        route_of_one_token(ref, route, toks, texts)


def doc_routing(ref: data.RunRef, toks):
    """The routing rows of the windows `toks` lies in, or None once the page has said why there are none:
    a run recorded without them (`--router-logits none`: `ui.lacks_per_token`'s note, with what to do) or a
    read that failed (`ui.guard`'s, a lost table's warning among them). Without them the page called its plain
    text 'coloured by the top-1 expert at layer 1', under a layer picker that did nothing (a browser tour)."""
    if not data.has_table(ref, "routing") and not data.whole_lost(ref, ("routing",)):
        ui.lacks_per_token(ref, "Colouring the text by expert and a token's route")
        return None
    with ui.guard("the routing of this document"):
        return data.doc_routing(ref, int(toks.seq_id.min()), int(toks.seq_id.max()))
    return None


def routes_and_tips(route, layer, toks, texts) -> tuple[list, list[str]]:
    """Each token's top-1 expert at `layer` (None where not routed) and its hover text: the token, its
    id and place, its top-k experts with their weights, its loss and selection-score margin."""
    if route is None or layer is None:
        return [None] * len(toks), [f"{t!r} id {i} · doc pos {p}\nloss " + (f"{x:.3f} nats" if x == x else "—")
                                    for t, i, p, x in zip(texts, toks.token_id, toks.doc_pos, toks.loss)]
    r = route[route.layer == layer].set_index(["seq_id", "pos"])
    look = {k: (ids, w, m) for k, ids, w, m in zip(r.index, r.expert_ids, r.expert_weights, r.margin_1)}
    top1, tips = [None] * len(toks), []
    for i, (s, p, tid, loss, txt) in enumerate(zip(toks.seq_id, toks.pos, toks.token_id, toks.loss, texts)):
        ids, w, m1 = look.get((s, p), (None, None, None))
        top1[i] = int(ids[0]) if ids is not None and len(ids) else None
        route_s = ("—" if ids is None else ", ".join(str(int(e)) for e in ids) + " (weights not recorded)"
                   if w is None or not hasattr(w, "__len__")
                   else ", ".join(f"{int(e)} ({x:.3f})" for e, x in zip(ids, w)))
        loss_s = f"{loss:.3f}" if loss == loss else "—"
        margin = (f"\nselection-score margin, top-1 over the best unchosen expert: {m1:.3f}"
                  if m1 is not None and m1 == m1 else "")
        tips.append(f"{txt!r} id {tid} · doc pos {toks.doc_pos.iloc[i]}\nlayer {layer} top-k (weight): "
                    f"{route_s}\nloss {loss_s} nats{margin}")
    return top1, tips


def expert_chips(top1: list) -> str:
    """HTML chips of the (at most 24) most frequent top-1 experts, in their colours, with their counts."""
    seen = sorted({e for e in top1 if e is not None})
    counts = {e: top1.count(e) for e in seen}
    return " ".join(f"<span style='background:{charts.expert_color(e)};"
                    f"color:{charts.text_color(charts.expert_color(e))};"
                    f"border-radius:4px;padding:1px 6px;margin:2px;display:inline-block;font-size:0.8rem'>"
                    f"expert {e}: {counts[e]}</span>" for e in sorted(seen, key=lambda e: -counts[e])[:24])


def loss_chart(toks, texts, top1) -> None:
    fig = go.Figure(go.Scatter(
        x=toks.doc_pos, y=toks.loss, mode="lines+markers", line=dict(color="#999", width=1),
        marker=dict(size=5, color=[charts.expert_color(e) if e is not None else "#999" for e in top1]),
        customdata=np.array([[t, "—" if e is None else e] for t, e in zip(texts, top1)], dtype=object),
        hovertemplate="pos %{x}<br>token %{customdata[0]}<br>loss %{y:.3f} nats<br>top-1 expert "
                      "%{customdata[1]}<extra></extra>"))
    fig.update_xaxes(title="position in document")
    fig.update_yaxes(title="token loss (nats)")
    coloured = any(e is not None for e in top1)  # grey markers (no routing) were titled by their colour
    title = "Token loss along the document" + (" (marker colour = top-1 expert)" if coloured else "")
    st.plotly_chart(charts.style(fig, title, 300), key="doc_loss")


def route_of_one_token(ref, route, toks, texts) -> None:
    if route is None:  # no routing, and `doc_routing` said why: no heading over nothing (a browser tour)
        return
    st.subheader("Route of one token through the layers")
    if route.empty:
        st.info("No routing rows for this document (recorded with `--router-logits none`?).")
        return
    opts = list(range(len(toks)))
    i = st.select_slider("Token", opts, value=min(1, len(opts) - 1), key="te_token",
                         format_func=lambda j: f"{j}: {texts[j]!r}")
    s, p = int(toks.seq_id.iloc[i]), int(toks.pos.iloc[i])
    rr = route[(route.seq_id == s) & (route.pos == p)].sort_values("layer")
    E = int((ref.info.get("model_args") or {}).get("n_routed_experts") or
            max(int(max(x)) for x in rr.expert_ids) + 1)
    z = np.full((len(rr), E), np.nan)
    rank = np.full((len(rr), E), np.nan)
    weighted = all(w is not None and hasattr(w, "__len__") for w in rr.expert_weights)
    for j, (ids, w) in enumerate(zip(rr.expert_ids, rr.expert_weights)):
        rank[j, np.asarray(ids, int)] = np.arange(1, len(ids) + 1)
        z[j, np.asarray(ids, int)] = w if weighted else rank[j, np.asarray(ids, int)]
    what, zlabel, fmt = ("weight", "weight", ".4f") if weighted else ("rank (no weights recorded)", "rank", "d")
    st.plotly_chart(charts.heatmap(z, list(range(E)), [data.layer_label(ref, x) for x in rr.layer],
                                   title=f"Token {texts[i]!r} (window {s}, pos {p}): {what} of each chosen expert",
                                   xlabel="expert", ylabel="", zlabel=zlabel, fmt=fmt, customdata=rank,
                                   extra_hover="<br>rank %{customdata}"), key="route")
    if weighted:
        scale = (ref.info.get("model_args") or {}).get("route_scale")
        st.caption("Weight: the gate's multiplier of the expert's output (its unbiased score, normalised over "
                   "the top-k" + (f", times route_scale {scale:g}, so a layer's weights sum to about {scale:g}"
                                  if scale else ", times the model's route_scale") + ").")


with ui.guard("this page"):
    main()
