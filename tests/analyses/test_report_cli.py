"""`python -m analyses.report`'s command line: bad flags, missing or empty runs, a --compare that is
not a run, and outputs that cannot or must not be written are one-line errors, said before any section
runs; flags that change nothing are said so."""

from __future__ import annotations

import json
import shutil

import pytest

from analyses.report import __main__ as report
from helpers.cli_errors import assert_one_line_error, unwritable_msg, unwritable_out
from helpers.synthetic_run import write_run


def test_help():
    text = report.parser().format_help()
    for flag in ("--out", "--findings", "--max-tokens", "--fractions", "--seeds", "--skip-ablation", "--model-parallel"):
        assert flag in text


@pytest.mark.parametrize("text", ["1/0", "x", "0", "1/8,2", "nan", ""])
def test_bad_fractions_are_one_line_errors(text, capsys):
    with pytest.raises(SystemExit) as ei:
        report.parser().parse_args(["--fractions", text])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ei.value.code == 2 and "argument --fractions" in err and repr(text) in err, err
    assert report.parser().parse_args(["--fractions", "1/16, 0.25"]).fractions == [1 / 16, 0.25]  # control


def _err(argv, capsys) -> str:
    """The report's one `error:` line for `argv` (exit status 2)."""
    return assert_one_line_error(report.main(argv), capsys, "")


