"""Specialisation metrics (metrics.md, "Specialisation"): domain x expert contingency, mutual
information and NMI, lift, vocabulary specialisation and its no-specialisation baseline. Array
versions and run versions (DuckDB GROUP BY over `expert_load`, `routing` and `tokens`; only
aggregates come back).
"""

from __future__ import annotations

import numpy as np

from ._common import (MetricsError, as_ids, as_run, check_layer, n_experts_of, n_experts_of_run, need_rows, same_length,
                      table_fits, whole_count)

# Vocabulary specialisation as the dashboard and the report show it: over the ids seen at least this
# many times (an id seen once scores 1 whatever the routing), beside `vocabulary_specialisation_baseline`
VOCAB_MIN_COUNT = 5


# ------------------------------------------------------------------------------ arrays
def contingency(labels, expert_ids, n_experts: int | None = None) -> tuple[list, np.ndarray]:
    """(sorted distinct labels, [D, N] counts): how often tokens of each label (domain) were assigned
    to each expert (metrics.md "Domain specialisation"). Every one of a token's K top-k assignments
    counts once, so row d sums to K x (tokens of d). expert_ids: [T, K] (or [T] for top-1)."""
    ids = as_ids(expert_ids)
    labels = np.asarray(labels)
    same_length(labels, ids, names="labels, expert_ids")
    E = n_experts_of(ids, n_experts)
    names, inv = np.unique(labels, return_inverse=True)
    cell = np.repeat(inv.reshape(-1) * E, ids.shape[1]) + ids.reshape(-1)  # (label, expert) as one index
    return names.tolist(), np.bincount(cell, minlength=len(names) * E).reshape(len(names), E).astype(np.float64)


def _table(c) -> np.ndarray:
    if isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], list) and np.ndim(c[1]) == 2:
        # lift(contingency(...)) was numpy's 'setting an array element with a sequence ... inhomogeneous
        # shape' (a tour); its counts are 2-D, where a table of two rows written as a tuple has a row there
        # (refused as such a pair: a review)
        raise MetricsError("contingency: got contingency()'s (labels, counts) pair: pass its counts "
                           "(labels, counts = contingency(...))")
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2:
        raise MetricsError(f"contingency: expected a 2-D [rows, experts] table, got shape {c.shape}")
    if (c < 0).any():
        raise MetricsError("contingency: negative count")
    return c


def entropy(p) -> float:
    """Shannon entropy -sum p ln p in nats of a (possibly unnormalised) distribution; 0 when empty."""
    p = np.asarray(p, dtype=np.float64).ravel()
    if (p < 0).any():
        raise MetricsError("entropy: negative probability or count")
    s = p.sum()
    if s <= 0:
        return 0.0
    p = p[p > 0] / s
    return float(-(p * np.log(p)).sum() + 0.0)  # + 0: one outcome's entropy is 0, not -0 (printed '-0.0000')


def mutual_information(contingency) -> float:
    """I(A; B) = sum_ab p(a,b) ln(p(a,b) / (p(a) p(b))) in nats from a contingency table of counts
    [A, B] (metrics.md "Domain specialisation"). 0 for an empty table."""
    c = _table(contingency)
    n = c.sum()
    if n <= 0:
        return 0.0
    pab = c / n
    pa, pb = pab.sum(1, keepdims=True), pab.sum(0, keepdims=True)
    nz = pab > 0
    return float((pab[nz] * np.log(pab[nz] / (pa @ pb)[nz])).sum())


def nmi(contingency, average: str = "arithmetic") -> float:
    """Normalised mutual information I(A;B) / norm with norm = the arithmetic (default, as
    scikit-learn's `normalized_mutual_info_score`), geometric, min or max of H(A), H(B), or "rows"
    = H(A) (the domain-normalised form `domain_nmi` uses). Follows scikit-learn's conventions: 1 when
    both sides are constant, 0 when only one is; 0 for an empty table."""
    if average not in _AVERAGES:  # checked first: a typo returned 0 or 1 on a constant side, unrefused (a bug hunt)
        raise MetricsError(f"average={average!r}: choose one of {list(_AVERAGES)}")
    c = _table(contingency)
    if c.sum() <= 0:
        return 0.0
    ha, hb = entropy(c.sum(1)), entropy(c.sum(0))
    if average == "rows":
        return mutual_information(c) / ha if ha > 0 else 0.0
    if ha == 0 and hb == 0:
        return 1.0
    if ha == 0 or hb == 0:
        return 0.0
    norms = {"arithmetic": (ha + hb) / 2, "geometric": np.sqrt(ha * hb), "min": min(ha, hb), "max": max(ha, hb)}
    return float(mutual_information(c) / norms[average])


