"""A speed reference for the suite's own time, printed under its summary (tests/conftest.py).

The suite's time follows the host more than the code: the same commit (c79c1fb) ran in 127 s on a
2-core Intel Xeon and in 244 s on a 2-core AMD EPYC. Most of it is interpreter start-ups that import
torch (about 60 of them: torchrun ranks, CLI commands, notebook kernels) and small float32 work.
So the line names the CPU and times what the suite is made of: this process's `import torch`, a
pure-Python loop and a 512 x 512 x 512 float32 GEMM on one thread. A suite that got slower on a host
whose reference did not is a regression of ours; one whose reference slowed with it is the host.
"""

from __future__ import annotations

import os
import time

from model.gemm import cpu_model

# measured on the 2-core AMD EPYC of 2026-12-03, where the suite took 217-245 s (README, Quickstart)
EPYC_2026_12_03 = "import torch 2.4 s, Python loop 53 ms, GEMM 94 GFLOP/s"


def reference(import_torch_s: float | None) -> str:
    """One line: the CPU, its cores and the three timings (each the best of a few runs; 0.3 s in all)."""
    import torch

    from .threads import one_thread

    loop = min(_timed(lambda: sum(i * i for i in range(1_000_000))) for _ in range(5))
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    with one_thread():
        gemm = min(_timed(lambda: torch.mm(a, b)) for _ in range(20))
    imported = "torch imported before conftest" if import_torch_s is None else f"import torch {import_torch_s:.1f} s"
    return (f"machine reference: {cpu_model()}, {os.cpu_count()} cores: {imported}, Python loop {loop * 1e3:.0f} ms, "
            f"GEMM {2 * 512 ** 3 / gemm / 1e9:.0f} GFLOP/s (the 2-core EPYC of 2026-12-03: {EPYC_2026_12_03})")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