def test_errors_for_missing_and_empty_runs(tmp_path, capsys):
    assert "no such run directory" in _err([str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "not a run directory" in _err([str(tmp_path / "empty")], capsys)
    (tmp_path / "empty" / "run.json").write_text(json.dumps({"status": "running", "format": 1}))
    assert "empty run" in _err([str(tmp_path / "empty")], capsys)
    (tmp_path / "expert_load").mkdir()  # an empty table folder is still an empty run
    assert "empty run" in _err([str(tmp_path / "empty"), "--skip-ablation"], capsys)
    assert "--max-tokens" in _err([str(tmp_path / "empty"), "--max-tokens", "0"], capsys)


def test_outputs_that_cannot_be_written_are_refused_first(tmp_path, capsys, monkeypatch):
    """--out or --findings where no file can go is a one-line error before any section is computed
    (ablations can take minutes), also where os.access says yes but the OS refuses new entries
    (procfs, for root: found only at the write, a review)."""
    import shutil

    run = tmp_path / "r"
    write_run(run, domains=("code", "prose"))
    (tmp_path / "afile").write_text("x")
    fast = ["--skip-ablation", "--importance-tokens", "0", "--no-progress"]
    computed = []  # refused before any section is computed: report's compute is never reached
    monkeypatch.setattr(report, "compute", lambda *a, **k: computed.append(a) or pytest.fail("a section was computed"))
    err = _err([str(run), "--out", str(tmp_path / "afile" / "r.html"), *fast], capsys)
    assert f"--out {tmp_path / 'afile' / 'r.html'}: {tmp_path / 'afile'} is a file, not a directory" in err
    assert "is a directory, not a file" in _err([str(run), "--findings", str(tmp_path), *fast], capsys)
    assert computed == []
    monkeypatch.undo()
    html = unwritable_out(monkeypatch, "dsv3-report.html")
    assert unwritable_msg("--out", html) in _err([str(run), "--out", str(html), *fast], capsys)
    # a --compare that is not a run: said first, not after the ablations wrote into the run
    err = _err([str(run), "--compare", str(tmp_path / "nope"), "--importance-tokens", "0", "--no-progress"], capsys)
    assert err.startswith(f"error: --compare {tmp_path / 'nope'}: no such run directory")
    assert not (run / "ablations").exists()
    # a --compare run over other windows, or without routing, failed only after every model section had
    # run, and no report was written (a review): refused first too
    write_run(tmp_path / "other", token_seed=5)
    write_run(tmp_path / "norouting")
    shutil.rmtree(tmp_path / "norouting" / "routing")
    for other, needle in (("other", "hold different tokens at"), ("norouting", "routing")):
        err = _err([str(run), "--compare", str(tmp_path / other), "--importance-tokens", "0", "--no-progress"],
                   capsys)
        assert needle in err and not (run / "ablations").exists(), err
    # a directory for --out wrote a file of that name; --findings over --out kept only the findings; the
    # checkpoint's config.json was overwritten with HTML (a review)
    err = _err([str(run), "--out", f"{tmp_path / 'reports'}/", *fast], capsys)
    assert f"--out {tmp_path / 'reports'}/: names a directory" in err and not (tmp_path / "reports").exists()
    same = str(tmp_path / "r.html")
    assert "the same file as --out" in _err([str(run), "--out", same, "--findings", same, *fast], capsys)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    err = _err([str(run), "--out", str(ckpt / "config.json"), *fast], capsys)
    assert f"is a file of the checkpoint {ckpt}" in err and (ckpt / "config.json").read_text() == "{}"
    assert not (tmp_path / "r.html").exists()


def test_outputs_over_the_files_the_run_was_recorded_from_are_refused(tmp_path, capsys):
    """A report written over the run's corpus file replaced the corpus (a tour): --out and --findings
    may be neither the run's corpus or tokenizer file nor inside a corpus folder."""
    run, corpus, folder, tok = tmp_path / "r", tmp_path / "texts.jsonl", tmp_path / "texts", tmp_path / "tok.json"
    write_run(run, domains=("code", "prose"))
    for path in (corpus, tok):
        path.write_text('{"text": "keep"}\n')
    info = json.loads((run / "run.json").read_text())
    info.update(corpus={"path": str(corpus), "fingerprint": "x"}, tokenizer={"path": str(tok), "fingerprint": "y"})
    (run / "run.json").write_text(json.dumps(info))
    fast = ["--skip-ablation", "--importance-tokens", "0", "--no-progress"]
    assert f"--out {corpus}: is the run's corpus {corpus}" in _err([str(run), "--out", str(corpus), *fast], capsys)
    err = _err([str(run), "--findings", str(tok), *fast], capsys)
    assert f"--findings {tok}: is the run's tokenizer {tok}" in err
    assert corpus.read_text() == tok.read_text() == '{"text": "keep"}\n'
    folder.mkdir()
    err = _err([str(run), "--out", str(folder / "r.html"), "--corpus", str(folder), *fast], capsys)
    assert f"is inside --corpus {folder}" in err and not any(folder.iterdir())


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_an_existing_file_is_replaced_only_when_it_is_a_report_or_findings(tmp_path, capsys):
    """--out or --findings naming a user's own file (notes.md) replaced it without a word (a tour)."""
    run, notes = tmp_path / "r", tmp_path / "notes.md"
    write_run(run, domains=("code", "prose"))
    notes.write_text("# my notes\n")
    fast = ["--skip-ablation", "--importance-tokens", "0", "--no-progress"]
    for flag, what in (("--out", "a report"), ("--findings", "a findings file")):
        err = _err([str(run), flag, str(notes), *fast], capsys)
        assert err == f"error: {flag} {notes}: exists and is not {what}; write to a new file (or delete it first)"
    assert notes.read_text() == "# my notes\n"
    html, md = tmp_path / "r.html", tmp_path / "f.md"  # the command's own files are replaced (the control)
    html.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>DeepSeek-V3 probe findings</title>old")
    md.write_text("# Findings on an older run\n")
    assert report.main([str(run), "--out", str(html), "--findings", str(md), *fast]) == 0
    assert not html.read_text().endswith("old") and "older" not in md.read_text()


def test_a_default_run_folder_without_a_run_is_named_not_overwritten(tmp_path, capsys, monkeypatch):
    """No RUN and a runs/model-val that holds no run: record's advice "pass --overwrite" named a flag the
    report does not have (a tour); the folder is named and left as it was."""
    default = tmp_path / "runs" / "model-val"
    default.mkdir(parents=True)
    (default / "mine.txt").write_text("keep")
    monkeypatch.setattr(report, "DEFAULT_RUN", default)
    err = _err(["--skip-ablation", "--no-progress"], capsys)
    assert err == (f"error: {default}: the default run's folder exists but holds no run (no run.json), and the "
                   "report does not replace it: move it away, or pass RUN")
    assert [p.name for p in default.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("flag", ["--ckpt", "--corpus", "--tokenizer"])
def test_a_model_input_flag_without_run_is_refused_before_the_default_run_is_recorded(flag, tmp_path, capsys,
                                                                                       monkeypatch):
    """No RUN and no default run yet: the report recorded runs/model-val of the bundled model, with its own
    checkpoint, corpus and tokenizer, and then ran the model sections on the --ckpt, --corpus or --tokenizer
    given, over windows the run never read (a review). Refused before anything is recorded; with
    --skip-ablation --ckpt and --corpus change nothing, and the default run is recorded as before (the
    control), where --tokenizer, which the token texts are read with, is refused still."""
    import probe.record

    default = tmp_path / "runs" / "model-val"
    monkeypatch.setattr(report, "DEFAULT_RUN", default)
    recorded = []
    monkeypatch.setattr(probe.record, "record", lambda opts: recorded.append(opts) or (_ for _ in ()).throw(
        probe.record.RecordError("stopped by the test")))
    given = str(tmp_path / "mine")
    err = _err([flag, given, "--no-progress"], capsys)
    assert err == (f"error: {flag} {given}: no RUN given, and the default run {default} would be recorded now of "
                   "the bundled model, on its corpus with its tokenizer, not with this; pass RUN, a run recorded "
                   f"with {flag}"), err
    assert not recorded and not default.exists()
    assert report.main([flag, given, "--skip-ablation", "--no-progress"]) == 2
    if flag == "--tokenizer":
        assert capsys.readouterr().err == f"{err}\n" and not recorded and not default.exists()
        return
    assert "stopped by the test" in capsys.readouterr().err and len(recorded) == 1
    assert recorded[0].out == str(default)


def test_the_folder_of_a_built_corpus_is_refused_before_any_job(tmp_path, capsys, monkeypatch):
    """--corpus corpora/mine, the folder data.build_corpus wrote, not one of its splits: the report's first
    ablation job refused it, after the report's checks and minutes of work (a tour). Now the report refuses
    it at once, in the jobs' own words; one of its splits goes on (the control)."""
    from analyses.ablate import AblationError
    from analyses.report.render import ReportError
    from data.build_corpus import Doc, write_corpus
    from probe.job import resolve_paths

    write_run(tmp_path / "r", domains=("code", "prose"))
    built = tmp_path / "mine"
    write_corpus(built, [Doc(f"d/x/{i:04d}", "d", "s", f"text {i} " * 40) for i in range(4)], seed=0,
                 val_fraction=0.3, max_chars=None, extra={"source": {}})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")  # all the job's path checks ask of a checkpoint
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    computed = []
    monkeypatch.setattr(report, "compute", lambda *a, **k: computed.append(a) or (_ for _ in ()).throw(
        ReportError("stopped by the test")))
    argv = [str(tmp_path / "r"), "--out", str(tmp_path / "r.html"), "--no-progress", "--corpus"]
    err = _err([*argv, str(built)], capsys)
    with pytest.raises(AblationError) as job:  # what the ablation job says of it
        resolve_paths(str(tmp_path / "ckpt"), str(built), str(tmp_path / "abl"), error=AblationError)
    assert err == f"error: {job.value}" and err.startswith(f"error: --corpus {built}: a corpus that data.build_corpus")
    assert not computed and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert _err([*argv, str(built / "val.jsonl")], capsys) == "error: stopped by the test" and len(computed) == 1


def test_a_compare_run_that_is_not_one_names_the_flag(tmp_path, capsys):
    """--compare's refusals read 'PATH: no such run directory', as the report's own run's do: which of
    the two runs was meant went unsaid."""
    write_run(tmp_path / "run")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("[]")
    for other, why in (("nope", "no such run directory"), ("", "not a run directory (no run.json)"),
                       ("bad", "unreadable (a JSON list, not an object)")):
        err = _err([str(tmp_path / "run"), "--skip-ablation", "--compare", str(tmp_path / other)], capsys)
        assert err.startswith(f"error: --compare {tmp_path / other}") and err.endswith(why), err


@pytest.mark.slow  # 1.1 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_flags_of_the_model_sections_are_said_to_change_nothing_with_skip_ablation(tmp_path, capsys):
    # --seeds, --ckpt, --dtype ... with --skip-ablation were dropped without a word
    write_run(tmp_path / "r", domains=("code", "prose"))
    argv = [str(tmp_path / "r"), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress"]
    assert report.main([*argv, "--seeds", "3", "--dtype", "float64"]) == 0
    assert ("note: --seeds, --dtype change nothing: the sections that run the model are left out (--skip-ablation)"
            in capsys.readouterr().err)
    assert report.main(argv) == 0
    assert "change nothing" not in capsys.readouterr().err


def test_a_fraction_of_one_and_seeds_below_one(tmp_path, capsys):
    assert report.parser().parse_args(["--fractions", "1"]).fractions == [1.0]  # (0, 1]: every expert
    assert "--seeds 0: must be >= 1" in _err([str(tmp_path), "--seeds", "0"], capsys)


def test_a_compare_run_over_other_windows_is_refused_before_any_section(tmp_path, capsys, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_run(tmp_path / "r")
    write_run(tmp_path / "far")  # the same tokens; its routing moved to windows the run does not have
    for f in (tmp_path / "far" / "routing").glob("*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.set_column(0, "seq_id", pa.array(t.column("seq_id").to_numpy() + 1000, pa.int64())), f)
    monkeypatch.setattr(report, "compute", lambda *a, **k: pytest.fail("computed the report before refusing"))
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "far"), "--skip-ablation", "--no-progress",
                "--out", str(tmp_path / "r.html")], capsys)
    assert "did not see the same windows" in err and not (tmp_path / "r.html").exists()


def test_a_run_whose_checkpoint_moved_takes_ckpt_and_corpus_for_the_model_sections(probe_env, tmp_path, capsys,
                                                                                  monkeypatch):
    # the refusal told the user to pass --ckpt, a flag the report did not have (a review)
    import shutil

    import analyses.ablate
    from probe.record import RecordOptions, record

    ckpt = tmp_path / "ckpt"
    shutil.copytree(probe_env["ckpt"], ckpt)
    run = tmp_path / "run"
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), out=str(run), seq_len=32,
                         max_tokens=200, progress=False))
    moved = ckpt.rename(tmp_path / "moved")
    html = tmp_path / "r.html"
    assert report.main([str(run), "--out", str(html), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "is no longer there; pass --ckpt" in err and not html.exists()
    seen = []

    def ablate(opts, ablations):  # the first model section: what reaches the job, then stop
        seen.append((opts.ckpt, opts.corpus))
        raise analyses.ablate.AblationError("stopped by the test")

    monkeypatch.setattr(analyses.ablate, "ablate", ablate)
    argv = [str(run), "--out", str(html), "--no-progress", "--ckpt", str(moved), "--corpus", str(probe_env["corpus"])]
    assert report.main(argv) == 2 and "stopped by the test" in capsys.readouterr().err
    assert seen == [(str(moved), str(probe_env["corpus"]))]


def test_a_run_whose_tokenizer_moved_takes_the_reports_tokenizer_flag(probe_env, tmp_path, capsys, monkeypatch):
    """A run recorded with --tokenizer, the file moved since: the report's first job refused it with "pass
    --tokenizer", a flag the report did not have (a tour). The report has it, checks the run's tokenizer before
    any section, and hands it to the jobs."""
    import shutil

    import analyses.ablate
    from analyses.report import render
    from probe.record import RecordOptions, record

    tok = tmp_path / "tok.json"
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", tok)
    run = tmp_path / "run"
    record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]), out=str(run), seq_len=32,
                         max_tokens=200, tokenizer=str(tok), progress=False))
    capsys.readouterr()
    moved = tok.rename(tmp_path / "moved.json")
    html = tmp_path / "r.html"
    computed = []
    monkeypatch.setattr(report, "compute", lambda *a, **k: computed.append(a) or render.compute(*a, **k))
    err = _err([str(run), "--out", str(html), "--no-progress"], capsys)
    assert err == f"error: {run}: the run's tokenizer {tok} is no longer there; pass --tokenizer", err
    assert not computed and not html.exists()  # said before any section, by the report itself
    assert "--tokenizer" in report.parser().format_help()
    seen = []

    def ablate(opts, ablations):  # the first model section: what reaches the job, then stop
        seen.append(opts.tokenizer)
        raise analyses.ablate.AblationError("stopped by the test")

    monkeypatch.setattr(analyses.ablate, "ablate", ablate)
    assert report.main([str(run), "--out", str(html), "--no-progress", "--tokenizer", str(moved)]) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert seen == [str(moved)]
    shutil.copy(moved, tok)  # the control: the file back where it was recorded, the job takes it
    assert report.main([str(run), "--out", str(html), "--no-progress"]) == 2
    assert "stopped by the test" in capsys.readouterr().err and seen[-1] == str(tok)
    tok.write_text(tok.read_text() + " ")  # changed since: its sha256 is not the run's
    err = _err([str(run), "--out", str(html), "--no-progress"], capsys)
    assert err.endswith("has changed since the run was recorded (its sha256 is not the one run.json keeps), so its "
                        "token ids would not be the run's; pass --tokenizer to take it"), err


