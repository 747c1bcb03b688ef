"""The app around its pages, under streamlit.testing.v1.AppTest and in fresh processes: the runs
directory (named, mistyped, the default), the run picker in the sidebar, the runs list following
the folder, the shared DuckDB database, the `dsv3-probe dashboard` command, and that `import
dashboards` never imports torch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from helpers.apptest import REPO, app, texts
from probe.writer import writer_lock


def test_a_mistyped_runs_directory_is_said_not_replaced(tmp_path, monkeypatch):
    """`streamlit run dashboards/app.py -- DIR` with a DIR that is not a directory silently served
    ./runs instead (a review): the sidebar now names DIR and says what is wrong with it."""
    from streamlit.testing.v1 import AppTest

    from helpers.apptest import APP, share_component_scan

    monkeypatch.delenv("DSV3_RUNS_DIR", raising=False)
    (tmp_path / "a_file").write_text("x")
    for given, said in ((tmp_path / "typo", "not found."), (tmp_path / "a_file", "is a file, not a directory."),
                        (tmp_path, None)):  # the last: the control, a directory
        monkeypatch.setattr(sys, "argv", [APP, str(given)])
        share_component_scan()
        at = AppTest.from_file(APP, default_timeout=60).run()
        assert not at.exception
        from dashboards.ui import code_html

        assert f"Runs directory: {code_html(given)}" in texts(at.sidebar.caption)
        errors = texts(at.sidebar.error)
        assert (f"Runs directory `{given}`: {said}" in errors) if said else not errors


def test_the_apptests_of_a_process_share_one_component_scan(monkeypatch):
    """helpers.apptest.share_component_scan: Streamlit's scan of the installed packages for components
    runs once a process, not at each AppTest's first run, and every caller gets what it found."""
    from streamlit.components.v2 import manifest_scanner

    from helpers.apptest import share_component_scan

    scans = []
    monkeypatch.setattr(manifest_scanner, "scan_component_manifests", lambda max_workers=None: scans.append(1) or ["m"])
    share_component_scan()
    share_component_scan()  # a second AppTest
    assert manifest_scanner.scan_component_manifests() == manifest_scanner.scan_component_manifests(4) == ["m"]
    assert scans == [1]


