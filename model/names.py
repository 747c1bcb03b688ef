"""The one table between Hugging Face DeepSeek-V3/V2 checkpoint names and ours (read by the loader,
model/checkpoint.py, and the writer, model/saving.py). The layout is described in
`docs/deepseek-v3.md` ("Checkpoint names")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .args import ModelArgs
from .transformer import Transformer

# (HF name under `model.layers.L.`, our name under the block, stored as FP8 in FP8 checkpoints)
# `{E}` marks a routed expert index: those tensors are rows of our stacked [E, ...] parameters.
BLOCK_TABLE = [
    ("input_layernorm.weight", "attn_norm.weight", False),
    ("post_attention_layernorm.weight", "ffn_norm.weight", False),
    ("self_attn.q_proj.weight", "attn.wq.weight", True),
    ("self_attn.q_a_proj.weight", "attn.wq_a.weight", True),
    ("self_attn.q_a_layernorm.weight", "attn.q_norm.weight", False),
    ("self_attn.q_b_proj.weight", "attn.wq_b.weight", True),
    ("self_attn.kv_a_proj_with_mqa.weight", "attn.wkv_a.weight", True),
    ("self_attn.kv_a_layernorm.weight", "attn.kv_norm.weight", False),
    ("self_attn.kv_b_proj.weight", "attn.wkv_b.weight", True),
    ("self_attn.o_proj.weight", "attn.wo.weight", True),
    ("mlp.gate_proj.weight", "ffn.w1.weight", True),
    ("mlp.up_proj.weight", "ffn.w3.weight", True),
    ("mlp.down_proj.weight", "ffn.w2.weight", True),
    ("mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight", True),
    ("mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight", True),
    ("mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight", True),
    ("mlp.gate.weight", "ffn.gate.weight", False),  # the router is never FP8
    ("mlp.gate.e_score_correction_bias", "ffn.gate.bias", False),
    ("mlp.experts.{E}.gate_proj.weight", "ffn.experts.w1", True),
    ("mlp.experts.{E}.up_proj.weight", "ffn.experts.w3", True),
    ("mlp.experts.{E}.down_proj.weight", "ffn.experts.w2", True),
]
# MTP module k is checkpoint layer n_layers + k: a full block plus these.
MTP_TABLE = [
    ("enorm.weight", "enorm.weight", False),
    ("hnorm.weight", "hnorm.weight", False),
    ("eh_proj.weight", "eh_proj.weight", False),
    ("shared_head.norm.weight", "norm.weight", False),
]
# Copies of the main model's embedding and head stored in the MTP layer: shared, so not loaded.
MTP_SHARED = {"embed_tokens.weight": "embed.weight", "shared_head.head.weight": "head.weight"}
TOP_TABLE = [
    ("model.embed_tokens.weight", "embed.weight", False),
    ("model.norm.weight", "norm.weight", False),
    ("lm_head.weight", "head.weight", False),
]
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old exports saved
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(.+)$")
_BLOCK = {hf: (ours, fp8) for hf, ours, fp8 in BLOCK_TABLE}
_MTP = {hf: (ours, fp8) for hf, ours, fp8 in MTP_TABLE}
_TOP = {hf: (ours, fp8) for hf, ours, fp8 in TOP_TABLE}


@dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes: our parameter name, and the expert row for stacked experts."""
    name: str
    expert: int | None = None
    fp8: bool = False  # an FP8-capable projection


def hf_to_ours(hf_name: str, args: ModelArgs) -> Target | str | None:
    """Map a checkpoint tensor name; None = unknown, "skip" = known but not loaded (shared copies)."""
    if hf_name in _TOP:
        ours, fp8 = _TOP[hf_name]
        return Target(ours, None, fp8)
    m = _LAYER.match(hf_name)
    if not m:
        return None
    layer, rest = int(m.group(1)), m.group(2)
    if layer < args.n_layers:
        prefix = f"layers.{layer}."
    elif layer < args.n_layers + args.n_mtp_layers:
        prefix = f"mtp.{layer - args.n_layers}."
        if rest in MTP_SHARED:
            return "skip"
        if rest in _MTP:
            ours, fp8 = _MTP[rest]
            return Target(prefix + ours, None, fp8)
        prefix += "block."
    else:
        return None
    if rest in _BLOCK:
        ours, fp8 = _BLOCK[rest]
        return Target(prefix + ours, None, fp8)
    e = _EXPERT.match(rest)
    if e and f"mlp.experts.{{E}}.{e.group(2)}" in _BLOCK:
        ours, fp8 = _BLOCK[f"mlp.experts.{{E}}.{e.group(2)}"]
        return Target(prefix + ours, int(e.group(1)), fp8)
    return None


def ours_to_hf(model: Transformer) -> list[tuple[str, str, int | None, bool]]:
    """Every checkpoint tensor of `model` as (hf_name, our_name, expert, fp8), in checkpoint order."""
    args = model.args
    rev_block = [(hf, ours, fp8) for hf, ours, fp8 in BLOCK_TABLE]
    state = set(model.state_dict())
    out = [(hf, ours, None, fp8) for hf, ours, fp8 in TOP_TABLE]
    for layer in range(args.n_layers + len(model.mtp)):
        is_mtp = layer >= args.n_layers
        prefix = f"mtp.{layer - args.n_layers}.block." if is_mtp else f"layers.{layer}."
        if is_mtp:
            for hf, ours, fp8 in MTP_TABLE:
                out.append((f"model.layers.{layer}.{hf}", f"mtp.{layer - args.n_layers}.{ours}", None, fp8))
        for hf, ours, fp8 in rev_block:
            if prefix + ours not in state:
                continue
            if "{E}" in hf:
                for e in range(args.n_routed_experts):
                    out.append((f"model.layers.{layer}.{hf.replace('{E}', str(e))}", prefix + ours, e, fp8))
            else:
                out.append((f"model.layers.{layer}.{hf}", prefix + ours, None, fp8))
    return out


def scale_name(name: str) -> str:
    """Our name of the block scales of FP8-resident weight `name` (`*.weight_scale_inv`, `*.w1_scale_inv`)."""
    return name + "_scale_inv"
