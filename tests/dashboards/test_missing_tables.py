"""Dashboard pages on runs that lack a table, or whose table has no rows, or is lost, or whose run.json is not
where it should be: each page says which, and never calls one the other (split from test_dashboard.py, whose
`runs` it shares through helpers.dashboard_runs: one recording a test process)."""

from __future__ import annotations

import json

import pytest

from helpers.apptest import app, texts
from helpers.dashboard_runs import dashboard_runs


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    return dashboard_runs(probe_env, tmp_path_factory)


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_an_mtp_table_without_rows_is_not_called_missing(runs, tmp_path):
    """A run of windows too short for a draft (`--max-tokens 1`) has an `mtp` folder without rows: the
    MTP page said it 'has no mtp table', as if recorded with --no-mtp (a tour). It now says why it is
    empty. A complete run whose folder is gone lost the table its run.json lists: the page said it 'has
    no `mtp` table' too, below the Overview's warning that it was lost (a browser tour); it now warns as
    for a table that lost some of its parts. A run that never listed the table gets the missing-table note."""
    import shutil

    run = shutil.copytree(runs["demo"], tmp_path / "short")
    for f in (run / "mtp").glob("*.parquet"):
        f.unlink()
    at = app(tmp_path, "short", page="mtp")
    assert "none of its windows has a position with two more tokens after it" in texts(at.info), texts(at.info)
    shutil.rmtree(run / "mtp")
    at = app(tmp_path, "short", page="mtp")
    assert ("run 'short': cannot read `mtp` (listed in run.json but has no part files: deleted?"
            in texts(at.warning)), texts(at.warning)
    assert "has no `mtp` table" not in texts(at.info) and "two more tokens" not in texts(at.info)
    info = json.loads((run / "run.json").read_text())  # as recorded with --no-mtp: run.json lists no mtp
    (run / "run.json").write_text(json.dumps(info | {"tables": [t for t in info["tables"] if t != "mtp"]}))
    at = app(tmp_path, "short", page="mtp")
    assert ("has no teacher-forced agreement (no `mtp` table: a `dsv3-probe spec` run alone, or a record with "
            "`--no-mtp`)" in texts(at.info) and not at.warning), texts(at.warning)
    assert not any(c.value.startswith("Agreement:") for c in at.caption)  # no definition of what is not there


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_lost_routing_table_is_warned_about_not_called_never_recorded(runs, tmp_path):
    """A complete run whose `routing` folder is gone (run.json lists it): Specialisation, Co-activation
    and Compare runs said it 'has no `routing` table' and told it to record a run, the Token explorer 'No
    routing rows for this document (recorded with `--router-logits none`?)' below its warning that the
    table was lost, while the Overview warned that it was lost (a hunt). They now warn that it is lost."""
    import shutil

    run = shutil.copytree(runs["demo"], tmp_path / "a")
    shutil.copytree(runs["demo"], tmp_path / "b")  # Compare runs' second run, routing kept
    shutil.rmtree(run / "routing")
    lost = "run `a` cannot read `routing` (listed in run.json but has no part files: deleted?"
    for page, what in (("specialisation", "Token-id dependence"), ("coactivation", "Co-activation and expert paths"),
                       ("compare", "Run vs run")):
        at = app(tmp_path, "a", page=page)
        assert f"{what} reads" in texts(at.warning) and lost in texts(at.warning), (page, texts(at.warning))
        assert "has no `routing` table" not in texts(at.info) and "Record a run" not in texts(at.info), texts(at.info)
    at = app(tmp_path, "a", page="token_explorer")
    assert "run 'a': cannot read `routing` (listed in run.json" in texts(at.warning), texts(at.warning)
    assert "--router-logits none" not in texts(at.info), texts(at.info)
    shutil.rmtree(tmp_path / "b")
    info = json.loads((run / "run.json").read_text())  # as recorded with --router-logits none: no routing listed
    (run / "run.json").write_text(json.dumps(info | {"tables": [t for t in info["tables"] if t != "routing"]}))
    at = app(tmp_path, "a", page="coactivation")
    assert "has no `routing` table" in texts(at.info) and not at.warning, texts(at.warning)


