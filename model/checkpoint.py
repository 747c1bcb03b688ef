"""Hugging Face checkpoints in and out: one name table, streaming loads, FP8 dequantisation.

    m = model.load("DeepSeek-V3/")                  # BF16/FP32 or FP8 (dequantised to bf16)
    m = model.load("DeepSeek-V3/", gemm_impl="fp8") # FP8 weights stay resident, FP8 GEMMs
    m = model.load("DeepSeek-V3/", device="meta")   # validate names/shapes, read no tensor data
    m = model.load("DeepSeek-V3/")   # under torchrun (WORLD_SIZE > 1): reads only this rank's shard
    model.save(m, "out/", fp8=True)                 # HF layout (+ MTP layer): model/saving.py

The checkpoint layout is in `docs/deepseek-v3.md` ("Checkpoint names"). Loading opens every shard's
header first (names, shapes, dtypes), checks them against the model built on the meta device, and
only then materialises the model and copies tensors in one at a time, so the checkpoint is never in
memory twice. Every problem raises `CheckpointError` with one line naming the file and tensor (the
files, the index and the headers: model/checkpoint_files.py; the checks of the headers against the
model: model/checkpoint_checks.py).

With `parallel=True` (under torchrun) the meta model is cut by `model.parallel.shard_` before it is
materialised, and each tensor is copied in bounded chunks (model/checkpoint_stream.py, model/tensor_reader.py):
only this rank's rows, or its columns of every row, and only this rank's routed experts. FP8 tensors: when they stay resident
(gemm_impl="fp8") the slice must start on a 128-block boundary or lie inside one block (otherwise
`ParallelError` says so) and takes the matching rows/columns of `weight_scale_inv`; when they are
dequantised (gemm_impl="bf16") the covering whole blocks are read, dequantised, then trimmed, so
any world size that divides the layout works.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path

import torch

from .args import ConfigError, ModelArgs, given_path
from .checkpoint_checks import (CheckpointError, _check_scale_has_fp8_weight, _check_tensor, _expected,
                                _index_name_problem, _plan, check_quantization, check_quantization_names)
from .checkpoint_files import (cache_folder_note, check_index_against_headers, check_links, downloading, read_headers,
                               read_index, shard_files, unfinished_download_note, weight_files)
from .checkpoint_stream import stream_tensors
from .names import Target, ours_to_hf
from .parallel import Cut, device_for, install, resolve as resolve_shards, shard_
from .layers import rope_inv_freq
from .mla import ATTN_IMPLS
from .transformer import Transformer

# moved to model/checkpoint_files.py, still imported from here by users (`from model.checkpoint import
# lfs_pointer_note`; weight_files and read_index too, imported above)
from .checkpoint_files import LFS_POINTER, lfs_pointer_note  # noqa: F401


# ------------------------------------------------------------------------------------------ load
GEMM_IMPLS = ("bf16", "fp8", "fp8-weights")
FP8_RESIDENT = ("fp8", "fp8-weights")  # the gemm_impls that keep FP8 weights in memory


def load(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device=None,
         attn_impl: str = "absorb", gemm_impl: str = "bf16", parallel="auto") -> Transformer:
    """Load a Hugging Face DeepSeek-V3/V2 checkpoint directory into a `Transformer` (eval mode).

    dtype: compute dtype, a torch.dtype or its name, "bfloat16" or the short "bf16" (also "fp16", "fp32",
        "fp64"); default: the config's `torch_dtype`, bf16 for FP8 checkpoints. The router is always float32.
    device: where to build it; "meta" validates the checkpoint and reads no tensor data.
    gemm_impl: "bf16" dequantises FP8 weights into the compute dtype on load; "fp8" keeps every
        FP8 tensor of the checkpoint resident (float8_e4m3fn weight + float32 `*_scale_inv` block
        scales in the Linear layers and the stacked experts) and runs the block-scaled FP8 GEMM
        (`model.kernels`), activations quantised to FP8 per (token, 128 channels) as DeepSeek's
        inference does; "fp8-weights" keeps the same FP8 weights resident but dequantises each into
        the compute dtype for its GEMM and leaves activations unquantised: the numbers of "bf16"
        with the memory of "fp8". FP8 activation rounding turns float32 summation-order differences
        (another parallel layout, another thread count) into different routing for a few percent of
        tokens; "fp8-weights" does not. Both need an FP8 checkpoint.
    parallel: "auto" (default) = tensor + expert parallel when torchrun started several processes
        (WORLD_SIZE > 1), else the whole model; True = tensor + expert parallel over torchrun's ranks
        (the process group is initialised when needed, gloo on CPU, NCCL on CUDA; one process = the
        whole model), reading only this rank's shard; False = the whole model in every process
        (data-parallel replicas, as `probe record` under torchrun uses); or a `model.parallel.Shards`.
        See model/parallel.py.
    MTP weights (layer n_layers) are loaded when present; without them the model has no MTP module.
    An empty `path` is a CheckpointError, not the current folder.
    """
    if gemm_impl not in GEMM_IMPLS:
        raise CheckpointError(f"gemm_impl={gemm_impl!r}: choose one of {GEMM_IMPLS}")
    if attn_impl not in ATTN_IMPLS:  # before the checkpoint is read, as gemm_impl (it was MLA's ValueError)
        raise CheckpointError(f"attn_impl={attn_impl!r}: choose one of {ATTN_IMPLS}")
    dtype, device = _check_placement(dtype, device)
    path = given_path(path, "path", CheckpointError)
    args, files, headers = _open(path)
    _check_layer_count(path, args, headers)
    dtype = dtype or getattr(torch, args.dtype)
    if gemm_impl == "fp8" and dtype == torch.float64:  # refused before the weights load, not at the first GEMM
        raise CheckpointError(f"{_impl('fp8')} quantises float32, bfloat16 or float16 activations to FP8, not "
                              f"float64: use dtype float32, or {_impl('fp8-weights')} (FP8 weights, float64 sums)")
    meta = _meta_model(path, args, attn_impl=attn_impl, dtype=dtype)
    plan = _plan(meta, headers)
    resident = _keep_fp8(meta, plan, headers, path, gemm_impl) if gemm_impl in FP8_RESIDENT else set()
    if gemm_impl == "fp8-weights":
        for mod in meta.modules():
            if hasattr(mod, "quantise_activations"):
                mod.quantise_activations = False
    shards = resolve_shards(parallel)
    spec: dict[str, Cut] = {}
    if shards is not None:
        spec = shard_(meta, shards)  # shapes only: nothing is allocated yet
        device = device_for(device, shards)
    if torch.device(device or "cpu").type == "meta":
        return meta.eval()
    model = materialise(meta, device or "cpu")
    model.rope_inv_freq = rope_inv_freq(args).to(model.rope_inv_freq.device)  # not in the checkpoint
    stream_tensors(model, plan, headers, files, spec, resident)
    if shards is not None:
        install(model, shards)
    return model.eval()


def materialise(meta: Transformer, device) -> Transformer:
    """`meta.to_empty(device=...)`, with the same shapes and strides: to_empty's `empty_like` of a meta
    tensor runs torch's Python meta kernels, whose first call imports sympy (~0.5-0.8 s of every process
    that loads a model, torch 2.13); `empty_strided` takes the sizes alone."""
    return meta._apply(lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device))


SHORT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}


def float_dtype(dtype, what: str) -> torch.dtype | None:
    """A floating-point compute dtype from a torch.dtype, its name ("bfloat16", "torch.float32") or the
    common short name ("bf16", "fp16", "fp32", "fp64", which torch lacks: "bf16" was refused); None stays
    None. Anything else (an integer or FP8 dtype, a name torch lacks) is a CheckpointError."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        named = getattr(torch, SHORT_DTYPES.get(name, name), None)
    else:
        named = dtype
    if not isinstance(named, torch.dtype) or not named.is_floating_point or named.itemsize < 2:
        raise CheckpointError(f"{what}={dtype!r}: expected a floating-point torch dtype or its name "
                              "(float32, bfloat16, float16, float64; or fp32, bf16, fp16, fp64)")
    return named


