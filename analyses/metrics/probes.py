"""Linear probes: how much of a token's domain a linear classifier reads from its routing (metrics.md
"Linear probes"). The plug-in mutual information (`specialisation.py`) and the majority decoding of
`paths.py` look at the chosen experts only; a probe also weighs how strongly each was chosen, and,
on a run recorded with `--router-logits full`, every expert's score.

Features of a token at one MoE layer, [E]:
- "weights": the gate weights it gave its top-k experts, 0 for every other expert (every run);
- "scores": the router's unbiased sigmoid score for every expert (runs recorded with
  `--router-logits full`, on the `--sample` tokens only).
The "all layers" probe reads the chosen layers' features side by side, [L*E].

The probe is a multinomial logistic regression (scikit-learn, features standardised on the training
rows, L2 penalty C=1; a matrix at most SPARSE_AT nonzero, as the gate weights are (K of E a token), is
scaled to unit variance without centring, as a sparse matrix: the unpenalised intercept takes up the
means, so the model is the same, and the fit reads K values a token instead of E), trained on whole
windows and scored on held-out ones (every `every`-th window of each domain, `paths.heldout_windows`),
so that the tokens of one window never sit on both sides. A domain of one window is held out whole:
never trained on, it is left out of the score and named in the `left_out` column
(`paths.heldout_left_out`).
Two controls stand beside its accuracy: always the training majority domain, and the same probe
trained on the training tokens' domains shuffled (what that many features fit from noise).
Balanced accuracy is the mean per-domain recall, which a majority guess holds at 1/D.
"""

from __future__ import annotations

import numpy as np

from ._common import (MetricsError, as_run, counted, layer_numbers, n_experts_of_run, need_rows, recorded_layers,
                      whole_count)
from .paths import heldout_left_out, heldout_windows, split_every

FEATURES = ("weights", "scores")
MAX_ROWS = 50_000  # training and held-out tokens each, drawn at random beyond this (the fit is O(rows))
SPARSE_AT = 0.25  # features at most this fraction nonzero are fitted as a sparse matrix (`_fit_matrix`)
MAX_COMBINED = 1 << 27  # float32 values of the all-layers matrix (512 MiB); more layers get per-layer rows only


def routing_features(ids, weights, n_experts: int) -> np.ndarray:
    """[T, E] float32: each token's gate weight at its chosen experts, 0 elsewhere (ids, weights [T, K])."""
    ids, w = _routes(ids, weights, n_experts)
    x = np.zeros((len(ids), n_experts), np.float32)
    np.put_along_axis(x, ids, w, axis=1)
    return x


