"""Linear probes of the domain from routing: the features by hand, the probe on data with and without
a signal (its controls must read chance where there is nothing to find), and the run version on a
synthetic run whose first layer routes by token id and second by domain, against features rebuilt
from the run's Parquet files with pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses import metrics as M
from analyses.metrics.paths import heldout_windows
from helpers.synthetic_run import write_run


def test_routing_features_by_hand():
    x = M.routing_features([[2, 0], [1, 3]], [[0.7, 0.3], [0.6, 0.4]], n_experts=4)
    np.testing.assert_array_equal(x, np.array([[0.3, 0, 0.7, 0], [0, 0.6, 0, 0.4]], np.float32))
    with pytest.raises(M.MetricsError, match=r"out of range \[0, 3\)"):
        M.routing_features([[2, 3]], [[0.5, 0.5]], n_experts=3)
    with pytest.raises(M.MetricsError, match="two \\[tokens, K\\] arrays"):
        M.routing_features([[1, 2]], [[0.5]], n_experts=3)


def _blobs(n: int, signal: float, seed: int = 0):
    """Three labels; features [n, 8] whose first three columns carry the label with strength `signal`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8))
    x[np.arange(n), y] += signal
    return x, np.array(["a", "b", "c"])[y], np.arange(n) % 4 == 0


@pytest.mark.slow  # 1.2 s: three logistic regressions on 3,000 rows (the AVX2-only EPYC, 2026-12-07)
def test_a_probe_reads_a_signal_and_its_controls_read_chance():
    x, y, test = _blobs(3000, signal=8.0)
    r = M.linear_probe(x, y, test)
    assert r["accuracy"] > 0.99 and r["balanced_accuracy"] > 0.99
    assert abs(r["shuffled"] - 1 / 3) < 0.06, r  # trained on shuffled labels: nothing to read
    assert abs(r["majority"] - 1 / 3) < 0.06 and (r["n_train"], r["n_test"], r["n_features"]) == (2250, 750, 8)
    # the negative control: the same features without the signal are read at chance, not above it
    x0, y0, _ = _blobs(3000, signal=0.0)
    r0 = M.linear_probe(x0, y0, test)
    assert abs(r0["accuracy"] - 1 / 3) < 0.06 and abs(r0["balanced_accuracy"] - 1 / 3) < 0.06, r0


def test_balanced_accuracy_is_the_mean_recall_over_labels():
    # 90% of the tokens are "a" and the features say nothing: the probe says "a", accuracy ~0.9, balanced 1/2
    rng = np.random.default_rng(1)
    y = np.where(rng.random(4000) < 0.9, "a", "b")
    r = M.linear_probe(rng.normal(size=(4000, 4)), y, np.arange(4000) % 5 == 0)
    assert r["accuracy"] == pytest.approx(r["majority"]) and r["balanced_accuracy"] == pytest.approx(0.5)


def test_bad_probe_input_is_named():
    x, y, test = _blobs(100, 1.0)
    with pytest.raises(M.MetricsError, match="two labels or more"):
        M.linear_probe(x, np.full(100, "a"), test)
    with pytest.raises(M.MetricsError, match=r"expected \[T, F\]"):
        M.linear_probe(x[:50], y, test)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "r"
    write_run(path, n_seq=200, seq_len=20, vocab=50)  # code and prose; layer 2: code prefers experts < 4
    return path


