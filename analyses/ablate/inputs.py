"""A job's inputs, shared by ablate, importance and steer: the options (`AblateOptions`) and their
defaults from --run's run.json (`job_defaults`), the checks on --run and --out, the corpus sample
(`sample_windows`), this replica's batches and the model (`start_job`), and what a result part records
about its inputs (`job_meta`, `inputs_key`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.metrics._common import counted, window_flag
from probe.corpus import CorpusError, corpus_windows, fingerprint
from probe.job import check_out_parent, check_outside_corpus, check_run_place, run_inputs, run_tokenizer
from probe.job_exit import launch_rank0
from probe.tokenizer_identity import holds_recorded_tokenizer
from probe.recorders import Batch
from probe.windows import Window
from probe.writer import read_run_json, refuse_running

from .select import AblationError


# ------------------------------------------------------------------------------ options and checks
@dataclass
class AblateOptions:
    run: str | None = None
    out: str | None = None
    ckpt: str | None = None
    corpus: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    domain_tokens: int | None = None  # at most this many tokens of each domain (each domain's own order)
    order: str | None = None  # domains | corpus (default: the run's, else domains; see probe.corpus)
    seq_len: int | None = None
    batch_size: int | None = None
    add_bos: bool | None = None
    dtype: str | None = None
    gemm: str = "bf16"
    device: str | None = None
    model_parallel: str | int = 1
    loads_from: str = "auto"  # auto | run | baseline
    progress: bool = True
    fresh: bool = False  # compute every ablation again, taking nothing from an interrupted attempt (sweep.py)
    # sample within the run's own windows (the corpus read up to the run's cap), not the whole corpus
    # (`sample_windows`). None: job_defaults decides, True where --run is given and --max-tokens not, and
    # --order, --seq-len and --bos, where given, are the run's (`run_windows`); True from a caller with a
    # max_tokens of its own (the report's sweep): at most that many of the run's windows
    within_run: bool | None = None
    run_max_tokens: int | None = None  # the run's own cap (job_defaults), where a sample within it reads to


def job_defaults(opts: AblateOptions) -> tuple[AblateOptions, dict | None]:
    """Fill unset options from --run's run.json; returns (options, run info). A job that inherits the
    run's --max-tokens (none given) samples within the run's windows (`within_run`), as does one whose
    caller set `within_run`; windows other than the run's (`run_windows`) are a sample of the corpus."""
    info, decided = None, opts.within_run is None
    given = {k: getattr(opts, k) for k in _WINDOW_OPTIONS}  # before the run's fill them in
    inputs = {"corpus": opts.corpus, "tokenizer": opts.tokenizer}
    if opts.within_run is None:
        opts.within_run = opts.run is not None and opts.max_tokens is None
    if opts.run is None and opts.out is None:
        raise AblationError("pass --run RUN (a recorded run) or --out DIR (where to write the results)")
    if opts.within_run and opts.run is None:
        raise AblationError("within_run: a sample within a run's windows needs --run RUN")
    if opts.loads_from not in ("auto", "run", "baseline"):
        raise AblationError(f"--loads-from {opts.loads_from!r}: choose auto, run or baseline")
    if opts.run is not None:
        info = read_run_json(Path(opts.run))
        opts.ckpt, opts.corpus = run_inputs(info, str(opts.run), opts.ckpt, opts.corpus, AblationError)
        ro = info.get("options", {})
        opts.tokenizer = opts.tokenizer or run_tokenizer(info, str(opts.run), AblationError, ckpt=opts.ckpt)
        opts.run_max_tokens = ro.get("max_tokens")
        for k in ("max_tokens", "seq_len", "batch_size", "add_bos"):
            if getattr(opts, k) is None:
                setattr(opts, k, ro.get(k))
        opts.order = opts.order or run_order(ro)
        if opts.within_run:
            run_windows(opts, ro, given, decided, other_inputs(info, inputs))
    elif opts.loads_from == "run":
        raise AblationError("--loads-from run needs --run RUN")
    opts.order = opts.order or "domains"
    opts.batch_size = 8 if opts.batch_size is None else opts.batch_size  # 0 became 8, silently (a review)
    opts.add_bos = True if opts.add_bos is None else opts.add_bos
    if opts.batch_size < 1:  # each flag named with its value (it said "--batch-size must be >= 1 and --seq-len >= 2")
        raise AblationError(f"--batch-size {opts.batch_size}: must be >= 1 (windows per forward pass)")
    if opts.seq_len is not None and opts.seq_len < 2:
        raise AblationError(f"--seq-len {opts.seq_len}: must be >= 2 (tokens per window)")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise AblationError(f"--max-tokens {opts.max_tokens}: must be >= 1")
    if opts.domain_tokens is not None and opts.domain_tokens < 1:
        raise AblationError(f"--domain-tokens {opts.domain_tokens}: must be >= 1")
    return opts, info


