"""The jobs on a sharded model (`--model-parallel`): record, spec, ablate and importance under torchrun (gloo, CPU)
against the single-process run of the same options; kill one rank, resume; bad layouts; --dry-run.

The checkpoint has DeepSeek-V3's routing topology (256 routed experts in 8 groups, 4 groups kept,
top-8, a shared expert) at a tiny width. The runs use float64 (`--dtype float64`): the sharded
forward adds its partial sums in another order than one process, and in float32 that rounding
difference flips the rare near-tie in a top-8 choice; in float64 the layouts give the same routing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import model
import probe
from model.parallel import ParallelError

from helpers import make_corpus, make_tokenizer, random_model
from helpers.processes import wait_for_commits

pytestmark = pytest.mark.slow  # torchrun launches, a browser or notebook kernels: `pytest -m "not slow"` skips them

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = dict(n_routed_experts=256, n_expert_groups=8, n_limited_groups=4, n_activated_experts=8, moe_inter_dim=8)
RECORD = dict(seq_len=32, batch_size=2, router_logits="full", sample=0.5, dtype="float64", max_tokens=1200,
              progress=False)
SPEC = dict(prompt_tokens=12, new_tokens=8, max_prompts=6, batch_size=2, dtype="float64", progress=False)
ABLATE = dict(seq_len=32, batch_size=2, max_tokens=600, dtype="float64", progress=False, loads_from="baseline")
ABLATIONS = [{"name": "top8", "top": 8}, {"name": "rand8", "random": 8, "seed": 1},
             {"name": "zero", "experts": {1: [0, 5, 77]}, "mode": "zero", "shared": True}]
IMPORTANCE = dict(seq_len=32, batch_size=2, max_tokens=600, dtype="float64", progress=False, experts="0-2,200", group=2)
TABLES = ["tokens", "routing", "expert_load", "mtp", "kv_stats", "kv_spectrum", "router_bias"]
REPORT = ["--max-tokens", "300", "--fractions", "1/32", "--seeds", "1", "--no-progress", "--dtype", "float64",
          "--importance-tokens", "0"]  # the importance job is compared on its own (below)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp")
    corpus = make_corpus(base / "corpus", docs_per_domain=8, seed=2, scale=2)
    ckpt = base / "ckpt"
    model.save(random_model("tiny", seed=11, **TOPOLOGY), ckpt)
    make_tokenizer(corpus, ckpt / "tokenizer.json")
    return {"base": base, "corpus": corpus, "ckpt": ckpt}


def _opts(env, out, extra: dict) -> dict:
    return {"ckpt": str(env["ckpt"]), "corpus": str(env["corpus"]), "out": str(out)} | extra


def torchrun(nproc: int, *args: str, timeout: int = 300, popen: bool = False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    kw = dict(cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, text=True,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if popen:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=timeout, **kw)


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

    base = env["base"] / "single"
    record(RecordOptions(**_opts(env, base / "rec", RECORD)))
    record_spec(SpecOptions(**_opts(env, base / "spec", SPEC)))
    ablate(AblateOptions(**_opts(env, base / "abl", ABLATE)), [Ablation(**a) for a in ABLATIONS])
    importance(ImportanceOptions(**_opts(env, base / "imp", IMPORTANCE)))
    assert report_main([str(base / "rec"), *REPORT]) == 0
    return {k: probe.open_run(base / k) for k in ("rec", "spec", "abl", "imp")}


@pytest.fixture(scope="module")
def four_ranks(env):
    """The same three jobs under torchrun: 4 ranks = 2 replicas of a model sharded over 2 ranks."""
    base = env["base"] / "four"
    mp = {"model_parallel": 2}
    jobs = {"record": _opts(env, base / "rec", RECORD | mp), "spec": _opts(env, base / "spec", SPEC | mp),
            "ablate": _opts(env, base / "abl", ABLATE | mp) | {"ablations": ABLATIONS},
            "importance": _opts(env, base / "imp", IMPORTANCE | mp),
            "report": [str(base / "rec"), *REPORT, "--model-parallel", "2"]}
    (env["base"] / "jobs.json").write_text(json.dumps(jobs))
    p = torchrun(4, str(ROOT / "tests" / "workers" / "mp_jobs_worker.py"), str(env["base"] / "jobs.json"))
    assert p.returncode == 0, p.stderr[-4000:]
    return {k: probe.open_run(base / k) for k in ("rec", "spec", "abl", "imp")}


def sorted_df(run, table):
    df = run.df(table)
    keys = [c for c in ("step", "seq_id", "pos", "layer", "expert", "domain", "component", "doc_id", "position",
                        "ablation") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def assert_same_tables(a, b, tables, rtol=1e-9):
    """Same rows; integers, ids and strings equal; floats (losses, weights, scores) within rtol."""
    for t in tables:
        da, db = sorted_df(a, t), sorted_df(b, t)
        assert len(da) == len(db) > 0, (t, len(da), len(db))
        for c in da.columns:
            x, y = da[c].to_numpy(), db[c].to_numpy()
            if x.dtype == object and any(isinstance(v, np.ndarray) for v in x):
                for u, v in zip(x, y):
                    assert (u is None) == (v is None), (t, c)
                    if u is not None:
                        if np.issubdtype(u.dtype, np.floating):
                            np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-12, err_msg=f"{t}.{c}")
                        else:
                            np.testing.assert_array_equal(u, v, err_msg=f"{t}.{c}")
            elif np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, err_msg=f"{t}.{c}")
            else:
                assert (x == y).all(), (t, c)


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
    assert run.info["recorded"]["tokens"] == single["rec"].info["recorded"]["tokens"] == 1200
    assert_same_tables(run, single["rec"], TABLES)
    assert run.df("routing").scores.notna().mean() == pytest.approx(0.5, abs=0.1)


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


def test_report_ablations_four_ranks_equal_one_process(single, four_ranks):
    """analyses.report runs its ablation sweep on replicas of a sharded model too."""
    a, b = sorted_df(four_ranks["rec"], "ablations"), sorted_df(single["rec"], "ablations")
    for df, run in ((a, four_ranks["rec"]), (b, single["rec"])):  # specs name the run their loads came from
        df["spec"] = df.spec.str.replace(str(Path(run.path).resolve()), "RUN")
    assert len(a) == len(b) > 0 and set(a.ablation) >= {"top8", "random8-s0"}
    assert a[["ablation", "domain", "tokens", "spec"]].equals(b[["ablation", "domain", "tokens", "spec"]])
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-9)
    assert (Path(four_ranks["rec"].path) / "report.html").exists()
    parts = four_ranks["rec"].info["ablation_parts"].values()
    assert all(p["world"]["model_parallel"] == 2 and p["world"]["size"] == 4 for p in parts)


def test_negative_control_another_model_differs(env, single):
    """The comparison can fail: a run of differently seeded weights does not pass it."""
    from probe.record import RecordOptions, record

    other = env["base"] / "other_ckpt"
    model.save(random_model("tiny", seed=12, **TOPOLOGY), other)
    (other / "tokenizer.json").write_bytes((env["ckpt"] / "tokenizer.json").read_bytes())
    out = record(RecordOptions(**_opts(env, env["base"] / "other", RECORD) | {"ckpt": str(other)}))
    with pytest.raises(AssertionError):
        assert_same_tables(probe.open_run(out), single["rec"], ["routing"])


# ---------------------------------------------------------------------- the command line
def record_args(env, out, *extra):
    return ["-m", "probe", "record", "--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out),
            "--seq-len", "32", "--batch-size", "2", "--router-logits", "full", "--sample", "0.5", "--dtype",
            "float64", "--max-tokens", "1200", "--no-progress", *extra]


def our_frames(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if any(f'File "{ROOT / pkg}' in ln for pkg in ("probe", "model", "analyses"))]


def _worker_pids(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the torchrun workers under `launcher` (from /proc)."""
    out = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = [e for e in environ if e.startswith(b"RANK=")]
            if rank:
                out[int(rank[0][5:])] = int(pid)
    return out


