"""From the data layer's aggregates to what the pages plot, through `analyses.metrics` only.

No metric formula lives here: the functions reshape DuckDB aggregates into the arrays the metric
functions take (per-layer load vectors, [batches, N] load tables, [D, N] contingency tables,
[T, K] expert ids) and call them.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd


def metrics():
    """`analyses.metrics`, imported on first use (numpy only; never torch)."""
    return importlib.import_module("analyses.metrics")


def metric(name: str):
    fn = getattr(metrics(), name, None)
    if fn is None:
        raise NotImplementedError(f"analyses.metrics has no `{name}` in this checkout")
    return fn


def layer_order(labels) -> list[str]:
    """layer 1, layer 2, ..., layer 10, then MTP 0, ...: numeric order within each prefix."""
    def key(s: str):
        head = s.rstrip("0123456789")
        num = s[len(head):]
        return (head.strip() != "layer", head.strip(), int(num) if num else -1)
    # a column's distinct labels first: iterating 700k arrow-backed strings into a set took 0.8 s
    return sorted(set(labels.unique() if isinstance(labels, pd.Series) else labels), key=key)


def load_matrix(loads: pd.DataFrame, n_experts: int | None = None) -> tuple[list[str], np.ndarray]:
    """(layers, [L, N] loads) from rows layer, expert, load (missing experts count 0)."""
    layers = layer_order(loads["layer"])
    n = int(n_experts or (loads["expert"].max() + 1 if len(loads) else 0))
    m = np.zeros((len(layers), n))
    idx = {lab: i for i, lab in enumerate(layers)}
    for lab, e, v in zip(loads["layer"], loads["expert"], loads["load"]):
        if e < n:
            m[idx[lab], int(e)] += v
    return layers, m


def relative_loads(loads: pd.DataFrame, n_experts: int | None = None) -> tuple[list[str], np.ndarray]:
    layers, m = load_matrix(loads, n_experts)
    rel = metric("relative_load")
    return layers, np.array([rel(row) for row in m]) if len(m) else m


def batch_table(by_step: pd.DataFrame, layer: str, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps [B], loads [B, N]) of one layer from rows step, layer, expert, load: the steps it has rows at,
    sorted; experts past N left out, missing ones 0."""
    return _steps_by_experts(by_step[by_step["layer"] == layer], n_experts)


def batch_tables(by_step: pd.DataFrame, n_experts: int) -> dict:
    """{layer: `batch_table`} of every layer, grouped in one pass: a filter and a pandas pivot a layer took
    1-1.8 s a figure at 58 MoE layers of 256 experts (docs/performance.md)."""
    return {lab: _steps_by_experts(d, n_experts) for lab, d in by_step.groupby("layer", sort=False)}


