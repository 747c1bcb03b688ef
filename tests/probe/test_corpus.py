"""Corpus order: `--order domains` (the default) spreads a --max-tokens cap over every domain; the
same windows as corpus order when nothing is capped, for folders, JSONL and Parquet corpora."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import probe
from probe.bundled_corpus import read_documents
from probe.corpus import CorpusError, CorpusStats, corpus_windows
from probe.record import RecordError, RecordOptions, record

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def encode(text: str) -> list[int]:  # one token per word: token counts are easy to reason about
    return [WORDS.index(w) + 2 if w in WORDS else 1 for w in text.split()]


def folder_corpus(root, docs=(("code", [30, 50, 20]), ("math", [10, 10, 10, 10]), ("prose", [200]))):
    """Domain folders of documents with the given word counts (sorted path order: code, math, prose)."""
    rng = np.random.default_rng(0)
    for dom, lengths in docs:
        (root / dom).mkdir(parents=True)
        for i, n in enumerate(lengths):
            (root / dom / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS, n)))
    return root


def windows(path, order, max_tokens=None, seq_len=16):
    return list(corpus_windows(path, encode, seq_len, 0, max_tokens, order))


def test_a_cap_covers_every_domain_about_equally(tmp_path):
    c = folder_corpus(tmp_path / "c")
    capped = windows(c, "domains", max_tokens=90)
    per = Counter()
    for w in capped:
        per[w.domain] += len(w.ids)
    assert sum(per.values()) == 90 and set(per) == {"code", "math", "prose"}
    assert max(per.values()) - min(per.values()) <= 16  # within one window
    assert [w.seq_id for w in capped] == list(range(len(capped)))
    # corpus order: the same cap reads only the first folder (the behaviour --order corpus keeps)
    assert {w.domain for w in windows(c, "corpus", max_tokens=90)} == {"code"}


def test_a_domain_that_runs_out_leaves_the_rest_the_cap(tmp_path):
    c = folder_corpus(tmp_path / "c", docs=(("a", [5]), ("b", [300])))
    per = Counter()
    for w in windows(c, "domains", max_tokens=100):
        per[w.domain] += len(w.ids)
    assert per == {"a": 6, "b": 94}  # 5 words + BOS, then everything else from b


def test_the_stats_name_the_domains_the_cap_cut_not_those_that_ran_out(tmp_path):
    """What the report tells a cap that cut a domain from a corpus that holds little of it by (run.json's
    planned capped_domains): the domains with tokens taken and text left when the cap ended the windows."""
    def cut(c, order="domains", **kw):
        stats = CorpusStats()
        list(corpus_windows(c, encode, 16, 0, order=order, stats=stats, **kw))
        return stats.capped_domains

    c = folder_corpus(tmp_path / "c", docs=(("a", [5]), ("b", [300])))
    assert cut(c, max_tokens=100) == ["b"]  # a ran out (6 tokens), b's window was cut short
    assert cut(c) == [] and cut(c, "corpus") == []
    assert cut(c, "corpus", max_tokens=100) is None  # not known: the rest of the corpus is not read
    assert cut(folder_corpus(tmp_path / "d"), max_tokens=90) == ["code", "math", "prose"]
    # the cap reached at the end of both domains' last windows: nothing left, nothing cut
    assert cut(folder_corpus(tmp_path / "e", docs=(("a", [5]), ("b", [9]))), max_tokens=16) == []
    # a window taken whole to the cap, its domain with a window left
    assert cut(folder_corpus(tmp_path / "f", docs=(("a", [15, 3]),)), max_tokens=16) == ["a"]
    # a cap that leaves a domain without a token: starved, not cut
    stats = CorpusStats()
    list(corpus_windows(folder_corpus(tmp_path / "g"), encode, 16, 0, 10, "domains", stats))
    assert stats.capped_domains == ["code"] and stats.starved_domains == ["math", "prose"]


def test_a_file_past_the_cap_that_cannot_be_read_leaves_what_the_cap_cut_unknown(tmp_path):
    """Knowing whether the cap cut a domain reads on to its next window: a domain whose windows end at
    the cap with a file next that cannot be read (gone since the corpus was indexed) failed the capped
    record on a file it never needed (a review). What the cap cut is then not known (capped_domains
    None); the windows are the same."""
    from probe.corpus import domain_streams
    from probe.windows import balanced_windows

    def capped(max_tokens):
        c = folder_corpus(tmp_path / str(max_tokens), docs=(("a", [15]), ("b", [15, 15])))
        stats = CorpusStats()
        streams = domain_streams(c, stats)
        (c / "b" / "d1.txt").unlink(missing_ok=True)  # read only past a cap of 32 tokens
        return [(w.domain, len(w.ids)) for w in balanced_windows(streams, encode, 16, 0, max_tokens, stats)], stats

    got, stats = capped(32)
    assert got == [("a", 16), ("b", 16)] and stats.capped_domains is None and stats.starved_domains == []
    with pytest.raises(FileNotFoundError):  # a cap that needs the file still fails on it
        capped(48)


@pytest.mark.parametrize("kind", ["folder", "jsonl", "parquet", "folder_of_jsonl"])
def test_uncapped_domains_order_holds_the_same_windows(tmp_path, kind):
    rng = np.random.default_rng(1)
    recs = [{"text": " ".join(rng.choice(WORDS, int(n))), "domain": d, "id": f"{d}{i}"}
            for i, (n, d) in enumerate(zip(rng.integers(3, 60, 30), ["x", "y", "z"] * 10))]
    recs.sort(key=lambda r: r["domain"])  # a corpus stored domain by domain
    if kind == "folder":
        path = folder_corpus(tmp_path / "c")
    elif kind == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    elif kind == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(pa.Table.from_pylist(recs), path, row_group_size=7)  # several row groups
    else:
        path = tmp_path / "c"
        (path / "sub").mkdir(parents=True)
        for i in range(0, 30, 10):
            (path / "sub" / f"part{i}.jsonl").write_text("\n".join(json.dumps(r) for r in recs[i:i + 10]) + "\n")
    key = lambda w: (w.doc_id, w.doc_start, w.domain, w.ids.tobytes())  # noqa: E731
    a, b = windows(path, "corpus"), windows(path, "domains")
    assert sorted(map(key, a)) == sorted(map(key, b)) and len(a) > 10
    if kind != "folder":
        assert [w.domain for w in b[:3]] == ["x", "y", "z"]  # interleaved from the start


def test_line_separators_inside_json_strings_read_alike_in_both_orders(tmp_path):
    """U+2028, U+0085 and form feeds are legal inside a JSON string written unescaped: --order corpus
    used str.splitlines(), which splits on them, and refused the file (found by a review)."""
    path = tmp_path / "c.jsonl"
    recs = [{"text": "alpha\u2028beta \x85gamma\x0c delta", "domain": "x"}, {"text": "beta beta", "domain": "y"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    key = lambda w: (w.doc_id, w.domain, w.ids.tobytes())  # noqa: E731
    a, b = windows(path, "corpus"), windows(path, "domains")
    assert sorted(map(key, a)) == sorted(map(key, b)) and [w.doc_id for w in a] == ["c.jsonl:1", "c.jsonl:2"]


def test_the_domain_name_all_is_refused(tmp_path):
    """"all" names every domain's rows together in the analyses' tables; a corpus domain of that
    name is a one-line error, whatever holds it (a folder, a JSONL field, a Parquet column)."""
    folder = folder_corpus(tmp_path / "f", docs=(("all", [5]), ("b", [5])))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "alpha", "domain": "all"}) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "alpha", "domain": "all"}]), parquet)
    for path in (folder, jsonl, parquet):
        for order in ("corpus", "domains"):
            with pytest.raises(CorpusError, match="the domain name 'all' is reserved"):
                windows(path, order)


def test_a_parquet_text_column_that_is_not_strings_is_named(tmp_path):
    """Integers in `text` reached the tokenizer ("TextInputSequence must be str", a traceback; found
    by a review); a string column with a null is still read, the null skipped."""
    bad = tmp_path / "int.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), bad)
    good = tmp_path / "str.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", None, "gamma"]}), good)
    for order in ("corpus", "domains"):
        with pytest.raises(CorpusError, match=r"int.parquet: the 'text' column must hold strings, it holds int64"):
            windows(bad, order)
        assert windows(good, order)


def test_counts_and_replacements_are_the_same_in_both_orders(tmp_path):
    c = folder_corpus(tmp_path / "c")
    (c / "math" / "bad.txt").write_bytes(b"alpha \xff\xfe beta")
    s1, s2 = CorpusStats(), CorpusStats()
    list(corpus_windows(c, encode, 16, 0, None, "corpus", s1))
    list(corpus_windows(c, encode, 16, 0, None, "domains", s2))
    assert (s1.documents, s1.replaced_bytes, s1.files_with_replacements) == \
        (s2.documents, s2.replaced_bytes, s2.files_with_replacements) == (9, 2, ["math/bad.txt"])


def test_binary_files_in_a_corpus_folder_are_skipped_and_named(tmp_path):
    """A corpus folder that also holds weights or a tokenizer's binary (found by a new user pointing
    --corpus at a checkpoint folder) read them as text documents of U+FFFD; now they are skipped."""
    plain = windows(folder_corpus(tmp_path / "plain"), "domains")
    c = folder_corpus(tmp_path / "c")
    (c / "math" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(range(256)))
    (c / "code" / "text_then_nul.bin").write_bytes(b"alpha beta " * 10 + b"\0")
    for order in ("corpus", "domains"):
        stats = CorpusStats()
        got = list(corpus_windows(c, encode, 16, 0, None, order, stats))
        assert stats.skipped_binary == ["code/text_then_nul.bin", "math/model.safetensors"]
        assert stats.replaced_bytes == 0
        if order == "domains":
            assert [(w.doc_id, w.ids.tolist()) for w in got] == [(w.doc_id, w.ids.tolist()) for w in plain]
    pq.write_table(pa.table({"text": ["alpha beta"], "domain": ["prose"]}), c / "p.parquet")
    stats = CorpusStats()
    assert any(w.doc_id.startswith("p.parquet") for w in corpus_windows(c, encode, 16, 0, None, "corpus", stats))
    assert "p.parquet" not in stats.skipped_binary  # Parquet is binary, and read as records
    only = tmp_path / "weights"
    only.mkdir()
    (only / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CorpusError, match="weights: corpus directory has no text files .all 1 are binary"):
        windows(only, "domains")


def test_a_byte_order_mark_is_not_part_of_a_document(tmp_path):
    """Files saved by some Windows editors start with a UTF-8 byte-order mark: a JSONL file was
    refused ("not valid JSON (Unexpected UTF-8 BOM)", a review) and a .txt document began with
    U+FEFF. Both now read as without it, and the JSONL's offsets still find every record."""
    from probe.corpus import iter_documents

    c = tmp_path / "c"
    (c / "code").mkdir(parents=True)
    (c / "prose").mkdir()
    texts = ["alpha beta", "gamma delta", "epsilon"]  # a word with U+FEFF before it would encode as 1
    (c / "code" / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"text": t}) for t in texts[:2]).encode())
    (c / "prose" / "b.txt").write_bytes(b"\xef\xbb\xbf" + texts[2].encode())
    assert sorted(d.text for d in iter_documents(c)) == sorted(texts)
    for order in ("corpus", "domains"):  # the windows read the records by offset
        got = [w.ids.tolist() for w in corpus_windows(c, encode, 64, 0, None, order, CorpusStats())]
        assert sorted(got) == sorted([0] + encode(t) for t in texts), order
    f = tmp_path / "val.jsonl"  # the bundled corpus's reader too
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "x", "domain": "d"}).encode() + b"\n")
    assert read_documents(f, ("text", "domain"), CorpusError) == [{"text": "x", "domain": "d"}]


