"""Rows the recorder builds from synthetic captures, checked by hand: routing margins and the kv_stats
cache sizes. (Tables of a real record against direct computation: test_record.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probe.recorders import Recorder, RecordConfig


def _routing(scores: torch.Tensor, ids: torch.Tensor, K: int) -> dict:
    """routing rows of layer 1 from a gate's allowed scores [n, E] and top-k ids, through the recorder's
    own capture (`_save` keeps the best K + 1 allowed scores)."""
    g = "layers.1.ffn.gate."
    fake = SimpleNamespace(K=K, E=scores.shape[1], cfg=RecordConfig(), moe_layers=[1], _cap={})
    for name, t in (("hook_topk_ids", ids), ("hook_topk_weights", torch.ones(ids.shape)),
                    ("hook_allowed_scores", scores)):
        Recorder._save(fake, t, SimpleNamespace(name=g + name))
    n = len(scores)
    return Recorder._routing(fake, torch.arange(n), np.zeros(n, np.int64), np.arange(n, dtype=np.int32))


def test_margins_are_the_kth_and_first_scores_minus_the_next_allowed_one_by_hand():
    # K=2 of E=4; the third token's only other allowed expert is masked (-inf: a group left out), so
    # it has no (K+1)-th score and no margin (null, not inf)
    inf = float("inf")
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.6, 0.4, 0.7], [0.8, -inf, 0.5, -inf]])
    rows = _routing(scores, torch.tensor([[0, 2], [3, 1], [0, 2]]), K=2)
    # sorted: .9 .5 | .3 -> .2, .6; .7 .6 | .4 -> .2, .3
    mk, m1 = rows["margin_k"].to_pylist(), rows["margin_1"].to_pylist()
    assert mk[:2] == pytest.approx([0.5 - 0.3, 0.6 - 0.4], abs=1e-6) and mk[2] is None
    assert m1[:2] == pytest.approx([0.9 - 0.3, 0.7 - 0.4], abs=1e-6) and m1[2] is None


def test_a_model_routing_to_every_expert_has_no_margins():
    # K = E: no expert is left out, so no (K+1)-th score to measure a margin against
    rows = _routing(torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([[1, 0], [0, 1]]), K=2)
    assert rows["margin_k"].to_pylist() == [None, None] and rows["margin_1"].to_pylist() == [None, None]
    assert rows["expert_ids"].to_pylist() == [[1, 0], [0, 1]]


def test_kv_stats_cache_bytes_of_deepseek_v3_by_hand(tmp_path):
    # DeepSeek-V3 in bf16 (C=512, R=64, 128 heads of N=128 + R, V=128, dim 7168): per token and layer
    # the absorbed cache holds (512 + 64) x 2 bytes, the naive one 128 x (192 + 128) x 2, MHA 2 x 7168 x 2
    import pyarrow.parquet as pq

    from probe.record_tables import write_kv_tables
    from probe.stats import KVAccumulator

    acc = KVAccumulator([0], 2)
    acc.add(0, torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.ones(2, 1))
    args = SimpleNamespace(dtype="bfloat16", kv_lora_rank=512, qk_rope_head_dim=64, n_heads=128, qk_head_dim=192,
                           v_head_dim=128, dim=7168)
    write_kv_tables(tmp_path, acc, args)
    row = pq.read_table(tmp_path / "kv_stats").to_pylist()[0]
    assert (row["bytes_absorb"], row["bytes_naive"], row["bytes_mha"]) == (1152, 81920, 28672)
