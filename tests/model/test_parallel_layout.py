"""model/parallel.py in one process, no process group: which config sizes a world size must divide,
which rank holds which rows, heads, experts and FP8 block scales, and install's refusals (the
collectives themselves run under torchrun in tests/model/test_parallel.py)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from model import ModelArgs, parallel
from model.parallel import Cut, ParallelError, Shards

from helpers import random_model

TINY = ModelArgs.from_name("tiny")  # dim 64, inter 128, 4 heads, 16 experts x 32, vocab 512, 1 dense layer


def tiny(**kw) -> ModelArgs:
    return dataclasses.replace(TINY, **kw)


def test_a_config_without_mtp_still_splits_whole_experts():
    # 236B and 16B have no MTP block: their MoE layers alone must make 5 experts refuse 2 ranks
    args = tiny(n_mtp_layers=0, n_routed_experts=5, n_expert_groups=1, n_limited_groups=1, n_activated_experts=2)
    with pytest.raises(ParallelError, match="world size 2 does not divide n_routed_experts=5"):
        parallel.check_world(args, 2)


def test_sizes_a_config_does_not_have_are_not_split():
    parallel.check_world(tiny(n_dense_layers=0, inter_dim=129), 2)  # no dense MLP: its width is irrelevant
    parallel.check_world(tiny(n_shared_experts=2, moe_inter_dim=31), 2)  # shared width 2 x 31 = 62 splits


@pytest.mark.parametrize("world", [0, -2])
def test_a_world_size_below_one_is_refused_by_name(world):
    with pytest.raises(ParallelError, match=f"^--world-size {world} must be >= 1$"):
        parallel.check_world(TINY, world, "--world-size")


def test_row_parallel_cuts_record_the_full_input_width():
    with torch.device("meta"):
        m = model.Transformer(TINY, init=False)
    spec = parallel.shard_spec(m, Shards(1, 2))
    assert spec["layers.0.ffn.w2.weight"] == Cut(1, 64, 64, 128)  # w2 is [dim 64, inter 128]: columns
    assert spec["layers.0.ffn.w1.weight"] == Cut(0, 64, 64, 128)
    assert spec["layers.1.ffn.shared_experts.w2.weight"] == Cut(1, 16, 16, 32)


def _fp8_meta(args: ModelArgs, names=None) -> nn.Module:
    return model.checkpoint.make_fp8_resident(model.Transformer(args, device="meta", init=False), names)


@pytest.mark.filterwarnings("ignore:FP8-resident shards narrower")  # the tiny shared expert's 64 columns
def test_each_rank_gets_the_block_scales_of_its_own_rows_and_experts():
    # 4 heads of 128 + 128 query dims: wq_b has 1024 rows = 8 blocks, rank r of 2 holds blocks [4r, 4r + 4)
    args = tiny(dim=256, inter_dim=512, moe_inter_dim=128, n_heads=4, q_lora_rank=128, kv_lora_rank=128,
                qk_nope_head_dim=128, qk_rope_head_dim=128, v_head_dim=128)
    m = _fp8_meta(args)
    for rank in (0, 1):
        spec = parallel.shard_spec(m, Shards(rank, 2))
        assert spec["layers.0.attn.wq_b.weight_scale_inv"] == Cut(0, 4 * rank, 4, 8)
        assert spec["layers.0.attn.wo.weight_scale_inv"] == Cut(1, 2 * rank, 2, 4)  # 4 x 128 value columns
        assert spec["layers.0.ffn.w2.weight_scale_inv"] == Cut(1, 2 * rank, 2, 4)
        assert spec["layers.1.ffn.experts.w2_scale_inv"] == Cut(0, 8 * rank, 8, 16)  # experts [8r, 8r + 8)


def test_only_row_parallel_fp8_inputs_narrower_than_a_block_warn():
    # the rank's slice of a row-parallel GEMM's input (wo, w2) is quantised in blocks of its own; a
    # column-parallel cut (w1, w3) leaves the input whole, so narrow w1/w3 shards change nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel.shard_spec(_fp8_meta(TINY, {"layers.0.ffn.w1.weight", "layers.0.ffn.w3.weight"}), Shards(1, 2))
    for rank in (0, 1):  # rank 0's cut starts on a block but is still narrower than one
        # tiny's row-parallel FP8 weights: wo of 3 layers + MTP, one dense w2, shared w2 of 2 MoE layers + MTP
        with pytest.warns(UserWarning, match=r"\(8 weights, e\.g\. layers\.0\.attn\.wo\.weight, 32 of 64 columns"):
            parallel.shard_spec(_fp8_meta(TINY), Shards(rank, 2))


def test_shard_fixes_the_embedding_size_and_drops_a_stale_cache():
    m = random_model("tiny", seed=0, attn_impl="naive")  # naive attention caches keys of all 4 heads
    attns = [mod for mod in m.modules() if isinstance(mod, model.mla.MLA)]
    for mod in attns:
        mod.alloc_cache(1, 8)
    full = m.embed.weight.detach().clone()
    parallel.shard_(m, Shards(3, 4))
    assert m.embed.num_embeddings == 128 and torch.equal(m.embed.weight, full[384:])
    assert len(attns) == 4 and all(mod.cache_shape == (0, 0) for mod in attns)


def test_sharded_embedding_ranks_sum_to_the_whole_lookup(monkeypatch):
    monkeypatch.setattr(parallel, "all_reduce", lambda x, group: x)  # each rank's part; summed here
    table = torch.randn(12, 3)
    ids = torch.arange(12).flip(0).reshape(2, 6)  # every id, the slice edges 3|4 and 7|8 included
    parts = [parallel.ShardedEmbedding(nn.Parameter(table[4 * r:4 * r + 4]), 4 * r, None)(ids) for r in range(3)]
    assert torch.equal(sum(parts), F.embedding(ids, table))


def test_install_places_the_vocab_rows_and_refuses_uncut_or_twice_installed_models():
    fake = object()  # a stand-in group: install only registers hooks, nothing communicates here
    whole = random_model("tiny", seed=0)
    with pytest.raises(ParallelError, match="cut the model with shard_"):
        parallel.install(whole, Shards(3, 4, fake))
    full = whole.embed.weight.detach().clone()
    parallel.shard_(whole, Shards(3, 4, fake))
    parallel.install(whole, Shards(3, 4, fake))
    assert whole.embed.start == 384 and torch.equal(whole.embed.weight, full[384:])  # rows [384, 512)
    with pytest.raises(ParallelError, match="already installed"):
        parallel.install(whole, Shards(3, 4, fake))


def test_one_rank_parallelize_leaves_the_model_whole():
    m = random_model("tiny", seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert parallel.parallelize(m, Shards(0, 1)) is m  # no group needed: nothing to cut or reduce
    assert getattr(m, "shards", None) is None and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
