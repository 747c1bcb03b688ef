"""A run's DuckDB views (`Run.con`, `Run.sql`, `Run.rel`) are a cursor of the process's one database
with a catalog of its own: a database per opened run cost 15 ms of CPU, most of opening a run and
querying it, some 7 s of the quick test loop. What one run's connection holds stays its own, a table
it has no part of reads empty in its schema's columns, and a view is made again when its parts change
however the query reaches it."""

from __future__ import annotations

import gc
import re
import shutil

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

import probe
from probe import run as run_module
from probe.schema import TABLES

from helpers.synthetic_run import write_run

COUNT = "select count(*) from tokens"


@pytest.fixture
def path(tmp_path):
    write_run(tmp_path / "run")
    return tmp_path / "run"


def test_opening_and_querying_runs_opens_one_database(path, monkeypatch):
    probe.open_run(path).sql(COUNT).fetchall()  # the process's database is open by now
    opened = []
    real = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    counts = [probe.open_run(path).sql(COUNT).fetchall()[0][0] for _ in range(5)]
    assert counts == [len(probe.open_run(path).df("tokens"))] * 5 and counts[0] > 0
    assert opened == []


def test_the_runs_database_gives_back_what_a_query_freed(path):
    # DuckDB's default kept a large query's freed memory (1.2 GB of a 2.15M-token run's routes read) for good
    setting = "current_setting('allocator_bulk_deallocation_flush_threshold')"
    assert probe.open_run(path).sql(f"select {setting}").fetchall() == [("0 bytes",)]
    assert duckdb.connect().sql(f"select {setting}").fetchall() != [("0 bytes",)]  # not DuckDB's default


def test_what_a_runs_connection_holds_is_no_other_runs(path):
    a, b = probe.open_run(path), probe.open_run(path)
    full = b.sql(COUNT).fetchall()[0][0]
    a.con.execute("create or replace view tokens as select * from read_parquet("
                  f"'{sorted((path / 'tokens').glob('*.parquet'))[0]}')")  # as the dashboard samples a run
    a.con.execute("create table mine as select 1 as x")
    assert 0 < a.sql(COUNT).fetchall()[0][0] < full  # its own view is kept while the parts stay
    assert b.sql(COUNT).fetchall()[0][0] == full == probe.open_run(path).sql(COUNT).fetchall()[0][0]
    assert a.sql("select x from mine").fetchall() == [(1,)]
    with pytest.raises(probe.RunError, match="Table with name mine does not exist"):
        b.sql("select x from mine")


def test_a_table_without_parts_reads_empty_in_its_schemas_columns(path):
    run = probe.open_run(path)
    absent = [t for t in TABLES if t not in run.tables]
    assert len(absent) > 10
    want = duckdb.connect()
    for t in absent:
        want.register(t, TABLES[t].empty_table())  # DuckDB's reading of the schema's own empty table
        assert run.sql(f"select * from {t}").fetchall() == []
        assert run.con.sql(f"describe {t}").fetchall() == want.sql(f"describe {t}").fetchall(), t
        assert run.rel(t).columns == TABLES[t].names
    with pytest.raises(duckdb.Error):  # a view, as the registered table was: not written into
        run.con.execute("insert into mtp (pos) values (1)")
    assert probe.open_run(path).sql("select count(*) from mtp").fetchall() == [(0,)]


def test_a_callers_insert_reaches_no_other_runs_table_without_parts(path):
    """A table without parts reads a query of no rows, not a table of the database every run's
    connection shares: an insert into that one (`memory._empty.mtp`) was every run's mtp after."""
    a, b = probe.open_run(path), probe.open_run(path)
    assert a.sql("select count(*) from mtp").fetchall() == [(0,)]
    shared = "select schema_name, table_name from duckdb_tables() where database_name = 'memory'"
    assert a.con.execute(shared).fetchall() == []  # no table there to write rows into
    with pytest.raises(probe.RunError, match="_empty"):
        a.sql("insert into memory._empty.mtp (pos) values (1)")
    with pytest.raises(duckdb.Error):
        a.con.execute("insert into mtp (pos) values (1)")  # its own view, as before
    for run in (a, b, probe.open_run(path)):
        assert run.sql("select count(*) from mtp").fetchall() == [(0,)]


