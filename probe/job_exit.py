"""How the commands' processes end: a reader that stopped early (`... | head`), Ctrl-C, a torchrun
peer that died, an expected error as one line (`job_error`) and the exit status each gets, and the
leaving of a torchrun worker without interpreter teardown (`exit_ranks`); `launch_rank0`, whether
this process prints a job's closing summary. Decorators and helpers for every command's main()
(dsv3-probe's, the analyses jobs', `python -m model`, `generate`, `train`)."""

from __future__ import annotations

import functools
import os
import sys

from .errors import first_line


def closed_pipe_quiet(main):
    """Decorator for a command's main(): when the reader of its output stops early (`... | head`),
    end with exit status 141 (128 + SIGPIPE, as a shell reports it) instead of a BrokenPipeError
    traceback, and point stdout at /dev/null so that the interpreter's last flush cannot fail.
    Ctrl-C (SIGINT) that the command does not handle itself ends with one line and exit status 130
    (128 + SIGINT), as record, spec and generate do, instead of a KeyboardInterrupt traceback (ablate,
    importance and report printed one; ablate and importance say what they committed, in their own
    message)."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except KeyboardInterrupt as e:  # a job's own message, where it raised one, says what it kept
            last_line_coming()
            say_stopped(f"\n{first_line(e) if str(e) else 'interrupted'}")
            return exit_ranks(130)
    return wrapped


def say_stopped(line: str) -> None:
    """A stopped command's last line on stderr, where its terminal may be gone: after SIGHUP (a closed
    terminal or ssh session) a write to it fails (EIO), and that OSError ended a record that had
    marked its run interrupted with a traceback no one saw and exit status 1 instead of 130."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def one_line_when_a_peer_is_lost(main):
    """Decorator for the main() of a command that runs under torchrun: a rank whose peer died (its
    collective raises torch.distributed's RuntimeError: "Connection closed by peer", "Read error"),
    or that torchrun stops with SIGTERM because a peer failed (or a closed terminal's SIGHUP reaches),
    prints one line naming itself and the cause and exits 1, instead of a traceback of ~75 frames or
    nothing at all (found by a review, for spec, ablate, importance and steer). The SIGTERM (and
    SIGHUP) handler writes its line and leaves at once
    (an exception raised from it inside `import torch` came out as torch's AttributeError); a job's
    own handling comes first (record's SIGTERM marks its run interrupted). In a single process a
    RuntimeError is a bug to see whole: it is raised as it came."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        world = launch_world()
        if world <= 1:
            return main(*args, **kwargs)
        import signal

        from .job_signals import stop_signals

        whole_lines_on_stderr()
        rank = os.environ.get("RANK", "?")
        tail = " (another rank failed or was stopped)"
        say_on_stop(None)  # a note of an earlier call's job (tests call main() again) is not this one's

        def stopped(signum, frame):
            line = f"error: rank {rank} of {world} stopped by signal {signum}{stop_cause(signum)}{_kept()}\n"
            try:  # a closed terminal (SIGHUP) fails the write (EIO): raised here, the job took it for its own
                os.write(2, line.encode())
            except OSError:
                pass
            os._exit(1)

        for s in stop_signals(ctrl_c=False):  # SIGTERM, and SIGHUP (a closed terminal) unless ignored
            signal.signal(s, stopped)
        try:
            return main(*args, **kwargs)
        except RuntimeError as e:
            last_line_coming()
            say_stopped(f"error: rank {rank} of {world} stopped: {first_line(e)}{tail}{_kept()}")  # terminal gone?
            return exit_ranks(1)
    return wrapped


def stop_cause(signum: int) -> str:
    """' (why)' after "rank R of W stopped by signal N": torchrun's SIGTERM follows another rank's end (or
    a stop of torchrun's), and SIGHUP is the terminal or ssh session that torchrun and its ranks share
    closing, which every rank said was "another rank failed or was stopped" (a review)."""
    import signal

    if signum == getattr(signal, "SIGHUP", None):
        return " (its terminal or ssh session closed)"
    return " (another rank failed or was stopped)"


_on_stop = None  # say_on_stop's note


def say_on_stop(note) -> None:
    """Under torchrun, what `note()` returns when the rank stops (a str; "" adds nothing) ends the line of a
    rank that a lost peer or torchrun's SIGTERM stops (`one_line_when_a_peer_is_lost`): what the job has
    kept by then and how to go on.
    A job that commits its results as it goes sets it (`analyses.ablate.sweep.Commits`: ablate, importance,
    steer), as its Ctrl-C says them; without it a sweep stopped under torchrun (a rank killed, a
    scheduler's SIGTERM to torchrun) said only "stopped by signal 15 (another rank failed or was
    stopped)", where one process said which ablations were committed and to run the command again.
    None: no note."""
    global _on_stop
    _on_stop = note


def _kept() -> str:
    """`; <the job's note>` (say_on_stop), or "" where there is none. Called from a signal handler: a note
    that fails says nothing rather than end the rank with a traceback."""
    try:
        said = _on_stop() if _on_stop is not None else ""
    except Exception:  # noqa: BLE001 - the rank is leaving: its one line matters more than the note
        said = ""
    return f"; {said}" if said else ""


def whole_lines_on_stderr() -> None:
    """A torchrun worker's stderr goes out a line at a time. Python 3.11 writes stderr through to the
    file at every write, and print() writes the text and its newline apart: under torchrun, whose ranks
    and own log share one stream, another process's line could land between them ("error: ... (torchrun
    started 2 processes)W1207 ... Sending process 6896 closing signal SIGTERM", seen on a loaded
    machine). Buffered to the newline instead, each line is one write (atomic on a pipe up to 4 KiB).
    A single process keeps Python's default."""
    if launch_world() <= 1:
        return
    try:
        sys.stderr.reconfigure(line_buffering=True, write_through=False)
    except (AttributeError, ValueError, OSError):  # not a text stream of its own (a test's capture): as it is
        pass


