"""FP8 kernels (model/kernels.py): the torch twins against independent references, the Triton
kernels against the twins under Triton's CPU interpreter (in a subprocess: TRITON_INTERPRET must be
set before triton is imported), on CUDA when present, and the wrappers' input checks.

    python -m pytest tests/model/test_kernels.py -q -s     # -s prints the measured kernel-vs-twin errors
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

from model import kernels as K
from model.fp8 import FP8_MAX, quantize_block

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()

# Kernel vs twin tolerances. Both round to e4m3 with round-to-nearest-even from the same float32
# quotient, so they agree exactly here; on a GPU a different float32 rounding of x / s could move
# an element by one e4m3 step, hence "at most 1% of elements differ". GEMMs: the same float32
# sums in a different order (1e-5 of the largest output), plus one bf16 rounding for bf16 output.
Q_MISMATCH_FRAC = 0.01
SCALE_REL = 1e-6
GEMM_REL = {"float32": 1e-5, "bfloat16": 2.0**-7}
DEQUANT_REL = {"float32": 1e-6, "bfloat16": 2.0**-8}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- torch twins, references
def test_act_quant_torch_format_and_error_bound():
    g = gen(1)
    x = torch.randn(7, 300, generator=g) * torch.logspace(-3, 2, 300)[torch.randperm(300, generator=g)]
    x[3, :128] = 0.0  # an all-zero block: scale floor 1e-4 / 448
    x[4, 256:] *= 1e3  # the partial last block of one row only
    q, s = K.act_quant(x, impl="torch")
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (7, 3)
    blocks = [slice(0, 128), slice(128, 256), slice(256, 300)]
    for r in range(7):
        for b, cols in enumerate(blocks):
            amax = x[r, cols].abs().max().item()
            assert s[r, b].item() == pytest.approx(max(amax, 1e-4) / 448, rel=1e-6), (r, b)
            if amax >= 1e-4:  # the block's largest element is stored as +-448
                assert q[r, cols].float().abs().max().item() == FP8_MAX
    assert s[3, 0].item() == pytest.approx(1e-4 / 448) and (q[3, :128].float() == 0).all()
    # the scaled-up partial block did not leak into the row's other blocks
    assert s[4, 2] > 100 * s[4, 1]
    # e4m3 rounding error: <= 2^-4 relative for normal values, <= 2^-10 x scale for subnormals
    s_el = s.repeat_interleave(128, -1)[:, :300]
    deq = q.float() * s_el
    err = (deq - x).abs()
    bound = torch.maximum(2.0**-4 * x.abs(), 2.0**-10 * s_el) * (1 + 1e-6)
    assert (err <= bound).all()
    assert (err > 0).any()  # rounding really happened


def test_act_quant_ue8m0_scales_are_powers_of_two_rounded_up():
    x = torch.randn(4, 200, generator=gen(2)) * 3.7
    _, s = K.act_quant(x, impl="torch")
    q8, s8 = K.act_quant(x, scale_fmt="ue8m0", impl="torch")
    assert torch.equal(s8, 2.0 ** torch.log2(s8).round())  # powers of two
    assert (s8 >= s).all() and (s8 < 2 * s).all()  # the next power of two up
    assert q8.float().abs().max() <= FP8_MAX
    assert not torch.equal(s8, s)  # negative control: the format changes the scales


def test_act_quant_leading_dims_and_bf16():
    x = torch.randn(2, 3, 130, generator=gen(3)).to(torch.bfloat16)
    q, s = K.act_quant(x, impl="torch")
    assert q.shape == (2, 3, 130) and s.shape == (2, 3, 2)
    q2, s2 = K.act_quant(x.reshape(6, 130), impl="torch")
    assert torch.equal(q.view(6, 130).float(), q2.float()) and torch.equal(s.view(6, 2), s2)


def blockwise_gemm_reference(a, a_s, b, b_s, block=128) -> torch.Tensor:
    """The kernel's formula, in float64 with explicit loops over K and N blocks."""
    m, k = a.shape
    n = b.shape[0]
    out = torch.zeros(m, n, dtype=torch.float64)
    for kb in range(-(-k // block)):
        ks = slice(kb * block, (kb + 1) * block)
        for nb in range(-(-n // block)):
            ns = slice(nb * block, (nb + 1) * block)
            part = a[:, ks].double() @ b[ns, ks].double().T
            out[:, ns] += part * a_s[:, kb, None].double() * b_s[nb, kb].double()
    return out


@pytest.mark.parametrize("m,n,k", [(5, 200, 300), (1, 64, 40), (17, 256, 128)])
def test_fp8_gemm_torch_equals_blockwise_reference(m, n, k):
    g = gen(4)
    a = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)
    wq, ws = quantize_block(w)
    aq, as_ = K.act_quant(a, impl="torch")
    ref = blockwise_gemm_reference(aq, as_, wq, ws)
    got = K.fp8_gemm(aq, as_, wq, ws, out_dtype=torch.float32, impl="torch")
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6
    # negative control: scales of the wrong weight blocks give a different product
    if ws.shape[0] > 1:
        bad = K.fp8_gemm(aq, as_, wq, ws.flip(0).contiguous(), out_dtype=torch.float32, impl="torch")
        assert ((bad.double() - ref).abs().max() / ref.abs().max()).item() > 1e-2
    # and the whole FP8 linear is close to the unquantised product (FP8 error, a few percent)
    full = a @ w.T
    lin = K.fp8_linear(a, wq, ws, impl="torch")
    assert ((lin - full).norm() / full.norm()).item() < 0.06


@pytest.mark.parametrize("k", [512, 1024, 2048])
def test_fp8_gemm_float64_sum_does_not_depend_on_the_split_of_k(k):
    """Row-parallel layers add the GEMMs of K's parts (one per rank). Accumulated in float64 the
    parts' sum rounds to the whole GEMM's float32 and bf16 values; in float32 (the control) most
    outputs differ in their last bit (measured here: 85-90% at K = 1024, 2048)."""
    g = gen(6)
    a = torch.randn(48, k, generator=g)
    wq, ws = quantize_block(torch.randn(256, k, generator=g) * 0.02)
    aq, as_ = K.act_quant(a, impl="torch")
    ref = blockwise_gemm_reference(aq, as_, wq, ws)

    def parts(acc, cuts):
        bounds = [0, *cuts, k]
        return sum(K.fp8_gemm(aq[:, lo:hi], as_[:, lo // 128: hi // 128], wq[:, lo:hi], ws[:, lo // 128: hi // 128],
                              out_dtype=acc, acc_dtype=acc, impl="torch")
                   for lo, hi in zip(bounds, bounds[1:]))

    whole = K.fp8_gemm(aq, as_, wq, ws, out_dtype=torch.float64, acc_dtype=torch.float64, impl="torch")
    assert ((whole - ref).abs().max() / ref.abs().max()).item() < 1e-12  # the kernel's formula, exactly
    for cuts in ([k // 2], [k // 4, k // 2, 3 * k // 4], [128]):
        split = parts(torch.float64, cuts)
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(split.to(dtype), whole.to(dtype)), (cuts, dtype)
    if k < 1024:
        return
    # the control cuts after 5 blocks of 128, which no K panel of 256, 384 or 512 (the BLAS's) ends on
    cut = 640
    whole32 = K.fp8_gemm(aq, as_, wq, ws, out_dtype=torch.float32, impl="torch")
    differ = (parts(torch.float32, [cut]) != whole32).float().mean().item()
    print(f"\nK={k}: float32 accumulation, [0, {cut}) + [{cut}, {k}) vs whole: {differ:.1%} of outputs differ")
    assert differ > 0.05


def test_fp8_gemm_torch_in_64_blocks_equals_blockwise_reference():
    # a block other than 128 reaches both scale expansions (activations and weight)
    g = gen(9)
    a = torch.randn(3, 200, generator=g)
    wq, ws = quantize_block(torch.randn(100, 200, generator=g) * torch.logspace(-2, 1, 200), (64, 64))
    aq, as_ = K.act_quant(a, 64, impl="torch")
    ref = blockwise_gemm_reference(aq, as_, wq, ws, block=64)
    got = K.fp8_gemm(aq, as_, wq, ws, 64, out_dtype=torch.float32, impl="torch")
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_float16_in_and_out_equal_the_float32_values_rounded():
    g = gen(10)
    x = torch.randn(4, 200, generator=g).half()
    q, s = K.act_quant(x, impl="torch")
    q32, s32 = K.act_quant(x.float(), impl="torch")  # float16 -> float32 is exact
    assert torch.equal(q.float(), q32.float()) and torch.equal(s, s32)
    wq, ws = quantize_block(torch.randn(130, 200, generator=g))
    w32 = K.weight_dequant(wq, ws, dtype=torch.float32, impl="torch")
    assert torch.equal(K.weight_dequant(wq, ws, dtype=torch.float16, impl="torch"), w32.half())
    y32 = K.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, impl="torch")
    assert torch.equal(K.fp8_gemm(q, s, wq, ws, out_dtype=torch.float16, impl="torch"), y32.half())


def test_twin_dequantises_into_one_reused_scratch_buffer():
    """The torch twins dequantise a weight into one reused buffer (a fresh ~60 MB tensor's first touch
    costs as much as the conversion): the products equal a freshly allocated dequantisation's."""
    g = gen(7)
    a, _ = K.act_quant(torch.randn(6, 384, generator=g), impl="torch")
    a_s = K.act_quant(torch.randn(6, 384, generator=g), impl="torch")[1]
    weights = [quantize_block(torch.randn(256, 384, generator=g)) for _ in range(3)]
    K.release_scratch()
    ptrs = set()
    for wq, ws in weights:
        got = K.fp8_gemm(a, a_s, wq, ws, out_dtype=torch.float32, impl="torch")
        ref = (a.float() * a_s.repeat_interleave(128, -1)) @ K.weight_dequant(wq, ws, dtype=torch.float32).T
        assert torch.equal(got, ref)
        ptrs.add(K.scratch((1,), torch.float32, torch.device("cpu")).data_ptr())
    assert len(ptrs) == 1  # one buffer for all three
    big = K.scratch((1024, 1024), torch.float64, torch.device("cpu"))  # grows for a larger request
    assert big.shape == (1024, 1024) and big.dtype == torch.float64
    K.release_scratch()


def test_dequant_for_gemm_allocates_when_autograd_keeps_the_weight():
    wq, ws = quantize_block(torch.randn(256, 256, generator=gen(8)))
    x = torch.randn(4, 256, requires_grad=True)
    K.release_scratch()
    with torch.no_grad():
        w = K.dequant_for_gemm(wq, ws, 128, x)
    assert w.data_ptr() == K.scratch((1,), torch.float32, w.device).data_ptr()  # the scratch buffer
    kept = K.dequant_for_gemm(wq, ws, 128, x)  # x needs a gradient: F.linear saves the weight
    assert kept.data_ptr() != K.scratch((1,), torch.float32, w.device).data_ptr()
    assert torch.equal(kept, K.weight_dequant(wq, ws, dtype=torch.float32))
    y = torch.nn.functional.linear(x, kept)
    K.dequant_for_gemm(*quantize_block(torch.randn(256, 256)), 128, x.detach())  # reuses scratch meanwhile
    y.sum().backward()
    assert torch.allclose(x.grad, K.weight_dequant(wq, ws, dtype=torch.float32).sum(0).expand(4, -1), atol=1e-4)
    K.release_scratch()


def test_weight_dequant_torch_stacked_experts():
    w = torch.randn(3, 200, 136, generator=gen(5))
    pairs = [quantize_block(we) for we in w]
    q, s = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    y = K.weight_dequant(q, s, dtype=torch.float32, impl="torch")
    for e in range(3):
        assert torch.equal(y[e], K.weight_dequant(q[e], s[e], dtype=torch.float32, impl="torch"))
    assert K.weight_dequant(q, s, impl="torch").dtype == torch.bfloat16


# ------------------------------------------------------------------------------- the switch, errors
def test_resolve_impl(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    assert K.resolve_impl(None, cpu) == "torch"  # auto: torch off CUDA
    assert K.resolve_impl("torch", cpu) == "torch"
    monkeypatch.setenv(K.ENV_VAR, "torch")
    assert K.resolve_impl(None, torch.device("cuda")) == "torch"  # the env var decides
    monkeypatch.setenv(K.ENV_VAR, "cuda")
    with pytest.raises(K.KernelError, match=r"DSV3_KERNELS='cuda': choose one of"):
        K.resolve_impl(None, cpu)
    with pytest.raises(K.KernelError, match=r"impl='fast': choose one of"):
        K.resolve_impl("fast", cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if HAS_TRITON:
        with pytest.raises(K.KernelError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
            K.resolve_impl("triton", cpu)
    else:
        with pytest.raises(K.KernelError, match="needs the triton package"):
            K.resolve_impl("triton", cpu)


@pytest.mark.skipif(not HAS_TRITON, reason="the version check reads the installed triton")
def test_the_interpreter_needs_a_triton_that_runs_our_kernels(monkeypatch):
    """Triton 3.4-3.6's interpreter fails inside fp8_gemm_kernel's loop over a runtime count (a deep
    TypeError); such a triton is named in one line instead. A GPU's compiled kernels are not held to it."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for version, ok in (("3.6.0", False), ("3.4.1", False), ("3.7.0", True), ("3.10.0+git1a2b", True)):
        monkeypatch.setattr(K, "_triton_version_text", lambda v=version: v)
        if ok:
            assert K.resolve_impl("triton", cpu) == "triton"
        else:
            with pytest.raises(K.KernelError, match=rf"from triton 3.7 on \(found {version}: its interpreter"):
                K.resolve_impl("triton", cpu)


def test_wrapper_input_errors():
    x = torch.randn(4, 200)
    q, s = K.act_quant(x, impl="torch")
    wq, ws = quantize_block(torch.randn(130, 200))
    cases = [
        (lambda: K.act_quant(x.long()), "act_quant: x must be float32, bfloat16 or float16"),
        (lambda: K.act_quant(torch.zeros(3, 0)), "non-empty last"),
        (lambda: K.act_quant(x, scale_fmt="e8m0"), "scale_fmt='e8m0'"),
        (lambda: K.act_quant(x, 100), "block=100 must be a power of two"),
        (lambda: K.weight_dequant(wq.float(), ws), "weight_dequant: q must be float8_e4m3fn"),
        (lambda: K.weight_dequant(wq, ws[:1]), r"weight_dequant: s has shape \(1, 2\), expected \(2, 2\)"),
        (lambda: K.weight_dequant(wq, ws.double()), "s must be a float32 tensor"),
        (lambda: K.weight_dequant(wq[None, None], ws), "must have 2 or 3 dims"),
        (lambda: K.fp8_gemm(x, s, wq, ws), "fp8_gemm: a must be float8_e4m3fn"),
        (lambda: K.fp8_gemm(q, s, wq[:, :100], ws), r"a has 200 channels but b \(130, 100\) has 100"),
        (lambda: K.fp8_gemm(q, s[:, :1], wq, ws), r"fp8_gemm: a_s has shape \(4, 1\), expected \(4, 2\)"),
        (lambda: K.fp8_gemm(q, s, wq, ws[:, :1]), r"fp8_gemm: b_s has shape \(2, 1\), expected \(2, 2\)"),
        (lambda: K.fp8_gemm(q, s, wq, ws, out_dtype=torch.int32), "out_dtype must be"),
        (lambda: K.fp8_gemm(q, s, wq, ws, acc_dtype=torch.bfloat16), "acc_dtype must be float32 or float64"),
    ]
    for fn, msg in cases:
        with pytest.raises(K.KernelError, match=msg):
            fn()


def test_an_empty_kernel_env_var_means_auto(monkeypatch):
    monkeypatch.setenv(K.ENV_VAR, "")
    assert K.resolve_impl(None, torch.device("cpu")) == "torch"
    assert K.resolve_impl(None, torch.device("cuda")) == ("triton" if HAS_TRITON else "torch")  # auto, not torch


def test_wrapper_errors_for_dims_transposed_scales_devices_and_small_blocks():
    wq, ws = quantize_block(torch.randn(300, 200, generator=gen(11)))  # scales [3, 2]
    q, s = K.act_quant(torch.randn(4, 200, generator=gen(12)), impl="torch")
    cases = [
        (lambda: K.fp8_gemm(q, s, wq[0], ws), r"fp8_gemm: b must have 2 dims, got shape \(200,\)"),
        (lambda: K.weight_dequant(wq[0], ws), "weight_dequant: q must have 2 or 3 dims"),
        # transposed scales hold as many numbers: the shape itself is checked
        (lambda: K.weight_dequant(wq, ws.T.contiguous()), r"s has shape \(2, 3\), expected \(3, 2\)"),
        (lambda: K.fp8_gemm(q, s, wq, ws.T.contiguous()), r"b_s has shape \(2, 3\), expected \(3, 2\)"),
        (lambda: K.weight_dequant(wq, ws.to("meta")), "tensors on different devices: q on cpu, s on meta"),
        (lambda: K.act_quant(torch.randn(2, 64), 8), "block=8 must be a power of two >= 16"),
    ]
    for fn, msg in cases:
        with pytest.raises(K.KernelError, match=msg):
            fn()


# -------------------------------------------------------------------- Triton under the interpreter
@pytest.fixture(scope="module")
def interp_results() -> list[dict]:
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install -e '.[triton]')")
    found = K._triton_version_text()
    if TorchVersion(found) < K.INTERPRETER_MIN:  # a GPU image's older triton: its CUDA tests below run
        pytest.skip(f"triton {found}'s interpreter cannot run these kernels (3.7 or later: pip install -e '.[test]')")
    # PYTHONPATH: this checkout's `model`, not whichever one an editable install points at
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop(K.ENV_VAR, None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "workers" / "kernel_interp_checks.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    print(f"\n{'kernel':15} {'case':32} measured (Triton interpreter vs torch twin)")
    for r in rows:
        vals = {k: v for k, v in r.items() if k not in ("kind", "case", "dtypes", "shapes", "dtype", "shape")}
        print(f"{r['kind']:15} {r['case']:32} " + " ".join(
            f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items()))
    return rows


def of_kind(rows, kind):
    got = [r for r in rows if r["kind"] == kind]
    assert got, f"no {kind} results"
    return got


def test_interp_act_quant_matches_twin(interp_results):
    rows = of_kind(interp_results, "act_quant")
    assert len(rows) == 16
    for r in rows:
        assert r["dtypes"] == ["torch.float8_e4m3fn", "torch.float32"], r["case"]
        assert r["shapes"][0][:-1] == r["shapes"][1][:-1], r["case"]
        assert r["scale_rel"] <= SCALE_REL, r["case"]
        assert r["q_mismatch"] <= Q_MISMATCH_FRAC * r["numel"], r["case"]
        assert r["deq_rel"] <= 2.0**-4, r["case"]  # at most one e4m3 step of the largest value
    control = next(r for r in interp_results if r["case"] == "act_quant block 64 vs 128")
    assert control["frac_differ"] > 10 * Q_MISMATCH_FRAC  # the mismatch measure can fail


def test_interp_weight_dequant_matches_twin(interp_results):
    for r in of_kind(interp_results, "weight_dequant"):
        dtype = r["case"].split()[-1]
        assert r["dtype"] == f"torch.{dtype}"
        assert r["rel"] <= DEQUANT_REL[dtype], r["case"]


def test_interp_fp8_gemm_matches_twin(interp_results):
    rows = of_kind(interp_results, "fp8_gemm")
    assert len(rows) == 8
    for r in rows:
        dtype = r["case"].split()[-1]
        assert r["dtype"] == f"torch.{dtype}"
        assert r["rel"] <= GEMM_REL[dtype], r["case"]
    control = next(r for r in interp_results if r["case"] == "fp8_gemm flipped weight scales")
    assert control["rel"] > 100 * GEMM_REL["float32"]
    assert of_kind(interp_results, "fp8_linear")[0]["rel"] <= GEMM_REL["float32"]


def test_interp_a_nan_activation_block_stays_nan(interp_results):
    """The Triton kernel's tl.max and clamp dropped a NaN: the block's scale and the GEMM's output came
    back finite (-2.0 where the twin and DeepSeek's reference give NaN; a review). With and without
    ue8m0 (whose bit rounding turned a NaN scale into 0.0 in the twin)."""
    rows = of_kind(interp_results, "nan_block")
    assert len(rows) == 2
    for r in rows:
        assert r["scale_nan"] == [True, True] and r["out_all_nan"] == [True, True], r
        assert r["clean_row_rel"] <= GEMM_REL["float32"], r  # the control: a row without NaN is finite, as before


def test_interp_kernels_agree_with_the_twins_bit_for_bit(interp_results):
    # the module's promise on the interpreter: the same roundings as torch, so no tolerance at all
    for r in of_kind(interp_results, "act_quant"):
        assert r["scale_rel"] == 0 and r["q_mismatch"] == 0, r["case"]
    for r in of_kind(interp_results, "weight_dequant"):
        assert r["exact"], r["case"]
    exact = {r["case"]: r for r in of_kind(interp_results, "exact")}
    assert len(exact) == 7 and all(r["equal"] for r in exact.values()), exact
    # ue8m0 of amax = 448, 7, 0.4375: amax / 448 is already a power of two (1, 2^-6, 2^-10) and stays
    assert exact["act_quant ue8m0 at powers of two"]["scales"] == [1.0, 2.0**-6, 2.0**-10]
    # the controls: bf16 rounding, exact ties among them, really happened in the exact-sum cases
    gemm = exact["fp8_gemm exact sums bfloat16"]
    assert gemm["rounded"] > 0 and gemm["ties"] > 0, gemm
    assert exact["weight_dequant bf16 ties"]["rounded"] > 0


def test_interp_gemm_refuses_float64_accumulation_and_writes_inside_its_outputs(interp_results):
    err = next(r for r in of_kind(interp_results, "error") if r["case"] == "fp8_gemm acc_dtype float64 on triton")
    assert err["error"] and "accumulates in float32" in err["error"], err
    canary = of_kind(interp_results, "canary")[0]
    assert canary["q_tail"] and canary["s_tail"], canary  # nothing written past q or s


# --------------------------------------------------------------------------------------------- CUDA
cuda_only = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")


@cuda_only
@pytest.mark.parametrize("shape", [(5, 300), (257, 7168), (2, 3, 200)])
@pytest.mark.parametrize("fmt", [None, "ue8m0"])
def test_cuda_act_quant(shape, fmt):
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    qt, st = K.act_quant(x, scale_fmt=fmt, impl="triton")
    qr, sr = K.act_quant(x, scale_fmt=fmt, impl="torch")
    # both scales are amax / 448 correctly rounded (the twin once took torch's reciprocal-multiply on
    # CUDA, an ulp off in ~60% of blocks, and 0.12% of codes fell a step away on an H200, on exact
    # e4m3 ties that bf16 inputs make common), so scales are equal and codes equal in value (a tiny
    # negative input becomes +0 in the kernel's rounding, -0 in torch's cast)
    assert torch.equal(st, sr)
    assert torch.equal(qt.float(), qr.float())


@cuda_only
@pytest.mark.parametrize("shape", [(300, 200), (4, 2048, 7168)])
def test_cuda_weight_dequant(shape):
    q = torch.randn(*shape, device="cuda").clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(*shape[:-2], -(-shape[-2] // 128), -(-shape[-1] // 128), device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        yt = K.weight_dequant(q, s, dtype=dtype, impl="triton")
        yr = K.weight_dequant(q, s, dtype=dtype, impl="torch")
        assert ((yt.float() - yr.float()).abs().max() / yr.float().abs().max()).item() <= DEQUANT_REL[str(dtype)[6:]]


# FP8 tensor cores (sm89+, the kernel's dot mode 0) keep fewer bits than float32 while they sum one
# 128-deep block, which is why the kernel adds each block's product into float32 itself: against
# float64 of the same operands an H200 gave 3.3e-4 to 4.9e-4 of the largest output at DeepSeek-V3's
# shapes (tests/gpu/check_record.py, whose bound this is), where the float32 twin gives ~2e-6.
FP8_MMA_REL = 1e-3


@cuda_only
@pytest.mark.parametrize("m,n,k", [(1, 7168, 2048), (5, 200, 300), (300, 4096, 7168)])
def test_cuda_fp8_gemm(m, n, k):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_block(torch.randn(n, k, device="cuda"))
    xq, xs = K.act_quant(x, impl="torch")
    exact = K.fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float64, impl="torch", acc_dtype=torch.float64)
    f32_rel = FP8_MMA_REL if K._dot_mode(x.device) == 0 else GEMM_REL["float32"]
    for dtype in (torch.float32, torch.bfloat16):
        ct = K.fp8_gemm(xq, xs, wq, ws, out_dtype=dtype, impl="triton")
        err = ((ct.double() - exact).abs().max() / exact.abs().max()).item()
        assert err <= (f32_rel if dtype == torch.float32 else f32_rel + GEMM_REL["bfloat16"]), (dtype, err)


def test_interp_act_quant_keeps_the_sign_of_zero(interp_results):
    """Bit for bit means the zero's sign too: -1e-6 in a block of scale 1 is code 0x80 (-0) in torch."""
    r = of_kind(interp_results, "signed_zero")[0]
    assert r["bytes_torch"] == [126, 128, 128, 0, 128, 0], r  # the control: torch's cast keeps the sign
    assert r["bytes_triton"] == r["bytes_torch"], r
