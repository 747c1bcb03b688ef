"""What a checkpoint's tensors must be before any is read: each header (name, shape, dtype, FP8 block
scale) against the model built on the meta device, the index's names alone when shards are still
missing, and the plan of where each tensor loads (model/checkpoint_stream.py streams them by it). Every
problem is a `CheckpointError` of one line naming the file and the tensor."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Collection

import torch

from .args import ModelArgs
from .checkpoint_files import CheckpointError  # re-exported: defined there, torch-free
from .names import IGNORED, MTP_SHARED, MTP_TABLE, Target, hf_to_ours, ours_to_hf
from .transformer import Transformer

MTP_ONLY = {hf for hf, _, _ in MTP_TABLE} | set(MTP_SHARED)  # names an MTP layer has and a main layer lacks


def _index_name_problem(n: str, names: set[str], known: set[str], args: ModelArgs) -> str | None:
    """Why a full load would refuse index name `n` (None: it would take it), judged from the names
    alone: the config's model must have the tensor (`known`: its every checkpoint name), an expert
    must be in range, a scale needs its weight. The MTP layer's copies of the embedding and head are
    known but not loaded."""
    if n.endswith("_scale_inv"):
        return None if n[: -len("_scale_inv")] in names else f"scale {n} has no weight {n[: -len('_scale_inv')]}"
    if n in known or IGNORED.match(n):
        return None
    target = hf_to_ours(n, args)
    if target == "skip":
        return None
    if target is None:
        return _unexpected(n, args)
    if target.expert is not None and target.expert >= args.n_routed_experts:
        return f"tensor {n}: expert {target.expert} out of range (n_routed_experts={args.n_routed_experts})"
    return f"tensor {n} maps to {target.name}, which this config does not have"


def _plan(meta: Transformer, headers: dict) -> list[tuple[str, Target]]:
    """Check every checkpoint tensor against the model; returns (hf_name, target) in file order."""
    expect = _expected(meta)
    covered: dict[str, set] = defaultdict(set)
    plan = []
    for hf_name in headers:
        target = _check_tensor(hf_name, headers, meta.args, expect)
        if target is None:
            continue
        key = target.expert if target.expert is not None else -1
        if key in covered[target.name]:
            raise CheckpointError(f"{headers[hf_name][0]}: tensor {hf_name} loaded twice")
        covered[target.name].add(key)
        plan.append((hf_name, target))
    _check_complete(meta, covered)
    return plan


def _expected(meta: Transformer) -> dict[str, torch.Tensor]:
    """The meta model's parameters and buffers by name, as checkpoint tensors are checked against them."""
    expect = dict(meta.named_parameters()) | dict(meta.named_buffers())
    expect.pop("rope_inv_freq", None)
    return expect


def _check_tensor(hf_name: str, headers: dict, args: ModelArgs, expect: dict,
                  elsewhere: Collection[str] = ()) -> Target | None:
    """Checkpoint tensor `hf_name` against the model: its place, shape, dtype and block scale. Returns where
    it loads, None for a tensor not loaded (a block scale, an ignored buffer, the MTP layer's copies).
    elsewhere: the names the index puts in shards not downloaded yet (`inspect`; `headers` are those on
    disk), where a weight's scale or a scale's weight may be. A scale listed nowhere is missing: it was
    not looked for once any shard was (an FP8 weight without one passed --dry-run; a checkpoint tour)."""
    f, shape, dt = headers[hf_name]
    if IGNORED.match(hf_name):
        return None
    if hf_name.endswith("_scale_inv"):
        if hf_name[: -len("_scale_inv")] not in elsewhere:
            _check_scale_has_fp8_weight(hf_name, f, headers)
        return None
    target = hf_to_ours(hf_name, args)
    if target == "skip":  # an MTP layer's copy of the embedding or head: not loaded, but the same shape
        main = MTP_SHARED[hf_name.split(".", 3)[3]]
        if tuple(shape) != tuple(expect[main].shape):
            raise CheckpointError(f"{f}: tensor {hf_name} has shape {list(shape)}, expected "
                                  f"{list(expect[main].shape)} (the MTP layer's copy of {main})")
        return None
    _check_shape(hf_name, f, shape, target, expect, args)
    if dt == torch.float8_e4m3fn:
        _check_fp8_weight(hf_name, f, shape, headers, args.quant_block or (128, 128),
                          scale_elsewhere=hf_name + "_scale_inv" in elsewhere)
    elif not (dt.is_floating_point if isinstance(dt, torch.dtype) else False):
        raise CheckpointError(f"{f}: tensor {hf_name} has unsupported dtype {dt}")
    return target