def job_error(e: BaseException, message: str | None = None) -> int:
    """A command's report of an error it expects (`except (RunError, OSError, *table_errors()) as e:
    return job_error(e)`): `error: <message, else e's>` on stderr as one line, and exit status 2
    (on every rank under torchrun, `exit_ranks`). A BrokenPipeError is an OSError but not a failure
    of the job: the reader of its output stopped (`... | head`), so it is raised again for
    `closed_pipe_quiet`."""
    if isinstance(e, BrokenPipeError):
        raise e
    last_line_coming()
    print(f"error: {message if message is not None else e}", file=sys.stderr)
    return exit_ranks(2)


def last_line_coming() -> None:
    """A torchrun rank about to print why it ends: torchrun's SIGTERM must neither cut that line nor add a
    second. Once a rank exits non-zero torchrun stops the others, and one that had printed its own `error:`
    line and was leaving then also said 'rank 1 of 2 stopped by signal 15' and exited 1 (a loaded machine,
    three xdist workers on two cores). SIGTERM (and SIGHUP) is ignored from here: the process ends at once
    after."""
    if launch_world() <= 1:
        return
    import signal

    from .job_signals import stop_signals

    try:
        for s in stop_signals(ctrl_c=False):
            signal.signal(s, signal.SIG_IGN)
    except ValueError:  # not the main thread: its handler stays
        pass


def table_errors() -> tuple[type[BaseException], ...]:
    """What reading a run's tables raises beyond RunError, for a command to report as one line:
    DuckDB's errors (a half-written or foreign part file; its message names the file). Imported when
    an exception is being matched, so a command that never fails never imports DuckDB for it:
    `except (RunError, *table_errors()) as e`, reported by `job_error`."""
    import duckdb

    return (duckdb.Error,)


def launch_world() -> int:
    """The processes of this torchrun launch (its WORLD_SIZE variable; 1 for a plain process), read without
    importing torch: `--help` and the dashboard stay light."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launch_rank0() -> bool:
    """Whether this process prints a job's closing summary: rank 0 of a torchrun launch (its RANK
    variable; readable before any process group exists, without importing torch), or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def exit_ranks(code: int) -> int:
    """Under torchrun, end the process here (every torchrun command: probe's and analyses' jobs,
    `python -m train`, `python -m generate`). NOTE: with torch 2.13 (CPU, gloo) a rank that ran
    forward passes intermittently aborts during interpreter teardown ("terminate called without an
    active exception") after all its work is done, which torchrun would report as a failure; and
    after a peer died, tearing the process group down can block. So flush and leave at once, also
    when the process group is already closed (train and generate close theirs first; generate's
    ranks still aborted at teardown). A process that never imported torch (`dsv3-probe --help`, the
    dashboard) has nothing to tear down, and neither has one whose `import torch` was cut short (Ctrl-C
    while ablate, importance or steer imported it): importing torch.distributed here imported torch
    again, whose half-registered operators then raised a RuntimeError traceback under "interrupted"."""
    if "torch.distributed" not in sys.modules or "torch" not in sys.modules:
        return code
    import torch.distributed as dist

    from model.ranks import env_world_size

    launched = env_world_size() > 1  # a torchrun worker, its group open or closed
    if launched or (dist.is_available() and dist.is_initialized()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
