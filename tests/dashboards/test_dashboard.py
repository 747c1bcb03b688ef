"""The Streamlit dashboard under streamlit.testing.v1.AppTest: every page on a small recorded run,
on training runs, on an empty runs directory and on a run with corrupted files (no exception, no
traceback, the expected elements present). The app around the pages: test_app_runs.py; the
Specialisation page on synthetic runs: test_specialisation_view.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from analyses.metrics._common import listed
from helpers.apptest import PAGES, app, open_page, texts
from helpers.dashboard_runs import dashboard_runs

# plotly charts each page must draw for the complete probe run `demo`
CHARTS_DEMO = {"overview": 1, "load_balance": 4, "specialisation": 4, "token_explorer": 2, "coactivation": 3,
               "serving": 3, "latent_kv": 3, "mtp": 6, "ablations": 5, "steering": 1, "compare": 6, "training": 6}


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    return dashboard_runs(probe_env, tmp_path_factory)


def seen(at) -> dict:
    """What the tests read from the page `at` has just run: one visit of a page serves every test
    that reads it (each visit is a whole run of the page's script)."""
    return {"errors": [e.value for e in at.error], "warnings": [w.value for w in at.warning],
            "charts": len(at.get("plotly_chart")), "labels": shown_labels(at), "info": texts(at.info),
            "markdown": [m.value for m in at.markdown], "dataframes": len(at.dataframe),
            "captions": [c.value for c in at.caption], "metrics": {m.label: m.value for m in at.metric}}


def texts_of(values: list[str]) -> str:
    """`texts` of what `seen` kept."""
    return " | ".join(values)


def visit(runs_dir: Path, run: str, pages) -> dict[str, dict]:
    """Each of `pages` opened once, in order, in one app on `run`: what each showed (`seen`). The app
    opens on the first (an app opened on the Overview, then sent to each page, ran the Overview twice)."""
    first, *rest = pages
    at = app(runs_dir, run, page=first)
    return {first: seen(at)} | {page: seen(open_page(at, page)) for page in rest}


@pytest.fixture(scope="module")
def demo_pages(runs):
    """Every page on the complete probe run `demo` (test_every_page_on_a_recorded_run and
    test_every_page_names_layers_one_way read them: each opened them all, 4 s)."""
    return visit(runs["good"], "demo", CHARTS_DEMO)


@pytest.fixture(scope="module")
def train_pages(runs):
    """The training run's pages with charts (test_training_runs, test_every_page_names_layers_one_way)."""
    return visit(runs["good"], "train-demo", ("overview", "load_balance", "training"))


@pytest.mark.slow
def test_every_page_on_a_recorded_run(runs, demo_pages):
    for page, n in CHARTS_DEMO.items():
        shown = demo_pages[page]
        assert not shown["errors"], (page, shown["errors"])
        assert not shown["warnings"], (page, shown["warnings"])
        assert shown["charts"] >= n, (page, shown["charts"])
    # the token explorer colours tokens and the specialisation page shows snippets
    assert any("class='tokdoc'" in m for m in demo_pages["token_explorer"]["markdown"])
    spec = demo_pages["specialisation"]
    assert spec["dataframes"] >= 2 and any("window" in m for m in spec["markdown"])
    # a small run's per-token views say they cover all of it (not "the first ~250,000 tokens")
    tokens = json.loads((runs["good"] / "demo" / "run.json").read_text())["planned"]["tokens"]
    assert f"Per-token view over all {tokens:,} tokens of the run." in spec["captions"]
    # the MTP page's mean acceptance length, from the spec_decode rows
    import pyarrow.parquet as pq

    dec = pq.read_table(runs["good"] / "demo" / "spec_decode").to_pandas()
    shown = demo_pages["mtp"]["metrics"]
    assert shown["Mean acceptance length"] == f"{1 + dec.drafts_accepted.sum() / dec.drafts_proposed.sum():.2f}"


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_widgets_change_the_view(runs):
    at = app(runs["good"], "demo", page="specialisation")
    at.radio(key="sp_view").set_value("share").run()
    assert not at.exception and not at.error
    at = open_page(at, "coactivation")
    at.multiselect(key="path_layers").set_value([1]).run()
    assert "Pick at least two MoE layers" in texts(at.info)
    at = open_page(at, "token_explorer")
    at.selectbox(key="te_domain").set_value("prose").run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) >= 2


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_training_runs(runs, train_pages):
    for page, shown in train_pages.items():
        assert not shown["errors"] and not shown["warnings"], (page, shown["errors"], shown["warnings"])
        assert shown["charts"] >= (6 if page == "training" else 1), page
    at = app(runs["good"], "train-demo", page="specialisation")  # a probe-only page says so and offers the probe runs
    assert "`train-demo` (train) is not a probe run" in texts(at.info) and not at.error
    open_page(at, "compare")
    at.selectbox(key="cmp_b").set_value("train-nobal").run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) >= 6


