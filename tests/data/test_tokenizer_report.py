"""data.tokenizer's limits and command output, and data.report's figures, checks and page, against
hand computations (no recording: `measure` is replaced where the command runs)."""

from __future__ import annotations

import json
import math
import random
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from data import report, tokenizer
from data.build_corpus import CorpusError
from data.mathgen import math_document
from helpers import random_model

DATA = Path(__file__).resolve().parents[2] / "data"
TEXTS = [math_document(random.Random(f"tok{i}"), 600) for i in range(10)] + ["这本书很好，推荐给朋友。" * 20]


# --------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_vocabulary_limits_and_min_frequency():
    with pytest.raises(ValueError, match="vocab_size=259 must exceed 259"):  # 256 bytes + 3 special: no merge
        tokenizer.train_tokenizer(TEXTS, vocab_size=259)
    # no pair occurs a million times: no merge, only the bytes and the special tokens
    assert tokenizer.train_tokenizer(TEXTS, vocab_size=400, min_frequency=10**6).get_vocab_size() == 256 + 3
    assert tokenizer.train_tokenizer(TEXTS, vocab_size=400).get_vocab_size() > 256 + 3


def test_save_makes_the_folder_and_load_checks_every_special_id(tmp_path):
    tok = tokenizer.train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.save_tokenizer(tok, tmp_path / "new" / "sub" / "tok.json")
    assert tokenizer.load_tokenizer(tmp_path / "new" / "sub" / "tok.json").to_str() == tok.to_str()
    with pytest.raises(CorpusError, match="no tokenizer"):
        tokenizer.load_tokenizer(tmp_path / "missing.json")
    # a tokenizer whose <|bos|> is right but <|eos|> and <|pad|> are swapped
    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|bos|>", "<|pad|>", "<|eos|>"],
                                                         show_progress=False))
    other.save(str(tmp_path / "swapped.json"))
    with pytest.raises(CorpusError, match=r"special token <\|eos\|> must have id 1, has 2"):
        tokenizer.load_tokenizer(tmp_path / "swapped.json")


def test_tokenizer_command_flags_and_per_domain_figures(tmp_path, capsys, monkeypatch):
    docs = [{"id": f"m{i}", "domain": "math", "text": t} for i, t in enumerate(TEXTS[:-1])]
    zh = {"id": "z", "domain": "chinese", "text": TEXTS[-1]}
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [*docs, zh]))
    (tmp_path / "val.jsonl").write_text(json.dumps(zh, ensure_ascii=False) + "\n")
    out = tmp_path / "tok.json"
    with pytest.raises(SystemExit):  # the flag is named, not train_tokenizer's vocab_size=
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(out), "--vocab-size", "259"])
    assert capsys.readouterr().err.startswith("error: --vocab-size 259: must exceed 259")
    tokenizer.main(["--corpus", str(tmp_path), "--out", str(out), "--vocab-size", "300", "--min-frequency", "0"])
    ids = Tokenizer.from_file(str(out)).encode(zh["text"]).ids
    nbytes = len(zh["text"].encode("utf-8"))  # bytes, not characters: 3 a Chinese character
    line = f"  val chinese     {len(ids):>8,} tokens  {nbytes / len(ids):.2f} bytes/token  round trip 1/1 docs"
    assert line in capsys.readouterr().out.splitlines()
    seen = {}
    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda texts, v, f: seen.update(v=v, f=f) or
                        Tokenizer.from_file(str(out)))
    tokenizer.main(["--corpus", str(tmp_path), "--out", str(tmp_path / "t2.json")])
    # the defaults are those of the committed tokenizer (data/README.md: 4,096 entries)
    assert seen == {"v": tokenizer.load_tokenizer(DATA / "tokenizer.json").get_vocab_size(), "f": 2}


def test_sigterm_while_the_tokenizer_is_saved_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    """SIGTERM (`timeout`, a scheduler) ended the command where it stood, and a save cut short left
    tokenizer.json.tmp beside --out for good (a tour). Now as Ctrl-C: one line, exit status 130, the
    temporary removed and the old tokenizer.json as it was."""
    import signal

    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    out = tmp_path / "tok.json"
    out.write_text('{"added_tokens": [], "old": true}')
    before = signal.getsignal(signal.SIGTERM)

    class Cut:
        def save(self, path):
            Path(path).write_text('{"added_tokens": [')  # half of it
            # without a handler of the command's own, SIGTERM would end the test process itself
            assert signal.getsignal(signal.SIGTERM) is not before, "SIGTERM is left to Python's default"
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda texts, v, f: Cut())
    with pytest.raises(SystemExit) as e:
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and err == f"interrupted: nothing written ({out} is as it was)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "train.jsonl"]
    assert out.read_text() == '{"added_tokens": [], "old": true}' and signal.getsignal(signal.SIGTERM) is before


