"""Expert paths, token-id dependence and run-vs-run routing: hand-computed cases, an independent
pure-Python reference for the majority predictors, degenerate inputs, and the run versions against
the array versions on a synthetic run."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pandas as pd
import pytest

from analyses import metrics as M
from helpers.majority import reference_majority
from helpers.synthetic_run import write_run

# 4 tokens, 2 layers, K = 2 (best first)
IDS = np.array([[[1, 2], [3, 0]],
                [[1, 2], [3, 1]],
                [[1, 0], [2, 3]],
                [[2, 1], [0, 3]]])
DOM = np.array(["a", "a", "b", "b"])


def _h(*p):
    return -sum(x * math.log(x) for x in p if x)


# ------------------------------------------------------------------------------ paths
def test_path_keys_and_codes_hand_computed():
    np.testing.assert_array_equal(M.path_keys(IDS), [[1, 3], [1, 3], [1, 2], [2, 0]])
    np.testing.assert_array_equal(M.path_keys(IDS, k=2), [[1, 2, 0, 3], [1, 2, 1, 3], [0, 1, 2, 3], [1, 2, 0, 3]])
    uniq, codes = M.path_codes(IDS)
    assert uniq.tolist() == [[1, 2], [1, 3], [2, 0]] and codes.tolist() == [1, 1, 0, 2]
    _, codes2 = M.path_codes(IDS, k=2)
    assert codes2[0] == codes2[3] and len(set(codes2.tolist())) == 3  # the same sets in another order
    with pytest.raises(M.MetricsError, match="k=3"):
        M.path_keys(IDS, k=3)


def test_path_summary_hand_computed():
    s = M.path_summary(IDS, DOM).set_index("domain")
    assert s.loc["all", "distinct_paths"] == 3 and s.loc["all", "tokens"] == 4
    assert s.loc["all", "path_entropy"] == pytest.approx(1.5 * math.log(2))
    assert s.loc["all", "perplexity"] == pytest.approx(2 ** 1.5)
    assert s.loc["a", "path_entropy"] == pytest.approx(0.0) and s.loc["a", "distinct_paths"] == 1
    assert s.loc["b", "path_entropy"] == pytest.approx(math.log(2))
    assert s.loc["all", "top10_share"] == 1.0


def test_domain_information_hand_computed():
    d = M.domain_information(IDS, DOM, layers=[1, 2]).set_index("unit")
    # the top-1 path (1,3),(1,3),(1,2),(2,0) determines the domain: I = H(domain)
    assert d.loc["path", "domain_nmi"] == pytest.approx(1.0)
    # layer 1's first choices 1,1,1,2: H(d | e) = 3/4 H(2/3, 1/3)
    want = (_h(.5, .5) - 0.75 * _h(2 / 3, 1 / 3)) / _h(.5, .5)
    assert d.loc["layer 1", "domain_nmi"] == pytest.approx(want)
    assert d.loc["layer 1", "values"] == 2 and d.loc["path", "values"] == 3
    from sklearn.metrics import adjusted_mutual_info_score
    assert d.loc["path", "ami"] == pytest.approx(adjusted_mutual_info_score(DOM, [1, 1, 0, 2],
                                                                                 average_method="arithmetic"))
    assert np.isnan(d.loc["path", "heldout_accuracy"])  # no held-out mask given


def test_ami_of_paths_unrelated_to_the_domain_is_near_zero():
    """Every token on a path of its own, domains drawn at random: nothing to learn, so AMI ~ 0 and the
    held-out accuracy is the majority's. The "min" normalisation read 1.000 here (0/0 once I and E[I]
    both reach H(domain)), i.e. "the path fixes the domain" (found by a review)."""
    rng = np.random.default_rng(0)
    T = 2000
    ids = np.stack([np.arange(T) % 50, np.arange(T) // 50], axis=1)[:, :, None]  # unique (layer 1, layer 2) pairs
    dom = rng.choice(["a", "b", "c"], T)
    d = M.domain_information(ids, dom, layers=[1, 2], test=np.arange(T) % 5 == 0).set_index("unit")
    assert d.loc["path", "values"] == T and abs(d.loc["path", "ami"]) < 0.01
    assert d.loc["path", "heldout_accuracy"] == pytest.approx(d.loc["path", "majority_baseline"])


def test_domain_information_sorts_the_domain_names_once(monkeypatch):
    """Each measure of each unit sorted the domains' names again (a third of the function's time on a
    2.15M-token run): they reach the measures as codes, and the result is the names' own."""
    import sklearn.metrics

    rng = np.random.default_rng(1)
    ids, dom = rng.integers(0, 4, (300, 2, 2)), rng.choice(["lit", "code", "zh"], 300)
    test = np.arange(300) % 5 == 0
    test[dom == "zh"] = True  # held out whole: left out by name
    given, ami = [], sklearn.metrics.adjusted_mutual_info_score
    monkeypatch.setattr(sklearn.metrics, "adjusted_mutual_info_score",
                        lambda a, b, **kw: given.append(np.asarray(a).dtype) or ami(a, b, **kw))
    sorts, unique = [], np.unique
    monkeypatch.setattr(np, "unique", lambda x, *a, **kw: sorts.append(np.asarray(x).dtype.kind) or unique(x, *a, **kw))
    got = M.domain_information(ids, dom, [1, 2], 1, test)
    monkeypatch.undo()
    assert len(given) == 3 and all(np.issubdtype(t, np.integer) for t in given)
    assert sorts.count("U") == 1  # the names, once
    codes = np.unique(dom, return_inverse=True)[1]
    want = M.domain_information(ids, codes, [1, 2], 1, test)
    pd_cols = ["values", "domain_nmi", "ami", "heldout_accuracy", "majority_baseline"]
    np.testing.assert_allclose(got[pd_cols].to_numpy(float), want[pd_cols].to_numpy(float))
    assert got.left_out.tolist() == [["zh"]] * 3


