"""Corpus input the reader once failed on or read wrongly (a review): lone surrogate escapes in
JSONL, UTF-16 / UTF-32 JSONL, a --max-tokens cap below one window per domain, linked folders, file
names that are not UTF-8, Parquet strings that are not UTF-8, and the domain 0. Each is read, in
both orders alike, or named in a note; none is a traceback."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from probe.corpus import CorpusError, CorpusStats, corpus_windows, fingerprint, iter_documents

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
ORDERS = ("corpus", "domains")


def encode(text: str) -> list[int]:
    """One token per word; like a real tokenizer it takes only text that can be encoded (a lone
    surrogate raised "TextInputSequence must be str" in the bundled one)."""
    text.encode("utf-8")
    return [WORDS.index(w) + 2 if w in WORDS else 1 for w in text.split()]


def read(path, order, max_tokens=None, seq_len=16, stats=None):
    stats = stats if stats is not None else CorpusStats()
    return list(corpus_windows(path, encode, seq_len, 0, max_tokens, order, stats))


def words(n: int, seed: int = 0) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, n))


def test_a_lone_surrogate_escape_in_jsonl_is_replaced_and_counted(tmp_path):
    """json.loads takes "\\ud83d" without its pair; the tokenizer did not (a traceback). Now it is
    U+FFFD, counted with the replaced bytes, in the text and in the id and domain alike."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "alpha \\ud83d beta", "id": "a\\udc00"}\n'
                    '{"text": "gamma \\ud83d\\ude00 delta", "domain": "d\\ud800"}\n')  # a pair is one character
    docs = {d.doc_id: (d.domain, d.text) for d in iter_documents(path)}
    assert docs == {"a\ufffd": ("default", "alpha \ufffd beta"), "c.jsonl:2": ("d\ufffd", "gamma \U0001f600 delta")}
    for order in ORDERS:
        stats = CorpusStats()
        got = read(path, order, stats=stats)
        assert sorted((w.doc_id, w.domain, w.ids.tolist()) for w in got) == [
            ("a\ufffd", "default", [0, 2, 1, 3]), ("c.jsonl:2", "d\ufffd", [0, 4, 1, 5])], order
        assert (stats.replaced_bytes, stats.files_with_replacements) == (3, ["c.jsonl"]), order
        assert stats.replaced_note().startswith("note: 3 byte(s) that are not UTF-8 replaced by U+FFFD in 1 file(s) "
                                                "(c.jsonl)")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_jsonl_read_as_utf8_jsonl_does(tmp_path, encoding):
    """The README promises UTF-16 / UTF-32 after their byte-order mark; a JSONL file in them (Windows
    PowerShell writes UTF-16LE) was refused as "not a text file" alone and skipped as binary in a
    folder. Now both orders read it as the same records in UTF-8: lines split at "\\n" only (CRLF, a
    U+2028 in a string and a character outside the BMP, a surrogate pair in UTF-16, kept)."""
    recs = [{"text": "alpha beta\u2028gamma", "domain": "x"}, {"text": "\U0001f600 delta " * 20, "domain": "y"},
            {"text": "中文 eta", "domain": "x", "id": "zh"}]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\r\n\r\n"
    bom = {"utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}.get(encoding, b"")  # the others write theirs
    (tmp_path / "plain.jsonl").write_text(body, encoding="utf-8")
    (tmp_path / "wide.jsonl").write_bytes(bom + body.encode(encoding))
    (tmp_path / "f" / "sub").mkdir(parents=True)
    (tmp_path / "f" / "sub" / "wide.jsonl").write_bytes(bom + body.encode(encoding))
    key = lambda w: (w.doc_id.split(":")[-1], w.domain, w.doc_start, w.ids.tolist())  # noqa: E731
    want = sorted(map(key, read(tmp_path / "plain.jsonl", "corpus")))
    assert len(want) == 5
    for path in (tmp_path / "wide.jsonl", tmp_path / "f"):
        for order in ORDERS:
            stats = CorpusStats()
            assert sorted(map(key, read(path, order, stats=stats))) == want, (path.name, order)
            assert stats.skipped_binary == [] and stats.replaced_bytes == 0 and stats.documents == 3


def domains_corpus(root, lengths):
    for dom, n in lengths.items():
        (root / dom).mkdir(parents=True)
        (root / dom / "d.txt").write_text(words(n))
    return root


def test_a_cap_below_a_window_per_domain_names_the_domains_it_left_out(tmp_path):
    """--max-tokens 1000 over the bundled corpus's five domains at --seq-len 256 gave technical no
    token, silently. The windows stay as they were; a note names the domains with text that got none
    (not one without text, here "e") and says what covers them all: by hand, seq_len 16, cap 40: a 16,
    b 16, c 8, d none; 4 domains with text: --seq-len <= 10 or --max-tokens >= 64."""
    c = domains_corpus(tmp_path / "c", {"a": 50, "b": 50, "c": 50, "d": 50, "e": 0})
    stats = CorpusStats()
    per = Counter()
    for w in read(c, "domains", max_tokens=40, stats=stats):
        per[w.domain] += len(w.ids)
    assert per == {"a": 16, "b": 16, "c": 8}
    assert stats.documents == 3  # the documents read to find d's first window are not counted
    assert stats.notes() == ["note: --max-tokens 40 left 1 of 4 domains without a token (d): each domain takes a "
                             "window of up to --seq-len 16 tokens in turn; pass a --seq-len of at most 10 or a "
                             "--max-tokens of at least 64 to cover every domain"]
    for cap, order in ((64, "domains"), (None, "domains"), (40, "corpus")):  # every domain got some; no cap;
        stats = CorpusStats()  # the corpus order, which reads the corpus in order by design
        read(c, order, max_tokens=cap, stats=stats)
        assert stats.cap_note() is None, (cap, order)
        assert stats.notes() == ([EMPTY_E] if cap is None else []), (cap, order)  # e's empty text read: no cap


EMPTY_E = ("note: 1 document(s) without a token left out (e/d.txt): an empty or null text makes no window; run.json "
           "lists them")


def test_an_empty_domain_folder_is_named_in_a_note(tmp_path):
    """A sub-folder without a text file (empty, or binary files only) was left out of the run without a
    word: the run had one domain fewer than the folders. A note names it, in both orders; a folder
    with an empty document is not named there (the cap note's "e" above): the note on documents
    without a token names its file."""
    c = domains_corpus(tmp_path / "c", {"a": 20, "b": 20})
    (c / "empty").mkdir()
    (c / "bin").mkdir()
    (c / "bin" / "w.bin").write_bytes(b"\0" * 16)
    (c / ".hidden").mkdir()
    for order in ORDERS:
        stats = CorpusStats()
        assert {w.domain for w in read(c, order, stats=stats)} == {"a", "b"}
        assert stats.notes()[1:] == ["note: 2 sub-folder(s) of the corpus without a text file left out (bin, empty): "
                                     "each sub-folder is a domain only where it holds text"], order
    stats = CorpusStats()  # the control: every folder holds text (e an empty one: the note on empty documents)
    read(domains_corpus(tmp_path / "d", {"a": 20, "e": 0}), "domains", stats=stats)
    assert stats.empty_note() is None and stats.notes() == [EMPTY_E]


def test_a_document_without_a_token_is_named_in_a_note(tmp_path):
    """An empty text file, or a JSONL record with "text": "", makes no window (a run of one BOS token
    was recorded as complete, a review), but it went without a word: run.json's corpus.documents
    counted it while the tokens table had no row of it, and a domain folder of empty files vanished
    from the run's domains. It is named, in both orders, and only when read: the documents read on to
    after a --max-tokens cap (to tell the capped domains) are not."""
    c = domains_corpus(tmp_path / "c", {"a": 20, "only_empty": 0})
    (c / "a" / "blank.txt").write_text("")
    (c / "mixed.jsonl").write_text('{"text": "alpha beta", "domain": "m"}\n{"text": "", "domain": "m"}\n'
                                   '{"text": "", "id": "nil"}\n')
    want = ["a/blank.txt", "mixed.jsonl:2", "nil", "only_empty/d.txt"]
    for order in ORDERS:
        stats = CorpusStats()
        docs = {w.doc_id for w in read(c, order, stats=stats)}
        assert docs == {"a/d.txt", "mixed.jsonl:1"} and stats.documents == 6, order
        assert sorted(stats.empty_documents) == want, order
        assert stats.notes() == [f"note: 4 document(s) without a token left out ({', '.join(stats.empty_documents[:3])}"
                                 ", ...): an empty or null text makes no window; run.json lists them"], order
    stats = CorpusStats()  # a cap that a's first window fills (a/blank.txt read before it): the rest read only
    read(c, "domains", max_tokens=8, stats=stats)  # to tell what it cut, nil and only_empty/d.txt among them
    assert stats.empty_documents == ["a/blank.txt"] and stats.documents == 2


def test_a_linked_domain_folder_read_under_its_target_is_not_called_empty(tmp_path):
    """`alias -> prose` is read under prose only (README), but the note named alias a sub-folder
    "without a text file", which it is not. It is named as a link now, with the folder that reads it;
    a link to a folder outside the corpus is a domain as before, and an empty folder still a note."""
    c = domains_corpus(tmp_path / "c", {"code": 5, "prose": 7})
    (c / "alias").symlink_to("prose")
    (c / "empty").mkdir()
    (c / "wiki").symlink_to(domains_corpus(tmp_path / "out", {"wiki": 3}) / "wiki")
    for order in ORDERS:
        stats = CorpusStats()
        assert {w.domain for w in read(c, order, stats=stats)} == {"code", "prose", "wiki"}
        assert stats.notes() == [
            "note: 1 sub-folder(s) of the corpus without a text file left out (empty): each sub-folder is a domain "
            "only where it holds text",
            "note: 1 sub-folder(s) of the corpus link to a folder it holds under its own path, whose domain reads it "
            "(alias -> prose): each folder is read once"], order


def test_a_parquet_row_whose_text_is_null_is_named_in_the_note(tmp_path):
    """A Parquet row whose text is null is no document (JSONL's "text": null is refused), but it was left
    out without a word. It is named with the documents without a token, by its id or row."""
    c = tmp_path / "c"
    c.mkdir()
    pq.write_table(pa.table({"text": ["alpha beta", None, "gamma", None], "id": [None, None, "g", "n"]}),
                   c / "t.parquet")
    for order in ORDERS:
        stats = CorpusStats()
        assert [w.doc_id for w in read(c, order, stats=stats)] == ["t.parquet:1", "g"], order
        assert stats.empty_documents == ["t.parquet:2", "n"] and stats.documents == 2, order


def test_a_loop_of_file_links_is_called_a_loop(tmp_path):
    """`l1 -> l2`, `l2 -> l1` was refused as "a broken symbolic link (its target l2 is not there)", which
    it is not: l2 is there. The error says the links go round in a loop; a missing target is as before."""
    c = domains_corpus(tmp_path / "c", {"a": 5})
    (c / "a" / "l1").symlink_to("l2")
    (c / "a" / "l2").symlink_to("l1")
    for order in ORDERS:
        with pytest.raises(CorpusError, match=r"^\S+/c/a/l1: a symbolic link in the corpus that leads back to "
                                              r"itself \(through l2\); remove it or point it at a file$"):
            read(c, order)
    (c / "a" / "l2").unlink()
    with pytest.raises(CorpusError, match=r"a/l1: a broken symbolic link in the corpus \(its target l2 is not there\)"):
        read(c, "corpus")


def test_a_linked_file_is_read_once(tmp_path):
    """Linked folders were read once, but a link to a file was read as a document of its own: `a/dup.txt
    -> x.txt` and `b/other.txt -> ../a/x.txt` counted a/x.txt's text three times. A file is read once, under
    its own path where the corpus holds it, else under the first link in path order; a note names the
    links left, and a link to a file outside the corpus is read as before."""
    c = domains_corpus(tmp_path / "c", {"a": 5, "b": 7})
    (c / "a" / "dup.txt").symlink_to("d.txt")
    (c / "b" / "other.txt").symlink_to("../a/d.txt")
    out = tmp_path / "out.txt"
    out.write_text(words(3))
    for name in ("b/z_out.txt", "b/out.txt"):
        (c / name).symlink_to(out)
    for order in ORDERS:
        stats = CorpusStats()
        got = Counter(w.doc_id for w in read(c, order, stats=stats))
        assert sorted(got) == ["a/d.txt", "b/d.txt", "b/out.txt"] and stats.documents == 3, order
        assert stats.notes() == ["note: 3 linked file(s) of the corpus left, their files read under another path "
                                 "(a/dup.txt -> a/d.txt, b/other.txt -> a/d.txt, b/z_out.txt -> b/out.txt): "
                                 "each file is read once"], order


def test_a_note_is_one_line_whatever_the_names_hold(tmp_path):
    """A file or folder name may hold a newline or a terminal escape: the notes printed it as it is, so
    a note ran over several lines (or recoloured the terminal). Control characters are shown escaped
    in the notes; the documents' ids and domains keep the names as they are."""
    c = tmp_path / "c"
    (c / "dom\ntwo").mkdir(parents=True)
    (c / "dom\ntwo" / "lat\nin.txt").write_bytes(b"caf\xe9 alpha")
    (c / "dom\ntwo" / "im\x1b[31mg.png").write_bytes(b"\x89PNG\x00")
    (c / "dom\ntwo" / "blank\r.txt").write_text("")
    (c / "em\tpty").mkdir()
    for order in ORDERS:
        stats = CorpusStats()
        assert {(w.domain, w.doc_id) for w in read(c, order, stats=stats)} == {("dom\ntwo", "dom\ntwo/lat\nin.txt")}
        notes = stats.notes()
        assert len(notes) == 4 and all("\n" not in n and "\r" not in n and "\x1b" not in n for n in notes), notes
        assert "(dom\\ntwo/im\\x1b[31mg.png)" in notes[0] and "(dom\\ntwo/lat\\nin.txt)" in notes[1], notes
        assert "(em\\tpty)" in notes[2] and "(dom\\ntwo/blank\\r.txt)" in notes[3], notes


def test_a_repeated_document_id_is_told_apart(tmp_path):
    """JSONL shards often number their records from 0 or 1 each: three documents with the id 1 (and a
    text file whose path is a record's id) were recorded under one doc_id, so the dashboard's document
    list made one document of them, its tokens interleaved. A repeat keeps its id with "#2", "#3" (the
    first holds it), in both orders alike, and a note names them."""
    c = tmp_path / "c"
    (c / "a").mkdir(parents=True)
    (c / "b").mkdir()
    (c / "a" / "x.jsonl").write_text('{"text": "alpha", "id": 1}\n{"text": "beta", "id": 1}\n'
                                     '{"text": "gamma", "id": "1#2"}\n')
    (c / "a" / "z.txt").write_text("delta")
    (c / "b" / "y.jsonl").write_text('{"text": "eta", "id": 1}\n{"text": "zeta", "id": "a/z.txt"}\n')
    want = {("1", "alpha"), ("1#2", "beta"), ("1#2#2", "gamma"), ("a/z.txt", "delta"), ("1#3", "eta"),
            ("a/z.txt#2", "zeta")}
    for order in ORDERS:
        stats = CorpusStats()
        got = {(w.doc_id, WORDS[w.ids[1] - 2]) for w in read(c, order, stats=stats)}
        assert got == want, order
        assert stats.notes() == ["note: 4 document(s) renamed, their id an earlier document's (1 -> 1#2, "
                                 "1#2 -> 1#2#2, 1 -> 1#3, ...): each document's rows are its own"], order


def test_a_pipe_in_the_corpus_is_skipped_with_a_note(tmp_path):
    """A named pipe (or a socket, a device) below the corpus was left out without a word, the only
    skipped file no note named. It is still not read (a pipe would wait for a writer), and named."""
    c = domains_corpus(tmp_path / "c", {"a": 5})
    os.mkfifo(c / "a" / "pipe")
    for order in ORDERS:
        stats = CorpusStats()
        assert {w.doc_id for w in read(c, order, stats=stats)} == {"a/d.txt"} and stats.documents == 1, order
        assert stats.notes() == ["note: 1 file(s) of the corpus that are not regular files skipped (a/pipe): pipes, "
                                 "sockets and devices are not read"], order


class _Listing:
    """os.scandir's answer with its entries in a given order (os.walk iterates it in a with block)."""

    def __init__(self, entries):
        self.entries = iter(entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.entries)


def test_a_linked_folder_the_corpus_holds_is_read_under_its_own_domain(tmp_path):
    """The walk kept whichever path to a folder it reached first, in the file system's listing
    order: `code/examples -> ../prose` made prose's file the domain code and prose vanished. Now, in
    any listing order, a folder is read under its own (not linked) path once, with the same
    fingerprint; a link to a folder outside the corpus is still read."""
    c = domains_corpus(tmp_path / "c", {"code": 5, "prose": 7})
    (c / "code" / "examples").symlink_to("../prose")
    (c / "a_prose").symlink_to("prose")  # sorts before prose
    outside = domains_corpus(tmp_path / "out", {"wiki": 3})
    (c / "wiki").symlink_to(outside / "wiki")
    real_scandir = os.scandir
    seen = []
    for backwards in (False, True):
        def listed(path=".", backwards=backwards):
            with real_scandir(path) as it:
                return _Listing(sorted(it, key=lambda e: e.name, reverse=backwards))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "scandir", listed)
            for order in ORDERS:
                got = sorted({(w.domain, w.doc_id) for w in read(c, order)})
                want = [("code", "code/d.txt"), ("prose", "prose/d.txt"), ("wiki", "wiki/d.txt")]
                assert got == want, (backwards, order)
            seen.append(fingerprint(c))
    assert seen[0] == seen[1]


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    """A name such as b"caf\\xe9.txt" (Latin-1) stopped every job on "'utf-8' codec can't encode
    character '\\udce9' ... surrogates not allowed", naming nothing. Now it is read, its document id
    and domain with U+FFFD, and the fingerprint hashes the name's bytes."""
    root = os.fsencode(tmp_path / "c")
    try:
        os.makedirs(os.path.join(root, b"d\xe9v"))
    except (OSError, UnicodeError):  # a file system that takes UTF-8 names only
        pytest.skip("this file system refuses names that are not UTF-8")
    with open(os.path.join(root, b"d\xe9v", b"caf\xe9.txt"), "wb") as f:
        f.write(b"alpha beta")
    fp = fingerprint(tmp_path / "c")
    assert len(fp) == 64
    os.rename(os.path.join(root, b"d\xe9v", b"caf\xe9.txt"), os.path.join(root, b"d\xe9v", b"caf\xe8.txt"))
    assert fingerprint(tmp_path / "c") != fp  # the name's own bytes, not its replacement
    for order in ORDERS:
        got = [(w.doc_id, w.domain, w.ids.tolist()) for w in read(tmp_path / "c", order)]
        assert got == [("d\ufffdv/caf\ufffd.txt", "d\ufffdv", [0, 2, 3])], order
        assert got[0][0].encode() and got[0][1].encode()  # strings a Parquet table takes
    alone = os.path.join(root, b"d\xe9v", b"caf\xe8.txt")
    assert [d.doc_id for d in iter_documents(os.fsdecode(alone))] == ["caf\ufffd.txt"]
    assert len(fingerprint(os.fsdecode(alone))) == 64


