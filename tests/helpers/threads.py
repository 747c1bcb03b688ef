"""torch's thread count for a stretch of a test."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

USER_OMP: str | None = None  # OMP_NUM_THREADS as the suite found it (for_children; tests/test_conftest.py)


def for_children(n: int) -> None:
    """In an xdist worker, `n` threads for the processes its tests start (a command, a report, the
    dashboard's server), unless OMP_NUM_THREADS was set before the suite started or a test sets its own.
    A survey of one suite run (2026-12-07) found the report command (5.5 s of CPU), generate's (2.0-2.5 s)
    and a held record (3.4 s) on torch's default of a thread per core, spinning against the other
    worker. The workers only: they inherit the controlling process's environment, where this would be one
    worker's count."""
    global USER_OMP
    USER_OMP = os.environ.get("OMP_NUM_THREADS")
    if "PYTEST_XDIST_WORKER" in os.environ and USER_OMP is None:
        os.environ["OMP_NUM_THREADS"] = str(n)


@contextmanager
def one_thread():
    """torch on one thread inside the block, the count before restored after it. The tests' models are
    tiny: their GEMMs are too small to split, decoding is many tiny ops, and two threads per process spin
    against the other xdist worker and any torchrun ranks on 2 cores (a 1280-token record: 0.6-0.9 s on
    one thread, 5-10 s on two, measured on the shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
