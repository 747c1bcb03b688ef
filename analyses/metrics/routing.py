"""Routing-pattern metrics (metrics.md, "Routing patterns"): consecutive-token repetition
with random baselines, co-activation, cross-layer and cross-run routing agreement, score margins and
routing entropy. Array versions and run versions (DuckDB SQL over `routing`; only aggregates return,
except that repetition, routing agreement and route changes read a layer's rows at a time and measure
them in numpy (the array versions where there is one): joins of routing tables in SQL held every
layer's lists or ran up to 3x slower).
"""

from __future__ import annotations

from math import comb

import numpy as np

from ._common import (WINDOW_FLAGS, MetricsError, as_ids, as_run, check_layer, layer_numbers, n_experts_of,
                      n_experts_of_run, need_rows, not_lost, positive_number, recorded_layers, same_length, whole_count,
                      window_flag)
from .readings import _layer_readings
from .specialisation import nmi


# ------------------------------------------------------------------------------ repetition
def random_overlap_baseline(n_experts: int, k: int) -> float:
    """P(two independent uniformly random k-subsets of N experts share an expert)
    = 1 - C(N-k, k) / C(N, k) (Mixtral paper, Table 5: 1/8 = 12.5% for k = 1 and 46% for
    "first or second choice", k = 2, N = 8; metrics.md "Consecutive-token repetition")."""
    if n_experts < 1 or not 1 <= k <= n_experts:
        raise MetricsError(f"need 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
    return 1 - comb(n_experts - k, k) / comb(n_experts, k)


def _adjacent(ids: np.ndarray, seq_id, pos) -> np.ndarray:
    """[T - 1] bools: rows t and t+1 are adjacent tokens of one window."""
    ok = np.ones(max(len(ids) - 1, 0), bool)
    if seq_id is not None:
        s = np.asarray(seq_id)
        same_length(s, ids, names="seq_id, expert_ids")
        ok &= s[1:] == s[:-1]
    if pos is not None:
        p = np.asarray(pos)
        same_length(p, ids, names="pos, expert_ids")
        ok &= p[1:] == p[:-1] + 1
    return ok


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A_t ∩ B_t| per row of two [T, K] id arrays (ids within a row distinct), a column of b at a time:
    [T, K_a] at once, not [T, K_a, K_b] (128 MB more for 2M tokens at K = 8)."""
    inter = np.zeros(len(a), np.int64)
    for j in range(b.shape[1]):
        inter += (a == b[:, j, None]).any(1)
    return inter


def repetition(expert_ids, seq_id=None, pos=None, n_experts: int | None = None) -> dict:
    """Consecutive-token repetition of one layer (Mixtral paper Table 5; metrics.md
    "Consecutive-token repetition"), measured on adjacent tokens of a window (rows t, t+1 with the
    same seq_id and, when given, pos + 1), with random baselines:

    - same_top1: share of adjacent pairs whose first-choice expert is the same.
      baseline_top1_uniform = 1/N (Mixtral); baseline_top1_load = sum_i p_i^2 with p_i the share of
      the layer's tokens whose first choice is i (independent routing with the measured loads).
    - top2_any: share of pairs whose first two choices share an expert (Mixtral's "first or second
      choice", metrics.md's top-2 measure); baseline_top2_any_uniform = 1 - C(N-2, 2) / C(N, 2).
      NaN for K = 1.
    - topk_any: the same over the whole top-k sets (= top2_any for K = 2);
      baseline_topk_any_uniform = 1 - C(N-K, K) / C(N, K).
    - topk_overlap: mean |TopK_t ∩ TopK_t+1| / K; baseline_topk_overlap_uniform = K / N,
      baseline_topk_overlap_load = sum_i q_i^2 / K with q_i the share of tokens having i in their
      top-k (the exact expected overlap of two independent tokens drawn from the layer).

    expert_ids: [T, K] in token order, best first. NaN measures when there is no pair."""
    ids = as_ids(expert_ids)
    T, K = ids.shape
    E = n_experts_of(ids, n_experts)
    ok = _adjacent(ids, seq_id, pos)
    a, b = ids[:-1], ids[1:]  # views, the pairs picked by `ok` after each comparison: copies of [T, K] cost more
    out = {"tokens": T, "pairs": int(ok.sum())}
    if out["pairs"]:
        inter = _intersections(a, b)[ok]
        two = (a[:, :2, None] == b[:, None, :2]).any((1, 2))[ok] if K >= 2 else np.full(len(inter), np.nan)
        out |= {"same_top1": float((a[:, 0] == b[:, 0])[ok].mean()), "top2_any": float(two.mean()),
                "topk_any": float((inter > 0).mean()), "topk_overlap": float(inter.mean() / K)}
    else:
        out |= {"same_top1": float("nan"), "top2_any": float("nan"), "topk_any": float("nan"),
                "topk_overlap": float("nan")}
    if T and E:
        p = np.bincount(ids[:, 0], minlength=E) / T
        q = np.bincount(ids.reshape(-1), minlength=E) / T
        out |= {"baseline_top1_uniform": 1 / E, "baseline_top1_load": float((p**2).sum()),
                "baseline_top2_any_uniform": random_overlap_baseline(E, 2) if 2 <= min(K, E) else float("nan"),
                "baseline_topk_any_uniform": random_overlap_baseline(E, K) if K <= E else float("nan"),
                "baseline_topk_overlap_uniform": K / E, "baseline_topk_overlap_load": float((q**2).sum() / K)}
    else:
        out |= dict.fromkeys(["baseline_top1_uniform", "baseline_top1_load", "baseline_top2_any_uniform",
                              "baseline_topk_any_uniform",
                              "baseline_topk_overlap_uniform", "baseline_topk_overlap_load"], float("nan"))
    return out


def repetition_from_run(run, layer: int | None = None) -> "pandas.DataFrame":  # noqa: F821
    """`repetition` of each MoE layer of a run (or only `layer`), one row per layer: a layer's rows are
    read (seq_id, pos, expert_ids), put in window order and measured by the array version, so a query
    holds one layer's routing, never the table's. A self-join of the whole table in SQL held every
    layer's lists at once: 1.37 GB at the peak on a 16M-row run (8 layers of 2M tokens), against
    0.47 GB this way, which also ran 2.5x faster (numpy's comparisons against DuckDB's list functions;
    docs/performance.md, "Runs at 2 million tokens")."""
    import pandas as pd

    run = as_run(run)
    need_rows(run, "routing")
    E = n_experts_of_run(run, "routing")
    layers = [check_layer(run, layer)] if layer is not None else recorded_layers(run)
    rows = []
    for n, (ids, seq, pos) in _layer_readings(run, layers):
        rows.append({"layer": n, **repetition(ids, seq_id=seq, pos=pos, n_experts=E)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ co-activation
def coactivation(expert_ids, n_experts: int | None = None, normalise: bool = True) -> np.ndarray:
    """Co-activation (OLMoE; metrics.md "Co-activation") of one layer, [N, N].

    counts[i, j] (i != j) = tokens whose top-k contains both i and j (every ordered pair within a
    token's top-k counts once); counts[i, i] = N(E_i), tokens choosing i.
    normalise=True returns counts[i, j] / N(E_i): the share of i's tokens that also chose j
    (row i; NaN on the diagonal and for experts never chosen)."""
    ids = as_ids(expert_ids)
    E = n_experts_of(ids, n_experts)
    # every ordered pair (x, y) of a token's top-k as one flat index; x == y fills the diagonal
    pairs = (ids[:, :, None] * E + ids[:, None, :]).ravel()
    c = np.bincount(pairs, minlength=E * E).reshape(E, E).astype(np.float64)
    return _share_of_row(c) if normalise else c


def _share_of_row(c: np.ndarray) -> np.ndarray:
    """counts[i, j] / counts[i, i]; NaN on the diagonal and for experts never chosen."""
    d = np.diag(c).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(d[:, None] > 0, c / d[:, None], np.nan)
    np.fill_diagonal(out, np.nan)
    return out


def coactivation_from_run(run, layer: int, normalise: bool = True) -> np.ndarray:
    """`coactivation` of one layer in SQL (lateral UNNEST of each token's top-k twice, GROUP BY the
    expert pair)."""
    run = as_run(run)
    need_rows(run, "routing")
    layer = check_layer(run, layer)
    E = n_experts_of_run(run, "routing")
    r = run.sql(f"""select e1, e2, count(*) as n from
                        (select unnest(expert_ids) as e1, expert_ids from routing where layer = {layer}) t,
                        unnest(t.expert_ids) as u(e2) group by all""").fetchnumpy()
    c = np.zeros((E, E))
    c[r["e1"].astype(np.int64), r["e2"].astype(np.int64)] = r["n"]
    return _share_of_row(c) if normalise else c


# ------------------------------------------------------------------------------ agreement
def routing_agreement(ids_a, ids_b) -> dict:
    """Agreement of two routings of the same tokens (two layers, expert ids mapped by index, or two
    checkpoints; metrics.md "Agreement and saturation"):

    - top1_same: share of tokens with the same first choice;
    - set_same: share of tokens with the same top-k set, in any order (0 when the two K differ);
    - overlap: mean |TopK_a ∩ TopK_b| / K (metrics.md's overlap; K of `ids_a`);
    - jaccard: mean |TopK_a ∩ TopK_b| / |TopK_a ∪ TopK_b|;
    - nmi_top1: NMI (arithmetic normalisation, as scikit-learn) of the two first-choice labelings,
      which needs no mapping of ids between the two sides.
    NaN when there are no tokens."""
    a, b = as_ids(ids_a, "ids_a"), as_ids(ids_b, "ids_b")
    same_length(a, b, names="ids_a, ids_b")
    out = {"tokens": len(a)}
    if not len(a):
        return out | dict.fromkeys(["top1_same", "set_same", "overlap", "jaccard", "nmi_top1"], float("nan"))
    inter = _intersections(a, b)
    union = a.shape[1] + b.shape[1] - inter
    E = int(max(a.max(), b.max())) + 1
    c = np.bincount(a[:, 0] * E + b[:, 0], minlength=E * E).reshape(E, E).astype(np.float64)
    set_same = _same_sets(a, b).mean()
    return out | {"top1_same": float((a[:, 0] == b[:, 0]).mean()), "set_same": float(set_same),
                  "overlap": float(inter.mean() / a.shape[1]),
                  "jaccard": float((inter / union).mean()), "nmi_top1": nmi(c)}


def _same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[T] bools: rows t of two [T, K] id arrays hold the same set (none where their K differ), sorted a block of
    rows at a time, not two sorted copies of the whole arrays."""
    if a.shape[1] != b.shape[1] or not len(a):
        return np.zeros(len(a), bool)
    step = 1 << 18
    return np.concatenate([(np.sort(a[i:i + step], 1) == np.sort(b[i:i + step], 1)).all(1)
                           for i in range(0, len(a), step)])


def layer_agreement_from_run(run, layers: list[int] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """Cross-layer routing agreement (`routing_agreement`) between consecutive MoE layers
    (or consecutive entries of `layers`) over the same tokens (seq_id, pos), a layer read at a time and
    measured by `routing_agreement` (a self-join of the routing table in SQL took 52-53 s for 8 layers
    of 2M tokens, this 14 s; docs/performance.md, "Runs at 2 million tokens"). Expert ids are compared
    by index (meaningful for upcycled or tied experts); nmi_top1 needs no mapping. Columns layer_a,
    layer_b, tokens, top1_same, set_same, overlap, jaccard, nmi_top1. A layer named twice, or with no
    routing rows: an error naming it (layers=[1, 1] compared layer 1 with itself, an agreement of 1
    that was never measured)."""
    import pandas as pd

    run = as_run(run)
    need_rows(run, "routing")
    have = recorded_layers(run)
    layers = have if layers is None else layer_numbers(layers)
    bad = [x for x in layers if x not in have]
    if bad:
        raise MetricsError(f"layers {layers}: layer {', '.join(map(str, bad))} has no routing rows "
                           f"(MoE layers recorded: {have})")
    twice = sorted({x for x in layers if layers.count(x) > 1})
    if twice:
        raise MetricsError(f"layers {layers}: layer {', '.join(map(str, twice))} named twice; agreement is "
                           "between two different layers")
    rows, before = [], None
    for lb, b in _layer_readings(run, layers):  # each layer read once, two held at a time
        if before is not None:
            la, a = before
            ids_a, ids_b = _matched(a, b)
            if len(ids_a):
                rows.append({"layer_a": la, "layer_b": lb, **routing_agreement(ids_a, ids_b)})
        before = lb, b
    cols = ["layer_a", "layer_b", "tokens", "top1_same", "set_same", "overlap", "jaccard", "nmi_top1"]
    return pd.DataFrame(rows, columns=cols)


def _matched(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The expert ids of two layers' readings (`readings._layer_readings`: ids, seq_id, pos) at the positions
    both hold, row for row."""
    i, j = _shared_rows(a, b)
    return a[0][i], b[0][j]


def _shared_rows(a: tuple, b: tuple) -> tuple:
    """Row indices (i, j) of two layers' readings at the positions both hold (slices of every row when
    they hold the same positions, as the layers of one run do). The windows' ids become dense codes
    first, so a position's key (code x width + pos) fits an int64 whatever ids the runs gave them."""
    (_, seq_a, pos_a), (_, seq_b, pos_b) = a, b
    if np.array_equal(seq_a, seq_b) and np.array_equal(pos_a, pos_b):
        return slice(None), slice(None)
    codes = np.unique(np.concatenate([seq_a, seq_b]), return_inverse=True)[1].reshape(-1)
    width = int(max(pos_a.max(initial=0), pos_b.max(initial=0))) + 1
    key_a, key_b = codes[:len(seq_a)] * width + pos_a, codes[len(seq_a):] * width + pos_b
    return np.intersect1d(key_a, key_b, return_indices=True)[1:]


def routing_agreement_from_runs(run_a, run_b, check_tokens: bool = True) -> "pandas.DataFrame":  # noqa: F821
    """Cross-run routing agreement per MoE layer (`routing_agreement`): two runs over the same tokens
    (e.g. two checkpoints on one corpus), routing rows matched on (seq_id, pos, layer), a layer of
    each run read at a time and measured by `routing_agreement`.
    check_tokens: the matched positions must hold the same token ids (from both runs' `tokens`),
    else an error. Columns layer, tokens, top1_same, set_same, overlap, jaccard, nmi_top1, share_of_a and
    share_of_b (the matched share of each run's routed tokens at that layer: below 1 when the runs
    saw partly different windows). No shared position at all, or runs of models with other expert
    counts (ids compared by index name different experts): an error saying so."""
    import pandas as pd

    run_a, run_b = as_run(run_a), as_run(run_b)
    _joined_runs(run_a, run_b, check_tokens)  # its checks: the same model and, at shared positions, tokens
    rows = []
    for n, a, b in _both_readings(run_a, run_b, _shared_layers(run_a, run_b)):
        ids_a, ids_b = _matched(a, b)
        if len(ids_a):
            rows.append({"layer": n, **routing_agreement(ids_a, ids_b),
                         "share_of_a": len(ids_a) / len(a[0]), "share_of_b": len(ids_b) / len(b[0])})
    if not rows:
        raise _nothing_shared(run_a, run_b)
    return pd.DataFrame(rows)


def _both_readings(run_a, run_b, layers: list[int]):
    """(layer, run a's reading, run b's) of each of `layers` (`readings._layer_readings` of each run)."""
    for (n, a), (_, b) in zip(_layer_readings(run_a, layers), _layer_readings(run_b, layers)):
        yield n, a, b


def _shared_layers(run_a, run_b) -> list[int]:
    """The MoE layers both runs recorded routing of, in order."""
    b = set(recorded_layers(run_b))
    return [n for n in recorded_layers(run_a) if n in b]


def routing_agreement_by_layer(routing_a, routing_b) -> "pandas.DataFrame":  # noqa: F821
    """`routing_agreement_from_runs` on two routing tables in memory (pandas DataFrames, or Arrow
    tables, with columns seq_id, pos, layer and expert_ids, as `run.df("routing")` reads them), in
    numpy and pandas only (no DuckDB; for scripts that compare runs on a machine without it). Rows
    matched on (seq_id, pos, layer); the same columns, one row per layer. The tables hold no tokens,
    so the caller vouches that matched positions hold the same tokens. No shared row: an error."""
    import pandas as pd

    a, b = _routing_frame(routing_a, "routing_a"), _routing_frame(routing_b, "routing_b")
    m = a.merge(b, on=["seq_id", "pos", "layer"], suffixes=("_a", "_b"))
    if m.empty:
        raise MetricsError("routing_a and routing_b share no (seq_id, pos, layer): they are not routings of the "
                           "same windows")
    n_a, n_b = a.layer.value_counts(), b.layer.value_counts()
    rows = []
    for layer, g in m.groupby("layer", sort=True):
        r = routing_agreement(np.stack(g.expert_ids_a.to_numpy()), np.stack(g.expert_ids_b.to_numpy()))
        rows.append({"layer": int(layer)} | r | {"share_of_a": r["tokens"] / n_a[layer],
                                                 "share_of_b": r["tokens"] / n_b[layer]})
    return pd.DataFrame(rows)


def record_agreement(tokens_ref, routing_ref, tokens_got, routing_got) -> dict:
    """One record against another of the same windows (e.g. bfloat16 or a GPU against float32 on the
    CPU), in numpy and pandas only: `routing_agreement_by_layer` summed over the MoE layers (each
    weighted by its matched pairs) and the mean loss per domain of both. tokens_*: DataFrames with
    seq_id, pos, domain and loss. Keys: pairs (matched (token, layer) pairs), of (routing_ref's
    rows), K, same_set, top1, differ (experts differing per pair, of K), per_layer (same_set by
    layer), loss (per domain: loss_ref, loss_got) and loss_move (the largest move of a domain's mean)."""
    ag = routing_agreement_by_layer(routing_ref, routing_got)
    w = ag.tokens / ag.tokens.sum()
    K = len(_routing_frame(routing_ref, "routing_ref").expert_ids.iloc[0])
    t = tokens_ref.merge(tokens_got, on=["seq_id", "pos"], suffixes=("_ref", "_got"))
    loss = t.groupby("domain_ref")[["loss_ref", "loss_got"]].mean()
    return {"pairs": int(ag.tokens.sum()), "of": len(routing_ref), "K": K,
            "same_set": float((w * ag.set_same).sum()), "top1": float((w * ag.top1_same).sum()),
            "differ": float(K * (1 - (w * ag.overlap).sum())), "per_layer": ag.set_index("layer").set_same,
            "loss": loss, "loss_move": float((loss.loss_got - loss.loss_ref).abs().max())}


def _routing_frame(table, name: str) -> "pandas.DataFrame":  # noqa: F821
    """The routing columns of a pandas DataFrame or an Arrow table; a missing column is an error."""
    df = table.to_pandas() if hasattr(table, "to_pandas") and not hasattr(table, "merge") else table
    need = ["seq_id", "pos", "layer", "expert_ids"]
    missing = [c for c in need if c not in getattr(df, "columns", [])]
    if missing:
        raise MetricsError(f"{name}: not a routing table (no column {', '.join(missing)}; need {', '.join(need)})")
    return df[need]


def route_changes_from_runs(run_a, run_b, top: int = 20,
                            layers: list[int] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """The tokens whose routes changed most between two runs over the same windows: per (seq_id,
    pos) matched in both runs' routing (and tokens), over the MoE layers both recorded (or `layers`):
    layers compared, top1_changed (layers whose first choice differs), set_changed (layers whose
    top-k set differs), jaccard (mean |A ∩ B| / |A ∪ B| over those layers), token_id and domain;
    the `top` rows with the lowest mean Jaccard (then most first choices changed, then seq_id, pos).
    Same checks as `routing_agreement_from_runs` (different tokens at matched positions, or other
    expert counts: an error). A layer of each run is read at a time and summed per position (a join of
    the two routing tables in SQL took 47 s at 1.8 GB for 8 layers of 2M tokens, this 35 s at 0.8 GB)."""
    top = whole_count(top, "top", why=" (tokens listed)")  # top=0 was blamed on the runs' windows
    run_a, run_b = as_run(run_a), as_run(run_b)
    if layers is not None:  # a dense or mistyped layer is named, not blamed on the runs' windows
        layers = [check_layer(run_b, check_layer(run_a, x)) for x in layer_numbers(layers)]
    con = _joined_runs(run_a, run_b)
    if layers is None:
        layers = _shared_layers(run_a, run_b)
    if not layers:
        raise _nothing_shared(run_a, run_b)
    # one key a position of run a (its window's rank x width + pos), and per key sums over the layers
    windows = run_a.sql("select distinct seq_id from routing order by 1").fetchnumpy()["seq_id"]
    width = int(run_a.sql("select max(pos) from routing").fetchall()[0][0]) + 1
    keys, sums = np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in range(3)] + [np.zeros(0)]
    for _, a, b in _both_readings(run_a, run_b, layers):  # a layer of each run at a time
        seq, pos, *changes = _changes_at(a, b)
        keys, sums = _added(keys, sums, np.searchsorted(windows, seq) * width + pos, [np.ones(len(seq)), *changes])
    if not len(keys):
        raise _nothing_shared(run_a, run_b)
    count, top1, sets, jac = sums
    out = {"seq_id": windows[keys // width], "pos": (keys % width).astype(np.int32), "layers": count,
           "top1_changed": top1.astype(np.int32), "set_changed": sets.astype(np.int32), "jaccard": jac / count}
    pick = np.lexsort((out["pos"], out["seq_id"], -top1, out["jaccard"]))[:top]
    return _with_tokens(con, {k: v[pick] for k, v in out.items()})


def _added(keys: np.ndarray, sums: list, key: np.ndarray, values: list) -> tuple[np.ndarray, list]:
    """Per-key sums (`keys` sorted and distinct) with a layer's `values` at its keys `key` added; keys
    the layer adds (a position an earlier layer did not share) join with zeros."""
    if not np.array_equal(keys, key):
        union = np.union1d(keys, key)
        at = np.searchsorted(union, keys)
        grown = [np.zeros(len(union), s.dtype) for s in sums]
        for g, s in zip(grown, sums):
            g[at] = s
        keys, sums = union, grown
    at = np.searchsorted(keys, key)
    for s, v in zip(sums, values):
        s[at] += v.astype(s.dtype, copy=False)
    return keys, sums


def _changes_at(a: tuple, b: tuple) -> tuple:
    """Layer readings of two runs (`readings._layer_readings`) at the positions both hold: seq_id, pos, first
    choice changed, set changed (sorted rows differ) and |A ∩ B| / |A ∪ B| per position."""
    i, j = _shared_rows(a, b)
    x, y = a[0][i].astype(np.int64), b[0][j].astype(np.int64)
    inter = _intersections(x, y)
    same_set = _same_sets(x, y)
    return (a[1][i], a[2][i], (x[:, 0] != y[:, 0]).astype(np.int64), (~same_set).astype(np.int64),
            inter / (x.shape[1] + y.shape[1] - inter))


def _with_tokens(con, rows: dict) -> "pandas.DataFrame":  # noqa: F821
    """`rows` (seq_id, pos, ...) with run a's token_id and domain at each position (null where its
    tokens table lacks it), from the view `ta` of `_joined_runs`."""
    import pandas as pd

    df = pd.DataFrame(rows)
    at = ", ".join(f"({int(q)}, {int(p)})" for q, p in zip(df.seq_id, df.pos)) or "(null, null)"
    tok = con.sql(f"""select t.seq_id, t.pos, any_value(t.token_id) as token_id, any_value(t.domain) as domain
                      from ta t join (values {at}) v(q, p) on t.seq_id = v.q and t.pos = v.p
                      group by t.seq_id, t.pos""").df()
    return df.merge(tok, on=["seq_id", "pos"], how="left")


def check_comparable(run_a, run_b) -> None:
    """The checks of `routing_agreement_from_runs` without its work: both runs hold routing rows, of
    models with the same routed and activated expert counts, the positions they share hold the same
    tokens, and they share a routed position. For a caller that
    must refuse two runs before a long job (the report's --compare failed after minutes of
    ablations; a review)."""
    run_a, run_b = as_run(run_a), as_run(run_b)
    con = _joined_runs(run_a, run_b)
    try:
        shared = con.sql("select 1 from ra a join rb b using (seq_id, pos, layer) limit 1").fetchall()
    finally:
        con.close()
    if not shared:
        raise _nothing_shared(run_a, run_b)


def _nothing_shared(run_a, run_b) -> MetricsError:
    return MetricsError(f"{run_a.path} and {run_b.path} share no routed (seq_id, pos, layer): they did not "
                        "see the same windows (record both with the same corpus, --seq-len and --order)")


def _check_same_model(run_a, run_b) -> None:
    """Expert ids are compared by index: runs of models with other expert counts (their ids name
    different experts) read as a measured disagreement (the report's --compare refused them; a Jupyter
    user calling the metrics got top-1 agreement 0.03 for one). A count run.json leaves out is not held
    against the runs (`probe.model_shape`)."""
    from probe.model_shape import ROUTING, model_differences

    diffs = model_differences(run_a, run_b, ROUTING)
    if diffs:
        said = "; ".join(f"{d.words}: {d.a} in {run_a.path}, {d.b} in {run_b.path}" for d in diffs)
        raise MetricsError(f"{run_a.path} and {run_b.path} are runs of two models ({said}): run vs run compares "
                           "expert ids by index, which name the same experts only in checkpoints of one model")


def _joined_runs(run_a, run_b, check_tokens: bool = True):
    """A DuckDB connection with views ra, rb (routing) and ta (run a's tokens, empty when absent),
    after the checks of `routing_agreement_from_runs`. A cursor of the process's one database with a
    catalog of its own (`probe.run.run_connection`), so the views are this call's alone. A database of
    its own per call took 29-30 ms of CPU for the call and one join of two 500-token runs, this 11 ms
    (duckdb 2.0.1, a 2-core EPYC, 2026-12-06)."""
    from probe.run import run_connection

    for r in (run_a, run_b):
        need_rows(r, "routing")
        not_lost(r, "tokens")  # read from its files: a lost rank's tokens left unchecked
    _check_same_model(run_a, run_b)
    con = run_connection()

    def files(r, t):
        return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in r.files(t)) + "]"

    con.execute(f"create view ra as select * from read_parquet({files(run_a, 'routing')})")
    con.execute(f"create view rb as select * from read_parquet({files(run_b, 'routing')})")
    if run_a.files("tokens"):
        con.execute(f"create view ta as select * from read_parquet({files(run_a, 'tokens')})")
    else:
        con.execute("create view ta as select null::bigint as seq_id, null::int as pos, null::int as token_id, "
                    "null::varchar as domain where false")
    if check_tokens and run_a.files("tokens") and run_b.files("tokens"):
        bad = con.sql(f"""select count(*) from ta a join read_parquet({files(run_b, 'tokens')}) b
                          using (seq_id, pos) where a.token_id <> b.token_id""").fetchall()[0][0]
        if bad:
            raise MetricsError(f"{run_a.path} and {run_b.path} hold different tokens at {bad:,} matched "
                               f"positions ({_tokens_apart(run_a, run_b)})")
    return con


def _tokens_apart(run_a, run_b) -> str:
    """Why two runs hold different tokens at the positions they share, as far as their run.json say: not
    the same corpus or tokenizer (their fingerprints), or the same corpus cut into other windows (the
    options of WINDOW_FLAGS that differ). Two runs of one corpus with another --max-tokens or --seq-len
    read "not the same corpus and windows", as if the corpus differed (a tour)."""
    a, b = run_a.info or {}, run_b.info or {}
    for key in ("corpus", "tokenizer"):
        (pa, fa), (pb, fb) = (((x.get(key) or {}).get("path"), (x.get(key) or {}).get("fingerprint")) for x in (a, b))
        if fa and fb and fa != fb:
            return (f"not the same {key}: the {key} at {pa} changed between them" if pa == pb else
                    f"not the same {key}: {pa} in {run_a.path}, {pb} in {run_b.path}")
    oa, ob = a.get("options") or {}, b.get("options") or {}
    apart = [f"{window_flag(k, oa[k])} in {run_a.path}, {window_flag(k, ob[k])} in {run_b.path}"
             for k in WINDOW_FLAGS if k in oa and k in ob and oa[k] != ob[k]]
    same = (a.get("corpus") or {}).get("fingerprint") and (a.get("corpus") or {}).get("fingerprint") == \
        (b.get("corpus") or {}).get("fingerprint")
    if apart:
        return f"{'the same corpus' if same else 'the corpus'} cut into other windows: {'; '.join(apart)}"
    return "not the same corpus and windows"


# ------------------------------------------------------------------------------ margins, entropy
NEAR_MEANS = " (the margin below which a token counts as near another route)"


def margin_summary(margins, near: float = 0.01) -> dict:
    """Summary of score margins (metrics.md: top-1 vs top-(K+1) score margin, how close a token was
    to another route; the run's `margin_1` and `margin_k`): count, mean, population std, min,
    p10/p50/p90 (linear interpolation, as numpy and DuckDB's quantile_cont), max, and `near` =
    share of margins below `near`. NaN/null margins (no expert left) are dropped; NaN stats when
    none remain."""
    near = positive_number(near, "near", NEAR_MEANS)
    x = np.asarray(margins, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if not len(x):
        return {"count": 0} | dict.fromkeys(["mean", "std", "min", "p10", "p50", "p90", "max", "near"], float("nan"))
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {"count": len(x), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p10": float(p10), "p50": float(p50), "p90": float(p90), "max": float(x.max()),
            "near": float((x < near).mean())}


def margins_from_run(run, near: float = 0.01) -> "pandas.DataFrame":  # noqa: F821
    """`margin_summary` of margin_1 and margin_k per MoE layer, in SQL (quantile_cont, stddev_pop).
    Columns layer, margin, count, mean, std, min, p10, p50, p90, max, near."""
    import pandas as pd

    near = positive_number(near, "near", NEAR_MEANS)
    run = as_run(run)
    need_rows(run, "routing")
    frames = []
    for col in ("margin_1", "margin_k"):
        # every layer of the table, one with no finite margin too (count 0, NaN statistics, as
        # margin_summary gives it; a WHERE clause dropped the layer: found by a review)
        fin = f"filter (where isfinite({col}))"
        df = run.sql(f"""
            select layer, '{col}' as margin, count({col}) {fin} as count, avg({col}) {fin} as mean,
                   stddev_pop({col}) {fin} as std, min({col}) {fin} as min,
                   quantile_cont({col}, 0.1) {fin} as p10, quantile_cont({col}, 0.5) {fin} as p50,
                   quantile_cont({col}, 0.9) {fin} as p90, max({col}) {fin} as max,
                   avg(({col} < {near!r})::int) {fin} as near
            from routing group by layer order by layer""").df()
        frames.append(df)
    out = pd.concat(frames, ignore_index=True).sort_values(["layer", "margin"], ignore_index=True)
    for c in ("mean", "std", "min", "p10", "p50", "p90", "max", "near"):
        out[c] = out[c].astype(float)
    return out


def score_entropy(scores) -> np.ndarray:
    """Routing entropy per token (metrics.md "Agreement and saturation"): H(s_t / sum s_t) / ln N of the
    normalised score distribution [T, N] -> [T]; 1 = indifferent router, 0 = one expert.
    NaN for all-zero rows; 1 when N = 1."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise MetricsError(f"scores: expected [tokens, experts], got shape {s.shape}")
    if (s < 0).any():
        raise MetricsError("scores: negative score (expected sigmoid or softmax scores)")
    if s.shape[1] == 1:
        return np.where(s[:, 0] > 0, 1.0, np.nan)
    tot = s.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / tot
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1) + 0.0  # + 0: a one-expert token is 0, not -0
    return np.where(tot[:, 0] > 0, h / np.log(s.shape[1]), np.nan)


def score_entropy_from_run(run) -> "pandas.DataFrame":  # noqa: F821
    """Mean `score_entropy` per MoE layer over routing rows with full scores (SQL list lambdas);
    columns layer, tokens, score_entropy. Empty when the run kept no scores."""
    run = as_run(run)
    need_rows(run, "routing")
    return run.sql("""
        select layer, count(*) as tokens,
               avg(case when len(scores) = 1 then 1.0 else
                   -list_sum(list_transform(scores, lambda x: case when x > 0 then x / tot * ln(x / tot) else 0 end))
                   / ln(len(scores)) end) as score_entropy
        from (select layer, scores, list_sum(scores) as tot from routing
              where scores is not null and list_sum(scores) > 0)
        group by layer order by layer""").df()
