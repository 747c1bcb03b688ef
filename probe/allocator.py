"""Arrow's allocator for the long jobs (record, spec, ablate, importance, steer).

pyarrow's wheels allocate Arrow buffers with mimalloc, which maps memory of its own as it goes. In
the record job that made glibc's heap fragment from one run to the next: on a 2-core AMD EPYC
(2026-12-03) benchmarks/bench_record.py's 40,000-token record peaked near 1,400 MiB in some runs
and 2,278 MiB in others, the heap's in-use bytes flat and up to 819 MiB of it free but unusable
until the next commit (mallinfo2). With Arrow on the system allocator it peaked at 1,311-1,467 MiB
in 8 of 8 runs (the variable set before the process started) and 1,372-1,721 MiB in 7 runs (set
here), at the same speed; `bench_record.py --part memory` then gave 1,309 and 1,339 MiB for 4,000
and 40,000 tokens, 2.3% growth (docs/performance.md).

pyarrow reads ARROW_DEFAULT_MEMORY_POOL once, when it is imported, so the jobs' entry points call
`use_system_allocator()` before anything imports it (`import probe` does not). A value the user set
is kept. Readers of runs (dashboards, notebooks) keep mimalloc, which read the Quickstart's tables
a little faster.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
_set_here = False  # whether use_system_allocator set VARIABLE (not the user)


def use_system_allocator() -> bool:
    """Ask for Arrow's system allocator unless the user chose one; True if it will take effect
    (pyarrow not imported yet in this process)."""
    global _set_here
    if VARIABLE not in os.environ:
        os.environ[VARIABLE], _set_here = "system", True
    return "pyarrow" not in sys.modules


def reader_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child process that reads runs (the dashboard): without the setting this process
    made for itself."""
    return {k: v for k, v in env.items() if not (k == VARIABLE and _set_here)}

