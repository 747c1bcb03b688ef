"""probe.job_exit under torchrun: a rank that has said why it ends says nothing more when torchrun's SIGTERM
comes (torchrun stops every other rank once one exits non-zero). (Its other behaviours: test_job.py.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers.forked import forked


class _SignalledWhileShown:
    """A message whose str() sends this process SIGTERM: torchrun's signal arriving as the line is printed."""

    def __str__(self) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        return "--model-parallel 3 does not divide the world size 2"


def _rank_1_failing(err_path: str, how: str) -> None:
    """Rank 1 of 2 (its environment as torchrun sets it), its stderr into `err_path`, ending by `how`."""
    from probe.job_exit import closed_pipe_quiet, job_error, one_line_when_a_peer_is_lost

    os.environ.update(WORLD_SIZE="2", RANK="1")
    import sys

    os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)  # the signal handler writes to fd 2
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # print()s too (pytest's capture is not fd 2)

    @closed_pipe_quiet
    @one_line_when_a_peer_is_lost
    def main() -> int:
        if how == "error":
            return job_error(ValueError("unused"), _SignalledWhileShown())
        if how == "peer lost":
            raise RuntimeError(_SignalledWhileShown())
        raise KeyboardInterrupt(_SignalledWhileShown())

    os._exit(main())


def test_a_rank_that_said_why_it_ends_adds_no_stopped_by_signal_line(tmp_path):
    for how, code, line in (("error", 2, "error: --model-parallel 3 does not divide the world size 2"),
                            ("peer lost", 1, "error: rank 1 of 2 stopped: --model-parallel 3 does not divide"),
                            ("ctrl-c", 130, "--model-parallel 3 does not divide the world size 2")):
        err = tmp_path / f"{how}.txt"
        assert forked(_rank_1_failing, str(err), how) == code, (how, err.read_text())
        lines = err.read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(line), (how, lines)
        assert "stopped by signal" not in err.read_text()


_INTERLEAVED = r'''
import os, sys, threading
from probe.job_exit import one_line_when_a_peer_is_lost

stop = threading.Event()

def torchruns_log():  # another writer on the same stream, as torchrun's own log and the other rank are
    while not stop.is_set():
        os.write(2, b"W torchrun: Sending process closing signal SIGTERM\n")

@one_line_when_a_peer_is_lost
def main():
    t = threading.Thread(target=torchruns_log)
    t.start()
    for i in range(3000):
        print(f"error: rank 1 of 2 stopped: line {i}", file=sys.stderr)
    stop.set()
    t.join()

main()
'''


def test_a_ranks_lines_reach_a_shared_stderr_whole(tmp_path):
    """Under torchrun (WORLD_SIZE > 1), a print() to stderr is one write: no other writer's line lands
    between its text and its newline (a rank's error line and torchrun's log line came out as one line)."""
    import subprocess
    import sys

    ROOT = Path(__file__).resolve().parents[2]

    script = tmp_path / "rank.py"
    script.write_text(_INTERLEAVED)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=os.environ | {"WORLD_SIZE": "2", "RANK": "1", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stderr.splitlines()
    ours = [ln for ln in lines if ln.startswith("error: ")]
    assert ours == [f"error: rank 1 of 2 stopped: line {i}" for i in range(3000)]
    assert set(lines) - set(ours) == {"W torchrun: Sending process closing signal SIGTERM"}


_KEPT = "2 of 4 ablations committed in RUN/ablations; run the same command again to compute the rest"


def _rank_0_stopped_with_a_note(err_path: str, how: str, note: bool) -> None:
    """Rank 0 of 2 whose job noted what it keeps (`say_on_stop`, as a sweep does) or not, its stderr into
    `err_path`, stopped by `how`: its peer lost (a collective's RuntimeError) or torchrun's SIGTERM. A first
    main() call of the process notes the same and ends well: an earlier call's note is not the second's."""
    from probe.job_exit import one_line_when_a_peer_is_lost, say_on_stop

    os.environ.update(WORLD_SIZE="2", RANK="0")
    import sys

    os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)

    @one_line_when_a_peer_is_lost
    def main(stop: bool) -> int:
        if note or not stop:
            say_on_stop(lambda: _KEPT)
        if not stop:
            return 0
        if how == "peer lost":
            raise RuntimeError("Connection closed by peer [127.0.0.1]:1234")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler ends the process first
        return 0

    main(False)
    os._exit(main(True))


def test_a_rank_stopped_by_a_lost_peer_or_sigterm_says_what_its_job_kept(tmp_path):
    """An ablate (or importance) sweep under torchrun stopped by a killed rank or a scheduler's SIGTERM to
    torchrun said only "stopped by signal 15 (another rank failed or was stopped)", where one process said
    which ablations it had committed and to run the command again. Now the line ends with the job's note."""
    for how, line in (("peer lost", "error: rank 0 of 2 stopped: Connection closed by peer [127.0.0.1]:1234 "
                                    "(another rank failed or was stopped)"),
                      ("sigterm", "error: rank 0 of 2 stopped by signal 15 (another rank failed or was stopped)")):
        for note in (True, False):
            err = tmp_path / f"{how}-{note}.txt"
            assert forked(_rank_0_stopped_with_a_note, str(err), how, note) == 1, err.read_text()
            want = f"{line}; {_KEPT}" if note else line
            assert err.read_text().strip().splitlines() == [want], (how, note)


