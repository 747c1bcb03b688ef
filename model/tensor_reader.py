"""Copy safetensors tensors, or a row or column range of one, into tensors already allocated, in
bounded chunks (what `model.load` streams a checkpoint through).

Why not safetensors' own reader: it memory-maps the file, and every page a read touches stays in the
process's resident memory until the file is closed, so a load's peak was the weights plus the mapped
shard files (measured on the 671B two-layer slice: 3 GB over the plan in one process). Here the file
is mapped read-only too (a copy from the page cache is the fastest way in: 2.5 GB/s here, against
1.4-1.9 GB/s for read() into fresh or reused memory), but a tensor is taken CHUNK bytes of rows at a
time and, once the chunk is copied (converted, sliced, dequantised) into its destination, its pages
are released (madvise DONTNEED): the peak is the weights plus one chunk. The file format: an 8-byte
little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}} and the
data, row-major.
"""

from __future__ import annotations

import math
import mmap
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch

from .safetensors_header import HeaderError, read_header

CHUNK = 64 << 20  # bytes of rows taken at once
PAGE = mmap.PAGESIZE
DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "F8_E4M3": torch.float8_e4m3fn, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class ReadError(OSError):
    """A tensor that cannot be read (short file, bad offsets); the message names file and tensor."""


class TensorReader:
    """Open files, their headers and maps, read on demand; `close()` (or `with`) closes them."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple] = {}  # path -> (map, data start, header)

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for mm, _, _ in self._files.values():
            try:
                mm.close()
            except BufferError:  # a chunk someone still holds: the map goes with it
                pass
        self._files.clear()

    def _open(self, path: Path) -> tuple:
        if path not in self._files:
            with open(path, "rb") as fh:
                try:
                    header, data = read_header(fh)
                except HeaderError as e:
                    raise ReadError(f"{path}: not a safetensors file: {e}") from None
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._files[path] = (mm, data, header)
        return self._files[path]

    def _meta(self, path: Path, name: str) -> tuple:
        """(map, byte offset of the tensor's data, dtype, shape, bytes per row)."""
        mm, data, header = self._open(path)
        try:
            meta = header[name]
            dtype, shape = DTYPES[meta["dtype"]], list(meta["shape"])
            begin, stop = meta["data_offsets"]
        except KeyError as e:
            raise ReadError(f"{path}: tensor {name}: no {e} in the header") from None
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        if stop - begin != (shape[0] if shape else 1) * row_bytes:
            raise ReadError(f"{path}: tensor {name}: data_offsets {begin}..{stop} do not hold shape {shape}")
        if data + stop > len(mm):
            raise ReadError(f"{path}: tensor {name}: the file ends inside its data ({len(mm):,} bytes, the "
                            f"tensor ends at {data + stop:,})")
        return mm, data + begin, dtype, shape, row_bytes

    def rows(self, path: Path, name: str, start: int, end: int, align: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """Rows [start, end) of tensor `name` (dim 0; a 1-D tensor's elements) as (first row, chunk)
        pairs, each chunk at most CHUNK bytes (at least `align` rows; chunk boundaries fall on
        multiples of `align` from `start`). A chunk is a read-only view of the file whose pages are
        released when the next one is taken: copy what you keep."""
        mm, offset, dtype, shape, row_bytes = self._meta(path, name)
        step = max(align, (CHUNK // max(row_bytes, 1)) // align * align)
        for r0 in range(start, end, step):
            r1 = min(end, r0 + step)
            a, n = offset + r0 * row_bytes, (r1 - r0) * row_bytes
            with warnings.catch_warnings():  # "not writable": nothing writes to it
                warnings.simplefilter("ignore", UserWarning)
                raw = torch.frombuffer(mm, dtype=torch.uint8, count=n, offset=a) if n else torch.empty(0, dtype=torch.uint8)
            yield r0, raw.view(dtype).view(r1 - r0, *shape[1:])
            del raw
            page = a // PAGE * PAGE
            mm.madvise(mmap.MADV_DONTNEED, page, a + n - page)  # the copied pages leave this process

    def read(self, path: Path, name: str) -> torch.Tensor:
        """A whole small tensor (the FP8 scales) as a tensor of its own."""
        shape = self._meta(path, name)[3]
        return torch.cat([t.clone() for _, t in self.rows(path, name, 0, shape[0] if shape else 1)])


def copy_range(reader: TensorReader, path: Path, name: str, dst: torch.Tensor, *, dim: int, start: int,
               end: int, lo: int | None = None, hi: int | None = None, align: int = 1,
               transform: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Copy the range [start, end) of tensor `name` along `dim` (0: rows, 1: columns of every row) into
    `dst`, a chunk of rows at a time (dtype converted by the copy).

    [lo, hi) widens what is read along `dim` around the range (default: the range itself), e.g. to
    whole FP8 blocks; `transform(first_row, piece)` then maps each piece read (rows lo..hi, or every
    row's columns lo..hi) to the values to keep, e.g. dequantises it, before the range is cut out.
    `align`: chunks hold a multiple of this many rows (the block height for a dequantising transform)."""
    lo, hi = (start if lo is None else lo), (end if hi is None else hi)
    if dim == 0:
        for r0, chunk in reader.rows(path, name, lo, hi, align):
            piece = transform(r0, chunk) if transform else chunk
            a, b = max(r0, start), min(r0 + piece.shape[0], end)  # the part of this chunk inside the range
            if a < b:
                dst[a - start:b - start].copy_(piece[a - r0:b - r0])
        return
    for r0, chunk in reader.rows(path, name, 0, dst.shape[0], align):
        piece = chunk[:, lo:hi]
        piece = transform(r0, piece) if transform else piece
        dst[r0:r0 + piece.shape[0]].copy_(piece[:, start - lo:end - lo])
