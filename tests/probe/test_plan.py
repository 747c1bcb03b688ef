"""probe/plan.py, `dsv3-probe record --dry-run`: what the plan counts and when it says a run fits, on the
tests' tiny checkpoint (probe_env) and a tiny FP8 one of config and index alone (a plan of either takes ~0.1 s)."""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import numpy as np
import pytest
import torch

import model
from helpers.checkpoints import FP8_OVERRIDES, index_only
from probe.job import RecordError
from probe.plan import _advice, _distinct_ids, _gb, capture_bytes, dry_run, table_bytes_per_token
from probe.record import RecordOptions, prepare

GB = 1e9


def plan(env, where, ckpt=None, **kw):
    """The plan of a record of `env`'s corpus (200 tokens in windows of 32) into where/run."""
    opts = RecordOptions(ckpt=str(ckpt or env["ckpt"]), corpus=str(env["corpus"]), out=str(where / "run"),
                         dry_run=True, max_tokens=200, seq_len=32, progress=False, **kw)
    return dry_run(prepare(opts), opts)


@pytest.fixture(scope="module")
def fp8_index(tmp_path_factory):
    """A tiny FP8 checkpoint (128 x 128 block scales, dims with partial blocks) of config and index alone."""
    args = dataclasses.replace(model.ModelArgs.from_name("tiny"), **FP8_OVERRIDES, quant_block=(128, 128))
    return index_only(tmp_path_factory.mktemp("fp8_index") / "ckpt", args, n_files=2), args


def test_no_mtp_leaves_the_mtp_block_out_of_the_cache_and_the_tables(probe_env, tmp_path):
    args = model.ModelArgs.from_hf_config(probe_env["ckpt"])
    assert args.n_mtp_layers == 1  # the control: the checkpoint has an MTP block to leave out
    per_layer = 8 * 32 * (args.kv_lora_rank + args.qk_rope_head_dim) * 4  # batch x seq_len x (C + R) float32
    on, off = plan(probe_env, tmp_path), plan(probe_env, tmp_path, mtp=False)
    assert on["kv_cache"] == (args.n_layers + 1) * per_layer and off["kv_cache"] == args.n_layers * per_layer
    assert "mtp" in on["table_bytes_per_token"] and "mtp" not in off["table_bytes_per_token"]


def test_the_expected_run_size_is_every_tables_bytes_for_the_corpus(probe_env, tmp_path):
    p = plan(probe_env, tmp_path)
    assert set(p["table_bytes_per_token"]) == {"tokens", "routing", "expert_load", "mtp"}
    total = 0.0
    for per_token in p["table_bytes_per_token"].values():
        total += per_token * p["corpus"]["tokens"]
    assert p["run_bytes"] == pytest.approx(total + p["state_bytes"], abs=1)


def test_the_accumulator_state_in_the_run_size_is_what_a_record_writes(probe_env, tmp_path):
    """The latent statistics' running sums (an .npz beside the progress; 128 MB a writer for DeepSeek-V3) were
    left out of the expected run size: a fifth of a small run of the bundled model."""
    from helpers.records import rec

    p = plan(probe_env, tmp_path)
    rec(probe_env, tmp_path / "run", max_tokens=200, seq_len=32)
    (npz,) = (tmp_path / "run" / "_progress").glob("*.npz")
    assert p["replicas"] == 1 and p["state_bytes"] == pytest.approx(npz.stat().st_size, abs=64)


def test_device_memory_is_in_decimal_gigabytes_and_must_be_positive(probe_env, tmp_path):
    need = plan(probe_env, tmp_path)["per_rank"]
    # 0.1% either side of the need: a GiB reading (7% more) would call the smaller one enough
    assert plan(probe_env, tmp_path, device_memory=need * 1.001 / GB)["fits"]
    assert not plan(probe_env, tmp_path, device_memory=need * 0.999 / GB)["fits"]
    for bad in (0.0, -1.0):
        with pytest.raises(RecordError, match=f"--device-memory {bad:g}: must be > 0"):
            plan(probe_env, tmp_path, device_memory=bad)
    with pytest.raises(RecordError, match="--device-memory inf: must be a finite number"):  # it "fit, inf to spare"
        plan(probe_env, tmp_path, device_memory=float("inf"))


