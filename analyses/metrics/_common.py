"""Input checks and run helpers shared by the metric modules (private)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path

import numpy as np


class MetricsError(ValueError):
    """Bad input to a metric (the message is one line and names the problem)."""


def as_loads(load, name: str = "load") -> np.ndarray:
    """A 1-D float64 vector of non-negative per-expert loads (at least one expert)."""
    x = np.asarray(load, dtype=np.float64)
    if x.ndim != 1:
        raise MetricsError(f"{name}: expected a 1-D vector of per-expert loads, got shape {x.shape}")
    if len(x) == 0:
        raise MetricsError(f"{name}: empty vector (no experts)")
    if not np.isfinite(x).all():
        raise MetricsError(f"{name}: loads must be finite")
    if (x < 0).any():
        raise MetricsError(f"{name}: negative load {x.min():g} (loads are counts)")
    return x


def as_ids(ids, name: str = "expert_ids") -> np.ndarray:
    """[T, K] integer expert ids (a 1-D vector is read as K = 1; a run's list column, one array of K ids a
    token as `run.df("routing").expert_ids` holds them, as its rows)."""
    a = np.asarray(ids)
    if a.dtype == object and a.ndim == 1 and a.size:
        # NOTE: a routing frame's expert_ids column was numpy's 'The truth value of an array with more than
        # one element is ambiguous' (a tour)
        rows = [np.asarray(r) for r in a]
        if len({r.shape for r in rows}) > 1:
            # a missing row (None, NaN) among arrays: the len() below was Python's 'len() of unsized object'
            if (i := next((i for i, r in enumerate(rows) if r.ndim == 0), None)) is not None:
                raise MetricsError(f"{name}: row {i} is {a[i]!r}, not a row of expert ids: expected [tokens, K] "
                                   "expert ids")
            raise MetricsError(f"{name}: rows of different lengths ({sorted({len(r) for r in rows})[:4]}): expected "
                               "[tokens, K] expert ids")
        a = np.stack(rows)
    if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number)):  # strings: numpy's 'remainder'
        raise MetricsError(f"{name}: expert ids must be integers, got {a.dtype} values")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise MetricsError(f"{name}: expected [tokens, K] expert ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise MetricsError(f"{name}: expert ids must be integers")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise MetricsError(f"{name}: negative expert id {a.min()}")
    return a


def table_fits(cells: int, rows: int) -> bool:
    """Whether a dense table of `cells` counts (or a lookup indexed by values below `cells`) is worth making for
    `rows` rows: no larger than a few columns of them. Else the counts are taken sparse, by a sort."""
    return cells <= 4 * rows + 4096


def small_codes(x: np.ndarray) -> bool:
    """Whether the 1-D array `x` holds non-negative integers small enough to index a table (`table_fits`)."""
    return x.dtype.kind in "iu" and bool(x.size) and x.min() >= 0 and table_fits(int(x.max()) + 1, x.size)


def whole_count(value, name: str, least: int = 1, why: str = "", error: type[Exception] = MetricsError) -> int:
    """`value` as an int of at least `least`: a whole number (3, numpy's 3, 3.0). A count or size
    argument outside its meaning was taken without a word (top=0 gave every expert an empty list of
    ids, top=-1 dropped its last id, min_count=2.5 read as 2 in SQL and 3 in numpy) or failed deep in
    numpy or DuckDB ('LIMIT/OFFSET cannot be negative'); refused here by name as `error` (`why` says
    what it counts; analyses.importance passes its own error)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real) or not float(value).is_integer() \
            or value < least:
        raise error(f"{name}={value!r}: expected a whole number >= {least}{why}")
    return int(value)


def positive_number(value, name: str, why: str = "") -> float:
    """`value` as a float > 0 (a threshold): near=-1 or 0 made every share 0 without a word, NaN failed
    in DuckDB ('Referenced column "nan" not found') and a string in float()."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise MetricsError(f"{name}={value!r}: expected a finite number > 0{why}")
    return float(value)


def n_experts_of(ids: np.ndarray, n_experts: int | None, name: str = "expert_ids") -> int:
    if n_experts is None:
        return int(ids.max()) + 1 if ids.size else 0
    n_experts = whole_count(n_experts, "n_experts")
    if ids.size and ids.max() >= n_experts:
        raise MetricsError(f"{name}: expert id {ids.max()} out of range for {n_experts} experts")
    return int(n_experts)


def same_length(*arrays, names: str) -> None:
    n = {len(a) for a in arrays}
    if len(n) > 1:
        raise MetricsError(f"{names}: lengths differ ({', '.join(str(len(a)) for a in arrays)})")


def nan_if(cond: bool, value) -> float:
    return float("nan") if cond else float(value)


def counted(n: int, noun: str) -> str:
    """'1 token', '2 tokens', '1,280 tokens': a count with its noun in the number it takes ('1 tokens
    matched' and 'mean of 1 seeds' read in the report, '1 domain(s)' in a metric's error; tours)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# what cuts a corpus into windows: run.json's options key -> how its flag says a value
