"""probe.job: what the jobs share (here: the heap thresholds of the long jobs)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A fresh process, since heap thresholds are the whole process's. Allocates a batch-sized
# activation again and again, as a job's forwards do, and prints the page faults of the last ten.
REUSE = """
import ctypes, resource, sys
import torch
from probe.job import bound_heap

if sys.argv[1] == "bound":
    bound_heap()
else:  # the thresholds bound_heap set before 2026-12-02: a 1 MiB mmap threshold
    ctypes.CDLL(None).mallopt(-3, 1 << 20)
n = (8 << 20) // 4  # 8 MiB of float32
for _ in range(20):  # the first few grow the heap (glibc extends it a few times before it settles)
    torch.ones(n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REUSE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.slow  # two fresh processes
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="bound_heap sets glibc's thresholds (a no-op elsewhere)")
def test_bound_heap_reuses_activations_instead_of_faulting_them_in_again():
    """With bound_heap's thresholds an activation's memory is reused from one batch to the next:
    no page faults. The old 1 MiB mmap threshold (the control) mapped each one afresh, 2,048 faults
    per 8 MiB, which made record 1.4x and a bf16 forward 2x slower on an Intel Xeon VM (docs/performance.md)."""
    assert faults("bound") < 100
    assert faults("old") > 10 * 2048 // 2  # the control: the test can tell the two apart


def _note_parts(run: str, who: str, n: int) -> None:
    from probe.writer import updating_run_json

    for i in range(n):
        with updating_run_json(run) as info:
            info.setdefault("parts", {})[f"{who}{i}"] = i


def test_jobs_noting_their_parts_at_once_lose_none(tmp_path):
    """ablate, steer, importance and spec note their part in run.json by read-change-write: two at
    once lost entries (112 of 300 in a review's test); under the lock every entry stays."""
    import json
    import multiprocessing as mp

    (tmp_path / "run.json").write_text(json.dumps({"status": "complete"}))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_note_parts, args=(str(tmp_path), who, 60)) for who in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    parts = json.loads((tmp_path / "run.json").read_text())["parts"]
    assert len(parts) == 120 and json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


class _TwoRanks:
    """Two ranks of a world as threads exchanging objects (broadcast and gather as torch.distributed's)."""

    def __init__(self):
        import threading

        self.box, self.barrier = {}, threading.Barrier(2)

    def rank(self, r):
        hub = self

        class World:
            rank, size = r, 2

            def broadcast(self, obj, src=0):
                if r == src:
                    hub.box["b"] = obj
                hub.barrier.wait()
                got = hub.box["b"]
                hub.barrier.wait()
                return got

            def gather(self, obj):
                hub.box[r] = obj
                hub.barrier.wait()
                got = [hub.box[0], hub.box[1]] if r == 0 else None
                hub.barrier.wait()
                return got

        return World()


def _run_two(options0, options1):
    import threading

    from probe.job import same_options

    hub, errors = _TwoRanks(), [None, None]

    def run(r, opts):
        try:
            same_options(hub.rank(r), opts)
        except Exception as e:  # noqa: BLE001 - the test looks at what each rank raised
            errors[r] = e

    threads = [threading.Thread(target=run, args=(r, o)) for r, o in enumerate((options0, options1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return errors


def test_ranks_with_different_options_stop_alike_naming_the_flag():
    """Under torchrun each node types its own command. Ranks with different --max-tokens hung in a
    collective, different --batch-size crashed inside gloo, and different --dtype wrote one
    "complete" run of mixed settings (found by a review): every rank now raises the same line."""
    import dataclasses

    from probe.job import RecordError, job_options
    from probe.record import RecordOptions

    a = job_options(RecordOptions(max_tokens=4096, out="/node0/run"))
    assert "out" not in a and "progress" not in a  # where each node finds its files may differ
    assert _run_two(a, job_options(RecordOptions(max_tokens=4096, out="/node1/run", progress=False))) == [None, None]
    errors = _run_two(a, job_options(dataclasses.replace(RecordOptions(max_tokens=8192, dtype="bfloat16"))))
    assert all(isinstance(e, RecordError) for e in errors) and str(errors[0]) == str(errors[1])
    assert str(errors[0]) == ("ranks run different jobs: --dtype is None on rank 0 but 'bfloat16' on rank 1 (and 1 "
                              "more); every node's command must pass the same options")
    named = {"the ablations (--top, ...)": ["Ablation(top=2)"]}
    errors = _run_two(a | named, a | {"the ablations (--top, ...)": ["Ablation(top=4)"]})
    assert "the ablations (--top, ...) is ['Ablation(top=2)'] on rank 0 but ['Ablation(top=4)'] on rank 1" \
        in str(errors[1])
