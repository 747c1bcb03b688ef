"""The dashboard's compute layer on hand-computed cases: the load-balance window, the per-GPU
imbalance ratio, one colour scale for compared heatmaps, I(domain; expert) / H(domain) under its own
name, rank disagreement taken from `analyses.importance`, and a layered Sankey whose columns plotly
keeps (no Streamlit session needed). The data layer's queries: test_data_layer.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards import charts, compute

REPO = Path(__file__).resolve().parents[2]


def by_step_table() -> pd.DataFrame:
    """layer1, 4 experts, steps 0..9: steps 0-6 send everything to expert 0 (MaxVio 3); the last
    three are [3, 1, 2, 2], [2, 2, 2, 2], [1, 3, 2, 2] (MaxVio 0.5, 0, 0.5)."""
    loads = {s: [8, 0, 0, 0] for s in range(7)} | {7: [3, 1, 2, 2], 8: [2, 2, 2, 2], 9: [1, 3, 2, 2]}
    return pd.DataFrame([{"step": s, "layer": "layer1", "expert": e, "load": v}
                         for s, row in loads.items() for e, v in enumerate(row)])


def totals(by_step: pd.DataFrame) -> pd.DataFrame:
    return by_step.groupby(["layer", "expert"], as_index=False).load.sum()


def test_a_window_gives_numbers_of_that_window_only():
    by_step = by_step_table()
    win = compute.last_steps(by_step, 3)
    assert sorted(win.step.unique()) == [7, 8, 9]
    row = compute.balance_rows(totals(win), win, 4).iloc[0]
    assert row.batches == 3
    assert row.maxvio_batch_mean == pytest.approx((0.5 + 0 + 0.5) / 3)  # not (7 * 3 + 1) / 10 over the run
    assert row.maxvio_global == pytest.approx(0.0)  # window totals [6, 6, 6, 6]
    assert compute.maxvio_over_steps(win, 4).step.tolist() == [7, 8, 9]
    assert compute.last_steps(by_step, None) is by_step  # no window: the whole run


def test_window_totals_and_per_step_rows_cover_the_same_steps(tmp_path):
    """data.total_loads(ref, n) (SQL) and compute.last_steps(data.loads_by_step(ref), n) sum the same
    steps, so the page's totals and per-batch views agree."""
    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r")  # two steps, 0 and 1
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    win = compute.last_steps(data.loads_by_step(ref), 1)
    assert win.step.unique().tolist() == [1]
    tot = data.total_loads(ref, 1).set_index(["layer", "expert"]).load
    summed = win.groupby(["layer", "expert"]).load.sum()
    assert tot.sum() < data.total_loads(ref).load.sum()  # the window holds fewer loads than the run
    pd.testing.assert_series_equal(summed.sort_index(), tot.sort_index(), check_dtype=False)


def test_imbalance_ratio_is_per_gpu_and_shown_only_with_a_gpu_count():
    win = compute.last_steps(by_step_table(), 3)
    row = compute.balance_rows(totals(win), win, 4, n_gpus=2).iloc[0]
    # GPU loads per step (experts 0-1 | 2-3): [4, 4] each time: balanced, though MaxVio per expert is not
    assert row.imbalance_ratio == pytest.approx(0.0) and row.maxvio_batch_mean == pytest.approx(1 / 3)
    assert row.gpu_balancedness == pytest.approx(1.0)
    skewed = pd.DataFrame({"step": 0, "layer": "layer1", "expert": range(4), "load": [3, 3, 1, 1]})
    assert compute.balance_rows(totals(skewed), skewed, 4, n_gpus=2).imbalance_ratio[0] == pytest.approx(6 / 4 - 1)
    assert "imbalance_ratio" not in compute.balance_columns(None)  # per expert it would be MaxVio again
    assert compute.balance_columns(2)["imbalance_ratio"] == "imbalance ratio (2 GPUs, batch mean)"
    assert compute.gpu_choices(8) == [2, 4, 8] and compute.gpu_choices(1) == []
    doc = (REPO / "docs" / "metrics.md").read_text()
    assert "imbalance ratio (G GPUs, batch mean)" in doc  # the label the docs give


def test_compared_heatmaps_share_one_colour_scale():
    rels = {"a": (["layer1"], np.array([[0.5, 1.5]])), "b": (["layer1", "layer2"], np.array([[0.2, 3.0], [1, 1]]))}
    figs = charts.relative_load_heatmaps(rels)
    a, b = (figs[n].data[0] for n in ("a", "b"))
    assert a.zmax == b.zmax == 3.0 and a.zmin == b.zmin == 0.0
    assert a.colorscale == b.colorscale  # white at 1 sits at the same height on both bars
    alone = charts.heatmap(rels["a"][1], [0, 1], ["layer1"], colorscale=charts.DIVERGING, zmid=1.0)
    assert alone.data[0].zmax == 1.5  # the control: on its own, a's scale stops at its own largest value