def _by_hand(run, layer: int, E: int = 8):
    """The layer's gate-weight features, domains and held-out mask, from the Parquet files with pandas."""
    r = pd.read_parquet(run / "routing")
    t = pd.read_parquet(run / "tokens")[["seq_id", "pos", "domain"]]
    r = r[r.layer == layer].merge(t, on=["seq_id", "pos"]).sort_values(["seq_id", "pos"])
    x = np.zeros((len(r), E), np.float32)
    for i, (ids, w) in enumerate(zip(r.expert_ids, r.expert_weights)):
        x[i, list(ids)] = w
    return x, r.domain.to_numpy(), heldout_windows(r.seq_id.to_numpy(), r.domain.to_numpy(), 5)


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_run_version_probes_each_layer_as_its_features_say(run):
    got = M.domain_probe_from_run(run).set_index("unit")
    assert list(got.index) == ["layer 1", "layer 2", "all layers"]
    for layer in (1, 2):
        x, d, test = _by_hand(run, layer)
        want = M.linear_probe(x, d, test)
        row = got.loc[f"layer {layer}"]
        assert row.left_out == want.pop("left_out") == [], layer  # two windows of each domain: none left out
        assert {k: row[k] for k in want} == pytest.approx(want), layer
    # layer 1 routes by token id (ids drawn regardless of domain), layer 2 by domain (code's first choice is
    # one of experts 0-3 80% of the time, prose's one of 4-7): only the second tells the domain
    lay1, lay2 = got.loc["layer 1"], got.loc["layer 2"]
    assert lay2.accuracy > lay2.majority + 0.15 and abs(lay1.accuracy - lay1.majority) < 0.06, got
    assert got.loc["all layers"].n_features == 16


def test_scores_features_and_drawn_rows(run, tmp_path):
    # full scores on even windows only (three domains, so that those hold more than one)
    write_run(tmp_path / "three", n_seq=60, seq_len=10, domains=("code", "prose", "math"))
    sc = M.domain_probe_from_run(tmp_path / "three", layers=[2], features="scores")
    assert len(sc) == 1 and sc.n_train[0] + sc.n_test[0] == 30 * 10 and sc.n_features[0] == 8
    few = M.domain_probe_from_run(run, layers=[2], max_rows=50)
    assert (few.n_train[0], few.n_test[0]) == (50, 50)


def test_runs_a_probe_cannot_use_are_refused_by_name(run, tmp_path):
    with pytest.raises(M.MetricsError, match="features='latent'"):
        M.domain_probe_from_run(run, features="latent")
    with pytest.raises(M.MetricsError, match=r"layers \[7\]"):
        M.domain_probe_from_run(run, layers=[7])
    write_run(tmp_path / "one", n_seq=10, domains=("code",))
    with pytest.raises(M.MetricsError, match="1 domain"):
        M.domain_probe_from_run(tmp_path / "one")


def test_a_domain_of_one_window_is_left_out_of_the_probe(tmp_path):
    """A capped run where a domain has one window: the split holds it out whole and the probe never
    trains on it, so its tokens could only be scored wrong (a 2,000-token run of five domains read 'a
    linear probe reads the domain at 58.5%' with two untrained, a tour). It is left out and named."""
    write_run(tmp_path / "thin", n_seq=11, seq_len=10, domains=("code", "prose", "math", "web", "chat", "wiki"))
    got = M.domain_probe_from_run(tmp_path / "thin", layers=[2]).iloc[0]  # wiki: window 5 only
    x, d, test = _by_hand(tmp_path / "thin", 2)
    assert got.n_test == int((test & (d != "wiki")).sum()) == 5 * 10  # the first window of the five others
    assert got.left_out == ["wiki"]
    keep = d != "wiki"
    want = M.linear_probe(x[keep], d[keep], test[keep])
    assert {k: got[k] for k in ("accuracy", "balanced_accuracy", "majority", "shuffled", "n_train")} == \
        pytest.approx({k: want[k] for k in ("accuracy", "balanced_accuracy", "majority", "shuffled", "n_train")})
    arr = M.linear_probe(x, d, test)  # the array version leaves it out by itself
    assert arr["left_out"] == ["wiki"] and arr["n_test"] == 50 and arr["accuracy"] == pytest.approx(want["accuracy"])
    write_run(tmp_path / "two", n_seq=3, seq_len=10)  # code: windows 0 and 2; prose: window 1 only
    with pytest.raises(M.MetricsError, match=r"two: 1 domain with a window to train on \(prose: one window, "
                                             r"held out whole\); a domain probe needs two or more"):
        M.domain_probe_from_run(tmp_path / "two")


