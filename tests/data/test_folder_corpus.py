"""`python -m data.build_corpus --source DIR`: a training corpus from a folder of one's own texts, a
sub-folder per domain, with the awkward files a real folder holds (another encoding, an empty file, a
link back up the tree, one domain of a single long line, CRLF line ends). In tmp_path."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

from data import build_corpus as bc
from data.folder_corpus import DOC_CHARS

WORDS = "the quick brown fox jumps over a lazy dog near the river".split()


def _prose(n: int, sep: str = "\n", seed: int = 0) -> str:
    return (sep * 2).join(" ".join(WORDS[(i * 7 + k * (seed + 1)) % len(WORDS)] for k in range(60)) + f" {seed}.{i}"
                          for i in range(n))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    for d in ("prose", "weird", "huge", "crlf"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        (root / "prose" / f"p{i}.txt").write_text(_prose(30, seed=i))
    (root / "weird" / "latin1.txt").write_bytes(("Café déjà vu. " * 40).encode("latin-1"))
    (root / "weird" / "empty.txt").write_bytes(b"")
    (root / "weird" / "ok.txt").write_text(_prose(5, seed=5))
    os.symlink("..", root / "weird" / "loop")  # back up to the corpus folder: its files are read once
    (root / "huge" / "oneline.txt").write_text(" ".join(WORDS[i % len(WORDS)] for i in range(8000)))
    (root / "crlf" / "win.txt").write_bytes(_prose(40, "\r\n", seed=4).encode())
    return root


def _read(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_folder_of_domains_becomes_both_splits_with_its_text_kept(folder, tmp_path, capsys):
    """Every domain is the sub-folder's name and lands on both sides of the split; the single long line
    is cut at spaces into documents of about DOC_CHARS characters (one document before: no validation
    text for its domain, and no cap could cut it), whose pieces join back to the file's text; the empty
    file is named, counted and left out; the latin-1 file's bytes are replaced and counted."""
    out = tmp_path / "corpus"
    bc.main(["--source", str(folder), "--out", str(out), "--max-chars", "0"])
    err = capsys.readouterr().err
    docs = _read(out, "train") + _read(out, "val")
    m = json.loads((out / "manifest.json").read_text())
    assert sorted({d["domain"] for d in docs}) == ["crlf", "huge", "prose", "weird"]
    assert all(set(m["domains"][d]) == {"train", "val"} for d in m["domains"]), m["domains"]
    huge = sorted((d for d in docs if d["domain"] == "huge"), key=lambda d: d["id"])
    assert len(huge) > 5 and max(len(d["text"]) for d in huge) <= 1.5 * DOC_CHARS
    assert "".join(d["text"] for d in huge) == (folder / "huge" / "oneline.txt").read_text() + "\n"
    crlf = "".join(d["text"] for d in sorted(docs, key=lambda d: d["id"]) if d["domain"] == "crlf")
    assert crlf.count("\r\n") >= (folder / "crlf" / "win.txt").read_bytes().count(b"\r\n") - 2  # a blank line a cut
    assert m["source"]["short_documents"] == ["weird/empty.txt"] and "weird/empty.txt" in err
    assert m["source"]["files_with_replacements"] == ["weird/latin1.txt"]
    assert m["source"]["replaced_bytes"] == 120  # é, é and à, 40 times
    assert not any("loop" in d["id"] for d in docs) and "sdists" not in m
    assert [d["id"] for d in docs if d["domain"] == "prose"].count("prose/p0.txt/0000") == 1
    assert {d["source"] for d in docs} == {"folder:texts"}


