"""The metric views under AppTest, against numbers computed here from the run's Parquet files: the
load-balance page over its window (and per GPU), the compared heatmaps' shared colour scale, and the
vocabulary specialisation beside its no-specialisation baseline; and what the other pages show (co-activation,
compare, training, overview, token explorer, MTP, ablations, steering) against the same tables by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers.apptest import app, array, chart, texts
from helpers.dashboard_runs import write_train_run


def frame(at, column: str):
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, (column, [list(d.value.columns) for d in at.dataframe])
    return found[0]


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
    at = app(tmp_path, "t", page="load_balance")
    at.slider(key="lb_window").set_value(10).run()
    assert not at.exception and not at.error, texts(at.error)
    table = frame(at, "MaxVio (batch mean)").set_index("layer")
    b = step_loads(run, 1, 16, last=10)
    assert len(b) == 10
    want = np.mean((b.max(1) - b.mean(1)) / b.mean(1))
    assert table.loc["layer 1", "MaxVio (batch mean)"] == pytest.approx(want, rel=1e-6)
    whole = step_loads(run, 1, 16)
    assert abs(np.mean((whole.max(1) - whole.mean(1)) / whole.mean(1)) - want) > 1e-4  # the run's would differ
    assert not any("imbalance" in c for c in table.columns)  # no GPU count: no second name for MaxVio
    # within the page's column at 1024 px less a vertical scroll bar: sized to their headers, the seven
    # columns took 596 px of its 562, Gini out of view (a tour); a shortened header keeps its name as help
    shown = next(json.loads(d.proto.columns) for d in at.dataframe if "MaxVio (batch mean)" in d.value.columns)
    shown = {c: v for c, v in shown.items() if c != "_index"}
    assert all("width" in v for v in shown.values()) and sum(v["width"] for v in shown.values()) <= 562 - 15, shown
    assert all(v["help"].startswith(c) for c, v in shown.items() if v.get("label") not in (None, c)), shown
    at.selectbox(key="lb_gpus").set_value(4).run()
    table = frame(at, "imbalance ratio (4 GPUs, batch mean)").set_index("layer")
    # in a table of their own: beside the per-expert columns the table scrolled sideways at a laptop's width
    assert list(table.columns) == ["imbalance ratio (4 GPUs, batch mean)", "balancedness (4 GPUs)"]
    assert "balancedness (4 GPUs)" not in frame(at, "MaxVio (batch mean)").columns
    g = b.reshape(10, 4, 4).sum(2)  # 4 GPUs of 4 contiguous experts
    assert table.loc["layer 1", "imbalance ratio (4 GPUs, batch mean)"] == pytest.approx(
        np.mean(g.max(1) / g.mean(1) - 1), rel=1e-6)


@pytest.mark.slow  # two app sessions
def test_load_balance_of_one_batch_says_so_instead_of_charting_one_point(tmp_path):
    """A run under one batch of windows (--max-tokens 2000 on the bundled corpus: 8 windows, one batch)
    drew 'MaxVio per batch' with one point a layer and a per-batch heatmap of one row (a browser tour)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", n_seq=1)  # every window in the second step: one step of loads
    info = json.loads((tmp_path / "one" / "run.json").read_text())
    (tmp_path / "one" / "run.json").write_text(json.dumps(info | {"options": {"batch_size": 8}}))
    at = app(tmp_path, "one", page="load_balance")
    assert not at.exception and not at.error, texts(at.error)
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert not any(i.endswith("-maxvio_steps") or i.endswith("-load_steps") for i in ids), ids
    assert any(i.endswith("-maxvio_bars") for i in ids)  # the rest of the page as before
    assert ("One batch (whole run): no load over batches to draw, and its MaxVio is the global one. A run of more "
            "windows than its batch size (8) shows") in texts(at.caption)
    write_run(tmp_path / "two")  # two batches: both charts, no such note
    at = app(tmp_path, "two", page="load_balance")
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert any(i.endswith("-maxvio_steps") for i in ids) and any(i.endswith("-load_steps") for i in ids), ids
    assert "One batch" not in texts(at.caption)


