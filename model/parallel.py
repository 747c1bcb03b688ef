"""Tensor + expert parallelism applied to a model after it is built: the plan of which tensor is cut
where, the cutting, and the collectives at module boundaries. The model files stay single-device and
read no process-group state. Ranks and process groups live in `model/ranks.py` (the only module that
creates them: `init_world` gives a `World`, the whole job and replicas of `model_parallel` ranks that
each hold one sharded model); they are re-exported here, so `parallel.init_world` etc. work as before.

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
all ranks, so all raise the same `ParallelError`); whole-block shards (671B at 8 or 16 ranks)
quantise a row-parallel GEMM's input in the single process's blocks; the row-parallel GEMMs and the
experts' sum accumulate in float64 on the CPU (`model.layers.LAYOUT_FREE_SUMS`), their partials are
all-reduced in that wide dtype and rounded once (`WIDE_PARTIALS`, see `install`), so the result is
one process's bit for bit (on a GPU the Triton kernel accumulates in float32: up to its summation
order).

Per-rank hook tensors: `*.attn.hook_q_nope`, `hook_q_pe`, `hook_z`, `hook_pattern`, `hook_result` hold this
rank's heads (`attn.head_range`; `hook_result` sums to this rank's partial attention output, all-reduced after);
every other hook is the full tensor on every rank.

Communication sits at module boundaries as forward hooks (plus `ShardedEmbedding`, which keeps the
name `embed.weight`): "copy in" on each sharded module's input, "reduce out" (head: gather) on its
output; autograd works (Megatron's f/g pair; the replicated MLA weights that see only this rank's
heads sum their gradients across ranks). No-grad forwards all-reduce module outputs in place. Two
parallel models in one process work (the group travels in the hooks, never in a global).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .layers import Linear, grad_tracked
from .mla import MLA
from .moe import MLP, Experts
from .ranks import (  # noqa: F401  (re-exported: model.parallel is the documented home of these)
    BlockAlignError,
    ParallelError,
    Shards,
    World,
    broadcast_from_first,
    device_for,
    env_world_size,
    init_distributed,
    init_world,
    model_parallel_flag,
    model_parallel_size,
    resolve,
    world_shards,
)
from .transformer import Transformer

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
class Cut:
    """This rank's slice of one tensor: `size` items from `start` along `dim` (`full` there)."""
    dim: int
    start: int
    size: int
    full: int

    def slice(self, t: torch.Tensor) -> torch.Tensor:
        return t.narrow(self.dim, self.start, self.size)


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
    narrow: list[tuple[str, Cut, int]] = []  # this rank's FP8 row-parallel inputs cut inside one block
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
                    mine = cuts[shards.rank]
                    # (a rank holding the whole width quantises whole activation rows, as one process does)
                    inside_block = mine.size < mine.full and (mine.start % mod.block or mine.size % mod.block)
                    # (weight-only FP8, gemm_impl="fp8-weights", quantises no activation: no warning)
                    if (mine.dim == 1 and not isinstance(mod, Experts) and inside_block
                            and getattr(mod, "quantise_activations", True)):
                        narrow.append((name, mine, mod.block))
                break
    if narrow:
        # a row-parallel GEMM's input columns inside one block: each rank quantises its part of an
        # activation block with a scale of its own, so the sum differs from one process by FP8 rounding
        name, cut, block = narrow[0]
        warnings.warn(f"FP8-resident shards narrower than one {block}-wide block ({len(narrow)} weights, e.g. {name}, "
                      f"{cut.size} of {cut.full} columns a rank): each rank quantises its part of an activation block "
                      "on its own, so results differ from one process by FP8 rounding (whole-block shards do not)",
                      stacklevel=2)
    return spec


def _scale_cut(name: str, rank: int, cut: Cut, scale: torch.Tensor, block: int, stacked: bool) -> Cut:
    """The block-scale rows/columns of an FP8 weight's cut. NOTE: a local b x b block must lie in
    one checkpoint block, so a cut must start on a block boundary or fit inside one block."""
    if stacked:  # experts: whole experts, the scales follow them
        return Cut(0, cut.start, cut.size, scale.shape[0])
    end = cut.start + cut.size
    first, last = cut.start // block, (end - 1) // block
    if cut.start % block and first != last:
        raise BlockAlignError(f"{name}: rank {rank}'s rows/columns [{cut.start}, {end}) of {cut.full} do not "
                              f"align to the {block}-wide FP8 blocks", block)
    return Cut(cut.dim, first, last - first + 1, scale.shape[cut.dim])


# ---------------------------------------------------------------------------------- sharding
def _own_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a slice; on the meta device an empty tensor of its shape (what clone() gives
    there, without the first meta clone() importing sympy: ~0.5-0.8 s of every sharded load)."""
    if t.is_meta:
        return torch.empty(t.shape, dtype=t.dtype, device="meta")
    return t.clone()


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
        new = _own_copy(cut.slice(old.detach()))
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
    if grad_tracked(x):
        return _Reduce.apply(x, group)
    dist.all_reduce(x, group=group)
    return x


def _copy_first(module, args, *, n: int, group):
    """Forward pre-hook: the first n inputs enter the sharded region (f)."""
    if not grad_tracked(*args[:n]):
        return None
    return tuple(_Copy.apply(a, group) if i < n else a for i, a in enumerate(args))


def _reduce_output(module, args, out, *, group):
    """Forward hook: sum the ranks' partial outputs, then round to the input's dtype (a module whose
    partial sums are wide, see `install`, returns float32 under bf16)."""
    return all_reduce(out, group).to(args[0].dtype if args else out.dtype)


def _gather_output(module, args, out, *, group):
    return _Gather.apply(out, group) if grad_tracked(out) else _gather_last(out, group)


def _sum_grad(grad: torch.Tensor, *, group) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad
