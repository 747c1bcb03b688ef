"""The record job: feed a corpus through the hooked model and write a run directory.

    python -m probe record                                     # bundled model + corpus -> runs/<name>
    python -m probe record --ckpt CKPT --corpus DIR --out runs/x --router-logits full --sample 0.1
    python -m probe record --ckpt CKPT --dry-run --world-size 8 --model-parallel auto --gemm fp8
    torchrun --nproc-per-node 2 -m probe record --ckpt CKPT --out runs/x                  # 2 replicas
    torchrun --nproc-per-node 8 -m probe record --ckpt CKPT --out runs/x --model-parallel auto --gemm fp8

Batches are numbered globally in corpus order. Under torchrun the W ranks form W/M replicas of
M = --model-parallel consecutive ranks (`model.parallel.World`); each replica holds one model
(sharded over its ranks when M > 1), replica r takes batches r, r+R, r+2R, ..., and the replica's
first rank alone captures and writes its part files, so the tables are the same (after sorting)
whatever the layout. All ranks agree after every round of R batches whether to stop (a signal on
any rank stops them all at the same batch); a rank that dies makes the others mark the run
`interrupted`. See `probe/writer.py` for commits and resume, `probe/schema.py` for tables,
`probe/plan.py` for --dry-run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model.memory import process_memory

from .corpus import ORDERS, CorpusError, CorpusStats, corpus_windows, fingerprint
from .job import (DEFAULT_CKPT, DEFAULT_CORPUS, RecordError, agree, bound_heap, check_out_parent, check_replaceable,
                  checkpoint_args, checkpoint_identity, default_seq_len, load_model, load_tokenizer, os_refusal,
                  first_line, job_options, package_version, resolve_paths, same_checkpoint, signals_held, start_world,
                  window_length)
from .recorders import Batch, RecordConfig, Recorder
from .schema import TABLES
from .stats import KVAccumulator, summarise
from .writer import (PartWriter, clear_run, load_progress, prune_uncommitted, updating_run_json, write_json_atomic,
                     writer_lock)

__all__ = ["RecordOptions", "RecordError", "record", "default_seq_len", "DEFAULT_CKPT", "DEFAULT_CORPUS"]
STREAM_TABLES = ["tokens", "routing", "expert_load", "mtp"]
BYTES_PER_TOKEN = 4
STOP_GRACE = float(os.environ.get("DSV3_STOP_GRACE", "20"))  # seconds a rank may take to stop after a signal
FINAL_TABLES = ["kv_stats", "kv_spectrum"]


@dataclass
class RecordOptions:
    ckpt: str | None = None
    corpus: str | None = None
    out: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    order: str = "domains"  # domains: interleaved so a --max-tokens cap covers each; corpus: corpus order
    seq_len: int | None = None  # None: default_seq_len(args)
    batch_size: int = 8
    router_logits: str = "topk"
    sample: float = 1.0
    kv_stats: bool = True
    mtp: bool = True
    overwrite: bool = False
    resume: bool = False
    commit_every: int = 32
    add_bos: bool = True
    dtype: str | None = None
    gemm: str = "bf16"
    device: str | None = None
    model_parallel: str | int = 1
    progress: bool = True
    dry_run: bool = False  # plan only (probe/plan.py): read headers and the corpus, load no weights
    world_size: int | None = None  # --dry-run: plan for this many ranks (default: torchrun's WORLD_SIZE)
    device_memory: float | None = None  # --dry-run: GB per rank to check the plan against


# the options that must match to resume a run (with their value in runs recorded before they existed)
RESUME_KEYS = {"seq_len": None, "batch_size": None, "router_logits": None, "sample": None, "kv_stats": None,
               "mtp": None, "max_tokens": None, "add_bos": None, "dtype": None, "gemm": "bf16", "order": "corpus"}
NOT_RECORDED = ("overwrite", "resume", "progress", "dry_run", "world_size", "device_memory")


@dataclass
class Job:
    """The resolved inputs of a record job."""
    ckpt: Path
    corpus: Path
    out: Path
    args: object  # model.ModelArgs
    tok: object  # tokenizers.Tokenizer (None: --dry-run without one, token counts estimated)
    bos: int | None

    def encode(self, text: str) -> list[int]:
        if self.tok is None:  # NOTE: an estimate for planning only: ~4 UTF-8 bytes per BPE token
            return [0] * -(-len(text.encode()) // BYTES_PER_TOKEN)
        return self.tok.encode(text, add_special_tokens=False).ids

    def windows(self, seq_len: int, max_tokens: int | None, order: str = "domains", stats: CorpusStats | None = None):
        return corpus_windows(self.corpus, self.encode, seq_len, self.bos, max_tokens, order, stats)


@dataclass
class CorpusPlan:
    """The counting pass: exact totals for the progress bar, run.json and --dry-run."""
    windows: int = 0
    tokens: int = 0
    per_domain: dict = field(default_factory=dict)
    stats: CorpusStats = field(default_factory=CorpusStats)
    batches: int = 0


# --------------------------------------------------------------------------------- inputs
def check_options(opts: RecordOptions) -> None:
    if opts.router_logits not in ("none", "topk", "full"):
        raise RecordError(f"--router-logits {opts.router_logits!r}: choose none, topk or full")
    if not 0 < opts.sample <= 1:
        raise RecordError(f"--sample {opts.sample}: must be in (0, 1]")
    if opts.sample != 1 and opts.router_logits != "full":
        raise RecordError(f"--sample {opts.sample} thins the full router scores: it needs --router-logits full "
                          f"(this command gives {opts.router_logits}, which keeps every token's top-k)")
    if opts.batch_size < 1 or (opts.seq_len is not None and opts.seq_len < 2):
        raise RecordError("--batch-size must be >= 1 and --seq-len >= 2")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise RecordError(f"--max-tokens {opts.max_tokens}: must be >= 1")
    if opts.commit_every < 1:  # 0 and -3 committed every batch, silently (a review)
        raise RecordError(f"--commit-every {opts.commit_every}: must be >= 1 (batches between commits)")
    if opts.order not in ORDERS:
        raise RecordError(f"--order {opts.order!r}: choose {' or '.join(ORDERS)}")
    if not opts.dry_run and (opts.world_size is not None or opts.device_memory is not None):
        raise RecordError("--world-size and --device-memory plan a run: use them with --dry-run")
    if opts.overwrite and opts.resume:
        raise RecordError("--overwrite and --resume exclude each other")


def prepare(opts: RecordOptions) -> Job:
    """Check the options and resolve checkpoint, config, window length, tokenizer and corpus."""
    check_options(opts)
    ckpt, corpus, out = resolve_paths(opts.ckpt, opts.corpus, opts.out)
    args = checkpoint_args(ckpt)
    opts.seq_len = window_length(opts.seq_len, args)
    if opts.dry_run and not opts.tokenizer and not (ckpt / "tokenizer.json").exists():
        tok = None  # plan from config.json + index alone; counts are estimated (format_dry_run says so)
    else:
        tok = load_tokenizer(opts.tokenizer, ckpt, args.vocab_size)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    return Job(ckpt, corpus, out, args, tok, args.bos_token_id if opts.add_bos else None)


def check_out(out: Path, opts: RecordOptions, corpus: Path | None = None, ckpt: Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise RecordError(f"--out {out}: a file, not a run directory")
    if corpus is not None and corpus.is_dir() and out.resolve().is_relative_to(corpus.resolve()):
        # the run's own Parquet files were then read as corpus documents, after the run was made (a review)
        raise RecordError(f"--out {out}: lies inside --corpus {corpus}, whose every file is read as a document; "
                          "write the run elsewhere")
    if opts.overwrite and out.is_symlink():  # found only when deleting it, after the model had loaded (a review)
        raise RecordError(f"--out {out}: a symbolic link (to {os.readlink(out)}); --overwrite replaces a run "
                          "directory: pass the directory itself")
    if out.exists() and not (opts.overwrite or opts.resume):
        raise RecordError(f"--out {out} exists: pass --overwrite to replace it or --resume to continue it")
    if opts.overwrite:
        check_replaceable(out, "run.json", "a run directory")
        _inputs_outside(out, {"--ckpt": ckpt, "--corpus": corpus, "--tokenizer": opts.tokenizer})
    if opts.resume and not (out / "run.json").exists():
        raise RecordError(f"--resume: {out} is not a run directory (no run.json)")
    check_out_parent(out)


def _inputs_outside(out: Path, inputs: dict) -> None:
    """--overwrite deletes `out`: none of the job's inputs may lie inside it (recording into a training
    run, whose model is runs/NAME/model, deleted the model it read; a review)."""
    if not out.is_dir():
        return
    for flag, path in inputs.items():
        if path is not None and Path(path).resolve().is_relative_to(out.resolve()):
            raise RecordError(f"--out {out}: --overwrite would delete it, and {flag} {path} lies inside it; "
                              "write the run elsewhere")


def count_corpus(job: Job, opts: RecordOptions) -> CorpusPlan:
    """Tokenise the corpus once to count windows and tokens (cheap next to the model)."""
    plan = CorpusPlan()
    for w in job.windows(opts.seq_len, opts.max_tokens, opts.order, plan.stats):
        plan.windows += 1
        plan.tokens += len(w.ids)
        plan.per_domain[w.domain] = plan.per_domain.get(w.domain, 0) + len(w.ids)
    if plan.tokens == 0:
        raise CorpusError(f"{job.corpus}: corpus has no text")
    plan.batches = -(-plan.windows // opts.batch_size)
    return plan


# ----------------------------------------------------------------------------- the job
def record(opts: RecordOptions) -> Path:
    """Run the job; returns the run directory. Raises RecordError / CorpusError on bad input
    (the same error on every rank under torchrun)."""
    bound_heap()
    job = prepare(opts)
    if opts.dry_run:
        from .plan import dry_run

        dry_run(job, opts)
        return job.out
    world = start_world(opts.model_parallel, opts.device, job.args, job_options(opts))
    agree(world, lambda: check_out(job.out, opts, job.corpus, job.ckpt))
    plan = count_corpus(job, opts)
    mem = {"before_load": process_memory()["rss"]}
    t_load = time.time()
    m = load_model(job.ckpt, world, dtype=opts.dtype, gemm=opts.gemm)
    mem |= {"load_s": round(time.time() - t_load, 3), "after_load": process_memory()["rss"]}
    if opts.mtp and not len(m.mtp) and world.rank == 0:
        print("note: the checkpoint has no MTP weights; the mtp table is skipped", file=sys.stderr)
    for note in plan.stats.notes() if world.rank == 0 else ():
        print(note, file=sys.stderr)
    tables = [t for t in STREAM_TABLES if not (t == "routing" and opts.router_logits == "none")
              and not (t == "mtp" and not (opts.mtp and len(m.mtp)))]
    bias_layers, biases = router_biases(m)  # once: the table, and run.json's list of tables
    info = run_info(job, plan, opts, world, m, tables, has_router_bias=bool(bias_layers))

    with contextlib.ExitStack() as held:  # rank 0's writer lock on the run, for the whole job
        def create() -> None:  # rank 0
            with os_refusal(f"--out {job.out}: cannot create the run there"):
                held.enter_context(writer_lock(job.out))
                open_run(job.out, info, opts)
            write_router_bias(job.out, bias_layers, biases)

        unseen = _create(job, world, create)
        if unseen:
            raise RecordError(f"--out {job.out}: a writing rank does not see run.json there: under several "
                              "nodes the run directory must be on a filesystem every node shares")
        return _record_loop(job, opts, world, m, plan, info, tables, mem)


def _create(job: Job, world, create) -> bool:
    """Rank 0 creates the run (`create`), every rank agreeing; returns whether a writing rank cannot
    see it. A peer lost here, after rank 0 created the run and before the batches' own handling,
    left it "running" for good, and torchrun's SIGTERM could end a rank before it said why (a review)."""
    with signals_held(signal.SIGINT, signal.SIGTERM) if world.size > 1 else contextlib.nullcontext():
        try:
            agree(world, create)
            return world.any(world.writes and not (job.out / "run.json").exists())
        except RuntimeError as e:
            if world.size == 1:
                raise
            if (job.out / "run.json").exists():
                with updating_run_json(job.out) as i:
                    i["status"] = "interrupted"
            for s in (signal.SIGINT, signal.SIGTERM):  # leaving: a held signal must not cut the message
                signal.signal(s, signal.SIG_IGN)
            raise RecordError(f"rank {world.rank} of {world.size} stopped before recording: {first_line(e)}; "
                              f"{job.out} is marked interrupted (continue with --resume)") from None


