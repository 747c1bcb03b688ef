"""Run directories: streaming Parquet part files, atomic commits, resume, and reading a run back.

Each rank streams every table into an open temporary Parquet file, one row group per flush, so
memory stays bounded. At a commit point the files are closed and renamed to their final names,

    TABLE/r{rank:03d}-b{first:07d}-{last:07d}.parquet      (global batches first..last)

and then `_progress/r{rank:03d}.json` is replaced atomically, recording the last committed batch
and the streaming accumulators (an `.npz` beside it) and every part committed with its rows.
Whatever is not committed is temporary: a killed run loses at most the batches since the last
commit, and `--resume` checks that the committed parts are intact (`check_committed`) and deletes
any part file past the recorded progress before continuing, so no row is duplicated or missing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in truncate_after
import pyarrow.parquet as pq

from .errors import first_line
from .out_paths import os_refusal
from .schema import TABLES

RUN_JSON = "run.json"
PROGRESS = "_progress"


class RunError(ValueError):
    """A run directory we cannot use (message names it)."""


@contextmanager
def replacing(path: str | Path):
    """Yields a temporary name beside `path` to write the whole file to; it replaces `path` when the
    block ends, and is deleted if the block fails (`path` is then as it was)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(tmp: str | Path, path: str | Path) -> None:
    """Put the complete directory `tmp` in place of the directory `path` (or where there is none): the old
    one is renamed aside first and deleted only once the new one is in place, so a stop at any moment
    leaves `path` whole, old or new (deleting it first left nothing while a large copy was deleted, if
    the stop came then), or at worst the old one under a hidden name beside it."""
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)  # the old one back, as it was
        raise
    shutil.rmtree(old, ignore_errors=True)


WRITER_LOCK = ".writer.lock"  # held by the one job that records into a run, for as long as it runs


@contextmanager
def writer_lock(run: Path):
    """Make `run` (if needed) and hold its writer lock for the block, refused at once (a RunError)
    while another process holds it; the process's end releases it too, however it ends. Two records
    resuming one run at once shared their temporary part names and committed each other's rows (a
    review): the second is refused. No lock where the file system has none."""
    run.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        try:
            held.enter_context(_locked(run / WRITER_LOCK, wait=False))
        except BlockingIOError:
            raise RunError(f"{run}: another process is recording into this run (it holds {WRITER_LOCK}); wait for "
                           "it to end, or write elsewhere") from None
        yield


def recorder_alive(run: str | Path) -> bool | None:
    """Whether a record job holds `run`'s writer lock now (a record that was killed holds none, and its
    run.json still says "running"); None when this process cannot tell: the lock file cannot be opened
    or the file system has no locks. Asked through a read-only descriptor, so that a run on a read-only
    mount or another user's is asked too (opened for writing it failed, and read as "killed"; a review)."""
    lock = Path(run) / WRITER_LOCK
    if not lock.is_file():
        return False
    try:
        import fcntl

        fd = os.open(lock, os.O_RDONLY)
    except (ImportError, OSError):  # no flock on this system, or a lock file this process cannot open
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases a lock it took


def stopped_running(run: str | Path, info: dict | None) -> bool:
    """Whether `run` is a record or training run whose run.json says "running" while no job holds its
    writer lock (record and train hold it while they run; no other job writes "running"): one killed
    (SIGKILL, a lost machine) before it could mark itself interrupted. False where this process cannot
    tell (`recorder_alive` None)."""
    return (info is not None and info.get("status") == "running" and info.get("kind") in (None, "train")
            and recorder_alive(run) is False)


def run_status(run: str | Path, info: dict | None) -> str:
    """run.json's status as it stands: "interrupted" for a run that `stopped_running` (its run.json
    still says "running": the dashboard and `probe.open_run(...).status` showed such a run as running
    for good; a tour), else run.json's own status ("unknown" where it has none)."""
    if stopped_running(run, info):
        return "interrupted"
    return str((info or {}).get("status", "unknown"))