_WINDOW_OPTIONS = ("order", "seq_len", "add_bos")  # what shapes the windows (a job's flags; `window_flag`)


def run_order(ro: dict) -> str:
    """The --order a run's windows were read in, from its run.json options: a record run from before
    --order read the corpus in order; a run with no record options (spec only) takes the default,
    every domain interleaved."""
    return ro.get("order", "corpus" if "router_logits" in ro else "domains")


def other_inputs(info: dict, given: dict) -> list[str]:
    """The --corpus and --tokenizer given that are not the run's: other bytes than run.json's sha256 (the
    corpus's files by their relative paths, so a moved corpus is still the run's; the tokenizer under the name
    the record hashed it by). Their windows are not the run's, yet were sampled as `sample: run` (a review).
    A run that kept no sha256 takes them unchecked."""
    off = []
    for key, path in given.items():
        kept = info.get(key) or {}
        if path is None or not kept.get("fingerprint") or not Path(path).exists():
            continue
        same = holds_recorded_tokenizer(info, path) if key == "tokenizer" else fingerprint(path) == kept["fingerprint"]
        if not same:
            off.append(f"--{key} {path} (the run's: {kept.get('path')}; other bytes)")
    return off


def run_windows(opts: AblateOptions, ro: dict, given: dict, decided: bool, inputs_off: list[str] = ()) -> None:
    """Keep a sample within the run only where its windows are the run's own: an --order, --seq-len or
    --bos given that differs from the run's (its run.json options) makes other windows, which the job's
    part recorded as `sample: run` (a review); so do a --corpus or --tokenizer of other bytes than the
    run's (`inputs_off`, from `other_inputs`). Decided here (`decided`: no caller set `within_run`), the
    job samples the corpus instead, as with the run's --max-tokens given, and one note on stderr says
    so; a caller that asked for the run's windows is refused, naming the flag."""
    theirs = {"order": run_order(ro), "seq_len": ro.get("seq_len"), "add_bos": ro.get("add_bos")}
    off = [f"{window_flag(k, v)} (the run's: {theirs[k] if k != 'add_bos' else window_flag(k, theirs[k])})"
           for k, v in given.items() if v is not None and theirs[k] is not None and v != theirs[k]]
    off += inputs_off
    if not off:
        return
    if not decided:
        if inputs_off and off[0] == inputs_off[0]:
            key = off[0].split()[0][2:]
            raise AblationError(f"{off[0]}: a sample within the run's windows reads the run's own {key} (its bytes, "
                                "wherever it lies now)")
        raise AblationError(f"{off[0]}: a sample within the run's windows takes the run's own; leave it unset")
    opts.within_run = False
    if launch_rank0():
        how = f"as if --max-tokens {opts.max_tokens:,} (the run's) were given" if opts.max_tokens else "whole"
        print(f"note: {', '.join(off)}: not the run's own windows, so the job samples the corpus {how} (its part "
              "says sample: corpus); leave the flag unset to sample within the run",
              file=sys.stderr)


def check_finished(run, info: dict | None, error: type[Exception] = AblationError) -> None:
    """probe.writer.refuse_running, with this package's error by default."""
    refuse_running(run, info, error)


