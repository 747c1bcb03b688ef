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


def test_energy_counts_of_a_uniform_spectrum_and_a_slightly_negative_eigenvalue():
    from probe.stats import spectrum_summary

    # ten equal eigenvalues: 90% of the energy is exactly nine components (their float cumsum reads
    # 0.8999999999999999 there, which must still count as 90%)
    s = spectrum_summary(np.ones(10))
    assert (s["energy90"], s["energy95"], s["energy99"]) == (9, 10, 10)
    assert s["effective_rank"] == pytest.approx(10.0, rel=1e-12)
    # a covariance's eigvalsh can return small negatives: they count as zero energy, not as negative
    assert spectrum_summary(np.array([1.0, 1.0, -1.0])) == spectrum_summary(np.array([1.0, 1.0, 0.0]))
    assert spectrum_summary(np.array([1.0, 1.0, 0.0]))["energy90"] == 2


def test_kv_spectrum_numbers_components_from_0_largest_first(tmp_path):
    import pyarrow.parquet as pq

    from probe.record_tables import write_kv_tables
    from probe.stats import KVAccumulator

    acc = KVAccumulator([3], 2)
    acc.add(0, torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), torch.ones(4, 1))
    args = SimpleNamespace(dtype="float32", kv_lora_rank=2, qk_rope_head_dim=1, n_heads=1, qk_head_dim=2,
                           v_head_dim=1, dim=4)
    write_kv_tables(tmp_path, acc, args)
    spec = pq.read_table(tmp_path / "kv_spectrum").to_pandas()
    # mean 0; covariance diag(18 / 4, 2 / 4)
    assert spec.layer.tolist() == [3, 3] and spec.component.tolist() == [0, 1]
    assert spec.eigenvalue.tolist() == pytest.approx([4.5, 0.5])


def test_a_layer_without_valid_tokens_adds_nothing_and_a_loaded_state_is_a_copy():
    from probe.stats import KVAccumulator

    acc = KVAccumulator([0], 2)
    acc.add(0, torch.zeros(0, 2), torch.zeros(0, 1))  # a batch of padding only
    assert acc.n.tolist() == [0] and np.isinf(acc.norms["latent"][0, 2])
    acc.add(0, torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0]]))
    twin = KVAccumulator([0], 2)
    twin.load_state(acc.state())  # e.g. a resumed rank's saved sums
    twin.add(0, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0]]))
    assert acc.n.tolist() == [1] and acc.sum.tolist() == [[3.0, 4.0]]  # the source did not move with it
    assert twin.n.tolist() == [2] and twin.norms["latent"][0].tolist() == [6.0, 26.0, 1.0, 5.0]
