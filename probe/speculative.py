"""MTP speculative-decoding acceptance, measured by generating and recorded into a run.

    dsv3-probe spec                                   # bundled model; prompts cut from the bundled corpus
    dsv3-probe spec --ckpt CKPT --corpus DIR --out runs/x --prompt-tokens 32 --new-tokens 32 --max-prompts 64
    dsv3-probe spec --ckpt CKPT --corpus DIR --out runs/x --max-tokens 20000   # a token budget instead
    torchrun --nproc-per-node 2 -m probe spec --ckpt CKPT --out runs/x --model-parallel 2   # one sharded model
    torchrun --nproc-per-node 4 -m probe spec --ckpt CKPT --out runs/x --model-parallel 2   # 2 replicas of 2

The `mtp` table of `record` measures teacher-forced agreement (the MTP head against the main model
on the corpus' own tokens). This measures what a server would see: each prompt (the first
`--prompt-tokens` tokens of a corpus document, BOS first) is continued greedily by
`generate.generate(..., mtp=True)`, where the MTP module drafts one token that the next main forward
pass verifies; greedy output is the same as without drafts in float32 (the default), so only the
number of forward passes changes (with --dtype bfloat16 a 2-token verify pass rounds differently
from a 1-token step, and a near-tied argmax can flip: 3 of the bundled model's 64 default prompts
continued otherwise than plain greedy decoding, 2026-12-07). Prompts are taken round robin over the
corpus' domains (in name order), so a cap of at least one prompt per domain keeps every domain
represented (a smaller one is noted, with the domains it left out): `--max-prompts`, or
`--max-tokens`, a budget of prompt + generated tokens (N // (prompt-tokens + new-tokens) prompts;
when both are given the smaller cap wins). Two tables are added to `--out` (a new run directory, or
a recorded run whose prompts then come from the same corpus), and run.json's `spec_decode` summary
counts prompts and tokens per domain:

- `spec_decode`: one row per prompt: tokens generated, main forward passes, drafts proposed and
  accepted, tokens per forward pass;
- `spec_drafts`: one row per verified draft: the generated position it was proposed for and
  whether it was accepted (acceptance by position, by domain, by token).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .ckpt_identity import checkpoint_identity
from .corpus import CorpusError, CorpusStats, iter_documents
from .job import (RecordError, agree, check_out_parent, check_outside_corpus, check_run_place,
                  checkpoint_args, checkpoint_input, job_options, load_model, load_tokenizer, os_refusal, resolve_paths,
                  run_inputs, run_tokenizer, same_inputs, signals_held, start_world, stop_signals)
from .record import tokenizer_info
from .schema import TABLES
from .windows import text_pieces
from .writer import RUN_JSON, read_run_json, refuse_running, table_lock, updating_run_json

SPEC_TABLES = ("spec_decode", "spec_drafts")
DEFAULT_PROMPTS = 64  # prompts a job takes when neither --max-prompts nor --max-tokens is given


@dataclass
class SpecOptions:
    ckpt: str | None = None
    corpus: str | None = None
    out: str | None = None
    tokenizer: str | None = None
    prompt_tokens: int = 32
    new_tokens: int = 32
    # None (not given): DEFAULT_PROMPTS, unless max_tokens caps the prompts instead; 0: every document. As
    # the CLI's --max-prompts (a caller's max_tokens alone was capped at 64 prompts here and not there; a
    # tour); after __post_init__ the cap that applies: None for none
    max_prompts: int | None = None
    max_tokens: int | None = None  # a budget of prompt + new tokens (both caps apply: the smaller wins)
    batch_size: int = 8
    overwrite: bool = False
    dtype: str | None = None
    gemm: str = "bf16"
    device: str | None = None
    model_parallel: str | int = 1
    progress: bool = True
    # max_prompts is DEFAULT_PROMPTS because none was given (a note named '--max-prompts 64', a flag never typed)
    default_prompts: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_prompts is None:
            self.max_prompts = DEFAULT_PROMPTS if self.max_tokens is None else None
            self.default_prompts = self.max_prompts is not None
        elif self.max_prompts == 0:
            self.max_prompts = None


def spec_prompts(corpus: Path, tok, bos: int | None, n_tokens: int, limit: int | None,
                 stats: CorpusStats | None = None, short: list[str] | None = None,
                 capped: list[str] | None = None) -> list[tuple[str, str, list[int]]]:
    """(doc_id, domain, prompt ids) for the first `limit` documents with at least `n_tokens` tokens.
    Documents are taken round-robin over domains in name order, so a limit of at least one prompt per
    domain keeps every domain represented (every domain with a document that long: the others are
    appended to `short`; those a smaller limit left without a prompt, to `capped`). `stats` counts
    what the corpus reader replaced or skipped."""
    by_domain: dict[str, list[tuple[str, str, list[int]]]] = {}
    for doc in iter_documents(corpus, stats if stats is not None else CorpusStats()):
        prompts = by_domain.setdefault(doc.domain, [])
        if limit and len(prompts) >= limit:  # the first `limit` of the round robin take no more of one domain
            continue
        ids = [bos] if bos is not None else []
        for piece in text_pieces(doc.text):  # a prompt needs only the head of a long document
            ids += tok.encode(piece, add_special_tokens=False).ids
            if len(ids) >= n_tokens:
                break
        if len(ids) >= n_tokens:
            prompts.append((doc.doc_id, doc.domain, ids[:n_tokens]))
    if short is not None:
        short += [d for d in sorted(by_domain) if not by_domain[d]]
    out, lists = [], [by_domain[d] for d in sorted(by_domain)]
    for i in range(max((len(v) for v in lists), default=0)):
        out += [v[i] for v in lists if i < len(v)]
    out = out[:limit] if limit else out
    if capped is not None:
        kept = {p[1] for p in out}
        capped += [d for d in sorted(by_domain) if by_domain[d] and d not in kept]
    return out


def _check_out(out: Path, overwrite: bool, corpus: Path) -> None:
    check_out_parent(out)
    check_outside_corpus(out, corpus, "the tables")  # they were read as documents of the corpus (a tour)
    check_run_place(out)
    if out.exists() and any(out.iterdir()) and not (out / RUN_JSON).exists():
        raise RecordError(f"--out {out} exists and is not a run directory (no run.json)")
    if (out / RUN_JSON).exists():  # a record still writing it would commit its run.json over spec's entry
        refuse_running(out, read_run_json(out), RecordError)
    present = [t for t in SPEC_TABLES if (out / t).exists()]
    if present and not overwrite:
        raise RecordError(f"--out {out} already has {', '.join(present)}: pass --overwrite to replace them")


def _write_tables(out: Path, tables: dict[str, dict], commit) -> None:
    """Each table as one part file, `part-0.parquet`, replacing the table's old parts: first every
    table under a temporary name (a failure removes them and leaves the run as it was), then, with
    Ctrl-C, SIGTERM and SIGHUP held off (`stop_signals`), the renames and `commit()` (run.json), so the
    tables and the summary change together; a Ctrl-C during them takes effect after, when the job is
    done anyway, and a SIGTERM or SIGHUP ends the process after (held only from Ctrl-C, one between the
    renames left the new spec_decode beside the old spec_drafts and the old summary; a tour)."""
    tmps = {t: out / t / f".part-0.parquet.tmp{os.getpid()}" for t in tables}
    try:
        for t, columns in tables.items():
            tmps[t].parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(columns, schema=TABLES[t]), tmps[t], compression="zstd")
        try:  # two specs into one run take turns here: their tables and summaries pair up
            with signals_held(*stop_signals()), table_lock(out, "spec_decode"):
                for t, tmp in tmps.items():
                    os.replace(tmp, out / t / "part-0.parquet")
                    for old in (out / t).glob("*.parquet"):
                        if old.name != "part-0.parquet":
                            old.unlink()
                commit()
        except KeyboardInterrupt:  # pressed during the commit, delivered after it: the job has finished
            pass
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def record_spec(opts: SpecOptions) -> Path:
    """Generate with MTP drafts and write `spec_decode` and `spec_drafts`; returns the run directory.
    Under torchrun, batches of prompts go round robin to the replicas (each one model, sharded over
    --model-parallel ranks); rank 0 gathers the rows and writes."""
    from generate import GenerateError
    from generate.text import stop_ids

    _check_numbers(opts)
    ckpt, corpus, tokenizer = _run_defaults(opts)
    ckpt, corpus, out = resolve_paths(ckpt, corpus, opts.out, suffix="-spec")
    if not corpus.exists():
        raise CorpusError(f"--corpus {corpus}: corpus not found")
    args = checkpoint_args(ckpt)
    if opts.prompt_tokens + opts.new_tokens > args.max_seq_len:
        raise RecordError(f"--prompt-tokens + --new-tokens = {opts.prompt_tokens + opts.new_tokens} exceeds "
                          f"the model's max_seq_len {args.max_seq_len}")
    if opts.prompt_tokens < 2 and args.bos_token_id is not None:  # every prompt was [BOS], silently (a bug hunt)
        raise RecordError(f"--prompt-tokens {opts.prompt_tokens}: must be >= 2 (BOS included: a prompt of 1 token "
                          "is the model's BOS alone, the same for every document)")
    if args.n_mtp_layers < 1:
        raise RecordError(f"{ckpt}: the model has no MTP module (n_mtp_layers = 0): nothing to draft with")
    tok = load_tokenizer(tokenizer, ckpt, args.vocab_size)
    world = start_world(opts.model_parallel, opts.device, args, job_options(opts))
    agree(world, lambda: _check_out(out, opts.overwrite, corpus))
    stats, short, capped = CorpusStats(), [], []
    prompts = spec_prompts(corpus, tok, args.bos_token_id, opts.prompt_tokens, prompt_limit(opts), stats, short,
                           capped)
    for note in _prompt_notes(opts, prompts, short, capped) + stats.notes() if world.rank == 0 else ():
        print(note, file=sys.stderr)  # run.json's spec_decode lists the corpus reader's
    if not prompts:
        raise CorpusError(f"{corpus}: no document has {opts.prompt_tokens} tokens for a prompt")
    same_inputs(world, {"--ckpt": checkpoint_input(ckpt),
                        "--corpus": (corpus, "gives other prompts (its text, or the tokenizer, differs)",
                                     lambda: hashlib.sha256(json.dumps(prompts).encode()).hexdigest())})
    try:  # before the model loads: a generation_config.json that names no ids is refused at once
        stops = stop_ids(ckpt, args, tok)
    except GenerateError as e:
        raise RecordError(str(e)) from None
    m = load_model(ckpt, world, dtype=opts.dtype, gemm=opts.gemm)
    if not len(m.mtp):
        raise RecordError(f"{ckpt}: the checkpoint holds no MTP weights (layer {args.n_layers}): nothing to draft with")
    t0 = time.time()
    try:
        mine = _generate(m, prompts, opts, world, stops)
    except GenerateError as e:
        raise RecordError(str(e)) from None
    parts = world.gather_leaders(mine)

    def write() -> None:  # rank 0
        rows, drafts = _tables(prompts, sorted((i, r) for part in parts for i, r in part))
        with os_refusal(f"--out {out}: cannot write the spec tables there"):
            _write_run(out, rows, drafts, opts, (ckpt, corpus, tokenizer), args, world, time.time() - t0, stats)

    agree(world, write)  # every rank ends the same way: done, or the same one-line error
    return out


def _check_numbers(opts: SpecOptions) -> None:
    """The numeric options, each out of range refused with its flag and value (the three sizes were
    refused in one message naming all three; a tour)."""
    for flag, n in (("--prompt-tokens", opts.prompt_tokens), ("--new-tokens", opts.new_tokens),
                    ("--batch-size", opts.batch_size)):
        if n < 1:
            raise RecordError(f"{flag} {n}: must be >= 1")
    if opts.max_prompts is not None and opts.max_prompts < 1:
        raise RecordError("--max-prompts must be >= 1 (or 0: every document)")
    per_prompt = opts.prompt_tokens + opts.new_tokens
    if opts.max_tokens is not None and opts.max_tokens < per_prompt:
        raise RecordError(f"--max-tokens {opts.max_tokens}: less than one prompt's --prompt-tokens + --new-tokens "
                          f"= {per_prompt}")


def _prompt_notes(opts: SpecOptions, prompts: list, short: list[str], capped: list[str]) -> list[str]:
    """The notes on the domains without a prompt: `short` (no document of --prompt-tokens tokens) and
    `capped` (left out by a cap below one prompt per domain, which the round robin fills in domain-name
    order: the last ones were missing from the run without a word; a tour)."""
    notes = []
    if short and prompts:
        notes.append(f"note: no document of {', '.join(short)} has {opts.prompt_tokens} tokens for a prompt "
                     f"(--prompt-tokens): no prompt from {'that domain' if len(short) == 1 else 'those domains'}")
    if capped:
        notes.append(_cap_note(opts, len({p[1] for p in prompts}) + len(capped), capped))
    return notes


def _cap_note(opts: SpecOptions, n: int, capped: list[str]) -> str:
    """The note on the domains `capped` left without a prompt of `n` that have one: the cap that bound
    (both when they allow as many prompts) and what covers every domain."""
    per_prompt, limit, caps = opts.prompt_tokens + opts.new_tokens, prompt_limit(opts), []
    if opts.max_prompts is not None and opts.max_prompts == limit:
        caps.append(("--max-prompts", opts.max_prompts, n))
    if opts.max_tokens is not None and opts.max_tokens // per_prompt == limit:
        caps.append(("--max-tokens", opts.max_tokens, n * per_prompt))
    more = ", ..." if len(capped) > 3 else ""
    said = [f"the default of {cap} prompts ({flag})" if flag == "--max-prompts" and opts.default_prompts
            else f"{flag} {cap}" for flag, cap, _ in caps]
    return (f"note: {' and '.join(said)} left {len(capped)} of {n} domains "
            f"without a prompt ({', '.join(capped[:3])}{more}): prompts are taken round robin over the domains in "
            f"name order; pass {' and '.join(f'a {flag} of at least {e}' for flag, _, e in caps)} to cover every "
            "domain")


def prompt_limit(opts: SpecOptions) -> int | None:
    """How many prompts the job takes: the smaller of --max-prompts and the prompts whose prompt + new
    tokens fit in --max-tokens (None: every document)."""
    caps = [c for c in (opts.max_prompts,
                        None if opts.max_tokens is None else opts.max_tokens // (opts.prompt_tokens + opts.new_tokens))
            if c is not None]
    return min(caps) if caps else None


def _generate(m, prompts, opts: SpecOptions, world, stop: list[int]) -> list[tuple[int, dict]]:
    """This replica's share: batches b, b+R, ... of the prompts -> [(prompt index, result)]."""
    from generate import generate

    batches = [list(range(i, min(i + opts.batch_size, len(prompts)))) for i in range(0, len(prompts), opts.batch_size)]
    mine = [b for j, b in enumerate(batches) if j % world.replicas == world.replica]
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=sum(map(len, mine)), unit="prompt", desc="spec decode", file=sys.stderr)
    done = []
    try:
        for idx in mine:
            with torch.no_grad():
                res = generate(m, [prompts[i][2] for i in idx], max_new_tokens=opts.new_tokens, stop_ids=stop, mtp=True)
            for j, i in enumerate(idx):
                done.append((i, {"tokens": res.tokens[j], "forward_passes": res.forward_passes[j],
                                 "proposed": sum(res.drafts_proposed[j]), "accepted": sum(res.drafts_accepted[j]),
                                 "per_forward": res.tokens_per_forward[j], "finish": res.finish_reasons[j],
                                 "drafts": res.drafts[j]}))
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return done


