"""Writing Hugging Face checkpoints: `save` (a model in memory), `write_checkpoint` (tensors from
any iterator, e.g. drawn one at a time for a checkpoint larger than memory) and `fp8_copy` (a
checkpoint directory re-written in FP8, its other files alongside).

    model.save(m, "out/", fp8=True)                 # HF layout (+ MTP layer), readable by transformers
    write_checkpoint("out/", args, tensors(), fp8=True, dtype=torch.bfloat16, max_shard_bytes=2e9)
    fp8_copy("data/model", "ckpt-fp8/")             # then model.load("ckpt-fp8/", gemm_impl="fp8")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .args import ModelArgs, given_path
from .checkpoint import CheckpointError, float_dtype
from .checkpoint_files import read_index
from .fp8 import dequantize_block, quantize_block
from .names import MTP_SHARED, ours_to_hf, scale_name
from .transformer import Transformer

BLOCK = (128, 128)


def save(model: Transformer, path: str | os.PathLike, *, fp8: bool = False,
         max_shard_bytes: int | None = None, dtype: torch.dtype | str | None = None) -> None:
    """Write `model` as a Hugging Face checkpoint directory (config.json, *.safetensors, index).

    fp8: store the FP8-capable projections as float8_e4m3fn + `weight_scale_inv`, in the model's own
        FP8 blocks (`args.quant_block`; 128x128 for a model that had none), with its `scale_fmt`.
    max_shard_bytes: split into several files listed in `model.safetensors.index.json`.
    dtype: the other tensors' dtype, a torch.dtype or its name (default: the embedding's).
    The MTP layer gets copies of the embedding and head, as in the published checkpoints.
    Files are written under temporary names and renamed when complete (removed if the save fails).
    A checkpoint already in `path` is replaced whole, and stays loadable until the new index
    replaces its own (`write_checkpoint`): then its weight files go (other files stay).
    """
    if getattr(model, "shards", None) is not None:
        raise CheckpointError("cannot save a tensor/expert-parallel model: each rank holds only its shard "
                              "(save a model loaded with parallel=False)")
    state = model.state_dict()
    if any(t.is_meta for t in state.values()):
        raise CheckpointError("cannot save a model on the meta device: it has shapes but no weights "
                              "(load it without device='meta')")
    out_dtype = float_dtype(dtype, "dtype") or next(p.dtype for n, p in state.items() if n == "embed.weight")
    block = tuple(model.args.quant_block or BLOCK)

    def tensors():
        for hf, ours, e, is_fp8 in ours_to_hf(model):
            t = state[ours] if e is None else state[ours][e]
            if t.dtype == torch.float8_e4m3fn:  # FP8 resident: written as is, or dequantised
                sc = state[scale_name(ours)] if e is None else state[scale_name(ours)][e]
                yield from [(hf, t), (hf + "_scale_inv", sc)] if fp8 else [(hf, dequantize_block(t, sc, block, out_dtype))]
            elif fp8 and is_fp8:
                q, s = quantize_block(t, block, model.args.scale_fmt)
                yield from [(hf, q), (hf + "_scale_inv", s)]
            elif ours.endswith("gate.weight") or ours.endswith("gate.bias"):
                yield hf, t.float()
            else:
                yield hf, t.to(out_dtype)
        for k in range(len(model.mtp)):
            for hf, ours in MTP_SHARED.items():
                # NOTE: copy=True: safetensors refuses to write two names that share memory
                yield f"model.layers.{model.args.n_layers + k}.{hf}", state[ours].to(out_dtype, copy=True)

    write_checkpoint(path, model.args, tensors(), fp8=fp8, dtype=out_dtype, max_shard_bytes=max_shard_bytes,
                     block=block)


def write_checkpoint(path: str | os.PathLike, args: ModelArgs, tensors: Iterable[tuple[str, torch.Tensor]], *,
                     fp8: bool, dtype: torch.dtype, max_shard_bytes: float | None = None,
                     block: tuple[int, int] = BLOCK) -> None:
    """Write (name, tensor) pairs in order into safetensors files of at most `max_shard_bytes` (a
    tensor larger than that gets a file of its own; None: one file), holding one file's tensors in
    memory at a time, then the index and config.json (`args`, torch_dtype `dtype`, and the FP8
    quantization_config when `fp8`: `block`, and `args.scale_fmt`).

    Replacing a checkpoint already in `path` never mixes the two: every file is written under a
    temporary name; the new weight files get names no file there has (`model.safetensors` or
    `model-N-of-M.safetensors`, else the same with a suffix of this save's own), so the old
    checkpoint stays whole and loadable until the new index replaces the old one (the commit; an
    index is written for one file too). config.json follows it at once, then the old weight files
    go. A failure before the commit leaves the directory as it was (and the folders this save made
    are removed). A folder that cannot be written (read-only, a full disk) is one CheckpointError naming
    it, the OSError or safetensors' error its cause."""
    path = given_path(path, "path", CheckpointError)  # "" wrote into the current folder, which load("") refuses
    if max_shard_bytes is not None and (isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, (int, float))
                                        or not max_shard_bytes > 0):
        raise CheckpointError(f"max_shard_bytes={max_shard_bytes!r}: expected a positive number of bytes (or None)")
    with _write_errors(path):  # the first folder this save makes, if any (exists() raises where one may not enter)
        made = next((p for p in [*reversed(path.parents), path] if not p.exists()), None)
    if made is None and not path.is_dir():
        raise CheckpointError(f"{path}: a file, not a checkpoint directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a parent folder belongs, a read-only place: mkdir's own error
        raise CheckpointError(f"{path}: cannot make the checkpoint directory ({e.strerror or e})") from None
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # this save's temporary and (if needed) final names
    placed: list[Path] = []  # new weight files renamed into place, not yet committed by the index
    committed = False
    try:
        parts, total = _write_parts(path, tensors, max_shard_bytes, tag)
        with _write_errors(path):
            names = _free_names(path, len(parts), tag[-8:])
            stale = [f for f in _weight_files(path) if f.name not in names]
            for i, fname in enumerate(names):
                os.replace(path / f".part-{i:05d}-{tag}.safetensors.tmp", path / fname)
                placed.append(path / fname)
            config_tmp = _write_json_tmp(path / "config.json", _hf_config(args, fp8, dtype, block), tag)
            index_tmp = _write_json_tmp(path / INDEX, {"metadata": {"total_size": total},
                                                       "weight_map": {n: fname for fname, part in zip(names, parts)
                                                                      for n in part}}, tag)
            os.replace(index_tmp, path / INDEX)  # the commit: a load now reads the new weight files only
            committed = True
            os.replace(config_tmp, path / "config.json")
    finally:
        for tmp in path.glob(f".*-{tag}*.tmp"):
            tmp.unlink(missing_ok=True)
        if not committed:
            for f in placed:
                f.unlink(missing_ok=True)
            for p in [path, *path.parents] if made else []:  # no empty folders left where there were none
                with contextlib.suppress(OSError):
                    p.rmdir()
                if p == made:
                    break
    for f in stale:
        f.unlink(missing_ok=True)


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An OSError or safetensors' error while writing into `path` as one CheckpointError naming the
    folder: a read-only folder was safetensors' "I/O error: Permission denied ... at path
    .tmpXXXX" from inside `save_file`, a full disk os.replace's OSError (a review)."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        why = re.search(r"I/O error: (.+?) \(os error \d+\)", str(e))
        why = why[1] if why else (e.strerror if isinstance(e, OSError) and e.strerror else None)
        raise CheckpointError(f"{path}: cannot write the checkpoint into this folder "
                              f"({why or (str(e).splitlines() or [type(e).__name__])[0]})") from e


def _free_names(path: Path, n: int, suffix: str) -> list[str]:
    """The new weight files' names: the conventional ones where no file in `path` has them, else
    the same with `suffix` (an old checkpoint's files keep their names until the commit)."""
    plain = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    if not any((path / f).exists() for f in plain):
        return plain
    return [f.removesuffix(".safetensors") + f"-{suffix}.safetensors" for f in plain]


def _hf_config(args: ModelArgs, fp8: bool, dtype: torch.dtype, block: tuple[int, int]) -> dict:
    cfg = args.to_hf_config()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    if fp8:
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": list(block)}
        if args.scale_fmt:
            cfg["quantization_config"]["scale_fmt"] = args.scale_fmt
    else:
        cfg.pop("quantization_config", None)
    return cfg


def _write_parts(path: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                 max_shard_bytes: float | None, tag: str) -> tuple[list[list[str]], int]:
    """The tensors into `.part-NNNNN-TAG.safetensors.tmp` files under `path`: each part's names, and
    the bytes in all."""
    parts: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    size, total = 0, 0

    def flush() -> None:
        tmp = path / f".part-{len(parts):05d}-{tag}.safetensors.tmp"
        with _write_errors(path):
            save_file({n: t.contiguous() for n, t in shard.items()}, str(tmp), metadata={"format": "pt"})
            os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files; a checkpoint is shared
        parts.append(list(shard))

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shard and size + nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = t
        size, total = size + nbytes, total + nbytes
    if shard or not parts:
        flush()
    return parts, total


INDEX = "model.safetensors.index.json"


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint in `path`, which a new save into it replaces: model.safetensors,
    model-N-of-M.safetensors with any number of digits (DeepSeek-V3's release numbers them
    00001-of-000163), and every .safetensors file the old index names. Other files are left alone."""
    files = {f for f in path.glob("model*.safetensors")
             if f.name == "model.safetensors" or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f.name)}
    try:
        named = set(read_index(path / INDEX).values())  # plain file names in this directory
    except (OSError, CheckpointError):  # no index, or not a valid one: it names nothing
        named = set()
    files |= {path / n for n in named if n.endswith(".safetensors") and (path / n).is_file()}
    return sorted(files)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json_tmp(p: Path, obj, tag: str) -> Path:
    """`obj` as JSON in a temporary file beside `p`, for the caller to rename onto `p`."""
    tmp = p.with_name(f".{p.name}-{tag}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return tmp


def fp8_copy(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Checkpoint directory `src` re-written into `out` with its projections in FP8 (`save(fp8=True)`:
    float8_e4m3fn and 128 x 128 block scales, as DeepSeek-V3 is published) and its other files
    (tokenizer, generation config, ...) copied, as `analyses.variants` copies them: a
    higher-precision checkpoint in DeepSeek-V3's inference format. Loads `src` whole in float32, so
    it is for checkpoints that fit in memory. The tensors left unquantised (embedding, head, norms,
    router) keep the dtype the source declares (`torch_dtype`; bfloat16 for an FP8 source, as
    DeepSeek publishes), not float32: serving engines read `torch_dtype` (SGLang serves a float32
    model in float16) and the copy would double those tensors (a review)."""
    from .checkpoint import _config, load

    src, out = Path(src), Path(out)
    if out.exists() and out.resolve() == src.resolve():  # it replaced the source's weights, lossily, without a word
        raise CheckpointError(f"out {out}: is the source checkpoint {src}; write the FP8 copy elsewhere (there it "
                              "would replace the weights it is made from by their FP8 rounding)")
    save(load(src, dtype=torch.float32, parallel=False), out, fp8=True, dtype=_config(src).dtype)
    for f in src.iterdir():  # everything but the weights and what `save` wrote
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", INDEX):
            tmp = out / (f.name + ".tmp")  # copied under a temporary name, renamed when complete
            shutil.copy(f, tmp)
            os.replace(tmp, out / f.name)
    return out
