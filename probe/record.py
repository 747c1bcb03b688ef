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
`interrupted`. The batch loop is `probe/record_loop.py`; the tables written whole, and run.json's
closing update, are `probe/record_tables.py`. See `probe/writer.py` for commits and resume,
`probe/schema.py` for tables, `probe/plan.py` for --dry-run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from model.memory import process_memory

from .ckpt_identity import checkpoint_identity, same_checkpoint
from .corpus import ORDERS, CorpusError, CorpusStats, corpus_windows, fingerprint
from .job import (DEFAULT_CKPT, DEFAULT_CORPUS, RecordError, agree, bound_heap,
                  check_inputs_outside, check_out_parent, check_outside_corpus, check_replaceable, check_run_place,
                  checkpoint_args, checkpoint_input, default_seq_len, first_line, job_options, load_model,
                  load_tokenizer, os_refusal, package_version, refuse_a_symlinked_out, refuse_a_training_run,
                  resolve_paths, same_inputs, signals_held, start_world, stop_signals, window_length)
from .overwrite import clear_run, never_made, say_kept
from .run import MADE_BY
from .tokenizer_identity import holds_recorded_tokenizer
from .record_loop import record_batches
from .record_tables import FINAL_TABLES, SESSION_KEYS, router_biases, write_router_bias
from .writer import (RunError, check_committed, replace_keeping_others, updating_run_json,
                     write_json_atomic, writer_lock)

__all__ = ["RecordOptions", "RecordError", "record", "default_seq_len", "DEFAULT_CKPT", "DEFAULT_CORPUS"]
STREAM_TABLES = ["tokens", "routing", "expert_load", "mtp"]
BYTES_PER_TOKEN = 4


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
    if opts.batch_size < 1:  # each flag named with its value (it said "--batch-size must be >= 1 and --seq-len >= 2")
        raise RecordError(f"--batch-size {opts.batch_size}: must be >= 1 (windows per forward pass)")
    if opts.seq_len is not None and opts.seq_len < 2:
        raise RecordError(f"--seq-len {opts.seq_len}: must be >= 2 (tokens per window)")
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
        raise CorpusError(f"--corpus {corpus}: corpus not found")
    return Job(ckpt, corpus, out, args, tok, args.bos_token_id if opts.add_bos else None)