def test_tokenizer_command_names_a_corpus_file_given_as_corpus(tmp_path, capsys):
    """--corpus data/corpus/train.jsonl (the file, not its folder) said ".../train.jsonl/train.jsonl: not found"."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    out = tmp_path / "tok.json"
    with pytest.raises(SystemExit):
        tokenizer.main(["--corpus", str(tmp_path / "train.jsonl"), "--out", str(out)])
    err = capsys.readouterr().err
    assert err == f"error: --corpus {tmp_path / 'train.jsonl'}: is a file; --corpus must be a folder holding " \
                  "train.jsonl, e.g. data/corpus\n" and not out.exists()


def test_tokenizer_command_refuses_an_out_over_a_corpus_split(tmp_path, capsys):
    """--out DIR/train.jsonl with --corpus DIR replaced the training texts with the tokenizer (a tour)."""
    text = json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n"
    for split in ("train.jsonl", "val.jsonl"):
        (tmp_path / split).write_text(text)
        with pytest.raises(SystemExit) as e:
            tokenizer.main(["--corpus", str(tmp_path), "--out", str(tmp_path / "." / split)])
        assert e.value.code == 2 and (tmp_path / split).read_text() == text
        # the flag as given, and the file it would overwrite: it named "--corpus DIR/train.jsonl" (a tour)
        assert capsys.readouterr().err == (f"error: --out {tmp_path / split}: is {tmp_path / split}, the "
                                           f"{split} of --corpus {tmp_path}, which it would overwrite; write "
                                           "elsewhere\n")


def test_tokenizer_command_replaces_a_tokenizer_but_not_another_file(tmp_path, capsys):
    """--out notes.txt, a file of the user's, was replaced by the tokenizer without a word (a tour)."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    notes, tok = tmp_path / "notes.txt", tmp_path / "tok.json"
    notes.write_text("mine")
    with pytest.raises(SystemExit) as e:
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(notes), "--vocab-size", "270"])
    assert e.value.code == 2 and notes.read_text() == "mine"
    assert capsys.readouterr().err == (f"error: --out {notes}: exists and is not a tokenizer.json; write to a new "
                                       "file (or delete it first)\n")
    for vocab in ("270", "280"):  # a tokenizer is replaced (the control)
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(tok), "--vocab-size", vocab, "--min-frequency", "0"])
    assert Tokenizer.from_file(str(tok)).get_vocab_size() == 280


def test_tokenizer_command_ctrl_c_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the merges were learned was a KeyboardInterrupt traceback."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    out = tmp_path / "tok.json"

    def ctrl_c(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "train_tokenizer", ctrl_c)
    with pytest.raises(SystemExit) as e:
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(out)])
    assert e.value.code == 130 and not out.exists()
    assert capsys.readouterr().err.strip() == f"interrupted: nothing written ({out} is as it was)"


