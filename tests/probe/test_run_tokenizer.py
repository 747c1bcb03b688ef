"""The tokenizer a run was recorded (or made) with, as the jobs on the run take it: spec, ablate (whose
inputs importance and steer share), the report's token texts and the dashboard, from run.json's resolved
path and sha256 (`probe.job.run_tokenizer`); moved, changed and relative tokenizers."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

import probe
from analyses.ablate import AblateOptions
from analyses.ablate.select import AblationError
from analyses.ablate.__main__ import main as ablate_main
from probe.__main__ import main as cli_main
from probe.speculative import spec_prompts


def _tokenizer(env):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(env["ckpt"] / "tokenizer.json"))


def test_spec_into_a_run_takes_the_tokenizer_it_was_recorded_with(probe_env, tmp_path, capsys):
    """A run recorded with --tokenizer (a checkpoint without tokenizer.json): spec into it without the flag
    looked for the checkpoint's own and stopped, where ablate, importance and steer take the run's (a tour)."""
    import shutil

    from probe.record import RecordOptions, record

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    tok = tmp_path / "elsewhere" / "tok.json"
    tok.parent.mkdir()
    (ckpt / "tokenizer.json").rename(tok)
    run_dir = tmp_path / "rec"
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), tokenizer=str(tok), out=str(run_dir),
                         max_tokens=200, seq_len=32, progress=False))
    argv = ["spec", "--out", str(run_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
            "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    want = spec_prompts(probe_env["corpus"], _tokenizer(probe_env), 0, 8, 2)
    assert list(probe.open_run(run_dir).df("spec_decode").doc_id) == [d for d, _, _ in want]
    tok.rename(tok.with_name("moved.json"))  # gone since: an error naming it, as for a moved checkpoint or corpus
    assert cli_main(argv + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert str(tok) in err and err.count("\n") == 1, err
    assert cli_main(argv + ["--overwrite", "--tokenizer", str(tok.with_name("moved.json"))]) == 0  # the flag wins


def test_a_spec_only_run_keeps_the_tokenizer_it_was_given(probe_env, tmp_path, capsys):
    """`spec --out NEW --tokenizer T` kept no tokenizer in run.json, so `spec --out NEW --overwrite` without
    the flag took the checkpoint's (here, where it has none, it stopped), and the jobs and the dashboard on
    the run decoded with it (a review): run.json keeps T as a record does (path resolved, sha256), and a T
    changed since is refused; a run on the checkpoint's own tokenizer names no --tokenizer: it follows --ckpt."""
    import shutil

    from dashboards import data, ui
    from probe.corpus import fingerprint
    from probe.job import run_tokenizer

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    tok = tmp_path / "elsewhere" / "tok.json"
    tok.parent.mkdir()
    (ckpt / "tokenizer.json").rename(tok)
    out = tmp_path / "new"
    argv = ["spec", "--out", str(out), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
            "--no-progress"]
    assert cli_main(argv + ["--ckpt", str(ckpt), "--corpus", str(probe_env["corpus"]), "--tokenizer", str(tok)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["tokenizer"] == {"path": str(tok.resolve()), "fingerprint": fingerprint(tok)}
    assert run_tokenizer(info, "RUN") == str(tok.resolve())
    assert ui.tokenizer_for(data.RunRef("new", str(out), "probe", "complete", info)) is not None  # the token texts
    capsys.readouterr()
    assert cli_main(argv + ["--overwrite"]) == 0, capsys.readouterr().err  # the run's tokenizer, not the flag's
    assert json.loads((out / "run.json").read_text())["tokenizer"]["path"] == str(tok.resolve())  # kept
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=1))  # the same tokens, another sha256
    assert cli_main(argv + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"the run's tokenizer {tok.resolve()} has changed since" in err and err.count("\n") == 1, err
    own = tmp_path / "own"  # the control: the checkpoint's own tokenizer, which follows the checkpoint
    assert cli_main(["spec", "--out", str(own), "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]),
                     *argv[3:]]) == 0
    info = json.loads((own / "run.json").read_text())
    assert run_tokenizer(info, "RUN") is None
    assert info["tokenizer"]["path"] == str((probe_env["ckpt"] / "tokenizer.json").resolve())


def test_a_run_recorded_with_a_relative_tokenizer_is_read_from_any_folder(probe_env, tmp_path, monkeypatch,
                                                                          capsys):
    """A record given `--tokenizer tok.json` keeps the option as typed; ablate (and importance and steer,
    which share its inputs) took it relative to wherever they ran and stopped there ('--tokenizer tok.json:
    no tokenizer there'; a tour): the path run.json resolved is taken, and a tokenizer gone since is named."""
    import shutil

    from analyses.ablate.inputs import job_defaults
    from probe.record import RecordOptions, record

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    (tmp_path / "rec_here").mkdir()
    (ckpt / "tokenizer.json").rename(tmp_path / "rec_here" / "tok.json")
    monkeypatch.chdir(tmp_path / "rec_here")
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), tokenizer="tok.json",
                         out=str(tmp_path / "rec"), max_tokens=200, seq_len=32, progress=False))
    monkeypatch.chdir(tmp_path)
    opts, _ = job_defaults(AblateOptions(run=str(tmp_path / "rec")))
    assert Path(opts.tokenizer) == tmp_path / "rec_here" / "tok.json"
    from analyses.report.research import token_texts  # the report's token texts: they fell back to bare ids

    texts = token_texts(probe.open_run(tmp_path / "rec"), [65, 66])
    assert texts == _texts(tmp_path / "rec_here" / "tok.json", [65, 66]) != ["65", "66"]
    assert ablate_main(["--run", str(tmp_path / "rec"), "--experts", "1:0", "--domain-tokens", "50",
                        "--no-progress"]) == 0
    (tmp_path / "rec_here" / "tok.json").rename(tmp_path / "rec_here" / "moved.json")
    assert ablate_main(["--run", str(tmp_path / "rec"), "--out", str(tmp_path / "o"), "--experts", "1:0",
                        "--domain-tokens", "50", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "rec_here/tok.json is no longer there; pass --tokenizer" in err and err.strip().count("\n") == 0, err


def _texts(tokenizer: Path, ids) -> list[str]:
    from tokenizers import Tokenizer

    from probe.token_text import token_strings

    return token_strings(Tokenizer.from_file(str(tokenizer)), ids, quoted=True)


def test_a_run_an_out_makes_keeps_the_tokenizer_it_was_given(probe_env, tmp_path, capsys):
    """`ablate --out DIR --tokenizer T` (not into a --run) made a run whose run.json kept no tokenizer, so the
    jobs, the report and the dashboard on it took the checkpoint's (a review; importance and steer write
    their run.json alike): it keeps T as a record does (path resolved, sha256); a run on the checkpoint's
    own tokenizer names no --tokenizer, and follows the checkpoint."""
    import shutil

    from analyses.ablate.inputs import job_defaults
    from analyses.report.research import token_texts
    from dashboards import data, ui
    from probe.corpus import fingerprint
    from probe.job import run_tokenizer

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    tok = tmp_path / "elsewhere" / "tok.json"
    tok.parent.mkdir()
    (ckpt / "tokenizer.json").rename(tok)
    job = ["--corpus", str(probe_env["corpus"]), "--experts", "1:0", "--domain-tokens", "50", "--seq-len", "32",
           "--no-progress"]
    assert ablate_main(["--ckpt", str(ckpt), "--tokenizer", str(tok), "--out", str(tmp_path / "o"), *job]) == 0
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["kind"] == "ablations"
    assert info["tokenizer"] == {"path": str(tok.resolve()), "fingerprint": fingerprint(tok)}
    opts, _ = job_defaults(AblateOptions(run=str(tmp_path / "o")))
    assert opts.tokenizer == str(tok.resolve())
    assert token_texts(probe.open_run(tmp_path / "o"), [65, 66]) == _texts(tok, [65, 66]) != ["65", "66"]
    assert ui.tokenizer_for(data.RunRef("o", str(tmp_path / "o"), "probe", "complete", info)) is not None
    assert ablate_main(["--ckpt", str(probe_env["ckpt"]), "--out", str(tmp_path / "own"), *job]) == 0  # the control
    info = json.loads((tmp_path / "own" / "run.json").read_text())
    assert run_tokenizer(info, "RUN") is None
    assert info["tokenizer"]["path"] == str((probe_env["ckpt"] / "tokenizer.json").resolve())


# ---------------------------------------------------------------- a checkpoint's tokenizer.json changed since
@pytest.fixture(scope="module")
def own_run(probe_env, tmp_path_factory):
    """A small record run read with its checkpoint's own tokenizer.json (a copy of the checkpoint's, which the
    tests swap for another tokenizer, `_swapped`), and that checkpoint."""
    import shutil

    from probe.record import RecordOptions, record

    base = tmp_path_factory.mktemp("own_run")
    ckpt = shutil.copytree(probe_env["ckpt"], base / "ckpt")
    record(RecordOptions(ckpt=str(ckpt), corpus=str(probe_env["corpus"]), out=str(base / "run"), max_tokens=100,
                         seq_len=32, progress=False))
    return base / "run", ckpt


@contextlib.contextmanager
def _swapped(tok: Path):
    """`tok` holds another tokenizer while inside: the ids of its two longest tokens swapped (the same vocabulary,
    other ids), as a tokenizer.json downloaded again or edited may hold."""
    before = tok.read_bytes()
    spec = json.loads(before)
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=len)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tok.write_text(json.dumps(spec))
    try:
        yield
    finally:
        tok.write_bytes(before)


def _changed(run: Path, ckpt: Path) -> str:
    return (f"{run}: the run's tokenizer, its checkpoint's {ckpt / 'tokenizer.json'}, has changed since the run was "
            "recorded (its sha256 is not the one run.json keeps), so its token ids would not be the run's; pass "
            "--tokenizer with the run's tokenizer, or with this file to take it anyway")


def test_ablate_importance_and_steer_refuse_a_checkpoint_tokenizer_changed_since(own_run, probe_env, tmp_path, capsys):
    """A run recorded with its checkpoint's own tokenizer.json: run_tokenizer said None ('the checkpoint's own')
    and nothing checked that file, so a tokenizer.json changed since read the corpus into other token ids, and
    ablate, importance and steer compared their routing with the run's on other tokens (a review). Refused, in
    one line naming the run and the file; --tokenizer takes a file; a run recorded before run.json kept a sha256
    is read unchecked, as before."""
    from analyses.ablate.inputs import job_defaults
    from analyses.importance.__main__ import main as importance_main
    from analyses.steer.__main__ import main as steer_main
    from helpers.cli_errors import assert_one_line_error

    run, ckpt = own_run
    tok = ckpt / "tokenizer.json"
    assert job_defaults(AblateOptions(run=str(run)))[0].tokenizer is None  # the control: the checkpoint's own
    argv = {ablate_main: ["--top", "1"], importance_main: ["--layers", "1"], steer_main: ["--experts", "1:0"]}
    with _swapped(tok):
        for cli, extra in argv.items():
            err = assert_one_line_error(cli(["--run", str(run), "--out", str(tmp_path / "o"), *extra,
                                             "--no-progress"]), capsys, _changed(run, ckpt))
            assert err.endswith("to take it anyway"), err
        assert job_defaults(AblateOptions(run=str(run), tokenizer=str(tok)))[0].tokenizer == str(tok)  # the flag
        info = json.loads((run / "run.json").read_text())
        info["tokenizer"]["fingerprint"] = None  # recorded before run.json kept it: nothing to check against
        old = tmp_path / "old"
        old.mkdir()
        (old / "run.json").write_text(json.dumps(info))
        assert job_defaults(AblateOptions(run=str(old)))[0].tokenizer is None
    other = Path(shutil.copytree(probe_env["ckpt"], tmp_path / "other"))  # --ckpt: its tokenizer.json is checked
    with _swapped(other / "tokenizer.json"), pytest.raises(AblationError) as ei:
        job_defaults(AblateOptions(run=str(run), ckpt=str(other)))
    assert str(ei.value) == (f"{run}: the checkpoint's {other / 'tokenizer.json'} is not the tokenizer the run was "
                             f"recorded with, {tok.resolve()} (its sha256 is not the one run.json keeps), so its "
                             "token ids would not be the run's; pass --tokenizer with the run's tokenizer, or with "
                             "this file to take it anyway")
    assert job_defaults(AblateOptions(run=str(run), ckpt=str(other)))[0].tokenizer is None  # the same file: taken


def test_spec_into_a_run_refuses_a_checkpoint_tokenizer_changed_since(own_run, capsys):
    """spec --out RUN (whose tables join the run's) read the prompts with a checkpoint's tokenizer.json changed
    since the run, unchecked."""
    from helpers.cli_errors import assert_one_line_error

    run, ckpt = own_run
    argv = ["spec", "--out", str(run), "--prompt-tokens", "8", "--new-tokens", "4", "--max-prompts", "2",
            "--no-progress", "--overwrite"]
    with _swapped(ckpt / "tokenizer.json"):
        assert_one_line_error(cli_main(argv), capsys, _changed(Path(f"--out {run}"), ckpt))
    assert cli_main(argv) == 0, capsys.readouterr().err  # the control: the tokenizer it was recorded with


def test_the_reports_model_sections_refuse_a_checkpoint_tokenizer_changed_since(own_run, tmp_path, capsys,
                                                                                 monkeypatch):
    """The report checks the run's tokenizer before its ablations, which then ran on other token ids."""
    from analyses.report import __main__ as report
    from helpers.cli_errors import assert_one_line_error

    run, ckpt = own_run
    monkeypatch.setattr(report, "compute", lambda *a: (_ for _ in ()).throw(report.ReportError("stopped by the test")))
    argv = [str(run), "--no-progress", "--out", str(tmp_path / "r.html")]
    with _swapped(ckpt / "tokenizer.json"):
        assert_one_line_error(report.main(argv), capsys, _changed(run, ckpt))
    assert report.main(argv) == 2 and "stopped by the test" in capsys.readouterr().err  # the control: checked, run


def test_the_notebooks_refuse_a_checkpoint_tokenizer_changed_since(own_run):
    """need_model(..., tokenizer=True), the first cell of the notebooks that run the model on the run's corpus,
    let a checkpoint's tokenizer.json changed since through; refused with the notebooks' advice (no flags)."""
    from analyses.metrics import MetricsError
    from analyses.notebook_utils import need_model

    run, ckpt = own_run
    what = "this notebook (ablations on the run's checkpoint)"
    assert need_model(probe.open_run(run), what, tokenizer=True) is None  # the control
    with _swapped(ckpt / "tokenizer.json"), pytest.raises(MetricsError) as ei:
        need_model(probe.open_run(run), what, tokenizer=True)
    assert str(ei.value) == (f"{run}: the run's tokenizer, its checkpoint's {ckpt / 'tokenizer.json'}, has changed "
                             "since the run was recorded (its sha256 is not the one run.json keeps), so its token ids "
                             f"would not be the run's; {what} runs the run's checkpoint on its corpus, read with the "
                             "tokenizer it was recorded with: point $DSV3_NOTEBOOK_RUN at a run recorded on this "
                             "tokenizer, or restore the tokenizer the run was recorded with")


def test_a_checkpoint_tokenizer_linked_to_a_blob_is_the_runs(own_run, tmp_path):
    """A download cache's checkpoint links tokenizer.json to a blob of another name, which run.json keeps as the
    path it resolved; its sha256 was taken under the name tokenizer.json (`probe.record.tokenizer_info`), and
    hashed under the blob's name the file would read as changed, and every job on such a run be refused."""
    from analyses.ablate.inputs import job_defaults
    from probe.record import tokenizer_info

    run, ckpt = own_run
    linked = Path(shutil.copytree(ckpt, tmp_path / "snapshot"))
    blob = tmp_path / "blobs" / "0a1b2c"
    blob.parent.mkdir()
    (linked / "tokenizer.json").rename(blob)
    (linked / "tokenizer.json").symlink_to(blob)
    info = json.loads((run / "run.json").read_text())
    info["checkpoint"]["path"], info["tokenizer"] = str(linked), tokenizer_info(None, linked)
    assert info["tokenizer"]["path"] == str(blob)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    assert job_defaults(AblateOptions(run=str(tmp_path / "run")))[0].tokenizer is None