WINDOW_FLAGS = {"seq_len": lambda v: f"--seq-len {v}", "order": lambda v: f"--order {v}",
                "max_tokens": lambda v: "no --max-tokens" if v is None else f"--max-tokens {v}",
                "add_bos": lambda v: "--bos" if v else "--no-bos"}


def window_flag(key: str, value) -> str:
    """A window option as its flag says it: '--seq-len 128', '--no-bos' (`WINDOW_FLAGS`)."""
    return WINDOW_FLAGS[key](value)


def listed(names, most: int | None = None) -> str:
    """'a', 'a and b', 'a, b and c'; past `most` names (at least 1), 'a, b, c, d and 3 more': names in a
    sentence. No names: a ValueError, as a sentence cannot list nothing (it was an IndexError)."""
    names = list(names)
    if not names:
        raise ValueError("listed: no names to list")
    if most is not None and len(names) > max(most, 1):
        most = max(most, 1)  # most=0 gave ' and 3 more', no name before it
        return f"{', '.join(names[:most])} and {len(names) - most} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# ------------------------------------------------------------------------------ runs
def as_run(run):
    """A `probe.Run`, from a Run or a run directory path; anything else is a MetricsError naming what it
    got (a plain TypeError before, where every other bad input to a metric is a MetricsError; a tour)."""
    if isinstance(run, (str, Path)):
        import probe

        return probe.open_run(run)
    if not all(hasattr(run, a) for a in ("files", "info", "sql")):  # a Run, or something that reads like one
        raise MetricsError(f"run: expected a run directory's path or a probe.Run (probe.open_run), got "
                           f"{type(run).__name__}{_short_repr(run)}")
    return run


def _short_repr(value, most: int = 40) -> str:
    """' VALUE' where its repr is short (' 42', ' None', ' {}'), else nothing (a DataFrame's is pages)."""
    r = repr(value)
    return f" {r}" if len(r) <= most and "\n" not in r else ""


def model_arg(run, key: str, default=None):
    return (run.info.get("model_args") or {}).get(key, default)


def n_experts_of_run(run, table: str = "expert_load") -> int:
    """Routed experts E: run.json's model args, else the largest id seen + 1."""
    e = model_arg(run, "n_routed_experts")
    if e:
        return int(e)
    not_lost(run, table)
    if table == "expert_load":
        m = run.sql("select max(expert) from expert_load").fetchall()[0][0]
    else:
        m = run.sql("select max(e) from (select unnest(expert_ids) e from routing)").fetchall()[0][0]
    return int(m) + 1 if m is not None else 0


# the words of a cause below that already say how to record the table (a caller's own advice is then left out)
RECORD_AGAIN = "record it again with"
# the record option (run.json's "options") whose value leaves a table out, and what to say then
UNRECORDED = {("routing", "router_logits", "none"): "the run was recorded with --router-logits none, which keeps no "
                                                    f"per-token routing; {RECORD_AGAIN} --router-logits topk "
                                                    "(the default)",
              ("mtp", "mtp", False): "the run was recorded with --no-mtp",
              ("kv_stats", "kv_stats", False): "the run was recorded with --no-kv-stats",
              ("kv_spectrum", "kv_stats", False): "the run was recorded with --no-kv-stats"}
# the flag that may have left a table out, guessed only where run.json holds no record options to say
_MAYBE = {"routing": "--router-logits none", "kv_stats": "--no-kv-stats", "kv_spectrum": "--no-kv-stats",
          "mtp": "--no-mtp, or a checkpoint without an MTP layer"}
# tables the record writes whole when the run completes (probe/record_tables.py's FINAL_TABLES), not batch by batch
AT_COMPLETION = ("kv_stats", "kv_spectrum")


