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


def _summary(x: torch.Tensor, chunk: int = 37):
    """kv_stats and kv_spectrum columns of one layer whose latents are x [n, C], added as a record adds them."""
    from probe.stats import KVAccumulator, summarise

    acc = KVAccumulator([0], x.shape[1])
    for c in x.split(chunk):
        acc.add(0, c, torch.ones(len(c), 1))
    return summarise(acc, {"bytes_absorb": 1, "bytes_naive": 1, "bytes_mha": 1})


def test_a_latent_that_never_varies_has_no_rank_and_no_variance_not_its_rounding():
    """The covariance is sum x x^T / n - mean mean^T in float64; for a latent that is the same at every token what
    is left is that subtraction's rounding, and its spectrum was measured: effective rank 30.9, 48 components
    for 90%, over 1,000 tokens of 512 float32 channels (110.6 here, in float64). Rounding is none now."""
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64).repeat(1000, 1)
    stats, spec = _summary(x)
    assert stats["effective_rank"] == [0.0] and [stats[f"energy{q}"] for q in (90, 95, 99)] == [[0], [0], [0]]
    assert set(stats["channel_var"][0]) == {0.0} and set(spec["eigenvalue"]) == {0.0}
    # the subtraction does leave rounding here (what the floor removes): the raw covariance is not all 0
    mean = x.sum(0) / len(x)
    raw = np.linalg.eigvalsh(((x.T @ x) / len(x) - torch.outer(mean, mean)).numpy())
    assert np.abs(raw).max() > 0


def test_a_latent_varying_in_a_few_channels_keeps_their_spectrum_whatever_the_others_constant():
    """The floor takes only rounding: 8 channels that vary (over 504 constant ones of large mean) keep their 8
    eigenvalues, which equal the centred data's squared singular values / n, and the effective rank and
    energy counts computed from those alone."""
    from probe.stats import spectrum_summary

    g = torch.Generator().manual_seed(1)
    x = (30 * torch.randn(1, 512, generator=g, dtype=torch.float64)).repeat(2000, 1)
    x[:, :8] = torch.randn(2000, 8, generator=g, dtype=torch.float64) * torch.logspace(0, -3, 8, dtype=torch.float64)
    stats, spec = _summary(x)
    centred = (x - x.mean(0)).numpy()
    want = np.sort(np.linalg.svd(centred[:, :8], compute_uv=False) ** 2 / len(x))[::-1]
    got = np.array(spec["eigenvalue"])
    assert np.count_nonzero(got) == 8
    np.testing.assert_allclose(got[:8], want, rtol=1e-9)
    assert stats["effective_rank"][0] == pytest.approx(spectrum_summary(want)["effective_rank"], rel=1e-12)
    assert stats["energy99"][0] == spectrum_summary(want)["energy99"]
    np.testing.assert_allclose(stats["channel_var"][0][:8], centred[:, :8].var(0), rtol=1e-9)
    assert set(stats["channel_var"][0][8:]) == {0.0}
