"""The jobs on a sharded model (`--model-parallel`): record, spec, ablate and importance under torchrun
(gloo, CPU) against the single-process run of the same options (tests/helpers/mp_jobs.py has the
checkpoint, options and comparison; kill/resume, bad layouts and --dry-run are in test_mp_resume.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import model
import probe

from helpers import random_model
from helpers.mp_jobs import (ABLATE, ABLATIONS, IMPORTANCE, RECORD_JOBS, REPORT, ROOT, SPEC, STEER, STEERING, TABLES,
                             TOPOLOGY, opts, torchrun)
from helpers.tables import assert_same_tables, sorted_df
from helpers.threads import one_thread

pytestmark = pytest.mark.slow  # torchrun launches, a browser or notebook kernels: `pytest -m "not slow"` skips them


# ------------------------------------------------------------------------- the references
@pytest.fixture(scope="module")
def single(env):
    """record, spec and ablate in this process (one whole model)."""
    from analyses.ablate import AblateOptions, ablate
    from analyses.ablate import Ablation
    from analyses.importance import ImportanceOptions, importance
    from analyses.report.__main__ import main as report_main
    from probe.record import RecordOptions, record
    from probe.speculative import SpecOptions, record_spec

    from analyses.steer import Steer, SteerOptions, steer

    base = env["base"] / "single"
    with one_thread():
        record(RecordOptions(**opts(env, base / "rec", RECORD_JOBS)))
        record_spec(SpecOptions(**opts(env, base / "spec", SPEC)))
        ablate(AblateOptions(**opts(env, base / "abl", ABLATE)), [Ablation(**a) for a in ABLATIONS])
        importance(ImportanceOptions(**opts(env, base / "imp", IMPORTANCE)))
        steer(SteerOptions(**opts(env, base / "steer", STEER)), Steer(**STEERING))
        assert report_main([str(base / "rec"), *REPORT]) == 0
    return {k: probe.open_run(base / k) for k in ("rec", "spec", "abl", "imp", "steer")}


@pytest.fixture(scope="module")
def four_ranks(env):
    """The same three jobs under torchrun: 4 ranks = 2 replicas of a model sharded over 2 ranks."""
    base = env["base"] / "four"
    mp = {"model_parallel": 2}
    jobs = {"record": opts(env, base / "rec", RECORD_JOBS | mp), "spec": opts(env, base / "spec", SPEC | mp),
            "ablate": opts(env, base / "abl", ABLATE | mp) | {"ablations": ABLATIONS},
            "importance": opts(env, base / "imp", IMPORTANCE | mp),
            "steer": opts(env, base / "steer", STEER | mp) | {"steering": STEERING},
            "report": [str(base / "rec"), *REPORT, "--model-parallel", "2"]}
    (env["base"] / "jobs.json").write_text(json.dumps(jobs))
    p = torchrun(4, str(ROOT / "tests" / "workers" / "mp_jobs_worker.py"), str(env["base"] / "jobs.json"))
    assert p.returncode == 0, p.stderr[-4000:]
    return {k: probe.open_run(base / k) for k in ("rec", "spec", "abl", "imp", "steer")}



# ------------------------------------------------------------------------------ equality
def test_record_four_ranks_two_replicas_equals_one_process(single, four_ranks):
    run = four_ranks["rec"]
    assert run.status == "complete"
    assert run.info["world"]["size"] == 4 and run.info["world"]["model_parallel"] == 2
    assert run.info["world"]["replicas"] == 2 and len(run.info["world"]["devices"]) == 4
    assert [r["rank"] for r in run.info["memory"]["per_rank"]] == [0, 1, 2, 3]
    assert all(r["peak_rss"] >= r["after_load"] > 0 for r in run.info["memory"]["per_rank"])
    # one writer per replica: ranks 0 and 2
    assert {f.name[:4] for f in run.files("routing")} == {"r000", "r002"}
    assert run.info["recorded"]["tokens"] == single["rec"].info["recorded"]["tokens"] == 640
    assert_same_tables(run, single["rec"], TABLES)
    assert run.df("routing").scores.notna().mean() == pytest.approx(0.5, abs=0.1)


def test_a_four_rank_record_without_its_progress_is_whole_until_a_replicas_part_is_lost(four_ranks, tmp_path):
    """Without `_progress/`, the rows of routing, mtp and kv_stats are checked against run.json's `recorded` count
    (probe.run.recorded_rows): the two replicas' rows add up to it, and one replica's routing part lost is said."""
    import shutil

    import pyarrow.parquet as pq

    from probe.writer import PROGRESS

    run = shutil.copytree(four_ranks["rec"].path, tmp_path / "rec")
    shutil.rmtree(run / PROGRESS)
    r = probe.open_run(run)
    assert r.lost_tables == [] and {"routing", "mtp", "kv_stats"} <= set(r.tables)  # no false alarm
    part = sorted((run / "routing").glob("r002-*.parquet"))[-1]  # the second replica's last
    gone = pq.read_metadata(part).num_rows
    part.unlink()
    assert r.lost_tables == ["routing"]
    with pytest.raises(Exception, match=f"rows of {gone:,} of the {640 * 2:,} routing rows"):
        r.df("routing")


def test_spec_four_ranks_equals_one_process(single, four_ranks):
    for t in ("spec_decode", "spec_drafts"):
        a, b = sorted_df(four_ranks["spec"], t), sorted_df(single["spec"], t)
        assert len(a) == len(b) > 0
        assert a.drop(columns=["tokens_per_forward"], errors="ignore").equals(
            b.drop(columns=["tokens_per_forward"], errors="ignore")), t
    info = four_ranks["spec"].info["spec_decode"]
    assert info["prompts"] == 6 and info["world"]["model_parallel"] == 2


def test_ablate_four_ranks_equals_one_process(single, four_ranks):
    a, b = sorted_df(four_ranks["abl"], "ablations"), sorted_df(single["abl"], "ablations")
    assert list(a.ablation.unique()) == ["rand8", "top8", "zero"]
    assert a[["ablation", "domain", "tokens", "spec", "n_disabled"]].equals(b[["ablation", "domain", "tokens", "spec",
                                                                              "n_disabled"]])
    for col in ("loss", "baseline_loss", "delta", "routing_changed", "experts_changed"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-9, atol=1e-12, err_msg=col)
    assert (a.delta.abs() > 1e-6).all()  # the ablations changed something (a control for the equality)


def test_importance_four_ranks_equals_one_process(single, four_ranks):
    a = sorted_df(four_ranks["imp"], "expert_importance")
    assert sorted(a.expert.unique()) == [0, 1, 2, 200] and sorted(a.layer.unique()) == [1, 2]
    assert_same_tables(four_ranks["imp"], single["imp"], ["expert_importance"])
    assert (a.delta.abs() > 1e-9).any() and (a.load > 0).any()  # a control for the equality
    (part,) = four_ranks["imp"].info["importance_parts"].values()
    assert (part["world"]["size"], part["world"]["replicas"], part["world"]["model_parallel"]) == (4, 2, 2)


def test_steer_four_ranks_equals_one_process(single, four_ranks):
    """Steering on replicas of a sharded model: the same losses and greedy continuations (it had no
    model-parallel test; a review)."""
    run = four_ranks["steer"]
    assert set(run.df("steering").kind) == {"loss", "generation"}  # losses per domain and greedy continuations
    assert_same_tables(run, single["steer"], ["steering"])


def test_report_ablations_four_ranks_equal_one_process(single, four_ranks):
    """analyses.report runs its ablation sweep on replicas of a sharded model too."""
    a, b = sorted_df(four_ranks["rec"], "ablations"), sorted_df(single["rec"], "ablations")
    for df, run in ((a, four_ranks["rec"]), (b, single["rec"])):  # specs name the run their loads came from
        df["spec"] = df.spec.str.replace(str(Path(run.path).resolve()), "RUN")
    assert len(a) == len(b) > 0 and set(a.ablation) >= {"top8", "random8-s0"}
    assert a[["ablation", "domain", "tokens", "spec"]].equals(b[["ablation", "domain", "tokens", "spec"]])
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-9)
    # the sections from the run's tables alone are computed by rank 0 only: the same sections either way
    headings = [re.findall(r"<h2[^>]*>(.*?)</h2>", (Path(r.path) / "report.html").read_text())
                for r in (four_ranks["rec"], single["rec"])]
    assert headings[0] == headings[1] and len(headings[0]) >= 10
    parts = four_ranks["rec"].info["ablation_parts"].values()
    assert all(p["world"]["model_parallel"] == 2 and p["world"]["size"] == 4 for p in parts)


def test_negative_control_another_model_differs(env, single):
    """The comparison can fail: a run of differently seeded weights does not pass it."""
    from probe.record import RecordOptions, record

    other = env["base"] / "other_ckpt"
    model.save(random_model("tiny", seed=12, **TOPOLOGY), other)
    (other / "tokenizer.json").write_bytes((env["ckpt"] / "tokenizer.json").read_bytes())
    with one_thread():
        out = record(RecordOptions(**opts(env, env["base"] / "other", RECORD_JOBS) | {"ckpt": str(other)}))
    with pytest.raises(AssertionError):
        assert_same_tables(probe.open_run(out), single["rec"], ["routing"])
