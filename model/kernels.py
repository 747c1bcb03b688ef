"""FP8 kernels: activation quantisation, block weight dequantisation, the block-scaled FP8 GEMM.

Each operation has a Triton kernel, a pure-torch twin, and a wrapper that checks its inputs and
picks one of the two:

    q, s = act_quant(x)                       # x [..., K] -> float8_e4m3fn [..., K], float32 [..., ceil(K/128)]
    w = weight_dequant(wq, ws)                # [(E,) N, K] fp8 + [(E,) ceil(N/128), ceil(K/128)] -> bf16
    y = fp8_gemm(q, s, wq, ws)                # [..., K] x [N, K]^T -> [..., N], fp32 accumulation
    y = fp8_gemm(q, s, wq, ws, acc_dtype=torch.float64)   # torch twin: a sum independent of K's split
    y = fp8_linear(x, wq, ws)                 # act_quant then fp8_gemm, output in x.dtype

The torch twins dequantise a weight for one GEMM into a reused per-thread buffer (`scratch`; on a CPU
a fresh 60 MB tensor's first touch costs as much as the conversion), `release_scratch()` frees it.

The switch: `impl="auto" | "triton" | "torch"` on every call, else the `DSV3_KERNELS` environment
variable, else "auto" = Triton for CUDA tensors when the `triton` package is installed, torch
otherwise. "triton" on CPU tensors runs only under `TRITON_INTERPRET=1` (Triton's interpreter;
set it before triton is first imported; triton 3.7 or later), which is how the tests check the
kernels without a GPU.

Formats (see docs/deepseek-v3.md, "FP8 weights"):
- activations: one float32 scale per (token, 128-channel block), scale = max(amax, 1e-4) / 448,
  optionally rounded UP to a power of two ("ue8m0", DeepSeek-V3.1); q = round(x / scale) in e4m3.
- weights: float8_e4m3fn with one float32 multiplier per 128 x 128 block (`weight_scale_inv`),
  edge blocks may be partial.
- GEMM: for every K block, the fp8 x fp8 partial product is accumulated in float32 after
  multiplying it by the activation scale of its row and the weight scale of its block.

NOTE on rounding: both twins round to float8 with round-to-nearest-even. The kernels first round
in float32 onto the e4m3 grid (exact bit arithmetic) and only then cast, and do the same for bf16
outputs: Triton's interpreter converts float32 -> fp8/bf16 without carrying a mantissa overflow
into the exponent (31.01 -> 16.0 in e4m3), and the explicit rounding makes the kernels agree with
torch bit for bit wherever they run, the sign of a zero included. On a GPU the cast of an
already-rounded value is exact, so this costs a few integer operations per element and changes
nothing. One exception, on the interpreter only: its fp8 casts turn NaN into finite numbers (NaN
-> 384 one way, code 0x7F -> 480 the other), so there the codes of an activation block holding a
NaN are finite (its scale is NaN, and so is every GEMM output it feeds, as in the twin), and a NaN
weight code reads as a finite weight. Finite values are unaffected.
"""

from __future__ import annotations

import functools
import math
import os
import threading

import torch
from torch.torch_version import TorchVersion

from .fp8 import FP8_MAX, dequantize_block, scale_from_amax

ENV_VAR = "DSV3_KERNELS"
IMPLS = ("auto", "triton", "torch")
BLOCK = 128  # channels per activation scale, and rows/columns per weight scale
SCALE_FLOOR = 1e-4  # amax floor for activation scales (an all-zero block gets scale 1e-4 / 448)
FP8 = torch.float8_e4m3fn


class KernelError(ValueError):
    """Bad kernel input or an impossible kernel choice (one line naming the problem)."""


