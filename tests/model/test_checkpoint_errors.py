"""Checkpoints that are not right: every problem is one CheckpointError (a ValueError) naming the file
and the tensor or key, before anything half-loaded is returned."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import model
import model.checkpoint as ckpt
from model import CheckpointError

from helpers import random_model
from helpers.checkpoints import FP8_OVERRIDES, edit_config, edit_tensors, load_error


# ------------------------------------------------------------------------------------ bad input

def test_error_no_config(tiny_copy):
    (tiny_copy / "config.json").unlink()
    load_error(tiny_copy, tiny_copy, "config.json")


@pytest.mark.parametrize("name", ["model.layers.1.self_attn.kv_b_proj.weight", "lm_head.weight",
                                  "model.layers.2.mlp.experts.7.down_proj.weight",
                                  "model.layers.3.eh_proj.weight"])  # the MTP layer, partly present
def test_error_missing_tensor(tiny_copy, name):
    edit_tensors(tiny_copy / "model.safetensors", lambda sd: {k: v for k, v in sd.items() if k != name})
    load_error(tiny_copy, tiny_copy.resolve(), "missing", name)


@pytest.mark.parametrize("name", ["model.layers.1.mlp.foo.weight", "model.layers.9.input_layernorm.weight",
                                  "model.layers.1.mlp.experts.16.up_proj.weight", "something_else"])
def test_error_unexpected_tensor(tiny_copy, name):
    f = tiny_copy / "model.safetensors"
    edit_tensors(f, lambda sd: sd | {name: torch.zeros(32, 64)})
    load_error(tiny_copy, f, name)


def test_error_layer_just_past_the_mtp_layer_is_unexpected(tiny_copy):
    # tiny: layers 0-2 and the MTP layer 3; a layer 4 belongs to no module of this config
    f = tiny_copy / "model.safetensors"
    name = "model.layers.4.input_layernorm.weight"
    edit_tensors(f, lambda sd: sd | {name: sd["model.layers.3.input_layernorm.weight"].clone()})
    load_error(tiny_copy, f, f"unexpected tensor {name} (layer 4 would be MTP module 1, but the config has 3 layers "
                             "and 1 MTP module(s) with weights: see config.json's num_hidden_layers and "
                             "num_nextn_predict_layers)")


def test_mtp_weights_under_a_config_without_mtp_name_the_key(tiny_copy, tmp_path):
    """A config.json edited to num_nextn_predict_layers 0 (MTP off) over weights that keep layer 3 was refused as
    'not part of a deepseek_v3 model with 3 layers', which pointed at the layer count (a checkpoint tour); also
    from the index alone, as --dry-run plans before the download."""
    edit_config(tiny_copy, lambda c: c | {"num_nextn_predict_layers": 0})
    msg = load_error(tiny_copy, tiny_copy / "model.safetensors", "unexpected tensor model.layers.3.",
                     "layer 3 would be MTP module 0, but the config has 3 layers and 0 MTP module(s)",
                     "num_nextn_predict_layers")
    assert "not part of" not in msg
    from helpers.checkpoints import index_only

    d = index_only(tmp_path / "index", model.ModelArgs.from_name("tiny"))
    edit_config(d, lambda c: c | {"num_nextn_predict_layers": 0})
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: unexpected tensor model.layers.3.*"
                                              r"layer 3 would be MTP module 0.*num_nextn_predict_layers\)$"):
        ckpt.inspect(d)


def test_a_layer_count_that_counts_the_mtp_layer_too_names_the_key(tiny_copy, tmp_path):
    """num_hidden_layers raised by one to count the MTP layer (62 for DeepSeek-V3) over weights that keep it
    after the main layers was 'unexpected tensor model.layers.3.eh_proj.weight (not part of a deepseek_v3
    model with 4 layers)', which did not say the MTP layer was taken for a main one (a checkpoint tour); also
    from the index alone, as --dry-run plans before the download."""
    edit_config(tiny_copy, lambda c: c | {"num_hidden_layers": 4})
    want = ("(an MTP module's tensor, in layer 3, which config.json's num_hidden_layers=4 makes a main layer: "
            "num_hidden_layers counts the main layers only, and the MTP modules follow them, so 3 main layers "
            "would make layer 3 MTP module 0)")
    msg = load_error(tiny_copy, tiny_copy / "model.safetensors", "unexpected tensor model.layers.3.", want)
    assert "not part of" not in msg
    from helpers.checkpoints import index_only

    d = index_only(tmp_path / "index", model.ModelArgs.from_name("tiny"))
    edit_config(d, lambda c: c | {"num_hidden_layers": 4})
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: unexpected tensor model.layers.3.* "
                                              + re.escape(want) + "$"):
        ckpt.inspect(d)


def test_rotary_inv_freq_buffers_of_old_exports_are_ignored(tiny, tiny_copy):
    # as transformers ignores them: RoPE's frequencies come from the config
    edit_tensors(tiny_copy / "model.safetensors", lambda sd: sd | {
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4) for i in range(4)})
    tok = torch.arange(10).view(2, 5)
    assert torch.equal(model.load(tiny_copy)(tok), tiny(tok))


def test_error_wrong_shape(tiny_copy):
    f = tiny_copy / "model.safetensors"
    name = "model.layers.0.self_attn.q_b_proj.weight"
    edit_tensors(f, lambda sd: sd | {name: sd[name][:-1]})
    load_error(tiny_copy, f, name, "shape")


def test_error_wrong_expert_shape(tiny_copy):
    f = tiny_copy / "model.safetensors"
    name = "model.layers.1.mlp.experts.3.gate_proj.weight"
    edit_tensors(f, lambda sd: sd | {name: sd[name].T.contiguous()})
    load_error(tiny_copy, f, name, "shape")


def test_error_two_names_for_one_tensor(tiny_copy):
    # "01" and "1" are one layer (one expert) to the name parser: which copy won was file order
    for name, twin in (("model.layers.1.input_layernorm.weight", "model.layers.01.input_layernorm.weight"),
                       ("model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.1.mlp.experts.03.up_proj.weight")):
        d = Path(shutil.copytree(tiny_copy, tiny_copy.parent / twin))
        edit_tensors(d / "model.safetensors", lambda sd: sd | {twin: sd[name] + 1})
        msg = load_error(d, d / "model.safetensors", "loaded twice")
        assert name in msg or twin in msg


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
def test_error_integer_tensor_where_a_float_weight_belongs(tiny_copy, dtype):
    f = tiny_copy / "model.safetensors"
    edit_tensors(f, lambda sd: sd | {"model.norm.weight": sd["model.norm.weight"].to(dtype)})
    load_error(tiny_copy, f, "model.norm.weight", f"unsupported dtype {dtype}")


def test_error_unsupported_model_type(tiny_copy):
    edit_config(tiny_copy, lambda c: c | {"model_type": "llama"})
    load_error(tiny_copy, tiny_copy / "config.json", "llama")


def test_error_config_not_json(tiny_copy):
    (tiny_copy / "config.json").write_text("{not json\n\n")
    load_error(tiny_copy, tiny_copy / "config.json")


def test_error_missing_shard(sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    shard = sorted(d.glob("*.safetensors"))[1]
    shard.unlink()
    load_error(d, shard, "model.safetensors.index.json")


def test_error_index_names_tensor_not_in_shard(sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    index["weight_map"]["model.layers.0.extra.weight"] = next(iter(index["weight_map"].values()))
    p.write_text(json.dumps(index))
    load_error(d, "model.layers.0.extra.weight")


def test_error_index_names_the_wrong_shard(sharded_dir, tmp_path):
    """A tensor the index puts in one shard but stored in another loaded without comment; other
    loaders open only the shard the index names, so it is refused, naming both files."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[1]
    p.write_text(json.dumps(index))
    load_error(d, p, name, f"listed in {shards[1]} but stored in {shards[0]}")
    index["weight_map"][name] = shards[0]  # control: the index put right loads
    p.write_text(json.dumps(index))
    model.load(d)


