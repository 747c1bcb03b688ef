"""The Triton kernels behind `model.kernels` (imported only when a Triton kernel is used).

Kept in their own module because `triton.jit` reads TRITON_INTERPRET when a kernel is defined and
resolves helper kernels through module globals. Call them through `model.kernels`, whose wrappers
check inputs and whose torch twins define the expected results.
"""

import triton
import triton.language as tl


@triton.jit
def round_e4m3(x):
    # x float32 in [-448, 448] -> nearest e4m3 value, ties to even, as float32. The e4m3 grid
    # spacing at x is 2^(exponent(x) - 3), never below 2^-9 (subnormals): scale by the inverse
    # spacing (a power of two: exact), round to an integer with the 1.5 * 2^23 trick (float32
    # round-to-nearest-even; |x / spacing| < 16), scale back (exact). A negative x that rounds to
    # zero keeps its sign (-0.0, as torch's cast gives; the trick alone gives +0.0; a review).
    e = (x.to(tl.int32, bitcast=True) >> 23) & 0xFF
    se = tl.maximum(e - 130, -9)
    inv = ((127 - se) << 23).to(tl.float32, bitcast=True)
    step = ((127 + se) << 23).to(tl.float32, bitcast=True)
    r = (x * inv + 12582912.0) - 12582912.0
    return tl.where(r == 0.0, x * 0.0, r * step)


@triton.jit
def round_bf16(x):
    # float32 -> nearest bfloat16 value (ties to even) as float32, on the bits; finite x only
    b = x.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, NKB, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                     UE8M0: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # NOTE: tl.max / tl.minimum / tl.maximum drop NaN; torch's amax and clamp keep it, and so does
    # DeepSeek's reference (no clamp): a NaN in a block makes its scale NaN, and a NaN (or inf / inf)
    # stays NaN, as in the twin (it became a finite -448 code here; a review)
    nan_in_row = tl.max((x != x).to(tl.int32), axis=1) > 0
    amax = tl.where(nan_in_row, float("nan"), tl.maximum(tl.max(tl.abs(x), axis=1), 1e-4))
    s = tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))
    if UE8M0:
        s = tl.where(s == s, ((s.to(tl.int32, bitcast=True) + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True), s)
    y = tl.math.div_rn(x, tl.broadcast_to(s[:, None], x.shape))
    y = round_e4m3(tl.where(y == y, tl.minimum(tl.maximum(y, -448.0), 448.0), y))
    tl.store(q_ptr + offs, y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows.to(tl.int64) * NKB + pid_k, s, mask=rows < M)


@triton.jit
def weight_dequant_kernel(q_ptr, s_ptr, y_ptr, N, K, NKB, NNB, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, OUT_BF16: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_e = tl.program_id(2).to(tl.int64)  # stacked experts: one matrix per index
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    offs = pid_e * N * K + rows[:, None].to(tl.int64) * K + cols[None, :]
    scale = tl.load(s_ptr + pid_e * NNB * NKB + pid_n * NKB + pid_k)
    w = tl.load(q_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale
    if OUT_BF16:
        w = round_bf16(w)
    tl.store(y_ptr + offs, w.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fp8_gemm_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K, NKB,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT: tl.constexpr, OUT_BF16: tl.constexpr):
    # c[m, n] = sum_kb (a[m, kb] . b[n, kb]) * a_s[m, kb] * b_s[n // BLOCK_N, kb]
    # BLOCK_N = BLOCK_K = the weight block, so one weight scale per (N tile, K step).
    # DOT: 0 = fp8 x fp8 tensor cores (sm89+), 1 = upcast to bf16 (exact for e4m3),
    #      2 = upcast to float32 (the interpreter, whose numpy has no bf16 / fp8 GEMM)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]  # [BM, BK]
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]  # [BK, BN] (b is [N, K])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, NKB):
        k_ok = rk + kb * BLOCK_K < K
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=(rn[None, :] < N) & k_ok[:, None], other=0.0)
        a_s = tl.load(as_ptr + rm.to(tl.int64) * NKB + kb, mask=rm < M, other=0.0)
        b_s = tl.load(bs_ptr + pid_n * NKB + kb)
        if DOT == 1:
            a = a.to(tl.bfloat16)
            b = b.to(tl.bfloat16)
        elif DOT == 2:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b) * a_s[:, None] * b_s
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if OUT_BF16:
        acc = round_bf16(acc)
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))
