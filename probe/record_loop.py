"""The record job's batch loop: each replica runs its share of the batches, its writer commits every
--commit-every batches, and a signal on any rank stops every rank at the same batch (see
`probe/record.py` for the layout of ranks and replicas, `probe/writer.py` for commits and resume).
The closing collectives and run.json's final update (`probe/record_tables.finish`) follow; a rank
that fails, or whose peer is gone, marks the run interrupted without any further collective."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.memory import process_memory

from .job import RecordError, first_line, stop_signals
from .job_exit import say_stopped
from .recorders import Batch, RecordConfig, Recorder
from .record_tables import finish
from .writer import PartWriter, check_committed, load_progress, prune_uncommitted

if TYPE_CHECKING:
    from .record import CorpusPlan, Job, RecordOptions

STOP_GRACE = float(os.environ.get("DSV3_STOP_GRACE", "20"))  # seconds a rank may take to stop after a signal


class StopOnSignal:
    """SIGINT / SIGTERM / SIGHUP (`stop_signals`: a closed terminal left run.json "running" for good)
    set a flag that the loop reads between batches; a second signal stops now.

    With `on_stuck` (several ranks): a watchdog thread learns of the signal at once, through the
    signal wakeup fd, even while the main thread is blocked in a collective, and calls `on_stuck`
    if the loop has not ended `grace` seconds later (a peer died and the backend waits on it: NCCL,
    or gloo in a state it does not notice)."""

    def __init__(self, on_stuck=None, grace: float = 20.0) -> None:
        self.signal: int | None = None
        self._old = {}
        self.on_stuck, self.grace = on_stuck, grace
        self._done = threading.Event()
        self._sock = None
        self.leaving = False  # set when this rank leaves after a failure: signals are then ignored

    def ignore_from_now(self) -> None:
        """This rank is leaving (a peer is gone): from the end of the block on, the stop signals are
        ignored instead of restored, so that torchrun's SIGTERM, which follows a peer's death at a
        moment of its own, cannot kill the rank between marking the run and saying so."""
        self.leaving = True

    def __enter__(self):
        for s in stop_signals():
            self._old[s] = signal.signal(s, self._handle)
        if self.on_stuck is not None:
            r, w = socket.socketpair()
            w.setblocking(False)
            self._sock, self._old_fd = (r, w), signal.set_wakeup_fd(w.fileno())
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def _watch(self) -> None:
        try:
            got = self._sock[0].recv(1)  # the first signal's number
        except OSError:
            return
        if got and not self._done.wait(self.grace):
            self.on_stuck(got[0])

    def __exit__(self, *exc) -> None:
        self._done.set()
        for s, h in self._old.items():
            signal.signal(s, signal.SIG_IGN if self.leaving else h)
        if self._sock is not None:
            signal.set_wakeup_fd(self._old_fd)
            for sock in self._sock:
                sock.close()


@dataclass
class _Progress:
    """What this writer has committed (restored from `_progress/` on --resume)."""
    done: int = -1  # last global batch committed
    tokens: int = 0
    commits: int = 0
    last: int = -1  # last global batch recorded
    since_commit: int = 0


def _batches(windows, size: int):
    buf = []
    for w in windows:
        buf.append(w)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _restore(out: Path, world, rec: Recorder, writer: PartWriter | None, tables: list[str],
             resume: bool) -> _Progress:
    """This replica's progress (its writer's, which the writer reads and the replica's other ranks take
    from it, so that they all skip the same batches); the writer also drops part files past its last
    commit and goes on from its committed parts (checked intact: rank 0 checked every writer's before
    run.json said running, `probe.record.open_run`).

    NOTE: the other ranks read the progress file themselves before: a rank that writes nothing need not
    see the run (its node without the shared disk, which a new run never noticed), and one that found no
    progress began at batch 0 while its writer went on from the last commit: the sharded forward passes
    then combined two batches' halves into the rows written, until the ranks' collectives parted."""
    progress, state = load_progress(out, world.rank) if resume and world.writes else ({}, {})
    if writer is not None:
        if progress:  # verified by rank 0 before run.json said running; older progress names no parts
            writer.committed = progress.get("parts") or check_committed(out, world.rank, tables)
        prune_uncommitted(out, world.rank, progress.get("done") if progress else None, tables)
        if state:
            rec.kv.load_state(state)
    done = progress.get("done", -1)
    if resume and world.model_parallel > 1:  # the writer's, on every rank of its replica
        done = world.everyone(done)[world.leader]
    return _Progress(done=done, tokens=progress.get("tokens", 0), commits=progress.get("commits", 0), last=done)


def record_batches(job: Job, opts: RecordOptions, world, m, plan: CorpusPlan, tables, mem: dict, begin) -> Path:
    """`begin()` creates the run (or reopens it to resume) under the loop's signal handlers: a signal
    then stops the loop at its first round, which marks the run; one that came between the run's
    creation and the handlers left run.json "running" for good (under torchrun, with only "stopped
    by signal 15" said)."""
    out = job.out
    cfg = RecordConfig(router_logits=opts.router_logits, sample=opts.sample, kv_stats=opts.kv_stats, mtp=opts.mtp)
    rec = Recorder(m, cfg, domains=sorted(plan.per_domain))
    t_start = time.time()

    def stuck(signum: int) -> None:  # the watchdog thread (see StopOnSignal)
        leave_stuck(out, opts, job, world, time.time() - t_start, signum)

    # the signal handlers (and the watchdog) stay in place through the closing collectives too: a
    # peer may die, and torchrun then send SIGTERM, while this rank waits in the final gather
    with StopOnSignal(stuck if world.size > 1 else None, STOP_GRACE) as stop:
        try:
            begin()
        except RecordError:  # a peer lost while the run was created: leaving, as after the batches
            if world.size > 1:
                stop.ignore_from_now()
            raise
        writer = PartWriter(out, world.rank, tables) if world.writes else None
        prog = _restore(out, world, rec, writer, tables, opts.resume)
        bar = None
        if opts.progress and world.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=plan.tokens, unit="tok", unit_scale=True, desc="record", dynamic_ncols=True)
        status, failure = _run_batches(job, opts, world, rec, writer, prog, plan, stop, bar)
        if bar is not None:
            bar.close()
        elapsed = time.time() - t_start
        if failure is None:
            failure = _close(out, status, opts, job, world, elapsed, mem)
        if failure is not None and world.size > 1:
            stop.ignore_from_now()
    if failure is not None:
        _leave(out, failure, opts, job, world, elapsed)
    if status == "interrupted":
        raise KeyboardInterrupt(f"interrupted by signal {stop.signal or 'on another rank'}; {out} is marked "
                                "interrupted (continue with --resume)")
    return out


