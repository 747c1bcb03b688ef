"""Compare runs: any two runs side by side on balance and specialisation (balanced vs unbalanced
training, baseline vs ablated checkpoint, two corpora...)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboards import charts, compute, data, ui

RUN_COLORS = ("#4C78A8", "#F58518")


def loads_of(ref: data.RunRef):
    return data.total_loads(ref, 50 if ref.kind == "train" else None)


def grouped(tables: dict, col: str, title: str, ylabel: str, key: str) -> None:
    fig = go.Figure()
    for (name, t), c in zip(tables.items(), RUN_COLORS):
        fig.add_trace(go.Bar(x=t.layer, y=t[col], name=name, marker_color=c,
                             hovertemplate=f"{name}<br>%{{x}}<br>{ylabel} %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title=ylabel)
    st.plotly_chart(charts.style(fig, title, 340), key=key)


def main() -> None:
    st.title("Compare runs")
    runs = [r for r in ui.all_runs() if r.kind in ("probe", "train")]
    if len(runs) < 2:
        if not runs:
            ui.no_runs()
        else:
            st.info("Comparing needs at least two runs in the directory.")
        return
    names = [r.name for r in runs]
    cur = st.session_state.get(ui.RUN_KEY)
    ia = names.index(cur) if cur in names else 0
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", names, index=ia, key="cmp_a")
    kind = next(r.kind for r in runs if r.name == a)
    order = [names[(names.index(a) + k) % len(names)] for k in range(1, len(names))]
    ib = names.index(next((n for n in order if runs[names.index(n)].kind == kind), order[0]))
    b = c2.selectbox("Run B", names, index=ib, key="cmp_b")  # default: the next run of the same kind
    ra, rb = (next(r for r in runs if r.name == n) for n in (a, b))
    for r, col in ((ra, c1), (rb, c2)):
        with col:
            ui.status_banner(r)
    if ra.kind == "train" or rb.kind == "train":
        st.caption("Training runs: loads summed over their last 50 steps.")

    tables, rels = {}, {}
    for r in (ra, rb):
        with ui.guard(f"the balance of {r.name}"):
            loads = loads_of(r)
            if loads.empty:
                st.info(f"`{r.name}` has no expert loads yet.")
                continue
            E = int((r.info.get("model_args") or {}).get("n_routed_experts") or loads.expert.max() + 1)
            tables[r.name] = compute.balance_rows(loads, None, E)
            rels[r.name] = compute.relative_loads(loads, E)
    if len(tables) == 2:
        left, right = st.columns(2)
        with left:
            grouped(tables, "maxvio_global", "MaxVio per layer", "MaxVio", "cmp_maxvio")
        with right:
            grouped(tables, "balancedness", "Balancedness (mean / max) per layer", "balancedness", "cmp_bal")
        zmax = max(float(rels[n][1].max()) for n in rels)
        cols = st.columns(2)
        for col, (n, (layers, rel)) in zip(cols, rels.items()):
            col.plotly_chart(charts.heatmap(rel, list(range(rel.shape[1])), layers, title=f"{n}: relative load",
                                            xlabel="expert", zlabel="relative load", colorscale=charts.DIVERGING,
                                            zmid=1.0, fmt=".3f"), key=f"cmp_rel_{n}")
        st.caption(f"Both heatmaps centre on 1 (balanced); largest relative load across the two: {zmax:.2f}.")

    probes = [r for r in (ra, rb) if r.kind == "probe"]
    if len(probes) == 2:
        with ui.guard("specialisation"):
            nm = {}
            for r in probes:
                de = data.domain_expert(r)
                doms = sorted(de.domain.unique())
                if len(doms) < 2:
                    ui.one_domain_note(r, doms, "NMI(domain; expert)")
                    continue
                E = int((r.info.get("model_args") or {}).get("n_routed_experts") or de.expert.max() + 1)
                nm[r.name] = compute.nmi_by_layer(de, E)
            if nm:
                grouped(nm, "nmi", "NMI(domain; expert) per layer", "NMI", "cmp_nmi")
    elif ra.kind == rb.kind == "train":
        with ui.guard("the training curves"):
            left, right = st.columns(2)
            loss, mv = {}, {}
            for r in (ra, rb):
                tm = data.train_metrics(r)
                loss[r.name] = (tm.step, tm.lm_loss.rolling(10, min_periods=1).mean())
                cols = [c for c in tm.columns if c.startswith("maxvio_layer")]
                mv[r.name] = (tm.step, tm[cols].mean(axis=1).rolling(10, min_periods=1).mean())
            colors = dict(zip((ra.name, rb.name), RUN_COLORS))
            left.plotly_chart(charts.lines(loss, title="LM loss (10-step mean)", xlabel="step", ylabel="nats",
                                           colors=colors), key="cmp_loss")
            right.plotly_chart(charts.lines(mv, title="MaxVio_batch, mean over layers (10-step mean)",
                                            xlabel="step", ylabel="MaxVio", colors=colors), key="cmp_mv")
    else:
        st.caption("Specialisation (NMI) is compared between two probe runs (training runs log no domains per expert).")


with ui.guard("this page"):
    main()
