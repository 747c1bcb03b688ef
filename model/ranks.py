"""Ranks and process groups: where this process sits in a torchrun job, and the only place the
project creates process groups. The jobs (probe/, analyses/), training and generation take their
ranks from `init_world` (a `World`: the whole job, and replicas of `model_parallel` ranks that each
hold one sharded model); `model.parallel` cuts a model for a `Shards` and re-exports all of this.

    shards = ranks.init_distributed()              # gloo on CPU, NCCL on CUDA; None when WORLD_SIZE <= 1
    world = ranks.init_world(model_parallel=2)     # under torchrun: replicas of 2 ranks
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .args import ConfigError


class ParallelError(ConfigError):
    """A layout that cannot be sharded (one line naming the field, its value and the world size)."""


class BlockAlignError(ParallelError):
    """A shard of an FP8 weight that cuts through its scale blocks. `advise(dense)` words the message
    with the way the caller dequantises on load (the loader's argument, or a command's flag)."""
    LOADER = "use gemm_impl='bf16' (dequantise on load)"

    def __init__(self, where: str, block: int) -> None:
        self.where, self.block = where, block
        super().__init__(self.advise(self.LOADER))

    def advise(self, dense: str) -> str:
        return f"{self.where}; {dense} or a world size whose shards are multiples of {self.block}"


@dataclass(frozen=True)
class Shards:
    """This process's place: `rank` of `world`, and the process group joining them (None when
    only planning, e.g. on the meta device, where nothing communicates)."""
    rank: int
    world: int
    group: object = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ParallelError(f"rank {self.rank} is not in [0, world size {self.world})")

    def part(self, n: int) -> tuple[int, int]:
        """(start, size) of this rank's equal share of n items."""
        size = n // self.world
        return self.rank * size, size


# ------------------------------------------------------------------------------- process groups
# NOTE: every process group of the project is created here (init_distributed / init_world); jobs,
# training and generation ask this module for their World instead of touching torch.distributed.
def init_distributed(backend: str | None = None) -> Shards | None:
    """Under torchrun (WORLD_SIZE > 1): initialise the default process group if needed (NCCL when
    CUDA is available, gloo otherwise; `backend` overrides) and return this rank's `Shards` over
    the whole world. None for a single process."""
    if not _start_process_group(backend):
        return None
    if dist.get_backend() == "gloo":  # CPU ranks: one float32 GEMM path for all, as init_world does
        from . import gemm  # (each rank measuring its own, near ties under load went apart: a flaky
                            # test, the shards' sums no longer the whole model's bit for bit)
        gemm.agree_across_ranks()
    return world_shards()


def _start_process_group(backend: str | None = None) -> bool:
    """Initialise the default group from torchrun's environment; False for a single process."""
    if dist.is_available() and dist.is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise ParallelError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = collective_timeout()
    dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    return True


TIMEOUT_ENV = "DSV3_DIST_TIMEOUT"


def collective_timeout() -> timedelta | None:
    """How long a rank waits in a collective for the others: `DSV3_DIST_TIMEOUT` seconds, else torch's
    default (None: 30 minutes on gloo, 10 on NCCL). A dead rank is noticed within a second, but a hung
    one (a stuck filesystem, a debugger) held the others for gloo's 30 minutes; a sharded 671B load can
    take longer than a short limit, so it is the user's to set."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ParallelError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a rank waits for the others "
                            "in a collective, a positive number (unset: torch's default)")
    return timedelta(seconds=seconds)


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_shards() -> Shards | None:
    """The default process group as `Shards`; None when not initialised or of size 1."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Shards(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)


