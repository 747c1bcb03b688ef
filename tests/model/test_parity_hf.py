"""Parity with transformers' DeepseekV3ForCausalLM (and DeepseekV2ForCausalLM) on random weights.

Each config is written once by transformers (`save_pretrained`, float32, random weights with a
nonzero balancing bias, see helpers.randomize_), then read by both transformers and `model.load`
(with both attention implementations). Acceptance:

- logits: max |ours - hf| <= 1e-4 x max |hf|;
- routing: the SET of chosen experts agrees for >= 99.9% of (token, MoE layer) pairs.

The comparisons are helper functions that return the measured numbers; the negative controls use
the same helpers to show that the checks do fail when the balancing bias is ignored, when RoPE
rotates de-interleaved (rotate-half) pairs, or when the YaRN frequencies are dropped.
Run with `pytest -s` to see the figures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import model  # noqa: E402
import model.mla  # noqa: E402
from helpers import HF_TINY, hf_checkpoint, load_hf  # noqa: E402
from model.layers import rope_inv_freq  # noqa: E402

LOGIT_RTOL = 1e-4  # max |ours - hf| / max |hf|
MIN_AGREEMENT = 0.999  # fraction of (token, layer) pairs with the same expert set
WEIGHT_ATOL = 1e-5  # routing weights (after route_scale) for tokens whose sets agree

# HF config overrides per case (on top of helpers.HF_TINY).
V3_CONFIGS = {
    "tiny_grouped": {},  # n_group=4, topk_group=2, dims not multiples of 128
    "no_group_limit": dict(n_group=1, topk_group=1),
    "no_q_lora": dict(q_lora_rank=None),
    "all_moe": dict(first_k_dense_replace=0),
    "bigger_top8": dict(hidden_size=200, intermediate_size=264, moe_intermediate_size=48, num_attention_heads=5,
                        num_key_value_heads=5, n_routed_experts=32, num_experts_per_tok=8, n_group=8,
                        topk_group=4, q_lora_rank=64, kv_lora_rank=48, qk_nope_head_dim=24,
                        qk_rope_head_dim=16, v_head_dim=20, vocab_size=307),
    # keys transformers reads its own way: the latents' norms keep eps 1e-6 whatever rms_norm_eps says,
    # a V3 router ignores topk_method, and YaRN's `truncate: false` leaves the ramp's ends unrounded
    "hf_quirks": dict(rms_norm_eps=0.05, topk_method="greedy",
                      rope_scaling=HF_TINY["rope_scaling"] | {"truncate": False}),
}
# DeepSeek-V2 style: softmax routing, no bias, full-rank wq, no renormalisation, route_scale != 1.
# Rope: mscale != mscale_all_dim so the YaRN cos/sin multiplier (attention_factor) is not 1.
V2_BASE = dict(
    vocab_size=211, hidden_size=72, intermediate_size=136, moe_intermediate_size=40,
    num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4, routed_scaling_factor=16.0,
    norm_topk_prob=False, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8,
    v_head_dim=12, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
    rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                  "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707,
                  "rope_theta": 10000.0},
)
V2_CONFIGS = {
    "v2_greedy": dict(topk_method="greedy", n_group=1, topk_group=1),  # V2-Lite style
    "v2_group_limited": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2),  # V2 236B style
    # transformers' V2 router does not renormalise the chosen weights even when the config asks to
    "v2_norm_topk_flag": dict(topk_method="greedy", n_group=1, topk_group=1, norm_topk_prob=True),
}
# "absorb-latent": absorb with latent-space attention forced on every call (plain "absorb" expands
# the latents in a prefill, where that is cheaper; decode stays latent)
ATTN_IMPLS = ("absorb", "naive", "absorb-latent")
ORIGINAL_MAX_POS = HF_TINY["rope_scaling"]["original_max_position_embeddings"]  # 64


def make_inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "batch4x48": torch.randint(0, vocab, (4, 48), generator=g),  # 192 tokens per MoE layer
        "long2x112": torch.randint(0, vocab, (2, 112), generator=g),  # beyond original_max_position_embeddings
    }


# ----------------------------------------------------------------------------------------- helpers
def run_ours(m: model.Transformer, tokens: torch.Tensor, fwd_hooks=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits [B, S, V] and {layer: chosen expert ids [B*S, K]} from our model."""
    with torch.no_grad(), m.hooks(fwd_hooks):
        logits, cache = m.run_with_cache(tokens, names="layers.*.ffn.gate.hook_topk_ids")
    ids = {int(name.split(".")[1]): t for name, t in cache.items()}
    return logits, ids