@pytest.mark.slow  # a fresh process
def test_dashboards_never_import_torch(tmp_path):
    """Nor does the metrics library the pages stand on, a step window's loads included (`layer_loads_from_run(run,
    steps)`, what `python -m analyses.placement --steps` reads): it checks the steps with model.indices, and
    `import model` imported torch with everything until the package's names were imported on first use
    (2026-12-07)."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "run")
    code = ("import sys; import dashboards.data, dashboards.charts, dashboards.ui, dashboards.compute; "
            "import analyses.metrics; dashboards.compute.spearman([1, 2, 3], [1, 3, 2]); "  # the library's ranks
            f"assert analyses.metrics.layer_loads_from_run({str(tmp_path / 'run')!r}, steps=(0, 1)); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_runs_list_follows_the_folder_without_a_reload(tmp_path):
    """A run added, finished or deleted while the dashboard is open shows in the next session: the
    folder's signature was a parameter named `_sig`, which st.cache_data leaves out of its key, so
    the first list stayed until "Reload runs" (found in a browser walkthrough)."""
    import shutil

    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a", n_seq=2)
    assert [r.name for r in data.discover(tmp_path)] == ["a"]
    write_run(tmp_path / "b", n_seq=2)
    assert [r.name for r in data.discover(tmp_path)] == ["a", "b"]
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    (tmp_path / "b" / "run.json").write_text(json.dumps(info | {"status": "running", "x": 1}))
    with writer_lock(tmp_path / "b"):  # a record at work (without one, a killed run: interrupted)
        assert next(r for r in data.discover(tmp_path) if r.name == "b").status == "running"
    (tmp_path / "b" / "run.json").write_text(json.dumps(info | {"status": "complete"}))
    assert next(r for r in data.discover(tmp_path) if r.name == "b").status == "complete"
    shutil.rmtree(tmp_path / "a")
    assert [r.name for r in data.discover(tmp_path)] == ["b"]


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_a_killed_record_or_training_run_is_interrupted_not_running(tmp_path):
    """A record or a training run killed (SIGKILL) leaves run.json saying "running" and its writer lock
    free: the Overview, the runs list and the sidebar said "still running" for good, and
    `probe.open_run(...).status` "running" (a tour). Told apart by the lock, as refuse_running does:
    interrupted, with how to resume; a run whose lock a job holds is running."""
    import probe
    from helpers.dashboard_runs import write_train_run
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "rec", n_seq=2)
    write_train_run(tmp_path / "tr", steps=3)
    for name in ("rec", "tr"):
        info = json.loads((tmp_path / name / "run.json").read_text())
        (tmp_path / name / "run.json").write_text(json.dumps(info | {"status": "running"}))
    for name, resume in (("rec", "`dsv3-probe record ... --resume`"), ("tr", "`python -m train ... --resume`")):
        run = tmp_path / name
        at = app(tmp_path, name, page="overview")
        shown = texts(at.warning)
        assert f"`{name}` was **interrupted**" in shown and "its job was killed" in shown and resume in shown, shown
        assert "still **running**" not in texts(at.info)
        assert dict(zip(at.dataframe[0].value.run, at.dataframe[0].value.status))[name] == "interrupted"
        assert probe.open_run(run).status == "interrupted" and probe.open_run(run).info["status"] == "running"
        with writer_lock(run):  # the job at work
            at = app(tmp_path, name, page="overview")
            assert "still **running**" in texts(at.info) and "**interrupted**" not in texts(at.warning)
            assert dict(zip(at.dataframe[0].value.run, at.dataframe[0].value.status))[name] == "running"
            assert probe.open_run(run).status == "running"


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_queries_share_one_database_each_with_views_of_its_own_run(tmp_path):
    """Every query runs on a cursor of one database (dashboards.data._database) with temporary views:
    queries of two runs at once, from eight threads as Streamlit's sessions run, each read their own
    run's `tokens` and leave no view behind; a missing table still closes its cursor."""
    from concurrent.futures import ThreadPoolExecutor

    from dashboards import data
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "a", n_seq=3)
    write_run(tmp_path / "b", n_seq=5, seed=1)
    refs = [data.RunRef(n, str(tmp_path / n), "probe", "complete") for n in ("a", "b")]
    want = {ref.name: int(data.query(ref, "select count(*) as n from tokens", ("tokens",)).n[0]) for ref in refs}
    assert want["a"] * 5 == want["b"] * 3 > 0  # runs of 3 and 5 windows of one length

    def count(i: int) -> tuple[str, int]:
        ref = refs[i % 2]
        return ref.name, int(data.query(ref, "select count(*) as n from tokens", ("tokens",)).n[0])

    with ThreadPoolExecutor(8) as pool:
        assert all(n == want[name] for name, n in pool.map(count, range(64)))
    with pytest.raises(data.MissingTable):  # a run without the table
        data.query(data.RunRef("none", str(tmp_path / "none"), "probe", "complete"), "select 1", ("tokens",))
    assert data._database().sql("select count(*) from duckdb_views() where not internal").fetchall() == [(0,)]