def check_out(out: Path, corpus: Path | None = None, ckpt: Path | None = None, run: str | Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise AblationError(f"--out {out}: is a file, not a directory")
    check_outside_corpus(out, corpus, "the table", AblationError, "the corpus")
    check_run_place(out, error=AblationError)
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").exists():
        raise AblationError(f"--out {out}: not a run directory (no run.json) and not empty")
    if ckpt is not None:
        check_out_checkpoint(out, Path(ckpt), run)
    check_out_parent(out, error=AblationError)  # before a model loads, not when the table is written


def check_out_checkpoint(out: Path, ckpt: Path, run: str | Path | None) -> None:
    """Refuse an --out that is a run of another checkpoint than the job's: `--out runs/a --ckpt B` wrote
    model B's rows into run a's table, beside its own model's, and the dashboard and the report read
    them as run a's (a sweep user's tour). The run given as --run is not checked here: `run_inputs`
    checked its checkpoint, and a --ckpt given with it is the caller's choice ("use it anyway")."""
    from probe.ckpt_identity import checkpoint_identity, same_checkpoint

    if not (out / "run.json").is_file() or (run is not None and Path(run).resolve() == out.resolve()):
        return
    was = read_run_json(out).get("checkpoint") or {}
    if was.get("fingerprint") and not same_checkpoint(was, checkpoint_identity(ckpt)):
        raise AblationError(f"--out {out}: a run of another checkpoint ({was.get('path')}) than this job's {ckpt} "
                            "(config, tensor headers or weights sample differ): its tables would hold two models' "
                            "rows; write into another --out")


# ------------------------------------------------------------------------------ the sample and the model
def limit_per_domain(windows, per_domain: int, total: int | None) -> list:
    """The first `per_domain` tokens of every domain (corpus order; the last window cut), then at
    most `total` tokens overall: a balanced sample of a corpus stored domain by domain."""
    seen: dict[str, int] = {}
    out, n = [], 0
    for w in windows:
        left = min(per_domain - seen.get(w.domain, 0), (total - n) if total is not None else len(w.ids))
        if left <= 0:
            if total is not None and n >= total:
                break
            continue
        ids = w.ids[:left]
        out.append(Window(w.seq_id, w.doc_id, w.domain, w.doc_start, ids))
        seen[w.domain] = seen.get(w.domain, 0) + len(ids)
        n += len(ids)
    return out


def sample_windows(opts: AblateOptions, corpus: Path, tok, args) -> tuple[list, list[str]]:
    """The job's windows, in `opts.order`, and the domains among them. Within a run (`opts.within_run`: its
    --max-tokens inherited and its --order, --seq-len and --bos kept, or a caller's choice) the run's own
    windows, the corpus up to the run's cap, then at most `opts.domain_tokens` of each domain and
    `opts.max_tokens` in all: the job's domains are the run's and none gets more tokens than the run holds
    (it scored domains the run's cap had left out, a tour); with --max-tokens given, windows other than
    the run's (`run_windows`), or no run, `domain_tokens` of every domain of the whole corpus, capped at
    `max_tokens` in all (a balanced sample), or without `domain_tokens` the corpus up to `max_tokens`. An
    empty corpus is an error, and so are windows of one token each, which leave no token to score (its
    loss needs the next)."""
    from probe.corpus import CorpusStats

    bos = args.bos_token_id if opts.add_bos else None
    stats = CorpusStats()  # what the reader skipped or replaced: said as record says it (it was silent; a review)
    if opts.within_run:  # the corpus as the run read it; a cap of the caller's own applies after
        caps = [c for c in (opts.run_max_tokens, None if opts.domain_tokens else opts.max_tokens) if c is not None]
        read_to = min(caps, default=None)
    else:
        read_to = None if opts.domain_tokens else opts.max_tokens
    windows = corpus_windows(corpus, lambda t: tok.encode(t, add_special_tokens=False).ids, opts.seq_len, bos,
                             read_to, opts.order, stats)
    windows = limit_per_domain(windows, opts.domain_tokens, opts.max_tokens) if opts.domain_tokens else list(windows)
    if not windows:
        raise CorpusError(f"{corpus}: corpus has no text")
    if all(len(w.ids) < 2 for w in windows):
        run_cap = opts.run_max_tokens if opts.within_run else None
        if run_cap is not None and (opts.max_tokens is None or run_cap <= opts.max_tokens):  # the run's cap limited it
            caps = [f"the run's own {counted(run_cap, 'token')} (its --max-tokens, whose windows "
                    "this job samples within; record the run with more)"]
        else:
            caps = [f"{counted(opts.max_tokens, 'token')} in all (max_tokens)"] if opts.max_tokens else []
        caps += [f"{opts.domain_tokens:,} per domain (domain_tokens)"] if opts.domain_tokens else []
        why = f"the sample is capped at {' and '.join(caps)}" if caps else "the documents are one token long"
        each = "holds one token" if len(windows) == 1 else "hold one token each"
        raise CorpusError(f"{corpus}: the {counted(len(windows), 'window')} evaluated {each}, which leaves no token "
                          f"to score (a token's loss needs the next one); {why}")
    for note in stats.notes() if launch_rank0() else ():  # a sample the job takes: an error says enough
        print(note, file=sys.stderr)
    return windows, sorted({w.domain for w in windows})


def replica_batches(windows: list, batch_size: int, world) -> list[Batch]:
    """This replica's batches: global batch b goes to replica b % R (the ranks of one replica, one
    sharded model, run the same ones), as `probe record` deals them."""
    return [Batch(b, windows[s: s + batch_size]) for b, s in enumerate(range(0, len(windows), batch_size))
            if b % world.replicas == world.replica]


def start_job(opts: AblateOptions, ckpt: Path, args, windows: list, corpus: Path, **derived):
    """The model side of a job, once its inputs are checked: bound the heap, join the ranks (each
    running the job with rank 0's options and `derived` settings, e.g. the ablations, on rank 0's
    checkpoint and windows of `corpus`: `probe.job.same_inputs`), take this replica's batches and load
    the model sharded over the replica -> (world, batches, model)."""
    from probe.job import bound_heap, checkpoint_input, job_options, load_model, same_inputs, start_world

    bound_heap()
    world = start_world(opts.model_parallel, opts.device, args, job_options(opts, **derived))
    same_inputs(world, {"--ckpt": checkpoint_input(ckpt),
                        "--corpus": (corpus, "gives other token windows (its text, or the tokenizer, differs)",
                                     lambda: windows_digest(windows))})
    batches = replica_batches(windows, opts.batch_size, world)
    return world, batches, load_model(ckpt, world, dtype=opts.dtype, gemm=opts.gemm)


def windows_digest(windows) -> str:
    """A digest of the windows a job evaluates (each one's document, domain, start and token ids), which
    its part's run.json entry keeps (`windows_digest`, outside the part's key): an interrupted attempt is
    continued only over the same windows (`analyses.ablate.sweep.Commits._same_sample`)."""
    import hashlib

    h = hashlib.sha256()
    for w in windows:
        h.update(json.dumps([w.doc_id, w.domain, int(w.doc_start), len(w.ids)]).encode())
        h.update(np.ascontiguousarray(w.ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def job_meta(ckpt: Path, corpus: Path, opts: AblateOptions, windows=None, **options) -> dict:
    """What a result part records about its inputs: checkpoint, corpus and tokenizer (path,
    fingerprint), the options that decide the numbers (plus `options`), where the sample was taken
    (`sample`: "run", within the run's own windows, or "corpus", `sample_windows`) and, given the
    `windows`, their digest (`windows_digest`)."""
    from probe.ckpt_identity import checkpoint_identity

    tok = Path(getattr(opts, "tokenizer", None) or ckpt / "tokenizer.json")
    return {"checkpoint": checkpoint_identity(ckpt),  # with the weights sample: a part names the weights it saw
            "corpus": {"path": str(corpus.resolve()), "fingerprint": fingerprint(corpus)},
            # the file that turned the corpus into ids: it was in neither the part's record nor its key
            "tokenizer": {"path": str(tok.resolve()), "fingerprint": fingerprint(tok) if tok.is_file() else None},
            "options": {"max_tokens": opts.max_tokens, "domain_tokens": opts.domain_tokens, "seq_len": opts.seq_len,
                        "batch_size": opts.batch_size, "add_bos": opts.add_bos, "order": opts.order,
                        "dtype": opts.dtype or "float32", "gemm": opts.gemm} | options,
            # not an option: not in a part's key, so the command run again replaces the part it wrote before
            "sample": "run" if opts.within_run else "corpus"} | (
        {"windows_digest": windows_digest(windows)} if windows is not None else {})


def inputs_key(meta: dict) -> dict:
    """The inputs of `job_meta` as a result part's key takes them: by content, not path, so that the same
    command on a moved or copied run replaces its part instead of writing a second one beside it, with
    every row twice under one name (a sweep user's review)."""
    def content(d):
        return {k: v for k, v in (d or {}).items() if k != "path"}
    return {"checkpoint": content(meta["checkpoint"]), "corpus": content(meta["corpus"]),
            "tokenizer": content(meta.get("tokenizer"))}