def test_bad_order_and_bad_records_are_one_line_errors(tmp_path):
    c = folder_corpus(tmp_path / "c")
    with pytest.raises(CorpusError, match="--order 'random'"):
        windows(c, "random")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "alpha"}\n{"txt": 1}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2: a JSONL record needs a string field 'text'"):
        windows(bad, "domains")


def test_record_spreads_max_tokens_and_records_the_order(probe_env, tmp_path):
    opts = dict(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), seq_len=32, batch_size=4,
                max_tokens=400, kv_stats=False, mtp=False, progress=False)
    spread = probe.open_run(record(RecordOptions(out=str(tmp_path / "a"), **opts)))
    per = spread.info["planned"]["tokens_per_domain"]
    assert set(per) == {"code", "prose"} and abs(per["code"] - per["prose"]) <= 32
    assert spread.info["options"]["order"] == "domains"
    assert spread.df("tokens").groupby("domain").size().to_dict() == per
    first = probe.open_run(record(RecordOptions(out=str(tmp_path / "b"), order="corpus", **opts)))
    assert first.info["planned"]["tokens_per_domain"] == {"code": 400}
    assert spread.info["planned"]["capped_domains"] == ["code", "prose"]  # the cap cut both (text left)
    assert "capped_domains" not in first.info["planned"]  # not known in corpus order under a cap
    with pytest.raises(RecordError, match="was recorded with --order corpus, this command gives domains"):
        record(RecordOptions(out=str(tmp_path / "b"), resume=True, **opts))