def test_error_mtp_copy_of_the_embedding_of_another_shape(tiny_copy):
    """The MTP layer's copies of the embedding and head are not loaded (they are the main ones), but a
    copy of another shape is a broken checkpoint: it passed unchecked."""
    f = tiny_copy / "model.safetensors"
    n = model.load(tiny_copy).args.n_layers
    name = f"model.layers.{n}.shared_head.head.weight"
    edit_tensors(f, lambda sd: sd | {name: sd[name][:-1].clone()})
    load_error(tiny_copy, f, name, "the MTP layer's copy of head.weight")


@pytest.mark.parametrize("weight_map,needle", [
    ([], "weight_map must map tensor names to shard files, found list"),
    (None, "weight_map must map tensor names to shard files, found NoneType"),
    ({"lm_head.weight": None}, "weight_map['lm_head.weight'] = None is not a shard file name"),
    ({"lm_head.weight": "../x.safetensors"}, "'../x.safetensors' is not a shard file name in this directory"),
])
def test_error_index_of_the_wrong_shape(sharded_dir, tmp_path, weight_map, needle):
    """A malformed index is one line naming it (it was AttributeError / TypeError from inside), in
    load and in inspect alike."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    load_error(d, "model.safetensors.index.json", needle)
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        ckpt.inspect(d)
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    load_error(d, "model.safetensors.index.json: not a valid safetensors index")


def test_inspect_before_the_download_takes_a_projection_stored_without_a_scale(fp8_dir, tmp_path):
    """An FP8 checkpoint with one projection in bf16 (no scale) loads; inspect from the index alone,
    before the shards are on disk, refused it for a missing scale (a review)."""
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    f, name = d / "model.safetensors", "model.layers.1.self_attn.o_proj.weight"
    edit_tensors(f, lambda sd: {k: v for k, v in sd.items() if k != name + "_scale_inv"}
                 | {name: sd[name].to(torch.bfloat16)})
    model.load(d, device="meta")
    assert ckpt.inspect(d)["checked"] == "headers"
    f.rename(tmp_path / "away.safetensors")  # not downloaded yet
    got = ckpt.inspect(d)
    assert got["checked"] == "index" and got["fp8"] and got["missing_files"] == ["model.safetensors"]
    p = d / "model.safetensors.index.json"  # the control: a weight missing from the index is still refused
    j = json.loads(p.read_text())
    del j["weight_map"][name]
    p.write_text(json.dumps(j))
    with pytest.raises(CheckpointError, match=f"missing tensor {re.escape(name)}"):
        ckpt.inspect(d)


@pytest.mark.parametrize("name,needle", [
    ("model.layers.1.mlp.experts.16.up_proj.weight", "expert 16 out of range (n_routed_experts=16)"),
    ("model.layers.1.self_attn.q_proj.weight", "which this config does not have"),  # q_lora_rank > 0
    ("model.layers.0.mlp.experts.0.up_proj.weight", "which this config does not have"),  # a dense layer
    ("model.layers.0.mlp.gate.e_score_correction_bias", "which this config does not have"),
    ("model.layers.1.self_attn.q_proj.weight_scale_inv", "has no weight"),
])
def test_inspect_before_the_download_refuses_names_a_load_refuses(sharded_dir, tmp_path, name, needle):
    """From the index alone, a name only had to map to some parameter name: an expert past
    n_routed_experts, or a module the config's model lacks, passed the dry run and failed the load
    once the shards were there (a review)."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    j = json.loads(p.read_text())
    shard = sorted(set(j["weight_map"].values()))[-1]
    (d / shard).rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control: the index as written passes
    j["weight_map"][name] = shard
    p.write_text(json.dumps(j))
    with pytest.raises(CheckpointError, match=re.escape(needle)) as e:
        ckpt.inspect(d)
    assert name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("block", [[96, 80], [64, 128], [8, 8]])  # not a power of two, not square, < 16