_DEVICES = "'cpu', 'cuda', 'cuda:N' or 'meta'"


def _check_placement(dtype, device) -> tuple[torch.dtype | None, torch.device | None]:
    """`dtype` (a torch.dtype, or its name: "bfloat16", "torch.float32") and `device`, checked before
    anything is read: a name torch lacks, or a CUDA device this machine does not have, is one line."""
    dtype = float_dtype(dtype, "dtype")
    if device is None:
        return dtype, None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:  # torch lists its 20 device types ('gpu'), or its overloads (5.0)
        why = str(e).splitlines()[0] if isinstance(device, int) else f"expected {_DEVICES} or a torch.device"
        raise CheckpointError(f"device={device!r}: {why}") from None
    if device.type not in ("cpu", "cuda", "meta"):
        raise CheckpointError(f"device={str(device)!r}: the model runs on {_DEVICES}")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise CheckpointError(f"device={str(device)!r}: this machine's torch sees {have} CUDA device(s)")
    return dtype, device


def not_a_directory(path: str | Path) -> str | None:
    """Why `path` cannot be a checkpoint directory before anything is read: "no such directory", or
    "not a checkpoint directory" (a file); None for a directory. The commands put their flag before it."""
    path = Path(path)
    if path.is_dir():
        return None
    return "not a checkpoint directory" if path.exists() else "no such directory"


