"""The ablation command (python -m analyses.ablate) and its job on random tiny checkpoints: end to end, its
refusals, --loads-from, two processes, resume of a moved run (the hooks and evaluate: test_ablate.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from analyses.ablate import AblateOptions, Ablation, ablate, evaluate
from analyses.ablate.__main__ import main
from helpers.ablate_batches import random_batches
from helpers.cli_errors import (assert_one_line_error, assert_out_under_a_file_is_refused, unwritable_msg,
                                  unwritable_out)
from helpers.processes import TORCHRUN

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------- CLI
def _cli(env, out, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--max-tokens", "1000", "--no-progress", *extra]


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_cli_end_to_end_writes_the_ablations_table(probe_env, tmp_path, capsys):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("- {name: top2, top: 2}\n- {name: random2, random: 2, seed: 3}\n"
                    "- {name: code-top2, top: 2, domain: code}\n"
                    "- {name: z, experts: '1:0+1', mode: zero, shared: true, layers: [1]}\n")
    out = tmp_path / "run"
    assert main(_cli(probe_env, out, "--spec", str(spec))) == 0
    assert "wrote" in capsys.readouterr().out
    run = probe.open_run(out)
    assert run.tables == ["ablations"] and run.status == "complete"
    df = run.df("ablations")
    assert list(dict.fromkeys(df.ablation)) == ["top2", "random2", "code-top2", "z"]
    assert len(df) == 4 * 3 and df.spec.map(json.loads).map(lambda s: "disabled" in s).all()
    z = df[df.ablation == "z"].iloc[0]
    assert z["shared"] and z["mode"] == "zero" and not z["renormalise"] and z.n_disabled == 2
    parts = run.files("ablations")
    assert main(_cli(probe_env, out, "--spec", str(spec))) == 0  # the same command replaces its part
    assert probe.open_run(out).files("ablations") == parts
    assert not list((out / "ablations").glob(".*"))  # no temporary left behind
    assert main(_cli(probe_env, out, "--top", "1", "--control")) == 0  # another part alongside
    assert set(probe.open_run(out).df("ablations").ablation) == {"top2", "random2", "code-top2", "z",
                                                                    "top1", "top1-control"}
    assert "already held an ablation named" not in capsys.readouterr().err  # control: new names
    # a name that already names other experts: both kept, and said (a sweep user's review)
    assert main(_cli(probe_env, out, "--experts", "1:5", "--name", "top2")) == 0
    assert "already held an ablation named 'top2' that disables other experts" in capsys.readouterr().err
    assert probe.open_run(out).df("ablations").query("ablation == 'top2'").spec.nunique() == 2


@pytest.mark.slow  # a whole app or command: the quick loop leaves it out
def test_cli_with_a_recorded_run_uses_its_loads(probe_env, tmp_path):
    from probe.record import RecordOptions, record

    run_dir = record(RecordOptions(ckpt=str(probe_env["ckpt"]), corpus=str(probe_env["corpus"]),
                                   out=str(tmp_path / "rec"), max_tokens=1000, seq_len=32, batch_size=4,
                                   kv_stats=False, mtp=False, progress=False))
    common = dict(seq_len=None, batch_size=None, progress=False)
    _, from_run = ablate(AblateOptions(run=str(run_dir), **common), [Ablation(top=2)])
    _, from_base = ablate(AblateOptions(run=str(run_dir), loads_from="baseline", **common), [Ablation(top=2)])
    assert json.loads(from_run.spec[0])["loads"].startswith("run:")
    # the same tokens: the run's loads and the baseline pass's rank the same experts
    assert json.loads(from_run.spec[0])["disabled"] == json.loads(from_base.spec[0])["disabled"]
    assert from_run.loss.tolist() == from_base.loss.tolist()
    run = probe.open_run(run_dir)
    assert "ablations" in run.tables and "tokens" in run.tables
    tok = run.df("tokens")
    assert from_run.tokens[0] == tok.loss.notna().sum()
    assert from_run.baseline_loss[0] == pytest.approx(tok.loss.astype("float64").mean(), rel=1e-6)


@pytest.mark.parametrize("extra,msg", [
    (["--experts", "1:99"], "expert 1:99 out of range"),
    (["--experts", "0:1"], "layer 0 is dense"),
    # without a run the loads come from the baseline pass: the count alone decides first (the routing
    # guard ran only after that pass; a review)
    (["--top", "13"], "top 13 leaves 3 of the 16 experts a layer, fewer than the 4"),
    (["--top", "1", "--domain", "poetry"], "ablation 'top1-poetry': no tokens of domain 'poetry' in the sample"),
    (["--spec", str(REPO / "analyses" / "sweeps" / "top_vs_random.yaml"), "--seed", "7"],
     "--spec excludes the single-ablation flags (got --seed)"),  # it was ignored (a review)
    ([], "nothing to ablate"),
    (["--random", "2", "--control"], "--control adds the random counterpart"),
    (["--control"], "--control adds the random counterpart of --top N: use it with --top"),  # "nothing to ablate"
    (["--domain", "code"], "--domain code: it picks that domain's own top experts: use it with --top N"),
    (["--random", "2", "--domain", "code"], "--domain code: it picks"),  # it was ignored
    (["--top", "1", "--batch-size", "0"], "--batch-size 0: must be >= 1"),  # it ran with 8, silently (a review)
    (["--experts", ""], "--experts '': no experts"),  # it ran a no-op ablation named 'none' (a review)
    (["--experts", ",,"], "--experts ',,': no experts"),
    # ignored flags: layer 1 was ablated, and nothing drawn (found scripting a sweep)
    (["--layers", "2", "--experts", "1:3"], "--layers 2: it chooses the layers of --top, --random and --shared"),
    (["--seed", "3", "--top", "1"], "--seed 3: it seeds the draw of --random or --control"),
])
def test_cli_bad_inputs_are_one_line_errors(probe_env, tmp_path, capsys, extra, msg):
    assert_one_line_error(main(_cli(probe_env, tmp_path / "o", *extra)), capsys, msg, tmp_path / "o")


def test_an_out_under_a_file_is_refused_before_the_model_loads(probe_env, tmp_path, capsys):
    assert_out_under_a_file_is_refused(main, lambda out, *a: _cli(probe_env, out, *a), tmp_path, capsys, "--top", "1")


def test_an_out_inside_the_corpus_is_refused_by_ablate_importance_and_steer(probe_env, tmp_path, capsys):
    """A table written into a folder of the corpus made its Parquet files documents of that corpus, which
    no record (nor the run's --resume) could read again (a tour); record refused it already."""
    import shutil

    from analyses.importance.__main__ import main as importance
    from analyses.steer.__main__ import main as steer

    corpus = shutil.copytree(probe_env["corpus"], tmp_path / "corpus")
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    for command, extra in ((main, ["--top", "1"]), (importance, []), (steer, ["--experts", "1:3"])):
        argv = _cli(probe_env, corpus / "tables", *extra)
        argv[argv.index("--corpus") + 1] = str(corpus)
        assert_one_line_error(command(argv), capsys, f"--out {corpus / 'tables'}: lies inside the corpus {corpus}")
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == files


def test_an_out_the_os_refuses_is_refused_before_the_model_loads(probe_env, capsys, monkeypatch):
    out = unwritable_out(monkeypatch)  # os.access says yes; found only when the table was written (a review)
    assert_one_line_error(main(_cli(probe_env, out, "--top", "1")), capsys, unwritable_msg("--out", out))


def test_cli_empty_run_and_empty_corpus(probe_env, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    (empty / "expert_load").mkdir(parents=True)
    info = {"status": "complete", "planned": {"tokens": 0}, "checkpoint": {"path": str(probe_env["ckpt"])},
            "corpus": {"path": str(probe_env["corpus"])}, "options": {"seq_len": 32}}
    (empty / "run.json").write_text(json.dumps(info))
    assert main(["--run", str(empty), "--top", "2", "--no-progress"]) == 2
    assert "empty run: its expert_load table has no rows" in capsys.readouterr().err
    # a complete run whose expert_load run.json lists is gone: named as lost, not as DuckDB's error
    (empty / "expert_load").rmdir()
    (empty / "run.json").write_text(json.dumps(info | {"tables": ["expert_load"]}))
    assert main(["--run", str(empty), "--top", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: {empty / 'expert_load'}: listed in run.json but has no part files: "
                                       "deleted? (the run is complete; record it again)\n")
    (tmp_path / "blank.jsonl").write_text("\n")
    assert main(_cli(probe_env, tmp_path / "o", "--corpus", str(tmp_path / "blank.jsonl"), "--random", "1")) == 2
    assert "corpus has no text" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nope"), "--top", "1"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_sample_with_nothing_to_score_is_refused_before_the_model_runs(probe_env, tmp_path, capsys):
    """A run recorded with --max-tokens 1 (a smoke test) handed its cap on: one window of one token,
    no next token to score. ablate, importance and steer wrote empty tables ('Empty DataFrame') and
    the report then failed on a missing domain; the shared sample now says what is wrong."""
    assert main(_cli(probe_env, tmp_path / "o", "--top", "1", "--max-tokens", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the 1 window evaluated holds one token, which leaves no token to score (a token's "
                        "loss needs the next one); the sample is capped at 1 token in all (max_tokens)"), err
    assert "\n" not in err and not (tmp_path / "o").exists()
    # control: two tokens leave one to score
    assert main(_cli(probe_env, tmp_path / "o", "--top", "1", "--max-tokens", "2")) == 0


def test_a_run_whose_own_cap_leaves_nothing_to_score_is_named_as_the_cause(probe_env, tmp_path, capsys):
    """Within a run's windows, the run's cap limits the sample: the error named max_tokens as if the
    job had been given it (a review); it names the run's own --max-tokens."""
    from helpers.analysis_runs import corpus_order_run

    rec = corpus_order_run(probe_env, tmp_path / "rec", 1)
    assert main(["--run", str(rec), "--top", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the sample is capped at the run's own 1 token (its --max-tokens, whose windows this job "
                        "samples within; record the run with more)"), err


def test_domain_tokens_takes_a_balanced_sample():
    from analyses.ablate import limit_per_domain

    ws = [w for b in random_batches(n_windows=8, seq=20) for w in b.windows]
    ws = sorted(ws, key=lambda w: w.domain)  # stored domain by domain
    got = limit_per_domain(iter(ws), 25, None)
    per = {d: sum(len(w.ids) for w in got if w.domain == d) for d in ("code", "prose")}
    assert per == {"code": 25, "prose": 25}
    assert sum(len(w.ids) for w in limit_per_domain(iter(ws), 25, 30)) == 30


def test_domain_tokens_sample_within_the_run_unless_max_tokens_is_given(probe_env, tmp_path):
    """--run without --max-tokens: --domain-tokens of each domain of the run's own windows (prose, which the
    run's cap left out, was ablated); with --max-tokens, of every domain of the corpus (a balanced sample)."""
    from helpers.analysis_runs import corpus_order_run

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    assert main(["--run", str(rec), "--experts", "1:0", "--domain-tokens", "100", "--no-progress"]) == 0
    assert set(probe.open_run(rec).df("ablations").domain) == {"all", "code"}
    assert main(["--run", str(rec), "--out", str(tmp_path / "o"), "--experts", "1:0", "--domain-tokens", "100",
                 "--max-tokens", "150", "--no-progress"]) == 0
    assert set(probe.open_run(tmp_path / "o").df("ablations").domain) == {"all", "code", "prose"}


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_caller_samples_within_the_run_with_a_max_tokens_of_its_own(probe_env, tmp_path):
    """`within_run` with max_tokens given (the report's sweep): the run's windows, up to the cap it was
    recorded with, then at most max_tokens of them; a run without a cap: the corpus sample, as without."""
    from analyses.ablate.inputs import job_defaults, sample_windows
    from analyses.ablate.select import AblationError
    from helpers.analysis_runs import corpus_order_run
    from probe.job import checkpoint_args, load_tokenizer

    args = checkpoint_args(probe_env["ckpt"])
    tok = load_tokenizer(None, probe_env["ckpt"], args.vocab_size)

    def sample(rec, **kw):
        opts, _ = job_defaults(AblateOptions(run=str(rec), seq_len=32, **kw))
        windows, domains = sample_windows(opts, probe_env["corpus"], tok, args)
        return [(w.domain, len(w.ids)) for w in windows], domains

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    inside, domains = sample(rec, max_tokens=3000, domain_tokens=1500, within_run=True)
    assert domains == ["code"] and sum(n for _, n in inside) == 150
    assert sample(rec, max_tokens=3000, domain_tokens=1500)[1] == ["code", "prose"]  # ablate's --max-tokens
    assert sum(n for _, n in sample(rec, max_tokens=60, domain_tokens=1500, within_run=True)[0]) == 60
    assert sum(n for _, n in sample(rec, max_tokens=60, within_run=True)[0]) == 60
    whole = corpus_order_run(probe_env, tmp_path / "whole", None)
    assert sample(whole, max_tokens=300, domain_tokens=150, within_run=True) == \
        sample(whole, max_tokens=300, domain_tokens=150)
    with pytest.raises(AblationError, match="needs --run"):
        job_defaults(AblateOptions(out=str(tmp_path / "o"), within_run=True))


def test_windows_other_than_the_runs_are_a_corpus_sample_said_once(probe_env, tmp_path, capsys):
    """--order, --seq-len or --bos given unlike the run's (no --max-tokens) make windows that are not the run's
    own: the job samples the corpus, one note says so and its part records sample: corpus (it said `run`);
    the run's own values given keep the sample within the run, and a caller that set `within_run` is refused."""
    from analyses.ablate.inputs import job_defaults
    from analyses.ablate.select import AblationError
    from helpers.analysis_runs import corpus_order_run

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)  # order corpus, seq_len 32, BOS on: code only
    assert job_defaults(AblateOptions(run=str(rec), order="corpus", seq_len=32, add_bos=True))[0].within_run
    assert capsys.readouterr().err == ""
    for given, named in (({"seq_len": 16}, "--seq-len 16 (the run's: 32)"),
                         ({"order": "domains"}, "--order domains (the run's: corpus)"),
                         ({"add_bos": False}, "--no-bos (the run's: --bos)")):
        opts, _ = job_defaults(AblateOptions(run=str(rec), **given))
        err = capsys.readouterr().err
        assert not opts.within_run and err.count("\n") == 1 and named in err, (given, err)
        assert "samples the corpus as if --max-tokens 150 (the run's) were given" in err
        with pytest.raises(AblationError, match=f"^{re.escape(named)}: a sample within the run's windows"):
            job_defaults(AblateOptions(run=str(rec), max_tokens=100, within_run=True, **given))
    assert main(["--run", str(rec), "--experts", "1:0", "--domain-tokens", "100", "--seq-len", "16",
                 "--no-progress"]) == 0
    assert "not the run's own windows" in capsys.readouterr().err
    run = probe.open_run(rec)
    assert [e["sample"] for e in run.info["ablation_parts"].values()] == ["corpus"]
    assert set(run.df("ablations").domain) == {"all", "code", "prose"}  # the corpus's domains, not the run's


def test_a_corpus_or_tokenizer_of_other_bytes_is_a_corpus_sample_said_once(probe_env, tmp_path, capsys):
    """A --corpus or --tokenizer given with --run that holds other bytes than the run's made other windows,
    sampled as the run's own (`sample: run`; a review): now a corpus sample with one note, as for --seq-len.
    A copy of the run's corpus moved elsewhere and a copy of its tokenizer named otherwise are the run's."""
    import json
    import shutil

    from analyses.ablate.inputs import job_defaults
    from analyses.ablate.select import AblationError
    from helpers.analysis_runs import corpus_order_run

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    moved = shutil.copytree(probe_env["corpus"], tmp_path / "moved")
    tok = shutil.copy(probe_env["ckpt"] / "tokenizer.json", tmp_path / "tok-copy.json")
    for same in ({"corpus": str(moved)}, {"tokenizer": str(tok)}, {"corpus": str(moved), "tokenizer": str(tok)}):
        assert job_defaults(AblateOptions(run=str(rec), **same))[0].within_run, same
        assert capsys.readouterr().err == ""
    other = shutil.copytree(probe_env["corpus"], tmp_path / "other")
    first = next(p for p in sorted(other.rglob("*")) if p.is_file())
    first.write_bytes(first.read_bytes() + b"\n")
    merges = json.loads(tok.read_text())
    merges["model"]["merges"] = merges["model"]["merges"][:20]
    (tmp_path / "tok-other.json").write_text(json.dumps(merges))
    for key, path in (("corpus", other), ("tokenizer", tmp_path / "tok-other.json")):
        opts, _ = job_defaults(AblateOptions(run=str(rec), **{key: str(path)}))
        err = capsys.readouterr().err
        assert not opts.within_run and err.count("\n") == 1, (key, err)
        assert f"--{key} {path} (the run's: " in err and "samples the corpus as if --max-tokens 150" in err
        with pytest.raises(AblationError, match=f"^--{key} {re.escape(str(path))} .*: a sample within the run's "
                                                f"windows reads the run's own {key} \\(its bytes, wherever it lies now\\)$"):
            job_defaults(AblateOptions(run=str(rec), max_tokens=100, within_run=True, **{key: str(path)}))


def test_help():
    from analyses.ablate.__main__ import parser

    text = parser().format_help()
    assert "--renormalise" in text and "torchrun" in text and "--model-parallel" in text and "--order" in text


@pytest.mark.slow
def test_two_processes_equal_one(probe_env, tmp_path):
    args = _cli(probe_env, tmp_path / "one", "--top", "2", "--control")
    assert main(args) == 0
    # the job's flags after `--`, as the README writes them: torchrun reads an abbreviated option of its
    # own in `--run` (its --run-path) otherwise, and stops; --run takes the first run's own settings
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", "2",
           "-m", "analyses.ablate", "--", "--run", str(tmp_path / "one"), "--out", str(tmp_path / "two"),
           "--top", "2", "--control", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env=os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = probe.open_run(tmp_path / "one").df("ablations"), probe.open_run(tmp_path / "two").df("ablations")
    (part,) = probe.open_run(tmp_path / "two").info["ablation_parts"].values()
    assert (part["world"]["size"], part["world"]["replicas"], part["world"]["model_parallel"]) == (2, 2, 1)
    assert one[["ablation", "domain", "tokens", "spec"]].equals(two[["ablation", "domain", "tokens", "spec"]])
    for col in ("loss", "baseline_loss", "delta", "routing_changed", "experts_changed"):
        np.testing.assert_allclose(one[col], two[col], rtol=1e-9, atol=1e-12)


def test_a_changed_checkpoint_and_a_killed_record_are_refused_with_the_way_on(probe_env, tmp_path, capsys):
    """ablate, importance and steer took a run's checkpoint whose weights had changed since the run was
    recorded, silently (spec refused it), and their parts kept only the layout fingerprint, the same
    as before the change; a record killed mid-run left its run refused for good as "still being
    recorded" (a review). Each command's check is the same (`probe.job.run_inputs`, `check_finished`)."""
    import shutil

    from analyses.ablate.inputs import job_meta
    from analyses.importance.__main__ import main as importance_main
    from analyses.steer.__main__ import main as steer_main
    from helpers.checkpoints import edit_tensors
    from probe.ckpt_identity import checkpoint_identity
    from probe.writer import writer_lock

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    run = tmp_path / "run"
    (run / "expert_load").mkdir(parents=True)
    info = {"status": "complete", "checkpoint": checkpoint_identity(ckpt),
            "corpus": {"path": str(probe_env["corpus"])}, "options": {"seq_len": 32}, "planned": {"tokens": 0}}
    (run / "run.json").write_text(json.dumps(info))
    assert main(["--run", str(run), "--top", "1", "--no-progress"]) == 2  # the control: not refused for the model
    assert "empty run" in capsys.readouterr().err
    before = job_meta(ckpt, probe_env["corpus"], AblateOptions())["checkpoint"]
    weights = next(ckpt.glob("*.safetensors"))
    edit_tensors(weights, lambda t: {k: (v + 1 if k.endswith("e_score_correction_bias") else v) for k, v in t.items()})
    after = job_meta(ckpt, probe_env["corpus"], AblateOptions())["checkpoint"]
    assert before["fingerprint"] == after["fingerprint"] and before["sample"] != after["sample"]
    argv = {main: ["--top", "1"], importance_main: ["--layers", "1"], steer_main: ["--experts", "1:0"]}
    for cli, extra in argv.items():
        assert_one_line_error(cli(["--run", str(run), *extra, "--no-progress"]), capsys,
                              f"{run}: the checkpoint at {ckpt} has changed since the run was recorded")
    assert main(["--run", str(run), "--ckpt", str(ckpt), "--top", "1", "--no-progress"]) == 2  # --ckpt: taken
    assert "empty run" in capsys.readouterr().err

    (run / "run.json").write_text(json.dumps(info | {"status": "running", "checkpoint": checkpoint_identity(ckpt)}))
    for cli, extra in argv.items():
        assert_one_line_error(cli(["--run", str(run), *extra, "--no-progress"]), capsys,
                              f"{run}: its record stopped before the end (run.json says running, and no record job "
                              "holds the run): finish it with the record command that wrote it plus --resume")
    with writer_lock(run):  # a record job at work
        for cli, extra in argv.items():
            assert_one_line_error(cli(["--run", str(run), *extra, "--no-progress"]), capsys,
                                  f"{run}: the run is still being recorded (status running)")


def test_a_sweep_entry_that_names_no_expert_is_refused(tmp_path, capsys):
    """A spec entry `experts: ""` (or `{1: []}`) ran a no-op ablation with delta 0, which the flag form
    refuses (a review)."""
    for text in ('- {name: l1, experts: ""}\n', "- {name: l1, experts: {1: []}}\n"):
        (tmp_path / "s.yaml").write_text(text)
        assert_one_line_error(main(["--out", str(tmp_path / "o"), "--spec", str(tmp_path / "s.yaml")]), capsys,
                              f"spec file {tmp_path / 's.yaml'}: ablation #1 ('l1'): experts names no expert",
                              tmp_path / "o")


def test_a_sweep_entry_that_names_no_layer_is_refused(tmp_path, capsys):
    """`layers: []` gave top, random and shared no layer to act on: the entry ran as a no-op with delta 0
    and n_disabled 0, as `experts: ""` did (found scripting a sweep); the flag form refuses `--layers ''`."""
    for text in ("- {name: t1, top: 1, layers: []}\n", "- {name: sh, shared: true, layers: []}\n"):
        (tmp_path / "s.yaml").write_text(text)
        name = text.split(",")[0].split()[-1]
        assert_one_line_error(main(["--out", str(tmp_path / "o"), "--spec", str(tmp_path / "s.yaml")]), capsys,
                              f"spec file {tmp_path / 's.yaml'}: ablation #1 ('{name}'): layers names no layer",
                              tmp_path / "o")


def test_the_sample_says_what_the_reader_skipped_or_replaced(probe_env, tmp_path, capsys):
    """ablate, importance and steer (`sample_windows`) read a corpus with a binary file and a Latin-1 one
    without a word, where record names both (a review)."""
    from analyses.ablate.inputs import sample_windows
    from probe.job import checkpoint_args, load_tokenizer

    corpus = tmp_path / "c"
    (corpus / "a").mkdir(parents=True)
    (corpus / "b").mkdir()
    (corpus / "a" / "p.txt").write_text("plain words for the model to read " * 20)
    (corpus / "a" / "blob.bin").write_bytes(b"\x00\x01binary" * 50)
    (corpus / "b" / "x.txt").write_bytes("caf\xe9 au lait, cr\xe8me ".encode("latin-1") * 20)
    args = checkpoint_args(probe_env["ckpt"])
    tok = load_tokenizer(None, probe_env["ckpt"], args.vocab_size)
    windows, domains = sample_windows(AblateOptions(seq_len=32, order="domains"), corpus, tok, args)
    err = capsys.readouterr().err
    assert domains == ["a", "b"] and windows
    assert "binary file(s) in the corpus skipped (a/blob.bin)" in err, err
    assert "not UTF-8 replaced by U+FFFD in 1 file(s) (b/x.txt)" in err, err


@pytest.mark.parametrize("extra,want", [
    # it said "--batch-size must be >= 1 and --seq-len >= 2", naming neither the flag at fault nor its value
    (["--top", "1", "--seq-len", "0"], "--seq-len 0: must be >= 2 (tokens per window)"),
    (["--top", "1", "--seq-len", "1"], "--seq-len 1: must be >= 2 (tokens per window)"),
    (["--top", "1", "--batch-size", "-2"], "--batch-size -2: must be >= 1 (windows per forward pass)"),
    # --top 0 was taken and wrote a no-op ablation `top0`; --random 0 likewise
    (["--top", "0"], "--top 0: must be >= 1 (experts to disable per layer)"),
    (["--top", "-1"], "--top -1: must be >= 1 (experts to disable per layer)"),
    (["--random", "0"], "--random 0: must be >= 1 (experts to disable per layer)"),
])
def test_a_bad_number_is_named_with_its_value(probe_env, tmp_path, capsys, extra, want):
    err = assert_one_line_error(main(_cli(probe_env, tmp_path / "o", *extra)), capsys, want, tmp_path / "o")
    assert err == f"error: {want}"


def test_a_spec_file_that_is_not_utf8_is_named(tmp_path, capsys):
    """It said "error: 'utf-8' codec can't decode byte 0xff in position 0: ...", naming no file."""
    spec = tmp_path / "sweep.yaml"
    spec.write_bytes(b"\xff\xfe- {top: 1}\n")
    err = assert_one_line_error(main(["--out", str(tmp_path / "o"), "--spec", str(spec)]), capsys, str(spec),
                                tmp_path / "o")
    assert err == (f"error: spec file {spec}: not UTF-8 text (byte 0xff at offset 0); a sweep is a YAML or "
                   "JSON list")


def test_an_ablation_that_strands_an_expert_says_so_and_counts_it(probe_env, tmp_path, capsys):
    """Disabling 3 of a group's 4 experts leaves the 4th unchoosable (a group is scored by its two best):
    the command now names it and counts it in n_disabled (a sweep user's review); the control strands none."""
    out = tmp_path / "o"
    assert main(_cli(probe_env, out, "--experts", "1:0+1+2", "--max-tokens", "300")) == 0
    assert ("note: ablation 'experts-1:0+1+2' also removes experts it leaves alone in their group (layer 1: 3)"
            in capsys.readouterr().err)
    assert main(_cli(probe_env, out, "--experts", "1:0+4+8", "--max-tokens", "300")) == 0
    assert "also removes" not in capsys.readouterr().err
    df = probe.open_run(out).df("ablations").drop_duplicates("ablation").set_index("ablation")
    assert df.loc["experts-1:0+1+2", "n_disabled"] == 4 and df.loc["experts-1:0+4+8", "n_disabled"] == 3


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_same_command_on_a_moved_run_replaces_its_part(probe_env, tmp_path):
    """A part's key held the run's, checkpoint's and corpus' absolute paths: the same sweep on a copied or moved
    run wrote a second part beside the first, every row twice under one name; and the tokenizer was in neither
    the key nor the part's record (a sweep user's review). Now keyed by content, the tokenizer included."""
    import shutil

    run = tmp_path / "run"
    rec_args = ["--run", str(run), "--top", "2", "--no-progress", "--max-tokens", "300", "--seq-len", "32"]
    from helpers.records import rec

    rec(probe_env, run, max_tokens=600, seq_len=32)
    assert main(rec_args) == 0
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert main([*rec_args[:1], str(moved), *rec_args[2:]]) == 0
    done = probe.open_run(moved)
    assert len(done.files("ablations")) == 1 and not done.df("ablations").duplicated(["ablation", "domain"]).any()
    (entry,) = done.info["ablation_parts"].values()
    assert entry["tokenizer"]["fingerprint"] is not None
    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt-copy")  # the same model at another path
    assert main([*rec_args[:1], str(moved), *rec_args[2:], "--ckpt", str(ckpt)]) == 0
    assert len(probe.open_run(moved).files("ablations")) == 1
    # the control: another tokenizer file (the same tokens, another file) is another part
    tok = tmp_path / "tok.json"
    tok.write_text((probe_env["ckpt"] / "tokenizer.json").read_text() + "\n")
    assert main([*rec_args[:1], str(moved), *rec_args[2:], "--ckpt", str(ckpt), "--tokenizer", str(tok)]) == 0
    assert len(probe.open_run(moved).files("ablations")) == 2


def test_write_ablations_keys_its_part_by_its_inputs_content(tiny, tmp_path):
    """The library's writer keys a part as the command does, by its inputs' content, not their paths: the same
    rows written for the same checkpoint at another path replace the part; another corpus is another part."""
    from analyses.ablate.run import write_ablations

    df, _ = evaluate(tiny, random_batches(), [Ablation(name="x", experts={1: [0, 3]})])
    meta = {"checkpoint": {"path": "/a/ckpt", "fingerprint": "f", "sample": "s"},
            "corpus": {"path": "/a/c.txt", "fingerprint": "c"}, "tokenizer": {"path": "/a/t.json", "fingerprint": "t"},
            "options": {"max_tokens": 100}}
    first = write_ablations(tmp_path / "o", df, meta)
    moved = meta | {k: meta[k] | {"path": "/b/" + k} for k in ("checkpoint", "corpus", "tokenizer")}
    assert write_ablations(tmp_path / "o", df, moved) == first  # the same part, replaced
    other = meta | {"corpus": {"path": "/a/c.txt", "fingerprint": "d"}}  # the control
    assert write_ablations(tmp_path / "o", df, other) != first
    assert len(probe.open_run(tmp_path / "o").files("ablations")) == 2


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_top_by_the_loads_of_an_interrupted_record_says_they_are_partial(probe_env, tmp_path, capsys, monkeypatch):
    """--top ranked experts by the expert_load of a record stopped by Ctrl-C, silently (a review): it
    is taken, with one line naming the partial loads and the tokens they cover, and the part's entry
    in run.json records it (loads_partial). The baseline's loads, and the finished run's, say nothing."""
    import signal

    from helpers.records import rec
    from probe.recorders import Recorder

    real_run, calls = Recorder.run, []

    def run_then_ctrl_c(self, batch):
        out = real_run(self, batch)
        calls.append(batch.index)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Recorder, "run", run_then_ctrl_c)
    run = tmp_path / "rec"
    kw = dict(seq_len=32, batch_size=4, max_tokens=600, kv_stats=False, mtp=False, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        rec(probe_env, run, **kw)
    monkeypatch.setattr(Recorder, "run", real_run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and 0 < info["recorded"]["tokens"] < 600
    tokens = info["recorded"]["tokens"]

    def parts():
        return json.loads((run / "run.json").read_text())["ablation_parts"]

    assert main(["--run", str(run), "--top", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: --top ranks experts by partial loads") == 1
    assert (f"note: --top ranks experts by partial loads: the record of {run} did not finish (run.json status "
            f"interrupted), and its expert_load covers {tokens:,} tokens of the 600 planned; finish the record with "
            "--resume, or pass --loads-from baseline\n") in err, err
    (entry,) = parts().values()
    assert entry["loads"].startswith("run:") and entry["loads_partial"] == {"status": "interrupted", "tokens": tokens,
                                                                            "planned_tokens": 600}
    # the controls: loads counted on the baseline pass, and the run's loads once its record has finished
    assert main(["--run", str(run), "--top", "1", "--loads-from", "baseline", "--no-progress"]) == 0
    assert "partial" not in capsys.readouterr().err
    assert [e.get("loads_partial") for e in parts().values() if e["loads"] == "baseline"] == [None]
    rec(probe_env, run, resume=True, **kw)
    assert probe.open_run(run).status == "complete"
    assert main(["--run", str(run), "--top", "2", "--no-progress"]) == 0
    assert "partial" not in capsys.readouterr().err
    assert [e.get("loads_partial") for e in parts().values() if e["loads"].startswith("run:")] == [
        {"status": "interrupted", "tokens": tokens, "planned_tokens": 600}, None]


def test_names_moved_out_of_run_py_still_import_from_it_and_the_package():
    """The job's inputs moved to inputs.py and --top's loads to loads.py (run.py was near the 600-line
    limit): `analyses.ablate.run.X` and `analyses.ablate.X`, which steer, importance, report and user
    code imported, are still the same objects."""
    import analyses.ablate as package
    import analyses.ablate.inputs as inputs
    import analyses.ablate.loads as loads
    import analyses.ablate.run as run

    moved = {inputs: ("AblateOptions", "check_finished", "check_out", "inputs_key", "job_defaults", "job_meta",
                      "limit_per_domain", "replica_batches", "sample_windows", "start_job"),
             loads: ("loads_from_run", "run_loads")}
    for home, names in moved.items():
        for name in names:
            assert getattr(home, name).__module__ == home.__name__, name
            assert getattr(run, name) is getattr(home, name), name
            if name in package.__all__:
                assert getattr(package, name) is getattr(home, name), name
    assert {"AblateOptions", "loads_from_run", "sample_windows", "start_job"} <= set(package.__all__)
