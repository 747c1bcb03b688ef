"""The tests' torchrun launches without the launcher's `import torch`: one long-lived process per pytest
process (an xdist worker; the zygote) has imported torch.distributed.run and forks one launcher per launch,
which then runs torchrun's main() as `helpers.processes.TORCHRUN` always did (its elastic agent, the
SIGTERM to the other workers when one fails, its exit status and its report on standard error).

NOTE: each launch paid ~2 s of CPU, and as much wall time before any worker started, for the launcher's
`import torch`; the suite launches torchrun ~23 times. Five 2-rank launches of a worker without torch
(tests/workers/zygote_worker.py), one after the other: 2.6-3.8 s each and 9.1-9.6 s of CPU in all (children
included) with the launcher importing torch, 0.8-1.2 s each after the first (4.5 s: the zygote's import)
and 3.3-3.5 s of CPU through the zygote (2-core EPYC, loaded, 2026-12-06 23:42 UTC). The client imports no
torch (its interpreter: 30-40 ms of CPU).

How it goes: `TORCHRUN` runs `client()` in a fresh interpreter. It connects to the zygote's unix socket
(its path in the environment, ENV), passes its standard input, output and error, its arguments,
environment and working directory, forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to the launcher, and
exits as the launcher did (a signal's death by that signal). The launcher is the zygote's child, not
the client's: `processes.worker_pids` finds its workers by the client's pid in their environment
(LAUNCH_ENV). A client that dies (SIGKILL, a test's timeout) takes its launcher and the launcher's
workers with it (torchrun's workers are sessions of their own: the launcher's process group misses
them). Without ENV, or with no zygote answering, the client runs the launcher itself, as before.

The launcher's workers come from the zygote too (zygote_python.py). torchrun starts each worker as
`python -u -m MODULE ...` or `python -u SCRIPT ...`; a launcher forked here starts WORKER_CLIENT with the
same arguments instead, a client like the one above, and the zygote forks a child that runs the command
as a fresh interpreter would. torchrun sees the client: its pid, its signals (forwarded to the worker's
process group), its exit status (the worker's). NOTE: a worker's own `import torch` was ~1.5-2 s of CPU,
~60 workers a suite run. test_mp_resume.py, test_mp_jobs.py and test_parallel.py took 44.1 s with
forked workers against 60.8 s with fresh interpreters, one after the other in one command (2-core EPYC,
2026-12-07 ~05:55 UTC). `DSV3_TEST_EXEC_WORKERS=1` in a launch's environment (or the suite's) gives
fresh interpreters.

The zygote starts at a pytest process's first launch (`Command`) and ends with that process: when the
pipe it holds the read end of closes (its lifeline), it kills the launches still running and exits.
The zygote's side is zygote_server.py. Only standard-library imports here: the client imports this
module as `zygote` (and the zygote with it)."""

from __future__ import annotations

import atexit
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys

ENV = "DSV3_TEST_ZYGOTE"  # the zygote's socket, in the tests' environment
LAUNCH_ENV = "DSV3_TEST_LAUNCH"  # the client's pid, in its launcher's and workers' environments
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # the signals torchrun handles
HERE = os.path.dirname(os.path.abspath(__file__))

