"""`python -m train`: the command line (usage and recipe: the package docstring, train/__init__.py)."""

from __future__ import annotations

import os
import signal
import sys

from probe.job_signals import quiet_start, stop_signals

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    from model.args import ConfigError
    from probe.job_exit import exit_ranks, launch_rank0, launch_world, say_stopped, stop_cause, whole_lines_on_stderr
    from probe.teardown import quick_teardown

    from . import parse_args
    from .errors import TrainError


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, torchrun stopping its ranks) or SIGHUP (the terminal or ssh session closed;
    `stop_signals`: not under nohup), handled as Ctrl-C is: the loop marks the run interrupted. Left to
    Python's default, the process died with run.json saying "running" (a review). Its one argument, the
    signal's name, is what run.json's error says."""

    @property
    def code(self) -> int:
        """The exit status, 128 + the signal's number, as a shell reports a process it ended (143, 129)."""
        return 128 + signal.Signals[self.args[0]]


def _terminate(signum, frame):
    raise _Terminated(signal.Signals(signum).name)


def _stopped_line(ns, code: int) -> str:
    """What a stopped run says: the run marked interrupted and how to go on; under torchrun, a rank other
    than 0 that torchrun stopped (SIGTERM: another rank failed or was stopped; SIGHUP: its terminal
    closed, `stop_cause`) says only that, as the other commands' ranks do (`probe.job_exit`): it said the
    run was marked interrupted, which rank 0 alone does, also where rank 0 had ended on a refusal before
    the run began (found by the train hunt)."""
    world, rank = launch_world(), os.environ.get("RANK", "0")
    if code != 130 and world > 1 and not launch_rank0():
        return f"error: rank {rank} of {world} stopped by signal {code - 128}{stop_cause(code - 128)}"
    # before its first checkpoint there is nothing to resume: --resume refused, and so did a fresh run
    # in the same --out (it holds a run), so the advice to resume led nowhere
    how = ("continue it with --resume, from its last checkpoint" if (ns.out / "checkpoint" / "state.pt").exists()
           else "no checkpoint was saved yet: delete it to start again")
    said = {143: "terminated", 129: "hung up"}.get(code, "interrupted")
    return f"\n{said}: the run in {ns.out}, if it had begun, is marked interrupted ({how})"


def main(argv: list[str] | None = None, *, command: bool = False) -> None:
    """The command; `command`: in a process of its own (cli()), where Ctrl-C while torch is imported is one line."""
    ns = parse_args(argv)
    with quiet_start(command):  # torch and the loop, once the flags parse: --help answered without them
        from model.kernels import KernelError

        from .loop import run
    whole_lines_on_stderr()  # under torchrun: the ranks' lines and torchrun's do not cut into each other
    previous = {s: signal.signal(s, _terminate) for s in stop_signals(ctrl_c=False)}
    try:
        run(ns)
    except (TrainError, ConfigError, KernelError) as e:  # KernelError: a mistyped DSV3_ONEDNN (model/gemm.py)
        print(f"error: {e}", file=sys.stderr)
        exit_ranks(2)  # under torchrun: leave without interpreter teardown (probe.job_exit.exit_ranks says why)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP: one line, as the other commands (it was a traceback)
        code = e.code if isinstance(e, _Terminated) else 130
        say_stopped(_stopped_line(ns, code))  # its terminal may be gone (SIGHUP)
        exit_ranks(code)
        raise SystemExit(code) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
    exit_ranks(0)


def cli() -> None:
    """main() in a process of its own: `python -m train` and its alias `python -m model.train`."""
    quick_teardown()
    main(command=True)


if __name__ == "__main__":
    cli()
