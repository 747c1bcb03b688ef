"""config.json's quantization_config against the weights: FP8 weights with block scales under a config
without one (hand-edited, or converted), and a config with one over weights none of which is FP8 (cast
to bf16 or float32, the FP8 config kept). Neither is guessed: each is one CheckpointError naming the
config file, a tensor, and what to add or remove, from a load and from --dry-run's inspect, with the
shards on disk or still to be downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import model
import model.checkpoint as ckpt
from model import CheckpointError

from helpers import random_model
from helpers.checkpoints import FP8_OVERRIDES, edit_config, load_error

FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def without_quantization_config(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "quantization_config"}


def inspect_error(path: Path, *needles) -> str:
    with pytest.raises(CheckpointError) as ei:
        ckpt.inspect(path)
    msg = str(ei.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


@pytest.mark.parametrize("block", [128, 64])
def test_fp8_weights_under_a_config_without_quantization_config_are_refused_naming_the_block(tmp_path, block):
    """Loaded as if their blocks were 128x128, without a word (right by luck for DeepSeek-V3's own),
    and --dry-run called them not FP8; in 64x64 blocks they were 'tensor ..._scale_inv has shape [4, 5],
    expected [2, 3]', which did not say the config was the cause (a review). The block size the scales
    fit is named, not assumed."""
    m = random_model("tiny", seed=1, **FP8_OVERRIDES, quant_block=(block, block))
    d = tmp_path / "ckpt"
    model.save(m, d, fp8=True)
    model.load(d, device="meta")  # the control: as saved, with its quantization_config
    edit_config(d, without_quantization_config)
    needles = [f"{d / 'config.json'}: no quantization_config, but tensor model.", "is float8_e4m3fn with block scales",
               f"its scales fit {block}x{block} blocks and no other", f'"weight_block_size": [{block}, {block}]']
    load_error(d, *needles)
    with pytest.raises(CheckpointError, match="no quantization_config"):
        model.load(d, device="meta", gemm_impl="fp8")
    inspect_error(d, *needles)


def test_fp8_scales_listed_in_an_index_under_a_config_without_quantization_config_are_refused(fp8_dir, tmp_path):
    """--dry-run before the shards are downloaded reads the index's names alone: block scales listed beside
    a config without quantization_config are refused as a load would refuse them."""
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    from safetensors import safe_open
    with safe_open(d / "model.safetensors", "pt") as f:
        names = list(f.keys())
    index = {"weight_map": dict.fromkeys(names, "model.safetensors")}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "model.safetensors").rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["fp8"]  # the control: with its quantization_config
    edit_config(d, without_quantization_config)
    inspect_error(d, f"{d / 'config.json'}: no quantization_config, but model.safetensors.index.json lists the block "
                     "scale model.", "_scale_inv of an FP8 checkpoint", '"quantization_config": {"quant_method": "fp8"')


def test_a_quantization_config_over_weights_none_of_which_is_fp8_is_refused(tiny_copy):
    """float32 weights (no block scale) under a config that says FP8, as a cast from FP8 that kept the
    config leaves them: the config's FP8 made the compute dtype bfloat16, not the weights' float32, and
    --dry-run called the checkpoint FP8 (a review)."""
    assert model.load(tiny_copy).embed.weight.dtype == torch.float32  # the control: the config as saved
    edit_config(tiny_copy, lambda c: c | {"quantization_config": FP8_CONFIG})
    needles = [f"{tiny_copy / 'config.json'}: quantization_config says FP8, but no tensor is float8_e4m3fn: "
               "model.layers.", "_proj.weight in model.safetensors is float32 without a block scale",
               "remove quantization_config", "(float32)"]
    load_error(tiny_copy, *needles)
    inspect_error(tiny_copy, *needles)


def test_a_quantization_config_over_an_index_listing_no_block_scale_is_refused(sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    shard = sorted(d.glob("*.safetensors"))[-1]
    shard.rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control
    edit_config(d, lambda c: c | {"quantization_config": FP8_CONFIG})
    inspect_error(d, f"{d / 'config.json'}: quantization_config says FP8, but model.safetensors.index.json lists no "
                     "block scale", "remove quantization_config")

