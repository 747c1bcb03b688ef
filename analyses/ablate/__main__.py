"""`python -m analyses.ablate`: the command line (usage: the package docstring, analyses/ablate/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

# the jobs' allocator, chosen before anything imports pyarrow (probe/allocator.py)
from probe.allocator import use_system_allocator

use_system_allocator()

from probe.job_signals import quiet_start  # noqa: E402

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import analyses.ablate as package  # noqa: E402
    from probe.corpus import CorpusError  # noqa: E402
    from probe.job import add_input_flags, terminated_as_ctrl_c  # noqa: E402
    from probe.job_exit import (closed_pipe_quiet, exit_ranks, job_error, launch_rank0,  # noqa: E402
                                one_line_when_a_peer_is_lost, table_errors)
    from probe.teardown import quick_teardown  # noqa: E402
    from probe.writer import RunError  # noqa: E402

if TYPE_CHECKING:
    from .select import Ablation

# NOTE: run.py and select.py (torch) are imported where the job runs: --help answers without them


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.ablate", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = add_input_flags(p, "ablations", run_note=", its expert_load gives the loads for --top")
    io.add_argument("--loads-from", choices=["auto", "run", "baseline"], default="auto",
                    help="loads ranking --top: the run's expert_load, or measured on the baseline pass "
                         "(default auto: the run's when it has them)")
    io.add_argument("--fresh", action="store_true",
                    help="compute every ablation again; by default, rerunning a command that was interrupted "
                         "takes the ablations (and baseline) it committed and computes only the rest")
    sel = p.add_argument_group("one ablation (or --spec for a sweep)")
    sel.add_argument("--spec", help="YAML/JSON sweep file: a list of ablations (see above)")
    sel.add_argument("--experts", help="explicit experts: layer:expert[+expert],... e.g. 1:3+5,2:7")
    sel.add_argument("--top", type=int, help="disable the N most loaded experts of each layer")
    sel.add_argument("--domain", help="with --top: rank experts by this domain's load")
    sel.add_argument("--random", type=int, help="disable N random experts per layer (the control)")
    sel.add_argument("--token-top", type=int, metavar="R",
                     help="disable each token's own top-R experts by its router's selection score, a different set "
                          "per token (DeepSeekMoE's Figure 4; zero mode: the first R of its chosen K)")
    sel.add_argument("--seed", type=int, help="seed of --random / --control (default 0)")
    sel.add_argument("--layers",
                     help="comma-separated MoE layers for --top/--random/--token-top/--shared (default all)")
    sel.add_argument("--shared", action="store_true", help="also disable the shared expert (in --layers)")
    sel.add_argument("--mode", choices=["reroute", "zero"], default="reroute",
                     help="reroute: re-select top-k among the remaining experts (DeepSeekMoE); zero: keep "
                          "the routing, drop the disabled experts' contributions (default reroute)")
    sel.add_argument("--renormalise", action="store_true",
                     help="zero mode: rescale the remaining weights to their original sum")
    sel.add_argument("--name", help="name of the ablation (default: from the selection)")
    sel.add_argument("--control", action="store_true",
                     help="with --top N: add the random-N control (same layers, mode and --seed)")
    return p


def ablations_from_args(ns) -> list[Ablation]:
    from .select import Ablation, AblationError
    from .spec import load_spec

    flags = [f for f in ("experts", "top", "random", "token_top", "domain", "layers", "name", "seed")
             if getattr(ns, f) is not None]
    flags += [f for f in ("shared", "renormalise", "control") if getattr(ns, f)]
    if ns.spec:
        if flags or ns.mode != "reroute":
            raise AblationError(f"--spec excludes the single-ablation flags (got --{flags[0] if flags else 'mode'})")
        return load_spec(ns.spec)
    if ns.experts is not None and not ns.experts.replace(",", "").strip():  # "" or ",,": ran a no-op (a review)
        raise AblationError(f"--experts {ns.experts!r}: no experts; give layer:expert[+expert],... e.g. 1:3+5")
    # --top 0 wrote a no-op ablation `top0` (delta 0); the library's Ablation(top=0) stays, the report's baseline
    for flag in ("top", "random", "token_top"):
        n = getattr(ns, flag)
        if n is not None and n < 1:
            raise AblationError(f"--{flag.replace('_', '-')} {n}: must be >= 1 (experts to disable per layer"
                                f"{', per token' if flag == 'token_top' else ''})")
    # --control or --domain without --top said "nothing to ablate" alone, and --domain beside --random or
    # --experts was ignored (an ablation tour): each names the flag it needs
    if ns.domain is not None and ns.top is None:
        raise AblationError(f"--domain {ns.domain}: it picks that domain's own top experts: use it with --top N")
    if ns.control and ns.top is None:
        raise AblationError("--control adds the random counterpart of --top N: use it with --top")
    if not any(getattr(ns, f) is not None for f in ("experts", "top", "random", "token_top")) and not ns.shared:
        raise AblationError("nothing to ablate: pass --experts, --top, --random, --token-top, --shared or --spec")
    chosen = [f"--{f.replace('_', '-')}" for f in ("experts", "top", "random", "token_top")
              if getattr(ns, f) is not None]
    if len(chosen) > 1:  # Ablation names the spec keys; the command names its flags
        raise AblationError(f"choose one of --experts, --top, --random, --token-top (got {' and '.join(chosen)})")
    unused(ns)
    seed = 0 if ns.seed is None else ns.seed
    main = Ablation(name=ns.name or "", mode=ns.mode, renormalise=ns.renormalise, experts=ns.experts, top=ns.top,
                    random=ns.random, token_top=ns.token_top, domain=ns.domain, seed=seed, layers=ns.layers,
                    shared=ns.shared)
    out = [main]
    if ns.control:
        out.append(Ablation(name=f"{main.name}-control", mode=ns.mode, renormalise=ns.renormalise,
                            random=ns.top, seed=seed, layers=ns.layers, shared=ns.shared))
    return out


def unused(ns) -> None:
    """Refuse a flag the selection would ignore: `--layers 2 --experts 1:3` ablated layer 1 and
    `--seed 3 --top 2` drew nothing, each without a word (found scripting a sweep)."""
    from .select import AblationError

    if ns.seed is not None and ns.random is None and not ns.control:
        raise AblationError(f"--seed {ns.seed}: it seeds the draw of --random or --control, and this command draws "
                            "nothing")
    if ns.layers is not None and ns.experts is not None and not ns.shared:
        raise AblationError(f"--layers {ns.layers}: it chooses the layers of --top, --random and --shared; --experts "
                            "names its own (layer:expert, e.g. 2:3+5)")


@closed_pipe_quiet
@one_line_when_a_peer_is_lost
def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    from .inputs import AblateOptions
    from .run import ablate
    from .select import AblationError

    opts = AblateOptions(**{k: v for k, v in vars(ns).items() if k in AblateOptions.__dataclass_fields__})
    try:
        with terminated_as_ctrl_c():
            out, df = ablate(opts, ablations_from_args(ns))
    except (AblationError, CorpusError, RunError, ValueError, OSError, *table_errors()) as e:
        return job_error(e)
    if launch_rank0():
        show = df.drop(columns=["spec"]).copy()
        print(show.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print(f"wrote {out / 'ablations'}")
    return exit_ranks(0)


if __name__ == "__main__":
    quick_teardown()
    sys.exit(main())
