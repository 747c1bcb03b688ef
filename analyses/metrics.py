"""Load-balance and specialisation metrics, defined as in `shared/docs/metrics.md`.

Each function takes plain arrays (numpy) so that it works on in-memory data; the `*_from_run`
helpers aggregate a run's tables with DuckDB first (nothing but the aggregates is loaded).

A "load" is the number of (token, top-k slot) assignments an expert received.
"""

from __future__ import annotations

import numpy as np


def _loads(load) -> np.ndarray:
    x = np.asarray(load, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D vector of per-expert loads, got shape {x.shape}")
    return x


def maxvio(load, mean_load: float | None = None) -> float:
    """MaxVio = (max_i load_i - mean_load) / mean_load (Wang et al. 2024, arXiv 2408.15664, Eq. 4).

    mean_load defaults to sum(load) / N, which equals T*K/N (perfect balance) when every token's
    K assignments are counted. 0 = perfectly balanced; N-1 = all load on one expert.
    An empty layer (no load) has no defined MaxVio: NaN."""
    x = _loads(load)
    mean = x.mean() if mean_load is None else float(mean_load)
    if len(x) == 0 or mean <= 0:
        return float("nan")
    return float((x.max() - mean) / mean)


def relative_load(load) -> np.ndarray:
    """load_i / mean_load (DeepSeek-V3 report, Fig. 9); 1 everywhere = balanced."""
    x = _loads(load)
    m = x.mean() if len(x) else 0.0
    return x / m if m > 0 else np.full_like(x, np.nan)


def balancedness(load) -> float:
    """mean / max of the loads (SGLang / vLLM EPLB); 1 = balanced, 1/N = all on one."""
    x = _loads(load)
    return float(x.mean() / x.max()) if len(x) and x.max() > 0 else float("nan")


def cv(load) -> float:
    """Coefficient of variation std / mean (population std)."""
    x = _loads(load)
    return float(x.std() / x.mean()) if len(x) and x.mean() > 0 else float("nan")


def normalised_entropy(load) -> float:
    """H(load / sum) / ln N; 1 = uniform, 0 = one expert. NaN for an empty layer; 1 for N = 1."""
    x = _loads(load)
    if len(x) == 0 or x.sum() <= 0:
        return float("nan")
    if len(x) == 1:
        return 1.0
    p = x / x.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(x)))


def entropy(p) -> float:
    """Shannon entropy in nats of a (possibly unnormalised) distribution."""
    p = np.asarray(p, dtype=np.float64).ravel()
    s = p.sum()
    if s <= 0:
        return 0.0
    p = p[p > 0] / s
    return float(-(p * np.log(p)).sum())


def mutual_information(contingency) -> float:
    """I(A; B) in nats from a contingency table of counts [A, B]."""
    c = np.asarray(contingency, dtype=np.float64)
    n = c.sum()
    if n <= 0:
        return 0.0
    pab = c / n
    pa, pb = pab.sum(1, keepdims=True), pab.sum(0, keepdims=True)
    nz = pab > 0
    return float((pab[nz] * np.log(pab[nz] / (pa @ pb)[nz])).sum())


def domain_nmi(contingency) -> float:
    """Normalised mutual information I(domain; expert) / H(domain) from a domain x expert table of
    top-k assignment counts: the fraction of the domain's uncertainty that knowing a token's
    chosen expert removes (0 = experts ignore domains, 1 = experts identify the domain).
    Each of a token's K assignments counts once. 0 when there is a single domain."""
    c = np.asarray(contingency, dtype=np.float64)
    h = entropy(c.sum(1))
    return mutual_information(c) / h if h > 0 else 0.0


# ------------------------------------------------------------------------------ over runs
def layer_loads_from_run(run) -> dict[int, np.ndarray]:
    """layer -> total load per expert over the whole run (from `expert_load`)."""
    df = run.sql("select layer, expert, sum(count) as n from expert_load group by all order by layer, expert").df()
    return {int(layer): g.sort_values("expert").n.to_numpy() for layer, g in df.groupby("layer")}


def domain_contingency_from_run(run) -> dict[int, tuple[list[str], np.ndarray]]:
    """layer -> (domains, [domain, expert] assignment counts)."""
    df = run.sql("select layer, domain, expert, sum(count) as n from expert_load group by all").df()
    out = {}
    for layer, g in df.groupby("layer"):
        t = g.pivot_table(index="domain", columns="expert", values="n", aggfunc="sum", fill_value=0)
        out[int(layer)] = (list(t.index), t.to_numpy())
    return out
