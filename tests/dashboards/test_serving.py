"""The dashboard on runs imported from SGLang dumps: every page draws or says what the run lacks, and the
Serving page's balancedness equals a by-hand replay of the traffic the dumps were built from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import sglang_dumps as sg
from probe.sglang import import_sglang
from helpers.apptest import PAGES, app, array, chart, one_line, open_page, texts

PASSES = 12


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("sglang_dash")
    runs = base / "runs"
    passes = sg.traffic(seed=5, passes=PASSES)
    m = sg.physical_map(redundant=4, seed=1)
    cfg = str(sg.config(base / "model"))
    import_sglang(sg.write_stat(base / "stat", passes, buffer=16), runs / "stat", config=cfg)
    import_sglang(sg.write_per_pass(base / "pp", passes, m)[0].parent, runs / "per_pass", config=cfg)
    import_sglang(sg.write_per_token(base / "pt", passes, m)[0].parent, runs / "per_token", config=cfg)
    return {"runs": runs, "counts": sg.logical_counts(passes), "map": m}


def by_hand(counts: dict[int, np.ndarray], maps: dict[int, np.ndarray], gpus: int, passes) -> float:
    """Mean over `passes` of the mean over MoE layers of mean/max GPU load, each logical expert's load
    split evenly over its replicas: loops over slots, independent of analyses.placement.replay."""
    per_pass = []
    for fp in passes:
        vals = []
        for layer, m in maps.items():
            load = counts[fp][layer]
            per_gpu = [0.0] * gpus
            per = len(m) // gpus
            for slot, e in enumerate(m):
                per_gpu[slot // per] += load[e] / list(m).count(e)
            if max(per_gpu) > 0:
                vals.append(sum(per_gpu) / gpus / max(per_gpu))
        per_pass.append(sum(vals) / len(vals))
    return sum(per_pass) / len(per_pass)


def metric(at, label: str) -> float:
    """A metric's value by its label without the GPU count ("Planned, plan window (2 GPUs)")."""
    return float(next(m.value for m in at.metric if m.label.split(" (")[0] == label))


