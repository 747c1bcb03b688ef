"""The record job's batch loop (`probe.record_loop._run_batches`) with stand-ins for the model, the
writer and the other ranks: which batches a replica takes, when it commits and with what progress,
and where the ranks agree whether to stop. One window per batch; window b holds b + 1 tokens, so
every token count below is a sum done by hand."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np

from probe.record_loop import _Progress, _run_batches
from probe.windows import Window


class Writer:
    tables = ["tokens"]

    def __init__(self) -> None:
        self.appended, self.commits, self.abandoned = [], [], False

    def append(self, table, cols, batch) -> None:
        self.appended.append(batch)

    def commit(self, last, progress, arrays) -> None:  # (last batch, tokens so far, final)
        self.commits.append((last, progress["tokens"], progress["finished"]))

    def abandon(self) -> None:
        self.abandoned = True


def loop(batches: int, replicas: int = 1, replica: int = 0, commit_every: int = 100, done: int = -1,
         tokens: int = 0, signal_in: int | None = None):
    """Run the loop; returns (status, batches this replica ran, batches after which the ranks checked
    for a stop, the writer's commits). `signal_in`: a signal arrives while batch `signal_in` runs."""
    wins = [Window(b, f"d{b}", "x", 0, np.arange(b + 1, dtype=np.int32)) for b in range(batches)]
    ran, seen, checks = [], [], []
    stop = NS(signal=None)

    def run(batch):
        ran.append(batch.index)
        if batch.index == signal_in:
            stop.signal = 2
        return {"tokens": {"seq_id": [batch.index]}}

    def any_(flag: bool) -> bool:  # the collective: here this rank alone
        checks.append(len(seen) - 1)
        return flag

    writer = Writer()
    job = NS(windows=lambda seq_len, max_tokens, order: iter(wins))
    opts = NS(seq_len=8, max_tokens=None, order="corpus", batch_size=1, commit_every=commit_every)
    world = NS(replicas=replicas, replica=replica, any=any_)
    rec = NS(run=run, forward_only=run, kv=NS(state=lambda: {}))
    bar = NS(update=seen.append)  # every batch, every replica's
    status, failure = _run_batches(job, opts, world, rec, writer, _Progress(done=done, tokens=tokens, last=done),
                                   NS(batches=batches), stop, bar)
    assert failure is None and not writer.abandoned
    assert writer.appended == ran
    return status, ran, checks, writer.commits


def test_a_replica_takes_every_rth_batch_and_the_ranks_check_at_each_rounds_end():
    """Replica 1 of 2 over batches 0-4: it runs 1 and 3; the stop check follows batches 1 and 3 (the
    rounds' ends) and 4 (the last, a round cut short); its tokens are 2 + 4."""
    status, ran, checks, commits = loop(5, replicas=2, replica=1, commit_every=1)
    assert status == "complete" and ran == [1, 3] and checks == [1, 3, 4]
    assert commits == [(1, 2, False), (3, 6, False), (3, 6, True)]


def test_commits_every_commit_every_batches_then_a_final_one():
    """--commit-every 3 over batches 0-6: commits after batches 2 and 5 (tokens 1+2+3 = 6, then
    +4+5+6 = 21), the final one after batch 6 (28)."""
    status, ran, checks, commits = loop(7, commit_every=3)
    assert status == "complete" and ran == list(range(7)) and checks == list(range(7))
    assert commits == [(2, 6, False), (5, 21, False), (6, 28, True)]


def test_a_resumed_replica_skips_what_it_committed_and_counts_on_from_its_tokens():
    """Batches 0-3 committed (10 tokens): the resumed loop runs 4 and 5 only, 10 + 5 + 6 = 21 tokens."""
    status, ran, _, commits = loop(6, done=3, tokens=10)
    assert status == "complete" and ran == [4, 5] and commits == [(5, 21, True)]


def test_a_signal_stops_at_the_rounds_end_with_the_rows_committed():
    """Replica 0 of 2, a signal during batch 2: the check after batch 3 (the round's end) stops it,
    batches 0 and 2 committed (1 + 3 tokens), not as the final commit."""
    status, ran, checks, commits = loop(6, replicas=2, signal_in=2)
    assert status == "interrupted" and ran == [0, 2] and checks == [1, 3]
    assert commits == [(2, 4, False)]
    # a signal during the last batch, in a round cut short (5 batches of 2 replicas): still a stop
    status, ran, checks, commits = loop(5, replicas=2, signal_in=4)
    assert status == "interrupted" and ran == [0, 2, 4] and checks == [1, 3, 4]
    assert commits == [(4, 9, False)]


def test_a_rank_that_does_not_see_the_run_stops_in_the_other_ranks_words(tmp_path):
    """A rank of a sharded replica writes nothing and need not see the run; outliving its writer, it
    marked the run where its folder held none and ended with "not a run directory" in place of the
    line every other rank gives. It now marks nothing there and says that the run is interrupted; a
    rank that sees the run marks it, as before."""
    import json

    import pytest

    from model.ranks import World
    from probe.job import RecordError
    from probe.record_loop import _leave

    job, opts = NS(args=NS(n_layers=1, kv_lora_rank=4)), NS(kv_stats=False)
    lost = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")
    blind = tmp_path / "not-shared"
    with pytest.raises(RecordError) as e:
        _leave(blind, lost, opts, job, World(rank=1, size=2, model_parallel=2), 1.0)
    assert str(e.value) == (f"rank 1 of 2 stopped: {lost}; the run is interrupted (continue with --resume)")
    assert not blind.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(RecordError) as e:
        _leave(run, lost, opts, job, World(rank=1, size=2, model_parallel=2), 1.0)
    assert str(e.value) == f"rank 1 of 2 stopped: {lost}; {run} is marked interrupted (continue with --resume)"
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