@pytest.mark.slow  # 2.9-4.7 s: train_pages' three pages, no other quick test's (the AVX2-only EPYC, 2026-12-07)
def test_the_training_page_shows_the_bias_settling_where_the_run_had_one(runs, train_pages):
    """The phase after the last step moved the bias of the model the run ships; the page said nothing of it."""
    shown = train_pages["training"]
    caption = next((c for c in shown["captions"] if "settled bias" in c), "")
    assert "moved 3 times" in caption and "8 fresh training batches" in caption and "(12 s)" in caption
    at = app(runs["good"], "train-nobal", page="training")  # balance none: no settling
    assert not at.exception and not any("settled" in c.value for c in at.caption)
    assert "The bias settled after the last step" not in [h.value for h in at.subheader]


OLD_LAYER_LABEL = re.compile(r"\b(?:layer|mtp)\d+\b")  # 'layer3', 'mtp0': the pages now say 'layer 3', 'MTP 0'


def shown_labels(at) -> list[str]:
    """What a page shows that can name a layer: its charts (traces, axes, titles, hover texts, as the
    figure's JSON) and its pickers' options."""
    out = [c.proto.spec for c in at.get("plotly_chart")]
    for picker in (*at.selectbox, *at.multiselect):
        out += [str(o) for o in picker.options]
    return out


@pytest.mark.slow
def test_every_page_names_layers_one_way(demo_pages, train_pages):
    """One label for a layer on every page (data.layer_label): 'layer 3' and 'MTP 0', where the pages
    said 'layer3', 'layer 3' or a bare 3 each their own way."""
    every = []
    for run, pages in (("demo", demo_pages), ("train-demo", train_pages)):
        for page, shown in pages.items():
            labels = shown["labels"]
            assert not [x for x in labels if OLD_LAYER_LABEL.search(x)], (run, page, OLD_LAYER_LABEL.findall(
                " ".join(labels)))
            every += labels
    assert re.search(r"\blayer \d+\b", " ".join(every)) and "MTP 0" in " ".join(every)