def test_domain_information_one_domain_and_bad_lengths():
    d = M.domain_information(IDS, ["a"] * 4)
    assert d.domain_nmi.isna().all()  # H(domain) = 0: no information to have
    with pytest.raises(M.MetricsError, match="4 tokens"):
        M.domain_information(IDS, ["a"] * 3)


def test_path_summary_top10_share_counts_the_ten_most_common_paths():
    # 12 one-layer paths: path j taken by j + 1 tokens (78 tokens); the ten most common hold 3 + ... + 12
    ids = np.repeat(np.arange(12), np.arange(1, 13))[:, None]
    s = M.path_summary(ids).set_index("domain")
    assert s.loc["all", "distinct_paths"] == 12 and s.loc["all", "top10_share"] == pytest.approx(75 / 78)


def test_heldout_accuracy_hand_computed():
    labels = ["x", "x", "y", "y", "x", "y"]
    values = [5, 5, 7, 7, 5, 9]
    test = [False, False, False, True, True, True]
    # training: 5 -> x (2), 7 -> y (1); majority x. test: 7 -> y ok, 5 -> x ok, 9 unseen -> x (wrong)
    acc, base = M.heldout_accuracy(labels, values, test)
    assert acc == pytest.approx(2 / 3) and base == pytest.approx(1 / 3)
    assert all(np.isnan(M.heldout_accuracy(labels, values, [False] * 6)))


def test_heldout_majority_is_the_training_rows_majority():
    # training x, x, y: majority x, though y is the majority of all rows; held-out values are unseen
    acc, base = M.heldout_accuracy(["x", "x", "y", "y", "y", "y"], [1, 1, 2, 3, 4, 5], [False] * 3 + [True] * 3)
    assert (acc, base) == (0.0, 0.0)


def test_common_paths_hand_computed():
    c = M.common_paths(IDS, DOM, token_ids=[7, 8, 9, 9], top=2)
    assert c.path.tolist() == [[1, 3], [1, 2]]  # (1,3) twice; ties (1,2) vs (2,0) by code order
    assert c["count"].tolist() == [2, 1] and c.share.tolist() == [0.5, 0.25]
    assert c.top_domain.tolist() == ["a", "b"] and c.top_domain_share.tolist() == [1.0, 1.0]
    assert c.token_ids.tolist() == [[7, 8], [9]]


def test_common_paths_top_domain_and_examples_go_by_count():
    # one path of six tokens: domain b on 4 (a on 2); id 7 three times, ids 4, 5 and 9 once each
    ids = np.zeros((6, 2), int)
    c = M.common_paths(ids, ["b", "a", "b", "b", "a", "b"], token_ids=[9, 7, 5, 7, 7, 4], examples=3)
    assert c.top_domain.tolist() == ["b"] and c.top_domain_share.tolist() == [4 / 6]
    assert c.token_ids.tolist() == [[7, 4, 5]]  # the most frequent first, then ties by id


def test_common_paths_of_one_domain_have_no_domain_columns():
    """One domain: every path's top_domain was it and its share 1.0, two columns saying nothing."""
    c = M.common_paths(IDS, ["a"] * 4, token_ids=[7, 8, 9, 9], top=2)
    assert list(c.columns) == ["path", "count", "share", "token_ids"] and c["count"].tolist() == [2, 1]
    assert "top_domain" in M.common_paths(IDS, DOM, top=2)  # the control: two domains keep them


# ------------------------------------------------------------------------------ token-id dependence
@pytest.mark.parametrize("scale", [1, 1000])
@pytest.mark.parametrize("rows, n_keys", [(300, 9), (2000, 400)])  # the second: ties at most keys
def test_majority_predict_matches_reference(scale, rows, n_keys):
    """Small key and label ranges count in a keys x labels table, wide labels (x 1000) sparsely: both as the
    reference."""
    rng = np.random.default_rng(3)
    keys, labels = rng.integers(0, n_keys, rows), rng.integers(0, 4, rows) * scale
    test = rng.random(rows) < 0.3
    glob = Counter(labels[~test].tolist())
    fb = np.full(test.sum(), min(glob, key=lambda y: (-glob[y], y)))
    np.testing.assert_array_equal(M.majority_predict(keys, labels, test), reference_majority(keys, labels, test, fb))
    with pytest.raises(M.MetricsError, match="no training rows"):
        M.majority_predict(keys, labels, np.ones(rows, bool))
    with pytest.raises(M.MetricsError, match="labels: -1 is not a label code"):
        M.majority_predict(keys, labels - 1, test)


def test_token_dependence_separates_token_from_context():
    rng = np.random.default_rng(0)
    T = 4000
    tok = rng.integers(0, 50, T)
    prev = np.r_[-1, tok[:-1]]
    pos = np.arange(T) % 16
    test = np.arange(T) % 5 == 1  # the first token (no previous one) trains
    by_tok = M.token_dependence(tok, prev, pos, tok % 7, test)  # routing = a function of the token id
    assert by_tok["token_id"] == 1.0 and by_tok["token_and_prev"] == 1.0
    assert by_tok["prev_token"] < 0.4 and by_tok["position"] < 0.4 and by_tok["majority"] < 0.3
    by_prev = M.token_dependence(tok, prev, pos, (prev + 1) % 7, test)  # a function of the context
    assert by_prev["prev_token"] == 1.0 and by_prev["prev_and_position"] == 1.0
    assert by_prev["token_id"] < 0.4  # negative control: the token id does not explain it
    assert by_tok["unseen"] == 0.0


def test_token_dependence_degenerate():
    one = M.token_dependence([1, 2, 3], [-1, 1, 2], [0, 1, 2], [0, 0, 0], [False, False, True])
    assert one["token_id"] == 1.0 and one["majority"] == 1.0  # one expert for every token
    none = M.token_dependence([1, 2], [-1, 1], [0, 1], [0, 1], [False, False])
    assert math.isnan(none["token_id"]) and none["test_tokens"] == 0
    with pytest.raises(M.MetricsError, match="lengths differ"):
        M.token_dependence([1, 2], [-1], [0, 1], [0, 1], [False, True])


def test_token_dependence_unseen_counts_ids_absent_from_training():
    """`unseen` was only checked where it is 0: ids looked up in every token, held-out ones included,
    would count each held-out id as seen (a review)."""
    tok = [1, 2, 3, 1, 4, 5, 4]
    test = [False, False, False, True, True, True, True]
    # held out: 1 (trained on), 4, 5, 4 (never in training) -> 3 of 4 unseen
    r = M.token_dependence(tok, [-1, 1, 2, 3, 1, 4, 5], [0, 1, 2, 3, 4, 5, 6], [0, 1, 0, 0, 1, 1, 0], test)
    assert r["unseen"] == pytest.approx(3 / 4) and r["test_tokens"] == 4 and r["train_tokens"] == 3


# ------------------------------------------------------------------------------ run versions
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    a = write_run(d / "a", n_seq=10, seq_len=9)
    b = write_run(d / "b", seed=5, token_seed=0, n_seq=10, seq_len=9)  # same tokens, other routing
    return d, a, b


