"""ModelArgs: reading published Hugging Face configs, the shipped JSONs, round trips, YaRN as published, bad
configs (RoPE and YaRN frequencies: test_args_yarn.py).

    python -m pytest tests/model/test_args.py -q
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch

from model import ConfigError, ModelArgs, Transformer
from model.layers import rope_inv_freq

from helpers import HF_TINY

TINY_HF = HF_TINY | {"model_type": "deepseek_v3"}  # the helpers' kwargs for DeepseekV3Config, as a config.json

# The published DeepSeek-V3 config.json (its architecture and routing keys; the remaining keys,
# such as auto_map or initializer_range, do not describe the model's arithmetic).
V3_HF = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "attention_bias": False, "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "ep_size": 1,
    "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "moe_intermediate_size": 2048, "moe_layer_freq": 1,
    "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
# DeepSeek-V2 (236B): softmax routing, group-limited greedy, no renormalisation, scale 16.
V2_HF = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "attention_bias": False, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 12288, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "moe_intermediate_size": 1536, "moe_layer_freq": 1, "n_group": 8,
    "n_routed_experts": 160, "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 128,
    "num_experts_per_tok": 6, "num_hidden_layers": 60, "num_key_value_heads": 128, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 16.0, "scoring_func": "softmax", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 3, "topk_method": "group_limited_greedy",
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400,
}
# DeepSeek-V2-Lite (16B): no query LoRA, one expert group, plain greedy top-k.
V2_LITE_HF = V2_HF | {
    "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408, "n_group": 1,
    "n_routed_experts": 64, "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 27,
    "q_lora_rank": None, "routed_scaling_factor": 1.0, "topk_group": 1, "topk_method": "greedy",
}


# ------------------------------------------------------------------------- published configs
def test_v3_published_config():
    a = ModelArgs.from_hf_config(V3_HF)
    assert a.softmax_scale == pytest.approx(0.1352338, abs=5e-8)
    assert a.softmax_scale == pytest.approx(192**-0.5 * (1 + 0.1 * math.log(40)) ** 2, rel=1e-12)
    assert (a.dim, a.n_layers, a.n_dense_layers, a.n_heads, a.vocab_size) == (7168, 61, 3, 128, 129280)
    assert (a.n_routed_experts, a.n_activated_experts, a.n_expert_groups, a.n_limited_groups) == (256, 8, 8, 4)
    assert (a.score_func, a.route_scale, a.norm_topk_prob) == ("sigmoid", 2.5, True)
    assert (a.q_lora_rank, a.kv_lora_rank, a.qk_head_dim) == (1536, 512, 192)
    assert (a.rope_type, a.rope_factor, a.original_seq_len, a.mscale, a.rope_attention_factor) == \
        ("yarn", 40.0, 4096, 1.0, 1.0)
    assert a.quant_block == (128, 128) and a.scale_fmt is None and a.dtype == "bfloat16"
    assert a.n_mtp_layers == 1
    assert a == ModelArgs.from_name("671B")


def test_v31_config_has_ue8m0_scales():
    cfg = json.loads(json.dumps(V3_HF))
    cfg["quantization_config"]["scale_fmt"] = "ue8m0"
    a = ModelArgs.from_hf_config(cfg)
    assert a.scale_fmt == "ue8m0"
    assert a == ModelArgs.from_name("V3.1")


def test_v2_config():
    a = ModelArgs.from_hf_config(V2_HF)
    assert a.model_type == "deepseek_v2"
    assert (a.score_func, a.norm_topk_prob, a.route_scale) == ("softmax", False, 16.0)
    assert (a.n_expert_groups, a.n_limited_groups, a.n_activated_experts) == (8, 3, 6)
    assert a.n_mtp_layers == 0 and a.quant_block is None
    assert a.mscale == 0.707 and a.rope_attention_factor == 1.0  # mscale / mscale_all_dim = 1
    assert a.softmax_scale == pytest.approx(192**-0.5 * (1 + 0.1 * 0.707 * math.log(40)) ** 2, rel=1e-12)
    assert a == ModelArgs.from_name("236B")


def test_v2_lite_config():
    a = ModelArgs.from_hf_config(V2_LITE_HF)
    assert a.q_lora_rank == 0  # null -> a single full-rank wq
    assert (a.n_expert_groups, a.n_limited_groups) == (1, 1)
    assert (a.score_func, a.norm_topk_prob, a.route_scale, a.n_activated_experts) == ("softmax", False, 1.0, 6)
    assert a.mscale == 0.707
    assert a == ModelArgs.from_name("16B")


def test_greedy_topk_method_lifts_the_group_limit():
    # topk_method greedy means no group limit whatever n_group says
    a = ModelArgs.from_hf_config(V2_HF | {"topk_method": "greedy"})
    assert a.n_limited_groups == a.n_expert_groups == 8


def test_rope_parameters_transformers5_style():
    cfg = {k: v for k, v in V3_HF.items() if k not in ("rope_scaling", "rope_theta")}
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                              "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                              "mscale": 1.0, "mscale_all_dim": 1.0}
    assert ModelArgs.from_hf_config(cfg) == ModelArgs.from_hf_config(V3_HF)
    # a different theta in rope_parameters is honoured
    cfg["rope_parameters"]["rope_theta"] = 50000.0
    assert ModelArgs.from_hf_config(cfg).rope_theta == 50000.0
    # plain RoPE: no YaRN, no softmax-scale correction
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    a = ModelArgs.from_hf_config(cfg)
    assert a.rope_type == "default" and not a.yarn
    assert a.softmax_scale == pytest.approx(192**-0.5)


def test_config_written_by_transformers():
    """transformers 5 turns `rope_scaling` into `rope_parameters`: both spellings give the same args."""
    from transformers import DeepseekV3Config

    ours = ModelArgs.from_hf_config(TINY_HF)
    # a copy: transformers adds rope_theta into the rope_scaling dict it is given (HF_TINY's own, for
    # every later test, where it then took precedence over the config's top-level rope_theta)
    hf = DeepseekV3Config(**copy.deepcopy(HF_TINY)).to_dict()
    assert "rope_parameters" in hf
    assert ModelArgs.from_hf_config(hf) == ours
    assert (ours.dim, ours.n_heads, ours.rope_factor, ours.original_seq_len) == (72, 4, 4.0, 64)


def test_from_hf_config_reads_dir_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(V3_HF))
    assert ModelArgs.from_hf_config(tmp_path) == ModelArgs.from_hf_config(tmp_path / "config.json") \
        == ModelArgs.from_hf_config(V3_HF)
    with pytest.raises(ConfigError, match="config.json"):
        ModelArgs.from_hf_config(tmp_path / "missing")
    for wrong, kind in ((5, "int"), (None, "NoneType"), ([V3_HF], "list")):  # Path(5): Python's own TypeError
        with pytest.raises(ConfigError, match=rf"^source=.*: expected a checkpoint directory, a config.json path "
                                              rf"or a config dict, not {kind}$"):
            ModelArgs.from_hf_config(wrong)


def test_yarn_without_mscale_all_dim():
    # no mscale_all_dim: no softmax-scale correction, cos/sin scaled by 0.1 ln(factor) + 1
    rope = {k: v for k, v in V3_HF["rope_scaling"].items() if k not in ("mscale", "mscale_all_dim")}
    a = ModelArgs.from_hf_config(V3_HF | {"rope_scaling": rope})
    assert a.softmax_scale == pytest.approx(192**-0.5)
    assert a.rope_attention_factor == pytest.approx(1 + 0.1 * math.log(40))
    # an explicit attention_factor wins
    b = ModelArgs.from_hf_config(V3_HF | {"rope_scaling": rope | {"attention_factor": 1.0}})
    assert b.rope_attention_factor == 1.0


# ------------------------------------------------------------------------------ shipped JSONs
@pytest.mark.parametrize("name", ["671B", "V3.1", "236B", "16B", "tiny"])
def test_shipped_configs_load_and_round_trip(name):
    a = ModelArgs.from_name(name)
    assert a == ModelArgs.from_dict(a.to_dict())
    hf = a.to_hf_config()
    json.dumps(hf)  # serialisable
    assert hf["model_type"] == a.model_type
    assert ModelArgs.from_hf_config(hf) == a
    assert ModelArgs.from_hf_config(json.loads(json.dumps(hf))) == a


def test_shipped_config_values():
    assert ModelArgs.from_name("tiny").dtype == "float32"
    assert ModelArgs.from_name("V3.1").scale_fmt == "ue8m0"
    assert ModelArgs.from_name("16B").q_lora_rank == 0
    assert ModelArgs.from_name("671B").quant_block == (128, 128)
    with pytest.raises(ConfigError, match="671B"):  # the message lists what is available
        ModelArgs.from_name("70B")


@pytest.mark.parametrize("overrides", [
    dict(rope_attention_factor=1.25),
    dict(mscale=0.0),  # yarn without mscale_all_dim, cos/sin factor 1
    dict(mscale=0.0, rope_attention_factor=1.3),
    dict(mscale=0.707),
    dict(q_lora_rank=0, n_expert_groups=1, n_limited_groups=1, score_func="softmax", norm_topk_prob=False,
         model_type="deepseek_v2", n_mtp_layers=0),
    dict(n_shared_experts=0, eos_token_id=[1, 2], bos_token_id=None),
    dict(rope_truncate=False),
])
def test_round_trip_variants(overrides):
    a = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | overrides)
    assert ModelArgs.from_hf_config(a.to_hf_config()) == a


def test_round_trip_plain_rope_is_a_fixed_point():
    """Plain RoPE ignores the YaRN fields; from HF config on, the round trip is exact."""
    cfg = TINY_HF | {"rope_scaling": None}
    a = ModelArgs.from_hf_config(cfg)
    assert not a.yarn
    assert ModelArgs.from_hf_config(a.to_hf_config()) == a


# ----------------------------------------------- YaRN (the frequencies' other tests: test_args_yarn.py)
def test_yarn_frequencies_are_deepseeks_reference_bit_for_bit():
    """The 671B config's frequencies as DeepSeek's inference code computes them (precompute_freqs_cis,
    every step in float32), re-typed here: equal bit for bit. In float64 rounded once, 12 of the 32
    were a float32 step off (a review), which the tolerance tests (test_args_yarn.py) do not see."""
    a = ModelArgs.from_hf_config(V3_HF)
    dim, base, factor = 64, 10000.0, 40

    def correction(rotations):
        return dim * math.log(4096 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(correction(32)), 0), min(math.ceil(correction(1)), dim - 1)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    smooth = 1 - ramp
    want = freqs / factor * (1 - smooth) + freqs * smooth
    got = rope_inv_freq(a)
    assert got.dtype == torch.float32 and torch.equal(got, want), (got != want).sum()
    # control: the same expression in float64, rounded once, is not the reference
    f64 = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    r64 = torch.clamp((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
    assert not torch.equal((f64 / factor * r64 + f64 * (1 - r64)).float(), want)


# ------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("overrides,fields", [
    (dict(n_routed_experts=10), ["n_routed_experts", "n_expert_groups"]),  # 10 experts in 4 groups
    (dict(n_activated_experts=9), ["n_activated_experts", "n_limited_groups"]),  # > 2 groups x 4 experts
    (dict(n_limited_groups=5), ["n_limited_groups"]),
    (dict(qk_rope_head_dim=7), ["qk_rope_head_dim"]),
    (dict(score_func="relu"), ["score_func", "relu"]),
    (dict(rope_type="longrope"), ["rope_type"]),
    (dict(dim=0), ["dim"]),
    (dict(n_dense_layers=4), ["n_dense_layers"]),
    (dict(n_expert_groups=16, n_limited_groups=4, n_activated_experts=4), ["experts per group"]),
    (dict(dim="512"), ["dim='512' must be an integer"]),  # a wrong type: one line, not a TypeError
    (dict(n_heads=8.0), ["n_heads=8.0 must be an integer"]),
    (dict(route_scale="2.5"), ["route_scale='2.5' must be a number"]),
    (dict(norm_topk_prob=1), ["norm_topk_prob=1 must be true or false"]),
    (dict(bos_token_id="0"), ["bos_token_id='0' must be an integer or null"]),
    # an id outside the vocabulary failed the first forward pass of a record, its run directory left behind
    (dict(bos_token_id=5000), ["bos_token_id=5000 must be a token id in [0, vocab_size="]),
    (dict(bos_token_id=-1), ["bos_token_id=-1 must be a token id"]),
    (dict(eos_token_id=[1, 5000]), ["eos_token_id=[1, 5000] must be a token id"]),
    # a string or strings: a TypeError from inside the id check; a float in the list passed (a review)
    (dict(eos_token_id="1"), ["eos_token_id='1' must be an integer or a list of integers or null"]),
    (dict(eos_token_id=["1"]), ["eos_token_id=['1'] must be an integer or a list of integers or null"]),
    (dict(eos_token_id=[1.5]), ["eos_token_id=[1.5] must be an integer or a list of integers or null"]),
    (dict(eos_token_id=(1, 2)), ["eos_token_id=(1, 2) must be an integer or a list of integers or null"]),
    # sizes and RoPE parameters that failed inside torch or math (found by a review)
    (dict(moe_inter_dim=-32), ["moe_inter_dim=-32 must be positive"]),
    (dict(inter_dim=0), ["inter_dim=0 must be positive"]),
    (dict(q_lora_rank=-3), ["q_lora_rank=-3 must be >= 0"]),
    (dict(n_shared_experts=-1), ["n_shared_experts=-1 must be >= 0"]),
    (dict(qk_nope_head_dim=-16), ["qk_nope_head_dim=-16 must be >= 0"]),
    (dict(rope_theta=1.0), ["rope_theta=1.0 must be greater than 1"]),
    (dict(norm_eps=-1.0), ["norm_eps=-1.0 must be positive"]),
    (dict(rope_type="yarn", rope_factor=4.0, original_seq_len=0), ["original_seq_len=0 must be positive (YaRN)"]),
    (dict(rope_type="yarn", rope_factor=4.0, beta_fast=-1.0), ["beta_fast=-1.0 must be positive (YaRN)"]),
    # below 1 YaRN's frequencies were left as they are, silently (a review)
    (dict(rope_type="yarn", rope_factor=0.5), ["rope_factor=0.5 must be at least 1 (YaRN's context-extension factor)"]),
])
def test_invalid_args(overrides, fields):
    with pytest.raises(ConfigError) as ei:
        ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | overrides)
    msg = str(ei.value)
    assert "\n" not in msg
    for f in fields:
        assert f in msg, f"{f!r} not in {msg!r}"


@pytest.mark.parametrize("overrides,fields", [
    (dict(n_group=5), ["config dict: n_routed_experts=16 must be a positive multiple of n_group=5"]),
    (dict(num_experts_per_tok=9), ["config dict: num_experts_per_tok=9 must be in [1, 8] (topk_group x experts"]),
    (dict(qk_rope_head_dim=7), ["config dict", "qk_rope_head_dim"]),
    (dict(scoring_func="relu"), ["config dict", "scoring_func", "relu"]),
    (dict(model_type="llama"), ["config dict", "model_type", "llama"]),
    (dict(hidden_size=None), ["config dict", "hidden_size"]),
    (dict(moe_layer_freq=2), ["moe_layer_freq"]),
    # the string "1" was 'moe_layer_freq=1 is not supported (only 1)' (a bug hunt)
    (dict(moe_layer_freq="1"), ["config dict: moe_layer_freq='1' is not supported (only 1)"]),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), ["rope type", "linear"]),
    (dict(quantization_config={"quant_method": "gptq"}), ["quant_method", "gptq"]),
    (dict(hidden_size="32"), ["config dict: hidden_size='32' must be an integer"]),  # named by the HF key
    (dict(rms_norm_eps="1e-6"), ["config dict: rms_norm_eps='1e-6' must be a number"]),
    (dict(norm_topk_prob="true"), ["config dict: norm_topk_prob='true' must be true or false"]),
    (dict(rope_scaling="yarn"), ["config dict: rope_scaling='yarn' must be an object"]),
    (dict(rope_scaling={"type": "yarn", "factor": "40"}), ["config dict: rope_scaling.factor='40' must be a number"]),
    (dict(rope_scaling={"type": "yarn", "factor": 0}), ["config dict: rope_scaling.factor=0.0 must be positive"]),
    # transformers only warns; it was read as no extension, silently (a review)
    (dict(rope_scaling={"type": "yarn", "factor": 0.5}),
     ["config dict: rope_scaling.factor=0.5 must be at least 1 (YaRN's context-extension factor"]),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 0.25}), ["config dict: rope_parameters.factor=0.25 must be "
                                                                   "at least 1"]),
    (dict(rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096.5}),
     ["rope_scaling.original_max_position_embeddings=4096.5 must be an integer"]),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": "1e4"}),
     ["config dict: rope_parameters.rope_theta='1e4' must be a number"]),
    # (no rope_scaling: a theta there wins, and transformers writes one into the helpers' dict in place)
    (dict(rope_theta="1e4", rope_scaling=None), ["config dict: rope_theta='1e4' must be a number"]),
    (dict(quantization_config="fp8"), ["quantization_config='fp8' must be an object"]),
    (dict(quantization_config={"quant_method": "fp8", "weight_block_size": "128"}),
     ["quantization_config.weight_block_size='128' must be two positive integers"]),
    (dict(quantization_config={"quant_method": "fp8", "weight_block_size": [0, 128]}),
     ["quantization_config.weight_block_size=[0, 128] must be two positive integers"]),
    (dict(quantization_config={"quant_method": "fp8", "scale_fmt": "e8m0"}),
     ["quantization_config.scale_fmt='e8m0' is not supported"]),
    (dict(quantization_config={"quant_method": "fp8", "fmt": "e5m2"}),
     ["quantization_config.fmt='e5m2' is not supported (only 'e4m3')"]),
    (dict(quantization_config={"quant_method": "fp8", "activation_scheme": "static"}),
     ["quantization_config.activation_scheme='static' is not supported (only 'dynamic')"]),
    # transformers' rotate-half RoPE would give other logits (0.77 apart) had it been taken silently
    (dict(rope_interleave=False), ["config dict: rope_interleave=False is not supported"]),
    (dict(tie_word_embeddings=True), ["tie_word_embeddings=true is not supported"]),
    # "false" (a string) was refused as 'tie_word_embeddings=true' (a bug hunt)
    (dict(tie_word_embeddings="false"), ["config dict: tie_word_embeddings='false' must be true or false"]),
    (dict(torch_dtype="int8"), ["config dict: torch_dtype='int8' is not a floating-point dtype"]),
    (dict(torch_dtype=16), ["torch_dtype=16 is not a floating-point dtype"]),
    (dict(torch_dtype="float8_e4m3fn"), ["torch_dtype='float8_e4m3fn' is not a floating-point dtype"]),
])
def test_invalid_hf_config(overrides, fields):
    with pytest.raises(ConfigError) as ei:
        ModelArgs.from_hf_config(TINY_HF | overrides)
    msg = str(ei.value)
    assert "\n" not in msg
    for f in fields:
        assert f in msg, f"{f!r} not in {msg!r}"


# A small V2 config (V2 236B style routing) in Hugging Face keys.
TINY_V2_HF = {k: v for k, v in TINY_HF.items() if k != "num_nextn_predict_layers"} | {
    "model_type": "deepseek_v2", "topk_method": "group_limited_greedy", "routed_scaling_factor": 16.0,
    "norm_topk_prob": False, "q_lora_rank": None}


@pytest.mark.parametrize("overrides,fields", [
    (dict(topk_method="noaux_tc"), ["config dict: topk_method='noaux_tc' is not supported for deepseek_v2"]),
    (dict(n_group=None), ["topk_method='group_limited_greedy' needs n_group and topk_group"]),
    (dict(num_experts_per_tok=None), ["num_experts_per_tok is missing", "deepseek_v2"]),
    (dict(scoring_func="sigmoid"), ["scoring_func='sigmoid' is not supported for deepseek_v2"]),
])
def test_invalid_v2_hf_config(overrides, fields):
    with pytest.raises(ConfigError) as ei:
        ModelArgs.from_hf_config(TINY_V2_HF | overrides)
    for f in fields:
        assert f in str(ei.value), f"{f!r} not in {str(ei.value)!r}"
    assert ModelArgs.from_hf_config(TINY_V2_HF).n_limited_groups == 2  # the control: the base config reads


@pytest.mark.parametrize("overrides,fields", [
    (dict(hidden_act="gelu"), ["config dict: hidden_act='gelu' is not supported", "silu"]),
    (dict(scoring_func="softmax"), ["scoring_func='softmax' is not supported for deepseek_v3"]),
    (dict(rope_scaling={"type": "yarn", "original_max_position_embeddings": 64}),
     ["config dict: rope_scaling.factor is missing"]),
    (dict(rope_scaling=HF_TINY["rope_scaling"] | {"truncate": "no"}),
     ["rope_scaling.truncate='no' must be true or false"]),
])
def test_config_keys_that_would_change_the_arithmetic_are_read_or_refused(overrides, fields):
    """hidden_act, scoring_func and YaRN's factor were once left unread: a config naming another
    activation or router ran as SwiGLU / sigmoid, 0.8 apart in logits from transformers."""
    with pytest.raises(ConfigError) as ei:
        ModelArgs.from_hf_config(TINY_HF | overrides)
    for f in fields:
        assert f in str(ei.value), f"{f!r} not in {str(ei.value)!r}"


@pytest.mark.parametrize("overrides,needle", [
    (dict(routed_scaling_factor=float("nan")), "routed_scaling_factor=nan must be finite"),
    (dict(routed_scaling_factor=-2.5), "routed_scaling_factor=-2.5 must be positive"),
    (dict(rope_theta=float("inf")), "rope_theta=inf must be finite"),
    (dict(rms_norm_eps=float("nan")), ": rms_norm_eps=nan must be finite"),
])
def test_non_finite_or_negative_numbers_are_refused(overrides, needle, tmp_path):
    """json reads NaN and Infinity: routed_scaling_factor NaN gave NaN logits, -2.5 and rope_theta
    Infinity loaded and ran (found by a review)."""
    with pytest.raises(ConfigError, match=needle):
        ModelArgs.from_hf_config(TINY_HF | overrides)
    p = tmp_path / "config.json"  # as a file: json.dumps writes NaN / -Infinity, json.loads reads them back
    p.write_text(json.dumps(TINY_HF | overrides))
    with pytest.raises(ConfigError, match=needle):
        ModelArgs.from_hf_config(str(p))
    assert ModelArgs.from_hf_config(TINY_HF).route_scale > 0  # the control


@pytest.mark.parametrize("value", [100.5, 1e30, 10**40])
def test_an_absurd_routed_scaling_factor_is_refused_by_its_key(value, tmp_path):
    """routed_scaling_factor had a floor and no ceiling: 1e30 loaded and ran, the bundled model's logits
    all 0. The message names the file and the key (it named route_scale, which the file does not have)."""
    p = tmp_path / "config.json"
    p.write_text(json.dumps(TINY_HF | {"routed_scaling_factor": value}))
    with pytest.raises(ConfigError) as e:
        ModelArgs.from_hf_config(tmp_path)
    assert str(e.value) == (f"{p}: routed_scaling_factor={value} must be at most 100 (it scales the routed "
                            "experts' output: DeepSeek-V3 has 2.5, V2 16, V2-Lite 1)")
    at_most = rf"^invalid ModelArgs: route_scale={re.escape(str(value))} must be at most 100 "
    with pytest.raises(ConfigError, match=at_most):
        ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | {"route_scale": value})
    for fine in (1.0, 2.5, 16.0, 100):  # the controls: the published values, and the ceiling itself
        p.write_text(json.dumps(TINY_HF | {"routed_scaling_factor": fine}))
        assert ModelArgs.from_hf_config(tmp_path).route_scale == fine


def test_mtp_depth_beyond_one_is_refused():
    """A second MTP module never ran (forward ran module 0 only, and depth 1 was fed the main model's
    states instead of module 0's; a review): configs with depth 2+ are refused, naming the field."""
    with pytest.raises(ConfigError, match="num_nextn_predict_layers=2: MTP depth 0 or 1 only"):
        ModelArgs.from_hf_config(TINY_HF | {"num_nextn_predict_layers": 2})
    assert ModelArgs.from_hf_config(TINY_HF | {"num_nextn_predict_layers": 0}).n_mtp_layers == 0  # the control


def test_a_negative_mtp_depth_is_refused():
    """num_nextn_predict_layers=-1 passed every check: no MTP module was built (range(-1)), the memory plan
    counted n_layers - 1 layers' KV cache, and MTP weights beside it were 'unexpected' (a bug hunt)."""
    with pytest.raises(ConfigError, match=r"^config dict: num_nextn_predict_layers=-1: MTP depth 0 or 1 only"):
        ModelArgs.from_hf_config(TINY_HF | {"num_nextn_predict_layers": -1})
    with pytest.raises(ConfigError, match=r"^invalid ModelArgs: n_mtp_layers=-1: MTP depth 0 or 1 only"):
        ModelArgs(n_mtp_layers=-1)


def _drop(cfg: dict, key: str) -> dict:
    out = {k: v for k, v in cfg.items() if k != key.split(".")[0]}
    if "." in key:
        section, sub = key.split(".")
        out[section] = {k: v for k, v in cfg[section].items() if k != sub}
    return out


V3_DROPPABLE = ["moe_intermediate_size", "first_k_dense_replace", "n_shared_experts", "n_routed_experts",
                "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob",
                "q_lora_rank", "max_position_embeddings", "rms_norm_eps", "num_nextn_predict_layers",
                "bos_token_id", "eos_token_id", "rope_theta", "rope_scaling.original_max_position_embeddings",
                "rope_scaling.beta_fast", "rope_scaling.mscale", "hidden_act", "topk_method"]
V2_DROPPABLE = ["moe_intermediate_size", "first_k_dense_replace", "n_shared_experts", "n_routed_experts",
                "routed_scaling_factor", "q_lora_rank", "max_position_embeddings", "rms_norm_eps",
                "bos_token_id", "eos_token_id", "topk_method", "rope_scaling.original_max_position_embeddings"]


@pytest.mark.parametrize("family,key", [("DeepseekV3", k) for k in V3_DROPPABLE]
                         + [("DeepseekV2", k) for k in V2_DROPPABLE])
def test_a_key_left_out_reads_as_transformers_reads_it(family, key):
    """transformers' config class fills a key the file leaves out with its own default and writes it
    back in to_dict(): both must give the same args (ours once filled in DeepSeek-V3-671B's values:
    no group limit for a V3 without n_group, route_scale 2.5 for a V2 without routed_scaling_factor)."""
    import transformers

    base = TINY_HF if family == "DeepseekV3" else TINY_V2_HF
    cfg = _drop(base, key)
    if key == "first_k_dense_replace" and family == "DeepseekV3":
        cfg["num_hidden_layers"] = 4  # the default 3 dense layers, and one MoE layer left
    filled = getattr(transformers, f"{family}Config")(**cfg).to_dict()
    ours, theirs = ModelArgs.from_hf_config(cfg), ModelArgs.from_hf_config(filled)
    assert ours == theirs, {f: (getattr(ours, f), getattr(theirs, f)) for f in ours.to_dict()
                            if getattr(ours, f) != getattr(theirs, f)}


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v2"])
def test_absent_key_defaults_are_transformers_own(family):
    """The table of defaults for absent keys holds transformers' config-class defaults (a newer
    transformers that changed one would show here)."""
    import transformers

    from model.args import _ABSENT_DEFAULTS

    cls = {"deepseek_v3": transformers.DeepseekV3Config, "deepseek_v2": transformers.DeepseekV2Config}[family]
    hf = cls().to_dict()
    for key, ours in _ABSENT_DEFAULTS[family].items():
        theirs = cls().rope_parameters["rope_theta"] if key == "rope_theta" else hf.get(key)
        if key == "num_nextn_predict_layers" and theirs is None:
            theirs = 0  # V2: no MTP either way
        assert ours == theirs, f"{family} {key}: ours {ours!r}, transformers {theirs!r}"


def test_v2_norm_topk_prob_is_not_read_and_v3_topk_method_is_not_read():
    """transformers' V2 router never renormalises, and its V3 router is always group-limited."""
    assert ModelArgs.from_hf_config(TINY_V2_HF | {"norm_topk_prob": True}).norm_topk_prob is False
    v3 = ModelArgs.from_hf_config(TINY_HF | {"topk_method": "greedy"})
    assert (v3.n_expert_groups, v3.n_limited_groups) == (4, 2)
    v2 = ModelArgs.from_hf_config(TINY_V2_HF | {"topk_method": "greedy"})
    assert (v2.n_expert_groups, v2.n_limited_groups) == (4, 4)


def test_null_group_keys_mean_no_group_limit():
    plain = ModelArgs.from_hf_config(TINY_HF | {"n_group": 1, "topk_group": 1})
    for key in ("n_group", "topk_group"):  # either one null: the other one alone does not limit groups
        assert ModelArgs.from_hf_config(TINY_HF | {key: None}) == plain, key


def test_null_mtp_depth_builds_no_mtp_module():
    a = ModelArgs.from_hf_config(TINY_HF | {"num_nextn_predict_layers": None})
    assert a.n_mtp_layers == 0
    with torch.device("meta"):
        assert len(Transformer(a, init=False).mtp) == 0


def test_dense_only_config_reads_with_every_layer_dense():
    a = ModelArgs.from_hf_config(TINY_HF | {"n_routed_experts": None})
    assert a.n_dense_layers == a.n_layers == TINY_HF["num_hidden_layers"]
    assert not any(a.is_moe_layer(i) for i in range(a.n_layers))


def test_config_dtype_names_and_other_shapes(tmp_path):
    assert ModelArgs.from_hf_config(TINY_HF | {"torch_dtype": "auto"}).dtype == "bfloat16"
    assert ModelArgs.from_hf_config(TINY_HF | {"torch_dtype": "torch.float32"}).dtype == "float32"
    assert ModelArgs.from_hf_config(TINY_HF | {"rope_interleave": True, "tie_word_embeddings": False}).dim
    (tmp_path / "config.json").write_text(json.dumps([TINY_HF]))
    with pytest.raises(ConfigError, match="config.json: a config must be a JSON object, found list"):
        ModelArgs.from_hf_config(tmp_path)


def test_invalid_hf_config_file_is_named(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(TINY_HF | {"n_group": 5}))
    with pytest.raises(ConfigError, match=str(p)):
        ModelArgs.from_hf_config(tmp_path)


def test_numbers_of_any_integral_or_real_type_are_taken():
    """The type check takes what computes like an int or a float (numpy scalars from a table, an int
    where a float belongs) and refuses bools where a count belongs; the control for the cases above."""
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | dict(dim=np.int64(64), route_scale=2,
                                                                            rope_theta=np.float32(1e4)))
    assert args.dim == 64 and args.route_scale == 2
    with pytest.raises(ConfigError, match="n_layers=True must be an integer"):
        ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | dict(n_layers=True))


