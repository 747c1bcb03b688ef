"""Bytes per rank before anything is loaded: weights (meta device), the latent KV cache, and an
estimate of a forward pass's activations. What `python -m model params` and `dsv3-probe record
--dry-run` print.

    memory.shard_plan(ModelArgs.from_name("671B"), 8)                  # weight bytes per rank
    memory.forward_plan(args, model_parallel=8, batch=8, seq_len=512)  # activations of one forward

Legend: B batch rows, S positions, T = B*S tokens, D dim, V vocab, E routed experts, K top-k,
H heads, M ranks holding one model (tensor + expert parallel, see model/parallel.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .args import ModelArgs
from .checkpoint import make_fp8_resident
from .head_stats import head_rows, reduce_rows
from .layers import Linear, fp8_sum_dtype, wide
from .moe import Experts
from .parallel import Shards, check_world, shard_, shard_spec
from .transformer import Transformer


def available_memory() -> int | None:
    """Bytes of memory this machine has available now (Linux's /proc/meminfo MemAvailable), or None
    where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tensor_bytes(model: nn.Module, names=None) -> int:
    """Bytes of parameters and buffers (FP8 weights 1 byte + their float32 scales), optionally
    only those named (works on the meta device)."""
    items = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b is not None]
    return sum(t.numel() * t.element_size() for n, t in items if names is None or n in names)


def shard_plan(args: ModelArgs, world_size: int, *, fp8: bool = True, dtype: torch.dtype = torch.bfloat16,
               rank: int = 0, quantised_activations: bool = False, what: str = "world size") -> dict:
    """Per-rank parameter bytes of `args` at `world_size` (meta device: no memory). fp8: every
    projection an FP8 checkpoint stores as FP8 stays FP8 (1 byte + float32 128x128 block scales),
    the rest in `dtype`. MTP modules count when the config has them. `absorb_dense_bytes`: the
    dequantised copy of each FP8 `wkv_b` that absorbed attention keeps (see model/mla.py).
    `largest_fp8_weight_bytes`: the largest weight an FP8 GEMM on the CPU dequantises for one call,
    in `dtype` (gemm fp8-weights) or, with `quantised_activations` (gemm fp8, the torch twin), in
    its accumulation dtype (float32; float64 for the row-parallel ones, see layers.LAYOUT_FREE_SUMS).
    `what`: how an error names the world size (a command's flag)."""
    check_world(args, world_size, what)
    with torch.device("meta"):
        m = Transformer(args, dtype=dtype, init=False)
    if fp8:
        make_fp8_resident(m, block=(args.quant_block or (128, 128))[0])
    full = tensor_bytes(m)
    spec = shard_spec(m, Shards(rank, world_size))
    sharded_full = tensor_bytes(m, set(spec))
    shard_(m, Shards(rank, world_size))
    local = tensor_bytes(m)
    elem = torch.finfo(dtype).bits // 8
    heads = args.n_heads // world_size
    absorb = (args.n_layers + args.n_mtp_layers) * heads * (args.qk_nope_head_dim + args.v_head_dim) \
        * args.kv_lora_rank * elem if fp8 else 0
    # on the CPU (and in the torch twins) an FP8 GEMM dequantises its weight first: the largest
    # such weight of this rank is a transient of every forward pass
    fp8_bytes = [_dequantised_bytes(mod, p, dtype, quantised_activations) for mod in m.modules()
                 for p in mod.parameters(recurse=False) if p.dtype == torch.float8_e4m3fn]
    twin = [_twin_bytes_per_token(mod, args.quant_block or (128, 128)) for mod in m.modules()
            if quantised_activations and isinstance(mod, Linear) and mod.weight.dtype == torch.float8_e4m3fn]
    # what a frozen float32 CPU model may pack for oneDNN (model/frozen.py): a copy of each float32
    # weight at most (probe.job.packed_copy_bytes counts the same)
    float32_bytes = sum(p.numel() * 4 for p in m.parameters() if p.dtype == torch.float32)
    return {"world_size": world_size, "fp8": fp8, "full_bytes": full, "per_rank_bytes": local,
            "float32_per_rank_bytes": float32_bytes,
            "sharded_full_bytes": sharded_full, "sharded_per_rank_bytes": tensor_bytes(m, set(spec)),
            "replicated_bytes": full - sharded_full, "absorb_dense_bytes": absorb,
            "largest_fp8_weight_bytes": max(fp8_bytes, default=0),
            "fp8_twin_bytes_per_token": max(twin, default=0)}


