"""The published DeepSeek-V3 checkpoint's tensors (names, shapes, dtypes), written out here from its
file listing rather than from model/names.py, checked against the 671B model on the meta device: no
weights are needed, so the whole 163-shard layout is checked on any machine.

The listing (a published listing of DeepSeek-R1's 163 shard headers; R1 is V3 retrained, the same architecture,
config and tensors): 91,991 tensors holding 684,531,386,000 numbers (weight_scale_inv included), 641.29 GiB. Projections are float8_e4m3fn with a float32 `weight_scale_inv` of one value per 128 x 128
block (edge blocks partial); norms, the embedding, the head, the router's weight and the MTP module's
eh_proj are bfloat16; the router's e_score_correction_bias is float32. Layer 61 is the MTP module: a
full MoE block plus enorm, hnorm, eh_proj, shared_head.norm and copies of the embedding and head.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import CheckpointError, ModelArgs, Transformer
from model.checkpoint_checks import _plan, check_quantization
from model.names import MTP_SHARED, ours_to_hf

F8, BF16, F32 = torch.float8_e4m3fn, torch.bfloat16, torch.float32
ATTN_NORMS = {"input_layernorm.weight": [7168], "post_attention_layernorm.weight": [7168],
              "self_attn.q_a_layernorm.weight": [1536], "self_attn.kv_a_layernorm.weight": [512]}
ATTN_FP8 = {"self_attn.q_a_proj.weight": [1536, 7168], "self_attn.q_b_proj.weight": [24576, 1536],
            "self_attn.kv_a_proj_with_mqa.weight": [576, 7168], "self_attn.kv_b_proj.weight": [32768, 512],
            "self_attn.o_proj.weight": [7168, 16384]}
DENSE_FP8 = {"mlp.gate_proj.weight": [18432, 7168], "mlp.up_proj.weight": [18432, 7168],
             "mlp.down_proj.weight": [7168, 18432]}
EXPERT_FP8 = {"gate_proj.weight": [2048, 7168], "up_proj.weight": [2048, 7168], "down_proj.weight": [7168, 2048]}
MTP_EXTRA = {"enorm.weight": [7168], "hnorm.weight": [7168], "eh_proj.weight": [7168, 14336],
             "shared_head.norm.weight": [7168], "embed_tokens.weight": [129280, 7168],
             "shared_head.head.weight": [129280, 7168]}


def published_headers() -> dict[str, tuple[Path, torch.Size, torch.dtype]]:
    """name -> (file, shape, dtype) for every tensor of the published checkpoint, as a load reads its
    headers (one file stands for the 163: where a tensor lies is not checked here)."""
    found: dict[str, tuple[Path, torch.Size, torch.dtype]] = {}
    f = Path("model-00001-of-000163.safetensors")

    def add(name: str, shape: list[int], dtype: torch.dtype) -> None:
        found[name] = (f, torch.Size(shape), dtype)
        if dtype == F8:
            add(name + "_scale_inv", [-(-shape[0] // 128), -(-shape[1] // 128)], F32)

    for name, shape in (("model.embed_tokens.weight", [129280, 7168]), ("model.norm.weight", [7168]),
                        ("lm_head.weight", [129280, 7168])):
        add(name, shape, BF16)
    for layer in range(62):
        p = f"model.layers.{layer}."
        for name, shape in ATTN_NORMS.items():
            add(p + name, shape, BF16)
        for name, shape in ATTN_FP8.items():
            add(p + name, shape, F8)
        if layer < 3:
            for name, shape in DENSE_FP8.items():
                add(p + name, shape, F8)
            continue
        add(p + "mlp.gate.weight", [256, 7168], BF16)
        add(p + "mlp.gate.e_score_correction_bias", [256], F32)
        for name, shape in EXPERT_FP8.items():
            add(p + "mlp.shared_experts." + name, shape, F8)
            for e in range(256):
                add(p + f"mlp.experts.{e}." + name, shape, F8)
    for name, shape in MTP_EXTRA.items():
        add("model.layers.61." + name, shape, BF16)
    return found


@pytest.fixture(scope="module")
def meta_671B() -> Transformer:
    # the shipped 671B config is the published config.json's reading (tests/model/test_args.py,
    # test_v3_published_config)
    with torch.device("meta"):
        return Transformer(ModelArgs.from_name("671B"), init=False)


def test_the_published_listing_as_written_here_has_its_published_totals():
    headers = published_headers()
    assert len(headers) == 91_991
    assert sum(s.numel() for _, s, _ in headers.values()) == 684_531_386_000
    assert sum(s.numel() * d.itemsize for _, s, d in headers.values()) / 2**30 == pytest.approx(641.29, abs=0.005)


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_published_checkpoint_passes_the_loaders_checks_against_the_671B_model(meta_671B):
    """Every published tensor goes somewhere (or is a scale, or an MTP copy) with its shape, dtype and block
    scale, and every parameter of the model is covered: `model.load`'s checks before any byte is read."""
    headers = published_headers()
    plan = _plan(meta_671B, headers)
    loaded = len(headers) - sum(n.endswith("_scale_inv") for n in headers) - len(MTP_SHARED)
    assert len(plan) == loaded == 46_181
    assert {t.name for _, t in plan} == set(meta_671B.state_dict()) - {"rope_inv_freq"}
    experts = [(n, t) for n, t in plan if t.expert is not None]
    assert len(experts) == 59 * 256 * 3 and {t.expert for _, t in experts} == set(range(256))
    assert dict(plan)["model.layers.61.mlp.gate.e_score_correction_bias"].name == "mtp.0.block.ffn.gate.bias"
    # the names our own writer and --dry-run's index check derive from the model are exactly the published ones
    ours = {n for hf, _, _, fp8 in ours_to_hf(meta_671B) for n in ([hf, hf + "_scale_inv"] if fp8 else [hf])}
    assert ours | {"model.layers.61." + k for k in MTP_SHARED} == set(headers)


def test_a_published_scale_of_the_transposed_block_grid_is_refused_by_name(meta_671B):
    """The control: the same listing with one expert's block scale transposed ([56, 16] for a [2048, 7168]
    weight) is refused, naming the tensor."""
    headers = published_headers()
    name = "model.layers.40.mlp.experts.17.up_proj.weight_scale_inv"
    f, shape, dtype = headers[name]
    headers[name] = (f, torch.Size(reversed(shape)), dtype)
    with pytest.raises(CheckpointError, match=rf"{name} has shape \[56, 16\], expected \[16, 56\]"):
        _plan(meta_671B, headers)


def test_the_published_scales_fit_128_blocks_alone_when_the_config_lacks_quantization_config():
    """The published config has its quantization_config, which the check takes; without it (a hand-edited
    config) the published block scales say 128x128 unambiguously, and the load is refused saying so."""
    headers, args = published_headers(), ModelArgs.from_name("671B")
    check_quantization(Path("config.json"), args, headers)
    args.quant_block = None
    with pytest.raises(CheckpointError, match=r"^config\.json: no quantization_config, but tensor "
                       r"model\.layers\.0\.self_attn\.q_a_proj\.weight in model-00001-of-000163\.safetensors is "
                       r"float8_e4m3fn with block scales \S+ \[12, 56\] \(an FP8 checkpoint; its scales fit 128x128 "
                       r"blocks and no other\): add .*\"weight_block_size\": \[128, 128\]\}"):
        check_quantization(Path("config.json"), args, headers)
