"""Reading a run back: `probe.open_run(path)`.

    run = probe.open_run("runs/x")
    run.info["status"]                      # run.json as a dict
    df = run.df("routing", columns=["layer", "expert_ids"])    # pandas
    rel = run.rel("expert_load")            # a DuckDB relation (lazy, nothing loaded yet)
    run.sql("select layer, sum(count) from expert_load group by layer").df()

Only committed part files are read (temporary files of a running or killed job are ignored).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import first_line, given_path
from .schema import TABLES
from .writer import PROGRESS, RunError, progress_parts, read_run_json, run_status


def table_files(path: str | Path, table: str) -> list[Path]:
    """The committed part files of `table` in run directory `path` (temporaries never match)."""
    d = Path(path) / table
    return sorted(d.glob("*.parquet")) if d.is_dir() else []


def lost_tables(path: str | Path, info: dict) -> list[str]:
    """Tables a complete run's run.json lists that have lost part files the run wrote: the table's
    folder is gone, the record job's progress (`_progress/`) names parts committed to it that are gone,
    or a writer's progress file is gone with every part it wrote (a rank's output that another node kept,
    or deleted), or, without `_progress/`, its parts hold fewer rows than run.json's `recorded` count
    makes (`recorded_rows`: tokens, routing, mtp, kv_stats). A folder without parts is a table that got
    no rows (mtp, from windows too short for its target); a running or interrupted run may not have
    written a table yet. Such a table read as empty, or as the other ranks' rows alone, silently."""
    if info.get("status") != "complete":
        return []
    listed = [t for t in info.get("tables") or [] if t in TABLES]
    gone = _lost_parts(Path(path), info)
    return [t for t in listed if t in gone or not (Path(path) / t).is_dir()]