def test_inspect_before_the_download_checks_the_fp8_block_for_resident_weights(fp8_dir, tmp_path, block):
    """gemm_impl="fp8" needs square power-of-two blocks; the index-only check did not ask (a review)."""
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    edit_config(d, lambda c: c | {"quantization_config": c["quantization_config"] | {"weight_block_size": block}})
    (d / "model.safetensors").rename(tmp_path / "away.safetensors")
    j = {"metadata": {}, "weight_map": {}}
    # an index naming the one (absent) shard for every tensor of the checkpoint
    from safetensors import safe_open
    with safe_open(tmp_path / "away.safetensors", "pt") as f:
        j["weight_map"] = dict.fromkeys(f.keys(), "model.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(j))
    assert ckpt.inspect(d)["checked"] == "index"
    with pytest.raises(CheckpointError, match=re.escape(f"square weight blocks of a power of two >= 16 (its kernels "
                                                        f"tile by them), config has weight_block_size {block}")):
        ckpt.inspect(d, gemm_impl="fp8")


def test_inspect_before_the_download_refuses_fp8_gemms_for_a_checkpoint_without_scales(sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    shard = sorted(d.glob("*.safetensors"))[-1]
    shard.rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control: the bf16 path takes it
    for impl in ("fp8", "fp8-weights"):  # what a load of the whole checkpoint refuses too
        with pytest.raises(CheckpointError, match=re.escape(f"gemm_impl='{impl}' (--gemm {impl}) needs an FP8 "
                                                            "checkpoint")):
            ckpt.inspect(d, gemm_impl=impl)


def test_error_fp8_gemms_over_experts_stored_partly_fp8(fp8_dir, tmp_path):
    # the stacked expert weight is one FP8 tensor: one expert in bf16 cannot join it; dequantised it loads
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    name = "model.layers.1.mlp.experts.5.up_proj.weight"
    edit_tensors(d / "model.safetensors", lambda sd: {k: v for k, v in sd.items() if k != name + "_scale_inv"}
                 | {name: sd[name].to(torch.bfloat16)})
    model.load(d, device="meta")  # the control: the bf16 path takes it
    for impl in ("fp8", "fp8-weights"):
        with pytest.raises(CheckpointError, match=re.escape("experts.w3 mixes FP8 and ['torch.bfloat16']")):
            model.load(d, device="meta", gemm_impl=impl)


def test_inspect_before_the_download_of_a_checkpoint_without_its_mtp_layer(sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    j = json.loads(p.read_text())
    n = json.loads((d / "config.json").read_text())["num_hidden_layers"]
    j["weight_map"] = {k: v for k, v in j["weight_map"].items() if not k.startswith(f"model.layers.{n}.")}
    p.write_text(json.dumps(j))
    (d / sorted(set(j["weight_map"].values()))[-1]).rename(tmp_path / "away.safetensors")  # not downloaded yet
    got = ckpt.inspect(d)  # as a load would: no MTP weights, no MTP module to need them
    assert got["checked"] == "index" and got["mtp"] == 0 and got["args"].n_mtp_layers == 0


def test_error_fp8_scales_not_finite_or_not_float_and_fp8_vectors(fp8_dir, tmp_path):
    """Block scales multiply every weight of their block: a NaN one, or integer ones, were used as
    they came; an FP8 tensor that is not 2-D was an IndexError."""
    name = "model.layers.0.mlp.down_proj.weight_scale_inv"
    for i, (edit, needles) in enumerate([
            (lambda sd: sd | {name: sd[name].clone().index_fill_(1, torch.tensor([0]), float("nan"))},
             [name, "holds nan at block [0, 0]; block scales must be finite and not negative"]),
            # a negative scale flips its block's signs (a review); the last block, so the index is checked
            (lambda sd: sd | {name: sd[name].clone().view(-1).index_fill_(0, torch.tensor([sd[name].numel() - 1]),
                                                                          -0.5).view_as(sd[name])},
             [name, "holds -0.5 at block [", "must be finite and not negative"]),
            (lambda sd: sd | {name: sd[name].clone().index_fill_(1, torch.tensor([0]), float("inf"))},
             [name, "holds inf at block [0, 0]"]),  # an overflowed scale: its block all inf
            (lambda sd: sd | {name: sd[name].to(torch.int32)}, [name, "has dtype torch.int32"]),
            (lambda sd: sd | {"model.norm.weight": sd["model.norm.weight"].to(torch.float8_e4m3fn),
                              "model.norm.weight_scale_inv": torch.ones(1)},
             ["FP8 tensor model.norm.weight has shape [", "2-D weights only"])]):
        d = Path(shutil.copytree(fp8_dir, tmp_path / f"ckpt{i}"))
        edit_tensors(d / "model.safetensors", edit)
        msg = load_error(d, d / "model.safetensors", *needles)
        # the scale's own line, not wrapped in "cannot read tensor <the weight> (<the file>: ...)" naming the
        # file twice and the weight before the scale at fault (a checkpoint tour)
        assert msg.startswith(f"{d / 'model.safetensors'}: ") and msg.count(str(d)) == 1, msg
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ok"))  # the control: the same copy, unedited, loads
    model.load(d)


def test_error_fp8_scales_of_a_one_byte_float_before_any_tensor_is_read(fp8_dir, tmp_path):
    """Block scales stored as float8_e4m3fn passed the header check as floating point: --dry-run (inspect)
    called the checkpoint good, and the load failed inside the scales' finiteness check with torch's
    '"isfinite" not implemented for 'Float8_e4m3fn'' (a bug hunt). Both refuse it from the header, naming
    the scale; bfloat16 scales still load."""
    name = "model.layers.0.mlp.down_proj.weight_scale_inv"
    d = Path(shutil.copytree(fp8_dir, tmp_path / "fp8_scales"))
    edit_tensors(d / "model.safetensors", lambda sd: sd | {name: sd[name].to(torch.float8_e4m3fn)})
    needles = [d / "model.safetensors", name, "has dtype torch.float8_e4m3fn", "16 bits or more"]
    load_error(d, *needles)
    with pytest.raises(CheckpointError) as e:
        ckpt.inspect(d)
    assert all(str(n) in str(e.value) for n in needles), e.value
    d = Path(shutil.copytree(fp8_dir, tmp_path / "bf16_scales"))  # the control: scales in bfloat16 load
    edit_tensors(d / "model.safetensors", lambda sd: sd | {name: sd[name].to(torch.bfloat16)})
    assert ckpt.inspect(d)["checked"] == "headers"
    model.load(d)


@pytest.mark.parametrize("value, dtype", [(float("nan"), torch.bfloat16), (float("inf"), torch.float32),
                                          (float("-inf"), torch.bfloat16)])
def test_error_a_weight_that_is_not_finite(tiny_copy, value, dtype):
    """A NaN weight loaded without a word, and a record over it wrote a complete run of NaN losses and
    degenerate routing (a bad-input audit): named with its file, tensor and where, in either dtype."""
    f, name = tiny_copy / "model.safetensors", "model.layers.1.mlp.gate.weight"
    edit_tensors(f, lambda sd: sd | {name: sd[name].clone().index_put_((torch.tensor([2]), torch.tensor([5])),
                                                                      torch.tensor(value))})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(f))}: tensor {name} holds 1 non-finite value \(NaN "
                                              r"or inf; the first at \[2, 5\]\): a damaged checkpoint$"):
        model.load(tiny_copy, dtype=dtype)


def test_a_finite_weight_whose_sum_overflows_still_loads(tiny_copy):
    """The check's fast path is one sum; finite weights whose float32 sum overflows are told apart."""
    f, name = tiny_copy / "model.safetensors", "model.embed_tokens.weight"
    edit_tensors(f, lambda sd: sd | {name: torch.full_like(sd[name], 3e38)})
    assert model.load(tiny_copy, dtype=torch.float32).embed.weight.max().item() == pytest.approx(3e38)


def test_error_fp8_kernel_block_not_a_power_of_two(fp8_model, tmp_path):
    d = tmp_path / "b96"
    m = random_model("tiny", seed=1, **FP8_OVERRIDES, quant_block=(96, 96))
    model.save(m, d, fp8=True)
    model.load(d, dtype=torch.float32)  # dequantised: any block size
    with pytest.raises(CheckpointError, match=r"gemm_impl='fp8' \(--gemm fp8\) needs square weight blocks of a power of two "
                                              r">= 16 .* weight_block_size \[96, 96\]"):
        model.load(d, gemm_impl="fp8", dtype=torch.float32)


def test_error_fp8_weight_without_scale(fp8_dir, tmp_path):
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    f = d / "model.safetensors"
    name = "model.layers.1.mlp.experts.5.up_proj.weight"
    edit_tensors(f, lambda sd: {k: v for k, v in sd.items() if k != name + "_scale_inv"})
    load_error(d, f, name, "scale_inv")


def test_error_scale_of_a_weight_that_is_not_fp8(fp8_dir, tmp_path):
    """A weight cast from FP8 to bf16 without applying its scale, the scale kept beside it (a common
    conversion mistake), loaded with the scale dropped: weights off by 1/scale, no error (a review)."""
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    f = d / "model.safetensors"
    name = "model.layers.1.self_attn.o_proj.weight"
    edit_tensors(f, lambda sd: sd | {name: sd[name].to(torch.bfloat16)})
    load_error(d, f, name, "is torch.bfloat16 but has a block scale", "belongs to a float8_e4m3fn weight")
    edit_tensors(f, lambda sd: {k: v for k, v in sd.items() if k != name + "_scale_inv"})
    model.load(d)  # the control: a bf16 weight without a scale is an ordinary dense weight


def test_error_index_naming_a_tensor_twice(sharded_dir, tmp_path):
    """json keeps the last of two equal keys: an index naming a tensor twice passed (a review)."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    text = p.read_text()
    p.write_text(text.replace('"weight_map": {', '"weight_map": {"lm_head.weight": "elsewhere.safetensors", ', 1))
    load_error(d, p, "names 'lm_head.weight' twice")


def test_error_fp8_scale_wrong_shape(fp8_dir, tmp_path):
    d = Path(shutil.copytree(fp8_dir, tmp_path / "ckpt"))
    f = d / "model.safetensors"
    name = "model.layers.0.mlp.down_proj.weight_scale_inv"
    edit_tensors(f, lambda sd: sd | {name: sd[name][:, :1].contiguous()})
    load_error(d, f, name, "shape")


def test_error_not_a_directory(tiny_dir, tmp_path):
    load_error(tiny_dir / "model.safetensors", tiny_dir / "model.safetensors", "not a checkpoint directory")
    load_error(tmp_path / "nowhere", tmp_path / "nowhere")


@pytest.mark.parametrize("what", ["file", "nowhere"])
def test_inspect_of_a_file_or_a_path_to_nothing_says_so(tiny_dir, tmp_path, what):
    """`inspect` (--dry-run's check) said '<path>: no config.json' of a shard file given for the directory,
    and of a path to nothing, where `load` says what the path is."""
    path = tiny_dir / "model.safetensors" if what == "file" else tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as ei:
        ckpt.inspect(path)
    assert str(ei.value) == f"{path}: " + ("not a checkpoint directory" if what == "file" else "no such directory")


def test_an_empty_path_is_refused_by_name_not_read_as_the_current_folder(tiny_dir, monkeypatch):
    """Path('') is '.': model.load("") (an unset variable in a notebook) loaded whatever checkpoint the
    current folder held, and elsewhere said '.: no config.json'."""
    monkeypatch.chdir(tiny_dir)
    for empty in ("", "  "):
        msg = load_error(empty, f"path={empty!r}: an empty path")
        assert not msg.startswith(".")
        with pytest.raises(CheckpointError, match="path='': an empty path"):
            ckpt.inspect("")
    with pytest.raises(model.ConfigError, match="source='': an empty path"):
        model.ModelArgs.from_hf_config("")
    assert model.load(".", device="meta").args.n_layers  # the current folder, given as '.', still loads


def test_a_path_that_is_not_text_or_a_path_is_refused_by_name():
    load_error(5, "path=5: expected a path (str or os.PathLike), not int")  # was Path(5)'s own TypeError


def test_an_unknown_attn_impl_is_a_checkpoint_error_before_anything_is_read(tmp_path):
    """It was MLA's plain ValueError, raised only once the checkpoint's config and headers were read."""
    for path in (tmp_path / "nowhere", tmp_path):  # named even where the checkpoint is not there
        with pytest.raises(CheckpointError, match=r"^attn_impl='flash': choose one of \('absorb', 'naive'\)$"):
            model.load(path, attn_impl="flash")


def test_dtype_by_name_and_devices_this_machine_lacks(tiny, tiny_dir):
    """dtype may be named as a string; a name torch lacks, or a CUDA device torch does not see, is a
    CheckpointError before anything is read (not torch's TypeError or an assertion from its CUDA init)."""
    m = model.load(tiny_dir, dtype="torch.bfloat16")
    assert m.embed.weight.dtype == torch.bfloat16 and m.layers[1].ffn.gate.weight.dtype == torch.float32
    for short, meant in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32),
                         ("fp64", torch.float64)):  # "bf16" was refused, though torch's name was meant
        assert model.load(tiny_dir, dtype=short, device="meta").embed.weight.dtype == meant
    with pytest.raises(CheckpointError, match=r"dtype=.half-ish.: expected a floating-point torch dtype or its "
                                              r"name \(float32, bfloat16, float16, float64; or fp32, bf16, fp16, "
                                              r"fp64\)"):  # float64 loads too
        model.load(tiny_dir, dtype="half-ish")
    with pytest.raises(CheckpointError, match="dtype=16: expected a floating-point torch dtype"):
        model.load(tiny_dir, dtype=16)
    # torch's own message listed its 20 device types ('gpu'), or its overloads over several lines (5.0)
    for wrong in ("gpu0", "gpu", "CPU", 5.0, [0]):
        with pytest.raises(CheckpointError, match=rf"^device={re.escape(repr(wrong))}: expected 'cpu', 'cuda', "
                                                  rf"'cuda:N' or 'meta' or a torch.device$"):
            model.load(tiny_dir, device=wrong)
    with pytest.raises(CheckpointError, match="device='mps': the model runs on 'cpu', 'cuda', 'cuda:N' or 'meta'"):
        model.load(tiny_dir, device="mps")
    with pytest.raises(CheckpointError, match="dtype=torch.int32: expected a floating-point torch dtype"):
        model.load(tiny_dir, dtype=torch.int32)
    for fp8 in (torch.float8_e4m3fn, "float8_e5m2"):  # floating point, but one byte: storage, not compute
        with pytest.raises(CheckpointError, match="expected a floating-point torch dtype"):
            model.load(tiny_dir, dtype=fp8)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(CheckpointError, match=f"device='cuda:{n}': this machine's torch sees {n} CUDA device"):
        model.load(tiny_dir, device=f"cuda:{n}")


def test_a_config_with_more_layers_than_the_tensors_is_refused_before_the_model_is_built(sharded_dir, tmp_path):
    # num_hidden_layers 10**12 built every layer (on the meta device) before finding their tensors missing: a hang
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    edit_config(d, lambda c: c | {"num_hidden_layers": 10**12})
    load_error(d, d, "missing tensor model.layers.4.* (config.json has 1,000,000,000,000 layers; the tensors name 4)")
    sorted(d.glob("*.safetensors"))[0].rename(tmp_path / "away.safetensors")  # inspect from the index alone
    with pytest.raises(CheckpointError, match=re.escape("missing tensor model.layers.4.* (config.json has 1,000,")):
        ckpt.inspect(d)


def test_a_config_whose_tensors_overflow_is_one_line(tiny_copy):
    # hidden_size 10**12: the meta device's "Storage size calculation overflowed" was a RuntimeError traceback
    edit_config(tiny_copy, lambda c: c | {"hidden_size": 10**12})
    load_error(tiny_copy, tiny_copy / "config.json", "sizes too large to build a model of (Storage size calculation")