@pytest.mark.slow
def test_a_run_without_rows_is_not_called_a_zero_domain_run(tmp_path):
    from helpers.synthetic_run import write_run

    import pyarrow.parquet as pq

    from probe.schema import TABLES

    write_run(tmp_path / "a")
    write_run(tmp_path / "b")
    for d in (tmp_path / "b").iterdir():  # every table's parts replaced by one without rows
        if d.is_dir():
            for f in d.glob("*.parquet"):
                f.unlink()
            pq.write_table(TABLES[d.name].empty_table(), d / "part-0.parquet")
    at = app(tmp_path, "a", page="compare")
    at.selectbox(key="cmp_b").set_value("b").run()
    info = texts(at.info)
    assert not at.error and "0 domains" not in info and "has no routed tokens yet" in info, info
    assert "`b` has no expert loads yet." in info and not any(  # no balance "comparison" of run A alone
        c.proto.id.endswith(("-cmp_maxvio", "-cmp_bal")) for c in at.get("plotly_chart"))


@pytest.mark.slow
def test_a_table_without_rows_is_told_from_a_lost_one(runs, tmp_path):
    """A complete run whose mtp table got no rows (windows too short for its i+2 target) keeps the
    table's empty folder and its progress names no mtp part: the overview says so plainly; a run that
    lost the folder, or parts its progress names committed, is warned about."""
    import shutil

    def no_rows(t):  # as the writer leaves a table that got no rows: no part, none noted committed
        unlink_parts(t)
        for p in (t.parent / "_progress").glob("r*.json"):
            progress = json.loads(p.read_text())
            p.write_text(json.dumps(progress | {"parts": {k: v for k, v in progress["parts"].items() if k != "mtp"}}))

    def unlink_parts(t):
        for f in t.glob("*.parquet"):
            f.unlink()

    for name, damage in (("no-rows", no_rows), ("lost", shutil.rmtree), ("parts-lost", unlink_parts)):
        shutil.copytree(runs["demo"], tmp_path / name)
        damage(tmp_path / name / "mtp")
    at = app(tmp_path, "no-rows", page="overview")
    assert "No rows recorded in: mtp" in texts(at.info) and "no files" not in texts(at.warning)
    for name in ("lost", "parts-lost"):
        at = app(tmp_path, name, page="overview")
        assert "run.json lists tables with no files: mtp" in texts(at.warning) and "No rows" not in texts(at.info)


