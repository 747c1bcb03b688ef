"""Metrics on hand-computed cases and the edge cases metrics.md asks for. (Their Run versions:
test_run_metrics.py.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from analyses import metrics as M

from helpers.cli_errors import one_line


def test_maxvio_hand_computed():
    # 4 experts, T*K = 8 assignments: mean 2, max 4 -> (4-2)/2 = 1
    assert M.maxvio([4, 2, 1, 1]) == pytest.approx(1.0)
    assert M.maxvio([2, 2, 2, 2]) == 0.0  # perfectly uniform
    assert M.maxvio([8, 0, 0, 0]) == pytest.approx(3.0)  # all load on one expert: N-1
    assert M.maxvio([5]) == 0.0  # a single expert is trivially balanced
    assert math.isnan(M.maxvio([0, 0, 0]))  # empty layer
    assert M.maxvio([4, 2, 1, 1], mean_load=4) == 0.0


def test_relative_load_balancedness_cv():
    np.testing.assert_allclose(M.relative_load([4, 2, 1, 1]), [2, 1, 0.5, 0.5])
    assert M.balancedness([4, 2, 1, 1]) == pytest.approx(0.5)
    assert M.balancedness([3, 3, 3]) == 1.0
    assert M.balancedness([8, 0, 0, 0]) == pytest.approx(0.25)
    assert M.cv([2, 2, 2, 2]) == 0.0
    assert M.cv([4, 0]) == pytest.approx(1.0)  # std 2, mean 2


def test_normalised_entropy():
    assert M.normalised_entropy([1, 1, 1, 1]) == pytest.approx(1.0)
    assert M.normalised_entropy([5, 0, 0, 0]) == pytest.approx(0.0)
    assert M.normalised_entropy([1, 1, 0, 0]) == pytest.approx(math.log(2) / math.log(4))
    assert math.isnan(M.normalised_entropy([0, 0]))
    assert M.normalised_entropy([3]) == 1.0


def test_mutual_information_and_nmi():
    # two domains, each always routed to its own expert: I = H(domain) = ln 2, NMI = 1
    c = np.array([[10, 0], [0, 10]])
    assert M.mutual_information(c) == pytest.approx(math.log(2))
    assert M.domain_nmi(c) == pytest.approx(1.0)
    # independent: NMI = 0
    assert M.domain_nmi(np.array([[5, 5], [10, 10]])) == pytest.approx(0.0, abs=1e-12)
    # hand-computed mixed case: p = [[.4,.1],[.1,.4]] -> I = .8 ln(1.6) + .2 ln(.4)
    c = np.array([[4, 1], [1, 4]])
    want = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert M.mutual_information(c) == pytest.approx(want)
    assert M.domain_nmi(c) == pytest.approx(want / math.log(2))
    assert M.domain_nmi(np.array([[3, 4, 5]])) == 0.0  # one domain
    assert M.domain_nmi(np.zeros((2, 3))) == 0.0  # empty


def test_nmi_refuses_an_average_it_does_not_know_whatever_the_table():
    """average='typo' was refused only where both sides vary: a constant side returned 1 or 0 first (a bug hunt)."""
    from analyses.metrics import MetricsError

    for c in (np.array([[4, 1], [1, 4]]), np.array([[3, 4, 5]]), np.array([[5], [5]]), np.zeros((2, 2))):
        with pytest.raises(MetricsError, match=r"^average='typo': choose one of \['arithmetic', 'geometric', 'min', "
                                               r"'max', 'rows'\]$"):
            M.nmi(c, average="typo")
    assert M.nmi(np.array([[3, 4, 5]]), average="max") == 0.0 and M.nmi(np.array([[5]]), average="min") == 1.0


def test_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        M.maxvio([[1, 2], [3, 4]])


def test_a_bad_batch_load_row_is_named_by_its_argument_and_row():
    """balance_summary's and maxvio_batch's batch loads: a non-finite or negative row was 'load: loads must be
    finite', an argument neither caller was given (a bug hunt)."""
    for bad, needle in (([[1, 2], [1, float("inf")]], r"^batch_loads\[1\]: loads must be finite$"),
                        ([[1, -2], [1, 1]], r"^batch_loads\[0\]: negative load -2")):
        for fn in (M.maxvio_batch, lambda b: M.balance_summary([2, 3], batch_loads=b)):
            with pytest.raises(M.MetricsError, match=needle):
                fn(bad)


