"""`python -m analyses.importance`: the command line (usage: the package docstring,
analyses/importance/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

# the jobs' allocator, chosen before anything imports pyarrow (probe/allocator.py)
from probe.allocator import use_system_allocator

use_system_allocator()

from probe.job_signals import quiet_start  # noqa: E402

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import analyses.importance as package  # noqa: E402
    from probe.corpus import CorpusError  # noqa: E402
    from probe.job import add_input_flags, terminated_as_ctrl_c  # noqa: E402
    from probe.job_exit import (closed_pipe_quiet, exit_ranks, job_error, launch_rank0,  # noqa: E402
                                one_line_when_a_peer_is_lost, table_errors)
    from probe.teardown import quick_teardown  # noqa: E402
    from probe.writer import RunError  # noqa: E402

from . import DOMAIN_TOKENS, TOKEN_BUDGET

if TYPE_CHECKING:
    from .run import ImportanceOptions

# NOTE: run.py and analysis.py (torch, pandas) are imported where the job runs: --help answers without them


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.importance", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = add_input_flags(p, "expert_importance", domain_tokens=DOMAIN_TOKENS)
    io.add_argument("--fresh", action="store_true",
                    help="measure every layer again; by default, rerunning a command that was interrupted takes "
                         "the layers (and baseline) it committed and measures only the rest")
    sel = p.add_argument_group("what to remove (one expert at a time, reroute)")
    sel.add_argument("--layers", help="MoE layers, e.g. 1,3 or 1-3 (default: every MoE layer)")
    sel.add_argument("--experts", help="routed experts, e.g. 0-7,12 (default: all of them)")
    sel.add_argument("--group", type=int,
                     help=f"removals per forward pass, the batch repeated G times (default: as many as fit "
                          f"{TOKEN_BUDGET:,} token rows, batch size x window x G)")
    sel.add_argument("--show", type=int, default=3, metavar="N", help="print the N most important experts per layer")
    return p


def options(ns) -> ImportanceOptions:
    from .run import ImportanceError, ImportanceOptions

    if ns.domain_tokens is not None and ns.domain_tokens < 0:
        raise ImportanceError(f"--domain-tokens {ns.domain_tokens}: must be >= 0 (0 = no per-domain cap)")
    kw = {k: v for k, v in vars(ns).items() if k in ImportanceOptions.__dataclass_fields__}
    kw["domain_tokens"] = ns.domain_tokens or None
    return ImportanceOptions(**kw)


def summary(df, out, show: int) -> str:
    """Per layer: Spearman's rho (load_share vs delta), Pearson's r, the most important experts."""
    from .analysis import few_experts_note, load_vs_importance, undefined_why

    lines = []
    corr = load_vs_importance(df) if len(df) else None
    for row in ([] if corr is None else corr.itertuples()):
        g = df[(df.domain == "all") & (df.layer == row.layer)].sort_values(["delta", "expert"],
                                                                           ascending=[False, True])
        tops = ", ".join(f"{int(r.expert)} {r.delta:+.4f} (load {r.load_share:.1%})" for r in g.head(show).itertuples())
        why = undefined_why(g.load_share, g.delta)
        rho = f"Spearman rho(load share, delta) = {row.spearman:+.3f}, Pearson r = {row.pearson:+.3f}"
        rho = rho if why is None else f"Spearman rho(load share, delta) = nan, Pearson r = nan ({why})"
        rho += f" ({few})" if why is None and (few := few_experts_note(len(g))) else ""
        lines.append(f"layer {row.layer}: {row.experts} expert{'s' if row.experts != 1 else ''}, {row.tokens:,} "
                     f"tokens: {rho}" + (f"; top by delta: {tops}" if show else ""))
    lines.append(f"wrote {out / 'expert_importance'}")
    return "\n".join(lines)


@closed_pipe_quiet
@one_line_when_a_peer_is_lost
def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    from .run import ImportanceError, importance

    try:
        if ns.show < 0:
            raise ImportanceError(f"--show {ns.show}: must be >= 0")
        with terminated_as_ctrl_c():  # what was committed is kept, one line says so
            out, df = importance(options(ns))
    except (ImportanceError, CorpusError, RunError, ValueError, OSError, *table_errors()) as e:
        return job_error(e)
    if launch_rank0():
        print(summary(df, out, ns.show))
    return exit_ranks(0)


if __name__ == "__main__":
    quick_teardown()
    sys.exit(main())
