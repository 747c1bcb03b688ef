"""Corpus input: documents from text files, JSONL or Parquet, cut into token windows.

Accepted `--corpus` forms:
- a directory: every file below it is read in sorted path order; `*.jsonl` and `*.parquet` files as
  records (below), any other file as one plain-text document. The domain is the first sub-folder
  under the corpus directory (files at its top level get the domain "default");
- a `.txt` (or any text) file: one document;
- a `.jsonl` file: one JSON object per line with `text`, optional `domain` and `id`;
- a `.parquet` file: columns `text`, optional `domain` and `id`.
Bytes that are not UTF-8 are replaced by U+FFFD and counted (`CorpusStats.replaced_bytes`).

Windows: each document is tokenised (with BOS prepended when the model has one) and cut into
consecutive, non-overlapping windows of `seq_len` tokens; the last window of a document is
shorter. Windows are never packed together: a batch is right-padded and the model is told each
row's length, so every window is seen exactly as if it were alone.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RECORD_SUFFIXES = (".jsonl", ".parquet")


class CorpusError(ValueError):
    """A corpus we cannot read (message names the file)."""


@dataclass
class Document:
    doc_id: str
    domain: str
    text: str


@dataclass
class Window:
    seq_id: int
    doc_id: str
    domain: str
    doc_start: int  # position of the window's first token in its document
    ids: np.ndarray  # int32 [n], n <= seq_len


@dataclass
class CorpusStats:
    documents: int = 0
    replaced_bytes: int = 0
    files_with_replacements: list[str] = field(default_factory=list)


class _Counter:
    """A codecs error handler that replaces undecodable bytes and counts them."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, err: UnicodeDecodeError):
        self.n += err.end - err.start
        return "\ufffd", err.end


def _decode(data: bytes, where: str, stats: CorpusStats) -> str:
    counter = _Counter()
    name = f"probe-count-{id(counter)}"
    codecs.register_error(name, counter)
    text = data.decode("utf-8", errors=name)
    if counter.n:
        stats.replaced_bytes += counter.n
        stats.files_with_replacements.append(where)
    return text


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _jsonl(path: Path, rel: str, default_domain: str, stats: CorpusStats) -> Iterator[Document]:
    text = _decode(path.read_bytes(), rel, stats)
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise CorpusError(f"{path}:{i + 1}: a JSONL record needs a string field 'text'")
        yield Document(str(rec.get("id", f"{rel}:{i + 1}")), str(rec.get("domain") or default_domain),
                       rec["text"])


def _parquet(path: Path, rel: str, default_domain: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    cols = set(pf.schema_arrow.names)
    if "text" not in cols:
        raise CorpusError(f"{path}: a Parquet corpus needs a 'text' column (has {sorted(cols)})")
    want = [c for c in ("text", "domain", "id") if c in cols]
    row = 0
    for batch in pf.iter_batches(columns=want, batch_size=1024):
        d = batch.to_pydict()
        for j, text in enumerate(d["text"]):
            row += 1
            if text is None:
                continue
            dom = d.get("domain", [None] * len(d["text"]))[j] or default_domain
            did = d.get("id", [None] * len(d["text"]))[j]
            yield Document(str(did) if did is not None else f"{rel}:{row}", str(dom), text)


def iter_documents(path: str | Path, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Every document of the corpus, in a deterministic order."""
    stats = stats if stats is not None else CorpusStats()
    root = Path(path)
    if not root.exists():
        raise CorpusError(f"{root}: corpus not found")
    if root.is_dir():
        files = _files(root)
        if not files:
            raise CorpusError(f"{root}: corpus directory has no files")
        entries = [(f, f.relative_to(root).as_posix()) for f in files]
    else:
        entries = [(root, root.name)]
    for f, rel in entries:
        parts = Path(rel).parts
        domain = parts[0] if root.is_dir() and len(parts) > 1 else "default"
        if f.suffix == ".jsonl":
            docs = _jsonl(f, rel, domain, stats)
        elif f.suffix == ".parquet":
            docs = _parquet(f, rel, domain)
        else:
            docs = iter([Document(rel, domain, _decode(f.read_bytes(), rel, stats))])
        for d in docs:
            stats.documents += 1
            yield d


def fingerprint(path: str | Path) -> str:
    """sha256 over every corpus file's relative path and bytes."""
    root = Path(path)
    h = hashlib.sha256()
    files = _files(root) if root.is_dir() else [root]
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() if root.is_dir() else f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def iter_windows(docs: Iterator[Document], encode, seq_len: int, bos_id: int | None,
                 max_tokens: int | None = None) -> Iterator[Window]:
    """Token windows in corpus order. `encode(text) -> list[int]`. Stops after `max_tokens` tokens
    (the last window is cut so the total is exact)."""
    seq_id, total = 0, 0
    for d in docs:
        ids = encode(d.text)
        if bos_id is not None:
            ids = [bos_id, *ids]
        if not ids:
            continue
        arr = np.asarray(ids, dtype=np.int32)
        for start in range(0, len(arr), seq_len):
            w = arr[start : start + seq_len]
            if max_tokens is not None:
                w = w[: max_tokens - total]
                if not len(w):
                    return
            yield Window(seq_id, d.doc_id, d.domain, start, w)
            seq_id += 1
            total += len(w)
            if max_tokens is not None and total >= max_tokens:
                return