def run_ours_weights(m: model.Transformer, tokens: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (ids [T, K], routing weights [T, K])} from our model."""
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens, names=["layers.*.ffn.gate.hook_topk_ids",
                                                   "layers.*.ffn.gate.hook_topk_weights"])
    out = {}
    for name, ids in cache.items():
        if name.endswith("hook_topk_ids"):
            layer = int(name.split(".")[1])
            out[layer] = (ids, cache[name.replace("hook_topk_ids", "hook_topk_weights")])
    return out


def run_hf(hf, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Logits [B, S, V] and {layer: (ids [B*S, K], weights [B*S, K])} from transformers, read with
    forward hooks on each MoE layer's router (which returns (router_logits, weights, indices))."""
    routed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        gate = getattr(layer.mlp, "gate", None)  # dense MLPs have gate_proj, MoE layers a router `gate`
        if isinstance(gate, torch.nn.Module):
            def hook(mod, args, out, i=i):
                _, weights, ids = out
                routed[i] = (ids.detach().clone(), weights.detach().clone())
            handles.append(gate.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = hf(tokens).logits
    finally:
        for h in handles:
            h.remove()
    return logits, routed


def logits_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def routing_agreement(ours: dict[int, torch.Tensor], ref: dict[int, torch.Tensor]) -> tuple[float, int]:
    """Fraction of (token, layer) pairs whose expert SETS agree, and the number of pairs."""
    assert sorted(ours) == sorted(ref), f"MoE layers differ: ours {sorted(ours)}, hf {sorted(ref)}"
    same = total = 0
    for layer in ours:
        a, b = ours[layer].sort(dim=-1).values, ref[layer].sort(dim=-1).values
        assert a.shape == b.shape, f"layer {layer}: ids shape {tuple(a.shape)} vs {tuple(b.shape)}"
        same += int((a == b).all(dim=-1).sum())
        total += a.shape[0]
    return same / total, total


def routing_weight_diff(ours: dict[int, tuple], ref: dict[int, tuple]) -> float:
    """Max |w_ours - w_hf| per (token, expert), over tokens whose expert sets agree."""
    worst = 0.0
    for layer, (ids_a, w_a) in ours.items():
        ids_b, w_b = ref[layer]
        sa, ia = ids_a.sort(dim=-1)
        sb, ib = ids_b.sort(dim=-1)
        ok = (sa == sb).all(dim=-1)
        if ok.any():
            wa, wb = w_a.gather(1, ia)[ok], w_b.float().gather(1, ib)[ok]
            worst = max(worst, float((wa - wb).abs().max()))
    return worst


def compare(m: model.Transformer, hf_out, tokens: torch.Tensor, fwd_hooks=()) -> dict[str, float]:
    """Run ours on `tokens` and measure against transformers' precomputed (logits, routing)."""
    hf_logits, hf_routed = hf_out
    logits, ids = run_ours(m, tokens, fwd_hooks)
    agree, pairs = routing_agreement(ids, {k: v[0] for k, v in hf_routed.items()})
    return {"rel": logits_rel_diff(logits, hf_logits), "agree": agree, "pairs": pairs}


def passes(r: dict[str, float]) -> bool:
    return r["rel"] <= LOGIT_RTOL and r["agree"] >= MIN_AGREEMENT


def report(tag: str, r: dict[str, float]) -> None:
    print(f"\n[{tag}] logits max rel diff {r['rel']:.3e} (tol {LOGIT_RTOL:g}); "
          f"expert-set agreement {r['agree']:.4%} of {r['pairs']} (token, layer) pairs")


# ---------------------------------------------------------------------------------------- fixtures
class Case:
    """One checkpoint: the transformers model, its outputs on the inputs, and our loaded models."""

    def __init__(self, name: str, root: Path) -> None:
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.name = name
        if name in V3_CONFIGS:
            self.dir = hf_checkpoint(root / name, seed=0, **V3_CONFIGS[name])
            self.hf = load_hf(self.dir)
        else:
            self.dir = hf_checkpoint(root / name, seed=0, base=V2_BASE, family="DeepseekV2", **V2_CONFIGS[name])
            self.hf = load_hf(self.dir, family="DeepseekV2")
        self.inputs = make_inputs(self.hf.config.vocab_size)
        self.hf_out = {k: run_hf(self.hf, t) for k, t in self.inputs.items()}
        self._ours: dict[str, model.Transformer] = {}

    def ours(self, attn_impl: str) -> model.Transformer:
        if attn_impl not in self._ours:
            m = model.load(self.dir, attn_impl=attn_impl.removesuffix("-latent"))
            if attn_impl.endswith("-latent"):
                for a in m.attention_modules():
                    a.latent_attention = "always"
            self._ours[attn_impl] = m
        return self._ours[attn_impl]


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity_hf")
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            built[name] = Case(name, root)
        return built[name]

    return get


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(V3_CONFIGS))
def test_checkpoint_is_meaningful(cases, name):
    """float32 throughout, and every MoE layer carries a nonzero balancing bias (equal on both sides)."""
    c = cases(name)
    m = c.ours("absorb")
    assert m.embed.weight.dtype == torch.float32 and c.hf.lm_head.weight.dtype == torch.float32
    moe = [i for i, layer in enumerate(m.layers) if hasattr(layer.ffn, "gate")]
    assert moe, "config has no MoE layer"
    for i in moe:
        ours_bias = m.layers[i].ffn.gate.bias
        hf_bias = c.hf.model.layers[i].mlp.gate.e_score_correction_bias
        assert ours_bias.abs().min() > 0, f"layer {i}: balancing bias has zeros"
        assert torch.equal(ours_bias, hf_bias.float()), f"layer {i}: bias not loaded"


