"""The dashboard's data layer: read runs' Parquet through DuckDB and cache the aggregates (the runs
themselves are found by `dashboards.runs`, whose RunRef and discover this module re-exports).

Every run directory has one layout (probe/schema.py, probe/writer.py): `run.json` plus one folder of
part files per table. A recorded run (`dsv3-probe record`) holds tokens, routing, expert_load, mtp,
kv_stats, ...; a training run (`python -m train`, run.json `kind: train`) holds train_steps,
train_domains, train_gates, train_eval, expert_load and router_bias. The views are made by
`probe.run.create_views`, as `probe.open_run` makes them; `kind` only decides which pages apply.

Every query aggregates in SQL (the routing table is never loaded whole) and is cached with
`st.cache_data`, keyed on the run's file signature (names, sizes and mtimes), so a run that is still
being written is re-read when new part files are committed. Metric formulas are never written
here: the aggregates go to the array functions of `analyses.metrics`.

Errors a page should show rather than raise: `MissingTable` (the run has no such table) and
`DataError` (an unreadable Parquet file or run.json); both carry a one-line message.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import streamlit as st

from analyses.metrics import speculative
from analyses.metrics._common import listed
from dashboards.ckpt_vectors import safetensors_vectors
from dashboards.runs import (RECORD_PER_TOKEN, RunRef, _discover, discover, results_only,  # noqa: F401 - data.X
                            run_kind, signature, unfinished_record, why_missing)
from probe.run import create_views, lost_tables, lost_why, table_files as run_table_files
from probe.schema import layer_label as schema_layer_label

# Per-token views (co-activation, top tokens, Sankey) read at most this many tokens per layer: the
# first windows of the run (row groups past them are skipped by their seq_id statistics).
SAMPLE_TOKENS = 250_000
# The Serving page replays at most this many forward passes (a longer run: every k-th pass).
MAX_PASSES = 2000


class DataError(Exception):
    """A table or file that exists but cannot be read."""


class MissingTable(DataError):
    """The run has no such table (not recorded, or not written yet)."""


def domains_of(ref: RunRef) -> list[str]:
    info = ref.info
    return list(info.get("domains") or sorted((info.get("planned") or {}).get("tokens_per_domain", {}))
                or sorted((info.get("spec_decode") or {}).get("tokens_per_domain", {})))


def moe_layers(ref: RunRef) -> list[int]:
    a = ref.info.get("model_args") or {}
    n, d = a.get("n_layers"), a.get("n_dense_layers", 0)
    return list(range(d, n)) if n else []


# ------------------------------------------------------------------------------ tables
def table_files(ref: RunRef, table: str) -> list[Path]:
    return run_table_files(ref.path, table)


def has_table(ref: RunRef, table: str) -> bool:
    return bool(table_files(ref, table))


def table_folder_exists(ref: RunRef, table: str) -> bool:
    """Whether the run has `table`'s folder, files or not: the recorder makes every table's folder
    when it starts and writes a part only when rows come, so a folder without files is a table that
    got no rows, and a missing folder a run that lost files."""
    return (Path(ref.path) / table).is_dir()


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


_DB: duckdb.DuckDBPyConnection | None = None
_DB_LOCK = threading.Lock()


def _database() -> duckdb.DuckDBPyConnection:
    """The process's one in-memory DuckDB database. Each query runs on a cursor of it (a connection
    of its own, safe in Streamlit's script threads) over temporary views that only that cursor sees:
    opening a database for every query cost 16 ms (duckdb 2.0, a 2-core EPYC, 2026-12-03), a cursor
    with its views and a small query 0.5 ms, and a page runs several queries."""
    global _DB
    with _DB_LOCK:
        if _DB is None:
            _DB = duckdb.connect()
        return _DB


@contextmanager
def _cursor(ref: RunRef, tables: tuple[str, ...]):
    """A cursor of the process's database with a temporary view per table, closed when the block
    ends. A table without files raises MissingTable; an unreadable file, while the views are made or
    in the block's query, a DataError that names the tables; so does a complete run's table that has
    lost some of its committed parts (a rank's output: the others' rows alone read as a smaller run)."""
    if lost := partly_lost(ref, tables):
        raise DataError(f"run {ref.name!r}: cannot read `{lost[0]}` ({lost_why(ref.path, lost[0], ref.info)})")
    con = _database().cursor()
    try:
        missing = create_views(con, ref.path, tables, temp=True)
        if gone := whole_lost(ref, tuple(missing)):  # a table the record wrote, not one it never had
            raise DataError(f"run {ref.name!r}: cannot read `{gone[0]}` ({lost_why(ref.path, gone[0], ref.info)})")
        if missing:
            raise missing_table(ref, missing[0])
        yield con
    except (duckdb.Error, OSError) as e:  # MissingTable, a DataError, passes through as it is
        msg = str(e).strip().splitlines()[0][:300]
        raise DataError(f"run {ref.name!r}: cannot read {listed(f'`{t}`' for t in tables)} ({msg})") from None
    finally:
        con.close()


def partly_lost(ref: RunRef, tables: tuple[str, ...]) -> list[str]:
    """Those of `tables` that have part files and have lost others the record committed (a complete
    run's)."""
    return [t for t in _lost(ref, tables) if table_files(ref, t)]


def missing_table(ref: RunRef, table: str) -> "MissingTable":
    """The MissingTable a page shows (`ui.guard`): `table` is not in run `ref`, and why where run.json tells
    (`why_missing`). A record at work that lists it has not written it yet, and one interrupted before writing
    it can go on: both were told only that the run 'has no `expert_load` table' on the Load balance, Serving
    and MTP pages (a bug hunt)."""
    return MissingTable(f"run {ref.name!r} has no `{table}` table{why_missing(ref, (table,))}")


def whole_lost(ref: RunRef, tables: tuple[str, ...]) -> list[str]:
    """Those of `tables` that a complete run lists and that have lost every part file (the folder
    deleted): read as a table the run never had, the MTP page said the run 'has no `mtp` table' while
    the Overview warned it was lost (a browser tour)."""
    return [t for t in _lost(ref, tables) if not table_files(ref, t)]


def _lost(ref: RunRef, tables: tuple[str, ...]) -> list[str]:
    """Those of `tables` that the complete run `ref` has lost, all parts or some (`probe.run.lost_tables`;
    `cached` calls its function with a RunRef of status '', run.json's then)."""
    lost = lost_tables(ref.path, ref.info | {"status": ref.status or ref.info.get("status")}) if tables else []
    return [t for t in tables if t in lost]


def query(ref: RunRef, sql: str, tables: tuple[str, ...], params: list | None = None) -> pd.DataFrame:
    """Run `sql` over views of the named tables; unreadable files become a DataError."""
    with _cursor(ref, tables) as con:
        return con.execute(sql, params or []).df()


def cached(fn):
    """st.cache_data keyed on the run's file signature: `fn(ref, *args, **kwargs)` -> `cached(ref, *args,
    **kwargs)` (arguments by name too: `total_loads(ref, last_steps=5)` was a TypeError of the wrapper's)."""
    # NOTE: every wrapper shares one source text, and st.cache_data keys functions on their source,
    # so the wrapped function's name is part of the arguments (the cache key).
    inner = st.cache_data(show_spinner=False, max_entries=64)(
        lambda fname, path, sig, kind, name, args, kwargs: fn(RunRef(name, path, kind, "", _read_info(path)), *args,
                                                              **dict(kwargs)))

    def call(ref: RunRef, *args, **kwargs):
        return inner(f"{fn.__module__}.{fn.__qualname__}", ref.path, ref.sig, ref.kind, ref.name, args,
                     tuple(sorted(kwargs.items())))

    call.__name__, call.__doc__, call.clear, call.uncached = fn.__name__, fn.__doc__, inner.clear, fn
    return call


def _count(name: str, value, least: int = 1):
    """`value` of the argument `name`, refused below `least` (None passes: 'not given'): a zero or
    negative count divided by zero (pass_loads' max_passes, mtp_by_position's buckets), reached
    DuckDB's LIMIT as a Binder Error, or was read as another count without a word (a tour)."""
    if value is not None and int(value) < least:
        raise ValueError(f"{name}={value!r} must be at least {least}")
    return value


def _read_info(path: str) -> dict:
    try:
        info = json.loads((Path(path) / "run.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def file_health(ref: RunRef) -> pd.DataFrame:
    """Per Parquet file: table, rows, and an error when the footer cannot be read."""
    rows = []
    p = Path(ref.path)
    for f in sorted([*p.glob("*.parquet"), *p.glob("*/*.parquet")]):
        table = f.parent.name if f.parent != p else f.stem
        try:
            n, err = pq.ParquetFile(f).metadata.num_rows, None
        except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
            n, err = None, str(e).splitlines()[0][:200]
        rows.append({"table": table, "file": str(f.relative_to(p)), "rows": n, "bytes": f.stat().st_size,
                     "error": err})
    return pd.DataFrame(rows, columns=["table", "file", "rows", "bytes", "error"])


# ------------------------------------------------------------------------------ loads
def layer_label(ref: RunRef, layer) -> str:
    """`probe.schema.layer_label` with the run's n_layers: 'layer 3', or 'MTP 0' for an MTP block's
    router. Every page names a layer this way (the tables and run.json keep 'layer3' / 3). A layer the
    run does not have is a ValueError: layer 99 of a 3-layer run was labelled 'MTP 96' (a tour)."""
    args = ref.info.get("model_args") or {}
    n = args.get("n_layers")
    if n is not None:
        # an older run.json without n_mtp_layers: ModelArgs' default, one MTP block
        last = int(n) + int(args.get("n_mtp_layers", 1)) - 1
        if not 0 <= int(layer) <= last:
            mtp = f" (MTP 0 is layer {n})" if last >= int(n) else ""
            raise ValueError(f"layer {layer}: run {ref.name} has layers 0 to {last}{mtp}")
    return schema_layer_label(layer, n)


def layer_number(ref: RunRef, label: str) -> int:
    """The table's layer of a label: 'layer 3' or run.json's gate 'layer3' -> 3; 'MTP 0' / 'mtp0' -> n_layers."""
    m = re.fullmatch(r"(layer|mtp) ?(\d+)", label.strip(), re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a layer label: {label!r}")
    n = (ref.info.get("model_args") or {}).get("n_layers", 0)
    layer = int(m[2]) + (n if m[1].lower() == "mtp" else 0)
    layer_label(ref, layer)  # a layer the run does not have is a ValueError, as there ('MTP 5' of one block)
    return layer


def _labelled(ref: RunRef, df: pd.DataFrame, label=layer_label) -> pd.DataFrame:
    df["layer"] = [label(ref, x) for x in df["layer"]]
    return df


def _gate(ref: RunRef, layer) -> str:
    """run.json's name of a gate ('layer3', 'mtp0': train.balance's labels), which keys the training
    metrics' maxvio_<gate> columns; pages show `layer_label`."""
    n = (ref.info.get("model_args") or {}).get("n_layers")
    return f"mtp{int(layer) - n}" if n is not None and int(layer) >= n else f"layer{int(layer)}"


@cached
def recorded_tokens(ref: RunRef) -> pd.DataFrame:
    """domain, tokens, windows, documents: what the run's `tokens` table holds per domain (a run
    that did not complete holds less than run.json's `planned` figures)."""
    return query(ref, "select domain, count(*)::bigint as tokens, count(distinct seq_id)::bigint as windows, "
                      "count(distinct doc_id)::bigint as documents from tokens group by 1 order by 1", ("tokens",))


def tokens_in_run(ref: RunRef) -> int | None:
    """The tokens a probe run holds: run.json's `recorded` once the job ended, else (still recording,
    or killed) its `tokens` table's rows so far, 0 before its first commit; `planned` only when
    neither is there. A running run used to show its plan (200,000 tokens) beside 4,096 recorded, and
    its plan before any batch was committed (a review)."""
    i = ref.info
    if i.get("status") != "complete" and has_table(ref, "tokens"):
        return int(recorded_tokens(ref).tokens.sum())
    if i.get("status") != "complete" and i.get("planned") and not i.get("recorded"):
        return 0
    held = (i.get("recorded") or {}).get("tokens") or (i.get("planned") or {}).get("tokens")
    if held is None and i.get("kind") == "import" and has_table(ref, "expert_load"):
        return imported_tokens(ref)  # counts alone (SGLang stat, per_pass): the runs table said None
    return held


@cached
def imported_tokens(ref: RunRef) -> int | None:
    """The tokens of an import of counts: each pass's `expert_load.tokens` (its assignments in the first
    MoE layer / the top-k, probe/schema.py), one a pass and domain, summed over the passes."""
    n = query(ref, "select sum(tokens)::bigint as n from (select distinct step, domain, tokens from expert_load "
                   "where layer = (select min(layer) from expert_load))", ("expert_load",)).n.iloc[0]
    return None if pd.isna(n) else int(n)


@cached
def loads_by_step(ref: RunRef) -> pd.DataFrame:
    """step, layer (label, e.g. 'layer 3' or 'MTP 0'), expert, load: top-k assignments per batch or step."""
    return _labelled(ref, query(ref, "select step, layer, expert, sum(count)::bigint as load from expert_load "
                                     "group by all order by step, layer, expert", ("expert_load",)))


@cached
def total_loads(ref: RunRef, last_steps: int | None = None) -> pd.DataFrame:
    """layer, expert, load summed over the run, or over its last `last_steps` steps."""
    _count("last_steps", last_steps, 0)  # 0: the whole run, as None (compute.last_steps); -1 summed no step
    where = "where step > (select max(step) from expert_load) - ?" if last_steps else ""
    return _labelled(ref, query(ref, f"select layer, expert, sum(count)::bigint as load from expert_load {where} "
                                     "group by all order by all", ("expert_load",),
                                [int(last_steps)] if last_steps else None))


@cached
def pass_count(ref: RunRef) -> int:
    """Forward passes (steps of expert_load) in the run (cached: the Serving page asks on every rerun, and
    counting 19,000 passes' 286 M rows takes a second)."""
    return int(query(ref, "select count(distinct step) as n from expert_load", ("expert_load",)).n.iloc[0])


def pass_stride(n: int, max_passes: int = MAX_PASSES) -> int:
    """Every how many passes `pass_loads` reads, for a run of `n` passes."""
    _count("max_passes", max_passes)  # 0 divided by zero; a negative one read every pass, past the bound
    return max(1, -(-n // max_passes))


@cached
def pass_loads(ref: RunRef, max_passes: int = MAX_PASSES) -> tuple[np.ndarray, list[int], np.ndarray]:
    """(steps [S], layers [L], loads [S, L, E]): each forward pass's (a recorded run: each batch's)
    top-k assignments per expert of the model's MoE layers (MTP routers left out: servers place them
    apart). A run with more than `max_passes` passes is read every k-th pass (the smallest k that fits)."""
    _count("max_passes", max_passes)  # before the run is read
    n_layers = (ref.info.get("model_args") or {}).get("n_layers")
    params = [int(n_layers)] if n_layers else []
    # rows are summed by the bincount below (a recorded run has one row per domain), not in SQL; each
    # row's cell of [S, L, E] is numbered in SQL, joined to small tables of the passes read and the
    # layers. Read into a DataFrame, sorted (np.unique) and searched, the 30 M rows of 2,000 DeepSeek-V3
    # passes took 6 s of the Serving page's 8; and a sampled run (every k-th of 19,000 passes) was
    # sampled by a window over every row, three times: 8 s.
    with _cursor(ref, ("expert_load",)) as con:
        every_step = con.execute("select distinct step from expert_load order by step").fetchnumpy()["step"]
        _numbered(con, "_pass_at", "step", every_step[::pass_stride(len(every_step), max_passes)])
        rows, where = "from expert_load e join _pass_at p using (step)", " where e.layer < ?" if n_layers else ""
        steps = con.execute(f"select distinct step {rows}{where} order by step", params).fetchnumpy()["step"]
        _numbered(con, "_pass_at", "step", steps)  # the passes with rows in the model's layers, numbered anew
        lt = con.execute(f"select layer, max(expert) as top {rows}{where} group by layer order by layer",
                         params).fetchnumpy()
        layers = [int(x) for x in lt["layer"]]
        _numbered(con, "_layer_at", "layer", layers)
        E = int(max((ref.info.get("model_args") or {}).get("n_routed_experts") or 0,
                    lt["top"].max() + 1 if len(layers) else 0))
        c = con.execute(f"select (p.i * {len(layers)} + l.i) * {E} + e.expert as cell, e.count as load {rows} "
                        f"join _layer_at l using (layer){where}", params).fetchnumpy()
    out = np.bincount(np.asarray(c["cell"], np.int64), weights=np.asarray(c["load"], np.float64),
                      minlength=len(steps) * len(layers) * E)
    return np.asarray(steps, np.int64), layers, np.rint(out).astype(np.int64).reshape(len(steps), len(layers), E)


def _numbered(con, name: str, column: str, values) -> None:
    """A temporary table `name` (`column`, i): the values and their index, replacing any before."""
    values = [int(v) for v in values]
    con.execute(f"create or replace temp table {name} as select unnest(?::BIGINT[]) as {column}, "
                "unnest(?::BIGINT[]) as i", [values, list(range(len(values)))])


@cached
def placement_maps(ref: RunRef) -> tuple[dict[int, np.ndarray], int]:
    """({layer: physical-to-logical map [P]}, GPUs) of the serving engine's placement (`placement`
    table, written by `dsv3-probe import sglang` from a dump that carries one); ({}, None) without one."""
    from analyses.placement import PLACEMENT_ROWS
    from analyses.placement.replay import maps_from_rows

    if not has_table(ref, "placement"):
        return {}, None
    return maps_from_rows(query(ref, PLACEMENT_ROWS, ("placement",)))


@cached
def bias(ref: RunRef) -> pd.DataFrame:
    """layer, expert, bias: the balancing bias at the run's last step (`router_bias`: a recorded
    run's is its checkpoint's). Runs recorded before that table existed: read from the checkpoint's
    safetensors header, without torch. Empty when unavailable."""
    if table_files(ref, "router_bias"):
        return _labelled(ref, query(ref, "select layer, expert, bias::double as bias from router_bias where step = "
                                         "(select max(step) from router_bias) order by all", ("router_bias",)))
    ck = Path((ref.info.get("checkpoint") or {}).get("path", "") or "/nonexistent")
    rows = []
    for f in sorted(ck.glob("*.safetensors")) if ck.is_dir() else []:
        for name, arr in safetensors_vectors(f, "e_score_correction_bias").items():
            parts = name.split(".")
            layer = int(parts[parts.index("layers") + 1]) if "layers" in parts else -1
            rows += [{"layer": layer_label(ref, layer), "expert": i, "bias": float(v)} for i, v in enumerate(arr)]
    return pd.DataFrame(rows, columns=["layer", "expert", "bias"])


# ------------------------------------------------------------------------------ specialisation
@cached
def domain_expert(ref: RunRef) -> pd.DataFrame:
    """layer, domain, expert, count: top-k assignments (probe runs)."""
    return _labelled(ref, query(ref, "select layer, domain, expert, sum(count)::bigint as count from expert_load "
                                     "group by all order by all", ("expert_load",)))


@cached
def _seq_cap(ref: RunRef, tokens: int | None = None) -> int:
    """The per-token views' bound on seq_id: past the windows that hold the run's first `tokens`
    (default SAMPLE_TOKENS) tokens (every window of a smaller run: 2**62), counted in the tokens
    table. (SAMPLE_TOKENS / --seq-len windows was assumed before, which read 22% of an SGLang import,
    one sequence per decode token, while its pages said they showed all of it; found by a review.)"""
    budget = int(SAMPLE_TOKENS if tokens is None else tokens)
    df = query(ref, f"""select min(seq_id) as last from (
                          select seq_id, sum(count(*)) over (order by seq_id) as upto from tokens group by seq_id)
                        where upto >= {budget}""", ("tokens",))
    last = df["last"].iloc[0] if len(df) else None
    return (2**62) if last is None or pd.isna(last) else int(last) + 1


@cached
def expert_top_tokens(ref: RunRef, layer: int, expert: int, limit: int = 20) -> pd.DataFrame:
    """token_id, n (times `expert` was among the token's top-k), total (occurrences of the token),
    share = n / total: over the first SAMPLE_TOKENS tokens."""
    _count("limit", limit, 0)
    cap = _seq_cap(ref)
    return query(ref, """
        with r as (select seq_id, pos, list_contains(expert_ids, ?::usmallint) as hit from routing
                   where layer = ? and seq_id < ?),
             j as (select t.token_id, r.hit from r join tokens t using (seq_id, pos))
        select token_id, count(*) filter (where hit) as n, count(*) as total,
               n / total as share
        from j group by token_id having n > 0 order by n desc, token_id limit ?""",
                 ("routing", "tokens"), [expert, layer, cap, limit])


@cached
def token_top1(ref: RunRef, layer: int) -> pd.DataFrame:
    """token_id, e1 (top-1 expert at `layer`) of the first SAMPLE_TOKENS tokens."""
    return query(ref, """
        select t.token_id, r.expert_ids[1]::int as e1
        from (select seq_id, pos, expert_ids from routing where layer = ? and seq_id < ?) r
        join tokens t using (seq_id, pos)""", ("routing", "tokens"), [layer, _seq_cap(ref)])


@cached
def token_snippets(ref: RunRef, layer: int, expert: int, token_id: int, n: int = 6, width: int = 8) -> pd.DataFrame:
    """Up to `n` places where `token_id` was routed to `expert` (in its top-k): seq_id, pos, domain, and the
    token ids of the window around it (`ids`, `centre` = index of the token in `ids`)."""
    _count("n", n, 0)
    _count("width", width, 0)
    cap = _seq_cap(ref)
    hits = query(ref, """
        select r.seq_id, r.pos, t.domain from routing r join tokens t using (seq_id, pos)
        where r.layer = ? and r.seq_id < ? and list_contains(r.expert_ids, ?::usmallint) and t.token_id = ?
        order by r.seq_id, r.pos limit ?""", ("routing", "tokens"), [layer, cap, expert, token_id, n])
    if hits.empty:
        return hits.assign(ids=[], centre=[])
    ctx = _snippet_context(ref, hits, width)
    return hits.merge(ctx, left_on=["seq_id", "pos"], right_on=["seq_id", "hit"]).drop(columns="hit")


def _snippet_context(ref: RunRef, hits: pd.DataFrame, width: int) -> pd.DataFrame:
    conds = " or ".join(f"(seq_id = {int(s)} and pos between {int(p) - width} and {int(p) + width})"
                        for s, p in zip(hits.seq_id, hits.pos))
    toks = query(ref, f"select seq_id, pos, token_id from tokens where {conds} order by seq_id, pos", ("tokens",))
    rows = []
    for s, p in zip(hits.seq_id, hits.pos):
        w = toks[(toks.seq_id == s) & (toks.pos.between(p - width, p + width))]
        rows.append({"seq_id": s, "hit": p, "ids": w.token_id.tolist(), "centre": int((w.pos < p).sum())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ tokens
@cached
def documents(ref: RunRef) -> pd.DataFrame:
    """doc_id, domain, tokens, first seq_id, mean loss: one row per document."""
    return query(ref, "select doc_id, any_value(domain) as domain, count(*) as tokens, min(seq_id) as seq_lo, "
                      "max(seq_id) as seq_hi, avg(loss) as mean_loss from tokens group by doc_id "
                      "order by seq_lo", ("tokens",))


@cached
def doc_tokens(ref: RunRef, doc_id: str, seq_lo: int, seq_hi: int, max_tokens: int = 1500) -> pd.DataFrame:
    """The document's tokens in order (seq_id, pos, doc_pos, token_id, loss), at most max_tokens."""
    _count("max_tokens", max_tokens, 0)
    return query(ref, "select seq_id, pos, doc_pos, token_id, loss from tokens where seq_id between ? and ? "
                      "and doc_id = ? order by doc_pos limit ?", ("tokens",), [seq_lo, seq_hi, doc_id, max_tokens])


@cached
def doc_routing(ref: RunRef, seq_lo: int, seq_hi: int, max_pos: int | None = None) -> pd.DataFrame:
    """Routing rows (seq_id, pos, layer, expert_ids, expert_weights, margin_1) of windows seq_lo..seq_hi."""
    return query(ref, "select seq_id, pos, layer, expert_ids, expert_weights, margin_1 from routing "
                      "where seq_id between ? and ? order by seq_id, pos, layer", ("routing",), [seq_lo, seq_hi])


# ------------------------------------------------------------------------------ co-activation, flow
@cached
def layer_topk(ref: RunRef, layer: int) -> np.ndarray:
    """[T, K] expert ids of `layer` over the first SAMPLE_TOKENS tokens (uint16)."""
    with _cursor(ref, ("routing",)) as con:
        tbl = con.sql("select expert_ids from routing where layer = ? and seq_id < ?",
                      params=[layer, _seq_cap(ref)]).to_arrow_table()
    col = tbl.column(0).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.uint16)
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(col), -1)


# ------------------------------------------------------------------------------ KV, MTP, ablations
@cached
def kv_stats(ref: RunRef) -> pd.DataFrame:
    return query(ref, "select * exclude (channel_mean, channel_var) from kv_stats order by layer", ("kv_stats",))


@cached
def kv_spectrum(ref: RunRef) -> pd.DataFrame:
    return query(ref, "select layer, component, eigenvalue, eigenvalue / sum(eigenvalue) over (partition by layer) "
                      "as share from kv_spectrum order by layer, component", ("kv_spectrum",))


@cached
def mtp_by_domain(ref: RunRef) -> pd.DataFrame:
    """domain, positions, agree (share), mtp_loss (mean), accuracy (mtp_top1 == target)."""
    return query(ref, "select domain, count(*) as positions, avg(agree::int) as agree, avg(mtp_loss) as mtp_loss, "
                      "avg((mtp_top1 = target)::int) as accuracy from mtp group by domain order by domain", ("mtp",))


def mtp_bucket_size(ref: RunRef, buckets: int = 16) -> int:
    """Positions in each of `mtp_by_position`'s buckets: the run's window cut into `buckets`."""
    _count("buckets", buckets)  # 0 divided by zero; a negative count made one bucket a position
    seq_len = int((ref.info.get("options") or {}).get("seq_len") or 512)
    return max(1, -(-seq_len // buckets))


@cached
def mtp_by_position(ref: RunRef, buckets: int = 16) -> pd.DataFrame:
    """domain, bucket (start position), positions, agree: agreement by position in the window."""
    size = mtp_bucket_size(ref, buckets)
    return query(ref, "select domain, (pos // ?) * ? as bucket, count(*) as positions, avg(agree::int) as agree "
                      "from mtp group by all order by domain, bucket", ("mtp",), [size, size])


@cached
def spec_by_domain(ref: RunRef) -> pd.DataFrame:
    """`analyses.metrics.spec_by_domain` of the run: domain, prompts, proposed, accepted, acceptance,
    mean_length, tokens_per_forward (speculative decoding with MTP drafts, `dsv3-probe spec`)."""
    with _cursor(ref, ("spec_decode",)) as con:
        return speculative.spec_by_domain(con)


@cached
def spec_by_position(ref: RunRef, size: int = 1) -> pd.DataFrame:
    """`analyses.metrics.spec_by_position`: domain, position (the first of its bucket of `size` generated
    positions), proposed, acceptance."""
    with _cursor(ref, ("spec_drafts",)) as con:
        return speculative.spec_by_position(con, size)


@cached
def ablations(ref: RunRef) -> pd.DataFrame:
    """The `ablations` table, with `part`: the part file each row came from (one per command: the
    report, a sweep, a notebook may each evaluate the same names on other tokens)."""
    return _with_part(ref, "ablations")


def _with_part(ref: RunRef, table: str) -> pd.DataFrame:
    """Every row of a result table that commands write one part file each (ablations, steering),
    with `part`: the name of the file it came from."""
    files = table_files(ref, table)
    if not files:
        raise missing_table(ref, table)
    return query(ref, "select *, parse_filename(filename, true) as part from read_parquet("
                      f"[{', '.join(_quote(str(f)) for f in files)}], filename = true, union_by_name = true)", ())


@cached
def expert_importance(ref: RunRef) -> pd.DataFrame:
    """The `expert_importance` table of `python -m analyses.importance` (one row per layer, expert, domain)."""
    return query(ref, "select * from expert_importance order by layer, expert, domain", ("expert_importance",))


@cached
def steering(ref: RunRef) -> pd.DataFrame:
    """The `steering` table of `python -m analyses.steer` (loss rows per domain, generation rows per
    prompt), with `part`: the part file each row came from (one per command; two commands may reuse
    a steering's name with other options)."""
    return _with_part(ref, "steering")