@pytest.mark.slow
def test_a_run_compared_with_itself_and_latent_tables_without_rows(runs, tmp_path):
    """Run A = run B drew half of the sections without a word; a kv_stats part without rows raised
    inside the latent page (found by a review)."""
    import shutil

    import pyarrow.parquet as pq

    from probe.schema import TABLES

    at = app(runs["good"], "demo", page="compare")
    at.selectbox(key="cmp_b").set_value("demo").run()
    assert "pick two different runs" in texts(at.info) and not at.get("plotly_chart") and not at.error
    shutil.copytree(runs["demo"], tmp_path / "kv")
    for f in (tmp_path / "kv" / "kv_stats").glob("*.parquet"):
        f.unlink()
    pq.write_table(TABLES["kv_stats"].empty_table(), tmp_path / "kv" / "kv_stats" / "part-0.parquet")
    at = app(tmp_path, "kv", page="latent_kv")
    assert not at.error and "holds no rows" in texts(at.info), texts(at.error)


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_layer_with_non_finite_latents_is_named_not_averaged_away(runs, tmp_path):
    """The probe writes a NaN effective rank for a layer whose latents were NaN (a diverged checkpoint);
    the page's mean left that layer out without a word, and showed nan when every layer was (a
    review). It now names the layers, and the notebook's conclusion too (`latent_summary`)."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from analyses.notebook_utils import latent_summary
    from probe.schema import TABLES

    run = shutil.copytree(runs["demo"], tmp_path / "nan")
    kv = pq.read_table(run / "kv_stats").to_pandas().sort_values("layer", ignore_index=True)
    finite_mean = kv.effective_rank.iloc[1:].mean()
    for bad_layers, want in ((kv.layer.iloc[:1], f"{finite_mean:.1f}"), (kv.layer, "n/a")):
        nan = kv.copy()
        gone = nan.layer.isin(bad_layers)
        nan.loc[gone, "effective_rank"] = np.nan
        for col in ("energy90", "energy95", "energy99"):
            nan[col] = nan[col].astype("Int64").where(~gone)
        for f in (run / "kv_stats").glob("*.parquet"):
            f.unlink()
        pq.write_table(pa.Table.from_pandas(nan, schema=TABLES["kv_stats"], preserve_index=False),
                       run / "kv_stats" / "part-0.parquet")
        at = app(tmp_path, "nan", page="latent_kv")
        shown = {m.label: m.value for m in at.metric}
        layers = listed([str(int(x)) for x in bad_layers])  # 'Layers 0, 1 and 2' (it read '0, 1, 2')
        assert shown["Mean effective rank"] == want and not at.error, (shown, texts(at.error))
        assert shown["Absorb vs MHA cache"] == f"{kv.bytes_absorb.iloc[0] / kv.bytes_mha.iloc[0]:.1%}"
        noun = "Layer" if len(bad_layers) == 1 else "Layers"  # 'Layer(s) 1' (a tour)
        assert f"{noun} {layers}: non-finite latents" in texts(at.warning), texts(at.warning)
        rank = nan[["layer", "latent_dim", "effective_rank", "energy90", "energy99"]].assign(
            rank_share=nan.effective_rank / nan.latent_dim)
        text = latent_summary(rank, nan)
        assert ": non-finite latents (NaN or inf)" in text and "bytes absorbed" in text
        assert ("No layer has finite latents" in text) == (len(bad_layers) == len(kv))


def test_the_norm_statistics_are_the_runs_norms_in_columns_that_fit_an_expander(runs):
    """The expander titled "Norm statistics per layer" showed the whole kv_stats row, 19 columns in 1,707 px
    at 1400 px, its k_pe norms behind a sideways scroll (a tour): now a row per layer and vector, the
    norms as kv_stats holds them, in columns that fit the expander at 1024 px."""
    import json

    import pyarrow.parquet as pq

    from dashboards import ui

    kv = pq.read_table(runs["demo"] / "kv_stats").to_pandas().sort_values("layer", ignore_index=True)
    at = app(runs["good"], "demo", page="latent_kv")
    table = at.dataframe[0]
    shown = table.value
    assert list(shown.columns) == ["layer", "vector", "mean", "std", "min", "max"] and len(shown) == 2 * len(kv)
    for vec, col in (("c_kv after kv_norm", "latent_norm"), ("k_pe after RoPE", "k_pe_norm")):
        rows = shown[shown.vector == vec]
        assert rows.layer.tolist() == [f"layer {int(x)}" for x in kv.layer]
        for stat in ("mean", "std", "min", "max"):
            assert rows[stat].tolist() == pytest.approx(kv[f"{col}_{stat}"].tolist()), (vec, stat)
    widths = [v.get("width") for c, v in json.loads(table.proto.columns).items() if c != "_index"]
    assert None not in widths and sum(widths) <= ui.EXPANDER_PX, widths


def test_the_norm_statistics_of_a_deep_model_scroll_inside_their_table(runs, tmp_path, monkeypatch):
    """Two rows a layer, each shown before the table scrolled: DeepSeek-V3's 61 MLA layers made a table of
    122 rows, 4,308 px tall in its expander (a review). At most 40 rows show, as the pages' whole tables."""
    import shutil

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dashboards import ui
    from probe.schema import TABLES

    run = shutil.copytree(runs["demo"], tmp_path / "deep")
    kv = pq.read_table(run / "kv_stats").to_pandas().sort_values("layer", ignore_index=True)
    deep = pd.concat([kv.iloc[[0]]] * 61, ignore_index=True).assign(layer=range(61))
    for f in (run / "kv_stats").glob("*.parquet"):
        f.unlink()
    pq.write_table(pa.Table.from_pandas(deep, schema=TABLES["kv_stats"], preserve_index=False),
                   run / "kv_stats" / "part-0.parquet")
    info = json.loads((run / "run.json").read_text())
    info["model_args"]["n_layers"] = 60  # and its MTP layer, 61 in all, as DeepSeek-V3
    (run / "run.json").write_text(json.dumps(info))
    heights, whole = {}, ui.whole_table_height
    for name, n in (("demo", len(kv)), ("deep", 61)):
        asked = []  # the table's height, as wrapped_table asks for it (AppTest does not show it)
        monkeypatch.setattr(ui, "whole_table_height", lambda rows, most=40, row=35: asked.append(
            (rows, most)) or whole(rows, most, row))
        at = app(runs["good"] if name == "demo" else tmp_path, name, page="latent_kv")
        monkeypatch.undo()
        assert not at.exception and not at.error, (name, texts(at.error), at.exception)
        table = next(d for d in at.dataframe if "vector" in d.value)
        assert len(table.value) == 2 * n and not at.exception, name
        heights[name] = [whole(rows, most) for rows, most in asked if rows == 2 * n]
    assert heights == {"demo": [whole(2 * len(kv))], "deep": [whole(40)]}, heights


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_latents_of_one_token_give_no_spectrum_nor_a_rank_of_zero(runs, tmp_path):
    """`dsv3-probe record --max-tokens 1`: a covariance of one token is zero, so the spectrum's shares
    were all 0 / 0 (an empty chart, without a word) and the mean effective rank read 0.0 (a tour).
    The page now says a covariance needs two tokens, and shows the cache bytes only."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    run = shutil.copytree(runs["demo"], tmp_path / "one")
    at = app(tmp_path, "one", page="latent_kv")  # the control: the recorded run draws both
    ids = " ".join(c.proto.id for c in at.get("plotly_chart"))
    assert "-spectrum" in ids and "-erank" in ids
    kv = pq.read_table(run / "kv_stats").to_pandas().assign(tokens=1, effective_rank=0.0, energy90=0, energy95=0,
                                                               energy99=0)
    spec = pq.read_table(run / "kv_spectrum").to_pandas().assign(eigenvalue=0.0)
    for table, df in (("kv_stats", kv), ("kv_spectrum", spec)):
        shutil.rmtree(run / table)
        (run / table).mkdir()
        pq.write_table(pa.Table.from_pandas(df, schema=TABLES[table], preserve_index=False),
                       run / table / "part-0.parquet")
    at = app(tmp_path, "one", page="latent_kv")
    ids = " ".join(c.proto.id for c in at.get("plotly_chart"))
    assert "-spectrum" not in ids and "-erank" not in ids and "-bytes" in ids
    assert {m.label: m.value for m in at.metric}["Mean effective rank"] == "n/a"
    assert "a covariance needs two tokens or more, and the run recorded 1 token a layer" in texts(at.info)
    assert not at.error


@pytest.mark.slow
def test_one_moe_layer_and_a_run_trained_without_bias(runs, tmp_path):
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one-layer", layers=(1,))
    info = json.loads((tmp_path / "one-layer" / "run.json").read_text())
    info["model_args"] |= {"n_layers": 2, "n_dense_layers": 1}
    (tmp_path / "one-layer" / "run.json").write_text(json.dumps(info))
    at = app(tmp_path, "one-layer", page="coactivation")
    assert "Expert paths need two or more MoE layers; this model has 1 MoE layer." in texts(at.info)
    assert not at.error and not at.multiselect  # no widget asking for a second layer that is not there
    at = app(runs["good"], "train-nobal", page="load_balance")
    assert not at.error and "+nan" not in " ".join(c.value for c in at.caption)


@pytest.mark.slow
def test_ablations_of_several_commands_are_shown_one_evaluation_at_a_time(runs, tmp_path):
    """The report, a sweep and a notebook each write their own part, often under the same names and on
    other tokens: the page averaged them together (found by a review); now it shows one at a time."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    shutil.copytree(runs["demo"], tmp_path / "two")
    first = pq.read_table(tmp_path / "two" / "ablations" / "sweep.parquet").to_pandas()
    second = first.assign(tokens=first.tokens * 2, delta=first.delta + 1.0, loss=first.loss + 1.0)
    pq.write_table(pa.Table.from_pandas(second, schema=TABLES["ablations"], preserve_index=False),
                   tmp_path / "two" / "ablations" / "other.parquet")
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    parts = info.get("ablation_parts") or {}
    parts["other"] = (parts.get("other") or {}) | {"written": 86400 * 365 + 3600 * 13 + 60 * 5}  # 1971-01-01 13:05
    (tmp_path / "two" / "run.json").write_text(json.dumps(info | {"ablation_parts": parts}))
    at = app(tmp_path, "two", page="ablations")
    assert not at.error and "2 commands wrote ablations" in " ".join(c.value for c in at.caption)
    box = at.selectbox(key="abl_part")
    assert len(box.options) == 2
    assert sum("· 1971-01-01 13:05 UTC" in o for o in box.options) == 1, box.options  # in UTC, as the Overview
    shown = at.dataframe[0].value
    assert len(shown) == len(first) and shown.delta.nunique() == first.delta.nunique()
    before = sorted(shown.delta)
    box.set_value([o for o in ("other", "sweep") if o != box.value][0]).run()
    after = sorted(at.dataframe[0].value.delta)
    assert len(after) == len(first) and abs((after[0] - before[0])) == pytest.approx(1.0)