def test_parquet_strings_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    """pyarrow reads a string column's bytes unchecked, then raised "'utf-8' codec can't decode byte
    0xe9", naming no file. Now they are replaced and counted like a text file's, in both orders
    alike (through row groups and after a null, for the lazy reader), the domain column too."""
    def strings(values):
        return pa.array(values, pa.binary()).view(pa.string())

    texts = [b"caf\xe9 alpha", b"beta", None, b"gamma \xff\xfe", b"delta"]
    table = pa.table({"text": strings(texts), "domain": strings([b"x", b"y\xe9", b"x", b"x", b"y\xe9"])})
    path = tmp_path / "c.parquet"
    pq.write_table(table, path, row_group_size=2)
    want = [("c.parquet:1", "x", "caf\ufffd alpha"), ("c.parquet:2", "y\ufffd", "beta"),
            ("c.parquet:4", "x", "gamma \ufffd\ufffd"), ("c.parquet:5", "y\ufffd", "delta")]
    stats = CorpusStats()
    assert [(d.doc_id, d.domain, d.text) for d in iter_documents(path, stats)] == want
    counts = []
    for order in ORDERS:
        stats = CorpusStats()
        got = sorted((w.doc_id, w.domain, w.ids.tolist()) for w in read(path, order, stats=stats))
        assert got == sorted((i, d, [0, *encode(t)]) for i, d, t in want), order
        counts.append((stats.replaced_bytes, stats.files_with_replacements))
    assert counts[0] == counts[1] == (5, ["c.parquet"])  # é, \xff\xfe and the domain's two é