def test_the_dashboards_domain_nmi_is_mi_over_h_domain():
    # 2 domains x 3 experts: [[2, 0, 1], [0, 2, 1]]. H(domain) = ln 2, H(expert) = ln 3;
    # I = 2 * (2/6) ln((2/6) / (1/2 * 1/3)) = (2/3) ln 2 (the 1-count cells add 0)
    rows = [("code", 0, 2), ("code", 2, 1), ("prose", 1, 2), ("prose", 2, 1)]
    de = pd.DataFrame([{"layer": "layer1", "domain": d, "expert": e, "count": c} for d, e, c in rows])
    got = compute.domain_nmi_by_layer(de, 3)
    assert got.columns.tolist() == ["layer", "domain_nmi"]
    I = 2 / 3 * math.log(2)
    assert got.domain_nmi[0] == pytest.approx(I / math.log(2))  # = 2/3
    symmetric = compute.metric("nmi")(compute.contingency(de, "layer1", 3)[1])
    assert symmetric == pytest.approx(2 * I / (math.log(2) + math.log(3)))  # specialisation_table's `nmi`
    assert abs(got.domain_nmi[0] - symmetric) > 0.1  # two different numbers: they need two names
    assert compute.DOMAIN_NMI_LABEL == "I(domain; expert) / H(domain)"
    doc = (REPO / "docs" / "metrics.md").read_text()
    assert "`domain_nmi = I / H(domain)`" in doc and "`nmi = 2 I / (H(domain) + H(expert))`" in doc


def importance_rows() -> pd.DataFrame:
    """Two layers of expert_importance rows with tied load shares and tied deltas."""
    share = {1: [0.4, 0.2, 0.2, 0.2], 2: [0.25, 0.25, 0.25, 0.25]}
    delta = {1: [0.1, 0.3, 0.3, 0.05], 2: [0.2, 0.1, 0.1, 0.4]}
    return pd.DataFrame([{"layer": lay, "expert": e, "domain": dom, "load_share": share[lay][e],
                          "delta": delta[lay][e] + (0.01 if dom == "code" else 0)}
                         for lay in (1, 2) for e in range(4) for dom in ("all", "code")])


def test_rank_disagreement_and_spearman_are_the_librarys_with_ties():
    from scipy.stats import spearmanr

    from analyses.importance import rank_disagreement, spearman

    imp = importance_rows()
    got = compute.rank_disagreement(imp, "all", [1, 2], top=10)
    lib = rank_disagreement(imp, top=10, domain="all")
    key = ["layer", "expert"]
    pd.testing.assert_frame_equal(got.sort_values(key, ignore_index=True), lib.sort_values(key, ignore_index=True))
    e1 = got[(got.layer == 1) & (got.expert == 1)].iloc[0]
    assert e1.load_rank == 3.0 and e1.causal_rank == 1.5  # ties share the average rank (2, 3, 4) and (1, 2)
    assert got.rank_gap.abs().is_monotonic_decreasing
    assert set(compute.rank_disagreement(imp, "all", [2]).layer) == {2}
    g = imp[(imp.layer == 1) & (imp.domain == "all")]
    rho = compute.spearman(g.load_share, g.delta)
    assert rho == spearman(g.load_share, g.delta) == pytest.approx(spearmanr(g.load_share, g.delta).statistic)
    assert compute.spearman([1, 2], [3, 5]) == 1.0  # two experts: the library's rho, not NaN
    assert math.isnan(compute.spearman([1, 1, 1], [1, 2, 3]))  # a constant side: undefined


def test_the_overview_names_only_what_a_run_knows_of_its_model():
    """An SGLang import knows layers and experts, not the hidden size: no "dim None" on the page."""
    from dashboards.views.overview import _model

    assert _model({"model_args": {"n_layers": 61, "n_routed_experts": 256, "n_activated_experts": 8}}) == \
        "61 layers, 256 experts (top-8)"
    assert _model({"model_args": {"n_layers": 4, "dim": 192, "n_routed_experts": 32, "n_activated_experts": 4}}) == \
        "4 layers, dim 192, 32 experts (top-4)"
    assert _model({}) == ""
    # a top-k no --config gave and the dump's counts did not show (an SGLang stat import): said so
    assert _model({"model_args": {"n_layers": 61, "n_routed_experts": 256, "n_activated_experts": 8},
                   "source": {"topk_assumed": True}}) == "61 layers, 256 experts (top-8, assumed)"


