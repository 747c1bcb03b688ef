"""Expert placement planner: replicate hot experts and pack experts onto nodes and GPUs from the
loads a run measured, as DeepSeek's open EPLB does (our own implementation of the same policy).

    python -m analyses.placement runs/x --gpus 8 --redundant 8                       # hierarchical, 1 node
    python -m analyses.placement runs/x --gpus 16 --nodes 2 --redundant 16 --out plan.parquet
    python -m analyses.placement runs/x --gpus 8 --redundant 8 --mode global --out plan.json
    python -m analyses.placement runs/x --gpus 32 --redundant 32 --format sglang --out plan.json   # SGLang
    python -m analyses.placement runs/x --gpus 32 --redundant 32 --format eplb --out plan.pt       # EPLB's maps
    python -m analyses.placement runs/x --format logical-count --out counts.json   # loads for SGLang's EPLB
    python -m analyses.placement runs/prod --gpus 8 --redundant 8 --steps 0-93     # from these passes only

Input: per MoE layer, the total load of each logical expert (`expert_load`, summed over the run, or
over its steps FIRST..LAST with `--steps`: a record's batches, a server dump's forward passes).
Each layer gets `E + redundant` physical slots, the same number on every GPU; with redundant slots, at
most 16,384 (MAX_SLOTS: the planner's time grows with the square of the slots).

- replicate: repeatedly give one more replica to the expert with the highest load per replica
  (a replica serves load / replicas of its expert's tokens); experts that measured no load at all (a
  layer, or in hierarchical mode a node's groups) are planned as evenly loaded, not (as EPLB's rule
  would) with every redundant slot on the first of them, its copies stacked on one GPU;
- pack: place items largest first, each onto the least-loaded GPU that still has a free slot, then
  swap pairs of replicas between the most-loaded GPU and another while a swap lowers the maximum
  (EPLB stops at the greedy packing: same replica counts, a different map, a maximum no higher);
- hierarchical (`--mode hierarchical`): the model's expert groups (`n_expert_groups`, the groups
  node-limited routing selects from) are first packed onto nodes the same way (equal groups per
  node, by group load); each node then replicates its own experts into its share of the redundant
  slots and packs them onto its GPUs, so a token's experts stay inside the nodes its group routing
  allows;
- global (`--mode global`): one pool: replicate over all experts, pack onto all GPUs.

Output: the physical-to-logical map as Parquet (`.parquet`: one row per slot with layer, node, gpu,
slot, physical, logical expert, replicas of that expert and predicted load of the replica) or JSON
(`.json`: per layer, the balancedness before, current and after, per-GPU loads, replicas per expert
and `phy_to_log[gpu][slot]`), and a table per layer of the predicted per-GPU balancedness (mean / max
GPU load, SGLang / vLLM EPLB metric) before (the plain contiguous placement: experts in order,
E / GPUs per GPU, no replicas), current (the placement the loads ran on: an imported dump's map, else
SGLang's trivial map of E + redundant slots, as the dashboard's Serving page replays it) and after.
`--format sglang | eplb | logical-count` writes what SGLang or deepseek-ai/EPLB read (export.py).

NOTE: greedy packing is a heuristic; in contrived cases (loads [3, 3, 0, 2, 2, 2] on 2 GPUs) it
loses to the contiguous placement. The planner therefore also tries the contiguous placement (its
spare slots filled with replicas of experts already on that GPU, which leaves every GPU's load
unchanged) and keeps the better, so balancedness after >= before. In hierarchical mode on several
nodes it may only do so where the contiguous placement keeps each expert group on one node (always
when E divides by the GPU count); elsewhere the node constraint comes first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from probe.job_signals import quiet_start

with quiet_start():  # `python -m analyses.placement`: Ctrl-C while numpy is imported (its __main__ takes it from there)
    import numpy as np

    from probe.writer import replacing


class PlacementError(ValueError):
    """Impossible placement request or unusable input (one-line message)."""


# physical slots per layer (experts + redundant) the planner takes: 64 x DeepSeek-V3's 256 experts. Its
# packing and swap search grow with the square of the slots (about 2 s a layer at this bound on one core)
MAX_SLOTS = 16384


@dataclass
class Placement:
    """One layer's plan. phy_to_log[g, s] = logical expert in slot s of GPU g."""
    loads: np.ndarray  # [E] logical expert loads
    phy_to_log: np.ndarray  # [G, S] int
    n_nodes: int
    mode: str

    @property
    def n_gpus(self) -> int:
        return self.phy_to_log.shape[0]

    @property
    def replicas(self) -> np.ndarray:  # [E] replicas per logical expert
        return np.bincount(self.phy_to_log.reshape(-1), minlength=len(self.loads))

    @property
    def slot_load(self) -> np.ndarray:  # [G, S] predicted load of each replica: load / replicas
        return self.loads[self.phy_to_log] / self.replicas[self.phy_to_log]

    @property
    def gpu_load(self) -> np.ndarray:  # [G]
        return self.slot_load.sum(1)

    @property
    def gpu_load_before(self) -> np.ndarray:  # [G] contiguous placement, no replicas
        return np.array([c.sum() for c in np.array_split(self.loads, self.n_gpus)])

    @property
    def balancedness_before(self) -> float:
        return _balancedness(self.gpu_load_before)

    @property
    def balancedness_after(self) -> float:
        return _balancedness(self.gpu_load)

    def to_frame(self, layer: int = 0):
        import pandas as pd

        G, S = self.phy_to_log.shape
        g = np.repeat(np.arange(G), S)
        return pd.DataFrame({"layer": layer, "node": g // (G // self.n_nodes), "gpu": g,
                             "slot": np.tile(np.arange(S), G),
                             "physical": np.arange(G * S), "logical": self.phy_to_log.reshape(-1),
                             "replicas": self.replicas[self.phy_to_log.reshape(-1)],
                             "predicted_load": self.slot_load.reshape(-1)})