def check_out(out: Path, opts: RecordOptions, corpus: Path | None = None, ckpt: Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise RecordError(f"--out {out}: a file, not a run directory")
    check_outside_corpus(out, corpus, "the run")  # its own Parquet files were read as documents (a review)
    check_run_place(out)
    if opts.overwrite:
        refuse_a_symlinked_out(out)
    unmade = out.is_dir() and never_made(out)  # a record stopped before it wrote run.json: a new run goes there
    if out.exists() and not unmade and not (opts.overwrite or opts.resume):
        raise RecordError(f"--out {out} exists: pass --overwrite to replace it or --resume to continue it")
    if opts.overwrite:
        if not unmade:
            check_replaceable(out, "run.json", "a run directory")
        refuse_a_training_run(out)
        check_inputs_outside(out, {"--ckpt": ckpt, "--corpus": corpus, "--tokenizer": opts.tokenizer})
    if opts.resume and unmade:
        raise RecordError(f"--resume: {out} holds no run.json: its record stopped before it created the run, so "
                          "nothing was recorded; run the command without --resume")
    if opts.resume and not (out / "run.json").exists():
        raise RecordError(f"--resume: {out} is not a run directory (no run.json)")
    check_out_parent(out)


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
    tokenizer = Path(opts.tokenizer) if opts.tokenizer else job.ckpt / "tokenizer.json"
    # the tokenizer's bytes under one name on every node: its file name gives no token id, and a node's copy
    # named otherwise was refused as another tokenizer (a review); a single-file corpus's name is its documents' ids
    same_inputs(world, {"--ckpt": checkpoint_input(job.ckpt),
                        "--corpus": (job.corpus, "holds other text (its files' sha256 differs)",
                                     lambda: fingerprint(job.corpus)),
                        "--tokenizer": (tokenizer, "is another tokenizer (its sha256 differs)",
                                        lambda: fingerprint(tokenizer, name="tokenizer.json"),
                                        *([] if opts.tokenizer else ["the checkpoint's tokenizer"]))})
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

        def begin() -> None:  # run by the batch loop under its signal handlers (see record_batches)
            created, unseen = _create(job, world, create)
            if unseen:
                if world.rank == 0:  # it said "running" for good, no job holding it
                    with updating_run_json(job.out) as i:
                        i["status"] = "interrupted"
                raise RecordError(not_seen(created, unseen))

        return record_batches(job, opts, world, m, plan, tables, mem, begin)


def _create(job: Job, world, create) -> tuple[str, list]:
    """Rank 0 creates the run (`create`), every rank agreeing; returns, on every rank, its --out as
    rank 0 gave it and the writing ranks that cannot see it there ([(rank, its --out)]: the paths may
    differ from node to node). A peer lost here, after rank 0 created the run and before the batches'
    own handling, left it "running" for good, and torchrun's SIGTERM could end a rank before it said
    why (a review)."""
    with signals_held(*stop_signals()) if world.size > 1 else contextlib.nullcontext():
        try:
            agree(world, create)
            seen = world.everyone((world.writes and not (job.out / "run.json").exists(), str(job.out)))
            return seen[0][1], [(rank, out) for rank, (unseen, out) in enumerate(seen) if unseen]
        except RuntimeError as e:
            if world.size == 1:
                raise
            if (job.out / "run.json").exists():
                with updating_run_json(job.out) as i:
                    i["status"] = "interrupted"
            for s in stop_signals():  # leaving: a held signal must not cut the message
                signal.signal(s, signal.SIG_IGN)
            raise RecordError(f"rank {world.rank} of {world.size} stopped before recording: {first_line(e)}; "
                              f"{job.out} is marked interrupted (continue with --resume)") from None


def not_seen(created: str, unseen: list) -> str:
    """The refusal of writing ranks (`unseen`: [(rank, its --out)]) that do not see the run rank 0
    created in `created`: the line named rank 0's --out alone, not which rank looked where."""
    who = [f"{rank} (--out {out})" for rank, out in unseen]
    who = f"rank {who[0]} does" if len(who) == 1 else f"ranks {', '.join(who[:-1])} and {who[-1]} do"
    return (f"--out {created}: rank 0 created the run there, but writing {who} not see its run.json: under "
            "several nodes the run directory must be on a filesystem every node shares (the run is marked "
            "interrupted: continue it with --resume once every node sees it)")


def tokenizer_info(path: str | None, ckpt: Path) -> dict:
    """The tokenizer file a run encodes its corpus with (--tokenizer, else the checkpoint's) and its
    sha256 (None where there is none: a --dry-run estimate); --resume refuses another."""
    p = Path(path) if path else ckpt / "tokenizer.json"
    return {"path": str(p.resolve()), "fingerprint": fingerprint(p) if p.is_file() else None}


def run_info(job: Job, plan: CorpusPlan, opts: RecordOptions, world, m, tables: list[str],
             has_router_bias: bool = True) -> dict:
    return {
        "status": "running", "format": 1,
        "checkpoint": checkpoint_identity(job.ckpt),
        "corpus": {"path": str(job.corpus.resolve()), "fingerprint": fingerprint(job.corpus),
                   "documents": plan.stats.documents, "replaced_bytes": plan.stats.replaced_bytes,
                   "files_with_replacements": plan.stats.files_with_replacements[:100],
                   "skipped_binary_files": plan.stats.skipped_binary[:100],
                   "empty_documents": plan.stats.empty_documents[:100]},
        "tokenizer": tokenizer_info(opts.tokenizer, job.ckpt),
        "model_args": job.args.to_dict(), "mtp_module": bool(len(m.mtp)),
        # the dtype the forward ran in: model_args.dtype is the checkpoint's (its config's torch_dtype, what
        # model.load uses by default) and options.dtype is the flag as given (None: float32)
        "compute_dtype": opts.dtype or "float32",
        "options": {k: v for k, v in asdict(opts).items() if k not in NOT_RECORDED},
        "world": world.describe(),
        "tables": tables + (FINAL_TABLES if opts.kv_stats else []) + (["router_bias"] if has_router_bias else []),
        "domains": sorted(plan.per_domain),
        "planned": {"windows": plan.windows, "tokens": plan.tokens, "batches": plan.batches,
                    "tokens_per_domain": plan.per_domain,
                    # the domains --max-tokens cut (text left), so that a domain of few tokens reads as the
                    # cap's or the corpus's (the report's "tokens scored"); absent where not known
                    **({"capped_domains": plan.stats.capped_domains} if plan.stats.capped_domains is not None
                       else {})},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "pyarrow": pa.__version__,
                     "arrow_allocator": pa.default_memory_pool().backend_name,  # probe/allocator.py
                     "dsv3_probe": package_version()},
        "started": time.time(),
    }


