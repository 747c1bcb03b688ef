"""Co-activation and flow: which experts a layer picks together, and how tokens' top-1 experts at one
layer map to their top-1 experts at another (a Sankey)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboards import charts, compute, data, ui

MAX_LINKS = 40


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
    ui.caption_sample(ref)

    layer = ui.layer_picker(layers, "co_layer")
    with ui.guard("the co-activation heatmap"):
        ids = data.layer_topk(ref, layer)
        if ids.size == 0:
            st.info(f"No routing rows for layer {layer} yet.")
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
                title=f"layer{layer}: co-activation N(Eᵢ, Eⱼ) / N(Eᵢ) over {len(ids):,} tokens "
                      f"(pairs within the top-{ids.shape[1]})",
                height=560), key="coact")
            st.caption("Row i: of the tokens that chose expert i, the share that also chose expert j "
                       "(`analyses.metrics.coactivation`; the diagonal is left blank).")

    st.subheader("Top-1 flow between two layers")
    c1, c2, c3 = st.columns(3)
    la = c1.selectbox("From layer", layers, index=0, key="flow_a")
    lb = c2.selectbox("To layer", layers, index=min(1, len(layers) - 1), key="flow_b")
    n_links = c3.slider("Largest flows shown", 10, 200, MAX_LINKS, step=10, key="flow_n")
    with ui.guard("the Sankey"):
        if la == lb:
            st.info("Pick two different layers.")
            return
        flow = data.top1_flow(ref, la, lb)
        if flow.empty:
            st.info("No tokens routed at both layers yet.")
            return
        total = int(flow.n.sum())
        shown = flow.head(n_links)
        src = sorted(shown.src.unique())
        dst = sorted(shown.dst.unique())
        si, di = {e: i for i, e in enumerate(src)}, {e: i for i, e in enumerate(dst)}
        links = [(si[s], di[d], int(n)) for s, d, n in zip(shown.src, shown.dst, shown.n)]
        fig = charts.sankey([f"L{la} · expert {e}" for e in src], [f"L{lb} · expert {e}" for e in dst], links,
                            src_colors=[charts.expert_color(e) for e in src],
                            dst_colors=[charts.expert_color(e) for e in dst],
                            title=f"Top-1 expert at layer {la} → top-1 expert at layer {lb}")
        st.plotly_chart(fig, key="sankey")
        same = int(flow[flow.src == flow.dst].n.sum())
        st.caption(f"The {len(shown)} largest of {len(flow)} flows, {int(shown.n.sum()) / total:.0%} of "
                   f"{total:,} tokens. Same expert id at both layers: {same / total:.1%} (ids are not "
                   "shared across layers; this is only a reference point).")


with ui.guard("this page"):
    main()
