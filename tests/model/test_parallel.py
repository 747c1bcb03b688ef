"""Tensor + expert parallelism (model/parallel.py) and per-rank shard loading (model.load(parallel=True)).

The torchrun part launches `tests/workers/parallel_worker.py` once on 2 CPU processes (gloo) over a set of
checkpoints; each rank loads every checkpoint whole and sharded in one process and reports logits,
MTP logits, decode, hook and gradient differences and its resident bytes. The rest runs in-process.

    python -m pytest -q -s tests/model/test_parallel.py      # -s prints byte ratios and the 671B plan
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import model
from model import ModelArgs, memory, parallel
from model.parallel import ParallelError, Shards

from helpers import hf_checkpoint, random_model
from helpers.processes import TORCHRUN
from helpers.threads import one_thread

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
EXACT = 1e-5  # max |diff| / max |logit|, float32: only the all-reduce summation order differs
# head/expert/FFN shards that are whole 128-blocks: FP8 activation blocks match the single process
ALIGNED = dict(vocab_size=256, dim=256, inter_dim=512, moe_inter_dim=128, n_layers=2, n_heads=4,
               n_routed_experts=4, n_expert_groups=1, n_limited_groups=1, n_activated_experts=2,
               n_shared_experts=2, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=128,
               qk_rope_head_dim=128, v_head_dim=128)
# the dense MLP's shards start mid-block (320 / 2 = 160): fine dequantised, refused FP8 resident
BLOCKS = dict(inter_dim=320)
FP8_FLIP_MEAN_REL, FP8_FLIP_MAX_REL = 5e-3, 5e-2  # FP8 rounding flips from summation order (see below)
FP8_MEAN_REL, FP8_MAX_REL = 0.25, 0.50  # the FP8 GEMM tolerance of tests/model/test_fp8_model.py


@pytest.fixture(autouse=True)
def _one_thread():
    """Each test's work in this process on one torch thread: two spin on the 2-core box for these tiny
    models' GEMMs (helpers.threads.one_thread; `model summary`'s two forwards: 2.5-4.6 s on two threads,
    0.1-0.4 s on one). The torchrun ranks run one thread each already."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory) -> dict:
    with one_thread():  # a module fixture starts before the autouse one above
        return _worker_results(tmp_path_factory.mktemp("parallel"))