# ------------------------------------------------------------------------------ load balance
@pytest.mark.parametrize("bad, needle", [([[1, 2], [3, 4]], "1-D"), ([], "empty"), ([1, -2, 3], "negative"),
                                         ([1, float("nan")], "finite")])
def test_bad_loads_raise_one_line_errors(bad, needle):
    for fn in (M.maxvio, M.relative_load, M.balancedness, M.imbalance_ratio, M.cv, M.normalised_entropy,
               M.gini, M.jain_index):
        with pytest.raises(M.MetricsError, match=needle) as e:
            fn(bad)
        one_line(e)


def test_maxvio_batch_and_imbalance_ratio():
    np.testing.assert_allclose(M.maxvio_batch([[4, 0], [2, 2], [0, 0]]), [1.0, 0.0, np.nan])
    with pytest.raises(M.MetricsError, match="batches"):
        M.maxvio_batch([1, 2])
    assert M.imbalance_ratio([4, 2, 1, 1]) == pytest.approx(1.0)  # 4 / 2 - 1
    assert M.imbalance_ratio([3, 3, 3]) == 0.0
    assert M.imbalance_ratio([8, 0, 0, 0]) == pytest.approx(3.0)
    assert M.imbalance_ratio([7]) == 0.0
    assert math.isnan(M.imbalance_ratio([0, 0]))