@pytest.mark.slow  # 1.2 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_link_to_a_missing_run_says_so(runs):
    """?run=NAME naming no run showed the first run as if it were the one asked for, and rewrote the
    link (found by a review); now a warning names both, until another run is picked."""
    from streamlit.testing.v1 import AppTest

    from helpers.apptest import APP, share_component_scan

    def open_link(name):
        share_component_scan()
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["runs_dir"] = str(runs["good"])
        at.query_params["run"] = name
        return at.run()

    at = open_link("missing")
    first = at.session_state["run"]
    assert f"No run `missing` in `{runs['good']}`: showing `{first}` instead." in texts(at.warning)
    other = next(name for name in ("demo-stopped", "demo") if name != first)
    at.session_state["run"] = other  # picked in the sidebar
    at.run()
    assert "No run `missing`" not in texts(at.warning)
    at = open_link(other)  # the control: a link to a run opens it, no warning
    assert at.session_state["run"] == other and "No run" not in texts(at.warning)


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_folder_of_tables_without_run_json_is_named_not_left_out_silently(tmp_path):
    """A run folder whose run.json is gone was missing from the runs list without a word, and a runs
    directory of only such folders said 'No runs yet' (a tour): the Overview now names them."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "kept", n_seq=2)
    write_run(tmp_path / "lost", n_seq=2)
    (tmp_path / "lost" / "run.json").unlink()
    (tmp_path / "notes").mkdir()  # a folder of something else: not named
    (tmp_path / ".imp.importing" / "expert_load").mkdir(parents=True)  # nor an import's work in progress
    at = app(tmp_path, "kept")
    info = texts(at.info)
    assert "Not listed: `lost` holds a run's tables but no run.json" in info and "notes" not in info
    assert "importing" not in info
    assert at.dataframe[0].value.run.tolist() == ["kept"] and not at.error
    (tmp_path / "lost" / "run.json").write_text((tmp_path / "kept" / "run.json").read_text())
    assert "Not listed" not in texts(app(tmp_path, "kept").info)  # the control: back in the list


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_record_at_work_or_interrupted_says_its_table_is_not_written_yet(runs, tmp_path):
    """A record that lists `expert_load` and has not written it: the Load balance page said only that the run
    'has no `expert_load` table' (a bug hunt). Running: not yet; interrupted: continue it with --resume. The
    control: a complete run that never listed the table is told only that it has none."""
    import shutil

    said = "Run 'a' has no `expert_load` table"
    for status, more in (("running", " yet (the record writes it as it goes, or as it ends)"),
                         ("interrupted", ": the record was interrupted before writing it; continue it with "
                                         "`dsv3-probe record ... --resume`"),
                         ("complete", ": cannot show")):
        run = tmp_path / status / "a"
        shutil.copytree(runs["demo"], run)
        shutil.rmtree(run / "expert_load")
        info = json.loads((run / "run.json").read_text()) | {"status": status}
        if status == "complete":
            info["tables"] = [t for t in info["tables"] if t != "expert_load"]
        (run / "run.json").write_text(json.dumps(info))
        at = app(tmp_path / status, "a", page="load_balance")
        assert any(t.startswith(said + more) for t in texts(at.info).split(" | ")), (status, texts(at.info))
        assert not at.error


def test_the_token_explorer_of_a_run_without_routing_shows_the_text_and_says_why_only_that(tmp_path):
    """A record of `--router-logits none` on the Token explorer: under a note that the run 'has no `routing`
    table: cannot show the routing of this document', the page called its plain text 'coloured by the top-1
    expert at layer 1' under a layer picker that changed nothing, titled the loss chart's grey markers
    'marker colour = top-1 expert' and drew a 'Route of one token' heading with nothing below it (a browser
    tour). It now says once what is missing and what to do, and draws the text and its losses alone. The
    control: the same run with its routing."""
    import shutil

    from helpers.synthetic_run import write_run

    for run, routed in (("bare", False), ("routed", True)):
        write_run(tmp_path / run, n_seq=2)
        info = json.loads((tmp_path / run / "run.json").read_text())
        info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}  # MoE layers 1 and 2, the picker's
        if not routed:  # as `--router-logits none` leaves a run: no routing folder, none listed
            shutil.rmtree(tmp_path / run / "routing")
            info |= {"options": {"router_logits": "none"}, "tables": [t for t in info["tables"] if t != "routing"]}
        (tmp_path / run / "run.json").write_text(json.dumps(info))
        at = app(tmp_path, run, page="token_explorer")
        assert not at.error and not at.warning, (run, texts(at.error), texts(at.warning))
        markdown = " ".join(m.value for m in at.markdown)
        titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
        assert ("coloured by the top-1 expert at layer 1" in markdown) is routed, markdown
        assert ("te_layer" in [s.key for s in at.selectbox]) is routed
        assert ("Route of one token through the layers" in [h.value for h in at.subheader]) is routed
        assert any(t.startswith("Token loss along the document") for t in titles), titles
        assert any("marker colour = top-1 expert" in t for t in titles) is routed, titles
        assert ("class='tokdoc'" in markdown and "d0" in markdown), markdown  # the text, in either case
        assert ("recorded with `--router-logits none`; record it again without it." in texts(at.info)) is not routed
        assert "cannot show the routing of this document" not in texts(at.info), texts(at.info)


def test_a_spec_run_is_told_on_the_routing_pages_what_it_holds(tmp_path):
    """A `dsv3-probe spec` run of its own (`--out runs/new`) on the routing pages: Load balance said only that
    it 'has no `expert_load` table', Specialisation and Co-activation to record a run as 'a serving engine's
    per-pass or stat dump holds loads only' (a browser tour). They now say what the run holds and where it is
    shown. The control: a run of no such kind is told as before."""
    from helpers.dashboard_runs import write_spec

    for run, kind in (("spec", "spec"), ("other", None)):
        (tmp_path / run).mkdir()
        write_spec(tmp_path / run)
        args = {"n_layers": 3, "n_dense_layers": 1, "n_routed_experts": 8, "n_activated_experts": 2}
        info = {"status": "complete", "format": 1, "kind": kind, "model_args": args,
                "tables": ["spec_decode", "spec_drafts"]}
        (tmp_path / run / "run.json").write_text(json.dumps(info))
        said = "a `dsv3-probe spec` run records speculative decoding (the MTP page), not a corpus's routing"
        at = app(tmp_path, run, page="load_balance")
        assert (f"Run '{run}' has no `expert_load` table, as {said}: cannot show" in texts(at.info)) is bool(kind)
        for page in ("specialisation", "coactivation"):
            info = texts(app(tmp_path, run, page=page).info)
            assert (f"has no `tokens` and no `routing` table, as {said}." in info) is bool(kind), (page, info)
            assert ("serving engine" in info) is not bool(kind), (page, info)


def test_a_results_only_run_is_named_by_the_command_that_writes_its_kind():
    """The dashboard's words for a results-only run take the command from probe.run.MADE_BY, as the lost
    tables' advice and the report do (it had its own words for the commands: `analyses.ablate --out`)."""
    from types import SimpleNamespace

    from dashboards.runs import RESULTS_ONLY, results_only
    from probe.run import MADE_BY

    assert set(RESULTS_ONLY) <= set(MADE_BY)
    said = results_only(SimpleNamespace(info={"kind": "ablations"}))
    assert said == "a `python -m analyses.ablate` run records ablations (the Ablations page), not a corpus's routing"
    assert results_only(SimpleNamespace(info={"kind": "import"})) is None  # an import holds loads: not results only


