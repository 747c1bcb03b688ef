"""A run metric given a complete run that has lost a table it reads (its folder, or the committed part
files of one rank: `probe.run.lost_tables`) raises the RunError `probe.Run` raises, one line naming the
run, the table and the missing parts. It was DuckDB's error wrapping that line, a lost folder read as a
table 'not recorded', and run vs run read the other rank's tokens alone without a word (a tour)."""

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