@pytest.mark.slow  # a whole app session
def test_compared_relative_load_heatmaps_share_one_scale(tmp_path):
    write_train_run(tmp_path / "a")
    write_train_run(tmp_path / "b", balance="none", seed=1)  # far less balanced: a larger largest load
    at = app(tmp_path, "a", page="compare")
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
    at = app(tmp_path, "r", page="specialisation")
    shown = [m for m in at.metric if m.label == "Vocabulary specialisation, layer 1"]
    assert shown, [m.label for m in at.metric]
    top1 = a["ids"][1][:, 0]
    vs = vocabulary_specialisation(a["token_id"], top1, min_count=5)
    base = vocabulary_specialisation_baseline(a["token_id"], top1, min_count=5)
    assert shown[0].value == f"{vs:.2f}" and shown[0].delta == f"{vs - base:+.2f} vs no specialisation"
    assert base < vs - 0.2  # the control: a specialised layer stands clear of its baseline
    assert "Vocabulary specialisation, layer 1: not measured" not in texts(at.caption)
    # no id seen 5 times (105 tokens of an SGLang import left the column empty, unexplained: a browser tour)
    write_run(tmp_path / "rare", n_seq=4, vocab=10_000)
    at = app(tmp_path, "rare", page="specialisation")
    assert not [m for m in at.metric if m.label.startswith("Vocabulary specialisation")]
    assert ("Vocabulary specialisation, layer 1: not measured, no token id occurs 5 times or more in the sampled "
            "tokens.") in texts(at.caption), texts(at.caption)


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_run_left_out_of_a_compared_chart_does_not_lend_its_colour(tmp_path):
    """Run A with one domain is left out of the specialisation chart; run B's bars were then drawn in
    A's colour, with no legend, so they read as A's (a review)."""
    from dashboards.views.compare import RUN_COLORS
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a", domains=("code",))
    write_run(tmp_path / "b")
    at = app(tmp_path, "a", page="compare")
    at.selectbox(key="cmp_b").set_value("b").run()
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    nmi = [s for s in specs if "I / H(domain)" in json.dumps(s.get("layout", {}).get("yaxis", {}))]
    assert len(nmi) == 1 and [t["name"] for t in nmi[0]["data"]] == ["b"]
    assert nmi[0]["data"][0]["marker"]["color"] == RUN_COLORS[1] and nmi[0]["layout"]["showlegend"] is True


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
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
    at = app(tmp_path, "r", page="specialisation")
    table = frame(at, "lift")
    assert table.expert.tolist() == want and len(set(np.round(best[want], 6))) > 1  # a real order to check
    share = C / C.sum(0)
    assert table.domain.tolist() == [sorted(['code', 'math', 'prose'])[i] for i in lift.argmax(0)[want]]
    assert (share.argmax(0) != lift.argmax(0))[want].any()  # the control: the largest share is another domain
    np.testing.assert_allclose(table.lift, best[want])


def metrics(at) -> dict:
    """label -> (value, delta), the first metric of each label (the MTP page has two acceptance lengths)."""
    out = {}
    for m in at.metric:
        out.setdefault(m.label, (m.value, m.delta))
    return out