def test_tokenizer_command_stopped_during_the_validation_figures_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the validation figures printed after the save was a KeyboardInterrupt traceback
    (SIGTERM ended it without a word): one line now, naming the tokenizer already written, which stays."""
    import signal

    for split in ("train.jsonl", "val.jsonl"):
        (tmp_path / split).write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    out = tmp_path / "tok.json"
    real, before = tokenizer.train_tokenizer, signal.getsignal(signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGINT):
        tok = real(TEXTS, 300)

        class Stopped:  # the saved tokenizer, whose encoding for the figures is stopped
            save, get_vocab_size = tok.save, tok.get_vocab_size

            def encode(self, text):
                # without a handler of the command's own, SIGTERM would end the test process itself
                assert signal.getsignal(signal.SIGTERM) is not before, "SIGTERM is left to Python's default"
                signal.raise_signal(signum)

        monkeypatch.setattr(tokenizer, "train_tokenizer", lambda texts, v, f: Stopped())
        with pytest.raises(SystemExit) as e:
            try:
                tokenizer.main(["--corpus", str(tmp_path), "--out", str(out), "--vocab-size", "300"])
            except KeyboardInterrupt:
                pytest.fail("Ctrl-C is a traceback")
        err = capsys.readouterr().err.strip()
        assert e.value.code == 130 and err == f"interrupted: the validation figures were cut short; {out} is written " \
                                              "and complete", (signum, err)
        assert tokenizer.load_tokenizer(out).to_str() == tok.to_str()
        out.unlink()


def test_tokenizer_command_save_refused_by_the_os_is_one_line(tmp_path, capsys, monkeypatch):
    """A save that fails after the checks (a folder made at --out, its parent made a file meanwhile, or
    the bare Exception `tokenizers` raises for its own write) was a traceback: one line, naming the file."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    tok = tokenizer.train_tokenizer(TEXTS, 300)

    class Refused:
        def save(self, path):
            raise Exception("No space left on device (os error 28)")

    cases = ((tmp_path / "dir.json", lambda: (tmp_path / "dir.json").mkdir() or tok, "Is a directory"),
             (tmp_path / "sub" / "t.json", lambda: (tmp_path / "sub").write_text("x") or tok, "File exists"),
             (tmp_path / "t.json", Refused, "No space left on device (os error 28)"))
    for out, trained, why in cases:
        monkeypatch.setattr(tokenizer, "train_tokenizer", lambda texts, v, f: trained())
        with pytest.raises(SystemExit) as e:
            tokenizer.main(["--corpus", str(tmp_path), "--out", str(out), "--vocab-size", "300"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err == f"error: {out}: cannot write the tokenizer there ({why}); nothing written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "sub", "train.jsonl"]


# ------------------------------------------------------------------------------------------ report
def test_unigram_loss_is_add_one_cross_entropy_per_domain():
    texts = ["abca"] * 200 + ["cb"] * 100 + ["d"]  # more than one batch of 256 documents
    tok = SimpleNamespace(encode_batch=lambda batch, add_special_tokens: [
        SimpleNamespace(ids=["abcde".index(ch) for ch in t]) for t in batch])
    val = pd.DataFrame({"domain": ["x", "x", "y"], "token_id": [0, 4, 2]})
    # by hand: counts a 400, b 300, c 300, d 1, e 0, each + 1; total 1001 + 5
    p = {t: (n + 1) / 1006 for t, n in zip(range(5), (400, 300, 300, 1, 0))}
    got = report.unigram_loss(texts, tok, val, vocab=5)
    assert got == pytest.approx({"x": -(math.log(p[0]) + math.log(p[4])) / 2, "y": -math.log(p[2])}, rel=1e-12)


def test_report_checks_at_their_thresholds():
    f = {"loss": {"a": 1.0, "b": 2.0}, "uni": {"a": 1.5, "b": 2.5}, "agree": 0.4,
         "layers": {1: {"maxvio": 0.3, "nmi": 0.05}, 2: {"maxvio": 0.1, "nmi": 0.1}},
         "layers_b": {1: {"maxvio": 0.31}, 2: {"maxvio": 0.2}}}
    assert all(ok for _, ok in report.checks(f))  # 0.3, 40 % and 0.1 pass; NMI in one layer is enough
    f["loss"]["b"] = 2.5  # equal is not below
    f["layers_b"][2]["maxvio"] = 0.1  # nor is equal MaxVio lower
    assert [ok for _, ok in report.checks(f)] == [False, True, False, True, True]


def _figures():
    return {"tokens": 1234, "windows": 9, "loss": {"code": 2.0, "math": 1.5}, "loss_b": {"code": 2.25},
            "uni": {"code": 5.0, "math": 4.0}, "agree": 0.456, "agree_dom": {"code": 0.5, "math": 0.125},
            "layers": {1: {"maxvio": 0.2, "nmi": 0.15, "balancedness": 0.75}},
            "layers_b": {1: {"maxvio": 0.5, "nmi": 0.1, "balancedness": 0.5}},
            "samples": {"code": ("def f", "(x):")}}


def test_report_page_shows_each_figure_in_its_column(tmp_path):
    ns = Namespace(corpus="val.jsonl", seq_len=256, runs_dir=str(tmp_path))
    checked = [("first claim", True), ("second claim", False)]
    text = report.render(_figures(), checked, ns, Path("model"), Path("base"), 3.0)
    lines = text.splitlines()
    assert "- [x] first claim" in lines and "- [ ] second claim" in lines
    assert "| code | 2.000 | 2.250 | 5.000 | 50.0% |" in lines and "| math | 1.500 | nan | 4.000 | 12.5% |" in lines
    assert "| 1 | 0.200 | 0.500 | 0.750 | 0.150 | 0.100 |" in lines
    assert "MTP teacher-forced agreement overall: 45.6% " in text and "1234 tokens (9 windows of <= 256)" in text


def test_report_command_exit_code_follows_the_checks(tmp_path, monkeypatch, capsys):
    good = tmp_path / "c.jsonl"
    good.write_text('{"domain": "code", "text": "def f(x): return x"}\n')
    args = ["--baseline", str(DATA / "model"), "--train", str(good), "--corpus", str(good),
            "--out", str(tmp_path / "R.md"), "--runs-dir", str(tmp_path / "runs")]
    assert report.main([*args, "--seq-len", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-tokens must be >= 1 and --seq-len >= 2")
    f = _figures()
    monkeypatch.setattr(report, "measure", lambda *a: f)
    assert report.main(args) == 0  # every check passes on these figures
    f["agree"] = 0.3  # MTP agreement under 40 %
    assert report.main(args) == 1
    assert "- [ ] MTP teacher-forced agreement >= 40%" in (tmp_path / "R.md").read_text().splitlines()


def test_report_command_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while a model was recorded was a traceback ending in record's "continue with --resume",
    a flag data.report does not have; REPORT.md is not written."""
    good = tmp_path / "c.jsonl"
    good.write_text('{"domain": "code", "text": "def f(x): return x"}\n')
    out = tmp_path / "R.md"
    args = ["--baseline", str(DATA / "model"), "--train", str(good), "--corpus", str(good),
            "--out", str(out), "--runs-dir", str(tmp_path / "runs")]

    def ctrl_c(*a):
        raise KeyboardInterrupt("interrupted by signal 2; ... is marked interrupted (continue with --resume)")

    monkeypatch.setattr(report, "measure", ctrl_c)
    capsys.readouterr()
    assert report.main(args) == 130 and not out.exists()
    assert capsys.readouterr().err.strip() == (f"interrupted: {out} not written (the next python -m data.report "
                                               "records both runs again)")


@torch.no_grad()
def test_greedy_continuation_matches_recomputing_the_whole_sequence():
    m = random_model("tiny", seed=2)
    prompt = [0, 5, 9, 17]
    ref = list(prompt)
    for _ in range(4):  # no cache: the whole sequence each step
        ref.append(int(m(torch.tensor([ref]))[0, -1].argmax()))
    tok = SimpleNamespace(decode=list)
    assert report.greedy(m, tok, prompt, 4, []) == ref[4:]  # no token ends it
    k = next(k for k in range(5, 8) if ref[k] not in ref[4:k])  # a token not generated before it
    assert report.greedy(m, tok, prompt, 4, [ref[k]]) == ref[4:k]  # it stops before the stop token
    assert report.greedy(m, tok, prompt, 4, [3, ref[k]]) == ref[4:k]  # one of several (a list in config.json)



def test_the_data_commands_name_themselves_as_they_are_run(capsys):
    """`python -m data.report --help` said `usage: report.py`, where its siblings say `python -m data.X`."""
    from data import build_corpus

    for module, name in ((report, "report"), (tokenizer, "tokenizer"), (build_corpus, "build_corpus")):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        assert capsys.readouterr().out.startswith(f"usage: python -m data.{name} "), name


@pytest.mark.parametrize("when", ["training", "validation figures"])
def test_tokenizer_command_hung_up_with_its_terminal_gone_exits_130(tmp_path, monkeypatch, when):
    """SIGHUP stops the command as Ctrl-C (`terminate_as_interrupt`: KeyboardInterrupt 'hung up'), and its
    terminal is gone: the stop line's write failed (EIO), an OSError traceback out of the command and exit
    status 1, where the temporary was removed (or the tokenizer written). The line is left unsaid, 130."""
    import sys

    from helpers.processes import HungUp

    for split in ("train.jsonl", "val.jsonl"):
        (tmp_path / split).write_text(json.dumps({"id": "a", "domain": "math", "text": TEXTS[0]}) + "\n")
    out = tmp_path / "tok.json"
    tok = tokenizer.train_tokenizer(TEXTS, 300)

    def hung_up(*a, **kw):
        monkeypatch.setattr(sys, "stderr", HungUp())
        raise KeyboardInterrupt("hung up")

    class Stopped:  # the saved tokenizer, whose encoding for the figures is stopped
        save, get_vocab_size, encode = tok.save, tok.get_vocab_size, hung_up

    monkeypatch.setattr(tokenizer, "train_tokenizer", hung_up if when == "training" else lambda texts, v, f: Stopped())
    with pytest.raises(SystemExit) as e:
        tokenizer.main(["--corpus", str(tmp_path), "--out", str(out), "--vocab-size", "300"])
    assert e.value.code == 130
    assert out.exists() is (when == "validation figures")