@pytest.mark.slow
def test_running_and_interrupted_runs_are_flagged(runs):
    from probe.writer import writer_lock

    with writer_lock(Path(runs["good"]) / "demo-running"):  # a record at work (without one: killed, interrupted)
        running = visit(runs["good"], "demo-running", PAGES)
    for page, shown in running.items():
        assert not shown["errors"], (page, shown["errors"])
    assert "still **running**" in running["overview"]["info"]
    # its tables are written only when the run finishes: one note says so
    assert "the record is still running, and writes kv_stats when it completes" in running["latent_kv"]["info"]
    assert "no ablations yet" in running["ablations"]["info"]
    stopped = visit(runs["good"], "demo-stopped", PAGES)
    for page, shown in stopped.items():
        assert not shown["errors"], (page, shown["errors"])
    assert "**interrupted**" in texts_of(stopped["load_balance"]["warnings"]) and stopped["load_balance"]["charts"] >= 4
    # the overview counts what was recorded, not the plan (it showed the planned windows and tokens
    # per domain beside the recorded tokens; a review)
    import shutil
    import tempfile

    import probe

    with tempfile.TemporaryDirectory() as d:  # a plan twice what was recorded, as a stopped run has
        stopped = Path(shutil.copytree(Path(runs["good"]) / "demo-stopped", Path(d) / "stopped"))
        info = json.loads((stopped / "run.json").read_text())
        plan = info["planned"]
        plan |= {"windows": 2 * plan["windows"], "tokens": 2 * plan["tokens"],
                 "tokens_per_domain": {k: 2 * v for k, v in plan["tokens_per_domain"].items()}}
        (stopped / "run.json").write_text(json.dumps(info))
        at = app(d, "stopped", page="overview")
        tok = probe.open_run(stopped).df("tokens")
        shown = {m.label: m.value for m in at.metric}
        assert shown["Windows"] == f"{tok.seq_id.nunique():,}" and shown["Documents"] == f"{tok.doc_id.nunique():,}"
        assert f"({len(tok):,} of the {plan['tokens']:,} tokens planned)" in texts(at.caption)
        # a run still recording (or killed) has no `recorded` yet: its Tokens metric, the runs table and
        # the per-token captions showed the plan as if recorded (a review)
        info |= {"status": "running"}
        info.pop("recorded", None)
        (stopped / "run.json").write_text(json.dumps(info))
        at = app(d, "stopped", page="overview")
        assert {m.label: m.value for m in at.metric}["Tokens"] == f"{len(tok):,}"
        open_page(at, "specialisation")
        assert f"Per-token view over all {len(tok):,} tokens of the run." in texts(at.caption)
        # and before its first commit: no tokens at all, not the plan (6,000 tokens, 24 windows and a
        # bar per domain on a run that held none; a review)
        def domain_chart(at) -> bool:
            return any("Tokens per domain" in str(c.proto.spec) for c in at.get("plotly_chart"))

        assert domain_chart(open_page(at, "overview"))  # the control: drawn while tokens are there
        shutil.rmtree(stopped / "tokens")
        at = app(d, "stopped", page="overview")
        shown = {m.label: m.value for m in at.metric}
        assert (shown["Tokens"], shown["Windows"], shown["Documents"]) == ("0", "0", "0"), shown
        assert "no batch committed yet" in texts(at.caption)
        assert not domain_chart(at)


