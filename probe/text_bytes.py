"""Bytes to text for the corpus reader (probe/corpus.py): the encoding a byte-order mark names
(UTF-8 without one), bytes that do not decode replaced by U+FFFD and counted, lone surrogates mended,
JSONL lines found in any of those encodings, Parquet strings read from their bytes, and the test that
tells a binary file from text. What was replaced is counted in a `CorpusStats` (its `replaced`)."""

from __future__ import annotations

import codecs
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .corpus import CorpusStats


_counted = threading.local()  # bytes the handler below replaced, in this thread


def _count_and_replace(err: UnicodeDecodeError):
    """The codecs error handler "probe-count": undecodable bytes become U+FFFD, and are counted."""
    _counted.n = getattr(_counted, "n", 0) + err.end - err.start
    return "\ufffd", err.end


codecs.register_error("probe-count", _count_and_replace)  # once: a handler registered per call stayed


# byte-order marks and the encoding each names (UTF-32's little-endian mark begins with UTF-16's:
# looked for first)
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF8, "utf-8"))
UNIT_BYTES = {"utf-8": 1, "utf-16-le": 2, "utf-16-be": 2, "utf-32-le": 4, "utf-32-be": 4}


def encoding_of(head: bytes) -> tuple[str, int]:
    """The encoding of a file that starts with `head`, and the length of its byte-order mark: UTF-16 /
    UTF-32 after theirs (read as UTF-8 it was mojibake, a review), else UTF-8 (after its optional mark,
    which some Windows editors write)."""
    return next(((enc, len(bom)) for bom, enc in BOMS if head.startswith(bom)), ("utf-8", 0))


def decode(data: bytes, where: str, stats: CorpusStats) -> str:
    """The text of a file, in the encoding its byte-order mark names (`encoding_of`), without the mark;
    undecodable bytes are replaced by U+FFFD and counted in `stats`."""
    encoding, skip = encoding_of(data[:4])
    return decode_as(data[skip:], encoding, where, stats)


def decode_as(data: bytes, encoding: str, where: str, stats: CorpusStats) -> str:
    """`data` in `encoding`; undecodable bytes are replaced by U+FFFD and counted in `stats` as `where`'s."""
    text, n = decoded(data, encoding)
    stats.replaced(n, where)
    return text


def decoded(data: bytes, encoding: str) -> tuple[str, int]:
    """`data` in `encoding`, and how many of its bytes did not decode (replaced by U+FFFD)."""
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError:
        pass
    before = getattr(_counted, "n", 0)
    text = data.decode(encoding, errors="probe-count")
    return text, _counted.n - before


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, a surrogate not in a pair (a pair is one character)


def mend(s: str, where: str, stats: CorpusStats | None) -> str:
    """`s` with each lone surrogate replaced by U+FFFD, counted in `stats` (when given) as one replaced
    byte of file `where`. json.loads takes an escape such as "\\ud83d" without its pair, and no
    tokenizer or Parquet file takes the string it makes ("TextInputSequence must be str", a review)."""
    s, n = _SURROGATE.subn("\ufffd", s)
    if stats is not None:
        stats.replaced(n, where)
    return s


def shown(name: str) -> str:
    """A path as text: a file name that is not UTF-8 (Python holds its bytes as lone surrogates, which
    no encoder takes: every job stopped on 'surrogates not allowed', naming nothing; a review) with
    U+FFFD for those bytes."""
    return os.fsencode(name).decode("utf-8", errors="replace")


def jsonl_lines(data: bytes) -> tuple[str, list[tuple[int, int]]]:
    """The encoding of a JSONL file's bytes (`encoding_of`: UTF-8, or UTF-16 / UTF-32 after their
    byte-order mark, which Windows PowerShell writes; refused as binary before, a review), and the
    (byte offset, byte size) of each of its lines, for both readers (the lazy one reads a record by
    its offset). Lines end at a "\n" code unit only: str.splitlines() also splits on U+2028, U+0085
    and form feeds, which JSON strings may hold, and numbered the lines differently."""
    encoding, start = encoding_of(data[:4])
    width = UNIT_BYTES[encoding]
    kind = np.dtype(f"{'>' if encoding.endswith('-be') else '<'}u{width}")
    units = np.frombuffer(data, kind, count=(len(data) - start) // width, offset=start)
    spans = []
    for end in (np.flatnonzero(units == ord("\n")) * width + start).tolist():
        spans.append((start, end - start))
        start = end + width
    spans.append((start, len(data) - start))  # after the last "\n" (odd bytes of a cut file too)
    return encoding, spans


def parquet_strings(column, where: str, stats: CorpusStats) -> list:
    """A Parquet column's values; strings read from their bytes, those that are not UTF-8 replaced by
    U+FFFD and counted as `where`'s (pyarrow raised "'utf-8' codec can't decode", naming no file; a
    review)."""
    values, replaced = parquet_strings_counted(column)
    stats.replaced(sum(replaced), where)
    return values


def parquet_strings_counted(column) -> tuple[list, list[int]]:
    """A Parquet column's values (strings decoded from their bytes, as `parquet_strings`) and, for
    each, how many of its bytes were replaced: for a reader that counts only the values it uses."""
    import pyarrow as pa

    if not is_string(column.type):
        return column.to_pylist(), [0] * len(column)
    try:  # the usual case, every value UTF-8: checked by Arrow, read as it is
        column.validate(full=True)
        return column.to_pylist(), [0] * len(column)
    except pa.ArrowInvalid:
        pass
    raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    pairs = [(None, 0) if b is None else decoded(b, "utf-8") for b in raw.to_pylist()]
    return [v for v, _ in pairs], [n for _, n in pairs]


def is_string(kind) -> bool:
    """Whether an Arrow column of type `kind` holds strings: string, large_string, string_view, or a
    dictionary of them (pandas writes a category column so; a text column of one was refused)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda t: False)(kind))  # pyarrow 16+


BINARY_PROBE = 8192  # bytes read from the head of a file to tell text from binary


def is_binary(f: Path) -> bool:
    """A NUL byte in the file's head: weights, archives, images (UTF-8 text has none). UTF-16 and
    UTF-32 text has them too: a file that starts with their byte-order mark is text (JSONL too)."""
    with open(f, "rb") as fh:
        head = fh.read(BINARY_PROBE)
    return b"\0" in head and encoding_of(head[:4])[0] == "utf-8"