def model_parallel_size(value: int | str | None, world: int, world_from: str | None = None) -> int:
    """`--model-parallel` as a number of ranks: "auto" = the whole world (one sharded model), an
    integer that divides `world` (the ranks split into world / M replicas), default 1. world_from:
    where the world size came from, for the message (default: torchrun's processes, or one process
    not started by torchrun, which said "torchrun started 1 process" to a job run without it; a tour)."""
    if value is None:
        return 1
    if str(value) == "auto":
        return world
    try:
        m = int(value)
    except (TypeError, ValueError):
        raise ParallelError(f"--model-parallel {value!r}: give a number of ranks or 'auto'") from None
    if m < 1:
        raise ParallelError(f"--model-parallel {m} must be >= 1")
    if world % m:
        if world_from is None and world == 1 and "WORLD_SIZE" not in os.environ:
            world_from = f"one process, not started by torchrun: launch it with torchrun --nproc-per-node {m}"
        raise ParallelError(f"--model-parallel {m} does not divide the world size {world} "
                            f"({world_from or f'torchrun started {world} process' + ('es' if world > 1 else '')})")
    return m


def model_parallel_flag(value: int | str | None) -> str:
    """How an error names the `--model-parallel` the user gave: "auto" is said to mean the world size,
    the number that follows in the message."""
    return "--model-parallel auto: the world size" if str(value) == "auto" else "--model-parallel"


@dataclass(frozen=True)
class World:
    """A job's ranks: `size` processes split into `size / model_parallel` replicas of
    `model_parallel` consecutive ranks. Each replica holds one model (sharded over its ranks when
    model_parallel > 1: `shards`), replicas share the work, and the first rank of each replica
    (`writes`) is the one that writes its results."""
    rank: int = 0
    size: int = 1
    model_parallel: int = 1
    backend: str | None = None
    device: str = "cpu"
    shards: Shards | None = None  # this replica's model-parallel group (None when model_parallel == 1)
    devices: tuple[str, ...] = ("cpu",)  # "host:device" of every rank

    @property
    def replicas(self) -> int:
        return self.size // self.model_parallel

    @property
    def replica(self) -> int:
        return self.rank // self.model_parallel

    @property
    def leader(self) -> int:
        """Global rank of this replica's first rank (its writer)."""
        return self.replica * self.model_parallel

    @property
    def writes(self) -> bool:
        return self.rank == self.leader

    def describe(self) -> dict:
        """What run.json records about the layout."""
        return {"size": self.size, "model_parallel": self.model_parallel, "replicas": self.replicas,
                "backend": self.backend, "devices": list(self.devices)}

    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device) if self.backend == "nccl" else x

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (e.g. a stop request)."""
        if self.size == 1:
            return bool(flag)
        t = self._tensor(torch.tensor([1 if flag else 0], dtype=torch.int32))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum_replicas(self, x):
        """Sum of a per-replica numpy array over the replicas (every rank of a replica holds the
        same values; only its leader's count), returned on every rank."""
        import numpy as np

        if self.replicas == 1 and self.size == 1:
            return x
        arr = np.ascontiguousarray(x, dtype=np.float64)
        t = torch.from_numpy(arr if self.writes else np.zeros_like(arr))
        t = self._tensor(t)
        dist.all_reduce(t)
        return t.cpu().numpy().astype(np.asarray(x).dtype)

    def gather_leaders(self, obj):
        """Rank 0 gets [replica 0's obj, replica 1's, ...] (from each replica's leader); others None."""
        if self.size == 1:
            return [obj]
        box = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj if self.writes else None, box, dst=0)
        return None if box is None else [box[r] for r in range(0, self.size, self.model_parallel)]

    def gather(self, obj):
        """Rank 0 gets every rank's picklable `obj` in rank order; the others get None."""
        if self.size == 1:
            return [obj]
        box = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, box, dst=0)
        return box

    def everyone(self, obj) -> list:
        """Every rank's picklable `obj`, in rank order, on every rank (one all-gather: what the jobs' ranks
        compare to agree on their inputs, options and progress)."""
        if self.size == 1:
            return [obj]
        box = [None] * self.size
        dist.all_gather_object(box, obj)
        return box

    def broadcast(self, obj, src: int = 0):
        """Rank `src`'s picklable `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_world(model_parallel: int | str | None = 1, *, device: str | None = None,
               backend: str | None = None) -> World:
    """This process's `World` under torchrun (one process: rank 0 of 1). `model_parallel` ranks
    hold one model (see `model_parallel_size`); `device` "cuda" means this rank's LOCAL_RANK GPU,
    "auto"/None CUDA when available; the backend is NCCL on CUDA, gloo on the CPU. Creates the
    default group and one subgroup per replica (every rank creates every group, in order)."""
    size = env_world_size()
    m = model_parallel_size(model_parallel, size)  # checked before any group exists: all ranks agree
    dev = _pick_device(device)
    if dev == "cpu":  # a typo in the GEMM switches stops every rank here, before a job writes anything
        from . import gemm

        gemm.check_env()
    if size == 1:
        return World(device=dev, devices=(f"{socket.gethostname()}:{dev}",))
    _start_process_group(backend or ("nccl" if dev.startswith("cuda") else "gloo"))
    rank = dist.get_rank()
    groups = [dist.group.WORLD] if m == size else (
        [dist.new_group(list(range(r, r + m))) for r in range(0, size, m)] if m > 1 else [])
    shards = Shards(rank % m, m, groups[rank // m]) if m > 1 else None
    devices = [None] * size
    dist.all_gather_object(devices, f"{socket.gethostname()}:{dev}")
    if dev == "cpu":  # one float32 GEMM path for every rank (model/gemm.py), so they compute alike
        from . import gemm

        gemm.agree_across_ranks()
    return World(rank=rank, size=size, model_parallel=m, backend=dist.get_backend(), device=dev, shards=shards,
                 devices=tuple(devices))


def device_type(device: str | None) -> str:
    """"cpu" or "cuda": what --device names (cpu, cuda, cuda:N), or for auto (or None) what torch
    sees here; anything else is a ParallelError. The one reading of --device, for a job and for a
    --dry-run's plan alike."""
    want = device or "auto"
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu" or re.fullmatch(r"cuda(:\d+)?", want):
        return want.split(":")[0]
    raise ParallelError(f"--device {device!r}: choose cpu, cuda (or cuda:N) or auto")


