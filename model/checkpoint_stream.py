"""The tensors of a checkpoint copied into a materialised model (`stream_tensors`), one at a time, file
by file, in bounded chunks (model/tensor_reader.py: the load's peak is the weights plus one chunk):
under tensor + expert parallelism only this rank's rows or columns, and only its routed experts. An
FP8 tensor that stays resident goes in as it is with its block scales; one that is dequantised is read
over the whole blocks around the rank's cut, dequantised, then trimmed. Each weight is checked to be
finite as it is loaded, and each block scale finite and not negative."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint_checks import CheckpointError
from .fp8 import dequantize_block
from .names import scale_name
from .tensor_reader import ReadError, TensorReader, copy_range

if TYPE_CHECKING:
    from .transformer import Transformer


def stream_tensors(model: Transformer, plan, headers: dict, files: list[Path], spec: dict, resident: set[str]) -> None:
    """Copy every planned tensor (this rank's cut of it) into the materialised model, one at a time,
    file by file, in bounded chunks whose file pages are released after each copy
    (model/tensor_reader.py: the load's peak is the weights plus one chunk)."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    block = model.args.quant_block or (128, 128)
    order = {f: i for i, f in enumerate(files)}
    plan = sorted(plan, key=lambda item: order[headers[item[0]][0]])  # stable: checkpoint order within a file
    with TensorReader() as reader, torch.no_grad():
        for hf_name, target in plan:
            cut, row = spec.get(target.name), target.expert
            if cut is not None and row is not None:  # expert parallel: whole experts, this rank's only
                if not cut.start <= row < cut.start + cut.size:
                    continue
                cut, row = None, row - cut.start
            dst = params[target.name]
            sdst = params[scale_name(target.name)] if target.name in resident else None
            if row is not None:
                dst, sdst = dst[row], (None if sdst is None else sdst[row])
            try:
                _copy_tensor(reader, headers, hf_name, cut, dst, sdst, block)
            except CheckpointError:  # already names its file and tensor (a bad block scale)
                raise
            except (ReadError, OSError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"{headers[hf_name][0]}: cannot read tensor {hf_name} ({e})") from None
            _check_finite(dst, headers[hf_name][0], hf_name)


def _check_finite(dst: torch.Tensor, f: Path, hf_name: str) -> None:
    """A weight holding NaN or inf (an FP8 code of NaN) loaded without a word, and a record over it wrote a
    complete run of NaN losses and degenerate routing (a bad-input audit). Checked on the tensor as
    loaded, while it is still in cache. NOTE: the bundled model's load from the page cache took 38-43 ms
    without the check and 50 ms with it (medians of 12, alternating, 2-core EPYC shared with other
    jobs, 2026-12-05); isfinite's mask in place of the sum added 25 ms. From disk the read dominates."""
    if dst.dtype == torch.float8_e4m3fn:
        bad = (dst.view(torch.uint8) & 0x7F) == 0x7F  # e4m3fn has no inf; S.1111.111 is NaN
    elif dst.dtype.is_floating_point:
        # one streaming sum, no temporary: NaN and inf carry through it (a finite sum that overflows to inf
        # is told apart below)
        if dst.numel() == 0 or bool(torch.isfinite(dst.sum(dtype=torch.float64 if dst.dtype == torch.float64
                                                           else torch.float32))):
            return
        bad = ~torch.isfinite(dst)
    else:
        return
    if bool(bad.any()):
        n = int(bad.count_nonzero())
        at = [int(i) for i in bad.nonzero()[0]]
        raise CheckpointError(f"{f}: tensor {hf_name} holds {n:,} non-finite value{'s' if n > 1 else ''} (NaN or inf; "
                              f"the first at {at}): a damaged checkpoint")


def _copy_tensor(reader: TensorReader, headers: dict, hf_name: str, cut, dst: torch.Tensor, sdst, block) -> None:
    """Checkpoint tensor `hf_name` (this rank's `cut` of it, all of it when None) into `dst`. An FP8
    tensor goes in as it is, with the matching block scales into `sdst`, when it stays resident (the
    cut's alignment was checked by parallel.shard_spec); else it is dequantised over the whole blocks
    around the cut, a band of block rows at a time, and trimmed."""
    f, shape, dtype = headers[hf_name]
    dim = cut.dim if cut is not None else 0
    full = shape[dim] if len(shape) else 1
    start, end = (cut.start, cut.start + cut.size) if cut is not None else (0, full)
    if dtype != torch.float8_e4m3fn or sdst is not None:
        copy_range(reader, f, hf_name, dst, dim=dim, start=start, end=end)
        if sdst is not None:
            b = block[dim]
            first, last = start // b, (end - 1) // b
            sdst.copy_(_read_scale(reader, headers, hf_name).narrow(dim, first, last - first + 1))
        return
    scale = _read_scale(reader, headers, hf_name)
    b = block[dim]
    lo, hi = start // b * b, min(-(-end // b) * b, full)  # the whole blocks around the cut
    if dim == 1:
        scale = scale[:, lo // b: -(-hi // b)]

    def dequantise(r0: int, chunk: torch.Tensor) -> torch.Tensor:
        first = r0 // block[0]
        return dequantize_block(chunk, scale[first: first + -(-chunk.shape[0] // block[0])], block, dst.dtype)

    copy_range(reader, f, hf_name, dst, dim=dim, start=start, end=end, lo=lo, hi=hi, align=block[0],
               transform=dequantise)


def _read_scale(reader: TensorReader, headers: dict, hf_name: str) -> torch.Tensor:
    """The block scales of FP8 tensor `hf_name`, all finite and none negative (a NaN or inf scale
    would silently poison every weight of its block, a negative one flip their signs; zero is an
    all-zero block)."""
    sname = hf_name + "_scale_inv"
    scale = reader.read(headers[sname][0], sname)
    wrong = ~torch.isfinite(scale) | (scale < 0)
    if wrong.any():
        bad = wrong.nonzero()[0].tolist()
        raise CheckpointError(f"{headers[sname][0]}: tensor {sname} holds {scale[tuple(bad)].item()} at block "
                              f"{bad}; block scales must be finite and not negative")
    return scale
