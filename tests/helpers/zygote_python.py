"""A Python command line (`[-u] -m MODULE ARGS` or `[-u] SCRIPT ARGS`, zygote.python_command) run in a
child forked from the tests' zygote as a fresh interpreter would run it: the worker of a torchrun launch,
without the ~1.5-2 s of CPU that its `import torch` costs (zygote.py says why). Also what starts a
launcher's workers that way (workers_through_the_zygote), in a launcher forked from the zygote or in a
forked `python -m torch.distributed.run`.

What a fresh interpreter would have and a fork of the zygote has not, set here: sys.argv and sys.path
(the module's directory, or the script's, then $PYTHONPATH's entries, then the installed paths), the
standard streams on the client's descriptors (unbuffered for -u or $PYTHONUNBUFFERED), the signal
dispositions of a new interpreter, torch's thread count from $OMP_NUM_THREADS (GNU OpenMP read the
zygote's environment when torch loaded it), a reseeded numpy generator, and its exit: the
status Python gives, after non-daemon threads are joined and exit handlers run.

NOTE: one thing cannot be set: str hashes keep the zygote's seed, the same in every forked worker, where
fresh interpreters draw one each. A rank-dependent iteration order of a set of strings is not seen here
(launch with DSV3_TEST_EXEC_WORKERS=1 for fresh interpreters). The project's modules are imported by the
worker itself (the zygote imports torch only), so what they read from the environment at import is the
worker's."""

from __future__ import annotations

import atexit
import io
import os
import runpy
import signal
import sys
import threading
import traceback

from zygote import EXEC_WORKERS, WORKER_CLIENT, python_command

# the zygote's own, taken at its start (capture): the installed paths and its streams' encodings
_BASE_PATH: list[str] = []
_ENCODINGS: dict[int, tuple[str, str]] = {}
_THREADS: dict[str, str] = {}  # "env": the zygote's $OMP_NUM_THREADS ("" unset)


def capture() -> None:
    """Note, in the zygote before it serves, what a worker's fresh interpreter would share with it."""
    own = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    _BASE_PATH[:] = [p for p in sys.path[1:] if p not in own]
    for fd, stream in enumerate((sys.stdin, sys.stdout, sys.stderr)):
        _ENCODINGS[fd] = (getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or "strict")
    _THREADS["env"] = os.environ.get("OMP_NUM_THREADS", "")


def run(command: dict) -> None:
    """Run `command` (zygote.python_command's) in this forked child, whose descriptors, directory and
    environment are the worker's already, and leave as the interpreter would (os._exit)."""
    _fresh_interpreter(command)
    if command.get("module") == "torch.distributed.run":  # `python -m torch.distributed.run`: a launcher
        workers_through_the_zygote()
    try:
        if "module" in command:
            sys.argv = ["-m", *command["args"]]
            runpy.run_module(command["module"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [command["script"], *command["args"]]
            _run_script(command["script"])
        code = 0
    except SystemExit as e:
        code = _exit_status(e)
    except KeyboardInterrupt:  # as Python 3.8+: the traceback, then death by SIGINT
        traceback.print_exc()
        _leave(None)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _leave(code)


def _run_script(script: str) -> None:
    """`script` as the interpreter runs `python SCRIPT`: in a new `__main__` module, its __file__ the
    absolute path (Python 3.9+) while sys.argv[0] stays as given (runpy.run_path set argv[0] to the path
    it was given, and put the zygote's `__main__` back after)."""
    import builtins
    import importlib.machinery
    import types

    path = os.path.abspath(script)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec")  # bytes: a coding cookie is read as the interpreter reads it
    exec(code, main.__dict__)


def workers_through_the_zygote() -> None:
    """torchrun's worker processes, `python -u -m MODULE ...` or `python -u SCRIPT ...`, started as
    zygote.WORKER_CLIENT with the same arguments: each worker is then forked from the zygote (its pid for
    torchrun is the client's, which forwards signals and ends as the worker ends). Not where this process's
    environment (the launch's) has EXEC_WORKERS=1: its workers are then fresh interpreters."""
    if os.environ.get(EXEC_WORKERS) == "1":
        return
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler

    handler = subprocess_handler.SubprocessHandler
    popen = handler._popen  # (self, args, env): the one place torchrun starts a worker

    def through_the_zygote(self, args, env):
        if args and args[0] == sys.executable and python_command(list(args[1:])) is not None:
            args = (sys.executable, "-c", WORKER_CLIENT, *args[1:])
        return popen(self, args, env)

    handler._popen = through_the_zygote


def _fresh_interpreter(command: dict) -> None:
    """sys.path, the standard streams, signals, threads and random generators as a new interpreter's."""
    first = os.getcwd() if "module" in command else os.path.dirname(os.path.realpath(command["script"]))
    extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [first, *extra, *_BASE_PATH]
    unbuffered = command["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = _stream(0, "r", unbuffered)
    sys.stdout = sys.__stdout__ = _stream(1, "w", unbuffered)
    sys.stderr = sys.__stderr__ = _stream(2, "w", unbuffered)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it
    import torch  # the zygote's (imported already)

    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads != _THREADS["env"]:  # else torch's choice in the zygote stands (no more than the cores)
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(min(int(threads), cores) if threads.isdigit() and int(threads) > 0 else cores)
    if "numpy.random" in sys.modules:  # (`random` reseeds itself in a forked child)
        sys.modules["numpy.random"].seed()


def _stream(fd: int, mode: str, unbuffered: bool) -> io.TextIOWrapper:
    encoding, errors = _ENCODINGS.get(fd, ("utf-8", "strict"))
    if os.environ.get("PYTHONIOENCODING"):
        enc, _, err = os.environ["PYTHONIOENCODING"].partition(":")
        encoding, errors = enc or encoding, err or errors
    raw = io.FileIO(fd, mode, closefd=False)
    if mode == "r":
        return io.TextIOWrapper(io.BufferedReader(raw), encoding, errors)
    if unbuffered:
        return io.TextIOWrapper(raw, encoding, errors, write_through=True)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding, errors, line_buffering=fd == 2 or raw.isatty())


def _exit_status(e: SystemExit) -> int:
    """sys.exit(None | status | message) as the interpreter reads it."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def _leave(code: int | None) -> None:
    """The interpreter's end: non-daemon threads joined, exit handlers run, streams flushed; then os._exit
    with `code` (None: return, for a death by signal to follow)."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = 120 if code == 0 else code
    if code is not None:
        os._exit(code)