def _recorded_cause(info: dict, table: str) -> str | None:
    """Why run.json says a run has no `table`: an import (a dump of loads per forward pass holds no
    per-token rows), the record flag that left it out, a record not yet complete (the tables it writes
    at the end), a checkpoint without MTP weights; else None. `info["status"]`: the run's status now."""
    o = info.get("options") or {}
    src = info.get("source") or {}
    if src.get("mode") in ("stat", "per_pass") and table in ("routing", "tokens"):
        return (f"imported from a {src.get('name')} {src.get('mode')} dump, which holds loads per forward pass "
                "only; the per_token mode records routing")
    if info.get("kind") == "import":
        return f"an import ({src.get('name', '?')}) holds no {table} table"
    for (t, flag, value), why in UNRECORDED.items():
        if t == table and o.get(flag, "unset") == value:
            return why
    if table in AT_COMPLETION and o.get("kv_stats") and info.get("status") in ("running", "interrupted"):
        # an interrupted record's kv_stats read 'the table was not recorded' (a tour): its sums wait in _progress
        return (f"the record is still running, and writes {table} when it completes" if info["status"] == "running"
                else f"the run was interrupted, and the record writes {table} only when the run completes: continue "
                "it with `dsv3-probe record ... --resume`")
    if table == "mtp" and info.get("mtp_module") is False:
        return "the checkpoint has no MTP weights"
    return None


def unrecorded_why(run, table: str) -> str:
    """Why a run has no `table`, in its own terms (read from its run.json); else 'not recorded'.
    ('the table was not recorded' left a user of --router-logits none to guess which, a tour.)"""
    return _recorded_cause(_info_now(run), table) or f"the {table} table was not recorded"


def _info_now(run) -> dict:
    """The run's run.json with its status now: a killed record's run.json still says "running", while
    no job holds it (`probe.Run.status`, a dashboard `RunRef`'s: "interrupted")."""
    info = getattr(run, "info", None) or {}
    status = getattr(run, "status", None)
    return info | {"status": status} if isinstance(status, str) and status else info


def not_lost(run, table: str) -> None:
    """Raise the RunError that `probe.Run` raises reading a table a complete run has lost (its folder,
    or committed part files: one rank's output; `probe.run.lost_tables`), naming the run, the table
    and the missing parts. A metric's query of it was DuckDB's error wrapping that line, and a lost
    folder read as a table 'not recorded' (a tour)."""
    check = getattr(run, "check_not_lost", None)  # a Run-like object without it loses none
    if check is not None:
        check(table)


def need_rows(run, table: str) -> None:
    """Raise when the run has no rows in `table` (an empty run or a table not recorded), saying why where
    run.json does: it guessed '--router-logits none?' where run.json named the cause (a tour); a table the
    run has lost is `not_lost`'s RunError."""
    not_lost(run, table)
    if not run.files(table):
        info = _info_now(run)
        why = _recorded_cause(info, table)
        if why is None:
            guess = table in _MAYBE and not info.get("options")  # no record options to tell: the likely flag
            why = "empty run, or not recorded" + (f": recorded with {_MAYBE[table]}?" if guess else "")
        raise MetricsError(f"{run.path}: run has no {table} table ({why})")
    n = run.sql(f"select count(*) from {table}").fetchall()[0][0]
    if n == 0:
        raise MetricsError(f"{run.path}: run's {table} table is empty")


def layer_number(layer, name: str = "layer", error: type[Exception] = MetricsError) -> int:
    """`layer` as an int: a whole number (2, numpy's 2, 2.0). int() took 2.5 for layer 2 and '2' for
    a number, without a word. Refused as `error` (analyses.importance passes its own)."""
    if isinstance(layer, (bool, str, bytes)) or not isinstance(layer, numbers.Real) or not float(layer).is_integer():
        raise error(f"{name}={layer!r}: expected a whole layer number")
    return int(layer)


def layer_numbers(layers, name: str = "layers") -> list[int]:
    """`layers` as a list of ints (`layer_number`); one number alone (layers=2: 'int' object is not
    iterable) or a string is refused, naming the list form."""
    if isinstance(layers, (str, bytes, numbers.Number)) or not isinstance(layers, Iterable):
        raise MetricsError(f"{name}={layers!r}: expected a list of layer numbers, e.g. [1, 3]")
    return [layer_number(x, name) for x in layers]


def recorded_layers(run, table: str = "routing") -> list[int]:
    """The layers `table` of `run` has rows of, in order (a run's MoE layers, for routing)."""
    return [int(r[0]) for r in run.sql(f"select distinct layer from {table} order by 1").fetchall()]


def check_layer(run, layer, table: str = "routing") -> int:
    n = layer_number(layer)
    not_lost(run, table)
    layers = recorded_layers(run, table)
    if n not in layers:
        raise MetricsError(f"layer {layer} has no {table} rows (MoE layers recorded: {layers})")
    return n