def refuse_running(run: str | Path, info: dict | None, error: type[Exception]) -> None:
    """A run still being written is refused (an `error`): the jobs that read a run (ablate, importance,
    steer, report) and spec, which also writes its tables into one. One whose record or training was
    killed (`stopped_running`) says how to finish it instead of "still being recorded" for good (a review)."""
    if info is None or info.get("status") != "running":
        return
    kind = info.get("kind")  # None: a record run; record and train hold the writer lock while they run
    if stopped_running(run, info):
        job = "record" if kind is None else "training"
        raise error(f"{run}: its {job} stopped before the end (run.json says running, and no {job} job "
                    f"holds the run): finish it with the {'record' if kind is None else 'python -m train'} "
                    "command that wrote it plus --resume")
    raise error(f"{run}: the run is still being {'recorded' if kind is None else 'written'} (status running)")


@contextmanager
def _locked(path: Path, wait: bool = True):
    """An exclusive lock on the file `path` (made if missing), held for the block: waited for, or
    with `wait` False a BlockingIOError at once while another process holds it. No lock where the
    file system has none (some network mounts)."""
    fd = None
    try:
        import fcntl

        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)  # as open() makes files: not executable
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except (ImportError, OSError):
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextmanager
def table_lock(run: str | Path, table: str):
    """An exclusive lock on `run`'s `table` for a block: for jobs whose write also rewrites other
    parts of the table (analyses.importance's newest-measurement rule), which two at once deleted
    under each other (a review). Not the run.json lock: the block takes that one itself. Where the
    run cannot be made, no lock: the write in the block says why, naming the run."""
    try:
        Path(run).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    with _locked(Path(run) / f".{table}.lock"):
        yield


@contextmanager
def updating_run_json(run: str | Path, new=None):
    """Yields run.json's contents (or `new()` where there is none yet) to change in place, and writes
    them back whole, under an exclusive lock beside it: the jobs that add their part to a finished
    run (ablate, steer, importance, spec) may finish at the same moment, and a read-change-write
    without the lock lost the other's entry (found by a review: 112 of 300 in a test of two writers).
    No lock where the file system has none (some network mounts)."""
    run = Path(run)
    with _locked(run / ".run.json.lock"):
        info = read_run_json(run) if (run / RUN_JSON).exists() or new is None else new()
        yield info
        write_json_atomic(run / RUN_JSON, info)


def replace_keeping_others(on_disk: dict, ours: dict, session_keys) -> None:
    """Make run.json's contents `on_disk` (in place, under `updating_run_json`) a job's own record
    `ours`, keeping what other commands noted there: their keys (spec's summary, ablate's, importance's
    and steer's parts), but not `session_keys`, what the job itself writes at an end (a later session
    writes them again), and their tables after the job's own. A resumed record and a training run
    rewrite run.json so; each dropped the others' entries before (reviews)."""
    theirs = {k: v for k, v in on_disk.items() if k not in ours and k not in session_keys}
    tables = list(ours.get("tables") or [])
    tables += [t for t in on_disk.get("tables") or [] if t not in tables]
    on_disk.clear()
    on_disk.update(ours, **theirs, tables=tables)


def write_json_atomic(path: Path, obj: Any) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def part_name(key: dict) -> str:
    """The name of a result part: a hash of `key` (what was measured and how)."""
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_result_part(out: str | Path, table: str, df, key: dict, meta: dict, parts: str, note: dict,
                      args=None) -> Path:
    """Write `df` (rows of TABLES[table]) as one part file of `out/<table>/`, named by a hash of
    `key` (what was measured and how: repeating a command replaces its own part), under a temporary
    name and renamed; then note it in run.json: `table` in "tables", `meta | note | {"written"}`
    under `info[parts][name]`. A directory without run.json becomes a run holding only this table
    (kind = table). What the analysis jobs (ablate, importance, steer) write their results with."""
    out = Path(out)
    arrow = pa.Table.from_pandas(df, schema=TABLES[table], preserve_index=False)
    name = part_name(key)
    d = out / table
    with os_refusal(f"{out}: cannot write the {table} table there", RunError):  # the jobs check --out up front
        d.mkdir(parents=True, exist_ok=True)
        with replacing(d / f"{name}.parquet") as tmp:
            pq.write_table(arrow, tmp, compression="zstd")
    note_result_part(out, table, parts, name, meta | note, args)
    return d / f"{name}.parquet"