def _twin_bytes_per_token(mod: Linear, block: tuple[int, int]) -> int:
    """Bytes per token the torch twin of an FP8 GEMM with quantised activations (the CPU's, gemm fp8)
    holds besides the weight: the input padded to whole blocks in float32 and quantised to FP8
    (model.kernels.act_quant_torch), dequantised again in the accumulation dtype, and the product in
    that dtype and once more as the output (fp8_gemm_torch). Per token, for `mod`'s local shape."""
    n, k = mod.weight.shape
    acc = torch.finfo(fp8_sum_dtype(torch.device("cpu")) if mod.row_parallel else torch.float32).bits // 8
    k_pad = -(-k // block[1]) * block[1]
    return k_pad * 4 + k + k * acc + 2 * n * acc


def _dequantised_bytes(mod: nn.Module, p: torch.Tensor, dtype: torch.dtype, quantised_activations: bool) -> int:
    """Bytes of FP8 weight `p` of `mod` dequantised for one GEMM (one expert's of stacked experts)."""
    numel = p[0].numel() if isinstance(mod, Experts) else p.numel()
    if not quantised_activations:  # weight-only FP8: dequantised into the compute dtype
        return numel * (torch.finfo(dtype).bits // 8)
    row_parallel = isinstance(mod, Linear) and mod.row_parallel
    return numel * torch.finfo(fp8_sum_dtype(torch.device("cpu")) if row_parallel else torch.float32).bits // 8


def kv_cache_bytes(args: ModelArgs, batch: int, seq_len: int, dtype: torch.dtype = torch.bfloat16,
                   mtp: bool = True) -> int:
    """The absorb-form static cache for `batch` x `seq_len` positions: kv_norm(latent) [C] and the
    rope key [R] per token per layer (MTP block included), replicated on every rank."""
    layers = args.n_layers + (args.n_mtp_layers if mtp else 0)
    return layers * batch * seq_len * (args.kv_lora_rank + args.qk_rope_head_dim) * (torch.finfo(dtype).bits // 8)


def forward_plan(args: ModelArgs, *, model_parallel: int = 1, batch: int = 8, seq_len: int = 512,
                 dtype: torch.dtype = torch.bfloat16, mtp: bool = True, captures: dict | None = None,
                 dequantised: int = 0, head_stats: str | None = None, fp8_twin_per_token: int = 0) -> dict:
    """Estimated peak bytes of one no-grad prefill forward on one rank (a model of the tensors the
    forward allocates, not a measurement): the logits (full [B, S, V] on every rank after the
    all-gather, MTP logits too; with `head_stats`, the device type whose blocks apply, the forward
    returns statistics instead (`targets=`, model/head_stats.py, as the jobs run it) and holds one
    block of this rank's logits and its reduction's temporaries), the largest single layer's
    transients (attention with its [B, H/M, S, S] float32 scores as the unfused kernel holds them,
    or the MoE router and one expert's tokens), the residual stream, and `captures` (bytes a recorder holds until the
    forward ends, see probe.plan), and `dequantised`: the bytes of the largest FP8 weight dequantised
    for its GEMM (shard_plan's largest_fp8_weight_bytes; 0 when weights are dense), and
    `fp8_twin_per_token`: the largest FP8 GEMM's activation copies per token where the torch twin
    runs it (shard_plan's fp8_twin_bytes_per_token: gemm fp8 on a CPU; 0 elsewhere). Returns the
    components and `peak`."""
    M, B, S = model_parallel, batch, seq_len
    T, D, V = B * S, args.dim, args.vocab_size
    e = torch.finfo(dtype).bits // 8
    f32 = 4
    H = args.n_heads // M
    qk, nv = args.qk_nope_head_dim + args.qk_rope_head_dim, args.qk_nope_head_dim + args.v_head_dim
    # head: the local [T, V/M] part, the gathered parts and their concatenation; the loss reads
    # one row of float32 logits at a time
    if head_stats is None:
        one_logits = T * V * e * ((2 + 1 / M) if M > 1 else 1) + S * V * f32
        logits = one_logits * (2 if mtp and args.n_mtp_layers else 1)
    else:
        logits = head_block_bytes(head_stats, V // M, T, dtype)
    attn = (T * (args.q_lora_rank or 0) * 2 * e + T * H * qk * e * 3      # q_a, q_norm, q; q_pe; query
            + T * (args.kv_lora_rank + args.qk_rope_head_dim) * 2 * e      # wkv_a out, kv_norm
            + T * H * nv * e + T * H * qk * e * 2                          # kvb, k, padded v
            + B * H * S * S * f32 * 2                                      # scores, probabilities
            + T * H * qk * e + T * D * e)                                  # attention out, wo out
    E, K = args.n_routed_experts, args.n_activated_experts
    per_expert = -(-T * K // E) * 2  # a busy expert: twice its mean share of the tokens
    routed_sum = T * D * (max(e, f32) + (e if e < f32 else 0))  # summed in float32 under bf16, then rounded
    moe = (T * E * f32 * 5 + T * K * 8 * 3                                 # router scores, ids, weights
           + per_expert * (D * e * 2 + args.moe_inter_dim * e * 3)         # one expert's rows
           + T * args.n_shared_experts * args.moe_inter_dim // M * e * 3 + routed_sum + T * D * e)  # + shared out
    dense = T * args.inter_dim // M * e * 3 + T * D * e
    layer = max(attn, moe if args.n_layers > args.n_dense_layers else 0, dense if args.n_dense_layers else 0)
    residual = T * D * e * 4  # h, the norm's output, the block output, the embedding
    caught = sum((captures or {}).values())
    out = {"logits": int(logits), "largest_layer": int(layer), "residual": int(residual), "captures": int(caught),
           "dequantised_weight": int(dequantised), "fp8_twin_activations": int(T * fp8_twin_per_token)}
    out["peak"] = sum(out.values())
    return out


def head_block_bytes(device_type: str, width: int, rows: int, dtype: torch.dtype) -> int:
    """Bytes model.head_stats holds at once for `rows` hidden states against a vocabulary slice of
    `width`: one block of logits in `dtype`, a reduction step's wide copy and its exponentials, and
    the ranks' gathered partials (six float64 a row and rank, counted for 16 ranks at most)."""
    block = head_rows(torch.device(device_type), width, rows)
    step = min(block, reduce_rows(device_type, width))
    reduced = torch.finfo(wide(dtype)).bits // 8
    return block * width * (torch.finfo(dtype).bits // 8) + 2 * step * width * reduced + block * 6 * 8 * 16


def process_memory() -> dict:
    """This process's resident memory now and at its peak (bytes; Linux /proc/self/status VmRSS and
    VmHWM, else the peak from getrusage), and the CUDA allocator's peak when CUDA is in use: what
    a run records beside the plan, to hold the plan to measurements."""
    out = {"rss": None, "peak_rss": None}
    try:
        for line in open("/proc/self/status"):
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak_rss"] = int(rest.split()[0]) * 1024
    except OSError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss"] = peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated())
    return out


def size(n: float) -> str:
    """Bytes as GB (10^9) or MB."""
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.2f} MB"


def format_plan(p: dict, name: str = "") -> str:
    kind = "FP8" if p["fp8"] else "dense bf16"
    return (f"{name + ': ' if name else ''}world size {p['world_size']} ({kind} weights): "
            f"{size(p['per_rank_bytes'])} per rank (sharded {size(p['sharded_per_rank_bytes'])} + replicated "
            f"{size(p['replicated_bytes'])}) of {size(p['full_bytes'])} in one process")
