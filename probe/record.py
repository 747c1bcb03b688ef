"""The record job: feed a corpus through the hooked model and write a run directory.

    python -m probe record                                     # bundled model + corpus -> runs/<name>
    python -m probe record --ckpt CKPT --corpus DIR --out runs/x --router-logits full --sample 0.1
    torchrun --nproc-per-node 2 -m probe record --ckpt CKPT --corpus DIR --out runs/x

Batches are numbered globally in corpus order; with R data-parallel replicas, replica r takes
batches r, r+R, r+2R, ... and writes its own part files, so the tables are identical (after sorting)
whatever the world size. See `probe/writer.py` for commits and resume, `probe/schema.py` for tables.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .corpus import CorpusError, CorpusStats, fingerprint, iter_documents, iter_windows
from .recorders import Batch, RecordConfig, Recorder
from .schema import TABLES
from .stats import KVAccumulator, summarise
from .writer import (PartWriter, RunError, load_progress, prune_uncommitted, read_run_json,
                     write_json_atomic)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = REPO / "data" / "model"
DEFAULT_CORPUS = REPO / "data" / "corpus" / "val.jsonl"
STREAM_TABLES = ["tokens", "routing", "expert_load", "mtp"]
FINAL_TABLES = ["kv_stats", "kv_spectrum"]


class RecordError(ValueError):
    """Bad options or inputs for a record job (one line, naming the culprit)."""


@dataclass
class RecordOptions:
    ckpt: str | None = None
    corpus: str | None = None
    out: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
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
    progress: bool = True


def default_seq_len(args) -> int:
    """512 tokens, or less when the model was trained on shorter windows (the YaRN original length or
    max_seq_len): routing beyond a model's training length is not the routing it learned."""
    return min(512, args.original_seq_len, args.max_seq_len)


def checkpoint_args(ckpt: Path):
    """The checkpoint's `model.ModelArgs`; a bad config.json is a one-line RecordError."""
    import model as model_pkg
    from model.args import ConfigError

    try:
        return model_pkg.ModelArgs.from_hf_config(ckpt)
    except ConfigError as e:
        raise RecordError(str(e)) from None


def window_length(seq_len: int | None, args, error: type[Exception] = RecordError) -> int:
    """--seq-len, or `default_seq_len` when unset; `error` when it exceeds the model's max_seq_len."""
    seq_len = default_seq_len(args) if seq_len is None else seq_len
    if seq_len > args.max_seq_len:
        raise error(f"--seq-len {seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
    return seq_len


# the options that must match to resume a run
RESUME_KEYS = ("seq_len", "batch_size", "router_logits", "sample", "kv_stats", "mtp", "max_tokens", "add_bos")


# ---------------------------------------------------------------------------- distributed
@dataclass
class World:
    rank: int = 0
    size: int = 1
    model_parallel: int = 1

    @property
    def replicas(self) -> int:
        return self.size // self.model_parallel

    @property
    def replica(self) -> int:
        return self.rank // self.model_parallel

    @property
    def writes(self) -> bool:  # one writer per replica
        return self.rank % self.model_parallel == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def init_world() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), model_parallel=1)