def _heldout(seq, domain, every):
    """The held-out mask by hand: each domain's windows in seq_id order, every `every`-th held out."""
    test = np.zeros(len(seq), bool)
    for dom in set(domain.tolist()):
        windows = sorted({int(q) for q, d in zip(seq, domain) if d == dom})
        out = {q for i, q in enumerate(windows) if i % every == 0}
        test |= np.array([d == dom and int(q) in out for q, d in zip(seq, domain)])
    return test


def test_heldout_windows_are_spread_over_the_domains():
    """Windows that take the domains in turn (as --order domains records them): a plain seq_id % 5
    held out only the first domain and trained on none of it; the split by domain holds out a fifth
    of each domain's windows and keeps the rest for training."""
    doms = np.array(["a", "b", "c", "d", "e"] * 10)
    seq = np.arange(50)
    r = M.Routes([1], seq, np.zeros(50, int), seq, seq, doms, np.zeros((50, 1, 1), np.int64))
    test = r.heldout(5)
    assert {d: int(test[doms == d].sum()) for d in "abcde"} == dict.fromkeys("abcde", 2)
    np.testing.assert_array_equal(test, _heldout(seq, doms, 5))
    assert set(doms[seq % 5 == 0]) == {"a"}  # the old split, for the record
    # a domain of one window is held out whole; one of two is in both sets
    two = np.array(["a", "b", "b"])
    r2 = M.Routes([1], np.arange(3), np.zeros(3, int), np.arange(3), np.arange(3), two, np.zeros((3, 1, 1), np.int64))
    assert r2.heldout(5).tolist() == [True, True, False]
    with pytest.raises(M.MetricsError, match="every=1"):
        r.heldout(1)


def _stack(arrays, layers):
    return np.stack([arrays["ids"][x] for x in layers], axis=1)


def test_run_paths_equal_array_versions(runs):
    d, a, _ = runs
    r = M.routes_from_run(d / "a")
    ids = _stack(a, a["layers"])
    np.testing.assert_array_equal(r.ids, ids)
    np.testing.assert_array_equal(r.token_id, a["token_id"])
    assert r.prev_id[0] == -1 and r.prev_id[1] == a["token_id"][0]
    np.testing.assert_array_equal(r.prev_id, np.where(a["pos"] > 0, np.roll(a["token_id"], 1), -1))
    got = M.domain_information_from_run(d / "a", every=5)
    want = M.domain_information(ids, a["domain"].astype(str), a["layers"], 1,
                                _heldout(a["seq"], a["domain"].astype(str), 5))
    np.testing.assert_allclose(got[["domain_nmi", "ami", "heldout_accuracy"]].to_numpy(),
                               want[["domain_nmi", "ami", "heldout_accuracy"]].to_numpy())
    every2 = M.domain_information_from_run(d / "a", every=2).heldout_accuracy  # every other window held out
    np.testing.assert_allclose(every2, M.domain_information(ids, a["domain"].astype(str), a["layers"], 1, _heldout(
        a["seq"], a["domain"].astype(str), 2)).heldout_accuracy)
    s = M.path_summary_from_run(d / "a", layers=[2], k=2)
    assert s.loc[0, "distinct_paths"] == len({tuple(sorted(x)) for x in a["ids"][2].tolist()})
    with pytest.raises(M.MetricsError, match="layers \\[7\\]"):
        M.routes_from_run(d / "a", layers=[7])


def test_routes_leave_out_a_token_not_routed_at_every_layer(tmp_path):
    import pyarrow.compute as pc

    a = write_run(tmp_path / "r")
    for f in (tmp_path / "r" / "routing").glob("*.parquet"):  # (window 0, position 3) lost its layer-2 row
        t = pq.read_table(f)
        gone = pc.and_(pc.and_(pc.equal(t["seq_id"], 0), pc.equal(t["pos"], 3)), pc.equal(t["layer"], 2))
        pq.write_table(t.filter(pc.invert(gone)), f)
    r = M.routes_from_run(tmp_path / "r")
    keep = ~((a["seq"] == 0) & (a["pos"] == 3))
    np.testing.assert_array_equal(r.ids, _stack(a, a["layers"])[keep])
    # the next token's previous token is still (0, 3)'s, which the tokens table holds
    np.testing.assert_array_equal(r.prev_id, np.where(a["pos"] > 0, np.roll(a["token_id"], 1), -1)[keep])
    assert len(M.routes_from_run(tmp_path / "r", layers=[1]).ids) == len(a["seq"])  # layer 1 alone: every token