def test_a_log_axis_ticks_powers_of_ten_only():
    """The spectrum's log axis read '2, 0.1, 5, 2, 0.01, 5 ... 100µ' (plotly's minor-digit labels and SI
    prefixes for a share of energy): ticks are at powers of ten, written as powers."""
    from dashboards import charts

    y = charts.lines({"a": ([1, 2, 3], [0.5, 0.01, 1e-4])}, log_y=True).layout.yaxis
    assert (y.type, y.dtick, y.exponentformat) == ("log", 1, "power")
    assert charts.lines({"a": ([1, 2], [0.5, 0.1])}).layout.yaxis.dtick is None  # a linear axis keeps its own


def test_a_layered_sankeys_columns_are_plotlys_own_columns():
    """Plotly scales nodes by the columns of its own layout (a node without incoming links goes to
    the first, one without outgoing links to the last), not by the positions layered_sankey gives:
    every node past the first layer gets an incoming link and every node before the last an outgoing
    one (invisible, of negligible value), or the tallest layer ran off the chart's bottom (seen with
    the 20 largest flows of the bundled model's layers 1-3)."""
    columns = [[("a0", "#1f77b4", 5), ("a1", "#ff7f0e", 3)],
               [("b0", "#2ca02c", 5), ("b1", "#d62728", 4), ("b2", "#9467bd", 2)],  # b1: no incoming link
               [("c0", "#8c564b", 5)]]                                               # b2: no outgoing link
    real = [(0, 0, 0, 5, "#1f77b4", "x"), (0, 1, 2, 2, "#ff7f0e", "y"), (1, 0, 0, 5, "#2ca02c", "z"),
            (1, 1, 0, 4, "#d62728", "w")]
    link = charts.layered_sankey(columns, real).data[0].link
    offset = [0, 2, 5]
    pairs = list(zip(link.source, link.target, link.value, link.color))
    assert [(s, t, v) for s, t, v, _ in pairs[:4]] == [(offset[c] + i, offset[c + 1] + j, n) for c, i, j, n, *_ in real]
    extra = pairs[4:]
    assert extra and all(v < 1e-5 and c == "rgba(0,0,0,0)" for _, _, v, c in extra)
    for c in range(3):
        for i in range(len(columns[c])):
            node = offset[c] + i
            if c > 0:  # an incoming link, from the layer before
                assert any(t == node and offset[c - 1] <= s < offset[c] for s, t, *_ in pairs), (c, i)
            if c < 2:  # an outgoing link, to the layer after
                assert any(s == node and offset[c + 1] <= t < offset[c + 1] + len(columns[c + 1])
                           for s, t, *_ in pairs), (c, i)


def test_a_numeric_heatmap_of_a_few_steps_ticks_whole_steps_only():
    """One or a few batches: ticks at whole steps (plotly's own put 4.5 and 5.5 around a single step 5);
    many steps keep plotly's spacing."""
    z = np.ones((1, 4))
    assert charts.heatmap(z, range(4), [5], y_numeric=True).layout.yaxis.dtick == 1
    assert charts.heatmap(np.ones((3, 4)), range(4), [0, 4, 8], y_numeric=True).layout.yaxis.dtick == 1
    assert charts.heatmap(np.ones((50, 4)), range(4), list(range(0, 500, 10)), y_numeric=True).layout.yaxis.dtick is None
    assert charts.heatmap(z, range(4), ["layer1"]).layout.yaxis.dtick is None  # categories: untouched


def test_per_token_views_cover_the_runs_first_tokens_whatever_its_windows(tmp_path, monkeypatch):
    """The per-token views read seq_id < SAMPLE_TOKENS / --seq-len: an import (no --seq-len, one
    sequence per decode token) was read 22% of the way while the caption said "all" (a review). Now
    the bound is counted in the tokens table: all of a small run, the first SAMPLE_TOKENS of a large."""
    import json

    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=600, seq_len=2)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info.get("options", {}).pop("seq_len", None)
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete")
    tokens = pd.read_parquet(tmp_path / "r" / "tokens")
    top = data.expert_top_tokens.uncached(ref, 1, 0, 50)
    routing = pd.read_parquet(tmp_path / "r" / "routing")
    want = tokens.merge(routing[routing.layer == 1], on=["seq_id", "pos"]).token_id.value_counts()
    assert dict(zip(top.token_id, top.total)) == {t: want[t] for t in top.token_id}  # every window counted
    monkeypatch.setattr(data, "SAMPLE_TOKENS", 101)  # a large run: the windows holding the first 101 tokens
    assert data._seq_cap.uncached(ref) == 51


