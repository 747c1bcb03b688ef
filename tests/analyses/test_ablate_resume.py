"""Durable sweeps (analyses/ablate/sweep.py): an interrupted `python -m analyses.ablate` keeps the
ablations it finished, and rerunning the same command computes only the rest."""

from __future__ import annotations

import pandas as pd
import pytest

import probe
from analyses.ablate import run as run_module
from analyses.ablate.__main__ import main

SPEC = ("- {name: top2, top: 2}\n- {name: random2, random: 2, seed: 3}\n"
        "- {name: z, experts: '1:0+1', mode: zero}\n- {name: r1, random: 1, seed: 1}\n")


def _cli(env, out, spec, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--max-tokens", "400", "--no-progress", "--spec", str(spec), *extra]


@pytest.fixture
def counted(monkeypatch):
    """Counts the ablation passes and the model's forward batches; with `stop_at` = N, Ctrl-C
    (KeyboardInterrupt) arrives as the (N+1)th ablation pass starts."""
    return _count(monkeypatch)


def _count(monkeypatch) -> dict:
    """`counted`'s counters, installed with `monkeypatch`."""
    calls = {"passes": 0, "forwards": 0, "stop_at": None}
    real_ablated, real_forward = run_module._ablated, run_module.forward_batch

    def ablated(*a, **k):
        if calls["stop_at"] is not None and calls["passes"] == calls["stop_at"]:
            raise KeyboardInterrupt
        calls["passes"] += 1
        return real_ablated(*a, **k)

    def forward(*a, **k):
        calls["forwards"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(run_module, "_ablated", ablated)
    monkeypatch.setattr(run_module, "forward_batch", forward)
    return calls


@pytest.fixture(scope="module")
def whole_run(probe_env, tmp_path_factory):
    """The sweep run uninterrupted, once for the module (its tests read its table and counts; the
    negative control runs the finished sweep again in its folder): (folder, spec file, table, forward
    batches of one pass)."""
    d = tmp_path_factory.mktemp("sweep")
    spec, out = d / "sweep.yaml", d / "whole"
    spec.write_text(SPEC)
    with pytest.MonkeyPatch.context() as mp:
        calls = _count(mp)
        assert main(_cli(probe_env, out, spec)) == 0
    n_batches = calls["forwards"] // 5  # the baseline and four ablations
    return out, spec, probe.open_run(out).df("ablations"), n_batches


@pytest.fixture
def whole(whole_run):
    """The uninterrupted sweep's (spec file, table, forward batches of one pass)."""
    return whole_run[1:]


def _no_leftovers(out):
    assert not list((out / "ablations").glob(".*"))  # no temporary or saved baseline left behind
    (entry,) = probe.open_run(out).info["ablation_parts"].values()
    assert "pending" not in entry


def test_an_interrupted_sweep_keeps_its_ablations_and_a_rerun_computes_the_rest(probe_env, tmp_path, capsys,
                                                                                  counted, whole):
    spec, ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    assert main(_cli(probe_env, out, spec)) == 130
    assert f"interrupted: 2 of 4 ablations committed in {out / 'ablations'}; run the same command again" in \
        capsys.readouterr().err
    run = probe.open_run(out)
    kept = run.df("ablations")  # what finished is in the table, bit for bit as the whole sweep's
    pd.testing.assert_frame_equal(kept, ref[ref.ablation.isin(["top2", "random2"])].reset_index(drop=True),
                                  check_exact=True)
    (entry,) = run.info["ablation_parts"].values()
    assert entry["ablations"] == ["top2", "random2"] and entry["pending"] == ["z", "r1"]

    counted.update(passes=0, forwards=0, stop_at=None)
    assert main(_cli(probe_env, out, spec)) == 0
    assert ("ablate: continuing an interrupted sweep: 2 of 4 ablations and the baseline pass taken from the earlier "
            "attempt") in capsys.readouterr().err
    assert counted["passes"] == 2 and counted["forwards"] == 2 * n_batches  # no baseline pass, two ablations
    done = probe.open_run(out)
    pd.testing.assert_frame_equal(done.df("ablations"), ref, check_exact=True)
    assert len(done.files("ablations")) == 1  # one part: no row twice
    _no_leftovers(out)


def test_interrupted_in_the_first_ablation_keeps_the_baseline(probe_env, tmp_path, capsys, counted, whole):
    """Into a new --out: the saved baseline made it a run (run.json), which the rerun writes into."""
    spec, ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 0
    assert main(_cli(probe_env, out, spec)) == 130
    assert "interrupted: 0 of 4 ablations committed" in capsys.readouterr().err
    assert probe.open_run(out).tables == []  # no rows yet: no table listed (a listed table without parts is lost)
    counted.update(passes=0, forwards=0, stop_at=None)
    assert main(_cli(probe_env, out, spec)) == 0
    assert counted["passes"] == 4 and counted["forwards"] == 4 * n_batches  # the baseline was taken
    pd.testing.assert_frame_equal(probe.open_run(out).df("ablations"), ref, check_exact=True)
    _no_leftovers(out)


def test_a_baseline_saved_before_the_nonfinite_count_is_computed_again(probe_env, tmp_path, capsys, counted, whole):
    """A baseline saved by an attempt whose loss sums were [D, 2] (surprisal, tokens: a NaN of the model
    dropped, not counted) is not taken: the rerun computes it again, with the count of NaN or inf tokens
    (run.add_loss), and takes the committed ablations as before."""
    import numpy as np

    spec, ref, n_batches = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    assert main(_cli(probe_env, out, spec)) == 130
    (saved,) = (out / "ablations").glob(".sweep-*/replica000.npz")
    with np.load(saved) as z:
        old = dict(z)
    assert old["base_acc"].shape[1] == 3
    np.savez(saved, **(old | {"base_acc": old["base_acc"][:, :2]}))  # as the older code saved it
    counted.update(passes=0, forwards=0, stop_at=None)
    capsys.readouterr()
    assert main(_cli(probe_env, out, spec)) == 0
    assert "2 of 4 ablations taken from the earlier attempt" in capsys.readouterr().err
    assert counted["passes"] == 2 and counted["forwards"] == 3 * n_batches  # the baseline and two ablations
    pd.testing.assert_frame_equal(probe.open_run(out).df("ablations"), ref, check_exact=True)
    _no_leftovers(out)


@pytest.mark.slow  # 0.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_negative_control_nothing_is_taken_across_options_finished_sweeps_or_fresh(probe_env, tmp_path, capsys,
                                                                                  counted, whole_run):
    """The counts above can fail: other options (another key), a finished sweep and --fresh compute
    the baseline and every ablation."""
    finished, spec, ref, n_batches = whole_run
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    assert main(_cli(probe_env, out, spec)) == 130
    counted.update(passes=0, forwards=0, stop_at=None)
    assert main(_cli(probe_env, out, spec, "--max-tokens", "300")) == 0  # another sample: another part
    assert counted["passes"] == 4 and "continuing" not in capsys.readouterr().err
    assert len(probe.open_run(out).files("ablations")) == 2
    counted.update(passes=0, forwards=0)
    assert main(_cli(probe_env, out, spec, "--fresh")) == 0  # the interrupted one, from the start
    assert counted["passes"] == 4 and counted["forwards"] == 5 * n_batches
    assert "continuing" not in capsys.readouterr().err
    counted.update(passes=0, forwards=0)
    assert main(_cli(probe_env, finished, spec)) == 0  # finished: computed again, as before
    assert counted["passes"] == 4 and counted["forwards"] == 5 * n_batches
    pd.testing.assert_frame_equal(probe.open_run(finished).df("ablations"), ref, check_exact=True)


def _sample(out, sample, digest=None):
    """Set the unfinished part's `sample` in run.json (None: none, as written before jobs sampled within a
    run's windows) and its windows' digest (None: none, as written before the digest)."""
    from probe.writer import updating_run_json

    with updating_run_json(out) as info:
        (entry,) = info["ablation_parts"].values()
        entry.pop("sample")
        entry.pop("windows_digest")
        if sample is not None:
            entry["sample"] = sample
        if digest is not None:
            entry["windows_digest"] = digest


@pytest.mark.slow  # 1.0 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
@pytest.mark.parametrize("sample, digest, options, taken", [
    ("run", None, ("--domain-tokens", "150"), False),  # another sample, capped: none taken
    (None, None, ("--domain-tokens", "150"), True),  # none said: the whole corpus, as this command's
    ("corpus", "0" * 16, (), False)])  # the same label over other windows (the digest tells): none taken
def test_an_attempt_sampled_otherwise_is_computed_again(probe_env, tmp_path, capsys, counted, whole, sample, digest,
                                                        options, taken):
    """An attempt interrupted before jobs given --run sampled within the run's windows, and resumed after,
    put ablations of the whole corpus and of the run's windows in one part: an attempt of another sample
    gives nothing, and says so, unless the two are the same windows."""
    spec, _, _ = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    assert main(_cli(probe_env, out, spec, *options)) == 130
    n_batches = counted["forwards"] // 3  # the baseline and two ablations
    _sample(out, sample, digest)
    counted.update(passes=0, forwards=0, stop_at=None)
    capsys.readouterr()
    assert main(_cli(probe_env, out, spec, *options)) == 0
    err = capsys.readouterr().err
    assert counted["passes"] == (2 if taken else 4)
    assert counted["forwards"] == (2 if taken else 5) * n_batches  # the baseline taken, or computed again
    said = (f"ablate: the earlier sweep in {out / 'ablations'} "
            + ("evaluated other windows than this command's (the run or its corpus changed since?)" if digest else
               "was sampled from the run's own windows, this command samples from the whole corpus")
            + ": none of its ablations taken, all 4 computed again")
    assert (said in err, "continuing an interrupted sweep: 2 of 4" in err) == (not taken, taken)
    assert len(probe.open_run(out).files("ablations")) == 1
    _no_leftovers(out)


def test_a_replica_that_does_not_see_out_saves_no_baseline_there(tmp_path):
    """Two replicas (each rank a writer of its share of the baseline), rank 1 given a folder where the
    run is not (a node without the shared disk): it saved its share in `.sweep-<name>/` there, which no
    rerun reads and no commit removes (rank 0's last commit drops its own). Now a leader saves its share
    only where it finds rank 0's, just saved; on a shared --out both are saved, as before."""
    import numpy as np
    import torch
    from types import SimpleNamespace

    from analyses.ablate.sweep import Commits
    from helpers.thread_ranks import ThreadRanks

    class Units(Commits):
        TABLE, PARTS, FIELD = "ablations", "ablation_parts", "ablations"

    meta = {"checkpoint": {"path": "ckpt"}, "corpus": {"path": "corpus"}, "options": {}}

    def save(outs):
        def rank(world):
            c = Units(outs[world.rank], ["a", "b"], {"sweep": 1}, meta, None, world)
            ids = [torch.zeros(2, 5, 8, dtype=torch.int64)]  # one batch's top-8 ids: [layers, tokens, k]
            c.save_baseline(np.ones((2, 3)), np.zeros((2, 4)), ids, [SimpleNamespace(index=world.rank)], ["code", "prose"])
            return c.dir.name
        return ThreadRanks(2).run(rank)

    shared = tmp_path / "shared"
    names = save([shared, shared])
    assert names[0] == names[1] and isinstance(names[0], str), names
    assert sorted(p.name for p in (shared / "ablations" / names[0]).iterdir()) == ["replica000.npz", "replica001.npz"]
    run, elsewhere = tmp_path / "run", tmp_path / "not-shared"
    assert save([run, elsewhere]) == names
    assert sorted(p.name for p in (run / "ablations" / names[0]).iterdir()) == ["replica000.npz"]
    assert not elsewhere.exists()


@pytest.mark.slow  # 2.7 s each: a child that imports torch, signalled mid-sweep (the AVX2-only EPYC, 2026-12-07)
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_sigterm_mid_sweep_is_ctrl_c_and_a_rerun_computes_the_rest(probe_env, tmp_path, whole, signum):
    """SIGTERM (`timeout`, a scheduler) ended a sweep at once: exit status 143, not a word of what was
    committed or that the same command continues it; SIGHUP (a closed terminal or ssh session) as well,
    129. It now stops as Ctrl-C does (one line, 130), and the rerun takes the committed ablations. In a
    child process: the signals' defaults end the process."""
    import signal

    from helpers.processes import signalled_at

    spec, ref, _ = whole
    out = tmp_path / "cut"
    done = signalled_at("analyses.ablate.__main__:main", "analyses.ablate.run:_ablated", 1, getattr(signal, signum),
                        _cli(probe_env, out, spec))
    assert done.returncode == 130, done.stderr
    said = (f"interrupted: 1 of 4 ablations committed in {out / 'ablations'}; run the same command again to compute "
            "the rest")
    assert done.stderr.strip().splitlines()[-1] == said and done.stderr.count("interrupted") == 1, done.stderr
    (entry,) = probe.open_run(out).info["ablation_parts"].values()
    assert entry["ablations"] == ["top2"] and entry["pending"] == ["random2", "z", "r1"]
    assert not [p for p in (out / "ablations").glob(".*") if not p.name.startswith(".sweep-")]  # no temporary
    assert main(_cli(probe_env, out, spec)) == 0
    pd.testing.assert_frame_equal(probe.open_run(out).df("ablations"), ref)
    _no_leftovers(out)


def test_a_rank_whose_peer_dies_mid_commit_does_not_say_that_unit_committed(tmp_path):
    """Rank 1 waits in a commit's broadcast while rank 0 writes the part; rank 0 killed there (the lost
    peer the rank's line is for) wrote nothing, yet rank 1's line said "1 of 2 ablations committed": the
    unit was counted once its rows were in hand, before the write. A unit is said committed once its
    commit has returned."""
    from types import SimpleNamespace

    from analyses.ablate.sweep import Commits

    class Units(Commits):
        TABLE, PARTS, FIELD, NOUN = "ablations", "ablation_parts", "ablations", "ablations"

    def lost(_):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:1234")

    world = SimpleNamespace(size=2, rank=1, replicas=1, everyone=lambda mine: [mine, mine], broadcast=lost)
    meta = {"checkpoint": {"path": "ckpt"}, "corpus": {"path": "corpus"}, "options": {}}
    c = Units(tmp_path / "run", ["a", "b"], {"sweep": 1}, meta, None, world)
    with pytest.raises(RuntimeError):
        c.commit("a", [{"ablation": "a"}])
    assert not (tmp_path / "run").exists()  # nothing was written
    assert c._said_on_stop() == ""
    assert str(c.interrupted()) == "interrupted: nothing was committed"


def test_a_stop_held_through_a_commits_write_says_that_unit_committed(tmp_path):
    """Ctrl-C (or SIGTERM) during the write is held to the write's end and raised there, out of the
    commit: the unit is in the part, and the line says so ('1 of 2', not 'nothing was committed')."""
    import os
    import signal
    from types import SimpleNamespace

    from analyses.ablate.sweep import Commits

    class Units(Commits):
        TABLE, PARTS, FIELD, NOUN = "ablations", "ablation_parts", "ablations", "ablations"

    written = []

    def write_part(df, note):
        written.append(note)
        os.kill(os.getpid(), signal.SIGINT)  # held until the write is done

    world = SimpleNamespace(size=1, rank=0, replicas=1, broadcast=lambda x: x)
    meta = {"checkpoint": {"path": "ckpt"}, "corpus": {"path": "corpus"}, "options": {}}
    c = Units(tmp_path / "run", ["a", "b"], {"sweep": 1}, meta, None, world)
    c.write_part = write_part
    with pytest.raises(KeyboardInterrupt):
        c.commit("a", [{"ablation": "a"}])
    assert written == [{"ablations": ["a"], "pending": ["b"]}]
    assert str(c.interrupted()).startswith("interrupted: 1 of 2 ablations committed in ")
