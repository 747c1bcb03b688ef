"""Run the Triton kernels under Triton's CPU interpreter against their torch twins; print JSON.

Not collected by pytest (no test_ prefix): tests/model/test_kernels.py runs it in a subprocess, because
TRITON_INTERPRET must be set before triton is first imported and must not leak into other tests.

    TRITON_INTERPRET=1 python tests/workers/kernel_interp_checks.py     # one JSON object per line

Each line: {"kind": ..., "case": ..., measured errors...}. Shapes are small (the interpreter runs
every program instance in Python) and include partial 128-blocks.
"""

from __future__ import annotations

import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("run with TRITON_INTERPRET=1 (set before triton is imported)")

import torch  # noqa: E402

from model import kernels as K  # noqa: E402
from model.fp8 import quantize_block  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def activations(shape, dtype) -> torch.Tensor:
    """Channels with magnitudes from 1e-3 to 1e2, one all-zero 128-block row, one huge row."""
    x = torch.randn(*shape, generator=g) * torch.logspace(-3, 2, shape[-1])[torch.randperm(shape[-1], generator=g)]
    flat = x.view(-1, shape[-1])
    flat[0, :128] = 0.0  # the scale floor
    if flat.shape[0] > 1:
        flat[1, -1] = 3e4  # one outlier in the last (partial) block
    return x.to(dtype)


# --- activation quantisation
for shape in [(5, 300), (2, 3, 200), (1, 40), (33, 128)]:
    for fmt in (None, "ue8m0"):
        for dtype in (torch.float32, torch.bfloat16):
            x = activations(shape, dtype)
            qt, st = K.act_quant(x, scale_fmt=fmt, impl="triton")
            qr, sr = K.act_quant(x, scale_fmt=fmt, impl="torch")
            deq_t = qt.float() * st.repeat_interleave(128, -1)[..., : shape[-1]]
            deq_r = qr.float() * sr.repeat_interleave(128, -1)[..., : shape[-1]]
            emit(kind="act_quant", case=f"{shape} {fmt} {str(dtype)[6:]}",
                 dtypes=[str(qt.dtype), str(st.dtype)], shapes=[list(qt.shape), list(st.shape)],
                 scale_rel=rel(st, sr), deq_rel=rel(deq_t, deq_r),
                 q_mismatch=int((qt.float() != qr.float()).sum()), numel=qt.numel())

# negative control: the twin with 64-channel blocks is a different quantisation (no outliers here,
# so the 128-blocks' scales are set by ordinary values and the difference is visible everywhere)
x = torch.randn(5, 300, generator=g) * torch.logspace(-3, 2, 300)[torch.randperm(300, generator=g)]
qt, st = K.act_quant(x, impl="triton")
q64, s64 = K.act_quant(x, 64, impl="torch")
deq128 = qt.float() * st.repeat_interleave(128, -1)[:, :300]
deq64 = q64.float() * s64.repeat_interleave(64, -1)[:, :300]
emit(kind="control", case="act_quant block 64 vs 128", deq_rel=rel(deq128, deq64),
     frac_differ=((deq128 != deq64).sum() / deq64.numel()).item())

# --- weight dequantisation (2-D and stacked experts)
for shape in [(300, 200), (3, 200, 136)]:
    w = torch.randn(*shape, generator=g)
    if len(shape) == 2:
        q, s = quantize_block(w)
    else:
        pairs = [quantize_block(we) for we in w]
        q, s = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    for dtype in (torch.float32, torch.bfloat16):
        yt = K.weight_dequant(q, s, dtype=dtype, impl="triton")
        yr = K.weight_dequant(q, s, dtype=dtype, impl="torch")
        emit(kind="weight_dequant", case=f"{shape} {str(dtype)[6:]}", dtype=str(yt.dtype),
             rel=rel(yt, yr), exact=bool(torch.equal(yt, yr)))