def _pick_device(device: str | None) -> str:
    if device_type(device) == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise ParallelError(f"--device {device}: torch sees no CUDA device")
    want = device if device and device.startswith("cuda:") else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch.cuda.set_device(torch.device(want))
    return want


def broadcast_from_first(t: torch.Tensor, shards: Shards | None) -> torch.Tensor:
    """The first rank of `shards`' group's tensor on every rank of that group (no-op without a
    group): keeps sampled tokens identical across the ranks that hold one model."""
    if shards is None or shards.group is None or shards.world == 1:
        return t
    src = dist.get_global_rank(shards.group, 0) if shards.group is not dist.group.WORLD else 0
    if t.dtype == torch.bool:  # not every backend broadcasts bool
        u = t.to(torch.uint8)
        dist.broadcast(u, src=src, group=shards.group)
        return u.bool()
    dist.broadcast(t, src=src, group=shards.group)
    return t


def resolve(parallel) -> Shards | None:
    """`model.load`'s `parallel=` argument: False/None = one full model per process; True = the
    default group (initialised from torchrun's environment when needed); "auto" = True when torchrun
    started several processes (WORLD_SIZE > 1), else False; or a `Shards`."""
    if parallel == "auto":
        parallel = env_world_size() > 1
    if parallel is None or parallel is False:
        return None
    if parallel is True:
        return init_distributed()
    if isinstance(parallel, Shards):
        return parallel if parallel.world > 1 else None
    raise ParallelError(f"parallel={parallel!r}: pass 'auto', True, False or a model.parallel.Shards")


def device_for(device, shards: Shards | None):
    """'cuda' means this rank's GPU (torchrun's LOCAL_RANK) under a process group."""
    if shards is not None and device is not None and str(device) == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device
