"""A training corpus from the user's own folder of texts (`python -m data.build_corpus --source DIR`):
the folder is read as the record job's `--corpus` reads one (a sub-folder per domain, files at its top
level domain `default`; .txt, .jsonl and .parquet; other encodings' bytes replaced and counted, binary
files skipped, linked folders read once; probe/corpus.py), each document is cut into pieces of about
`DOC_CHARS` characters as the bundled sources are, and the pieces go through the recipe's cap and split.
Only training needed the JSON-lines splits, and the recipe built them from its five sources alone: a
folder of one's own had to be converted by hand (a tour)."""

from __future__ import annotations

from pathlib import Path

from data.build_corpus import Doc, chunk
from probe.corpus import CorpusError as ReadError
from probe.corpus import CorpusStats, fingerprint, iter_documents

DOC_CHARS = 4000  # the bundled sources' target (build_corpus.DOC_CHARS), Chinese's 1500 aside


def folder_documents(source: Path, *, min_chars: int, error: type[Exception], domains: list[str] | None = None,
                     doc_chars: int = DOC_CHARS) -> tuple[list[Doc], dict, list[str]]:
    """(the pieces of every document in `source`, what the manifest records of the folder, the notes to
    print). A document's pieces are `ID/0000`, `ID/0001`, ... (ID: its id in the folder, e.g.
    `prose/a.txt`); one of fewer than `min_chars` characters (an empty file) is left out and named.
    `domains`: the folder's domains to keep (None: all); one the folder lacks is an `error`, as is a folder
    the reader refuses. The command's own CorpusError is passed in: run as `python -m data.build_corpus`,
    that module is `__main__`, and the class imported here from `data.build_corpus` was another one, so
    the command's one-line errors came out as tracebacks."""
    stats, docs, short, seen = CorpusStats(), [], [], set()
    name = f"folder:{source.resolve().name}"  # `--source .` was "folder:"
    try:
        for d in iter_documents(source, stats):
            seen.add(d.domain)
            if domains is not None and d.domain not in domains:
                continue
            # every piece of text kept: `min_chars` is the whole document's least (the recipe's tail
            # pieces under 200 characters were a user's text dropped without a word)
            pieces = [p for piece in chunk(d.text, doc_chars, 1) for p in _cut_long(piece, doc_chars)]
            if sum(len(p) for p in pieces) < max(min_chars, 1):
                short.append(d.doc_id)
                continue
            docs += [Doc(f"{d.doc_id}/{k:04d}", d.domain, name, p) for k, p in enumerate(pieces)]
        digest = fingerprint(source)
    except ReadError as e:  # the reader's one line, under this command's error
        raise error(f"--source {e}") from None
    missing = sorted(set(domains or ()) - seen)
    if missing:
        raise error(f"--domains: {', '.join(missing)} not in --source {source} (its domains: "
                    f"{', '.join(sorted(seen))})")
    info = {"path": str(source.resolve()), "fingerprint": digest, "documents": stats.documents,
            "replaced_bytes": stats.replaced_bytes, "files_with_replacements": stats.files_with_replacements,
            "skipped_binary_files": stats.skipped_binary, "short_documents": short}
    notes = stats.notes()
    if short:
        notes.append(f"note: {len(short)} document(s) under --min-chars {min_chars} characters left out "
                     f"({', '.join(short[:3])}{' ...' * (len(short) > 3)}); manifest.json lists them under "
                     "source.short_documents (--min-chars 1 keeps every non-empty one)")
    return docs, info, notes


def _cut_long(piece: str, target: int) -> list[str]:
    """`piece` in parts of about `target` characters, each cut after the first space past `target`
    (at 1.5 x `target` where there is none). `chunk` cuts at line ends only, so a file of one long line was one
    document: its domain could not be split into training and validation, nor capped by --max-chars."""
    most, parts, start = int(1.5 * target), [], 0
    while len(piece) - start > most:  # by offsets: cutting the rest off each time copied it again (quadratic)
        cut = piece.find(" ", start + target, start + most) + 1 or start + most
        parts.append(piece[start:cut])
        start = cut
    return [*parts, piece[start:]]