def test_a_draw_keeps_a_training_token_of_every_domain(tmp_path):
    """At most `max_rows` training tokens drawn at random could hold none of a domain: the probe then left
    that domain's held-out tokens out of its score (a label never trained on), without naming it in
    `left_out` (which names the domains of one window only), or refused the run as if the domain were
    'held out whole'. A domain the draw missed takes one of its training tokens in place of one of the
    domain drawn most; a draw that missed none is as before."""
    write_run(tmp_path / "r", n_seq=12, seq_len=10, domains=("code", "prose", "web"))  # 30 held-out tokens
    for seed in range(6):
        got = M.domain_probe_from_run(tmp_path / "r", layers=[1], max_rows=3, seed=seed).iloc[0]
        assert (got.n_train, got.n_test, got.left_out) == (3, 3, []), (seed, got)
    x, d, test = _by_hand(tmp_path / "r", 1)
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(side), 20, replace=False) for side in (~test, test)]))
    assert len(set(d[rows][~test[rows]])) == 3  # this draw holds every domain: as before
    got = M.domain_probe_from_run(tmp_path / "r", layers=[1], max_rows=20).iloc[0]
    assert got.accuracy == pytest.approx(M.linear_probe(x[rows], d[rows], test[rows])["accuracy"])


def test_balanced_accuracy_of_a_label_the_held_out_tokens_lack_is_mean_recall_without_a_warning():
    """A probe that predicts a label no held-out token has (a domain with training tokens and none held
    out, common on small runs): balanced accuracy is the mean recall over the held-out labels, by hand,
    and scikit-learn's 'y_pred contains classes not in y_true' warning no longer reaches the user."""
    import warnings

    x = np.array([[0.0], [0.1], [1.0], [1.1], [2.0], [2.1], [0.05], [1.05], [2.05], [0.02]], np.float32)
    y = np.array(["a", "a", "b", "b", "c", "c", "a", "b", "c", "a"])
    test = np.zeros(len(y), bool)
    test[[6, 7]] = True  # held out: one a, one b; c is trained on only
    x_test = x.copy()
    x_test[7] = 2.05  # the b token looks like c: predicted c, a label no held-out token has
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = M.linear_probe(np.where(test[:, None], x_test, x), y, test)
    assert got["accuracy"] == 0.5 and got["balanced_accuracy"] == 0.5  # recall a 1, b 0: mean 0.5


def test_one_layers_features_are_held_at_a_time(tmp_path, monkeypatch):
    """Each layer's [rows, E] features are made for its probe and dropped after it: holding every layer's at once
    peaked at 6.3 GB on a 200k-token run of DeepSeek-V3's shape (58 MoE layers of 256 experts). Counted by weak
    references to the feature matrices alive while each probe fits (the all-layers probe's is the one matrix of its
    own fit)."""
    import weakref

    from analyses.metrics import probes

    write_run(tmp_path / "r", layers=(1, 2, 3), n_seq=40, seq_len=10)
    made, alive, features, fit = [], [], probes._features, probes.linear_probe
    monkeypatch.setattr(probes, "_features", lambda *a: made.append(weakref.ref(x := features(*a))) or x)
    monkeypatch.setattr(probes, "linear_probe", lambda *a, **kw: alive.append(sum(r() is not None for r in made))
                        or fit(*a, **kw))
    got = M.domain_probe_from_run(tmp_path / "r")
    assert list(got.unit) == ["layer 1", "layer 2", "layer 3", "all layers"] and len(made) == 4
    assert alive == [1, 1, 1, 1], alive  # (all three at once, [3, 3, 3, 3], before)