def _meta_model(path: Path, args: ModelArgs, **kw) -> Transformer:
    """The model on the meta device; config sizes whose tensors overflow even there (hidden_size
    1000000000000: "Storage size calculation overflowed") are a one-line error, not a traceback."""
    try:
        with torch.device("meta"):
            return Transformer(args, init=False, **kw)
    except RuntimeError as e:
        raise CheckpointError(f"{path / 'config.json'}: sizes too large to build a model of "
                              f"({str(e).splitlines()[0]})") from None


def _check_layer_count(where: Path, args: ModelArgs, names) -> None:
    """A config with more layers than the tensors name is refused before the model is built: its missing
    tensors were found only after building every layer (num_hidden_layers 10**12 hung)."""
    prefix = len("model.layers.")
    numbers = (n[prefix:].partition(".")[0] for n in names if n.startswith("model.layers."))  # once a name
    layers = {int(i) for i in numbers if i.isdigit()}
    if args.n_layers > len(layers):
        first = next(i for i in range(len(layers) + 1) if i not in layers)
        raise CheckpointError(f"{where}: missing tensor model.layers.{first}.* (config.json has {args.n_layers:,} "
                              f"layers; the tensors name {len(layers):,})")


def _open(path: Path) -> tuple[ModelArgs, list[Path], dict]:
    """The config (MTP modules counted only when their weights are there) and every shard's header."""
    _require_config(path)
    args = _config(path)
    files, weight_map = shard_files(path)
    headers = read_headers(files)
    check_index_against_headers(path, weight_map, headers)
    check_quantization(path / "config.json", args, headers)
    mtp_prefixes = [f"model.layers.{args.n_layers + k}." for k in range(args.n_mtp_layers)]
    present = [p for p in mtp_prefixes if any(n.startswith(p) for n in headers)]
    args.extra["mtp_weights"] = bool(present)
    args.n_mtp_layers = len(present)  # MTP modules absent from the checkpoint are not built
    args.extra["checkpoint"] = str(path.resolve())
    return args, files, headers


def _keep_fp8(meta: Transformer, plan, headers: dict, path: Path, gemm_impl: str = "fp8") -> set[str]:
    """gemm_impl "fp8" or "fp8-weights": make the FP8 tensors' parameters FP8 resident; returns their names."""
    resident = _fp8_resident_names(plan, headers, path, gemm_impl)
    block = _fp8_block(meta.args, path, gemm_impl)
    make_fp8_resident(meta, resident, block=block, scale_fmt=meta.args.scale_fmt)
    return resident


def _fp8_block(args: ModelArgs, path: Path, gemm_impl: str = "fp8") -> int:
    """The weight block size FP8-resident weights keep (gemm_impl "fp8" or "fp8-weights"): square, a
    power of two >= 16."""
    block = args.quant_block or (128, 128)
    if block[0] != block[1] or block[0] < 16 or block[0] & (block[0] - 1):
        raise CheckpointError(f"{path}: {_impl(gemm_impl)} needs square weight blocks of a power of two >= 16 "
                              f"(its kernels tile by them), config has weight_block_size {list(block)}; "
                              f"{_impl('bf16')} dequantises any block size")
    return block[0]


