"""GPU check: the Triton FP8 kernels against their torch twins at DeepSeek-V3 shapes, timed, then a
forward pass (FP8 weights resident vs dequantised) and a few decode steps on one GPU.

    python tests/gpu/check_kernels.py                  # on a CUDA machine with triton installed
    python tests/gpu/check_kernels.py --quick          # fewer shapes and repeats
    TRITON_INTERPRET=1 python tests/gpu/check_kernels.py --cpu-smoke    # the script itself, on a CPU

Not a pytest module (no test_ prefix, so CI never collects it). Prints one table per part: max
error vs the torch twin (relative to the largest output), milliseconds per call for Triton and
torch (CUDA events, median), and the GEMM's TFLOP/s. Exits non-zero if an error exceeds the
tolerances of tests/model/test_kernels.py, or if weight quantisation (model.fp8.quantize_block) on
the GPU differs from the CPU's in any scale or code bit. This runs world size 1; the tensor + expert
parallel forward is checked and timed by tests/gpu/check_parallel.py (torchrun).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model import kernels as K  # noqa: E402
from model.fp8 import quantize_block  # noqa: E402

SCALE_REL, Q_MISMATCH_FRAC = 1e-6, 0.01
GEMM_REL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7}
# (name, N, K) of DeepSeek-V3 671B projections (per GPU at TP 1): N = out features, K = in features
GEMMS = [("wq_a", 1536, 7168), ("wq_b", 24576, 1536), ("wkv_a", 576, 7168), ("wo", 7168, 16384),
         ("expert w1", 2048, 7168), ("expert w2", 7168, 2048), ("dense w1", 18432, 7168)]


def timed(fn, repeats: int, device) -> float:
    """Median milliseconds per call."""
    fn()
    if device.type != "cuda":
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    p.add_argument("--repeats", type=int, default=20)
    ns = p.parse_args()
    plan = make_plan(ns)
    if isinstance(plan, str):
        print(f"error: {plan}", file=sys.stderr)
        return 2
    if plan.dev.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()}), "
              f"torch {torch.__version__}")
    import triton
    print(f"triton {triton.__version__}; FP8 dot mode {K._dot_mode(plan.dev)} (0 = fp8 tensor cores, 1 = bf16 upcast)")
    g = torch.Generator(device=plan.dev).manual_seed(0)
    failures = check_act_quant(plan, g) + check_quantize_block(plan, g) + check_weight_dequant(plan, g)
    failures += check_fp8_gemm(plan, g)
    failures += forward_check(plan.dev, plan.smoke)
    print("\nFAILED: " + ", ".join(failures) if failures else "\nall checks passed")
    return 1 if failures else 0


@dataclass
class Plan:
    """Where the checks run, and on which row counts, GEMM shapes and number of timed calls."""

    dev: torch.device
    ms: list[int]
    gemms: list[tuple[str, int, int]]
    repeats: int
    smoke: bool


def make_plan(ns: argparse.Namespace) -> Plan | str:
    """The plan for these flags, or why this machine cannot run it."""
    if ns.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "--cpu-smoke needs TRITON_INTERPRET=1 in the environment"
        return Plan(torch.device("cpu"), [1, 5], [("small", 200, 300)], 1, smoke=True)
    if not torch.cuda.is_available() or not K.triton_available():
        return "needs a CUDA GPU and triton (or --cpu-smoke under TRITON_INTERPRET=1)"
    return Plan(torch.device("cuda"), [1, 64, 4096] if ns.quick else [1, 16, 128, 1024, 4096],
                GEMMS[:3] if ns.quick else GEMMS, 5 if ns.quick else ns.repeats, smoke=False)


HEAD = f"{'triton ms':>10} {'torch ms':>9}"


def check_act_quant(plan: Plan, g: torch.Generator) -> list[str]:
    """Activation quantisation (both scale formats): scales and FP8 codes against the torch twin."""
    dev, repeats, failures = plan.dev, plan.repeats, []
    print(f"\n{'act_quant [M, K] bf16':28} {'scale rel':>10} {'q differ':>9} {HEAD} {'GB/s':>7}")
    for m in plan.ms:
        for k in ([300] if plan.smoke else [7168, 2048]):
            for fmt in (None, "ue8m0"):
                x = torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16)
                qt, st = K.act_quant(x, scale_fmt=fmt, impl="triton")
                qr, sr = K.act_quant(x, scale_fmt=fmt, impl="torch")
                srel, diff = ((st - sr).abs() / sr).max().item(), (qt.float() != qr.float()).float().mean().item()
                tt = timed(lambda: K.act_quant(x, scale_fmt=fmt, impl="triton"), repeats, dev)
                tr = timed(lambda: K.act_quant(x, scale_fmt=fmt, impl="torch"), repeats, dev)
                gbs = (x.numel() * 3) / tt / 1e6
                label = f"M={m} K={k} {fmt or 'fp32 scales'}"
                print(f"{label:28} {srel:10.1e} {diff:9.2%} {tt:10.3f} {tr:9.3f} {gbs:7.0f}")
                if srel > SCALE_REL or diff > Q_MISMATCH_FRAC:
                    failures.append(f"act_quant M={m} K={k} {fmt}")
    return failures


def check_quantize_block(plan: Plan, g: torch.Generator) -> list[str]:
    """Weight quantisation (model.fp8.quantize_block, what `model.save(..., fp8=True)` and make_fp8_
    run) on the device against the same on the CPU: scales and codes bit for bit, so a checkpoint
    quantised on a GPU is the one the CPU writes."""
    dev, failures = plan.dev, []
    print(f"\n{'quantize_block [N, K] bf16':28} {'scales differ':>14} {'q differ':>9}")
    for shape in ([(300, 200)] if plan.smoke else [(7168, 2048), (2048, 7168)]):
        for fmt in (None, "ue8m0"):
            w = torch.randn(*shape, device=dev, generator=g).to(torch.bfloat16)  # bf16: values on e4m3 ties
            qd, sd = quantize_block(w, scale_fmt=fmt)
            qc, sc = quantize_block(w.cpu(), scale_fmt=fmt)
            sdiff = (sd.cpu().view(torch.int32) != sc.view(torch.int32)).float().mean().item()
            qdiff = (qd.cpu().view(torch.uint8) != qc.view(torch.uint8)).float().mean().item()
            label = f"{shape} {fmt or 'fp32 scales'}"
            print(f"{label:28} {sdiff:14.2%} {qdiff:9.4%}")
            if sdiff or qdiff:
                failures.append(f"quantize_block {shape} {fmt}")
    return failures


def check_weight_dequant(plan: Plan, g: torch.Generator) -> list[str]:
    """Block-scaled FP8 weights (2-D and stacked experts) dequantised, against the torch twin."""
    dev, repeats, failures = plan.dev, plan.repeats, []
    print(f"\n{'weight_dequant [(E,) N, K]':28} {'max rel':>10} {'':>9} {HEAD} {'GB/s':>7}")
    for shape in ([(300, 200), (3, 200, 136)] if plan.smoke else [(7168, 2048), (2048, 7168), (16, 2048, 7168)]):
        q = torch.randn(*shape, device=dev, generator=g).clamp(-448, 448).to(torch.float8_e4m3fn)
        s = torch.rand(*shape[:-2], -(-shape[-2] // 128), -(-shape[-1] // 128), device=dev, generator=g)
        yt, yr = K.weight_dequant(q, s, impl="triton"), K.weight_dequant(q, s, impl="torch")
        err = rel(yt, yr)
        tt = timed(lambda: K.weight_dequant(q, s, impl="triton"), repeats, dev)
        tr = timed(lambda: K.weight_dequant(q, s, impl="torch"), repeats, dev)
        print(f"{str(shape):28} {err:10.1e} {'':9} {tt:10.3f} {tr:9.3f} {q.numel() * 3 / tt / 1e6:7.0f}")
        if err > 2.0**-8:
            failures.append(f"weight_dequant {shape}")
    return failures


def check_fp8_gemm(plan: Plan, g: torch.Generator) -> list[str]:
    """The FP8 GEMM on the plan's projection shapes and row counts, against the torch twin, timed."""
    dev, repeats, failures = plan.dev, plan.repeats, []
    print(f"\n{'fp8_gemm M x (N, K) -> bf16':28} {'max rel':>10} {'':>9} {HEAD} {'TFLOP/s':>7}")
    for name, n, k in plan.gemms:
        wq, ws = quantize_block(torch.randn(n, k, device=dev, generator=g))
        for m in plan.ms:
            xq, xs = K.act_quant(torch.randn(m, k, device=dev, generator=g), impl="torch")
            ct = K.fp8_gemm(xq, xs, wq, ws, impl="triton")
            cr = K.fp8_gemm(xq, xs, wq, ws, impl="torch")
            err = rel(ct, cr)
            tt = timed(lambda: K.fp8_gemm(xq, xs, wq, ws, impl="triton"), repeats, dev)
            tr = timed(lambda: K.fp8_gemm(xq, xs, wq, ws, impl="torch"), repeats, dev)
            label = f"{name} M={m} ({n}, {k})"
            print(f"{label:28} {err:10.1e} {'':9} {tt:10.3f} {tr:9.3f} "
                  f"{2 * m * n * k / tt / 1e9:7.1f}")
            if err > GEMM_REL[torch.bfloat16]:
                failures.append(f"fp8_gemm {name} M={m}")
    if dev.type == "cuda":
        print("(CUDA events around each Python call: a call too small to keep the GPU busy shows the host's "
              "launch time, ~0.1 ms, not the kernel's)")
    return failures


