"""Random windows in record batches for the ablation tests (tests/analyses/test_ablate.py and
test_ablate_cli.py): `evaluate` and the samples take them as the jobs make them."""

from __future__ import annotations

import numpy as np

from probe.recorders import Batch
from probe.windows import Window


def random_batches(n_windows=6, seq=20, seed=0, bs=3) -> list[Batch]:
    """`n_windows` windows of 5..seq random ids, alternately prose and code, `bs` a batch."""
    rng = np.random.default_rng(seed)
    ws = [Window(i, f"d{i}", "code" if i % 2 else "prose", 0,
                 rng.integers(2, 512, rng.integers(5, seq + 1)).astype(np.int32)) for i in range(n_windows)]
    return [Batch(b, ws[s: s + bs]) for b, s in enumerate(range(0, len(ws), bs))]