def _check_committed(out: Path, old: dict) -> None:
    """--resume: each writing rank's committed parts are intact (`probe.writer.check_committed`), checked
    before run.json says running again; a RecordError naming the run, table and part otherwise."""
    world = old.get("world") or {}
    streamed = [t for t in old.get("tables") or [] if t in STREAM_TABLES]
    for rank in range(0, world.get("size", 1), world.get("model_parallel", 1)):
        try:
            check_committed(out, rank, streamed)
        except RunError as e:
            raise RecordError(str(e)) from None


def open_run(out: Path, info: dict, opts: RecordOptions) -> None:
    """Rank 0: create (or check, to resume) the run directory and write run.json."""
    if opts.resume:
        with updating_run_json(out) as old:  # under the lock, as other jobs note their parts
            check_resumable(old, info, out)
            _check_committed(out, old)
            info["started"] = old.get("started", info["started"])
            info["resumed"] = old.get("resumed", 0) + 1
            # what other commands noted while the run waited stays; what this session rewrites at its
            # end (SESSION_KEYS) does not
            replace_keeping_others(old, info, SESSION_KEYS)
        return
    if out.exists() and (opts.overwrite or never_made(out)):  # never made: its temporary run.json goes too
        say_kept(out, clear_run(out))  # its writer lock stays: this job holds it
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", info)


def check_resumable(old: dict, new: dict, out: Path) -> None:
    made_by = MADE_BY.get(old.get("kind"), "another command")
    for need in ("checkpoint", "corpus", "options"):
        if not (isinstance(old.get(need), dict) and (need == "options" or old[need].get("fingerprint"))):
            what = "record options" if need == "options" else f"{need} fingerprint"
            raise RecordError(f"--resume: {out} is not a record run (made by {made_by}: its run.json has no "
                              f"{what} to resume against); pick another --out")
    if old.get("kind") is not None:  # a record run has no kind; an ablate/importance/steer --out run has the
        # fingerprints and options of its job, and was refused as "recorded with --router-logits None" (a tour)
        raise RecordError(f"--resume: {out} is not a record run (made by {made_by}); pick another --out")
    keys = RESUME_KEYS
    if isinstance(old.get("tokenizer"), dict):
        fingerprinted = (("checkpoint", "--ckpt"), ("corpus", "--corpus"), ("tokenizer", "--tokenizer"))
    else:  # a run recorded before run.json named its tokenizer: the option at least must match
        fingerprinted, keys = (("checkpoint", "--ckpt"), ("corpus", "--corpus")), RESUME_KEYS | {"tokenizer": None}
    for key, flag in fingerprinted:
        same = _same_input(key, old, new)
        if not same and old[key].get("path") == new[key].get("path"):  # the advice below named the command
            # just run (a review): the same path with other contents cannot be resumed
            raise RecordError(f"--resume: the {key} at {old[key].get('path')} has changed since {out} was "
                              f"recorded (its fingerprint differs), so the run cannot go on from it: restore "
                              f"the {key} as it was, or record the run again with --overwrite")
        if not same:
            # both named: the one given was left to be guessed (a review)
            raise RecordError(f"--resume: the {key} given ({new[key].get('path')}) differs from the one {out} was "
                              f"recorded with ({old[key].get('path')}): rerun the run's own command with --resume "
                              f"added ({flag} {old[key].get('path')})")
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
        raise RecordError(f"--resume: the run was recorded with {_ranks(was.get('size'))} in replicas of "
                          f"{was.get('model_parallel')}, now {_ranks(new['world']['size'])} in replicas of "
                          f"{new['world']['model_parallel']}: resume with the same torchrun and --model-parallel")


def _same_input(key: str, old: dict, new: dict) -> bool:
    """Whether --resume's checkpoint, corpus or tokenizer is the run's. A tokenizer is its bytes: a copy named
    otherwise is the same tokenizer, but its sha256 (`tokenizer_info`) is under its own name and was refused
    as another (a review), so it is hashed again under the name the record's was
    (`probe.tokenizer_identity.holds_recorded_tokenizer`). A single-file corpus's name is its
    documents' ids: another name is another corpus."""
    if key == "checkpoint":
        return same_checkpoint(old[key], new[key])
    if old[key]["fingerprint"] == new[key]["fingerprint"]:
        return True
    return key == "tokenizer" and Path(new[key]["path"]).is_file() and holds_recorded_tokenizer(old, new[key]["path"])


def _ranks(n) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"