def inspect(path: str | os.PathLike, *, gemm_impl: str = "bf16", dtype: torch.dtype | None = None) -> dict:
    """Check a checkpoint without reading any tensor data, for planning a run before the weights are
    on disk. With every shard file present: the full check of `load(..., device="meta")` (every
    name, shape and dtype against the config). When `model.safetensors.index.json` lists shard files
    that are absent (or that aria2c is still filling): the index's names against the config (every
    expected tensor listed, nothing unknown) and the headers of the shards already there (the others'
    shapes need their files).
    Returns what was checked:
    {"args", "checked": "headers" | "index", "files", "missing_files", "tensors", "fp8", "mtp"}."""
    path = given_path(path, "path", CheckpointError)
    _require_config(path)
    index = path / "model.safetensors.index.json"
    if not index.exists():
        m = load(path, device="meta", gemm_impl=gemm_impl, dtype=dtype, parallel=False)
        files = weight_files(path)
        return {"args": m.args, "checked": "headers", "files": [f.name for f in files], "missing_files": [],
                "tensors": None, "fp8": _is_fp8_args(m.args), "mtp": len(m.mtp)}
    weight_map = read_index(index)
    files = sorted(set(weight_map.values()))
    check_links([path / f for f in files])  # a link to nothing is no download in progress
    missing = [f for f in files if not (path / f).exists() or downloading(path / f)]  # not fetched whole yet
    if not missing:
        m = load(path, device="meta", gemm_impl=gemm_impl, dtype=dtype, parallel=False)
        return {"args": m.args, "checked": "headers", "files": files, "missing_files": [],
                "tensors": len(weight_map), "fp8": _is_fp8_args(m.args), "mtp": len(m.mtp)}
    args = _config(path)
    names = set(weight_map)
    fp8 = any(n.endswith("_scale_inv") for n in names)
    if gemm_impl in FP8_RESIDENT and not fp8:
        raise CheckpointError(f"{path}: {_impl(gemm_impl)} needs an FP8 checkpoint; {index.name} lists no "
                              f"weight_scale_inv tensors: use {_impl('bf16')}")
    if gemm_impl in FP8_RESIDENT:
        _fp8_block(args, path, gemm_impl)
    _check_layer_count(index, args, names)
    args.n_mtp_layers = sum(any(n.startswith(f"model.layers.{args.n_layers + k}.") for n in names)
                            for k in range(args.n_mtp_layers))
    meta = _meta_model(path, args, dtype=dtype or torch.bfloat16)
    want = [hf for hf, _, _, _ in ours_to_hf(meta)]
    known = set(want)
    for n in sorted(names):
        problem = _index_name_problem(n, names, known, args)
        if problem:
            raise CheckpointError(f"{index}: {problem}")
    check_quantization_names(path / "config.json", index, args, names)
    # every weight; no scale is required: a projection may be stored in bf16 without one, which a
    # load takes (the dtypes are in the headers, not the index; requiring a scale for every FP8-capable
    # weight refused such a checkpoint here and nowhere else, a review)
    absent = [n for n in want if n not in names]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise CheckpointError(f"{index}: missing tensor {absent[0]}{more}")
    _check_downloaded(meta, path, [path / f for f in files if f not in missing], weight_map)
    return {"args": args, "checked": "index", "files": files, "missing_files": missing, "tensors": len(names),
            "fp8": fp8, "mtp": args.n_mtp_layers}


def _check_downloaded(meta: Transformer, path: Path, files: list[Path], weight_map: dict[str, str]) -> None:
    """`inspect` while some shards are missing: the headers of those on disk against the index and the model
    (names, shapes, dtypes, scales). Only the index's names were checked, so a damaged or wrong shard already
    downloaded (a truncated file, a Git LFS pointer, a tensor of another shape) passed --dry-run and was found
    by the load, on the rented GPUs (a checkpoint tour)."""
    headers = read_headers(files)
    on_disk = {f.name for f in files}  # names, not a Path per tensor of the index (~1 s for the 671B's)
    # the index's entries for the shards on disk, and for the tensors on disk: one the index puts in a shard
    # still missing is refused by the load (stored in one shard, listed in another), and --dry-run passed it
    # while that shard was absent (a checkpoint tour)
    check_index_against_headers(path, {k: path / v for k, v in weight_map.items() if v in on_disk or k in headers},
                                headers)
    expect = _expected(meta)
    elsewhere = {k for k, v in weight_map.items() if v not in on_disk}
    for hf_name in headers:
        _check_tensor(hf_name, headers, meta.args, expect, elsewhere)
        # a weight on disk whose block scale the index puts in a shard still missing must be FP8: a bf16 one
        # (cast from FP8, its scales kept) passed --dry-run and was refused by the load (a checkpoint tour)
        if hf_name + "_scale_inv" in elsewhere:
            _check_scale_has_fp8_weight(hf_name + "_scale_inv", weight_map[hf_name + "_scale_inv"], headers)


def _require_config(path: Path) -> None:
    """`path` is a directory and its config.json is there: not absent, not a symbolic link to nothing
    (`check_links`). A file or a path to nothing was 'no config.json' from `inspect` (--dry-run's
    check), where `load` said what it is (a checkpoint tour)."""
    if why := not_a_directory(path):
        raise CheckpointError(f"{path}: {why}")
    check_links([path / "config.json"])
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json (a Hugging Face checkpoint directory needs one)"
                              f"{unfinished_download_note(path)}{cache_folder_note(path)}")


