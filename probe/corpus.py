"""Corpus input: documents from text files, JSONL or Parquet, cut into token windows.

Accepted `--corpus` forms:
- a directory: every file below it is read in sorted path order (symbolic links to folders followed,
  each real folder once, under its own path where the corpus holds it, not through a link, and each
  linked file likewise once, the links left named in `CorpusStats.linked_files`; hidden
  files and folders, whose names start with ".", such as .git, are not read; an unreadable folder or
  a broken link is an error); `*.jsonl` and `*.parquet` files as
  records (below), any other file as one plain-text document, except binary files (a NUL byte in
  the first 8 KiB: weights, archives, images), which are skipped and listed in
  `CorpusStats.skipped_binary`. The domain is the first sub-folder under the corpus directory
  (files at its top level get the domain "default"; a file name that is not UTF-8 is read, named
  with U+FFFD in its document id and domain);
- a `.txt` (or any text) file: one document (a binary file is refused);
- a `.jsonl` file: one JSON object per line with `text`, optional `domain` and `id`;
- a `.parquet` file: columns `text` (strings, or a dictionary of strings as pandas writes a category column),
  optional `domain` and `id` (either suffix in any case).
A record's domain is its folder's when it has none (null or ""), else its value as a string (0 is "0");
a domain or id that is an object, an array or bytes (a Parquet column of structs, lists or binary) is refused.
Text is UTF-8, or UTF-16 / UTF-32 when the file starts with their byte-order mark (JSONL too).
Bytes that are not UTF-8, and lone surrogate escapes in JSON strings (`"\ud83d"` without its pair),
are replaced by U+FFFD and counted (`CorpusStats.replaced_bytes`; the jobs print a note naming the
files); the decoding is probe/text_bytes.py's.

Windows: each document is tokenised and cut into windows of `seq_len` tokens (probe/windows.py);
`corpus_windows` gives them in corpus order, or (the default) with the domains interleaved, so that a
--max-tokens cap covers every domain. The bundled corpus's JSON-lines files, read whole for the
corpus recipe and training: probe/bundled_corpus.py.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import first_line
from .file_memo import FileMemo
from .text_bytes import (BINARY_PROBE, decode, decode_as, is_binary, is_string, jsonl_lines, mend, parquet_strings,
                         parquet_strings_counted, shown)
from .windows import Window, balanced_windows, iter_windows

# moved to their own modules; imported from here by users, e.g. `from probe.corpus import Window`
from .bundled_corpus import read_documents  # noqa: F401
from .windows import text_pieces  # noqa: F401

RECORD_SUFFIXES = (".jsonl", ".parquet")


class CorpusError(ValueError):
    """A corpus we cannot read (message names the file)."""


@dataclass
class Document:
    doc_id: str
    domain: str
    text: str


@dataclass
class CorpusStats:
    documents: int = 0
    replaced_bytes: int = 0
    files_with_replacements: list[str] = field(default_factory=list)
    skipped_binary: list[str] = field(default_factory=list)  # files of a corpus directory that are not text
    starved_domains: list[str] = field(default_factory=list)  # domains with text a --max-tokens cap left empty
    empty_domains: list[str] = field(default_factory=list)  # sub-folders of a corpus directory without a text file
    linked_domains: list[str] = field(default_factory=list)  # "link -> folder": sub-folder links read under the folder
    linked_files: list[str] = field(default_factory=list)  # "link -> file": file links whose file is read elsewhere
    empty_documents: list[str] = field(default_factory=list)  # ids of the documents read that had no token
    special_files: list[str] = field(default_factory=list)  # pipes, sockets, devices below a corpus directory
    renamed_ids: list[str] = field(default_factory=list)  # "id -> id#2": documents whose id an earlier one holds
    _ids: dict[str, int] = field(default_factory=dict, repr=False)  # each id given -> its next repeat's number
    cap: tuple[int, int, int] = (0, 0, 0)  # (--max-tokens, --seq-len, domains with text) when it did
    # domains with tokens taken and text left when a --max-tokens cap ended the windows (None: not known,
    # --order corpus under a cap: telling would read the rest of the corpus)
    capped_domains: list[str] | None = None

    def replaced(self, n: int, where: str) -> None:
        """Count `n` characters replaced by U+FFFD in file `where` (its path in the corpus)."""
        if n:
            self.replaced_bytes += n
            if where not in self.files_with_replacements:
                self.files_with_replacements.append(where)

    def binary_note(self) -> str | None:
        """The jobs' note on the binary files the reader skipped (None when there were none)."""
        return _listed(self.skipped_binary, "binary file(s) in the corpus skipped", "; run.json lists them")

    def notes(self) -> list[str]:
        """The jobs' notes on what the reader skipped or replaced (record and spec print them)."""
        return [n for n in (self.binary_note(), self.replaced_note(), self.empty_note(), self.linked_note(),
                            self.linked_files_note(), self.special_note(), self.renamed_note(), self.tokenless_note(),
                            self.cap_note()) if n]

    def linked_files_note(self) -> str | None:
        """The jobs' note on the links to a file the corpus reads under another path (None when none):
        each was read as a document of its own, the file's text counted twice (a review)."""
        return _listed(self.linked_files, "linked file(s) of the corpus left, their files read under another path",
                       ": each file is read once")

    def special_note(self) -> str | None:
        """The jobs' note on the files below a corpus directory that are not regular files (None when none):
        a pipe was left out without a word (a review)."""
        return _listed(self.special_files, "file(s) of the corpus that are not regular files skipped",
                       ": pipes, sockets and devices are not read")

    def unique_id(self, doc_id: str) -> str:
        """`doc_id`, or where an earlier document of this read holds it, `doc_id#2` (#3, ...: the first
        number no id holds), noted in `renamed_ids`: JSONL shards numbered from 1 each made documents of
        one doc_id, which the tables and the dashboard's document list took for one (a review)."""
        if doc_id not in self._ids:
            self._ids[doc_id] = 2
            return doc_id
        k = self._ids[doc_id]
        while f"{doc_id}#{k}" in self._ids:
            k += 1
        self._ids[doc_id], new = k + 1, f"{doc_id}#{k}"
        self._ids[new] = 2
        self.renamed_ids.append(f"{doc_id} -> {new}")
        return new

    def renamed_note(self) -> str | None:
        """The jobs' note on the documents `unique_id` renamed (None when none)."""
        return _listed(self.renamed_ids, "document(s) renamed, their id an earlier document's",
                       ": each document's rows are its own")

    def tokenless_note(self) -> str | None:
        """The jobs' note on the documents read that had no token (None when none): an empty text makes no
        window, so run.json's corpus.documents counted a document the tokens table had no row of, and a
        domain folder of empty files left the run's domains, without a word (a review)."""
        return _listed(self.empty_documents, "document(s) without a token left out",
                       ": an empty or null text makes no window; run.json lists them")

    def empty_note(self) -> str | None:
        """The jobs' note on the sub-folders of a corpus directory that hold no text file (None when none):
        an empty domain folder was left out of the run without a word, the run's domains one fewer."""
        return _listed(self.empty_domains, "sub-folder(s) of the corpus without a text file left out",
                       ": each sub-folder is a domain only where it holds text")

    def linked_note(self) -> str | None:
        """The jobs' note on the sub-folders that link to a folder the corpus holds under its own path
        (None when none): read there only, they were named in the empty note as folders without a text file."""
        return _listed(self.linked_domains, "sub-folder(s) of the corpus link to a folder it holds under its own "
                       "path, whose domain reads it", ": each folder is read once")

    def cap_note(self) -> str | None:
        """The jobs' note on the domains a --max-tokens cap left without a token (None when none): each
        domain takes a window in turn, so a cap below one window per domain filled the first ones and
        the rest were missing from the run without a word (a review)."""
        s = self.starved_domains
        if not s:
            return None
        cap, seq_len, n = self.cap
        fit = f"a --seq-len of at most {cap // n:,} or " if cap // n >= 2 else ""
        return (f"note: --max-tokens {cap:,} left {len(s)} of {n} domains without a token ({_some(s)}): "
                f"each domain takes a window of up to --seq-len {seq_len:,} tokens in turn; pass {fit}"
                f"a --max-tokens of at least {n * seq_len:,} to cover every domain")

    def replaced_note(self) -> str | None:
        """The jobs' note on bytes that were not UTF-8 (None when there were none): a file in another
        encoding is read as mojibake, and the count in run.json alone went unnoticed (a review)."""
        f = self.files_with_replacements
        if not self.replaced_bytes:
            return None
        return (f"note: {self.replaced_bytes:,} byte(s) that are not UTF-8 replaced by U+FFFD in {len(f)} file(s) "
                f"({_some(f)}): convert them to UTF-8 if they are text in another encoding")