def test_expert_paths_read_their_id_budget_in_tokens_not_in_assumed_windows(tmp_path, monkeypatch):
    """Expert paths and token-id dependence took MAX_ROUTE_IDS / (layers x K) / --seq-len windows, as
    if every window were --seq-len long: on short documents or an SGLang import (one window per
    decode token) they read a few percent of the budget (a review). The bound is now counted in
    tokens: a run under the budget is read whole."""
    from dashboards import data, research
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=600, seq_len=2)  # 1,200 tokens in windows of 2; run.json says seq_len 2
    import json

    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["options"] = dict(info.get("options") or {}, seq_len=512)  # windows far shorter than --seq-len
    info["model_args"] = dict(info.get("model_args") or {}, n_activated_experts=2)
    ref = data.RunRef("r", str(tmp_path / "r"), "probe", "complete", info)
    monkeypatch.setattr(research, "_seq_cap", data._seq_cap.uncached, raising=False)
    assert research.route_windows(ref, 2) >= 600  # every window (2 layers x K 2 x 1,200 tokens = 4,800 ids)
    monkeypatch.setattr(research, "MAX_ROUTE_IDS", 2 * 2 * 101)  # room for 101 tokens: the windows holding them
    assert research.route_windows(ref, 2) == 51  # (it was 101 // 512 -> 1 window, 2 tokens)


def test_lines_over_a_few_whole_steps_tick_whole_steps_only():
    """A short run's MaxVio-per-batch and balancedness-per-pass lines ticked 0.2, 0.4... (a review)."""
    import numpy as np

    from dashboards import charts

    assert charts.lines({"a": ([0, 1], [0.5, 0.7])}).layout.xaxis.dtick == 1
    assert charts.lines({"a": (np.array([0, 1, 2]), [0.5, 0.7, 0.6])}).layout.xaxis.dtick == 1
    assert charts.lines({"a": (list(range(0, 500, 10)), list(range(50)))}).layout.xaxis.dtick is None  # long: plotly's
    assert charts.lines({"a": ([0.5, 1.5], [1, 2])}).layout.xaxis.dtick is None  # not whole numbers
    assert charts.lines({"a": (["layer1", "layer2"], [1, 2])}).layout.xaxis.dtick is None  # categories


def test_layer_labels_sort_by_their_number_main_layers_before_mtp():
    """The heatmaps' and tables' rows (compute.layer_order): layer2 before layer10 and mtp2 before
    mtp10 (numbers, not strings: string order put layer10 between layer1 and layer2, a review), every
    main layer before the MTP blocks, each label once; a label without a number comes first in its prefix.
    The same order reaches load_matrix's rows."""
    labels = ["mtp10", "layer10", "layer2", "mtp2", "layer1", "layer2", "mtp0", "layer11", "layer9"]
    assert compute.layer_order(labels) == ["layer1", "layer2", "layer9", "layer10", "layer11", "mtp0", "mtp2", "mtp10"]
    assert compute.layer_order(["layer3", "layer", "layer12"]) == ["layer", "layer3", "layer12"]
    shown = ["MTP 1", "layer 10", "MTP 0", "layer 2"]  # as the pages name them (data.layer_label)
    assert compute.layer_order(shown) == ["layer 2", "layer 10", "MTP 0", "MTP 1"]
    loads = pd.DataFrame({"layer": ["layer10", "layer2", "mtp0"], "expert": [0, 1, 0], "load": [5.0, 7.0, 2.0]})
    layers, m = compute.load_matrix(loads)
    assert layers == ["layer2", "layer10", "mtp0"]
    assert m.tolist() == [[0.0, 7.0], [5.0, 0.0], [2.0, 0.0]]


def test_load_matrix_sums_repeated_rows_of_one_layer_and_expert():
    # per-domain rows (layer, expert repeated) add up: none is overwritten by the next
    loads = pd.DataFrame({"layer": ["layer1"] * 4, "expert": [0, 1, 0, 1], "load": [3.0, 1.0, 2.0, 4.0]})
    layers, m = compute.load_matrix(loads, 2)
    assert layers == ["layer1"] and m.tolist() == [[3.0 + 2.0, 1.0 + 4.0]]
    extra = pd.concat([loads, pd.DataFrame({"layer": ["layer1"], "expert": [2], "load": [9.0]})])
    assert compute.load_matrix(extra, 2)[1].tolist() == m.tolist()  # an expert past n_experts is left out


