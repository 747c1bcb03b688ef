"""A torchrun job's ranks as threads of this process: `model.ranks.World`s whose collectives (broadcast,
gather, everyone, any, barrier) pass pickled objects through a hub, for tests of what the jobs' ranks agree on
without a launch (each torchrun launch costs the suite seconds).

    results = ThreadRanks(2).run(lambda world: job_step(world, ...))  # what each rank returned or raised
"""

from __future__ import annotations

import pickle
import threading

from model.ranks import World


class ThreadRanks:
    """`size` ranks in replicas of `model_parallel`, as `World`s sharing one hub."""

    def __init__(self, size: int = 2, model_parallel: int = 1) -> None:
        self.size, self.model_parallel = size, model_parallel
        self.box: dict = {}
        self.barrier = threading.Barrier(size, timeout=30)  # a rank that never comes fails the others

    def world(self, rank: int) -> World:
        return _ThreadWorld(self, rank)

    def run(self, fn) -> list:
        """`fn(world)` on every rank at once: each rank's result, or the exception it raised (a rank left
        waiting in a collective the others never join raises threading.BrokenBarrierError after 30 s)."""
        out: list = [None] * self.size

        def one(rank: int) -> None:
            try:
                out[rank] = fn(self.world(rank))
            except BaseException as e:  # noqa: BLE001 - the test looks at what each rank raised
                out[rank] = e

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out


class _ThreadWorld(World):
    def __init__(self, hub: ThreadRanks, rank: int) -> None:
        super().__init__(rank=rank, size=hub.size, model_parallel=hub.model_parallel)
        object.__setattr__(self, "hub", hub)

    def _all(self, obj) -> list:
        """Every rank's `obj` (a copy, as torch.distributed pickles it), in rank order, on every rank."""
        hub = self.hub
        hub.box[self.rank] = pickle.dumps(obj)
        hub.barrier.wait()
        got = [pickle.loads(hub.box[r]) for r in range(hub.size)]
        hub.barrier.wait()  # no rank puts its next object before every rank has read this one
        return got

    def barrier(self) -> None:
        self._all(None)

    def any(self, flag: bool) -> bool:
        return any(self._all(bool(flag)))

    def everyone(self, obj) -> list:
        return self._all(obj)

    def broadcast(self, obj, src: int = 0):
        return self._all(obj)[src]

    def gather(self, obj):
        got = self._all(obj)
        return got if self.rank == 0 else None

    def gather_leaders(self, obj):
        got = self._all(obj if self.writes else None)
        return [got[r] for r in range(0, self.size, self.model_parallel)] if self.rank == 0 else None
