"""What the recorder and the analyses read from the output head, without [B, S, V] logits: for every
position, the loss of a given target token (-log softmax(logits)[target], nats) and the argmax.

    stats = model(tokens, targets=next_tokens)            # TokenStats(nll [B, S], top1 [B, S])
    stats, mtp = model(tokens, mtp=True, targets=nxt, mtp_targets=nxt[:, 1:])
    logit_stats(logits, targets)                           # the same from logits already computed

`head_stats` runs the head's GEMM a block of rows at a time (HEAD_CHUNK: about 8 MiB of float32
logits on a CPU, 256 MiB on a GPU, never under a row count that keeps the GEMM efficient) and
reduces each block at once, so the largest tensor is one block: at the released model's vocabulary
(129,280) the full float32 logits are 517 KB a position, 2.1 GB for 4,096 positions, twice with the
MTP head. Under model parallelism (vocabulary split across the ranks, model.parallel) no logits are
gathered either: each rank reduces its own slice to four numbers a position (max, its index, the
sum of exponentials below that max, the target's logit when the target is in the slice), the ranks
all-gather those, and the combination is the logsumexp of the whole row. The head's module hooks
do not run on this path (its GEMM is called directly).

Arithmetic: the reduction is `logit_stats`' (the same steps). Where the head runs in one block, the
statistics are those of the full logits bit for bit (tested); over several blocks a GEMM library
may pick another kernel for another row count and move a logit by its last bit (MKL does at the
test models' small dims; at the bench model's 512 -> 8192 blocks of 64-512 rows were bit-equal to
one GEMM on oneDNN and MKL, 2026-12-03). Under model parallelism the combination of the slices
rounds differently: float32 losses agree to ~1e-7 relatively, float64 ones to ~1e-15. Statistics
are computed in float32, or float64 for a float64 model; `nll` is returned as float32, `top1` as
int64 (the first index on ties, as torch.argmax).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from . import layers
from .args import InputError
from .indices import BYTES_NOT_IDS, bytes_not_ids


IGNORE_INDEX = -100  # a target that asks for no loss (padding), as torch's cross_entropy: its nll is NaN


class TokenStats(NamedTuple):
    """Per position of a forward with `targets`: the target's loss and the argmax."""
    nll: torch.Tensor  # [B, N] float32: -log softmax(logits)[target] (nats); NaN where no token is allowed
    #                    or the target is IGNORE_INDEX (-100)
    top1: torch.Tensor  # [B, N] int64: argmax of the logits

    def cpu(self) -> "TokenStats":
        return TokenStats(self.nll.cpu(), self.top1.cpu())