# --- block-scaled FP8 GEMM: M x N x K with partial blocks in every dim
for m, n, k in [(5, 200, 300), (33, 130, 256), (1, 64, 40), (70, 256, 384)]:
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)  # per-block weight scales vary
    wq, ws = quantize_block(w)
    xq, xs = K.act_quant(x, impl="torch")
    for dtype in (torch.float32, torch.bfloat16):
        ct = K.fp8_gemm(xq, xs, wq, ws, out_dtype=dtype, impl="triton")
        cr = K.fp8_gemm(xq, xs, wq, ws, out_dtype=dtype, impl="torch")
        emit(kind="fp8_gemm", case=f"{m}x{n}x{k} {str(dtype)[6:]}", dtype=str(ct.dtype), shape=list(ct.shape),
             rel=rel(ct, cr))
    if (m, n, k) == (5, 200, 300):  # negative control: weight scales of the wrong blocks
        wrong = K.fp8_gemm(xq, xs, wq, ws.flip(0).contiguous(), out_dtype=torch.float32, impl="torch")
        emit(kind="control", case="fp8_gemm flipped weight scales",
             rel=rel(K.fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, impl="triton"), wrong))
        # the whole FP8 linear (quantise + GEMM) through each implementation
        emit(kind="fp8_linear", case="5x200x300 float32",
             rel=rel(K.fp8_linear(x, wq, ws, impl="triton"), K.fp8_linear(x, wq, ws, impl="torch")))

# --- a NaN in an activation block: its scale is NaN in both, and so is every output it feeds (the
# Triton kernel's min/max dropped the NaN, and the output came back finite; a review)
wq, ws = quantize_block(torch.eye(128))
for fmt in (None, "ue8m0"):
    x = torch.ones(2, 128)
    x[0, 5] = float("nan")
    (_, st), (_, sr) = K.act_quant(x, scale_fmt=fmt, impl="triton"), K.act_quant(x, scale_fmt=fmt, impl="torch")
    yt = K.fp8_linear(x, wq, ws, impl="triton", out_dtype=torch.float32, scale_fmt=fmt)
    yr = K.fp8_linear(x, wq, ws, impl="torch", out_dtype=torch.float32, scale_fmt=fmt)
    emit(kind="nan_block", case=f"nan {fmt}", scale_nan=[bool(st[0, 0].isnan()), bool(sr[0, 0].isnan())],
         out_all_nan=[bool(yt[0].isnan().all()), bool(yr[0].isnan().all())],
         clean_row_rel=rel(yt[1], yr[1]))

# --- signed zeros: a negative activation that rounds to zero is -0 (code 0x80) in torch's cast; the
# kernel's rounding trick gave +0 (a review). Bytes compared, not values (-0 == +0).
x = torch.tensor([[448.0, -1e-6, -1e-7, 0.0, -0.0, 1e-7] + [1.0] * 122])
(qt, _), (qr, _) = K.act_quant(x, impl="triton"), K.act_quant(x, impl="torch")
emit(kind="signed_zero", case="act_quant", bytes_triton=qt.view(torch.uint8)[0, :6].tolist(),
     bytes_torch=qr.view(torch.uint8)[0, :6].tolist())

# --- bit-exact cases (kind "exact"): where the kernels and the twins must give the same bits
# ue8m0 at an amax of 448 x a power of two: the scale is that power of two, not the next one up
x = torch.rand(3, 200, generator=g) * torch.tensor([[448.0], [7.0], [0.4375]]) * 0.9
x[:, 130] = torch.tensor([448.0, -7.0, 0.4375])  # amax / 448 = 1, 2^-6, 2^-10 in the partial block
(qt, st), (qr, sr) = K.act_quant(x, scale_fmt="ue8m0", impl="triton"), K.act_quant(x, scale_fmt="ue8m0", impl="torch")
emit(kind="exact", case="act_quant ue8m0 at powers of two", equal=bool(torch.equal(st, sr) and torch.equal(qt.float(), qr.float())),
     scales=st[:, 1].tolist())

