"""The bundled corpus's JSON-lines files (`data/corpus/train.jsonl`, `val.jsonl`), read whole, for
the corpus recipe (`data.build_corpus`, `data.report`, `data.tokenizer`) and training (`train.data`).
The record jobs stream corpora of any form instead (probe/corpus.py), but not the folder that holds
such files with their manifest (`check_not_a_built_corpus`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_documents(path: str | Path, fields: tuple[str, ...], error: type[Exception]) -> list[dict]:
    """The bundled corpus's JSON-lines files (`data/corpus/train.jsonl`, `val.jsonl`), for the corpus
    recipe (`data.build_corpus`, `data.tokenizer`) and training (`train.data`): every non-blank line
    of `path` as a dict holding a string under each of `fields`. A missing file, a line that is not
    JSON and a document without those fields are `error`s of one line naming the file (and the
    line), and so are a line that is not UTF-8 (`PATH:LINE: not valid UTF-8 (...)`) and a file that
    cannot be read. The record jobs stream corpora instead (`corpus_windows`)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found (build the corpus with: python -m data.build_corpus)")
    docs = []
    for i, line in _utf8_lines(path, error):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{i}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in fields):
            names = ", ".join(fields[:-1]) + " and " + fields[-1] if len(fields) > 1 else fields[0]
            raise error(f"{path}:{i}: a document needs string fields {names}")
        docs.append(d)
    return docs


def _utf8_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of `path`, decoded one line at a time so that a byte that is
    not UTF-8 is named with its line (a leading byte-order mark is dropped: it is not JSON); that, or
    a read that fails, is an `error` naming the file. It was a UnicodeDecodeError traceback (a review)."""
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise error(f"{path}:{i}: not valid UTF-8 ({e})") from None
                yield i, line
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None


def is_built_corpus(path: Path) -> bool:
    """Whether `path` is a folder `data.build_corpus` wrote: a manifest.json there listing train.jsonl
    (a manifest.json of the user's own, or none, is a folder of texts)."""
    try:
        files = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(files, dict) and "train.jsonl" in files


def check_not_a_built_corpus(path: Path, error: type[Exception], flag: str = "--corpus",
                             advice: str | None = None) -> None:
    """A job's --corpus may be one split of a corpus `data.build_corpus` wrote, not its folder: read as a
    corpus folder, its manifest.json was a document of domain `default`, its training split was scored with
    its validation split as one corpus, and training's token cache beside them was a sub-folder noted as
    no domain (a tour). `flag`: the flag that named it, and `advice` what to pass instead where that is not
    one split (`data.build_corpus --source` read it so too)."""
    if path.is_dir() and is_built_corpus(path):
        raise error(f"{flag} {path}: a corpus that data.build_corpus wrote, whose manifest.json would be read "
                    "as a document of domain 'default' and its two splits as one corpus; "
                    + (advice or f"pass one split, e.g. {flag} {path / 'val.jsonl'}"))