# ------------------------------------------------------------------------------------- the switch
def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton's interpreter runs fp8_gemm_kernel's `for kb in range(0, NKB)` from 3.7 on (measured on
# 3.4.0-3.9.0: 3.4-3.6 fail on the runtime loop bound); compiled kernels on a GPU have no such limit
INTERPRETER_MIN = (3, 7)


def _triton_version_text() -> str:
    import triton

    return triton.__version__


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str | None, device: torch.device) -> str:
    """'triton' or 'torch' for tensors on `device` (see the module docstring for the rules)."""
    source = "impl"
    if impl is None:
        impl, source = os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR
    if impl not in IMPLS:
        raise KernelError(f"{source}={impl!r}: choose one of {IMPLS}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise KernelError(f"{source}='triton' needs the triton package (pip install -e '.[triton]')")
        if device.type != "cuda" and not interpreting():
            raise KernelError(f"{source}='triton' needs CUDA tensors (got {device.type}); on the CPU set "
                              "TRITON_INTERPRET=1 before triton is imported to use its interpreter")
        if device.type != "cuda" and TorchVersion(_triton_version_text()) < INTERPRETER_MIN:  # PEP 440 order
            raise KernelError(f"{source}='triton' on the CPU runs Triton's interpreter, which runs these kernels from "
                              f"triton {'.'.join(map(str, INTERPRETER_MIN))} on (found {_triton_version_text()}: "
                              "its interpreter cannot loop over a count passed in at run time)")
    return impl


# ------------------------------------------------------------------------------------ input checks
def _n_blocks(n: int, block: int) -> int:
    return -(-n // block)


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise KernelError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def _check_fp8(name: str, t: torch.Tensor, dims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != FP8:
        raise KernelError(f"{name} must be float8_e4m3fn, got {t.dtype}")
    if t.dim() not in dims:
        raise KernelError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")


def _check_scale(name: str, s: torch.Tensor, want: tuple[int, ...], of: str) -> None:
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32:
        got = s.dtype if isinstance(s, torch.Tensor) else type(s).__name__
        raise KernelError(f"{name} must be a float32 tensor, got {got}")
    if tuple(s.shape) != tuple(want):
        raise KernelError(f"{name} has shape {tuple(s.shape)}, expected {tuple(want)} for {of}")


def _same_device(**tensors: torch.Tensor) -> torch.device:
    devs = {n: t.device for n, t in tensors.items()}
    if len(set(devs.values())) > 1:
        raise KernelError("tensors on different devices: " + ", ".join(f"{n} on {d}" for n, d in devs.items()))
    return next(iter(devs.values()))


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < 16 or block & (block - 1):
        raise KernelError(f"block={block!r} must be a power of two >= 16")


# ------------------------------------------------------------------------------------ torch twins
def act_quant_torch(x: torch.Tensor, block: int = BLOCK, scale_fmt: str | None = None):
    """Twin of the activation-quantisation kernel: x [M, K] -> (q fp8 [M, K], s float32 [M, ceil(K/block)])."""
    m, k = x.shape
    nb = _n_blocks(k, block)
    xf = torch.zeros(m, nb * block, dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    blocks = xf.view(m, nb, block)
    s = scale_from_amax(blocks.abs().amax(dim=-1).clamp(min=SCALE_FLOOR), scale_fmt)  # [M, nb], as the kernel
    q = (blocks / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(m, nb * block)[:, :k]
    return q.contiguous(), s


def weight_dequant_torch(q: torch.Tensor, s: torch.Tensor, block: int = BLOCK,
                         dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Twin of the dequantisation kernel: W = Q * scale, block by block (leading dims allowed)."""
    return dequantize_block(q, s, (block, block), dtype)


def fp8_gemm_torch(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                   block: int = BLOCK, out_dtype: torch.dtype = torch.bfloat16,
                   acc_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Twin of the GEMM kernel: [M, K] x [N, K]^T accumulated in `acc_dtype`.

    The same sum as the kernel in a different order: the scales distribute over each block's
    partial product, so dequantising both operands and doing one GEMM is equal up to rounding
    (and much faster on a CPU than a loop over K blocks). In float64 the dequantised operands are
    exact (e4m3 x float32 scale) and so is each product, so the sum is the exact one to ~1e-16:
    however K is cut into parts and the parts added, the result rounds to the same float32/bf16."""
    a_deq = a.to(acc_dtype) * a_s.to(acc_dtype).repeat_interleave(block, dim=-1)[:, : a.shape[1]]
    b_deq = dequantize_block(b, b_s, (block, block), acc_dtype, out=scratch(b.shape, acc_dtype, b.device))
    return (a_deq @ b_deq.T).to(out_dtype)


# ------------------------------------------------------------------------------------ scratch
_SCRATCH = threading.local()


def scratch(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of `shape` over this thread's one reusable buffer on `device`, grown
    to the largest request: for a weight dequantised for one GEMM and dropped before the next call
    (the twins; `dequant_for_gemm`). Anything that keeps the tensor (autograd saving it for a
    backward, a caller holding it) must not use it. `release_scratch()` frees the buffer."""
    nbytes = math.prod(shape) * dtype.itemsize
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(device)
    if buf is None or buf.numel() < nbytes:
        bufs[device] = buf = None  # the old buffer goes before the new one is allocated
        bufs[device] = buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return buf[:nbytes].view(dtype).view(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (their memory returns to the allocator)."""
    _SCRATCH.bufs = {}


def dequant_for_gemm(q: torch.Tensor, s: torch.Tensor, block: int, x: torch.Tensor) -> torch.Tensor:
    """The FP8 weight `q` dequantised into x's dtype for one GEMM with x (gemm "fp8-weights"): into
    the scratch buffer where the torch twin runs in float32/float64 and no gradient will be taken
    through x (autograd would keep the weight for the backward), else a new tensor."""
    if (x.dtype in (torch.float32, torch.float64) and resolve_impl(None, q.device) == "torch"
            and not (torch.is_grad_enabled() and x.requires_grad)):
        return dequantize_block(q, s, (block, block), x.dtype, out=scratch(q.shape, x.dtype, q.device))
    return weight_dequant(q, s, block, x.dtype)


# ---------------------------------------------------------------------------------- triton kernels
@functools.cache
def _triton():
    """The Triton kernels, imported on first use (TRITON_INTERPRET is read when they are defined)."""
    import triton

    from . import triton_kernels as tk
    return triton, tk.act_quant_kernel, tk.weight_dequant_kernel, tk.fp8_gemm_kernel


def _dot_mode(device: torch.device) -> int:
    if device.type != "cuda":
        return 2  # the interpreter
    return 0 if torch.cuda.get_device_capability(device) >= (8, 9) else 1


def _block_m(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def act_quant_triton(x: torch.Tensor, block: int = BLOCK, scale_fmt: str | None = None):
    triton, kernel, _, _ = _triton()
    m, k = x.shape
    nb = _n_blocks(k, block)
    q = torch.empty(m, k, dtype=FP8, device=x.device)
    s = torch.empty(m, nb, dtype=torch.float32, device=x.device)
    bm = 16
    kernel[(triton.cdiv(m, bm), nb)](x, q, s, m, k, nb, BLOCK_M=bm, BLOCK_K=block,
                                      UE8M0=scale_fmt == "ue8m0")
    return q, s


def weight_dequant_triton(q: torch.Tensor, s: torch.Tensor, block: int = BLOCK,
                          dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    triton, _, kernel, _ = _triton()
    n, k = q.shape[-2:]
    e = math.prod(q.shape[:-2])  # stacked experts: one grid slice per matrix
    y = torch.empty(q.shape, dtype=dtype, device=q.device)
    if y.numel():
        kernel[(_n_blocks(n, block), _n_blocks(k, block), e)](
            q, s, y, n, k, _n_blocks(k, block), _n_blocks(n, block), BLOCK_N=block, BLOCK_K=block,
            OUT_BF16=dtype == torch.bfloat16)
    return y


def fp8_gemm_triton(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                    block: int = BLOCK, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    triton, _, _, kernel = _triton()
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m and n:
        bm = _block_m(m)
        kernel[(triton.cdiv(m, bm), _n_blocks(n, block))](
            a, a_s, b, b_s, c, m, n, k, _n_blocks(k, block), BLOCK_M=bm, BLOCK_N=block, BLOCK_K=block,
            DOT=_dot_mode(a.device), OUT_BF16=out_dtype == torch.bfloat16)
    return c


# --------------------------------------------------------------------------------------- wrappers
def act_quant(x: torch.Tensor, block: int = BLOCK, scale_fmt: str | None = None, *, impl: str | None = None):
    """x [..., K] float -> (q float8_e4m3fn [..., K], s float32 [..., ceil(K/block)]), one scale per
    (token, block of `block` channels); `scale_fmt="ue8m0"` rounds scales up to powers of two."""
    _check_float("act_quant: x", x)
    _check_block(block)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise KernelError(f"act_quant: x must have a non-empty last (channel) dim, got shape {tuple(x.shape)}")
    if scale_fmt not in (None, "ue8m0"):
        raise KernelError(f"act_quant: scale_fmt={scale_fmt!r} must be None or 'ue8m0'")
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    if resolve_impl(impl, x.device) == "triton":
        q, s = act_quant_triton(x2, block, scale_fmt)
    else:
        q, s = act_quant_torch(x2, block, scale_fmt)
    return q.view(*lead, k), s.view(*lead, s.shape[-1])


def weight_dequant(q: torch.Tensor, s: torch.Tensor, block: int = BLOCK, dtype: torch.dtype = torch.bfloat16,
                   *, impl: str | None = None) -> torch.Tensor:
    """W = Q * scale per block x block tile: q [(E,) N, K] fp8, s [(E,) ceil(N/b), ceil(K/b)] float32.
    dtype float64 (the reference precision; exact products) is the torch twin's only, as fp8_gemm's
    float64 sums are."""
    _check_fp8("weight_dequant: q", q, (2, 3))
    _check_block(block)
    want = (*q.shape[:-2], _n_blocks(q.shape[-2], block), _n_blocks(q.shape[-1], block))
    _check_scale("weight_dequant: s", s, want, f"weight {tuple(q.shape)} in {block}x{block} blocks")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise KernelError(f"weight_dequant: dtype must be float32, bfloat16, float16 or float64, got {dtype}")
    dev = _same_device(q=q, s=s)
    if resolve_impl(impl, dev) == "triton" and dtype != torch.float64:
        return weight_dequant_triton(q.contiguous(), s.contiguous(), block, dtype)
    return weight_dequant_torch(q, s, block, dtype)


def fp8_gemm(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor, block: int = BLOCK,
             out_dtype: torch.dtype = torch.bfloat16, *, impl: str | None = None,
             acc_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """a [..., K] fp8 with a_s [..., ceil(K/b)], b [N, K] fp8 with b_s [ceil(N/b), ceil(K/b)]
    -> a b^T [..., N] in `out_dtype`, accumulated in `acc_dtype`: float32 (the kernel's), or
    float64 (the torch twin only: a sum whose rounding does not depend on how K is split, see
    `model.layers.LAYOUT_FREE_SUMS`)."""
    _check_fp8("fp8_gemm: a", a, tuple(range(1, 9)))
    _check_fp8("fp8_gemm: b", b, (2,))
    _check_block(block)
    k = a.shape[-1]
    if b.shape[1] != k:
        raise KernelError(f"fp8_gemm: a has {k} channels but b {tuple(b.shape)} has {b.shape[1]}")
    _check_scale("fp8_gemm: a_s", a_s, (*a.shape[:-1], _n_blocks(k, block)),
                 f"activations {tuple(a.shape)} in blocks of {block}")
    _check_scale("fp8_gemm: b_s", b_s, (_n_blocks(b.shape[0], block), _n_blocks(k, block)),
                 f"weight {tuple(b.shape)} in {block}x{block} blocks")
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise KernelError(f"fp8_gemm: out_dtype must be float32, bfloat16, float16 or float64, got {out_dtype}")
    if acc_dtype not in (torch.float32, torch.float64):
        raise KernelError(f"fp8_gemm: acc_dtype must be float32 or float64, got {acc_dtype}")
    dev = _same_device(a=a, a_s=a_s, b=b, b_s=b_s)
    lead = a.shape[:-1]
    a2, s2 = a.reshape(-1, k).contiguous(), a_s.reshape(-1, a_s.shape[-1]).contiguous()
    if resolve_impl(impl, dev) == "triton":
        if acc_dtype != torch.float32:
            raise KernelError(f"fp8_gemm: the Triton kernel accumulates in float32 (acc_dtype={acc_dtype} "
                              "is the torch twin's)")
        wide = out_dtype in (torch.float32, torch.float64)
        c = fp8_gemm_triton(a2, s2, b.contiguous(), b_s.contiguous(), block, torch.float32 if wide else out_dtype)
        c = c.to(out_dtype)
    else:
        c = fp8_gemm_torch(a2, s2, b, b_s, block, out_dtype, acc_dtype)
    return c.view(*lead, b.shape[0])


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: int = BLOCK,
               scale_fmt: str | None = None, *, impl: str | None = None,
               out_dtype: torch.dtype | None = None, acc_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """y = x W^T with W kept in FP8: quantise x per (token, block), then the FP8 GEMM (accumulated
    in `acc_dtype`); y in `out_dtype` (default x.dtype). A gradient for x is straight-through
    (`fp8_matmul`)."""
    return fp8_matmul(x, act_quant(x, block, scale_fmt, impl=impl), weight, scale, block, out_dtype or x.dtype,
                      impl=impl, acc_dtype=acc_dtype)


def fp8_matmul(x: torch.Tensor, xq: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor, scale: torch.Tensor,
               block: int, out_dtype: torch.dtype, *, impl: str | None = None,
               acc_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The FP8 GEMM of x's codes `xq` (= act_quant(x)) with W; when autograd wants x's gradient, it is
    the straight-through one, dL/dx = dL/dy W with W dequantised (float32): rounding to FP8 has no
    useful gradient, and autograd through the float8 cast quantised the incoming gradient to
    unscaled e4m3, mostly zeros (cosine 0.05 with the dense gradient at loss scale 1e-3; a review).
    The forward values are the same either way."""
    q, s = xq
    if torch.is_grad_enabled() and x.requires_grad:
        return _FP8GemmStraightThrough.apply(x, q, s, weight, scale, block, out_dtype, impl, acc_dtype)
    return fp8_gemm(q, s, weight, scale, block, out_dtype, impl=impl, acc_dtype=acc_dtype)


class _FP8GemmStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q, s, weight, scale, block, out_dtype, impl, acc_dtype):
        ctx.save_for_backward(weight, scale)
        ctx.block, ctx.x_dtype = block, x.dtype
        return fp8_gemm(q, s, weight, scale, block, out_dtype, impl=impl, acc_dtype=acc_dtype)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        w = dequantize_block(weight, scale, (ctx.block, ctx.block), torch.float32)
        return (grad.float() @ w).to(ctx.x_dtype), *([None] * 8)
