"""Commands run as subprocesses: torch's launcher (`TORCHRUN`), a record job held at a known batch (the
kill-then-resume tests), a command whose reader has gone (the closed-pipe tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


HELD_PROBE = Path(__file__).with_name("held_probe.py")  # run in place of `-m probe`

# `torchrun` (torch.distributed.run's main(), as `python -m torch.distributed.run` runs it), left without the
# interpreter's teardown once main() has returned or raised: its exit handlers run, then os._exit with the
# status Python would give. NOTE: tearing down the launcher's modules (torch's) took 0.5-0.8 s after each
# launch's workers had all exited, which every test's launch waited for (16 launches a suite run; 2-core
# EPYC, 2026-12-06). The workers leave the same way already (probe.job_exit.exit_ranks).
_LAUNCHER = """
import atexit, os, sys, traceback
from torch.distributed.run import main
sys.argv[0] = "torchrun"  # its usage and errors name it so (not "-c")
try:
    main()
    code = 0
except SystemExit as e:  # sys.exit(None | status | message), as the interpreter reads it
    if e.code is None or isinstance(e.code, int):
        code = e.code or 0
    else:
        print(e.code, file=sys.stderr)
        code = 1
except BaseException:
    traceback.print_exc()
    code = 1
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(int(code))
"""
TORCHRUN = [sys.executable, "-c", _LAUNCHER]  # then torchrun's arguments


def hold_env(gate: Path, at: int) -> dict[str, str]:
    """Environment for a job launched through `held_probe.py`: each rank stops at the start of batch `at`
    until `gate` (created here) is removed."""
    gate.touch()
    return {"DSV3_TEST_HOLD_AT": str(at), "DSV3_TEST_HOLD_GATE": str(gate)}


def wait_until_held(proc, gate: Path, ranks: int = 1, timeout: float = 120) -> bool:
    """True once `ranks` ranks of the job are held at its gate; False if the process ended first or
    `timeout` seconds passed."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list(gate.parent.glob(gate.name + ".r*"))) >= ranks:
            return True
        time.sleep(0.01)
    return False


def reader_gone(*args: str, timeout: float = 120) -> tuple[int, str]:
    """`python ARGS` in the repository with its standard output a pipe closed before the first line, as
    `| head -0` would: (exit status, standard error)."""
    from .models import REPO

    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=timeout), err
