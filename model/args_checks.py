"""ModelArgs.validate's checks, in the order it runs them: each step returns the first problem it
finds, as a message naming the offending fields, or None. `_type_problem` also serves the config.json
reader (model/args.py), which names the file's key instead of the field."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .args import ModelArgs

ROUTE_SCALE_MAX = 100  # routed_scaling_factor's ceiling: the published checkpoints' largest is 16 (V2, V2.5)

_KINDS = {  # annotation -> (what a value must be, as a message says it; the test)
    "int": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    # eos_token_id: "1" or ["1"] was a TypeError from the vocabulary check, [1.5] passed (found by a review)
    "list[int]": ("a list of integers", lambda v: isinstance(v, list) and all(_KINDS["int"][1](i) for i in v)),
}


def _type_problem(value: Any, annotation: str) -> str | None:
    """What `value` should have been for a field annotated `annotation` (e.g. "int | None"), or None
    when it fits. Only the kinds of `_KINDS` are checked; a config's JSON gives strings where a number
    belongs, and those would otherwise fail far from the file that holds them."""
    parts = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in parts:
        return None
    kinds = [a for a in parts if a in _KINDS]
    if not kinds or len(kinds) < len([a for a in parts if a != "None"]):
        return None  # a tuple or dict is allowed too: left to the field's own checks
    if any(_KINDS[a][1](value) for a in kinds):
        return None
    return " or ".join([_KINDS[a][0] for a in kinds] + (["null"] if "None" in parts else []))


def _field_problem(a: ModelArgs) -> str | None:
    """validate's first step: each field's type, a float's finiteness and the scales' sign."""
    for f in dataclasses.fields(a):
        want = _type_problem(getattr(a, f.name), f.type)
        if want:
            return f"{f.name}={getattr(a, f.name)!r} must be {want}"
    for f in dataclasses.fields(a):  # json reads NaN and Infinity: a NaN scale loaded silently (a review)
        v = getattr(a, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            return f"{f.name}={v} must be finite"
    for name in ("route_scale", "rope_attention_factor"):  # a negative route scale flipped every expert's sign
        if not getattr(a, name) > 0:
            return f"{name}={getattr(a, name)} must be positive"
    if a.route_scale > ROUTE_SCALE_MAX:  # 1e30 loaded and ran: the bundled model's logits were all 0
        return (f"route_scale={a.route_scale} must be at most {ROUTE_SCALE_MAX} (it scales the routed experts' "
                "output: DeepSeek-V3 has 2.5, V2 16, V2-Lite 1)")
    return None


def _size_problem(a: ModelArgs) -> str | None:
    """validate's second step: the sizes a layer is built with, the BOS/EOS ids and the MTP depth."""
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
        if getattr(a, name) <= 0:
            return f"{name}={getattr(a, name)} must be positive"
    if a.qk_rope_head_dim % 2:
        return f"qk_rope_head_dim={a.qk_rope_head_dim} must be even (RoPE rotates pairs)"
    # the jobs feed bos_token_id to the embedding: one outside the vocabulary passed every check, then
    # failed the first forward pass and left a run directory behind (a checkpoint tour)
    eos = a.eos_token_id if isinstance(a.eos_token_id, list) else [a.eos_token_id]
    for name, ids in (("bos_token_id", [a.bos_token_id]), ("eos_token_id", eos)):
        if any(i is not None and not 0 <= i < a.vocab_size for i in ids):
            return f"{name}={getattr(a, name)} must be a token id in [0, vocab_size={a.vocab_size})"
    # sizes a layer is built with (a negative size was a torch error from inside the model's
    # construction; found by a review)
    moe = a.n_dense_layers < a.n_layers or a.n_mtp_layers > 0
    for name, floor, when in (("inter_dim", 1, a.n_dense_layers > 0), ("moe_inter_dim", 1, moe),
                              ("n_shared_experts", 0, moe), ("q_lora_rank", 0, True),
                              ("qk_nope_head_dim", 0, True), ("max_seq_len", 1, True)):
        if when and getattr(a, name) < floor:
            return f"{name}={getattr(a, name)} must be {'positive' if floor else '>= 0'}"
    # module k>0 needs module k-1's hidden states and token i+k+1: not built. A negative depth passed and built
    # no module, while the memory plan counted one layer less (a bug hunt)
    if not 0 <= a.n_mtp_layers <= 1:
        return (f"n_mtp_layers={a.n_mtp_layers}: MTP depth 0 or 1 only (DeepSeek-V3 ships depth 1; deeper "
                "modules would run unchained)")
    return None