def test_routes_read_parts_in_any_row_order_and_refuse_layers_of_two_top_k_sizes(tmp_path):
    # a layer at a time into the tokens' rows: routing and tokens parts stored shuffled read the same
    import shutil

    from helpers.cli_errors import one_line

    a = write_run(tmp_path / "r")
    want = M.routes_from_run(tmp_path / "r")
    shutil.copytree(tmp_path / "r", tmp_path / "shuffled")
    rng = np.random.default_rng(3)
    for f in sorted((tmp_path / "shuffled").glob("*/*.parquet")):  # every table's parts
        t = pq.read_table(f)
        pq.write_table(t.take(pa.array(rng.permutation(t.num_rows))), f)
    got = M.routes_from_run(tmp_path / "shuffled")
    for field in ("seq_id", "pos", "token_id", "prev_id", "domain", "ids"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_array_equal(got.ids, _stack(a, a["layers"]))
    for f in (tmp_path / "r" / "routing").glob("*.parquet"):  # layer 2 keeps only its first choice
        t = pq.read_table(f)
        ids = [x[:1] if layer == 2 else x for x, layer in zip(t["expert_ids"].to_pylist(), t["layer"].to_pylist())]
        pq.write_table(t.set_column(t.schema.get_field_index("expert_ids"), "expert_ids",
                                    pa.array(ids, t.schema.field("expert_ids").type)), f)
    with pytest.raises(M.MetricsError, match="routing layer 2: top-1 expert ids where layer 1 has top-2") as e:
        M.routes_from_run(tmp_path / "r")
    one_line(e)


def test_run_token_dependence(runs):
    d, a, _ = runs
    t = M.token_dependence_from_run(d / "a", every=5).set_index(["layer", "target"])
    # layer 1 of the synthetic run routes first choices by token id (token % E): fully predictable
    assert t.loc[(1, "top1"), "token_id"] == pytest.approx(1.0)
    assert t.loc[(2, "top1"), "token_id"] < 0.9  # layer 2 routes by domain + noise
    assert t.loc[(1, "top1"), "vocab_spec_input"] == pytest.approx(1.0)
    assert ("topk" in t.index.get_level_values("target"))
    test = _heldout(a["seq"], a["domain"].astype(str), 5)
    prev = np.r_[-1, a["token_id"][:-1]]
    prev[a["pos"] == 0] = -1
    want = M.token_dependence(a["token_id"], prev, a["pos"], a["ids"][2][:, 0], test)
    for k, v in want.items():
        assert t.loc[(2, "top1"), k] == pytest.approx(v), k


def test_run_token_dependence_one_expert_per_token(tmp_path):
    write_run(tmp_path / "k1", K=1)
    t = M.token_dependence_from_run(tmp_path / "k1", every=2)
    assert set(t.target) == {"top1"}  # no top-k set beyond the first choice


def test_run_token_dependence_vocab_spec_next_is_against_the_next_token(runs):
    """vocab_spec_next was only compared with the same function's output: filled with the input
    token's value, nothing failed (a review). By hand: each first choice grouped by the id of the
    token after it in its window; per id the share on its most common expert, averaged over ids."""
    d, a, _ = runs
    t = M.token_dependence_from_run(d / "a", every=5).set_index(["layer", "target"])
    seq, tok = a["seq"], a["token_id"]
    for layer in a["layers"]:
        by_next: dict = {}
        for i in range(len(seq) - 1):
            if seq[i + 1] == seq[i]:  # a next token in the same window
                by_next.setdefault(int(tok[i + 1]), Counter())[int(a["ids"][layer][i, 0])] += 1
        want = np.mean([max(c.values()) / sum(c.values()) for c in by_next.values()])
        for target in ("top1", "topk"):
            assert t.loc[(layer, target), "vocab_spec_next"] == pytest.approx(want), (layer, target)
    # layer 1 routes by the input id (vocab_spec_input 1), not by the next one: the two differ
    assert t.loc[(1, "top1"), "vocab_spec_input"] == pytest.approx(1.0)
    assert t.loc[(1, "top1"), "vocab_spec_next"] < 0.9


def test_run_vs_run_changes_and_coverage(runs, tmp_path):
    d, a, b = runs
    agr = M.routing_agreement_from_runs(d / "a", d / "b")
    assert (agr.share_of_a == 1).all() and (agr.share_of_b == 1).all()
    ch = M.route_changes_from_runs(d / "a", d / "b", top=5)
    # independent: mean Jaccard per token over the two layers
    jac = np.mean([[len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a["ids"][la], b["ids"][la])]
                   for la in a["layers"]], axis=0)
    np.testing.assert_allclose(ch.jaccard.to_numpy(), np.sort(jac)[:5])
    assert ch.jaccard.is_monotonic_increasing and len(ch) == 5
    row = ch.iloc[0]
    i = int(np.nonzero((a["seq"] == row.seq_id) & (a["pos"] == row.pos))[0][0])
    assert row.token_id == a["token_id"][i] and row.domain == a["domain"][i]
    same = M.route_changes_from_runs(d / "a", d / "a", top=3)
    assert (same.jaccard == 1).all() and (same.top1_changed == 0).all()  # negative control
    # half the windows: coverage says so
    write_run(tmp_path / "half", n_seq=5, seq_len=9)
    half = M.routing_agreement_from_runs(d / "a", tmp_path / "half")
    assert (half.share_of_a == 0.5).all() and (half.share_of_b == 1).all()