def tokenizer_info(path: str | None, ckpt: Path) -> dict:
    """The tokenizer file a run encodes its corpus with (--tokenizer, else the checkpoint's) and its
    sha256 (None where there is none: a --dry-run estimate); --resume refuses another."""
    p = Path(path) if path else ckpt / "tokenizer.json"
    return {"path": str(p.resolve()), "fingerprint": fingerprint(p) if p.is_file() else None}


SESSION_KEYS = ("status", "recorded", "cpu_gemm", "timings", "memory")  # run.json keys `finish` writes


def run_info(job: Job, plan: CorpusPlan, opts: RecordOptions, world, m, tables: list[str],
             has_router_bias: bool = True) -> dict:
    return {
        "status": "running", "format": 1,
        "checkpoint": checkpoint_identity(job.ckpt),
        "corpus": {"path": str(job.corpus.resolve()), "fingerprint": fingerprint(job.corpus),
                   "documents": plan.stats.documents, "replaced_bytes": plan.stats.replaced_bytes,
                   "files_with_replacements": plan.stats.files_with_replacements[:100],
                   "skipped_binary_files": plan.stats.skipped_binary[:100]},
        "tokenizer": tokenizer_info(opts.tokenizer, job.ckpt),
        "model_args": job.args.to_dict(), "mtp_module": bool(len(m.mtp)),
        "options": {k: v for k, v in asdict(opts).items() if k not in NOT_RECORDED},
        "world": world.describe(),
        "tables": tables + (FINAL_TABLES if opts.kv_stats else []) + (["router_bias"] if has_router_bias else []),
        "domains": sorted(plan.per_domain),
        "planned": {"windows": plan.windows, "tokens": plan.tokens, "batches": plan.batches,
                    "tokens_per_domain": plan.per_domain},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "pyarrow": pa.__version__,
                     "arrow_allocator": pa.default_memory_pool().backend_name,  # probe/allocator.py
                     "dsv3_probe": package_version()},
        "started": time.time(),
    }


