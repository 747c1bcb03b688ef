"""`python -m analyses.placement`: the command line (usage: the package docstring, analyses/placement/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import analyses.placement as package
from analyses.placement import PlacementError, plan_run, summary_frame, write_plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.placement", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory recorded by `python -m probe record` (its expert_load table)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in all (must divide experts + redundant)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (must divide --gpus; default 1)")
    p.add_argument("--redundant", type=int, default=0, help="extra physical slots for replicas per layer (default 0)")
    p.add_argument("--groups", type=int, default=None,
                   help="expert groups for --mode hierarchical (default: run.json model_args n_expert_groups)")
    p.add_argument("--mode", choices=("hierarchical", "global"), default="hierarchical",
                   help="hierarchical: groups to nodes, then replicas to GPUs; global: one pool (default hierarchical)")
    p.add_argument("--out", type=Path, default=None, help="write the physical-to-logical map (.parquet or .json)")
    ns = p.parse_args(argv)
    try:
        plans = plan_run(ns.run, ns.gpus, ns.nodes, ns.redundant, ns.groups, ns.mode)
        if ns.out is not None:
            write_plan(plans, ns.out, {"run": str(ns.run), "gpus": ns.gpus, "nodes": ns.nodes,
                                       "redundant": ns.redundant, "groups": ns.groups, "mode": ns.mode})
    except (PlacementError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary_frame(plans).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if ns.out is not None:
        print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