@pytest.mark.parametrize("inp", ["batch4x48", "long2x112"])
@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("name", list(V3_CONFIGS))
def test_parity_v3(cases, name, attn_impl, inp):
    c = cases(name)
    m = c.ours(attn_impl)
    tokens = c.inputs[inp]
    if inp.startswith("long"):
        assert tokens.shape[1] > ORIGINAL_MAX_POS and m.args.yarn and m.args.original_seq_len == ORIGINAL_MAX_POS
    r = compare(m, c.hf_out[inp], tokens)
    wdiff = routing_weight_diff(run_ours_weights(m, tokens), c.hf_out[inp][1])
    report(f"{name}/{attn_impl}/{inp}", r)
    print(f"  routing weights max abs diff {wdiff:.3e}")
    assert r["rel"] <= LOGIT_RTOL, r
    assert r["agree"] >= MIN_AGREEMENT, r
    assert wdiff <= WEIGHT_ATOL


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("name", list(V2_CONFIGS))
def test_parity_v2(cases, name, attn_impl):
    c = cases(name)
    m = c.ours(attn_impl)
    a = m.args
    assert (a.model_type, a.score_func, a.q_lora_rank, a.norm_topk_prob) == ("deepseek_v2", "softmax", 0, False)
    assert a.route_scale == 16.0 and a.rope_attention_factor != 1.0
    assert all(layer.ffn.gate.bias is None for layer in m.layers if hasattr(layer.ffn, "gate"))
    for inp, tokens in c.inputs.items():
        r = compare(m, c.hf_out[inp], tokens)
        wdiff = routing_weight_diff(run_ours_weights(m, tokens), c.hf_out[inp][1])
        report(f"{name}/{attn_impl}/{inp}", r)
        print(f"  routing weights max abs diff {wdiff:.3e}")
        assert passes(r), r
        assert wdiff <= WEIGHT_ATOL * a.route_scale