def test_cli_dashboard_subcommand_parses(monkeypatch, tmp_path, capsys):
    """`dsv3-probe dashboard DIR --host --port` builds the streamlit command (not started here)."""
    from probe import __main__ as cli

    calls = []
    monkeypatch.setattr(cli, "_exec_streamlit", lambda cmd, env: calls.append((cmd, env)) or 0)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{}")
    assert cli.main(["dashboard", str(tmp_path), "--host", "0.0.0.0", "--port", "8765"]) == 0
    cmd, env = calls[0]
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0" and cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[-1] == str(tmp_path) and env["DSV3_RUNS_DIR"] == str(tmp_path)
    capsys.readouterr()
    # a run given in place of its folder: the folder is served, the run selected (it recorded the
    # default run inside the run, found by a review)
    assert cli.main(["dashboard", str(tmp_path / "r"), "--port", "8765"]) == 0
    cmd, env = calls.pop()
    assert cmd[-1] == str(tmp_path.resolve()) and not (tmp_path / "r" / "model-val").exists()
    assert "/?run=r " in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")  # a file is refused with one line, and no server starts
    assert cli.main(["dashboard", str(tmp_path / "afile"), "--no-record"]) == 2 and len(calls) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'afile'}: a file, not a directory of runs\n"
    # an address it cannot serve on is one line before anything is recorded, not streamlit's traceback
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["dashboard", str(tmp_path / "empty"), "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: --host 127.0.0.1 --port {port}: cannot serve there (Address already in use)\n"
    assert not (tmp_path / "empty").exists() and len(calls) == 1  # nothing recorded, no server
    assert cli.main(["dashboard", str(tmp_path), "--port", str(port)]) == 0 and len(calls) == 2  # control: freed
    with pytest.raises(SystemExit) as bad:
        cli.main(["dashboard", str(tmp_path), "--port", "99999"])
    assert bad.value.code == 2 and "'99999' is not a TCP port (1-65535)" in capsys.readouterr().err


def test_the_default_runs_directory_is_records_wherever_a_command_starts(monkeypatch, tmp_path):
    """From a folder other than the repository, record wrote the repository's runs/ while the
    dashboard served ./runs (and recorded the corpus again there; a review). Every default is
    probe.job.DEFAULT_RUNS: record's, the dashboard command's and app's, an import's, train's."""
    from probe import __main__ as cli
    from probe.job import DEFAULT_RUNS, REPO, resolve_paths
    from train.flags import build_parser

    from dashboards import ui

    assert DEFAULT_RUNS == REPO / "runs"
    monkeypatch.chdir(tmp_path)
    assert resolve_paths(None, None, None)[2].parent == DEFAULT_RUNS
    assert cli.parser().parse_args(["dashboard"]).runs_dir == str(DEFAULT_RUNS)
    monkeypatch.delenv("DSV3_RUNS_DIR", raising=False)
    monkeypatch.setattr(ui.sys, "argv", ["pytest"])
    assert ui.runs_dir() == DEFAULT_RUNS
    assert build_parser().parse_args([]).out == DEFAULT_RUNS / "train"
    assert not (tmp_path / "runs").exists()


def test_a_long_run_name_is_shown_whole_under_the_picker(tmp_path):
    """The sidebar's selectbox cuts a long label off ("sweep-top16-layer3-seed…"), so a run whose
    name and kind do not fit gets its whole label in a caption below it; a short one does not."""
    from helpers.synthetic_run import write_run

    long = "ablate-sweep-top16-random-control-seed4-layer3"
    write_run(tmp_path / long, n_seq=2)
    write_run(tmp_path / "a", n_seq=2)
    captions = [c.value for c in app(tmp_path, long).sidebar.caption]
    assert f"{long} · probe · done" in captions, captions
    captions = [c.value for c in app(tmp_path, "a").sidebar.caption]
    assert not any(c.startswith("a · ") for c in captions), captions


@pytest.mark.slow  # a dashboard session over several pages or runs (the quick loop leaves it out)
def test_the_runs_table_fits_the_page_and_fits_a_long_corpus_path_to_a_line(tmp_path):
    """The Overview's runs table was 1,100-1,381 px wide in the page's 938 px column at 1400 px, tokens,
    domains and started behind a scroll bar, and cut a long corpus path off (a tour); given widths, its
    930 px still scrolled sideways in the 562 px column at 1024 px (a tour): every column now has a width,
    together within 562 px less a vertical scroll bar's 15, the domains and start times in a second
    table under an expander, within its box likewise. A long path, shown from ~, wrapped over three lines broken
    mid-name (`code-math-pro` / `se-balanced`, a tour at 1024 px): it is fitted to one line of its column,
    its root and as many of its last names as fit kept, so its row keeps one line as short cells do."""
    from pathlib import Path

    from helpers.synthetic_run import write_run

    write_run(tmp_path / "short", n_seq=2)
    at = app(tmp_path, "short")
    table, more = at.dataframe[0].proto, at.dataframe[1].proto
    assert at.expander[0].label == "Domains and start times" and at.dataframe[1].value.run.tolist() == ["short"]
    # the expander's box is 530 px at 1024 px (528 inside its border), measured in Chromium
    for shown, columns, room in ((table, {"run", "kind", "status", "model", "corpus", "tokens"}, 562),
                                 (more, {"run", "domains", "started"}, 528)):
        w = {c: v.get("width") for c, v in json.loads(shown.columns).items() if c != "_index"}
        assert set(w) == columns and all(isinstance(x, int) for x in w.values()) and sum(w.values()) <= room - 15, w
    widths = {c: v.get("width") for c, v in json.loads(table.columns).items() if c != "_index"}
    assert not table.HasField("row_height") and not more.HasField("row_height")
    path = Path.home() / "datasets/deepseek-v3-probe/corpora/code-math-prose-balanced-2026-11/shards"
    write_run(tmp_path / "long", n_seq=2)
    info = json.loads((tmp_path / "long" / "run.json").read_text())
    (tmp_path / "long" / "run.json").write_text(json.dumps(info | {"corpus": {"path": str(path)}}))
    shown = app(tmp_path, "long").dataframe[0]
    cell = dict(zip(shown.value.run, shown.value.corpus))["long"]
    from dashboards.ui import CELL_PAD_PX, cell_lines, text_px

    assert cell == "~/…/shards"  # code-math-prose-balanced-2026-11/shards: 262 px
    assert text_px(cell) <= widths["corpus"] - CELL_PAD_PX and cell_lines(cell, widths["corpus"]) == 1
    assert not shown.proto.HasField("row_height")


def test_a_run_name_longer_than_its_column_breaks_after_a_hyphen():
    """In the 104 px run column (the runs table within the 1024 px window) `demo-finetuned` was broken
    where the line ended, `demo-finetun` over `ed` (a tour): a name breaks after the `-`, `_` or `.`
    that ends as much of it as fits a line, and its lines are counted as the table draws them."""
    from dashboards.ui import break_name, cell_lines
    from dashboards.views.overview import RUN_COLUMNS

    width = RUN_COLUMNS["run"]
    assert break_name("demo-finetuned", width) == "demo-\nfinetuned"
    assert break_name("model-val-no-router-bias", width) == "model-val-no-\nrouter-bias"
    assert break_name("model-val", width) == "model-val" and break_name("x" * 30, width) == "x" * 30
    assert cell_lines("demo-\nfinetuned", width) == 2 and cell_lines("a\nb c", 400) == 2


def test_a_cell_that_fits_its_line_takes_one():
    """The wrap estimate, 52 characters a 400 px line, gave a 54-character cell that fits on one line
    a two-line row (a tour); lines break at spaces, and a word longer than a line where it ends."""
    from dashboards.ui import cell_lines

    assert cell_lines("x" * 54, 400) == 1
    assert cell_lines("chinese, code, literature, math, technical", 150) == 3  # as a browser drew it
    assert cell_lines("4 layers, dim 192, 32 experts (top-4)", 140) == 2  # the bundled model, as drawn (7 px: 3)
    assert cell_lines("a " + "x" * 60, 400) == 3  # the word starts a line of its own and runs past it
    assert cell_lines("", 90) == 1


def test_a_cells_lines_are_measured_as_the_paths_that_fit_it_are():
    """One estimate of text width: `cell_lines` (a flat 7 px a character) and `text_px` (each glyph's
    width, which `fit_path` fits the paths with) disagreed, so a path fitted to a line was counted as
    two, and a word of wide capitals that the browser wraps as one line."""
    import math

    from dashboards.ui import CELL_PAD_PX, cell_lines, text_px
    from dashboards.views.overview import fit_path

    for word in ("i" * 26, "W" * 10, "m" * 17, "data/corpus/val.jsonl", "MMLU-WMT-MGSM-HUMANEVAL-2026.jsonl"):
        for width in (90, 100, 140, 200):
            assert cell_lines(word, width) == math.ceil(text_px(word) / (width - CELL_PAD_PX)), (word, width)
    path = "/data/a/long/folder/for/the/corpora/of/this/run/val.jsonl"
    assert cell_lines(fit_path(path, 200 - CELL_PAD_PX, text_px), 200) == 1


def test_a_long_path_fits_its_cell_with_its_ends_kept():
    """A path longer than the Recording options' value column was cut at its end, its file's name lost
    (a tour): the folders in its middle give way to …, and a name too long alone loses its own middle."""
    from pathlib import Path

    from dashboards.views.overview import fit_path

    corpus = "/mnt/storage/corpora/the-pile/2026-11/domains/val.jsonl"
    assert fit_path(corpus, 34) == "/mnt/…/2026-11/domains/val.jsonl"
    assert fit_path(corpus, 16) == "/mnt/…/val.jsonl" and fit_path(corpus, 12) == "…/val.jsonl"
    assert fit_path(corpus, len(corpus)) == corpus and fit_path("/mnt/x.jsonl", 34) == "/mnt/x.jsonl"
    assert fit_path("runs/a/b/c/d/e/f/g/h/i/corpus.jsonl", 24) == "runs/…/h/i/corpus.jsonl"
    assert fit_path(Path.home() / "a" / "b" / ("x" * 20) / "val.jsonl", 34) == f"~/…/{'x' * 20}/val.jsonl"
    name = "deepseek-v3-671b-fp8-e4m3-block128-instruct-2026-11"
    assert fit_path(f"/ckpt/{name}", 34) == "deepseek-v3-671b…-instruct-2026-11"  # 16, …, 17
    assert fit_path(f"/{name}", 9) == "deep…6-11" and fit_path("", 9) == ""
    for n in range(3, 60):
        assert len(fit_path(corpus, n)) <= n and len(fit_path(f"/ckpt/{name}", n)) <= n


def test_a_path_fits_the_options_column_by_its_characters_widths(tmp_path):
    """The options' value column was taken to hold 34 characters of 7 px (a tour, at 1400 px in Chromium):
    MMLU-WMT-MGSM-HU…ANEVAL-2026.jsonl, 34 characters, is 255 px in the tables' font (Source Sans, 14 px)
    and ran past the column's 239 px, cut at its end, while a lowercase path left a part of it empty.
    Measured by each character's width (`text_px`), a path fills the column and no more."""
    from dashboards.views.overview import CELL_PAD_PX, OPTION_COLUMNS, fit_path, text_px
    from helpers.synthetic_run import write_run

    room = 239  # the value column's room then
    upper = "/data/MMMU/WMT/MMLU-WMT-MGSM-HUMANEVAL-2026.jsonl"
    lower = "/tmp/a/long/folder/for/the/corpus/of/this/val.jsonl"
    assert text_px("MMLU-WMT-MGSM-HU…ANEVAL-2026.jsonl") > room  # what the flat estimate showed
    assert fit_path(upper, room, text_px) == "MMLU-WMT-MGSM-H…EVAL-2026.jsonl"
    assert fit_path(lower, room, text_px) == "/tmp/…/the/corpus/of/this/val.jsonl"  # 34 gave /tmp/…/corpus/...
    assert text_px("iiii") < text_px("mmmm") and text_px("中") == 14.0  # one not measured: a whole em
    for path in (upper, lower, "/x/" + "M" * 40, "/" + "a" * 80, "~/" + "/".join(["ab"] * 40)):
        assert text_px(fit_path(path, room, text_px)) <= room, path
    write_run(tmp_path / "r", n_seq=2)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {"corpus": upper}}))
    options = next(d.value for d in app(tmp_path, "r", page="overview").dataframe if "option" in d.value)
    shown = dict(zip(options.option, options.value))["corpus"]
    assert shown == fit_path(upper, OPTION_COLUMNS["value"] - CELL_PAD_PX, text_px) == "MMLU-WMT-…026.jsonl"


