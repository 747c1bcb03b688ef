"""Where the loads that rank --top's experts come from: a recorded run's `expert_load` table
(`loads_from_run`, refused when it was counted on another model or leaves a MoE layer uncounted) or,
without one, the baseline pass (`run_loads` decides, and notes loads of an unfinished run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from probe.job_exit import launch_rank0
from probe.writer import read_run_json, run_status

from .select import ALL, AblationError, Loads, RouterShape

if TYPE_CHECKING:
    from .inputs import AblateOptions


def loads_from_run(run_dir: str | Path, shape: RouterShape, ranked: list[int] | None = None) -> Loads:
    """{domain or "all": [n_moe_layers, E] counts} summed over a run's `expert_load` table. Rows of an
    MTP module's router (layer n_layers + k, which training runs record) are left out: ablations act
    on the main layers. Loads of another model, or with a MoE layer of `ranked` (the layers whose
    experts the loads rank; default every MoE layer) that counts nothing, are refused."""
    import probe

    run = probe.open_run(run_dir)
    if "expert_load" in run.lost_tables:  # said through DuckDB's "Invalid Input Error: ..." before
        from probe.run import lost_message

        raise AblationError(lost_message(run_dir, "expert_load"))
    _check_same_router(run_dir, run.info, shape)
    df = run.sql("select layer, expert, domain, sum(count)::bigint as n from expert_load group by all").df()
    df = df[df.layer < shape.n_layers]
    if df.empty:
        raise AblationError(f"{run_dir}: empty run: its expert_load table has no rows (record it first, "
                            "or pass --loads-from baseline)")
    moe = shape.moe_layers
    bad = sorted(set(df.layer) - set(moe))
    if bad or df.expert.max() >= shape.n_experts:
        raise AblationError(f"{run_dir}: its expert_load does not fit this model (layers {sorted(set(df.layer))}, "
                            f"experts up to {df.expert.max()}; the model has MoE layers {moe} and "
                            f"{shape.n_experts} experts)")
    _check_every_layer(run_dir, df, moe, moe if ranked is None else [x for x in moe if x in ranked])
    out = {}
    for dom, g in df.groupby("domain"):
        a = np.zeros((len(moe), shape.n_experts), np.int64)
        np.add.at(a, ([moe.index(x) for x in g.layer], g.expert.to_numpy()), g.n.to_numpy())
        out[dom] = a
    out[ALL] = sum(out.values())
    return out


def _check_every_layer(run_dir, df, moe: list[int], ranked: list[int]) -> None:
    """Every MoE layer of `ranked` has loads to rank (a --top confined by --layers to the layers a
    pipeline stage's import counts is ranked by them). A run of the same model whose expert_load lacks a layer's rows
    (recorded with fewer layers hooked, an import of some pipeline stages' dumps, an edited table), or
    whose rows there count nothing (such an import with --config writes zeros), ranked that layer's
    experts from zeros: a "top" of tie-broken ids. A record, a training run and an import of a whole
    server's dumps count every MoE layer."""
    per_layer = df.groupby("layer").n.sum()
    missing = [x for x in ranked if per_layer.get(x, 0) == 0]
    if missing:
        raise AblationError(f"{run_dir}: its expert_load counts no loads in MoE layer{'s' * (len(missing) > 1)} "
                            f"{', '.join(map(str, missing))} of the model's {moe[0]}..{moe[-1]} (recorded with fewer "
                            "layers, an import of some pipeline stages' dumps, or an edited table?): --top would rank "
                            "their experts from zeros; pass --loads-from baseline to rank experts on the tokens "
                            "evaluated, or --layers to rank only the layers it counts")


def run_loads(opts: AblateOptions, info: dict | None, shape: RouterShape, needs: bool,
              ranked: list[int] | None = None) -> tuple[Loads | None, str, dict | None]:
    """The loads that rank --top: (the run's, "run:PATH") where --loads-from says run (or auto, and the
    run has them), else (None, "baseline"): the baseline pass counts them. Third, where the run's record
    or training did not finish (run.json interrupted: Ctrl-C, SIGTERM, a crash), what its partial loads
    cover ({status, tokens, planned_tokens}, for run.json), said in one line: they were taken silently.
    `ranked`: the MoE layers --top ranks (`loads_from_run`)."""
    if not needs or not (opts.loads_from == "run" or (opts.loads_from == "auto" and opts.run is not None
                                                      and _has_loads(opts.run))):
        return None, "baseline", None
    loads = loads_from_run(opts.run, shape, ranked)
    status = run_status(opts.run, info)
    if status in ("complete", "unknown"):
        return loads, f"run:{Path(opts.run).resolve()}", None
    # every token counts once in each MoE layer's top-k assignments (of a layer the run counts: an
    # import of later pipeline stages' dumps counts nothing in the first)
    tokens, planned = int(loads[ALL].sum(1).max()) // shape.topk, ((info or {}).get("planned") or {}).get("tokens")
    job = "training" if (info or {}).get("kind") == "train" else "record"
    if launch_rank0():
        print(f"note: --top ranks experts by partial loads: the {job} of {opts.run} did not finish (run.json status "
              f"{status}), and its expert_load covers {tokens:,} tokens"
              + (f" of the {planned:,} planned" if planned else "")
              + f"; finish the {job} with --resume, or pass --loads-from baseline", file=sys.stderr)
    return loads, f"run:{Path(opts.run).resolve()}", {"status": status, "tokens": tokens, "planned_tokens": planned}


def _check_same_router(run_dir, info: dict, shape: RouterShape) -> None:
    """The run's loads rank the experts of the model they were counted on: another model's (an SGLang
    import of a served model, then --ckpt of a smaller one) gave a "top" of tie-broken zeros in the
    layers the run lacks and of unrelated experts elsewhere. An import without --config states as its
    n_dense_layers the first layer its dumps counted in: for the dumps of later pipeline stages, a
    count of the layers missing, not of another model's dense ones (the checks of the rows name them)."""
    from probe.model_shape import LAYOUT, model_differences

    model_args = info.get("model_args") or {}
    ours = dict(zip(LAYOUT, (shape.n_layers, shape.n_dense_layers, shape.n_experts)))
    fields = tuple(f for f in LAYOUT if f != "n_dense_layers" or info.get("kind") != "import")
    if model_differences(model_args, ours, fields):  # a field the run does not state is not held against it
        theirs = ["?" if model_args.get(k) is None else model_args[k] for k in LAYOUT]
        raise AblationError(f"{run_dir}: its expert_load was counted on another model ({theirs[0]} layers, "
                            f"{theirs[1]} dense, {theirs[2]} experts; the checkpoint has {ours['n_layers']}, "
                            f"{ours['n_dense_layers']}, {ours['n_routed_experts']}): pass --loads-from baseline to "
                            "rank experts on this model")


def _has_loads(run: str) -> bool:
    d = Path(run) / "expert_load"
    # a recorded run (even an empty one, which then fails loudly) versus an ablations-only directory
    return (d.is_dir() and any(d.glob("*.parquet"))) or "planned" in read_run_json(Path(run))
