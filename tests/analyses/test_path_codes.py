"""Path codes: the packed lexicographic ranks behind `path_codes`, `dense_ranks`, and `domain_information`
against a plain reference (np.unique over whole rows, scikit-learn's measures, a plain-Python majority)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from analyses import metrics as M
from helpers.majority import reference_majority


@pytest.mark.parametrize("k", [1, 2, 4])
def test_path_codes_rank_rows_as_numpy_unique_does(k):
    """The column-by-column ranking gives np.unique(axis=0)'s distinct rows and codes (negative control:
    a column order swapped gives other codes)."""
    from analyses.metrics.paths import path_codes, path_keys

    ids = np.random.default_rng(k).integers(0, 9, (4000, 3, 4))
    uniq, codes = path_codes(ids, k)
    want_uniq, want_codes = np.unique(path_keys(ids, k), axis=0, return_inverse=True)
    assert np.array_equal(uniq, want_uniq) and np.array_equal(codes, want_codes.reshape(-1))
    _, swapped = path_codes(ids[:, ::-1], k)
    assert not np.array_equal(swapped, codes)


@pytest.mark.parametrize("k", [1, 3])
def test_path_codes_of_wide_ids_rank_as_numpy_unique_does(k):
    """Ids too wide for a path's columns to share one int64 key (each near 2^40): the key is ranked part-way
    and packing goes on from the ranks; codes and distinct paths stay np.unique(axis=0)'s."""
    from analyses.metrics.paths import path_codes, path_keys

    rng = np.random.default_rng(k)
    ids = rng.integers(0, 4, (3000, 5, 3)) * (1 << 40) + rng.integers(0, 3, (3000, 5, 3))
    uniq, codes = path_codes(ids, k)
    want_uniq, want_codes = np.unique(path_keys(ids, k), axis=0, return_inverse=True)
    assert len(want_uniq) > 100 and np.array_equal(uniq, want_uniq) and np.array_equal(codes, want_codes.reshape(-1))


@pytest.mark.parametrize("x", [np.array([5, 3, 5, 0, 9]), np.array([7, -1, 7, 2]), np.array([1 << 50, 3, 1 << 50]),
                               np.array(["b", "a", "b"]), np.array([4, 2, 4], np.uint64), np.zeros(0, np.int64)])
def test_dense_ranks_are_numpy_uniques_inverse(x):
    from analyses.metrics.paths import dense_ranks

    got = dense_ranks(x)
    assert got.dtype == np.int64 and np.array_equal(got, np.unique(x, return_inverse=True)[1].reshape(-1))


def test_domain_information_equals_a_plain_reference():
    """Every column of every unit (each layer's top-1 and top-k sets, and the path) against codes from
    np.unique(axis=0), scikit-learn's mutual information and AMI, and the plain-Python majority predictor."""
    from sklearn.metrics import adjusted_mutual_info_score, mutual_info_score

    from analyses.metrics.paths import path_keys

    rng = np.random.default_rng(7)
    T, names = 3000, np.array(["code", "math", "zh"])
    dc = rng.integers(0, 3, T)
    ids = rng.integers(0, 6, (T, 3, 2))
    ids[:, 1, 0] = np.where(rng.random(T) < 0.7, dc + 6, ids[:, 1, 0])  # layer 1's first choice follows the domain
    test = rng.random(T) < 0.25
    for k in (1, 2):
        got = M.domain_information(ids, names[dc], [1, 2, 3], k, test).set_index("unit")
        for unit, sub in [(f"layer {j + 1}", ids[:, [j]]) for j in range(3)] + [("path", ids)]:
            codes = np.unique(path_keys(sub, k), axis=0, return_inverse=True)[1].reshape(-1)
            h = -sum(p * math.log(p) for p in np.bincount(dc) / T)
            glob = Counter(dc[~test].tolist())
            fb = np.full(test.sum(), min(glob, key=lambda y: (-glob[y], y)))
            pred = reference_majority(codes, dc, test, fb)
            want = [len(set(codes.tolist())), mutual_info_score(dc, codes) / h,
                    adjusted_mutual_info_score(dc, codes, average_method="arithmetic"),
                    (pred == dc[test]).mean(), (fb == dc[test]).mean()]
            row = got.loc[unit, ["values", "domain_nmi", "ami", "heldout_accuracy", "majority_baseline"]]
            np.testing.assert_allclose(row.to_numpy(float), want, rtol=1e-9, atol=1e-12, err_msg=f"k={k} {unit}")
    assert got.loc["layer 2", "heldout_accuracy"] > got.loc["layer 2", "majority_baseline"] + 0.3  # it can fail