def test_read_documents_asks_for_the_callers_fields_and_raises_its_error(tmp_path):
    """The bundled corpus's reader (data.build_corpus and train.data share it): blank lines are
    skipped, each caller names the fields it needs and the error type it raises."""

    class CallerError(Exception):
        pass

    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a", "domain": "x"}\n\n{"text": "b", "domain": "y", "id": "2"}\n')
    assert [d["text"] for d in read_documents(p, ("text", "domain"), CallerError)] == ["a", "b"]
    with pytest.raises(CallerError, match=r"c.jsonl:1: a document needs string fields id, domain and text$"):
        read_documents(p, ("id", "domain", "text"), CallerError)
    p.write_text('{"text": "a", "domain": "x"}\n{"text": 3, "domain": "x"}\n')
    with pytest.raises(CallerError, match=r"c.jsonl:2: a document needs string fields text and domain$"):
        read_documents(p, ("text", "domain"), CallerError)
    p.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(CallerError, match=r"c.jsonl:2: not valid JSON"):
        read_documents(p, ("text",), CallerError)
    with pytest.raises(CallerError, match=r"missing.jsonl: not found \(build the corpus with"):
        read_documents(tmp_path / "missing.jsonl", ("text",), CallerError)
    with pytest.raises(CallerError, match=r": not found"):  # a directory is not a corpus file
        read_documents(tmp_path, ("text",), CallerError)
    # a byte that is not UTF-8 is named with its own line, past the first 8 KiB read (a traceback before)
    p.write_bytes(b'{"text": "a"}\n' * 2000 + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CallerError, match=r"c.jsonl:2001: not valid UTF-8 \("):
        read_documents(p, ("text",), CallerError)