def test_a_parquet_text_column_of_a_dictionary_of_strings_is_read(tmp_path):
    """A text column that is a dictionary of strings (a pandas category column, `dictionary<values=string>`)
    was refused as "the 'text' column must hold strings", though readable; it is read as the plain column
    is, in both orders (through row groups and after a null, for the lazy reader), its bytes that are not
    UTF-8 replaced and counted. A dictionary of bytes is still refused with the same line."""
    import pandas as pd

    cat = tmp_path / "cat.parquet"
    pd.DataFrame({"text": pd.Categorical(["alpha beta", "gamma", None, "alpha beta"]),
                  "domain": ["x", "y", "x", "y"]}).to_parquet(cat, row_group_size=2)
    assert pa.types.is_dictionary(pq.ParquetFile(cat).schema_arrow.field("text").type)
    want = [("cat.parquet:1", "x", "alpha beta"), ("cat.parquet:2", "y", "gamma"), ("cat.parquet:4", "y", "alpha beta")]
    assert [(d.doc_id, d.domain, d.text) for d in iter_documents(cat)] == want
    for order in ORDERS:
        got = sorted((w.doc_id, w.domain, w.ids.tolist()) for w in read(cat, order))
        assert got == sorted((i, d, [0, *encode(t)]) for i, d, t in want), order
    def strings(values):
        return pa.array(values, pa.binary()).view(pa.string()).dictionary_encode()

    bad = tmp_path / "bad.parquet"  # bytes that are not UTF-8 in the dictionaries: replaced, not a UnicodeDecodeError
    pq.write_table(pa.table({"text": strings([b"caf\xe9 alpha", b"beta", b"caf\xe9 alpha"]),
                             "domain": strings([b"x", b"y\xe9", b"y\xe9"])}), bad, row_group_size=2)
    for order in ORDERS:
        stats = CorpusStats()
        got = sorted((w.domain, w.ids.tolist()) for w in read(bad, order, stats=stats))
        assert got == [("x", [0, 1, 2]), ("y\ufffd", [0, 1, 2]), ("y\ufffd", [0, 3])], order
        assert (stats.replaced_bytes, stats.files_with_replacements) == (4, ["bad.parquet"]), order
    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"text": pa.array([b"alpha", b"beta", b"alpha"]).dictionary_encode()}), raw)
    for order in ORDERS:
        with pytest.raises(ValueError, match=r"raw\.parquet: the 'text' column must hold strings, it holds "
                                             r"dictionary<values=binary, indices=int32, ordered=0>$"):
            read(raw, order)


