"""FP8 e4m3 block quantisation of weights, as in DeepSeek-V3's checkpoints (pure torch).

A 2-D weight W [out, in] is stored as float8_e4m3fn values Q plus `weight_scale_inv` S of shape
[ceil(out/b0), ceil(in/b1)] (b = 128 x 128), and W = Q * S blockwise: S is a multiplier despite
its name. Edge blocks may be partial.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _expand(scale: torch.Tensor, shape: torch.Size, block: tuple[int, int]) -> torch.Tensor:
    """Blockwise scale [ceil(o/b0), ceil(i/b1)] -> elementwise [o, i]."""
    o, i = shape[-2:]
    s = scale.repeat_interleave(block[0], dim=-2).repeat_interleave(block[1], dim=-1)
    return s[..., :o, :i]


def dequantize_block(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                     dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """W = Q * scale_inv, block by block; returns `dtype` (float64: the products are exact, e4m3's
    4-bit significand times float32's 24; otherwise computed in float32). `out`: a float32/float64
    tensor of q's shape to write into (no new allocation: a fresh ~60 MB tensor's first touch costs
    as much as the conversion itself on a CPU)."""
    expect = (-(-q.shape[-2] // block[0]), -(-q.shape[-1] // block[1]))
    if tuple(scale_inv.shape[-2:]) != expect:
        raise ValueError(f"scale shape {tuple(scale_inv.shape)} does not match weight {tuple(q.shape)} "
                         f"in {block[0]}x{block[1]} blocks (expected {expect})")
    o, i = q.shape[-2:]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if out is not None and (dtype != work or out.dtype != dtype or out.shape != q.shape):
        raise ValueError(f"out must be {dtype} of shape {tuple(q.shape)}, got {out.dtype} {tuple(out.shape)}")
    if o % block[0] == 0 and i % block[1] == 0:
        # whole blocks: convert once, scale in place through a broadcast view (no elementwise scale
        # tensor; the same products, so the same result as below)
        out = q.to(work) if out is None else out.copy_(q)
        out.view(*q.shape[:-2], o // block[0], block[0], i // block[1], block[1]).mul_(
            scale_inv.to(work)[..., :, None, :, None])
        return out.to(dtype)
    if out is not None:
        return torch.mul(q.to(work), _expand(scale_inv.to(work), q.shape, block), out=out)
    return (q.to(work) * _expand(scale_inv.to(work), q.shape, block)).to(dtype)


def round_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """float32 scales rounded up to the next power of two (an exponent alone, DeepSeek-V3.1's "ue8m0"
    scale format), exact, on the float32 bits."""
    up = ((scale.view(torch.int32) + 0x7FFFFF) & 0x7F800000).view(torch.float32)
    return torch.where(torch.isnan(scale), scale, up)  # a NaN's bits overflowed to 0.0 (a review)


def scale_from_amax(amax: torch.Tensor, scale_fmt: str | None = None, floor: float = 0.0) -> torch.Tensor:
    """The FP8 scale of blocks whose largest magnitude is `amax`: amax / 448, correctly rounded, at
    least `floor`, then for scale_fmt "ue8m0" rounded up to a power of two (`round_ue8m0`). The one
    place both the weights' scales (`quantize_block`) and the activations' (the torch twin of the
    activation kernel) are computed. Divided by a tensor, not the Python number: on CUDA torch
    multiplies by a number's reciprocal instead, an ulp off the correctly rounded scale in 54-60% of
    blocks on an H200 (the Triton kernel and the CPU round correctly); bf16 activations put many
    x / s exactly on an e4m3 tie, which that ulp tipped the other way in 0.12% of codes."""
    s = amax / torch.full_like(amax, FP8_MAX)
    if floor:
        s = s.clamp(min=floor)
    return round_ue8m0(s) if scale_fmt == "ue8m0" else s


def quantize_block(w: torch.Tensor, block: tuple[int, int] = (128, 128),
                   scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """W -> (Q float8_e4m3fn, scale_inv float32) with scale = amax(block) / 448 (1e-12 floor);
    scale_fmt "ue8m0" rounds each scale up to a power of two, as DeepSeek-V3.1's weight scales are
    (an exponent alone; rounding up keeps every |W / scale| within 448)."""
    o, i = w.shape[-2:]
    bo, bi = -(-o // block[0]), -(-i // block[1])
    pad = torch.zeros(*w.shape[:-2], bo * block[0], bi * block[1], dtype=torch.float32, device=w.device)
    pad[..., :o, :i] = w.float()
    blocks = pad.unflatten(-1, (bi, block[1])).unflatten(-3, (bo, block[0]))  # [..., bo, b0, bi, b1]
    scale = scale_from_amax(blocks.abs().amax(dim=(-3, -1)), scale_fmt, floor=1e-12)  # [..., bo, bi]
    q = (w.float() / _expand(scale, w.shape, block)).to(torch.float8_e4m3fn)
    return q, scale