def _route_changes_by_hand(a, b, layers):
    """Per token (seq_id, pos): layers compared, first choices changed, sets changed, mean Jaccard."""
    rows = []
    for i, (q, p) in enumerate(zip(a["seq"], a["pos"])):
        x, y = [a["ids"][la][i] for la in layers], [b["ids"][la][i] for la in layers]
        rows.append((int(q), int(p), len(layers), sum(int(u[0] != v[0]) for u, v in zip(x, y)),
                     sum(int(set(u) != set(v)) for u, v in zip(x, y)),
                     float(np.mean([len(set(u) & set(v)) / len(set(u) | set(v)) for u, v in zip(x, y)]))))
    return sorted(rows, key=lambda r: (r[5], -r[3], r[0], r[1]))  # lowest Jaccard, then most top-1 changes


@pytest.mark.parametrize("layers", [None, [2]])
def test_route_changes_equal_a_plain_reference_in_order(runs, layers):
    d, a, b = runs
    got = M.route_changes_from_runs(d / "a", d / "b", top=len(a["seq"]), layers=layers)
    want = _route_changes_by_hand(a, b, layers or a["layers"])
    cols = ["seq_id", "pos", "layers", "top1_changed", "set_changed"]
    assert got[cols].values.tolist() == [list(r[:5]) for r in want]
    np.testing.assert_allclose(got.jaccard, [r[5] for r in want])
    assert len({r[5] for r in want}) < len(want)  # ties in Jaccard: the order of top1_changed is checked


def test_route_changes_take_window_ids_of_any_size(runs, tmp_path):
    """A position's key is its window's rank in run a, not the window id itself: window ids past 2^31 (a run of
    another tool's ids) give the table of small ids, shifted (`(seq_id << 32) | pos` wrapped past them)."""
    import shutil

    d, a, b = runs
    shift = (1 << 32) + (1 << 40)
    for name in ("a", "b"):
        shutil.copytree(d / name, tmp_path / name)
        for f in [*(tmp_path / name / "routing").glob("*.parquet"), *(tmp_path / name / "tokens").glob("*.parquet")]:
            t = pq.read_table(f)
            i = t.schema.get_field_index("seq_id")
            pq.write_table(t.set_column(i, "seq_id", pa.array(t["seq_id"].to_numpy() + shift)), f)
    got = M.route_changes_from_runs(tmp_path / "a", tmp_path / "b", top=len(a["seq"]))
    want = M.route_changes_from_runs(d / "a", d / "b", top=len(a["seq"]))
    assert (got.seq_id - shift).tolist() == want.seq_id.tolist() and got.seq_id.min() > 1 << 40
    pd.testing.assert_frame_equal(got.drop(columns="seq_id"), want.drop(columns="seq_id"))


