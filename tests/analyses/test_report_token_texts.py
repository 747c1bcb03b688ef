"""The report's token texts (the expert paths' examples, run vs run's changed tokens): read with --tokenizer
where given, else the run's own; where there is none, the table's title says the tokens are ids, why, and
to pass --tokenizer, as the model sections' refusals do."""

from __future__ import annotations

import shutil

import pytest

from analyses.report import __main__ as report


@pytest.fixture()
def run(probe_env, tmp_path):
    """A small record run read with `tok.json` (the checkpoint's tokenizer, copied), with its tokenizer."""
    from probe.record import RecordOptions, record

    tok = tmp_path / "tok.json"
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", tok)
    record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(tmp_path / "run"),
                         seq_len=32, max_tokens=200, tokenizer=str(tok), progress=False))
    return tmp_path / "run", tok


def _paths_title(run_dir, findings, capsys, *flags) -> str:
    assert report.main([str(run_dir), "--skip-ablation", "--importance-tokens", "0", "--no-progress",
                        "--out", str(findings.with_suffix(".html")), "--findings", str(findings), *flags]) == 0
    assert "change nothing" not in capsys.readouterr().err  # --tokenizer is read by these texts
    return next(x for x in findings.read_text().splitlines() if x.startswith("The ten most common top-1 paths"))


@pytest.mark.slow  # 1.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_paths_token_texts_say_why_they_are_ids_and_take_the_tokenizer_flag(run, tmp_path, capsys):
    """The paths section showed token ids without a word where the run's tokenizer had moved, and took no
    --tokenizer: it asked nothing of the report's flag (a review)."""
    run_dir, tok = run
    findings = tmp_path / "f.md"
    assert _paths_title(run_dir, findings, capsys) == "The ten most common top-1 paths:"  # the control: texts
    moved = tok.rename(tmp_path / "moved.json")
    assert _paths_title(run_dir, findings, capsys) == (f"The ten most common top-1 paths (tokens as ids: the run's "
                                                       f"tokenizer {tok} is no longer there; pass --tokenizer):")
    assert _paths_title(run_dir, findings, capsys, "--tokenizer", str(moved)) == "The ten most common top-1 paths:"


def test_a_checkpoints_tokenizer_changed_since_is_not_read_as_the_runs(probe_env, tmp_path):
    """A run recorded with its checkpoint's own tokenizer.json read its token texts with whatever file was there
    later, unchecked: another tokenizer's texts (a review)."""
    import json

    import probe
    from analyses.report.research import token_texts
    from probe.record import RecordOptions, record

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), out=str(tmp_path / "run"), seq_len=32,
                         max_tokens=100, progress=False))
    r = probe.open_run(tmp_path / "run")
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=len)[-2:]
    ids = [vocab[a], vocab[b]]
    right = token_texts(r, ids)
    assert right != [str(i) for i in ids]  # the control
    vocab[a], vocab[b] = vocab[b], vocab[a]  # another tokenizer, the same vocabulary
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    assert token_texts(r, ids) == [str(i) for i in ids]  # not right[::-1], the swapped tokenizer's texts
    from analyses.report.research import text_tokenizer

    assert text_tokenizer(r)[1] == (f"the run's tokenizer, its checkpoint's {ckpt / 'tokenizer.json'}, has changed "
                                    "since the run was recorded (its sha256 is not the one run.json keeps); pass "
                                    "--tokenizer with the run's")
    (ckpt / "tokenizer.json").unlink()
    assert text_tokenizer(r)[1] == (f"the run's tokenizer, its checkpoint's {ckpt / 'tokenizer.json'}, is no longer "
                                    "there; pass --tokenizer")


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_run_moved_with_its_checkpoint_elsewhere_reads_texts_with_the_ckpt_flags_tokenizer(probe_env, tmp_path):
    """A run recorded with its checkpoint's own tokenizer.json, moved with the checkpoint to another path: the report
    took --ckpt for the model sections and checked its tokenizer.json as the run's, but the token texts looked at the
    run.json's checkpoint path alone and said to pass --tokenizer (a review)."""
    from types import SimpleNamespace

    import probe
    from analyses.report.research import compute_tables
    from probe.record import RecordOptions, record

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), out=str(tmp_path / "run"), seq_len=32,
                         max_tokens=100, progress=False))
    moved = ckpt.rename(tmp_path / "elsewhere")
    ns = SimpleNamespace(tokenizer=None, ckpt=str(moved), skip_ablation=False, compare=None)
    out: dict = {}
    compute_tables(probe.open_run(tmp_path / "run"), ns, out)
    assert out["paths"]["ids"] is None and not any(e.replace(" ", "").isdigit()
                                                   for e in out["paths"]["common"]["examples"])
    out = {}
    compute_tables(probe.open_run(tmp_path / "run"), SimpleNamespace(**vars(ns) | {"ckpt": None}), out)
    assert out["paths"]["ids"] == (f"the run's tokenizer, its checkpoint's {ckpt / 'tokenizer.json'}, is no longer "
                                   "there; pass --tokenizer")  # the control: without --ckpt, none to read with
