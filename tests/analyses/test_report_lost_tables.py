"""What `python -m analyses.report` says of a complete run that lost a table it lists, or one rank's parts of
one: warned about, its sections left out, never called unrecorded, empty or smaller (split from
test_report.py)."""

from __future__ import annotations

import json

import pytest

from analyses.report import __main__ as report
from helpers.cli_errors import assert_one_line_error


def _complete_run_without(tmp_path, table: str | None):
    """A synthetic run marked complete, listing tokens, routing and expert_load, with `table`'s folder deleted
    (None: none)."""
    import shutil

    from helpers.synthetic_run import write_run

    run = tmp_path / "run"
    write_run(run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "complete",
                                                     "tables": ["tokens", "routing", "expert_load"]}))
    if table:
        shutil.rmtree(run / table)
    return run


def test_a_complete_run_that_lost_a_listed_table_is_warned_about_not_called_unrecorded(tmp_path, capsys):
    """A complete run whose tokens folder was deleted: its sections were "(not in this run: ... not
    recorded)", with no word of the loss (a review); the report warns first and says so in their place."""
    run = _complete_run_without(tmp_path, "tokens")
    rc = report.main([str(run), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and f"note: {run}: run.json lists tokens but the run has no part files of it (deleted?)" in err
    doc = (tmp_path / "r.html").read_text()
    assert "(not in this run: run.json lists tokens but the run has no part files of it (deleted?))" in doc
    assert "was not recorded" not in doc


def test_a_complete_run_that_lost_routing_is_reported_without_its_sections(tmp_path, capsys):
    """A complete run whose routing folder was deleted: the report noted that the sections reading it are
    left out, then stopped with the loss as its error, in the balance section, whose Switch column alone
    reads routing (no report at all). It reports, the sections of routing said lost, Switch NaN."""
    run = _complete_run_without(tmp_path, "routing")
    rc = report.main([str(run), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0 and f"note: {run}: run.json lists routing but the run has no part files of it (deleted?)" in err
    assert "error:" not in err, err
    doc = (tmp_path / "r.html").read_text()
    assert "(not in this run: run.json lists routing but the run has no part files of it (deleted?))" in doc
    assert "MaxVio_global per layer L1 " in out


def test_a_complete_run_that_lost_expert_load_is_not_called_empty(tmp_path, capsys):
    """expert_load deleted from a complete run: the report refused it as 'empty run: no expert_load
    rows (status 'complete'); record it first', a run that holds all its other tables."""
    run = _complete_run_without(tmp_path, "expert_load")
    err = assert_one_line_error(report.main([str(run), "--skip-ablation", "--no-progress"]), capsys, "")
    assert err == (f"error: {run}: run.json lists expert_load but the run has no part files of it (deleted?): "
                   "every section reads it; record the run again")


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_complete_run_missing_one_ranks_parts_is_warned_about_not_read_as_smaller(tmp_path, capsys):
    """A sharded record's second replica's parts deleted (or left on its node's own disk): the report
    read the first replica's tokens alone as the run, without a word (a tour); it now names the
    missing part and leaves out the sections that read the table, as for a lost one."""
    from helpers.synthetic_run import as_two_replicas

    run = _complete_run_without(tmp_path, None)
    as_two_replicas(run, ["tokens", "routing", "expert_load"])
    (run / "tokens" / "r002-b0000001-0000001.parquet").unlink()
    rc = report.main([str(run), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and (f"note: {run}: run.json lists tokens but the run has lost part files of it (tokens: "
                        "r002-b0000001-0000001.parquet; deleted, or left on another node?)") in err, err
    assert ("(not in this run: run.json lists tokens but the run has lost part files of it (tokens: "  # one wording
            "r002-b0000001-0000001.parquet; deleted") in (tmp_path / "r.html").read_text()
    for f in run.glob("*/r002-*.parquet"):  # every table rank 2 wrote: expert_load too, which every section reads
        f.unlink()
    err = assert_one_line_error(report.main([str(run), "--skip-ablation", "--no-progress"]), capsys, "")
    assert err.startswith(f"error: {run}: run.json lists expert_load but the run has lost part files of it "
                          "(expert_load: r002-b0000001-0000001.parquet; deleted, or left on another node?): "), err