@pytest.mark.slow  # every page
def test_empty_runs_directory(runs):
    at = app(runs["empty"])
    for page in PAGES:
        open_page(at, page)
        assert not at.error
        assert "No runs in" in texts(at.info), page


@pytest.mark.slow
def test_corrupted_files_are_warnings_not_tracebacks(runs):
    demo = visit(runs["corrupt"], "demo", PAGES)
    for page, shown in demo.items():
        assert not shown["errors"], (page, shown["errors"])
    joined = " ".join({w for shown in demo.values() for w in shown["warnings"]})
    assert "Unreadable Parquet file" in joined  # the overview's health check names the file
    assert "cannot read `routing`" in joined
    assert "cannot read `tokens`" in joined or "cannot read `routing` and `tokens`" in joined
    # pages that do not read the broken tables still draw
    for page in ("load_balance", "latent_kv", "mtp"):
        assert demo[page]["charts"] >= 2, page
    loads = visit(runs["corrupt"], "loads", PAGES)
    for page, shown in loads.items():
        assert not shown["errors"], (page, shown["errors"])
    assert "cannot read `expert_load`" in texts_of(loads["load_balance"]["warnings"])
    at = app(runs["corrupt"], "badjson", page="overview")
    assert "run.json unreadable" in texts(at.error) or "run.json unreadable" in texts(at.info + at.warning)


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_spec_only_run_has_an_overview_of_its_own(runs, tmp_path):
    """A run holding only `dsv3-probe spec`'s tables showed zeros, an empty options table and no
    domains (found by a review); the overview now summarises its prompts and acceptance."""
    import shutil

    import pyarrow.parquet as pq

    d = tmp_path / "runs"
    spec = d / "speconly"
    for t in ("spec_decode", "spec_drafts"):
        shutil.copytree(Path(runs["good"]) / "demo" / t, spec / t)
    dec = pq.read_table(spec / "spec_decode").to_pandas()
    per = {k: int(v) for k, v in (dec.prompt_tokens + dec.new_tokens).groupby(dec.domain).sum().items()}
    summary = {"prompts": len(dec), "generated": int(dec.new_tokens.sum()), "prompt_tokens": 8, "new_tokens": 4,
               "acceptance_rate": float(dec.drafts_accepted.sum() / dec.drafts_proposed.sum()),
               "mean_acceptance_length": 1.5, "tokens_per_domain": per, "checkpoint": "c", "corpus": "t"}
    info = json.loads((Path(runs["good"]) / "demo" / "run.json").read_text())
    (spec / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": "spec",
                                               "model_args": info["model_args"], "spec_decode": summary,
                                               "tables": ["spec_decode", "spec_drafts"]}))
    at = app(d, "speconly", page="overview")
    shown = {m.label: m.value for m in at.metric}
    assert shown["Prompts"] == f"{len(dec):,}" and shown["Generated tokens"] == f"{int(dec.new_tokens.sum()):,}"
    assert shown["MTP draft acceptance"] == f"{summary['acceptance_rate']:.3f}"
    assert "A `dsv3-probe spec` run" in texts(at.caption) and not at.error


