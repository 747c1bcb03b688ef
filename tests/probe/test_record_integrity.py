"""The record job's run integrity: a run read while written, a full disk at the last commit, a
second writer, and run.json updates that other jobs make meanwhile. (Tables: test_record.py.)"""

from __future__ import annotations

import pytest

import probe
from probe.record import RecordError

from helpers.records import rec


def test_a_run_read_while_it_is_written_sees_each_call_what_is_on_disk(tmp_path):
    """A Run's SQL views were a snapshot of the parts its first query saw: a part committed later was
    in `df` but not in `sql`, a table appearing later stayed empty (a metric on the Run said so), a
    removed part was an IO error, and `status` never changed (a review)."""
    import json
    import shutil

    from helpers.synthetic_run import write_run
    from probe.writer import writer_lock

    src = tmp_path / "src"
    write_run(src)
    live = tmp_path / "live"
    shutil.copytree(src, live, ignore=shutil.ignore_patterns("expert_load"))
    parts = sorted((live / "tokens").glob("*.parquet"))
    held = parts[-1].rename(tmp_path / parts[-1].name)  # one part not committed yet
    run = probe.open_run(live)
    count = lambda: run.sql("select count(*) from tokens").fetchall()[0][0]  # noqa: E731
    first = count()
    held.rename(parts[-1])  # committed now
    assert count() == len(run.df("tokens")) > first
    assert run.sql("select count(*) from expert_load").fetchall()[0][0] == 0
    shutil.copytree(src / "expert_load", live / "expert_load")  # a table that appears later
    from analyses.metrics import balance_table

    assert run.sql("select count(*) from expert_load").fetchall()[0][0] == len(run.df("expert_load")) > 0
    assert len(balance_table(run))
    parts[0].unlink()  # a part removed (a resume truncating, an overwrite)
    assert count() == len(run.df("tokens"))
    info = json.loads((live / "run.json").read_text())
    (live / "run.json").write_text(json.dumps(info | {"status": "running"}))
    with writer_lock(live):  # a record at work; without one, a killed run: interrupted
        assert run.status == "running" and run.info["status"] == "running"
    assert run.status == "interrupted" and run.info["status"] == "running"


def test_a_full_disk_at_the_last_commit_marks_the_run_interrupted_with_no_table_half_committed(
        probe_env, tmp_path, monkeypatch):
    """`ulimit -f` hit at the final commit left run.json "running" for good (the commit sat outside
    the batches' error handling) with a half-written temporary file, and a failing commit left the
    tables renamed before it visible without the rest (a review)."""
    import json

    from probe.writer import PartWriter

    real = PartWriter._flush

    def full(self, table):
        if table == "expert_load":  # the third table: tokens and routing were already written out
            raise OSError(27, "File too large")
        real(self, table)

    monkeypatch.setattr(PartWriter, "_flush", full)
    out = tmp_path / "r"
    with pytest.raises(RecordError, match="File too large; .* is marked interrupted"):
        rec(probe_env, out, max_tokens=300, commit_every=1000)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert not list(out.glob("*/r000-b*.parquet")), list(out.glob("*/r000-b*.parquet"))  # all or none
    monkeypatch.setattr(PartWriter, "_flush", real)
    rec(probe_env, out, max_tokens=300, commit_every=1000, resume=True)  # and it resumes to the end
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_full_disk_while_saving_the_accumulators_leaves_no_partial_file(probe_env, tmp_path, monkeypatch):
    """A commit's accumulator state (`_progress/*.npz`) that failed part-way (a full disk) stayed as a
    partial `.tmp.npz`: on a full disk its bytes kept run.json from being marked, so the run said
    "running" for good and the command said only "[Errno 28] No space left on device" (found under
    torchrun on a 2 MB tmpfs). The partial file goes, the run is marked and resumes to the end."""
    import json

    import numpy as np

    real = np.savez

    def full(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK" * 1000)  # the bytes written before the disk filled up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "r"
    with pytest.raises(RecordError, match=rf"No space left on device; {out} is marked interrupted, its committed "
                       r"batches kept \(continue with --resume"):  # one process: the run is named too
        rec(probe_env, out, max_tokens=300, commit_every=1000)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not [f.name for f in (out / "_progress").iterdir()]
    monkeypatch.setattr(np, "savez", real)
    rec(probe_env, out, max_tokens=300, commit_every=1000, resume=True)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_second_record_into_a_run_being_recorded_is_refused(probe_env, tmp_path):
    """Two `record --resume` of one run at once shared their temporary part names, committed each
    other's rows (batches 15-16 lost, 17-18 twice) and a later --resume marked that complete (a
    review). The job holding the run's writer lock is the only one let in; a lock left by a
    finished or killed job is free (the process's end releases it)."""
    import json

    from probe.writer import WRITER_LOCK, writer_lock

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=300)
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(info | {"status": "interrupted"}))
    with writer_lock(out):  # another process's job, as far as flock is concerned (its own open file)
        for kw in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RecordError, match=rf"another process is recording into this run \(it holds "
                                                  rf"{WRITER_LOCK}\)"):
                rec(probe_env, out, max_tokens=300, **kw)
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"  # untouched
    rec(probe_env, out, max_tokens=300, overwrite=True)  # the control: released, it goes ahead
    assert (out / WRITER_LOCK).exists() and json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_records_closing_run_json_update_keeps_what_other_jobs_note_meanwhile(probe_env, tmp_path):
    """record's last run.json write read and rewrote the file without the lock the other jobs take to
    note their parts: 23 of 300 entries noted meanwhile were lost (a review)."""
    import json
    import threading
    from types import SimpleNamespace

    from probe.record_tables import finish
    from probe.writer import updating_run_json

    out = tmp_path / "r"
    rec(probe_env, out, max_tokens=200)
    n = 150
    world = SimpleNamespace(size=1, model_parallel=1)
    args = SimpleNamespace(n_layers=2, kv_lora_rank=8)
    opts = SimpleNamespace(kv_stats=False)

    def closing():
        for _ in range(n):
            finish(out, "interrupted", opts, args, world, 1.0)

    def noting():
        for i in range(n):
            with updating_run_json(out) as info:
                info.setdefault("ablation_parts", {})[f"p{i}"] = {}

    threads = [threading.Thread(target=closing), threading.Thread(target=noting)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads((out / "run.json").read_text())["ablation_parts"]) == n


