"""How much a checkpoint load grows a process's resident memory at its peak, measured in a process of its
own (test_tensor_reader.py): a child forked from the test process where Linux lets the child reset its peak
(/proc/self/clear_refs; the fork brings the test process's peak with it), else a fresh interpreter running
this module. One measurement, written once, for both (a fresh interpreter spent ~2.5 s importing torch and
the model for a load of 0.5 s; the two measured alike: 291 and 295 MB, 407 and 405 MB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PEAK_RESET = Path("/proc/self/clear_refs")  # "5" written there makes the peak (VmHWM) the memory now (Linux)


def measure(ckpt, chunk: int, out, reset: bool) -> None:
    """Into `out`: '<peak RSS growth over a load of `ckpt` in chunks of `chunk` bytes> <weights' bytes>'."""
    import torch

    import model
    from model import tensor_reader
    from model.memory import process_memory

    tensor_reader.CHUNK = chunk
    model.load(ckpt, device="meta")  # imports and builds everything a load needs, reads no data
    if reset:
        PEAK_RESET.write_text("5")
    before = process_memory()["rss"]
    m = model.load(ckpt, dtype=torch.float32)
    weights = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    Path(out).write_text(f"{process_memory()['peak_rss'] - before} {weights}")


def load_peak(ckpt, chunk: int) -> tuple[int, int]:
    """(growth of the resident memory at its peak over a load of `ckpt` in chunks of `chunk` bytes, the
    weights' bytes), in a process of its own."""
    out = Path(ckpt).with_name(f"peak-{chunk}")
    if PEAK_RESET.exists():
        from helpers.forked import forked

        assert forked(measure, ckpt, chunk, out, True) == 0
    else:
        tests = Path(__file__).resolve().parents[1]
        p = subprocess.run([sys.executable, "-m", "helpers.load_peak", str(ckpt), str(chunk), str(out)],
                           cwd=tests.parent, capture_output=True, text=True, timeout=120,
                           env=os.environ | {"PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}", "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-2000:]
    grown, weights = map(int, out.read_text().split())
    return grown, weights


if __name__ == "__main__":  # the fresh interpreter's side
    measure(sys.argv[1], int(sys.argv[2]), sys.argv[3], reset=False)
