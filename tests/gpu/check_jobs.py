"""GPU check: the jobs themselves (`dsv3-probe record` and `dsv3-probe spec`, through the same
functions the command calls) on the bundled model on one CUDA GPU, against the same jobs on the CPU.
Not a pytest module (CI never collects it); it needs a GPU machine.

    python tests/gpu/check_jobs.py                  # one GPU (the project need not be installed)
    python tests/gpu/check_jobs.py --max-tokens 200000
    python tests/gpu/check_jobs.py --cpu            # the script itself: the "device" is the CPU too

Records the bundled validation corpus (`--max-tokens`, every domain) three times: float32 on the
CPU (the reference), float32 on the GPU and bfloat16 on the GPU; then an FP8 copy of the model with
FP8 GEMMs (`--gemm fp8 --dtype bfloat16`) on the CPU (the kernels' torch twins), on the GPU with the
twins (DSV3_KERNELS=torch) and on the GPU with Triton's kernels, a trained model's routing as a test
of the kernels; and runs `spec` (greedy decoding with MTP drafts) on the CPU and on the GPU in
float32. Prints tokens/s of each record, how the GPU's routing compares with the reference
(identical top-k sets, identical top-1, per layer), the mean loss per domain, and the MTP
acceptance of both spec runs. With --cpu the "device" is the CPU, and a device job that would
repeat a CPU job exactly (float32, FP8 on the default kernels, spec: the same arguments) is that job's
run, compared as the device's: each job runs once, and the comparisons and reports are the script's.

Passes when, against the CPU's float32 record, the GPU's float32 record keeps >= 99.5% of top-k
sets identical and moves no domain's mean loss by more than 1e-3 nats, and its bfloat16 record
keeps >= 97% (the CPU's own bf16 kept 98.98-98.99% in bench_dtype.py, README) and moves none by more
than 0.01; when the GPU's FP8 record on Triton keeps >= 97% against the twins on the same GPU (only the GEMMs differ,
by ~1e-4 of the largest output: Hopper's FP8 tensor cores accumulate each 128-deep block with
fewer bits than float32; not yet run on a GPU) and moves no loss by more than 0.01, and moves no
loss by more than 0.01 against the CPU's FP8 record either (its routing there is printed, not
judged: on an H200 96.97% of top-k sets were identical, twice, 2026-12-04, with the rest of the
bf16 arithmetic the GPU's too, which FP8's activation quantisation amplifies: a last-bit change
can move a code a whole e4m3 step); and when the GPU's spec acceptance rate is within 0.02 of the
CPU's. The GPU's float32 GEMMs are not the CPU's (blocking, and no TF32: torch's default), so a
few near-tied choices may flip; the bounds leave room for those and none for a wrong kernel or a
lost batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # as the jobs' entry points set it

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import probe  # noqa: E402
from analyses.metrics import MetricsError, record_agreement  # noqa: E402 (numpy, pandas: no DuckDB)
from model import kernels  # noqa: E402
from model.saving import fp8_copy  # noqa: E402
from probe.job import DEFAULT_CKPT  # noqa: E402
from probe.record import RecordOptions, record  # noqa: E402
from probe.speculative import SpecOptions, record_spec  # noqa: E402

SAME_F32, SAME_BF16 = 0.995, 0.97  # identical top-k sets against the CPU's float32 record
SAME_FP8 = 0.97  # identical top-k sets, the device's FP8 kernels against the twins on the same device
LOSS_F32, LOSS_BF16 = 1e-3, 1e-2  # largest move of a domain's mean loss (nats)
SPEC_RATE = 0.02  # acceptance rate, GPU against CPU


@contextmanager
def fp8_kernels(impl: str | None):
    """The FP8 kernels `impl` ("torch": the twins; None: as the environment says) for the body; the
    model reads the choice (DSV3_KERNELS) at each forward."""
    before = os.environ.get(kernels.ENV_VAR)
    if impl is not None:
        os.environ[kernels.ENV_VAR] = impl
    try:
        yield
    finally:
        os.environ.pop(kernels.ENV_VAR, None)
        if before is not None:
            os.environ[kernels.ENV_VAR] = before


def record_run(out: Path, device: str, dtype: str, ns, ckpt: str | None = None, gemm: str = "bf16",
               impl: str | None = None, name: str | None = None) -> dict:
    """One record job (routing and tokens only: the time is the model's); its tables and tokens/s.
    `name`: the device as the report names it (default `device`)."""
    t0 = time.perf_counter()
    with fp8_kernels(impl):
        record(RecordOptions(ckpt=ckpt, out=str(out), device=device, dtype=dtype, gemm=gemm,
                             max_tokens=ns.max_tokens, batch_size=ns.batch_size, kv_stats=False, mtp=False,
                             progress=False))
    secs = time.perf_counter() - t0
    run = probe.open_run(out)
    tokens = run.df("tokens", columns=["seq_id", "pos", "domain", "loss"])
    routing = run.df("routing", columns=["seq_id", "pos", "layer", "expert_ids"])
    kind = {None: "FP8 GEMMs", "torch": "FP8 GEMMs on the torch twins"}[impl]
    where = name or device
    label = f"{dtype} on {where}" if gemm == "bf16" else f"{dtype} with {kind} on {where}"
    return {"tokens": tokens, "routing": routing, "secs": secs, "label": label}


def as_device(run: dict, name: str) -> dict:
    """The CPU mode's stand-in for a device run that would repeat `run` (the same job, dtype and
    kernels on the same CPU): its tables and time, labelled as on `name`."""
    return run | {"label": run["label"].replace(" on cpu", f" on {name}")}


def compare(ref: dict, got: dict) -> dict:
    """`record_agreement` of got against ref; no (token, layer) in common is reported as a failed
    check, not a traceback."""
    try:
        return record_agreement(ref["tokens"], ref["routing"], got["tokens"], got["routing"])
    except MetricsError as e:
        print(f"\n{got['label']}: {e}")
        return {"pairs": 0, "of": len(ref["routing"]), "same_set": 0.0, "top1": 0.0, "per_layer": pd.Series(),
                "loss": pd.DataFrame(columns=["loss_ref", "loss_got"]), "loss_move": float("inf")}


def spec_run(out: Path, device: str, ns) -> dict:
    t0 = time.perf_counter()
    record_spec(SpecOptions(out=str(out), device=device, dtype="float32", max_prompts=ns.prompts, progress=False))
    secs = time.perf_counter() - t0
    d = probe.open_run(out).df("spec_decode")
    return {"rate": d.drafts_accepted.sum() / max(1, d.drafts_proposed.sum()),
            "per_forward": d.new_tokens.sum() / d.forward_passes.sum(), "prompts": len(d), "secs": secs}


def report(ref: dict, got: dict, c: dict, same_min: float, loss_max: float) -> bool:
    ok = c["pairs"] == c["of"] and c["same_set"] >= same_min and c["loss_move"] <= loss_max
    n = len(got["tokens"])
    print(f"\n{got['label']}: {n:,} tokens in {got['secs']:.1f} s ({n / got['secs']:,.0f} tokens/s; "
          f"{ref['label']}: {len(ref['tokens']) / ref['secs']:,.0f})")
    bound = f">= {100 * same_min:.1f}%" if same_min > 0 else "measured, not judged"
    print(f"  routing vs {ref['label']}: {c['pairs']:,} of {c['of']:,} (token, layer) pairs matched, top-k sets "
          f"identical {100 * c['same_set']:.2f}% ({bound}), top-1 {100 * c['top1']:.2f}%; per layer "
          + ", ".join(f"{layer} {100 * v:.2f}%" for layer, v in c["per_layer"].items()))
    print(f"  mean loss per domain, {ref['label']} / this: "
          + ", ".join(f"{d} {row.loss_ref:.4f} / {row.loss_got:.4f}" for d, row in c["loss"].iterrows())
          + f"; largest move {c['loss_move']:.1e} (<= {loss_max:g}): {'ok' if ok else 'FAILED'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="the 'device' runs on the CPU too: checks the script")
    p.add_argument("--max-tokens", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=64, help="spec prompts (default 64)")
    ns = p.parse_args()
    if not ns.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: pass --cpu to check the script on the CPU")
    device = "cpu" if ns.cpu else "cuda"
    dev_name = "the CPU as the device" if ns.cpu else "cuda"  # so the two sides of a CPU-mode line differ
    if ns.cpu:
        ns.max_tokens, ns.prompts = min(ns.max_tokens, 2000), min(ns.prompts, 4)
    where = "CPU" if ns.cpu else torch.cuda.get_device_name()
    print(f"jobs on the bundled model: CPU ({torch.get_num_threads()} threads) against {where}, "
          f"torch {torch.__version__}" + ("; the first record of this process pays its one-time set-up (the GEMM "
                                          "choice, oneDNN's kernels), so compare routing and losses, not speed"
                                          if ns.cpu else ""))
    with tempfile.TemporaryDirectory() as d:
        ref = record_run(Path(d) / "cpu32", "cpu", "float32", ns)
        ok = True
        for dtype, same_min, loss_max in (("float32", SAME_F32, LOSS_F32), ("bfloat16", SAME_BF16, LOSS_BF16)):
            if ns.cpu and dtype == "float32":  # the reference's job again (the same CPU, dtype and kernels)
                got = as_device(ref, dev_name)
            else:
                got = record_run(Path(d) / f"dev-{dtype}", device, dtype, ns, name=dev_name)
            ok &= report(ref, got, compare(ref, got), same_min, loss_max)
        # FP8 weights and GEMMs: the device's kernels (Triton on a GPU) against the torch twins on the
        # same device (only the GEMMs differ: judged), then against the CPU's twins (routing measured)
        fp8 = str(fp8_copy(DEFAULT_CKPT, Path(d) / "ckpt-fp8"))
        ref8 = record_run(Path(d) / "cpu-fp8", "cpu", "bfloat16", ns, fp8, "fp8")
        twin8 = ref8 if ns.cpu else record_run(Path(d) / "dev-fp8-twins", device, "bfloat16", ns, fp8, "fp8",
                                               impl="torch", name=dev_name)  # on the CPU the twins are the reference
        got8 = as_device(ref8, dev_name) if ns.cpu else record_run(Path(d) / "dev-fp8", device, "bfloat16", ns, fp8,
                                                                    "fp8", name=dev_name)  # the CPU: ref8's job again
        ok &= report(twin8, got8, compare(twin8, got8), SAME_FP8, LOSS_BF16)
        if not ns.cpu:  # on the CPU the reference is the twins' run: the same comparison again
            ok &= report(ref8, got8, compare(ref8, got8), 0.0, LOSS_BF16)
        s_ref = spec_run(Path(d) / "spec-cpu", "cpu", ns)
        s_dev = s_ref if ns.cpu else spec_run(Path(d) / "spec-dev", device, ns)
    spec_ok = s_ref["prompts"] == s_dev["prompts"] and abs(s_dev["rate"] - s_ref["rate"]) <= SPEC_RATE
    print(f"\nspec, float32, {s_dev['prompts']} prompts: MTP drafts accepted {s_ref['rate']:.3f} on the CPU "
          f"({s_ref['secs']:.1f} s), {s_dev['rate']:.3f} on {where} ({s_dev['secs']:.1f} s); tokens per forward "
          f"{s_ref['per_forward']:.3f} / {s_dev['per_forward']:.3f} (rates within {SPEC_RATE}): "
          f"{'ok' if spec_ok else 'FAILED'}")
    ok &= spec_ok
    print("\nall checks passed" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # NOTE: without the interpreter's teardown of torch (0.4-0.5 s a process), as check_parallel.py