@pytest.mark.slow  # 0.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_runs_table_gives_an_import_of_counts_its_tokens(imported):
    """A stat or per_pass import records no tokens table and run.json no token count: the Overview's runs
    table showed its tokens as None (a tour); they are its passes' (assignments / top-k), as per_token's."""
    at = app(imported["runs"], "per_pass")
    table = at.dataframe[0].value
    tokens = dict(zip(table.run, table.tokens))
    assert tokens == {"stat": 193, "per_pass": 193, "per_token": 193}, tokens


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_load_balance_page_says_what_each_dump_records(imported):
    """'a serving engine's dump records loads and routes' was said of a stat dump too, which holds loads
    only (a tour)."""
    for name, held in (("stat", "loads,"), ("per_pass", "loads,"), ("per_token", "loads and routes,")):
        at = app(imported["runs"], name, page="load_balance")
        cap = " ".join(c.value for c in at.caption)
        assert f"No balancing bias: a serving engine's dump records {held} not the router's bias." in cap, (name, cap)


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_serving_replays_the_dumps_placement(imported, tmp_path):
    at = app(imported["runs"], "per_pass", page="serving")
    assert not at.error and not at.warning, (texts(at.error), texts(at.warning))
    assert len(at.get("plotly_chart")) == 3
    cap = " ".join(c.value for c in at.caption)
    assert "`per_pass` expert-distribution dump" in cap and "the dump's map (20 physical experts on 2 GPUs)" in cap
    assert at.selectbox(key="sv_gpus").value == 2 and at.number_input(key="sv_redundant").value == 4
    lo, hi = at.slider(key="sv_window").value
    assert (lo, hi) == (0, PASSES // 2 - 1)  # plan from the first half, the rest is held out
    m = imported["map"]
    current = {layer: m[layer] for layer in (1, 2)}
    counts = imported["counts"]
    want = by_hand(counts, current, 2, range(lo, hi + 1))
    assert metric(at, "Current, plan window") == pytest.approx(want, abs=5e-4)
    assert metric(at, "Current, later passes") == pytest.approx(by_hand(counts, current, 2, range(hi + 1, PASSES)),
                                                                abs=5e-4)
    # the planned placement: the file the page offers, replayed by hand
    from analyses.placement import plan_placement

    plans = {layer: plan_placement(sum(counts[fp][layer] for fp in range(lo, hi + 1)), n_gpus=2, n_redundant=4,
                                   groups=1).phy_to_log.reshape(-1) for layer in (1, 2)}
    planned = metric(at, "Planned, plan window")
    assert planned == pytest.approx(by_hand(counts, plans, 2, range(lo, hi + 1)), abs=5e-4)
    # negative control: the page replays the dump's own map, not SGLang's trivial one
    assert abs(want - by_hand(counts, {layer: np.arange(20) % sg.E for layer in (1, 2)}, 2, range(lo, hi + 1))) > 1e-3
    # the plan is made for the window's summed load: there it is at least as even as the dump's map
    agg = {k: by_hand({0: sum(counts[fp] for fp in range(lo, hi + 1))}, maps, 2, [0])
           for k, maps in (("now", current), ("plan", plans))}
    assert agg["plan"] >= agg["now"] - 1e-9
    assert f"current {agg['now']:.3f}, planned {agg['plan']:.3f}" in " ".join(c.value for c in at.caption)
    dl = at.get("download_button")
    assert dl and "plan.json" in dl[0].proto.label
    # the command line it offers plans the same: the window as --steps (it planned from every pass; a review)
    cmd = one_line(next(c.value for c in at.caption if "python -m analyses.placement" in c.value))
    assert "The same plan from the command line" in cmd and f" --steps {lo}-{hi} " in cmd
    # a code block of its own: as inline code at 1024 px it broke between `--` and `format` (a tour)
    assert "\n\n```bash\npython -m analyses.placement " in cmd and cmd.endswith(" --format sglang --out plan.json\n```")
    import shlex

    from analyses.placement.__main__ import main as placement

    def planned_by(line: str) -> list:
        out = tmp_path / "plan.json"
        assert placement(shlex.split(line.replace("--out plan.json", f"--out {out}"))) == 0
        return json.loads(out.read_text())["physical_to_logical_map"]

    line = cmd.split("```bash\npython -m analyses.placement ")[1].split("\n```")[0]
    got = planned_by(line)
    assert all(got[layer] == plans[layer].tolist() for layer in (1, 2))
    # control: from every pass, the command plans another placement
    every_pass = planned_by(line.replace(f" --steps {lo}-{hi}", ""))
    assert any(every_pass[layer] != plans[layer].tolist() for layer in (1, 2))


@pytest.mark.slow  # 0.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_serving_window_and_layout_change_the_plan(imported):
    at = app(imported["runs"], "stat", page="serving")
    assert "carries no placement" in " ".join(c.value for c in at.caption)
    # the window's slider on a row of its own, the four choices in a quarter of the page each: in one row of
    # five (3:1:1:1:1) their labels broke mid-word at 1024 px, `Redund` / `ant slots` (a tour)
    kinds = [(c.weight, [type(x).__name__ for x in c.children.values()]) for c in at.columns]
    assert not any("Slider" in k for _, k in kinds)
    assert [(w, k) for w, k in kinds if {"NumberInput", "Radio"} & set(k) or k == ["Selectbox"]][:4] == [
        (0.25, ["NumberInput"]), (0.25, ["Selectbox"]), (0.25, ["Radio"]), (0.25, ["Selectbox"])]
    # the layer's picker in the right half itself, not in a third of it (90 px at 1024 px: it showed `layer`)
    assert (0.5, ["Selectbox", "UnknownElement"]) in kinds, kinds
    # the per-layer chart's title in half the page, wrapped to fit it at 1024 px (it was cut after 'the pl')
    assert chart(at, "sv_layers")["layout"]["title"]["text"] == "Balancedness per layer, mean over the<br>plan window's passes"
    assert at.selectbox(key="sv_gpus").value == 8  # stat: SGLang's trivial map, on 8 GPUs by default
    counts = imported["counts"]
    trivial = {layer: np.arange(sg.E) for layer in (1, 2)}
    lo, hi = at.slider(key="sv_window").value
    assert metric(at, "Current, plan window") == pytest.approx(by_hand(counts, trivial, 8, range(lo, hi + 1)),
                                                               abs=5e-4)
    before = metric(at, "Planned, plan window")
    at.slider(key="sv_window").set_value((0, PASSES - 1)).run()
    assert not at.exception and not at.error
    assert not any(m.label == "Planned, later passes" for m in at.metric)  # nothing held out any more
    cmd = one_line(next(c.value for c in at.caption if "python -m analyses.placement" in c.value))
    assert "The same plan from the command line" in cmd and "--steps" not in cmd  # every pass: no range needed
    at.number_input(key="sv_redundant").set_value(8).run()
    assert at.selectbox(key="sv_gpus").value == 8 and not at.error  # 24 slots: 8 GPUs still divide them
    trivial = {layer: np.arange(24) % sg.E for layer in (1, 2)}
    assert metric(at, "Current, plan window") == pytest.approx(by_hand(counts, trivial, 8, range(PASSES)), abs=5e-4)
    assert metric(at, "Planned, plan window") != before
    at.number_input(key="sv_redundant").set_value(2).run()  # 18 slots: 8 no longer divides, the GPUs reset
    assert at.selectbox(key="sv_gpus").value in (2, 3, 6, 9, 18) and not at.error and not at.exception
    # ... and the page says why (it switched silently before)
    assert any("8 GPUs do not divide 16 + 2 = 18 slots" in c.value for c in at.caption), [c.value for c in at.caption]
    assert at.selectbox(key="sv_gpus").value == 9  # the nearest count that divides
    # the 8 picked is kept, not replaced by what was shown: it comes back once it divides again, and
    # the caption never names a count nobody picked (it drifted to 5, then 3; a review)
    at.number_input(key="sv_redundant").set_value(3).run()  # 19 slots: only 19 divides
    assert any("8 GPUs do not divide 16 + 3 = 19 slots" in c.value for c in at.caption)
    at.number_input(key="sv_redundant").set_value(0).run()  # 16 slots: 8 divides again
    assert at.selectbox(key="sv_gpus").value == 8 and not any("do not divide" in c.value for c in at.caption)
    at.selectbox(key="sv_gpus").set_value(4).run()  # the user's own pick is the new one to keep
    at.number_input(key="sv_redundant").set_value(2).run()
    assert any("4 GPUs do not divide 16 + 2 = 18 slots; 3 GPUs taken" in c.value for c in at.caption)
    # the command line it offers plans what the page planned: the planner's mode too (a review)
    at.radio(key="sv_mode").set_value("global").run()
    cmd = one_line(next(c.value for c in at.caption if "python -m analyses.placement" in c.value))
    assert " --mode global --format sglang" in cmd and "--redundant 2" in cmd



@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_later_passes_are_those_after_the_window_and_a_strided_run_says_what_its_bars_sum(imported, monkeypatch):
    """(a review) 'later passes' took every pass outside the window, those before it too; with the
    passes strided (a run longer than MAX_PASSES) the window slider moved by 1, so a window could hold
    no replayed pass, and the GPU bars claimed the window's whole load."""
    from dashboards import data

    counts, m = imported["counts"], imported["map"]
    current = {layer: m[layer] for layer in (1, 2)}
    at = app(imported["runs"], "per_pass", page="serving")
    at.slider(key="sv_window").set_value((6, PASSES - 1)).run()
    assert not at.error and not any(x.label.endswith("later passes") for x in at.metric)  # nothing after it
    at.slider(key="sv_window").set_value((3, 5)).run()
    assert metric(at, "Current, later passes") == pytest.approx(by_hand(counts, current, 2, range(6, PASSES)), abs=5e-4)
    # every 3rd pass replayed: the slider moves by 3 and the bars say they sum the replayed passes only
    monkeypatch.setattr(data.pass_stride, "__defaults__", (4,))
    monkeypatch.setattr(data.pass_loads.uncached, "__defaults__", (4,))
    data.pass_loads.clear()
    at = app(imported["runs"], "per_pass", page="serving")
    assert not at.error and at.slider(key="sv_window").proto.step == 3
    assert "every 3rd is replayed" in " ".join(c.value for c in at.caption)  # it said "every 3th"
    assert "replayed passes (1 in 3)" in at.get("plotly_chart")[2].proto.spec
    data.pass_loads.clear()

@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_every_page_on_imported_runs(imported):
    for run in ("stat", "per_token"):
        # opened on the Overview and read there (it ran three times: as the first page, in the loop, and last)
        at = app(imported["runs"], run, page="overview")
        assert any(m.label == "Forward passes" and m.value == str(PASSES) for m in at.metric), run
        assert any(m.label == "Source: sglang" and m.value == run for m in at.metric), run  # short enough to show
        assert set(at.dataframe[0].value.kind) == {"sglang import"}
        for page in PAGES:
            if page != "overview":
                open_page(at, page)
            assert not at.error, (run, page, texts(at.error))
            assert not at.warning, (run, page, texts(at.warning))
    at = app(imported["runs"], "stat", page="coactivation")  # per-token pages say what a stat dump lacks
    assert "no `routing` table" in texts(at.info)
    at = app(imported["runs"], "per_token", page="token_explorer")
    assert any("weights not recorded" in m.value for m in at.markdown)  # SGLang records ids, not weights
    assert len(at.get("plotly_chart")) >= 1


def test_the_runs_table_names_a_dumps_folder_not_its_first_files_path(imported):
    """The corpus cell held the first dump file's whole path, a word longer than the column that could not
    wrap, so its end was cut off and with it the file count (a tour). The folder is fitted to a line of
    the column, as a corpus path is."""
    from dashboards.views.overview import CELL_PAD_PX, RUN_COLUMNS, fit_path, text_px

    at = app(imported["runs"], "per_pass")
    cell = dict(zip(at.dataframe[0].value.run, at.dataframe[0].value.corpus))["per_pass"]
    files = json.loads((imported["runs"] / "per_pass" / "run.json").read_text())["source"]["files"]
    folder = fit_path(Path(files[0]).parent, RUN_COLUMNS["corpus"] - CELL_PAD_PX, text_px)
    assert len(files) == 2 and cell == f"sglang per_pass dump: 2 files in {folder}" and folder.endswith("/pp")
    assert max(len(w) for w in cell.split()) < len(files[0])  # every word shorter than the path it showed
    # they are listed in the "Source files" expander, open once it is opened (it held a folded `{...}`)
    (listing,) = at.get("json")
    assert listing.proto.expanded and files[0] in listing.proto.body


def test_the_overview_says_an_assumed_top_k_where_it_shows_one(tmp_path):
    """A stat import without --config holds DeepSeek-V3's top-8 as assumed (run.json source.topk_assumed):
    the run list showed "17 experts (top-8)" as if known, the page's note did not say which top-k it
    assumed nor that the loads do not rest on it. The import with --config is the control."""
    passes = sg.traffic(seed=5, passes=4)
    f = sg.write_stat(tmp_path / "stat", passes)
    import_sglang(f, tmp_path / "runs" / "assumed")
    import_sglang(f, tmp_path / "runs" / "given", config=str(sg.config(tmp_path / "model")))
    at = app(tmp_path / "runs", "assumed")
    model = dict(zip(at.dataframe[0].value.run, at.dataframe[0].value.model))
    assert model["assumed"] == f"3 layers, {sg.E} experts (top-8, assumed)"
    assert model["given"].endswith(f"{sg.E} experts (top-{sg.K})")  # the config's (with its hidden size)
    info = texts(at.info)
    assert "it was assumed to be 8 (DeepSeek-V3's)" in info and "the loads and their shares do not" in info
    at = app(tmp_path / "runs", "given")
    assert "assumed" not in texts(at.info)


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_pages_on_an_import_speak_of_passes_and_draw_no_idle_widget(imported):
    """A dump's steps are forward passes and it holds no router bias; with one domain there is no
    domain x expert heatmap, so no lift / share radio to switch it, nor a colour-by-domain one for the
    paths (a tour found both drawn, doing nothing)."""
    at = app(imported["runs"], "per_token", page="load_balance")
    assert chart(at, "load_steps")["layout"]["title"]["text"] == "layer 1: relative load per forward pass"
    assert chart(at, "load_bias")["layout"]["title"]["text"] == "layer 1: relative load (whole run)"
    cap = texts(at.caption)
    assert "dump records loads and routes, not the router's bias" in cap and "checkpoint" not in cap
    open_page(at, "specialisation")
    assert "one stream" in texts(at.info) and not [r for r in at.radio if r.key == "sp_view"]
    assert at.selectbox(key="sp_layer").value == "layer 1"  # the layer picker still serves the top tokens
    open_page(at, "coactivation")  # nor a colour-by-domain radio over one stream's paths
    assert len(at.get("plotly_chart")) == 2 and not [r for r in at.radio if r.key == "path_color"]
    open_page(at, "token_explorer")  # nor a domain picker offering `all` and `sglang`, the same documents
    assert len(at.get("plotly_chart")) == 1 and sorted(s.key for s in at.selectbox) == ["run", "te_doc", "te_layer"]
    for run in ("stat", "per_pass"):  # loads alone, one stream: no heatmap nor top tokens to pick a layer for
        at = app(imported["runs"], run, page="specialisation")
        assert "one stream" in texts(at.info) and "needs the per-token" in texts(at.info), run
        assert [s.key for s in at.selectbox if s.key == "sp_layer"] == [], run


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_page_for_other_runs_names_an_import_as_the_sidebar_does(imported, tmp_path):
    import shutil

    from helpers.dashboard_runs import write_train_run

    shutil.copytree(imported["runs"] / "per_token", tmp_path / "per_token")
    write_train_run(tmp_path / "t", steps=3)
    at = app(tmp_path, "per_token", page="training")
    assert "`per_token` (sglang import) is not a train run: this page shows train runs, here `t`." in texts(at.info)
    # the one train run named, not offered in a picker of one (which changed nothing); with two, a picker
    assert not [s for s in at.selectbox if s.key == "pick_train"] and at.metric
    write_train_run(tmp_path / "u", steps=3)
    at = app(tmp_path, "per_token", page="training")
    assert at.selectbox(key="pick_train").options == ["t", "u"] and "here `" not in texts(at.info)


def test_run_json_names_the_source(imported):
    info = json.loads((imported["runs"] / "per_token" / "run.json").read_text())
    assert info["source"]["name"] == "sglang" and info["source"]["mode"] == "per_token"


def test_pass_loads_reads_every_kth_pass_of_a_long_run(imported):
    from dashboards import data

    ref = next(r for r in data.discover(imported["runs"]) if r.name == "per_pass")
    steps, layers, X = data.pass_loads.uncached(ref)
    assert steps.tolist() == list(range(PASSES)) and layers == [1, 2] and X.shape == (PASSES, 2, sg.E)
    for fp in range(PASSES):
        np.testing.assert_array_equal(X[fp], imported["counts"][fp][1:])
    steps5, _, X5 = data.pass_loads.uncached(ref, 5)  # 12 passes, at most 5: every 3rd
    assert steps5.tolist() == [0, 3, 6, 9]
    np.testing.assert_array_equal(X5, X[[0, 3, 6, 9]])


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_token_explorer_shows_text_with_the_tokenizer(imported, tmp_path):
    """`--tokenizer` puts the served model's tokenizer in run.json: the explorer decodes the ids; without
    it the explorer shows ids (the control)."""
    from tokenizers import Tokenizer

    from helpers.apptest import REPO

    tok_path = REPO / "data" / "tokenizer.json"
    src = imported["runs"].parent / "pt"
    import_sglang(src, tmp_path / "runs" / "with_tok", tokenizer=str(tok_path))
    import_sglang(src, tmp_path / "runs" / "ids_only")
    first = sg.traffic(seed=5, passes=PASSES)[0].input_ids[0]
    word = Tokenizer.from_file(str(tok_path)).decode([first])
    at = app(tmp_path / "runs", "with_tok", page="token_explorer")
    html = " ".join(m.value for m in at.markdown if "class='tokdoc'" in m.value)
    assert html and not at.error
    at = app(tmp_path / "runs", "ids_only", page="token_explorer")
    ids_html = " ".join(m.value for m in at.markdown if "class='tokdoc'" in m.value)
    assert ids_html != html and f"{first}" in ids_html
    assert word.strip() and any(w in html for w in (word, word.strip()))


def test_a_plan_for_another_gpu_count_is_not_scored_against_the_servers(imported):
    """A plan for 10 GPUs showed a red -0.245 against the dump's placement on 2: balancedness falls as
    GPUs are added, so the difference said nothing about the plan (a review). The page now names
    each side's GPUs and shows a difference only at the server's count."""
    at = app(imported["runs"], "per_pass", page="serving")
    deltas = {m.label: m.delta for m in at.metric}
    assert deltas["Planned, plan window (2 GPUs)"] not in (None, "")  # the control: same count, a delta
    choices = at.selectbox(key="sv_gpus").options
    other = next(int(c) for c in choices if int(c) != 2)
    at.selectbox(key="sv_gpus").set_value(other).run()
    assert not at.exception
    labels = {m.label: m.delta for m in at.metric}
    assert f"Planned, plan window ({other} GPUs)" in labels and "Current, plan window (2 GPUs)" in labels, labels
    assert not any(d for label, d in labels.items() if label.startswith("Planned")), labels
    assert any(f"the plan on {other}" in i.value and "Pick 2 GPUs to compare them" in i.value for i in at.info)


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_serving_per_layer_bars_cover_the_plan_window_and_the_gpu_bars_the_picked_layer(imported):
    counts, m = imported["counts"], imported["map"]
    at = app(imported["runs"], "per_pass", page="serving")
    lo, hi = at.slider(key="sv_window").value
    n_slots = len(m[1])
    assert [int(c) for c in at.selectbox(key="sv_gpus").options] == [d for d in range(2, n_slots + 1)
                                                                      if n_slots % d == 0]  # one GPU is no EP
    now = next(t for t in chart(at, "sv_layers")["data"] if t["name"] == "current placement")
    want = [by_hand(counts, {layer: m[layer]}, 2, range(lo, hi + 1)) for layer in (1, 2)]
    later = [by_hand(counts, {layer: m[layer]}, 2, range(hi + 1, PASSES)) for layer in (1, 2)]
    assert np.allclose(array(now["y"]), want, atol=5e-4) and not np.allclose(want, later, atol=5e-4)  # the window's passes
    at.selectbox(key="sv_layer").set_value(2).run()
    gpu = chart(at, "sv_gpu")
    per_gpu = [0.0, 0.0]
    for slot, e in enumerate(m[2]):  # layer 2's window load on the dump's map, replicas sharing evenly
        per_gpu[slot // (n_slots // 2)] += sum(counts[fp][2][e] for fp in range(lo, hi + 1)) / list(m[2]).count(e)
    got = array(next(t for t in gpu["data"] if t["name"] == "current placement")["y"])
    assert gpu["layout"]["title"]["text"].startswith("layer 2:") and np.allclose(got, per_gpu, rtol=1e-6)
    # hierarchical planning puts whole expert groups on a node: only node counts dividing the groups are offered
    groups = json.loads((imported["runs"] / "per_pass" / "run.json").read_text())["model_args"]["n_expert_groups"]
    at.selectbox(key="sv_gpus").set_value(n_slots).run()
    nodes = [int(c) for c in at.selectbox(key="sv_nodes").options]
    assert nodes == [d for d in range(1, n_slots + 1) if n_slots % d == 0 and groups % d == 0] != [1] and not at.error
    at.selectbox(key="sv_nodes").set_value(2).run()
    cmd = one_line(next(c.value for c in at.caption if "python -m analyses.placement" in c.value))
    assert f"--gpus {n_slots} --redundant 4 --nodes 2 --steps " in cmd  # the node count it planned with


def test_the_plan_windows_label_sits_above_the_per_pass_lines(imported):
    at = app(imported["runs"], "per_pass", page="serving")
    fig = chart(at, "sv_passes")
    (label,) = [a for a in fig["layout"]["annotations"] if a["text"] == "plan window"]
    lines = np.concatenate([array(t["y"]) for t in fig["data"]])
    assert lines.max() > 0.9  # the control: the lines reach the top of the axis, where a label inside would sit
    # the top of the plot area, the text's bottom edge there: above every line, not over them
    assert (label["yref"], label["y"], label["yanchor"]) == ("y domain", 1, "bottom"), label


def test_the_command_lines_current_placement_is_the_pages(imported, tmp_path):
    """analyses.placement compared its plan only against the contiguous split without replicas, while the
    Serving page compares against the server's own map (a serving engineer's review): its
    balancedness_current column is that map's (an imported dump's, else SGLang's trivial one), by hand."""
    import contextlib
    import io

    from analyses.placement.__main__ import main as placement

    counts, window = imported["counts"], range(0, 6)
    summed = sum(counts[fp] for fp in window)
    for run, gpus, maps in (("per_pass", 2, {layer: imported["map"][layer] for layer in (1, 2)}),
                            ("stat", 4, {layer: np.arange(20) % sg.E for layer in (1, 2)})):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert placement([str(imported["runs"] / run), "--gpus", str(gpus), "--redundant", "4", "--steps", "0-5",
                              "--out", str(tmp_path / f"{run}.json")]) == 0
        what = "the server's placement from the import (2 GPUs)" if run == "per_pass" else "SGLang's trivial map"
        assert f"current: {what}" in out.getvalue()
        layers = json.loads((tmp_path / f"{run}.json").read_text())["layers"]
        for row in layers:
            want = by_hand({0: summed}, {row["layer"]: maps[row["layer"]]}, gpus, [0])
            assert row["balancedness_current"] == pytest.approx(want, abs=1e-9), (run, row["layer"])
            assert row["balancedness_current"] != pytest.approx(row["balancedness_before"])  # the control


def test_the_stride_reads_as_an_ordinal():
    from dashboards.views.serving import ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th", "112th"]


def test_the_gpu_counts_offered_are_those_the_placement_command_takes():
    # with 2E redundant slots, 2 GPUs held 1.5E slots each: the page planned it and its command line was refused
    from dashboards.views.serving import gpu_options

    assert gpu_options(16, 0) == [2, 4, 8, 16]
    assert gpu_options(16, 32) == [3, 4, 6, 8, 12, 16, 24, 48]
    assert gpu_options(1, 0) == [1]


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_dump_with_many_redundant_slots_opens_with_its_own_count(tmp_path):
    """The Redundant slots box was capped at 4 x E while its default is the dump's own count: a map
    of 6 x E slots asked Streamlit for 80 above a max of 64, and the page was a red box. The box now
    takes what the planner takes (analyses.placement.MAX_SLOTS slots a layer), the dump's count first."""
    from analyses.placement import MAX_SLOTS, plan_placement

    passes = sg.traffic(seed=3, passes=4)
    m = np.tile(np.arange(6 * sg.E) % sg.E, (sg.L, 1))  # 80 redundant slots
    cfg = str(sg.config(tmp_path / "model"))
    import_sglang(sg.write_per_pass(tmp_path / "pp", passes, m)[0].parent, tmp_path / "runs" / "wide", config=cfg)
    at = app(tmp_path / "runs", "wide", page="serving")
    assert not at.error, texts(at.error)
    box = at.number_input(key="sv_redundant")
    cap = int(box.max)
    assert box.value == 80 and cap == MAX_SLOTS - sg.E
    plan_placement(np.ones(sg.E), n_gpus=1024, n_redundant=cap)  # the cap is one the planner takes
    with pytest.raises(ValueError):
        plan_placement(np.ones(sg.E), n_gpus=1024, n_redundant=cap + 1)
    assert metric(at, "Planned, plan window") > 0


def test_a_gpu_count_that_divides_but_overfills_a_gpu_is_told_so(imported):
    """The dump's 2 GPUs divide 16 + 32 = 48 slots, but each would hold 24, more than the 16 experts:
    the page took another count and said "2 GPUs do not divide 16 + 32 = 48 slots" (a tour)."""
    at = app(imported["runs"], "per_pass", page="serving")
    at.number_input(key="sv_redundant").set_value(32).run()
    cap = texts(at.caption)
    assert "2 GPUs would hold 24 slots each, more than the 16 experts" in cap and "do not divide" not in cap, cap
    at.number_input(key="sv_redundant").set_value(3).run()  # 19 slots: 2 does not divide them
    assert "2 GPUs do not divide 16 + 3 = 19 slots" in texts(at.caption)


def test_the_analysis_commands_offered_for_an_import_name_a_checkpoint_and_corpus(imported):
    """An imported run has no checkpoint or corpus of its own: analyses.ablate / importance / steer
    refuse `--run IMPORT` without --ckpt and --corpus, and the Ablations and Steering pages offered
    the bare command (and ablate without anything to ablate, which it refuses too; a tour)."""
    run = imported["runs"] / "per_pass"
    at = app(imported["runs"], "per_pass", page="ablations")
    info = one_line(texts(at.info))
    for module, flags in (("ablate", " --top 4 --control"), ("importance", "")):
        assert block(f"python -m analyses.{module} --run {run} --ckpt CKPT --corpus CORPUS{flags}") in info, info
    open_page(at, "steering")
    assert block(f"python -m analyses.steer --run {run} --ckpt CKPT --corpus CORPUS --experts L:E") in one_line(texts(at.info))


def block(cmd: str) -> str:
    """A command as the pages give it: a code block of its own (as inline code, a command longer than its
    line broke where the browser chose, once inside `--control`; a tour at 1024 px)."""
    return f"\n\n```bash\n{cmd}\n```\n\n"


def test_the_load_per_gpu_names_the_gpus_by_number_under_one_axis_title(imported):
    """`GPU 0` ... `GPU 7` were turned on their side in half the page at 1024 px and cut to `GPl` at the
    chart's foot (a tour): the ticks are the GPUs' numbers, level, the chart's title naming them GPUs (an
    axis title, as 'MoE layer' beside it, sat on the legend)."""
    at = app(imported["runs"], "stat", page="serving")
    fig = chart(at, "sv_gpu")
    gpus = at.selectbox(key="sv_gpus").value
    assert [t["x"] for t in fig["data"]] == [[str(k) for k in range(gpus)]] * 2
    assert fig["layout"]["title"]["text"].endswith("load per GPU") and fig["layout"]["xaxis"]["tickangle"] == 0
    assert "title" not in fig["layout"]["xaxis"]
    assert "title" not in chart(at, "sv_layers")["layout"]["xaxis"]  # 'MoE layer' sat on its legend


def test_the_serving_command_quotes_a_run_path_with_a_space(tmp_path):
    """The Serving page's placement command is pasted into a shell: a run in `my runs/` was offered
    unquoted, two arguments there, and the planner refused the first (a review)."""
    import shlex

    passes = sg.traffic(seed=5, passes=4)
    import_sglang(sg.write_stat(tmp_path / "stat", passes), tmp_path / "my runs" / "r",
                  config=str(sg.config(tmp_path / "model")))
    at = app(tmp_path / "my runs", "r", page="serving")
    cmd = one_line(next(c.value for c in at.caption if "python -m analyses.placement" in c.value))
    line = cmd.split("```bash\n")[1].split("\n```")[0]
    assert shlex.split(line)[3] == str(tmp_path / "my runs" / "r")


def test_an_import_of_counts_beside_a_corpus_run_is_said_to_cover_another_sample(imported, tmp_path):
    """Compare runs warns when two runs' whole-run figures come from different samples; a per_token import
    plans its tokens and was warned about beside a corpus run, but a stat or per_pass import of the same
    traffic plans none and was set beside it without a word. Its tokens are now its passes'."""
    from dashboards.data import RunRef
    from dashboards.views.compare import sample_note

    def ref(path):
        return RunRef(path.name, str(path), "probe", "complete", json.loads((path / "run.json").read_text()))

    corpus = RunRef("corpus", str(tmp_path / "corpus"), "probe", "complete",
                    {"kind": "probe", "planned": {"tokens": 3000, "tokens_per_domain": {"code": 1500, "prose": 1500}}})
    for mode in ("stat", "per_pass", "per_token"):
        note = sample_note(ref(imported["runs"] / mode), corpus)
        assert note and f"`{mode}` " in note and " tokens (sglang 100%)" in note, (mode, note)
    # control: the three imports of one traffic are one sample
    assert sample_note(ref(imported["runs"] / "per_pass"), ref(imported["runs"] / "per_token")) is None
    assert sample_note(ref(imported["runs"] / "stat"), ref(imported["runs"] / "per_pass")) is None


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_per_pass_import_without_its_placement_says_its_map_was_left_out(imported, tmp_path):
    """per_pass and per_token dumps always carry the server's map; an import of one rank's file keeps no
    placement (the GPU count unknown), and the Serving page said 'The dump carries no placement'."""
    passes = sg.traffic(seed=5, passes=4)
    files = sg.write_per_pass(tmp_path / "pp", passes, sg.physical_map(redundant=4, seed=1))
    import_sglang(files[0], tmp_path / "runs" / "rank0", config=str(sg.config(tmp_path / "model")))
    words = texts(app(tmp_path / "runs", "rank0", page="serving").caption)
    assert "carries no placement" not in words
    assert "The dump's map was not imported (the server's GPU count was unknown: import every rank's file" in words
    assert "carries no placement" in texts(app(imported["runs"], "stat", page="serving").caption)  # a stat dump has none


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_stat_import_of_unknown_pass_order_is_warned_of_where_the_windows_use_it(tmp_path):
    """A stat buffer with every row used may have wrapped: the import warns on stderr and records
    source.pass_order_unknown, but the Serving page, whose plan window and 'later passes' rest on the
    order, said nothing."""
    passes = sg.traffic(seed=5, passes=6)
    cfg = str(sg.config(tmp_path / "model"))
    import_sglang(sg.write_stat(tmp_path / "full", passes, buffer=6), tmp_path / "runs" / "full", config=cfg)
    import_sglang(sg.write_stat(tmp_path / "gap", passes, buffer=8), tmp_path / "runs" / "gap", config=cfg)
    at = app(tmp_path / "runs", "full", page="serving")
    assert "The order of these passes is unknown" in texts(at.warning)
    assert "expert_distribution_recorder_1733000000.0.pt" in texts(at.warning)
    assert "order of these passes" not in texts(app(tmp_path / "runs", "gap", page="serving").warning)  # control