def test_a_view_read_through_the_callers_own_view_follows_its_parts(path, tmp_path):
    """`sql` makes only the views its query names: one made before is still made again when its parts
    change, a view of the caller's may read it."""
    held = sorted((path / "tokens").glob("*.parquet"))[-1]
    held = shutil.move(held, tmp_path / held.name)
    run = probe.open_run(path)
    first = run.sql(COUNT).fetchall()[0][0]
    run.con.execute("create view mine as select * from tokens")
    shutil.move(held, path / "tokens")
    assert run.sql("select count(*) from mine").fetchall()[0][0] == len(run.df("tokens")) > first


def test_an_unreadable_part_is_duckdbs_error_naming_it_and_the_other_tables_read(path):
    bad = sorted((path / "routing").glob("*.parquet"))[0]
    bad.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    run = probe.open_run(path)
    for read in (lambda: run.sql("select count(*) from routing").fetchall(), lambda: run.rel("routing").fetchall(),
                 lambda: run.con.sql("select count(*) from routing").fetchall()):
        with pytest.raises(duckdb.Error, match=str(path / "routing")):
            read()
    assert run.sql(COUNT).fetchall()[0][0] == len(run.df("tokens")) > 0


@pytest.mark.slow  # 1.1 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_relation_outlives_its_run_and_the_runs_catalog_goes_with_the_last_of_them(path):
    def catalogs():
        gc.collect()
        return run_module._database().sql("select count(*) from duckdb_databases()").fetchall()[0][0]

    before = catalogs()
    rel = probe.open_run(path).sql(COUNT)  # the Run itself is gone at once
    assert catalogs() == before + 1
    assert rel.fetchall()[0][0] > 0
    del rel
    assert catalogs() == before


def test_a_restricted_table_keeps_its_condition_when_its_parts_change(path):
    """`Run.restrict` holds for good: a view of the caller's own on `con` was replaced by the whole table's
    when a running record committed a part (the dashboard's sample of a run's first windows; a tour)."""
    run = probe.open_run(path).restrict(["tokens"], "seq_id < 2")
    first = run.sql("select count(*), max(seq_id) from tokens").fetchall()
    assert first[0][0] > 0 and first[0][1] == 1
    shutil.copy(sorted((path / "tokens").glob("*.parquet"))[-1], path / "tokens" / "r000-b0000009-0000009.parquet")
    assert run.sql("select count(*), max(seq_id) from tokens").fetchall() == first
    assert run.rel("tokens").aggregate("count(*)").fetchall()[0][0] == first[0][0] == len(run.df("tokens"))
    assert run.arrow("tokens", ["seq_id"]).schema == pa.schema([TABLES["tokens"].field("seq_id")])
    assert probe.open_run(path).sql(COUNT).fetchall()[0][0] > first[0][0]  # another run reads them all
    with pytest.raises(probe.RunError, match=r"tokens: cannot hold only the rows where 'no_such > 1'"):
        run.restrict(["tokens"], "no_such > 1")
    assert run.sql("select count(*), max(seq_id) from tokens").fetchall() == first  # the condition before it holds


def test_a_refused_condition_leaves_a_table_without_parts_readable(path):
    """A table the run has no part of is a view over the shared empty table: a condition it cannot take
    failed as that view was made again, after the old one was dropped, and the table was then gone from
    the run ('Table with name mtp does not exist') where the condition before it should have held."""
    run = probe.open_run(path).restrict(["mtp"], "seq_id < 2")
    assert run.files("mtp") == [] and run.sql("select count(*) from mtp").fetchall() == [(0,)]
    with pytest.raises(probe.RunError, match=r"mtp: cannot hold only the rows where 'no_such > 1'"):
        run.restrict(["mtp"], "no_such > 1")
    assert run.sql("select count(*) from mtp").fetchall() == [(0,)] and len(run.df("mtp")) == 0
    assert run.rel("mtp").aggregate("count(*)").fetchall() == [(0,)]


