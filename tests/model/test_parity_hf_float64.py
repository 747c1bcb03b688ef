"""Parity with transformers in float64, at the corners: where test_parity_hf.py's float32 tolerance
(1e-4 of the logits) would hide a slip of one formula, these see 1e-12.

transformers runs three steps in float32 whatever the model's dtype: its RMSNorm, its router's
logits and, in DeepseekV2, RoPE's complex rotation (with cos/sin from `torch.polar`, a float32 ulp
from torch.cos/torch.sin at some angles). Here those steps of the transformers model are promoted to
float64, instance by instance (`promote_`), each otherwise as transformers writes it; RoPE's angles
and cos/sin stay float32 on both sides, as docs/deepseek-v3.md says. Measured on these configs
(2026-12-07): logits within 6e-15 of the largest, every (token, MoE layer) expert set equal.

Corners: YaRN past original_max_position_embeddings with mscale != mscale_all_dim (or no mscale),
no group limit and all groups kept, norm_topk_prob false, no dense layer and no MoE layer, a
full-rank query, V2's softmax routers; prefill then decode through the KV cache, right padding
against transformers' attention mask, and the MTP module against a transformers block built from the
checkpoint's MTP layer. The negative controls show the tolerance sees a float32 step and a
frequency one float32 ulp off, and the YaRN factor-40 control measures the one intended difference
(docs/deepseek-v3.md, "RoPE and YaRN").
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import model  # noqa: E402
from helpers import HF_TINY, hf_checkpoint, random_model  # noqa: E402

REL64 = 1e-12  # max |ours - hf| / max |hf| in float64 (measured: <= 6e-15)
RS = HF_TINY["rope_scaling"]  # factor 4, original_max_position_embeddings 64, max_position_embeddings 256
V3_CORNERS = {
    "yarn_mscale_ratio": dict(rope_scaling=RS | {"mscale": 0.5, "mscale_all_dim": 1.0}),  # cos/sin x 0.939
    "yarn_no_mscale": dict(rope_scaling={k: v for k, v in RS.items() if k != "mscale"} | {"mscale_all_dim": 0.8}),
    "no_group_limit": dict(n_group=1, topk_group=1),
    "all_groups_kept": dict(n_group=4, topk_group=4),
    "no_norm_topk": dict(norm_topk_prob=False),
    "no_dense_layer": dict(first_k_dense_replace=0),
    "no_moe_layer": dict(first_k_dense_replace=3),  # = num_hidden_layers
    "no_q_lora": dict(q_lora_rank=None),
}
V2_BASE = dict(
    HF_TINY, n_shared_experts=2, routed_scaling_factor=16.0, norm_topk_prob=False, q_lora_rank=None,
    num_nextn_predict_layers=0, rope_scaling=RS | {"mscale": 1.0, "mscale_all_dim": 0.707},
)
V2_CORNERS = {
    "v2_greedy": dict(topk_method="greedy", n_group=1, topk_group=1),
    "v2_group_limited": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2),
    "v2_all_groups_kept": dict(topk_method="group_limited_greedy", n_group=4, topk_group=4),
}


# ------------------------------------------------------------------- transformers, promoted to float64
def _rms_norm64(self, x):
    """transformers' DeepseekV3RMSNorm / DeepseekV2RMSNorm without its cast to float32."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _v3_router64(self, hidden_states):
    """transformers' DeepseekV3TopkRouter.forward with float64 logits (the same steps otherwise)."""
    x = hidden_states.view(-1, self.hidden_dim).double()
    logits = F.linear(x, self.weight.double())
    scores = logits.sigmoid()
    choice = scores + self.e_score_correction_bias.double()
    per_group = self.num_experts // self.num_group
    group_scores = choice.view(-1, self.num_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, self.num_group, per_group).reshape(-1, self.num_experts)
    choice = choice.masked_fill(~score_mask.bool(), float("-inf"))
    ids = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if self.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return logits, weights * self.routed_scaling_factor, ids


def _v2_router64(self, hidden_states):
    """transformers' DeepseekV2TopkRouter.forward with float64 logits and softmax."""
    x = hidden_states.view(-1, self.hidden_dim).double()
    logits = F.linear(x, self.weight.double())
    scores = logits.softmax(dim=-1)
    if self.topk_method == "group_limited_greedy":
        per_group = self.num_experts // self.num_group
        group_scores = scores.view(-1, self.num_group, per_group).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, self.num_group, per_group).reshape(-1, self.num_experts)
        scores = scores.masked_fill(~score_mask.bool(), 0.0)
    weights, ids = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
    return logits, weights * self.routed_scaling_factor, ids


