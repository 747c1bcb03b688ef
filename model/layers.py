"""Small building blocks: RMSNorm, the projection Linear (and its GEMM, `dense_linear`), YaRN RoPE
on interleaved pairs.

Shapes: B = batch, S = query positions, T = key positions, H = heads, R = rope dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import gemm
from .args import ModelArgs
from .fp8 import quantize_block
from .kernels import dequant_for_gemm, fp8_linear, resolve_impl, weight_dequant


# True / False force the path (tests, benchmarks); None: model/gemm.py's choice, measured on this
# machine on the first float32 CPU GEMM (DSV3_ONEDNN=0|1 forces it there)
ONEDNN_LINEAR: bool | None = None


ONEDNN_MIN_MACS = 1 << 20  # smaller GEMMs are dominated by call overhead, where F.linear is quicker
# callers with varying row counts pad to a multiple of this (see Experts): a bounded set of kernel
# shapes (4, 8 and 32 measured within a few percent of it either way: docs/performance.md)
ONEDNN_ROW_BUCKET = 16


def grad_tracked(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on `tensors`: grad mode is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def onednn_eligible(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether x W^T may run on oneDNN at all: float32 on the CPU, no gradient to track, not tiny."""
    return (x.dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu"
            and x.numel() * w.shape[0] >= ONEDNN_MIN_MACS and not grad_tracked(x, w))


def uses_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether dense_linear(x, w) runs on oneDNN (see there)."""
    if not onednn_eligible(x, w):
        return False
    if ONEDNN_LINEAR is not None:
        return ONEDNN_LINEAR
    return gemm.choice((x.numel() // x.shape[-1], w.shape[1], w.shape[0])).path == "onednn"


def experts_on_onednn(dim: int, inter: int) -> bool:
    """Whether float32 routed experts of dim x inter weights run in model.moe's padded oneDNN layout
    (where onednn_eligible holds), whichever path the other GEMMs take: ONEDNN_LINEAR forces it,
    else model/gemm.py measures it per shape."""
    if ONEDNN_LINEAR is not None:
        return ONEDNN_LINEAR
    return gemm.experts_choice(dim, inter).path == "onednn"


def dense_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T for a dense weight. Float32 on the CPU with no gradient to track, and not tiny, goes
    through oneDNN's linear primitive (torch.ops.mkldnn._linear_pointwise, an op torch.compile's CPU
    backend also emits), everything else through F.linear.

    NOTE: which of the two is faster depends on the CPU, so model/gemm.py measures it on the first
    such GEMM and keeps the faster (cached per CPU model; DSV3_ONEDNN=0|1 forces it). Same float32
    arithmetic, another summation order (~1e-6 relative, tested). oneDNN compiles a kernel per
    shape, so callers whose row count varies pad it to a multiple of ONEDNN_ROW_BUCKET; it has no
    autograd formula, so F.linear runs whenever a gradient is needed."""
    if uses_onednn(x, w):
        return gemm.onednn_linear(x, w)
    return F.linear(x, w)


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype partial sums are kept in before they are added up: float32 for 16-bit dtypes."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


# FP8 GEMMs with quantised activations whose input dimension tensor parallelism splits (`wo`, the
# MLPs' `w2`: `Linear.row_parallel`) and the routed experts' sum accumulate in float64 where the FP8
# GEMM is the torch twin (the CPU): the sum is then exact to ~1e-16 and rounds to the same float32 or
# bf16 value however it is cut across ranks and added up. In float32 the cut changes the last bit of
# some outputs, and the next layer's FP8 activation quantisation turns that bit, at a rounding
# midpoint, into a whole e4m3 step and, at a near tie, another expert (measured on the full-width
# 671B slice, top-8 sets equal between 2 ranks and 1 process: 95.5% with float32 sums in a float32
# model, 98.0% in bf16; 100.000% in both with these; docs/deepseek-v3.md, "Summation order"). Costs
# ~1.6x on those GEMMs. False: float32 (the Triton kernel's accumulation, which this cannot change:
# on CUDA the sums stay float32).
LAYOUT_FREE_SUMS = True


def fp8_sum_dtype(device: torch.device) -> torch.dtype:
    """The accumulation dtype of a layout-free FP8 sum on `device` (see LAYOUT_FREE_SUMS)."""
    return torch.float64 if LAYOUT_FREE_SUMS and resolve_impl(None, device) == "torch" else torch.float32