@pytest.mark.slow  # 1.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
@pytest.mark.parametrize("kind, cmd", [("ablations", "analyses.ablate"), ("expert_importance", "analyses.importance"),
                                       ("steering", "analyses.steer")])
def test_an_analysis_only_run_has_an_overview_of_its_own(runs, tmp_path, kind, cmd):
    """A run that `python -m analyses.ablate|importance|steer --out DIR` wrote holds only its results
    table: the overview showed the record's figures, 0 tokens, 0 documents, 0 windows (a tour). It now
    shows the tokens the command scored, per domain, from the table."""
    import shutil

    import pyarrow.parquet as pq

    demo = Path(runs["good"]) / "demo"
    run = tmp_path / "runs" / "only"
    shutil.copytree(demo / kind, run / kind)
    info = json.loads((demo / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": kind, "tables": [kind],
                                              "model_args": info["model_args"], "checkpoint": info["checkpoint"],
                                              "corpus": info["corpus"], "options": {"max_tokens": 5000}}))
    df = pq.read_table(run / kind).to_pandas()
    df = df[df.kind == "loss"] if kind == "steering" else df
    at = app(tmp_path / "runs", "only", page="overview")
    shown = {m.label: m.value for m in at.metric}
    assert shown.get("Tokens scored") == f"{int(df[df.domain == 'all'].tokens.max()):,}" != "0", shown
    assert "Windows" not in shown and shown["Domains"] == str(df.domain.nunique() - 1)
    assert f"A `python -m {cmd} --out` run" in texts(at.caption) and not at.error
    assert any(c.proto.id.endswith("-analysis_tokens_per_domain") for c in at.get("plotly_chart"))


