"""What the jobs over a checkpoint share (record, spec, `analyses.ablate`, `analyses.report`):
resolving the checkpoint, corpus and output, the tokenizer, the window length, the ranks (through
`model.parallel.init_world`, the one place that creates process groups), loading the model, and the
command-line flags that choose how the model runs. How a checkpoint is identified in run.json:
probe/ckpt_identity.py; which tokenizer file a run is read with: probe/tokenizer_identity.py; how the commands'
processes end and report errors: probe/job_exit.py.

Under torchrun, W ranks split into W / M replicas of M = `--model-parallel` consecutive ranks: each
replica holds one model sharded over its M ranks (tensor + expert parallel, model/parallel.py), the
replicas share the batches, and the first rank of each replica writes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .bundled_corpus import check_not_a_built_corpus
from .ckpt_identity import checkpoint_identity, same_checkpoint
from .errors import EMPTY_PATH, RecordError, first_line

# defined in their own modules; users import them from here too (e.g. `from probe.job import exit_ranks`)
from .ckpt_identity import SAMPLE_BYTES, checkpoint_fingerprint  # noqa: F401
from .job_exit import (  # noqa: F401
    closed_pipe_quiet, exit_ranks, job_error, launch_rank0, one_line_when_a_peer_is_lost, table_errors)
from .job_signals import (quiet_start, signals_held, stop_signals, terminate_as_interrupt,  # noqa: F401
                          terminated_as_ctrl_c)
from .out_paths import (  # noqa: F401
    check_file_replaceable, check_inputs_outside, check_not_an_input, check_out_parent, check_outside_corpus,
    check_replaceable, check_run_place, os_refusal, refuse_a_symlinked_out, refuse_a_training_run)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = REPO / "data" / "model"
DEFAULT_CORPUS = REPO / "data" / "corpus" / "val.jsonl"
# where every command's default output goes and the dashboard looks, wherever it is started from (the
# dashboard served ./runs while record wrote the repository's runs/; a review)
DEFAULT_RUNS = REPO / "runs"
DTYPES = ("float32", "bfloat16", "float64")
MODEL_FLAGS = ("dtype", "gemm", "device", "model_parallel")  # the options add_model_flags adds


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser (`add_subparsers(parser_class=SubcommandParser)`: dsv3-probe's, `python -m
    model`'s): an argument it does not take is refused here, with its own usage and name ("dsv3-probe spec:
    error: unrecognized arguments: --prompt-tokns 8"). argparse handed it to the top-level parser, whose
    usage names none of the subcommand's flags. Only the subcommands': the top-level parser stays
    argparse's own (tests/helpers/doc_commands.py stops each command once its parse_args has parsed)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra


# ------------------------------------------------------------------------------ inputs
def path_text(text: str) -> str:
    """argparse type of a path flag kept as text: an empty value (an unset shell variable) is refused,
    as '.' is not. The jobs read '' as "not given" and took their default (`record --corpus "$CORPUS"`
    recorded the bundled corpus), and Path('') is '.' (`train --out ''` wrote into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(EMPTY_PATH)
    return text


def path_arg(text: str) -> Path:
    """argparse type of a path flag read as a Path (`path_text`: an empty value is refused)."""
    return Path(path_text(text))


def resolve_paths(ckpt: str | None, corpus: str | None, out: str | None, suffix: str = "",
                  error: type[Exception] = RecordError) -> tuple[Path, Path, Path]:
    """(checkpoint dir, corpus path, output dir): the bundled model and corpus by default, and
    runs/<ckpt>-<corpus><suffix> as the output."""
    ckpt_p = Path(ckpt) if ckpt else DEFAULT_CKPT
    corpus_p = Path(corpus) if corpus else DEFAULT_CORPUS
    if ckpt is None and not (ckpt_p / "config.json").exists():
        raise error(f"the bundled checkpoint {ckpt_p} is not there yet: pass --ckpt DIR "
                    "(a Hugging Face DeepSeek-V3 checkpoint directory)")
    if corpus is None and not corpus_p.exists():
        raise error(f"the bundled corpus {corpus_p} is not there yet: pass --corpus PATH")
    if ckpt_p.is_file():
        raise error(f"--ckpt {ckpt_p}: a file; pass the checkpoint directory (the folder holding config.json "
                    "and the safetensors shards)")
    if not ckpt_p.exists():
        raise error(f"--ckpt {ckpt_p}: no such directory")
    if not ckpt_p.is_dir() or not (ckpt_p / "config.json").exists():
        raise error(f"--ckpt {ckpt_p}: not a checkpoint directory (no config.json){_training_run_note(ckpt_p)}")
    check_not_a_built_corpus(corpus_p, error)
    out_p = Path(out) if out else DEFAULT_RUNS / f"{ckpt_p.name}-{corpus_p.stem}{suffix}"
    return ckpt_p, corpus_p, out_p


def _training_run_note(ckpt: Path) -> str:
    """Where a training run given as --ckpt keeps its model: the run's folder was refused with no word of
    its model/ inside (a tour)."""
    if (ckpt / "model" / "config.json").is_file():
        return f"; a training run: its model is {ckpt / 'model'}"
    if (ckpt / "checkpoint" / "state.pt").is_file():
        # the flags it was started with too: without them, --resume went on with the bundled corpus and
        # tokenizer, noted only as changed flags (a review)
        return (f"; a training run not finished, whose model/ is written when it completes (continue it with "
                f"python -m train --out {ckpt} --resume and the flags it was started with, its run.json's)")
    return ""


def checkpoint_args(ckpt: Path, error: type[Exception] = RecordError):
    """The checkpoint's `model.ModelArgs`; a bad config.json is a one-line error."""
    from model.args import ConfigError, ModelArgs

    try:
        return ModelArgs.from_hf_config(ckpt)
    except ConfigError as e:
        raise error(str(e)) from None


def default_seq_len(args) -> int:
    """512 tokens, or less when the model was trained on shorter windows (the YaRN original length or
    max_seq_len): routing beyond a model's training length is not the routing it learned."""
    return min(512, args.original_seq_len, args.max_seq_len)


def window_length(seq_len: int | None, args, error: type[Exception] = RecordError) -> int:
    """--seq-len, or `default_seq_len` when unset; `error` when it exceeds the model's max_seq_len."""
    seq_len = default_seq_len(args) if seq_len is None else seq_len
    if seq_len > args.max_seq_len:
        raise error(f"--seq-len {seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
    return seq_len


def load_tokenizer(path: str | None, ckpt: Path, vocab_size: int, error: type[Exception] = RecordError):
    """`tokenizers.Tokenizer` from --tokenizer or the checkpoint's tokenizer.json, checked against
    the model's vocabulary."""
    from tokenizers import Tokenizer

    p = Path(path) if path else ckpt / "tokenizer.json"
    if not p.exists():  # the advice to pass --tokenizer misled when --tokenizer had named this missing file
        if path:
            raise error(f"--tokenizer {p}: no tokenizer there (the file does not exist)")
        raise error(f"{p}: no tokenizer (put tokenizer.json in the checkpoint or pass --tokenizer)")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
        from model.checkpoint_files import lfs_pointer_note

        flag = "--tokenizer " if path else ""  # a file the user named: say which flag named it
        raise error(f"{flag}{p}: not a tokenizers JSON file ({e}){lfs_pointer_note(p)}") from None
    tokenizer_fits(tok, p, vocab_size, error)
    return tok


def tokenizer_fits(tok, p: Path, vocab_size: int, error: type[Exception] = RecordError) -> None:
    """`error` naming the file `p` where the tokenizer `tok` has ids past the model's vocabulary (a
    tokenizer of another model; `python -m model summary --text` asks it too)."""
    # its largest id, not its count: a vocabulary with gaps in its ids counts fewer tokens than it can
    # produce, and an id past the embedding failed the first forward pass (a checkpoint tour)
    n, top = tok.get_vocab_size(with_added_tokens=True), max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if max(n, top + 1) > vocab_size:
        ids = f"has {n} tokens" + (f" with ids up to {top}" if top + 1 != n else "")
        raise error(f"{p} {ids} but the checkpoint's vocab_size is {vocab_size}: "
                    "tokenizer and checkpoint do not belong together")


def run_inputs(info: dict, where: str, ckpt: str | None, corpus: str | None,
               error: type[Exception] = RecordError, run: str | Path | None = None,
               advice=None) -> tuple[str | None, str | None]:
    """--ckpt and --corpus of a job on an existing run (spec, ablate, importance, steer), each
    defaulting to the run's own: its model on its corpus, never the bundled ones standing in
    silently. Refused, unless the flag is given: a training run whose model is not written yet, an
    import (which has neither), a record run whose run.json lost either path, a path the run names
    that is gone, and a checkpoint whose weights
    changed since the run was recorded (ablate, importance and steer took it silently; a review). `run`:
    the run's directory, where `where` names it otherwise (default `where`). `advice(lost, why)`: what a
    refusal tells a caller without these flags to do instead of passing one (a notebook: 'pass --ckpt'
    named a flag it has none of; a tour), `lost` the checkpoint, the corpus or both ('model' for a
    training run's), `why` 'unwritten', 'unnamed', 'gone' or 'changed'; default: the flag to pass."""
    have = lambda key: (info.get(key) or {}).get("path")  # noqa: E731
    say = lambda cli, lost, why: cli if advice is None else advice(lost, why)  # noqa: E731
    if info.get("kind") == "train" and not ckpt and not have("checkpoint"):
        _no_model_yet(info, where, run if run is not None else where, error, advice)
    if info.get("kind") == "import" and not (ckpt and corpus):
        raise error(f"{where}: an imported run ({(info.get('source') or {}).get('name', 'import')}) has no "
                    "checkpoint or corpus of its own: "
                    + say("pass --ckpt and --corpus", "checkpoint and corpus", "unnamed"))
    if info.get("kind") is None and "planned" in info:  # a record run names both: the bundled ones stood in
        lost = [(flag, key) for flag, key, given in (("--ckpt", "checkpoint", ckpt), ("--corpus", "corpus", corpus))
                if not given and not have(key)]
        if lost:
            what = " and ".join(k for _, k in lost)
            raise error(f"{where}: run.json names no {' and no '.join(k for _, k in lost)} path (a damaged or "
                        "hand-edited run.json): " + say(f"pass {' and '.join(f for f, _ in lost)} with what the run "
                                                        "was recorded with", what, "unnamed"))
    if ckpt is None and have("checkpoint"):
        ckpt = have("checkpoint")
        if not (Path(ckpt) / "config.json").is_file():
            raise error(f"{where}: the run's checkpoint {ckpt} is no longer there; "
                        + say("pass --ckpt with the model the run was recorded with", "checkpoint", "gone"))
        was = info.get("checkpoint") or {}
        if was.get("fingerprint") and not same_checkpoint(was, checkpoint_identity(Path(ckpt))):
            raise error(f"{where}: the checkpoint at {ckpt} has changed since the run was recorded (its "
                        "fingerprint or weights sample differs); "
                        + say("pass --ckpt to use it anyway", "checkpoint", "changed"))
    if corpus is None and have("corpus"):
        corpus = have("corpus")
        if not Path(corpus).exists():
            raise error(f"{where}: the run's corpus {corpus} is no longer there; "
                        + say("pass --corpus", "corpus", "gone"))
    return ckpt, corpus


def run_tokenizer(info: dict, where: str, error: type[Exception] = RecordError, advice=None,
                  ckpt: str | Path | None = None) -> str | None:
    """The tokenizer a job on an existing run takes by default: the file the record (or the spec, ablate,
    importance or steer --out that made the run) was given with --tokenizer, as run.json resolved it (a
    record keeps the option as typed, relative to where it ran: ablate and the report looked for it
    relative to where they ran, and spec not at all; a tour); None when the run used the checkpoint's own,
    which follows the checkpoint (`ckpt`, the job's; default the run's). A file gone or changed since is
    refused, and so is a checkpoint's tokenizer.json whose sha256 is not the run's (it was taken unchecked:
    the corpus read as other token ids; a review); which file, and why none: `run_tokenizer_file`.
    `advice(lost, why)`: as `run_inputs`' (`lost` 'tokenizer', `why` 'gone' or 'changed'), for a caller
    without --tokenizer (a notebook was told to pass it; a tour); default: the flag to pass."""
    from .tokenizer_identity import run_tokenizer_file, tokenizer_refusal

    found = run_tokenizer_file(info, ckpt)
    if found.why != "changed" and not (info.get("options") or {}).get("tokenizer"):
        return None  # the checkpoint's own, or no tokenizer named (load_tokenizer names a file not there)
    if found.path is not None:
        return found.path
    why = "changed" if found.why == "changed" else "gone"
    mine = found.own and why == "changed"  # the checkpoint's: tokenizer_refusal leaves what it costs unsaid
    cli = ("pass --tokenizer" if why == "gone" else "pass --tokenizer with the run's tokenizer, or with this file to "
           "take it anyway" if mine else "pass --tokenizer to take it")
    cost = ", so its token ids would not be the run's" if mine else ""
    raise error(f"{where}: {tokenizer_refusal(found)}{cost}; " + (cli if advice is None else advice("tokenizer", why)))


def _no_model_yet(info: dict, where: str, run: str | Path, error: type[Exception], advice=None) -> None:
    """Refuse a training run that has not written its model: still training, or stopped before it did (a
    killed one's run.json still says running, and no job holds it: it read as 'not written yet (status
    running)', as if it would come, a tour), which says how to resume it. `advice`: `run_inputs`'."""
    from .writer import stopped_running

    other = "pass --ckpt with the model to use" if advice is None else advice("model", "unwritten")
    killed = stopped_running(run, info)  # asked once: it takes the run's writer lock to ask
    if not killed and info.get("status") != "interrupted":
        raise error(f"{where}: a training run whose model is not written yet (status {info.get('status')!r}): "
                    f"{other}")
    how = " (its job was killed: run.json still says running, and no job holds the run)" if killed else ""
    # a caller's advice is a sentence of its own ('ablation runs the run's checkpoint...'), not an 'or' clause
    raise error(f"{where}: a training run interrupted before it wrote its model{how}: continue it with "
                f"`python -m train ... --resume` (the command that started it, plus --resume)"
                + (f", or {other}" if advice is None else f"; {other}"))


def package_version() -> str:
    try:
        from importlib.metadata import version
        return version("dsv3-probe")
    except Exception:  # noqa: BLE001 - not installed (a checkout on PYTHONPATH)
        return "unknown"


MMAP_THRESHOLD = 64 << 20  # glibc: blocks from this size up get their own mapping, returned on free
TRIM_THRESHOLD = 128 << 20  # glibc: free memory at the heap's top kept for reuse, up to this much


def bound_heap() -> None:
    """Fix glibc's heap thresholds for a long job (record; ablate, importance and steer through
    analyses.ablate.inputs.start_job): allocations below MMAP_THRESHOLD come from the
    heap and are reused batch after batch, and up to TRIM_THRESHOLD of free heap is kept rather than
    returned to the kernel. No-op off glibc.

    NOTE: left to itself, glibc raises its mmap threshold as large blocks are freed, after which
    the model's activations come from the heap and small, longer-lived row buffers pin it: resident
    memory grew with the run. Fixed thresholds stop that. They used to be 1 MiB (mmap; trim then
    stays at glibc's 128 KiB), which sent every activation, and oneDNN's packed bf16 weights, to a
    fresh mapping whose pages fault in again on every use: on a 2-core Intel Xeon VM (2026-12-02)
    a bf16 forward of benchmarks/config_wide.json ran 2.1x slower (368,000 page faults per forward)
    and a float32 one 1.27x slower than with glibc's defaults, and benchmarks/bench_record.py's
    160,000-token record 1.2x slower. With 64 MiB / 128 MiB, the same forwards ran as fast as with
    the defaults and the record's peak resident memory was 20-80 MiB (4-9%) higher, still growing <10%
    over a 10x longer run (bench_record.py --part memory).
    The heap also fragmented from run to run while Arrow allocated with mimalloc: the jobs' entry
    points now put Arrow on the system allocator (probe/allocator.py)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------- ranks
def start_world(model_parallel, device: str | None, args=None, options: dict | None = None):
    """This process's `model.parallel.World`; with `args`, also checks that the model splits over
    --model-parallel ranks (a one-line ParallelError naming the field, on every rank alike); with
    `options` (the job's options by flag name), that every rank runs the job alike (`same_options`)."""
    from model.parallel import check_world, env_world_size, init_world, model_parallel_flag, model_parallel_size

    if args is not None:  # before any process group exists, so that every rank stops the same way
        check_world(args, model_parallel_size(model_parallel, env_world_size()), what=model_parallel_flag(model_parallel))
    world = init_world(model_parallel, device=device)
    if options is not None:
        same_options(world, options)
    if args is not None and world.size > 1 and world.device == "cpu" and args.n_routed_experts:
        from model import gemm  # the experts' float32 layout too: every rank computes alike

        gemm.agree_experts_across_ranks(args.dim, args.moe_inter_dim)
    return world


# options that may differ from rank to rank: where each node finds its files (a shared filesystem
# may be mounted at other paths) and whether it draws a progress bar
PER_NODE_OPTIONS = ("ckpt", "corpus", "out", "run", "tokenizer", "progress")


def job_options(opts, **extra) -> dict:
    """A job's options dataclass as `same_options` compares it, plus `extra` (e.g. the ablations a
    job derived from its flags), without the options that may differ per node, nor the fields no flag
    sets (`init=False`: spec's `default_prompts`, whether the prompt cap was typed, refused a node that
    typed `--max-prompts 64` beside one that typed none as '--default-prompts' differing; a review)."""
    import dataclasses

    derived = {f.name for f in dataclasses.fields(opts) if not f.init}
    return {k: v for k, v in dataclasses.asdict(opts).items() if k not in PER_NODE_OPTIONS and k not in derived} \
        | extra


def same_options(world, options: dict) -> None:
    """Every rank must run the job with rank 0's options: under torchrun each node types its own
    command, and ranks that disagree hang in a collective, crash inside gloo/NCCL, or write one run
    of mixed settings. A RecordError on every rank naming the first option that differs."""
    if world.size == 1:
        return
    first = world.broadcast(options)
    mine = {k: options.get(k) for k in sorted(first.keys() | options.keys()) if first.get(k) != options.get(k)}
    differ = world.everyone(mine)
    for rank, diff in enumerate(differ):
        if diff:
            key, value = next(iter(diff.items()))
            flag = key if key.startswith("-") or " " in key else "--" + key.replace("_", "-")
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            raise RecordError(f"ranks run different jobs: {flag} is {first.get(key)!r} on rank 0 but {value!r} on "
                              f"rank {rank}{more}; every node's command must pass the same options")


def same_inputs(world, inputs: dict) -> None:
    """Every rank must read what rank 0 reads: the paths may differ from node to node (PER_NODE_OPTIONS),
    their contents may not. `inputs`: {flag: (the path as this rank names it, what it holds in words,
    a function that gives a digest of its contents (called under torchrun only: one process reads nothing
    for it)[, how this rank names the input in place of `flag`: a file no flag named, such as the
    checkpoint's tokenizer.json])}. A corpus of other text on one node (a stale copy) gave that
    replica other windows and another number of batches, and the ranks then waited in different collectives
    until torchrun's timeout (gloo's is 30 minutes), the run holding rows of both corpora; another
    checkpoint mixed two models' shards. A RecordError on every rank naming the first input that
    differs, before the model loads."""
    if world.size == 1:
        return
    every = world.everyone({k: (f"{(named or [k])[0]} {path}", what, digest())
                            for k, (path, what, digest, *named) in inputs.items()})
    for rank, theirs in enumerate(every):
        for flag, (shown, what, digest) in theirs.items():
            ours = every[0].get(flag)
            if ours is None or ours[2] != digest:
                raise RecordError(f"ranks read different inputs: {shown} on rank {rank} {what} than "
                                  f"{ours[0] if ours else flag + ' (none)'} on rank 0; every node must see the same "
                                  "files (a shared filesystem, or identical copies)")


def checkpoint_input(ckpt: Path) -> tuple:
    """`same_inputs`' entry for --ckpt, the same in every job: its contents compared as its layout
    fingerprint and weights sample (`checkpoint_identity`, kept for the process: the run's record reuses it)."""
    def digest() -> str:
        ident = checkpoint_identity(ckpt)
        return f"{ident['fingerprint']}:{ident['sample']}"

    return ckpt, "holds another checkpoint (its config, tensor headers or weights sample differ)", digest


def agree(world, fn):
    """Run `fn` on rank 0 only and share its outcome: its result on every rank, or the same
    RecordError (ValueError) raised on every rank instead of rank 0 alone."""
    res, err = None, None
    if world.rank == 0:
        try:
            res = fn()
        except (ValueError, OSError) as e:
            err = (type(e).__name__, str(e))
    res, err = world.broadcast((res, err))
    if err is not None:
        raise RecordError(err[1])
    return res


def compute_dtype(name: str | None):
    import torch

    return getattr(torch, name) if name else torch.float32


def check_model_flags(dtype: str | None, gemm: str) -> None:
    """The --dtype/--gemm pairs a load refuses, refused in the flags' words (the loader's message
    names its own arguments, gemm_impl and dtype)."""
    if dtype == "float64" and gemm == "fp8":
        raise RecordError("--dtype float64 with --gemm fp8: FP8 GEMMs quantise float32 or bfloat16 activations, "
                          "not float64; use --dtype float32, or --gemm fp8-weights (FP8 weights, float64 sums)")


@contextlib.contextmanager
def flag_advice():
    """A shard cutting FP8 blocks, advised in the jobs' flag (the loader's message names gemm_impl)."""
    from model.ranks import BlockAlignError, ParallelError

    try:
        yield
    except BlockAlignError as e:
        raise ParallelError(e.advise("pass --gemm bf16 (dequantise on load)")) from None


def load_model(ckpt: Path, world, *, dtype: str | None = None, gemm: str = "bf16"):
    """The checkpoint as this replica's model: whole (model_parallel 1) or this rank's shards, its
    weights frozen for as long as it lives where the packed copies fit (no job changes them;
    oneDNN's float32 GEMMs then read them pre-packed, model/frozen.py)."""
    import model

    check_model_flags(dtype, gemm)
    m, failed = None, None
    try:  # each rank loads its own shards: a failure on one rank (an unreadable shard, its memory) must
        with flag_advice():  # reach all
            m = model.load(ckpt, dtype=compute_dtype(dtype), device=world.device, gemm_impl=gemm,
                           parallel=world.shards if world.shards is not None else False)
    except (ValueError, OSError, MemoryError, RuntimeError) as e:
        if world.size == 1:
            raise
        failed = f"rank {world.rank}: {first_line(e)}"
    if world.size > 1 and world.any(failed is not None):  # the others waited in their next collective (a review)
        every = world.gather(failed)  # on every rank (a collective), before rank 0 picks the first failure
        first = world.broadcast(next(x for x in every if x) if world.rank == 0 else None)
        raise RecordError(f"the model did not load on every rank ({first})")
    if packing_fits(m):
        model.frozen_weights(m)
    if world.rank == 0:
        note_slow_dtype(dtype, m.args.dim, world.device)
    return m


def note_slow_dtype(dtype: str | None, width: int, device) -> None:
    """One line on standard error when --dtype bfloat16 (float16) GEMMs run at under half float32's speed on
    this CPU (measured: model.gemm.low_precision_speed, a few ms): without native bfloat16 matrix products
    a record ran at 0.23x float32's tokens/s, with no word of why (a 2-core AVX2-only EPYC, 2026-12-07)."""
    import torch

    if dtype not in ("bfloat16", "float16") or torch.device(device).type != "cpu":
        return
    from model.gemm import low_precision_speed

    speed = low_precision_speed(getattr(torch, dtype), width)
    if speed < 0.5:
        print(f"note: --dtype {dtype}: this CPU runs {dtype} matrix products at {speed:.2f}x float32's speed "
              f"(measured; no native {dtype} GEMMs, such as AVX-512 BF16 or AMX, here), so this job runs "
              "several times slower than with --dtype float32", file=sys.stderr)


def packing_fits(m, available: int | None = None) -> bool:
    """Whether a copy of `m`'s float32 CPU weights (what frozen weights may pack: at most that much)
    fits in half the memory the machine has available (`packed_copy_bytes`)."""
    import torch

    return packed_copy_bytes(sum(p.numel() * 4 for p in m.parameters()
                                 if p.dtype == torch.float32 and p.device.type == "cpu"), available) > 0


def packed_copy_bytes(float32_bytes: int, available: int | None = None) -> int:
    """The bytes a job's frozen weights pack: all `float32_bytes` where they fit in half the
    `available` memory (default /proc/meminfo's MemAvailable), else none; none where there are no
    float32 weights or the memory cannot be read. The jobs (`packing_fits`) and the --dry-run plan
    (probe/plan.py) both ask this."""
    if not float32_bytes:
        return 0
    if available is None:
        from model.memory import available_memory

        available = available_memory()
    return float32_bytes if available is not None and float32_bytes <= available // 2 else 0


def add_model_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--dtype, --gemm, --device and --model-parallel, the same for every job."""
    p.add_argument("--dtype", choices=list(DTYPES),
                   help="compute dtype (default float32; float64 = reference precision, e.g. to compare "
                        "layouts without rounding differences)")
    p.add_argument("--gemm", choices=["bf16", "fp8", "fp8-weights"], default="bf16",
                   help="bf16: dequantise FP8 checkpoint weights on load (default); fp8: keep them resident "
                        "(1 byte per weight + block scales) and run block-scaled FP8 GEMMs with FP8-quantised "
                        "activations, as DeepSeek's inference does; fp8-weights: keep them resident but "
                        "dequantise each for its GEMM, activations unquantised (bf16's numbers, fp8's memory; "
                        "in float32 or float64, routing that does not change with the parallel layout)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default auto: CUDA when torch sees a GPU; "
                                                  "under torchrun 'cuda' is each rank's LOCAL_RANK GPU)")
    p.add_argument("--model-parallel", default="1", metavar="M",
                   help="ranks that hold one model, sharded tensor + expert parallel (default 1: every rank a "
                        "whole model); 'auto' = the whole torchrun world; the world splits into W/M replicas")


def add_input_flags(p: argparse.ArgumentParser, table: str, *, run_note: str = "",
                    domain_tokens: int | None = None) -> argparse._ArgumentGroup:
    """The "inputs and output" flags of the jobs that evaluate a corpus on a run's checkpoint
    (analyses.ablate, .importance, .steer): --run/--out and what --run provides by default, the
    window options, the model flags and --no-progress. Returns the group (a job adds its own)."""
    io = p.add_argument_group("inputs and output")
    io.add_argument("--run", type=path_text,
                    help="a recorded run: its checkpoint, corpus and options are the defaults" + run_note
                         + f", and the {table} table is written into it")
    io.add_argument("--out", type=path_text, help=f"run directory to write the {table} table into (default: --run)")
    io.add_argument("--ckpt", type=path_text,
                    help="Hugging Face checkpoint directory (default: the run's, else the bundled model)")
    io.add_argument("--corpus", type=path_text,
                    help="corpus as for `probe record` (default: the run's, else the bundled val.jsonl)")
    io.add_argument("--tokenizer", type=path_text, help="tokenizer.json (default: the checkpoint's)")
    io.add_argument("--max-tokens", type=int,
                    help="at most this many tokens in all (default: the run's, and then the job samples within "
                         "the run's own windows, unless --order, --seq-len or --bos differ from the run's; else all)")
    io.add_argument("--domain-tokens", type=int, default=domain_tokens,
                    help="at most this many tokens of each domain, in corpus order: with --run and no --max-tokens, "
                         "of the run's own windows (only the domains the run holds, none beyond its tokens); "
                         "else of the whole corpus, a balanced sample of a corpus stored domain by domain, "
                         "--max-tokens capping the total"
                         + (f" (default {domain_tokens}; 0 = no per-domain cap)" if domain_tokens else ""))
    io.add_argument("--order", choices=["domains", "corpus"],
                    help="window order (default: the run's, else domains: interleaved so --max-tokens covers every "
                         "domain; corpus: corpus order)")
    io.add_argument("--seq-len", type=int,
                    help="window length (default: the run's, else as dsv3-probe record: 512 or the model's "
                         "training length when shorter)")
    io.add_argument("--batch-size", type=int, help="windows per forward pass (default: the run's, else 8)")
    io.add_argument("--bos", dest="add_bos", action=argparse.BooleanOptionalAction, default=None,
                    help="prepend BOS to each document (default: the run's, else on)")
    add_model_flags(io)
    io.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return io