def note_result_part(out: str | Path, table: str, parts: str, name: str, entry: dict, args=None,
                     listed: bool = True) -> None:
    """Note part `name` in run.json (under its lock): `entry | {"written"}` under `info[parts][name]`,
    and `table` in "tables" unless not `listed` (no part file yet: a table listed without one reads
    as lost, probe.run.lost_tables). A directory without run.json becomes a run of kind `table`
    with `entry`'s checkpoint, corpus, tokenizer and options (`given_tokenizer`)."""
    def new() -> dict:
        return {"status": "complete", "format": 1, "kind": table, "checkpoint": entry["checkpoint"],
                "corpus": entry["corpus"], "tokenizer": entry.get("tokenizer"),
                "model_args": args.to_dict() if args is not None else None,
                "options": entry["options"] | {"tokenizer": given_tokenizer(entry)}, "tables": [],
                "started": time.time()}

    with updating_run_json(out, new) as info:
        if listed and table not in info.setdefault("tables", []):
            info["tables"].append(table)
        info.setdefault(parts, {})[name] = entry | {"written": time.time()}


def given_tokenizer(entry: dict) -> str | None:
    """The tokenizer a result part's job was given with --tokenizer (its path, resolved), None where it
    took the checkpoint's own (`entry`: `analyses.ablate.inputs.job_meta`'s): a run an --out makes keeps
    it in its options, as a record does, for `probe.job.run_tokenizer` (the jobs, the report and the
    dashboard on the run took the checkpoint's; a review). A --tokenizer naming the checkpoint's own file
    reads as that file: a run on it follows the checkpoint."""
    tok, ckpt = (entry.get("tokenizer") or {}).get("path"), (entry.get("checkpoint") or {}).get("path")
    if not tok or not ckpt:
        return None
    return None if Path(tok) == (Path(ckpt) / "tokenizer.json").resolve() else tok


def read_run_json(run: Path) -> dict:
    p = Path(run) / RUN_JSON
    try:
        info = json.loads(p.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise RunError(f"{run}: not a run directory (no {RUN_JSON})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise RunError(f"{p}: unreadable ({e})") from None
    if not isinstance(info, dict):  # [] or null opened, then every read was an AttributeError (a review)
        raise RunError(f"{p}: unreadable (a JSON {type(info).__name__}, not an object)")
    for key, value in info.items():  # a field of another type: an AttributeError deep in a reader before
        want = RUN_JSON_TYPES.get(key)
        if want is not None and value is not None and not isinstance(value, want):
            raise RunError(f"{p}: field {key!r} is a JSON {_json_type(value)}, not {_JSON_NAMES[want]} "
                           "(a damaged or hand-edited run.json)")
    for key in RUN_JSON_NAMES:  # ["tokens", 3] or [{...}]: a TypeError in every read's `lost_tables` before
        odd = [x for x in info.get(key) or () if not isinstance(x, str)]
        if odd:
            raise RunError(f"{p}: field {key!r} holds a JSON {_json_type(odd[0])}, not only strings "
                           "(a damaged or hand-edited run.json)")
    for key, sub in RUN_JSON_COUNTS:  # {"size": "8"}: a TypeError in every read of a run with _progress/
        value = (info.get(key) or {}).get(sub)
        if value is not None and type(value) is not int:
            raise RunError(f"{p}: field '{key}.{sub}' is a JSON {_json_type(value)}, not an integer "
                           "(a damaged or hand-edited run.json)")
    return info


# run.json's fields that readers look into, by type (None is taken as absent)
RUN_JSON_TYPES: dict[str, type] = {
    **dict.fromkeys(("checkpoint", "corpus", "tokenizer", "model_args", "options", "world", "planned", "versions",
                     "recorded", "timings", "memory", "source", "cpu_gemm", "spec_decode", "ablation_parts",
                     "importance_parts", "steering_parts"), dict),
    **dict.fromkeys(("tables", "domains"), list), **dict.fromkeys(("status", "kind"), str)}


RUN_JSON_NAMES = ("tables", "domains")  # arrays of names
# numbers inside run.json's objects that readers count with (`probe.run`'s writers of a record's tables)
RUN_JSON_COUNTS = (("world", "size"), ("world", "model_parallel"), ("planned", "batches"))

_JSON_NAMES = {dict: "an object", list: "an array", str: "a string"}


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value),
                                                                                                  "number")