@pytest.mark.parametrize("victim", [0, 1])
def test_two_ranks_one_sharded_model_then_kill_and_resume(env, single, tmp_path, victim):
    """`--model-parallel 2` on 2 ranks: one rank (the writer, rank 0, or the other) is killed
    mid-run; the survivor notices, marks the run interrupted and stops within 60 s; --resume
    finishes it, equal to one process."""
    out = tmp_path / "run"
    proc = torchrun(2, *record_args(env, out, "--model-parallel", "2", "--commit-every", "2"), popen=True)
    wait_for_commits(proc, out, done=3)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
    pids = _worker_pids(proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[victim], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    stopped = time.time() - t0
    print(f"\nrank {victim} killed: the launch ended {stopped:.1f} s later")
    assert stopped < 60
    assert proc.returncode != 0
    assert f"rank {1 - victim} of 2 stopped" in err and "is marked interrupted (continue with --resume)" in err, \
        err[-3000:]
    assert not our_frames(err)  # one line from our rank, no traceback of ours
    partial = probe.open_run(out)
    assert partial.status == "interrupted"
    assert 0 < len(partial.df("tokens")) < 1200
    p = torchrun(2, *record_args(env, out, "--model-parallel", "2", "--resume"))
    assert p.returncode == 0, p.stderr[-3000:]
    done = probe.open_run(out)
    assert done.status == "complete" and done.info["resumed"] == 1
    assert done.info["world"]["model_parallel"] == 2 and done.info["world"]["replicas"] == 1
    assert_same_tables(done, single["rec"], TABLES)


def test_layout_errors_are_one_line_on_every_rank(env, tmp_path):
    out = tmp_path / "never"
    p = torchrun(2, *record_args(env, out, "--model-parallel", "3"))
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert lines == ["error: --model-parallel 3 does not divide the world size 2 (torchrun started 2 processes)"] * 2
    assert not our_frames(p.stderr)  # torchrun prints its own report; no traceback of ours
    assert not out.exists()


@pytest.mark.parametrize("override, field", [
    ({"n_heads": 3}, "n_heads=3"), ({"vocab_size": 513}, "vocab_size=513"),
    ({"n_routed_experts": 15, "n_expert_groups": 3, "n_limited_groups": 2, "n_activated_experts": 4},
     "n_routed_experts=15")])
def test_model_parallel_must_divide_the_model(env, tmp_path, monkeypatch, override, field):
    """Checked before any process group exists, so every rank stops with the same line."""
    from probe.record import RecordOptions, record

    ckpt = tmp_path / "ck"
    model.save(random_model("tiny", seed=1, **(TOPOLOGY | override)), ckpt)
    (ckpt / "tokenizer.json").write_bytes((env["ckpt"] / "tokenizer.json").read_bytes())
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParallelError, match=f"--model-parallel 2 does not divide {field}"):
        record(RecordOptions(**_opts(env, tmp_path / "out", RECORD) | {"ckpt": str(ckpt), "model_parallel": 2}))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- --dry-run