def _listed(items: list[str], what: str, tail: str) -> str | None:
    """A note on `items`, "note: N WHAT (the first three)TAIL"; None when there are none."""
    return f"note: {len(items)} {what} ({_some(items)}){tail}" if items else None


def _some(names: list[str]) -> str:
    """The first three of `names` for a note, control characters escaped ("\\n", "\\x1b"): a file name
    with a newline ran a note over several lines (a review)."""
    listed = ", ".join(_CONTROL.sub(lambda m: repr(m.group())[1:-1], x) for x in names[:3])
    return listed + (", ..." if len(names) > 3 else "")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _files(root: Path, stats: CorpusStats | None = None) -> list[Path]:
    """Every file below `root` in sorted path order: symbolic links to folders followed (each real
    folder once, so a link to an ancestor ends), hidden files and folders left out. A linked folder
    that the corpus also holds as a real folder (not through a link) is read there only: the first
    path reached in the file system's listing order won, so `code/examples -> ../prose` could make
    prose's files the domain code, and prose vanish (a review). An unreadable folder or a broken link
    is a CorpusError: they vanished silently, and `rglob` did not follow linked folders either, while
    '.git' became a domain (a review). Each file is read once too (`_once`; the links left named in
    `stats.linked_files`). Pipes, sockets and devices are not read, named in `stats.special_files`."""
    walked = list(_walk(root, followlinks=False))
    held = {os.path.realpath(d) for d, _, _ in walked}
    out, seen, special = [], set(), []
    for d, dirs, names in _walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [x for x in dirs if not (os.path.islink(os.path.join(d, x))
                                           and os.path.realpath(os.path.join(d, x)) in held)]
        for n in names:
            p = Path(d) / n
            if n.startswith("."):
                continue
            if not p.exists():
                _broken(p)
            (out if p.is_file() else special).append(p)
    own = {os.path.realpath(p) for d, _, names in walked for p in (os.path.join(d, n) for n in names)
           if not os.path.islink(p)}
    if stats is not None:
        stats.special_files[:] = [shown(p.relative_to(root).as_posix()) for p in sorted(special)]
    return _once(root, sorted(out), own, None if stats is None else stats.linked_files)