def test_unknown_field():
    with pytest.raises(ConfigError, match="n_experts"):
        ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | {"n_experts": 3})
    assert issubclass(ConfigError, ValueError)




def test_a_field_the_file_does_not_give_is_not_named_by_a_key_of_it():
    """Errors name a field by its config.json key, words of the message included; but a V2 router of
    topk_method 'greedy' limits no group (n_limited_groups is n_group, whatever topk_group says), and the
    bound of num_experts_per_tok was said to be 'topk_group x experts per group' with topk_group 1 in the
    file: 1 x 8, not the 32 said. A field whose value is not its key's keeps its own name."""
    v2 = TINY_HF | {"model_type": "deepseek_v2", "scoring_func": "softmax", "norm_topk_prob": False,
                    "topk_method": "greedy", "n_routed_experts": 32, "n_group": 4, "topk_group": 1}
    with pytest.raises(ConfigError) as e:
        ModelArgs.from_hf_config(v2 | {"num_experts_per_tok": 99})
    assert str(e.value) == ("config dict: num_experts_per_tok=99 must be in [1, 32] (n_limited_groups x experts per "
                            "group)")
    with pytest.raises(ConfigError) as e:  # the control: group-limited, topk_group is the limit
        ModelArgs.from_hf_config(v2 | {"topk_method": "group_limited_greedy", "topk_group": 2, "num_experts_per_tok": 99})
    assert str(e.value) == "config dict: num_experts_per_tok=99 must be in [1, 16] (topk_group x experts per group)"