def _tables(prompts, results) -> tuple[dict, dict]:
    """Rows of spec_decode and spec_drafts, in prompt order."""
    rows: dict[str, list] = {k: [] for k in TABLES["spec_decode"].names}
    drafts: dict[str, list] = {k: [] for k in TABLES["spec_drafts"].names}
    for i, r in results:
        doc_id, domain, p = prompts[i]
        for k, v in (("doc_id", doc_id), ("domain", domain), ("prompt_tokens", len(p)),
                     ("new_tokens", len(r["tokens"])), ("forward_passes", r["forward_passes"]),
                     ("drafts_proposed", r["proposed"]), ("drafts_accepted", r["accepted"]),
                     ("tokens_per_forward", r["per_forward"]), ("finish_reason", r["finish"])):
            rows[k].append(v)
        for seq_index, token, accepted in r["drafts"]:
            for k, v in (("doc_id", doc_id), ("domain", domain), ("position", seq_index - len(p)),
                         ("token", token), ("accepted", bool(accepted))):
                drafts[k].append(v)
    return rows, drafts


def _per_domain(domains: list[str], values) -> dict[str, int]:
    """domain -> the sum of `values` over the rows of that domain (domains and values row by row)."""
    out: dict[str, int] = {}
    for domain, v in zip(domains, values):
        out[domain] = out.get(domain, 0) + int(v)
    return dict(sorted(out.items()))


