"""The zygote's side of the tests' torchrun launches (zygote.py says why and how): it imports
torch.distributed.run once, then forks one launcher per launch client that connects, and one worker per
worker client (a launcher's Python worker, run by zygote_python), waits on each through a pidfd and tells
its client how it ended. Run by `zygote.start` as `zygote_server.serve(LISTENER, LIFELINE)`."""

from __future__ import annotations

import builtins
import json
import os
import selectors
import signal
import socket
import struct
import sys
import tempfile
import traceback

import zygote_python
from zygote import LAUNCHER, python_command


class _Launch:
    """One client's launcher or worker: its pid and pidfd, and the client's socket (None once the client
    has gone). A worker is a session of its own, as torchrun starts them: signals go to its group."""

    def __init__(self, conn: socket.socket, pid: int, worker: bool):
        self.conn, self.pid, self.pidfd, self.worker = conn, pid, os.pidfd_open(pid), worker


def serve(listen_fd: int, lifeline: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is pytest's to handle; the lifeline ends this
    from torch.distributed.run import main  # noqa: F401  (what each launcher forked from here runs)

    zygote_python.capture()

    listener = socket.socket(fileno=listen_fd)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(lifeline, selectors.EVENT_READ, "lifeline")
    while True:
        for key, _ in sel.select():
            if sel.get_map().get(key.fd) is not key:
                # NOTE: unregistered by an earlier event of this batch (a child's end and its client's
                # forwarded signal came together): read as the client's, its closed socket's unregister
                # raised and ended the zygote, every launch through it 'went away' (a helper's run)
                continue
            what = key.data
            if what == "lifeline":  # the pytest process has gone (or stopped this): so do its launches
                for launch in {k.data for k in sel.get_map().values() if isinstance(k.data, _Launch)}:
                    _kill_tree(launch.pid)
                    os.waitpid(launch.pid, 0)
                os._exit(0)  # no teardown of torch's modules (zygote.LAUNCHER says why)
            elif what == "accept":
                conn = listener.accept()[0]
                request, fds = _receive(conn)
                if request is None:
                    conn.close()
                    continue
                worker = request.get("kind") == "worker"
                pid = os.fork()
                if pid == 0:
                    ours = {sel.fileno(), conn.fileno(), *(k.fd for k in sel.get_map().values())}
                    (_worker if worker else _launcher)(request, fds, ours)
                for fd in fds:
                    os.close(fd)
                launch = _Launch(conn, pid, worker)
                sel.register(conn, selectors.EVENT_READ, launch)
                sel.register(launch.pidfd, selectors.EVENT_READ, launch)
            elif key.fd == what.pidfd:  # the launcher (worker) has ended: its status to the client
                _, status = os.waitpid(what.pid, 0)
                sel.unregister(what.pidfd)
                os.close(what.pidfd)
                if what.conn is not None:
                    sel.unregister(what.conn)
                    try:
                        what.conn.sendall(b"%d\n" % status)
                    except OSError:
                        pass
                    what.conn.close()
            elif what.conn is not None:  # from the client: signals to forward, or its end (the launch's)
                _from_client(sel, what)


def _from_client(sel: selectors.BaseSelector, launch: _Launch) -> None:
    try:
        signals = launch.conn.recv(64)
    except OSError:
        signals = b""
    if signals:
        for signum in signals:  # the child is not reaped before its pidfd's turn: its pid is its own
            try:
                (os.killpg if launch.worker else os.kill)(launch.pid, signum)
            except ProcessLookupError:  # a worker not yet a session of its own (setsid): the worker itself
                os.kill(launch.pid, signum)
        return
    sel.unregister(launch.conn)
    launch.conn.close()
    launch.conn = None
    _kill_tree(launch.pid)


def _receive(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """A client's request (argv, env, cwd) and its standard input, output and error; (None, []) for a
    client that went before it had sent them."""
    conn.settimeout(30)
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise OSError("the client went before its request was whole")
            data += chunk
    except OSError:
        for fd in fds:
            os.close(fd)
        return None, []
    conn.settimeout(None)
    return json.loads(data[4:]), fds


def _adopt(request: dict, fds: list[int], ours: set[int]) -> None:
    """In a forked child: none of the zygote's descriptors (`ours`: a client's socket held here would hide
    that client's end), the client's standard streams, directory and environment."""
    for fd in ours:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # read from TMPDIR again


def _launcher(request: dict, fds: list[int], ours: set[int]) -> None:
    """The forked launcher: the client's streams, directory, environment and arguments, the signal
    dispositions of a fresh interpreter, its Python workers through the zygote, then zygote.LAUNCHER
    (which leaves by os._exit)."""
    try:
        os.setpgid(0, 0)
        _adopt(request, fds, ours)
        sys.argv = ["-c", *request["argv"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        zygote_python.workers_through_the_zygote()
        exec(compile(LAUNCHER, "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    finally:
        os._exit(1)


def _worker(request: dict, fds: list[int], ours: set[int]) -> None:
    """The forked worker: a session of its own (as torchrun starts one), the client's streams, directory
    and environment, then its command line as a fresh interpreter runs it (zygote_python)."""
    try:
        os.setsid()
        _adopt(request, fds, ours)
        zygote_python.run(python_command(request["argv"]))
    except BaseException:  # before the command ran (zygote_python.run leaves by os._exit): on its stderr
        traceback.print_exc()
    finally:
        os._exit(1)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process under it, each stopped before its children are read (none forks
    past this). torchrun's workers are sessions of their own: the launcher's process group misses them."""
    try:
        os.kill(pid, signal.SIGSTOP)
        children = [int(c) for task in os.listdir(f"/proc/{pid}/task")
                    for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    except OSError:
        children = []
    for child in children:
        _kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
