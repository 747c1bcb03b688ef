"""Serving: the run's expert loads replayed, forward pass by forward pass, on GPUs. Balancedness (mean /
max GPU load, the SGLang / vLLM EPLB metric) of the current placement (the engine's, from an imported
SGLang dump, else SGLang's trivial one) against a placement planned from the passes the user picks,
and that plan as a file SGLang loads."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analyses.placement import MAX_SLOTS
from dashboards import charts, compute, data, ui

NOW, PLAN = "current placement", "planned placement"
COLORS = {NOW: "#9D755D", PLAN: "#4C78A8"}


def ordinal(n: int) -> str:
    """2nd, 3rd, 11th, 21st: the pass stride in the page's sentences (they said "every 3th")."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _replay(ref: data.RunRef, window: tuple[int, int], gpus: int, redundant: int, nodes: int, mode: str) -> dict:
    steps, layers, X = data.pass_loads(ref)
    current, current_gpus = data.placement_maps(ref)
    return compute.serving_replay(steps, layers, X, window, gpus=gpus, redundant=redundant, nodes=nodes,
                                  groups=_groups(ref, X.shape[2]), mode=mode, current=current,
                                  current_gpus=current_gpus)


replay = data.cached(_replay)


def _groups(ref: data.RunRef, E: int) -> int:
    g = int((ref.info.get("model_args") or {}).get("n_expert_groups") or 1)
    return g if g >= 1 and E % g == 0 else 1


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gpu_options(E: int, redundant: int) -> list[int]:
    """GPU counts for E experts + `redundant` slots: those dividing the slots (every GPU as many), two or
    more, and none holding more than E slots (an expert twice on a GPU spreads no load; the placement
    command refuses it, and the page's command line for it was refused)."""
    n = E + redundant
    return [d for d in _divisors(n)[1:] if n // d <= E] or [1]


def _pick(label: str, options: list, key: str, default, **kw):
    """A selectbox whose remembered value is reset when the options no longer hold it."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    return st.selectbox(label, options, key=key, **kw)


def source_caption(ref: data.RunRef, n_passes: int, every: int) -> None:
    src = ref.info.get("source") or {}
    if src.get("name") == "sglang":
        pl = src.get("placement")
        # per_pass and per_token dumps always carry the server's map: without a placement, the import left it
        # out (the GPU count unknown); the page said the dump carried none (a serving engineer's tour)
        none = ("The dump carries no placement" if src.get("mode") == "stat" else
                "The dump's map was not imported (the server's GPU count was unknown: import every rank's file, "
                "or pass `--gpus N`, as the import's note said)")
        st.caption(f"Imported from SGLang's `{src.get('mode')}` expert-distribution dump ({len(src.get('files', []))} "
                   f"file(s), ranks {src.get('ranks')}): {src.get('passes', n_passes):,} forward passes. "
                   + (f"Current placement: the dump's map ({pl['physical_experts']} physical experts on "
                      f"{pl['gpus']} GPUs)." if pl else f"{none}: the current one is taken "
                      "to be SGLang's trivial map (`--init-expert-location trivial`) with the GPUs and redundant "
                      "slots chosen below.")
                   + " Both placements are replayed on the logical loads, each expert's load split evenly over its "
                     "replicas (EPLB's model): the current figures model the server's, they are not its measured "
                     "per-slot counts, and SGLang's own utilisation rate also averages its dense layers in (1.0 each).")
        if src.get("pass_order_unknown"):  # the import's warning, which the windows below rest on (stderr only)
            st.warning(f"The order of these passes is unknown: SGLang's circular stat buffer "
                       f"({', '.join(src.get('full_buffers') or [])}) had no single run of unused rows, so it may "
                       "have wrapped. The plan window's totals are right, but which passes come before or after it "
                       "is not: record with `--expert-distribution-recorder-buffer-size -1` and import with "
                       "`--buffer-size -1` to keep every pass in order.")
    else:
        st.caption("Each recorded batch stands in for a forward pass. Current placement: SGLang's trivial map "
                   "with the GPUs and redundant slots chosen below. Import a server's own traffic with "
                   "`dsv3-probe import sglang DUMP`.")
    if every > 1:
        st.caption(f"The run has more than {data.MAX_PASSES:,} passes: every {ordinal(every)} is replayed.")


def controls(ref: data.RunRef, steps: np.ndarray, E: int, current_gpus: int | None, P_now: int | None,
             every: int = 1):
    # the window on a row of its own, the four choices below it: in one row of five at 1024 px the small
    # columns (80 px) broke their labels mid-word, `Redund` / `ant slots`, `hierarc` / `hical` (a tour)
    top, c = st.container(), st.columns(4)
    lo, hi = int(steps[0]), int(steps[-1])
    if lo < hi:
        default = (lo, int(steps[max(0, len(steps) // 2 - 1)])) if len(steps) >= 4 else (lo, hi)
        # in steps of the stride, so that a window holds replayed passes (it could hold none: a review)
        window = top.slider("Plan from passes", lo, hi, default, step=every, key="sv_window",
                             help="The planner sees only these passes' loads; the passes after them show how "
                                  "the plan holds up on traffic it has not seen.")
    else:
        window = (lo, hi)
        top.caption(f"One pass ({lo}): the plan is made from it.")
    # the planner's own bound (analyses.placement.MAX_SLOTS slots a layer): a cap of 4 x E lay below the
    # default of a dump whose map had more than 5 x E slots, and Streamlit refused to draw the page
    cap = max(0, MAX_SLOTS - E)
    now = max(0, P_now - E) if P_now else 0
    redundant = int(c[0].number_input("Redundant slots", 0, cap, min(now, cap), key="sv_redundant",
                                      help="Extra physical experts per layer for replicas of hot experts "
                                           f"(SGLang: --ep-num-redundant-experts); at most {cap:,}, the "
                                           f"planner's {MAX_SLOTS:,} slots a layer less the {E} experts"))
    if now > cap:
        c[0].caption(f"The current placement's {now:,} redundant slots are more than the planner takes: "
                     f"{cap:,} offered.")
    with c[1]:
        # the count the user picked is kept apart from the box's value: when the redundant slots make it
        # divide no more, the nearest count that does is shown, and the picked one comes back once it
        # divides again (each invalid step replaced the choice, which drifted to counts nobody picked and
        # the caption named them; a review)
        options = gpu_options(E, redundant)
        wanted = st.session_state.setdefault("sv_gpus_wanted", current_gpus or 8)
        st.session_state["sv_gpus"] = wanted if wanted in options else min(options, key=lambda o: (abs(o - wanted), -o))
        gpus = st.selectbox("GPUs", options, key="sv_gpus",
                            on_change=lambda: st.session_state.update(sv_gpus_wanted=st.session_state["sv_gpus"]),
                            help="Expert-parallel size: the GPUs the physical experts are spread over; each GPU "
                                 "holds as many slots as the others, so the count divides experts + redundant slots")
        if wanted != gpus:  # the redundant slots changed what divides
            n = E + redundant
            # a count that divides but puts more than E slots on a GPU is refused too: the caption said
            # "2 GPUs do not divide 16 + 80 = 96 slots" of the 2 GPUs a dump ran on
            why = (f"do not divide {E} + {redundant} = {n} slots" if wanted < 1 or n % wanted else
                   f"would hold {n // wanted} slots each, more than the {E} experts (an expert twice on a GPU)")
            st.caption(f"{wanted} GPUs {why}; {gpus} GPUs taken.")
    mode = c[2].radio("Planner", ("hierarchical", "global"), key="sv_mode", horizontal=False)
    nodes = 1
    if mode == "hierarchical":
        g = _groups(ref, E)
        with c[3]:
            nodes = _pick("Nodes", [d for d in _divisors(gpus) if g % d == 0], "sv_nodes", 1,
                          help="Groups of experts go to nodes first (hierarchical EPLB)")
    return window, gpus, redundant, nodes, mode


def main() -> None:
    st.title("Serving")
    ref = ui.selected_run()
    if ref is None:
        return
    loaded = None
    with ui.guard("the per-pass loads"):
        loaded = data.pass_loads(ref)
    if loaded is None:
        return
    steps, layers, X = loaded
    if not len(steps) or not X.sum():
        st.info("No expert loads recorded yet.")
        return
    E = X.shape[2]
    current, current_gpus = data.placement_maps(ref)
    n_all = data.pass_count(ref)
    every = data.pass_stride(n_all)
    source_caption(ref, n_all, every)
    P_now = len(next(iter(current.values()))) if current else None
    window, gpus, redundant, nodes, mode = controls(ref, steps, E, current_gpus, P_now, every)
    if not ((steps >= window[0]) & (steps <= window[1])).any():
        st.warning(f"No replayed pass lies in passes {window[0]}-{window[1]} (every {ordinal(every)} pass is replayed): "
                   "widen the plan window.")
        return
    with ui.guard("the replay"):
        r = replay(ref, tuple(window), gpus, redundant, nodes, mode)
        show(ref, steps, layers, E, r, window, gpus, redundant, nodes, mode, every)


def _mean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def show(ref, steps, layers, E, r, window, gpus, redundant, nodes: int = 1, mode: str = "hierarchical",
         every: int = 1) -> None:
    """The replay `r` drawn: the balancedness figures, the per-pass chart, the per-layer and per-GPU
    charts side by side, and the plan to download."""
    per_pass = {NOW: np.nanmean(r["now"], 1), PLAN: np.nanmean(r["plan"], 1)}
    _figures(r, steps, window, gpus, per_pass)
    _passes_chart(steps, window, per_pass)
    left, right = st.columns(2)
    with left:
        _layers_chart(ref, layers, r)
    with right:
        _gpus_chart(ref, layers, r, every)
    whole = window[0] <= min(steps) and window[1] >= max(steps)
    download(ref, r, E, gpus, redundant, nodes, mode, steps=None if whole else tuple(window), strided=every > 1)


def _figures(r: dict, steps, window, gpus: int, per_pass: dict) -> None:
    """The first step of `show`: the balancedness of both placements, in the plan window and after it
    (the planned one's difference only at the same GPU count), and of the window's summed load."""
    win = r["window"]
    later = np.asarray(steps) > window[1]  # the passes after the window (not those before it; a review)
    alike = r["now_gpus"] == gpus  # balancedness falls with the GPU count: deltas only at the same count

    def delta(a, b) -> str | None:
        return f"{_mean(a) - _mean(b):+.3f}" if alike else None

    if not alike:  # a plan for 10 GPUs showed -0.245 against the server's 2 (a review)
        st.info(f"The current placement runs on the server's {r['now_gpus']} GPUs and the plan on {gpus}: "
                f"balancedness (mean / max GPU load) falls as GPUs are added, so the two are shown side by "
                f"side without a difference. Pick {r['now_gpus']} GPUs to compare them.")
    m = st.columns(4)
    m[0].metric(f"Current, plan window ({r['now_gpus']} GPUs)", f"{_mean(per_pass[NOW][win]):.3f}",
                help="Mean over passes of the balancedness (mean / max GPU load) averaged over layers")
    m[1].metric(f"Planned, plan window ({gpus} GPUs)", f"{_mean(per_pass[PLAN][win]):.3f}",
                delta=delta(per_pass[PLAN][win], per_pass[NOW][win]))
    if later.any():
        m[2].metric("Current, later passes", f"{_mean(per_pass[NOW][later]):.3f}")
        m[3].metric("Planned, later passes", f"{_mean(per_pass[PLAN][later]):.3f}",
                    delta=delta(per_pass[PLAN][later], per_pass[NOW][later]),
                    help="Passes the planner did not see: how well the plan generalises")
    agg = {k: float(np.nanmean([g.mean() / g.max() if g.max() > 0 else np.nan for g in r[f"gpu_{k}"]]))
           for k in ("now", "plan")}
    st.caption(f"Balancedness of the plan window's summed load, which the planner balances: current {agg['now']:.3f}, "
               f"planned {agg['plan']:.3f}. Each forward pass waits for its busiest GPU, so the per-pass values above "
               "are what a server feels; small passes are noisy, and a plan for the window's total can lose to "
               "another placement pass by pass.")


def _passes_chart(steps, window, per_pass: dict) -> None:
    """The second step of `show`: both placements' balancedness pass by pass, the plan window shaded."""
    fig = charts.lines({k: (steps, v) for k, v in per_pass.items()}, title="Balancedness per forward pass "
                       "(mean / max GPU load, averaged over MoE layers)", xlabel="pass", ylabel="balancedness",
                       colors=COLORS, fmt=".3f", markers=len(steps) <= 60)
    # the label above the plot area: inside it, it sat on the lines, which run near 1 on an even placement
    fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#4C78A8", opacity=0.08, line_width=0,
                  annotation_text="plan window", annotation_position="top left", annotation_yanchor="bottom")
    fig.update_yaxes(range=[0, 1.02])
    st.plotly_chart(fig, key="sv_passes")


def _layers_chart(ref, layers, r: dict) -> None:
    """The third step of `show` (the left half): each MoE layer's balancedness over the plan window."""
    fig = go.Figure()
    for name, key in ((NOW, "now"), (PLAN, "plan")):
        mean = np.nanmean(np.where(r["window"][:, None], r[key], np.nan), 0)
        fig.add_trace(go.Bar(x=[data.layer_label(ref, x) for x in layers], y=mean, name=name,
                             marker_color=COLORS[name],
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(type="category")  # its ticks name the layers; a title there met the legend below
    fig.update_yaxes(title="balancedness", range=[0, 1.02])
    title = "Balancedness per layer, mean over the plan window's passes"  # not the summed load's (caption)
    st.plotly_chart(charts.fit_title(charts.style(fig, title, 360, barmode="group"), 0.5), key="sv_layers")


def _gpus_chart(ref, layers, r: dict, every: int) -> None:
    """The fourth step of `show` (the right half): a picked layer's load per GPU in the plan window."""
    layer = ui.layer_picker(layers, "sv_layer", ref=ref)
    i = list(layers).index(layer)
    fig = go.Figure()
    for name, key in ((NOW, "gpu_now"), (PLAN, "gpu_plan")):
        g = r[key][i]
        # the GPUs' numbers, the title saying they are GPUs (an axis title sat on the legend): `GPU 0` ...
        # turned on their side in half the page at 1024 px, cut to `GPl` at the chart's foot (a tour)
        fig.add_trace(go.Bar(x=[str(k) for k in range(len(g))], y=g, name=name, marker_color=COLORS[name],
                             hovertemplate=f"{name}<br>GPU %{{x}}: %{{y:,.0f}} assignments<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=0)
    # a strided run's bars sum the replayed passes only (they claimed the window's whole load; a review)
    fig.update_yaxes(title="assignments in the plan window" if every == 1 else
                     f"assignments in the window's replayed passes (1 in {every})")
    st.plotly_chart(charts.style(fig, f"{data.layer_label(ref, layer)}: load per GPU", 320, barmode="group"),
                    key="sv_gpu")


def download(ref, r, E, gpus, redundant, nodes: int = 1, mode: str = "hierarchical",
             steps: tuple[int, int] | None = None, strided: bool = False) -> None:
    """The plan as SGLang's file, and the command line that plans the same: the plan window as
    `--steps` (the command sums every pass in it; a strided replay planned from 1 pass in N, so
    there the command's plan can differ, and the caption says so)."""
    from analyses.placement.export import sglang_map

    n_layers = int((ref.info.get("model_args") or {}).get("n_layers") or max(r["plans"]) + 1)
    body = json.dumps({"physical_to_logical_map": sglang_map(r["plans"], n_layers, E).tolist()})
    st.download_button("Download the plan for SGLang (plan.json)", body, file_name="plan.json",
                       mime="application/json", icon=":material/download:", key="sv_download")
    # the planner's choices too: without them the command planned another layout (a review)
    cmd = (f"python -m analyses.placement {ui.path_arg(ref.path)} --gpus {gpus} --redundant {redundant}"
           + (f" --nodes {nodes}" if nodes > 1 else "") + (" --mode global" if mode == "global" else "")
           + (f" --steps {steps[0]}-{steps[1]}" if steps else "") + " --format sglang --out plan.json")
    # the command a code block of its own, as the Ablations page's: as inline code longer than its line it
    # broke where the line ended, `--` at one line's end and `format` on the next (a tour at 1024 px)
    st.caption(f"Serve with `--init-expert-location plan.json --ep-num-redundant-experts {redundant}` on "
               f"{gpus} expert-parallel GPUs. "
               + ("The same plan from the command line:" if not strided else
                  "From the command line, which sums every pass of the window where this page replayed 1 in "
                  "every few, so its plan can differ a little:")
               + ui.command_block(cmd))


with ui.guard("this page"):
    main()