def _v2_rotary_cos_sin(self, x, position_ids):
    """transformers' DeepseekV2RotaryEmbedding.forward with cos/sin from torch.cos/torch.sin (as
    DeepseekV3's and ours) instead of torch.polar; the same float32 angles and attention factor."""
    freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
    return torch.complex(freqs.cos() * self.attention_scaling, freqs.sin() * self.attention_scaling)


def _v2_apply_rotary64(xq, xk, freqs_cis):
    """transformers' DeepseekV2 apply_rotary_emb, rotating in complex128 instead of complex64."""
    f = freqs_cis.unsqueeze(1).to(torch.complex128)
    q = torch.view_as_complex(xq.double().reshape(*xq.shape[:-1], -1, 2).contiguous())
    k = torch.view_as_complex(xk.double().reshape(*xk.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(q * f).flatten(3).type_as(xq), torch.view_as_real(k * f).flatten(3).type_as(xk)


def promote_(hf) -> None:
    """transformers' float32 steps of `hf` (a float64 model) promoted to float64, on its instances."""
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3

    for mod in hf.modules():
        if isinstance(mod, (v3.DeepseekV3RMSNorm, v2.DeepseekV2RMSNorm)):
            mod.forward = types.MethodType(_rms_norm64, mod)
        elif isinstance(mod, v3.DeepseekV3TopkRouter):
            mod.forward = types.MethodType(_v3_router64, mod)
        elif isinstance(mod, v2.DeepseekV2TopkRouter):
            mod.forward = types.MethodType(_v2_router64, mod)
        elif isinstance(mod, v2.DeepseekV2RotaryEmbedding):
            mod.forward = types.MethodType(_v2_rotary_cos_sin, mod)


def load_hf64(d: Path, family: str = "DeepseekV3", promote: bool = True):
    """transformers' model of checkpoint `d` in float64 (eager experts, SDPA attention: both run float64)."""
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    hf = getattr(transformers, f"{family}ForCausalLM").from_pretrained(
        d, dtype=torch.float32, experts_implementation="eager", attn_implementation="sdpa").eval().double()
    if promote:
        promote_(hf)
    return hf


@pytest.fixture
def v2_rotation64(monkeypatch):
    """DeepseekV2's module-level rotation in complex128 for this test (its models call it by name)."""
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2

    monkeypatch.setattr(v2, "apply_rotary_emb", _v2_apply_rotary64)


# -------------------------------------------------------------------------------------------- helpers
def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def routed(m, tokens) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Our logits and {MoE layer: expert ids [T, K]}."""
    if not any(hasattr(layer.ffn, "gate") for layer in m.layers):  # no router: its hook names match nothing
        return m(tokens), {}
    logits, cache = m.run_with_cache(tokens, names="layers.*.ffn.gate.hook_topk_ids")
    return logits, {int(k.split(".")[1]): v for k, v in cache.items()}


def hf_routed(hf, tokens) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """transformers' logits and {MoE layer: expert ids [T, K]}, read with hooks on its routers."""
    ids, handles = {}, []
    for i, layer in enumerate(hf.model.layers):
        if isinstance(getattr(layer.mlp, "gate", None), torch.nn.Module):
            handles.append(layer.mlp.gate.register_forward_hook(lambda mod, a, out, i=i: ids.__setitem__(i, out[2])))
    try:
        return hf(tokens).logits, ids
    finally:
        for h in handles:
            h.remove()


def same_sets(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k].sort(-1).values, b[k].sort(-1).values) for k in a)