def test_path_flows_count_tokens_largest_first_and_break_domain_ties_by_name():
    # [T, 2] first choices with their domains: flows 0->1 (a, a, b), 2->3 (a, b), 2->1 (b)
    top1 = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [2, 1]])
    domains = np.array(["a", "b", "a", "b", "a", "b"])
    flows, nodes = compute.path_flows(top1, domains)
    got = [(r.step, r.src, r.dst, r.n, r.domain, r.domain_share) for r in flows.itertuples()]
    assert got == [(0, 0, 1, 3, "a", pytest.approx(2 / 3)), (0, 2, 3, 2, "a", 0.5), (0, 2, 1, 1, "b", 1.0)]
    got = {(r.col, r.expert): (r.n, r.domain, r.domain_share) for r in nodes.itertuples()}
    assert got == {(0, 0): (3, "a", pytest.approx(2 / 3)), (0, 2): (3, "b", pytest.approx(2 / 3)),
                   (1, 1): (4, "a", 0.5), (1, 3): (2, "a", 0.5)}  # 2 a / 2 b and 1 / 1: the tie goes to "a"


def test_serving_replay_scores_the_current_placement_on_its_own_gpus_over_the_window():
    # one layer of 4 experts, passes 10 and 11; the engine's map puts experts 0, 2 on GPU 0 and 1, 3 on GPU 1
    X = np.array([[[4, 0, 2, 2]], [[1, 1, 1, 1]]], dtype=float)
    current = {5: np.array([0, 2, 1, 3])}
    r = compute.serving_replay(np.array([10, 11]), [5], X, (10, 10), gpus=4, redundant=0, nodes=1, groups=1,
                               mode="global", current=current, current_gpus=2)
    assert r["window"].tolist() == [True, False]  # the window's ends are inclusive
    assert r["now_gpus"] == 2 and r["gpu_now"].tolist() == [[4 + 2, 0 + 2]]  # pass 10 only, on the engine's 2 GPUs
    assert r["gpu_plan"].shape == (1, 4) and r["gpu_plan"].sum() == 8  # the plan: on the 4 GPUs asked for
    np.testing.assert_allclose(r["now"][:, 0], [(6 + 2) / 2 / 6, 1.0])  # mean / max GPU load of each pass
    # a layer missing from the engine's 6-slot map: SGLang's trivial map over the same 6 slots, [0 1 2 | 3 0 1];
    # experts 0 and 1 have two replicas, which share their load
    X2 = np.concatenate([X, [[[6, 2, 1, 3]], [[1, 1, 1, 1]]]], axis=1)
    current = {5: np.array([0, 2, 1, 3, 0, 1])}
    r = compute.serving_replay(np.array([10, 11]), [5, 6], X2, (10, 10), gpus=2, redundant=2, nodes=1, groups=1,
                               mode="global", current=current, current_gpus=2)
    assert r["gpu_now"][1].tolist() == [6 / 2 + 2 / 2 + 1, 3 + 6 / 2 + 2 / 2]


def test_relative_loads_are_each_layers_loads_over_its_own_mean():
    # layer1 [2, 6, 0, 4] (mean 3), layer2 [5, 5, 0, 0] (mean 2.5); an expert without rows counts 0
    loads = pd.DataFrame({"layer": ["layer1"] * 3 + ["layer2"] * 2, "expert": [0, 1, 3, 0, 1],
                          "load": [2.0, 6.0, 4.0, 5.0, 5.0]})
    layers, rel = compute.relative_loads(loads, 4)
    assert layers == ["layer1", "layer2"]
    np.testing.assert_allclose(rel, [[2 / 3, 2.0, 0.0, 4 / 3], [2.0, 2.0, 0.0, 0.0]])


def test_a_window_of_zero_steps_is_the_whole_run_as_in_total_loads():
    by_step = by_step_table()
    assert compute.last_steps(by_step, 0) is by_step  # data.total_loads(ref, 0) sums every step too


def test_coactivation_row_i_is_the_share_of_expert_is_tokens_that_also_chose_j():
    ids = np.array([[0, 1], [0, 2], [1, 0]])  # N(0) = 3, N(1) = 2, N(2) = 1; N(0, 1) = 2, N(0, 2) = 1
    co = compute.coactivation(ids, 3)
    assert co[0, 1] == pytest.approx(2 / 3) and co[1, 0] == pytest.approx(2 / 2)
    assert co[0, 2] == pytest.approx(1 / 3) and co[2, 0] == pytest.approx(1 / 1) and co[1, 2] == 0.0


def test_serving_replay_without_an_engine_map_scores_sglangs_trivial_map_with_its_redundant_slots():
    # 4 experts on 2 GPUs with 2 redundant slots: SGLang's trivial map [0 1 2 | 3 0 1], replicas share their load
    X = np.array([[[6, 2, 1, 3]]], dtype=float)
    r = compute.serving_replay(np.array([0]), [1], X, (0, 0), gpus=2, redundant=2, nodes=1, groups=1,
                               mode="global", current=None, current_gpus=None)
    assert r["now_gpus"] == 2 and r["gpu_now"].tolist() == [[6 / 2 + 2 / 2 + 1, 3 + 6 / 2 + 2 / 2]]
    np.testing.assert_allclose(r["now"], [[(5 + 7) / 2 / 7]])  # mean / max GPU load