def test_gate_weights_fit_sparse_and_uncentred_as_the_centred_dense_fit():
    """Gate weights are K of E nonzero a token: the probe fits them as a sparse matrix scaled without
    centring (the unpenalised intercept takes the means: the same model, ~3x faster at DeepSeek-V3's 8 of 256).
    Its figures are those of scikit-learn's centred dense pipeline to within a token or two of the solver's
    tolerance; dense features (router scores) keep the centred fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from analyses.metrics import probes

    rng = np.random.default_rng(3)
    n, E, K = 3000, 32, 4
    y = rng.integers(0, 3, n)
    pref = rng.dirichlet(np.full(E, 0.5), size=3)
    ids = np.stack([rng.choice(E, K, replace=False, p=pref[d] * 0.5 + 0.5 / E) for d in y])
    x = M.routing_features(ids, rng.random((n, K)), E)
    test = np.arange(n) % 4 == 0
    assert not isinstance(probes._fit_matrix(x), np.ndarray) and probes._fit_matrix(x).nnz == n * K
    assert isinstance(probes._fit_matrix(rng.random((n, E))), np.ndarray)
    got = M.linear_probe(x, y, test)

    def reference(labels, C=1.0):  # scikit-learn's pipeline as the docs describe it: centred, dense
        fit = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg", max_iter=200, C=C))
        return (fit.fit(x[~test], labels).predict(x[test]) == y[test]).mean()

    assert 0.5 < got["accuracy"] < 0.95, got  # a signal, short of separable: a fit that can land elsewhere
    assert abs(got["accuracy"] - reference(y[~test])) <= 2 / test.sum() and got["n_features"] == E
    shuffled = np.random.default_rng(0).permutation(y[~test])  # linear_probe's control, seed 0
    assert abs(got["shuffled"] - reference(shuffled)) <= 2 / test.sum()
    # the control: another model (a penalty 100x stronger) is told apart at that tolerance
    assert abs(got["accuracy"] - reference(y[~test], C=0.01)) > 2 / test.sum()


def test_the_gate_weights_matrix_made_from_the_ids_is_the_one_made_from_the_dense_features():
    """The probe's sparse gate weights are built from the ids (no [T, E] copy): the same CSR matrix scipy makes of
    `routing_features` (columns in order, a zero weight not stored), so a probe of a run equals a probe of its
    features by hand. A row naming an expert twice (a damaged run) gives None, and the probe reads the dense form."""
    from scipy import sparse

    from analyses.metrics import probes

    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(16)[:4] for _ in range(50)])
    w = rng.random((50, 4)).astype(np.float32)
    w[3, 1] = 0.0
    got, want = probes._weights_csr(ids, w, 16), sparse.csr_matrix(M.routing_features(ids, w, 16))
    assert got.has_sorted_indices and got.nnz == want.nnz == 50 * 4 - 1
    for a in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(got, a), getattr(want, a)), a
    both = probes._features([{"expert_ids": ids, "expert_weights": w}] * 2, "weights", 16)
    assert np.array_equal(both.toarray(), np.concatenate([want.toarray()] * 2, 1))
    ids[5, 2] = ids[5, 0]
    assert probes._weights_csr(ids, w, 16) is None
    one = probes._features([{"expert_ids": ids, "expert_weights": w}], "weights", 16)
    assert np.array_equal(one.toarray(), M.routing_features(ids, w, 16))  # the last weight of the twice-named one
    dense = probes._features([{"expert_ids": np.tile([3, 1], (50, 1)), "expert_weights": w[:, :2] + 1}], "weights", 4)
    assert isinstance(dense, np.ndarray)  # half nonzero: above SPARSE_AT, dense as `_fit_matrix` keeps it
    with pytest.raises(M.MetricsError, match=r"out of range \[0, 8\)"):
        probes._weights_csr(ids, w, 8)


def test_balanced_accuracy_equals_scikit_learns():
    """The probe's balanced accuracy (a bincount of recalls) against scikit-learn's balanced_accuracy_score, on
    string labels with predictions of labels the held-out tokens lack (where scikit-learn warns)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from analyses.metrics import probes

    rng = np.random.default_rng(5)
    names = np.array(["code", "math", "prose", "web", "wiki"])
    for n, k in ((1, 1), (7, 2), (500, 3), (2000, 5)):
        y, pred = names[rng.integers(0, k, n)], names[rng.integers(0, 5, n)]
        pred[: n // 3] = y[: n // 3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = balanced_accuracy_score(y, pred)
        assert probes._balanced_accuracy(y, pred) == pytest.approx(want, abs=1e-12), (n, k)
    # the control: plain accuracy is another figure on unbalanced labels
    y = np.array(["a"] * 9 + ["b"])
    assert probes._balanced_accuracy(y, np.array(["a"] * 10)) == 0.5 != (y == "a").mean()