def test_compact_routes_give_every_measure_the_int64_routes_give(tmp_path):
    """`routes_from_run(compact=True)` (the report's reading) holds the ids as int16, a quarter of the memory, and
    every array function takes them as they are: the same codes, tables and predictors as from int64. Ids past
    int16 (40,000 experts) widen the array at the layer that needs it (layer 1 routes by token id, < 11)."""
    import pandas as pd

    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", layers=(1, 2, 3), n_seq=10, seq_len=9)
    wide, small = M.routes_from_run(tmp_path / "r"), M.routes_from_run(tmp_path / "r", compact=True)
    assert wide.ids.dtype == np.int64 and small.ids.dtype == np.int16 and np.array_equal(wide.ids, small.ids)
    test = wide.heldout(5)
    for k in (1, 2):
        assert np.array_equal(M.path_codes(small.ids, k)[1], M.path_codes(wide.ids, k)[1])
        for f in (lambda r: M.domain_information(r.ids, r.domain, r.layers, k, test), lambda r: M.path_summary(r.ids, r.domain, k),
                  lambda r: M.common_paths(r.ids, r.domain, r.token_id, k)):
            pd.testing.assert_frame_equal(f(small), f(wide))
    pd.testing.assert_frame_equal(M.token_dependence_from_run(tmp_path / "r", routes=small, baseline=True),
                                  M.token_dependence_from_run(tmp_path / "r", routes=wide, baseline=True))
    write_run(tmp_path / "many", E=40_000, layers=(1, 2), n_seq=10, seq_len=9)
    wide, small = M.routes_from_run(tmp_path / "many"), M.routes_from_run(tmp_path / "many", compact=True)
    assert wide.ids.max() > 32_767 and small.ids.dtype == np.int32 and np.array_equal(wide.ids, small.ids)


def test_layers_read_several_a_query_give_the_routes_read_one_a_query(tmp_path, monkeypatch):
    """`routes_from_run` and the routing metrics read the first layer alone and the rest as many a query as
    ROWS_PER_READ allows at its rows (every query scans the routing parts): a layer a query, two, and all
    the rest give the same routes and repetition, from parts stored shuffled too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from analyses.metrics import readings
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", layers=(1, 2, 3, 4), n_seq=10, seq_len=9)
    for f in sorted((tmp_path / "r" / "routing").glob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.take(pa.array(np.random.default_rng(1).permutation(t.num_rows))), f)
    got, rep, sql = {}, {}, readings._read_layers
    for rows in (1, 2 * 90, 10 ** 6):  # 90 tokens a layer
        monkeypatch.setattr(readings, "ROWS_PER_READ", rows)
        queries = []
        monkeypatch.setattr(readings, "_read_layers", lambda run, layers: queries.append(layers) or sql(run, layers))
        got[rows] = M.routes_from_run(tmp_path / "r").ids
        assert queries == {1: [[1], [2], [3], [4]], 180: [[1], [2, 3], [4]], 10 ** 6: [[1], [2, 3, 4]]}[rows]
        rep[rows] = M.repetition_from_run(tmp_path / "r")
    assert np.array_equal(got[1], got[180]) and np.array_equal(got[1], got[10 ** 6])
    assert rep[1].equals(rep[180]) and rep[1].equals(rep[10 ** 6])
    assert np.array_equal(got[1][:, 1], M.routes_from_run(tmp_path / "r", layers=[2]).ids[:, 0])
