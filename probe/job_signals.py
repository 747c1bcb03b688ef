"""Signals around a job's steps: Ctrl-C while a command starts (`quiet_start`), SIGTERM and SIGHUP
turned into Ctrl-C so that a half-written temporary is removed (`terminate_as_interrupt`; in a sweep
that commits as it goes, in a single process, `terminated_as_ctrl_c`), signals held pending while
steps that must not be cut in two run (`signals_held`), and which signals stop a job
(`stop_signals`). `probe.job` re-exports them."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_start(command: bool | None = None):
    """Around a command package's imports (torch: a second or two): Ctrl-C there ends the process at
    once with one line and exit status 130, as it does once the command's main() runs, instead of a
    traceback from inside `import torch`. By a handler that exits (os._exit: nothing has been done
    yet), not a KeyboardInterrupt: one raised inside numpy's import came out as an ImportError
    traceback, and a bare `except:` in an imported module swallowed another (the command then ran).
    Only under `python -m PACKAGE`, which imports the package before its __main__ and sets
    sys.argv[0] to "-m" meanwhile (Python's documented value while it locates the module); a library
    import keeps Python's handler. A command's own module (a package's __main__, `python -m
    analyses.variants`) runs its imports once sys.argv[0] is its file: it says so, `command=__name__ ==
    "__main__"` (probe/__main__ also for the console script `dsv3-probe`). Every command wraps each step
    of its start that imports in one (its package's imports, its __main__'s, those just before main()),
    so that the only gap left is this small module's own import."""
    import signal

    def stop(signum, frame):
        os.write(2, b"\ninterrupted while starting: nothing was done\n")
        os._exit(130)

    if command is None:
        command = sys.argv[:1] == ["-m"]
    previous = signal.signal(signal.SIGINT, stop) if command else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def stop_signals(ctrl_c: bool = True) -> tuple[int, ...]:
    """The signals that stop a job as Ctrl-C does: SIGINT (without `ctrl_c`, not it), SIGTERM (`timeout`,
    a scheduler's stop) and SIGHUP (its terminal or ssh session closed: Python's default ended the
    process where it stood, a record's run.json saying "running" for good), for the jobs' handlers and
    `signals_held`. Less SIGHUP where this process ignores it: started by `nohup`, to outlive its
    terminal, which a handler of ours would undo."""
    import signal

    hup = getattr(signal, "SIGHUP", None)  # none on Windows
    kept = hup is not None and signal.getsignal(hup) is not signal.SIG_IGN
    return (signal.SIGINT,) * ctrl_c + (signal.SIGTERM,) + ((hup,) if kept else ())


@contextlib.contextmanager
def terminate_as_interrupt():
    """In this block SIGTERM raises KeyboardInterrupt("terminated"), and SIGHUP KeyboardInterrupt("hung
    up") (`stop_signals`: unless ignored), as Ctrl-C does, so that the `finally` that removes a
    half-written temporary runs: Python's default ended the process where it stood (an import or a
    variant stopped by `timeout` or a scheduler left its temporary folder, for a variant a copy of the
    checkpoint under a name no later run removes; a tour). Main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt("terminated" if signum == signal.SIGTERM else "hung up")

    previous = {s: signal.signal(s, stop) for s in stop_signals(ctrl_c=False)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


@contextlib.contextmanager
def signals_held(*signums: int):
    """`signums` held pending in this block, delivered when it ends (main thread only: elsewhere a
    process's signals are not this thread's to hold, and nothing is held). For the steps that must
    not be cut in two: renaming a job's results together with run.json, marking a run interrupted
    and saying so before torchrun's SIGTERM ends the rank. Held by a handler that notes them, not by
    the thread's signal mask: a signal sent to the process goes to any thread that does not block
    it (torch's and gloo's threads), and Python runs the handler on the main thread all the same.
    A handler set inside the block stays (and gets what was held)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []

    def note(signum, frame):
        held.append(signum)

    before = {s: signal.signal(s, note) for s in signums}
    try:
        yield
    finally:
        for s, h in before.items():
            if signal.getsignal(s) is note:
                signal.signal(s, signal.SIG_DFL if h is None else h)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def terminated_as_ctrl_c():
    """Around a job that commits as it goes (ablate's ablations, importance's layers, steer's passes:
    `analyses.ablate.sweep.Commits`): in a single process, SIGTERM (`timeout`, a scheduler's stop, a
    notebook kernel shut down) and SIGHUP (a closed terminal) are Ctrl-C (`terminate_as_interrupt`), so
    the job says what it committed and how to go on and exits 130; it ended at once, silent, with status
    143 (129), and left its temporary part file. Under torchrun the ranks' own handling stays
    (`probe.job_exit.one_line_when_a_peer_is_lost`)."""
    from .job_exit import launch_world

    return terminate_as_interrupt() if launch_world() <= 1 else contextlib.nullcontext()