def test_a_run_larger_than_the_free_disk_does_not_fit(probe_env, tmp_path, monkeypatch, capsys):
    import probe.plan

    p = plan(probe_env, tmp_path)
    assert p["fits"] and "NOT ENOUGH" not in capsys.readouterr().out  # the control: the test's disk has room
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(probe.plan.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    p = plan(probe_env, tmp_path)
    assert p["run_bytes"] > 1000 and not p["fits"]
    assert "free there: NOT ENOUGH)" in capsys.readouterr().out


def test_an_out_several_folders_deep_is_planned_on_its_nearest_existing_folder(probe_env, tmp_path, capsys):
    assert plan(probe_env, tmp_path / "a" / "b")["fits"]  # --out tmp_path/a/b/run
    assert "expected run size" in capsys.readouterr().out and not (tmp_path / "a").exists()


def test_the_plan_says_which_rope_the_config_gives(probe_env, tmp_path, capsys):
    """A config.json without rope_scaling reads as plain RoPE, as transformers reads it: for a DeepSeek-V3 every
    attention score changes (YaRN's softmax scale), and nothing said so (a checkpoint tour)."""
    import shutil

    from helpers.checkpoints import edit_config

    plan(probe_env, tmp_path / "a")
    assert ", YaRN x4 over 64 positions)\n" in capsys.readouterr().out  # tiny's rope_scaling
    ck = shutil.copytree(probe_env["ckpt"], tmp_path / "ck")
    edit_config(ck, lambda c: {k: v for k, v in c.items() if k != "rope_scaling"})
    plan(probe_env, tmp_path / "b", ckpt=ck)
    assert ", plain RoPE: no YaRN rope_scaling in config.json)\n" in capsys.readouterr().out


def test_only_rank_0_prints_the_plan(probe_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    plan(probe_env, tmp_path)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    plan(probe_env, tmp_path, world_size=2)
    out = capsys.readouterr().out
    assert "2 rank(s) = 2 replica(s) x 1" in out and "ranks 0..1\n" in out  # ranks numbered from 0


def test_under_torchrun_rank_0_alone_says_that_a_plan_does_not_fit(probe_env, tmp_path, monkeypatch, capsys):
    """`torchrun ... record --dry-run --device-memory 80` of a plan that did not fit printed no plan, only
    "rank 0 of 2 stopped by signal 15": rank 1, which prints nothing, left first with status 1 and
    torchrun stopped rank 0 before it printed. The other ranks leave with 0; rank 0's status is the verdict."""
    from probe.__main__ import _record, parser

    argv = ["record", "--ckpt", str(probe_env["ckpt"]), "--corpus", str(probe_env["corpus"]), "--out",
            str(tmp_path / "run"), "--dry-run", "--max-tokens", "200", "--seq-len", "32", "--world-size", "2",
            "--device-memory", "0.000001"]
    monkeypatch.setenv("RANK", "1")
    assert _record(parser().parse_args(argv)) == 0 and capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert _record(parser().parse_args(argv)) == 1 and "does NOT fit" in capsys.readouterr().out


def test_fp8_weights_are_resident_as_with_fp8_and_dequantised_per_gemm_on_every_device(fp8_index, probe_env,
                                                                                        tmp_path):
    # --gemm fp8-weights keeps the FP8 weights (fp8's memory) but dequantises each weight for its GEMM in
    # the compute dtype, on a GPU too, with unquantised activations (no copies of the FP8 GEMM's torch twin)
    ckpt, args = fp8_index
    largest = args.dim * args.inter_dim * 4  # the dense MLP's w1/w2/w3 in float32: the largest FP8 weight
    p = {(g, d): plan(probe_env, tmp_path, ckpt=ckpt, gemm=g, device=d)
         for g in ("bf16", "fp8", "fp8-weights") for d in ("cpu", "cuda")}
    dense = p["bf16", "cuda"]["weights"]["per_rank_bytes"]
    assert p["fp8-weights", "cuda"]["weights"]["per_rank_bytes"] == p["fp8", "cuda"]["weights"]["per_rank_bytes"] \
        < dense / 2
    for d in ("cpu", "cuda"):
        act = p["fp8-weights", d]["activations"]
        assert act["dequantised_weight"] == largest and act["fp8_twin_activations"] == 0, d
    # the control: fp8's Triton GEMM on a GPU reads the FP8 weight as it is
    assert p["fp8", "cuda"]["activations"]["dequantised_weight"] == 0


def test_the_recorders_captures_by_hand():
    # 671B, 2 x 128 tokens: 58 MoE layers of K = 8 of E = 256 experts, 61 layers of C + R = 512 + 64
    args = model.ModelArgs.from_name("671B")
    T = 2 * 128
    opts = RecordOptions(batch_size=2, seq_len=128, router_logits="full")
    got = capture_bytes(args, opts, torch.bfloat16)
    # per MoE layer and token: 8 int64 ids, 8 float32 weights, the best 9 allowed scores in float32
    assert got["routing"] == 58 * T * (8 * 8 + 8 * 4 + 9 * 4)
    assert got["scores"] == 58 * T * 256 * 4  # every expert's float32 score
    assert got["latents"] == 61 * T * 576 * 2  # bfloat16 latents of every layer
    assert set(capture_bytes(args, dataclasses.replace(opts, router_logits="topk", kv_stats=False),
                             torch.bfloat16)) == {"routing"}


def test_the_tables_measured_are_the_runs_own():
    args = model.ModelArgs.from_name("tiny")
    none = table_bytes_per_token(args, RecordOptions(router_logits="none", seq_len=32), mtp=False)
    assert set(none) == {"tokens", "expert_load"}  # no routing rows, no MTP block
    full, sampled, topk = (table_bytes_per_token(args, RecordOptions(router_logits=r, sample=s, seq_len=32), mtp=True)
                           for r, s in (("full", 1.0), ("full", 0.1), ("topk", 1.0)))
    assert set(full) == {"tokens", "routing", "expert_load", "mtp"}
    # --sample 0.1 keeps a tenth of the scores: most of what they add to a routing row is gone
    scores = full["routing"] - topk["routing"]
    assert scores > 0 and sampled["routing"] < topk["routing"] + 0.3 * scores


@pytest.mark.parametrize("E, K", [(64, 8), (10, 8)])  # redrawn rows; a full sort when E < 2K
def test_synthetic_expert_ids_are_k_distinct_experts_a_row(E, K):
    ids = _distinct_ids(np.random.default_rng(0), 2000, E, K)
    assert ids.shape == (2000, K) and ids.min() >= 0 and ids.max() < E
    assert all(len(set(row)) == K for row in ids.tolist())


def test_advice_for_a_plan_that_does_not_fit_names_only_what_would_change():
    assert "--batch-size" not in _advice(RecordOptions(batch_size=1))  # one window a batch is the least
    assert "--batch-size" in _advice(RecordOptions(batch_size=2))
    assert _advice(RecordOptions(batch_size=1, gemm="fp8", model_parallel="auto"), 8, 8) == "more ranks"
    # ranks help where they shard the model: with --model-parallel 1 (the default) on 8 ranks each held the
    # whole model and the advice was "more ranks" (a checkpoint tour)
    assert _advice(RecordOptions(batch_size=1, gemm="fp8"), 1, 8) == (
        "--model-parallel auto (each of the 8 ranks holds the whole model now)")
    assert _advice(RecordOptions(batch_size=1, gemm="fp8", model_parallel=4), 4, 8).startswith(
        "--model-parallel auto (each of the 8 ranks holds 1/4 of the model now)")
    assert _advice(RecordOptions(batch_size=1, gemm="fp8"), 1, 1) == "more ranks with --model-parallel auto"


def test_sizes_print_in_gb_from_10_mb_up():
    assert [_gb(n) for n in (5e7, 1e7, 9.5e6, -2e8)] == ["0.05 GB", "0.01 GB", "9.5 MB", "-0.20 GB"]
