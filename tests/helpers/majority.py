"""An independent plain-Python majority predictor, the reference for `analyses.metrics.majority_predict` and
the held-out accuracies built on it."""

from __future__ import annotations

from collections import Counter

import numpy as np


def reference_majority(keys, labels, test, fallback):
    """Independent plain-Python majority predictor (ties: smallest label)."""
    by_key: dict = {}
    for k, y, t in zip(keys, labels, test):
        if not t:
            by_key.setdefault(k, Counter())[y] += 1
    out = []
    for i, (k, t) in enumerate(zip(keys, test)):
        if t:
            c = by_key.get(k)
            out.append(min(c, key=lambda y: (-c[y], y)) if c else fallback[len(out)])
    return np.array(out)