# -------------------------------------------------------------------------------- negative controls
def drop_bias_hook(m: model.Transformer):
    """A hook that subtracts each gate's balancing bias back out of its selection scores
    (routing as if the bias were ignored)."""
    def fn(select_scores: torch.Tensor, hook) -> torch.Tensor:
        gate = m.get_submodule(hook.name.rsplit(".", 1)[0])  # layers.L.ffn.gate
        return select_scores - gate.bias

    return fn


@pytest.mark.parametrize("name", ["tiny_grouped", "no_group_limit"])
def test_negative_control_bias_ignored(cases, name):
    c = cases(name)
    m = c.ours("absorb")
    r = compare(m, c.hf_out["batch4x48"], c.inputs["batch4x48"],
                fwd_hooks=[("layers.*.ffn.gate.hook_select_scores", drop_bias_hook(m))])
    report(f"NEGATIVE bias ignored/{name}", r)
    assert r["agree"] < MIN_AGREEMENT, "ignoring the balancing bias went unnoticed by the routing check"
    assert r["rel"] > LOGIT_RTOL, "ignoring the balancing bias went unnoticed by the logits check"
    assert passes(compare(m, c.hf_out["batch4x48"], c.inputs["batch4x48"]))  # hooks were removed


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The WRONG RoPE layout for DeepSeek weights: rotate (x_i, x_{i+R/2}) pairs (GPT-NeoX style)."""
    if x.dim() == 4:
        cos, sin = cos[:, :, None], sin[:, :, None]
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
def test_negative_control_rope_not_interleaved(cases, monkeypatch, attn_impl):
    c = cases("tiny_grouped")
    m = c.ours(attn_impl)
    assert model.mla.apply_rope is model.layers.apply_rope  # what MLA calls
    monkeypatch.setattr(model.mla, "apply_rope", rope_rotate_half)
    r = compare(m, c.hf_out["batch4x48"], c.inputs["batch4x48"])
    report(f"NEGATIVE rope rotate-half/{attn_impl}", r)
    assert r["rel"] > LOGIT_RTOL, "de-interleaved RoPE went unnoticed by the logits check"
    monkeypatch.undo()
    assert passes(compare(m, c.hf_out["batch4x48"], c.inputs["batch4x48"]))


def test_negative_control_yarn_frequencies_dropped(cases):
    """Plain RoPE frequencies instead of YaRN's (softmax scale unchanged): the long input must fail."""
    c = cases("tiny_grouped")
    m = c.ours("absorb")
    plain = rope_inv_freq(dataclasses.replace(m.args, rope_type="default"))
    assert not torch.allclose(plain, m.rope_inv_freq)
    saved = m.rope_inv_freq.clone()
    try:
        m.rope_inv_freq.copy_(plain)
        r = compare(m, c.hf_out["long2x112"], c.inputs["long2x112"])
    finally:
        m.rope_inv_freq.copy_(saved)
    report("NEGATIVE yarn frequencies dropped/long2x112", r)
    assert r["rel"] > LOGIT_RTOL, "dropping the YaRN frequencies went unnoticed by the logits check"
    assert passes(compare(m, c.hf_out["long2x112"], c.inputs["long2x112"]))