def fp8_wide(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a layout-free FP8 sum of `dtype` activations is kept in until its one rounding:
    fp8_sum_dtype, and never narrower than wide(dtype)."""
    return torch.promote_types(fp8_sum_dtype(device), wide(dtype))


class Embedding(nn.Embedding):
    """nn.Embedding that skips its random init on the meta device: torch's normal_ there imports
    torch._dynamo, 1.3-1.7 s added to every model.load (which builds the model on meta first)."""

    def reset_parameters(self) -> None:
        if self.weight.device.type != "meta":
            super().reset_parameters()


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in float32 (float64 for a float64 input) and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: F.rms_norm's own steps (bit-equal to it), some of them in place: it takes 0.16 ms where
        # this takes 0.12 (a [1024, 512] float32 input, 2 CPU threads). y is always a new tensor, so
        # the weight can scale it in place, unless autograd needs y unchanged (the weight's gradient)
        # or the weight's dtype would promote the product.
        xf = x.to(wide(x.dtype))  # float32, or float64 for a float64 model
        y = (xf * self.inverse_rms(xf)).to(x.dtype)
        if y.dtype == self.weight.dtype and not grad_tracked(y, self.weight):
            return y.mul_(self.weight)
        return y * self.weight

    def inverse_rms(self, xf: torch.Tensor) -> torch.Tensor:
        """1 / rms(xf) [..., 1] of a wide input [..., D], as the forward scales it (and direct logit
        attribution scales the residual's pieces: `model.attribution.final_scale`)."""
        return xf.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Linear(nn.Module):
    """y = x W^T (no bias). The one place projections go through, so that a different GEMM
    (FP8 weights kept resident, tensor-parallel shards) can be swapped in without touching the model.

    Two ways to hold the weight:
    - dense (default): `weight` in the compute dtype; FP8 checkpoints are dequantised into it on load.
    - FP8 resident (`make_fp8_()`, or `model.load(..., gemm_impl="fp8")`): `weight` is float8_e4m3fn
      and the buffer `weight_scale_inv` [ceil(out/b), ceil(in/b)] float32 holds one multiplier per
      b x b block (b = 128). forward() quantises x per (token, b channels) and runs the block-scaled
      FP8 GEMM (`model.kernels`: Triton on CUDA, the torch twin elsewhere); the output has x's dtype.
      With `quantise_activations = False` (gemm_impl="fp8-weights") x is not quantised: the weight
      is dequantised into x's dtype for each GEMM, which gives the dequantised checkpoint's numbers
      (and the same routing whatever the parallel layout) with FP8 weights held in memory.
    """

    def __init__(self, in_features: int, out_features: int, *, row_parallel: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # tensor parallelism splits the input dimension (wo, w2): an FP8 GEMM sums in fp8_sum_dtype
        self.row_parallel = row_parallel
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_buffer("weight_scale_inv", None)  # float32 block scales once FP8 resident
        self.block: int | None = None  # FP8 block size
        self.scale_fmt: str | None = None  # activation scale format: None or "ue8m0"
        self.quantise_activations = True  # FP8 resident: quantise x too (False: weight-only FP8)
        self.compute_dtype = self.weight.dtype  # dtype of dense_weight() when FP8 resident
        # FP8 GEMM output in its accumulation dtype (at least wide(x.dtype)) instead of x's dtype: set by
        # model.parallel on row-parallel projections, whose partial sums are all-reduced before rounding
        self.wide_output = False
        self._dense: tuple | None = None  # (key, dequantised weight), see dense_weight()

    @property
    def fp8(self) -> bool:
        return self.weight_scale_inv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale_inv is None:
            return dense_linear(x, self.weight)
        if self.weight.dtype != torch.float8_e4m3fn:
            raise RuntimeError(f"FP8-resident Linear holds a {self.weight.dtype} weight (was the model cast "
                               "with .to(dtype)? that drops FP8 storage; cast only floating activations)")
        if not self.quantise_activations:
            return dense_linear(x, dequant_for_gemm(self.weight, self.weight_scale_inv, self.block, x))
        acc = fp8_sum_dtype(x.device) if self.row_parallel else torch.float32
        out = fp8_wide(x.device, x.dtype) if self.wide_output else x.dtype
        return fp8_linear(x, self.weight, self.weight_scale_inv, self.block, self.scale_fmt,
                          out_dtype=out, acc_dtype=acc)

    def dense_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: `weight` itself, or, when FP8 resident, its block
        dequantisation, computed on first use and kept (redone only if the FP8 weight or its
        scales are written or moved). MLA's absorbed attention reads wkv_b this way."""
        if self.weight_scale_inv is None:
            return self.weight
        w, s = self.weight, self.weight_scale_inv
        key = (w.device, w.data_ptr(), w._version, s.data_ptr(), s._version)
        if self._dense is None or self._dense[0] != key:
            self._dense = (key, weight_dequant(w.detach(), s, self.block, self.compute_dtype))
        return self._dense[1]

    def make_fp8_(self, block: int = 128, scale_fmt: str | None = None) -> "Linear":
        """Switch to FP8-resident storage in place: the current weight is quantised in `block` x
        `block` tiles (on the meta device only the storage changes; the loader fills it)."""
        if self.fp8:
            raise ValueError("Linear is already FP8 resident")
        if scale_fmt not in (None, "ue8m0"):
            raise ValueError(f"scale_fmt={scale_fmt!r} must be None or 'ue8m0'")
        w = self.weight.detach()
        nb = (-(-self.out_features // block), -(-self.in_features // block))
        if w.device.type == "meta":
            q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
            s = torch.empty(nb, dtype=torch.float32, device=w.device)
        else:
            q, s = quantize_block(w, (block, block), scale_fmt)
        self.compute_dtype = w.dtype
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale_inv = s
        self.block, self.scale_fmt, self._dense = block, scale_fmt, None
        return self

    def reset_parameters(self, std: float = 0.02) -> None:
        if self.fp8:  # draw a dense weight, store it quantised
            w = torch.empty(self.weight.shape, device=self.weight.device, dtype=torch.float32).normal_(std=std)
            q, s = quantize_block(w, (self.block, self.block), self.scale_fmt)
            with torch.no_grad():
                self.weight.copy_(q)
                self.weight_scale_inv.copy_(s)
        else:
            nn.init.normal_(self.weight, std=std)

    def extra_repr(self) -> str:
        fp8 = f", fp8 {self.block}x{self.block} blocks" if self.fp8 else ""
        return f"in={self.in_features}, out={self.out_features}{fp8}"


# ------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Per-pair inverse frequencies [R/2], float32, computed in float32 step by step as DeepSeek's
    reference does (`precompute_freqs_cis`): computed in float64 and rounded once, 12 of the 671B
    config's 32 frequencies were a float32 step off its (rotation angles 3.9e-3 rad apart at position
    163,839; found by a review).

    YaRN (when the checkpoint's config says so): with corr(r) = d ln(L0 / (2 pi r)) / (2 ln theta),
    low = floor(corr(beta_fast)), high = ceil(corr(beta_slow)) (unrounded when the config says
    `truncate: false`) clamped to [0, d-1]; pair indices
    below `low` keep `freq`, above `high` use `freq / factor`, with a linear ramp in between.
    """
    d = args.qk_rope_head_dim
    # on the CPU even inside `with torch.device("meta")`: torch's meta arange imports torch._dynamo (1.5 s)
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device="cpu") / d))
    if args.yarn and args.rope_factor > 1:
        def corr(rotations: float) -> float:
            return d * math.log(args.original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(args.rope_theta))

        low, high = corr(args.beta_fast), corr(args.beta_slow)
        if args.rope_truncate:  # whole pair indices, as DeepSeek's code has it
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = ((torch.arange(d // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1 = original frequency, 0 = interpolated
        freqs = freqs / args.rope_factor * (1 - keep) + freqs * keep
    return freqs.float()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, factor: float = 1.0):
    """cos, sin of positions [B, S] x inv_freq [R/2] -> two [B, S, R/2] float32 tensors."""
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device)
    cos, sin = angles.cos(), angles.sin()
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate INTERLEAVED pairs (x0,x1),(x2,x3),... of x [B, S, (H,) R] by cos/sin [B, S, R/2].

    NOTE: DeepSeek's weights expect interleaved pairs; transformers rotates the same pairs but
    writes them de-interleaved. Scores agree; the k_pe tensors themselves differ by a permutation.
    """
    if x.dim() == 4:  # [B, S, H, R]: broadcast over heads
        cos, sin = cos[:, :, None], sin[:, :, None]
    # NOTE: as complex numbers a pair's rotation is one multiply, (x0 + i x1)(cos + i sin), the same
    # products and sums as writing it out, in one pass over a strided view of x instead of eight
    # (0.07 against 0.34 ms for a 4 x 256 x 8-head query on 2 CPU threads, bit-equal there)
    xf = x.to(wide(x.dtype))  # float32, or float64 for a float64 model
    if xf.stride(-1) != 1 or xf.storage_offset() % 2 or any(s % 2 for s in xf.stride()[:-1]):
        xf = xf.contiguous()  # view_as_complex needs pairs that start at even offsets
    out = torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * torch.complex(cos, sin)
    return torch.view_as_real(out).flatten(-2).to(x.dtype)