class PartWriter:
    """One rank's streaming writer for every table of a run."""

    def __init__(self, run: Path, rank: int, tables: list[str], row_group_rows: int = 65_536) -> None:
        self.run, self.rank, self.tables = Path(run), rank, tables
        self.row_group_rows = row_group_rows
        self._open: dict[str, pq.ParquetWriter] = {}
        self._buf: dict[str, list[pa.RecordBatch]] = {t: [] for t in tables}
        self._buf_rows: dict[str, int] = dict.fromkeys(tables, 0)
        self.first_uncommitted: int | None = None
        # table -> {part file: rows} of every part committed: noted in the progress file, so that
        # --resume can check that they are all still there (`check_committed`); a resumed writer
        # starts from the verified list
        self.committed: dict[str, dict[str, int]] = {}
        for t in tables:
            (self.run / t).mkdir(parents=True, exist_ok=True)

    def _tmp(self, table: str) -> Path:
        return self.run / table / f".r{self.rank:03d}-open.parquet.tmp"

    def append(self, table: str, columns: dict[str, Any], batch: int) -> None:
        """Add rows (a dict of column -> array) produced by global batch `batch`."""
        if self.first_uncommitted is None:
            self.first_uncommitted = batch
        rb = pa.RecordBatch.from_pydict(columns, schema=TABLES[table]) if not isinstance(
            columns, pa.RecordBatch) else columns
        if rb.num_rows == 0:
            return
        self._buf[table].append(rb)
        self._buf_rows[table] += rb.num_rows
        if self._buf_rows[table] >= self.row_group_rows:
            self._flush(table)

    def _flush(self, table: str) -> None:
        if not self._buf[table]:
            return
        w = self._open.get(table)
        if w is None:
            w = pq.ParquetWriter(self._tmp(table), TABLES[table], **parquet_options(TABLES[table]))
            self._open[table] = w
        w.write_table(pa.Table.from_batches(self._buf[table], schema=TABLES[table]))
        self._buf[table], self._buf_rows[table] = [], 0

    def commit(self, last_batch: int, progress: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Make every row up to global batch `last_batch` durable, with the accumulator state
        (`progress` None: the caller keeps its own, as training does in its checkpoint)."""
        first = self.first_uncommitted if self.first_uncommitted is not None else last_batch
        part = f"r{self.rank:03d}-b{first:07d}-{last_batch:07d}.parquet"
        done = []  # every table's rows written out first, then the renames: a write that fails (a full
        for t in self.tables:  # disk) leaves no table's part visible without the others' (a review)
            self._flush(t)
            w = self._open.pop(t, None)
            if w is not None:
                w.close()
                self._merge_into_tmp(t, self.run / t / part)
                done.append(t)
        for t in done:
            os.replace(self._tmp(t), self.run / t / part)
            self.committed.setdefault(t, {})[part] = pq.read_metadata(self.run / t / part).num_rows
        self.first_uncommitted = None
        if progress is None:
            return
        (self.run / PROGRESS).mkdir(exist_ok=True)
        commit_no = progress.get("commits", 0) + 1
        npz = self.run / PROGRESS / f"r{self.rank:03d}-c{commit_no:06d}.npz"
        tmp = npz.with_name(npz.name + ".tmp.npz")  # a name the clean-up below matches, after a kill
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, npz)
        finally:  # a save that failed part-way (a full disk): its bytes would keep run.json from being marked
            tmp.unlink(missing_ok=True)
        progress = progress | {"done": last_batch, "commits": commit_no, "state": npz.name,
                               "time": time.time(), "parts": self.committed}
        write_json_atomic(self.run / PROGRESS / f"r{self.rank:03d}.json", progress)
        for old in (self.run / PROGRESS).glob(f"r{self.rank:03d}-c*.npz"):
            if old != npz:
                old.unlink(missing_ok=True)

    def _merge_into_tmp(self, table: str, part: Path) -> None:
        """A second commit of the same batches (training commits its last step's rows, then its final
        evaluation's at that step) named the same part and replaced the first one's rows (a review):
        the committed part's rows go first in the new one."""
        if not part.exists():
            return
        tmp = self._tmp(table)
        merged = pa.concat_tables([pq.read_table(part, schema=TABLES[table]), pq.read_table(tmp, schema=TABLES[table])])
        both = tmp.with_name(tmp.name + ".merged.tmp")
        pq.write_table(merged, both, **parquet_options(TABLES[table]))
        os.replace(both, tmp)

    def abandon(self) -> None:
        """Drop uncommitted rows (their temporary files)."""
        for t in list(self._open):
            self._open.pop(t).close()
        for t in self.tables:
            self._tmp(t).unlink(missing_ok=True)
            self._buf[t], self._buf_rows[t] = [], 0
        self.first_uncommitted = None


def parquet_options(schema: pa.Schema) -> dict:
    """How every streamed table is written (also what `--dry-run` measures its sizes with)."""
    floats, others = _split_columns(schema)
    return {"compression": "zstd", "use_dictionary": others, "use_byte_stream_split": floats or False}


def _split_columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(float leaf columns, the rest). Floats get BYTE_STREAM_SPLIT and no dictionary, which zstd
    compresses far better (routing rows: 49 -> 37 bytes for K = 8); the rest keep dictionaries."""
    floats, others = [], []
    for f in schema:
        is_list = pa.types.is_list(f.type)
        t = f.type.value_type if is_list else f.type
        path = f"{f.name}.list.element" if is_list else f.name
        (floats if pa.types.is_floating(t) else others).append(path)
    return floats, others


def load_progress(run: Path, rank: int) -> tuple[dict, dict[str, np.ndarray]]:
    """The rank's last commit: (progress dict, accumulator arrays); empty when none. A progress file
    or accumulator state that cannot be read is a RunError naming it (it was a traceback)."""
    p = Path(run) / PROGRESS / f"r{rank:03d}.json"
    if not p.exists():
        return {}, {}
    advice = "the run's committed state is damaged: record it again with --overwrite (or into another --out)"
    try:
        progress = json.loads(p.read_text())
        state = Path(run) / PROGRESS / progress["state"]
        progress_parts(progress)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RunError(f"{p}: unreadable progress file ({type(e).__name__}: {e}); {advice}") from None
    try:
        with np.load(state) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise RunError(f"{state}: unreadable accumulator state of {p.name} ({first_line(e, None)}); {advice}") from None
    return progress, arrays


def progress_parts(progress) -> dict[str, dict[str, int]] | None:
    """A progress file's committed parts, {table: {part file: rows}} (None: progress written before
    commits named their parts); anything else, a damaged or hand-edited file, is a ValueError saying so:
    parts {"tokens": 5} were a TypeError traceback from --resume and from every read of the run
    (`probe.run.lost_tables`), and a part name "ab" of a string read as lost parts a and b."""
    if not isinstance(progress, dict):
        raise ValueError(f"a JSON {_json_type(progress)}, not an object")
    parts = progress.get("parts")
    if parts is None:
        return None
    if not (isinstance(parts, dict) and all(isinstance(files, dict) and all(
            isinstance(name, str) and (rows is None or type(rows) is int) for name, rows in files.items())
            for files in parts.values())):
        raise ValueError("its 'parts' is not {table: {part file: rows}}")
    return parts


def _rank_parts(run: Path, table: str, rank: int, done: int) -> dict[str, None]:
    """This rank's part files of `table` on disk up to batch `done` (rows unknown)."""
    files = sorted((run / table).glob(f"r{rank:03d}-b*.parquet"))
    return {f.name: None for f in files if int(f.stem.rsplit("-", 1)[1]) <= done}


def check_committed(run: Path, rank: int, tables: list[str]) -> dict[str, dict[str, int]]:
    """Before --resume continues after the rank's last commit: every part file its progress says was
    committed is there and readable (its Parquet footer only), with the rows committed, and every
    streamed table's folder exists. A part lost or damaged was resumed over, and the run then said
    complete with rows missing or unreadable; no earlier consistent state is kept to go back to (the
    accumulators of older commits are gone), so it is a RunError naming the run, table and part.
    Progress written before commits named their parts: the rank's parts up to its last batch are
    checked readable. Returns table -> {part: rows}, what the resumed writer starts from."""
    run = Path(run)
    progress, _ = load_progress(run, rank)
    if not progress:
        _check_no_commits(run, rank, tables)
        return {}
    fix = "its rows cannot be recorded again in place: record the run again with --overwrite (or into another --out)"
    for t in tables:
        if not (run / t).is_dir():
            raise RunError(f"--resume: {run}: the {t} table's folder is missing (deleted?) although batches up to "
                           f"{progress.get('done')} were committed; {fix}")
    parts = progress.get("parts")
    if parts is None:
        parts = {t: _rank_parts(run, t, rank, progress.get("done", -1)) for t in tables}
    verified: dict[str, dict[str, int]] = {}
    for t, files in parts.items():
        for name, rows in files.items():
            try:
                n = pq.read_metadata(run / t / name).num_rows
            except FileNotFoundError:
                problem = "is missing (deleted?)"
            except (pa.ArrowInvalid, OSError) as e:
                problem = f"is unreadable ({first_line(e, None)})"
            else:
                problem = None if rows is None or n == rows else f"holds {n} rows where {rows} were committed"
            if problem:
                raise RunError(f"--resume: {run}: the {t} table's committed part {t}/{name} {problem}; {fix}")
            verified.setdefault(t, {})[name] = n
    return verified


def _check_no_commits(run: Path, rank: int, tables: list[str]) -> None:
    """A rank without a progress file committed nothing, or was killed in its first commit after the
    parts' renames and before the progress file's (the one part name those left in each table is
    recorded again). Parts of more commits than that mean its progress file was lost since (deleted,
    or not copied with the run): --resume deleted every one and recorded the run from its first batch
    again, silently (a review); it is a RunError naming the file, as the batch they end at and their
    accumulators are not known."""
    names = sorted({f.name for t in tables for f in (run / t).glob(f"r{rank:03d}-b*.parquet")})
    if len(names) > 1:
        raise RunError(f"--resume: {run}: {PROGRESS}/r{rank:03d}.json is missing (deleted?) although {len(names)} "
                       f"committed parts of rank {rank} are there ({names[0]} ... {names[-1]}): restore it, or record the "
                       "run again with --overwrite (or into another --out)")


def truncate_after(run: Path, rank: int, tables: list[str], step: int, key: str = "step") -> None:
    """Keep only rows with `key` <= `step` in this rank's part files (a run resumed from an earlier
    checkpoint than its last commit): later parts are deleted, a part straddling `step` is rewritten
    (temporary name, then rename)."""
    for t in tables:
        d = Path(run) / t
        for f in sorted(d.glob(f".r{rank:03d}-*.tmp")) if d.is_dir() else []:
            f.unlink()
        for f in sorted(d.glob(f"r{rank:03d}-b*.parquet")) if d.is_dir() else []:
            first, last = (int(x) for x in f.stem.split("-b", 1)[1].split("-"))
            if last <= step:
                continue
            if first > step:
                f.unlink()
                continue
            kept = pq.read_table(f).filter(pa.compute.less_equal(pa.compute.field(key), step))
            new = f.with_name(f"r{rank:03d}-b{first:07d}-{step:07d}.parquet")
            tmp = new.with_name("." + new.name + ".tmp")
            pq.write_table(kept, tmp, **parquet_options(kept.schema))
            os.replace(tmp, new)
            f.unlink()


def prune_uncommitted(run: Path, rank: int, done: int | None, tables: list[str]) -> int:
    """Delete this rank's part files past batch `done` (None = all) and stale temporaries."""
    removed = 0
    for t in tables:
        d = Path(run) / t
        if not d.exists():
            continue
        for f in d.glob(f".r{rank:03d}-*.tmp"):
            f.unlink()
        for f in d.glob(f"r{rank:03d}-b*.parquet"):
            last = int(f.stem.rsplit("-", 1)[1])
            if done is None or last > done:
                f.unlink()
                removed += 1
    return removed
