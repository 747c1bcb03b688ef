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


def _pandas_majority(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The pandas groupby `compute.path_flows` counted with before (its reference): keys..., n, domain, domain_share."""
    g = df.groupby([*keys, "domain"], sort=False).size().rename("n").reset_index()
    tot = g.groupby(keys).n.sum().rename("total")
    top = g.sort_values(["n", "domain"], ascending=[False, True]).drop_duplicates(keys).set_index(keys)
    out = tot.to_frame().join(top.rename(columns={"n": "top"})).reset_index()
    out["domain_share"] = out.top / out.total
    return out.drop(columns="top").rename(columns={"total": "n"})


def test_path_flows_equal_the_pandas_groupby():
    """The Sankey's flows and nodes, counted by np.bincount, as pandas' groupby counted them: few experts and
    domains, so that most rows tie between domains (ties go to the first name)."""
    rng = np.random.default_rng(2)
    top1, domains = rng.integers(0, 4, (600, 3)), rng.choice(["web", "code", "zh"], 600)
    flows, nodes = compute.path_flows(top1, domains)
    want_f = pd.concat([_pandas_majority(pd.DataFrame({"src": top1[:, j], "dst": top1[:, j + 1], "domain": domains}),
                                         ["src", "dst"]).assign(step=j) for j in range(2)], ignore_index=True)
    want_f = want_f[["step", "src", "dst", "n", "domain", "domain_share"]].sort_values(
        ["step", "n"], ascending=[True, False], ignore_index=True)
    want_n = pd.concat([_pandas_majority(pd.DataFrame({"expert": top1[:, j], "domain": domains}), ["expert"]).assign(col=j)
                        for j in range(3)], ignore_index=True)[["col", "expert", "n", "domain", "domain_share"]]
    pd.testing.assert_frame_equal(flows, want_f)
    pd.testing.assert_frame_equal(nodes, want_n)
    assert (flows.domain_share < 1).mean() > 0.5  # mixed flows: the domain choice is exercised