def _leave(out: Path, failure: BaseException, opts, job: Job, world, elapsed: float) -> None:
    """This rank stopped on `failure`: mark the run interrupted and raise its one line (no collective:
    a peer may be gone; any surviving rank marks the run).

    NOTE: a rank that writes nothing need not see the run (`_restore`); one whose folder held no
    run.json, its writer gone, ended with "not a run directory" from the marking instead of this line.
    It marks nothing there (the run, "running" with no job holding it, reads as interrupted)."""
    marked = (out / "run.json").exists() or world.writes
    if marked:
        finish(out, "interrupted", opts, job.args, world, elapsed)
    run = _said(out, marked)
    if isinstance(failure, KeyboardInterrupt):  # a second signal: what was committed stays
        raise KeyboardInterrupt(f"interrupted by a second signal; {run}, its committed batches kept (continue "
                                "with --resume)") from None
    if world.size == 1 and not isinstance(failure, OSError):
        raise failure
    if world.size == 1:  # a full disk, a lost mount: named with the run, as under torchrun (a review)
        raise RecordError(f"{first_line(failure)}; {run}, its committed batches kept (continue with --resume "
                          "once that is fixed)") from None
    raise RecordError(f"rank {world.rank} of {world.size} stopped: {first_line(failure)}; {run} (continue with "
                      "--resume)") from None