def _balancedness(x: np.ndarray) -> float:
    """mean / max (SGLang / vLLM EPLB); NaN when nothing is loaded."""
    return float(x.mean() / x.max()) if len(x) and x.max() > 0 else float("nan")


# ------------------------------------------------------------------------------ building blocks
def replicate(loads, n_slots: int) -> np.ndarray:
    """Replica counts [E] filling n_slots >= E: each expert gets one, then each extra slot goes to
    the expert with the highest load per replica (ties: lowest id)."""
    x = np.asarray(loads, dtype=np.float64)
    if n_slots < len(x):
        raise PlacementError(f"{n_slots} slots cannot hold {len(x)} experts")
    r = np.ones(len(x), dtype=np.int64)
    for _ in range(n_slots - len(x)):
        r[int(np.argmax(x / r))] += 1
    return r


def pack(weights, n_bins: int, per_bin: int) -> np.ndarray:
    """Bin of each item [n]: largest weight first (ties: lowest index) onto the least-loaded bin
    with a free place (ties: lowest bin), exactly `per_bin` items per bin (n = n_bins * per_bin)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n_bins * per_bin:
        raise PlacementError(f"{len(w)} items do not fill {n_bins} bins of {per_bin}")
    load, count = np.zeros(n_bins), np.zeros(n_bins, dtype=np.int64)
    out = np.empty(len(w), dtype=np.int64)
    for i in np.argsort(-w, kind="stable"):
        free = np.nonzero(count < per_bin)[0]
        b = int(free[np.argmin(load[free])])
        out[i], load[b], count[b] = b, load[b] + w[i], count[b] + 1
    return out


def _refine(w: np.ndarray, bins: np.ndarray, n_bins: int, rounds: int = 1000) -> np.ndarray:
    """Local search after packing: swap the pair (item of the most-loaded bin, item of another bin)
    that lowers the maximum bin load most, while one does. Slot counts are unchanged."""
    bins = bins.copy()
    for _ in range(rounds):
        load = np.bincount(bins, weights=w, minlength=n_bins)
        hi = int(np.argmax(load))
        i, j = np.nonzero(bins == hi)[0], np.nonzero(bins != hi)[0]
        if not len(j):
            break
        d = w[i][:, None] - w[j][None, :]  # [I, J] load moved from hi to bins[j]
        rest = load.copy()
        rest[hi] = -np.inf
        order = np.argsort(-rest)
        top, second = order[0], (order[1] if n_bins > 2 else order[0])
        others = np.where(bins[j] == top, rest[second] if n_bins > 2 else -np.inf, rest[top])  # [J]
        new_max = np.maximum(np.maximum(load[hi] - d, load[bins[j]][None, :] + d), others[None, :])
        new_max = np.where(d > 0, new_max, np.inf)
        k = np.unravel_index(int(np.argmin(new_max)), new_max.shape)
        if not new_max[k] < load[hi] - 1e-12:
            break
        a, b = i[k[0]], j[k[1]]
        bins[a], bins[b] = bins[b], bins[a]
    return bins


def _place(loads: np.ndarray, experts: np.ndarray, n_slots: int, n_gpus: int) -> np.ndarray:
    """Replicate `experts` (ids into loads) into n_slots and pack onto n_gpus: [n_gpus, n_slots/n_gpus].
    Experts that measured no load at all are planned as evenly loaded: by load per replica (all 0) every
    redundant slot went to the first expert and packing stacked its copies on one GPU (5 of expert 0 on
    GPU 0 for 32 experts + 8 on 8 GPUs, as EPLB's rule does too), a map no traffic is balanced on."""
    per = n_slots // n_gpus
    x = loads[experts] if loads[experts].any() else np.ones(len(experts))
    r = replicate(x, n_slots)
    items = np.repeat(experts, r)  # logical id of each replica
    w = np.repeat(x / r, r)
    bins = _refine(w, pack(w, n_gpus, per), n_gpus)
    out = np.empty((n_gpus, per), dtype=np.int64)
    for g in range(n_gpus):
        mine = np.nonzero(bins == g)[0]
        out[g] = items[mine[np.argsort(-w[mine], kind="stable")]]
    return out


def _contiguous(loads: np.ndarray, n_gpus: int, per: int) -> np.ndarray:
    """The contiguous placement (`np.array_split` of the experts in order, as `gpu_load_before`)
    padded with same-GPU replicas: each GPU's spare slots go to its own experts, highest load per
    replica first, which leaves every GPU's load as it was before."""
    out = np.empty((n_gpus, per), dtype=np.int64)
    for g, chunk in enumerate(np.array_split(np.arange(len(loads)), n_gpus)):
        out[g] = np.repeat(chunk, replicate(loads[chunk], per))
    return out


def _keeps_groups(plan: np.ndarray, n_nodes: int, groups: int, n_experts: int) -> bool:
    """Whether every expert group's replicas all lie on one node (what hierarchical mode promises)."""
    node = np.repeat(np.arange(n_nodes), plan.size // n_nodes)  # node of each physical slot
    group = plan.reshape(-1) // (n_experts // groups)
    return all(len(np.unique(node[group == k])) <= 1 for k in range(groups))


# ------------------------------------------------------------------------------ planner
def plan_placement(loads, n_gpus: int, n_nodes: int = 1, n_redundant: int = 0, groups: int = 1,
                   mode: str = "hierarchical") -> Placement:
    """Plan one layer: loads [E] per logical expert -> a `Placement` on n_gpus GPUs in n_nodes nodes
    with E + n_redundant slots in all (see the module docstring for the policy)."""
    x = _loads(loads)
    E = len(x)
    _check_layout(E, n_gpus, n_nodes, n_redundant, groups, mode)
    n_slots = E + n_redundant
    per = n_slots // n_gpus
    if mode == "global":
        plan = _place(x, np.arange(E), n_slots, n_gpus)
    else:
        plan = _hierarchical(x, n_slots, n_gpus, n_nodes, groups)
    out = Placement(x, plan, n_nodes, mode)
    if n_gpus > E:  # no contiguous layout to fall back to: some GPUs would get no expert of their own
        return out  # (one slot a GPU, as DeepSeek's 256 + 64 experts on 320 GPUs; it crashed: a review)
    fallback = _contiguous(x, n_gpus, per)  # per >= ceil(E / gpus) and every chunk non-empty: each fits
    if mode == "global" or n_nodes == 1 or _keeps_groups(fallback, n_nodes, groups, E):
        alt = Placement(x, fallback, n_nodes, mode)
        if _max(alt.gpu_load) < _max(out.gpu_load) - 1e-9:
            out = alt
    return out


def _loads(loads) -> np.ndarray:
    """`plan_placement`'s first step: the loads as a float64 vector, refused unless a non-empty 1-D
    vector of finite, non-negative values."""
    x = np.asarray(loads, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise PlacementError(f"loads: expected a non-empty 1-D vector of expert loads, got shape {x.shape}")
    if not np.isfinite(x).all() or (x < 0).any():
        raise PlacementError("loads: must be finite and non-negative")
    return x


def _check_layout(E: int, n_gpus: int, n_nodes: int, n_redundant: int, groups: int, mode: str) -> None:
    """`plan_placement`'s second step: refuse a mode, a count or a layout it cannot plan for E experts
    (the expert groups' own checks are hierarchical mode's, in `_hierarchical`)."""
    if mode not in ("hierarchical", "global"):
        raise PlacementError(f"mode={mode!r}: choose 'hierarchical' or 'global'")
    for name, v in (("gpus", n_gpus), ("nodes", n_nodes), ("groups", groups)):
        if v < 1:
            raise PlacementError(f"--{name} must be >= 1, got {v}")
    if n_redundant < 0:
        raise PlacementError(f"--redundant must be >= 0, got {n_redundant}")
    if n_redundant > E * (n_gpus - 1):
        # a GPU with more than E slots holds some expert twice, which spreads no load; and the planner
        # loops once per redundant slot: --redundant 1000000000000 hung (a tour)
        raise PlacementError(f"--redundant {n_redundant}: more than --gpus {n_gpus} x {E} experts - {E} "
                             f"= {E * (n_gpus - 1)}; beyond that a GPU holds some expert twice, which spreads no load")
    n_slots = E + n_redundant
    if n_redundant and n_slots > MAX_SLOTS:
        # --gpus and --redundant both near 10**12 passed the bound above, and the planner hung (a tour)
        raise PlacementError(f"--gpus {n_gpus} --redundant {n_redundant}: {n_slots} physical slots per layer, more "
                             f"than the planner takes ({MAX_SLOTS}, 64 x DeepSeek-V3's 256 experts: its time grows "
                             "with the square of the slots)")
    if n_slots % n_gpus:
        raise PlacementError(f"--gpus {n_gpus} does not divide the {n_slots} slots ({E} experts + "
                             f"{n_redundant} redundant): every GPU needs the same number of slots")
    if n_gpus % n_nodes:
        raise PlacementError(f"--nodes {n_nodes} does not divide --gpus {n_gpus}")


def _hierarchical(x: np.ndarray, n_slots: int, n_gpus: int, n_nodes: int, groups: int) -> np.ndarray:
    """`plan_placement`'s hierarchical step: the expert groups packed onto nodes by group load, then
    each node's experts placed on its GPUs in its share of the slots; the map, node after node."""
    E = len(x)
    if E % groups:
        raise PlacementError(f"{E} experts do not split into {groups} groups")
    if groups % n_nodes:
        hint = ("; a run imported without --config knows no groups: pass --groups with the model's "
                "n_expert_groups (8 for DeepSeek-V3)" if groups == 1 else "")
        raise PlacementError(f"{groups} expert groups are not divisible by --nodes {n_nodes}{hint}; or pass --mode "
                             "global (deepseek-ai/EPLB and SGLang fall back to it silently here)")
    # NOTE: (E + R) % gpus == 0, gpus % nodes == 0 and E % nodes == 0 imply R % nodes == 0:
    # every node gets the same number of redundant slots.
    gsize = E // groups
    members = np.arange(E).reshape(groups, gsize)
    node_of_group = pack(x[members].sum(1), n_nodes, groups // n_nodes)
    gpn = n_gpus // n_nodes
    return np.concatenate([_place(x, members[node_of_group == n].reshape(-1), n_slots // n_nodes, gpn)
                           for n in range(n_nodes)])


def _max(v: np.ndarray) -> float:
    return float(v.max()) if len(v) else 0.0


def plan_layers(loads_by_layer: dict, **kw) -> dict:
    """{layer: loads} -> {layer: Placement} with the same arguments as `plan_placement`."""
    return {layer: plan_placement(v, **kw) for layer, v in loads_by_layer.items()}


def plan_run(run, n_gpus: int, n_nodes: int = 1, n_redundant: int = 0, groups: int | None = None,
             mode: str = "hierarchical", loads: dict | None = None) -> dict:
    """Plan every MoE layer of a run from its `expert_load` (summed in SQL; or `loads`, as
    `run_loads` read them); groups default to the run's model args n_expert_groups (1 when absent)."""
    from analyses.metrics._common import as_run

    run = as_run(run)
    if loads is None:
        loads, _, _ = run_loads(run)
    if groups is None:
        groups = run_groups(run)
    return plan_layers(loads, n_gpus=n_gpus, n_nodes=n_nodes, n_redundant=n_redundant, groups=groups, mode=mode)


def run_groups(run) -> int:
    """The run's expert groups (model_args n_expert_groups; 1 when absent)."""
    from analyses.metrics._common import as_run, model_arg

    return int(model_arg(as_run(run), "n_expert_groups", 1) or 1)


def run_loads(run, steps: tuple[int, int] | None = None) -> tuple[dict[int, np.ndarray], int, int]:
    """({MoE layer: loads [E]} summed over the run, or over its expert_load steps first..last with
    `steps`, the model's layer count, E): what the export formats need (the layer count from
    model_args, else the last layer loaded + 1)."""
    from analyses.metrics import MetricsError, layer_loads_from_run
    from analyses.metrics._common import as_run, model_arg

    try:
        run = as_run(run)
        loads = layer_loads_from_run(run, steps)
    except MetricsError as e:
        raise PlacementError(str(e)) from None
    n_layers = int(model_arg(run, "n_layers", 0) or (max(loads) + 1 if loads else 0))
    # a trained run also counts its MTP block's router (layer n_layers): a draft module that serving
    # engines place apart from the main model's expert map, so it is not a layer of the plan
    loads = {layer: v for layer, v in loads.items() if layer < n_layers}
    if not loads:
        raise PlacementError(f"{getattr(run, 'path', run)}: no MoE layer of the main model has loads")
    E = len(next(iter(loads.values())))
    return loads, n_layers, E


PLACEMENT_ROWS = "select layer, physical, logical, gpu from placement order by layer, physical"  # maps_from_rows's


def current_placement(run, n_experts: int, n_gpus: int, n_redundant: int) -> tuple[dict, int, str]:
    """({layer: physical-to-logical map [P]}, GPUs, what it is) of the placement the loads ran on: the
    serving engine's (`placement` table, from `dsv3-probe import sglang` of a dump that carries one),
    else SGLang's default for the plan's slots, `trivial_map(E, E + R)` on n_gpus GPUs, the Serving page's
    "current placement" (the CLI compared against the contiguous split alone, without the replicas or
    the map the server ran; a serving engineer's review). An import that has lost its `placement` table
    (`probe.run.lost_tables`) has no known current placement: no maps (the current balancedness NaN)."""
    from analyses.metrics._common import as_run

    from .replay import maps_from_rows, trivial_map

    run = as_run(run)
    if "placement" in (getattr(run, "lost_tables", None) or ()):
        from probe.run import lost_message

        # the server's map is gone (its folder deleted, or left behind in a copy): SGLang's trivial map stood in,
        # said to be the placement the loads ran on, and the plan was compared with a map the server never held
        return {}, n_gpus, f"unknown, the run has lost the server's ({lost_message(run.path, 'placement', run.info)})"
    if run.files("placement"):
        maps, gpus = maps_from_rows(run.sql(PLACEMENT_ROWS).df())
        return maps, gpus, f"the server's placement from the import ({gpus} GPUs)"
    m = trivial_map(n_experts, n_experts + n_redundant)
    return {None: m}, n_gpus, f"SGLang's trivial map, slot p -> expert p % {n_experts}, on {n_gpus} GPUs"


def summary_frame(plans: dict, current: tuple[dict, int] | None = None):
    """One row per layer: balancedness before (contiguous, no replicas) and after, with `current` =
    (`current_placement`'s maps, GPUs) also the current placement's; max GPU load before/after, replicas used."""
    import pandas as pd

    from .replay import gpu_loads

    rows = []
    for layer, p in plans.items():
        row = {"layer": layer, "balancedness_before": p.balancedness_before}
        if current is not None:
            maps, gpus = current
            m = maps.get(layer, maps.get(None))
            row["balancedness_current"] = _balancedness(gpu_loads(p.loads, m, gpus)) if m is not None else np.nan
        rows.append(row | {"balancedness_after": p.balancedness_after, "max_gpu_load_before": _max(p.gpu_load_before),
                           "max_gpu_load_after": _max(p.gpu_load), "mean_gpu_load": float(p.gpu_load.mean()),
                           "replicated": int((p.replicas > 1).sum())})
    return pd.DataFrame(rows)


def worse_than_current(summary, mode: str, nodes: int, gpus: int | None = None,
                       now_gpus: int | None = None) -> str | None:
    """A note when `summary_frame`'s plan balances some layers worse than the current placement (None
    when it does not, or there is no current one): which layers, the largest gap, and what to do. On
    near-uniform loads a hierarchical plan, which keeps each expert group's replicas on one node, can
    lose to a server's placement made without that constraint (EPLB's hierarchical policy does too).
    A plan for `gpus` GPUs against a current placement on `now_gpus` others is not compared: mean / max
    GPU load falls as GPUs are added (1.0 on one), so a plan for 4 GPUs was said to balance worse than
    the server's map on 2, with the advice to keep a placement of another server's shape (the Serving
    page shows no difference there either)."""
    if "balancedness_current" not in summary:
        return None
    if gpus is not None and now_gpus is not None and gpus != now_gpus:
        return (f"note: the current placement runs on {now_gpus} GPUs, the plan on {gpus}: balancedness (mean / max "
                f"GPU load) falls as GPUs are added, so the two are not compared; pass --gpus {now_gpus} to compare "
                "them")
    worse = summary[summary.balancedness_current > summary.balancedness_after + 1e-9]
    if worse.empty:
        return None
    w = worse.loc[(worse.balancedness_current - worse.balancedness_after).idxmax()]
    why = ("; --mode hierarchical keeps each expert group's replicas on one node, --mode global plans without "
           "that constraint" if mode == "hierarchical" and nodes > 1 else "")
    return (f"note: in {len(worse)} of {len(summary)} layers the plan balances worse than the current placement "
            f"(layer {int(w.layer)}: {w.balancedness_after:.4f} against {w.balancedness_current:.4f}): keep the "
            f"current placement for those layers{why}")


def _json_float(v) -> float | None:
    """A float for JSON: None (null) for NaN."""
    return None if np.isnan(v) else float(v)


def write_plan(plans: dict, out: Path, config: dict, current: tuple[dict, int] | None = None) -> None:
    """Parquet: the long map table. JSON: config, per-layer summary (with `current`, as `summary_frame`
    takes it, the current placement's balancedness too) and phy_to_log [gpu][slot]."""
    import pandas as pd

    out = Path(out)
    if out.suffix not in (".parquet", ".json"):
        raise PlacementError(f"--out {out}: use a .parquet or .json file name")
    out.parent.mkdir(parents=True, exist_ok=True)  # as check_out_parent allows (it failed after planning: a tour)
    with replacing(out) as tmp:  # a failed write leaves the previous plan, not half a file
        if out.suffix == ".parquet":
            pd.concat([p.to_frame(layer) for layer, p in plans.items()], ignore_index=True).to_parquet(tmp, index=False)
        else:
            now = summary_frame(plans, current).set_index("layer") if current is not None else None
            # a layer that measured no load has no balancedness (NaN): JSON null, as json.dumps' bare NaN
            # is not JSON (jq, JavaScript and other strict readers refused the whole plan)
            layers = [{"layer": int(layer), "balancedness_before": _json_float(p.balancedness_before),
                       **({"balancedness_current": _json_float(now.loc[layer, "balancedness_current"])}
                          if now is not None else {}),
                       "balancedness_after": _json_float(p.balancedness_after),
                       "gpu_load_before": p.gpu_load_before.tolist(),
                       "gpu_load_after": p.gpu_load.tolist(), "replicas": p.replicas.tolist(),
                       "phy_to_log": p.phy_to_log.tolist()} for layer, p in plans.items()]
            tmp.write_text(json.dumps({"config": config, "layers": layers}, indent=1) + "\n")