def _unexpected(hf_name: str, args: ModelArgs) -> str:
    """Why tensor `hf_name` has no place in the config's model. A layer past the main ones is an MTP module's:
    a config.json edited to num_nextn_predict_layers 0 (to switch MTP off) over weights that keep it was
    refused as 'not part of a model with 61 layers', which did not say which key to look at (a checkpoint tour).
    An MTP module's own tensor (enorm, eh_proj, ...) in a main layer is a num_hidden_layers that counts the MTP
    layer too: 62 for DeepSeek-V3 was 'not part of a model with 62 layers' (a checkpoint tour)."""
    layer = re.match(r"model\.layers\.(\d+)\.(.+)$", hf_name)
    if layer and int(layer.group(1)) < args.n_layers and layer.group(2) in MTP_ONLY:
        n = layer.group(1)  # a num_hidden_layers that counts the MTP layer too (62 for DeepSeek-V3)
        return (f"unexpected tensor {hf_name} (an MTP module's tensor, in layer {n}, which config.json's "
                f"num_hidden_layers={args.n_layers} makes a main layer: num_hidden_layers counts the main layers "
                f"only, and the MTP modules follow them, so {n} main layers would make layer {n} MTP module 0)")
    if layer and int(layer.group(1)) >= args.n_layers:
        k = int(layer.group(1)) - args.n_layers
        return (f"unexpected tensor {hf_name} (layer {layer.group(1)} would be MTP module {k}, but the config has "
                f"{args.n_layers} layers and {args.n_mtp_layers} MTP module(s) with weights: see config.json's "
                "num_hidden_layers and num_nextn_predict_layers)")
    return f"unexpected tensor {hf_name} (not part of a {args.model_type} model with {args.n_layers} layers)"


def _check_scale_has_fp8_weight(hf_name: str, f: str, headers: dict) -> None:
    """A `*_scale_inv` tensor must sit beside the float8_e4m3fn weight it scales."""
    w = hf_name[: -len("_scale_inv")]
    if w not in headers:
        raise CheckpointError(f"{f}: scale {hf_name} has no weight {w}")
    if headers[w][2] != torch.float8_e4m3fn:  # its scale would be dropped: weights off by 1/scale
        raise CheckpointError(f"{headers[w][0]}: tensor {w} is {headers[w][2]} but has a block scale "
                              f"{hf_name}, which belongs to a float8_e4m3fn weight (cast from FP8 without "
                              "multiplying by its scales?)")


def _check_shape(hf_name: str, f: str, shape, target: Target | None, expect: dict, args) -> None:
    """The tensor maps to one of ours (an expert in range) and has its shape."""
    if target is None:
        raise CheckpointError(f"{f}: {_unexpected(hf_name, args)}")
    want = expect[target.name].shape if target.name in expect else None
    if want is None:
        raise CheckpointError(f"{f}: tensor {hf_name} maps to {target.name}, which this config does not have")
    if target.expert is not None:
        if target.expert >= want[0]:
            raise CheckpointError(f"{f}: tensor {hf_name}: expert {target.expert} out of range "
                                  f"(n_routed_experts={want[0]})")
        want = want[1:]
    if tuple(shape) != tuple(want):
        raise CheckpointError(f"{f}: tensor {hf_name} has shape {list(shape)}, expected {list(want)}")


def _check_fp8_weight(hf_name: str, f: str, shape, headers: dict, block: tuple[int, int],
                      scale_elsewhere: bool = False) -> None:
    """An FP8 weight is 2-D and has a floating-point `_scale_inv` of one value per `block` (not looked at
    when `scale_elsewhere`: in a shard not downloaded yet)."""
    if len(shape) != 2:
        raise CheckpointError(f"{f}: FP8 tensor {hf_name} has shape {list(shape)}; FP8 block "
                              "quantisation holds 2-D weights only")
    if scale_elsewhere:
        return
    if hf_name + "_scale_inv" not in headers:
        raise CheckpointError(f"{f}: FP8 tensor {hf_name} has no {hf_name}_scale_inv")
    s_file, s_shape, s_dt = headers[hf_name + "_scale_inv"]
    # NOTE: a one-byte float (float8_e4m3fn) passed as floating point, and the load then failed inside the
    # scales' finiteness check with torch's '"isfinite" not implemented for 'Float8_e4m3fn'', after every
    # tensor before it was read, while --dry-run passed it (a bug hunt)
    if not (isinstance(s_dt, torch.dtype) and s_dt.is_floating_point and s_dt.itemsize >= 2):
        raise CheckpointError(f"{s_file}: tensor {hf_name}_scale_inv has dtype {s_dt}; block scales "
                              "are floating point of 16 bits or more (float32)")
    s_want = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
    if tuple(s_shape) != s_want:
        raise CheckpointError(f"{s_file}: tensor {hf_name}_scale_inv has shape {list(s_shape)}, expected "
                              f"{list(s_want)}")