def test_a_refused_condition_leaves_a_table_without_parts_to_a_view_of_the_callers(path):
    """Every table viewed before keeps a current view, which a view the caller made on `con` may read: a
    condition refused for a table without parts dropped its view, which was made again only for a query
    naming the table, and the caller's view read 'Table with name mtp does not exist'."""
    run = probe.open_run(path).restrict(["mtp"], "seq_id < 2")
    run.con.execute("create view mine as select count(*) as n from mtp")
    assert run.sql("select n from mine").fetchall() == [(0,)]
    with pytest.raises(probe.RunError, match=r"mtp: cannot hold only the rows where 'no_such > 1'"):
        run.restrict(["mtp"], "no_such > 1")
    assert run.sql("select n from mine").fetchall() == [(0,)]
    assert run.con.execute("select n from mine").fetchall() == [(0,)]


@pytest.mark.parametrize("column, values", [("token_id", [[1]]), ("doc_pos", [{"a": 1}]), ("pos", [1.5])])
def test_a_part_whose_column_has_another_type_is_a_run_error_naming_the_table(path, column, values):
    """A part file whose column cannot be cast to the schema's type (a foreign or hand-made file):
    lists or structs where the schema has integers made `Run.arrow` and `Run.df` raise pyarrow's
    ArrowNotImplementedError ("Unsupported cast from list<...>"), a traceback through every command
    that reads the table; it is a RunError naming the table, as an unreadable part is, in one line."""
    import pyarrow.parquet as pq

    from probe.writer import RunError

    part = sorted((path / "tokens").glob("*.parquet"))[0]
    t = pq.read_table(part)
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, pa.array(values * len(t))), part)
    run = probe.open_run(path)
    for read in (lambda: run.df("tokens"), lambda: run.arrow("tokens", columns=[column])):
        with pytest.raises(RunError, match=f"{path / 'tokens'}: unreadable part file \\(") as e:
            read()
        assert "\n" not in str(e.value)
    assert len(run.df("routing")) > 0  # the other tables read


def test_a_stray_part_reads_in_the_views_as_run_df_reads_it(path):
    """Every reader takes the same part files (`probe.run.table_files`: a final name, whoever wrote it), but
    the views read them by DuckDB's union of their columns: a stray part (a foreign or hand-made file) with
    another column added it to the table and widened token_id to BIGINT, and one whose token_id held strings,
    which `Run.df` refuses, read token_id as VARCHAR (a review). The views now read each part as `Run.df`
    does: the schema's columns in its types, a column the part lacks null, a value that cannot be cast an
    error naming the column."""
    import pyarrow.parquet as pq

    def stray(t):
        pq.write_table(t, path / "tokens" / "r000-b0000009-0000009.parquet")

    t = pq.read_table(sorted((path / "tokens").glob("*.parquet"))[0])
    before = probe.open_run(path).sql("describe tokens").fetchall()
    token_id = t.schema.get_field_index("token_id")
    stray(t.set_column(token_id, "token_id", t["token_id"].cast(pa.int64())).drop_columns(["loss"])
          .append_column("note", pa.array(["copied"] * len(t))))
    run = probe.open_run(path)
    assert run.sql("describe tokens").fetchall() == before
    got = run.sql("select * from tokens").to_arrow_table()
    got = got.read_all() if hasattr(got, "read_all") else got  # duckdb 2 gives a batch reader, 1.x a table
    keys = [("seq_id", "ascending"), ("pos", "ascending"), ("doc_id", "ascending"), ("loss", "ascending")]
    assert got.cast(TABLES["tokens"]).sort_by(keys).equals(run.arrow("tokens").sort_by(keys))
    assert run.sql("select count(*) from tokens where loss is null").fetchall() == [(len(t),)]
    stray(t.set_column(token_id, "token_id", pa.array(["x"] * len(t))))
    run = probe.open_run(path)
    with pytest.raises(probe.RunError, match=f"{path / 'tokens'}: unreadable part file"):
        run.df("tokens")
    with pytest.raises(duckdb.ConversionException, match="token_id"):
        run.sql("select * from tokens").fetchall()
    assert len(run.df("routing")) == run.sql("select count(*) from routing").fetchall()[0][0] > 0