# GEMM with exact float32 sums (small-integer codes, power-of-two scales): the summation order cannot
# matter, so the outputs are equal bit for bit, bf16 rounding (ties to even) included
m, n, k = 6, 136, 200
aq = torch.randint(-8, 9, (m, k), generator=g).float().to(torch.float8_e4m3fn)
bq = torch.randint(-8, 9, (n, k), generator=g).float().to(torch.float8_e4m3fn)
a_s = 2.0 ** torch.randint(-3, 3, (m, 2), generator=g).float()
b_s = 2.0 ** torch.randint(-3, 3, (2, 2), generator=g).float()
exact = K.fp8_gemm(aq, a_s, bq, b_s, out_dtype=torch.float64, acc_dtype=torch.float64, impl="torch")
for dtype in (torch.float32, torch.bfloat16):
    ct = K.fp8_gemm(aq, a_s, bq, b_s, out_dtype=dtype, impl="triton")
    emit(kind="exact", case=f"fp8_gemm exact sums {str(dtype)[6:]}", equal=bool(torch.equal(ct, exact.to(dtype))),
         rounded=int((exact.to(dtype).double() != exact).sum()),
         ties=int(((exact.float().view(torch.int32) & 0xFFFF) == 0x8000).sum()))

# bf16 ties in the dequantisation: q x (1 + 3 * 2^-8) lies halfway between two bf16 values for q = +-1
q = torch.randint(-8, 9, (130, 200), generator=g).float().to(torch.float8_e4m3fn)
s = torch.full((2, 2), 1 + 3 * 2.0**-8) * torch.tensor([[1.0, 0.5], [2.0, 4.0]])
yt = K.weight_dequant(q, s, dtype=torch.bfloat16, impl="triton")
emit(kind="exact", case="weight_dequant bf16 ties", equal=bool(torch.equal(yt, K.weight_dequant(q, s, impl="torch"))),
     rounded=int((q.float().abs() == 1).sum()))

# float64 dequantisation (the reference precision) and inputs that are views, through impl="triton"
w = torch.randn(300, 200, generator=g)
wq, ws = quantize_block(w)
emit(kind="exact", case="weight_dequant float64", equal=bool(torch.equal(
    K.weight_dequant(wq, ws, dtype=torch.float64, impl="triton"), K.weight_dequant(wq, ws, dtype=torch.float64, impl="torch"))))
wq_t, ws_t = quantize_block(w.T.contiguous())  # W^T stored, its transposed views are W's codes and scales
emit(kind="exact", case="weight_dequant transposed views", equal=bool(torch.equal(
    K.weight_dequant(wq_t.T, ws_t.T, dtype=torch.float32, impl="triton"), K.weight_dequant(wq, ws, dtype=torch.float32, impl="torch"))))
xq, xs = K.act_quant(torch.randn(5, 200, generator=g), impl="torch")
wide_q, wide_s = torch.cat([wq, wq], 1), torch.cat([xs, xs], 1)  # column slices of wider tensors: not contiguous
views = K.fp8_gemm(xq, wide_s[:, :2], wide_q[:, :200], ws, out_dtype=torch.float32, impl="triton")
emit(kind="exact", case="fp8_gemm views", equal=bool(torch.equal(views, K.fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32,
                                                                                  impl="triton"))))

# the Triton GEMM accumulates in float32 only: float64 is the twin's, and asking the kernel for it is an error
try:
    K.fp8_gemm(xq, xs, wq, ws, acc_dtype=torch.float64, impl="triton")
    emit(kind="error", case="fp8_gemm acc_dtype float64 on triton", error=None)
except K.KernelError as e:
    emit(kind="error", case="fp8_gemm acc_dtype float64 on triton", error=str(e))

# the activation kernel writes nothing past its outputs: canaries after q and s (rows of a partial tile)
from model import triton_kernels as tk  # noqa: E402
m, k = 5, 300
x = torch.randn(m, k, generator=g)
q_buf = torch.full((m * k + 512,), 7.0).to(torch.float8_e4m3fn)
s_buf = torch.full((m * 3 + 64,), 7.0)
tk.act_quant_kernel[(1, 3)](x, q_buf, s_buf, m, k, 3, BLOCK_M=16, BLOCK_K=128, UE8M0=False)
emit(kind="canary", case="act_quant", q_tail=bool((q_buf[m * k:].float() == 7).all()), s_tail=bool((s_buf[m * 3:] == 7).all()))
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # NOTE: every line is out: without the interpreter's teardown of torch and triton (0.4-0.5 s)