def _worker_results(base: Path) -> dict:
    def save(name, m, **kw):
        model.save(m, base / name, **kw)
        return str(base / name)

    tiny = random_model("tiny", seed=0)
    missing = save("missing", tiny, max_shard_bytes=300_000)
    files = sorted(Path(missing).glob("model-*.safetensors"))
    assert len(files) > 2
    files[1].unlink()
    cases = [
        {"name": "tiny", "ckpt": save("tiny", tiny), "grads": True},
        {"name": "tiny_fp8_dequant", "ckpt": save("tiny8", tiny, fp8=True)},
        {"name": "tiny_fp8_resident", "ckpt": str(base / "tiny8"), "gemm_impl": "fp8", "vs_dequant": True},
        {"name": "aligned_fp8_resident", "gemm_impl": "fp8",
         "ckpt": save("aligned", random_model("tiny", seed=3, **ALIGNED), fp8=True)},
        # lean: the absorb logits, the router's choices and the hidden states alone (all their tests read)
        {"name": "aligned_fp8_bf16", "ckpt": str(base / "aligned"), "gemm_impl": "fp8", "dtype": "bfloat16",
         "lean": True},
        {"name": "aligned_fp8_bf16_narrow", "ckpt": str(base / "aligned"), "gemm_impl": "fp8", "dtype": "bfloat16",
         "wide_partials": False, "lean": True},
        {"name": "aligned_fp8_float32_sums", "ckpt": str(base / "aligned"), "gemm_impl": "fp8",
         "layout_free_sums": False, "lean": True},
        {"name": "blocks_fp8_dequant", "ckpt": save("blocks", random_model("tiny", seed=4, **BLOCKS), fp8=True)},
        {"name": "blocks_fp8_resident", "ckpt": str(base / "blocks"), "gemm_impl": "fp8"},
        {"name": "experts6", "ckpt": save("e6", random_model("tiny", seed=5, n_routed_experts=6, n_expert_groups=2,
                                                            n_limited_groups=1, n_activated_experts=2))},
        {"name": "experts5", "ckpt": save("e5", random_model("tiny", seed=6, n_routed_experts=5, n_expert_groups=1,
                                                            n_limited_groups=1, n_activated_experts=2))},
        {"name": "hf_vocab212", "ckpt": str(hf_checkpoint(base / "hf212", seed=7, vocab_size=212))},
        {"name": "hf_vocab211", "ckpt": str(hf_checkpoint(base / "hf211", seed=7))},
        {"name": "missing_shard", "ckpt": missing, "missing": files[1].name},
    ]
    (base / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", str(WORLD),
           str(ROOT / "tests" / "workers" / "parallel_worker.py"), str(base / "cases.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res: dict = {}
    for rank in range(WORLD):
        for line in (base / f"results.rank{rank}.jsonl").read_text().splitlines():
            r = json.loads(line)
            assert "crash" not in r, r
            res.setdefault(r["name"], {})[r["rank"]] = r
    res["_cases"] = {c["name"]: c for c in cases}
    return res


def per_rank(res: dict, name: str) -> list[dict]:
    got = res[name]
    assert sorted(got) == list(range(WORLD)), f"{name}: ranks {sorted(got)}"
    return [got[r] for r in range(WORLD)]


@pytest.mark.parametrize("name", ["tiny", "tiny_fp8_dequant", "blocks_fp8_dequant", "experts6", "hf_vocab212"])
def test_sharded_logits_equal_single_process(worker_results, name):
    for r in per_rank(worker_results, name):
        assert "error" not in r, r
        assert r["world"] == WORLD and r["logits_shape"][-1] > 0
        keys = ["logits_rel_absorb", "logits_rel_naive", "mtp_rel_absorb", "mtp_rel_naive", "decode_rel",
                "hook_scores_rel", "hook_z_rel", "hook_c_kv_rel", "hook_routed_out_rel", "expert_out_local_rel",
                "expert_out_routed_rel", "hook_result_rel", "hook_result_attn_out_rel", "hook_result_replaced_rel"]
        for k in keys:
            if k.startswith("mtp") and k not in r:  # a checkpoint without MTP weights (transformers')
                continue
            assert r[k] <= EXACT, f"{name} rank {r['rank']}: {k} = {r[k]:.3g}"
        assert r["hook_topk_equal"], "router choices must be the single-process ones on every rank"
        assert r["expert_out_others_zero"], "other ranks' experts' outputs are zero rows here"
        assert r["hook_z_shape"][2] * WORLD == ModelArgs.from_hf_config(
            worker_results["_cases"][name]["ckpt"]).n_heads  # per-rank heads
        assert r["hook_result_shape"][2] == r["hook_z_shape"][2]  # attn.hook_result: this rank's heads too
        print(f"\n{name} rank {r['rank']}: logits max rel {r['logits_rel_absorb']:.2e}"
              + (f", MTP {r['mtp_rel_absorb']:.2e}" if "mtp_rel_absorb" in r else " (no MTP weights)")
              + f", decode {r['decode_rel']:.2e}")


def test_mtp_logits_compared(worker_results):
    for name in ("tiny", "tiny_fp8_dequant", "blocks_fp8_dequant", "experts6"):
        for r in per_rank(worker_results, name):
            assert r["mtp_rel_absorb"] <= EXACT and r["mtp_rel_naive"] <= EXACT


def test_resident_bytes_are_half_for_sharded_parts(worker_results):
    for name in ("tiny", "aligned_fp8_resident", "experts6"):
        for r in per_rank(worker_results, name):
            print(f"\n{name} rank {r['rank']}: resident {r['bytes_rank']:,} B of {r['bytes_full']:,} B "
                  f"single-process (total ratio {r['total_ratio']:.3f}); sharded parts "
                  f"{r['bytes_sharded_rank']:,} / {r['bytes_sharded_full']:,} = {r['sharded_ratio']:.4f}")
            assert abs(r["sharded_ratio"] - 1 / WORLD) < 0.01
            replicated = r["bytes_full"] - r["bytes_sharded_full"]
            assert r["bytes_rank"] == r["bytes_sharded_rank"] + replicated and r["total_ratio"] < 0.7


def test_gradients_match_single_process(worker_results):
    """Replicated weights get the full gradient, sharded ones the slice of it (Megatron f/g pair)."""
    for r in per_rank(worker_results, "tiny"):
        assert r["grad_rel_replicated"] <= 1e-4 and r["grad_rel_sharded"] <= 1e-4, r


def test_every_rank_runs_rank_0s_gemm_path(worker_results):
    """init_distributed (not only init_world) gives every CPU rank rank 0's float32 GEMM path: each
    measuring its own, a near tie under a loaded machine went apart, and the shards' sums were no
    longer the whole model's bit for bit (test_fp8_resident_sharded failed 4 times in 7 under load)."""
    got = {r["rank"]: tuple(r["gemm"]) for r in per_rank(worker_results, "tiny")}
    assert len({path for path, _ in got.values()}) == 1 and got[1][1] == "rank 0", got


def test_fp8_resident_sharded(worker_results):
    # aligned shards: the FP8 activation blocks are the single process's, and the row-parallel GEMMs
    # (wo, w2) and the experts' sum accumulate in float64 (model.layers.LAYOUT_FREE_SUMS), so splitting
    # their sums over ranks changes nothing after rounding: every hidden state is bit-equal. (The logits
    # are not: the head is a float32 GEMM split by vocabulary, whose blocking differs in the last bit.)
    for r in per_rank(worker_results, "aligned_fp8_resident"):
        print(f"\naligned FP8 resident rank {r['rank']}: {r['hidden_hooks']} hidden states max rel "
              f"{r['hidden_rel']:.2e}, logits {r['logits_rel_absorb']:.2e}, MTP {r['mtp_rel_absorb']:.2e} (float64 sums)")
        assert r["hidden_hooks"] >= 4 and r["hidden_rel"] == 0.0 and r["hook_routed_out_rel"] == 0.0, r
        for kind in ("logits", "mtp"):
            for impl in ("absorb", "naive"):
                assert r[f"{kind}_rel_{impl}"] <= EXACT, r
        assert r["hook_topk_equal"]
    # shards inside one 128-block (tiny dims): allowed, but a row-parallel GEMM quantises its local
    # activations in their own block, so the result is another FP8 rounding of the same model, not
    # equal: against the dequantised checkpoint (float, no activation quantisation), the shards may be
    # no further than the whole FP8 model is
    for r in per_rank(worker_results, "tiny_fp8_resident"):
        whole, shard = r["whole_vs_dequant_mean_rel"], r["shard_vs_dequant_mean_rel"]
        print(f"\ntiny FP8 resident rank {r['rank']}: logits mean rel {r['logits_mean_rel_absorb']:.3f} "
              f"(max {r['logits_rel_absorb']:.3f}) vs the whole FP8 model; against the dequantised "
              f"checkpoint: whole {whole:.3f}, shards {shard:.3f}")
        assert whole > 0 and shard <= 1.5 * whole + 0.02, r
        assert r["logits_mean_rel_absorb"] <= FP8_MEAN_REL, r


def test_fp8_float32_sums_depend_on_the_layout(worker_results):
    """The control of the test above: the same model with float32 accumulation (the Triton kernel's)
    is not bit-equal: a float32 summation-order difference moves some activation across an FP8
    rounding midpoint (one e4m3 step of that element). Measured by adding 3e-7 relative noise to the
    routed outputs of a whole FP8 model (three seeds, 30 draws each): main logits moved <= 6.4e-7,
    MTP logits (its eh_proj quantises the main model's last hidden state) up to 2.5e-2 max / 2.3e-3
    mean relative; CI once saw 2.1e-3 max. A wrong shard or misaligned block moves them ~100x more."""
    for r in per_rank(worker_results, "aligned_fp8_float32_sums"):
        print(f"\naligned FP8, float32 sums, rank {r['rank']}: hidden states max rel {r['hidden_rel']:.2e}, "
              f"logits {r['logits_rel_absorb']:.2e}, MTP {r['mtp_rel_absorb']:.2e}, mean {r['mtp_mean_rel_absorb']:.2e}")
        assert r["hidden_rel"] > 0.0, r
        for kind in ("logits", "mtp"):
            assert r[f"{kind}_rel_absorb"] <= FP8_FLIP_MAX_REL and r[f"{kind}_mean_rel_absorb"] <= FP8_FLIP_MEAN_REL, r


def test_bf16_fp8_partials_are_reduced_wide(worker_results):
    """bf16 with FP8 GEMMs: the row-parallel partials reach the all-reduce wide (float64 on the CPU) and
    are rounded once, as one process rounds them; reducing bf16 partials (serving engines' layout) is
    the control."""
    for wide, narrow in zip(per_rank(worker_results, "aligned_fp8_bf16"),
                            per_rank(worker_results, "aligned_fp8_bf16_narrow")):
        print(f"\nbf16 FP8 rank {wide['rank']}: logits mean rel {wide['logits_mean_rel_absorb']:.2e} with wide "
              f"partials vs {narrow['logits_mean_rel_absorb']:.2e} with bf16 partials (MTP "
              f"{wide['mtp_mean_rel_absorb']:.2e} vs {narrow['mtp_mean_rel_absorb']:.2e})")
        for kind in ("logits", "mtp"):
            assert wide[f"{kind}_rel_absorb"] == 0.0
            assert narrow[f"{kind}_mean_rel_absorb"] > 1e-3
        assert wide["hook_topk_equal"]


@pytest.mark.parametrize("name, error, words", [
    ("experts5", "ParallelError", ["world size 2 does not divide n_routed_experts=5"]),
    ("hf_vocab211", "ParallelError", ["world size 2 does not divide vocab_size=211"]),
    ("blocks_fp8_resident", "BlockAlignError", ["ffn.w1.weight", "[160, 320)", "align", "gemm_impl='bf16'"]),
    ("missing_shard", "CheckpointError", ["is missing"]),
])
def test_clear_errors_under_torchrun(worker_results, name, error, words):
    case = worker_results["_cases"][name]
    words = words + ([case["missing"]] if "missing" in case else [])
    for r in per_rank(worker_results, name):
        assert r.get("error") == error, r
        assert "\n" not in r["message"]
        for w in words:
            assert w in r["message"], r["message"]


def test_two_sharded_models_in_one_process(worker_results):
    for r in per_rank(worker_results, "two_models"):
        assert r["models"] >= 5 and r["rel"] == 0.0


# ------------------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("override, field", [
    (dict(n_heads=3), "n_heads=3"),
    (dict(vocab_size=511), "vocab_size=511"),
    (dict(inter_dim=129), "inter_dim=129"),
    (dict(n_routed_experts=5, n_expert_groups=1, n_limited_groups=1, n_activated_experts=2), "n_routed_experts=5"),
    (dict(moe_inter_dim=31), "n_shared_experts x moe_inter_dim = 1 x 31 = 31"),
])
def test_world_size_must_divide(override, field):
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | override)
    with pytest.raises(ParallelError, match=f"world size 2 does not divide {field}") as e:
        parallel.check_world(args, 2)
    assert "\n" not in str(e.value)
    parallel.check_world(ModelArgs.from_name("tiny"), 2)