def test_route_changes_count_the_layers_a_position_is_shared_at(runs, tmp_path):
    # run b lost (window 0, position 3) at layer 2 and (window 1, position 0) at layer 1: each is
    # compared at the other layer only, the rest at both, and the table is the hand reference's
    import shutil

    import pyarrow.compute as pc

    d, a, b = runs
    shutil.copytree(d / "b", tmp_path / "b")
    lost = {(0, 3): 2, (1, 0): 1}
    for f in (tmp_path / "b" / "routing").glob("*.parquet"):
        t = pq.read_table(f)
        gone = None
        for (q, p_), layer in lost.items():
            one = pc.and_(pc.and_(pc.equal(t["seq_id"], q), pc.equal(t["pos"], p_)), pc.equal(t["layer"], layer))
            gone = one if gone is None else pc.or_(gone, one)
        pq.write_table(t.filter(pc.invert(gone)), f)
    got = M.route_changes_from_runs(d / "a", tmp_path / "b", top=len(a["seq"])).set_index(["seq_id", "pos"])
    assert len(got) == len(a["seq"])
    for (q, p_), layer in lost.items():
        other = [x for x in a["layers"] if x != layer]
        row = next(r for r in _route_changes_by_hand(a, b, other) if (r[0], r[1]) == (q, p_))
        assert got.loc[(q, p_), "layers"] == 1
        assert got.loc[(q, p_), "jaccard"] == pytest.approx(row[5])
        assert got.loc[(q, p_), "top1_changed"] == row[3] and got.loc[(q, p_), "set_changed"] == row[4]
    both = _route_changes_by_hand(a, b, a["layers"])
    rest = [r for r in both if (r[0], r[1]) not in lost]
    assert (got.drop(index=list(lost)).layers == 2).all()
    np.testing.assert_allclose(got.loc[[(r[0], r[1]) for r in rest], "jaccard"], [r[5] for r in rest])


def test_run_vs_run_no_shared_windows(runs, tmp_path):
    d, _, _ = runs
    write_run(tmp_path / "far", n_seq=10, seq_len=9)
    for f in (tmp_path / "far" / "routing").glob("*.parquet"):  # move every window elsewhere
        t = pq.read_table(f)
        pq.write_table(t.set_column(0, "seq_id", pa.array(t.column("seq_id").to_numpy() + 1000, pa.int64())), f)
    for fn in (M.routing_agreement_from_runs, M.route_changes_from_runs, M.check_comparable):  # the last: --compare's
        with pytest.raises(M.MetricsError, match="did not see the same windows") as e:
            fn(d / "a", tmp_path / "far")
        assert "\n" not in str(e.value)


def test_mismatched_inputs_are_named_not_numpy_errors(runs):
    """Lengths that differ and a layer the runs did not route were an IndexError from numpy and
    "they did not see the same windows" for a run against itself (found by a review)."""
    d, _, _ = runs
    with pytest.raises(M.MetricsError, match=r"labels, values and test: lengths differ \(4, 4, 2\)"):
        M.domain_information(np.zeros((4, 2), int), ["a", "b", "a", "b"], test=[True, False])
    with pytest.raises(M.MetricsError, match=r"ids and domains: lengths differ \(3, 1\)"):
        M.common_paths(np.zeros((3, 2), int), domains=["a"])
    with pytest.raises(M.MetricsError, match=r"layer 0 has no routing rows \(MoE layers recorded: \[1, 2\]\)"):
        M.route_changes_from_runs(d / "a", d / "a", layers=[0])
    assert len(M.route_changes_from_runs(d / "a", d / "a", layers=[2], top=3)) == 3


def test_paths_with_one_expert_per_token():
    """K = 1 (one expert per token): the top-1 path is the only path; top-k sets are refused."""
    one = IDS[:, :, :1]
    np.testing.assert_array_equal(M.path_keys(one), M.path_keys(IDS))
    s = M.path_summary(one, DOM).set_index("domain")
    assert s.loc["all", "distinct_paths"] == 3 and s.loc["all", "path_entropy"] == pytest.approx(1.5 * math.log(2))
    d = M.domain_information(one, DOM).set_index("unit")
    assert d.loc["path", "domain_nmi"] == pytest.approx(1.0)
    with pytest.raises(M.MetricsError, match="K=1"):
        M.path_codes(one, k=2)


def test_token_dependence_reuses_routes_read_once(runs):
    """The report reads the routes once for paths and token dependence: passing them changes nothing."""
    d, _, _ = runs
    r = M.routes_from_run(d / "a")
    a, b = M.token_dependence_from_run(d / "a", every=5), M.token_dependence_from_run(d / "a", every=5, routes=r)
    assert a.equals(b) and len(a)


