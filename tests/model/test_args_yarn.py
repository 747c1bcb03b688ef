"""ModelArgs' RoPE and YaRN: the frequencies against DeepSeek's correction range and transformers' own
functions, YaRN's options, and a factor that extends nothing refused (split from test_args.py, which
keeps the published configs' YaRN reading).

    python -m pytest tests/model/test_args_yarn.py -q
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch

from model import ConfigError, ModelArgs
from model.layers import rope_inv_freq

from helpers import HF_TINY

TINY_HF = HF_TINY | {"model_type": "deepseek_v3"}  # the helpers' kwargs for DeepseekV3Config, as a config.json


def test_yarn_correction_range_671B():
    a = ModelArgs.from_name("671B")
    d, L0, theta = a.qk_rope_head_dim, a.original_seq_len, a.rope_theta

    def corr(rotations):  # the pair index whose wavelength fits `rotations` times into L0
        return d * math.log(L0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = math.floor(corr(a.beta_fast)), math.ceil(corr(a.beta_slow))
    assert (low, high) == (10, 23)

    base = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    got = rope_inv_freq(a).double()
    assert got.shape == (d // 2,)
    untouched = torch.isclose(got, base, rtol=1e-6, atol=0)
    interpolated = torch.isclose(got, base / a.rope_factor, rtol=1e-6, atol=0)
    assert untouched.nonzero().flatten().tolist() == list(range(0, low + 1))  # ramp 0 at index low
    assert interpolated.nonzero().flatten().tolist() == list(range(high, d // 2))  # ramp 1 from high
    mid = slice(low + 1, high)
    assert ((got[mid] < base[mid]) & (got[mid] > base[mid] / a.rope_factor)).all()
    # in between, a linear blend: keep = 1 - (i - low) / (high - low)
    i = torch.arange(d // 2, dtype=torch.float64)
    keep = 1 - ((i - low) / (high - low)).clamp(0, 1)
    assert torch.allclose(got, base * keep + base / a.rope_factor * (1 - keep), rtol=1e-6, atol=0)


def test_plain_rope_frequencies():
    a = ModelArgs.from_hf_config(TINY_HF | {"rope_scaling": None})
    d = a.qk_rope_head_dim
    want = 1.0 / a.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert torch.allclose(rope_inv_freq(a).double(), want, rtol=1e-6)


def test_a_yarn_factor_below_1_is_named_with_config_json(tmp_path):
    """A YaRN factor below 1 shrinks no context and extends none: transformers only warns, and it was read as no
    extension without a word (a review). It is one line naming config.json's field and the value; 1 (no
    extension) is still read."""
    cfg = TINY_HF | {"rope_scaling": TINY_HF["rope_scaling"] | {"factor": 0.5}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'config.json'))}: rope_scaling\.factor=0\.5 "
                                          r"must be at least 1 \(YaRN's context-extension factor: the trained context "
                                          r"times it\)$"):
        ModelArgs.from_hf_config(tmp_path)
    one = ModelArgs.from_hf_config(TINY_HF | {"rope_scaling": TINY_HF["rope_scaling"] | {"factor": 1}})
    assert (one.rope_type, one.rope_factor) == ("yarn", 1.0)


def test_yarn_truncate_false_keeps_the_ramp_ends_unrounded():
    """`truncate: false` (transformers' YaRN option): the correction range is not rounded to whole
    pair indices; the frequencies match transformers' own, and differ from the rounded ones."""
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = HF_TINY["rope_scaling"] | {"truncate": False}
    a = ModelArgs.from_hf_config(TINY_HF | {"rope_scaling": rope})
    assert a.rope_truncate is False and ModelArgs.from_hf_config(a.to_hf_config()) == a
    hf_freq, _ = ROPE_INIT_FUNCTIONS["yarn"](DeepseekV3Config(**(HF_TINY | {"rope_scaling": rope})))
    ours = rope_inv_freq(a)
    assert torch.allclose(ours, hf_freq.float(), rtol=1e-6), (ours, hf_freq)
    rounded = rope_inv_freq(ModelArgs.from_hf_config(TINY_HF))
    assert (ours - rounded).abs().max() > 1e-3  # the control: rounding changes them


@pytest.mark.parametrize("rope", [
    {k: v for k, v in HF_TINY["rope_scaling"].items() if k != "original_max_position_embeddings"},
    {k: v for k, v in HF_TINY["rope_scaling"].items() if k != "mscale_all_dim"} | {"mscale": 0.5},
    HF_TINY["rope_scaling"] | {"beta_fast": 0, "beta_slow": 0},
])
def test_yarn_keys_left_out_or_zero_give_transformers_frequencies_and_cos_sin_factor(rope):
    # transformers: no original_max_position_embeddings = max_position_embeddings (256 here, not 4096);
    # mscale without mscale_all_dim = the factor from ln(factor) alone; beta 0 = the defaults 32 / 1
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    a = ModelArgs.from_hf_config(TINY_HF | {"rope_scaling": rope})
    hf = DeepseekV3Config(**copy.deepcopy(HF_TINY | {"rope_scaling": rope}))
    hf_freq, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    assert torch.allclose(rope_inv_freq(a), hf_freq.float(), rtol=1e-6), (rope_inv_freq(a), hf_freq)
    assert a.rope_attention_factor == pytest.approx(hf_factor)


@pytest.mark.parametrize("rope", [
    {"rope_theta": 10.0},  # high = ceil(corr(beta_slow)) = 5 > R/2 - 1 = 3: clamped at R - 1 = 7, as the references do
    {"rope_scaling": HF_TINY["rope_scaling"] | {"beta_slow": 16}},  # floor(corr(32)) and ceil(corr(16)) both clamp to 0: low == high
])
def test_yarn_frequencies_match_transformers_at_the_correction_ranges_edges(rope):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = TINY_HF | rope
    hf_freq, _ = ROPE_INIT_FUNCTIONS["yarn"](DeepseekV3Config(**{k: v for k, v in cfg.items() if k != "model_type"}))
    ours = rope_inv_freq(ModelArgs.from_hf_config(cfg))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, hf_freq.float(), rtol=1e-6), (ours, hf_freq)
