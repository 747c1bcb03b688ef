"""How much of routing is the token id alone (metrics.md "Token-id dependence")?

For each MoE layer, a predictor that only knows the token id (the majority first-choice expert, or
the majority top-k set, of that id on training windows) is scored on held-out windows, beside
predictors that know something else instead:
- prev_token: the majority expert of the previous token's id (the context's most recent token);
- position: the majority expert at that position in the window;
- prev_and_position: the (previous id, position) pair, falling back to prev_token (the baseline
  that knows the context's last token and where it is, but not the token itself);
- token_and_prev: the (token id, previous id) pair, falling back to the token id alone when the pair
  was never seen in training (how much one token of context adds);
- majority: always the layer's most common choice (the floor).
Values never seen in training fall back to `majority`. High token_id accuracy means routing is largely
context-independent (OpenMoE's finding); the gap to token_and_prev is what context adds.

Beside it, OLMoE's vocabulary specialisation for the input and for the predicted (next) token
(`vocabulary_specialisation_from_run`). Held-out windows: every `every`-th window of each domain
(`Routes.heldout`), so no window is split between training and test and every domain is in both; a
domain of one window, held out whole, is left out of both and named in the `left_out` column.
"""

from __future__ import annotations

import numpy as np

from ._common import MetricsError, small_codes, table_fits, whole_count
from .paths import heldout_left_out, path_codes, routes_from_run, split_every
from .specialisation import vocabulary_specialisation_baseline, vocabulary_specialisation_from_run

PREDICTORS = ("token_id", "prev_token", "position", "prev_and_position", "token_and_prev", "majority")


def _codes(x) -> np.ndarray:
    """Non-negative integer codes, equal where x is equal: small non-negative integers (token ids,
    positions) as they are, anything else through np.unique (a sort)."""
    x = np.asarray(x).reshape(-1)
    if small_codes(x):
        return x.astype(np.int64, copy=False)
    return np.unique(x, return_inverse=True)[1].reshape(-1)


def majority_predict(keys, labels, test, fallback=None) -> np.ndarray:
    """Predicted label code for each test row: the majority label among training rows with the same
    key (ties: the smallest label code); keys unseen in training take `fallback` (a [n_test] array
    of predictions) or the training majority. Labels must be non-negative integer codes."""
    k, y, test = _codes(keys), np.asarray(labels, np.int64), np.asarray(test, bool)
    tr = ~test
    if not tr.any():
        raise MetricsError("no training rows (every row is held out)")
    if y.min() < 0:  # a pair's code and the counts take labels as offsets
        raise MetricsError(f"labels: {y.min()} is not a label code (non-negative integers, e.g. np.unique's inverse)")
    width, keys = int(y.max()) + 1, int(k.max()) + 1
    cell = k[tr] * width + y[tr]  # each (key, label) pair as one int64 code
    if table_fits(keys * width, len(k)):  # a keys x labels table
        counts = np.bincount(cell, minlength=keys * width).reshape(keys, width)
        best = np.where(counts.any(1), counts.argmax(1), -1)  # argmax: the first of tied labels, the smallest
    else:  # sparse counts, one per pair seen in training (a 1-D unique sorts 10x faster than one over row pairs)
        codes, n = np.unique(cell, return_counts=True)  # sorted by key, then label
        key = codes // width
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(key)]))
        top = np.flatnonzero(n == np.maximum.reduceat(n, starts)[group])  # each key's most counted pairs ...
        top = top[np.r_[True, group[top][1:] != group[top][:-1]]]  # ... the first of them, its smallest label
        best = np.full(keys, -1, np.int64)
        best[key[top]] = codes[top] % width
    if fallback is None:
        fallback = np.full(int(test.sum()), np.bincount(y[tr]).argmax())  # ties: the smallest label
    pred = best[k[test]]
    return np.where(pred >= 0, pred, fallback)


def _pair(a, b) -> np.ndarray:
    """One integer code per (a, b) pair."""
    a, b = _codes(a), _codes(b)
    return _codes(a * (int(b.max(initial=0)) + 1) + b)  # (no rows: every domain left out)


def token_dependence(token_id, prev_id, pos, labels, test) -> dict:
    """Held-out accuracy of each predictor in `PREDICTORS` for one layer's labels (top-1 experts or
    top-k set codes, [T]); also `unseen` = share of test tokens whose id never occurs in training.
    NaN accuracies without test rows."""
    y = np.asarray(labels, np.int64)
    test = np.asarray(test, bool)
    tok, prev, p = (np.asarray(x) for x in (token_id, prev_id, pos))
    if not (len(tok) == len(prev) == len(p) == len(y) == len(test)):
        raise MetricsError("token_id, prev_id, pos, labels and test: lengths differ")
    return _scores(_predictor_keys(tok, prev, p), y, test)