def test_a_fraction_in_an_integer_column_is_an_error_in_the_views_as_in_run_df(path):
    """A stray part whose counts are floats (a hand-made file, a pandas frame widened by a NaN) is read
    by `Run.df` only where each value is whole; the views cast it to the schema's integer type, and
    DuckDB's cast rounds where Arrow's refuses: counts of 2.5 and 0.5 read as 2 and 0, a layer's load
    short by one without a word (the dashboard's totals and every SQL metric), and an expert id of 1.5
    as expert 2. Now a fraction is an error naming the table, the column and the value; a whole float
    reads as the integer it is, in the views and in `Run.df` alike."""
    import pyarrow.parquet as pq

    def stray(table, t):
        pq.write_table(t, path / table / "r000-b0000009-0000009.parquet")

    el = pq.read_table(sorted((path / "expert_load").glob("*.parquet"))[0]).slice(0, 2)
    count = el.schema.get_field_index("count")
    stray("expert_load", el.set_column(count, "count", pa.array([2.0, 3.0])))
    run = probe.open_run(path)
    whole = run.sql("select sum(count) from expert_load").fetchall()[0][0]
    assert whole == int(run.df("expert_load")["count"].sum())
    stray("expert_load", el.set_column(count, "count", pa.array([2.5, 0.5])))
    run = probe.open_run(path)
    with pytest.raises(probe.RunError, match="unreadable part file"):
        run.df("expert_load")
    said = f"{path / 'expert_load'}: column \"count\" holds 2.5, not a whole number (the schema's BIGINT)"
    with pytest.raises(duckdb.Error, match=re.escape(said)):
        run.sql("select sum(count) from expert_load").fetchall()
    assert run.sql("select count(*) from tokens").fetchall()[0][0] > 0  # the other tables read
    from dashboards import data  # the dashboard's views are these (`create_views`): its totals are one line

    ref = data.RunRef("r", str(path), "probe", "complete")
    with pytest.raises(data.DataError, match=re.escape("column \"count\" holds 2.5, not a whole number")):
        data.query(ref, "select sum(count) as n from expert_load", ("expert_load",))
    (path / "expert_load" / "r000-b0000009-0000009.parquet").unlink()

    rt = pq.read_table(sorted((path / "routing").glob("*.parquet"))[0]).slice(0, 1)
    ids = rt.schema.get_field_index("expert_ids")
    stray("routing", rt.set_column(ids, "expert_ids", pa.array([[1.5, 3.0]], pa.list_(pa.float64()))))
    run = probe.open_run(path)
    with pytest.raises(probe.RunError, match="unreadable part file"):
        run.df("routing")
    with pytest.raises(duckdb.Error, match="column \"expert_ids\" holds \\[1.5, 3.0\\], not a whole number"):
        run.sql("select expert_ids from routing").fetchall()
    stray("routing", rt.set_column(ids, "expert_ids", pa.array([[1.0, 3.0]], pa.list_(pa.float64()))))
    run = probe.open_run(path)
    by_sql = sorted(list(r[0]) for r in run.sql("select expert_ids from routing").fetchall())
    assert by_sql == sorted(list(x) for x in run.df("routing").expert_ids) and [1, 3] in by_sql