def leave_stuck(out: Path, opts, job: Job, world, elapsed: float, signum: int) -> None:
    """The watchdog thread's end of a rank that made no progress `STOP_GRACE` seconds after signal `signum`
    (`StopOnSignal`'s on_stuck): mark the run interrupted, say so, and leave the process at once, whatever
    the marking or the line does. The line was a print: with the terminal gone (SIGHUP, every write EIO)
    it raised in the thread, which died there, and the stuck rank never left (a review)."""
    try:
        marked = (out / "run.json").exists()  # else stuck before rank 0 created it (begin), or not seeing it (_leave)
        if marked:
            finish(out, "interrupted", opts, job.args, world, elapsed)
        say_stopped(f"error: rank {world.rank} of {world.size} stopped: no progress {STOP_GRACE:g} s after signal "
                    f"{signum} (a peer rank is gone?); {_said(out, marked)} (continue with --resume)")
    finally:
        os._exit(1)


def _said(out: Path, marked: bool) -> str:
    return f"{out} is marked interrupted" if marked else "the run is interrupted"


def _close(out: Path, status: str, opts, job: Job, world, elapsed: float, mem: dict):
    """The closing collectives: gather each rank's memory, rank 0 finishes run.json, barrier.
    Returns the exception when a peer is gone before run.json is finished (None otherwise)."""
    try:
        now = process_memory()
        ranks = world.gather(mem | {"rank": world.rank, "peak_rss": now["peak_rss"],
                                    **({"cuda_peak_allocated": now["cuda_peak_allocated"]}
                                       if "cuda_peak_allocated" in now else {})})
    except Exception as e:  # noqa: BLE001 - a dead peer: the caller marks the run and says so
        if world.size == 1:
            raise
        return e
    if world.rank == 0:
        finish(out, status, opts, job.args, world, elapsed, ranks)
    try:
        world.barrier()
    except Exception:  # noqa: BLE001 - a peer gone after run.json was finished: the run is written
        pass
    return None


def _run_batches(job: Job, opts, world, rec: Recorder, writer, prog: _Progress, plan: CorpusPlan, stop, bar):
    """Run this replica's batches; returns (status, the exception that stopped this rank or None)."""
    R = world.replicas

    def commit(final: bool = False) -> None:
        writer.commit(prog.last, {"tokens": prog.tokens, "commits": prog.commits, "finished": final},
                      rec.kv.state())
        prog.commits, prog.since_commit = prog.commits + 1, 0

    try:
        for b, bw in enumerate(_batches(job.windows(opts.seq_len, opts.max_tokens, opts.order), opts.batch_size)):
            n = sum(len(x.ids) for x in bw)
            if b % R == world.replica and b > prog.done:
                if writer is None:
                    rec.forward_only(Batch(b, bw))
                else:
                    for table, cols in rec.run(Batch(b, bw)).items():
                        if cols and table in writer.tables:
                            writer.append(table, cols, b)
                    prog.tokens, prog.last, prog.since_commit = prog.tokens + n, b, prog.since_commit + 1
                    if prog.since_commit >= opts.commit_every:
                        commit()
            if bar is not None:
                bar.update(n)
            # every R batches (a round), all ranks agree whether any of them was asked to stop
            if (b % R == R - 1 or b == plan.batches - 1) and world.any(stop.signal is not None):
                if writer is not None:
                    commit()
                return "interrupted", None
        if writer is not None:  # inside the try: a full disk here left the run "running" (a review)
            commit(final=True)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - a dead peer, out of memory, a bug, a
        # second Ctrl-C (StopOnSignal), a full disk: never commit half a batch; the caller marks the run interrupted
        if writer is not None:
            writer.abandon()
        return "interrupted", e
    return "complete", None