def test_gini_and_jain():
    # |x_i - x_j| summed over ordered pairs of [1, 2, 3] = 8; / (2 * 3^2 * mean 2) = 2/9
    assert M.gini([3, 1, 2]) == pytest.approx(2 / 9)
    assert M.gini([1, 1, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    assert M.gini([4, 0, 0, 0]) == pytest.approx(0.75)  # (N-1)/N
    assert M.gini([5]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(M.gini([0, 0, 0]))
    assert M.jain_index([1, 2, 3]) == pytest.approx(36 / 42)
    assert M.jain_index([2, 2]) == pytest.approx(1.0)
    assert M.jain_index([4, 0, 0, 0]) == pytest.approx(0.25)
    assert M.jain_index([9]) == 1.0
    assert math.isnan(M.jain_index([0, 0]))


def test_single_expert_and_empty_layer_edge_cases():
    for fn, want in ((M.balancedness, 1.0), (M.cv, 0.0), (M.maxvio, 0.0), (M.normalised_entropy, 1.0)):
        assert fn([6]) == want
    np.testing.assert_allclose(M.relative_load([6]), [1.0])
    assert np.isnan(M.relative_load([0, 0])).all()
    for fn in (M.balancedness, M.cv, M.maxvio):
        assert math.isnan(fn([0, 0, 0]))


def test_switch_balance():
    assert M.switch_balance([2, 2, 2, 2], [0.25] * 4) == pytest.approx(1.0)  # uniform: f = 1, P = 1/N
    assert M.switch_balance([4, 0], [1.0, 0.0]) == pytest.approx(2.0)  # all on one: N
    # f = 2 * [3, 1] / 4 = [1.5, 0.5]; 1.5 * 0.6 + 0.5 * 0.4 = 1.1
    assert M.switch_balance([3, 1], [0.6, 0.4]) == pytest.approx(1.1)
    assert math.isnan(M.switch_balance([0, 0], [0.5, 0.5]))
    with pytest.raises(M.MetricsError, match="does not match"):
        M.switch_balance([1, 2, 3], [0.5, 0.5])
    np.testing.assert_allclose(M.normalised_scores([[1, 1], [3, 1]]), [[0.5, 0.5], [0.75, 0.25]])
    with pytest.raises(M.MetricsError, match="negative"):
        M.normalised_scores([[1, -1]])


def test_gpu_loads_and_balance_summary():
    np.testing.assert_allclose(M.gpu_loads([4, 2, 1, 1], 2), [6, 2])
    np.testing.assert_allclose(M.gpu_loads([1, 2, 3], 2), [3, 3])  # chunks [1, 2] and [3]
    with pytest.raises(M.MetricsError, match="exceeds"):
        M.gpu_loads([1, 2], 3)
    s = M.balance_summary([4, 2, 1, 1], batch_loads=[[2, 1, 1, 0], [2, 1, 0, 1]], n_gpus=2)
    assert s["maxvio_global"] == pytest.approx(1.0) and s["balancedness"] == pytest.approx(0.5)
    assert s["maxvio_batch_mean"] == pytest.approx(1.0) and s["maxvio_batch_max"] == pytest.approx(1.0)
    assert s["imbalance_ratio"] == pytest.approx(3 / 2 - 1)  # per batch GPU loads [3, 1]: 3/2 - 1
    assert s["gpu_balancedness"] == pytest.approx(4 / 6)
    assert math.isnan(s["switch"]) and s["batches"] == 2
    with pytest.raises(M.MetricsError, match="batch_loads"):
        M.balance_summary([1, 2], batch_loads=[[1, 2, 3]])


def test_balance_summary_batches_min_load_and_gpu_ratio_hand_computed():
    """balance_summary's batch MaxVio mean and max took every batch but a dropped one unnoticed (the
    existing case has equal MaxVio in each batch), its min_relative_load was never checked against a
    value, and its imbalance ratio without per-batch loads could read per-expert loads in place of
    the GPUs' (a review)."""
    # MaxVio per batch: [4,0,0,0] -> (4-1)/1 = 3; [2,2,2,2] -> 0; [0,3,1,0] -> (3-1)/1 = 2
    b = [[4, 0, 0, 0], [2, 2, 2, 2], [0, 3, 1, 0]]
    x = [6, 5, 3, 2]  # their sum: mean 4
    s = M.balance_summary(x, batch_loads=b)
    assert s["batches"] == 3
    assert s["maxvio_batch_mean"] == pytest.approx(5 / 3) and s["maxvio_batch_max"] == pytest.approx(3.0)
    assert s["maxvio_global"] == pytest.approx(0.5)  # (6 - 4) / 4
    assert s["max_relative_load"] == pytest.approx(1.5) and s["min_relative_load"] == pytest.approx(0.5)  # 6/4, 2/4
    # without per-batch loads, two GPUs: contiguous halves [6+5, 3+2] = [11, 5], mean 8 -> 11/8 - 1
    g = M.balance_summary(x, n_gpus=2)
    assert g["batches"] == 0 and math.isnan(g["maxvio_batch_mean"])
    assert g["imbalance_ratio"] == pytest.approx(3 / 8)  # per expert it would be 6/4 - 1 = 1/2
    assert g["gpu_balancedness"] == pytest.approx(8 / 11)
    assert M.balance_summary(x)["imbalance_ratio"] == pytest.approx(0.5)  # no GPUs: the experts' own


def test_a_gpu_count_that_is_not_a_whole_number_above_0_is_refused_by_name():
    """balance_table(run, n_gpus='4') and n_gpus=2.5 were TypeErrors from deep in numpy, and n_gpus=0 was
    read as "no GPU view" without a word."""
    x = [6, 5, 3, 2]
    for bad, msg in (("4", r"n_gpus='4': expected a whole number of GPUs"),
                     (2.5, r"n_gpus=2\.5: expected a whole number of GPUs"),
                     (True, r"n_gpus=True: expected a whole number of GPUs"), (0, "n_gpus must be >= 1, got 0")):
        for kw in ({}, {"batch_loads": [[4, 0, 0, 0]]}):
            with pytest.raises(M.MetricsError, match=f"^{msg}$"):
                M.balance_summary(x, n_gpus=bad, **kw)
    assert M.balance_summary(x, n_gpus=np.int64(2))["gpu_balancedness"] == pytest.approx(8 / 11)


def test_counts_and_thresholds_outside_their_meaning_are_refused_by_name():
    """top=0 gave every expert an empty list of ids, top=-1 its ids but the last, near=-1 a share of 0,
    min_count=2.5 and every=2.5 were used as fractions, k=1.5 and shuffles=2.5 were numpy's TypeErrors."""
    tok, e = np.arange(12) % 4, np.arange(12) % 3
    ids = np.stack([e, (e + 1) % 3], axis=1)[:, None, :]  # [T, 1 layer, K=2]
    calls = [(lambda v: M.expert_vocabulary(tok, e, top=v), "top", (0, -1, 2.5, "3")),
             (lambda v: M.vocabulary_specialisation(tok, e, min_count=v), "min_count", (0, -2, 2.5)),
             (lambda v: M.vocabulary_specialisation_baseline(tok, e, min_count=v), "min_count", (0, 2.5)),
             (lambda v: M.vocabulary_specialisation_baseline(tok, e, shuffles=v), "shuffles", (0, 2.5, True)),
             (lambda v: M.margin_summary([0.1, 0.2], near=v), "near", (0, -1, float("nan"), float("inf"), "0.1")),
             (lambda v: M.common_paths(ids, top=v), "top", (0, -1, 1.5)),
             (lambda v: M.common_paths(ids, tok, tok, examples=v), "examples", (-1, 0.5)),
             (lambda v: M.path_keys(ids, k=v), "k", (0, 1.5)),
             (lambda v: M.heldout_windows(np.arange(12), tok, every=v), "every", (1, 2.5)),
             (lambda v: M.coactivation(e, n_experts=v), "n_experts", (0, 3.5))]
    for call, name, values in calls:
        for bad in values:
            with pytest.raises(M.MetricsError, match=rf"^{name}={re.escape(repr(bad))}: expected a ") as ei:
                call(bad)
            one_line(ei)
    assert len(M.expert_vocabulary(tok, e, top=np.int64(2)).top_ids[0]) == 2  # numpy's ints and 2.0 still count
    assert M.common_paths(ids, top=2.0, examples=0).shape[0] == 2
    assert M.margin_summary([0.1, 0.2], near=np.float32(0.15))["near"] == 0.5


# ------------------------------------------------------------------------------ specialisation
def test_contingency_lift_share():
    names, c = M.contingency(["a", "b", "a"], [[0, 1], [1, 2], [0, 2]])
    assert names == ["a", "b"]
    np.testing.assert_array_equal(c, [[2, 1, 1], [0, 1, 1]])
    _, c4 = M.contingency(["a"], [[1, 2]], n_experts=4)
    np.testing.assert_array_equal(c4, [[0, 1, 1, 0]])
    with pytest.raises(M.MetricsError, match="out of range"):
        M.contingency(["a"], [[1, 5]], n_experts=4)
    with pytest.raises(M.MetricsError, match="lengths differ"):
        M.contingency(["a", "b"], [[1, 2]])
    # a run's list column (run.df("routing").expert_ids: an array a token) is its rows; it was numpy's 'truth
    # value of an array ... is ambiguous'
    import pandas as pd
    column = pd.Series([np.array([0, 1], np.uint16), np.array([1, 2], np.uint16), np.array([0, 2], np.uint16)])
    assert M.contingency(["a", "b", "a"], column)[1].tolist() == c.tolist()
    # labels and ids swapped (numpy's "ufunc 'remainder' not supported"), bools (read as experts 0 and 1)
    for bad, dtype in [(np.array(["a", "b"]), "<U1"), (np.array([[True, False]]), "bool")]:
        with pytest.raises(M.MetricsError, match=rf"^expert_ids: expert ids must be integers, got {dtype} values$"):
            M.contingency(["a"] * len(bad), bad)
    with pytest.raises(M.MetricsError, match=r"^expert_ids: rows of different lengths \(\[1, 2\]\)"):
        M.contingency(["a", "b"], pd.Series([np.array([1]), np.array([1, 2])]))
    # a row missing from a list column (None, or NaN from a join) is named; it was Python's 'len() of unsized
    # object' from the message on rows of different lengths
    for gap in (None, np.nan):
        with pytest.raises(M.MetricsError, match=rf"^expert_ids: row 1 is {gap}, not a row of expert ids"):
            M.contingency(["a", "b"], pd.Series([np.array([1, 2]), gap]))
    # P(d, e) = 3/8 on the diagonal, P(d) = P(e) = 1/2 -> lift 1.5 and 0.5
    np.testing.assert_allclose(M.lift([[3, 1], [1, 3]]), [[1.5, 0.5], [0.5, 1.5]])
    li = M.lift([[2, 0], [2, 0]])  # expert 1 never chosen: NaN; expert 0 equally shared: 1
    np.testing.assert_allclose(li, [[1, np.nan], [1, np.nan]])
    np.testing.assert_allclose(M.domain_share([[3, 0], [1, 0]]), [[0.75, np.nan], [0.25, np.nan]])
    assert np.isnan(M.lift(np.zeros((2, 2)))).all()
    with pytest.raises(M.MetricsError, match="2-D"):
        M.lift([1, 2])
    # contingency()'s (labels, counts) pair passed whole was numpy's 'inhomogeneous shape'
    for f in (M.lift, M.domain_share, M.mutual_information, M.domain_nmi):
        with pytest.raises(M.MetricsError, match=r"^contingency: got contingency\(\)'s \(labels, counts\) pair: pass "):
            f(M.contingency(["a", "b", "a"], [[0, 1], [1, 2], [0, 2]]))
        # a table of two rows written as a tuple of lists is a table, not that pair (it was refused as one)
        np.testing.assert_allclose(f(([3, 1], [1, 3])), f([[3, 1], [1, 3]]))


def test_nmi_matches_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, 500)
    b = (a + rng.integers(0, 3, 500)) % 6
    c = np.zeros((4, 6))
    np.add.at(c, (a, b), 1)
    for avg in ("arithmetic", "geometric", "min", "max"):
        assert M.nmi(c, avg) == pytest.approx(normalized_mutual_info_score(a, b, average_method=avg))
    # negative control: an unrelated labeling scores far lower, so the comparison can fail
    assert M.nmi(c) > normalized_mutual_info_score(a, rng.permutation(b)) + 0.1
    assert M.nmi([[5, 0], [0, 5]]) == pytest.approx(1.0)
    assert M.nmi([[7]]) == 1.0 and M.nmi([[3, 4]]) == 0.0  # sklearn's conventions
    with pytest.raises(M.MetricsError, match="average"):
        M.nmi(c, "mean")


def test_vocabulary_specialisation():
    # id 5 -> experts [0, 0, 1]: 2/3; id 7 -> [2, 3]: 1/2; mean over ids 7/12
    assert M.vocabulary_specialisation([5, 5, 5, 7, 7], [0, 0, 1, 2, 3]) == pytest.approx(7 / 12)
    assert M.vocabulary_specialisation([5, 5, 5, 7, 7], [0, 0, 1, 2, 3], min_count=3) == pytest.approx(2 / 3)
    assert M.vocabulary_specialisation([1, 1, 2], [4, 4, 0]) == 1.0  # each id has one expert
    assert math.isnan(M.vocabulary_specialisation([], []))
    with pytest.raises(M.MetricsError, match="one expert"):
        M.vocabulary_specialisation([1], [[1, 2]])
    v = M.expert_vocabulary([5, 5, 6, 7, 7, 7], [0, 0, 0, 1, 1, 1], n_experts=3, top=1)
    assert v.tokens.tolist() == [3, 3, 0] and v.distinct_ids.tolist() == [2, 1, 0]
    assert v.top_ids[0] == [5] and v.top_share[0] == pytest.approx(2 / 3) and v.top_share[1] == 1.0
    assert v.vocab_entropy[0] == pytest.approx(M.entropy([2, 1]) / math.log(2))
    assert math.isnan(v.top_share[2])


# ------------------------------------------------------------------------------ routing patterns
def test_random_overlap_baseline_matches_mixtral():
    assert M.random_overlap_baseline(8, 1) == pytest.approx(0.125)
    assert M.random_overlap_baseline(8, 2) == pytest.approx(1 - 15 / 28)  # Mixtral's 46%
    assert M.random_overlap_baseline(3, 2) == 1.0  # two 2-subsets of 3 always meet
    with pytest.raises(M.MetricsError):
        M.random_overlap_baseline(4, 5)


def test_repetition_hand_computed():
    ids = [[0, 1], [0, 2], [3, 1], [3, 0]]
    r = M.repetition(ids, n_experts=4)
    assert r["pairs"] == 3
    assert r["same_top1"] == pytest.approx(2 / 3)
    assert r["topk_any"] == pytest.approx(2 / 3)
    assert r["topk_overlap"] == pytest.approx((1 + 0 + 1) / 3 / 2)
    assert r["baseline_top1_uniform"] == 0.25
    assert r["baseline_top1_load"] == pytest.approx(0.5)  # first choices [0, 0, 3, 3]
    assert r["baseline_topk_overlap_load"] == pytest.approx((0.75**2 + 0.5**2 + 0.25**2 + 0.5**2) / 2)
    assert r["baseline_topk_any_uniform"] == pytest.approx(1 - 1 / 6)
    assert r["baseline_topk_overlap_uniform"] == 0.5
    r2 = M.repetition(ids, seq_id=[0, 0, 1, 1])  # the middle pair crosses windows
    assert r2["pairs"] == 2 and r2["same_top1"] == 1.0
    assert M.repetition(ids, pos=[0, 1, 5, 6])["pairs"] == 2
    assert M.repetition([[2]], n_experts=3)["pairs"] == 0 and math.isnan(M.repetition([[2]], n_experts=3)["same_top1"])
    assert M.repetition([[0], [0]], n_experts=1)["baseline_top1_load"] == 1.0  # single expert
    with pytest.raises(M.MetricsError, match="lengths differ"):
        M.repetition(ids, seq_id=[0, 0])


def test_repetition_top2_is_mixtrals_measure_beside_the_top_k_one(tmp_path):
    """metrics.md's measure is Mixtral's: the first two choices share an expert. With K = 3 it differs
    from the top-k sets sharing one (found by a review: only the top-k form was computed)."""
    ids = [[0, 1, 2], [3, 4, 2], [0, 5, 6]]
    r = M.repetition(ids, n_experts=8)
    assert (r["top2_any"], r["topk_any"]) == (0.0, 0.5)
    assert r["baseline_top2_any_uniform"] == pytest.approx(1 - 15 / 28)  # 1 - C(6, 2) / C(8, 2)
    assert r["baseline_topk_any_uniform"] == pytest.approx(1 - 10 / 56)  # 1 - C(5, 3) / C(8, 3)
    assert math.isnan(M.repetition([[0], [0]], n_experts=2)["top2_any"])
    from helpers.synthetic_run import write_run

    a = write_run(tmp_path / "k3", K=3, E=8)
    rep = M.repetition_from_run(tmp_path / "k3").set_index("layer")
    for layer in a["layers"]:
        want = M.repetition(a["ids"][layer], seq_id=a["seq"], pos=a["pos"], n_experts=8)
        for k in ("top2_any", "topk_any", "baseline_top2_any_uniform"):
            assert rep.loc[layer, k] == pytest.approx(want[k]), k
    assert (rep.top2_any != rep.topk_any).any()


def test_repetition_negative_control():
    """Independent routing with skewed loads repeats at the load-aware baseline, not at 1/N;
    sticky routing repeats far more."""
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    iid = rng.choice(6, size=(20000, 1), p=p)
    r = M.repetition(iid, n_experts=6)
    assert r["same_top1"] == pytest.approx(r["baseline_top1_load"], abs=0.02)
    assert abs(r["same_top1"] - r["baseline_top1_uniform"]) > 0.1
    sticky = np.repeat(iid[:2000], 10, axis=0)
    assert M.repetition(sticky, n_experts=6)["same_top1"] > 0.85


def test_coactivation_hand_computed():
    ids = [[0, 1], [0, 2], [1, 0]]
    c = M.coactivation(ids, n_experts=3, normalise=False)
    np.testing.assert_array_equal(c, [[3, 2, 1], [2, 2, 0], [1, 0, 1]])
    n = M.coactivation(ids, n_experts=3)
    np.testing.assert_allclose(n, [[np.nan, 2 / 3, 1 / 3], [1, np.nan, 0], [1, 0, np.nan]])
    n4 = M.coactivation(ids, n_experts=4)  # expert 3 never chosen: NaN row
    assert np.isnan(n4[3]).all()
    assert M.coactivation(np.zeros((0, 2), int), n_experts=2, normalise=False).sum() == 0


def test_routing_agreement_hand_computed():
    a, b = [[0, 1], [2, 3]], [[0, 2], [3, 2]]
    r = M.routing_agreement(a, b)
    assert r["top1_same"] == 0.5
    assert r["overlap"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert r["jaccard"] == pytest.approx((1 / 3 + 1) / 2)
    assert r["nmi_top1"] == pytest.approx(1.0)  # first choices [0, 2] vs [0, 3]: a relabelling
    assert r["set_same"] == 0.5  # {2, 3} == {3, 2} in another order; {0, 1} != {0, 2}
    same = M.routing_agreement(a, a)
    assert same["top1_same"] == same["set_same"] == same["overlap"] == same["jaccard"] == 1.0
    assert M.routing_agreement([[0, 1]], [[0, 1, 2]])["set_same"] == 0.0  # K differ: no set is the same
    assert math.isnan(M.routing_agreement(np.zeros((0, 2), int), np.zeros((0, 2), int))["overlap"])
    with pytest.raises(M.MetricsError, match="lengths differ"):
        M.routing_agreement(a, a[:1])


def test_routing_agreement_of_two_top_k_sizes():
    """Two routings with different K (metrics.md: overlap over K of ids_a): a = {0, 1}, b = {0, 1, 2}
    share both of a's experts, overlap 1; jaccard 2/3; the sets differ. Dividing by b's K gave 2/3
    (a review)."""
    got = M.routing_agreement(np.array([[0, 1], [3, 4]]), np.array([[0, 1, 2], [4, 5, 6]]))
    assert got["overlap"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert got["jaccard"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert got["set_same"] == 0 and got["top1_same"] == 0.5 and got["tokens"] == 2


def test_routing_agreement_over_more_rows_than_one_block_of_its_set_comparison():
    """set_same compares sorted rows a block of 2**18 rows at a time: over 300,000 tokens every third
    row holds the same set in reverse order and the others a set shifted by one expert (never the
    same set of 4 of 64), so exactly a third match, whichever block a row falls in."""
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 64, (300_000, 1)) + np.array([0, 5, 11, 23])) % 64  # distinct ids a row
    same = np.arange(len(a)) % 3 == 0
    b = np.where(same[:, None], a[:, ::-1], (a + 1) % 64)
    got = M.routing_agreement(a, b)
    assert got["set_same"] == same.mean() and got["top1_same"] == 0 and got["tokens"] == len(a)
    assert M.routing_agreement(a, a[:, ::-1])["set_same"] == 1.0


def test_margin_summary_and_score_entropy():
    s = M.margin_summary([0.0, 0.005, 0.1, np.nan])
    assert s["count"] == 3 and s["near"] == pytest.approx(2 / 3)
    assert s["mean"] == pytest.approx(0.035) and s["p50"] == pytest.approx(0.005) and s["max"] == 0.1
    assert s["p10"] == pytest.approx(0.001)  # linear interpolation
    e = M.margin_summary([np.nan])
    assert e["count"] == 0 and math.isnan(e["mean"])
    np.testing.assert_allclose(M.score_entropy([[1, 1], [1, 0], [0, 0]]), [1.0, 0.0, np.nan])
    np.testing.assert_allclose(M.score_entropy([[0.5, 0.25, 0.25]]), [1.5 * math.log(2) / math.log(3)])
    np.testing.assert_allclose(M.score_entropy([[0.3]]), [1.0])


def test_score_entropy_is_over_ln_n_as_metrics_md_says():
    """metrics.md called it "the entropy of a token's normalised scores", which reads as nats: the value
    `score_entropy` gives is that entropy over ln N (a bundled run's layer 1: 3.398 nats, reported 0.980).
    A figure set beside a paper's routing entropy in nats was off by ln N (3.47 for 32 experts)."""
    uniform = M.score_entropy([[0.2, 0.2, 0.2, 0.2]])[0]
    assert uniform == pytest.approx(1.0) and abs(uniform - math.log(4)) > 0.3  # not ln 4 nats
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    said = re.search(r"\*\*Agreement and saturation\*\*.*?(?=\n- \*\*)", doc, re.S).group(0)
    assert "H(s_t / sum_j s_j,t) / ln N" in said and "`score_entropy`" in said, said


def test_entropy_of_one_outcome_is_zero_not_negative_zero():
    """A domain of one top-1 path had its path entropy printed '-0.0000' in the report (a tour): -sum p ln p
    of p = [1] is -0.0; so were the normalised load entropy of one expert and a one-expert token's score entropy."""
    for h in (M.entropy([5]), M.path_entropy(np.array([3, 3, 3])), M.normalised_entropy([5, 0, 0, 0]),
              *M.score_entropy([[1.0, 0.0, 0.0]]), *M.path_summary(np.array([[2, 1], [2, 1]])).path_entropy):
        assert h == 0 and math.copysign(1, h) == 1 and f"{h:.4f}" == "0.0000", h


def test_a_step_range_is_two_integer_steps_first_to_last(tmp_path):
    """layer_loads_from_run(steps=(0, 1.5)) cut 1.5 to 1, and (1, 0) was 'no expert_load rows in steps 1-0' (a bug
    hunt): both refused by name; an inclusive range of integers (numpy's too) sums those steps."""
    import probe
    from helpers.synthetic_run import write_run

    a = write_run(tmp_path / "r")
    run = probe.open_run(tmp_path / "r")
    for bad, said in (((0, 1.5), r"two integer steps"), ((1, 0), r"the first step is after the last"),
                      ((0,), r"two integer steps"), ("01", r"two integer steps")):
        with pytest.raises(M.MetricsError, match=rf"^steps={re.escape(repr(bad))}: .*{said}"):
            M.layer_loads_from_run(run, bad)
    layer = a["layers"][0]
    ids = a["ids"][layer]
    for steps in ((1, 1), (np.int64(0), np.int64(1))):
        want = np.bincount(ids[(a["step"] >= steps[0]) & (a["step"] <= steps[1])].reshape(-1), minlength=a["E"])
        np.testing.assert_array_equal(M.layer_loads_from_run(run, steps)[layer], want)