def decode_profile(m, prompts: list[list[int]], new: int, dev: torch.device) -> str:
    """Where a decode step's time goes, from torch.profiler: generate `new` tokens and 1 token (the
    prompts' prefill and first step), and divide the difference by new - 1. On CUDA: wall ms, GPU
    kernel ms (kernel events, as the profiler's "Self CUDA time total") and kernels a step; on the
    CPU: wall ms and innermost aten ops a step (each one a kernel launch or a view on a GPU).
    NOTE: on the CPU through torch.autograd.profiler, which torch.profiler wraps: torch.profiler's start
    reads a CUDA-graphs setting of torch._inductor (`hasattr(torch, "_inductor")`), and importing
    torch._inductor and torch._dynamo for it took 2-4 s of the CPU smoke's 5-8 s (2-core EPYC, 2026-12-06)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler import profile as cpu_profile
    from torch.profiler import ProfilerActivity, profile

    from generate import generate

    cuda = dev.type == "cuda"

    def run(n: int) -> tuple[float, float, int]:
        with (profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) if cuda else cpu_profile()) as prof:
            t0 = time.perf_counter()
            generate(m, prompts, max_new_tokens=n)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        if cuda:
            kern = [e for e in prof.key_averages()
                    if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
            return wall * 1e3, sum(e.self_device_time_total for e in kern) / 1e3, sum(e.count for e in kern)
        leaves = [e for e in prof.function_events if e.name.startswith("aten::")
                  and not any(c.name.startswith("aten::") for c in e.cpu_children)]  # not linear's mm twice
        return wall * 1e3, 0.0, len(leaves)

    (w1, d1, k1), (wn, dn, kn) = run(1), run(new)
    per = max(new - 1, 1)
    if cuda:
        return f"{(wn - w1) / per:.2f} ms wall, {(dn - d1) / per:.2f} ms of GPU kernels, {(kn - k1) / per:.0f} kernels"
    return f"{(wn - w1) / per:.2f} ms wall, {(kn - k1) / per:.0f} innermost aten ops"


def forward_check(dev: torch.device, smoke: bool) -> list[str]:
    """A random FP8 checkpoint: logits with FP8 weights resident vs dequantised, and decode speed."""
    import model
    from model import ModelArgs, Transformer
    from generate import generate

    over = dict(vocab_size=97, dim=200, inter_dim=300, moe_inter_dim=136, n_layers=2, n_heads=2, q_lora_rank=136,
                kv_lora_rank=24) if smoke else dict(
        vocab_size=32000, dim=2048, inter_dim=5632, moe_inter_dim=768, n_layers=4, n_dense_layers=1, n_heads=16,
        n_routed_experts=64, n_expert_groups=8, n_limited_groups=4, n_activated_experts=6, q_lora_rank=768,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, max_seq_len=4096)
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | over | {"dtype": "bfloat16"})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        model.save(Transformer(args, dtype=torch.float32).eval(), d, fp8=True)
        dense = model.load(d, device=dev)
        fp8 = model.load(d, device=dev, gemm_impl="fp8")
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    tok = torch.randint(0, args.vocab_size, (2, 8 if smoke else 512), device=dev)
    with torch.no_grad():
        a, b = dense(tok).float(), fp8(tok).float()
    mean_rel = ((a - b).abs().mean() / a.abs().mean()).item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    prompts = tok[:, :64].tolist()
    new = 4 if smoke else 64
    times = {}
    for name, m in (("dequantised bf16", dense), ("FP8 resident", fp8)):
        generate(m, prompts, max_new_tokens=2)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(m, prompts, max_new_tokens=new)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times[name] = time.perf_counter() - t0
    print(f"\nforward on one {dev.type} device: hidden {args.dim}, {args.n_layers} layers, {args.n_routed_experts} "
          f"experts, bf16 compute, tokens {tuple(tok.shape)}")
    steps = 2 if smoke else 16  # profiled decode steps (the interpreter's FP8 steps are slow)
    print(f"{'weights':20} {'param bytes':>14} {'decode tok/s':>13}   a decode step under torch.profiler "
          f"({len(prompts)} rows; {steps} steps less 1)")
    for name, m in (("dequantised bf16", dense), ("FP8 resident", fp8)):
        profiled = decode_profile(m, prompts, steps, dev) if not (smoke and m is fp8) else "(not profiled: interpreter)"
        print(f"{name:20} {nbytes(m):14,} {len(prompts) * new / times[name]:13.1f}   {profiled}")
    print(f"FP8 GEMM vs dequantised logits: mean |diff| / mean |logit| = {mean_rel:.4f}, argmax agreement {agree:.3f}")
    return [] if mean_rel < 0.25 else ["forward FP8 vs dequantised"]


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # NOTE: without the interpreter's teardown of torch (0.4-0.5 s a process), as check_parallel.py