def open_run(out: Path, info: dict, opts: RecordOptions) -> None:
    """Rank 0: create (or check, to resume) the run directory and write run.json."""
    if opts.resume:
        with updating_run_json(out) as old:  # under the lock, as other jobs note their parts
            check_resumable(old, info, out)
            info["started"] = old.get("started", info["started"])
            info["resumed"] = old.get("resumed", 0) + 1
            # what other commands noted while the run waited (spec's summary, ablate's, importance's
            # and steer's parts) stays; what this session rewrites at its end does not
            for key, value in old.items():
                if key not in info and key not in SESSION_KEYS:
                    info[key] = value
            # and their tables (ablations, spec_*...): this session's list replaced theirs (a review)
            info["tables"] += [t for t in old.get("tables") or [] if t not in info["tables"]]
            old.clear()
            old.update(info)
        return
    if out.exists() and opts.overwrite:
        clear_run(out)  # its writer lock stays: this job holds it
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", info)


def check_resumable(old: dict, new: dict, out: Path) -> None:
    made_by = {"import": "`dsv3-probe import`", "spec": "`dsv3-probe spec`"}.get(old.get("kind"), "another command")
    for need in ("checkpoint", "corpus", "options"):
        if not (isinstance(old.get(need), dict) and (need == "options" or old[need].get("fingerprint"))):
            what = "record options" if need == "options" else f"{need} fingerprint"
            raise RecordError(f"--resume: {out} is not a record run (made by {made_by}: its run.json has no "
                              f"{what} to resume against); pick another --out")
    keys = RESUME_KEYS
    if isinstance(old.get("tokenizer"), dict):
        fingerprinted = (("checkpoint", "--ckpt"), ("corpus", "--corpus"), ("tokenizer", "--tokenizer"))
    else:  # a run recorded before run.json named its tokenizer: the option at least must match
        fingerprinted, keys = (("checkpoint", "--ckpt"), ("corpus", "--corpus")), RESUME_KEYS | {"tokenizer": None}
    for key, flag in fingerprinted:
        same = (same_checkpoint(old[key], new[key]) if key == "checkpoint" else
                old[key]["fingerprint"] == new[key]["fingerprint"])
        if not same:
            raise RecordError(f"--resume: the {key} differs from the one {out} was recorded with "
                              f"({old[key].get('path')}): rerun the run's own command with --resume added "
                              f"({flag} {old[key].get('path')})")
    for k, before in keys.items():
        was, now = old["options"].get(k, before), new["options"].get(k)
        if k == "dtype":  # unset is float32 (probe.job.compute_dtype): `--dtype float32` resumes a default run
            was, now = was or "float32", now or "float32"
        if was != now:
            flag = "--" + k.replace("_", "-")
            raise RecordError(f"--resume: {out} was recorded with {flag} {was}, this command gives {now}: rerun the "
                              f"run's own command with --resume added")
    was = old.get("world") or {}
    if (was.get("size"), was.get("model_parallel")) != (new["world"]["size"], new["world"]["model_parallel"]):
        raise RecordError(f"--resume: the run was recorded with {was.get('size')} ranks in replicas of "
                          f"{was.get('model_parallel')}, now {new['world']['size']} ranks in replicas of "
                          f"{new['world']['model_parallel']}: resume with the same torchrun and --model-parallel")