def test_hidden_folders_linked_folders_and_broken_links(tmp_path):
    """What a real folder holds (a review): .git was read as a domain and hidden files dropped without
    a word; folders behind a symbolic link were not read (rglob does not follow them); a broken link
    and an unreadable folder vanished silently. Now: hidden paths are not read (said in the error of
    a folder that holds only those), linked folders are read once each (a link to an ancestor ends),
    and a broken link or an unreadable folder is a one-line error naming it."""
    import os

    c = folder_corpus(tmp_path / "c")
    (c / ".git").mkdir()
    (c / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (c / "prose" / ".notes.txt").write_text("alpha " * 50)
    elsewhere = folder_corpus(tmp_path / "elsewhere", docs=(("wiki", [12, 7]),))
    (c / "wiki").symlink_to(elsewhere / "wiki")
    (c / "math" / "loop").symlink_to(c)  # a link to an ancestor: walked once
    stats = CorpusStats()
    got = list(corpus_windows(c, encode, 16, 0, None, "corpus", stats))
    assert sorted({w.domain for w in got}) == ["code", "math", "prose", "wiki"]
    assert sorted({w.doc_id for w in got if w.domain == "wiki"}) == ["wiki/d0.txt", "wiki/d1.txt"]
    assert stats.documents == 3 + 4 + 1 + 2
    hidden = tmp_path / "hidden"
    (hidden / ".git").mkdir(parents=True)
    (hidden / ".x.txt").write_text("alpha")
    with pytest.raises(CorpusError, match=r"hidden: corpus directory has no files \(names starting with '\.'"):
        windows(hidden, "corpus")
    (c / "prose" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(CorpusError, match=r"prose/gone.txt: a broken symbolic link in the corpus"):
        windows(c, "domains")
    (c / "prose" / "gone.txt").unlink()
    real_scandir = os.scandir

    def denied(path="."):  # a folder this user may not list (root may list a chmod-000 one: faked)
        if str(path).endswith("code"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "scandir", denied)
        with pytest.raises(CorpusError, match=r"c/code: cannot read this folder of the corpus \(Permission denied\)"):
            windows(c, "corpus")


def test_utf16_and_utf32_text_null_ids_and_a_binary_file_given_alone(tmp_path):
    """A UTF-16 file of Chinese text (no NUL byte) was decoded as UTF-8 mojibake, and English UTF-16
    skipped as binary; a JSONL "id": null became the id "None" of every such record; a gzip'd file
    given as --corpus was read as text (a review)."""
    from probe.corpus import iter_documents

    c = tmp_path / "c"
    (c / "zh").mkdir(parents=True)
    (c / "en").mkdir()
    (c / "zh" / "u16.txt").write_bytes("中文文本测试。".encode("utf-16"))
    (c / "en" / "u16.txt").write_bytes("alpha beta".encode("utf-16-be").join([codecs_bom("utf-16-be"), b""]))
    (c / "en" / "u32.txt").write_bytes("gamma".encode("utf-32"))
    (c / "en" / "n.jsonl").write_text("\n".join(json.dumps({"text": t, "id": None}) for t in ("delta", "eta")))
    stats = CorpusStats()
    docs = {d.doc_id: d.text for d in iter_documents(c, stats)}
    assert docs == {"zh/u16.txt": "中文文本测试。", "en/u16.txt": "alpha beta", "en/u32.txt": "gamma",
                    "en/n.jsonl:1": "delta", "en/n.jsonl:2": "eta"}
    assert stats.replaced_bytes == 0 and stats.skipped_binary == [] and stats.replaced_note() is None
    ids = sorted(w.doc_id for w in corpus_windows(c, encode, 16, 0, None, "domains", CorpusStats()))
    assert ids == sorted(docs)  # the lazy, offset-reading order too
    (tmp_path / "bad.txt").write_bytes(b"alpha \xff\xfe beta")
    s = CorpusStats()
    list(iter_documents(tmp_path / "bad.txt", s))
    assert s.replaced_note() == ("note: 2 byte(s) that are not UTF-8 replaced by U+FFFD in 1 file(s) (bad.txt): "
                                 "convert them to UTF-8 if they are text in another encoding")
    gz = tmp_path / "corpus.txt.gz"
    import gzip

    gz.write_bytes(gzip.compress(b"alpha beta " * 100))
    with pytest.raises(CorpusError, match=r"corpus.txt.gz: not a text file \(a NUL byte in its first 8 KiB"):
        windows(gz, "corpus")


def codecs_bom(encoding: str) -> bytes:
    import codecs

    return {"utf-16-be": codecs.BOM_UTF16_BE, "utf-16-le": codecs.BOM_UTF16_LE}[encoding]


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_long_document_is_tokenised_in_pieces_to_the_same_ids(tmp_path):
    """A document is tokenised in pieces cut before a single space between non-space characters, so a
    cap reads only what it needs (a 21 MB document took 5.6 GB for 3,000 tokens, a review): with the
    bundled byte-level BPE tokenizer, on every domain of the bundled validation corpus (Chinese,
    code, math, prose) joined into one document, the pieces' ids are the whole text's, and so are the
    windows. Control: pieces cut anywhere (in a word) give other ids."""
    from pathlib import Path

    from tokenizers import Tokenizer

    from probe import corpus as C
    from probe import windows as W

    repo = Path(__file__).resolve().parents[2]
    tok = Tokenizer.from_file(str(repo / "data" / "model" / "tokenizer.json"))
    enc = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    docs = read_documents(repo / "data" / "corpus" / "val.jsonl", ("text", "domain"), CorpusError)
    text = "\n\n".join(d["text"] for d in docs[::4])[:400_000]
    assert {d["domain"] for d in docs[::4]} >= {"chinese", "code", "math"}
    pieces = list(W.text_pieces(text, 3000))
    assert len(pieces) > 50 and "".join(pieces) == text
    whole = enc(text)
    assert [i for p in pieces for i in enc(p)] == whole
    cuts = [text[i : i + 2999] for i in range(0, len(text), 2999)]  # control: cut anywhere
    assert [i for p in cuts for i in enc(p)] != whole
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W, "PIECE_CHARS", 3000)
        got = [w.ids.tolist() for w in W.iter_windows(iter([C.Document("d", "x", text)]), enc, 256, 0)]
    want = [0, *whole]
    assert got == [want[i : i + 256] for i in range(0, len(want), 256)]
    assert W.text_pieces("中文" * 5000, 3000).__next__() == "中文" * 5000  # no space to cut at: whole


def test_the_cap_balances_tokens_not_windows(tmp_path):
    """Each next window comes from the domain with the fewest *tokens* so far: counting windows
    instead gave a domain of one-word documents (2-token windows with BOS) a few tokens against the
    other's full windows, and the cap no longer covered the domains equally (a review). By hand,
    seq_len 16, cap 64: a 2, b 16, a 4..16 (tie with b, a by name) 18, b 32, a 20..32: 32 each."""
    c = folder_corpus(tmp_path / "c", docs=(("a", [1] * 40), ("b", [200])))
    got = windows(c, "domains", max_tokens=64)
    per = Counter()
    for w in got:
        per[w.domain] += len(w.ids)
    assert per == {"a": 32, "b": 32}
    assert [w.domain for w in got] == ["a", "b"] + ["a"] * 8 + ["b"] + ["a"] * 7


def test_the_domain_of_a_nested_file_is_its_first_folder(tmp_path):
    """The domain is the first sub-folder under the corpus directory, however deep the file lies:
    taking the file's own folder made `code/py/a.txt` the domain "py" (a review)."""
    c = tmp_path / "c"
    (c / "code" / "py" / "deep").mkdir(parents=True)
    (c / "math").mkdir()
    (c / "code" / "py" / "a.txt").write_text("alpha beta")
    (c / "code" / "py" / "deep" / "b.txt").write_text("gamma")
    (c / "code" / "c.txt").write_text("delta")
    (c / "math" / "d.txt").write_text("eta")
    (c / "top.txt").write_text("iota")
    want = {"code/c.txt": "code", "code/py/a.txt": "code", "code/py/deep/b.txt": "code", "math/d.txt": "math",
            "top.txt": "default"}
    for order in ("corpus", "domains"):
        assert {w.doc_id: w.domain for w in windows(c, order)} == want, order


def test_windows_of_a_document_read_in_pieces_start_where_their_tokens_do(tmp_path):
    """A document longer than PIECE_CHARS is tokenised piece by piece; each window's doc_start (the
    tokens table's doc_pos) must still count from the document's first token: counting from the
    current piece's start repeated positions 0, 16, ... in every piece (a review). By hand: BOS then
    one token per word, windows of 16 at 0, 16, 32, ... holding exactly those tokens."""
    from probe import windows as W

    rng = np.random.default_rng(3)
    text = " ".join(rng.choice(WORDS, 300))
    want = [0, *encode(text)]
    path = tmp_path / "c"
    (path / "x").mkdir(parents=True)
    (path / "x" / "long.txt").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W, "PIECE_CHARS", 100)  # ~16 words a piece: many pieces, cut off window boundaries
        assert len(list(W.text_pieces(text))) > 10
        for order in ("corpus", "domains"):
            got = windows(path, order)
            assert [w.doc_start for w in got] == list(range(0, len(want), 16)), order
            assert all(w.ids.tolist() == want[w.doc_start : w.doc_start + 16] for w in got), order


