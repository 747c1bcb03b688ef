"""A table that a complete run's run.json lists but that has lost its part files (its folder deleted,
or its parts while the record's progress names them) is a RunError naming the run and the table,
through `Run.arrow`/`df`, `Run.rel` and the DuckDB views of `Run.sql`; it read as an empty table
(a review). A folder without parts is a table that got no rows, and a run that is not complete may
not have written a table yet: both still read as empty."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

import probe
from probe.writer import PROGRESS, RunError

from helpers.synthetic_run import as_two_replicas, write_run

WRITTEN = ["tokens", "routing", "expert_load"]


@pytest.fixture
def run(tmp_path):
    """A complete synthetic run listing tokens, routing, expert_load and an mtp table that got no rows."""
    out = tmp_path / "run"
    write_run(out)
    (out / "mtp").mkdir()
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": WRITTEN + ["mtp"]}))
    return out


def read_every_way(r: probe.Run, table: str):
    yield lambda: r.df(table)
    yield lambda: r.rel(table).df()
    yield lambda: r.sql(f"select count(*) from {table}").fetchall()


@pytest.mark.parametrize("lose", ["folder", "parts"])
def test_a_complete_run_that_lost_a_listed_table_says_so_however_it_is_read(run, lose):
    r = probe.open_run(run)
    assert r.lost_tables == [] and len(r.df("tokens")) > 0
    if lose == "folder":
        shutil.rmtree(run / "tokens")
    else:  # the parts, where the record's progress names them committed
        for f in (run / "tokens").glob("*.parquet"):
            f.unlink()
        (run / PROGRESS).mkdir()
        (run / PROGRESS / "r000.json").write_text(json.dumps({"done": 1, "parts": {"tokens": {"r000-b0000000-0000000"
                                                                                              ".parquet": 3}}}))
    assert r.lost_tables == ["tokens"] and "tokens" not in r.tables
    for read in read_every_way(r, "tokens"):
        with pytest.raises(Exception) as e:  # RunError; DuckDB's error through the view, its message ours
            read()
        msg = str(e.value)
        assert f"{run / 'tokens'}: listed in run.json but has no part files: deleted?" in msg, msg
    assert isinstance(pytest.raises(RunError, r.df, "tokens").value, RunError)
    assert len(r.df("routing")) > 0 and r.sql("select count(*) from routing").fetchall()[0][0] > 0  # the others read


def test_a_table_without_rows_or_a_run_not_complete_reads_as_empty(run):
    r = probe.open_run(run)
    assert r.lost_tables == [] and len(r.df("mtp")) == 0 and r.sql("select count(*) from mtp").fetchall() == [(0,)]
    shutil.rmtree(run / "tokens")
    info = json.loads((run / "run.json").read_text())
    for status in ("running", "interrupted"):  # a listed table not written yet
        (run / "run.json").write_text(json.dumps(info | {"status": status}))
        assert r.lost_tables == [] and len(r.df("tokens")) == 0
        assert r.sql("select count(*) from tokens").fetchall() == [(0,)]
    (run / "run.json").write_text(json.dumps(info | {"tables": ["routing", "expert_load"]}))  # not listed
    assert r.status == "complete" and r.lost_tables == [] and len(r.df("tokens")) == 0
    (run / "run.json").write_text(json.dumps(info))  # complete again: the same Run sees the change
    with pytest.raises(RunError, match="tokens: listed in run.json"):
        r.df("tokens")
    with pytest.raises(Exception, match="tokens: listed in run.json"):
        r.sql("select * from tokens").fetchall()


def test_an_empty_path_is_refused_by_name_not_read_as_the_current_folder(run, monkeypatch):
    """Path('') is '.': probe.open_run("") (an unset variable in a notebook) opened whatever run the current
    folder held, and elsewhere said '.: not a run directory'."""
    monkeypatch.chdir(run)
    for empty in ("", " "):
        with pytest.raises(RunError, match=f"^path={empty!r}: an empty path \\(for the current folder, give \\.\\)$"):
            probe.open_run(empty)
    assert probe.open_run(".").status == "complete"


def test_a_path_of_another_type_is_refused_by_name():
    """probe.open_run(5) was Path's own TypeError ('expected str, bytes or os.PathLike object, not int')."""
    with pytest.raises(RunError, match=r"^path=5: expected a path \(str or os.PathLike\), not int$"):
        probe.open_run(5)


