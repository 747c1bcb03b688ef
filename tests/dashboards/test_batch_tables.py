"""The per-batch load tables behind the load-balance page's MaxVio_batch figures, against pandas' pivot (the way
they were made, a layer at a time, before `compute.batch_tables` grouped every layer in one pass)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboards import compute


def _pivot(by_step: pd.DataFrame, layer: str, n: int):
    d = by_step[by_step["layer"] == layer]
    t = d.pivot_table(index="step", columns="expert", values="load", aggfunc="sum", fill_value=0)
    t = t.reindex(columns=range(n), fill_value=0)
    return t.index.to_numpy(), t.to_numpy(dtype=np.float64)


def _by_step(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = 3000
    df = pd.DataFrame({"step": rng.integers(0, 40, rows), "layer": rng.choice(["layer 3", "layer 10", "MTP 0"], rows),
                       "expert": rng.integers(0, 12, rows), "load": rng.integers(0, 500, rows)})
    return df[~((df.layer == "MTP 0") & (df.step % 3 == 0))]  # a layer without rows at some steps


def test_every_layers_table_is_the_pivots():
    by_step, n = _by_step(), 10  # experts 10 and 11 past N: left out, as the pivot's reindex leaves them
    tables = compute.batch_tables(by_step, n)
    assert set(tables) == {"layer 3", "layer 10", "MTP 0"}
    for lab, (steps, loads) in tables.items():
        want_steps, want = _pivot(by_step, lab, n)
        assert np.array_equal(steps, want_steps) and np.array_equal(loads, want), lab
        assert np.array_equal(compute.batch_table(by_step, lab, n)[1], want)
    assert len(tables["MTP 0"][0]) < len(tables["layer 3"][0])  # its own steps only


def test_the_figures_built_on_them_are_unchanged():
    by_step, n = _by_step(1), 12
    mv = compute.maxvio_over_steps(by_step, n)
    assert list(dict.fromkeys(mv.layer)) == ["layer 3", "layer 10", "MTP 0"]  # layers in numeric order, MTP last
    for lab, part in mv.groupby("layer", sort=False):
        steps, loads = _pivot(by_step, lab, n)
        want = loads.max(1) / loads.mean(1) - 1  # MaxVio_batch: max load over mean load, less one
        assert np.array_equal(part.step, steps) and np.allclose(part.maxvio, want), lab