# `torchrun` (torch.distributed.run's main(), as `python -m torch.distributed.run` runs it), left without the
# interpreter's teardown once main() has returned or raised: its exit handlers run, then os._exit with the
# status Python would give. NOTE: tearing down the launcher's modules (torch's) took 0.5-0.8 s after each
# launch's workers had all exited, which every test's launch waited for (16 launches a suite run; 2-core
# EPYC, 2026-12-06). The workers leave the same way already (probe.job_exit.exit_ranks).
LAUNCHER = """
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
# the `-c` program of helpers.processes.TORCHRUN (then torchrun's arguments)
CLIENT = f"import sys; sys.path.insert(0, {HERE!r}); import zygote; del sys.path[0]; zygote.client()"
# the `-c` program a launcher from the zygote starts each Python worker with, in place of the interpreter
# (then the worker's interpreter arguments: `-u -m MODULE ...` or `-u SCRIPT ...`)
WORKER_CLIENT = f"import sys; sys.path.insert(0, {HERE!r}); import zygote; del sys.path[0]; zygote.client('worker')"
EXEC_WORKERS = "DSV3_TEST_EXEC_WORKERS"  # "1" in a launch's environment: its workers are fresh interpreters


def python_command(argv: list[str]) -> dict | None:
    """An interpreter's command line that a worker forked from the zygote can run: `[-u] -m MODULE ARGS`
    or `[-u] SCRIPT ARGS` as {"unbuffered", "module" | "script", "args"}; None for any other (`-c`, -X,
    -W, ...: such a worker is a fresh interpreter)."""
    unbuffered = False
    while argv[:1] == ["-u"]:
        unbuffered, argv = True, argv[1:]
    if len(argv) >= 2 and argv[0] == "-m":
        return {"unbuffered": unbuffered, "module": argv[1], "args": argv[2:]}
    if argv and not argv[0].startswith("-"):
        return {"unbuffered": unbuffered, "script": argv[0], "args": argv[1:]}
    return None


def python_wrapper(directory: str) -> str:
    """An executable in `directory` that stands for the interpreter: each `[-u] -m MODULE ...` or
    `[-u] SCRIPT ...` it is given runs forked from this process's zygote (started here), any other command
    line in the interpreter itself; for scripts that take their Python by path (tests/gpu/run_all.sh)."""
    start()
    path = os.path.join(directory, "python-via-zygote")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(WORKER_CLIENT)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


class Command(list):
    """A command list whose reading (`[*TORCHRUN, ...]`, `TORCHRUN + [...]`) starts this process's zygote:
    a pytest process that launches nothing starts none."""

    def __iter__(self):
        start()
        return super().__iter__()

    def __add__(self, other):
        start()
        return list(self) + list(other)


_zygote: dict = {}  # this pytest process's: "proc" (the zygote), "lifeline" (the pipe's write end), "owner"


def install(directory: str) -> None:
    """Name the zygote's socket in `directory` (a folder of this process's own, removed with it) in the
    environment: the launches read it there; the zygote itself starts at the first (start). Linux only
    (the zygote waits on its launchers through pidfds)."""
    path = os.path.join(directory, "zygote.sock")
    if sys.platform == "linux" and hasattr(os, "pidfd_open") and len(path.encode()) < 100:
        os.environ[ENV] = path


def start() -> None:
    """Start this process's zygote unless it runs already (or ENV is not set here). Its socket listens from
    here on: a launch waits in its backlog while the zygote imports torch."""
    path = os.environ.get(ENV)
    if not path or _zygote:  # none here, or started (in this process, or in the one it was forked from)
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    lifeline, write_end = os.pipe()
    serve = (f"import sys; sys.path.insert(0, {HERE!r}); import zygote_server; del sys.path[0]; "
             f"zygote_server.serve({listener.fileno()}, {lifeline})")
    proc = subprocess.Popen([sys.executable, "-c", serve],
                            pass_fds=(listener.fileno(), lifeline), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    listener.close()
    os.close(lifeline)
    _zygote.update(proc=proc, lifeline=write_end, owner=os.getpid())
    atexit.register(stop)


def stop() -> None:
    """End this process's zygote (at exit; the lifeline closing ends it too when this process is killed)."""
    if _zygote.get("owner") != os.getpid():  # none, or a forked child's copy
        return
    os.close(_zygote.pop("lifeline"))
    try:
        _zygote["proc"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        _zygote["proc"].kill()
    _zygote.clear()


# ------------------------------------------------------------------------------------- the client
def client(kind: str = "launch") -> None:
    """What TORCHRUN's interpreter runs (`kind` "launch"): the launch through the zygote, or the launcher
    here without one. What a zygote launcher's Python worker runs ("worker", WORKER_CLIENT): the worker
    forked from the zygote, or the interpreter it stands for (exec) without one."""
    if kind == "launch":
        os.environ[LAUNCH_ENV] = str(os.getpid())
    sock = _connect(os.environ.get(ENV))
    if kind == "worker" and (sock is None or python_command(sys.argv[1:]) is None):
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    if sock is None:
        exec(compile(LAUNCHER, "<string>", "exec"), {"__name__": "__main__"})  # leaves by os._exit
    request = json.dumps({"kind": kind, "argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    request = struct.pack("!I", len(request)) + request
    sent = socket.send_fds(sock, [request], [_open_fd(fd) for fd in (0, 1, 2)])
    sock.sendall(request[sent:])

    def forward(signum, _frame):
        try:
            sock.send(bytes([signum]))
        except OSError:  # the launcher has ended: its status is on its way
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = b""
    while not status.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            print(f"error: the tests' torchrun zygote went away during the {kind}", file=sys.stderr)
            os._exit(1)
        status += chunk
    code = os.waitstatus_to_exitcode(int(status))
    if code < 0:  # the launcher's (worker's) death by a signal is the client's
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def _connect(path: str | None) -> socket.socket | None:
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:  # no zygote (it was never started, or it has gone)
        sock.close()
        return None
    return sock


def _open_fd(fd: int) -> int:
    """`fd` where it is open, else /dev/null in its place (a client started with its input closed)."""
    try:
        os.fstat(fd)
        return fd
    except OSError:
        return os.open(os.devnull, os.O_RDWR)