@pytest.mark.parametrize("second_done", [True, False])
def test_the_closing_update_merges_each_replicas_leader_only(tmp_path, second_done):
    # 4 ranks, model parallel 2: replicas led by ranks 0 and 2 commit progress (ranks 1 and 3 have none).
    # Complete only when both finished; then kv_stats counts both leaders' tokens, not one's
    import json
    from types import SimpleNamespace

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from probe.record_tables import finish
    from probe.stats import KVAccumulator
    from probe.writer import PROGRESS

    out = tmp_path / "r"
    (out / PROGRESS).mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    for rank, n, done in ((0, 3, True), (2, 5, second_done)):
        acc = KVAccumulator([0], 2)
        acc.add(0, torch.ones(n, 2), torch.ones(n, 1))
        np.savez(out / PROGRESS / f"r{rank:03d}.npz", **acc.state())
        (out / PROGRESS / f"r{rank:03d}.json").write_text(json.dumps(
            {"finished": done, "tokens": 10 * n, "state": f"r{rank:03d}.npz"}))
    args = SimpleNamespace(n_layers=1, kv_lora_rank=2, dtype="float32", qk_rope_head_dim=1, n_heads=1,
                           qk_head_dim=2, v_head_dim=1, dim=2)
    finish(out, "complete", SimpleNamespace(kv_stats=True), args, SimpleNamespace(size=4, model_parallel=2), 1.0)
    info = json.loads((out / "run.json").read_text())
    assert info["recorded"] == {"tokens": 80}
    assert info["status"] == ("complete" if second_done else "interrupted")
    assert (out / "kv_stats").exists() == second_done
    if second_done:
        assert pq.read_table(out / "kv_stats").column("tokens").to_pylist() == [8]



def _stopped_creating(env, out, stop, monkeypatch) -> None:
    """A record of `out` stopped before its run.json was in place."""
    from probe import record as record_module
    from probe.writer import WRITER_LOCK

    if stop == "SIGKILL":  # what a kill during run.json's rename leaves (probe.writer.replacing's name)
        out.mkdir()
        (out / WRITER_LOCK).touch()
        (out / ".run.json.tmp4242").write_text('{"status": "runn')
        return

    def full(path, obj):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(record_module, "write_json_atomic", full)
        with pytest.raises(RecordError, match="cannot create the run there"):
            rec(env, out, max_tokens=300)
    assert sorted(p.name for p in out.iterdir()) == [WRITER_LOCK]


@pytest.mark.parametrize("stop", ["SIGKILL", "full disk"])
def test_a_record_stopped_while_it_created_the_run_can_be_run_again(probe_env, tmp_path, monkeypatch, stop):
    """A record stopped before its run.json was in place (SIGKILL during the rename leaves the temporary
    file; a full disk, none) left the folder holding its writer lock: the command again was refused as an
    existing folder, with --overwrite as not a run directory ("refusing to delete it") and with --resume as
    no run, so that only deleting the folder by hand went on (a review). The command again records the run,
    and --overwrite too; --resume says what to run instead, in one line."""
    import json
    import shutil

    for i, kw in enumerate(({}, {"overwrite": True})):
        out = tmp_path / f"r{i}"
        _stopped_creating(probe_env, out, stop, monkeypatch)
        with pytest.raises(RecordError) as e:
            rec(probe_env, out, max_tokens=300, resume=True)
        assert str(e.value) == (f"--resume: {out} holds no run.json: its record stopped before it created the run, "
                                "so nothing was recorded; run the command without --resume")
        rec(probe_env, out, max_tokens=300, **kw)
        assert json.loads((out / "run.json").read_text())["status"] == "complete"
        assert not list(out.glob(".run.json.tmp*"))  # the killed job's temporary run.json went
        shutil.rmtree(out)