def tokens(vocab: int, shape=(2, 250), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """name -> a transformers checkpoint of that corner (built once per module)."""
    root, built = tmp_path_factory.mktemp("parity64"), {}

    def get(name: str) -> Path:
        if name not in built:
            if name in V2_CORNERS:
                built[name] = hf_checkpoint(root / name, base=V2_BASE, family="DeepseekV2", **V2_CORNERS[name])
            else:
                built[name] = hf_checkpoint(root / name, **V3_CORNERS.get(name, {}))
        return built[name]

    return get


# ---------------------------------------------------------------------------------------------- tests
@torch.no_grad()
@pytest.mark.parametrize("name", list(V3_CORNERS))
def test_v3_corners_equal_transformers_in_float64(ckpt, name):
    hf = load_hf64(ckpt(name))
    x = tokens(hf.config.vocab_size)  # positions 0-249: past original_max_position_embeddings (64)
    want, want_ids = hf_routed(hf, x)
    for impl in ("absorb", "naive", "absorb-latent"):  # -latent: latent-space attention in the prefill too
        m = model.load(ckpt(name), dtype=torch.float64, attn_impl=impl.removesuffix("-latent"))
        for a in m.attention_modules():
            a.latent_attention = "always" if impl.endswith("-latent") else "auto"
        assert m.args.original_seq_len == 64 < x.shape[1] and m.args.rope_factor == 4
        got, ids = routed(m, x)
        r = rel(got, want)
        print(f"\n[{name}/{impl}] float64 logits max rel diff {r:.2e}")
        assert r <= REL64, (name, impl, r)
        assert same_sets(ids, want_ids), (name, impl)
        assert len(ids) == {"no_dense_layer": 3, "no_moe_layer": 0}.get(name, 2)


@torch.no_grad()
@pytest.mark.parametrize("name", list(V2_CORNERS))
def test_v2_corners_equal_transformers_in_float64(ckpt, name, v2_rotation64):
    hf = load_hf64(ckpt(name), family="DeepseekV2")
    m = model.load(ckpt(name), dtype=torch.float64)
    assert m.args.rope_attention_factor != 1 and m.args.score_func == "softmax"
    x = tokens(hf.config.vocab_size)
    want, want_ids = hf_routed(hf, x)
    got, ids = routed(m, x)
    print(f"\n[{name}] float64 logits max rel diff {rel(got, want):.2e}")
    assert rel(got, want) <= REL64 and same_sets(ids, want_ids)


@torch.no_grad()
@pytest.mark.parametrize("impl", ["absorb", "naive"])
def test_decode_through_the_kv_cache_equals_transformers_full_forward_in_float64(ckpt, impl):
    """A prefill of 40 tokens, then one token at a time to 90 (across position 64, where YaRN's
    original context ends); then rows of different prefill lengths (right-padded) decoding together."""
    hf = load_hf64(ckpt("base"))
    x = tokens(hf.config.vocab_size, (3, 90), seed=2)
    want = hf(x).logits
    m = model.load(ckpt("base"), dtype=torch.float64, attn_impl=impl)
    got = torch.cat([m(x[:, :40], use_cache=True)] + [m(x[:, p:p + 1], start_pos=p) for p in range(40, 90)], 1)
    assert rel(got, want) <= REL64, rel(got, want)
    m.reset_cache()
    lengths = torch.tensor([30, 35, 40])
    m(x[:, :40].masked_fill(torch.arange(40) >= lengths[:, None], 0), lengths=lengths, use_cache=True)  # padded
    steps = [m(x.gather(1, (lengths + s)[:, None]), start_pos=lengths + s) for s in range(20)]
    ragged = torch.stack([want[r, lengths[r]:lengths[r] + 20] for r in range(3)])
    assert rel(torch.cat(steps, 1), ragged) <= REL64


@torch.no_grad()
def test_right_padding_equals_transformers_attention_mask_in_float64(ckpt):
    """`lengths` against transformers' attention_mask on the same padded batch, at every real position."""
    hf = load_hf64(ckpt("base"))
    x = tokens(hf.config.vocab_size, (3, 90), seed=3)
    lengths = torch.tensor([90, 61, 17])
    real = torch.arange(90)[None] < lengths[:, None]
    x = x.masked_fill(~real, 0)
    want = hf(x, attention_mask=real.long()).logits
    for impl in ("absorb", "naive"):
        got = model.load(ckpt("base"), dtype=torch.float64, attn_impl=impl)(x, lengths=lengths)
        assert rel(got[real], want[real]) <= REL64, impl
        assert rel(got[2, :17], hf(x[2:, :17]).logits[0]) <= REL64  # = the short row alone


def mtp_layer(ckpt_dir: Path):
    """The checkpoint's MTP layer (`model.layers.{n}.*`, float64, prefix removed) and transformers'
    decoder layer n built from its block's tensors (float64 throughout, `promote_`d)."""
    import transformers
    from safetensors.torch import load_file
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3

    cfg = transformers.DeepseekV3Config.from_pretrained(ckpt_dir)
    cfg._experts_implementation, cfg._attn_implementation = "eager", "sdpa"
    prefix = f"model.layers.{cfg.num_hidden_layers}."
    sd = {k.removeprefix(prefix): v.double() for k, v in load_file(ckpt_dir / "model.safetensors").items()
          if k.startswith(prefix)}
    block_parts = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    weights = {k: v for k, v in sd.items() if k.split(".")[0] in block_parts and ".experts." not in k}
    experts = range(cfg.n_routed_experts)
    weights["mlp.experts.gate_up_proj"] = torch.stack([
        torch.cat([sd[f"mlp.experts.{e}.gate_proj.weight"], sd[f"mlp.experts.{e}.up_proj.weight"]]) for e in experts])
    weights["mlp.experts.down_proj"] = torch.stack([sd[f"mlp.experts.{e}.down_proj.weight"] for e in experts])
    block = v3.DeepseekV3DecoderLayer(cfg, layer_idx=cfg.num_hidden_layers).double().eval()
    block.load_state_dict(weights, strict=True)
    promote_(block)
    return sd, block


@torch.no_grad()
def test_mtp_is_a_transformers_block_over_the_checkpoints_mtp_layer_in_float64(tmp_path):
    """docs/deepseek-v3.md's MTP, assembled from the checkpoint's layer-n tensors by their names with
    transformers' decoder layer: eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]) with h_i the main
    model's final-normed hidden state, one block at positions 0.., shared_head.norm, shared_head.head."""
    model.save(random_model("tiny", seed=3), tmp_path)
    hf = load_hf64(tmp_path)
    sd, block = mtp_layer(tmp_path)

    def norm(name, t):
        return sd[f"{name}.weight"] * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + hf.config.rms_norm_eps)

    x = tokens(hf.config.vocab_size, (2, 120), seed=4)
    out = hf(x, output_hidden_states=True)
    h, s = out.hidden_states[-1], x.shape[1] - 1  # transformers' last hidden state is after model.norm
    z = torch.cat([norm("enorm", hf.model.embed_tokens(x[:, 1:])), norm("hnorm", h[:, :s])], -1)
    z = z @ sd["eh_proj.weight"].T
    pos = torch.arange(s)[None].expand(2, s)
    z = block(z, attention_mask=None, position_ids=pos, position_embeddings=hf.model.rotary_emb(z, pos))
    want = norm("shared_head.norm", z) @ sd["shared_head.head.weight"].T  # predicts token i+2

    logits, mtp = model.load(tmp_path, dtype=torch.float64)(x, mtp=True)
    assert rel(logits, out.logits) <= REL64
    assert mtp.shape == want.shape == (2, s, hf.config.vocab_size) and rel(mtp, want) <= REL64, rel(mtp, want)