# --------------------------------------------------------------------------------- attention pattern
def test_the_hooked_attention_pattern_is_transformers_eager_attention(cases):
    """What a hook on hook_pattern sees is softmax(Q K^T x softmax_scale) under the causal mask: equal,
    per layer, head and position, to the attention weights transformers' eager attention returns
    (output_attentions) on the same checkpoint, with each attention implementation. The scores made for
    the hook without the softmax scale went unnoticed (a review): the rows still sum to 1 and stay
    causal, and an observed pattern leaves the output the fused kernel's."""
    import transformers

    c = cases("tiny_grouped")
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(c.dir, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    tokens = c.inputs["batch4x48"][:2, :10]
    with torch.no_grad():
        want = hf(tokens, output_attentions=True).attentions  # one [B, H, S, S] per layer
    assert len(want) == 3 and all(ref.shape == (2, 4, 10, 10) for ref in want)
    assert min(float(ref[..., 1:, :].max()) for ref in want) > 0.5  # far from uniform: a wrong scale shows
    for attn_impl in ATTN_IMPLS:
        m = c.ours(attn_impl)
        with torch.no_grad():
            _, cache = m.run_with_cache(tokens, names="layers.*.attn.hook_pattern")
        for i, ref in enumerate(want):
            diff = float((cache[f"layers.{i}.attn.hook_pattern"] - ref).abs().max())
            assert diff < 1e-5, (attn_impl, i, diff)


# ------------------------------------------------------------------------------------- router ties
def router_pair(family: str, *, experts: int, groups: int, limit: int, seed: int, **hf_overrides):
    """Our Gate and transformers' router of `family` over one random float32 weight (no bias)."""
    import transformers
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3
    from model import ModelArgs
    from model.moe import Gate

    base = HF_TINY if family == "DeepseekV3" else V2_BASE
    sizes = dict(hidden_size=8, n_routed_experts=experts, num_experts_per_tok=8, n_group=groups, topk_group=limit)
    cfg = getattr(transformers, f"{family}Config")(**base | sizes | hf_overrides)
    ref = (v3.DeepseekV3TopkRouter if family == "DeepseekV3" else v2.DeepseekV2TopkRouter)(cfg)
    ours = Gate(ModelArgs.from_hf_config(cfg.to_dict()))
    w = torch.randn(experts, 8, generator=torch.Generator().manual_seed(seed))
    w[5] = w[3]  # exact ties wherever expert 3 scores: duplicated rows
    w[experts - 1] = w[3]
    with torch.no_grad():
        ours.weight.copy_(w)
        ref.weight.copy_(w)
        if ours.bias is not None:
            ours.bias.zero_()
    return ours, ref


@pytest.mark.parametrize("family, groups, limit, extra", [
    ("DeepseekV3", 8, 4, {}), ("DeepseekV3", 1, 1, {}), ("DeepseekV3", 8, 8, {}),
    ("DeepseekV3", 8, 4, {"norm_topk_prob": False}),
    ("DeepseekV2", 1, 1, {"topk_method": "greedy"}), ("DeepseekV2", 8, 3, {"topk_method": "group_limited_greedy"}),
])
@torch.no_grad()
def test_exact_ties_in_the_router_choose_the_experts_transformers_chooses(family, groups, limit, extra):
    """Exactly equal scores (an all-zero input ties every expert, duplicated router rows tie three) choose
    the same experts with the same weights as transformers' router: both leave ties to torch.topk,
    whose pick among equals is neither the lowest nor the highest id (docs/deepseek-v3.md, router)."""
    ours, ref = router_pair(family, experts=64, groups=groups, limit=limit, seed=groups + limit, **extra)
    x = torch.cat([torch.zeros(3, 8), torch.randn(500, 8, generator=torch.Generator().manual_seed(0))])
    w, ids, _ = ours(x)
    _, ref_w, ref_ids = ref(x)
    (a, ia), (b, ib) = ids.sort(-1), ref_ids.sort(-1)
    assert torch.equal(a, b)
    # (the normalising sums add the same K weights in another order: a few ulps apart at most)
    torch.testing.assert_close(w.gather(1, ia), ref_w.gather(1, ib).to(w.dtype), rtol=1e-6, atol=0)
    # the control: where every expert ties, breaking ties by the lowest (a stable sort) or the highest id
    # would choose other experts, so this compares tie rules, not only scores
    assert a[0].tolist() not in (list(range(8)), list(range(56, 64)))
