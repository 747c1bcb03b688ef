"""The dashboard on runs a torchrun record wrote: the layout the overview says, and a run that lost
one rank's part files (tests/helpers/synthetic_run.py's runs, under AppTest)."""

from __future__ import annotations

import json

from helpers.apptest import app, texts


def test_a_run_missing_one_ranks_parts_is_warned_about_not_shown_smaller(tmp_path):
    """A sharded record's second replica's parts deleted (or left on its node's own disk): every page
    drew the first replica's rows as the run, and the overview said run.json's token count over them,
    without a word (a tour). The overview now names the missing part, and a page reading the table
    warns instead of drawing it; the other tables still draw."""
    from helpers.synthetic_run import as_two_replicas, write_run

    run = tmp_path / "runs" / "sharded"
    write_run(run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": ["tokens", "routing",
                                                                                        "expert_load"]}))
    as_two_replicas(run, ["tokens", "routing", "expert_load"])
    (run / "expert_load" / "r002-b0000001-0000001.parquet").unlink()
    at = app(tmp_path / "runs", "sharded", page="overview")
    assert ("Tables missing part files the run committed: expert_load (committed part files missing "
            "(r002-b0000001-0000001.parquet): deleted, or left on another node?") in texts(at.warning), texts(at.warning)
    assert "Every table is readable" not in texts(at.success)  # it said so under the warning
    at = app(tmp_path / "runs", "sharded", page="load_balance")
    assert "run 'sharded': cannot read `expert_load` (committed part files missing" in texts(at.warning)
    at = app(tmp_path / "runs", "sharded", page="token_explorer")  # tokens and routing: whole
    assert "cannot read" not in texts(at.warning) and not at.exception


def test_the_overview_says_how_a_torchrun_record_held_the_model(tmp_path):
    """The options table showed `--model-parallel auto` and nothing of the ranks it meant (a tour):
    the overview now says the layout run.json's world records; a one-process run says nothing."""
    from helpers.synthetic_run import write_run

    per_rank = [{"rank": r, "peak_rss": int(p * 1e9)} for r, p in enumerate((0.41, 0.38, 0.40, 0.37))]
    for name, world in (("sharded", {"size": 4, "model_parallel": 4, "replicas": 1, "backend": "gloo",
                                      "devices": ["a:cpu", "a:cpu", "b:cpu", "b:cpu"]}), ("one", None)):
        run = tmp_path / "runs" / name
        write_run(run)
        info = json.loads((run / "run.json").read_text())
        extra = {"world": world, "memory": {"per_rank": per_rank}, "options": {"model_parallel": "auto"}} if world else {}
        (run / "run.json").write_text(json.dumps(info | {"status": "complete"} | extra))
    at = app(tmp_path / "runs", "sharded", page="overview")
    assert ("Recorded on 4 ranks (gloo, 2 hosts): 1 replica, each a model sharded over 4 ranks. Peak memory per "
            "rank 0.37-0.41 GB.") in texts(at.caption), texts(at.caption)
    at = app(tmp_path / "runs", "one", page="overview")
    assert "Recorded on" not in texts(at.caption) and not at.exception


def test_the_overview_says_every_table_is_readable_only_of_a_run_that_lost_none(tmp_path):
    """A complete run whose run.json lists a table it has no files of: the overview warned of it, then said
    'Every table is readable.' below the warning; the control, the run whole, says it."""
    from helpers.synthetic_run import write_run

    run = tmp_path / "runs" / "lost"
    write_run(run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": ["tokens", "routing",
                                                                                        "expert_load"]}))
    at = app(tmp_path / "runs", "lost", page="overview")
    assert "Every table is readable" in texts(at.success) and not at.exception
    for f in (run / "tokens").glob("*.parquet"):
        f.unlink()
    (run / "tokens").rmdir()
    at = app(tmp_path / "runs", "lost", page="overview")
    assert "run.json lists tables with no files: tokens" in texts(at.warning), texts(at.warning)
    assert "Every table is readable" not in texts(at.success)