# -------------------------------------------------------------------------------- negative controls
@torch.no_grad()
def test_the_float64_tolerance_sees_transformers_float32_norms(ckpt):
    """Unpromoted, transformers' float32 RMSNorm alone moves the logits ~1e-7: the tolerance fails it."""
    x = tokens(211, (2, 60))
    got = model.load(ckpt("base"), dtype=torch.float64)(x)
    assert rel(got, load_hf64(ckpt("base"))(x).logits) <= REL64
    assert rel(got, load_hf64(ckpt("base"), promote=False)(x).logits) > 1e3 * REL64


@torch.no_grad()
def test_yarn_factor_40_frequencies_are_deepseeks_one_ulp_from_transformers(ckpt, tmp_path):
    """With a factor that is not a power of two (V3's 40), transformers computes YaRN's interpolated
    frequencies as 1 / (factor theta^(2i/d)), DeepSeek's reference (and ours) as theta^(-2i/d) / factor:
    some a float32 ulp apart, which this float64 comparison sees; with transformers' frequencies
    replaced by ours the models agree to REL64."""
    d = hf_checkpoint(tmp_path / "f40", **V3_CORNERS["yarn_mscale_ratio"] | dict(
        rope_scaling=V3_CORNERS["yarn_mscale_ratio"]["rope_scaling"] | {"factor": 40.0}))
    hf, m = load_hf64(d), model.load(d, dtype=torch.float64)
    theirs, ours = hf.model.rotary_emb.inv_freq, m.rope_inv_freq
    differ = theirs != ours
    assert 0 < int(differ.sum()) < len(ours)
    assert ((theirs - ours).abs() <= torch.finfo(torch.float32).eps * ours).all()  # at most one ulp
    x = tokens(211)
    r = rel(m(x), hf(x).logits)
    print(f"\nYaRN factor 40: {int(differ.sum())} of {len(ours)} frequencies one ulp apart; logits {r:.2e}")
    assert REL64 < r < 1e-6
    hf.model.rotary_emb.inv_freq.copy_(ours)
    assert rel(m(x), hf(x).logits) <= REL64
