"""The Ablations and Steering pages over result tables holding a NaN loss: the ablate, importance and
steer jobs keep a NaN the model gives at a scored token (analyses/ablate/run.py add_loss), so a row's
loss and delta can be NaN. The pages show it (a blank cell, nan, n/a) and do not fail."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.apptest import app, array, texts
from helpers.dashboard_runs import dashboard_runs
from probe.schema import TABLES


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    return dashboard_runs(probe_env, tmp_path_factory)


def _write(run, table: str, df: pd.DataFrame, part: str) -> None:
    """`df` as the jobs write it (from pandas: a NaN becomes a null)."""
    for f in (run / table).glob("*.parquet"):
        f.unlink()
    pq.write_table(pa.Table.from_pandas(df, schema=TABLES[table], preserve_index=False),
                   run / table / f"{part}.parquet")


def _ablations() -> pd.DataFrame:
    """Seven ablations (the page draws a heatmap past six): `broken` NaN in every domain (a broken
    baseline), `top3` NaN in code (and so in all); `rand1` and `rand2` two draws of one size, the
    second NaN over all tokens."""
    rows = []
    for i, name in enumerate(["top1", "top2", "top3", "top4", "rand1", "rand2", "broken"]):
        rule, n = ({"random": 5}, 10) if name.startswith("rand") else ({"top": i + 1}, 2 * (i + 1))
        for j, d in enumerate(["all", "code", "prose"]):
            delta = np.nan if name == "broken" or (name == "top3" and d in ("code", "all")) or (
                name == "rand2" and d == "all") else 0.01 * (i + j + 1)
            rows.append({"ablation": name, "spec": json.dumps({"name": name, **rule}), "mode": "reroute",
                         "renormalise": False, "shared": False, "n_disabled": n, "token_top": None,
                         "domain": d, "tokens": 1000, "loss": 5.0 + delta, "baseline_loss": 5.0, "delta": delta,
                         "routing_changed": 0.1, "experts_changed": 0.05, "downstream_layers": 1})
    return pd.DataFrame(rows)


@pytest.mark.slow  # a whole app over two pages: the quick loop leaves it out
def test_the_pages_show_a_nan_loss_and_do_not_fail(runs, tmp_path):
    run = tmp_path / "runs" / "nan"
    shutil.copytree(runs["good"] / "demo", run)
    _write(run, "ablations", _ablations(), "sweep")
    imp = pq.read_table(run / "expert_importance").to_pandas()
    imp.loc[(imp.layer == 1) & (imp.domain == "all") & (imp.expert == 3), ["loss", "delta"]] = np.nan
    _write(run, "expert_importance", imp, "imp")
    steer = pq.read_table(run / "steering").to_pandas()
    first = steer.steer.iloc[0]
    steer.loc[(steer.steer == first) & (steer.kind == "loss") & steer.domain.isin(["all", "code"]),
              ["loss", "delta"]] = np.nan
    _write(run, "steering", steer, "steer")

    at = app(tmp_path / "runs", "nan", page="ablations")
    assert not at.error and not at.exception, (texts(at.error), at.exception)
    charts = {(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", ""): json.loads(c.proto.spec)
              for c in at.get("plotly_chart")}
    heat = charts["Loss change per domain for each ablation (nats)"]["data"][0]
    z = array(heat["z"]).reshape(len(heat["y"]), len(heat["x"]))
    assert heat["y"][-1] == "broken" and np.isnan(z[-1]).all()  # its row kept, blank (pivot_table dropped it)
    assert np.isnan(z[2, heat["x"].index("code")]) and np.isfinite(z[:-1]).sum() == 11
    table = next(d.value for d in at.dataframe if "n_disabled" in d.value.columns)
    assert table[table.ablation == "broken"].delta.isna().all() and table.delta.notna().sum() == 21 - 6
    curve = charts["Masked-fraction curve"]["data"]
    (mean,) = [t for t in curve if t.get("name") == "reroute · random"]  # the draws' mean: NaN, not rand1's alone
    assert np.isnan(array(mean["y"])).all() and len(array(mean["y"])) == 1
    assert any(t.startswith("layer 1 (all): Spearman ρ = nan<br><sup>some expert's load share or loss delta is not a "
                            "number") for t in charts), list(charts)

    at = app(tmp_path / "runs", "nan", page="steering")
    assert not at.error and not at.exception, (texts(at.error), at.exception)
    at.selectbox(key="steer_pick").set_value(first).run()
    (delta,) = [m for m in at.metric if m.label == "Δ loss (all)"]
    assert delta.value == "n/a" and "NaN: the model gave a NaN surprisal" in delta.proto.help
