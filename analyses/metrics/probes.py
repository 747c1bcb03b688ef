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
rows, L2 penalty C=1) trained on whole windows and scored on held-out ones (every `every`-th window
of each domain, `paths.heldout_windows`), so that the tokens of one window never sit on both sides.
Two controls stand beside its accuracy: always the training majority domain, and the same probe
trained on the training tokens' domains shuffled (what that many features fit from noise).
Balanced accuracy is the mean per-domain recall, which a majority guess holds at 1/D.
"""

from __future__ import annotations

import numpy as np

from ._common import MetricsError, as_run, n_experts_of_run, need_rows
from .paths import heldout_windows

FEATURES = ("weights", "scores")
MAX_ROWS = 50_000  # training and held-out tokens each, drawn at random beyond this (the fit is O(rows))
MAX_COMBINED = 1 << 27  # float32 values of the all-layers matrix (512 MiB); more layers get per-layer rows only


def routing_features(ids, weights, n_experts: int) -> np.ndarray:
    """[T, E] float32: each token's gate weight at its chosen experts, 0 elsewhere (ids, weights [T, K])."""
    ids, w = np.asarray(ids, np.int64), np.asarray(weights, np.float32)
    if ids.shape != w.shape or ids.ndim != 2:
        raise MetricsError(f"ids {ids.shape} and weights {w.shape}: expected two [tokens, K] arrays")
    if ids.size and (ids.min() < 0 or ids.max() >= n_experts):
        raise MetricsError(f"ids: expert id out of range [0, {n_experts})")
    x = np.zeros((len(ids), n_experts), np.float32)
    np.put_along_axis(x, ids, w, axis=1)
    return x