def _cpu_step_elements(base: Path = Path("/sys/devices/system/cpu/cpu0/cache"), default: int = 1 << 17) -> int:
    """Logits per reduction step on the CPU: an eighth of the L2 cache in float32 elements, so that
    a step's logits and its exponentials fill half of it, but never under `default` (the step
    measured before this rule; also where sysfs does not say).

    NOTE: measured on the reduction of 1024 x 8192 float32 logits, 2 threads, steps of 2^15..2^20:
    on a Xeon with 2 MiB of L2 (2026-12-02) 2^18 was the fastest (5.6 ms; 7.3 ms at 2^17, 6.0 at
    2^19). The earlier fixed 2^17 was measured on an AMD EPYC whose L2 size was not recorded (1 MiB
    on the Zen 4 ones, which gives 2^17 here). Set by the cache's size, not the vendor."""
    try:
        for d in sorted(base.glob("index*")):
            if (d / "level").read_text().strip() == "2" and (d / "type").read_text().strip() in ("Unified", "Data"):
                size = (d / "size").read_text().strip().upper()
                n = int(size.rstrip("KMB")) * {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
                return max(default, min(1 << 21, n // 8))
    except (OSError, ValueError):
        pass
    return default


STATS_ELEMENTS = {"cpu": _cpu_step_elements()}  # logits reduced per step, by device type (default 1 << 26)
# per device type: (bytes of float32 logits per head GEMM, fewest rows per GEMM). The floor keeps the
# GEMM's reuse of the head's weight (read once per block: V x D numbers) worth it at a large vocabulary.
# NOTE: measured on a 2-core AMD EPYC (2026-12-03). The bench model's head (1024 x 512 -> 8192,
# float32) and its reduction: 63.6 ms in blocks of 256 rows against 68.5 ms in one GEMM (medians of
# 21, bit-equal), 66.9 ms at 128 rows, 65.9 at 512. benchmarks/bench_head_stats.py (vocab 129,280,
# hidden 512, 4 x 512 tokens, peak above the model): 1,404 MiB with the logits; 520 MiB at a floor
# of 128 rows, 0.95x the speed in two runs (16 blocks read the 265 MB weight 16 times); 646-647 MiB
# at 256 rows, 1.05x and 1.06x in two runs; 899 MiB at 512 rows, 0.88x in one (child processes; noisy).
HEAD_CHUNK = {"cpu": (8 << 20, 256)}
HEAD_CHUNK_DEFAULT = (256 << 20, 1024)


class _Partial(NamedTuple):
    """One block of rows reduced over this process's columns of the vocabulary."""
    peak: torch.Tensor  # [n] the row's largest logit
    top1: torch.Tensor  # [n] int64: its index (global)
    sumexp: torch.Tensor  # [n] sum of exp(z - shift)
    shift: torch.Tensor  # [n] peak, or 0 where the peak is infinite (as torch.logsumexp)
    target: torch.Tensor  # [n] the target's logit (0 where the target is not in these columns)
    has_target: torch.Tensor  # [n] bool


def reduce_rows(device_type: str, width: int) -> int:
    """Rows of `width` logits reduced per step on `device_type` (STATS_ELEMENTS logits a step)."""
    return max(1, STATS_ELEMENTS.get(device_type, 1 << 26) // max(width, 1))


def _reduce(z: torch.Tensor, tgt: torch.Tensor, offset: int) -> _Partial:
    """z [n, v] logits of columns [offset, offset + v) (already in the wide dtype); tgt [n] global ids."""
    peak, top1 = z.max(dim=-1)
    shift = peak.masked_fill(peak.isinf(), 0)
    sumexp = (z - shift[:, None]).exp_().sum(dim=-1)
    local = tgt - offset
    has = (local >= 0) & (local < z.shape[1])
    target = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1).masked_fill(~has, 0)
    return _Partial(peak, top1 + offset, sumexp, shift, target, has)


def _finish(p: _Partial) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, top1) of rows whose whole vocabulary `p` covers: torch.logsumexp's steps."""
    return p.sumexp.log_().add_(p.shift) - p.target, p.top1


def _combine(p: _Partial, group) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, top1) of rows whose vocabulary is split over the ranks of `group` (each holds `p` for
    its columns): the ranks all-gather their partials and each computes the same combination."""
    mine = torch.stack(list(p), dim=1).double()  # [n, 6]: exact for ids below 2^53
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    nll, top1 = merge(torch.stack(parts))
    return nll.to(p.sumexp.dtype), top1


def merge(parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, top1) [n] from the partials of W column slices, stacked [W, n, 6] in slice order (the
    fields of _Partial, float64): logsumexp over the slices, rescaling each slice's sum to the
    largest peak; the argmax of the first slice holding that peak (the lowest index, as argmax)."""
    peak, top1, sumexp, shift, target, has = parts.unbind(-1)  # each [W, n]
    best = peak.max(dim=0).values
    first = (peak == best).to(torch.uint8).argmax(dim=0)
    top1 = top1.gather(0, first[None]).squeeze(0).long()
    common = best.masked_fill(best.isinf(), 0)
    lse = (sumexp * (shift - common).exp()).sum(dim=0).log() + common
    return lse - (target * has).sum(dim=0), top1


def _stats_rows(blocks, n_rows: int, width: int, tgt: torch.Tensor, dtype: torch.dtype, device: torch.device,
                offset: int = 0, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll [n_rows] float32, top1 [n_rows]) from `blocks`: (first row, logits [rows, width]) in
    order. Each block is reduced STATS_ELEMENTS logits at a time."""
    nll = torch.empty(n_rows, dtype=torch.float32, device=device)
    top1 = torch.empty(n_rows, dtype=torch.long, device=device)
    step = reduce_rows(device.type, width)
    wide = layers.wide(dtype)  # float32, or float64 for a float64 model
    for first, logits in blocks:
        for a in range(0, logits.shape[0], step):
            z = logits[a : a + step].to(wide)
            rows = slice(first + a, first + a + z.shape[0])
            p = _reduce(z, tgt[rows], offset)
            nll[rows], top1[rows] = _finish(p) if group is None else _combine(p, group)
    return nll, top1


def check_targets(targets: torch.Tensor, shape: tuple[int, int], vocab: int, what: str) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != tuple(shape):
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise InputError(f"{what}: expected token ids of shape {tuple(shape)}, got {got}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise InputError(f"{what}: expected integer token ids, got dtype {targets.dtype}")
    if bytes_not_ids(targets.dtype):  # read as ids, the loss of other tokens (a tour)
        raise InputError(f"{what}: got dtype {targets.dtype}: {BYTES_NOT_IDS}")
    targets = targets.long()  # uint16 ids: torch has no min() of them, nor compares them to -100 (a tour)
    kept = targets[targets != IGNORE_INDEX]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
        raise InputError(f"{what}: token ids must be in [0, {vocab}) or {IGNORE_INDEX} (no loss); got "
                         f"[{int(kept.min())}, {int(kept.max())}]")
    return targets.reshape(-1)


def _ignored(nll: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """NaN losses where the target is IGNORE_INDEX (the reduction read some logit in its place)."""
    return nll.masked_fill_(tgt == IGNORE_INDEX, float("nan"))


@torch.no_grad()
def logit_stats(logits: torch.Tensor, targets: torch.Tensor) -> TokenStats:
    """TokenStats of logits [B, N, V] (any float dtype) against targets [B, N], on the logits' device.

    NOTE: one pass over a few rows at a time (STATS_ELEMENTS logits: 64 rows at vocab 4096 on a
    CPU with 2 MiB of L2). torch.max gives the argmax and logsumexp's shift together, and the loss
    is read straight from the logits as logsumexp(z) - z[t]: no [B, N, V] log-softmax or copy of
    rows is written, whose fresh pages were half of the recorder's cost over a plain forward at
    vocab 8192, and a step's temporaries stay in cache. The arithmetic is torch.logsumexp's (bit-equal, tested)."""
    B, N, V = logits.shape
    tgt = check_targets(targets, (B, N), V, "targets").to(logits.device)
    nll, top1 = _stats_rows([(0, logits.reshape(B * N, V))], B * N, V, tgt, logits.dtype, logits.device)
    return TokenStats(_ignored(nll, tgt).view(B, N), top1.view(B, N))


def head_rows(device: torch.device, width: int, n_rows: int) -> int:
    """Rows per head GEMM for a vocabulary slice of `width` columns: HEAD_CHUNK's budget, at least
    its floor, and the n_rows split into blocks of equal size (no small ragged last block)."""
    if n_rows < 1:
        return 1  # nothing to run: any block size will do (and n_rows / 0 blocks is not one)
    budget, floor = HEAD_CHUNK.get(device.type, HEAD_CHUNK_DEFAULT)
    most = max(1, min(n_rows, max(floor, budget // (4 * max(width, 1)))))
    blocks = -(-n_rows // most)
    return max(1, -(-n_rows // blocks))


@torch.no_grad()
def head_stats(head, h: torch.Tensor, targets: torch.Tensor, vocab: int, shards=None) -> TokenStats:
    """TokenStats of `head` (model.layers.Linear: [V, D], or this rank's [V/W, D] rows of it under
    model parallelism, `shards` = model.ranks.Shards) on hidden states h [B, N, D] against
    targets [B, N] (ids in [0, vocab), or IGNORE_INDEX), a block of rows at a time (head_rows). Collective under
    model parallelism: every rank of `shards.group` calls it with the same h and targets."""
    B, N, D = h.shape
    tgt = check_targets(targets, (B, N), vocab, "targets").to(h.device)
    width = head.weight.shape[0]
    offset, group = 0, None
    if shards is not None and shards.world > 1:
        if shards.group is None:
            raise RuntimeError("the head is split across ranks but has no process group (model.parallel.install)")
        offset, group = shards.part(vocab)[0], shards.group
    flat = h.reshape(B * N, D)
    rows = head_rows(h.device, width, B * N)
    blocks = ((a, head.forward(flat[a : a + rows])) for a in range(0, B * N, rows))
    nll, top1 = _stats_rows(blocks, B * N, width, tgt, h.dtype, h.device, offset, group)
    return TokenStats(_ignored(nll, tgt).view(B, N), top1.view(B, N))