def _check_complete(meta: Transformer, covered: dict[str, set]) -> None:
    """Every tensor the model needs was in the checkpoint; else name the first missing one."""
    missing = [hf for hf, ours, e, _ in ours_to_hf(meta) if (e if e is not None else -1) not in covered[ours]]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{meta.args.extra.get('checkpoint', 'checkpoint')}: missing tensor "
                              f"{missing[0]}{more}")


BLOCKS = [2 ** k for k in range(4, 13)]  # the square block sizes a block-scale grid is matched against


def check_quantization(config: Path, args: ModelArgs, headers: dict) -> None:
    """config.json's quantization_config against the weights' dtypes, before any is checked by it. FP8
    weights under a config without one (hand-edited, or converted) loaded as if their blocks were 128x128
    and --dry-run called them not FP8; a config with one over weights none of which is FP8 (cast to
    bf16, the FP8 config kept beside them, as DeepSeek's fp8_cast_bf16.py leaves it) loaded a float32
    checkpoint in bfloat16 and was called FP8 (a review). Neither is guessed: each is one line saying
    what to add or remove."""
    fp8 = next((n for n, (_, _, dt) in headers.items() if dt == torch.float8_e4m3fn), None)
    if args.quant_block is None and fp8 is not None:
        f, _, _ = headers[fp8]
        blocks = _scale_blocks(headers)
        scale = headers.get(fp8 + "_scale_inv")
        has = f" with block scales {fp8}_scale_inv {list(scale[1])}" if scale else ""
        fits = f"; its scales fit {blocks[0]}x{blocks[0]} blocks and no other" if len(blocks) == 1 else ""
        raise CheckpointError(f"{config}: no quantization_config, but tensor {fp8} in {f.name} is float8_e4m3fn{has} "
                              f"(an FP8 checkpoint{fits}): add {_quantization_config(blocks)} to it, as DeepSeek-V3 "
                              "publishes it (the block size is not guessed)")
    if args.quant_block is not None and fp8 is None:
        weight = next((n for n in headers if _fp8_capable(n, args)), next(iter(headers), None))
        if weight is not None:
            f, _, dt = headers[weight]
            raise CheckpointError(f"{config}: quantization_config says FP8, but no tensor is float8_e4m3fn: {weight} "
                                  f"in {f.name} is {_name(dt)} without a block scale (cast from FP8, the FP8 "
                                  "config kept?): remove quantization_config from it and set torch_dtype to the "
                                  f"weights' dtype ({_name(dt)})")


def check_quantization_names(config: Path, index: Path, args: ModelArgs, names) -> None:
    """`check_quantization` from an index's names alone (`inspect` before the shards are downloaded):
    block scales listed under a config without quantization_config, or none listed under one."""
    scale = next((n for n in sorted(names) if n.endswith("_scale_inv")), None)
    if args.quant_block is None and scale is not None:
        raise CheckpointError(f"{config}: no quantization_config, but {index.name} lists the block scale {scale} of "
                              f"an FP8 checkpoint: add {_quantization_config([])} to it, as DeepSeek-V3 publishes "
                              "it (the block size is not guessed)")
    if args.quant_block is not None and scale is None:
        raise CheckpointError(f"{config}: quantization_config says FP8, but {index.name} lists no block scale "
                              "(*_scale_inv), which FP8 weights need: remove quantization_config from it and set "
                              "torch_dtype to the weights' dtype")


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fp8_capable(hf_name: str, args: ModelArgs) -> bool:
    target = hf_to_ours(hf_name, args)
    return isinstance(target, Target) and target.fp8


def _scale_blocks(headers: dict) -> list[int]:
    """The square power-of-two block sizes that every FP8 weight's block-scale grid fits."""
    blocks = BLOCKS
    for n, (_, shape, dt) in headers.items():
        scale = headers.get(n + "_scale_inv")
        if dt == torch.float8_e4m3fn and scale is not None and len(shape) == 2:
            blocks = [b for b in blocks if tuple(scale[1]) == (-(-shape[0] // b), -(-shape[1] // b))]
    return blocks


def _quantization_config(blocks: list[int]) -> str:
    """The quantization_config DeepSeek-V3's config.json has, in blocks of `blocks[0]` when that is the
    only block size the scales fit."""
    size = f"[{blocks[0]}, {blocks[0]}]" if len(blocks) == 1 else "[the block size it was quantised in]"
    return ('"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", '
            f'"weight_block_size": {size}}}')