def test_a_run_another_command_made_is_named_not_called_empty(tmp_path, capsys):
    """A `dsv3-probe spec` run, or one `analyses.ablate --out` wrote, was 'empty run: no expert_load rows
    ...; record it first': it holds its own tables, and record refuses its folder (a tour)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = tmp_path / "spec"
    (spec / "spec_decode").mkdir(parents=True)
    (spec / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": "spec",
                                               "tables": ["spec_decode"]}))
    pq.write_table(pa.table({"prompt": [0]}), spec / "spec_decode" / "part-0.parquet")
    why = ("a run made by `dsv3-probe spec` (it holds spec_decode), with no expert_load, which every section reads: "
           "the report is of a run that `dsv3-probe record` made (pass one; the dashboard shows this one; "
           "`dsv3-probe spec --out RUN` of a recorded run adds its tables there, for the report's Speculative decoding "
           "section)")
    assert _err([str(spec), "--skip-ablation"], capsys) == f"error: {spec}: {why}"
    write_run(tmp_path / "run")
    assert _err([str(tmp_path / "run"), "--skip-ablation", "--compare", str(spec)], capsys) == \
        f"error: --compare {spec}: {why}"
    (spec / "run.json").write_text(json.dumps({"status": "complete", "format": 1, "kind": "ablations"}))
    shutil.rmtree(spec / "spec_decode")
    assert _err([str(spec), "--skip-ablation"], capsys) == (
        f"error: {spec}: a run made by `python -m analyses.ablate`, with no expert_load, which every section reads: "
        "the report is of a run that `dsv3-probe record` made (pass one; the dashboard shows this one)")


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_compare_run_of_a_model_with_other_expert_counts_is_refused(tmp_path, capsys):
    """--compare of a run of another model (16 routed experts against 32) compared expert ids by index
    and reported top-1 agreement 0.030 as a measurement: the ids name different experts (a tour)."""
    write_run(tmp_path / "a", E=8)
    write_run(tmp_path / "b", E=16)  # the same windows and tokens, another model
    argv = [str(tmp_path / "a"), "--out", str(tmp_path / "r.html"), "--skip-ablation", "--no-progress", "--compare"]
    assert _err([*argv, str(tmp_path / "b")], capsys) == (
        f"error: --compare {tmp_path / 'b'}: its model routes to 16 routed experts a layer, this run's to 8: run vs "
        "run compares expert ids by index, which name the same experts only in two checkpoints of one model")
    write_run(tmp_path / "c", E=8, seed=1, token_seed=0)  # another checkpoint of the same model: compared
    assert report.main([*argv, str(tmp_path / "c")]) == 0
    assert "Run vs run (" in capsys.readouterr().out


def test_a_compare_run_without_routing_is_named_with_its_cause(tmp_path, capsys):
    """--compare OTHER recorded with --router-logits none failed with the metrics' 'run has no routing
    table (... recorded with --router-logits none?)': no --compare, and a guess where run.json says (a
    tour). One line names the flag, the run and the cause from its run.json."""
    write_run(tmp_path / "r")
    write_run(tmp_path / "o")
    shutil.rmtree(tmp_path / "o" / "routing")
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    (tmp_path / "o" / "run.json").write_text(json.dumps(info | {"options": {"router_logits": "none"}}))
    fast = ["--skip-ablation", "--no-progress"]
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "o"), *fast], capsys)
    assert err == (f"error: --compare {tmp_path / 'o'}: the compared run, {tmp_path / 'o'}, has no routing table "
                   "(the run was recorded with --router-logits none, which keeps no per-token routing; record it "
                   "again with --router-logits topk (the default)); run vs run compares the two runs' routes"), err
    err = _err([str(tmp_path / "o"), "--compare", str(tmp_path / "r"), *fast], capsys)  # this run has none
    assert err.startswith(f"error: --compare {tmp_path / 'r'}: this run, {tmp_path / 'o'}, has no routing table (the "
                          "run was recorded with --router-logits none"), err


def test_a_compare_run_that_lost_routing_parts_names_them(tmp_path, capsys):
    """--compare OTHER, a complete run missing one rank's routing parts: the cause said 'whose part files
    are gone (deleted?)' for a table that kept most of its files (a review); it names the missing part,
    as the report's note does."""
    from helpers.synthetic_run import as_two_replicas

    write_run(tmp_path / "r")
    write_run(tmp_path / "o")
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    (tmp_path / "o" / "run.json").write_text(json.dumps(info | {"status": "complete",
                                                                 "tables": ["tokens", "routing", "expert_load"]}))
    as_two_replicas(tmp_path / "o", ["tokens", "routing", "expert_load"])
    (tmp_path / "o" / "routing" / "r002-b0000001-0000001.parquet").unlink()
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "o"), "--skip-ablation", "--no-progress"], capsys)
    assert err == (f"error: --compare {tmp_path / 'o'}: the compared run, {tmp_path / 'o'}, has no routing table "
                   "(run.json lists routing but the run has lost part files of it (routing: "
                   "r002-b0000001-0000001.parquet; deleted, or left on another node?)); run vs run compares the "
                   "two runs' routes"), err


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_compare_with_itself_or_a_copy_is_refused(tmp_path, capsys):
    """--compare of the run with itself reported agreement 1.000 everywhere without saying it was the same
    run (a tour): refused in one line, as is a copy of it (the same recording), before any section runs."""
    write_run(tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"started": 1.5}))
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    fast = ["--skip-ablation", "--no-progress", "--out", str(tmp_path / "r.html")]
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "r") + "/", *fast], capsys)
    assert err.startswith(f"error: --compare {tmp_path / 'r'}: this run itself, whose routes agree with its own "
                          "everywhere by construction; compare a run of another checkpoint"), err
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "copy"), *fast], capsys)
    assert err.startswith(f"error: --compare {tmp_path / 'copy'}: a copy of this run, {tmp_path / 'r'} (the same "
                          "recording: its start time, checkpoint, corpus and tokenizer)"), err
    assert not (tmp_path / "r.html").exists()
    write_run(tmp_path / "other", seed=3, token_seed=0)  # another run over the same windows: compared
    assert report.main([str(tmp_path / "r"), "--compare", str(tmp_path / "other"), *fast]) == 0
    capsys.readouterr()


