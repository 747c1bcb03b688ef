"""data.pass_loads numbers each row's [pass, layer, expert] cell in SQL (the 30 M rows of 2,000 DeepSeek-V3
passes made a DataFrame that was then sorted and searched): the cells must be those of the rows in any
order, steps far apart, several domains' rows of one cell, layers past the model's left out (and a
pass with rows only there) and a sampled run's every k-th pass."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from probe.schema import TABLES

STEPS = np.array([7, 3, 1_000_000, 42, 5_000_000_000])  # unsorted, far apart (no dense range)
LAYERS, E, N_LAYERS = [2, 5, 9], 6, 9  # layer 9: an MTP router's (n_layers 9), left out


def _run(tmp_path, rng):
    rows = [(s, layer, e, d, int(rng.integers(0, 50))) for s in STEPS for layer in LAYERS for e in range(E)
            for d in ("code", "prose") if rng.random() < 0.8]
    rows += [(11, 9, e, "code", 1) for e in range(E)]  # a pass with rows in the MTP layer only
    rows = [rows[i] for i in rng.permutation(len(rows))]  # files need not hold rows in any order
    cols = dict(zip(("step", "layer", "expert", "domain", "count"), map(list, zip(*rows))))
    n = len(rows)
    t = pa.Table.from_pydict({**cols, "weight_sum": [None] * n, "tokens": [1] * n}, schema=TABLES["expert_load"])
    (tmp_path / "expert_load").mkdir()
    half = n // 2
    pq.write_table(t.slice(0, half), tmp_path / "expert_load" / "r000-b0000000-0000000.parquet")
    pq.write_table(t.slice(half), tmp_path / "expert_load" / "r000-b0000001-0000001.parquet")
    info = {"status": "complete", "model_args": {"n_layers": N_LAYERS, "n_routed_experts": E + 2}}
    (tmp_path / "run.json").write_text(json.dumps(info))
    return rows, info


@pytest.mark.parametrize("max_passes", [2000, 2])
def test_pass_loads_cells_are_the_rows_summed(tmp_path, max_passes):
    from dashboards import data

    rows, info = _run(tmp_path, np.random.default_rng(1))
    ref = data.RunRef("r", str(tmp_path), "probe", "complete", info)
    steps, layers, X = data.pass_loads.uncached(ref, max_passes)
    every = data.pass_stride(len(STEPS) + 1, max_passes)
    want_steps = np.array([s for s in np.sort([*STEPS, 11])[::every] if s != 11])  # 11: no MoE layer's rows
    assert steps.tolist() == want_steps.tolist() and steps.dtype == np.int64
    assert layers == [2, 5] and X.shape == (len(want_steps), 2, E + 2) and X.dtype == np.int64
    want = np.zeros(X.shape, np.int64)
    for s, layer, e, _, c in rows:
        if s in want_steps and layer < N_LAYERS:
            want[list(want_steps).index(s), layers.index(layer), e] += c
    assert want.sum() > 0 and np.array_equal(X, want)
