"""Random windows in record batches for the ablation tests (tests/analyses/test_ablate.py and
test_ablate_cli.py): `evaluate` and the samples take them as the jobs make them; and the Gate's
group-limited routing by hand (`routed_by_hand`), their reference."""

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


def routed_by_hand(sel: dict[int, float], gate) -> list[int]:
    """The experts a sigmoid router with the balancing bias routes a token to, computed in plain Python
    from its selection scores `sel` (expert -> s + b; an expert left out is masked): each group scored
    by its two best (-inf with fewer than two left), the gate's `topk_groups` best groups kept, then
    the top-k of their experts, best first. The tests' reference for the Gate's group-limited routing."""
    per_group = len(gate.bias) // gate.n_groups
    gscore = {}
    for g in range(gate.n_groups):
        best = sorted((sel[e] for e in range(g * per_group, (g + 1) * per_group) if e in sel), reverse=True)
        gscore[g] = best[0] + best[1] if len(best) >= 2 else float("-inf")
    groups = sorted(gscore, key=gscore.get, reverse=True)[: gate.topk_groups]
    return sorted((e for e in sel if e // per_group in groups), key=sel.get, reverse=True)[: gate.topk]