def _steps_by_experts(d: pd.DataFrame, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    e = d["expert"].to_numpy(np.int64)
    keep = (e >= 0) & (e < n_experts)
    steps, row = np.unique(d["step"].to_numpy(), return_inverse=True)
    cell = row.reshape(-1)[keep] * n_experts + e[keep]
    t = np.bincount(cell, weights=d["load"].to_numpy(np.float64)[keep], minlength=len(steps) * n_experts)
    return steps, t.reshape(len(steps), n_experts)


def last_steps(by_step: pd.DataFrame | None, n: int | None) -> pd.DataFrame | None:
    """The rows of the last `n` steps (step > max(step) - n: the window `data.total_loads(ref, n)`
    sums in SQL), so that per-batch figures cover the same steps as the totals; every row when n is
    None or 0."""
    if by_step is None or not n or by_step.empty:
        return by_step
    return by_step[by_step["step"] > by_step["step"].max() - int(n)]


def gpu_choices(n_experts: int) -> list[int]:
    """GPU counts the load-balance page offers for the per-GPU views: the divisors of N from 2 to N
    (an expert-parallel layout puts N / G experts on each GPU)."""
    return [g for g in range(2, int(n_experts) + 1) if n_experts % g == 0]


def balance_columns(n_gpus: int | None) -> dict[str, str]:
    """Column -> label of the balance table. The imbalance ratio (TensorRT-LLM) is a per-rank figure:
    on per-expert loads it is MaxVio (batch mean) again, so it is shown only with a GPU count, beside
    the balancedness of the same per-GPU loads."""
    cols = {"maxvio_global": "MaxVio (global)", "maxvio_batch_mean": "MaxVio (batch mean)",
            "balancedness": "balancedness", "cv": "CV", "normalised_entropy": "norm. entropy", "gini": "Gini"}
    if n_gpus:
        cols |= {"imbalance_ratio": f"imbalance ratio ({n_gpus} GPUs, batch mean)",
                 "gpu_balancedness": f"balancedness ({n_gpus} GPUs)"}
    return cols


def balance_rows(loads: pd.DataFrame, by_step: pd.DataFrame | None, n_experts: int | None = None,
                 n_gpus: int | None = None) -> pd.DataFrame:
    """One row per layer: `analyses.metrics.balance_summary` of its total and per-batch loads (with
    `n_gpus`: its per-GPU views of the contiguous placement, `gpu_loads`). Pass the per-batch loads
    of the same steps as `loads` (`last_steps`)."""
    layers, m = load_matrix(loads, n_experts)
    summary = getattr(metrics(), "balance_summary", None)
    tables = batch_tables(by_step, m.shape[1]) if by_step is not None and len(by_step) else None
    rows = []
    for lab, load in zip(layers, m):
        batches = None if tables is None else tables.get(lab, (None, np.zeros((0, m.shape[1]))))[1]
        if summary is not None:
            row = summary(load, batches, n_gpus)
        else:  # an older analyses.metrics: the per-metric functions
            M = metrics()
            row = {"maxvio_global": M.maxvio(load), "balancedness": M.balancedness(load), "cv": M.cv(load),
                   "normalised_entropy": M.normalised_entropy(load)}
        rows.append({"layer": lab, **row})
    return pd.DataFrame(rows)


def maxvio_over_steps(by_step: pd.DataFrame, n_experts: int) -> pd.DataFrame:
    """step, layer, maxvio: MaxVio_batch of each layer at each step."""
    out = []
    mvb = getattr(metrics(), "maxvio_batch", None)
    tables = batch_tables(by_step, n_experts)
    for lab in layer_order(tables):
        steps, b = tables[lab]
        mv = mvb(b) if mvb is not None else np.array([metrics().maxvio(r) for r in b])
        out.append(pd.DataFrame({"step": steps, "layer": lab, "maxvio": mv}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["step", "layer", "maxvio"])


def contingency(dom_exp: pd.DataFrame, layer: str, n_experts: int) -> tuple[list[str], np.ndarray]:
    """(domains, [D, N] top-k assignment counts) of one layer."""
    d = dom_exp[dom_exp["layer"] == layer]
    t = d.pivot_table(index="domain", columns="expert", values="count", aggfunc="sum", fill_value=0)
    t = t.reindex(columns=range(n_experts), fill_value=0).sort_index()
    return list(t.index), t.to_numpy(dtype=np.float64)


def experts_by_domain(lift: np.ndarray) -> np.ndarray:
    """[N] expert order for a domain x expert heatmap: grouped by the domain each expert over-serves
    most (largest lift; domains in row order), within a group by that lift, largest first; experts
    without assignments (NaN lifts) last, by id. With 256 experts in id order the blocks do not show."""
    lift = np.asarray(lift, dtype=np.float64)
    seen = np.isfinite(lift).any(axis=0)
    best = np.where(seen, np.nanargmax(np.where(np.isfinite(lift), lift, -np.inf), axis=0), lift.shape[0])
    top = np.where(seen, np.nanmax(np.where(np.isfinite(lift), lift, -np.inf), axis=0), 0.0)
    return np.lexsort((np.arange(lift.shape[1]), -top, best))


DOMAIN_NMI_LABEL = "I(domain; expert) / H(domain)"


def domain_nmi_by_layer(dom_exp: pd.DataFrame, n_experts: int) -> pd.DataFrame:
    """layer, domain_nmi: `analyses.metrics.domain_nmi` = I(domain; expert) / H(domain) of each
    layer's top-k assignments (DOMAIN_NMI_LABEL on the pages). Not `specialisation_table`'s `nmi`,
    which divides by the mean of H(domain) and H(expert)."""
    fn = metric("domain_nmi")
    rows = [{"layer": lab, "domain_nmi": fn(contingency(dom_exp, lab, n_experts)[1])}
            for lab in layer_order(dom_exp["layer"])]
    return pd.DataFrame(rows, columns=["layer", "domain_nmi"])


def coactivation(ids: np.ndarray, n_experts: int) -> np.ndarray:
    """[N, N] co-activation N(E_i, E_j) / N(E_i) of a layer's [T, K] top-k ids (analyses.metrics)."""
    fn = metric("coactivation")
    return np.asarray(fn(ids, n_experts=n_experts), dtype=np.float64)


def serving_replay(steps: np.ndarray, layers: list[int], X: np.ndarray, window: tuple[int, int], *, gpus: int,
                   redundant: int, nodes: int, groups: int, mode: str, current: dict[int, np.ndarray] | None,
                   current_gpus: int | None) -> dict:
    """Plan a placement from the loads of the passes in `window` (inclusive step range) and replay every
    pass on it and on the current placement (the engine's, or SGLang's trivial one with the same GPUs
    and redundant slots). Returns per-pass x layer balancedness for both ("now", "plan" [S, L]), the
    window mask, per-layer GPU loads summed over the window ("gpu_now", "gpu_plan" [L, G]) and the plans."""
    from analyses.placement import plan_placement
    from analyses.placement.replay import balancedness, gpu_loads, trivial_map

    S, L, E = X.shape
    win = (steps >= window[0]) & (steps <= window[1])
    totals = X[win].sum(0)
    plans = {lay: plan_placement(totals[i], n_gpus=gpus, n_nodes=nodes, n_redundant=redundant, groups=groups,
                                 mode=mode) for i, lay in enumerate(layers)}
    if current:
        now_gpus = int(current_gpus)
        P = len(next(iter(current.values())))
        now_maps = [current.get(lay, trivial_map(E, P)) for lay in layers]
    else:
        now_gpus, now_maps = gpus, [trivial_map(E, E + redundant)] * L
    plan_maps = [plans[lay].phy_to_log.reshape(-1) for lay in layers]
    return {"now": balancedness(X, now_maps, now_gpus), "plan": balancedness(X, plan_maps, gpus), "window": win,
            "gpu_now": np.stack([gpu_loads(totals[i], now_maps[i], now_gpus) for i in range(L)]),
            "gpu_plan": np.stack([gpu_loads(totals[i], plan_maps[i], gpus) for i in range(L)]),
            "plans": plans, "now_gpus": now_gpus}


def _majority(columns: dict, dc: np.ndarray, names: np.ndarray) -> pd.DataFrame:
    """The columns' distinct rows (non-negative integer arrays, in sorted order) with n (tokens), domain (the most
    common domain, ties by name) and domain_share; dc: each token's domain as its index into the sorted `names`.
    Counted by np.bincount: a pandas groupby a column pair took 2.6 s for the 58 MoE layers of DeepSeek-V3's shape."""
    key = np.zeros(len(dc), np.int64)
    for col in columns.values():
        key = key * (int(col.max()) + 1) + col  # expert ids: the product of their ranges fits an int64
    uniq, inv = np.unique(key, return_inverse=True)
    counts = np.bincount(inv.reshape(-1) * len(names) + dc, minlength=len(uniq) * len(names)).reshape(len(uniq), -1)
    rows = np.empty(len(uniq), np.int64)
    rows[inv.reshape(-1)] = np.arange(len(key))  # a token of each distinct row
    n, top = counts.sum(1), counts.argmax(1)  # argmax: the first of tied domains, the first by name
    return pd.DataFrame({name: col[rows] for name, col in columns.items()}
                        | {"n": n, "domain": names[top].astype(object), "domain_share": counts.max(1) / n})


def path_flows(top1: np.ndarray, domains: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Sankey of top-1 paths over L chosen layers, from [T, L] first-choice experts.

    flows: step j (column j -> j + 1), src, dst, n (tokens), domain (their most common domain) and
    domain_share; nodes: col, expert, n, domain, domain_share. Largest flows first."""
    top1 = np.asarray(top1)
    names, dc = np.unique(np.asarray(domains).astype(str), return_inverse=True)
    dc = dc.reshape(-1)
    cols = ["step", "src", "dst", "n", "domain", "domain_share"]
    if not len(top1):
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=["col", "expert", "n", "domain", "domain_share"])
    flows = [_majority({"src": top1[:, j], "dst": top1[:, j + 1]}, dc, names).assign(step=j)
             for j in range(top1.shape[1] - 1)]
    nodes = [_majority({"expert": top1[:, j]}, dc, names).assign(col=j) for j in range(top1.shape[1])]
    f = pd.concat(flows, ignore_index=True)[cols] if flows else pd.DataFrame(columns=cols)
    nd = pd.concat(nodes, ignore_index=True)[["col", "expert", "n", "domain", "domain_share"]]
    return f.sort_values(["step", "n"], ascending=[True, False], ignore_index=True), nd


def rank_disagreement(imp: pd.DataFrame, domain: str = "all", layers=None, top: int = 10) -> pd.DataFrame:
    """`analyses.importance.rank_disagreement` of the `expert_importance` rows (of `layers`, default
    all), merged over the layers: the `top` experts whose load rank and causal rank differ most
    (average ranks for ties, 1 = largest; rank_gap = load_rank - causal_rank, > 0: more important
    than its load suggests)."""
    from analyses.importance.analysis import rank_disagreement as by_layer

    d = imp if layers is None else imp[imp["layer"].isin(list(layers))]
    g = by_layer(d, top=top, domain=domain)
    order = g.rank_gap.abs().sort_values(ascending=False, kind="stable").index
    return g.loc[order].head(top).reset_index(drop=True)


def spearman(x, y) -> float:
    """`analyses.importance.spearman`: Spearman's rho (average ranks for ties); NaN when undefined."""
    from analyses.importance.analysis import spearman as rho

    return rho(x, y)


def rho_undefined_why(load_share, delta) -> str | None:
    """`analyses.importance.undefined_why`: why rho is NaN over these experts (None where defined)."""
    from analyses.importance.analysis import undefined_why

    return undefined_why(load_share, delta)