def probe_run(path, **kw) -> dict:
    """A synthetic probe run whose model has dense layer 0 and MoE layers 1, 2 (the pages' moe_layers)."""
    from helpers.synthetic_run import write_run

    arrays = write_run(path, **kw)
    info = json.loads((path / "run.json").read_text())
    info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}
    (path / "run.json").write_text(json.dumps(info))
    return arrays


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Two training runs of 100 steps (b: aux-free, c: no balancing) between synthetic probe runs, so that
    c's next run of its own kind is b, three names on; e's routing table holds no rows and one of its
    expert_load files is unreadable."""
    from probe.schema import TABLES

    d = tmp_path_factory.mktemp("page_runs")
    probe_run(d / "a")
    write_train_run(d / "b", steps=100)
    for f in (d / "b" / "router_bias").glob("*.parquet"):  # b's largest |bias| negative (its largest bias is not)
        t = pq.read_table(f)
        i = t.schema.get_field_index("bias")
        pq.write_table(t.set_column(i, "bias", pc.negate(t.column(i))), f)
    write_train_run(d / "c", steps=100, balance="none", seed=1)
    probe_run(d / "d", seed=1)
    _result_tables(d / "a")
    probe_run(d / "e")  # recorded without routing rows
    for f in (d / "e" / "routing").glob("*.parquet"):
        pq.write_table(TABLES["routing"].empty_table(), f)
    sorted((d / "e" / "expert_load").glob("*.parquet"))[0].write_bytes(b"not parquet" * 10)  # and a broken file
    info = json.loads((d / "e" / "run.json").read_text())
    (d / "e" / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": ["tokens", "routing",
                                                                                       "expert_load"]}))
    return d


def _result_tables(run) -> None:
    """run's mtp (two domains of unequal size), spec, ablations (two commands; one ablation drawn twice) and
    steering tables (its "all" rows last, half the tokens steered)."""
    import pyarrow as pa

    from helpers.dashboard_runs import write_ablations, write_spec, write_steering
    from probe.schema import TABLES

    rows = [{"seq_id": i, "pos": i, "domain": dom, "mtp_top1": 1, "main_top1": 1, "agree": bool(i % k), "target": 1,
             "mtp_loss": 1.0} for dom, n, k in (("code", 30, 5), ("prose", 10, 3)) for i in range(n)]
    (run / "mtp").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["mtp"]), run / "mtp" / "part-0.parquet")
    write_spec(run)
    write_ablations(run)
    ab = pq.read_table(run / "ablations" / "sweep.parquet").to_pandas()
    again = ab[ab.ablation == "rand2"].assign(ablation="rand2-seed1", delta=lambda t: t.delta + 0.1)
    pq.write_table(pa.Table.from_pandas(pd.concat([ab, again]), schema=TABLES["ablations"], preserve_index=False),
                   run / "ablations" / "sweep.parquet")
    pq.write_table(pa.Table.from_pandas(ab.assign(delta=ab.delta + 1), schema=TABLES["ablations"], preserve_index=False),
                   run / "ablations" / "older.parquet")
    write_steering(run)
    st = pq.read_table(run / "steering" / "steer.parquet").to_pandas()
    st = st.assign(steered_tokens=st.tokens // 2).sort_values("domain", key=lambda d: d == "all", kind="stable")
    pq.write_table(pa.Table.from_pandas(st, schema=TABLES["steering"], preserve_index=False),
                   run / "steering" / "steer.parquet")
    info = json.loads((run / "run.json").read_text())
    info["ablation_parts"] = {"sweep": {"written": 1767225600.0}, "older": {"written": 1767225000.0}}
    (run / "run.json").write_text(json.dumps(info))


@pytest.mark.slow  # 1.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_co_activation_rows_are_the_first_experts_and_paths_are_scored_against_the_best_layer(tmp_path):
    from analyses.metrics import domain_information, routes_from_run

    a = probe_run(tmp_path / "r", n_seq=12)
    probe_run(tmp_path / "one", domains=("code",))
    at = app(tmp_path, "r", page="coactivation")
    heat = chart(at, "coact")["data"][0]
    ids, E = a["ids"][1], 8
    n = np.bincount(ids.ravel(), minlength=E)
    pair = np.zeros((E, E))
    for row in ids:
        for i in row:
            for j in row:
                pair[i, j] += i != j
    z = array(heat["z"]).reshape(E, E)
    off = ~np.eye(E, dtype=bool)
    assert n.min() > 0 and not np.allclose(pair / n[:, None], pair / n[None, :])  # rows and columns differ
    # row i: of the tokens that chose expert i, the share that also chose j; N(i) beside each cell of row i
    np.testing.assert_allclose(z[off], (pair / n[:, None])[off], rtol=1e-6)
    assert np.isnan(np.diag(z)).all()  # the diagonal (always 1) left blank
    np.testing.assert_array_equal(array(heat["customdata"]).reshape(E, E), np.repeat(n[:, None], E, 1))
    r = routes_from_run(tmp_path / "r", [1, 2])
    info = domain_information(r.ids, r.domain, r.layers, 1, r.heldout(5)).set_index("unit")
    path, single = info.loc["path"], info.drop(index="path")
    shown = metrics(at)
    assert shown["Path AMI"][1] == f"{path.ami - single.ami.max():+.3f} vs best layer"
    assert single.ami.max() != single.ami.min()  # the control: which layer is best matters
    assert shown["Domain accuracy"][1] == f"{100 * (path.heldout_accuracy - path.majority_baseline):+.1f} pp vs majority"
    at.session_state["run"] = "one"
    at.run()
    assert "The domain information of paths compares domains, and run `one` has 1 domain" in texts(at.info)
    assert "Path AMI" not in metrics(at) and "Distinct paths" in metrics(at) and not at.error


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_load_balance_shows_the_picked_layers_load_and_bias_over_the_last_50_steps_by_default(tmp_path):
    run = write_train_run(tmp_path / "t", steps=80)
    at = app(tmp_path, "t", page="load_balance")
    assert at.slider(key="lb_window").value == 50  # the default window: the last 50 steps of 80
    heat = chart(at, "rel_heatmap")["data"][0]
    last50 = step_loads(run, 1, 16, last=50).sum(0)
    np.testing.assert_allclose(array(heat["z"]).reshape(3, 16)[0], last50 / last50.mean(), rtol=1e-6)
    whole = step_loads(run, 1, 16).sum(0)
    assert not np.allclose(whole / whole.mean(), last50 / last50.mean(), rtol=1e-3)  # the control
    assert at.selectbox(key="lb_layer").options == heat["y"]  # the picker lists the heatmap's rows, in order
    at.selectbox(key="lb_layer").set_value("layer 2").run()
    fig = chart(at, "load_bias")
    # the bars sum the window, the bias is the last step's; the per-step heatmap says step, not batch
    # in 3/5 of the page, wrapped to fit it at 1024 px
    assert fig["layout"]["title"]["text"] == "layer 2: relative load (last 50 steps) and<br>balancing bias at the last step"
    assert chart(at, "load_steps")["layout"]["title"]["text"] == "layer 2: relative load per step"
    load = step_loads(run, 2, 16, last=50).sum(0)
    rel = load / load.mean()
    np.testing.assert_allclose(array(fig["data"][0]["y"]), rel, rtol=1e-6)
    b = pq.read_table(run / "router_bias").to_pandas()
    b = b[(b.layer == 2) & (b.step == b.step.max())].sort_values("expert")
    np.testing.assert_allclose(array(fig["data"][1]["y"]), b.bias, rtol=1e-6)
    corr = np.corrcoef(rel, b.bias)[0, 1]
    assert f"Correlation of relative load and bias across experts: {corr:+.2f}." in texts(at.caption), [c.value[:70] for c in at.caption]


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_compare_starts_from_the_selected_run_against_the_next_of_its_kind_over_its_last_50_steps(page_runs):
    at = app(page_runs, "c", page="compare")
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == ("c", "b")  # d and a are probes
    heat = chart(at, "cmp_rel_c")["data"][0]
    load = step_loads(page_runs / "c", 1, 16, last=50).sum(0)
    np.testing.assert_allclose(array(heat["z"]).reshape(-1, 16)[0], load / load.mean(), rtol=1e-6)
    steps = pq.read_table(page_runs / "c" / "train_steps").to_pandas().sort_values("step")
    loss = next(t for t in chart(at, "cmp_loss")["data"] if t["name"] == "c")
    # a 10-step mean centred on each step, as the Training page's (it was trailing: the same run's curve
    # drawn two ways on the two pages)
    want = [steps.lm_loss.iloc[max(0, i - 5):i + 5].mean() for i in range(len(steps))]
    np.testing.assert_allclose(array(loss["y"]), want, rtol=1e-5)


def test_training_headline_and_curves_follow_the_logged_steps(page_runs):
    run = page_runs / "b"
    at = app(page_runs, "b", page="training")
    steps = pq.read_table(run / "train_steps").to_pandas().sort_values("step")
    ev = pq.read_table(run / "train_eval").to_pandas().sort_values("step")
    shown = metrics(at)
    assert shown["LM loss (last 20)"][0] == f"{steps.lm_loss.iloc[-20:].mean():.3f}"
    assert len(ev) == 2 and shown["Val loss"][0] == f"{ev.val_loss.iloc[-1]:.3f}"  # the latest evaluation
    names = [t["name"] for t in chart(at, "loss")["data"]]
    assert names == ["LM loss", "MTP loss", "val loss"], names  # what they are, not the columns' names
    lm = chart(at, "loss")["data"][0]
    # 10 steps by default, centred on each step: steps i-5..i+4 (a trailing mean lags a falling loss
    # behind the validation diamonds drawn at the same step)
    want = [steps.lm_loss.iloc[max(0, i - 5):i + 5].mean() for i in range(len(steps))]
    np.testing.assert_allclose(array(lm["y"]), want, rtol=1e-5)
    bias = pq.read_table(run / "router_bias").to_pandas()
    b = bias[bias.layer == 1].bias.to_numpy(float)
    heat = chart(at, "bias_heat")["data"][0]
    assert np.abs(b).max() > b.max()  # the control: the scale is set by the largest |bias|, not the largest bias
    assert heat["zmax"] == pytest.approx(np.abs(b).max(), rel=1e-6) and heat["zmin"] == -heat["zmax"]


@pytest.mark.slow  # 420 training steps written, and a page
def test_a_gates_bias_over_steps_keeps_every_step_a_load_every_run_logged(tmp_path):
    """The Training page drew a gate's bias and load at every (step // 200)-th step, counted over every
    step: a run of `--load-every 7` logs its loads at steps 7, 14, ..., and a 420-step one showed those at
    multiples of 14 alone, half of its 60 logged steps and nothing to say so (a hunt). The stride now
    counts the logged steps, so under 200 of them are all drawn."""
    run = write_train_run(tmp_path / "t", steps=420)
    for t in ("router_bias", "expert_load"):  # as `python -m train --load-every 7` logs them
        for f in (run / t).glob("*.parquet"):
            tab = pq.read_table(f)
            pq.write_table(tab.filter(np.asarray(tab.column("step")) % 7 == 0), f)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"flags": info["flags"] | {"load_every": 7}}))
    at = app(tmp_path, "t", page="training")
    for key in ("bias_heat", "load_heat"):
        assert array(chart(at, key)["data"][0]["y"]).tolist() == list(range(7, 421, 7)), key


def test_overview_figures_of_a_training_run(page_runs):
    info = json.loads((page_runs / "b" / "run.json").read_text())
    at = app(page_runs, "b", page="overview")
    runs = at.dataframe[0].value.set_index("run")
    assert runs.tokens["b"] == info["tokens_seen"] and "16 experts (top-4)" in runs.model["b"]
    assert metrics(at)["Tokens seen"][0] == f"{info['tokens_seen']:,}"
    bars = chart(at, "train_tokens_per_domain")["data"][0]
    per = info["train_tokens"]
    assert len(set(per.values())) > 1  # the control: the domains' counts differ
    assert dict(zip(bars["x"], array(bars["y"]))) == per
    (flags,) = at.get("json")  # the "Training flags" expander shows them unfolded once opened
    assert flags.proto.expanded and json.loads(flags.proto.body) == info["flags"]
    at.session_state["run"] = "e"
    at.run()
    files = sorted((page_runs / "e").glob("*/*.parquet"))
    assert "Unreadable Parquet file" in texts(at.warning) and not at.success  # a complete run, yet not all readable
    assert f"1 of {len(files)} files unreadable." in texts(at.caption)


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_token_explorer_colours_and_routes_by_the_picked_layer(page_runs):
    import html
    import re
    from collections import Counter

    from dashboards.charts import expert_color

    run = page_runs / "a"
    at = app(page_runs, "a", page="token_explorer")
    at.selectbox(key="te_layer").set_value(2).run()
    doc = at.selectbox(key="te_doc").value
    tok = pq.read_table(run / "tokens").to_pandas()
    tok = tok[tok.doc_id == doc].sort_values("doc_pos")
    r = pq.read_table(run / "routing").to_pandas().set_index(["layer", "seq_id", "pos"])
    routes = [r.loc[(2, s, p)] for s, p in zip(tok.seq_id, tok.pos)]
    doc_html = next(m.value for m in at.markdown if "class='tokdoc'" in m.value)
    spans = re.findall(r"<span class='tok' title='([^']*)' style='background:([^;]+);", doc_html)
    assert [bg for _, bg in spans] == [expert_color(int(x.expert_ids[0])) for x in routes]  # top-1 at layer 2
    for (tip, _), x in zip(spans, routes):
        pairs = ", ".join(f"{int(e)} ({w:.3f})" for e, w in zip(x.expert_ids, x.expert_weights))
        assert f"layer 2 top-k (weight): {pairs}" in html.unescape(tip)
    counts = Counter(int(x.expert_ids[0]) for x in routes)
    chips = next(m.value for m in at.markdown if "border-radius:4px;padding:1px 6px" in m.value)
    shown = [(int(e), int(n)) for e, n in re.findall(r"expert (\d+): (\d+)</span>", chips)]
    assert shown == sorted(counts.items(), key=lambda c: (-c[1], c[0])) and len(set(counts.values())) > 1
    heat = chart(at, "route")["data"][0]  # the route of the document's second token (the slider's default)
    z, rank = array(heat["z"]).reshape(2, 8), array(heat["customdata"]).reshape(2, 8)
    for j, layer in enumerate((1, 2)):
        x = r.loc[(layer, tok.seq_id.iloc[1], tok.pos.iloc[1])]
        np.testing.assert_allclose(z[j, list(x.expert_ids)], x.expert_weights, rtol=1e-6)
        assert rank[j, list(x.expert_ids)].tolist() == [1, 2]
    scale = json.loads((run / "run.json").read_text())["model_args"].get("route_scale")
    words = " ".join(c.value for c in at.caption)  # what the weights are (their sums near route_scale puzzled a review)
    assert (f"times route_scale {scale:g}" if scale else "times the model's route_scale") in words
    at.session_state["run"] = "e"
    at.run()
    assert "No routing rows for this document" in texts(at.info) and not at.error
    assert [c.proto.id.split("-")[-1] for c in at.get("plotly_chart")] == ["doc_loss"]  # no route heatmap


def test_mtp_agreement_is_over_positions_and_the_drafts_are_counted(page_runs):
    mtp = pq.read_table(page_runs / "a" / "mtp").to_pandas()
    dec = pq.read_table(page_runs / "a" / "spec_decode").to_pandas()
    at = app(page_runs, "a", page="mtp")
    shown = metrics(at)
    agree = mtp.agree.mean()  # every position counts once: the larger domain weighs more
    assert agree != mtp.groupby("domain").agree.mean().mean()  # the control: the mean of the domains' differs
    assert shown["Agreement (all)"][0] == f"{agree:.1%}" and shown["Mean acceptance length"][0] == f"{1 + agree:.2f}"
    assert shown["Drafts proposed"][0] == f"{dec.drafts_proposed.sum():,}" != f"{dec.drafts_accepted.sum():,}"
    # each point of agreement by position is a bucket's mean, drawn at its first position: the axis says so
    options = json.loads((page_runs / "a" / "run.json").read_text()).get("options") or {}
    size = -(-(options.get("seq_len") or 512) // 16)  # 16 buckets of the window (512 where run.json names none)
    fig = chart(at, "agree_pos")
    assert size > 1 and fig["layout"]["xaxis"]["title"]["text"] == f"position (first of each bucket of {size})"
    first = mtp[mtp.domain == fig["data"][0]["name"]]
    assert array(fig["data"][0]["y"])[0] == pytest.approx(first[first.pos < size].agree.mean())


def test_mtp_of_one_domain_says_its_figures_instead_of_one_bar_each(page_runs, tmp_path):
    """A one-domain run drew 'Agreement by domain' and 'MTP loss by domain' with one bar each, the
    first the headline figure again (a browser tour): a caption gives the domain's loss instead."""
    import shutil

    run = shutil.copytree(page_runs / "a", tmp_path / "one")
    for f in (run / "mtp").glob("*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.filter(pc.equal(t.column("domain"), "code")), f)
    mtp = pq.read_table(run / "mtp").to_pandas()
    assert len(mtp) and set(mtp.domain) == {"code"}
    at = app(tmp_path, "one", page="mtp")
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert not any(i.endswith("-agree_domain") or i.endswith("-loss_domain") for i in ids), ids
    assert any(i.endswith("-agree_pos") for i in ids) and not at.error
    assert (f"One domain (`code`): its agreement is the figure above; its MTP loss {mtp.mtp_loss.mean():.3f} nats"
            in texts(at.caption)), texts(at.caption)
    at = app(page_runs, "a", page="mtp")  # the control: two domains, both charts
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert any(i.endswith("-agree_domain") for i in ids) and any(i.endswith("-loss_domain") for i in ids)
    assert "One domain" not in texts(at.caption)


def test_ablations_show_the_latest_command_sorted_with_shares_of_every_moe_layers_experts(page_runs):
    ab = pq.read_table(page_runs / "a" / "ablations" / "sweep.parquet").to_pandas()
    at = app(page_runs, "a", page="ablations")
    assert at.selectbox(key="abl_part").value == "sweep"  # written last (run.json's ablation_parts)
    table, more = frame(at, "delta"), frame(at, "routing_changed")
    # the sweep's order (the heatmap's rows), each ablation's `all` first: by name, top16 came before top2
    swept = list(ab.ablation.drop_duplicates())
    rows = sorted(zip(ab.ablation, ab.domain), key=lambda r: (swept.index(r[0]), r[1] != "all", r[1]))
    assert list(zip(table.ablation, table.domain)) == list(zip(more.ablation, more.domain)) == rows
    assert swept != sorted(swept)  # the fixture's sweep is not in name order, so the order is the sweep's
    want = ab.set_index(["ablation", "domain"]).loc[rows]
    np.testing.assert_allclose(table.delta, want.delta, rtol=1e-6)
    np.testing.assert_allclose(more.routing_changed, want.routing_changed, rtol=1e-6)
    curve = chart(at, "masked_curve")["data"]
    dots = next(t for t in curve if t["mode"] == "markers" and "rand2" in str(t["customdata"]))
    al = ab[(ab.domain == "all") & ab.ablation.isin(["rand2", "rand2-seed1", "rand4"])]
    np.testing.assert_allclose(sorted(array(dots["x"])), sorted(al.n_disabled / (8 * 2)))  # 8 experts x 2 MoE layers
    line = next(t for t in curve if t["mode"] == "lines+markers" and t["name"] == "reroute · random")
    two = al[al.n_disabled == 4].delta  # rand2 and its second draw, at one share
    assert len(two) == 2 and array(line["y"])[np.argmin(array(line["x"]))] == pytest.approx(two.mean())
    # the names and rules explained; this sweep has two sizes of random, so no "one point" note
    text = " ".join(c.value for c in at.caption)
    assert "Mode: reroute" in text and "`top4-control`" in text and "Each rule has one size here" not in text


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_ablations_tables_fit_their_columns_at_1024_px(page_runs, tmp_path):
    """The sweep's table within the page's column at 1024 px (562 px) less a scroll bar: its eleven columns took
    823 px, the loss change and routes out of view; its mode, rule and routes changed under an expander (528
    px); the experts whose ranks disagree at the page's width below the ρ chart: in the right 3/5 beside it
    (328 px) their seven columns took 480 (a tour). A shortened header keeps the table's name as its help."""
    import shutil

    from helpers.dashboard_runs import write_importance

    shutil.copytree(page_runs / "a", tmp_path / "a")
    write_importance(tmp_path / "a")
    at = app(tmp_path, "a", page="ablations")
    assert not at.exception and not at.error, texts(at.error)
    rooms = {"baseline_loss": 562 - 15, "routing_changed": 528 - 15, "rank_gap": 562 - 15}
    for column, room in rooms.items():
        table = next(d for d in at.dataframe if column in d.value.columns)
        shown = json.loads(table.proto.columns)
        widths = [(shown.get(c) or {}).get("width") for c in table.value.columns]  # every column's
        assert None not in widths and sum(widths) <= room, (column, shown)
        assert all(v["help"].startswith(c) for c, v in shown.items() if v.get("label") not in (None, c)), shown
    assert [e.label for e in at.expander] == ["Each ablation's mode, rule and routes changed"]
    assert frame(at, "routing_changed").columns.tolist()[-4:] == ["mode", "rule", "routing_changed", "experts_changed"]
    assert not [c for c in at.columns if c.dataframe]  # no table in a column of the page


def test_steering_shows_each_steerings_all_row_and_its_domains_bars(page_runs):
    tab = pq.read_table(page_runs / "a" / "steering").to_pandas()
    loss = tab[tab.kind == "loss"]
    at = app(page_runs, "a", page="steering")
    bars = chart(at, "steer_delta")["data"]
    assert sorted(t["name"] for t in bars) == ["code", "prose"]  # per domain; "all" is the metric
    for name in loss.steer.unique()[::-1]:
        at.selectbox(key="steer_pick").set_value(name).run()
        al = loss[(loss.steer == name) & (loss.domain == "all")].iloc[0]
        shown = metrics(at)
        assert shown["Δ loss (all)"][0] == f"{al.delta:+.4f}"
        assert shown["Share steered"][0] == f"{al.steered_tokens / al.tokens:.1%}" != "100.0%"
        # its sample, per domain (a review set its Δ loss beside the Ablations page's, of other tokens)
        dom = loss[(loss.steer == name) & (loss.domain != "all")]
        sample = f"Scored on {int(al.tokens):,} tokens (" + " and ".join(  # 'code 40 and prose 24' (it read ', ')
            f"{r.domain} {int(r.tokens):,}" for r in dom.itertuples()) + ")"
        assert any(c.value.startswith(sample) for c in at.caption), sample


def test_spec_acceptance_by_position_is_a_buckets_mean_over_enough_drafts_to_read(page_runs):
    """Acceptance by generated position drew each position of each domain alone: with a few prompts a domain
    every point was 0%, 50% or 100%, and the five domains' lines crossed at every step (a browser tour of a
    10-prompt spec run). Each point is now the mean of a bucket of positions (spec's new tokens in 8), drawn at
    its first position as the axis says, and a caption gives how many drafts a point holds."""
    drafts = pq.read_table(page_runs / "a" / "spec_drafts").to_pandas()
    at = app(page_runs, "a", page="mtp")
    fig = chart(at, "spec_pos")
    size = 4  # `dsv3-probe spec`'s default 32 new tokens (run.json names none here) in 8 buckets
    assert fig["layout"]["xaxis"]["title"]["text"] == f"generated token (first of each bucket of {size})"
    d = drafts[drafts.domain == fig["data"][0]["name"]]
    assert array(fig["data"][0]["x"]).tolist() == [1, 5, 9, 13]  # of positions 1..15
    assert array(fig["data"][0]["y"])[0] == pytest.approx(d[d.position <= size].accepted.mean())
    n = drafts.groupby(["domain", (drafts.position - 1) // size]).size()
    assert n.min() < n.max() and f"({n.min()} to {n.max()} drafts a point)" in texts(at.caption), texts(at.caption)