@pytest.mark.parametrize("lose", ["a part", "a rank"])
def test_a_complete_run_missing_one_ranks_output_says_so_however_it_is_read(run, lose):
    """A sharded record's second replica writes its own parts (rank 2's, on a node of its own): with
    them deleted, or left on a node whose disk is not the shared one, the run read as half the tokens
    without a word (the dashboard's overview still said run.json's count; a tour). Now the table is
    lost, naming what is missing, and the report and dashboard leave it out as they do a lost table."""
    as_two_replicas(run, WRITTEN)
    r = probe.open_run(run)
    whole = len(r.df("tokens"))
    assert r.lost_tables == [] and whole > len(pq.read_table(run / "tokens" / "r002-b0000001-0000001.parquet")) > 0
    if lose == "a part":  # the part a writer's progress names
        (run / "tokens" / "r002-b0000001-0000001.parquet").unlink()
        lost, why = ["tokens"], "committed part files missing (r002-b0000001-0000001.parquet): deleted, or left on "
    else:  # all rank 2 wrote, its progress file too
        for f in [*run.glob("*/r002-*.parquet"), *(run / PROGRESS).glob("r002*")]:
            f.unlink()
        lost, why = WRITTEN, "committed part files missing (all of rank 2's, and its _progress/r002.json): deleted"
    assert r.lost_tables == lost and "tokens" not in r.tables and r.files("tokens")
    for read in read_every_way(r, "tokens"):
        with pytest.raises(Exception) as e:
            read()
        assert f"{run / 'tokens'}: {why}" in str(e.value), str(e.value)
    if lose == "a part":
        assert len(r.df("routing")) > 0  # the others read


def test_a_writer_without_batches_or_a_lost_progress_file_alone_loses_nothing(run):
    """The controls: a replica that got no batch writes no part (its progress file gone is no loss),
    and parts whose progress file alone is gone are all there."""
    as_two_replicas(run, WRITTEN, batches=1)
    for f in run.glob("*/r002-*.parquet"):
        f.unlink()
    (run / PROGRESS / "r002.json").unlink()
    assert probe.open_run(run).lost_tables == []
    shutil.rmtree(run)
    write_run(run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": WRITTEN}))
    as_two_replicas(run, WRITTEN)
    (run / PROGRESS / "r002.json").unlink()
    r = probe.open_run(run)
    assert r.lost_tables == [] and r.tables == WRITTEN and len(r.df("tokens")) == 6 * 7


def test_an_open_run_sees_an_empty_tables_folder_or_a_progress_file_go_without_a_part_changing(run):
    """A Run remakes its views only where a table's part names or run.json's status and tables changed (a
    warm query reads no progress file): an empty table's folder deleted, or a rank's progress file gone
    where that rank wrote none of a table, left no part name changed, and `sql` still read the lost table
    as empty, or as the other rank's rows alone, while `df` of the same Run refused it (a review)."""
    r = probe.open_run(run)
    assert r.sql("select count(*) from mtp").fetchall() == [(0,)]
    shutil.rmtree(run / "mtp")
    with pytest.raises(Exception, match="mtp: listed in run.json but has no part files"):
        r.sql("select count(*) from mtp").fetchall()
    (run / "mtp").mkdir()  # and back: found again
    assert r.sql("select count(*) from mtp").fetchall() == [(0,)]
    as_two_replicas(run, WRITTEN)
    (run / "tokens" / "r002-b0000001-0000001.parquet").unlink()  # rank 2 wrote no tokens, and its progress says so
    named = json.loads((run / PROGRESS / "r002.json").read_text())
    named["parts"]["tokens"] = {}
    (run / PROGRESS / "r002.json").write_text(json.dumps(named))
    assert r.sql("select count(*) from tokens").fetchall()[0][0] == len(r.df("tokens")) > 0
    (run / PROGRESS / "r002.json").unlink()
    assert r.lost_tables == ["tokens"]
    with pytest.raises(Exception, match="all of rank 2's, and its _progress/r002.json"):
        r.sql("select count(*) from tokens").fetchall()


def test_a_refused_condition_leaves_the_next_query_seeing_a_table_lost_meanwhile(run):
    """The views are checked against run.json's status and tables as they were when last made: a condition
    refused for a table without parts stopped the making halfway, and the tables after it in TABLES were
    taken as current from then on, so a table lost meanwhile (the run marked complete without it) read as
    empty through `sql` while `df` of the same Run refused it."""
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"status": "running", "tables": WRITTEN + ["mtp", "kv_stats"]}))
    r = probe.open_run(run)
    assert r.sql("select count(*) from kv_stats").fetchall() == [(0,)]  # not written yet: a running run
    (run / "run.json").write_text(json.dumps(info | {"status": "complete", "tables": WRITTEN + ["mtp", "kv_stats"]}))
    with pytest.raises(RunError, match=r"mtp: cannot hold only the rows where 'no_such > 1'"):
        r.restrict(["mtp"], "no_such > 1")  # mtp, before kv_stats in TABLES, has no parts
    assert r.lost_tables == ["kv_stats"]
    with pytest.raises(Exception, match="kv_stats: listed in run.json but has no part files"):
        r.sql("select count(*) from kv_stats").fetchall()
    assert r.sql("select count(*) from mtp").fetchall() == [(0,)]