def test_the_same_folder_and_flags_give_the_same_bytes(folder, tmp_path):
    for name in ("a", "b"):
        bc.main(["--source", str(folder), "--out", str(tmp_path / name), "--max-chars", "20000", "--seed", "3"])
    for f in ("train.jsonl", "val.jsonl", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_short_documents_are_kept_whole_or_named_never_cut_short(tmp_path, capsys):
    """The recipe drops pieces under 200 characters: a user's short files, and the short tail of a long
    one, went without a word. From a folder, a document is kept whole or left out with a note, and
    --min-chars 1 keeps every non-empty one."""
    root = tmp_path / "texts" / "notes"
    root.mkdir(parents=True)
    (root / "short.txt").write_text("a short note\n")
    (root / "long.txt").write_text(_prose(14) + "\n\nthe end.\n")  # 4,062 characters, then a tail of 9
    bc.main(["--source", str(tmp_path / "texts"), "--out", str(tmp_path / "a"), "--max-chars", "0"])
    assert "notes/short.txt" in capsys.readouterr().err
    docs = sorted(_read(tmp_path / "a", "train") + _read(tmp_path / "a", "val"), key=lambda d: d["id"])
    assert [d["id"].rsplit("/", 1)[0] for d in docs] == ["notes/long.txt"] * len(docs)
    assert docs[-1]["text"].endswith("the end.\n")
    bc.main(["--source", str(tmp_path / "texts"), "--out", str(tmp_path / "b"), "--max-chars", "0",
             "--min-chars", "1"])
    ids = [d["id"] for d in _read(tmp_path / "b", "train") + _read(tmp_path / "b", "val")]
    assert "notes/short.txt/0000" in ids


def test_domains_picks_among_the_folders(folder, tmp_path, capsys):
    bc.main(["--source", str(folder), "--out", str(tmp_path / "a"), "--domains", "prose,crlf"])
    assert {d["domain"] for d in _read(tmp_path / "a", "train")} == {"crlf", "prose"}
    with pytest.raises(SystemExit) as e:
        bc.main(["--source", str(folder), "--out", str(tmp_path / "b"), "--domains", "prose,math"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --domains: math not in --source {folder} (its domains: crlf, huge, prose, weird)")


@pytest.mark.parametrize("case", ["missing", "out-inside"])
def test_bad_input_is_one_line_when_run_as_a_module(folder, tmp_path, monkeypatch, capsys, case):
    """Run as `python -m data.build_corpus` the module is `__main__`, another copy than the
    `data.build_corpus` that data.folder_corpus imports: an error raised with that copy's CorpusError
    escaped `main`'s handler as a traceback. Run here the way the command runs."""
    source, out = (tmp_path / "nope", tmp_path / "a") if case == "missing" else (folder, folder / "corpus")
    monkeypatch.setattr(sys, "argv", ["build_corpus", "--source", str(source), "--out", str(out)])
    monkeypatch.delitem(sys.modules, "data.build_corpus")  # as a fresh `python -m` finds it
    monkeypatch.delitem(sys.modules, "data.folder_corpus", raising=False)
    with pytest.raises(SystemExit) as e:
        runpy.run_module("data.build_corpus", run_name="__main__", alter_sys=True)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --source {source}: corpus not found" if case == "missing" else
                   f"error: --out {out}: lies inside --source {folder}, whose every file is read as a document; "
                   "write the corpus elsewhere")
    assert not out.exists()


def test_a_domain_of_one_document_is_not_blamed_on_the_cap_it_was_under(tmp_path, capsys):
    """A folder's domain of one short file cannot be split whatever --max-chars is: the note told the
    user to raise --max-chars for two or more documents, which gave none. It still does where the cap
    cut the domain."""
    for d in ("one", "many"):
        (tmp_path / "texts" / d).mkdir(parents=True)
    (tmp_path / "texts" / "one" / "a.txt").write_text(_prose(2))
    for i in range(4):
        (tmp_path / "texts" / "many" / f"{i}.txt").write_text(_prose(2, seed=i))
    bc.main(["--source", str(tmp_path / "texts"), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "no validation document for one " in err and "--max-chars" not in err, err
    bc.main(["--source", str(tmp_path / "texts"), "--out", str(tmp_path / "b"), "--max-chars", "10"])
    err = capsys.readouterr().err
    assert "no validation document for many, one " in err and "--max-chars 10 kept one" in err, err


def test_a_built_corpus_is_refused_as_the_source_of_another(folder, tmp_path, capsys):
    """--source read the folder of a corpus built before as texts: its manifest.json was a training document
    of domain `default`, and its two splits were pooled and split again, without a word. A folder whose
    manifest.json is the user's own is texts as before."""
    bc.main(["--source", str(folder), "--out", str(tmp_path / "a"), "--domains", "prose"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        bc.main(["--source", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --source {tmp_path / 'a'}: a corpus that data.build_corpus wrote, whose manifest.json would be "
        "read as a document of domain 'default' and its two splits as one corpus; train on it as it is (python -m "
        f"train --corpus {tmp_path / 'a'}), or build from the folder of texts it was built from\n")
    assert not (tmp_path / "b").exists()
    (folder / "prose" / "manifest.json").write_text('{"files": ["my", "own"]}')
    bc.main(["--source", str(folder / "prose"), "--out", str(tmp_path / "c"), "--min-chars", "1"])
    assert "manifest.json" in {d["id"].split("/")[0] for d in _read(tmp_path / "c", "train")
                               + _read(tmp_path / "c", "val")}


@pytest.mark.parametrize("source, args, said", [
    (True, ["--math-chars", "4000"], "--math-chars: the five sources' flag, not read with --source {src}; leave it out"),
    (True, ["--offline", "--cache", "c"], "--cache, --offline: the five sources' flags, not read with --source {src}; "
                                          "leave them out"),
    (False, ["--min-chars", "1"], "--min-chars 1: --source's flag (the five sources' documents are cut at 200 "
                                  "characters); pass --source DIR, or leave it out")])
def test_a_flag_of_the_other_kind_of_build_is_refused_not_ignored(folder, tmp_path, capsys, source, args, said):
    """--min-chars without --source, and the five sources' --math-chars, --cache and --offline with it, were
    read by nothing: the build went on as if they were not given, and the manifest recorded --min-chars' value
    for a build that had not used it."""
    with pytest.raises(SystemExit) as e:
        bc.main(["--source", str(folder)] * source + ["--out", str(tmp_path / "a"), *args])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {said.format(src=folder)}\n"
    assert not (tmp_path / "a").exists()