def test_a_spec_run_without_a_single_draft_shows_no_acceptance(runs, tmp_path):
    """`spec --new-tokens 1` proposes no draft: run.json says the rate and length are undefined, and
    the dashboard showed a mean acceptance length of 0.000 on the overview, 0.0% and 1.00 on the MTP
    page (a review). Both pages now say n/a."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    spec = tmp_path / "runs" / "nodrafts"
    rows = [{"doc_id": f"d{i}", "domain": "code", "prompt_tokens": 8, "new_tokens": 1, "forward_passes": 1,
             "drafts_proposed": 0, "drafts_accepted": 0, "tokens_per_forward": 1.0, "finish_reason": "length"}
            for i in range(3)]
    (spec / "spec_decode").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["spec_decode"]), spec / "spec_decode" / "part-0.parquet")
    (spec / "spec_drafts").mkdir()
    pq.write_table(TABLES["spec_drafts"].empty_table(), spec / "spec_drafts" / "part-0.parquet")
    info = json.loads((Path(runs["good"]) / "demo" / "run.json").read_text())
    summary = {"prompts": 3, "generated": 3, "prompt_tokens": 8, "new_tokens": 1, "acceptance_rate": None,
               "mean_acceptance_length": None, "tokens_per_domain": {"code": 27}, "checkpoint": "c", "corpus": "t"}
    (spec / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": "spec",
                                               "model_args": info["model_args"], "spec_decode": summary,
                                               "tables": ["spec_decode", "spec_drafts"]}))
    at = app(tmp_path / "runs", "nodrafts", page="overview")
    shown = {m.label: m.value for m in at.metric}
    assert shown["MTP draft acceptance"] == "n/a" and shown["Mean acceptance length"] == "n/a", shown
    at = open_page(at, "mtp")
    shown = {m.label: m.value for m in at.metric}
    assert shown["Acceptance rate"] == "n/a" and shown["Mean acceptance length"] == "n/a", shown
    assert shown["Drafts proposed"] == "0" and not at.exception and not at.error
    # no acceptance chart drawn empty, without a word (a tour): the page says why, and keeps tokens per pass
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert not any(i.endswith(("-spec_domain", "-spec_pos")) for i in ids) and any(i.endswith("-spec_tpf") for i in ids)
    assert "No MTP draft was proposed" in texts(at.info)


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_the_mtp_page_names_the_domains_a_spec_held_no_prompt_of(runs, tmp_path):
    """A spec with fewer prompts than the run's domains (`--max-prompts 3` into a five-domain run) drew its
    per-domain figures over the domains it prompted and said nothing of the rest; the report names them,
    and so does the page now, through the same function."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = Path(shutil.copytree(runs["good"] / "demo", tmp_path / "runs" / "demo"))
    for t in ("spec_decode", "spec_drafts"):  # code's prompts only: prose's are gone
        part = run / t / "part-0.parquet"
        rows = pq.read_table(part)
        pq.write_table(rows.filter(pc.equal(rows["domain"], "code")), part)
    at = open_page(app(tmp_path / "runs", "demo", page="overview"), "mtp")
    said = [c.value for c in at.caption if c.value.startswith("No prompt of")]
    assert said == ["No prompt of prose, which the run holds: spec's --max-prompts was below the domains' count, "
                    "or no document of theirs had --prompt-tokens tokens. The figures below leave it out."], said
    assert not at.exception and not at.error
    whole = open_page(app(runs["good"], "demo", page="overview"), "mtp")  # the control: every domain prompted
    assert not [c.value for c in whole.caption if c.value.startswith("No prompt of")]