def test_parquet_rows_after_nulls_in_several_row_groups(tmp_path):
    """Null texts are skipped; the lazy reader (--order domains) finds a document by its index among
    the non-null rows through the row groups' counts of non-null texts: counting every row put the
    documents after a null in the wrong group (an IndexError, or another row's text; a review). A
    document without an id is named by its 1-based row in the file, nulls counted."""
    texts = ["alpha", None, "beta beta", "gamma", None, None, "delta", "eta iota", None, "kappa"]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    want = [(f"c.parquet:{i + 1}", [0, *encode(t)]) for i, t in enumerate(texts) if t is not None]
    for order in ("corpus", "domains"):
        assert [(w.doc_id, w.ids.tolist()) for w in windows(path, order)] == want, order


def test_a_document_without_a_token_gives_no_window(tmp_path):
    """An empty or blank document has no token: it gives no window (a window of BOS alone made an empty
    text file a "complete" one-token run), in both orders; a domain of such documents gives none."""
    c = tmp_path / "c"
    for rel, text in (("a/d0.txt", "alpha beta"), ("a/empty.txt", ""), ("b/blank.txt", "  \n ")):
        (c / rel).parent.mkdir(parents=True, exist_ok=True)
        (c / rel).write_text(text)
    for order in ("corpus", "domains"):
        got = windows(c, order)
        assert [(w.doc_id, w.ids.tolist()) for w in got] == [("a/d0.txt", [0, 2, 3])], order


def test_the_names_moved_out_of_probe_corpus_still_import_from_it():
    """probe/corpus.py's token windows moved to probe/windows.py and the bundled corpus's reader to
    probe/bundled_corpus.py; users' `from probe.corpus import Window` (notebooks, scripts) keeps working,
    and gives the same objects as the new homes."""
    from probe import bundled_corpus, corpus, windows

    assert corpus.Window is windows.Window and corpus.iter_windows is windows.iter_windows
    assert corpus.text_pieces is windows.text_pieces
    assert corpus.read_documents is bundled_corpus.read_documents