def _run_defaults(opts: SpecOptions) -> tuple[str | None, str | None, str | None]:
    """--ckpt, --corpus and --tokenizer, each defaulting to the run's own when --out is an earlier run
    (which the spec tables join; `probe.job.run_inputs` says what is refused): the tokenizer a record
    was given with --tokenizer, as ablate, importance and steer take it (spec looked for the
    checkpoint's tokenizer.json instead, and stopped where there was none; a tour)."""
    if not (opts.out and (Path(opts.out) / RUN_JSON).exists()):
        return opts.ckpt, opts.corpus, opts.tokenizer
    info = read_run_json(Path(opts.out))
    ckpt, corpus = run_inputs(info, f"--out {opts.out}", opts.ckpt, opts.corpus, run=opts.out)
    return ckpt, corpus, opts.tokenizer or run_tokenizer(info, f"--out {opts.out}", ckpt=ckpt)


def _write_run(out: Path, rows: dict, drafts: dict, opts: SpecOptions, sources: tuple, args, world,
               seconds: float, stats: CorpusStats) -> None:
    """`sources`: the checkpoint, the corpus and the tokenizer (--tokenizer or the run's; None: the
    checkpoint's own)."""
    ckpt, corpus, tokenizer = sources
    out.mkdir(parents=True, exist_ok=True)
    proposed, accepted = sum(rows["drafts_proposed"]), sum(rows["drafts_accepted"])
    summary = {"prompts": len(rows["doc_id"]), "prompt_tokens": opts.prompt_tokens, "new_tokens": opts.new_tokens,
               "generated": int(np.sum(rows["new_tokens"])), "forward_passes": int(np.sum(rows["forward_passes"])),
               "drafts_proposed": proposed, "drafts_accepted": accepted,
               "acceptance_rate": accepted / proposed if proposed else None,
               # tokens a verifying pass yields on average (one MTP draft a pass: 1 + acceptance rate), as
               # the metric is defined: a prompt's last pass may yield one fewer, cut at --new-tokens
               "mean_acceptance_length": 1 + accepted / proposed if proposed else None,
               "max_prompts": opts.max_prompts, "max_tokens": opts.max_tokens,
               "prompts_per_domain": _per_domain(rows["domain"], [1] * len(rows["domain"])),
               "tokens_per_domain": _per_domain(rows["domain"], np.add(rows["prompt_tokens"], rows["new_tokens"])),
               "seconds": round(seconds, 2), "world_size": world.size, "world": world.describe(),
               "dtype": opts.dtype or "float32", "gemm": opts.gemm,
               "checkpoint": str(ckpt.resolve()), "corpus": str(corpus.resolve()),
               "replaced_bytes": stats.replaced_bytes, "skipped_binary_files": stats.skipped_binary[:100]}
    # the checkpoint's record for a run of spec's own (each weight file's header read to make it): a new
    # one, or a spec-only run whose tables this command replaces; another kind of run keeps its own
    own = not (out / RUN_JSON).exists() or read_run_json(out).get("kind") == "spec"
    inputs = {"checkpoint": checkpoint_identity(ckpt), "corpus": {"path": str(corpus.resolve())},
              "model_args": args.to_dict(),
              # the tokenizer as a record keeps it (`probe.job.run_tokenizer` takes it, the dashboard decodes
              # with it): a plain --overwrite, and the jobs on the run, took the checkpoint's instead of the
              # --tokenizer given (a review); none given: the checkpoint's own, which follows --ckpt
              "tokenizer": tokenizer_info(tokenizer, ckpt),
              "options": {"tokenizer": str(Path(tokenizer).resolve()) if tokenizer else None}} if own else {}

    def new() -> dict:
        return {"status": "complete", "format": 1, "kind": "spec", **inputs, "tables": []}

    def commit() -> None:
        with updating_run_json(out, new) as info:  # locked: an ablation may note its part at the same time
            if info.get("kind") == "spec":  # --overwrite with another --ckpt left run.json naming the old
                info.update(inputs)  # model, which the next plain --overwrite went back to (a review)
            info["spec_decode"] = summary
            tables = info.setdefault("tables", [])
            tables += [t for t in SPEC_TABLES if t not in tables]

    _write_tables(out, {"spec_decode": rows, "spec_drafts": drafts}, commit)