def test_a_stop_whose_terminal_is_gone_still_exits_130(monkeypatch):
    """After SIGHUP (a closed terminal or ssh session) writing the last line fails (EIO): that OSError
    came out of the command as a traceback no one saw, exit status 1, although the job had kept what it
    committed. The line is left unsaid and the status stays 130."""
    import sys

    from helpers.processes import HungUp
    from probe.job_exit import closed_pipe_quiet

    @closed_pipe_quiet
    def main() -> int:
        raise KeyboardInterrupt("interrupted: 1 of 2 layers committed in RUN/expert_importance")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "stderr", HungUp())
    assert main() == 130


def _rank_1_hung_up_with_its_terminal_gone() -> None:
    """Rank 1 of 2 whose stderr is a terminal that is gone (a pseudo-terminal whose other end is closed:
    a write fails, EIO), stopped by SIGHUP in a job that reports a failed write of its own (an OSError)
    with exit status 2."""
    import pty

    from probe.job_exit import one_line_when_a_peer_is_lost

    os.environ.update(WORLD_SIZE="2", RANK="1")
    terminal, held = pty.openpty()
    os.dup2(held, 2)
    os.close(held)
    os.close(terminal)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts a command

    @one_line_when_a_peer_is_lost
    def main() -> int:
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(30)  # the handler ends the process first
        except OSError:
            return 2
        return 0

    os._exit(main())


def test_a_rank_stopped_with_its_terminal_gone_leaves_and_the_job_does_not_see_an_oserror():
    """Under torchrun the ranks write to torchrun's terminal; a closed one hangs them all up. The stop
    handler's line then failed (EIO), and that OSError was raised into the job where it stood: a job
    that reports its own failed writes took it for one (a sweep's 'cannot save the baseline pass
    (Input/output error)', exit status 2) and the rank did not leave as stopped. The line is left
    unsaid and the rank exits 1."""
    assert forked(_rank_1_hung_up_with_its_terminal_gone) == 1


def _rank_1_stopped_by(err_path: str, signum: int) -> None:
    """Rank 1 of 2, its stderr into `err_path`, sent `signum` in its job."""
    import sys

    from probe.job_exit import one_line_when_a_peer_is_lost

    os.environ.update(WORLD_SIZE="2", RANK="1")
    os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts a command

    @one_line_when_a_peer_is_lost
    def main() -> int:
        os.kill(os.getpid(), signum)
        time.sleep(30)  # the handler ends the process first
        return 0

    os._exit(main())


def test_a_rank_hung_up_says_its_terminal_closed_not_that_another_rank_failed(tmp_path):
    """A closed terminal hangs up torchrun and its ranks together (one process group): each rank said it was
    'stopped by signal 1 (another rank failed or was stopped)', a cause that was not the one. SIGTERM's
    line, which torchrun sends once another rank ended, is the control."""
    for signum, cause in ((signal.SIGHUP, "its terminal or ssh session closed"),
                          (signal.SIGTERM, "another rank failed or was stopped")):
        err = tmp_path / f"{int(signum)}.txt"
        assert forked(_rank_1_stopped_by, str(err), signum) == 1, err.read_text()
        assert err.read_text().strip() == f"error: rank 1 of 2 stopped by signal {int(signum)} ({cause})"


def _rank_1_losing_its_peer_with_its_terminal_gone() -> None:
    """Rank 1 of 2 whose stderr is a terminal that is gone, its peer lost (a collective's RuntimeError):
    exits with what the decorated main() returns, 5 where an exception escapes it."""
    import pty
    import sys

    from probe.job_exit import one_line_when_a_peer_is_lost

    os.environ.update(WORLD_SIZE="2", RANK="1")
    terminal, held = pty.openpty()
    os.dup2(held, 2)
    os.close(held)
    os.close(terminal)
    sys.stderr = sys.__stderr__  # the interpreter's own, on fd 2 (pytest's capture is not)

    @one_line_when_a_peer_is_lost
    def main() -> int:
        raise RuntimeError("Connection closed by peer [127.0.0.1]:1234")

    try:
        code = main()
    except BaseException:  # noqa: BLE001 - what the test looks at
        code = 5
    os._exit(code)


def test_a_rank_whose_peer_is_lost_with_its_terminal_gone_still_leaves_with_1():
    """The line of a rank whose peer died failed (EIO) where its terminal was gone (torchrun's, closed),
    and that OSError escaped the command: a traceback, and the interpreter's teardown that exit_ranks
    leaves out (it can block after a peer died). The line is left unsaid, and the rank leaves with 1."""
    assert forked(_rank_1_losing_its_peer_with_its_terminal_gone) == 1
