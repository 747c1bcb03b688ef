"""Durable importance (analyses/importance/run.py, `LayerCommits`): an interrupted `python -m
analyses.importance` keeps the layers it finished, and rerunning the same command measures only the rest."""

from __future__ import annotations

import signal

import pandas as pd
import pytest

import probe
from analyses.ablate import run as ablate_run
from analyses.importance import run as run_module
from analyses.importance.__main__ import main

LAYERS = [1, 2]  # the probe checkpoint's MoE layers; 16 experts, 3 removals a pass: 6 passes a batch and layer


def _cli(env, out, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--domain-tokens", "60", "--group", "3", "--no-progress", *extra]


@pytest.fixture
def counted(monkeypatch):
    """Counts the layers measured, the baseline's forward batches and the removal passes; with
    `stop_at` = N, Ctrl-C (KeyboardInterrupt) arrives as the (N+1)th layer starts."""
    return _count(monkeypatch)


def _count(monkeypatch) -> dict:
    """`counted`'s counters, installed with `monkeypatch`."""
    calls = {"layers": 0, "baseline": 0, "removals": 0, "stop_at": None}
    real_sums, real_suffix, real_forward = run_module.removal_sums, run_module.suffix_nll, ablate_run.forward_batch

    def removal_sums(*a, **k):
        if calls["stop_at"] is not None and calls["layers"] == calls["stop_at"]:
            raise KeyboardInterrupt
        calls["layers"] += 1
        return real_sums(*a, **k)

    def suffix(*a, **k):
        calls["removals"] += 1
        return real_suffix(*a, **k)

    def forward(*a, **k):
        calls["baseline"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(run_module, "removal_sums", removal_sums)
    monkeypatch.setattr(run_module, "suffix_nll", suffix)
    monkeypatch.setattr(ablate_run, "forward_batch", forward)
    return calls


def _reset(calls, stop_at=None):
    calls.update(layers=0, baseline=0, removals=0, stop_at=stop_at)


@pytest.fixture(scope="module")
def whole_run(probe_env, tmp_path_factory):
    """The job run uninterrupted, once for the module (its tests read its table and counts; the negative
    control runs the finished job again in its folder): (folder, table, batches)."""
    out = tmp_path_factory.mktemp("importance") / "whole"
    with pytest.MonkeyPatch.context() as mp:
        calls = _count(mp)
        assert main(_cli(probe_env, out)) == 0
    n_batches = calls["baseline"]
    assert calls["layers"] == 2 and calls["removals"] == 2 * 6 * n_batches
    return out, probe.open_run(out).df("expert_importance"), n_batches


@pytest.fixture
def whole(whole_run):
    """The uninterrupted job's (table, batches)."""
    return whole_run[1:]


def _no_leftovers(out):
    assert not list((out / "expert_importance").glob(".*"))  # no temporary or saved baseline left behind
    (entry,) = probe.open_run(out).info["importance_parts"].values()
    assert "pending" not in entry and entry["measured_layers"] == LAYERS


def test_an_interrupted_job_keeps_its_layers_and_a_rerun_measures_the_rest(probe_env, tmp_path, capsys, counted,
                                                                          whole):
    ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 1
    assert main(_cli(probe_env, out)) == 130
    assert (f"interrupted: 1 of 2 layers committed in {out / 'expert_importance'}; run the same command again to "
            "compute the rest") in capsys.readouterr().err
    run = probe.open_run(out)
    kept = run.df("expert_importance")  # what finished is in the table, bit for bit as the whole job's
    pd.testing.assert_frame_equal(kept, ref[ref.layer == 1].reset_index(drop=True), check_exact=True)
    (entry,) = run.info["importance_parts"].values()
    assert entry["measured_layers"] == [1] and entry["pending"] == [2] and entry["rows"] == len(kept)

    _reset(counted)
    assert main(_cli(probe_env, out)) == 0
    assert ("importance: continuing an interrupted measurement: 1 of 2 layers and the baseline pass taken from the "
            "earlier attempt") in capsys.readouterr().err
    # no baseline pass, one layer's removals
    assert (counted["layers"], counted["baseline"], counted["removals"]) == (1, 0, 6 * n_batches)
    done = probe.open_run(out)
    pd.testing.assert_frame_equal(done.df("expert_importance"), ref, check_exact=True)
    assert len(done.files("expert_importance")) == 1  # one part: no row twice
    _no_leftovers(out)


def test_interrupted_in_the_first_layer_keeps_the_baseline(probe_env, tmp_path, capsys, counted, whole):
    """Into a new --out: the saved baseline made it a run (run.json), which the rerun writes into."""
    ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 0
    assert main(_cli(probe_env, out)) == 130
    assert "interrupted: 0 of 2 layers committed" in capsys.readouterr().err
    assert probe.open_run(out).tables == []  # no rows yet: no table listed (a listed table without parts is lost)
    _reset(counted)
    assert main(_cli(probe_env, out)) == 0
    assert (counted["layers"], counted["baseline"]) == (2, 0)  # the baseline was taken
    pd.testing.assert_frame_equal(probe.open_run(out).df("expert_importance"), ref, check_exact=True)
    _no_leftovers(out)


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_layer_a_newer_measurement_took_is_measured_again(probe_env, tmp_path, capsys, counted, whole):
    """Another command (other options) measuring layer 1 takes its rows out of the unfinished part
    (`supersede`): the rerun measures layer 1 again rather than taking a layer with rows missing."""
    ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 1
    assert main(_cli(probe_env, out)) == 130
    _reset(counted)
    assert main(_cli(probe_env, out, "--layers", "1", "--domain-tokens", "40")) == 0
    (entry,) = [e for e in probe.open_run(out).info["importance_parts"].values() if "pending" in e]
    assert entry["measured_layers"] == [] and entry["pending"] == LAYERS and entry["rows"] == 0
    capsys.readouterr()
    _reset(counted)
    assert main(_cli(probe_env, out)) == 0
    assert "0 of 2 layers and the baseline pass taken" in capsys.readouterr().err
    assert (counted["layers"], counted["baseline"]) == (2, 0)
    pd.testing.assert_frame_equal(probe.open_run(out).df("expert_importance"), ref, check_exact=True)
    _no_leftovers(out)


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_negative_control_nothing_is_taken_across_options_finished_jobs_or_fresh(probe_env, tmp_path, capsys,
                                                                                counted, whole_run):
    """The counts above can fail: other options (another part), a finished job and --fresh run the
    baseline and measure every layer."""
    finished, ref, n_batches = whole_run
    out = tmp_path / "cut"
    counted["stop_at"] = 1
    assert main(_cli(probe_env, out)) == 130
    _reset(counted)
    assert main(_cli(probe_env, out, "--experts", "0-14")) == 0  # other experts: another part
    assert counted["layers"] == 2 and counted["baseline"] == n_batches
    assert "continuing" not in capsys.readouterr().err
    _reset(counted)
    assert main(_cli(probe_env, out, "--fresh")) == 0  # the interrupted one, from the start
    assert (counted["layers"], counted["baseline"], counted["removals"]) == (2, n_batches, 2 * 6 * n_batches)
    assert "continuing" not in capsys.readouterr().err
    _reset(counted)
    assert main(_cli(probe_env, finished)) == 0  # finished: measured again, as before
    assert counted["layers"] == 2 and counted["baseline"] == n_batches
    pd.testing.assert_frame_equal(probe.open_run(finished).df("expert_importance"), ref, check_exact=True)


@pytest.mark.slow  # 1.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
@pytest.mark.parametrize("cap, taken", [(150, False), (None, True)])
def test_a_layer_of_the_whole_corpus_is_not_taken_into_a_run_sample(probe_env, tmp_path, capsys, counted, cap, taken):
    """A job given --run (no --max-tokens) interrupted before such jobs sampled within the run's windows
    measured its layers on the whole corpus (its entry says no `sample`), and resumed after, it put them
    beside layers of the run's windows: they are measured again, one line says why. A run without a cap
    is read whole either way: its layers are taken."""
    from helpers.analysis_runs import corpus_order_run
    from probe.writer import updating_run_json

    rec = corpus_order_run(probe_env, tmp_path / "rec", cap)
    cli = ["--run", str(rec), "--batch-size", "4", "--domain-tokens", "60", "--group", "3", "--no-progress"]
    counted["stop_at"] = 1
    assert main(cli) == 130
    with updating_run_json(rec) as info:  # as a job before it wrote the entry
        (entry,) = info["importance_parts"].values()
        assert entry.pop("sample") == "run"
        entry.pop("windows_digest")
    _reset(counted)
    capsys.readouterr()
    assert main(cli) == 0
    err = capsys.readouterr().err
    assert (counted["layers"], counted["baseline"] > 0) == ((1, False) if taken else (2, True))
    said = (f"importance: the earlier measurement in {rec / 'expert_importance'} was sampled from the whole corpus, "
            "this command samples from the run's own windows: none of its layers taken, all 2 computed again")
    assert (said in err, "continuing an interrupted measurement: 1 of 2 layers" in err) == (not taken, taken)
    _no_leftovers(rec)


@pytest.mark.slow  # 2.8 s: a child process that imports torch, signalled mid-job (the AVX2-only EPYC, 2026-12-07)
def test_sigterm_mid_job_is_ctrl_c_and_a_rerun_measures_the_rest(probe_env, tmp_path, whole):
    """SIGTERM (`timeout`, a scheduler, a closed notebook kernel) after the first layer's commit ended
    the job at once: exit status 143, not a word of the layer kept or that the same command goes on.
    It now stops as Ctrl-C does: one line naming what was kept, 130, and the rerun measures the rest.
    In a child process: SIGTERM's default ends the process."""
    from helpers.processes import signalled_at

    ref, _ = whole
    out = tmp_path / "cut"
    done = signalled_at("analyses.importance.__main__:main", "analyses.importance.run:removal_sums", 1,
                        signal.SIGTERM, _cli(probe_env, out))
    assert done.returncode == 130, done.stderr
    said = (f"interrupted: 1 of 2 layers committed in {out / 'expert_importance'}; run the same command again to "
            "compute the rest")
    assert done.stderr.strip().splitlines()[-1] == said and done.stderr.count("interrupted") == 1, done.stderr
    (entry,) = probe.open_run(out).info["importance_parts"].values()
    assert entry["measured_layers"] == [1] and entry["pending"] == [2]
    assert main(_cli(probe_env, out)) == 0
    # float32 losses: the child process rounds some in their last bits otherwise than this one (its thread
    # count); the rows, their keys and every integer are the same
    pd.testing.assert_frame_equal(probe.open_run(out).df("expert_importance"), ref, rtol=1e-5, atol=1e-5)
    _no_leftovers(out)