def test_serving_replay_scores_the_plan_on_the_gpus_asked_for_not_the_engines():
    X = np.array([[[4, 0, 2, 2]], [[1, 1, 1, 1]]], dtype=float)
    r = compute.serving_replay(np.array([10, 11]), [5], X, (10, 11), gpus=4, redundant=0, nodes=1, groups=1,
                               mode="global", current={5: np.array([0, 2, 1, 3])}, current_gpus=2)
    m = [int(e) for e in r["plans"][5].phy_to_log.reshape(-1)]
    per = len(m) // 4
    for s in range(2):  # a plain loop over the plan's slots on 4 GPUs, replicas sharing their expert's load
        g = [0.0] * 4
        for slot, e in enumerate(m):
            g[slot // per] += X[s, 0, e] / m.count(e)
        assert r["plan"][s, 0] == pytest.approx(sum(g) / 4 / max(g))


def test_a_domain_keeps_its_colour_whatever_order_a_run_lists_its_domains_in():
    want = {"code": charts.DOMAIN_PALETTE[0], "math": charts.DOMAIN_PALETTE[1], "prose": charts.DOMAIN_PALETTE[2]}
    assert charts.domain_colors(["prose", "code", "math", "code"]) == want == charts.domain_colors(["math", "prose", "code"])


def test_every_expert_of_a_48_expert_layer_has_a_colour_of_its_own():
    """Experts 3 and 27 of the bundled model's 32 were one red (24 colours; a review of the token explorer)."""
    assert len({charts.expert_color(e) for e in range(48)}) == 48
    assert charts.expert_color(48) == charts.expert_color(0)  # then the palette repeats, by id


def test_text_on_a_light_colour_is_dark_and_on_a_dark_colour_light():
    # luma 0.299 R + 0.587 G + 0.114 B: #EECA3B (yellow) 196.5, #4C78A8 (blue) 112.3
    assert charts.text_color("#ffffff") == charts.text_color("#EECA3B") == "#111"
    assert charts.text_color("#000000") == charts.text_color("#4C78A8") == "#fff"


def test_a_ratio_heatmap_is_white_at_one_wherever_its_top_is():
    for top in (2.0, 4.0):  # the scale runs 0..top: white, the balanced value 1, sits at 1 / top of it
        h = charts.heatmap(np.array([[0.0, 1.0, top]]), [0, 1, 2], ["layer1"], colorscale=charts.DIVERGING,
                           zmid=1.0).data[0]
        assert [pos for pos, col in h.colorscale if col == "#f7f7f7"] == [pytest.approx(1 / top)]
        assert (h.zmin, h.zmax) == (0.0, top)  # an unused expert (0) too: no negative end


def test_a_sequential_heatmap_given_a_top_stops_its_scale_there():
    h = charts.heatmap(np.array([[2.0, 5.0]]), [0, 1], ["a"], zmax=10.0).data[0]  # several heatmaps on one scale
    assert (h.zmin, h.zmax) == (2.0, 10.0)
    h = charts.heatmap(np.array([[-1.0, 0.5]]), [0, 1], ["a"], zmid=0.0, zmax=3.0).data[0]  # a loss change
    assert (h.zmin, h.zmax) == (-3.0, 3.0)  # symmetric around zmid up to the given top, not to this one's |z|


def test_the_batch_axis_says_what_else_moves_along_it():
    """A recorded run's batches change domain mix along the run (with --order domains the last ones hold
    only the largest domain): the load-balance page says so under its MaxVio-per-batch chart, where a
    rise at the end was read as routing drift (a review). Nothing for training runs, imports, one domain."""
    from dashboards.data import RunRef
    from dashboards.views.load_balance import batch_order_note

    def ref(kind="probe", **info):
        return RunRef("r", "/r", kind, "complete", {"domains": ["code", "math"], **info})

    assert "--order domains" in batch_order_note(ref(options={"order": "domains"}))
    assert "--order corpus" in batch_order_note(ref(options={"order": "corpus"}))
    assert "--order corpus" in batch_order_note(ref())  # runs recorded before --order existed
    assert batch_order_note(ref(kind="train")) is None
    assert batch_order_note(ref(source={"name": "sglang"})) is None
    assert batch_order_note(ref(domains=["code"])) is None


def test_compared_runs_of_different_samples_are_said_to_be():
    """Compare runs set a 60,000-token run's MaxVio beside a 359,101-token run's, of another domain mix,
    without a word (a review): the page now warns, naming each run's sample."""
    from dashboards.data import RunRef
    from dashboards.views.compare import sample_note

    def ref(name, tokens, per_domain, kind="probe"):
        return RunRef(name, f"/{name}", kind, "complete", {"planned": {"tokens": tokens, "tokens_per_domain": per_domain}})

    big = ref("model-val", 359_101, {"chinese": 177_773, "code": 79_848, "math": 101_480})
    small = ref("no-bias", 60_000, {"chinese": 20_000, "code": 20_000, "math": 20_000})
    note = sample_note(big, small)
    assert "`model-val` 359,101 tokens (chinese 50%, code 22%, math 28%)" in note
    assert "`no-bias` 60,000 tokens (chinese 33%, code 33%, math 33%)" in note
    same_mix = ref("half", 179_550, {"chinese": 88_886, "code": 39_924, "math": 50_740})
    assert "different samples" in sample_note(big, same_mix)  # the same mix, half the tokens
    assert sample_note(big, ref("twin", 359_101, {"chinese": 177_773, "code": 79_848, "math": 101_480})) is None
    assert sample_note(big, ref("t", 60_000, {}, kind="train")) is None  # training runs: their own caption


def test_the_masked_fraction_caption_says_when_its_rules_are_single_points():
    """`--top 4 --control` gives one size per rule: two dots under a legend of lines (a review)."""
    from dashboards.views.ablations import masked_caption

    one = pd.DataFrame({"mode": ["reroute"] * 2, "rule": ["top-N", "random"], "frac": [0.125, 0.125]})
    sweep = pd.DataFrame({"mode": ["reroute"] * 4, "rule": ["top-N", "top-N", "random", "random"],
                          "frac": [0.03, 0.125, 0.03, 0.125]})
    assert "Each rule has one size here" in masked_caption(one)
    assert "Each rule has one size here" not in masked_caption(sweep) and "Mode: reroute" in masked_caption(sweep)


def test_a_per_token_ablation_is_its_own_rule_on_the_masked_fraction_curve():
    """`--token-top R` disables no fixed experts (`disabled` {}): it was plotted as "chosen" experts."""
    from dashboards.views.ablations import rule_of

    assert rule_of('{"token_top": 2, "disabled": {}, "mode": "zero"}') == "token top-R"
    assert rule_of('{"experts": {"1": [3]}, "disabled": {"1": [3]}}') == "chosen"


def test_experts_ordered_by_the_domain_they_over_serve_then_by_lift():
    # 2 domains x 5 experts: experts 1 and 4 over-serve domain 0 (lifts 1.5 > 1.2), 0 and 2 domain 1 (2.0 >
    # 1.1), expert 3 has no assignments (NaN) and goes last; by hand: [1, 4, 0, 2, 3]
    lift = np.array([[0.5, 1.5, 0.9, np.nan, 1.2],
                     [2.0, 0.5, 1.1, np.nan, 0.8]])
    assert compute.experts_by_domain(lift).tolist() == [1, 4, 0, 2, 3]
    assert compute.experts_by_domain(np.ones((2, 3))).tolist() == [0, 1, 2]  # ties: by id


def test_a_running_run_is_compared_by_what_it_holds_not_its_plan(tmp_path):
    """The sample note set a running run's planned tokens beside the other run: a run just started
    (no tokens yet) was '3,000 tokens' of five domains, and one that had recorded as much as the other
    was said to cover another sample (a tour). It now counts what the tokens table holds."""
    import json
    import shutil

    from dashboards import data
    from dashboards.views.compare import sample_note
    from helpers.synthetic_run import write_run

    for name in ("done", "going", "fresh"):
        write_run(tmp_path / name, n_seq=4)

    def ref(name, status, planned):
        info = json.loads((tmp_path / name / "run.json").read_text()) | {"status": status, "planned": planned}
        return data.RunRef(name, str(tmp_path / name), "probe", status, info)

    done = ref("done", "complete", {"tokens": 28, "tokens_per_domain": {"code": 14, "prose": 14}})
    # recorded as much as `done` so far, of a plan ten times as large: the same sample up to now
    going = ref("going", "running", {"tokens": 280, "tokens_per_domain": {"code": 140, "prose": 140}})
    assert sample_note(done, going) is None
    shutil.rmtree(tmp_path / "fresh" / "tokens")  # started, nothing committed: no sample to set beside
    assert sample_note(done, ref("fresh", "running", {"tokens": 3000, "tokens_per_domain": {"code": 3000}})) is None
    half = ref("going", "interrupted", {"tokens": 56, "tokens_per_domain": {"code": 28, "prose": 28}})
    assert sample_note(done, half) is None  # the control below: a plan of twice as many, by the plan, warned
    twice = ref("done", "complete", {"tokens": 56, "tokens_per_domain": {"code": 28, "prose": 28}})
    assert "`done` 28 tokens" in sample_note(done, twice)


def test_the_co_activation_caption_names_the_blank_rows_of_experts_no_token_chose():
    """An expert that no token chose has a row of 0 / 0, drawn blank: on a 300-token run layer 1's
    expert 3 left a white band across the heatmap that the caption did not explain (a browser tour)."""
    from dashboards.views.coactivation import coactivation_caption

    assert coactivation_caption(np.array([5, 2, 7])).endswith("(`analyses.metrics.coactivation`; the diagonal is "
                                                               "left blank).")
    assert coactivation_caption(np.array([5, 0, 7])).endswith(
        "the diagonal is left blank, and so is the row of expert 1, which no token chose).")
    few = coactivation_caption(np.array([0, 4, 0, 5, 0]))  # it read 'experts 0, 2, 4'
    assert few.endswith("and so are the rows of experts 0, 2 and 4, which no token chose).")
    many = coactivation_caption(np.array([0] * 8 + [3]))
    assert many.endswith("and so are the rows of experts 0, 1, 2, 3, 4, 5 and 2 more, which no token chose).")


def test_a_steerings_description_names_its_domains_as_a_sentence_does():
    """'only code, math and prose tokens': the Steering page's picker read 'only code, math, prose tokens'."""
    import json

    from dashboards.views.steering import describe

    spec = {"mode": "force", "experts": {"1": [5, 7]}, "domains": ["code", "math", "prose"]}
    assert describe(json.dumps(spec)).endswith("· only code, math and prose tokens")
    assert describe(json.dumps(spec | {"domains": ["code"]})).endswith("· only code tokens")


def test_a_title_longer_than_its_charts_line_at_1024_px_is_wrapped():
    """Plotly draws a title on one line, cut off at the chart's edge: `I(domain; expert) / H(domain) pe`
    in 2/5 of the page at 1024 px (a tour). `fit_title` breaks it at spaces into lines that fit the
    chart's share of the page, and makes room above the plot for each; a title that fits is left alone."""
    import plotly.graph_objects as go

    from dashboards import charts

    title = "I(domain; expert) / H(domain) per layer"
    fig = charts.fit_title(charts.style(go.Figure(), title), 0.4)
    lines = fig.layout.title.text.split("<br>")
    room = (0.4 * charts.NARROW_PAGE_PX - charts.TITLE_MARGIN_PX) / charts.TITLE_CHAR_PX
    assert lines == ["I(domain; expert) / H(domain)", "per layer"] and all(len(x) <= room for x in lines)
    assert fig.layout.margin.t == 70  # 50 and a line
    same = charts.fit_title(charts.style(go.Figure(), title), 1.0)  # the whole page: one line
    assert same.layout.title.text == title and same.layout.margin.t == 50


def test_fit_title_counts_the_drawn_characters_and_never_breaks_a_tag():
    """Plotly's markup in a title: textwrap counted its tags as text and broke at a space inside one
    (`<span<br>style=...>`, the tag drawn as text), and read a title's own `<br>` as part of a word, so a
    title of two lines that fit became three (a review)."""
    import plotly.graph_objects as go

    from dashboards import charts

    def fitted(title: str, share: float = 0.4):
        fig = charts.fit_title(charts.style(go.Figure(), title), share)
        return fig.layout.title.text, fig.layout.margin.t

    room = int((0.4 * charts.NARROW_PAGE_PX - charts.TITLE_MARGIN_PX) / charts.TITLE_CHAR_PX)  # 30 characters
    coloured = 'Tokens <span style="color:#d62728">steered</span> per layer'  # 26 drawn, 59 in all
    assert len(coloured) > room and fitted(coloured) == (coloured, 50)
    two = "Balancedness per layer<br>over the plan window"  # two lines, each within the room
    assert fitted(two) == (two, 50)
    text, top = fitted("Balancedness per layer, mean over the plan window's passes<br>layer 3")
    assert text == "Balancedness per layer, mean<br>over the plan window's passes<br>layer 3" and top == 70
    # a long coloured title is broken at spaces outside the tag, each line within the room
    text, top = fitted('Relative load of <span style="color:#d62728">the routed experts</span> in the window')
    assert text == 'Relative load of <span style="color:#d62728">the routed<br>experts</span> in the window'
    assert all(len(re.sub("<[^>]*>", "", x)) <= room for x in text.split("<br>")) and top == 70