def _edit_run_json(run, **fields) -> dict:
    info = json.loads((run / "run.json").read_text()) | fields
    (run / "run.json").write_text(json.dumps(info))
    return info


@pytest.mark.slow  # 2.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_copy_is_known_by_its_recording_not_by_an_identical_run_json(tmp_path, capsys):
    """A copied run was recognised only while both run.json files stayed identical: once its paths
    were rewritten (a moved checkpoint or corpus, another --out) or a job noted its parts in either
    (the report's own ablations), run vs run compared the recording with itself. The start time,
    checkpoint content, corpus and tokenizer name it; another start time, checkpoint or corpus is
    another recording (compared), and so is another import, while the same dumps imported again are not."""
    ident = {"checkpoint": {"path": "/a/ckpt", "fingerprint": "c1", "sample": "s1"},
             "corpus": {"path": "/a/val.jsonl", "fingerprint": "v1"},
             "tokenizer": {"path": "/a/t", "fingerprint": "t1"},
             "planned": {"tokens": 42}, "started": 1.5, "options": {"out": "/a/r"}}
    write_run(tmp_path / "r")
    info = _edit_run_json(tmp_path / "r", **ident)
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    _edit_run_json(tmp_path / "copy", checkpoint=info["checkpoint"] | {"path": "/b/ckpt"},
                   corpus=info["corpus"] | {"path": "/b/val.jsonl"}, options={"out": str(tmp_path / "copy")})
    _edit_run_json(tmp_path / "r", ablation_parts={"p": {"experts": [1]}}, tables=info["tables"] + ["ablations"])
    fast = ["--skip-ablation", "--no-progress", "--out", str(tmp_path / "r.html")]
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "copy"), *fast], capsys)
    assert err.startswith(f"error: --compare {tmp_path / 'copy'}: a copy of this run, {tmp_path / 'r'} (the same "
                          "recording"), err
    for other in ({"started": 2.5}, {"checkpoint": info["checkpoint"] | {"sample": "s2"}},
                  {"corpus": {"path": "/a/val.jsonl", "fingerprint": "v2"}}):  # each another recording: compared
        _edit_run_json(tmp_path / "copy", **(ident | other))
        assert report.main([str(tmp_path / "r"), "--compare", str(tmp_path / "copy"), *fast]) == 0
    capsys.readouterr()
    source = {"name": "sglang", "mode": "per_token", "files": ["/a/expert_distribution_recorder_1.pt"], "passes": 2}
    for run, started, where, gpus in (("r", 1.5, "/a", 1), ("copy", 9.5, "/moved", 2)):  # imported again, moved
        _edit_run_json(tmp_path / run, kind="import", started=started, source=source | {
            "files": [f"{where}/expert_distribution_recorder_1.pt"], "placement": {"gpus": gpus}})
    err = _err([str(tmp_path / "r"), "--compare", str(tmp_path / "copy"), *fast], capsys)
    assert "(the same dump files, imported again)" in err, err
    _edit_run_json(tmp_path / "copy", source=source | {"files": ["/a/expert_distribution_recorder_2.pt"]})
    assert report.main([str(tmp_path / "r"), "--compare", str(tmp_path / "copy"), *fast]) == 0


@pytest.mark.slow  # a fresh interpreter
def test_a_report_without_the_model_sections_imports_no_torch(tmp_path):
    """--skip-ablation reads the run and the checkpoint's files (its label's fingerprint) only: torch came
    in through the error classes the command catches (AblationError beside the ablation code) and the
    model package, whose __init__ imported everything, for `model.checkpoint_files.weight_files` (the
    report of a 4,000-token run 6.0 -> 4.5 s and 500 -> 315 MB peak, the AVX2-only EPYC, 2026-12-07)."""
    import subprocess
    import sys

    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    write_run(run, domains=("code", "prose"))
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)  # listed and fingerprinted, never loaded
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"checkpoint": {"path": str(ckpt)}}))
    html = tmp_path / "report.html"
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
            f"sys.argv = ['report', {str(run)!r}, '--skip-ablation', '--no-progress', '--out', {str(html)!r}]; "
            "runpy.run_module('analyses.report', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.rstrip().endswith("torch imported: False"), p.stdout[-500:]
    assert f"{ckpt} (weights " in html.read_text()  # the label read the checkpoint's files