def _broken(p: Path) -> None:
    """Refuse the link `p` that leads to no file: its target missing, or links that lead back to
    themselves (a loop was called a missing target, which it is not)."""
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorpusError(f"{p}: a symbolic link in the corpus that leads back to itself (through "
                              f"{os.readlink(p)}); remove it or point it at a file") from None
    raise CorpusError(f"{p}: a broken symbolic link in the corpus (its target {os.readlink(p)} is not there)")


def _once(root: Path, files: list[Path], own: set[str], linked: list[str] | None) -> list[Path]:
    """`files` with each file once: under its own path where the corpus holds it there (`own`: the real
    paths of the files reached through no link), else under the first link to it in path order; the
    links left go to `linked` as "link -> path read" (paths relative to `root`)."""
    first: dict[str, Path] = {}
    for p in files:
        real = os.path.realpath(p)
        if real not in first or (real in own and not p.is_symlink() and first[real].is_symlink()):
            first[real] = p
    kept = set(first.values())
    if linked is not None:
        def rel(f: Path) -> str:
            return shown(f.relative_to(root).as_posix())

        linked[:] = [f"{rel(p)} -> {rel(first[os.path.realpath(p)])}" for p in files if p not in kept]
    return [p for p in files if p in kept]


def _walk(root: Path, followlinks: bool) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk over `root`'s folders in sorted order (the walk stays the same on every file system),
    hidden folders left out; the caller may prune `dirs` further. An unreadable folder is a CorpusError."""
    def unreadable(e: OSError):
        raise CorpusError(f"{e.filename}: cannot read this folder of the corpus ({e.strerror})")

    for d, dirs, names in os.walk(root, onerror=unreadable, followlinks=followlinks):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        yield d, dirs, names


def _jsonl(path: Path, rel: str, default_domain: str, stats: CorpusStats) -> Iterator[Document]:
    data = path.read_bytes()
    encoding, spans = jsonl_lines(data)
    for i, (start, size) in enumerate(spans):
        line = decode_as(data[start : start + size], encoding, rel, stats)
        if line.strip():
            rec = _record(path, i, line, rel, stats)
            yield Document(*_id_domain(rec, rel, i, default_domain, stats), rec["text"])


def _parquet(path: Path, rel: str, default_domain: str, stats: CorpusStats,
             texts: bool = True) -> Iterator[Document]:
    """The documents of a Parquet file, a row without text (null) skipped, named in `stats.empty_documents`;
    `texts` False: their texts left empty, not read (the lazy reader's index)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    cols = set(pf.schema_arrow.names)
    if "text" not in cols:
        raise CorpusError(f"{path}: a Parquet corpus needs a 'text' column (has {sorted(cols)})")
    kind = pf.schema_arrow.field("text").type
    if not is_string(kind):
        raise CorpusError(f"{path}: the 'text' column must hold strings, it holds {kind}")
    for c in ("domain", "id"):
        if c in cols and not _name_kind(kind := pf.schema_arrow.field(c).type):
            raise CorpusError(f"{path}: the {c!r} column must hold strings or numbers, it holds {kind}")
    want = [c for c in ("text", "domain", "id") if c in cols]
    row = 0
    for batch in pf.iter_batches(columns=want, batch_size=1024):
        n = batch.num_rows
        text = parquet_strings(batch.column("text"), rel, stats) if texts else [None if x else "" for x in
                                                                        batch.column("text").is_null().to_pylist()]
        dom, did = ((parquet_strings(batch.column(c), rel, stats) if c in want else [None] * n)
                    for c in ("domain", "id"))
        for j in range(n):
            row += 1
            where = f"{rel}:{row}"
            if text[j] is None:  # no document, named with those without a token: it went without a word
                if stats is not None:
                    stats.empty_documents.append(str(did[j]) if did[j] is not None else where)
                continue
            yield Document(str(did[j]) if did[j] is not None else where,
                           _domain(_name_or(dom[j], default_domain), f"{path}:{row}"), text[j])


def _name_kind(kind) -> bool:
    """Whether the values of a Parquet domain or id column of type `kind` read as names: strings, numbers,
    booleans (a dictionary of them too); lists, structs and bytes became Python's repr of each value
    ("[1]", "b'code'"), silently."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return not (pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_fixed_size_binary(kind) or getattr(pa.types, "is_binary_view", lambda t: False)(kind))


def _entries(path: str | Path, stats: CorpusStats | None = None) -> tuple[Path, list[tuple[Path, str, str]]]:
    """The corpus files as (file, path relative to the corpus, domain of its folder). Binary files
    of a directory (other than Parquet) are left out, and named in `stats.skipped_binary`."""
    root = Path(path)
    if not root.exists():
        raise CorpusError(f"{root}: corpus not found")
    if root.is_dir():
        files = _files(root, stats)
        if not files:
            raise CorpusError(f"{root}: corpus directory has no files (names starting with '.' are not read)")
        binary = [f for f in files if _form(f) != ".parquet" and is_binary(f)]
        if binary and len(binary) == len(files):
            raise CorpusError(f"{root}: corpus directory has no text files (all {len(files)} are binary, "
                              f"e.g. {binary[0].name})")
        if binary:
            skip = set(binary)
            files = [f for f in files if f not in skip]
            if stats is not None:
                stats.skipped_binary[:] = [shown(f.relative_to(root).as_posix()) for f in binary]
        rels = [(f, shown(f.relative_to(root).as_posix())) for f in files]
        entries = [(f, rel, _domain(Path(rel).parts[0], str(root / Path(rel).parts[0])) if len(Path(rel).parts) > 1
                    else "default") for f, rel in rels]
        if stats is not None:
            _note_domainless(root, {Path(rel).parts[0] for _, rel, _ in entries}, stats)
        return root, entries
    if _form(root) != ".parquet" and is_binary(root):  # read as text it was bytes of mojibake (a review)
        raise CorpusError(f"{root}: not a text file (a NUL byte in its first {BINARY_PROBE // 1024} KiB: weights, an "
                          "archive, an image?); decompress or convert it, or pass a folder of text files")
    return root, [(root, shown(root.name), "default")]


def _form(f: Path) -> str:
    """How a corpus file is read, by its suffix in any case: `.jsonl` records, `.parquet` columns, else text (a
    `notes.JSONL` was read as one text document of JSON syntax, and a `data.PARQUET` skipped as binary)."""
    return f.suffix.lower()


def _note_domainless(root: Path, held: set[str], stats: CorpusStats) -> None:
    """Name the sub-folders of `root` that are no domain (`held`: the first parts of the files' paths):
    a link to a folder the corpus holds under its own path (read there, as `_files` does) in
    `stats.linked_domains`, any other in `stats.empty_domains` (no text file)."""
    empty, linked, real = [], [], None
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(".") or shown(d.name) in held:
            continue
        if d.is_symlink() and real is None:  # the folders under their own paths, walked once if needed
            real = {os.path.realpath(x): Path(x) for x, _, _ in _walk(root, followlinks=False)}
        target = real.get(os.path.realpath(d)) if d.is_symlink() else None
        if target is not None:
            linked.append(f"{shown(d.name)} -> {shown(target.relative_to(root).as_posix())}")
        else:
            empty.append(shown(d.name))
    stats.empty_domains[:], stats.linked_domains[:] = empty, linked


def iter_documents(path: str | Path, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Every document of the corpus, in corpus order (files by sorted path, records in file order)."""
    stats = stats if stats is not None else CorpusStats()
    _, entries = _entries(path, stats)
    for f, rel, domain in entries:
        if _form(f) == ".jsonl":
            docs = _jsonl(f, rel, domain, stats)
        elif _form(f) == ".parquet":
            docs = _parquet(f, rel, domain, stats)
        else:
            docs = iter([Document(rel, domain, decode(f.read_bytes(), rel, stats))])
        for d in docs:
            stats.documents += 1
            d.doc_id = stats.unique_id(d.doc_id)
            yield d


def fingerprint(path: str | Path, name: str | None = None) -> str:
    """sha256 over every corpus file's relative path and bytes (a single file: its name, or `name`, that of
    the file it is asked to be a copy of, and bytes). Kept for the process while no file's inode, size or
    times change (`probe.file_memo`: not while a file is as recent as the filesystem's clock's tick, and
    the last 32 only): a torchrun record compares it across ranks (`probe.job.same_inputs`) before run.json
    records it, and read the corpus twice for it."""
    root = Path(path)
    files = _files(root) if root.is_dir() else [root]
    return _FINGERPRINTS.get((str(root.resolve()), name), files, lambda: _sha256(root, files, name))


_FINGERPRINTS = FileMemo()


def _sha256(root: Path, files: list[Path], name: str | None) -> str:
    h = hashlib.sha256()
    for f in files:
        # the name's bytes: a name that is not UTF-8 has no .encode() (a review)
        h.update(os.fsencode(f.relative_to(root).as_posix() if root.is_dir() else name or f.name))
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


ORDERS = ("domains", "corpus")


def corpus_windows(path: str | Path, encode, seq_len: int, bos_id: int | None, max_tokens: int | None = None,
                   order: str = "domains", stats: CorpusStats | None = None) -> Iterator[Window]:
    """The corpus as token windows. order "corpus": documents in corpus order; "domains": the
    domains interleaved so that any --max-tokens cap covers every domain about equally (each next
    window comes from the domain with the fewest tokens so far, ties by name; a domain that runs out
    leaves the rotation), deterministic. seq_id numbers the windows in the order given."""
    if order not in ORDERS:
        raise CorpusError(f"--order {order!r}: choose {' or '.join(ORDERS)}")
    stats = stats if stats is not None else CorpusStats()
    if order == "corpus":
        stats.capped_domains = [] if max_tokens is None else None
        return iter_windows(iter_documents(path, stats), encode, seq_len, bos_id, max_tokens, stats.empty_documents)
    return balanced_windows(domain_streams(path, stats), encode, seq_len, bos_id, max_tokens, stats)


# ------------------------------------------------------------------------- documents by domain
@dataclass(frozen=True)
class _Ref:
    """Where one document is, so that it can be read again on its turn."""
    kind: str  # text | jsonl | parquet
    file: Path
    rel: str
    key: int  # jsonl: byte offset of the line; parquet: row index
    size: int  # jsonl: bytes of the line
    line: int  # jsonl: 1-based line number (for messages and default ids)
    domain: str
    doc_id: str
    encoding: str = "utf-8"  # jsonl: the file's (`jsonl_lines`)


def domain_streams(path: str | Path, stats: CorpusStats | None = None) -> dict[str, Iterator[Document]]:
    """Each domain's documents (in corpus order), read lazily: one pass over the corpus notes where
    every document is and its domain (no text kept), then each stream reads its documents as it is
    consumed (text files whole, JSONL lines by offset, Parquet row groups one at a time)."""
    stats = stats if stats is not None else CorpusStats()
    refs: dict[str, list[_Ref]] = {}
    for r in _index(path, stats):
        refs.setdefault(r.domain, []).append(dataclasses.replace(r, doc_id=stats.unique_id(r.doc_id)))
    return {dom: _read_refs(rs, stats) for dom, rs in sorted(refs.items())}


def _index(path, stats: CorpusStats | None = None) -> Iterator[_Ref]:
    _, entries = _entries(path, stats)
    for f, rel, domain in entries:
        if _form(f) == ".jsonl":
            yield from _index_jsonl(f, rel, domain, stats)
        elif _form(f) == ".parquet":
            for i, doc in enumerate(_parquet(f, rel, domain, stats, texts=False)):
                yield _Ref("parquet", f, rel, i, 0, 0, doc.domain, doc.doc_id)
        else:
            yield _Ref("text", f, rel, 0, 0, 0, domain, rel)


def _index_jsonl(f: Path, rel: str, domain: str, stats: CorpusStats | None) -> Iterator[_Ref]:
    """Where each record of a JSONL file is, with its id and domain (their replacements counted here,
    the text's when it is read)."""
    data = f.read_bytes()
    encoding, spans = jsonl_lines(data)
    for i, (start, size) in enumerate(spans):
        line = data[start : start + size].decode(encoding, errors="replace")
        if line.strip():
            doc_id, dom = _id_domain(_record(f, i, line), rel, i, domain, stats)
            yield _Ref("jsonl", f, rel, start, size, i + 1, dom, doc_id, encoding)


def _record(path: Path, i: int, line: str, rel: str = "", stats: CorpusStats | None = None) -> dict:
    """Line `i` (0-based) of a JSONL file as a record, its text's lone surrogates replaced (`mend`;
    counted in `stats` as file `rel`'s when given)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # valid JSON that Python will not read: a traceback, or no file named
        raise CorpusError(f"{path}:{i + 1}: JSON that Python cannot read ({first_line(e, 120)})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise CorpusError(f"{path}:{i + 1}: a JSONL record needs a string field 'text'")
    for key in ("domain", "id"):  # {"a": 1} became the domain "{'a': 1}", Python's repr of it, silently
        if isinstance(value := rec.get(key), (dict, list)):
            kind = "an object" if isinstance(value, dict) else "an array"
            raise CorpusError(f"{path}:{i + 1}: field {key!r} is {kind}; a record's domain and id are strings "
                              "or numbers")
    rec["text"] = mend(rec["text"], rel, stats)
    return rec


def _id_domain(rec: dict, rel: str, i: int, default_domain: str, stats: CorpusStats | None) -> tuple[str, str]:
    """A JSONL record's document id (default `file:line`) and domain (default: its folder's), their
    lone surrogates replaced (`mend`)."""
    did = rec.get("id")  # "id": null is no id (it was the id "None" of every such record; a review)
    return (mend(str(did), rel, stats) if did is not None else f"{rel}:{i + 1}",
            _domain(mend(_name_or(rec.get("domain"), default_domain), rel, stats), f"{rel}:{i + 1}"))


def _name_or(value, default: str) -> str:
    """A record's domain as a string, or `default` when it has none (null or ""): the domain 0 or
    false became the folder's (`value or default`, a review)."""
    return default if value is None or value == "" else str(value)


RESERVED_DOMAINS = ("all",)  # the analyses' name for every domain's rows together


def _domain(name: str, where: str) -> str:
    if name in RESERVED_DOMAINS:
        raise CorpusError(f"{where}: the domain name {name!r} is reserved (the analyses' rows for every domain "
                          "together); rename it")
    return name


def _read_refs(refs: list[_Ref], stats: CorpusStats) -> Iterator[Document]:
    rows: dict[Path, tuple[int, list]] = {}  # parquet file -> (first row, texts) of the row group in use
    for r in refs:
        stats.documents += 1
        if r.kind == "text":
            yield Document(r.doc_id, r.domain, decode(r.file.read_bytes(), r.rel, stats))
        elif r.kind == "jsonl":
            with open(r.file, "rb") as fh:
                fh.seek(r.key)
                line = decode_as(fh.read(r.size), r.encoding, r.rel, stats)
            yield Document(r.doc_id, r.domain, _record(r.file, r.line - 1, line, r.rel, stats)["text"])
        else:
            yield Document(r.doc_id, r.domain, _parquet_row(r, rows, stats))


def _parquet_row(r: _Ref, cache: dict, stats: CorpusStats) -> str:
    """Text of the r.key-th non-null row of r.file, through its row group (the group in use is kept
    while the stream reads on; the groups' row counts are read once per file). Bytes that are not
    UTF-8 are replaced, and counted as the row is read (`parquet_strings_counted`)."""
    import pyarrow.parquet as pq

    if ("groups", r.file) not in cache:
        pf = pq.ParquetFile(r.file)
        counts = [pf.metadata.row_group(g).num_rows - pf.read_row_group(g, columns=["text"]).column("text").null_count
                  for g in range(pf.num_row_groups)]
        cache[("groups", r.file)] = (pf, np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist())
    first, texts, replaced = cache.get(r.file, (0, [], []))
    if not first <= r.key < first + len(texts):
        pf, starts = cache[("groups", r.file)]
        g = next(i for i in range(len(starts) - 1) if starts[i] <= r.key < starts[i + 1])
        first = starts[g]
        # the group decoded once (a row at a time, a cast and a decode each, took 3x as long; a review);
        # each row's replacements counted when it is read (every domain's stream decodes the group)
        texts, replaced = parquet_strings_counted(pf.read_row_group(g, columns=["text"]).column("text").drop_null())
        cache[r.file] = (first, texts, replaced)
    stats.replaced(replaced[r.key - first], r.rel)
    return texts[r.key - first]