def _predictor_keys(tok, prev, p) -> dict:
    """{predictor: [T] non-negative codes of what it knows}: the same for every layer's labels, so that a run's
    layers share them (the pairs and the previous ids, -1 at a window's start, each took a sort a layer)."""
    tok, prev, p = _codes(tok), _codes(prev), _codes(p)
    return {"token_id": tok, "prev_token": prev, "position": p, "prev_and_position": _pair(prev, p),
            "token_and_prev": _pair(tok, prev), "majority": np.zeros(len(tok), np.int64)}


def _scores(keys: dict, y: np.ndarray, test: np.ndarray) -> dict:
    """`token_dependence`'s result from `_predictor_keys`' codes, labels y [T] and the held-out mask."""
    out = {"train_tokens": int((~test).sum()), "test_tokens": int(test.sum())}
    if not test.any() or test.all():
        return out | {"unseen": float("nan")} | {x: float("nan") for x in PREDICTORS}
    yt = y[test]
    preds = {name: majority_predict(keys[name], y, test) for name in ("token_id", "prev_token", "position", "majority")}
    preds["prev_and_position"] = majority_predict(keys["prev_and_position"], y, test, preds["prev_token"])
    preds["token_and_prev"] = majority_predict(keys["token_and_prev"], y, test, preds["token_id"])
    tok = keys["token_id"]
    out["unseen"] = float((~np.isin(tok[test], tok[~test])).mean())
    return out | {name: float((preds[name] == yt).mean()) for name in PREDICTORS}


def token_dependence_from_run(run, layers=None, every: int = 5, k: int | None = None, routes=None,
                              min_count: int = 1, baseline: bool = False) -> "pandas.DataFrame":  # noqa: F821
    """Per MoE layer and target ("top1": first-choice expert; "topk": the whole top-k set, or the
    first `k` experts' set): the accuracies of `token_dependence`, plus OLMoE's vocabulary
    specialisation for the input token and the next token (top-1, over the ids seen at least
    `min_count` times; 1: every id counted). With `baseline`, also its value without specialisation
    (`vocabulary_specialisation_baseline` on the routed tokens: columns vocab_spec_input_baseline,
    vocab_spec_next_baseline). routes: the run's `routes_from_run(run, layers)` when already read
    (the report shares it with the paths). left_out: the domains of one window, held out whole and left
    out of every predictor (`heldout_left_out`), a list in each row; empty for none. `attrs["every"]`: `every`."""
    import pandas as pd

    r = routes if routes is not None else routes_from_run(run, layers)
    test = r.heldout(every)
    left = heldout_left_out(r.domain, test)  # one window, held out whole: left out of training and scoring
    keep = ~np.isin(r.domain, left)
    sel = slice(None) if keep.all() else keep  # views when nothing is left out: ids[keep] copied all routes
    test, tok, prev, pos, ids = test[sel], r.token_id[sel], r.prev_id[sel], r.pos[sel], r.ids[sel]
    K = r.ids.shape[2]
    k = K if k is None else whole_count(k, "k", why=" (experts of the top-k set)")  # int() read 1.5 as 1
    if not 1 <= k <= K:
        raise MetricsError(f"k={k}: must be between 1 and K={K}")
    vs_in, vs_next = (vocabulary_specialisation_from_run(run, against, min_count).set_index("layer")
                      ["vocabulary_specialisation"] for against in ("current", "next"))
    keys, rows = _predictor_keys(tok, prev, pos), []
    for j, layer in enumerate(r.layers):
        vs = {"vocab_spec_input": float(vs_in.get(layer, np.nan)),
              "vocab_spec_next": float(vs_next.get(layer, np.nan))}
        if baseline:
            vs |= _vocab_baselines(r, j, min_count)
        targets = [("top1", ids[:, j, 0])] + ([("topk", path_codes(ids[:, [j]], k)[1])] if k > 1 else [])
        for target, y in targets:
            res = _scores(keys, np.asarray(y, np.int64), test)
            rows.append({"layer": layer, "target": target, **res, **vs, "left_out": list(left)})
    return split_every(pd.DataFrame(rows), every)


def _vocab_baselines(r, j: int, min_count: int) -> dict:
    """`vocabulary_specialisation_baseline` of the `j`-th layer's first choices against the input
    token and against the next one (the token after it in its window: a window's last token has none)."""
    top1 = r.ids[:, j, 0]
    nxt = (r.seq_id[1:] == r.seq_id[:-1]) & (r.pos[1:] == r.pos[:-1] + 1)  # token i + 1 follows token i

    def base(ids, e) -> float:
        return vocabulary_specialisation_baseline(ids, e, min_count) if len(ids) else float("nan")

    return {"vocab_spec_input_baseline": base(r.token_id, top1),
            "vocab_spec_next_baseline": base(r.token_id[1:][nxt], top1[:-1][nxt])}