def test_the_recording_options_show_paths_readably(tmp_path):
    """The narrow "Recording options" table cut long checkpoint and corpus paths off (a tour): they show
    from ~ in as many characters as the value column holds (`fit_path`), and whole in a caption below it;
    the other options as they were. The table fits the page's right half at 1024 px."""
    from pathlib import Path

    from helpers.synthetic_run import write_run

    ckpt = Path.home() / "checkpoints/deepseek-v3-671b-fp8-e4m3-block128-instruct-2026-11"
    write_run(tmp_path / "r", n_seq=2)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info |= {"checkpoint": {"path": str(ckpt)}, "options": {"ckpt": None, "corpus": None, "seq_len": 256}}
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    at = app(tmp_path, "r", page="overview")
    options = next(d.value for d in at.dataframe if "option" in d.value)
    shown = dict(zip(options.option, options.value))
    assert shown == {"ckpt": "deepseek-v…ct-2026-11", "corpus": "default", "seq_len": "256"}
    from dashboards.ui import code_html

    assert f"ckpt: {code_html(ckpt)}" in texts(at.caption)
    table = next(d.proto for d in at.dataframe if "option" in d.value)
    widths = {c: v["width"] for c, v in json.loads(table.columns).items() if c != "_index"}
    # within the page's right half at 1024 px, the sidebar open (274 px): at 360 px in its right 2/5 (218 px)
    # the table scrolled sideways, its values cut off (a tour)
    assert widths["value"] > widths["option"] and sum(widths.values()) <= 274