def test_a_complete_record_run_without_its_progress_that_lost_a_part_says_so(run):
    """With `_progress/` gone (the run copied without its underscore folders, or it deleted), a complete
    record run that also lost one part read as a smaller run without a word (1,072 of 1,200 tokens; a
    review): the tokens rows its parts' footers hold are run.json's `recorded` count, or the table is lost."""
    info = json.loads((run / "run.json").read_text())
    parts = sorted((run / "tokens").glob("*.parquet"))
    whole = sum(pq.read_metadata(f).num_rows for f in parts)
    (run / "run.json").write_text(json.dumps(info | {"recorded": {"tokens": whole}}))
    assert not (run / PROGRESS).exists() and len(parts) == 2
    r = probe.open_run(run)
    assert r.lost_tables == [] and len(r.df("tokens")) == whole  # the control: every part there
    gone = pq.read_metadata(parts[1]).num_rows  # the last one: no gap in the names
    parts[1].unlink()
    assert r.lost_tables == ["tokens"] and "tokens" not in r.tables and "routing" in r.tables
    why = (f"committed part files missing (rows of {gone:,} of the {whole:,} tokens run.json records; with "
           "_progress/ gone, which parts cannot be said): deleted, or left on another node?")
    for read in read_every_way(r, "tokens"):
        with pytest.raises(Exception) as e:
            read()
        assert f"{run / 'tokens'}: {why}" in str(e.value), str(e.value)
    (run / "run.json").write_text(json.dumps(info))  # a run that records no count (an import): nothing to check
    assert r.lost_tables == [] and len(r.df("tokens")) == whole - gone


RECORDED_WITH = {"default": {}, "--router-logits full --sample 0.5": {"router_logits": "full", "sample": 0.5},
                 "--router-logits topk": {"router_logits": "topk"}, "--router-logits none": {"router_logits": "none"},
                 "--no-kv-stats": {"kv_stats": False}, "--no-mtp": {"mtp": False}}


@pytest.fixture(scope="module")
def recorded(probe_env, tmp_path_factory):
    """Record runs of 300 tokens in 10 windows, two batches committed apart (a part each), one for each of
    `RECORDED_WITH`'s flags."""
    from probe.record import RecordOptions, record

    base = tmp_path_factory.mktemp("recorded")
    for name, flags in RECORDED_WITH.items():
        record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(base / name),
                             seq_len=32, max_tokens=300, commit_every=1, progress=False, **flags))
    return base


@pytest.mark.parametrize("flags", RECORDED_WITH)
def test_a_record_run_without_its_progress_that_lost_a_routing_mtp_or_kv_part_says_so(recorded, flags, tmp_path):
    """Without `_progress/`, only the tokens rows were checked against run.json's `recorded` count: a lost routing
    or mtp part (or the kv_stats part) read as a smaller run without a word (a review). Their rows are what the
    count makes (a token's per MoE layer; each token's but a window's last; a layer's), whatever the flags."""
    run = shutil.copytree(recorded / flags, tmp_path / "run")
    shutil.rmtree(run / PROGRESS)
    r = probe.open_run(run)
    assert r.lost_tables == []  # no false alarm: every row there, whatever the run was recorded with
    checked = [t for t in ("routing", "mtp", "kv_stats") if t in r.info["tables"]]
    assert checked == [t for t, off in (("routing", "--router-logits none"), ("mtp", "--no-mtp"),
                                        ("kv_stats", "--no-kv-stats")) if off != flags]
    for table in checked:
        parts = sorted((run / table).glob("*.parquet"))
        gone = pq.read_metadata(parts[-1]).num_rows
        parts[-1].rename(tmp_path / "away.parquet")
        assert r.lost_tables == [table], table
        with pytest.raises(Exception) as e:
            r.df(table)
        said = (f"committed part files missing (rows of {gone:,} of the " if len(parts) > 1 else  # kv_stats: one part
                "listed in run.json but has no part files")  # read as a table that got no rows before
        assert f"{run / table}: {said}" in str(e.value) and (len(parts) > 1) == (table != "kv_stats"), str(e.value)
        (tmp_path / "away.parquet").rename(parts[-1])
    assert r.lost_tables == []
    if "routing" in checked:
        assert r.sql("select count(*) from routing").fetchall() == [(300 * 2,)]  # 2 MoE layers


