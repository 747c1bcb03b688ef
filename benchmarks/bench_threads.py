"""How torch's OpenMP threads wait: a record under each setting, alternated, in child processes.

    python benchmarks/bench_threads.py                       # 3 rounds of 4,000 tokens, about a minute
    python benchmarks/bench_threads.py --rounds 5 --tokens 10000

Each child records the bundled model over the bundled corpus (`probe.record.record`, as `dsv3-probe
record --max-tokens N` does, with the allocator the jobs choose) into a directory of its own. The child
is started through the library, not the entry points, so that each condition is what it names and
nothing the entry points might set. The conditions, in an order rotated every round after an untimed
warm-up at two threads and at one (a first run at a thread count may measure the GEMM paths,
model/gemm.py):

    default                       torch's threads (one per core), libgomp's default wait
    OMP_WAIT_POLICY=PASSIVE       threads sleep at once at a barrier instead of spinning first
    GOMP_SPINCOUNT=1000 / 10000   libgomp's count of spins before sleeping (default 300,000; 0 is
                                  what PASSIVE sets, and measured the same on 2026-12-06)
    OMP_NUM_THREADS=1             one thread, set before the child starts
    set_num_threads(1)            one thread, set by the child after torch is imported

Printed: each condition's median wall and CPU time (user + system, the child's own, os.wait4) and
their ratios to the default's median; and the load average (1 minute) before each run. libgomp reads
its variables once, when torch loads it, so a child's environment is the only place to set them.
Figures: docs/performance.md ("Threads on a busy machine").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cli import REPO, positive_int, run

CONDITIONS = {
    "default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "set_num_threads(1)": {},
}
CHILD = """import sys
from probe.allocator import use_system_allocator
use_system_allocator()
import torch
if sys.argv[3] == "1":
    torch.set_num_threads(1)
from probe.record import RecordOptions, record
record(RecordOptions(max_tokens=int(sys.argv[1]), out=sys.argv[2], progress=False))
"""
OMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def once(name: str, tokens: int, out: Path) -> tuple[float, float]:
    """One child record under condition `name`: (wall s, CPU s)."""
    env = {k: v for k, v in os.environ.items() if k not in OMP} | CONDITIONS[name]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", CHILD, str(tokens), str(out), "1" if name == "set_num_threads(1)" else "0"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace").strip().splitlines()
    p.stderr.close()
    if p.returncode:
        raise ValueError(f"the {name} child exited {p.returncode}: {err[-1] if err else ''}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=3, help="timed runs of each condition (default 3)")
    ap.add_argument("--tokens", type=positive_int, default=4000, help="tokens each child records (default 4000)")
    ns = ap.parse_args()
    names = list(CONDITIONS)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    loads = []
    with tempfile.TemporaryDirectory() as d:
        for n in ("default", "OMP_NUM_THREADS=1"):  # warm-up at each thread count, untimed
            once(n, min(ns.tokens, 500), Path(d) / f"warm-{n}")
        for r in range(ns.rounds):
            for i in range(len(names)):
                n = names[(i + r) % len(names)]
                loads.append(os.getloadavg()[0])
                times[n].append(once(n, ns.tokens, Path(d) / f"r{r}-{i}"))
    print(f"{ns.rounds} rounds of {ns.tokens:,} tokens, {os.cpu_count()} CPUs; load average (1 min) "
          f"{min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f}")
    base_wall = statistics.median(w for w, _ in times["default"])
    base_cpu = statistics.median(c for _, c in times["default"])
    print(f"{'condition':<26}{'wall s':>9}{'CPU s':>9}{'wall/def':>10}{'CPU/def':>9}   wall s of each run")
    for n in names:
        wall, cpu = statistics.median(w for w, _ in times[n]), statistics.median(c for _, c in times[n])
        print(f"{n:<26}{wall:>9.2f}{cpu:>9.2f}{wall / base_wall:>10.2f}{cpu / base_cpu:>9.2f}   "
              + " ".join(f"{w:.1f}" for w, _ in times[n]))


if __name__ == "__main__":
    run(main)
