"""torch's thread count for a stretch of a test."""

from __future__ import annotations

from contextlib import contextmanager

import torch


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
