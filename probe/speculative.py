"""MTP speculative-decoding acceptance, measured by generating and recorded into a run.

    dsv3-probe spec                                   # bundled model; prompts cut from the bundled corpus
    dsv3-probe spec --ckpt CKPT --corpus DIR --out runs/x --prompt-tokens 32 --new-tokens 32 --max-prompts 64
    torchrun --nproc-per-node 2 -m probe spec --ckpt CKPT --out runs/x     # a sharded model; rank 0 writes

The `mtp` table of `record` measures teacher-forced agreement (the MTP head against the main
model on the corpus' own tokens). This measures what a server would see: each prompt (the first
`--prompt-tokens` tokens of a corpus document, BOS first) is continued greedily by
`model.generate.generate(..., mtp=True)`, where the MTP module drafts one token that the next main
forward pass verifies; greedy output is the same as without drafts, so only the number of forward
passes changes. Two tables are added to `--out` (a new run directory, or a recorded run whose
prompts then come from the same corpus):

- `spec_decode`: one row per prompt: tokens generated, main forward passes, drafts proposed and
  accepted, tokens per forward pass;
- `spec_drafts`: one row per verified draft: the generated position it was proposed for and
  whether it was accepted (acceptance by position, by domain, by token).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .corpus import CorpusError, CorpusStats, iter_documents
from .record import (DEFAULT_CKPT, DEFAULT_CORPUS, REPO, RecordError, _tokenizer, checkpoint_args,
                     checkpoint_fingerprint, init_world)
from .schema import TABLES
from .writer import RUN_JSON, read_run_json, write_json_atomic

SPEC_TABLES = ("spec_decode", "spec_drafts")


@dataclass
class SpecOptions:
    ckpt: str | None = None
    corpus: str | None = None
    out: str | None = None
    tokenizer: str | None = None
    prompt_tokens: int = 32
    new_tokens: int = 32
    max_prompts: int | None = 64
    batch_size: int = 8
    overwrite: bool = False
    dtype: str | None = None
    progress: bool = True


def _prompts(corpus: Path, tok, bos: int | None, n_tokens: int, limit: int | None) -> list[tuple[str, str, list[int]]]:
    """(doc_id, domain, prompt ids) for the first `limit` documents with at least `n_tokens` tokens.
    Documents are taken round-robin over domains, so a limit keeps every domain represented."""
    by_domain: dict[str, list[tuple[str, str, list[int]]]] = {}
    for doc in iter_documents(corpus, CorpusStats()):
        ids = tok.encode(doc.text, add_special_tokens=False).ids
        ids = ([bos] if bos is not None else []) + ids
        if len(ids) >= n_tokens:
            by_domain.setdefault(doc.domain, []).append((doc.doc_id, doc.domain, ids[:n_tokens]))
    out, lists = [], [by_domain[d] for d in sorted(by_domain)]
    for i in range(max((len(v) for v in lists), default=0)):
        out += [v[i] for v in lists if i < len(v)]
    return out[:limit] if limit else out


def _resolve(opts: SpecOptions) -> tuple[Path, Path, Path]:
    ckpt = Path(opts.ckpt) if opts.ckpt else DEFAULT_CKPT
    corpus = Path(opts.corpus) if opts.corpus else DEFAULT_CORPUS
    if not ckpt.is_dir() or not (ckpt / "config.json").exists():
        raise RecordError(f"--ckpt {ckpt}: not a checkpoint directory (no config.json)")
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    out = Path(opts.out) if opts.out else REPO / "runs" / f"{ckpt.name}-{corpus.stem}-spec"
    return ckpt, corpus, out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (out / RUN_JSON).exists():
        raise RecordError(f"--out {out} exists and is not a run directory (no run.json)")
    present = [t for t in SPEC_TABLES if (out / t).exists()]
    if present and not overwrite:
        raise RecordError(f"--out {out} already has {', '.join(present)}: pass --overwrite to replace them")


def _write_table(out: Path, table: str, columns: dict) -> None:
    """One part file per table, written under a temporary name and renamed: a reader sees all or nothing."""
    d = out / table
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.parquet"):
        old.unlink()
    tmp = d / f".part-0.parquet.tmp{os.getpid()}"
    pq.write_table(pa.table(columns, schema=TABLES[table]), tmp, compression="zstd")
    os.replace(tmp, d / "part-0.parquet")


def record_spec(opts: SpecOptions) -> Path:
    """Generate with MTP drafts and write `spec_decode` and `spec_drafts`; returns the run directory."""
    import model as model_pkg
    from model.generate import GenerateError, generate

    if opts.prompt_tokens < 1 or opts.new_tokens < 1 or opts.batch_size < 1:
        raise RecordError("--prompt-tokens, --new-tokens and --batch-size must be >= 1")
    if opts.max_prompts is not None and opts.max_prompts < 1:
        raise RecordError("--max-prompts must be >= 1")
    ckpt, corpus, out = _resolve(opts)
    args = checkpoint_args(ckpt)
    if opts.prompt_tokens + opts.new_tokens > args.max_seq_len:
        raise RecordError(f"--prompt-tokens + --new-tokens = {opts.prompt_tokens + opts.new_tokens} exceeds "
                          f"the model's max_seq_len {args.max_seq_len}")
    if args.n_mtp_layers < 1:
        raise RecordError(f"{ckpt}: the model has no MTP module (n_mtp_layers = 0): nothing to draft with")
    tok = _tokenizer(opts, ckpt, args.vocab_size)
    _check_out(out, opts.overwrite)
    prompts = _prompts(corpus, tok, args.bos_token_id, opts.prompt_tokens, opts.max_prompts)
    if not prompts:
        raise CorpusError(f"{corpus}: no document has {opts.prompt_tokens} tokens for a prompt")
    world = init_world()
    m = model_pkg.load(ckpt, dtype=getattr(torch, opts.dtype) if opts.dtype else torch.float32)
    if not len(m.mtp):
        raise RecordError(f"{ckpt}: the checkpoint holds no MTP weights (layer {args.n_layers}): nothing to draft with")
    stop = [args.eos_token_id] if args.eos_token_id is not None else []

    rows: dict[str, list] = {k: [] for k in TABLES["spec_decode"].names}
    drafts: dict[str, list] = {k: [] for k in TABLES["spec_drafts"].names}
    t0 = time.time()
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), unit="prompt", desc="spec decode", file=sys.stderr)
    try:
        for i in range(0, len(prompts), opts.batch_size):
            chunk = prompts[i:i + opts.batch_size]
            with torch.no_grad():
                res = generate(m, [p for _, _, p in chunk], max_new_tokens=opts.new_tokens, stop_ids=stop, mtp=True)
            for j, (doc_id, domain, p) in enumerate(chunk):
                rows["doc_id"].append(doc_id)
                rows["domain"].append(domain)
                rows["prompt_tokens"].append(len(p))
                rows["new_tokens"].append(len(res.tokens[j]))
                rows["forward_passes"].append(res.forward_passes[j])
                rows["drafts_proposed"].append(sum(res.drafts_proposed[j]))
                rows["drafts_accepted"].append(sum(res.drafts_accepted[j]))
                rows["tokens_per_forward"].append(res.tokens_per_forward[j])
                rows["finish_reason"].append(res.finish_reasons[j])
                for seq_index, token, accepted in res.drafts[j]:
                    drafts["doc_id"].append(doc_id)
                    drafts["domain"].append(domain)
                    drafts["position"].append(seq_index - len(p))
                    drafts["token"].append(token)
                    drafts["accepted"].append(bool(accepted))
            if bar is not None:
                bar.update(len(chunk))
    except GenerateError as e:
        raise RecordError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    if world.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_table(out, "spec_decode", rows)
        _write_table(out, "spec_drafts", drafts)
        proposed, accepted = sum(rows["drafts_proposed"]), sum(rows["drafts_accepted"])
        summary = {"prompts": len(prompts), "prompt_tokens": opts.prompt_tokens, "new_tokens": opts.new_tokens,
                   "generated": int(np.sum(rows["new_tokens"])), "forward_passes": int(np.sum(rows["forward_passes"])),
                   "drafts_proposed": proposed, "drafts_accepted": accepted,
                   "acceptance_rate": accepted / proposed if proposed else None,
                   "seconds": round(time.time() - t0, 2), "world_size": world.size}
        info = read_run_json(out) if (out / RUN_JSON).exists() else {
            "status": "complete", "format": 1, "kind": "spec",
            "checkpoint": {"path": str(ckpt.resolve()), "fingerprint": checkpoint_fingerprint(ckpt)},
            "corpus": {"path": str(corpus.resolve())}, "model_args": args.to_dict()}
        info["spec_decode"] = summary
        write_json_atomic(out / RUN_JSON, info)
    return out