def test_columns_is_a_name_or_names_in_a_list_or_a_tuple(path):
    """`df`/`arrow`'s `columns`: a str was read letter by letter ("no column 'l', 'o', 's', 's'"), a tuple was
    pyarrow's "Expected a list or a dict for 'columns'"; a restricted table reads them alike."""
    run = probe.open_run(path)
    whole = run.df("tokens", columns=["domain", "loss"])
    assert list(whole.columns) == ["domain", "loss"] and len(whole) > 0
    assert run.df("tokens", columns=("domain", "loss")).equals(whole)
    assert run.df("tokens", columns="loss").equals(whole[["loss"]])
    assert run.arrow("tokens", columns="loss").schema.names == ["loss"]
    assert run.df("spec_decode", columns=("domain",)).shape == (0, 1)  # a table without parts
    run.restrict(["tokens"], "pos > 0")
    assert list(run.df("tokens", columns="loss").columns) == ["loss"]
    assert run.df("tokens", columns=("loss",)).shape[1] == 1
    for bad in (5, ["loss", 5], b"loss"):
        with pytest.raises(probe.RunError, match=r"tokens: columns=.*: expected a column's name or a list of names$"):
            run.df("tokens", columns=bad)


def test_sql_joins_a_dataframe_of_the_callers_by_its_name(path):
    """DuckDB looks a name no table has up in the variables of the frame that calls it: Run.sql's own, so
    `run.sql` refused a DataFrame of the caller's ("Table with name labels does not exist") that `run.con.sql`
    joined. Every frame outward is searched now; a name that is nowhere is still one line."""
    run = probe.open_run(path)
    domains = sorted(run.df("tokens").domain.unique())
    # read by name by the queries (DuckDB's replacement scan), hence the noqa
    labels = pd.DataFrame({"domain": domains, "label": [d.upper() for d in domains]})  # noqa: F841
    query = "select label, count(*) n from tokens join labels using (domain) group by all order by all"
    got = run.sql(query).df()
    assert list(got.label) == [d.upper() for d in domains] and got.n.sum() == len(run.df("tokens"))
    assert got.equals(run.con.sql(query).df())
    arrow = pa.table({"domain": domains[:1]})  # noqa: F841
    assert run.sql("select count(*) from tokens join arrow using (domain)").fetchall()[0][0] > 0

    with pytest.raises(probe.RunError, match=r"Table with name nosuch does not exist!.*a run's tables are"):
        run.sql("select * from nosuch")


def test_sql_reads_the_callers_own_variables_and_no_others(path):
    """Run.sql's own variables (`query`, `named`) hid a caller's DataFrame of the same name, and with every frame
    searched (python_scan_all_frames) a helper's query of a name it has not read a DataFrame of its caller's
    caller; as duckdb.sql, the calling function's variables alone are read, and one that is no DataFrame is one
    line, not DuckDB's two naming a line of the code."""
    run = probe.open_run(path)
    query = pd.DataFrame({"x": [1, 2, 3]})  # noqa: F841 (read by name by the queries)
    named = pa.table({"x": [1, 2]})  # noqa: F841
    assert run.sql("select count(*) from query").fetchall() == [(3,)]
    assert run.sql("select count(*) from named").fetchall() == [(2,)]
    labels = pd.DataFrame({"x": [1]})  # noqa: F841

    def helper():  # a helper that forgot its own `labels`: its caller's is not read in its place
        return run.sql("select count(*) from labels")
    with pytest.raises(probe.RunError, match=r"Table with name labels does not exist!.*a run's tables are"):
        helper()
    assert duckdb_default_reads_alike()

    def shadowing():
        labels = "not a table"  # noqa: F841
        return run.sql("select * from labels")
    with pytest.raises(probe.RunError, match=r"^\S+: 'labels' is a str of the caller's, not a DataFrame or Arrow "
                                             r"table \(a name that is no table of the run's \[.*\] is read from"):
        shadowing()
    assert "\n" not in str(pytest.raises(probe.RunError, shadowing).value)


def duckdb_default_reads_alike() -> bool:
    """duckdb.sql, in a function with no `labels` of its own, does not read its caller's."""
    try:
        duckdb.sql("select count(*) from labels")
    except duckdb.CatalogException:
        return True
    return False