def test_the_overview_says_which_domains_the_cap_cut(tmp_path):
    """The tokens per domain drew a domain the run's --max-tokens cut and one the corpus holds no more of
    alike: run.json's planned capped_domains (new) tells them apart in a caption under the bars; a run
    recorded before the key, or without a cap, says nothing of it, and one of --order corpus what that
    order leaves unknown."""
    from dashboards.views.overview import cap_cut
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=2)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    per = {"chinese": 900, "code": 900, "math": 29}
    info |= {"status": "complete", "options": {"max_tokens": 1829, "seq_len": 256},
             "planned": {"tokens": 1829, "tokens_per_domain": per, "capped_domains": ["chinese", "code"]}}
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    said = "`--max-tokens 1,829` cut chinese and code (the corpus holds more); math is recorded whole."
    assert said in texts(app(tmp_path, "r", page="overview").caption)
    assert cap_cut(info | {"planned": {"tokens_per_domain": per, "capped_domains": list(per)}}) == \
        "`--max-tokens 1,829` cut every domain: the corpus holds more of each."
    assert cap_cut(info | {"planned": {"tokens_per_domain": per, "capped_domains": []}}) == \
        "`--max-tokens 1,829` cut no domain: each bar is all the corpus holds of it."
    # a run of one domain: 'cut every domain: the corpus holds more of each' under its one bar (a browser tour)
    one = {"code": 1829}
    assert cap_cut(info | {"planned": {"tokens_per_domain": one, "capped_domains": ["code"]}}) == \
        "`--max-tokens 1,829` cut the run's one domain, code: the corpus holds more of it."
    assert cap_cut(info | {"planned": {"tokens_per_domain": one, "capped_domains": []}}) == \
        "`--max-tokens 1,829` cut nothing: the bar is all the corpus holds of code."
    many = {f"d{n}": 10 for n in range(7)}
    assert cap_cut(info | {"planned": {"tokens_per_domain": many, "capped_domains": ["d0"]}}) == \
        "`--max-tokens 1,829` cut d0 (the corpus holds more); d1, d2, d3, d4 and 2 more are recorded whole."
    assert cap_cut(info | {"planned": {"tokens_per_domain": per}}) is None  # recorded before the key
    assert cap_cut(info | {"options": {"max_tokens": None}}) is None
    # --order corpus notes no capped_domains: a run that stopped at its cap says what the order leaves
    # unknown (one bar of a five-domain corpus, unexplained, before), one that did not says it is whole
    corpus = info | {"options": {"max_tokens": 300, "order": "corpus"}}
    assert cap_cut(corpus | {"planned": {"tokens": 300, "tokens_per_domain": {"chinese": 300}}}) == (
        "`--max-tokens 300` with `--order corpus`: the corpus's first 300 tokens in its own order, so it may hold "
        "more of the domain being read where the cap stopped, and domains never reached; the default "
        "`--order domains` takes a window of each domain in turn.")
    assert cap_cut(corpus | {"planned": {"tokens": 120, "tokens_per_domain": {"a": 100, "b": 20}}}) == \
        "`--max-tokens 300` cut no domain: the run holds the whole corpus."
    assert cap_cut(corpus | {"options": {"max_tokens": None, "order": "corpus"}}) is None
    info["planned"].pop("capped_domains")
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert not any("cut" in c for c in texts(app(tmp_path, "r", page="overview").caption))