def test_layers_named_out_of_order_or_twice(runs):
    """Layers named [2, 1] used to label layer 1's figures as layer 2's (the SQL orders a path by
    layer, the labels kept the caller's order), and [1, 1] gave numpy's reshape error from
    `path_keys` on zero tokens (found by a review)."""
    d, _, _ = runs
    fwd = M.domain_information_from_run(d / "a", layers=[1, 2]).set_index("unit")
    rev = M.domain_information_from_run(d / "a", layers=[2, 1]).set_index("unit")
    assert fwd.equals(rev)
    t_fwd = M.token_dependence_from_run(d / "a", layers=[1, 2]).set_index(["layer", "target"])
    t_rev = M.token_dependence_from_run(d / "a", layers=[2, 1]).set_index(["layer", "target"])
    assert t_rev.loc[(1, "top1"), "token_id"] == pytest.approx(1.0)  # layer 1 routes by token id
    assert t_fwd.equals(t_rev.loc[t_fwd.index])
    with pytest.raises(M.MetricsError, match=r"layers \[1, 1\]: layer 1 named twice"):
        M.domain_information_from_run(d / "a", layers=[1, 1])
    empty = np.zeros((0, 3, 4), np.int64)
    assert M.path_keys(empty).shape == (0, 3) and M.path_keys(empty, k=2).shape == (0, 6)
    assert len(M.path_codes(empty)[1]) == 0
    assert M.path_summary(empty).loc[0, "tokens"] == 0


def test_heldout_accuracy_leaves_out_a_label_never_trained_on():
    """A label whose every row is held out can only be scored wrong: it is not scored (nor named
    trained), and with fewer than two labels to train on there is nothing to tell apart."""
    labels = ["x", "x", "y", "y", "z", "z"]
    values = [5, 5, 7, 7, 9, 9]
    test = [False, True, False, True, True, True]  # z: held out whole
    acc, base = M.heldout_accuracy(labels, values, test)  # x and y only: both right, majority x right once
    assert (acc, base) == (1.0, 0.5)  # z's two rows scored wrong read 2/4 (the old score)
    assert all(np.isnan(M.heldout_accuracy(["x", "x", "y"], [1, 1, 2], [False, True, True])))  # x alone trained
    assert M.heldout_left_out(labels, test) == ["z"]
    assert M.left_out_note([]) is None and M.left_out_note("") is None
    assert M.left_out_note("web") == ("Left out of the held-out scores: web has one window only, which the split "
                                      "holds out whole (every 5th window of each domain, its first included), so "
                                      "it was never trained on.")
    assert "prose and web have one window only" in M.left_out_note(["prose", "web"])
    assert M.left_out_note(["prose", "web"], every=3) == M.left_out_note(["prose", "web"]).replace("5th", "3rd")


def test_a_domain_of_one_window_is_left_out_of_the_held_out_scores(tmp_path):
    """A capped run where a domain has one window: the split holds it out whole, so it was scored but
    never trained on (a 2,000-token run over five domains read 58.5% with two of them untrained, a
    tour). The path's held-out accuracy and the token-id predictors leave it out of training and
    scoring, and name it; AMI still reads every token."""
    write_run(tmp_path / "r", n_seq=8, seq_len=9, domains=("code", "prose", "web"))  # web: windows 2 and 5
    a = write_run(tmp_path / "thin", n_seq=5, seq_len=9, domains=("code", "prose", "web"))  # web: window 2 only
    got = M.domain_information_from_run(tmp_path / "thin").set_index("unit")
    keep = a["domain"] != "web"  # the run's code and prose
    ids, dom = _stack(a, a["layers"])[keep], a["domain"][keep].astype(str)
    want = M.domain_information(ids, dom, a["layers"], 1, _heldout(a["seq"][keep], dom, 5)).set_index("unit")
    np.testing.assert_allclose(got.heldout_accuracy, want.heldout_accuracy)
    np.testing.assert_allclose(got.majority_baseline, want.majority_baseline)
    every = M.domain_information(_stack(a, a["layers"]), a["domain"].astype(str), a["layers"], 1)  # web included
    np.testing.assert_allclose(got.ami, every.set_index("unit").ami)
    assert got.left_out.tolist() == [["web"]] * len(got)
    assert M.domain_information_from_run(tmp_path / "r").left_out.map(len).eq(0).all()  # two windows of each: none
    td = M.token_dependence_from_run(tmp_path / "thin")
    assert set(td.test_tokens) == {2 * 9} and set(td.train_tokens) == {2 * 9}  # windows 0, 1 held out; 3, 4 trained
    assert td.left_out.tolist() == [["web"]] * len(td)
    assert M.token_dependence_from_run(tmp_path / "r").left_out.map(len).eq(0).all()