def test_dense_only_config_needs_no_expert_split():
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | dict(n_dense_layers=3, n_mtp_layers=0,
                                                                              n_routed_experts=3, n_expert_groups=1,
                                                                              n_limited_groups=1, n_activated_experts=1))
    parallel.check_world(args, 2)  # no MoE layer: the expert count is irrelevant


def _hand_bytes_671B(W: int) -> int:
    """Bytes a rank of W holds of the 671B config, counted from its shapes: FP8 projections (1 byte + a
    float32 scale a 128 x 128 block), bf16 embedding, head, norms and MTP eh_proj, float32 router."""
    D, V, L, dense, E, I, MI, H = 7168, 129280, 61, 3, 256, 18432, 2048, 128
    qr, kvr, nope, rope, v = 1536, 512, 128, 64, 128
    fp8 = lambda n, k: n * k + -(-n // 128) * -(-k // 128) * 4  # noqa: E731
    h = H // W
    attn = (fp8(qr, D) + fp8(h * (nope + rope), qr) + fp8(kvr + rope, D) + fp8(h * (nope + v), kvr)
            + fp8(D, h * v) + (D + qr + kvr + D) * 2)  # + attn_norm, q_norm, kv_norm, ffn_norm
    mlp = 2 * fp8(I // W, D) + fp8(D, I // W)
    moe = (E * D * 4 + E * 4                                  # router weight and bias
           + E // W * (2 * fp8(MI, D) + fp8(D, MI))           # whole experts
           + 2 * fp8(MI // W, D) + fp8(D, MI // W))           # the shared expert, split
    mtp = attn + moe + 3 * D * 2 + 2 * D * D * 2              # enorm, hnorm, norm; eh_proj
    return (L * attn + dense * mlp + (L - dense) * moe + mtp
            + 2 * (V // W) * D * 2 + D * 2 + rope // 2 * 4)  # embed, head rows; norm; rope_inv_freq


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_671B_shard_plan_fits_80GB_at_world_16():
    plan = memory.shard_plan(ModelArgs.from_name("671B"), 16, fp8=True)
    # the plan is the hand count of the config's tensors, and absorb's dequantised wkv_b is 8 of 128 heads
    # x (128 + 128) rows x 512 latent in bf16 for 61 layers + MTP; float32: the 59 MoE routers' weights
    assert plan["per_rank_bytes"] == _hand_bytes_671B(16) and plan["full_bytes"] == _hand_bytes_671B(1)
    assert plan["absorb_dense_bytes"] == 62 * 8 * 256 * 512 * 2
    assert plan["float32_per_rank_bytes"] == 59 * 256 * 7168 * 4
    print("\n" + memory.format_plan(plan, "671B"))
    gb = plan["per_rank_bytes"] / 1e9
    assert gb < 80, f"{gb:.1f} GB per rank does not fit an 80 GB GPU"
    # 685B parameters, nearly all FP8: about 685 GB / 16 plus the replicated parts
    assert 40 < gb < 50 and 680e9 < plan["full_bytes"] < 700e9
    assert plan["per_rank_bytes"] == plan["sharded_full_bytes"] // 16 + plan["replicated_bytes"]
    assert memory.shard_plan(ModelArgs.from_name("671B"), 8)["per_rank_bytes"] / 1e9 > 80  # one 8-GPU node: no


def test_plan_counts_the_largest_fp8_weight_a_gemm_dequantises():
    """The two-layer 671B slice of benchmarks/bench_full_width.py: at 2 ranks the largest FP8 weight of a
    rank is the dense layer's w1/w3 shard (18432 / 2 x 7168), at 16 ranks one routed expert's (2048 x
    7168, experts are never split); dense weights have none."""
    import dataclasses

    a = dataclasses.replace(ModelArgs.from_name("671B"), n_layers=2, n_dense_layers=1, n_mtp_layers=0)
    f32 = memory.shard_plan(a, 2, dtype=torch.float32)
    assert f32["largest_fp8_weight_bytes"] == 18432 // 2 * 7168 * 4
    assert f32["absorb_dense_bytes"] == 2 * 64 * (128 + 128) * 512 * 4  # 64 heads' wkv_b a rank, float32
    assert memory.shard_plan(a, 16, dtype=torch.bfloat16)["largest_fp8_weight_bytes"] == 2048 * 7168 * 2
    assert memory.shard_plan(a, 2, fp8=False)["largest_fp8_weight_bytes"] == 0
    # FP8 activations (gemm fp8) on the CPU: the twin dequantises into its accumulation dtype, float64 for
    # the row-parallel w2 (7168 x 18432 / 2) and float32 for w1/w3, whatever the model's dtype
    for dtype in (torch.float32, torch.bfloat16):
        assert memory.shard_plan(a, 2, dtype=dtype, quantised_activations=True)["largest_fp8_weight_bytes"] \
            == 7168 * 18432 // 2 * 8
    # at 16 ranks the dense w2 shard in float64 (7168 x 1152 x 8 B) outweighs an expert's in float32
    assert memory.shard_plan(a, 16, quantised_activations=True)["largest_fp8_weight_bytes"] == 7168 * 1152 * 8
    # the vocabulary splits evenly over 2 ranks (embedding and head rows): 64,640 each
    two = memory.shard_plan(a, 2, fp8=True, dtype=torch.float32)
    assert two["per_rank_bytes"] == two["sharded_full_bytes"] // 2 + two["replicated_bytes"]
    act = memory.forward_plan(a, model_parallel=2, batch=2, seq_len=256, dtype=torch.float32,
                              dequantised=two["largest_fp8_weight_bytes"])
    assert act["dequantised_weight"] == 18432 // 2 * 7168 * 4 and act["peak"] == sum(
        v for k, v in act.items() if k != "peak")


def test_params_cli_world_size(capsys):
    from model.__main__ import main
    main(["params", "--config", "671B", "--world-size", "16"])
    out = capsys.readouterr().out
    assert "world size 16 (FP8 weights): 44." in out and "GB per rank" in out
    with pytest.raises(SystemExit):
        main(["params", "--config", "671B", "--world-size", "3"])
    assert "error: --world-size 3 does not divide vocab_size=129280" in capsys.readouterr().err  # the flag named
    for flag in ("--world-size 0", "--world-size 8 --device-memory -1", "--world-size 8 --seq-len 0"):
        with pytest.raises(SystemExit):
            main(["params", "--config", "671B", *flag.split()])
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag.split()[-2]} ") and err.rstrip().endswith("must be > 0"), err


@pytest.mark.slow  # a command end to end on the bundled model
def test_summary_cli_and_its_errors(capsys, tmp_path, monkeypatch):
    import model.commands as cli
    from model.__main__ import main

    from helpers.models import REPO
    monkeypatch.setattr(cli, "available_memory", lambda: 24 * 2**30)  # the 671B refusal on any machine
    main(["summary", "--batch", "2", "--seq-len", "8"])
    out = capsys.readouterr().out
    assert "forward: (2, 8) tokens -> logits (2, 8, " in out and "experts used" in out
    main(["summary", "--ckpt", str(REPO / "data" / "model"), "--text", "def f(x):"])
    assert "forward: (1, " in capsys.readouterr().out
    (tmp_path / "tokenizer.json").write_text("garbage")
    for argv, msg in ((["--batch", "0"], "--batch 0: must be at least 1"),
                      (["--seq-len", "-1"], "--seq-len -1: must be at least 1"),
                      (["--ckpt", str(REPO / "data" / "model"), "--text", ""], "--text '': no tokens to run"),
                      (["--config", "671B"], "--config 671B: random float32 weights would take 2,5")):
        with pytest.raises(SystemExit):
            main(["summary", *argv])
        err = capsys.readouterr().err
        assert err.startswith(f"error: {msg}") and err.count("\n") == 1, err
    for flag in (["--dense"], ["--device-memory", "1"], ["--batch-size", "64"], ["--seq-len", "4096"]):
        with pytest.raises(SystemExit):  # the last three were dropped silently (reviews)
            main(["params", *flag])
        assert f"{flag[0]} sizes the model per rank: use it with --world-size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --text without --ckpt: refused before the model is built, status 2
        main(["summary", "--text", "hi"])
    assert e.value.code == 2 and capsys.readouterr().err == "error: --text needs --ckpt DIR with a tokenizer.json\n"
    main(["params", "--config", "tiny"])  # counts in their own units: it printed "main 0.00B"
    # activated: without the input embedding table's 256 x 128 (as DeepSeek count it; a review)
    assert capsys.readouterr().out.startswith("tiny: main 344,680, activated per token 164,456, MTP module 128,376")
    with pytest.raises(SystemExit) as e:
        main(["params", "--config", "tiny", "--world-size", "2", "--seq-len", "100000"])
    assert e.value.code == 2 and "--seq-len 100000: longer than the config's max_seq_len 256" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # does not fit: exit status 1, as record --dry-run
        main(["params", "--config", "671B", "--world-size", "8", "--device-memory", "40"])
    assert e.value.code == 1 and "does NOT fit 40 GB per rank" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # misaligned FP8 shards: the advice is this command's --dense (a review)
        main(["params", "--config", "671B", "--world-size", "32"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "do not align to the 128-wide FP8 blocks; pass --dense" in err and "gemm_impl='bf16' (" not in err
    main(["params", "--config", "671B", "--world-size", "32", "--dense"])
    assert "671B: world size 32 (dense bf16 weights)" in capsys.readouterr().out
    # V2 and V2-Lite are published in BF16 (no quant_block): planned as such, not as FP8 the loader refuses
    # (16B at 16 ranks was refused for FP8 blocks it does not have; a review)
    for name in ("16B", "236B"):
        main(["params", "--config", name, "--world-size", "16" if name == "16B" else "8"])
        assert "(dense bf16 weights)" in capsys.readouterr().out


def test_fp8_misaligned_shard_is_refused_on_meta():
    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | BLOCKS)
    with torch.device("meta"):
        m = model.Transformer(args, init=False)
    model.checkpoint.make_fp8_resident(m)
    for rank in (0, 1):  # rank 0's [0, 160) starts on a block, rank 1's does not: both ranks raise
        with pytest.raises(ParallelError, match=r"layers\.0\.ffn\.w1\.weight: rank 1's rows/columns \[160, 320\) "
                                                r"of 320 do not align to the 128-wide FP8 blocks; use "
                                                r"gemm_impl='bf16' \(dequantise on load\) or a world size whose "
                                                r"shards are multiples of 128$"):
            parallel.shard_spec(m, Shards(rank, 2))
    with pytest.warns(UserWarning, match="FP8-resident shards narrower than one 128-wide block"):
        spec = parallel.shard_spec(model.checkpoint.make_fp8_resident(
            model.Transformer(ModelArgs.from_name("tiny"), device="meta", init=False)), Shards(1, 2))
    assert spec["layers.0.attn.wq_b.weight_scale_inv"] == parallel.Cut(0, 0, 1, 1)  # inside one block
    import warnings

    with warnings.catch_warnings():  # the control: whole-block shards, no warning
        warnings.simplefilter("error")
        big = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | {  # every row-parallel input 2 x 128
            "inter_dim": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 64, "moe_inter_dim": 256})
        parallel.shard_spec(model.checkpoint.make_fp8_resident(model.Transformer(big, device="meta", init=False)),
                            Shards(1, 2))
        # weight-only FP8 (gemm_impl="fp8-weights") quantises no activation: narrow shards change
        # nothing, and the warning said they did (a review)
        weights_only = model.checkpoint.make_fp8_resident(
            model.Transformer(ModelArgs.from_name("tiny"), device="meta", init=False))
        for mod in weights_only.modules():
            if hasattr(mod, "quantise_activations"):
                mod.quantise_activations = False
        parallel.shard_spec(weights_only, Shards(1, 2))
        # one process cuts nothing: the tiny model's narrow weights are whole, and the one-process
        # plan (`--dry-run --gemm fp8`) warned that ranks split their activation blocks (a review)
        parallel.shard_spec(model.checkpoint.make_fp8_resident(
            model.Transformer(ModelArgs.from_name("tiny"), device="meta", init=False)), Shards(0, 1))


def test_shard_in_process_and_save_refused(tmp_path):
    m = random_model("tiny", seed=0)
    full = dict(m.named_parameters())
    full = {k: v.detach().clone() for k, v in full.items()}
    spec = parallel.shard_(m, Shards(1, 2))  # no group: cut only (planning), no communication
    assert m.layers[0].attn.n_heads == 2 and m.layers[0].attn.head_range == (2, 4)
    assert m.layers[1].ffn.experts.expert_range == (8, 16) and m.layers[1].ffn.experts.w1.shape[0] == 8
    assert torch.equal(m.head.weight, full["head.weight"][256:]) and m.head.out_features == 256
    assert torch.equal(m.layers[0].attn.wo.weight, full["layers.0.attn.wo.weight"][:, 32:])
    assert spec["layers.0.attn.wo.weight"] == parallel.Cut(1, 32, 32, 64)
    assert torch.equal(m.layers[0].attn.wq_a.weight, full["layers.0.attn.wq_a.weight"])  # replicated
    with pytest.raises(ParallelError, match="already sharded"):
        parallel.shard_(m, Shards(1, 2))
    with pytest.raises(model.CheckpointError, match="cannot save a tensor/expert-parallel model"):
        model.save(m, tmp_path / "x")
    with pytest.raises(ParallelError, match="install needs Shards with a process group"):
        parallel.install(m, Shards(1, 2))


def test_single_process_parallel_true_is_the_whole_model(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = random_model("tiny", seed=0)
    model.save(m, tmp_path)
    a, b = model.load(tmp_path, dtype=torch.float32), model.load(tmp_path, dtype=torch.float32, parallel=True)
    assert getattr(b, "shards", None) is None
    tok = torch.randint(0, 512, (1, 6))
    with torch.no_grad():
        assert torch.equal(a(tok), b(tok))
    with pytest.raises(ParallelError, match="parallel='yes'"):
        model.load(tmp_path, parallel="yes")


# ------------------------------------------------------------------------------------ generation
def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", str(WORLD), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_generate_under_torchrun_is_sharded_and_equals_single_process(tmp_path):
    from generate import generate, load_codec, write_demo_checkpoint

    demo = write_demo_checkpoint(tmp_path / "demo")
    texts = ["one", "two two", "the third prompt"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    proc = _torchrun("-m", "generate", "--ckpt", str(demo), "--prompt-file", str(f), "--max-new-tokens", "6",
                     "--mtp", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[{WORLD} ranks: tensor + expert parallel shards]" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == texts  # rank 0 alone writes
    codec = load_codec(demo, ModelArgs.from_hf_config(demo))
    single = model.load(demo)
    prompts = [codec.encode(t) for t in texts]
    for mtp in (True, False):  # greedy MTP decoding == plain greedy == the sharded run
        ref = generate(single, prompts, max_new_tokens=6, stop_ids=codec.stop_ids, mtp=mtp)
        assert [r["tokens"] for r in rows] == ref.tokens
    # rank 0 alone prints: each completion once, one summary line
    for i, text in enumerate(texts):
        assert proc.stdout.count(f"[{i}] {text}\n{codec.decode(rows[i]['tokens'])}\n") == 1, proc.stdout
    assert proc.stderr.count("MTP drafts accepted") == 1, proc.stderr[-2000:]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    proc = _torchrun("-m", "generate", "--ckpt", str(demo), "--prompt-file", str(empty), "--replicate")
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") == 1 and "--replicate has no effect" not in proc.stderr  # not one process
    assert f"--prompt-file {empty}: no prompts (the file is blank lines only)" in proc.stderr


def test_auto_shards_only_under_a_multi_process_launch(monkeypatch):
    """`model.load(parallel="auto")` (the default) is the whole model unless torchrun started
    several processes; there it means tensor + expert parallel (exercised by the torchrun tests)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel.resolve("auto") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parallel.resolve("auto") is None


def test_process_groups_are_created_in_one_place():
    """model/ranks.py alone creates process groups (init_distributed / init_world); the jobs,
    training and generation ask it (through model.parallel) for their World."""
    import re

    calls = re.compile(r"\b(init_process_group|new_group|destroy_process_group)\(")
    found = sorted(str(p.relative_to(ROOT)) for pkg in ("model", "probe", "analyses", "dashboards", "data")
                   for p in (ROOT / pkg).rglob("*.py") if calls.search(p.read_text()))
    assert found == ["model/ranks.py"], found