@pytest.mark.parametrize("kind", ["ablations", "steering"])
def test_the_runs_table_gives_an_analysis_only_run_the_tokens_it_scored(tmp_path, kind):
    """An `analyses.ablate|steer --out` run had a blank tokens column while its summary below showed the
    tokens scored (its `all` rows: steering's generation rows count tokens generated, not scored)."""
    import pyarrow.parquet as pq

    from helpers.dashboard_runs import write_ablations, write_steering

    run = tmp_path / "only"
    run.mkdir()
    {"ablations": write_ablations, "steering": write_steering}[kind](run)
    (run / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": kind, "tables": [kind]}))
    df = pq.read_table(run / kind).to_pandas()
    scored = int(df[(df.domain == "all") & (df.get("kind", "loss") == "loss")].tokens.max())
    at = app(tmp_path, "only")
    assert at.dataframe[0].value.tokens.tolist() == [scored]
    assert any(m.label == "Tokens scored" and m.value == f"{scored:,}" for m in at.metric)


def test_a_long_name_in_the_text_may_break_only_after_its_separators():
    """A path in a caption broke wherever the line ended (`val.jso` / `nl`, a tour at 1024 px): `code_html`
    keeps each folder (or a module's each part) whole, a break allowed after its `/` (or `.`) only, its
    characters escaped."""
    import re

    from dashboards.ui import code_html

    html = code_html("/tmp/my-runs/val.jsonl")
    assert html.startswith('<code class="dsv3-name"><span>') and html.count("<wbr>") == 3
    parts = [re.sub(r"&#(\d+);", lambda m: chr(int(m[1])), p) for p in re.findall(r"<span>(.*?)</span>", html)]
    assert parts == ["/", "tmp/", "my-runs/", "val.jsonl"]  # the hyphen is no break: its part is one span
    assert code_html("analyses.metrics.paths", ".").count("<wbr>") == 2 and "<b>" not in code_html("a/<b>")


def test_analysis_commands_quote_a_run_path_with_a_space(tmp_path):
    """The command a page offers is pasted into a shell: a run path with a space was two arguments there
    (`--run /data/my` and `runs/r`), and the job refused the first (a review)."""
    import shlex

    from dashboards import data, ui

    path = tmp_path / "my runs" / "r"
    cmd = ui.analysis_command(data.RunRef("r", str(path), "probe", "complete"), "ablate", "--top 4 --control")
    assert shlex.split(cmd) == ["python", "-m", "analyses.ablate", "--run", str(path), "--top", "4", "--control"]


def test_a_long_command_is_given_in_lines_that_a_shell_reads_as_the_same_command(tmp_path):
    """The Serving page's placement command ran past its box at 1400 px on one line (`--out plan.jso`, the
    README's screenshot). Longer than the width, a command is broken before its options, each line but the
    last ending in ' \\': bash must read the same words from the lines as from the one line."""
    import shlex

    from dashboards import ui

    def words(text: str) -> list[str] | None:  # what bash passes a command written so (None: bash failed)
        done = subprocess.run(["bash", "-c", "printf '%s\\0' " + text.split(" ", 3)[3]], capture_output=True,
                              text=True)
        return text.split(" ", 3)[:3] + done.stdout.split("\0")[:-1] if done.returncode == 0 else None

    spaced = shlex.quote(str(tmp_path / "my runs" / "a run"))
    commands = [
        "python -m analyses.placement runs/model-val --gpus 8 --redundant 0 --steps 0-93 --format sglang --out plan.json",
        f"python -m analyses.ablate --run {spaced} --ckpt CKPT --corpus CORPUS --top 4 --control",
        f"python -m analyses.steer --run {spaced}{'/deeper' * 12} --experts L:E",  # a part over the width
        "python -m analyses.importance --run runs/r",  # short: as it was
    ]
    for cmd in commands:
        lines = ui.command_lines(cmd)
        assert words(lines) == words(cmd) == shlex.split(cmd), (cmd, lines)
        rows = lines.split("\n")
        assert (len(rows) > 1) == (len(cmd) > ui.COMMAND_WIDTH), lines
        assert all(r.endswith(" \\") for r in rows[:-1]) and all(r.startswith("    --") for r in rows[1:])
        # every line within the width but one whose single option is longer by itself
        assert all(len(r) <= ui.COMMAND_WIDTH or r.count(" --") <= 1 for r in rows), lines
        assert ui.command_block(cmd) == f"\n\n```bash\n{lines}\n```\n\n"
    # the placement command of the README's screenshot, in three lines
    assert ui.command_lines(commands[0]).split("\n") == [
        "python -m analyses.placement runs/model-val --gpus 8 \\", "    --redundant 0 --steps 0-93 --format sglang \\",
        "    --out plan.json"]
    # control: the same lines without their backslashes are three commands to bash (the second, `--redundant
    # ...`, not found), not one
    broken = ui.command_lines(commands[0]).replace(" \\\n", "\n")
    assert broken.count("\n") == 2 and words(broken) is None


def test_commands_give_a_run_under_the_working_folder_relative_and_quoted(tmp_path, monkeypatch):
    """A run beside the dashboard is offered as the user types it (runs/r, not the whole path, which ran
    the Serving page's command past its box), and the Serving page quotes it too (it did not: a review)."""
    import shlex

    from dashboards import data, ui

    monkeypatch.chdir(tmp_path)
    assert ui.path_arg(tmp_path / "runs" / "r") == "runs/r"
    assert shlex.split(ui.path_arg(tmp_path / "my runs" / "r")) == ["my runs/r"]
    outside = tmp_path.parent / "elsewhere" / "r"
    assert ui.path_arg(outside) == str(outside) and ui.path_arg("runs/r") == "runs/r"
    assert ui.path_arg(tmp_path) == str(tmp_path)  # the folder itself stays whole, not ''
    # a folder named -runs: relative, it read as an option ('expected one argument'), which the whole path did not
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--run")
    cmd = ui.analysis_command(data.RunRef("r", str(tmp_path / "-runs" / "r"), "probe", "complete"), "ablate")
    assert parser.parse_args(shlex.split(cmd)[3:]).run == "./-runs/r"
