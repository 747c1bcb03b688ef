"""`python -m analyses.placement`: the command line (usage: the package docstring, analyses/placement/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probe.job_signals import quiet_start

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import analyses.placement as package
    from analyses.placement import (PlacementError, current_placement, plan_run, run_groups, run_loads, summary_frame,
                                    worse_than_current, write_plan)
    from analyses.placement.export import FORMATS, export, is_placement_file
    from probe.job import RecordError, check_out_parent, os_refusal, path_arg, path_text
    from probe.job_exit import closed_pipe_quiet, job_error, table_errors


def step_range(text: str) -> tuple[int, int]:
    """`--steps FIRST-LAST` as (first, last): whole numbers, first <= last."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit()) or int(first) > int(last):
        raise argparse.ArgumentTypeError(f"{text!r}: give FIRST-LAST, whole numbers with FIRST <= LAST, e.g. 0-93")
    return int(first), int(last)


@closed_pipe_quiet
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.placement", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=path_text, help="a run directory (recorded, imported or trained: its expert_load table)")
    p.add_argument("--gpus", type=int, help="GPUs in all (must divide experts + redundant); needed to plan")
    p.add_argument("--nodes", type=int, default=None, help="nodes (must divide --gpus; default 1)")
    p.add_argument("--redundant", type=int, default=None,
                   help="extra physical slots for replicas per layer (default 0)")
    p.add_argument("--steps", type=step_range, default=None, metavar="FIRST-LAST",
                   help="plan from expert_load's steps FIRST..LAST only, inclusive (a record's batches, a server "
                        "dump's forward passes, training steps; the dashboard's Serving page names its plan window "
                        "this way; a window reaching past the run's steps is noted with the ones it holds); default: "
                        "every step")
    p.add_argument("--groups", type=int, default=None,
                   help="expert groups for --mode hierarchical (default: run.json model_args n_expert_groups)")
    p.add_argument("--mode", choices=("hierarchical", "global"), default=None,
                   help="hierarchical: groups to nodes, then replicas to GPUs; global: one pool (default hierarchical)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table: our map (.parquet or .json); sglang: --init-expert-location file; eplb: "
                        "deepseek-ai/EPLB's phy2log/log2phy/logcnt; logical-count: the loads as SGLang's "
                        "statistics (no planning)")
    p.add_argument("--out", type=path_arg, default=None,
                   help="where to write (.parquet/.json for table; .json/.pt else; folders missing are made)")
    ns = p.parse_args(argv)
    try:
        return _run(ns)
    except RecordError as e:  # an --out where no file can go (check_out_parent): nothing to do with the run
        return job_error(e)
    except (PlacementError, ValueError, OSError, *table_errors()) as e:
        msg = " ".join(str(e).split())
        return job_error(e, msg if str(ns.run) in msg else f"{ns.run}: {msg}")


def check_replaceable_plan(out: Path) -> None:
    """An existing --out is replaced only when it is a file this command writes (export.is_placement_file
    parses it as its suffix says). Its first KiB was searched for the formats' keys: a user's notes.json
    that named phy2log was replaced, and our own plan re-indented (json.tool) was refused (a tour)."""
    if not out.is_file():
        return
    try:
        ours = is_placement_file(out)
    except OSError as e:
        raise RecordError(f"--out {out}: exists and cannot be read ({e.strerror or e}), so it cannot be told to be "
                          "a placement file; write to a new file (or delete it first)") from None
    if not ours:
        raise RecordError(f"--out {out}: exists and is not a placement file; write to a new file (or delete it first)")


def _check_out(ns) -> None:
    """--out against --format, its folder and what it would replace: before any planning."""
    if ns.format != "table" and ns.out is None:
        raise PlacementError(f"--format {ns.format} writes a file: pass --out plan.json (or .pt)")
    if ns.format != "table" and ns.out.suffix not in (".json", ".pt"):
        raise PlacementError(f"--out {ns.out}: --format {ns.format} writes a .json or .pt file")
    if ns.format == "table" and ns.out is not None and ns.out.suffix not in (".parquet", ".json"):
        raise PlacementError(f"--out {ns.out}: --format table writes a .parquet or .json file")
    if ns.out is not None:
        check_out_parent(ns.out, file=True)
        check_replaceable_plan(ns.out)


