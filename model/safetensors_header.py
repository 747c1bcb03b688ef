"""The header of a safetensors file, read by hand and checked (`read_header`): torch-free, so that what
lists or fingerprints a checkpoint's files (model/checkpoint_files.py) imports no torch. The format: an
8-byte little-endian header length, then that many bytes of JSON, an object {name: {dtype, shape,
data_offsets: [begin, end]}}, then the data."""

from __future__ import annotations

import json
import os
import struct

# safetensors refuses a longer header ('header too large'): a length past it is not a header's. Its
# MAX_HEADER_SIZE, 100,000,000 bytes (100 << 20 here before: a length between was said to be a header cut
# short by the file's end, an interrupted download, where safetensors called it too large; a review)
MAX_HEADER = 100_000_000


class HeaderError(ValueError):
    """A safetensors header that cannot be read; the message says why, naming no file (the caller
    does). `cut_short`: the file ends before its header does (an interrupted download or copy)."""

    def __init__(self, message: str, cut_short: bool = False) -> None:
        super().__init__(message)
        self.cut_short = cut_short


def read_header(fh) -> tuple[dict, int]:
    """The header of the safetensors file open in `fh` (binary, at its start) and the byte offset where
    its data begins: an 8-byte little-endian length, then that many bytes of JSON holding an object.
    Anything else is a `HeaderError`: a file too short for the length, a length past safetensors' own
    limit or past the file's end, a header that is not JSON or not an object (read by hand in two
    places before, one of them taking a header cut short by the file's end, a list, or a length of
    2**63, an OverflowError, without a word: a review)."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    if len(head) < 8:
        raise HeaderError(f"it is {size} bytes, too short for a safetensors header (an interrupted download?)",
                          cut_short=True)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise HeaderError(f"its header length {n:,} is past safetensors' limit of {MAX_HEADER:,} bytes")
    if 8 + n > size:
        raise HeaderError(f"it is truncated inside its header: {size:,} bytes, the header alone {8 + n:,} "
                          "(an interrupted download? fetch the file again)", cut_short=True)
    try:
        header = json.loads(fh.read(n))
    except (ValueError, RecursionError) as e:  # a deep nesting is json's RecursionError; bad UTF-8 a ValueError
        raise HeaderError(f"its header is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"its header is a JSON {type(header).__name__}, not an object of tensors")
    return header, 8 + n
