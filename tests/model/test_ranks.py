"""model/ranks.py's bookkeeping in one process: a rank's share, the replicas of a World, the
--model-parallel and --device readings and their refusals (tests/model/test_parallel.py and the e2e
tests run it under torchrun)."""

from __future__ import annotations

import re

import pytest
import torch

from model import ranks
from model.ranks import ParallelError, Shards, World


def test_a_rank_is_one_of_the_world_and_gets_its_own_share():
    # 12 heads over 4 ranks: rank r owns [3r, 3r + 3)
    assert [Shards(r, 4).part(12) for r in range(4)] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ParallelError, match=rf"rank {rank} is not in \[0, world size {world}\)"):
            Shards(rank, world)


def test_a_world_splits_into_replicas_of_consecutive_ranks():
    # 6 ranks, model_parallel 3: replicas {0, 1, 2} and {3, 4, 5}, written by ranks 0 and 3
    worlds = [World(rank=r, size=6, model_parallel=3) for r in range(6)]
    assert [w.replica for w in worlds] == [0, 0, 0, 1, 1, 1]
    assert [w.leader for w in worlds] == [0, 0, 0, 3, 3, 3]
    assert [w.writes for w in worlds] == [True, False, False, True, False, False]
    assert worlds[4].describe() == {"size": 6, "model_parallel": 3, "replicas": 2, "backend": None, "devices": ["cpu"]}
    # model_parallel 1: every rank its own replica and writer
    assert [(w.replica, w.writes) for w in (World(rank=r, size=3) for r in range(3))] == [(0, True), (1, True), (2, True)]


def test_one_process_needs_no_process_group():
    w = World()
    assert w.any(True) and not w.any(False)  # a stop request of the one rank is seen
    assert w.gather({"a": 1}) == [{"a": 1}] and w.gather_leaders(5) == [5] and w.broadcast("x") == "x"
    assert w.everyone(3) == [3]
    w.barrier()


def test_model_parallel_reads_a_number_that_divides_the_world_or_auto(monkeypatch):
    assert ranks.model_parallel_size(None, 4) == 1  # not given: one model per rank
    assert ranks.model_parallel_size("auto", 4) == 4 and ranks.model_parallel_size("2", 4) == 2
    assert ranks.model_parallel_flag("auto") == "--model-parallel auto: the world size"
    assert ranks.model_parallel_flag(2) == "--model-parallel"
    with pytest.raises(ParallelError, match=r"^--model-parallel 0 must be >= 1$"):
        ranks.model_parallel_size(0, 4)
    with pytest.raises(ParallelError, match=r"^--model-parallel 'two': give a number of ranks or 'auto'$"):
        ranks.model_parallel_size("two", 4)
    with pytest.raises(ParallelError, match=r"^--model-parallel 3 does not divide the world size 4 "
                                            r"\(torchrun started 4 processes\)$"):
        ranks.model_parallel_size(3, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ParallelError, match=r"\(torchrun started 1 process\)$"):
        ranks.model_parallel_size(2, 1)
    # a job run without torchrun was told "torchrun started 1 process" (a tour)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ParallelError, match=r"^--model-parallel 2 does not divide the world size 1 \(one process, "
                                            r"not started by torchrun: launch it with torchrun --nproc-per-node 2\)$"):
        ranks.model_parallel_size(2, 1)


def test_device_names_cpu_cuda_or_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [ranks.device_type(d) for d in ("cpu", "cuda", "cuda:1", "auto", None)] == ["cpu", "cuda", "cuda", "cpu", "cpu"]
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0"):
        with pytest.raises(ParallelError, match=f"--device '{bad}': choose cpu, cuda"):
            ranks.device_type(bad)
    with pytest.raises(ParallelError, match="--device cuda: torch sees no CUDA device"):
        ranks._pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ranks.device_type("auto") == "cuda"


def test_cuda_means_this_ranks_gpu(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(str(d)))
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert [ranks._pick_device(d) for d in ("cuda", "auto", "cuda:1")] == ["cuda:3", "cuda:3", "cuda:1"]
    assert chosen == ["cuda:3", "cuda:3", "cuda:1"]
    monkeypatch.delenv("LOCAL_RANK")
    assert ranks._pick_device("cuda") == "cuda:0"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert ranks.device_for("cuda", Shards(1, 2)) == torch.device("cuda", 3)
    assert ranks.device_for("cuda", None) == "cuda" and ranks.device_for("cpu", Shards(1, 2)) == "cpu"


def test_parallel_is_resolved_to_shards_of_several_ranks_or_none(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    two = Shards(1, 2)
    assert ranks.resolve(two) is two
    assert ranks.resolve(Shards(0, 1)) is None  # one rank: the whole model
    assert ranks.resolve(None) is None and ranks.resolve(False) is None and ranks.resolve("auto") is None
    assert ranks.world_shards() is None and ranks.init_distributed() is None



@pytest.mark.parametrize("bad", ["foo", 2, "Auto"])
def test_a_parallel_it_cannot_take_is_refused_with_every_value_it_can(bad):
    """The refusal left out "auto", model.load's own default (README: `parallel="auto"`)."""
    with pytest.raises(ParallelError, match=rf"^parallel={re.escape(repr(bad))}: pass 'auto', True, False or a "
                                            r"model\.parallel\.Shards$"):
        ranks.resolve(bad)

@pytest.mark.parametrize("value, seconds", [(None, None), ("", None), ("90", 90.0), ("2.5", 2.5)])
def test_the_collective_timeout_is_the_users_seconds_or_torchs_default(monkeypatch, value, seconds):
    """DSV3_DIST_TIMEOUT reaches init_process_group; unset, torch's default (gloo's 30 minutes) stays."""
    got = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(ranks.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ranks.dist, "init_process_group", lambda backend, **kw: got.update(backend=backend, **kw))
    if value is None:
        monkeypatch.delenv(ranks.TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(ranks.TIMEOUT_ENV, value)
    assert ranks._start_process_group("gloo")
    assert got.pop("backend") == "gloo"
    assert got == ({} if seconds is None else {"timeout": __import__("datetime").timedelta(seconds=seconds)})


@pytest.mark.parametrize("value", ["ten", "0", "-5", "inf", "nan"])
def test_a_timeout_that_is_not_positive_seconds_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(ranks.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ranks.dist, "init_process_group", lambda *a, **kw: pytest.fail("started a group"))
    monkeypatch.setenv(ranks.TIMEOUT_ENV, value)
    with pytest.raises(ParallelError, match=rf"DSV3_DIST_TIMEOUT='{value}': .*positive number"):
        ranks._start_process_group("gloo")