def _run(ns) -> int:
    _check_out(ns)
    planning = [f"--{k}" for k in ("gpus", "nodes", "redundant", "groups", "mode") if getattr(ns, k) is not None]
    if ns.format == "logical-count" and planning:
        # the loads are written as measured; SGLang plans from them with its own EP size
        raise PlacementError(f"--format logical-count writes the measured loads, not a plan: "
                             f"{', '.join(planning)} would have no effect (drop {'them' if planning[1:] else 'it'})")
    for name, default in (("nodes", 1), ("redundant", 0), ("mode", "hierarchical")):
        if getattr(ns, name) is None:
            setattr(ns, name, default)
    loads, n_layers, E = run_loads(ns.run, ns.steps)
    if ns.format == "logical-count":
        with os_refusal(f"--out {ns.out}: cannot write it there"):
            written = export(ns.format, None, loads, n_layers, E, ns.out)
        print(f"wrote {written} (loads of layers {sorted(loads)} of "
              f"{n_layers}; SGLang: --init-expert-location {ns.out} runs its own EPLB on them)")
        return 0
    if ns.gpus is None:
        raise PlacementError("--gpus is needed to plan a placement")
    groups = ns.groups if ns.groups is not None else run_groups(ns.run)
    plans = plan_run(ns.run, ns.gpus, ns.nodes, ns.redundant, groups, ns.mode, loads=loads)
    maps, now_gpus, what = current_placement(ns.run, E, ns.gpus, ns.redundant)
    config = {"run": str(ns.run), "gpus": ns.gpus, "nodes": ns.nodes, "redundant": ns.redundant,
              "groups": groups, "mode": ns.mode, "steps": list(ns.steps) if ns.steps else None,
              "steps_planned": _steps_held(ns.run, ns.steps) if ns.steps else None,
              "before": "experts in order, no replicas", "current": what}
    with os_refusal(f"--out {ns.out}: cannot write it there"):  # checked above; not everything is foreseeable
        if ns.format == "table" and ns.out is not None:
            write_plan(plans, ns.out, config, (maps, now_gpus))
        elif ns.format != "table":
            export(ns.format, plans, loads, n_layers, E, ns.out)
    import pandas as pd

    print(f"balancedness (mean / max GPU load) before: experts in order, {E} / {ns.gpus} a GPU, no replicas; "
          f"current: {what}; after: the plan; GPU loads in token-expert assignments (a replica carries its "
          "expert's load over its replicas, so fractions show); replicated: the experts given more than one slot")
    summary = summary_frame(plans, (maps, now_gpus))
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary.to_string(index=False, formatters=_column_formats(summary)))
    note = worse_than_current(summary, ns.mode, ns.nodes, ns.gpus, now_gpus)
    if note:
        print(note)
    if ns.steps and (outside := _steps_outside(ns.run, ns.steps)):
        print(outside)
    if ns.steps and _order_unknown(ns.run):
        print(f"note: --steps {ns.steps[0]}-{ns.steps[1]} picks passes by their order, which is unknown in this import "
              "(run.json source.pass_order_unknown: SGLang's circular stat buffer may have wrapped); the totals of "
              "every step are right")
    if ns.out is not None:
        print(f"wrote {ns.out}")
        if ns.format == "sglang":
            print(f"serve with: --init-expert-location {ns.out} --ep-num-redundant-experts {ns.redundant} "
                  f"(expert-parallel size {ns.gpus})")
    return 0


def _column_formats(summary) -> dict:
    """The table's number formats: balancedness to 4 places, GPU loads (token-expert assignments, fractions
    where replicas share a load) to 1; they printed as '192297.0000' (a tour)."""
    return {c: ((lambda v: f"{v:.1f}") if "load" in c else (lambda v: f"{v:.4f}"))
            for c in summary.columns if summary[c].dtype.kind == "f"}


def _steps_outside(run, steps: tuple[int, int]) -> str | None:
    """The note for a `--steps` window that reaches past the run's first or last step: the plan is of the
    steps inside it only, which the table above does not show (a window that holds none is an error)."""
    from analyses.metrics._common import as_run

    first, last = as_run(run).sql("select min(step), max(step) from expert_load").fetchall()[0]
    if steps[0] >= first and steps[1] <= last:
        return None
    used = "-".join(map(str, _steps_held(run, steps)))
    return (f"note: --steps {steps[0]}-{steps[1]} reaches past the run's steps {first}-{last}: the plan is of steps "
            f"{used} only")


def _steps_held(run, steps: tuple[int, int]) -> list[int]:
    """[first, last] of the run's steps inside the `--steps` window: what the plan was made from (the
    table's JSON kept only the window asked for, which may reach past the run's steps; a tour)."""
    from analyses.metrics._common import as_run

    first, last = int(steps[0]), int(steps[1])
    return list(as_run(run).sql(f"select min(step), max(step) from expert_load where step between {first} and "
                                f"{last}").fetchall()[0])


def _order_unknown(run) -> bool:
    """Whether the run's steps are passes of unknown order (a stat import whose circular buffer may have
    wrapped): `--steps` then picks arbitrary passes, as the Serving page's windows say."""
    from analyses.metrics._common import as_run

    return bool((as_run(run).info.get("source") or {}).get("pass_order_unknown"))


if __name__ == "__main__":
    sys.exit(main())
