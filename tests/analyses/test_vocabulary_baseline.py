"""Vocabulary specialisation against its no-specialisation baseline, and the per-expert vocabulary
entropy where it is 0 / 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyses.metrics.specialisation import (expert_vocabulary, expert_vocabulary_from_run, vocabulary_specialisation,
                                             vocabulary_specialisation_baseline)


def unspecialised(seed: int = 0, N: int = 8, T: int = 20_000, p=None):
    """Token ids with a long tail of rare ids (Zipf-like over 5,000 ids) and first choices drawn
    independently of the id (uniform over N experts, or `p`)."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, T), 5000)
    return ids, rng.choice(N, T, p=p)


def test_without_specialisation_the_metric_sits_at_the_baseline_not_at_1_over_n():
    ids, top1 = unspecialised()
    for min_count in (1, 5):
        vs = vocabulary_specialisation(ids, top1, min_count=min_count)
        base = vocabulary_specialisation_baseline(ids, top1, min_count=min_count)
        assert abs(vs - base) < 0.02, (min_count, vs, base)
        assert vs - 1 / 8 > 0.15  # the old "about 1/N" reading would call this specialised
    # frequent ids on an unbalanced layer: the busiest expert's share (0.5), not 1/N
    rng = np.random.default_rng(1)
    ids, top1 = rng.integers(0, 10, 20_000), rng.choice(8, 20_000, p=[0.5] + [0.5 / 7] * 7)
    vs, base = vocabulary_specialisation(ids, top1), vocabulary_specialisation_baseline(ids, top1)
    assert vs == pytest.approx(0.5, abs=0.03) and abs(vs - base) < 0.02


def test_specialised_routing_stands_far_above_the_baseline_and_the_baseline_is_deterministic():
    ids, _ = unspecialised()
    top1 = ids % 8  # every id always goes to one expert
    assert vocabulary_specialisation(ids, top1, min_count=5) == 1.0
    base = vocabulary_specialisation_baseline(ids, top1, min_count=5)
    assert base < 0.6
    assert vocabulary_specialisation_baseline(ids, top1, min_count=5) == base  # fixed seed
    # and the same tokens in another order (a SQL query's rows): the same baseline, as the metric is
    perm = np.random.default_rng(7).permutation(len(ids))
    assert vocabulary_specialisation_baseline(ids[perm], top1[perm], min_count=5) == base
    assert vocabulary_specialisation(ids[perm], top1[perm], min_count=5) == 1.0
    assert math.isnan(vocabulary_specialisation_baseline([1, 2], [0, 1], min_count=3))  # no id qualifies
    with pytest.raises(ValueError, match="shuffles"):
        vocabulary_specialisation_baseline(ids, top1, shuffles=0)


def test_vocab_entropy_is_nan_for_an_expert_with_one_id_or_none():
    v = expert_vocabulary([5, 5, 6, 7, 7, 7], [0, 0, 0, 1, 1, 1], n_experts=3)
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)  # expert 0: ids 5, 5, 6
    assert v.vocab_entropy[0] == pytest.approx(h / math.log(2))
    assert math.isnan(v.vocab_entropy[1]) and v.distinct_ids[1] == 1 and v.top_share[1] == 1.0  # one id: 0 / 0
    assert math.isnan(v.vocab_entropy[2]) and v.tokens[2] == 0  # never chosen


def test_run_version_vocab_entropy_is_nan_for_a_one_id_expert(tmp_path):
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r")  # layer 1: first choice = token id % 8 over 11 ids: experts 3-7 see one id each
    v = expert_vocabulary_from_run(tmp_path / "r", 1).set_index("expert")
    one = v[v.distinct_ids == 1]
    assert len(one) and one.vocab_entropy.isna().all()
    assert np.isfinite(v[v.distinct_ids > 1].vocab_entropy).all()


def test_wide_expert_ids_count_sparsely_to_the_same_values():
    """An ids x experts table that would be large (expert ids x 1000) is counted one pair at a time: the metric
    and its baseline (the same shuffles) are those of the narrow ids."""
    ids, top1 = unspecialised(seed=2)
    top1 = np.where(ids % 3 == 0, ids % 8, top1)  # some specialisation, so that the values differ from chance
    for f in (vocabulary_specialisation, vocabulary_specialisation_baseline):
        assert f(ids, top1 * 1000, min_count=5) == f(ids, top1, min_count=5)
    assert vocabulary_specialisation(ids, top1, min_count=5) > vocabulary_specialisation_baseline(ids, top1, min_count=5)