# ----------------------------------------------------------------------------- main loop
class _Stop:
    """SIGINT / SIGTERM set a flag that the loop reads between batches; a second signal stops now.

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
        """This rank is leaving (a peer is gone): from the end of the block on, SIGINT and SIGTERM are
        ignored instead of restored, so that torchrun's SIGTERM, which follows a peer's death at a
        moment of its own, cannot kill the rank between marking the run and saying so."""
        self.leaving = True

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
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


def _restore(out: Path, world, rec: Recorder, tables: list[str], resume: bool) -> _Progress:
    """This replica's progress (its writer's, which every rank of the replica reads, so that they
    all skip the same batches); the writer also drops part files past its last commit."""
    progress, state = load_progress(out, world.leader) if resume else ({}, {})
    if world.writes:
        prune_uncommitted(out, world.rank, progress.get("done") if progress else None, tables)
        if state:
            rec.kv.load_state(state)
    done = progress.get("done", -1)
    return _Progress(done=done, tokens=progress.get("tokens", 0), commits=progress.get("commits", 0), last=done)


def _record_loop(job: Job, opts: RecordOptions, world, m, plan: CorpusPlan, info: dict, tables, mem: dict) -> Path:
    out = job.out
    cfg = RecordConfig(router_logits=opts.router_logits, sample=opts.sample, kv_stats=opts.kv_stats, mtp=opts.mtp)
    rec = Recorder(m, cfg, domains=sorted(plan.per_domain))
    writer = PartWriter(out, world.rank, tables) if world.writes else None
    prog = _restore(out, world, rec, tables, opts.resume)
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=plan.tokens, unit="tok", unit_scale=True, desc="record", dynamic_ncols=True)
    t_start = time.time()

    def stuck(signum: int) -> None:  # the watchdog thread: mark the run and leave (see _Stop)
        finish(out, info, "interrupted", opts, job.args, world, time.time() - t_start)
        print(f"error: rank {world.rank} of {world.size} stopped: no progress {STOP_GRACE:g} s after signal {signum} "
              f"(a peer rank is gone?); {out} is marked interrupted (continue with --resume)", file=sys.stderr, flush=True)
        os._exit(1)

    # the signal handlers (and the watchdog) stay in place through the closing collectives too: a
    # peer may die, and torchrun then send SIGTERM, while this rank waits in the final gather
    with _Stop(stuck if world.size > 1 else None, STOP_GRACE) as stop:
        status, failure = _run_batches(job, opts, world, rec, writer, prog, plan, stop, bar)
        if bar is not None:
            bar.close()
        elapsed = time.time() - t_start
        if failure is None:
            failure = _close(out, info, status, opts, job, world, elapsed, mem)
        if failure is not None and world.size > 1:
            stop.ignore_from_now()
    if failure is not None:
        # NOTE: no collective from here on: a peer may be gone. Any surviving rank marks the run.
        finish(out, info, "interrupted", opts, job.args, world, elapsed)
        if isinstance(failure, KeyboardInterrupt):  # a second signal: what was committed stays
            raise KeyboardInterrupt(f"interrupted by a second signal; {out} is marked interrupted, its committed "
                                    "batches kept (continue with --resume)") from None
        if world.size == 1:
            raise failure
        raise RecordError(f"rank {world.rank} of {world.size} stopped: {first_line(failure)}; {out} is marked "
                          "interrupted (continue with --resume)") from None
    if status == "interrupted":
        raise KeyboardInterrupt(f"interrupted by signal {stop.signal or 'on another rank'}; {out} is marked "
                                "interrupted (continue with --resume)")
    return out


def _close(out: Path, info: dict, status: str, opts, job: Job, world, elapsed: float, mem: dict):
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
        finish(out, info, status, opts, job.args, world, elapsed, ranks)
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
        # second Ctrl-C (_Stop), a full disk: never commit half a batch; the caller marks the run interrupted
        if writer is not None:
            writer.abandon()
        return "interrupted", e
    return "complete", None


def finish(out: Path, info: dict, status: str, opts, args, world, elapsed: float, ranks: list | None = None) -> None:
    """Merge the replicas' committed progress and accumulators, write the final tables when the
    run is complete, and update run.json (rank 0; on a failure, any surviving rank). `ranks`: each
    rank's load time and resident memory (bytes: before and after the load, peak), when gathered."""
    finished = True
    tokens = 0
    acc = KVAccumulator(list(range(args.n_layers)), args.kv_lora_rank)
    for r in range(0, world.size, world.model_parallel):
        prog, state = load_progress(out, r)
        finished &= bool(prog.get("finished"))
        tokens += prog.get("tokens", 0)
        if state and opts.kv_stats:
            other = KVAccumulator(acc.layers, args.kv_lora_rank)
            other.load_state(state)
            acc.merge(other)
    if status == "complete" and finished and opts.kv_stats:
        _write_kv_tables(out, acc, args)
    from model import frozen, gemm

    made = gemm.current()  # this rank's float32 CPU GEMM path (model/gemm.py), when it ran any
    with updating_run_json(out) as info:  # under the lock: a part another job noted meanwhile stays (a review)
        info["status"] = "complete" if (status == "complete" and finished) else "interrupted"
        info["recorded"] = {"tokens": tokens}
        info["cpu_gemm"] = (made.to_dict() | {"experts": gemm.experts_made(),
                                              "packed_weight_bytes": frozen.packed_bytes()}
                            if made is not None else None)
        info["timings"] = {"last_session_s": round(elapsed, 3), "finished": time.time()}
        if ranks:
            info["timings"]["load_s"] = max(r["load_s"] for r in ranks)
            info["memory"] = {"per_rank": ranks}


