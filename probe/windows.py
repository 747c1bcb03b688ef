"""Token windows: documents tokenised and cut into consecutive, non-overlapping windows of
`seq_len` tokens, in the order the documents come (`iter_windows`) or with the domains interleaved
(`balanced_windows`), under an optional --max-tokens cap. `probe.corpus.corpus_windows` reads a
corpus and picks one of the two.

Each document is tokenised (with BOS prepended when the model has one) piece by piece
(`text_pieces`), and the last window of a document is shorter. Interleaved, each next window comes
from the domain with the fewest tokens so far, so that a --max-tokens cap covers every domain (a cap
smaller than a window per domain leaves the last ones without a token: the jobs' note names them).
Windows are never packed together: a batch is right-padded and the model is told each row's length,
so every window is seen exactly as if it were alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .corpus import CorpusStats, Document


@dataclass
class Window:
    seq_id: int
    doc_id: str
    domain: str
    doc_start: int  # position of the window's first token in its document
    ids: np.ndarray  # int32 [n], n <= seq_len


# A document longer than this many characters is tokenised in pieces, so that a cap reads only what it
# needs and the tokenizer never holds a whole book: a 21 MB document took 5.6 GB and 69 s for a
# 3,000-token record (its Encoding whole, twice; a review)
PIECE_CHARS = 1 << 18
_SAFE_CUT = re.compile(r"(?<=\S) (?=\S)")


def text_pieces(text: str, size: int | None = None) -> Iterator[str]:
    """`text` in consecutive pieces of at most about `size` characters, each cut just before a single
    space between two non-space characters. Byte-level BPE pre-tokenizers (this project's, GPT-2's,
    DeepSeek-V3's) attach such a space to the word after it and end the word before it at its last
    character, so no pre-token spans a cut and the ids are those of the whole text (tested). Where a
    piece's second half holds no such space (text without spaces: CJK), the piece runs on to the
    next one; without any, the rest goes whole."""
    size = size or PIECE_CHARS
    start, n = 0, len(text)
    while n - start > size:
        cut = None
        for m in _SAFE_CUT.finditer(text, start + size // 2, start + size):
            cut = m.start()
        if cut is None:
            m = _SAFE_CUT.search(text, start + size)
            if m is None:
                break
            cut = m.start()
        yield text[start:cut]
        start = cut
    yield text[start:]


def _doc_windows(d: Document, encode, seq_len: int, bos_id: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, ids) of each window of one document, tokenised piece by piece (`text_pieces`) as the windows
    are taken; none for a document without a token (its window would be BOS alone: an empty text
    file recorded as a "complete" one-token run, a review)."""
    buf = np.asarray([] if bos_id is None else [bos_id], dtype=np.int32)
    start, seen = 0, False
    for piece in text_pieces(d.text):
        ids = encode(piece)
        seen = seen or bool(len(ids))
        buf = np.concatenate([buf, np.asarray(ids, dtype=np.int32)])
        full = (len(buf) - 1) // seq_len  # windows surely not the document's last: more may follow
        for k in range(full):
            yield start + k * seq_len, buf[k * seq_len : (k + 1) * seq_len]
        start, buf = start + full * seq_len, buf[full * seq_len :]
    if seen and len(buf):
        for k in range(0, len(buf), seq_len):
            yield start + k, buf[k : k + seq_len]


def iter_windows(docs: Iterator[Document], encode, seq_len: int, bos_id: int | None,
                 max_tokens: int | None = None, empty: list[str] | None = None) -> Iterator[Window]:
    """Token windows in the order of `docs`. `encode(text) -> list[int]`. Stops after `max_tokens`
    tokens (the last window is cut so the total is exact). The ids of the documents without a token
    go to `empty` when given."""
    seq_id, total = 0, 0
    for d in docs:
        for start, w in _tokenless_to(empty, d, _doc_windows(d, encode, seq_len, bos_id)):
            if max_tokens is not None:
                w = w[: max_tokens - total]
                if not len(w):
                    return
            yield Window(seq_id, d.doc_id, d.domain, start, w)
            seq_id += 1
            total += len(w)
            if max_tokens is not None and total >= max_tokens:
                return


def _tokenless_to(empty: list[str] | None, d: Document, windows: Iterator) -> Iterator:
    """`windows`, one document's; its id appended to `empty` (when given) where it has none."""
    seen = False
    for x in windows:
        seen = True
        yield x
    if not seen and empty is not None:
        empty.append(d.doc_id)


def balanced_windows(streams: dict[str, Iterator[Document]], encode, seq_len: int, bos_id: int | None,
                     max_tokens: int | None, stats: CorpusStats) -> Iterator[Window]:
    """Token windows of each domain's documents (`streams`, by domain name), interleaved: each next
    window comes from the domain with the fewest tokens so far, ties by name; a domain that runs out
    leaves the rotation. The domains a `max_tokens` cap left without a token go to
    `stats.starved_domains` (with `stats.cap`), those it cut with tokens taken to `stats.capped_domains`."""
    def windows(docs: Iterator[Document]):
        for d in docs:
            for start, w in _tokenless_to(stats.empty_documents, d, _doc_windows(d, encode, seq_len, bos_id)):
                yield d, start, w

    live = {dom: windows(docs) for dom, docs in sorted(streams.items())}
    tokens = dict.fromkeys(live, 0)
    seq_id, total, cut = 0, 0, None  # cut: the domain whose window the cap shortened
    while live and (max_tokens is None or total < max_tokens):
        dom = min(live, key=lambda k: (tokens[k], k))
        nxt = next(live[dom], None)
        if nxt is None:
            del live[dom]
            continue
        d, start, w = nxt
        if max_tokens is not None and len(w) > max_tokens - total:
            w, cut = w[: max_tokens - total], dom
        yield Window(seq_id, d.doc_id, d.domain, start, w)
        seq_id += 1
        tokens[dom] += len(w)
        total += len(w)
    left, known = _left(live, cut, stats)
    stats.capped_domains = [dom for dom in left if tokens[dom]] if known else None
    starved = [dom for dom in left if not tokens[dom]]
    if starved:
        stats.starved_domains[:] = starved
        stats.cap = (max_tokens, seq_len, sum(n > 0 for n in tokens.values()) + len(starved))


def _left(live: dict[str, Iterator], cut: str | None, stats: CorpusStats) -> tuple[list[str], bool]:
    """The domains still in the rotation when the cap ended it that hold text it did not take (`cut`,
    whose window it shortened, does): looked for by reading on to each one's next window, and the
    documents that read not counted. A domain that ran out as the cap was reached is not one: the
    report tells a cap that cut a domain from a corpus that holds little of it by these. With whether
    every domain was known: a file past the cap that cannot be read is one the windows never needed,
    which failed a capped record (a review); such a domain is left out, the others still told."""
    from .corpus import CorpusError  # corpus.py imports this module

    before = stats.documents, stats.replaced_bytes, list(stats.files_with_replacements), list(stats.empty_documents)
    out, known = [], True
    for dom, ws in live.items():
        try:
            if dom == cut or next(ws, None) is not None:
                out.append(dom)
        except (CorpusError, OSError):
            known = False
    stats.documents, stats.replaced_bytes, stats.files_with_replacements[:], stats.empty_documents[:] = before
    return out, known