def _numerics_problem(a: ModelArgs) -> str | None:
    """validate's third step: the RoPE (and YaRN) parameters and RMSNorm's eps (rope_theta=1 was a
    ZeroDivisionError, found by a review)."""
    if not a.rope_theta > 1:  # RoPE's frequencies are theta^(-2i/d), their wavelengths log(theta)
        return f"rope_theta={a.rope_theta} must be greater than 1"
    if not a.norm_eps > 0:
        return f"norm_eps={a.norm_eps} must be positive (RMSNorm divides by sqrt(mean + eps))"
    if a.yarn:
        for name in ("rope_factor", "original_seq_len", "beta_fast", "beta_slow"):
            if not getattr(a, name) > 0:
                return f"{name}={getattr(a, name)} must be positive (YaRN)"
        if a.rope_factor < 1:  # the rotary frequencies were left as they are, silently (`precompute_freqs_cis`)
            return f"rope_factor={a.rope_factor} must be at least 1 (YaRN's context-extension factor)"
    return None


def _choice_problem(a: ModelArgs) -> str | None:
    """validate's fourth step: the dense layers' count, and the router and RoPE kinds a config names
    (a DeepSeek family's router as that family has it)."""
    if not 0 <= a.n_dense_layers <= a.n_layers:
        return f"n_dense_layers={a.n_dense_layers} must be in [0, n_layers={a.n_layers}]"
    if a.score_func not in ("sigmoid", "softmax"):
        return f"score_func={a.score_func!r} must be 'sigmoid' or 'softmax'"
    family = {"deepseek_v3": ("sigmoid", None), "deepseek_v2": ("softmax", False)}.get(a.model_type)
    if family and a.score_func != family[0]:
        return f"score_func={a.score_func!r}: a {a.model_type} router is {family[0]}"
    if family and family[1] is not None and a.norm_topk_prob != family[1]:
        return (f"norm_topk_prob={a.norm_topk_prob}: a {a.model_type} router does not renormalise "
                "its chosen weights")
    if a.rope_type not in ("yarn", "default"):
        return f"rope_type={a.rope_type!r} must be 'yarn' or 'default'"
    return None


def _experts_problem(a: ModelArgs) -> str | None:
    """validate's last step, where some MoE layer exists: the expert counts, groups and top-k."""
    if not (a.n_dense_layers < a.n_layers or a.n_mtp_layers > 0):
        return None
    E, G = a.n_routed_experts, a.n_expert_groups
    if E <= 0 or G <= 0 or E % G:
        return f"n_routed_experts={E} must be a positive multiple of n_expert_groups={G}"
    if not 1 <= a.n_limited_groups <= G:
        return f"n_limited_groups={a.n_limited_groups} must be in [1, n_expert_groups={G}]"
    allowed = a.n_limited_groups * (E // G)
    if not 1 <= a.n_activated_experts <= allowed:
        return (f"n_activated_experts={a.n_activated_experts} must be in [1, {allowed}] "
                f"(n_limited_groups x experts per group)")
    if G > 1 and a.score_func == "sigmoid" and E // G < 2:
        return f"group-limited sigmoid routing scores a group by its top-2 experts; experts per group is {E // G}"
    return None


PROBLEM_STEPS = (_field_problem, _size_problem, _numerics_problem, _choice_problem, _experts_problem)