_AVERAGES = ("arithmetic", "geometric", "min", "max", "rows")  # nmi's normalisers


def domain_nmi(contingency) -> float:
    """Normalised mutual information I(domain; expert) / H(domain) from a domain x expert table of
    top-k assignment counts (metrics.md "Domain specialisation", NMI divided by H(domain)): the
    fraction of the domain's uncertainty that knowing a token's chosen expert removes
    (0 = experts ignore domains, 1 = experts identify the domain).
    Each of a token's K assignments counts once. 0 when there is a single domain or no data."""
    return nmi(contingency, average="rows")


def domain_share(contingency) -> np.ndarray:
    """P(domain | expert) [D, N]: each expert's load split over domains (columns sum to 1; NaN for an
    expert with no load)."""
    c = _table(contingency)
    col = c.sum(0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(col > 0, c / col, np.nan)


def lift(contingency) -> np.ndarray:
    """Lift [D, N] = P(domain | expert) / P(domain) = P(expert | domain) / P(expert) (metrics.md
    "Domain specialisation": per-expert domain share against P(domain)); 1 = no preference, > 1 = the
    expert over-serves the domain. NaN where the expert or the domain has no load."""
    c = _table(contingency)
    n = c.sum()
    out = np.full(c.shape, np.nan)
    if n <= 0:
        return out
    pd_, pe = c.sum(1, keepdims=True) / n, c.sum(0, keepdims=True) / n
    ok = (pd_ > 0) & (pe > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (c / n) / (pd_ * pe), np.nan)


def _id_expert_counts(token_ids, top1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inverse [T] index of each token's id, first-choice experts [T], occurrences of each id) of
    checked inputs; `token_ids` [T], `top1` [T] or [T, 1]."""
    tok = np.asarray(token_ids).ravel()
    e = as_ids(top1, "top1")
    if e.shape[1] != 1:
        raise MetricsError(f"top1: expected one expert per token, got shape {np.asarray(top1).shape}")
    e = e[:, 0]
    same_length(tok, e, names="token_ids, top1")
    _, inv = np.unique(tok, return_inverse=True)
    inv = inv.reshape(-1)
    return inv, e, np.bincount(inv)


def _top_share(inv: np.ndarray, e: np.ndarray, tot: np.ndarray, keep: np.ndarray) -> float:
    """Mean over the kept ids of (occurrences on the id's most common expert) / (its occurrences): from an
    [ids, N] table where it is small, else sparse (one count per (id, expert) pair seen)."""
    E = int(e.max()) + 1
    cell = inv.astype(np.int64) * E + e
    if table_fits(len(tot) * E, len(e)):  # an ids x experts table
        top = np.bincount(cell, minlength=len(tot) * E).reshape(len(tot), E).max(1).astype(np.float64)
    else:
        pairs, n = np.unique(cell, return_counts=True)
        top = np.zeros(len(tot))
        np.maximum.at(top, pairs // E, n)
    return float((top[keep] / tot[keep]).mean())


def vocabulary_specialisation(token_ids, top1, min_count: int = 1) -> float:
    """Vocabulary specialisation (OLMoE analysis; metrics.md "Vocabulary specialisation"): for each
    token id, the share of its occurrences routed (first choice) to its most common top-1 expert,
    averaged over ids (unweighted) that occur at least `min_count` times. 1 = every id always goes to
    one expert. It is not 1/N without specialisation: an id seen n times scores at least 1/n (1 for
    an id seen once) and at least the largest expert's share as n grows; compare it with
    `vocabulary_specialisation_baseline`. Pass the next token's id as `token_ids` for the "against
    the next token" view. NaN when no id qualifies."""
    min_count = whole_count(min_count, "min_count", why=" (occurrences an id needs to count)")
    inv, e, tot = _id_expert_counts(token_ids, top1)
    keep = tot >= min_count
    return _top_share(inv, e, tot, keep) if keep.any() else float("nan")


def vocabulary_specialisation_baseline(token_ids, top1, min_count: int = 1, shuffles: int = 8,
                                       seed: int = 0) -> float:
    """The value `vocabulary_specialisation` takes without specialisation, on these tokens: the
    first-choice experts shuffled across the tokens (each id keeps its number of occurrences, the
    layer its expert loads; the expert no longer depends on the id), the metric's mean over
    `shuffles` permutations drawn from `numpy.random.default_rng(seed)` (deterministic, whatever the
    tokens' order). It is
    above 1/N because rare ids score high by chance (an id seen once scores 1) and because an
    unbalanced layer's busiest expert takes more than 1/N of any id. NaN when no id qualifies."""
    min_count = whole_count(min_count, "min_count", why=" (occurrences an id needs to count)")
    shuffles = whole_count(shuffles, "shuffles")
    inv, e, tot = _id_expert_counts(token_ids, top1)
    keep = tot >= min_count
    if not keep.any():
        return float("nan")
    # NOTE: the permutations shuffle the experts of the tokens sorted by (id, expert), not as given: the
    # same tokens in another order (a query without ORDER BY: DuckDB's join order varies from call to
    # call) would otherwise draw other shuffles and another baseline (found by a review)
    canon = np.lexsort((e, inv))
    # the experts in their smallest integer type: a permutation moves a quarter of the bytes of int64 (the
    # same permutation whatever the type), and 8 of them a layer were most of the report's baselines
    inv, e = inv[canon], e[canon].astype(np.min_scalar_type(int(e.max())))
    rng = np.random.default_rng(seed)
    return float(np.mean([_top_share(inv, rng.permutation(e), tot, keep) for _ in range(shuffles)]))


def expert_vocabulary(token_ids, top1, n_experts: int | None = None, top: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """Per expert, how concentrated its first-choice tokens are over the vocabulary: tokens routed to
    it, distinct ids, the normalised entropy of its token-id distribution (entropy / ln distinct;
    NaN for one or zero ids, where it is 0 / 0: `distinct_ids` and `top_share` tell those apart),
    its `top` most frequent ids (ties by id) with their shares of its tokens, and `top_share` =
    their total share. A vocabulary-specialised expert has few ids and a high top_share (OLMoE's
    per-expert token view)."""
    import pandas as pd

    top = whole_count(top, "top", why=" (ids listed per expert)")
    tok = np.asarray(token_ids).ravel().astype(np.int64)
    e = as_ids(top1, "top1")[:, 0]
    same_length(tok, e, names="token_ids, top1")
    E = n_experts_of(e[:, None], n_experts, "top1")
    rows = []
    for x in range(E):
        t = tok[e == x]
        ids, n = np.unique(t, return_counts=True)
        order = np.lexsort((ids, -n))[:top]
        tot = n.sum()
        h = entropy(n)
        rows.append({"expert": x, "tokens": int(tot), "distinct_ids": len(ids),
                     "vocab_entropy": h / np.log(len(ids)) if len(ids) > 1 else float("nan"),
                     "top_ids": ids[order].tolist(), "top_shares": (n[order] / tot).tolist() if tot else [],
                     "top_share": float(n[order].sum() / tot) if tot else float("nan")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ runs
def contingency_from_run(run, layer: int | None = None):
    """Domain x expert top-k assignment counts from `expert_load` (SQL GROUP BY layer, domain,
    expert). With `layer`: (domains, [D, N]); without: {layer: (domains, [D, N])}. Domains sorted,
    columns = expert ids 0..N-1."""
    run = as_run(run)
    need_rows(run, "expert_load")
    E = n_experts_of_run(run)
    where = ""
    if layer is not None:
        where = f"where layer = {check_layer(run, layer, 'expert_load')}"
    r = run.sql(f"select layer, domain, expert, sum(count) as n from expert_load {where} group by all").fetchnumpy()
    domains = sorted(set(r["domain"].tolist()))
    out = {}
    for lay in np.unique(r["layer"]):
        m = r["layer"] == lay
        c = np.zeros((len(domains), E))
        d = np.searchsorted(np.array(domains, dtype=object), r["domain"][m])
        np.add.at(c, (d, r["expert"][m].astype(np.int64)), r["n"][m])
        out[int(lay)] = (domains, c)
    return out[int(layer)] if layer is not None else out


def domain_contingency_from_run(run) -> dict[int, tuple[list[str], np.ndarray]]:
    """layer -> (domains, [domain, expert] assignment counts); `contingency_from_run(run)`."""
    return contingency_from_run(run)


def lift_from_run(run, layer: int) -> tuple[list[str], np.ndarray]:
    """(domains, [D, N] `lift`) of one layer from `contingency_from_run`."""
    domains, c = contingency_from_run(run, layer)
    return domains, lift(c)


def specialisation_table(run) -> "pandas.DataFrame":  # noqa: F821
    """One row per MoE layer: domains, mutual information I(domain; expert) in nats, domain_nmi
    (I / H(domain), `domain_nmi`), nmi (2 I / (H(domain) + H(expert)): `nmi`'s arithmetic
    normalisation, scikit-learn's default), and the largest lift of any (domain, expert) with its
    domain and expert. From `contingency_from_run`. A run with fewer than two domains has nothing to tell
    apart: its measures are NaN (as in `domain_information`), not a 0 that reads as "no specialisation"."""
    import pandas as pd

    rows = []
    for layer, (domains, c) in contingency_from_run(run).items():
        if len(domains) < 2:
            rows.append({"layer": layer, "domains": len(domains), "mutual_information": np.nan, "domain_nmi": np.nan,
                         "nmi": np.nan, "max_lift": np.nan, "max_lift_domain": None, "max_lift_expert": np.nan})
            continue
        li = lift(c)
        fin = np.where(np.isfinite(li), li, -np.inf)
        d, e = np.unravel_index(int(np.argmax(fin)), li.shape)
        rows.append({"layer": layer, "domains": len(domains), "mutual_information": mutual_information(c),
                     "domain_nmi": domain_nmi(c), "nmi": nmi(c), "max_lift": float(li[d, e]),
                     "max_lift_domain": domains[d], "max_lift_expert": int(e)})
    return pd.DataFrame(rows)


def _tokens_join(against: str) -> str:
    if against not in ("current", "next"):
        raise MetricsError(f"against={against!r}: choose 'current' or 'next'")
    shift = " - 1" if against == "next" else ""
    return f"(select seq_id, pos{shift} as pos, token_id from tokens)"


def vocabulary_specialisation_from_run(run, against: str = "current",
                                       min_count: int = 1) -> "pandas.DataFrame":  # noqa: F821
    """`vocabulary_specialisation` per MoE layer, in SQL: routing's first choice joined to the token
    id at the same position (against="current") or at the next position ("next"). Columns layer,
    ids (qualifying ids), tokens, vocabulary_specialisation."""
    min_count = whole_count(min_count, "min_count", why=" (occurrences an id needs to count)")
    run = as_run(run)
    need_rows(run, "routing")
    need_rows(run, "tokens")
    t = _tokens_join(against)
    df = run.sql(f"""
        with c as (select r.layer, t.token_id, r.expert_ids[1] as e, count(*) as n
                   from routing r join {t} t using (seq_id, pos) group by all),
             i as (select layer, token_id, max(n) as m, sum(n) as s from c group by all
                   having sum(n) >= {min_count})
        select layer, count(*) as ids, sum(s)::bigint as tokens, avg(m / s) as vocabulary_specialisation
        from i group by layer order by layer""").df()
    return df


def expert_vocabulary_from_run(run, layer: int, top: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """`expert_vocabulary` of one layer, in SQL (GROUP BY expert, token id; ranking by window)."""
    import pandas as pd

    top = whole_count(top, "top", why=" (ids listed per expert)")
    run = as_run(run)
    need_rows(run, "routing")
    need_rows(run, "tokens")
    layer = check_layer(run, layer)
    E = n_experts_of_run(run, "routing")
    c = f"""(select r.expert_ids[1] as e, t.token_id, count(*) as n from routing r
             join tokens t using (seq_id, pos) where r.layer = {layer} group by all)"""
    stats = run.sql(f"""select e, sum(n)::bigint as tokens, count(*) as distinct_ids,
                               -sum(n / tot * ln(n / tot)) as h
                        from (select *, sum(n) over (partition by e) as tot from {c}) group by e""").fetchnumpy()
    tops = run.sql(f"""select e, token_id, n from (select *, row_number() over
                           (partition by e order by n desc, token_id) as rk from {c})
                       where rk <= {top} order by e, rk""").fetchnumpy()
    rows = []
    for x in range(E):
        m = stats["e"] == x
        tot = int(stats["tokens"][m][0]) if m.any() else 0
        k = int(stats["distinct_ids"][m][0]) if m.any() else 0
        h = float(stats["h"][m][0]) if m.any() else 0.0
        mt = tops["e"] == x
        n = tops["n"][mt].astype(np.float64)
        rows.append({"expert": x, "tokens": tot, "distinct_ids": k,
                     "vocab_entropy": h / np.log(k) if k > 1 else float("nan"),
                     "top_ids": tops["token_id"][mt].astype(np.int64).tolist(),
                     "top_shares": (n / tot).tolist() if tot else [],
                     "top_share": float(n.sum() / tot) if tot else float("nan")})
    return pd.DataFrame(rows)
