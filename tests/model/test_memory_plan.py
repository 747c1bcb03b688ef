"""model/memory.py's activation estimate (forward_plan) against hand counts of the tensors its
docstring names; the weight plan (shard_plan) is held to a hand count in tests/model/test_parallel.py."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from model import ModelArgs, memory

TINY = ModelArgs.from_name("tiny")  # vocab 512, dim 64, one MTP layer


def test_one_process_holds_its_logits_once_and_mtp_logits_only_with_an_mtp_block():
    T, S, V = 2 * 8, 8, 512
    one = memory.forward_plan(TINY, model_parallel=1, batch=2, seq_len=8, dtype=torch.bfloat16)
    # [T, V] bf16 logits (nothing gathered) and one float32 row for the loss, for the head and the MTP head
    assert one["logits"] == 2 * (T * V * 2 + S * V * 4)
    no_mtp = memory.forward_plan(dataclasses.replace(TINY, n_mtp_layers=0), batch=2, seq_len=8)
    assert no_mtp["logits"] == T * V * 2 + S * V * 4


def test_attention_scores_grow_with_the_square_of_the_sequence_on_a_rank():
    a = ModelArgs.from_name("671B")
    S = 4096
    f = [memory.forward_plan(a, model_parallel=8, batch=1, seq_len=n)["largest_layer"] for n in (S, 2 * S)]
    # float32 scores and probabilities [1, 128 / 8, S, S]; every other term is linear in S
    assert f[1] - 2 * f[0] == 2 * (16 * S * S * 4 * 2)


def test_residual_and_per_token_terms_scale_with_the_tokens():
    p = memory.forward_plan(TINY, batch=2, seq_len=8, dtype=torch.float32, dequantised=1000, fp8_twin_per_token=100)
    T, D = 16, 64
    assert p["residual"] == 4 * T * D * 4  # h, the norm's output, the block output, the embedding
    assert p["fp8_twin_activations"] == T * 100 and p["dequantised_weight"] == 1000
    assert p["peak"] == sum(v for k, v in p.items() if k != "peak")


def test_the_fp8_twins_bytes_per_token_are_its_largest_gemms_padded_input_and_wide_copies():
    # one dense layer whose w2 (64 x 200, row-parallel) has an input of 200: two 128-wide blocks
    a = dataclasses.replace(TINY, n_layers=1, n_dense_layers=1, n_mtp_layers=0, inter_dim=200)
    plan = memory.shard_plan(a, 1, quantised_activations=True)
    # w2: input padded to 256 in float32, its 200 FP8 bytes, dequantised in float64 (row-parallel), and the
    # 64-wide product and output in float64; w1/w3 (200 x 64, float32) hold 128 x 4 + 64 + 64 x 4 + 2 x 200 x 4
    w2, w1 = 256 * 4 + 200 + 200 * 8 + 2 * 64 * 8, 128 * 4 + 64 + 64 * 4 + 2 * 200 * 4
    assert (w2, w1) == (3848, 2432)
    assert plan["fp8_twin_bytes_per_token"] == w2
    assert memory.shard_plan(a, 1)["fp8_twin_bytes_per_token"] == 0  # weight-only FP8: no activation copies


def test_fp8_scales_follow_the_configs_block_and_dense_weights_keep_no_absorbed_copy():
    a = dataclasses.replace(TINY, n_layers=1, n_dense_layers=1, n_mtp_layers=0)
    full = [memory.shard_plan(dataclasses.replace(a, quant_block=b), 1)["full_bytes"] for b in ((64, 64), (128, 128))]
    # 64-wide blocks add one float32 scale to each weight with a side over 64: wq_b (96 x 32), wkv_b (128 x 24),
    # w1 and w3 (128 x 64) and w2 (64 x 128); wq_a, wkv_a (32 x 64) and wo (64 x 64) keep their one
    assert full[0] - full[1] == 5 * 4
    # absorbed attention's dequantised wkv_b: 3 layers + MTP, 4 heads x (16 + 16) rows x 24 latent, bf16
    assert memory.shard_plan(TINY, 1)["absorb_dense_bytes"] == 4 * 4 * 32 * 24 * 2
    assert memory.shard_plan(TINY, 1, fp8=False)["absorb_dense_bytes"] == 0


def test_the_kv_cache_counts_the_mtp_layer_only_when_asked():
    # latent 24 + rope key 8 per position per layer, 2 x 8 positions, bf16; 3 layers + 1 MTP
    assert memory.kv_cache_bytes(TINY, 2, 8) == 4 * 16 * (24 + 8) * 2
    assert memory.kv_cache_bytes(TINY, 2, 8, mtp=False) == 3 * 16 * (24 + 8) * 2
    assert memory.kv_cache_bytes(TINY, 2, 8, torch.float32, mtp=False) == 3 * 16 * (24 + 8) * 4


def test_the_moe_layer_holds_a_busy_experts_rows_rounded_up_and_a_ranks_part_of_the_shared_expert():
    # MoE layers only, experts 128 wide: at 5 tokens the MoE outweighs attention
    a = dataclasses.replace(TINY, n_dense_layers=0, moe_inter_dim=128)
    T, D, E, K, MI = 5, 64, 16, 4, 128
    for dtype, e in ((torch.bfloat16, 2), (torch.float32, 4)):
        moe = (T * E * 4 * 5 + T * K * 8 * 3               # router scores (float32), ids, weights
               + 2 * 2 * (D * e * 2 + MI * e * 3)          # 5 x 4 / 16 = 1.25 rows an expert, up to 2, twice
               + T * MI // 2 * e * 3                       # the shared expert's half of its rows on one of 2 ranks
               + T * D * 4 + (T * D * 2 if e == 2 else 0)  # the routed sum in float32, rounded to bf16
               + T * D * e)                                # the shared expert's output
        assert memory.forward_plan(a, model_parallel=2, batch=1, seq_len=5, dtype=dtype)["largest_layer"] == moe


def test_the_dense_mlp_is_split_over_ranks_and_each_kind_of_layer_counts_only_where_the_model_has_it():
    dense_only = dataclasses.replace(TINY, n_dense_layers=3, inter_dim=1024)
    # w1 and w3 outputs and their product: 1024 / 2 columns a rank, bf16; and the w2 output
    assert memory.forward_plan(dense_only, model_parallel=2, batch=1, seq_len=1)["largest_layer"] \
        == 1024 // 2 * 2 * 3 + 64 * 2
    moe_only = dataclasses.replace(TINY, n_dense_layers=0)
    for args, other in ((dense_only, {"moe_inter_dim": 4096}), (moe_only, {"inter_dim": 8192})):
        # widening the kind of layer the model lacks changes nothing
        kw = dict(model_parallel=1, batch=1, seq_len=4)
        assert memory.forward_plan(dataclasses.replace(args, **other), **kw) == memory.forward_plan(args, **kw)


def test_attention_at_64_positions_holds_each_tensor_its_docstring_names():
    T, H, D, e = 64, 4, 64, 2  # one row of 64 positions, 4 heads, bf16; attention is the largest layer here
    qk, nv = 16 + 8, 16 + 16   # nope + rope; nope + v
    attn = (T * 32 * e * 2            # q_a's output and q_norm's (q_lora_rank 32)
            + T * H * qk * e * 3      # q, q_pe, the query
            + T * (24 + 8) * e * 2    # wkv_a's output (latent 24 + rope 8) and kv_norm's
            + T * H * nv * e          # wkv_b's output
            + T * H * qk * e * 2      # keys and the values padded to the key width
            + H * T * T * 4 * 2       # float32 scores and probabilities
            + T * H * qk * e + T * D * e)  # attention output and wo's
    assert memory.forward_plan(TINY, batch=1, seq_len=64, dtype=torch.bfloat16)["largest_layer"] == attn


def test_the_weight_plan_splits_into_this_ranks_shards_and_the_replicated_rest():
    plan = memory.shard_plan(TINY, 2, fp8=False, dtype=torch.float32)  # dense: every sharded tensor halves exactly
    assert plan["sharded_per_rank_bytes"] * 2 == plan["sharded_full_bytes"]
    assert plan["per_rank_bytes"] == plan["sharded_per_rank_bytes"] + plan["replicated_bytes"]
    assert plan["full_bytes"] == plan["sharded_full_bytes"] + plan["replicated_bytes"] > plan["per_rank_bytes"]


def test_a_world_the_model_cannot_split_is_named_by_the_flag_that_chose_it():
    from model.ranks import ParallelError

    with pytest.raises(ParallelError, match=r"^--model-parallel 3 does not divide"):  # 3 does not divide 4 heads
        memory.shard_plan(TINY, 3, what="--model-parallel")


def test_the_plan_line_names_the_weights_kind_and_sizes_in_decimal_units():
    p = {"world_size": 2, "fp8": False, "per_rank_bytes": 3e9, "sharded_per_rank_bytes": 2e9,
         "replicated_bytes": 1e9, "full_bytes": 5e9}
    assert memory.format_plan(p, "x") == ("x: world size 2 (dense bf16 weights): 3.00 GB per rank (sharded 2.00 GB"
                                          " + replicated 1.00 GB) of 5.00 GB in one process")
    assert "(FP8 weights): 2.50 MB per rank" in memory.format_plan(p | {"fp8": True, "per_rank_bytes": 2.5e6})
    # a shortfall (negative) reads in the unit of its size
    assert [memory.size(n) for n in (1e9, -2e9, -5e5)] == ["1.00 GB", "-2.00 GB", "-0.50 MB"]


def test_available_memory_reads_memavailable_in_kib_as_bytes(monkeypatch):
    import io

    meminfo = "MemTotal:        8000 kB\nMemFree:          100 kB\nMemAvailable:    2048 kB\n"
    monkeypatch.setattr(memory, "open", lambda *a, **k: io.StringIO(meminfo), raising=False)
    assert memory.available_memory() == 2048 * 1024

    def missing(*a, **k):
        raise FileNotFoundError(a[0])

    monkeypatch.setattr(memory, "open", missing, raising=False)
    assert memory.available_memory() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_process_memory_reports_the_resident_bytes_now_below_the_peak():
    import resource

    x = torch.ones(16 * 2**20)  # 64 MiB touched, then freed: the peak stays above the resident set
    del x
    p = memory.process_memory()
    assert p["peak_rss"] - p["rss"] >= 60 * 2**20
    # the kernel's own peak: getrusage's ru_maxrss, in KiB on Linux
    assert abs(p["peak_rss"] - resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) < 0.05 * p["peak_rss"]


def test_the_recorders_captures_add_to_the_peak():
    p = memory.forward_plan(TINY, batch=1, seq_len=4, captures={"routing": 100, "scores": 23})
    bare = memory.forward_plan(TINY, batch=1, seq_len=4)
    assert p["captures"] == 123 and p["peak"] - bare["peak"] == 123