def _writers(info: dict) -> list[int]:
    """The ranks that wrote the record's per-rank tables, the first of each replica, that had a batch
    (replica r takes batches r, r+R, ...; each writes its progress file, batches or not)."""
    world = info.get("world") or {}
    size, mp = world.get("size") or 1, world.get("model_parallel") or 1
    batches = (info.get("planned") or {}).get("batches")
    return [r * mp for r in range(size // mp) if batches is None or r < batches]


def _lost_parts(path: Path, info: dict) -> dict[str, list[str]]:
    """{table: its part files that the progress files name committed and are gone, or rank R's parts
    where R's progress file is gone too}. No progress files (not a record run, or its `_progress/` gone):
    the rows that run.json's `recorded` count says are missing (`_short_of_recorded`)."""
    progress = {int(p.stem[1:]): p for p in sorted((path / PROGRESS).glob("r*.json")) if p.stem[1:].isdigit()}
    if not progress:
        return _short_of_recorded(path, info)
    lost: dict[str, list[str]] = {}
    named: set[str] = set()
    for rank, p in progress.items():
        try:
            parts = progress_parts(json.loads(p.read_text())) or {}
        except (OSError, ValueError):  # unreadable or damaged: --resume says so; nothing known here
            continue
        for t, files in parts.items():
            named |= {t} if files else set()
            lost.setdefault(t, []).extend(f for f in files if not (path / t / f).is_file())
    for rank in (r for r in _writers(info) if r not in progress):
        for t in named:
            if not list((path / t).glob(f"r{rank:03d}-b*.parquet")):
                lost.setdefault(t, []).append(f"all of rank {rank}'s, and its {PROGRESS}/r{rank:03d}.json")
    return {t: files for t, files in lost.items() if files}


def _short_of_recorded(path: Path, info: dict) -> dict[str, list[str]]:
    """{table: what it lacks} where a record run without progress files (`_progress/` deleted, or not
    copied with the run) holds fewer rows in a table than run.json says it wrote (`recorded_rows`): one
    part deleted beside it read as a smaller run without a word (a review; a routing or mtp part too). {}
    otherwise, and for a run that records no count (an import, a training run)."""
    lost = {}
    for table, (want, what) in recorded_rows(info).items():
        held = _rows(path / table)
        if held is not None and held < want:  # None: no folder, lost as such
            lost[table] = [f"rows of {want - held:,} of the {want:,} {what}; with {PROGRESS}/ gone, which parts "
                           "cannot be said"]
    return lost


def recorded_rows(info: dict) -> dict[str, tuple[int, str]]:
    """{table: (the rows a record run's run.json says it holds, in words)} for the tables it lists whose rows
    it says exactly: `tokens`, its `recorded` count; `routing`, a row per token and MoE layer (--router-logits
    topk or full alike: --sample thins only the scores); `mtp`, a row per token but each window's last, where
    every planned window was recorded (a complete run); `kv_stats`, a row per layer. Not `expert_load` (a row
    per batch, layer, expert and domain in the batch), `kv_spectrum` (no rows for a layer whose latents were
    not finite) nor `router_bias`. Under torchrun the replicas' rows add up to the same."""
    tokens = (info.get("recorded") or {}).get("tokens")
    if not isinstance(tokens, int):
        return {}
    args, planned = info.get("model_args") or {}, info.get("planned") or {}
    want = {"tokens": (tokens, "tokens run.json records")}
    layers, dense = args.get("n_layers"), args.get("n_dense_layers")
    if isinstance(layers, int) and isinstance(dense, int):
        moe = max(layers - dense, 0)
        want["routing"] = (tokens * moe, f"routing rows of run.json's {tokens:,} tokens ({moe} MoE layers each)")
        want["kv_stats"] = (layers, "layers of run.json's model")
    if planned.get("tokens") == tokens and isinstance(windows := planned.get("windows"), int):
        want["mtp"] = (tokens - windows, f"mtp rows of run.json's {tokens:,} tokens in {windows:,} windows (each "
                                         "token's but a window's last)")
    listed = info.get("tables") or ()
    return {t: w for t, w in want.items() if t in listed}


_ROWS: dict[tuple, int] = {}  # (folder, its parts' names, sizes and times): their rows (`_rows`)


def _rows(d: Path) -> int | None:
    """The rows of the part files in folder `d` from their Parquet footers (None: no folder, or a part
    gone meanwhile or unreadable, which the read names), kept while the parts' names, sizes and times
    stay: `lost_tables` is checked at every read, and a big run has thousands of parts."""
    if not d.is_dir():
        return None
    try:
        stats = [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in table_files(d.parent, d.name)]
        key = (str(d), tuple(stats))
        rows = _ROWS.get(key)
        if rows is None:
            rows = sum(pq.read_metadata(d / name).num_rows for name, *_ in stats)
            if len(_ROWS) > 256:
                _ROWS.clear()
            _ROWS[key] = rows
        return rows
    except (OSError, pa.ArrowInvalid):
        return None


def _part_names(path: Path, table: str) -> tuple[str, ...] | None:
    """The names of `table`'s committed part files, None where its folder is gone: what `Run` compares to
    know whether a view is current (an empty table's folder deleted, or made again, is a lost table, or
    one found again; with () either way, a Run's views missed it until a part changed)."""
    d = path / table
    return tuple(f.name for f in sorted(d.glob("*.parquet"))) if d.is_dir() else None


def _progress_names(path: Path) -> tuple[str, ...]:
    """The names in the record's progress folder (`_progress/`; () without one): a progress file gone
    with every part its rank wrote loses a table that rank wrote nothing to, no part name changing."""
    try:
        return tuple(sorted(os.listdir(path / PROGRESS)))
    except OSError:
        return ()


MADE_BY = {"import": "`dsv3-probe import`", "spec": "`dsv3-probe spec`", "train": "`python -m train`",
           "ablations": "`python -m analyses.ablate`", "expert_importance": "`python -m analyses.importance`",
           "steering": "`python -m analyses.steer`"}  # the commands that write run.json's "kind"


def _again(info: dict) -> str:
    """How a complete run that lost a table is made whole again: recorded (a record run), else made again by
    the command that made it (an SGLang import was told to 'record it again', a bug hunt)."""
    kind = info.get("kind")
    return "record it again" if kind not in MADE_BY else f"make it again with {MADE_BY[kind]}"


def missing_parts(path: str | Path, table: str, info: dict | None = None) -> str:
    """The part files of `table` that a complete run committed and has lost, in a few words (the
    first three named)."""
    gone = _lost_parts(Path(path), read_run_json(Path(path)) if info is None else info).get(table) or ["?"]
    return ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")


def lost_why(path: str | Path, table: str, info: dict | None = None) -> str:
    """Why a lost table (`lost_tables`) cannot be read: no part files, or which of them are gone."""
    info = read_run_json(Path(path)) if info is None else info
    if not table_files(path, table):
        return f"listed in run.json but has no part files: deleted? (the run is complete; {_again(info)})"
    return (f"committed part files missing ({missing_parts(path, table, info)}): deleted, or left on another "
            f"node? (the run is complete; {_again(info)}, or copy them back)")


def lost_message(path: str | Path, table: str, info: dict | None = None) -> str:
    """The one line naming the run and the table: RUN/TABLE: listed in run.json but ..., or RUN/TABLE:
    committed part files missing (...)."""
    return f"{Path(path) / table}: {lost_why(path, table, info)}"


def one_window_cap(info: dict) -> str | None:
    """Why a recorded run holds one domain when its --max-tokens fit in the first window (with the
    default --order domains each domain takes a window in turn), and what to record instead; None where
    the cap does not explain it. The report and the dashboard both say this (one wording): telling such
    a run of a five-domain corpus to 'record a corpus with two or more domains' told it what it did."""
    o = info.get("options") or {}
    cap, seq = o.get("max_tokens"), o.get("seq_len")
    if info.get("kind") == "import" or o.get("order") != "domains" or not (cap and seq and cap <= seq):
        return None
    return (f"it was recorded with --max-tokens {cap:,}, within the first window (--seq-len {seq}), and each "
            f"domain takes a window in turn; record with a --max-tokens over {seq} from a corpus of two or more "
            "domains")


def create_views(con, path: str | Path, tables, temp: bool = False, where: str = "") -> list[str]:
    """One DuckDB view per table over its part files, in the table's schema as `Run.arrow` reads each
    part: its columns only, in its types (older parts lacking a newer column read it as null); returns
    the tables that have no part file (no view made). A stray part (a foreign or hand-made file) whose
    token_id held strings was refused by `Run.df` and read by the views as a VARCHAR column, and one
    with other columns added them to the table (a review); now a value that cannot be cast is DuckDB's
    error when a query reads it, and so is a fraction in an integer column (`_read_as`: DuckDB's cast
    rounded it where `Run.df` refuses it). The casts and the union cost about 1 ms of CPU a view (a small
    run opened and queried: 4.4-5.2 ms against 3.0-3.6 ms, a 2-core EPYC, 2026-12-07), reading the parts'
    types first (`describe`, for that check) about 0.3-0.5 ms more (7.6-7.7 ms against 8.3-8.7 ms for a
    run of two tables' views; 173-179 ms against 203-212 ms with 401 parts, the same EPYC, 2026-12-07:
    their footers read once more). A check per row that folded away for integer parts cost 3 ms a
    view to plan instead. temp: temporary views, seen only by this connection
    (a cursor of a database that other connections share); where: an SQL condition the views' rows hold
    (`Run.restrict`)."""
    missing = []
    for t in tables:
        files = table_files(path, t)
        if not files:
            missing.append(t)
            continue
        lst = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        kind = "temp view" if temp else "view"
        cond = f" where {where}" if where else ""
        # by name with the schema's rows of none: a column no part holds is there, null
        parts = f"select * from read_parquet([{lst}], union_by_name = true)"
        held = {name: kind_ for name, kind_, *_ in con.execute(f"describe {parts}").fetchall()}
        cols = ", ".join(f'{_read_as(name, type_, held.get(name), Path(path) / t)} as "{name}"'
                         for name, type_ in _columns(t))
        con.execute(f"create {kind} {t} as select {cols} from ({parts} union all by name {empty_rows(t)}){cond}")
    return missing


_WHOLE = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def _read_as(name: str, type_: str, held: str | None, where: Path) -> str:
    """The SQL expression reading column `name` of a table's parts (at `where`), which they hold as the
    DuckDB type `held` (None: no part holds it), in the schema's type `type_`. A fraction read into an
    integer type (or a list of one) is an error naming the column and the value: DuckDB's cast rounds
    it (2.5 to 2, half to even; '2.5' to 3), so a stray part of float counts summed short where
    `Run.df` refuses it (Arrow's cast)."""
    col, elem = f'"{name}"', type_.removesuffix("[]")
    cast = f"cast({col} as {type_})"
    if elem not in _WHOLE or not held or held.removesuffix("[]") in (*_WHOLE, "BOOLEAN"):
        return cast
    frac = "try_cast({x} as DOUBLE) <> trunc(try_cast({x} as DOUBLE))"
    if elem != type_:  # a list: any element a fraction
        frac = f"list_bool_or(list_transform({col}, lambda x: {frac.format(x='x')}))"
    msg = f"{where}: column {col} holds ".replace("'", "''")
    return (f"case when {frac.format(x=col)} then error('{msg}' || cast({col} as VARCHAR) || "
            f"', not a whole number (the schema''s {type_})') else {cast} end")


_DB: tuple[int, object] | None = None  # (the process id that opened it, the database)
# DuckDB's allocator gives back what a query freed in bulk only past this size (its default 512 MiB): the
# report's read of a 2.15M-token run's routes (`analyses.metrics.routes_from_run`) kept 1.8 GB resident for
# good, 319 MiB of it the arrays returned, and peaked at 1.9 GB; given back at every bulk free, 0.6 GB was
# left after the next query, and the peak was 1.4 GB (the bundled model, a 2-core EPYC, 2026-12-07). Nonzero
# thresholds down to 64 MiB kept it all (each free is smaller). The whole report (--skip-ablation) on that run:
# peak 3.01 -> 2.44 GB, 95 -> 98 s of CPU (pages given back and faulted in again); on the 359k-token run, the same.
BULK_FREE_FLUSH = "0MB"
_DB_LOCK = threading.Lock()
_CATALOGS = itertools.count()
_COLUMNS: dict[str, list[tuple[str, str]]] = {}  # table: its columns' names and DuckDB types (`_columns`)


def _database():
    """The process's one in-memory DuckDB database, whose cursors are the runs' connections. Opening a
    run and querying it cost 30 ms of CPU, half of it opening a database of its own and most of the
    rest registering an empty table for each absent one; a cursor of this one with a catalog of its
    own costs 0.4 ms, the whole 3 ms (duckdb 2.0, a 2-core EPYC, 2026-12-06; about 1 ms more since the
    views read in the schema's types, `create_views`). A forked child opens its own (a database's
    threads do not survive a fork)."""
    import duckdb

    global _DB
    with _DB_LOCK:
        if _DB is None or _DB[0] != os.getpid():
            db = duckdb.connect()
            db.execute(f"set allocator_bulk_deallocation_flush_threshold = '{BULK_FREE_FLUSH}'")
            if not _COLUMNS:
                _COLUMNS.update({t: _types(db, schema) for t, schema in TABLES.items()})
            _DB = (os.getpid(), db)
        return _DB[1]


def _types(db, schema: pa.Schema) -> list[tuple[str, str]]:
    """`schema`'s columns' names and types as DuckDB reads its empty table."""
    db.register("_rows", schema.empty_table())
    columns = db.execute("describe select * from _rows").fetchall()
    db.unregister("_rows")
    return [(name, kind) for name, kind, *_ in columns]


def _no_rows(columns: list[tuple[str, str]]) -> str:
    """A query of no rows in `columns` (names and DuckDB types)."""
    return "select " + ", ".join(f'cast(null as {kind}) as "{name}"' for name, kind in columns) + " where false"


def _columns(table: str) -> list[tuple[str, str]]:
    """`table`'s columns' names and DuckDB types, as its part files read."""
    _database()
    return _COLUMNS[table]


def empty_rows(table: str) -> str:
    """A query of no rows in `table`'s columns (as its part files read): what a run's view of a table it
    has no part of selects. A query, not a table: the row-less tables of a schema the runs' connections
    shared took a caller's `insert into memory._empty.mtp ...`, and every run's table without parts
    read those rows after (a tour)."""
    return _no_rows(_columns(table))


def run_connection():
    """A cursor of `_database()` whose default catalog is an in-memory one of its own, so that what
    a caller creates on it (a view replacing a table's, a table) is seen by no other run; the
    catalog is detached when the cursor and every relation of it are gone. A run's connection, and
    one for views of a caller's own (two runs joined: `analyses.metrics.routing`)."""
    db = _database()
    con = db.cursor()
    name = f"run{next(_CATALOGS)}"
    con.execute(f"attach ':memory:' as {name}; use {name}")
    weakref.finalize(con, _detach, db, name).atexit = False
    return con


def _detach(db, name: str) -> None:
    """Drop a gone run's catalog (`run_connection`'s finalizer: any thread, so no lock)."""
    import duckdb

    try:
        db.cursor().execute(f"detach database if exists {name}")
    except duckdb.Error:  # the database closed
        pass


class Run:
    """A run directory, read as it is on disk at each call: a job may still be writing it (its parts
    committed so far are read; `status` re-reads run.json)."""

    def __init__(self, path: str | Path) -> None:
        self.path = given_path(path, "path", RunError)
        self.info = read_run_json(self.path)
        self._con = None
        self._made: dict[str, tuple] = {}  # table: (its part files, lost, its condition) when its view was made
        self._where: dict[str, str] = {}  # table: the condition its rows hold (`restrict`)
        self._listed: tuple | None = None  # run.json's status and tables when the views were last checked

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, tables={self.tables})"

    @property
    def status(self) -> str:
        """run.json's status now (re-read: polling a running job's run for completion saw its first
        status forever; a review); `info` follows it. A record or training run killed before it could
        mark itself (run.json says "running", and no job holds its writer lock) is "interrupted": it
        was "running" for good (a tour); `info["status"]` still says what run.json says."""
        try:
            self.info = read_run_json(self.path)
        except RunError:  # gone or unreadable now: what was read before
            pass
        return run_status(self.path, self.info)

    @property
    def tables(self) -> list[str]:
        """Tables that have at least one committed part file and have lost none (see `lost_tables` for
        those a complete run lists without all of its parts)."""
        held = [t for t in TABLES if self.files(t)]
        lost = self.lost_tables if held else []
        return [t for t in held if t not in lost]

    @property
    def lost_tables(self) -> list[str]:
        """Tables run.json lists that this complete run has lost (no part file, or some of its committed
        parts: deleted?); reading one is a RunError (`probe.run.lost_tables`)."""
        self.status  # re-reads run.json into `info`
        return lost_tables(self.path, self.info)

    def check_not_lost(self, table: str) -> None:
        """A RunError naming the run, the table and its missing parts where this complete run has lost
        `table` (`lost_tables`); nothing otherwise."""
        if table in self.lost_tables:
            raise RunError(lost_message(self.path, table, self.info))

    def files(self, table: str) -> list[Path]:
        """The table's committed Parquet part files, in order (empty where the run has none yet);
        `table` must be one of `probe.schema.TABLES` (docs/run-tables.md)."""
        if table not in TABLES:
            raise RunError(f"unknown table {table!r}; tables are {list(TABLES)}")
        return table_files(self.path, table)

    def arrow(self, table: str, columns: str | list[str] | None = None) -> pa.Table:
        """The table (or only `columns`: a column's name or a list, or tuple, of names; only the rows
        `restrict` keeps) as one pyarrow Table in the schema of `probe.schema.TABLES`, read whole into
        memory; an empty table with that schema where the run has no part yet (a complete run that lists
        the table in run.json and has lost its parts, or some: a RunError)."""
        files = self.files(table)
        self.check_not_lost(table)
        schema = TABLES[table]
        columns = self._column_names(table, columns)
        unknown = [c for c in columns or () if c not in schema.names]
        if unknown:
            raise RunError(f"{self.path / table}: no column {', '.join(map(repr, unknown))}; its columns are "
                           f"{schema.names}")
        if table in self._where:  # `restrict`: the view's rows, in the schema's types
            names = columns or schema.names
            cols = ", ".join(f'"{c}"' for c in names)
            got = self.sql(f"select {cols} from {table}").to_arrow_table()
            return got.cast(pa.schema([schema.field(c) for c in names]))
        for attempt in range(3):  # a part a job replaced while it was read: list the parts again
            if not files:
                return schema.empty_table().select(columns) if columns else schema.empty_table()
            try:
                return pa.concat_tables([pq.read_table(f, columns=columns, schema=schema) for f in files])
            except FileNotFoundError as e:  # it was called unreadable (a review)
                if attempt == 2:
                    raise RunError(f"{self.path / table}: its part files keep changing while read ({e})") from None
                files = self.files(table)
            except (pa.ArrowException, OSError) as e:  # a column of another type: ArrowNotImplementedError, a traceback
                raise RunError(f"{self.path / table}: unreadable part file ({first_line(e)})") from None

    def df(self, table: str, columns: str | list[str] | None = None):
        """The table (or only `columns`, as `arrow` takes them) as a pandas DataFrame (loads it; prefer
        `rel`/`sql` for big tables)."""
        return self.arrow(table, columns).to_pandas()

    def _column_names(self, table: str, columns) -> list[str] | None:
        """`columns` as a list of names: one name (a str) or an iterable of them. NOTE: a str was read letter
        by letter ("no column 'l', 'o', 's', 's'") and a tuple was pyarrow's "Expected a list or a dict for
        'columns'" (a tour)."""
        if columns is None:
            return None
        names = [columns] if isinstance(columns, str) else columns
        if isinstance(names, Iterable) and not isinstance(names, (bytes, dict)):
            names = list(names)
            if all(isinstance(c, str) for c in names):
                return names
        raise RunError(f"{self.path / table}: columns={columns!r:.80}: expected a column's name or a list of names")

    @property
    def con(self):
        """A DuckDB connection with one view per table, over the part files committed when it is
        asked for: the views are made again whenever the parts changed since (a job committed,
        resumed or overwrote; they were a snapshot of the first query's parts, so `sql` and `df` of
        one Run disagreed, and a removed part was an IO error; a review). A table with an unreadable
        part file (a half-written or foreign file) gets a view that raises DuckDB's own error, naming
        the file, when a query reads it: queries of the other tables are not affected. So does a table
        that a complete run lists in run.json and has no part file of (`lost_tables`). It is a cursor
        of the process's one database (`_database`): what is created on it stays this run's, but a
        setting (`set threads`) is the database's."""
        return self._views(TABLES)

    def _views(self, tables):
        """The connection with a current view of each of `tables` and of every table viewed before (a
        view the caller made on `con` may read those); `sql` and `rel` make only the views their query
        names, the others cost a parquet footer read each."""
        if self._con is None:
            self._con = run_connection()
        want = [t for t in TABLES if t in tables or t in self._made]
        names = {t: _part_names(self.path, t) for t in want}
        self.status  # re-reads run.json: its status, tables and writers decide what is lost too
        listed = (self.info.get("status"), tuple(self.info.get("tables") or ()), tuple(_writers(self.info)),
                  _progress_names(self.path))
        # every view over the parts it was made over: a part lost since changed them, an empty table's folder
        # gone its names (None) and a rank's progress file gone (with all it wrote) `listed`
        if listed == self._listed and all((self._made.get(t) or (None,))[::2] == (names[t], self._where.get(t))
                                          for t in want):
            return self._con
        self._listed = listed
        lost = lost_tables(self.path, self.info)  # the progress files and every committed part: when remaking
        for t in want:
            key = (names[t], t in lost, self._where.get(t))
            if self._made.get(t) != key:
                self._make_view(t, t in lost)
                self._made[t] = key
        return self._con

    def _make_view(self, table: str, lost: bool) -> None:
        """(Re)make `table`'s view: over its part files, raising where one is unreadable or the table
        is lost, else over a query of no rows in its columns (`empty_rows`)."""
        import duckdb

        if table in self._made:  # forgotten with its view: a making that fails below is tried again, not taken as made
            self._con.execute(f"drop view if exists {table}")
            self._con.unregister(f"_unreadable_{table}")
            del self._made[table]
        if lost:  # all its parts or some: the others alone would read as a smaller run
            return self._unreadable_view(table, lost_why(self.path, table, self.info))
        where = self._where.get(table, "")
        try:
            missing = create_views(self._con, self.path, [table], where=where)
        except duckdb.Error as e:
            return self._unreadable_view(table, str(e).strip().splitlines()[0])
        if missing:
            cond = f" where {where}" if where else ""
            self._con.execute(f"create view {table} as select * from ({empty_rows(table)}){cond}")

    def _unreadable_view(self, table: str, error: str) -> None:
        """View `table` (with its schema's columns) over one placeholder row that raises `error`."""
        schema = TABLES[table]
        self._con.register(f"_unreadable_{table}", pa.table({f.name: pa.nulls(1, f.type) for f in schema}))
        msg = f"{self.path / table}: {error}".replace("'", "''")
        self._con.execute(f"create view {table} as select * from _unreadable_{table} where error('{msg}') is null")

    def restrict(self, tables, where: str) -> "Run":
        """Hold only the rows of `tables` where the SQL condition `where` holds ("seq_id < 8") in this
        run's views (`con`, `sql`, `rel`) and in `arrow` and `df`, for good: a view made again over
        changed parts keeps it (a view replacing a table's on `con` did not: a running record's next
        part made the dashboard's sample of its first windows the whole table; a tour). Returns the run;
        a condition DuckDB cannot apply to a table is a RunError naming it, the views then current under
        the condition before it."""
        import duckdb

        for t in tables:
            if t not in TABLES:
                raise RunError(f"unknown table {t!r}; tables are {list(TABLES)}")
            before, self._where[t] = self._where.get(t), where
            try:
                self._views([t]).execute(f"select * from ({empty_rows(t)}) where {where}")
            except duckdb.Error as e:  # the condition before it holds
                if before is None:
                    del self._where[t]
                else:
                    self._where[t] = before
                # every view made again under it now: the refused condition dropped the table's view, made again
                # only for a query naming the table (a view of the caller's read no table), and stopped the making
                # of the views after it, which the next check took as current (a table lost meanwhile read empty)
                self._views([t])
                why = str(e).strip().splitlines()[0]
                raise RunError(f"{self.path / t}: cannot hold only the rows where {where!r} ({why})") from None
        return self

    def rel(self, table: str):
        """The table as a lazy DuckDB relation (`.filter`, `.aggregate`, `.df()`...): nothing is read
        until it is consumed, so it suits tables larger than memory (routing, tokens)."""
        if table not in TABLES:
            raise RunError(f"unknown table {table!r}; tables are {list(TABLES)}")
        self.check_not_lost(table)
        return self._views([table]).table(table)

    def sql(self, query: str):
        """A DuckDB relation of `query` over this run's tables (one view per table, empty where the run
        has no parts), and the caller's DataFrames and Arrow tables by their variables' names, as
        `duckdb.sql` reads them (the calling function's variables, then its module's; not those of the
        functions that called it). A name that is neither is one line naming the run and its tables (it was
        DuckDB's two lines suggesting one of its own catalogue tables; a review)."""
        import duckdb

        named = [t for t in TABLES if re.search(rf"\b{t}\b", query, re.IGNORECASE)]
        # NOTE: DuckDB looks a name no table has up in the variables of the frame that calls it, which was this
        # one: a caller's DataFrame was "Table with name ... does not exist" (a tour), and one named `query` or
        # `named` was this method's str or list. Every frame outward (python_scan_all_frames) then read a
        # variable of that name in any caller up the stack, an unrelated DataFrame or an IPython internal's
        # object (a review); so the query is run in a frame of the caller's own variables, as duckdb.sql is
        caller = sys._getframe(1)
        try:
            where = {**caller.f_locals, "_run_con_": self._views(named), "_run_query_": query}
            return eval("_run_con_.sql(_run_query_)", caller.f_globals, where)
        except duckdb.CatalogException as e:
            why = str(e).strip().splitlines()[0].removeprefix("Catalog Error: ")
            raise RunError(f"{self.path}: {why} (a run's tables are {list(TABLES)})") from None
        except duckdb.InvalidInputException as e:  # a variable of the name that is no table: DuckDB's two lines
            if "replacement scan" not in str(e):
                raise
            m = re.search(r'Object "(.+?)" of type "(.+?)"', str(e))
            what = f"{m[1]!r} is a {m[2]} of the caller's" if m else first_line(e)
            raise RunError(f"{self.path}: {what}, not a DataFrame or Arrow table (a name that is no table of the "
                           f"run's {list(TABLES)} is read from the caller's variable of that name)") from None


def open_run(path: str | Path) -> Run:
    """The run directory at `path` (it must hold run.json) for reading: `Run.tables`, `Run.df`,
    `Run.arrow`, `Run.rel`, `Run.sql` and `Run.info` (run.json). A missing or unreadable run.json is a
    `RunError` naming the path; so is an empty path ('' is not the current folder)."""
    return Run(path)