def _routes(ids, weights, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, weights float32), two [T, K] arrays of ids in [0, n_experts), or a MetricsError."""
    ids, w = np.asarray(ids, np.int64), np.asarray(weights, np.float32)
    if ids.shape != w.shape or ids.ndim != 2:
        raise MetricsError(f"ids {ids.shape} and weights {w.shape}: expected two [tokens, K] arrays")
    if ids.size and (ids.min() < 0 or ids.max() >= n_experts):
        raise MetricsError(f"ids: expert id out of range [0, {n_experts})")
    return ids, w


def _balanced_accuracy(y_true, pred) -> float:
    """scikit-learn's balanced accuracy: the mean recall over the labels of the held-out tokens, a
    prediction of a label they lack a miss. (scikit-learn's `balanced_accuracy_score` gives the same
    figure and warns of such a prediction, 'y_pred contains classes not in y_true', which a probe of a
    small run makes as a matter of course; it also took 79 ms a call on 41k held-out domain names, 4.6 s
    of the probes at DeepSeek-V3's 58 layers, by a confusion matrix of the labels as strings.)"""
    labels, inv = np.unique(y_true, return_inverse=True)
    hits = np.bincount(inv.reshape(-1), weights=(np.asarray(pred) == y_true), minlength=len(labels))
    return float((hits / np.bincount(inv.reshape(-1), minlength=len(labels))).mean())


def linear_probe(features, labels, test, seed: int = 0) -> dict:
    """A logistic-regression probe of `labels` [T] from `features` [T, F], trained on ~test and scored on
    `test` (a [T] boolean mask): accuracy, balanced_accuracy, majority (the training majority's accuracy),
    shuffled (the probe's accuracy when trained on shuffled labels), n_train, n_test (the scored tokens),
    n_features, left_out (labels held out whole, never trained on, so not scored: `heldout_left_out`).
    `features` may be a scipy sparse matrix: it is fitted as one, scaled but not centred (`_fit_matrix`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features if _is_sparse(features) else np.asarray(features, np.float32)
    y, test = np.asarray(labels), np.asarray(test, bool)
    if x.ndim != 2 or not (x.shape[0] == len(y) == len(test)):
        raise MetricsError(f"features {x.shape}, labels {y.shape}, test {test.shape}: expected [T, F], [T], [T]")
    train, left = ~test, heldout_left_out(y, test)
    test = test & np.isin(y, y[train])  # a label never trained on can only be scored wrong
    if len(np.unique(y[train])) < 2 or not test.any():
        raise MetricsError(f"a probe needs training tokens of two labels or more and held-out tokens "
                           f"(got {len(np.unique(y[train]))} training labels, {int(test.sum())} held out"
                           + (f"; {', '.join(left)} held out whole)" if left else ")"))
    n_features, x = x.shape[1], _fit_matrix(x)
    centre = isinstance(x, np.ndarray)  # a sparse matrix is scaled only (`_fit_matrix`)

    def fit(target):  # newton-cg: the same fit as lbfgs here in 4-10 iterations, 4x faster on 96 features
        probe = make_pipeline(StandardScaler(with_mean=centre), LogisticRegression(solver="newton-cg", max_iter=200))
        return probe.fit(x[train], target)

    pred = fit(y[train]).predict(x[test])
    shuffled = fit(np.random.default_rng(seed).permutation(y[train])).predict(x[test])
    values, counts = np.unique(y[train], return_counts=True)
    return {"accuracy": float((pred == y[test]).mean()),
            "balanced_accuracy": _balanced_accuracy(y[test], pred),
            "majority": float((y[test] == values[counts.argmax()]).mean()),
            "shuffled": float((shuffled == y[test]).mean()),
            "n_train": int(train.sum()), "n_test": int(test.sum()), "n_features": int(n_features),
            "left_out": list(left)}


def _is_sparse(x) -> bool:
    return hasattr(x, "tocsr")  # a scipy sparse matrix or array (scipy is imported where one is made)


def _fit_matrix(x):
    """`x` as the probe fits it: a scipy CSR matrix where at most SPARSE_AT of it is nonzero, else `x` (a
    sparse `x` as CSR float32, whatever its share of nonzeros: `_features` decided).
    NOTE: the gate weights of DeepSeek-V3's shape (8 of 256 experts a token) at the 90k tokens a layer's probe
    draws: its two fits took 0.96-1.38 s dense and centred, 0.31-0.42 s sparse and uncentred (the same 8 Newton
    iterations; 1 prediction of 45,000 held-out tokens different, at the solver's tolerance); dense but
    uncentred 1.07-1.14 s. A dense matrix of router scores fits as before (uncentred it took 8 iterations
    to 7, 0.55-0.63 s against 0.47; a throwaway script, the AVX2-only EPYC, 2026-12-08)."""
    if _is_sparse(x):
        return x.tocsr().astype(np.float32, copy=False)  # `_weights_csr` made it so: no copy
    if x.size and np.count_nonzero(x) <= SPARSE_AT * x.size:
        from scipy import sparse

        return sparse.csr_matrix(x)
    return x


def domain_probe_from_run(run, layers=None, features: str = "weights", every: int = 5,
                          max_rows: int = MAX_ROWS, seed: int = 0) -> "pandas.DataFrame":  # noqa: F821
    """Probe each chosen MoE layer's routing (default: every recorded layer) for the token's domain, and
    all of them side by side (left out when that matrix would pass MAX_COMBINED values): one row per
    unit ("layer N", "all layers") with `linear_probe`'s columns. Tokens: those with features at every
    chosen layer; at most `max_rows` training and `max_rows` held-out ones, drawn with `seed` (a training token
    of every domain among them, `_draw`)."""
    import pandas as pd

    if features not in FEATURES:
        raise MetricsError(f"features={features!r}: choose one of {', '.join(FEATURES)}")
    max_rows = whole_count(max_rows, "max_rows", why=" (tokens drawn for training, and for testing)")
    run = as_run(run)
    need_rows(run, "routing")
    need_rows(run, "tokens")
    n_experts = n_experts_of_run(run, "routing")
    layers = _layers(run, layers)
    keys, domain = _tokens(run, layers, features)
    if len(np.unique(domain)) < 2:
        raise MetricsError(f"{run.path}: {counted(len(np.unique(domain)), 'domain')} among the probed tokens; "
                           "a domain probe needs two or more")
    test = heldout_windows(keys >> 32, domain, every)
    left = heldout_left_out(domain, test)  # one window: held out whole, never trained on
    trained = np.unique(domain[~test])
    if len(trained) < 2:
        raise MetricsError(f"{run.path}: {counted(len(trained), 'domain')} with a window to train "
                           f"on ({', '.join(left)}: one window, held out whole); a domain probe needs two or more")
    keep = ~np.isin(domain, left)  # drawn from the scored tokens only
    keys, domain, test = keys[keep], domain[keep], test[keep]
    rows = _draw(test, domain, trained, max_rows, seed)
    per_layer = _columns(run, layers, features, keys[rows])

    def probe(unit: str, x: np.ndarray) -> dict:
        return {"unit": unit, "features": features} | linear_probe(x, domain[rows], test[rows], seed) \
            | {"left_out": list(left)}

    # a layer's [rows, E] features made for its probe and dropped after it: held for every layer at once they were
    # 5.3 GB for DeepSeek-V3's 58 MoE layers of 256 experts at the 90k rows drawn (docs/performance.md)
    out = [probe(f"layer {layer}", _features([per_layer[layer]], features, n_experts)) for layer in layers]
    width = per_layer[layers[0]]["scores"].shape[1] if features == "scores" else n_experts
    if len(layers) > 1 and len(rows) * len(layers) * width <= MAX_COMBINED:
        out.append(probe("all layers", _features([per_layer[x] for x in layers], features, n_experts)))
    return split_every(pd.DataFrame(out), every)


KEY = "((seq_id::bigint << 32) | pos::bigint)"  # one int64 per token, in (seq_id, pos) order


def _layers(run, layers) -> list[int]:
    have = recorded_layers(run)
    layers = have if layers is None else sorted(set(layer_numbers(layers)))
    if not layers or any(x not in have for x in layers):
        raise MetricsError(f"layers {layers}: no routing rows (MoE layers recorded: {have})")
    return layers


def _tokens(run, layers: list[int], features: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys [T] in order, domains [T]) of the tokens with `features` at every one of `layers`."""
    where = " and scores is not null" if features == "scores" else ""
    t = run.sql(f"""
        with r as (select seq_id, pos from routing where layer in ({", ".join(map(str, layers))}){where}
                   group by seq_id, pos having count(*) = {len(layers)})
        select {KEY} as key, t.domain from r join tokens t using (seq_id, pos) order by key""").df()
    if t.empty:
        hint = " (scores are kept with --router-logits full)" if features == "scores" else ""
        raise MetricsError(f"{run.path}: no token has {features} at every one of layers {layers}{hint}")
    return t.key.to_numpy(np.int64), t.domain.to_numpy().astype(str)


def _columns(run, layers: list[int], features: str, keys: np.ndarray) -> dict:
    """{layer: {column: [len(keys), ...] array}} for exactly the tokens `keys` (sorted), in one scan."""
    import pyarrow as pa

    cols = ["scores"] if features == "scores" else ["expert_ids", "expert_weights"]
    name = "_probe_keys"
    run.con.register(name, pa.table({"key": pa.array(keys, pa.int64())}))
    try:
        t = run.sql(f"select layer, {KEY} as key, {', '.join(cols)} from routing "
                    f"where layer in ({', '.join(map(str, layers))}) and {KEY} in (select key from {name}) "
                    "order by layer, key").arrow()
        t = t.read_all() if hasattr(t, "read_all") else t  # duckdb 2 gives a batch reader, 1.x a table
    finally:
        run.con.unregister(name)
    layer = t.column("layer").to_numpy()
    out = {}
    for x in layers:
        part = t.filter(pa.array(layer == x))
        if part.num_rows != len(keys):  # a token with two rows of a layer: a damaged run
            raise MetricsError(f"{run.path}: layer {x} has {part.num_rows} routing rows for {len(keys)} tokens")
        out[x] = {c: part.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(keys), -1)
                  for c in cols}
    return out


def _draw(test: np.ndarray, labels: np.ndarray, trained: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices: every training and held-out token, or `max_rows` of each drawn at random, sorted; a
    domain of `trained` (the `labels` of the training tokens) that the draw missed takes one of its
    training tokens (`_every_label`): its held-out tokens, a label never trained on, were left out of the
    score unnamed (`left_out` names the domains of one window only), or the run refused as if the domain
    were held out whole."""
    rng = np.random.default_rng(seed)
    picked = []
    for side in (~test, test):
        idx = np.flatnonzero(side)
        picked.append(idx if len(idx) <= max_rows else rng.choice(idx, max_rows, replace=False))
    if len(picked[0]) < (~test).sum():  # drawn: after both draws, so that a draw that missed none is as before
        picked[0] = _every_label(picked[0], np.flatnonzero(~test), labels, trained, rng)
    return np.sort(np.concatenate(picked))


def _every_label(picked: np.ndarray, idx: np.ndarray, labels: np.ndarray, trained: np.ndarray, rng) -> np.ndarray:
    """`picked` (rows of `idx`) with a row of each label of `trained` (those of `idx`) that it lacks, drawn
    from that label's, each in place of a row of the label it holds the most of (as many rows, none lost)."""
    picked = picked.copy()
    for label in np.setdiff1d(trained, labels[picked]):
        held, counts = np.unique(labels[picked], return_counts=True)
        if counts.max() < 2:  # fewer rows than labels: none to give up
            break
        spare = np.flatnonzero(labels[picked] == held[counts.argmax()])[-1]  # drawn in random order
        picked[spare] = rng.choice(idx[labels[idx] == label])
    return picked


def _features(layers: list[dict], features: str, n_experts: int):
    """The [T, len(layers) * E] features of these layers' columns side by side, as `linear_probe` fits them
    (`_fit_matrix`): router scores dense; gate weights as a CSR matrix where at most SPARSE_AT of it is nonzero,
    made from the ids without a dense [T, E] copy (the conversion of that copy was 8.9 s of the probes' 68 s at
    DeepSeek-V3's shape, 2026-12-08; the same matrix: `_weights_csr`), else dense."""
    if features == "scores":
        return np.concatenate([cols["scores"].astype(np.float32) for cols in layers], 1)
    parts = [_weights_csr(cols["expert_ids"], cols["expert_weights"], n_experts) for cols in layers]
    if any(p is None for p in parts):  # an expert twice in a row (a damaged run): as the dense form reads it
        return _fit_matrix(np.concatenate([routing_features(c["expert_ids"], c["expert_weights"], n_experts)
                                           for c in layers], 1))
    from scipy import sparse

    x = parts[0] if len(parts) == 1 else sparse.hstack(parts, format="csr")
    if x.nnz > SPARSE_AT * x.shape[0] * x.shape[1]:
        return x.toarray()
    return x


def _weights_csr(ids, weights, n_experts: int):
    """`routing_features(ids, weights, n_experts)` as the CSR matrix scipy makes of it (columns in order, no
    stored zero), or None where a row names an expert twice (the dense form keeps the last of its weights)."""
    from scipy import sparse

    ids, w = _routes(ids, weights, n_experts)
    order = np.argsort(ids, axis=1, kind="stable")
    ids, w = np.take_along_axis(ids, order, 1), np.take_along_axis(w, order, 1)
    if (np.diff(ids, axis=1) == 0).any():
        return None
    indptr = np.arange(len(ids) + 1) * ids.shape[1]
    x = sparse.csr_matrix((w.reshape(-1), ids.reshape(-1), indptr), shape=(len(ids), n_experts))
    x.eliminate_zeros()
    return x