@pytest.mark.parametrize("parts", [{"tokens": 5}, {"tokens": [5]}, {"tokens": "ab"}, ["tokens"]])
def test_a_progress_file_whose_parts_are_damaged_is_no_traceback_nor_lost_letters(run, parts):
    """A progress file whose `parts` is not {table: {part file: rows}} (hand-edited, damaged) was a
    TypeError traceback from every read of the run (`lost_tables` on a complete run), or named its
    letters as lost parts ("committed part files missing (a, b)"): nothing is known from it, as from
    an unreadable one; the tables read (a table gone is still lost)."""
    (run / PROGRESS).mkdir()
    (run / PROGRESS / "r000.json").write_text(json.dumps({"done": 1, "parts": parts}))
    r = probe.open_run(run)
    assert r.lost_tables == [] and r.tables == WRITTEN and "status='complete'" in repr(r)
    assert len(r.df("tokens")) == r.sql("select count(*) from tokens").fetchall()[0][0] > 0
    shutil.rmtree(run / "routing")
    assert r.lost_tables == ["routing"]


@pytest.mark.parametrize("edit, says", [
    ({"tables": [{"name": "tokens"}, "routing"]}, "field 'tables' holds a JSON object, not only strings"),
    ({"tables": ["tokens", ["routing"]]}, "field 'tables' holds a JSON array, not only strings"),
    ({"domains": ["code", None]}, "field 'domains' holds a JSON null, not only strings"),
    ({"world": {"size": "2", "model_parallel": 1}}, "field 'world.size' is a JSON string, not an integer"),
    ({"world": {"size": 2, "model_parallel": 1.0}}, "field 'world.model_parallel' is a JSON number, not an integer"),
    ({"planned": {"batches": "4"}}, "field 'planned.batches' is a JSON string, not an integer"),
])
def test_a_run_json_whose_names_or_counts_have_another_type_is_one_line(run, edit, says):
    """Names in run.json's `tables` (or `domains`) that are not strings, and a `world` or `planned` count
    that is not an integer (hand-edited, damaged), opened: every read then stopped in `lost_tables` with
    a TypeError ("unhashable type: 'dict'", "unsupported operand type(s) for //") where the run has
    `_progress/`. They are refused at open, naming run.json and the field, as a field of another type is."""
    (run / PROGRESS).mkdir()
    (run / PROGRESS / "r000.json").write_text(json.dumps({"done": 1, "parts": {"tokens": {}}}))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | edit))
    with pytest.raises(RunError, match=re.escape(f"{run / 'run.json'}: {says} (a damaged or hand-edited run.json)")):
        probe.open_run(run)
    good = {"tables": WRITTEN, "domains": ["code"], "world": {"size": 1, "model_parallel": 1}, "planned": {"batches": 4}}
    (run / "run.json").write_text(json.dumps(info | {k: good[k] for k in edit}))  # the control: the right types read
    assert probe.open_run(run).tables == WRITTEN


@pytest.mark.parametrize("kind, again", [(None, "record it again"), ("import", "make it again with `dsv3-probe import`"),
                                         ("train", "make it again with `python -m train`")])
def test_a_lost_table_is_made_again_by_the_command_that_made_the_run(run, kind, again):
    """An SGLang import (or a training run) that lost a table was told to 'record it again' (a bug hunt)."""
    from probe.run import lost_message

    info = json.loads((run / "run.json").read_text()) | ({"kind": kind} if kind else {})
    (run / "run.json").write_text(json.dumps(info))
    shutil.rmtree(run / "tokens")
    assert lost_message(run, "tokens").endswith(f"(the run is complete; {again})")
    with pytest.raises(RunError, match=re.escape(f"(the run is complete; {again})")):
        probe.open_run(run).df("tokens")
