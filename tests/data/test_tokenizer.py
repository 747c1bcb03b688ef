"""The bundled tokenizer and the data commands' shared input checks: the committed validation split
against its manifest, round trips, deterministic training, data.tokenizer and data.report refusing bad
input before writing (the corpus recipe: test_data.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data import build_corpus as bc
from data.mathgen import math_document
from data.tokenizer import BASE_VOCAB, BOS, EOS, PAD, SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from helpers.source_texts import PLAY, REVIEWS

DATA = Path(__file__).resolve().parents[2] / "data"


# --------------------------------------------------------------------------------------- tokenizer
def test_committed_validation_split_matches_its_manifest():
    manifest = json.loads((DATA / "corpus" / "manifest.json").read_text())
    val = DATA / "corpus" / "val.jsonl"
    assert bc.sha256_file(val) == manifest["files"]["val.jsonl"]["sha256"]
    docs = bc.read_jsonl(val)
    assert {d["domain"] for d in docs} == set(bc.DOMAINS)
    assert len(docs) == manifest["files"]["val.jsonl"]["documents"]
    by_id = {d["id"]: d for d in docs}
    assert [d["val"] for d in manifest["cross_split_duplicates"]] == ["technical/if/0000"]
    assert all(len(by_id[d["val"]]["text"]) == d["chars"] for d in manifest["cross_split_duplicates"])
    assert manifest["math_chars"] == 2_500_000 and manifest["selected_domains"] == list(bc.DOMAINS)


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_tokenizer_round_trips_every_domain_of_the_validation_split():
    tok = load_tokenizer(DATA / "tokenizer.json")
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == [BOS, EOS, PAD]
    assert tok.get_vocab_size() == 4096
    docs = bc.read_jsonl(DATA / "corpus" / "val.jsonl")
    by_domain: dict[str, list[int]] = {}
    encodings = tok.encode_batch([d["text"] for d in docs])
    for d, enc in zip(docs, encodings):
        assert tok.decode(enc.ids, skip_special_tokens=False) == d["text"], d["id"]
        stats = by_domain.setdefault(d["domain"], [0, 0])
        stats[0] += len(d["text"].encode("utf-8"))
        stats[1] += len(enc.ids)
    assert set(by_domain) == set(bc.DOMAINS)
    for domain, (nbytes, ntok) in by_domain.items():
        assert nbytes / ntok > 1.3, domain  # BPE merges something in every domain, Chinese included


def test_tokenizer_training_is_deterministic_and_exact():
    texts = [math_document(random.Random(f"t{i}"), 800) for i in range(20)] + [REVIEWS, PLAY]
    a, b = train_tokenizer(texts, vocab_size=400), train_tokenizer(texts, vocab_size=400)
    assert a.to_str() == b.to_str()
    for s in ("x = 12345 / 7", "同胞们、朋友们：\n\t  mixed  spaces\r\n", "\u00e9\u0301 emoji \U0001f600"):
        ids = a.encode(s).ids
        assert a.decode(ids, skip_special_tokens=False) == s
    assert len(a.encode("2024").ids) == 4  # digits are never merged
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)


def test_a_vocabulary_larger_than_the_text_can_merge_into_trains_what_it_can():
    # the trainer allocated for vocab_size up front: 10**12 aborted the process in Rust
    texts = ["abab cdcd", "abab"]
    big = train_tokenizer(texts, vocab_size=10**12)
    assert big.to_str() == train_tokenizer(texts, vocab_size=BASE_VOCAB + 100).to_str()
    assert BASE_VOCAB < big.get_vocab_size() < BASE_VOCAB + 13  # 13 bytes of text


def test_tokenizer_command_checks_everything_before_writing(tmp_path, capsys):
    """A broken val.jsonl, a negative --min-frequency or an empty train split is one line, and no
    tokenizer.json is written (the first was a traceback after the file had been written)."""
    import tokenizers

    from data import tokenizer

    docs = [json.dumps({"id": f"d{i}", "domain": "code", "text": f"def f{i}(x): return x * {i}"}) for i in range(20)]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train.jsonl").write_text("\n".join(docs) + "\n")
    (tmp_path / "c" / "val.jsonl").write_text('{"id": "x", "domain": "math"}\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    out = tmp_path / "tok.json"
    for args, msg in ((["--corpus", str(tmp_path / "c")], "val.jsonl:1: a document needs string fields"),
                      (["--corpus", str(tmp_path / "c"), "--min-frequency", "-3"], "--min-frequency -3: must be >= 0"),
                      (["--corpus", str(tmp_path / "empty")], "train.jsonl: no documents to learn merges from")):
        with pytest.raises(SystemExit) as e:
            tokenizer.main([*args, "--out", str(out), "--vocab-size", "300"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    with pytest.raises(SystemExit) as e:  # the flag is named (it said vocab_size=100)
        tokenizer.main(["--corpus", str(tmp_path / "c"), "--out", str(out), "--vocab-size", "100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --vocab-size 100: must exceed 259") and not out.exists()
    (tmp_path / "c" / "val.jsonl").write_text(docs[0] + "\n")  # the control
    tokenizer.main(["--corpus", str(tmp_path / "c"), "--out", str(out), "--vocab-size", "265"])
    said = capsys.readouterr()
    assert out.exists() and "round trip 1/1 docs" in said.out and "(vocab 265)" in said.out and not said.err
    # more than this corpus can merge: the smaller vocabulary is said, not left to be found
    tokenizer.main(["--corpus", str(tmp_path / "c"), "--out", str(out), "--vocab-size", "5000"])
    said = capsys.readouterr()
    vocab = tokenizers.Tokenizer.from_file(str(out)).get_vocab_size()
    assert vocab < 5000 and f"(vocab {vocab})" in said.out
    assert said.err.startswith("note: --vocab-size 5000 asked for more: the corpus has no further pair seen "
                               "at least 2 times (--min-frequency) to merge")


def test_report_checks_and_input_errors(tmp_path, capsys):
    """`python -m data.report`: each check can fail on its own (here only the unigram one does), and a
    missing checkpoint or split is a one-line error naming it, before anything is recorded."""
    from data import report

    f = {"loss": {"code": 2.0, "math": 3.0}, "uni": {"code": 5.0, "math": 2.5}, "agree": 0.45,
         "layers": {1: {"maxvio": 0.2, "nmi": 0.15, "balancedness": 0.8}}, "layers_b": {1: {"maxvio": 0.5, "nmi": 0.1}}}
    got = dict(report.checks(f))
    assert len(got) == 5 and not got["loss below the unigram baseline on every domain"]
    assert all(ok for name, ok in got.items() if not name.startswith("loss below"))
    f["layers_b"][1]["maxvio"] = 0.1
    assert not dict(report.checks(f))["balanced model has lower MaxVio_global than the no-balancing one on every layer"]
    assert report.main(["--model", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none'}: no such directory" in capsys.readouterr().err
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(tmp_path / "train.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --train ") and "no such file" in err and len(err.splitlines()) == 1
    # a split that is not JSON lines, or whose documents lack a field, is named with its line
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "cut off\n')
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:3: not valid JSON") and len(err.splitlines()) == 1
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "fine"}\n')
    bad.write_text('{"domain": "code"}\n')
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(good), "--corpus", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}:1: a document needs string fields domain and text")
    # bad numbers and an --out under a file are one line before any recording (they were a traceback,
    # the second after both models had been recorded)
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(good), "--max-tokens", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-tokens must be >= 1")
    (tmp_path / "afile").write_text("x")
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(good), "--out",
                        str(tmp_path / "afile" / "REPORT.md")]) == 2
    assert "afile is a file, not a directory" in capsys.readouterr().err
    assert report.main(["--baseline", str(DATA / "model"), "--train", str(good), "--out", str(tmp_path / "R.md"),
                        "--runs-dir", str(tmp_path / "afile")]) == 2  # it was named --out .../report-model
    afile = tmp_path / "afile"
    assert capsys.readouterr().err == f"error: --runs-dir {afile}: {afile} is a file, not a directory\n"
    # the report names the runs where --runs-dir put them (it said runs/ whatever it was; a review)
    assert report._shown(report.REPO / "runs", "report-model") == "runs/report-model"
    assert report._shown(tmp_path / "elsewhere", "report-model") == str(tmp_path / "elsewhere" / "report-model")


def test_a_split_that_is_not_utf8_is_named_by_each_command(tmp_path, capsys):
    """A corpus .jsonl with a byte that is not UTF-8 is one line naming the file and its line for the
    tokenizer, the report and training (a UnicodeDecodeError traceback, or a message naming no file)."""
    from data import report, tokenizer
    from train.__main__ import main as train_main

    good = json.dumps({"id": "a", "domain": "code", "text": "def f(x): return x"})
    corpus = tmp_path / "c"
    corpus.mkdir()
    bad = corpus / "train.jsonl"
    bad.write_bytes(good.encode() + b"\n" + b'{"id": "b", "domain": "code", "text": "caf\xe9"}\n')
    want = f"error: {bad}:2: not valid UTF-8 ("
    runs = [lambda: tokenizer.main(["--corpus", str(corpus), "--out", str(tmp_path / "tok.json")]),
            lambda: train_main(["--corpus", str(corpus), "--tokenizer", str(DATA / "tokenizer.json"), "--config",
                                "tiny", "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"])]
    for job in runs:
        with pytest.raises(SystemExit) as e:
            job()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(want) and len(err.splitlines()) == 1, err
    fine = tmp_path / "fine.jsonl"
    fine.write_text(good + "\n")
    for splits in (["--train", str(bad), "--corpus", str(fine)], ["--train", str(fine), "--corpus", str(bad)]):
        assert report.main(["--baseline", str(DATA / "model"), *splits, "--out", str(tmp_path / "R.md")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(want) and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("argv", [["build_corpus", "--out"], ["build_corpus", "--cache"], ["tokenizer", "--out"],
                                  ["tokenizer", "--corpus"]])
def test_an_empty_path_flag_is_refused_not_taken_for_the_current_folder(argv, capsys, tmp_path, monkeypatch):
    # Path('') is '.': build_corpus --out '' wrote train.jsonl, val.jsonl and manifest.json into the current folder
    from data import tokenizer

    monkeypatch.chdir(tmp_path)
    main, rest = {"build_corpus": (bc.main, ["--offline", "--domains", "math", "--math-chars", "2000", "--out",
                                            str(tmp_path / "o"), "--cache", str(tmp_path / "c")]),
                  "tokenizer": (tokenizer.main, ["--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "t.json")])
                  }[argv[0]]  # everything under tmp_path: the flag tested comes last and wins
    with pytest.raises(SystemExit) as e:
        main([*rest, argv[1], ""])
    assert not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith(f"error: argument {argv[1]}: an empty path (for the current folder, give .)\n")
