"""Ranks, process groups, and tensor + expert parallelism applied to a model after it is built. The
only module that creates process groups: the model files stay single-device and read no
process-group state; the jobs (probe/, analyses/), training and generation take their ranks from
`init_world` (a `World`: the whole job, and replicas of `model_parallel` ranks that each hold one
sharded model).

    torchrun --standalone --nproc-per-node 2 my_script.py
        import model
        m = model.load("ckpt/", parallel=True)     # each rank reads only its shard of the checkpoint
        logits = m(tokens)                         # the full [B, S, V] logits on every rank

    # a model already in memory, with the same weights on every rank (same seed or same load):
    from model import parallel
    shards = parallel.init_distributed()           # gloo on CPU, NCCL on CUDA; None when WORLD_SIZE <= 1
    parallel.parallelize(m, shards)

    world = parallel.init_world(model_parallel=2)  # under torchrun: replicas of 2 ranks
    m = model.load("ckpt/", parallel=world.shards)  # this replica's model, sharded over its 2 ranks

    memory.shard_plan(ModelArgs.from_name("671B"), 16)     # bytes per rank (model/memory.py)
    python -m model params --config 671B --world-size 16   # the same, printed

Layout (W ranks; the table PLAN below; see docs/deepseek-v3.md, "Parallel layout"):
- vocab: `embed` and `head` keep rows [r V/W, (r+1) V/W); the embedding zeroes ids outside its
  rows and all-reduces, the head all-gathers its logits, so `forward` returns full [B, S, V].
- attention: heads [r H/W, (r+1) H/W) per rank: `wq`/`wq_b`/`wkv_b` split by output rows (head
  blocks), `wo` by input columns, then an all-reduce. `wq_a`, `q_norm`, `wkv_a`, `kv_norm` are
  replicated, so the latent KV cache (absorb) is the full [B, T, C + R] on every rank.
- dense MLP and shared experts: `w1`/`w3` split by output rows, `w2` by input columns, all-reduce.
- routed experts (expert parallel): rank r holds experts [r E/W, (r+1) E/W) (`Experts.expert_range`);
  every rank runs the router on all tokens, computes the tokens routed to its own experts, and one
  all-reduce sums the partial outputs. Router, norms, `eh_proj` and the balancing bias are replicated.

NOTE: experts use the all-reduce layout of the published inference code, not all-to-all dispatch:
under tensor parallelism every rank already holds every token, so there is nothing to dispatch, the
result is exactly the single-process sum, and the replicated router's hooks show every token's full
scores and choices on every rank (the probe records them without extra communication).

FP8 weights kept resident: every rank's cut must start on a 128-block or lie inside one (checked for
all ranks, so all raise the same `ParallelError`); whole-block shards (671B at 8, 16 or 32 ranks)
quantise a row-parallel GEMM's input in the single process's blocks; the row-parallel GEMMs and the
experts' sum accumulate in float64 on the CPU (`model.layers.LAYOUT_FREE_SUMS`), their partials are
all-reduced in that wide dtype and rounded once (`WIDE_PARTIALS`, see `install`), so the result is
one process's bit for bit (on a GPU the Triton kernel accumulates in float32: up to its summation
order).

Per-rank hook tensors: `*.attn.hook_q_nope`, `hook_q_pe`, `hook_z`, `hook_pattern` hold this rank's
heads (`attn.head_range`); every other hook is the full tensor on every rank.

Communication sits at module boundaries as forward hooks (plus `ShardedEmbedding`, which keeps the
name `embed.weight`): "copy in" on each sharded module's input, "reduce out" (head: gather) on its
output; autograd works (Megatron's f/g pair; the replicated MLA weights that see only this rank's
heads sum their gradients across ranks). No-grad forwards all-reduce module outputs in place. Two
parallel models in one process work (the group travels in the hooks, never in a global).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .args import ConfigError, ModelArgs
from .layers import Linear
from .mla import MLA
from .moe import MLP, Experts
from .transformer import Transformer


class ParallelError(ConfigError):
    """A layout that cannot be sharded (one line naming the field, its value and the world size)."""


# (our parameter name, as a full-match regex; the dimension it is split along; what must divide)
PLAN = [
    (r"embed\.weight", 0, "vocab_size"),
    (r"head\.weight", 0, "vocab_size"),
    (r".*\.attn\.(wq|wq_b|wkv_b)\.weight", 0, "n_heads"),  # output rows, head-major
    (r".*\.attn\.wo\.weight", 1, "n_heads"),  # input columns, head-major
    (r"layers\.\d+\.ffn\.(w1|w3)\.weight", 0, "inter_dim"),  # dense SwiGLU
    (r"layers\.\d+\.ffn\.w2\.weight", 1, "inter_dim"),
    (r".*\.ffn\.shared_experts\.(w1|w3)\.weight", 0, "shared_inter_dim"),
    (r".*\.ffn\.shared_experts\.w2\.weight", 1, "shared_inter_dim"),
    (r".*\.ffn\.experts\.(w1|w2|w3)", 0, "n_routed_experts"),  # stacked [E, ...]: whole experts
]
_PLAN = [(re.compile(p), dim, field) for p, dim, field in PLAN]
_WHY = {"vocab_size": "embedding and head rows are split across ranks",
        "n_heads": "attention heads are split across ranks",
        "inter_dim": "the dense MLP hidden size is split across ranks",
        "shared_inter_dim": "the shared experts' hidden size (n_shared_experts x moe_inter_dim) is split",
        "n_routed_experts": "routed experts are split across ranks"}


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


@dataclass(frozen=True)
class Cut:
    """This rank's slice of one tensor: `size` items from `start` along `dim` (`full` there)."""
    dim: int
    start: int
    size: int
    full: int

    def slice(self, t: torch.Tensor) -> torch.Tensor:
        return t.narrow(self.dim, self.start, self.size)