def index_only(path: Path, args, n_files: int = 163, drop: str | None = None, add: str | None = None) -> Path:
    """A checkpoint directory as a user has it before downloading the weights: config.json and
    model.safetensors.index.json (names -> shard files), no shard file."""
    import torch

    from model import Transformer
    from model.names import MTP_SHARED, ours_to_hf

    with torch.device("meta"):
        m = Transformer(args, init=False)
    scaled = args.quant_block is not None  # an FP8 checkpoint stores block scales beside FP8 weights
    names = [n for hf, _, _, fp8 in ours_to_hf(m) for n in ([hf, hf + "_scale_inv"] if fp8 and scaled else [hf])]
    names += [f"model.layers.{args.n_layers}.{k}" for k in MTP_SHARED]
    names = [n for n in names if n != drop] + ([add] if add else [])
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(args.to_hf_config()))
    wm = {n: f"model-{i * n_files // len(names) + 1:05d}-of-{n_files:06d}.safetensors" for i, n in enumerate(names)}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return path


def dry(capsys, ckpt, *extra):
    from probe.__main__ import main

    code = main(["record", "--ckpt", str(ckpt), "--dry-run", "--no-progress", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_dry_run_plans_671B_from_config_and_index_alone(tmp_path, capsys):
    ckpt = index_only(tmp_path / "DeepSeek-V3", model.ModelArgs.from_name("671B"))
    out = tmp_path / "run"
    code, text, err = dry(capsys, ckpt, "--out", str(out), "--world-size", "8", "--model-parallel", "auto",
                          "--gemm", "fp8", "--dtype", "bfloat16", "--device-memory", "141")
    print(text)
    assert code == 0, err
    assert "163 of 163 shard files are absent" in text and "checked the 91,991 names" in text
    assert "8 rank(s) = 1 replica(s) x 8" in text
    assert "weights                87.02 GB" in text  # 685 GB of FP8 weights + scales over 8 ranks
    assert "fits 141 GB per rank with" in text and "ESTIMATED" in text
    assert not out.exists()  # nothing written
    # the same run on 80 GB cards does not fit at 8 ranks, and says by how much
    code, text, _ = dry(capsys, ckpt, "--out", str(out), "--world-size", "8", "--model-parallel", "auto",
                        "--gemm", "fp8", "--dtype", "bfloat16", "--device-memory", "80")
    assert code == 0 and "does NOT fit 80 GB per rank: 13." in text


def test_dry_run_checks_the_index_names_and_the_layout(tmp_path, capsys):
    args = model.ModelArgs.from_name("tiny")
    bad = index_only(tmp_path / "a", args, n_files=3, drop="model.layers.1.mlp.experts.3.up_proj.weight")
    code, _, err = dry(capsys, bad)
    assert code == 2 and "missing tensor model.layers.1.mlp.experts.3.up_proj.weight" in err
    extra = index_only(tmp_path / "b", args, n_files=3, add="model.layers.9.mlp.gate.weight")
    code, _, err = dry(capsys, extra)
    assert code == 2 and "unexpected tensor model.layers.9.mlp.gate.weight" in err
    ok = index_only(tmp_path / "c", args, n_files=3)
    code, _, err = dry(capsys, ok, "--world-size", "6", "--model-parallel", "3")
    assert code == 2 and err.strip() == "error: --model-parallel 3 does not divide vocab_size=512 (embedding and head " \
                                        "rows are split across ranks)"
    code, _, err = dry(capsys, ok, "--world-size", "4", "--model-parallel", "3")
    assert code == 2 and "--model-parallel 3 does not divide the world size 4" in err


def test_dry_run_with_the_weights_reads_headers_only(env, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = dry(capsys, env["ckpt"], "--corpus", str(env["corpus"]), "--out", str(out),
                          "--router-logits", "full", "--sample", "0.5")
    assert code == 0, err
    assert "every tensor's name, shape and dtype checked" in text and "ESTIMATED" not in text
    assert "tables per 1M tokens (--router-logits full, --sample 0.5)" in text
    assert not out.exists()
    # a tensor of the wrong shape is found from the headers, before anything loads
    import torch
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in env["ckpt"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    t = load_file(bad / "model.safetensors")
    t["model.layers.1.mlp.gate.weight"] = torch.zeros(256, 60)
    save_file(t, bad / "model.safetensors")
    code, _, err = dry(capsys, bad, "--corpus", str(env["corpus"]))
    assert code == 2 and "model.layers.1.mlp.gate.weight has shape [256, 60], expected [256, 64]" in err
