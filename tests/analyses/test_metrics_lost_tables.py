"""A run metric given a complete run that has lost a table it reads (its folder, or the committed part
files of one rank: `probe.run.lost_tables`) raises the RunError `probe.Run` raises, one line naming the
run, the table and the missing parts. It was DuckDB's error wrapping that line, a lost folder read as a
table 'not recorded', and run vs run read the other rank's tokens alone without a word (a tour). A table
never recorded is said as run.json says why (the last three tests, from test_run_metrics.py)."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

import probe
from analyses import metrics as M
from probe.writer import RunError

from helpers.synthetic_run import as_two_replicas, write_run

WRITTEN = ["tokens", "routing", "expert_load"]
GONE = "r002-b0000001-0000001.parquet"  # the second replica's batch

# (the table each metric reads first or alone, the call)
READS = {
    "layer_loads_from_run": ("expert_load", lambda r, o: M.layer_loads_from_run(r)),
    "batch_loads_from_run": ("expert_load", lambda r, o: M.batch_loads_from_run(r, 1)),
    "maxvio_batch_from_run": ("expert_load", lambda r, o: M.maxvio_batch_from_run(r)),
    "balance_table": ("expert_load", lambda r, o: M.balance_table(r)),
    "contingency_from_run": ("expert_load", lambda r, o: M.contingency_from_run(r)),
    "specialisation_table": ("expert_load", lambda r, o: M.specialisation_table(r)),
    "switch_inputs_from_run": ("routing", lambda r, o: M.switch_inputs_from_run(r)),
    "routes_from_run": ("routing", lambda r, o: M.routes_from_run(r)),
    "routes_from_run tokens": ("tokens", lambda r, o: M.routes_from_run(r)),
    "token_dependence_from_run": ("tokens", lambda r, o: M.token_dependence_from_run(r)),
    "domain_probe_from_run": ("tokens", lambda r, o: M.domain_probe_from_run(r)),
    "repetition_from_run": ("routing", lambda r, o: M.repetition_from_run(r)),
    "coactivation_from_run": ("routing", lambda r, o: M.coactivation_from_run(r, 1)),
    "layer_agreement_from_run": ("routing", lambda r, o: M.layer_agreement_from_run(r)),
    "margins_from_run": ("routing", lambda r, o: M.margins_from_run(r)),
    "score_entropy_from_run": ("routing", lambda r, o: M.score_entropy_from_run(r)),
    "vocabulary_specialisation_from_run": ("tokens", lambda r, o: M.vocabulary_specialisation_from_run(r)),
    "expert_vocabulary_from_run": ("routing", lambda r, o: M.expert_vocabulary_from_run(r, 1)),
    "routing_agreement_from_runs": ("routing", lambda r, o: M.routing_agreement_from_runs(o, r)),
    "routing_agreement_from_runs tokens": ("tokens", lambda r, o: M.routing_agreement_from_runs(r, o)),
    "route_changes_from_runs": ("routing", lambda r, o: M.route_changes_from_runs(o, r, layers=[1])),
    "check_comparable tokens": ("tokens", lambda r, o: M.check_comparable(o, r)),
}


def complete_run(path):
    write_run(path)
    info = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": WRITTEN}))
    return path


@pytest.fixture
def runs(tmp_path):
    """(a complete run of two replicas, the same run whole)."""
    run = complete_run(tmp_path / "run")
    as_two_replicas(run, WRITTEN)
    return run, complete_run(tmp_path / "other")


@pytest.mark.slow  # 0.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
@pytest.mark.parametrize("name", list(READS))
def test_a_metric_of_a_run_that_lost_a_ranks_parts_names_the_run_the_table_and_the_parts(runs, name):
    run, other = runs
    table, call = READS[name]
    call(probe.open_run(run), other)  # whole, it reads
    (run / table / GONE).unlink()
    with pytest.raises(RunError) as e:
        call(probe.open_run(run), other)
    assert str(e.value).startswith(f"{run / table}: committed part files missing ({GONE}): deleted, or left on "
                                   "another node?"), str(e.value)
    assert "\n" not in str(e.value) and "Error:" not in str(e.value)  # not DuckDB's wrapping it


@pytest.mark.parametrize("name", ["layer_loads_from_run", "routes_from_run", "routes_from_run tokens"])
def test_a_metric_of_a_run_that_lost_a_tables_folder_says_so_not_that_it_was_not_recorded(runs, name):
    run, other = runs
    table, call = READS[name]
    shutil.rmtree(run / table)
    with pytest.raises(RunError, match=f"^{re.escape(str(run / table))}: listed in run.json but has no part files"):
        call(str(run), other)


def test_balance_table_of_a_run_that_lost_routing_is_its_loads_with_switch_nan(runs):
    """balance_table reads routing for its Switch column alone: a complete run that lost routing (a rank's
    parts, or the folder) raised the RunError for the whole table, which the report's balance section
    reads of every run (it stopped there, after noting it would leave out the sections of routing)."""
    run, _ = runs
    whole = M.balance_table(probe.open_run(run))
    assert whole.switch.notna().all()  # the synthetic run keeps full scores on some rows
    (run / "routing" / GONE).unlink()
    part = M.balance_table(probe.open_run(run))
    assert part.switch.isna().all()
    pd.testing.assert_frame_equal(part.drop(columns="switch"), whole.drop(columns="switch"))
    shutil.rmtree(run / "routing")
    assert M.balance_table(str(run)).switch.isna().all()


def test_a_table_not_recorded_names_the_flag_that_leaves_it_out(tmp_path):
    """A notebook on a run recorded with --no-kv-stats said "empty run, or not recorded" without the
    flag (a review)."""
    import shutil

    import probe
    from analyses.metrics import MetricsError
    from analyses.metrics._common import need_rows
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "routing")
    run = probe.open_run(tmp_path / "r")
    for table, flag in (("routing", "--router-logits none"), ("kv_stats", "--no-kv-stats"), ("mtp", "--no-mtp")):
        with pytest.raises(MetricsError, match=rf"run has no {table} table \(empty run, or not recorded: "
                                               rf"recorded with {flag}"):
            need_rows(run, table)
    with pytest.raises(MetricsError, match=r"run has no spec_decode table \(empty run, or not recorded\)$"):
        need_rows(run, "spec_decode")
    need_rows(run, "tokens")  # the control: a table that is there


def test_a_table_not_recorded_is_said_as_run_json_says_not_guessed(tmp_path):
    """need_rows guessed 'recorded with --router-logits none?' for a run without routing rows where
    run.json said why (a tour): it now reads the cause from run.json, as the report does, and guesses
    only where run.json holds no record options."""
    import json
    import shutil

    import probe
    from analyses.metrics import MetricsError
    from analyses.metrics._common import need_rows
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "routing")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    said = ("the run was recorded with --router-logits none, which keeps no per-token routing; record it again "
            "with --router-logits topk (the default)")
    for options, why in (({"router_logits": "none"}, said),
                         ({"router_logits": "topk"}, "empty run, or not recorded")):  # not a flag it was not given
        (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": options}))
        with pytest.raises(MetricsError) as e:
            need_rows(probe.open_run(tmp_path / "r"), "routing")
        assert str(e.value) == f"{tmp_path / 'r'}: run has no routing table ({why})"


def test_latent_tables_of_a_record_not_yet_complete_are_said_to_wait_for_its_end(tmp_path):
    """The record writes kv_stats and kv_spectrum only when the run completes: an interrupted run's
    notebook and report said "empty run, or not recorded" / "the kv_stats table was not recorded",
    though it was recorded with kv stats and --resume writes them (a tour). A killed record (run.json
    still "running", no job holding the run) counts as interrupted; one at work is still running."""
    import json
    import shutil

    import probe
    from analyses.metrics import MetricsError
    from analyses.metrics._common import need_rows, unrecorded_why
    from helpers.synthetic_run import write_run
    from probe.writer import writer_lock

    out = tmp_path / "r"
    write_run(out)
    for t in ("kv_stats", "kv_spectrum"):
        shutil.rmtree(out / t, ignore_errors=True)
    info = json.loads((out / "run.json").read_text()) | {"options": {"kv_stats": True}}
    wait = "the record writes {t} only when the run completes: continue it with `dsv3-probe record ... --resume`"
    for status in ("interrupted", "running"):  # run.json "running" without a writer: a killed record
        (out / "run.json").write_text(json.dumps(info | {"status": status}))
        run = probe.open_run(out)
        for t in ("kv_stats", "kv_spectrum"):
            assert unrecorded_why(run, t) == "the run was interrupted, and " + wait.format(t=t)
        with pytest.raises(MetricsError) as e:
            need_rows(run, "kv_stats")
        said = f"the run was interrupted, and {wait.format(t='kv_stats')}"
        assert str(e.value) == f"{out}: run has no kv_stats table ({said})"
    with writer_lock(out):  # a record at work
        assert unrecorded_why(probe.open_run(out), "kv_stats") == ("the record is still running, and writes kv_stats "
                                                                  "when it completes")
    # the controls: a complete run that never had them, and an interrupted one recorded with --no-kv-stats
    (out / "run.json").write_text(json.dumps(info | {"status": "complete"}))
    assert unrecorded_why(probe.open_run(out), "kv_stats") == "the kv_stats table was not recorded"
    (out / "run.json").write_text(json.dumps(info | {"status": "interrupted", "options": {"kv_stats": False}}))
    assert unrecorded_why(probe.open_run(out), "kv_stats") == "the run was recorded with --no-kv-stats"