def test_domains_only_a_table_names_get_colours(tmp_path):
    """A run whose run.json lists no domains (written by a user's own code, not `record`) but whose
    tokens table has some: the overview's bars looked their colours up among run.json's domains only
    and showed "Could not draw the run's summary: KeyError: 'code'"."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a", n_seq=2)
    at = app(tmp_path, "a")
    assert not at.error, texts(at.error)
    assert any(c.proto.id.endswith("-tokens_per_domain") for c in at.get("plotly_chart"))


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_the_kv_cache_bytes_name_the_dtype_they_count(runs, tmp_path):
    """The cache bytes per token are the checkpoint's dtype's (bfloat16: 2 bytes an element) whatever dtype the
    run computed in (float32 by default): the chart said 'bytes' alone, which read as the run's 4-byte elements
    (a browser tour). Its title names the dtype; a run.json that names none says nothing of it."""
    import shutil

    from helpers.apptest import chart

    dtype = json.loads((runs["demo"] / "run.json").read_text())["model_args"]["dtype"]
    at = app(runs["good"], "demo", page="latent_kv")
    title = chart(at, "bytes")["layout"]["title"]["text"]  # broken to fit half the page at 1024 px
    assert title.replace("<br>", " ") == f"KV cache bytes per token per layer ({dtype} elements)", title
    run = shutil.copytree(runs["demo"], tmp_path / "nodtype")
    info = json.loads((run / "run.json").read_text())
    info["model_args"].pop("dtype")
    (run / "run.json").write_text(json.dumps(info))
    at = app(tmp_path, "nodtype", page="latent_kv")
    assert chart(at, "bytes")["layout"]["title"]["text"] == "KV cache bytes per token per layer"
