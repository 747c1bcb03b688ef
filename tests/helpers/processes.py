"""Commands run as subprocesses: torch's launcher (`TORCHRUN`), a record job held at a known batch (the
kill-then-resume tests), a command whose reader has gone (the closed-pipe tests), commands' --help in a
fresh interpreter (what their start imports)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .zygote import CLIENT, LAUNCH_ENV, Command


HELD_PROBE = Path(__file__).with_name("held_probe.py")  # run in place of `-m probe`

# `torchrun`, then its arguments: torch.distributed.run's main(), forked by this pytest process's zygote
# (zygote.py: no `import torch` a launch) or run by the command's own interpreter where none answers
TORCHRUN = Command([sys.executable, "-c", CLIENT])


def worker_pids(launch: int) -> dict[int, int]:
    """{RANK: pid} of the workers of the TORCHRUN launch whose process is `launch` (its launcher is the
    zygote's child, or that process itself without one: either way the workers' environment names it;
    from /proc)."""
    marker, found = f"{LAUNCH_ENV}={launch}".encode(), {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:  # gone, or not ours
            continue
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if marker in environ and rank:
            found[int(rank[0][5:])] = int(entry.name)
    return found


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


def signalled_at(main: str, target: str, at: int, signum: int, argv: list[str], timeout: float = 300):
    """`main(argv)` (main: "module:function") in a process of its own whose `target` ("module:function",
    replaced there) sends that process `signum` as its call number `at` (from 0) starts: a real signal,
    met by the command's own handlers and otherwise by Python's defaults (SIGTERM's and SIGHUP's end the
    process), which a signal raised inside pytest is not. SIGHUP starts at its default, as a terminal
    starts a command, even where pytest runs under nohup. One torch thread. The CompletedProcess."""
    import json
    import os

    (mod, name), (main_mod, main_fn) = target.split(":"), main.split(":")
    script = ("import importlib, os, signal, sys\n"
              "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
              f"mod, calls = importlib.import_module({mod!r}), []\n"
              f"real = getattr(mod, {name!r})\n"
              "def hooked(*a, **k):\n"
              f"    if len(calls) == {at}:\n"
              f"        os.kill(os.getpid(), {int(signum)})\n"
              "    calls.append(1)\n"
              "    return real(*a, **k)\n"
              f"setattr(mod, {name!r}, hooked)\n"
              f"from {main_mod} import {main_fn} as main\n"
              f"sys.exit(main({json.dumps(argv)}))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})


class HungUp:
    """A stream whose terminal is gone (a closed terminal or ssh session, SIGHUP): every write fails, EIO."""

    def write(self, text):
        raise OSError(5, "Input/output error")

    def flush(self):
        raise OSError(5, "Input/output error")


# `python -m X --help` for each X given, in one fresh interpreter (runpy: the package first, then __main__)
_HELP = """
import contextlib, io, json, runpy, sys
usage = {}
for m in sys.argv[1:]:
    sys.argv, buf = [m, "--help"], io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(m, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
    usage[m] = buf.getvalue().splitlines()[0]
print(json.dumps({"usage": usage, "torch": sorted(k for k in sys.modules if k.split(".")[0] == "torch")}))
"""


def help_of(*modules: str) -> tuple[dict[str, str], list[str]]:
    """({module: the first line of `python -m MODULE --help`}, the torch modules imported meanwhile), all
    from one fresh interpreter in the repository's root."""
    import json

    out = subprocess.run([sys.executable, "-c", _HELP, *modules], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["usage"], got["torch"]