def test_a_domain_0_or_false_is_a_domain(tmp_path):
    """`rec.get("domain") or default` made the domains 0 and false the folder's. Only a missing,
    null or "" domain is the folder's; any other value is the domain, as a string."""
    path = tmp_path / "c.jsonl"
    recs = [{"text": "alpha", "domain": 0}, {"text": "beta", "domain": False}, {"text": "gamma", "domain": ""},
            {"text": "delta", "domain": None}, {"text": "eta"}, {"text": "iota", "domain": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta", "gamma"], "domain": [0, 1, None]}), parquet)
    named = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta"], "domain": ["", "0"]}), named)
    want = {path: ["0", "False", "default", "default", "default", "x"], parquet: ["0", "1", "default"],
            named: ["default", "0"]}
    for p, domains in want.items():
        for order in ORDERS:
            got = {w.doc_id: w.domain for w in read(p, order)}
            assert [got[k] for k in sorted(got, key=lambda k: int(k.split(":")[1]))] == domains, (p.name, order)


def test_a_cap_below_two_tokens_a_domain_suggests_only_a_larger_max_tokens(tmp_path):
    # by hand: cap 5 over 4 domains at seq_len 16: a takes 5 tokens, b, c and d none; a --seq-len of
    # 5 // 4 = 1 (BOS alone) is no advice, so only --max-tokens 4 x 16 = 64; three names, all shown
    c = domains_corpus(tmp_path / "c", {"a": 50, "b": 50, "c": 50, "d": 50})
    stats = CorpusStats()
    assert [(w.domain, len(w.ids)) for w in read(c, "domains", max_tokens=5, stats=stats)] == [("a", 5)]
    assert stats.notes() == ["note: --max-tokens 5 left 3 of 4 domains without a token (b, c, d): each domain takes "
                             "a window of up to --seq-len 16 tokens in turn; pass a --max-tokens of at least 64 to "
                             "cover every domain"]


def test_the_fingerprint_hashes_each_files_path_in_the_corpus_and_its_bytes(tmp_path):
    # by hand: sha256 over (relative path, bytes) of each file in sorted order; a file moved to another
    # domain's folder, same name and bytes, is another corpus
    import hashlib

    c = domains_corpus(tmp_path / "c", {"a": 3, "b": 4})
    want = hashlib.sha256(b"a/d.txt" + (c / "a" / "d.txt").read_bytes() + b"b/d.txt" + (c / "b" / "d.txt").read_bytes())
    assert fingerprint(c) == want.hexdigest()
    before = fingerprint(c)
    (c / "e").mkdir()
    os.rename(c / "b" / "d.txt", c / "e" / "d.txt")
    assert fingerprint(c) != before


def test_a_bad_jsonl_record_is_named_by_its_line_number(tmp_path):
    # the third line (1-based) is not JSON, the second (blank lines count) has no text
    (tmp_path / "a.jsonl").write_text('{"text": "alpha"}\n{"id": 1}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "alpha"}\n\n{oops\n')
    for order in ORDERS:
        with pytest.raises(ValueError, match=r"a\.jsonl:2: a JSONL record needs a string field 'text'"):
            read(tmp_path / "a.jsonl", order)
        with pytest.raises(ValueError, match=r"b\.jsonl:3: not valid JSON"):
            read(tmp_path / "b.jsonl", order)


def test_json_that_python_cannot_read_is_named_by_its_line_number(tmp_path):
    """Valid JSON that json.loads refuses with another error than JSONDecodeError: an integer of more
    than 4,300 digits (Python's limit on int() of a string; a ValueError naming no file) and arrays
    nested deeper than the interpreter's recursion limit (a RecursionError traceback)."""
    big, deep = tmp_path / "big.jsonl", tmp_path / "deep.jsonl"
    big.write_text('{"text": "alpha"}\n{"text": "beta", "id": ' + "7" * 5000 + "}\n")
    deep.write_text('{"text": "alpha", "id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    for order in ORDERS:
        with pytest.raises(ValueError, match=r"big\.jsonl:2: JSON that Python cannot read \(Exceeds the limit"):
            read(big, order)
        with pytest.raises(ValueError, match=r"deep\.jsonl:1: JSON that Python cannot read \(maximum recursion"):
            read(deep, order)


def test_a_file_written_again_within_its_filesystems_time_tick_is_hashed_again(tmp_path, monkeypatch):
    """The fingerprint was kept while a file's inode, size and times stayed; a file written again with as many
    bytes within one tick of the filesystem's clock (coarse kernel timestamps, NFS's or FAT's seconds) keeps
    them all, and its first sha256 stood for the new bytes (a review). Here every write lands in one tick."""
    import hashlib
    import time
    from pathlib import Path
    from types import SimpleNamespace

    f = tmp_path / "c.txt"
    f.write_text("alpha beta")
    real, now = os.stat(f), time.time_ns()
    tick = SimpleNamespace(st_mode=real.st_mode, st_ino=real.st_ino, st_size=real.st_size, st_mtime_ns=now,
                           st_ctime_ns=now)
    stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **k: tick if self == f else stat(self, **k))
    assert fingerprint(f) == hashlib.sha256(b"c.txt" + b"alpha beta").hexdigest()
    f.write_text("gamma zeta")  # as many bytes, the same inode and times
    assert fingerprint(f) == hashlib.sha256(b"c.txt" + b"gamma zeta").hexdigest()


def test_a_domain_or_id_that_is_a_list_an_object_or_bytes_is_named(tmp_path):
    """A JSONL domain or id that is an object or an array, and a Parquet domain or id column of lists,
    structs or bytes, were read as Python's repr of each value: the domain "{'lang': 'en'}" or "b'code'",
    silently. They are one line naming the file (and line) and the field; numbers and booleans stay
    domains as strings (test_a_domain_0_or_false_is_a_domain)."""
    cases = {}
    for n, (key, value, kind) in enumerate((("domain", {"lang": "en"}, "an object"), ("domain", ["code"], "an array"),
                                            ("id", [1, 2], "an array"))):
        p = tmp_path / f"j{n}.jsonl"
        p.write_text(json.dumps({"text": "alpha"}) + "\n" + json.dumps({"text": "beta", key: value}) + "\n")
        cases[p] = rf"j{n}\.jsonl:2: field '{key}' is {kind}; a record's domain and id are strings or numbers"
    for n, (key, column, kind) in enumerate((("domain", pa.array([b"code", b"prose"]), "binary"),
                                             ("domain", pa.array([["code"], ["prose"]]), "list<element: string>"),
                                             ("id", pa.array([{"n": 1}, {"n": 2}]), "struct<n: int64>"))):
        p = tmp_path / f"p{n}.parquet"
        pq.write_table(pa.table({"text": ["alpha", "beta"], key: column}), p)
        cases[p] = rf"p{n}\.parquet: the '{key}' column must hold strings or numbers, it holds {re.escape(kind)}"
    for path, says in cases.items():
        for order in ORDERS:
            with pytest.raises(ValueError, match=says):
                read(path, order)
    ok = tmp_path / "ok.parquet"  # the control: a pandas category column (a dictionary of strings) is names
    pq.write_table(pa.table({"text": ["alpha", "beta"], "domain": pa.array(["code", "prose"]).dictionary_encode(),
                             "id": [7, 8]}), ok)
    for order in ORDERS:
        assert sorted((w.domain, w.doc_id) for w in read(ok, order)) == [("code", "7"), ("prose", "8")]


def test_a_files_form_is_its_suffix_in_any_case(tmp_path):
    """notes.JSONL was read as one text document of JSON syntax, data.PARQUET skipped as a binary file (a bug hunt):
    the suffix decides in any case, in a folder and as the corpus itself, as lower case does."""
    from probe.corpus import domain_streams

    for upper in (False, True):
        root = tmp_path / f"upper-{upper}"
        (root / "code").mkdir(parents=True)
        j, p = ("a.JSONL", "b.PARQUET") if upper else ("a.jsonl", "b.parquet")
        (root / "code" / j).write_text(json.dumps({"text": "def f(): pass", "id": "j0"}) + "\n")
        pq.write_table(pa.table({"text": ["x = 1"], "id": ["p0"]}), root / "code" / p)
        stats = CorpusStats()
        docs = [(d.doc_id, d.domain, d.text) for d in iter_documents(root, stats)]
        assert docs == [("j0", "code", "def f(): pass"), ("p0", "code", "x = 1")], docs
        assert stats.skipped_binary == []
        streamed = sorted((d.doc_id, d.text) for ds in domain_streams(root).values() for d in ds)
        assert streamed == [("j0", "def f(): pass"), ("p0", "x = 1")]
        assert [d.doc_id for d in iter_documents(root / "code" / j)] == ["j0"]
        assert [d.doc_id for d in iter_documents(root / "code" / p)] == ["p0"]