def _config(path: Path) -> ModelArgs:
    try:
        return ModelArgs.from_hf_config(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _impl(name: str) -> str:
    """A gemm_impl as the loader's messages name it: the argument, and the commands' flag that sets it."""
    return f"gemm_impl={name!r} (--gemm {name})"


def _is_fp8_args(args: ModelArgs) -> bool:
    return args.quant_block is not None


def _fp8_resident_names(plan: list[tuple[str, "Target"]], headers: dict, path: Path,
                        gemm_impl: str = "fp8") -> set[str]:
    """Our parameter names whose checkpoint tensors are all FP8 (stacked experts: every expert)."""
    dtypes: dict[str, set] = defaultdict(set)
    for hf_name, target in plan:
        if target.fp8:
            dtypes[target.name].add(headers[hf_name][2])
    names = set()
    for name, dts in dtypes.items():
        if torch.float8_e4m3fn in dts:
            if len(dts) > 1:
                raise CheckpointError(f"{path}: {_impl(gemm_impl)}: {name} mixes FP8 and "
                                      f"{sorted(str(d) for d in dts - {torch.float8_e4m3fn})} tensors")
            names.add(name)
    if not names:
        raise CheckpointError(f"{path}: {_impl(gemm_impl)} needs an FP8 checkpoint (float8_e4m3fn weights "
                              f"with weight_scale_inv); this one has none: use {_impl('bf16')}")
    return names


def make_fp8_resident(model: Transformer, names=None, *, block: int = 128, scale_fmt: str | None = None) -> Transformer:
    """Keep FP8-capable weights in FP8 (in place): `names` are our parameter names (default: every
    projection an FP8 checkpoint stores as FP8, see BLOCK_TABLE). Materialised weights are quantised
    in `block` x `block` tiles; on the meta device only the storage changes (for load and sizing).
    `model.args` then records the block and `scale_fmt` (what `model.save(fp8=True)` writes into
    config.json); weights already resident in another block size or scale format are refused, since
    one checkpoint describes one of each."""
    # NOTE: checked before any weight changes: block=0 was a ZeroDivisionError, -1 torch's unflatten error,
    # "128" a TypeError, 100 converted every weight and failed at the first forward (the kernels tile by
    # powers of two), and one name as a str was read character by character ('not FP8-capable weights: ['.',
    # '0', '_']') (a bug hunt)
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
        raise ValueError(f"block={block!r}: FP8-resident weights are kept in square blocks of a power of two "
                         ">= 16 (the FP8 kernels tile by them), e.g. 128")
    if isinstance(names, str):
        raise ValueError(f"names={names!r}: expected parameter names (a list of them), not one string")
    capable = {ours for _, ours, _, fp8 in ours_to_hf(model) if fp8}
    names = capable if names is None else set(names)
    unknown = sorted(names - capable)
    if unknown:
        raise ValueError(f"not FP8-capable weights: {unknown[:3]}")
    held = {(m.block, m.scale_fmt) for m in model.modules() if _fp8_resident(m)} - {(block, scale_fmt)}
    if held:
        (b, fmt), = sorted(held, key=str)[:1]
        raise ValueError(f"this model already keeps weights in FP8 in {b}x{b} blocks (scale_fmt={fmt!r}); "
                         f"block={block}, scale_fmt={scale_fmt!r} would mix two formats, which one checkpoint "
                         "cannot describe")
    from .moe import Experts
    experts: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        mod_name, attr = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        if isinstance(mod, Experts):
            experts[mod_name].append(attr)
        else:
            mod.make_fp8_(block, scale_fmt)
    for mod_name, attrs in experts.items():
        model.get_submodule(mod_name).make_fp8_(block, scale_fmt, tuple(attrs))
    if names:  # a copy: the caller's ModelArgs (perhaps shared with other models) stays as it was
        model.args = dataclasses.replace(model.args, quant_block=(block, block), scale_fmt=scale_fmt)
    return model


def _fp8_resident(m: torch.nn.Module) -> bool:
    """A Linear or Experts module holding FP8 weights."""
    from .moe import Experts

    if isinstance(m, Experts):
        return any(getattr(m, f"{n}_scale_inv") is not None for n in m.WEIGHTS)
    return bool(getattr(m, "fp8", False)) and hasattr(m, "block")

