"""The metric views under AppTest, against numbers computed here from the run's Parquet files: the
load-balance page over its window (and per GPU), the compared heatmaps' shared colour scale, and the
vocabulary specialisation beside its no-specialisation baseline."""

from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.apptest import app, open_page, texts
from helpers.dashboard_runs import write_train_run


def frame(at, column: str):
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, (column, [list(d.value.columns) for d in at.dataframe])
    return found[0]


def array(v) -> np.ndarray:
    """A plotly JSON array: a list, or numpy's typed-array form {dtype, bdata (base64)[, shape]}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).astype(float)
    return np.array(v, dtype=float)


def step_loads(run, layer: int, E: int, last: int | None = None) -> np.ndarray:
    """[steps, E] loads of `layer` from expert_load (the last `last` steps)."""
    el = pq.read_table(run / "expert_load").to_pandas()
    el = el[el.layer == layer]
    if last:
        el = el[el.step > el.step.max() - last]
    t = el.pivot_table(index="step", columns="expert", values="count", aggfunc="sum", fill_value=0)
    return t.reindex(columns=range(E), fill_value=0).to_numpy(float)


@pytest.mark.slow  # a whole app session
def test_load_balance_numbers_cover_the_window_and_the_imbalance_ratio_is_per_gpu(tmp_path):
    run = write_train_run(tmp_path / "t")
    at = open_page(app(tmp_path, "t"), "load_balance")
    at.slider(key="lb_window").set_value(10).run()
    assert not at.exception and not at.error, texts(at.error)
    table = frame(at, "MaxVio (batch mean)").set_index("layer")
    b = step_loads(run, 1, 16, last=10)
    assert len(b) == 10
    want = np.mean((b.max(1) - b.mean(1)) / b.mean(1))
    assert table.loc["layer1", "MaxVio (batch mean)"] == pytest.approx(want, rel=1e-6)
    whole = step_loads(run, 1, 16)
    assert abs(np.mean((whole.max(1) - whole.mean(1)) / whole.mean(1)) - want) > 1e-4  # the run's would differ
    assert not any("imbalance" in c for c in table.columns)  # no GPU count: no second name for MaxVio
    at.selectbox(key="lb_gpus").set_value(4).run()
    table = frame(at, "imbalance ratio (4 GPUs, batch mean)").set_index("layer")
    g = b.reshape(10, 4, 4).sum(2)  # 4 GPUs of 4 contiguous experts
    assert table.loc["layer1", "imbalance ratio (4 GPUs, batch mean)"] == pytest.approx(
        np.mean(g.max(1) / g.mean(1) - 1), rel=1e-6)


@pytest.mark.slow  # a whole app session
def test_compared_relative_load_heatmaps_share_one_scale(tmp_path):
    write_train_run(tmp_path / "a")
    write_train_run(tmp_path / "b", balance="none", seed=1)  # far less balanced: a larger largest load
    at = open_page(app(tmp_path, "a"), "compare")
    at.selectbox(key="cmp_b").set_value("b").run()
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = [s["data"][0] for s in specs if s["data"] and s["data"][0].get("type") == "heatmap"]
    assert len(heat) == 2
    tops = [np.nanmax(array(h["z"])) for h in heat]
    assert abs(tops[0] - tops[1]) > 0.1  # the two runs' own maxima differ...
    assert heat[0]["zmax"] == heat[1]["zmax"] == pytest.approx(max(tops))  # ...yet one scale


@pytest.mark.slow  # a whole app session
def test_vocabulary_specialisation_is_shown_beside_its_baseline(tmp_path):
    from analyses.metrics.specialisation import vocabulary_specialisation, vocabulary_specialisation_baseline
    from helpers.synthetic_run import write_run

    a = write_run(tmp_path / "r", n_seq=40)  # layer 1: first choice = token id % 8 (specialised)
    at = open_page(app(tmp_path, "r"), "specialisation")
    shown = [m for m in at.metric if m.label == "Vocabulary specialisation, layer1"]
    assert shown, [m.label for m in at.metric]
    top1 = a["ids"][1][:, 0]
    vs = vocabulary_specialisation(a["token_id"], top1, min_count=5)
    base = vocabulary_specialisation_baseline(a["token_id"], top1, min_count=5)
    assert shown[0].value == f"{vs:.2f}" and shown[0].delta == f"{vs - base:+.2f} vs no specialisation"
    assert base < vs - 0.2  # the control: a specialised layer stands clear of its baseline


def test_a_run_left_out_of_a_compared_chart_does_not_lend_its_colour(tmp_path):
    """Run A with one domain is left out of the specialisation chart; run B's bars were then drawn in
    A's colour, with no legend, so they read as A's (a review)."""
    from dashboards.pages.compare import RUN_COLORS
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a", domains=("code",))
    write_run(tmp_path / "b")
    at = open_page(app(tmp_path, "a"), "compare")
    at.selectbox(key="cmp_b").set_value("b").run()
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    nmi = [s for s in specs if "I / H(domain)" in json.dumps(s.get("layout", {}).get("yaxis", {}))]
    assert len(nmi) == 1 and [t["name"] for t in nmi[0]["data"]] == ["b"]
    assert nmi[0]["data"][0]["marker"]["color"] == RUN_COLORS[1] and nmi[0]["layout"]["showlegend"] is True


def test_the_most_domain_specific_experts_are_ranked_by_their_best_domains_lift(tmp_path):
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=8, domains=("code", "prose", "math"))  # 3, 3 and 2 windows: P(domain) differs
    run = tmp_path / "r"
    el = pq.read_table(run / "expert_load").to_pandas()
    C = el[el.layer == 1].pivot_table(index="domain", columns="expert", values="count", aggfunc="sum",
                                      fill_value=0).reindex(columns=range(8), fill_value=0).to_numpy(float)
    lift = (C / C.sum(0)) / (C.sum(1, keepdims=True) / C.sum())  # P(domain | expert) / P(domain)
    best = lift.max(0)
    keep = [e for e in range(8) if C[:, e].sum() >= 0.1 * C.sum() / 8]  # experts with a tenth of the mean load
    want = sorted(keep, key=lambda e: -best[e])[:8]
    at = open_page(app(tmp_path, "r"), "specialisation")
    table = frame(at, "lift")
    assert table.expert.tolist() == want and len(set(np.round(best[want], 6))) > 1  # a real order to check
    share = C / C.sum(0)
    assert table.domain.tolist() == [sorted(['code', 'math', 'prose'])[i] for i in lift.argmax(0)[want]]
    assert (share.argmax(0) != lift.argmax(0))[want].any()  # the control: the largest share is another domain
    np.testing.assert_allclose(table.lift, best[want])
