"""`python -m analyses.steer`: the command line (usage: the package docstring, analyses/steer/__init__.py)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import TYPE_CHECKING

# the jobs' allocator, chosen before anything imports pyarrow (probe/allocator.py)
from probe.allocator import use_system_allocator

use_system_allocator()

from probe.job_signals import quiet_start  # noqa: E402

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import analyses.steer as package  # noqa: E402
    from probe.corpus import CorpusError  # noqa: E402
    from probe.job import add_input_flags, terminated_as_ctrl_c  # noqa: E402
    from probe.job_exit import (closed_pipe_quiet, exit_ranks, job_error, launch_rank0,  # noqa: E402
                                one_line_when_a_peer_is_lost, table_errors)
    from probe.teardown import quick_teardown  # noqa: E402
    from probe.writer import RunError  # noqa: E402

from . import MODES

if TYPE_CHECKING:
    from .run import SteerOptions

# NOTE: hooks.py and run.py (torch) are imported where the job runs: --help answers without them

COLUMN = 48  # width of each side of the printed continuations


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.steer", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = add_input_flags(p, "steering", domain_tokens=2000)
    io.add_argument("--fresh", action="store_true",
                    help="compute every pass again; by default, rerunning a command that was interrupted takes "
                         "the passes it committed (the loss pass, each prompt's continuations) and runs only the rest")
    st = p.add_argument_group("the steering")
    st.add_argument("--experts", help="experts to steer: layer:expert[+expert],... e.g. 2:5+7,3:1")
    st.add_argument("--mode", choices=MODES, default="force",
                    help="force: into the top-k of every steered token (at most K per layer); bias: add --bias to "
                         "their selection scores before group-limited routing (default force)")
    st.add_argument("--bias", type=float, help="bias mode: added to the selection scores (default 1.0)")
    st.add_argument("--steer-domain", action="append", help="steer only this domain's tokens (repeatable)")
    st.add_argument("--steer-tokens", help="steer only these tokens: words or token ids, comma separated")
    st.add_argument("--name", help="name of the steering (default: from the selection)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--prompt", action="append", default=[],
                     help="a prompt (repeatable; default: the start of each domain's first window)")
    gen.add_argument("--prompt-tokens", type=int, default=24, help="length of the default prompts (default 24)")
    gen.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per continuation (default 32)")
    return p


def _options(ns) -> SteerOptions:
    from analyses.ablate.select import AblationError

    from .run import SteerOptions

    if ns.domain_tokens is not None and ns.domain_tokens < 0:  # the job's check said "must be >= 1": 0 is taken
        raise AblationError(f"--domain-tokens {ns.domain_tokens}: must be >= 0 (0 = no per-domain cap)")
    kw = {k: v for k, v in vars(ns).items() if k in SteerOptions.__dataclass_fields__}
    kw["domain_tokens"] = ns.domain_tokens or None
    kw["prompts"] = ns.prompt
    return SteerOptions(**kw)


def show(df, out) -> None:
    """The loss change per domain, then each prompt's continuations side by side."""
    import pandas as pd

    loss = df[df.kind == "loss"]
    cols = ["domain", "tokens", "steered_tokens", "forced_share", "baseline_loss", "loss", "delta"]
    print(f"steering {df.steer.iloc[0]}: {df.spec.iloc[0]}")
    print(loss[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for _, r in df[df.kind == "generation"].iterrows():
        print(f"\n[{r.domain or 'prompt'}] {_flat(r.prompt)}")
        # n/a: nothing generated, or tokens generated that the steering did not apply to (the
        # prompt's domain or tokens are not steered): it said "no token generated" then too (a review)
        why = "no token generated" if not r.steered_text else "no token steered"
        share = f"n/a ({why})" if pd.isna(r.forced_share) else f"{r.forced_share:.2f}"
        print(f"{'baseline':<{COLUMN}} | steered (forced_share {share})")
        left = textwrap.wrap(_flat(r.baseline_text), COLUMN) or [""]
        right = textwrap.wrap(_flat(r.steered_text), COLUMN) or [""]
        for i in range(max(len(left), len(right))):
            a, b = (left[i] if i < len(left) else ""), (right[i] if i < len(right) else "")
            print(f"{a:<{COLUMN}} | {b}")
    print(f"\nwrote {out / 'steering'}")


def _flat(text: str) -> str:
    return text.replace("\n", "\u23ce ")


@closed_pipe_quiet
@one_line_when_a_peer_is_lost
def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    from analyses.ablate.select import AblationError

    from .hooks import Steer
    from .run import steer

    try:
        if not ns.experts:
            raise AblationError("nothing to steer: pass --experts layer:expert[+expert],... (e.g. 2:5+7)")
        if any(not t.strip() for t in ns.prompt):  # generated from BOS alone, as if a prompt (an ablation tour)
            raise AblationError("--prompt '': an empty prompt; give text, or leave --prompt out for the domains' own")
        if ns.bias is not None and ns.mode != "bias":  # it was ignored (a review), as ablate refuses --renormalise
            raise AblationError(f"--bias applies to --mode bias only (this command gives --mode {ns.mode})")
        s = Steer(name=ns.name or "", experts=ns.experts, mode=ns.mode, bias=1.0 if ns.bias is None else ns.bias,
                  domains=ns.steer_domain)
        with terminated_as_ctrl_c():  # what was committed is kept, one line says so
            out, df = steer(_options(ns), s, token_filter=ns.steer_tokens)
    except (AblationError, CorpusError, RunError, ValueError, OSError, *table_errors()) as e:
        return job_error(e)
    if launch_rank0():
        show(df, out)
    return exit_ranks(0)


if __name__ == "__main__":
    quick_teardown()
    sys.exit(main())