def linear_probe(features, labels, test, seed: int = 0) -> dict:
    """A logistic-regression probe of `labels` [T] from `features` [T, F], trained on ~test and scored on
    `test` (a [T] boolean mask): accuracy, balanced_accuracy, majority (the training majority's accuracy),
    shuffled (the probe's accuracy when trained on shuffled labels), n_train, n_test, n_features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, test = np.asarray(features, np.float32), np.asarray(labels), np.asarray(test, bool)
    if x.ndim != 2 or not (len(x) == len(y) == len(test)):
        raise MetricsError(f"features {x.shape}, labels {y.shape}, test {test.shape}: expected [T, F], [T], [T]")
    train = ~test
    if len(np.unique(y[train])) < 2 or not test.any():
        raise MetricsError(f"a probe needs training tokens of two labels or more and held-out tokens "
                           f"(got {len(np.unique(y[train]))} training labels, {int(test.sum())} held out)")

    def fit(target):
        return make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg", max_iter=200)).fit(x[train], target)

    pred = fit(y[train]).predict(x[test])
    shuffled = fit(np.random.default_rng(seed).permutation(y[train])).predict(x[test])
    values, counts = np.unique(y[train], return_counts=True)
    return {"accuracy": float((pred == y[test]).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(y[test], pred)),
            "majority": float((y[test] == values[counts.argmax()]).mean()),
            "shuffled": float((shuffled == y[test]).mean()),
            "n_train": int(train.sum()), "n_test": int(test.sum()), "n_features": int(x.shape[1])}


def domain_probe_from_run(run, layers=None, features: str = "weights", every: int = 5,
                          max_rows: int = MAX_ROWS, seed: int = 0) -> "pandas.DataFrame":  # noqa: F821
    """Probe each chosen MoE layer's routing (default: every recorded layer) for the token's domain, and
    all of them side by side (left out when that matrix would pass MAX_COMBINED values): one row per
    unit ("layer N", "all layers") with `linear_probe`'s columns. Tokens: those with features at every
    chosen layer; at most `max_rows` training and `max_rows` held-out ones, drawn with `seed`."""
    import pandas as pd

    if features not in FEATURES:
        raise MetricsError(f"features={features!r}: choose one of {', '.join(FEATURES)}")
    run = as_run(run)
    need_rows(run, "routing")
    need_rows(run, "tokens")
    n_experts = n_experts_of_run(run, "routing")
    keys, domain, per_layer = _read(run, layers, features)
    if len(np.unique(domain)) < 2:
        raise MetricsError(f"{run.path}: {len(np.unique(domain))} domain(s) among the probed tokens; a domain "
                           "probe needs two or more")
    test = heldout_windows(keys >> 32, domain, every)
    rows = _draw(test, max_rows, seed)
    units = {f"layer {layer}": _dense(cols, rows, features, n_experts) for layer, cols in per_layer.items()}
    if len(units) > 1 and len(rows) * len(units) * next(iter(units.values())).shape[1] <= MAX_COMBINED:
        units["all layers"] = np.concatenate(list(units.values()), axis=1)
    out = [{"unit": unit, "features": features} | linear_probe(x, domain[rows], test[rows], seed)
           for unit, x in units.items()]
    return pd.DataFrame(out)


def _read(run, layers, features: str):
    """(keys [T] = seq_id << 32 | pos, domains [T], {layer: columns of those tokens}) for the tokens with
    `features` at every chosen layer, in key order."""
    have = [int(r[0]) for r in run.sql("select distinct layer from routing order by 1").fetchall()]
    layers = have if layers is None else sorted({int(x) for x in layers})
    if not layers or any(x not in have for x in layers):
        raise MetricsError(f"layers {layers}: no routing rows (MoE layers recorded: {have})")
    cols = "scores" if features == "scores" else "expert_ids, expert_weights"
    where = " and scores is not null" if features == "scores" else ""
    per_layer, keys = {}, None
    for layer in layers:
        t = run.sql(f"select (seq_id::bigint << 32) | pos::bigint as key, {cols} from routing "
                    f"where layer = {layer}{where} order by key").arrow()
        t = t.read_all() if hasattr(t, "read_all") else t  # duckdb 2 gives a batch reader, 1.x a table
        per_layer[layer] = t
        k = t.column("key").to_numpy()
        keys = k if keys is None else np.intersect1d(keys, k, assume_unique=True)
    if not len(keys):
        hint = " (scores are kept with --router-logits full)" if features == "scores" else ""
        raise MetricsError(f"{run.path}: no token has {features} at every one of layers {layers}{hint}")
    for layer, t in per_layer.items():  # each layer's rows of exactly those tokens
        at = np.searchsorted(t.column("key").to_numpy(), keys)
        per_layer[layer] = {c: t.column(c).take(at) for c in t.column_names if c != "key"}
    tok = run.sql("select (seq_id::bigint << 32) | pos::bigint as key, domain from tokens order by key").df()
    at = np.searchsorted(tok.key.to_numpy(), keys)
    if (at >= len(tok)).any() or (tok.key.to_numpy()[np.minimum(at, len(tok) - 1)] != keys).any():
        raise MetricsError(f"{run.path}: routing rows without a tokens row (a damaged run?)")
    return keys, tok.domain.to_numpy().astype(str)[at], per_layer


def _draw(test: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices: every training and held-out token, or `max_rows` of each drawn at random, sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for side in (~test, test):
        idx = np.flatnonzero(side)
        picked.append(idx if len(idx) <= max_rows else rng.choice(idx, max_rows, replace=False))
    return np.sort(np.concatenate(picked))


def _dense(cols: dict, rows: np.ndarray, features: str, n_experts: int) -> np.ndarray:
    """[len(rows), E] features of the drawn tokens from one layer's arrow columns."""
    def matrix(col):
        col = col.take(rows).combine_chunks() if hasattr(col, "combine_chunks") else col.take(rows)
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), -1)

    if features == "scores":
        return matrix(cols["scores"]).astype(np.float32)
    ids = matrix(cols["expert_ids"])
    return routing_features(ids, matrix(cols["expert_weights"]), n_experts)