def test_the_overview_of_a_run_without_routing_names_every_view_that_needs_it(tmp_path):
    """The Overview of a `--router-logits none` record said the Token explorer and Co-activation need the
    routing table, while Specialisation's top tokens, domain probe and token-id dependence and Compare
    runs' run vs run need it too, the probe's section left out of its page without a word (a browser tour)."""
    import shutil

    from helpers.synthetic_run import write_run

    write_run(tmp_path / "bare", n_seq=2)
    shutil.rmtree(tmp_path / "bare" / "routing")
    info = json.loads((tmp_path / "bare" / "run.json").read_text())
    info |= {"options": {"router_logits": "none"}, "tables": [t for t in info["tables"] if t != "routing"]}
    (tmp_path / "bare" / "run.json").write_text(json.dumps(info))
    note = [t for t in texts(app(tmp_path, "bare").info).split(" | ") if "--router-logits none" in t]
    assert note == ["Recorded with `--router-logits none`: no routing table, which the Token explorer's colours and "
                    "routes, Specialisation's top tokens, domain probe and token-id dependence, Co-activation & flow "
                    "and Compare runs' run vs run read."], note


WHY_MISSING = {  # run.json of a run without tokens and routing -> the words after "has no `routing` table"
    "router logits none": ({"status": "complete", "options": {"router_logits": "none"}},
                           ", as it was recorded with `--router-logits none`; record it again without it"),
    "running": ({"status": "running", "tables": ["tokens", "routing"]},
                " yet (the record writes {} as it goes, or as it ends)"),
    "interrupted": ({"status": "interrupted", "tables": ["tokens", "routing"]},
                    ": the record was interrupted before writing {}; continue it with "
                    "`dsv3-probe record ... --resume`"),
    "spec": ({"status": "complete", "kind": "spec"}, ", as a `dsv3-probe spec` run records speculative decoding (the "
                                                     "MTP page), not a corpus's routing"),
    "said nothing": ({"status": "complete"}, ""),
}


def test_a_page_s_error_and_the_per_token_note_say_why_a_table_is_missing_in_one_wording(tmp_path, monkeypatch):
    """`data.missing_table` (a page's error) and `ui.lacks_per_token` (the per-token sections' note) carried the
    same branches (a record of --router-logits none, a record at work or interrupted, a results-only run) in
    words of their own: 'yet (the record writes it as it goes, or as it ends)' against 'yet: the record commits
    them batch by batch, and they fill in as it goes.', and missing_table said nothing of --router-logits none.
    Both now end with `data.why_missing`'s words; the note alone adds the advice where run.json says nothing."""
    from dashboards import data, ui

    shown = []
    monkeypatch.setattr(ui.st, "info", lambda text, **_: shown.append(text))
    for name, (info, why) in WHY_MISSING.items():
        ref = data.RunRef("r", str(tmp_path), "probe", info["status"], info)  # a folder of no table
        assert str(data.missing_table(ref, "routing")) == "run 'r' has no `routing` table" + why.format("it"), name
        assert ui.lacks_per_token(ref, "Co-activation"), name
        note = ("Co-activation needs the per-token `tokens` and `routing` tables, and run `r` has no `tokens` and no "
                "`routing` table" + (why.format("them") or f". {data.RECORD_PER_TOKEN}") + ".")
        assert shown.pop() == note, name
    # the control: a table other than routing is no --router-logits none's, nor a record's that does not list it
    for name in ("router logits none", "running"):
        ref = data.RunRef("r", str(tmp_path), "probe", WHY_MISSING[name][0]["status"], WHY_MISSING[name][0])
        assert str(data.missing_table(ref, "kv_stats")) == "run 'r' has no `kv_stats` table", name