# --------------------------------------------------------------------------------- inputs
def checkpoint_fingerprint(ckpt: Path) -> str:
    """sha256 of config.json and every safetensors header (names, shapes, offsets): cheap, and it
    changes whenever the weights' layout does. Not a hash of the weights' bytes."""
    h = hashlib.sha256((ckpt / "config.json").read_bytes())
    for f in sorted(ckpt.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(f.name.encode() + fh.read(min(n, 100_000_000)))
        h.update(str(f.stat().st_size).encode())
    return h.hexdigest()


def _resolve(opts: RecordOptions) -> tuple[Path, Path, Path]:
    ckpt = Path(opts.ckpt) if opts.ckpt else DEFAULT_CKPT
    corpus = Path(opts.corpus) if opts.corpus else DEFAULT_CORPUS
    if opts.ckpt is None and not (ckpt / "config.json").exists():
        raise RecordError(f"the bundled checkpoint {ckpt} is not there yet: pass --ckpt DIR "
                          "(a Hugging Face DeepSeek-V3 checkpoint directory)")
    if opts.corpus is None and not corpus.exists():
        raise RecordError(f"the bundled corpus {corpus} is not there yet: pass --corpus PATH")
    if not ckpt.is_dir() or not (ckpt / "config.json").exists():
        raise RecordError(f"--ckpt {ckpt}: not a checkpoint directory (no config.json)")
    out = Path(opts.out) if opts.out else REPO / "runs" / f"{ckpt.name}-{corpus.stem}"
    return ckpt, corpus, out


def _tokenizer(opts: RecordOptions, ckpt: Path, vocab_size: int):
    from tokenizers import Tokenizer

    path = Path(opts.tokenizer) if opts.tokenizer else ckpt / "tokenizer.json"
    if not path.exists():
        raise RecordError(f"{path}: no tokenizer (put tokenizer.json in the checkpoint or pass --tokenizer)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
        raise RecordError(f"{path}: not a tokenizers JSON file ({e})") from None
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
        raise RecordError(f"{path} has {n} tokens but the checkpoint's vocab_size is {vocab_size}: "
                          "tokenizer and checkpoint do not belong together")
    return tok


def _check_out(out: Path, opts: RecordOptions) -> None:
    if out.exists() and not (opts.overwrite or opts.resume):
        raise RecordError(f"--out {out} exists: pass --overwrite to replace it or --resume to continue it")
    if opts.overwrite and opts.resume:
        raise RecordError("--overwrite and --resume exclude each other")
    if out.exists() and opts.overwrite:
        if any(out.iterdir()) and not (out / "run.json").exists():
            raise RecordError(f"--out {out} is not a run directory (no run.json): refusing to delete it")
    if opts.resume and not (out / "run.json").exists():
        raise RecordError(f"--resume: {out} is not a run directory (no run.json)")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RecordError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecordError(f"--out {out}: directory {parent} is not writable")


# ----------------------------------------------------------------------------- main loop
class _Stop:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _bound_heap() -> None:
    """NOTE: glibc raises its mmap threshold as large blocks are freed, after which the model's
    activations come from the heap; the small, longer-lived buffers of rows waiting to be written
    then pin that heap and resident memory grows with the run (measured: ~20 MB per batch on the
    hidden-512 benchmark). A fixed 1 MiB threshold keeps large blocks in mmap, so memory stays
    flat however many tokens are recorded. No-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def record(opts: RecordOptions) -> Path:
    """Run the job; returns the run directory. Raises RecordError / CorpusError on bad input."""
    import model as model_pkg

    _bound_heap()

    if opts.router_logits not in ("none", "topk", "full"):
        raise RecordError(f"--router-logits {opts.router_logits!r}: choose none, topk or full")
    if not 0 < opts.sample <= 1:
        raise RecordError(f"--sample {opts.sample}: must be in (0, 1]")
    if opts.batch_size < 1 or (opts.seq_len is not None and opts.seq_len < 2):
        raise RecordError("--batch-size must be >= 1 and --seq-len >= 2")
    ckpt, corpus, out = _resolve(opts)
    args = checkpoint_args(ckpt)
    opts.seq_len = window_length(opts.seq_len, args)
    tok = _tokenizer(opts, ckpt, args.vocab_size)
    _check_out(out, opts)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    world = init_world()

    bos = args.bos_token_id if opts.add_bos else None

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def windows():
        return iter_windows(iter_documents(corpus, CorpusStats()), encode, opts.seq_len, bos, opts.max_tokens)

    # counting pass: exact totals for the progress bar and run.json (tokenising is cheap next to the model)
    stats = CorpusStats()
    n_windows, n_tokens, per_domain = 0, 0, {}
    for w in iter_windows(iter_documents(corpus, stats), encode, opts.seq_len, bos, opts.max_tokens):
        n_windows += 1
        n_tokens += len(w.ids)
        per_domain[w.domain] = per_domain.get(w.domain, 0) + len(w.ids)
    if n_tokens == 0:
        raise CorpusError(f"{corpus}: corpus has no text")
    n_batches = -(-n_windows // opts.batch_size)
    corpus_fp = fingerprint(corpus)
    ckpt_fp = checkpoint_fingerprint(ckpt)

    # data-parallel replicas: every process holds the whole model and reads its own batches
    m = model_pkg.load(ckpt, dtype=getattr(torch, opts.dtype) if opts.dtype else torch.float32, parallel=False)
    if opts.mtp and not len(m.mtp):
        print("note: the checkpoint has no MTP weights; the mtp table is skipped", file=sys.stderr)
    tables = [t for t in STREAM_TABLES if not (t == "routing" and opts.router_logits == "none")
              and not (t == "mtp" and not (opts.mtp and len(m.mtp)))]

    info = {
        "status": "running", "format": 1,
        "checkpoint": {"path": str(ckpt.resolve()), "fingerprint": ckpt_fp},
        "corpus": {"path": str(corpus.resolve()), "fingerprint": corpus_fp, "documents": stats.documents,
                   "replaced_bytes": stats.replaced_bytes,
                   "files_with_replacements": stats.files_with_replacements[:100]},
        "model_args": args.to_dict(), "mtp_module": bool(len(m.mtp)),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("overwrite", "resume", "progress")},
        "world": {"size": world.size, "model_parallel": world.model_parallel, "replicas": world.replicas},
        "tables": tables + (FINAL_TABLES if opts.kv_stats else []),
        "planned": {"windows": n_windows, "tokens": n_tokens, "batches": n_batches, "tokens_per_domain": per_domain},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "pyarrow": pa.__version__,
                     "dsv3_probe": _version()},
        "started": time.time(),
    }
    if world.rank == 0:
        if opts.resume:
            old = read_run_json(out)
            _check_resumable(old, info, out)
            info["started"] = old.get("started", info["started"])
            info["resumed"] = old.get("resumed", 0) + 1
        elif out.exists() and opts.overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", info)
    world.barrier()

    cfg = RecordConfig(router_logits=opts.router_logits, sample=opts.sample, kv_stats=opts.kv_stats, mtp=opts.mtp)
    rec = Recorder(m, cfg, domains=sorted(per_domain))
    writer = PartWriter(out, world.rank, tables) if world.writes else None
    progress, state = load_progress(out, world.rank) if opts.resume else ({}, {})
    done = progress.get("done", -1)
    if opts.resume:
        prune_uncommitted(out, world.rank, done if progress else None, tables)
        if state:
            rec.kv.load_state(state)
    else:
        prune_uncommitted(out, world.rank, None, tables)
    tokens_done = progress.get("tokens", 0)
    commits = progress.get("commits", 0)
    t_start = time.time()
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="record", dynamic_ncols=True)
    status, last, since_commit = "complete", done, 0

    def commit(final: bool = False) -> None:
        nonlocal since_commit, commits
        if writer is not None:
            writer.commit(last, {"tokens": tokens_done, "commits": commits, "finished": final}, rec.kv.state())
            commits += 1
        since_commit = 0

    def batches():
        buf = []
        for w in windows():
            buf.append(w)
            if len(buf) == opts.batch_size:
                yield buf
                buf = []
        if buf:
            yield buf

    with _Stop() as stop:
        for b, bw in enumerate(batches()):
            n = sum(len(x.ids) for x in bw)
            if b % world.replicas == world.replica and b > done:
                rows = rec.run(Batch(b, bw))
                if writer is not None:
                    for table, cols in rows.items():
                        if cols and table in writer.tables:
                            writer.append(table, cols, b)
                tokens_done += n
                last, since_commit = b, since_commit + 1
                if since_commit >= opts.commit_every:
                    commit()
            if bar is not None:
                bar.update(n)
            if stop.signal is not None:
                status = "interrupted"
                break
        commit(final=status == "complete")
        if bar is not None:
            bar.close()

    elapsed = time.time() - t_start
    world.barrier()
    if world.rank == 0:
        _finish(out, info, status, opts, args, world, elapsed)
    world.barrier()
    if status == "interrupted":
        raise KeyboardInterrupt(f"interrupted by signal {stop.signal}; {out} is marked interrupted "
                                "(continue with --resume)")
    return out


def _check_resumable(old: dict, new: dict, out: Path) -> None:
    for key in ("checkpoint", "corpus"):
        if old[key]["fingerprint"] != new[key]["fingerprint"]:
            raise RecordError(f"--resume: the {key} differs from the one {out} was recorded with")
    for k in RESUME_KEYS:
        if old["options"].get(k) != new["options"].get(k):
            raise RecordError(f"--resume: option {k} was {old['options'].get(k)!r}, now {new['options'].get(k)!r}")
    if old["world"] != new["world"]:
        raise RecordError(f"--resume: world layout was {old['world']}, now {new['world']}")


def _finish(out: Path, info: dict, status: str, opts, args, world: World, elapsed: float) -> None:
    """Rank 0: merge the replicas' accumulators, write the final tables, update run.json."""
    import json

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
    info = json.loads((out / "run.json").read_text())
    info["status"] = "complete" if (status == "complete" and finished) else "interrupted"
    info["recorded"] = {"tokens": tokens}
    info["timings"] = {"last_session_s": round(elapsed, 3), "finished": time.time()}
    write_json_atomic(out / "run.json", info)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("dsv3-probe")
    except Exception:  # noqa: BLE001
        return "unknown"