# ------------------------------------------------------------------------------- process groups
# NOTE: every process group of the project is created here (init_distributed / init_world); jobs,
# training and generation ask this module for their World instead of touching torch.distributed.
def init_distributed(backend: str | None = None) -> Shards | None:
    """Under torchrun (WORLD_SIZE > 1): initialise the default process group if needed (NCCL when
    CUDA is available, gloo otherwise; `backend` overrides) and return this rank's `Shards` over
    the whole world. None for a single process."""
    if not _start_process_group(backend):
        return None
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
    dist.init_process_group(backend)
    return True


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_shards() -> Shards | None:
    """The default process group as `Shards`; None when not initialised or of size 1."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Shards(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)


def model_parallel_size(value: int | str | None, world: int) -> int:
    """`--model-parallel` as a number of ranks: "auto" = the whole world (one sharded model), an
    integer that divides `world` (the ranks split into world / M replicas), default 1."""
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
        raise ParallelError(f"--model-parallel {m} does not divide the world size {world} "
                            f"(torchrun started {world} process{'es' if world > 1 else ''})")
    return m


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


def _pick_device(device: str | None) -> str:
    want = device or "auto"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParallelError(f"--device {device}: torch sees no CUDA device")
        if want == "cuda":
            want = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(want))
        return want
    if want != "cpu":
        raise ParallelError(f"--device {device!r}: choose cpu, cuda or auto")
    return want


def broadcast_from_first(t: torch.Tensor, shards: "Shards | None") -> torch.Tensor:
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
    raise ParallelError(f"parallel={parallel!r}: pass True, False or a model.parallel.Shards")


def device_for(device, shards: Shards | None):
    """'cuda' means this rank's GPU (torchrun's LOCAL_RANK) under a process group."""
    if shards is not None and device is not None and str(device) == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ----------------------------------------------------------------------------------- the plan
def _quantity(args: ModelArgs, field: str) -> int | None:
    """The size that `field` splits, or None when this config has no such part."""
    has_moe = args.n_dense_layers < args.n_layers or args.n_mtp_layers > 0
    if field == "inter_dim":
        return args.inter_dim if args.n_dense_layers > 0 else None
    if field == "shared_inter_dim":
        return args.n_shared_experts * args.moe_inter_dim if has_moe and args.n_shared_experts else None
    if field == "n_routed_experts":
        return args.n_routed_experts if has_moe else None
    return getattr(args, field)


def check_world(args: ModelArgs, world: int, what: str = "world size") -> None:
    """Raise ParallelError naming the first field that `world` ranks (`what`: how the user chose
    that number) do not divide."""
    if world < 1:
        raise ParallelError(f"{what} {world} must be >= 1")
    for field in _WHY:
        n = _quantity(args, field)
        if n is not None and n % world:
            shown = (f"n_shared_experts x moe_inter_dim = {args.n_shared_experts} x {args.moe_inter_dim} = {n}"
                     if field == "shared_inter_dim" else f"{field}={n}")
            raise ParallelError(f"{what} {world} does not divide {shown} ({_WHY[field]})")


def shard_spec(model: Transformer, shards: Shards) -> dict[str, Cut]:
    """Our parameter/buffer name -> this rank's `Cut`, for every sharded tensor of the FULL
    `model` (meta or real), FP8 block scales included. Tensors not listed are replicated."""
    check_world(model.args, shards.world)
    tensors = dict(model.named_parameters()) | {n: b for n, b in model.named_buffers() if b is not None}
    spec: dict[str, Cut] = {}
    for name, t in tensors.items():
        for pat, dim, _ in _PLAN:
            if pat.fullmatch(name):
                start, size = shards.part(t.shape[dim])
                spec[name] = Cut(dim, start, size, t.shape[dim])
                scale = name + "_scale_inv"
                if scale in tensors:
                    mod = model.get_submodule(name.rsplit(".", 1)[0])
                    # NOTE: every rank's cut is checked, so that all ranks raise the same error together
                    cuts = [Cut(dim, r * size, size, t.shape[dim]) for r in range(shards.world)]
                    scales = [_scale_cut(name, r, c, tensors[scale], mod.block, isinstance(mod, Experts))
                              for r, c in enumerate(cuts)]
                    spec[scale] = scales[shards.rank]
                break
    return spec


def _scale_cut(name: str, rank: int, cut: Cut, scale: torch.Tensor, block: int, stacked: bool) -> Cut:
    """The block-scale rows/columns of an FP8 weight's cut. NOTE: a local b x b block must lie in
    one checkpoint block, so a cut must start on a block boundary or fit inside one block."""
    if stacked:  # experts: whole experts, the scales follow them
        return Cut(0, cut.start, cut.size, scale.shape[0])
    end = cut.start + cut.size
    first, last = cut.start // block, (end - 1) // block
    if cut.start % block and first != last:
        raise ParallelError(f"{name}: rank {rank}'s rows/columns [{cut.start}, {end}) of {cut.full} do not align "
                            f"to the {block}-wide FP8 blocks; use gemm_impl='bf16' (dequantise on load) or a "
                            f"world size whose shards are multiples of {block}")
    return Cut(cut.dim, first, last - first + 1, scale.shape[cut.dim])


# ---------------------------------------------------------------------------------- sharding
def shard_(model: Transformer, shards: Shards) -> dict[str, Cut]:
    """Keep only this rank's slice of every sharded tensor (in place, meta or real; no
    communication is installed) and fix the modules' sizes. Returns the spec."""
    if getattr(model, "shards", None) is not None:
        raise ParallelError("this model is already sharded")
    spec = shard_spec(model, shards)
    for name, cut in spec.items():
        mod_name, attr = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        old = getattr(mod, attr)
        new = cut.slice(old.detach()).clone()
        if isinstance(old, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            setattr(mod, attr, new)
    for mod in model.modules():
        if isinstance(mod, Linear):
            mod.out_features, mod.in_features = mod.weight.shape
            mod._dense = None
        elif isinstance(mod, MLA):
            start, size = shards.part(mod.n_heads)
            mod.n_heads, mod.head_range = size, (start, start + size)
            mod.cache = {}
        elif isinstance(mod, Experts):
            start, size = shards.part(mod.n_experts)
            mod.expert_range = (start, start + size)
        elif isinstance(mod, nn.Embedding):
            mod.num_embeddings = mod.weight.shape[0]
    model.shards = shards
    return spec


def parallelize(model: Transformer, shards: Shards | None) -> Transformer:
    """Shard a full model held identically on every rank and install the communication (in place).
    `shards` None (one process) leaves the model untouched."""
    if shards is None or shards.world == 1:
        return model
    if shards.group is None:
        raise ParallelError("parallelize needs Shards with a process group (see init_distributed)")
    shard_(model, shards)
    return install(model, shards)


WIDE_PARTIALS = True  # read by install(); False reproduces the 16-bit all-reduce of serving engines


def install(model: Transformer, shards: Shards) -> Transformer:
    """Install the collectives on a model already cut by `shard_` (as `model.load` does after
    filling the shards): the ShardedEmbedding, and hooks at every sharded module's boundary.

    With `WIDE_PARTIALS` (default True) the row-parallel FP8 GEMMs (`wo`, `w2`) and the routed
    experts' sums hand their partial outputs to the all-reduce in their accumulation dtype (float64
    on the CPU, see `model.layers.LAYOUT_FREE_SUMS`; float32 for bf16 on a GPU), and the sum is
    rounded once, as one process rounds it. Reduced in bf16, each rank's partial is rounded first:
    the sum then differs from one process in the last bf16 bit of some channels, which the next FP8
    activation quantisation can turn into a whole FP8 step and, at a near tie, a different expert
    (tests/model/test_parallel.py: an aligned bf16 + FP8 model's logits are 6% apart from one
    process in mean with bf16 partials, bit-equal with wide ones). Costs 2-4x the bytes on those
    all-reduces."""
    if shards.group is None:
        raise ParallelError("install needs Shards with a process group (see init_distributed)")
    if getattr(model, "shards", None) != shards:
        raise ParallelError("install: cut the model with shard_(model, shards) first")
    if isinstance(model.embed, ShardedEmbedding):
        raise ParallelError("install: this model's collectives are already installed")
    g = shards.group
    model.embed = ShardedEmbedding(model.embed.weight, shards.part(model.args.vocab_size)[0], g)
    copy_in = functools.partial(_copy_first, n=1, group=g)
    reduce_out = functools.partial(_reduce_output, group=g)
    model.head.register_forward_pre_hook(copy_in)
    model.head.register_forward_hook(functools.partial(_gather_output, group=g))
    for mod in model.modules():
        if isinstance(mod, (MLA, MLP)):
            mod.register_forward_pre_hook(copy_in)
            mod.register_forward_hook(reduce_out)
            (mod.wo if isinstance(mod, MLA) else mod.w2).wide_output = WIDE_PARTIALS
        elif isinstance(mod, Experts):  # (x_TD, weights_TK, ids_TK): both float inputs cross in
            mod.register_forward_pre_hook(functools.partial(_copy_first, n=2, group=g))
            mod.register_forward_hook(reduce_out)
            mod.wide_output = WIDE_PARTIALS
        if isinstance(mod, MLA):  # replicated weights that only this rank's heads use
            for attr in ("wq_a", "q_norm", "wkv_a", "kv_norm"):
                sub = getattr(mod, attr, None)
                if sub is not None and sub.weight.requires_grad:
                    sub.weight.register_hook(functools.partial(_sum_grad, group=g))
    return model


class ShardedEmbedding(nn.Module):
    """Vocabulary-parallel embedding: `weight` holds rows [start, start + n) of the full table;
    ids outside them look up zeros, and an all-reduce completes every row."""

    def __init__(self, weight: nn.Parameter, start: int, group) -> None:
        super().__init__()
        self.weight, self.start, self.group = weight, start, group
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside[..., None], 0.0), self.group)

    def extra_repr(self) -> str:
        return f"rows [{self.start}, {self.start + self.num_embeddings}) x {self.embedding_dim}"