def router_biases(m) -> tuple[list[int], list[np.ndarray]]:
    """(layer, bias) of every router with a balancing bias (none: a softmax router, DeepSeek-V2)."""
    layers, biases = [], []
    for i, block in enumerate(list(m.layers) + [mtp.block for mtp in m.mtp]):
        gate = getattr(block.ffn, "gate", None)
        if gate is not None and gate.bias is not None:
            layers.append(i)
            biases.append(gate.bias.detach().float().cpu().numpy())
    return layers, biases


def write_router_bias(out: Path, layers: list[int], biases: list[np.ndarray]) -> None:
    """The checkpoint's balancing bias of every router (`router_biases`: main MoE layers, then MTP
    blocks at layer n_layers + k) as the `router_bias` table, step 0: what a training run logs over
    its steps."""
    if not layers:
        return
    E = len(biases[0])
    cols = {"step": np.zeros(len(layers) * E, np.int64), "layer": np.repeat(np.array(layers, np.int16), E),
            "expert": np.tile(np.arange(E, dtype=np.int32), len(layers)), "bias": np.concatenate(biases)}
    d = out / "router_bias"
    d.mkdir(exist_ok=True)
    tmp = d / "part-0.parquet.tmp"
    pq.write_table(pa.Table.from_pydict(cols, schema=TABLES["router_bias"]), tmp, compression="zstd")
    os.replace(tmp, d / "part-0.parquet")


def _write_kv_tables(out: Path, acc: KVAccumulator, args) -> None:
    elem = torch.finfo(getattr(torch, args.dtype)).bits // 8
    per = {"bytes_absorb": (args.kv_lora_rank + args.qk_rope_head_dim) * elem,
           "bytes_naive": args.n_heads * (args.qk_head_dim + args.v_head_dim) * elem,
           "bytes_mha": 2 * args.dim * elem}
    stats, spec = summarise(acc, per)
    for name, cols in (("kv_stats", stats), ("kv_spectrum", spec)):
        d = out / name
        d.mkdir(exist_ok=True)
        tmp = d / "part-0.parquet.tmp"
        pq.write_table(pa.Table.from_pydict(cols, schema=TABLES[name]), tmp, compression="zstd")
        os.replace(tmp, d / "part-0.parquet")
