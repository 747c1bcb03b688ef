"""What the record job writes whole rather than batch by batch: the checkpoint's balancing biases
(`router_bias`, at the start), the latent-KV tables (`kv_stats`, `kv_spectrum`, from every replica's
merged accumulator when the run completes) and run.json's closing update (`finish`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .schema import TABLES
from .stats import KVAccumulator, summarise
from .writer import load_progress, updating_run_json

FINAL_TABLES = ["kv_stats", "kv_spectrum"]
SESSION_KEYS = ("status", "recorded", "cpu_gemm", "timings", "memory")  # run.json keys `finish` writes


def finish(out: Path, status: str, opts, args, world, elapsed: float, ranks: list | None = None) -> None:
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
        write_kv_tables(out, acc, args)
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


def write_kv_tables(out: Path, acc: KVAccumulator, args) -> None:
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