# ------------------------------------------------------------------------------ collectives
def _grad_tracked(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class _Copy(torch.autograd.Function):
    """Identity forward; backward sums the gradient over ranks (each rank saw only its shard's)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _Reduce(torch.autograd.Function):
    """Sum over ranks forward; identity backward (the loss downstream is replicated)."""

    @staticmethod
    def forward(ctx, x, group):
        y = x.contiguous().clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Gather(torch.autograd.Function):
    """Concatenate the ranks' last dims forward; backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.rank, ctx.n = dist.get_rank(group), x.shape[-1]
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(-1, ctx.rank * ctx.n, ctx.n).contiguous(), None


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    """Sum over the group (differentiable; in place when no gradient is tracked)."""
    if _grad_tracked(x):
        return _Reduce.apply(x, group)
    dist.all_reduce(x, group=group)
    return x


def _copy_first(module, args, *, n: int, group):
    """Forward pre-hook: the first n inputs enter the sharded region (f)."""
    if not any(_grad_tracked(a) for a in args[:n]):
        return None
    return tuple(_Copy.apply(a, group) if i < n else a for i, a in enumerate(args))


def _reduce_output(module, args, out, *, group):
    """Forward hook: sum the ranks' partial outputs, then round to the input's dtype (a module whose
    partial sums are wide, see `install`, returns float32 under bf16)."""
    return all_reduce(out, group).to(args[0].dtype if args else out.dtype)


def _gather_output(module, args, out, *, group):
    return _Gather.apply(out, group) if _grad_tracked(out) else _gather_last(out, group)


def _sum_grad(grad: torch.Tensor, *, group) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad
