"""Compare runs: any two runs side by side on balance and specialisation (balanced vs unbalanced
training, baseline vs ablated checkpoint, two corpora...), and for two probe runs over the same
windows (two checkpoints on one corpus) their routing token by token: run vs run."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboards import charts, compute, data, research, training_data, ui
from probe.model_shape import model_differences

RUN_COLORS = ("#4C78A8", "#F58518")
# the changed tokens' columns in pixels, within the page's column at 1024 px less a vertical scroll bar
# (`ui.PAGE_PX`); four headers shorter than the table's names, which their help gives
CHANGE_COLUMNS = {"token": 80, "domain": 80, "seq_id": 66, "pos": 50, "layers": 58, "top1_changed": 56,
                  "set_changed": 74, "jaccard": 64}
CHANGE_CONFIG = {
    "seq_id": st.column_config.Column(label="window", help="seq_id: the window the token is in"),
    "layers": st.column_config.Column(help="layers: the MoE layers compared, those both runs routed the token at"),
    "top1_changed": st.column_config.Column(label="top-1", help="top1_changed: the layers whose top-1 expert differs"),
    "set_changed": st.column_config.Column(label="top-k set", help="set_changed: the layers whose top-k set differs"),
    "jaccard": st.column_config.NumberColumn(
        label="Jaccard", format="%.3f", help="jaccard: |A ∩ B| / |A ∪ B| of the two top-k sets, mean over the layers")}


def loads_of(ref: data.RunRef):
    return data.total_loads(ref, 50 if ref.kind == "train" else None)


def grouped(tables: dict, col: str, title: str, ylabel: str, key: str, colors: dict | None = None) -> None:
    """Bars per layer, one series per run, each in its run's colour (`colors`: run name -> colour; a
    run left out, e.g. one domain only, must not hand its colour to the other: a review found run B's
    bars in run A's blue, without a legend) and always with a legend."""
    fig = go.Figure()
    colors = colors or dict(zip(tables, RUN_COLORS))
    for name, t in tables.items():
        fig.add_trace(go.Bar(x=t.layer, y=t[col], name=name, marker_color=colors[name],
                             hovertemplate=f"{name}<br>%{{x}}<br>{ylabel} %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="group", showlegend=True)
    fig.update_yaxes(title=ylabel)
    st.plotly_chart(charts.style(fig, title, 340), key=key)


def _recorded_with_routing(r: data.RunRef) -> bool:
    """A `dsv3-probe record` run (its run.json names no kind) that holds routing: run vs run applies."""
    return r.kind == "probe" and r.info.get("kind") is None and data.has_table(r, "routing")


def comparable(a: data.RunRef, b: data.RunRef) -> bool:
    """Whether `b` is a partner the page can compare `a` with: the same kind and model shape (routed
    experts, layers; `probe.model_shape`, where a count one run.json does not state is not held
    against it), loads of its own, and routing too when `a` is a recorded run with routing, of the
    same experts a token (run vs run refuses other counts). The next run of A's kind was taken
    whatever it was: an SGLang import of another model, a spec run or an analysis-only run, with
    nothing to compare (a tour)."""
    routed = _recorded_with_routing(a)
    fields = ("n_routed_experts", "n_layers") + (("n_activated_experts",) if routed else ())
    return (b.name != a.name and b.kind == a.kind and not model_differences(a, b, fields)
            and data.has_table(b, "expert_load") and (not routed or _recorded_with_routing(b)))


def default_partner(a: data.RunRef, runs: list[data.RunRef]) -> int:
    """The index in `runs` (the runs the page offers, each with loads: `offered`) of run B's default:
    the first run after A (round the list) that is `comparable`, else the next of A's kind, else the next."""
    i = runs.index(a)
    order = runs[i + 1:] + runs[:i]
    pick = next((r for r in order if comparable(a, r)), None) or next((r for r in order if r.kind == a.kind), order[0])
    return runs.index(pick)


def offered(runs: list[data.RunRef]) -> tuple[list[data.RunRef], list[data.RunRef]]:
    """(the runs the page can compare, those it cannot): every section compares loads, so a run without
    expert loads (a spec, ablation or analysis-only run, a record with none yet) is no run A or B. With
    no partner for A, run B was the next such run, and the page compared nothing ("`b-spec` has no
    expert loads yet"; a review)."""
    has = [data.has_table(r, "expert_load") for r in runs]
    return [r for r, h in zip(runs, has) if h], [r for r, h in zip(runs, has) if not h]


def _none_offered(runs: list[data.RunRef], left: list[data.RunRef]) -> None:
    """Say plainly why fewer than two runs can be compared, naming the runs left out."""
    said = ", ".join(f"`{r.name}`" for r in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    why = (f": {said} {'holds' if len(left) == 1 else 'hold'} none (a spec, ablation or analysis-only run, or a "
           "record with none yet)") if left else ""
    st.info(f"Comparing needs two runs with expert loads (records, imports of loads, training runs); this directory "
            f"holds {len(runs)} such run{'' if len(runs) == 1 else 's'}{why}.")


def pick_runs():
    """Runs A and B from two select boxes of the `offered` runs (B defaults to `default_partner`), with
    their status banners; None, said plainly, when fewer than two runs can be compared."""
    every = [r for r in ui.all_runs() if r.kind in ("probe", "train")]
    runs, left = offered(every)
    if len(runs) < 2:
        if not every:
            ui.no_runs()
        else:
            _none_offered(runs, left)
        return None
    names = [r.name for r in runs]
    cur = st.session_state.get(ui.RUN_KEY)
    if cur in (r.name for r in left):
        st.info(f"`{cur}` holds no expert loads to compare: pick two of the runs that do.")
    ia = names.index(cur) if cur in names else 0
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", names, index=ia, key="cmp_a")
    b = c2.selectbox("Run B", names, index=default_partner(runs[names.index(a)], runs), key="cmp_b")
    ra, rb = (next(r for r in runs if r.name == n) for n in (a, b))
    for r, col in ((ra, c1), (rb, c2)):
        with col:
            ui.status_banner(r)
    if ra.name == rb.name:  # the sections key their figures by run: one run would draw half of them
        st.info("Run A and run B are the same run: pick two different runs to compare.")
        return None
    return ra, rb


def balance(ra: data.RunRef, rb: data.RunRef) -> None:
    """MaxVio and balancedness per layer of both runs, and their relative-load heatmaps."""
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
    if len(tables) < 2:
        return
    left, right = st.columns(2)
    with left:
        grouped(tables, "maxvio_global", "MaxVio per layer", "MaxVio", "cmp_maxvio")
    with right:
        grouped(tables, "balancedness", "Balancedness (mean / max) per layer", "balancedness", "cmp_bal")
    figs = charts.relative_load_heatmaps(rels)
    for col, (n, fig) in zip(st.columns(2), figs.items()):
        col.plotly_chart(fig, key=f"cmp_rel_{n}")
    zmax = next(iter(figs.values())).data[0].zmax
    st.caption("Both heatmaps share one colour scale: white at 1 (balanced), the darkest red at the largest "
               "relative load of the two" + (f" ({zmax:.2f})." if zmax is not None else "."))


def specialisation(probes: list[data.RunRef]) -> None:
    """I(domain; expert) / H(domain) per layer of two probe runs (a run with fewer than two domains says so)."""
    with ui.guard("specialisation"):
        nm, few = {}, []
        for r in probes:
            de = data.domain_expert(r)
            doms = sorted(de.domain.unique())
            if len(doms) < 2:
                few.append((r, doms))
                continue
            E = int((r.info.get("model_args") or {}).get("n_routed_experts") or de.expert.max() + 1)
            nm[r.name] = compute.domain_nmi_by_layer(de, E)
        if few:  # one note for both runs: two read near word for word (a tour)
            ui.domains_note(compute.DOMAIN_NMI_LABEL, few)
        if nm:
            grouped(nm, "domain_nmi", f"{compute.DOMAIN_NMI_LABEL} per layer", "I / H(domain)", "cmp_nmi",
                    colors=dict(zip((r.name for r in probes), RUN_COLORS)))


def training_curves(ra: data.RunRef, rb: data.RunRef) -> None:
    """Two training runs' LM loss and mean MaxVio_batch over their steps."""
    with ui.guard("the training curves"):
        left, right = st.columns(2)
        loss, mv = {}, {}
        for r in (ra, rb):
            tm = training_data.train_metrics(r)
            loss[r.name] = (tm.step, training_data.smooth(tm.lm_loss, 10))
            cols = [c for c in tm.columns if c.startswith("maxvio_layer")]
            mv[r.name] = (tm.step, training_data.smooth(tm[cols].mean(axis=1), 10))
        colors = dict(zip((ra.name, rb.name), RUN_COLORS))
        left.plotly_chart(charts.lines(loss, title="LM loss (10-step centred mean)", xlabel="step", ylabel="nats",
                                       colors=colors), key="cmp_loss")
        right.plotly_chart(charts.lines(mv, title="MaxVio_batch, mean over layers (10-step centred mean)",
                                        xlabel="step", ylabel="MaxVio", colors=colors), key="cmp_mv")


def held_sample(r: data.RunRef) -> tuple[int, dict[str, int]]:
    """(tokens, tokens per domain) a probe run holds: run.json's plan once it is complete; what its
    tokens table holds so far while it is running or after an interruption (the note set a running
    run's plan, 3,000 tokens, beside the other run while it held none; a tour)."""
    p = r.info.get("planned") or {}
    if r.status == "complete" and not p and r.info.get("kind") == "import":
        # counts alone (SGLang stat, per_pass) plan no tokens: their passes' (data.tokens_in_run), of the
        # one stream they import. They held none, so production traffic beside a corpus run was compared
        # without the note that a per_token import of the same traffic got (a serving engineer's tour)
        n = int(data.tokens_in_run(r) or 0)
        return n, dict.fromkeys((r.info.get("domains") or [])[:1], n) if n else {}
    if r.status == "complete":
        return int(p.get("tokens") or 0), dict(p.get("tokens_per_domain") or {})
    if not data.has_table(r, "tokens"):
        return 0, {}
    got = data.recorded_tokens(r)
    per = {str(d): int(n) for d, n in zip(got.domain, got.tokens)}
    return sum(per.values()), per


def sample_note(ra: data.RunRef, rb: data.RunRef) -> str | None:
    """Where two recorded runs cover different samples (token counts apart by more than 10%, or other
    domain shares), their whole-run figures are not like for like: say so, with each run's sample (a
    60,000-token run beside a 359,101-token one looked four to eight times less balanced; a review)."""
    if ra.kind != "probe" or rb.kind != "probe":
        return None
    held = [held_sample(r) for r in (ra, rb)]
    if not all(n for n, _ in held):
        return None
    tokens = [n for n, _ in held]
    shares = [{d: k / n for d, k in per.items()} for n, per in held]
    apart = max((abs(shares[0].get(d, 0) - shares[1].get(d, 0)) for d in {*shares[0], *shares[1]}), default=0.0)
    if max(tokens) <= 1.1 * min(tokens) and apart <= 0.05:
        return None

    def sample(r, n, sh):
        return f"`{r.name}` {n:,} tokens (" + ", ".join(f"{d} {v:.0%}" for d, v in sorted(sh.items())) + ")"

    return ("The two runs cover different samples, so their whole-run figures below (MaxVio, balancedness, "
            "specialisation) compare different token mixes as well as the models: "
            + "; ".join(sample(r, n, sh) for r, n, sh in zip((ra, rb), tokens, shares))
            + ". Record both with the same corpus, `--max-tokens` and `--order` to compare like for like; "
            "Run vs run below uses only the windows both hold.")


def main() -> None:
    st.title("Compare runs")
    picked = pick_runs()
    if picked is None:
        return
    ra, rb = picked
    if ra.kind == "train" or rb.kind == "train":
        st.caption("Training runs: loads summed over their last 50 steps (every step of a shorter run).")
    note = sample_note(ra, rb)
    if note:
        st.warning(note)
    balance(ra, rb)
    probes = [r for r in (ra, rb) if r.kind == "probe"]
    if len(probes) == 2:
        specialisation(probes)
        run_vs_run(ra, rb)
    elif ra.kind == rb.kind == "train":
        training_curves(ra, rb)
    else:
        st.caption(f"Specialisation ({compute.DOMAIN_NMI_LABEL}) is compared between two probe runs (training runs "
                   "log no domains per expert).")


def run_vs_run(ra: data.RunRef, rb: data.RunRef) -> None:
    """Per-layer routing agreement of two probe runs over the same windows, and the tokens that moved most."""
    st.subheader("Run vs run: the same tokens' routing")
    if any(ui.lost_note(r, ("routing",), "Run vs run") for r in (ra, rb)):
        return
    missing = [r.name for r in (ra, rb) if not data.has_table(r, "routing")]
    if missing:
        st.info(f"Run vs run compares routing token by token, and {' and '.join(f'`{n}`' for n in missing)} "
                f"{'has' if len(missing) == 1 else 'have'} no `routing` table.", icon="ℹ️")
        return
    with ui.guard("run vs run"):
        res = research.run_vs_run(ra, rb)
        if "error" in res:
            st.info(f"Run vs run needs two runs over the same windows (e.g. two checkpoints recorded on one corpus "
                    f"with the same `--seq-len` and `--order`): {res['error']}.", icon="ℹ️")
            return
        ag, ch = res["agreement"], res["changes"]
        c = st.columns(5)
        for col, letter, ref, share in ((c[0], "A", ra, ag.share_of_a), (c[1], "B", rb, ag.share_of_b)):
            col.metric(f"Run {letter} matched", f"{share.min():.1%}",
                       help=f"tokens routed in both runs / tokens routed in run {letter}, `{ref.name}` "
                            "(smallest over layers)")
        w = ag.tokens / ag.tokens.sum()
        c[2].metric("Same top-1 expert", f"{(ag.top1_same * w).sum():.1%}", help="over layers, weighted by tokens")
        c[3].metric("Same top-k set", f"{(ag.set_same * w).sum():.1%}",
                    help="the same k experts in any order; over layers, weighted by tokens")
        c[4].metric("Mean Jaccard (top-k)", f"{(ag.jaccard * w).sum():.3f}",
                    help="|A ∩ B| / |A ∪ B| of the two top-k sets; over layers, weighted by tokens")
        fig = go.Figure()
        x = [data.layer_label(ra, v) for v in ag.layer]
        for col, name, color in (("top1_same", "same top-1 expert", RUN_COLORS[0]),
                                 ("set_same", "same top-k set", "#54A24B"),
                                 ("jaccard", "mean Jaccard (top-k)", RUN_COLORS[1]),
                                 ("nmi_top1", "NMI (top-1)", "#BAB0AC")):
            fig.add_trace(go.Bar(x=x, y=ag[col], name=name, marker_color=color, customdata=ag.tokens,
                                 hovertemplate=f"%{{x}}<br>{name}: %{{y:.3f}}<br>tokens %{{customdata:,}}"
                                               "<extra></extra>"))
        fig.update_layout(barmode="group")
        fig.update_yaxes(title="agreement", range=[0, 1.02])
        # the chart and the table below it each at the page's width: beside the chart, in the right 3/5 (328 px
        # at 1024 px), the table's eight columns took 528 px, the changes out of view (a tour)
        st.plotly_chart(charts.style(fig, "Agreement per layer", 360), key="cmp_agree")
        changed = ch[(ch.top1_changed > 0) | (ch.set_changed > 0)]
        st.markdown("**Tokens whose routes changed most** (lowest mean Jaccard over the layers)")
        if changed.empty:
            st.info("No token's top-k set differs between the two runs.")
            return
        tok = ui.tokenizer_for(ra)
        ui.wrapped_table(changed.assign(token=ui.token_text(tok, changed.token_id, stream=False))[list(CHANGE_COLUMNS)],
                         CHANGE_COLUMNS, CHANGE_CONFIG, key="cmp_changes")
        st.caption("Routing rows matched on (window, position, layer); expert ids compared by index, so this "
                   "reads as agreement for two checkpoints of one model (fine-tuned, ablated, re-balanced). "
                   "`analyses.metrics.routing_agreement_from_runs`, `route_changes_from_runs`.")


with ui.guard("this page"):
    main()
