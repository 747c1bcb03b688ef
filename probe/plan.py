"""`dsv3-probe record --dry-run`: everything a record run would check, and what it will cost per
rank, without loading a weight.

    dsv3-probe record --ckpt DeepSeek-V3/ --dry-run --world-size 8 --model-parallel auto --gemm fp8 \\
        --dtype bfloat16 --device-memory 141 --device cuda

Checked: the options, the checkpoint (every tensor's name, shape and dtype from the safetensors
headers; or, while shard files are missing, the index's names and the headers of the shards
already there), that --model-parallel divides the world and the model's heads/experts/vocabulary (and
that FP8 shards align to their blocks), the output directory, and the corpus (tokenised and
counted). Printed per rank: weight bytes (FP8 resident or dequantised), the latent KV cache for
--batch-size x --seq-len, an estimate of a forward pass's peak activations (model/memory.py), the
table bytes per 1M tokens for the chosen --router-logits and the expected run size on disk.
Table bytes are measured by writing synthetic rows with the run's schema and compression.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from model.checkpoint import FP8_RESIDENT

from .job import RecordError, check_model_flags, compute_dtype, flag_advice, packed_copy_bytes
from .job_exit import launch_rank0
from .recorders import list_array
from .schema import TABLES
from .stats import state_bytes
from .writer import parquet_options

GB = 1e9


def dry_run(job, opts) -> dict:
    """Check and plan a record job (see the module docstring); prints the plan, returns it."""
    from .record import check_out, count_corpus

    args = job.args
    world, mp = _world_plan(args, opts)
    ck, dtype = _inspect_checkpoint(job, opts)
    check_out(job.out, opts, job.corpus, job.ckpt)
    corpus = count_corpus(job, opts)
    mtp = bool(opts.mtp and ck["mtp"])
    args.n_mtp_layers = ck["mtp"]
    dev, weights, act, kv = _memory_plan(args, opts, mp, dtype, mtp)
    per_token = table_bytes_per_token(args, opts, mtp)
    plan = {"world_size": world, "model_parallel": mp, "replicas": world // mp, "device": dev, "checkpoint": ck,
            "corpus": {"tokens": corpus.tokens, "windows": corpus.windows, "per_domain": corpus.per_domain},
            "weights": weights, "kv_cache": kv, "activations": act, "table_bytes_per_token": per_token}
    _add_totals(plan, job, opts, corpus.tokens)
    if launch_rank0():  # under torchrun every rank plans the same; rank 0 prints it
        print(format_dry_run(job, opts, plan))
        for note in corpus.stats.notes():  # what the record would say of its corpus: skipped files, a cap
            print(note, file=sys.stderr)  # that leaves domains out (a review)
    return plan


def _world_plan(args, opts) -> tuple[int, int]:
    """dry_run's first step: the ranks to plan for (--world-size, else torchrun's), --device-memory
    checked, and the model-parallel size, checked against the model; (world, model parallel)."""
    from model.parallel import check_world, env_world_size, model_parallel_flag, model_parallel_size

    world = opts.world_size if opts.world_size is not None else env_world_size()
    if world < 1:
        raise RecordError(f"--world-size {world} must be >= 1")
    if opts.device_memory is not None and not opts.device_memory > 0:
        raise RecordError(f"--device-memory {opts.device_memory:g}: must be > 0 (GB per rank)")
    if opts.device_memory is not None and opts.device_memory == float("inf"):  # "fits inf GB with inf GB to spare"
        raise RecordError(f"--device-memory {opts.device_memory:g}: must be a finite number of GB per rank")
    given = (f"--world-size {world}" if opts.world_size is not None else None if "WORLD_SIZE" in os.environ
             else "no --world-size given: pass the ranks to plan for")  # outside torchrun: no process to speak of
    mp = model_parallel_size(opts.model_parallel, world, given)
    check_world(args, mp, model_parallel_flag(opts.model_parallel))
    return world, mp


def _inspect_checkpoint(job, opts) -> tuple[dict, torch.dtype]:
    """dry_run's second step: --dtype and --gemm checked, and the checkpoint read from its headers
    (no weight loaded); (what model.checkpoint.inspect says of it, the compute dtype)."""
    from model.checkpoint import CheckpointError, inspect

    check_model_flags(opts.dtype, opts.gemm)
    dtype = compute_dtype(opts.dtype)
    try:
        return inspect(job.ckpt, gemm_impl=opts.gemm, dtype=dtype), dtype
    except CheckpointError as e:
        raise RecordError(str(e)) from None


def _memory_plan(args, opts, mp: int, dtype: torch.dtype, mtp: bool) -> tuple[str, dict, dict, dict]:
    """dry_run's memory step: the device planned for, and per rank the weights' bytes, a forward pass's
    activations and the KV cache; (device, weights, activations, KV cache)."""
    from model.memory import forward_plan, kv_cache_bytes, shard_plan

    with flag_advice():  # shard_plan also checks FP8 block alignment
        weights = shard_plan(args, mp, fp8=opts.gemm in FP8_RESIDENT, dtype=dtype,
                             quantised_activations=opts.gemm == "fp8")
    caps = capture_bytes(args, opts, dtype)
    # the head's blocks depend on the device; the torch twin of the FP8 GEMM (gemm fp8) runs on a CPU,
    # where it dequantises the weight and copies its input in float32/float64; on a GPU the Triton
    # GEMM reads the FP8 weight as it is (gemm fp8-weights dequantises the weight on both)
    dev = plan_device(opts.device)
    if dev == "cpu":  # a mistyped DSV3_ONEDNN / DSV3_GEMM_CACHE, which the record itself refuses
        from model import gemm

        gemm.check_env()
    twin = dev == "cpu"
    act = forward_plan(args, model_parallel=mp, batch=opts.batch_size, seq_len=opts.seq_len, dtype=dtype,
                       dequantised=weights["largest_fp8_weight_bytes"] if twin or opts.gemm != "fp8" else 0,
                       mtp=mtp, captures=caps, head_stats=dev,
                       fp8_twin_per_token=weights["fp8_twin_bytes_per_token"] if twin else 0)
    return dev, weights, act, kv_cache_bytes(args, opts.batch_size, opts.seq_len, dtype, mtp)


def _add_totals(plan: dict, job, opts, tokens: int) -> None:
    """dry_run's last step: the plan's totals (bytes per rank, the run's size on disk) and its verdict,
    "fits", added to `plan`."""
    weights, args = plan["weights"], job.args
    # float32 on a CPU: the jobs pack a copy of the weights for oneDNN where it fits in half the memory
    # available (probe.job.packed_copy_bytes, which they ask too); left out of the plan, the measured
    # peak was twice it (a review)
    cpu = plan["device"] == "cpu"
    weights["packed_bytes"] = packed_copy_bytes(weights["float32_per_rank_bytes"]) if cpu else 0
    plan["per_rank"] = (weights["per_rank_bytes"] + weights["absorb_dense_bytes"] + weights["packed_bytes"]
                        + plan["activations"]["peak"])
    # each writer's accumulator state (`_progress/*.npz`), whatever the token count: 128 MB per writer for
    # DeepSeek-V3, and a fifth of a small run of the bundled model (it was left out of the size)
    plan["state_bytes"] = plan["replicas"] * state_bytes(args.n_layers, args.kv_lora_rank)
    plan["run_bytes"] = int(sum(plan["table_bytes_per_token"].values()) * tokens) + plan["state_bytes"]
    # what the command's exit status says (1: does not fit): --device-memory per rank, the disk at --out
    plan["fits"] = ((opts.device_memory is None or plan["per_rank"] <= opts.device_memory * GB)
                    and shutil.disk_usage(_existing(job.out)).free > plan["run_bytes"])


def capture_bytes(args, opts, dtype: torch.dtype) -> dict:
    """Bytes the recorder holds until a forward pass ends (its hooks' captures), per rank that writes."""
    T = opts.batch_size * opts.seq_len
    n_moe = sum(args.is_moe_layer(i) for i in range(args.n_layers))
    K, E = args.n_activated_experts, args.n_routed_experts
    out = {"routing": n_moe * T * (K * 8 + K * 4 + (K + 1) * 4)}  # ids int64, weights, best K+1 allowed
    if opts.router_logits == "full":
        out["scores"] = n_moe * T * E * 4
    if opts.kv_stats:
        out["latents"] = args.n_layers * T * (args.kv_lora_rank + args.qk_rope_head_dim) * (torch.finfo(dtype).bits // 8)
    return out


def plan_device(device: str | None) -> str:
    """The device type the planned run computes on: --device's, else what `auto` picks here (CUDA
    when torch sees a GPU). Plan GPU runs from a machine without one with --device cuda."""
    from model.parallel import ParallelError
    from model.ranks import device_type

    try:  # as the job reads it: a plan for the CPU under a mistyped GPU passed (a review)
        return device_type(device)
    except ParallelError as e:
        raise RecordError(str(e)) from None


def table_bytes_per_token(args, opts, mtp: bool, tokens: int | None = None) -> dict[str, float]:
    """Bytes on disk per recorded token of each streamed table, measured by writing synthetic rows
    (random expert ids and weights, as incompressible as real ones) with the run's Parquet options.
    Each table has its own sample: routing's shrinks as its rows widen (a 671B run's full scores),
    tokens' and mtp's does not, and expert_load's is whole batches (a row per batch, layer, expert
    and domain, whatever the batch's size): when every table shared routing's sample, `--router-logits
    full` made expert_load 15x larger than it is, and a larger --batch-size changed nothing (a review)."""
    n_moe = sum(args.is_moe_layer(i) for i in range(args.n_layers))
    width = args.n_routed_experts if opts.router_logits == "full" else args.n_activated_experts
    routed = tokens or int(max(256, min(4096, 2_000_000 // max(1, n_moe * width))))
    plain = tokens or 4096
    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        def measure(name: str, cols: dict, n_tokens: int) -> None:
            f = Path(d) / f"{name}.parquet"
            pq.write_table(pa.table(cols, schema=TABLES[name]), f, **parquet_options(TABLES[name]))
            out[name] = f.stat().st_size / n_tokens

        seq, pos = _positions(plain, opts.seq_len)
        measure("tokens", _tokens_rows(rng, seq, pos, args.vocab_size), plain)
        if opts.router_logits != "none" and n_moe:
            measure("routing", _routing_rows(rng, *_positions(routed, opts.seq_len), n_moe, args, opts), routed)
        if n_moe:
            batches = 4
            measure("expert_load", _load_rows(rng, batches, n_moe, args, opts),
                    batches * opts.batch_size * opts.seq_len)
        if mtp:
            measure("mtp", _mtp_rows(rng, seq, pos, args.vocab_size), plain)
    return out


def _positions(tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(seq_id, pos) of `tokens` tokens in windows of `seq_len`."""
    S = min(seq_len, tokens)
    return np.arange(tokens) // S, (np.arange(tokens) % S).astype(np.int32)


def _tokens_rows(rng, seq, pos, vocab) -> dict:
    n = len(seq)
    return {"doc_id": [f"docs/{s // 4:06d}.txt" for s in seq], "seq_id": seq, "pos": pos,
            "doc_pos": pos.astype(np.int64), "token_id": rng.integers(0, vocab, n).astype(np.int32),
            "domain": [f"d{s % 5}" for s in seq // 64], "loss": rng.gamma(2.0, 1.5, n).astype(np.float32)}


def _routing_rows(rng, seq, pos, n_moe: int, args, opts) -> dict:
    n, K, E = len(seq), args.n_activated_experts, args.n_routed_experts
    rows = n * n_moe
    ids = _distinct_ids(rng, rows, E, K)
    w = rng.random((rows, K)).astype(np.float32)
    cols = {"seq_id": np.tile(seq, n_moe), "pos": np.tile(pos, n_moe),
            "layer": np.repeat(np.arange(n_moe, dtype=np.int16), n),
            "expert_ids": list_array(ids, K, pa.uint16()), "expert_weights": list_array(w, K, pa.float32()),
            "margin_k": rng.random(rows).astype(np.float32) * 0.1, "margin_1": rng.random(rows).astype(np.float32)}
    if opts.router_logits == "full":
        keep = rng.random(rows) < opts.sample
        cols["scores"] = list_array(rng.random((rows, E)).astype(np.float32), E, pa.float32(), keep)
    else:
        cols["scores"] = pa.nulls(rows, pa.list_(pa.float32()))
    return cols


def _distinct_ids(rng, rows: int, E: int, K: int) -> np.ndarray:
    """rows x K distinct expert ids in [0, E), uniformly random: K draws per row, rows with a repeat drawn
    again (a full argsort of rows x E randoms took 4 s of a 671B dry run)."""
    if E < 2 * K:  # repeats too likely for redrawing to converge fast; E is small, so sorting is cheap
        return np.argsort(rng.random((rows, E)), axis=1)[:, :K].astype(np.uint16)
    ids = rng.integers(0, E, (rows, K))
    redo = np.arange(rows)
    while len(redo):
        s = np.sort(ids[redo], axis=1)
        redo = redo[(s[:, 1:] == s[:, :-1]).any(axis=1)]
        ids[redo] = rng.integers(0, E, (len(redo), K))
    return ids.astype(np.uint16)


def _load_rows(rng, batches: int, n_moe: int, args, opts) -> dict:
    """expert_load of `batches` batches: a row per (batch, layer, expert, domain present in the batch);
    2 domains a batch."""
    E = args.n_routed_experts
    rows = batches * n_moe * E * 2
    return {"step": np.repeat(np.arange(batches, dtype=np.int64), rows // batches),
            "layer": np.tile(np.repeat(np.arange(n_moe, dtype=np.int16), E * 2), batches),
            "expert": np.tile(np.arange(E, dtype=np.int32), rows // E), "domain": ["a", "b"] * (rows // 2),
            "count": rng.poisson(8, rows).astype(np.int64), "weight_sum": rng.random(rows) * 8,
            "tokens": np.full(rows, opts.batch_size * opts.seq_len, np.int64)}


def _mtp_rows(rng, seq, pos, vocab) -> dict:
    n = len(seq)
    a, b = rng.integers(0, vocab, n).astype(np.int32), rng.integers(0, vocab, n).astype(np.int32)
    return {"seq_id": seq, "pos": pos, "domain": ["d0"] * n, "mtp_top1": a, "main_top1": b, "agree": a == b,
            "target": b, "mtp_loss": rng.gamma(2.0, 1.5, n).astype(np.float32)}


# ------------------------------------------------------------------------------ printing
def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if abs(n) >= 0.01 * GB else f"{n / 1e6:.1f} MB"


def format_dry_run(job, opts, p: dict) -> str:
    ck, w, act = p["checkpoint"], p["weights"], p["activations"]
    a = job.args
    lines = [f"dry run: {job.ckpt} ({a.n_layers} layers, {a.n_routed_experts} experts, vocab {a.vocab_size}"
             f"{', MTP' if ck['mtp'] else ''}{', FP8 checkpoint' if ck['fp8'] else ''}, {_rope(a)})"]
    if ck["checked"] == "index":
        # not downloaded: absent, or a file aria2c is still filling (model.checkpoint.inspect)
        lines.append(f"  checkpoint: {len(ck['missing_files'])} of {len(ck['files'])} shard files are not downloaded "
                     f"yet (e.g. {ck['missing_files'][0]}); checked the {ck['tensors']:,} names of "
                     "model.safetensors.index.json against the config, and the headers of the "
                     f"{len(ck['files']) - len(ck['missing_files'])} downloaded")
    else:
        lines.append(f"  checkpoint: every tensor's name, shape and dtype checked against config.json "
                     f"({len(ck['files'])} file{'s' if len(ck['files']) != 1 else ''}, headers only)")
    est = "" if job.tok is not None else (" (ESTIMATED at 4 UTF-8 bytes per token: no tokenizer.json in the "
                                          "checkpoint; pass --tokenizer for exact counts)")
    lines.append(f"  corpus: {job.corpus}: {p['corpus']['tokens']:,} tokens in {p['corpus']['windows']:,} windows "
                 f"of <= {opts.seq_len} ({', '.join(f'{d} {n:,}' for d, n in sorted(p['corpus']['per_domain'].items()))})"
                 + est)
    lines.append(f"  world: {p['world_size']} rank(s) = {p['replicas']} replica(s) x {p['model_parallel']} "
                 f"(--model-parallel); output {job.out}")
    how = "FP8 resident (1 byte + block scales)" if opts.gemm in FP8_RESIDENT else f"dequantised to {opts.dtype or 'float32'}"
    lines.append(f"  per rank (every rank holds the same share; weights {how}; computing on "
                 f"{p['device']}{'' if opts.device in ('cpu', 'cuda') else ', as --device auto picks here'}):")
    rows = [("weights", w["per_rank_bytes"], f"sharded {_gb(w['sharded_per_rank_bytes'])} + replicated "
                                             f"{_gb(w['replicated_bytes'])}")]
    if w["absorb_dense_bytes"]:
        rows.append(("wkv_b dequantised", w["absorb_dense_bytes"], "absorbed attention keeps it (model/mla.py)"))
    if w.get("packed_bytes"):
        rows.append(("packed for oneDNN", w["packed_bytes"], "a copy of the float32 weights, pre-packed for the CPU's "
                                                             "oneDNN GEMMs (model/frozen.py); at most this much"))
    rows += [("activations (est.)", act["peak"],
              f"head block {_gb(act['logits'])}, largest layer {_gb(act['largest_layer'])}, residual "
              f"{_gb(act['residual'])}, recorder captures {_gb(act['captures'])}"
              + (f", largest FP8 weight dequantised {_gb(act['dequantised_weight'])}"
                 if act.get("dequantised_weight") else "")
              + (f", its activations in the CPU's FP8 GEMM {_gb(act['fp8_twin_activations'])}"
                 if act.get("fp8_twin_activations") else ""))]
    for name, n, note in rows:
        lines.append(f"    {name:<20} {_gb(n):>10}   {note}")
    lines.append(f"    {'total':<20} {_gb(p['per_rank']):>10}   ranks 0..{p['world_size'] - 1}")
    lines.append(f"    {'(KV cache)':<20} {_gb(p['kv_cache']):>10}   latent cache for {opts.batch_size} x {opts.seq_len} "
                 "positions, as `spec` or a decode holds it (a record prefill keeps none)")
    if opts.device_memory:
        cap = opts.device_memory * GB
        left = cap - p["per_rank"]
        advice = _advice(opts, p["model_parallel"], p["world_size"])
        lines.append(f"  fits {opts.device_memory:g} GB per rank with {_gb(left)} to spare" if left >= 0 else
                     f"  does NOT fit {opts.device_memory:g} GB per rank: {_gb(-left)} short ({advice})")
    per_m = {t: b * 1e6 for t, b in p["table_bytes_per_token"].items()}
    lines.append(f"  tables per 1M tokens (--router-logits {opts.router_logits}"
                 f"{f', --sample {opts.sample:g}' if opts.router_logits == 'full' else ''}): "
                 + ", ".join(f"{t} {_gb(b)}" for t, b in per_m.items()) + f"; total {_gb(sum(per_m.values()))}")
    free = shutil.disk_usage(_existing(job.out)).free
    lines.append(f"  expected run size: {_gb(p['run_bytes'])} for {p['corpus']['tokens']:,} tokens, the latent "
                 f"statistics' running sums {_gb(p['state_bytes'])} of it "
                 f"({_gb(free)} free there{'' if free > p['run_bytes'] else ': NOT ENOUGH'})")
    lines.append("  nothing loaded, nothing written: drop --dry-run to record")
    return "\n".join(lines)


def _rope(a) -> str:
    """The RoPE the config gives. A config.json without rope_scaling reads as plain RoPE (as transformers
    reads it), which changes every attention score of a DeepSeek-V3 (YaRN's softmax scale is 1.87x at factor
    40) without a word (a checkpoint tour): the plan says which it is."""
    if a.yarn:
        return f"YaRN x{a.rope_factor:g} over {a.original_seq_len:,} positions"
    return "plain RoPE: no YaRN rope_scaling in config.json"


def _advice(opts, model_parallel: int = 1, world: int = 1) -> str:
    """What could make a plan fit, leaving out what the command already does (a review: it suggested
    --gemm fp8 to a command that gave it). Ranks help only where they shard the model: with
    --model-parallel 1 on 8 ranks, each held the whole 671B and the advice was "more ranks" (a checkpoint tour)."""
    if model_parallel < world:
        held = "the whole model" if model_parallel == 1 else f"1/{model_parallel} of the model"
        ways = [f"--model-parallel auto (each of the {world} ranks holds {held} now)"]
    elif str(opts.model_parallel) == "auto":
        ways = ["more ranks"]
    else:
        ways = ["more ranks with --model-parallel auto"]
    if opts.gemm not in FP8_RESIDENT:
        ways.append("--gemm fp8 (FP8 weights resident)")
    if opts.batch_size > 1:
        ways.append("a smaller --batch-size")
    return ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1]


def _existing(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p
