"""probe.writer's commit protocol on hand-made rows (no model): part names, progress and its
accumulator state, a second commit of the same batches, abandon, and the clean-ups --resume relies on
(truncate_after, prune_uncommitted) and the check that its committed parts are intact
(check_committed). The record and train tests cover these end to end."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from probe.schema import TABLES
from probe.writer import (PROGRESS, PartWriter, RunError, check_committed, load_progress, prune_uncommitted,
                          truncate_after, updating_run_json)

T = "router_bias"  # step, layer, expert, bias: the smallest streamed table


def rows(step: int, n: int = 2, bias: float = 0.0) -> dict:
    return {"step": [step] * n, "layer": [0] * n, "expert": list(range(n)), "bias": [bias] * n}


def names(run, table: str = T) -> list[str]:
    return sorted(p.name for p in (run / table).glob("*.parquet"))


def col(path, name: str = "step") -> list:
    return pq.read_table(path).column(name).to_pylist()


def part(run, name: str, steps: list[int]) -> None:
    """A part file written by hand, rows of the given steps."""
    (run / T).mkdir(parents=True, exist_ok=True)
    n = len(steps)
    pq.write_table(pa.table({"step": steps, "layer": [0] * n, "expert": [0] * n, "bias": [0.0] * n},
                            schema=TABLES[T]), run / T / name)


def test_commits_name_parts_by_their_batches_and_keep_one_progress_state(tmp_path):
    """Batches 0-1 then 2-4: two parts named by their first and last batch; the progress file says
    the last batch committed, counts the commits, keeps what the caller passed, and points at a
    state file of its own per commit (the previous one deleted)."""
    run = tmp_path / "run"
    w = PartWriter(run, 3, [T])
    for b in (0, 1):
        w.append(T, rows(b), b)
    w.commit(1, {"tokens": 10}, {"acc": np.array([1.0, 2.0])})
    first, _ = load_progress(run, 3)
    for b in (2, 3, 4):
        w.append(T, rows(b), b)
    w.commit(4, {"tokens": 25, "commits": first["commits"]}, {"acc": np.array([3.0, 4.0])})
    assert names(run) == ["r003-b0000000-0000001.parquet", "r003-b0000002-0000004.parquet"]
    assert col(run / T / "r003-b0000002-0000004.parquet") == [2, 2, 3, 3, 4, 4]
    progress, arrays = load_progress(run, 3)
    assert (first["done"], first["commits"], progress["done"], progress["commits"]) == (1, 1, 4, 2)
    assert progress["tokens"] == 25 and arrays["acc"].tolist() == [3.0, 4.0]
    # a new state file per commit: a crash between writing it and the progress file leaves the old
    # progress pointing at the old state, never at accumulators of batches it does not count
    assert progress["state"] != first["state"]
    assert sorted(p.name for p in (run / PROGRESS).glob("*.npz")) == [progress["state"]]


def test_a_second_commit_of_the_same_batch_adds_its_rows_after_the_first(tmp_path):
    """Training commits its last step's rows, then its final evaluation's at the same step: one part,
    the committed rows first, then the new ones."""
    run = tmp_path / "run"
    w = PartWriter(run, 0, [T])
    w.append(T, rows(3, bias=1.0), 3)
    w.commit(3)
    w.append(T, rows(3, bias=2.0), 3)
    w.commit(3)
    assert names(run) == ["r000-b0000003-0000003.parquet"]
    assert col(run / T / "r000-b0000003-0000003.parquet", "bias") == [1.0, 1.0, 2.0, 2.0]


def test_abandon_drops_flushed_and_buffered_rows(tmp_path):
    """A failure mid-batch: abandon deletes the open temporary file and forgets the buffered rows; the
    next commit holds only what was appended after it, named from its own first batch."""
    run = tmp_path / "run"
    w = PartWriter(run, 0, [T], row_group_rows=4)
    w.append(T, rows(0), 0)
    w.commit(0)
    w.append(T, rows(1, n=4), 1)  # a full row group: flushed to the open temporary file
    w.append(T, rows(1, n=2), 1)  # buffered
    assert list((run / T).glob(".*.tmp"))
    w.abandon()
    assert not list((run / T).glob(".*tmp*"))
    w.append(T, rows(2), 2)
    w.commit(2)
    assert names(run) == ["r000-b0000000-0000000.parquet", "r000-b0000002-0000002.parquet"]
    assert col(run / T / "r000-b0000002-0000002.parquet") == [2, 2]


def test_truncate_after_keeps_rows_up_to_the_step_of_this_rank(tmp_path):
    """Parts b1-2, b3-5, b6-7 of rank 0 (and b3-5 of rank 1), truncated to step 3: b1-2 stays, b3-5
    becomes b3-3 holding step 3's rows, b6-7 goes, rank 1 and other tables are untouched, a stale
    temporary goes. Then to step 2: b1-2, which ends exactly there, stays whole."""
    run = tmp_path / "run"
    part(run, "r000-b0000001-0000002.parquet", [1, 1, 2])
    part(run, "r000-b0000003-0000005.parquet", [3, 3, 4, 5])
    part(run, "r000-b0000006-0000007.parquet", [6, 7])
    part(run, "r001-b0000003-0000005.parquet", [3, 4, 5])
    (run / T / ".r000-open.parquet.tmp").write_bytes(b"half")
    truncate_after(run, 0, [T], 3)
    assert names(run) == ["r000-b0000001-0000002.parquet", "r000-b0000003-0000003.parquet",
                          "r001-b0000003-0000005.parquet"]
    assert col(run / T / "r000-b0000003-0000003.parquet") == [3, 3]
    assert col(run / T / "r001-b0000003-0000005.parquet") == [3, 4, 5]
    assert not (run / T / ".r000-open.parquet.tmp").exists()
    truncate_after(run, 0, [T], 2)
    assert names(run) == ["r000-b0000001-0000002.parquet", "r001-b0000003-0000005.parquet"]
    assert col(run / T / "r000-b0000001-0000002.parquet") == [1, 1, 2]


def test_prune_uncommitted_deletes_only_this_ranks_parts_past_done(tmp_path):
    run = tmp_path / "run"
    for name in ("r000-b0000000-0000001", "r000-b0000002-0000003", "r000-b0000004-0000005", "r001-b0000004-0000005"):
        part(run, name + ".parquet", [0])
    (run / T / ".r000-open.parquet.tmp").write_bytes(b"half")
    assert prune_uncommitted(run, 0, 3, [T, "routing"]) == 1  # a table never written is no error
    assert names(run) == ["r000-b0000000-0000001.parquet", "r000-b0000002-0000003.parquet",
                          "r001-b0000004-0000005.parquet"]
    assert not (run / T / ".r000-open.parquet.tmp").exists()
    assert prune_uncommitted(run, 0, None, [T]) == 2  # no progress: nothing of this rank was committed
    assert names(run) == ["r001-b0000004-0000005.parquet"]


def test_load_progress_reads_the_ranks_own_commit(tmp_path):
    run = tmp_path / "run"
    for rank, tokens in ((0, 100), (2, 7)):
        w = PartWriter(run, rank, [T])
        w.append(T, rows(rank), rank)
        w.commit(rank, {"tokens": tokens}, {"acc": np.array([float(tokens)])})
    progress, arrays = load_progress(run, 2)
    assert (progress["done"], progress["tokens"], arrays["acc"].tolist()) == (2, 7, [7.0])
    assert load_progress(run, 1) == ({}, {})


def test_updating_run_json_keeps_an_existing_file_and_makes_a_new_one_only_when_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with updating_run_json(run, lambda: {"made": True}) as info:
        info["a"] = 1
    with updating_run_json(run, lambda: {"made": "again"}) as info:
        info["b"] = 2
    assert json.loads((run / "run.json").read_text()) == {"made": True, "a": 1, "b": 2}


def test_recorder_alive_only_while_a_job_holds_the_lock(tmp_path):
    """A killed record leaves its lock file behind, free (the process's end released it): not alive.
    Alive only while a job holds it; a run without the file (not written by record) is not alive."""
    from probe.writer import WRITER_LOCK, recorder_alive, writer_lock

    run = tmp_path / "run"
    run.mkdir()
    assert recorder_alive(run) is False
    with writer_lock(run):
        assert recorder_alive(run) is True
    assert (run / WRITER_LOCK).is_file() and recorder_alive(run) is False


def test_the_lock_files_left_in_a_run_are_plain_files(tmp_path):
    """The writer's, run.json's and a table's lock stay in the run, empty; they were made
    executable (os.open's default mode 0o777, found by a new user's look at a finished run)."""
    import stat

    from probe.writer import table_lock, updating_run_json, writer_lock

    run = tmp_path / "run"
    with writer_lock(run), table_lock(run, "spec_decode"), updating_run_json(run, new=dict):
        pass
    locks = sorted(run.glob(".*.lock"))
    assert [p.name for p in locks] == [".run.json.lock", ".spec_decode.lock", ".writer.lock"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in locks)
    assert all(p.stat().st_size == 0 for p in locks)


def test_a_killed_training_run_is_told_from_one_still_training(tmp_path):
    """Training holds the run's writer lock as record does: a training run whose process was killed
    (run.json still "running", no lock held) gets the advice to --resume it, one that trains (the lock
    held, here by this process) is "still being written". Before, a killed training run was refused as
    "still being written" for good (a review)."""
    from probe.writer import refuse_running, writer_lock

    class Refused(Exception):
        pass

    run = tmp_path / "train-run"
    info = {"status": "running", "kind": "train"}
    with writer_lock(run):
        with pytest.raises(Refused, match=r"the run is still being written \(status running\)$"):
            refuse_running(run, info, Refused)
    with pytest.raises(Refused, match="its training stopped before the end .* python -m train command that "
                                      "wrote it plus --resume$"):
        refuse_running(run, info, Refused)
    refuse_running(run, info | {"status": "interrupted"}, Refused)  # only a running run is refused
    with pytest.raises(Refused, match="the run is still being written"):  # other kinds hold no lock: written
        refuse_running(run, info | {"kind": "spec"}, Refused)


def test_a_lock_this_process_cannot_open_is_not_taken_for_a_killed_record(tmp_path, monkeypatch):
    """recorder_alive opened the lock file for writing and took any failure (a read-only mount, another
    user's run) for "no record holds it": a live record's run was said to be killed, with advice to
    --resume it (a review). It cannot tell then, and the jobs keep saying "still being recorded"."""
    from analyses.ablate.inputs import check_finished
    from analyses.ablate.select import AblationError
    from probe import writer
    from probe.writer import WRITER_LOCK, recorder_alive

    run = tmp_path / "run"
    run.mkdir()
    (run / WRITER_LOCK).touch()
    real = writer.os.open

    def refused(path, flags, *a):
        if str(path).endswith(WRITER_LOCK) and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Read-only file system", str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(writer.os, "open", refused)  # opened for writing, it fails; for reading it opens
    assert recorder_alive(run) is False  # free, and asked through a read-only descriptor
    monkeypatch.setattr(writer.os, "open", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert recorder_alive(run) is None
    with pytest.raises(AblationError, match="the run is still being recorded"):
        check_finished(run, json.loads('{"status": "running"}'))


def committed_run(tmp_path, commits: int = 3):
    """A run whose rank 0 writer committed `commits` times, two batches of 3 rows of `T` each."""
    run = tmp_path / "run"
    w = PartWriter(run, 0, [T])
    for c in range(commits):
        for b in (2 * c, 2 * c + 1):
            w.append(T, rows(b, n=3), b)
        w.commit(2 * c + 1, {"tokens": 6 * (c + 1), "commits": c}, {"acc": np.zeros(1)})
    return run


def test_commit_notes_each_committed_part_and_its_rows_in_the_progress(tmp_path):
    run = committed_run(tmp_path)
    progress, _ = load_progress(run, 0)
    assert progress["parts"] == {T: {"r000-b0000000-0000001.parquet": 6, "r000-b0000002-0000003.parquet": 6,
                                     "r000-b0000004-0000005.parquet": 6}}
    assert check_committed(run, 0, [T]) == progress["parts"]


@pytest.mark.parametrize("damage, says", [
    (lambda run: (run / T / "r000-b0000004-0000005.parquet").unlink(),
     "part router_bias/r000-b0000004-0000005.parquet is missing (deleted?)"),
    (lambda run: os.truncate(run / T / "r000-b0000004-0000005.parquet", 300),
     "part router_bias/r000-b0000004-0000005.parquet is unreadable"),
    (lambda run: part(run, "r000-b0000002-0000003.parquet", [2, 3]),  # replaced by a shorter one
     "part router_bias/r000-b0000002-0000003.parquet holds 2 rows where 6 were committed"),
    (lambda run: __import__("shutil").rmtree(run / T),
     "the router_bias table's folder is missing (deleted?) although batches up to 5 were committed"),
])
def test_check_committed_refuses_a_lost_or_damaged_part_naming_run_table_and_part(tmp_path, damage, says):
    run = committed_run(tmp_path)
    assert check_committed(run, 0, [T])  # intact
    damage(run)
    with pytest.raises(RunError, match="record the run again with --overwrite") as e:
        check_committed(run, 0, [T])
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and says in msg, msg


def test_check_committed_of_progress_that_names_no_parts_checks_the_parts_present(tmp_path):
    """Progress written before commits named their parts: the rank's parts up to its last commit are
    read (footers), those past it are left to prune_uncommitted; a lost part cannot be told there."""
    run = committed_run(tmp_path)
    p = run / PROGRESS / "r000.json"
    p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "parts"}))
    part(run, "r000-b0000006-0000007.parquet", [6])  # past the commit: not checked
    os.truncate(run / T / "r000-b0000006-0000007.parquet", 10)
    assert set(check_committed(run, 0, [T])[T]) == {"r000-b0000000-0000001.parquet", "r000-b0000002-0000003.parquet",
                                                     "r000-b0000004-0000005.parquet"}
    os.truncate(run / T / "r000-b0000002-0000003.parquet", 300)
    with pytest.raises(RunError, match="part router_bias/r000-b0000002-0000003.parquet is unreadable"):
        check_committed(run, 0, [T])


def set_parts(run, parts) -> None:
    p = run / PROGRESS / "r000.json"
    p.write_text(json.dumps(json.loads(p.read_text()) | {"parts": parts}))


@pytest.mark.parametrize("damage, says", [
    (lambda run: (run / PROGRESS / "r000.json").write_text("{"), "r000.json: unreadable progress file"),
    (lambda run: next((run / PROGRESS).glob("*.npz")).unlink(), "unreadable accumulator state of r000.json"),
    # parts of another shape, hand-edited or damaged: --resume's check_committed was an AttributeError or a
    # TypeError traceback, or took a name's letters for parts
    *((lambda run, parts=parts: set_parts(run, parts), "r000.json: unreadable progress file (ValueError: its "
       "'parts' is not {table: {part file: rows}})") for parts in (
        {T: 5}, {T: ["r000-b0000000-0000001.parquet"]}, {T: "r000-b0000000-0000001.parquet"},
        {T: {"r000-b0000000-0000001.parquet": "6"}}, ["r000-b0000000-0000001.parquet"])),
])
def test_damaged_progress_is_one_line_naming_the_file(tmp_path, damage, says):
    run = committed_run(tmp_path)
    damage(run)
    with pytest.raises(RunError, match=re.escape(says) if "parts" in says else says) as e:
        load_progress(run, 0)
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(RunError, match="--resume|unreadable"):  # what --resume checks first
        check_committed(run, 0, [T])
    assert check_committed(run, 1, [T]) == {}  # a rank that committed nothing: nothing to check


def test_replace_dir_keeps_a_whole_directory_at_every_step(tmp_path, monkeypatch):
    """variants --overwrite, import sglang --overwrite and train's final model deleted the old directory
    first: a stop while it was deleted (a large checkpoint) left neither (a tour)."""
    from probe import writer

    def tree(d):
        return {p.name: p.read_text() for p in d.iterdir()}

    out, new = tmp_path / "out", tmp_path / ".out.tmp"
    new.mkdir()
    (new / "a").write_text("first")
    writer.replace_dir(new, out)  # where there is none
    assert tree(out) == {"a": "first"} and not new.exists()
    new.mkdir()
    (new / "b").write_text("second")
    real = os.replace

    def stopped(src, dst):  # the new directory's rename fails: the old one is put back, whole
        if src == new:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(writer.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        writer.replace_dir(new, out)
    assert tree(out) == {"a": "first"} and sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", "out"]
    monkeypatch.setattr(writer.os, "replace", real)
    writer.replace_dir(new, out)  # the control: replaced, and the old one gone
    assert tree(out) == {"b": "second"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_entries_replaces_only_the_outputs_own_and_keeps_them_whole_until_all_new_ones_are_in(
        tmp_path, monkeypatch):
    """variants --overwrite replaced the whole folder, deleting a user's notes kept beside the variant (a
    tour): only entries of the new output's names and those `ours` names go, once every new one is in."""
    from probe import overwrite

    def tree(d):
        return {p.name: p.read_text() for p in d.iterdir() if p.is_file()}

    out, new = tmp_path / "out", tmp_path / ".out.tmp"
    out.mkdir()
    for name, text in (("a", "old a"), ("b", "old b"), ("notes", "mine")):
        (out / name).write_text(text)
    (out / ".overwritten999.tmp").mkdir()  # the old entries of an --overwrite killed mid-way
    new.mkdir()
    (new / "a").write_text("new a")
    (new / "c").write_text("new c")
    real = os.replace

    def stopped(src, dst):  # the second new entry's move fails: everything goes back as it was
        if src == new / "c":
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(overwrite.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        overwrite.replace_entries(new, out, lambda e: e.name == "b")
    assert (out / ".overwritten999.tmp").is_dir() and len(list(out.iterdir())) == 4
    assert tree(out) == {"a": "old a", "b": "old b", "notes": "mine"} and tree(new) == {"a": "new a", "c": "new c"}
    monkeypatch.setattr(overwrite.os, "replace", real)
    assert overwrite.replace_entries(new, out, lambda e: e.name == "b") == ["notes"]
    assert tree(out) == {"a": "new a", "c": "new c", "notes": "mine"} and not new.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a", "c", "notes"]  # the killed one's old entries gone too
