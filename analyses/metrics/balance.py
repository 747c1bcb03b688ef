"""Load-balance metrics (metrics.md, "Balance"): array versions and run versions.

A load is the number of (token, top-k slot) assignments an expert received, so a layer's loads sum
to T*K and the perfectly balanced load is mean_load = T*K/N (N routed experts).
Run versions aggregate `expert_load` (or `routing`) with DuckDB GROUP BY; only per-expert vectors
come back to numpy.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._common import MetricsError, as_loads, as_run, check_layer, n_experts_of_run, need_rows, not_lost


# ------------------------------------------------------------------------------ arrays
def maxvio(load, mean_load: float | None = None) -> float:
    """MaxVio = (max_i load_i - mean_load) / mean_load (Wang et al. 2024, arXiv 2408.15664, Eq. 4;
    metrics.md "MaxVio").

    mean_load defaults to sum(load) / N, which equals T*K/N (perfect balance) when every token's
    K assignments are counted. 0 = perfectly balanced; N-1 = all load on one expert.
    Computed over a whole evaluation set this is MaxVio_global; per batch, MaxVio_batch
    (`maxvio_batch`). An empty layer (no load) has no defined MaxVio: NaN."""
    x = as_loads(load)
    mean = x.mean() if mean_load is None else float(mean_load)
    if mean <= 0:
        return float("nan")
    return float((x.max() - mean) / mean)


def maxvio_batch(batch_loads) -> np.ndarray:
    """MaxVio_batch (2408.15664 Eq. 4 per batch): `maxvio` of each row of a [batches, N] load table.
    Batches with no load give NaN."""
    b = np.asarray(batch_loads, dtype=np.float64)
    if b.ndim != 2:
        raise MetricsError(f"batch_loads: expected [batches, experts], got shape {b.shape}")
    for i, row in enumerate(b):  # a bad row was named `load`, an argument no caller gave (a bug hunt)
        as_loads(row, f"batch_loads[{i}]")
    return np.array([maxvio(row) for row in b], dtype=np.float64)


def relative_load(load) -> np.ndarray:
    """load_i / mean_load (DeepSeek-V3 report, Fig. 9; metrics.md "relative load");
    1 everywhere = balanced. NaN everywhere for an empty layer."""
    x = as_loads(load)
    m = x.mean()
    return x / m if m > 0 else np.full_like(x, np.nan)


def balancedness(load) -> float:
    """mean / max of the loads (SGLang / vLLM EPLB metric; metrics.md "Balancedness"); 1 = balanced,
    1/N = all on one. Works on per-expert or per-GPU loads. NaN for an empty layer."""
    x = as_loads(load)
    return float(x.mean() / x.max()) if x.max() > 0 else float("nan")


def imbalance_ratio(load) -> float:
    """max / mean - 1 of per-rank loads (TensorRT-LLM EP load balancer; metrics.md "Imbalance
    ratio"); 0 = balanced. On per-expert loads it equals MaxVio; the TensorRT-LLM figure averages it
    over iterations (`balance_table` does, over batches, on per-GPU loads when `n_gpus` is given).
    NaN for an empty layer."""
    x = as_loads(load)
    return float(x.max() / x.mean() - 1) if x.mean() > 0 else float("nan")


def cv(load) -> float:
    """Coefficient of variation std / mean (population std; metrics.md secondary view); 0 = balanced,
    sqrt(N-1) = all on one. NaN for an empty layer."""
    x = as_loads(load)
    return float(x.std() / x.mean()) if x.mean() > 0 else float("nan")


def normalised_entropy(load) -> float:
    """H(p) / ln N with p = load / sum(load) (metrics.md secondary view); 1 = uniform, 0 = one expert.
    NaN for an empty layer; 1 for N = 1."""
    x = as_loads(load)
    if x.sum() <= 0:
        return float("nan")
    if len(x) == 1:
        return 1.0
    p = x / x.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(x)) + 0.0)  # + 0: one expert is 0, not -0


def gini(load) -> float:
    """Gini coefficient sum_i sum_j |x_i - x_j| / (2 N^2 mean) (metrics.md secondary view), computed
    from the sorted loads as (2 sum_i i x_(i)) / (N sum x) - (N + 1) / N, i = 1..N;
    0 = uniform, (N-1)/N = all on one expert. NaN for an empty layer."""
    x = np.sort(as_loads(load))
    n, s = len(x), x.sum()
    if s <= 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(2 * (i * x).sum() / (n * s) - (n + 1) / n)


def jain_index(load) -> float:
    """Jain's fairness index (sum x)^2 / (N sum x^2) (metrics.md secondary view); 1 = uniform,
    1/N = all on one. NaN for an empty layer."""
    x = as_loads(load)
    q = (x**2).sum()
    return float(x.sum() ** 2 / (len(x) * q)) if q > 0 else float("nan")


def normalised_scores(scores) -> np.ndarray:
    """Each token's scores divided by their sum, s_i,t / sum_j s_j,t ([T, N] -> [T, N]): the
    probability-like scores the balance losses use (DeepSeek-V3 report Eq. 19-20 normalise its
    sigmoid affinities this way; softmax scores are unchanged). All-zero rows give NaN."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise MetricsError(f"scores: expected [tokens, experts], got shape {s.shape}")
    if (s < 0).any():
        raise MetricsError("scores: negative score (expected sigmoid or softmax scores)")
    tot = s.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / tot


def switch_balance(load, mean_score) -> float:
    """Switch balance term sum_i f_i P_i in its top-K form (2408.15664 Eq. 2; Switch Transformer):
    f_i = N / (K T) * #tokens choosing i = N load_i / sum(load), P_i = mean over tokens of the
    normalised score s_i,t (`normalised_scores(...).mean(0)`). 1 at perfect balance (f = 1, P = 1/N);
    N when every token sends all its load and score to one expert.

    NOTE: some write `N * sum_i f_i * P_i` with f_i already scaled by N/(K T); that counts N twice
    (the Switch paper's N * sum f_i P_i takes f_i as a fraction of tokens). We follow the papers and
    docs/metrics.md, whose value is 1 at balance.
    NaN for an empty layer."""
    x = as_loads(load)
    p = np.asarray(mean_score, dtype=np.float64)
    if p.shape != x.shape:
        raise MetricsError(f"mean_score: shape {p.shape} does not match load {x.shape}")
    if x.sum() <= 0 or not np.isfinite(p).all():
        return float("nan")
    f = len(x) * x / x.sum()
    return float((f * p).sum())


def gpu_loads(load, n_gpus: int) -> np.ndarray:
    """Per-GPU loads of the plain contiguous placement (no replicas): experts split in order into
    n_gpus contiguous chunks as equal as possible (E/n_gpus each when it divides)."""
    x = as_loads(load)
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, numbers.Integral):  # '4' and 2.5 were TypeErrors
        raise MetricsError(f"n_gpus={n_gpus!r}: expected a whole number of GPUs")  # from deep in numpy
    if n_gpus < 1:
        raise MetricsError(f"n_gpus must be >= 1, got {n_gpus}")
    if n_gpus > len(x):
        raise MetricsError(f"n_gpus={n_gpus} exceeds the {len(x)} experts")
    return np.array([c.sum() for c in np.array_split(x, n_gpus)])


def balance_summary(load, batch_loads=None, n_gpus: int | None = None, mean_score=None) -> dict:
    """Every balance metric of one layer as a dict (the row `balance_table` builds for a run).

    load: [N] total loads; batch_loads: optional [batches, N] per-batch loads (MaxVio_batch mean and
    max, imbalance ratio averaged over batches); n_gpus: per-GPU views of the contiguous placement;
    mean_score: [N] mean normalised scores for the Switch term (NaN without)."""
    x = as_loads(load)
    row = {"experts": len(x), "assignments": float(x.sum()), "maxvio_global": maxvio(x),
           "balancedness": balancedness(x), "cv": cv(x), "normalised_entropy": normalised_entropy(x),
           "gini": gini(x), "jain": jain_index(x), "max_relative_load": float(np.max(relative_load(x))),
           "min_relative_load": float(np.min(relative_load(x)))}
    row["switch"] = switch_balance(x, mean_score) if mean_score is not None else float("nan")
    # (n_gpus=0 was taken for "no GPU view" without a word: gpu_loads refuses it, as any count not >= 1)
    ranks = (lambda v: gpu_loads(v, n_gpus)) if n_gpus is not None else (lambda v: v)
    if batch_loads is not None:
        b = np.asarray(batch_loads, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != len(x):
            raise MetricsError(f"batch_loads: expected [batches, {len(x)}], got shape {b.shape}")
        mv = maxvio_batch(b) if len(b) else np.array([np.nan])
        ir = np.array([imbalance_ratio(ranks(r)) for r in b]) if len(b) else np.array([np.nan])
        row |= {"batches": len(b), "maxvio_batch_mean": _nanmean(mv), "maxvio_batch_max": _nanmax(mv),
                "imbalance_ratio": _nanmean(ir)}
    else:
        row |= {"batches": 0, "maxvio_batch_mean": float("nan"), "maxvio_batch_max": float("nan"),
                "imbalance_ratio": imbalance_ratio(ranks(x))}
    if n_gpus is not None:
        row["gpu_balancedness"] = balancedness(gpu_loads(x, n_gpus))
    return row


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def _nanmax(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(a[np.isfinite(a)].max()) if np.isfinite(a).any() else float("nan")


# ------------------------------------------------------------------------------ runs
def _step_range(steps) -> tuple[int, int]:
    """`steps` as (first, last) integers, first <= last: 2.5 was cut to 2, and (9, 3) read as no rows,
    refused as 'no expert_load rows in steps 9-3' (a bug hunt)."""
    from model.indices import as_int

    pair = list(steps) if isinstance(steps, (tuple, list)) else None
    ends = [as_int(s) for s in pair] if pair is not None and len(pair) == 2 else [None]
    if None in ends:
        raise MetricsError(f"steps={steps!r}: expected (first, last), two integer steps")
    if ends[0] > ends[1]:
        raise MetricsError(f"steps={steps!r}: the first step is after the last")
    return ends[0], ends[1]


def layer_loads_from_run(run, steps: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """layer -> total load per expert over the whole run (`expert_load` summed over steps and domains
    in SQL), or over its steps first..last (inclusive) with `steps`; index = expert id, experts with no
    row get 0. A step range that holds no row is a MetricsError."""
    run = as_run(run)
    need_rows(run, "expert_load")
    E = n_experts_of_run(run)
    steps = None if steps is None else _step_range(steps)
    where = "" if steps is None else f" where step between {steps[0]} and {steps[1]}"
    rows = run.sql(f"select layer, expert, sum(count) as n from expert_load{where} group by all").fetchnumpy()
    if steps is not None and not len(rows["layer"]):
        first, last = run.sql("select min(step), max(step) from expert_load").fetchall()[0]
        raise MetricsError(f"no expert_load rows in steps {steps[0]}-{steps[1]} (the run's steps are {first}-{last})")
    out: dict[int, np.ndarray] = {}
    for layer in np.unique(rows["layer"]):
        m = rows["layer"] == layer
        v = np.zeros(E, dtype=np.float64)
        v[rows["expert"][m].astype(np.int64)] = rows["n"][m]
        out[int(layer)] = v
    return out


def batch_loads_from_run(run, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps [B], loads [B, N]) of one layer: per-batch loads summed over domains in SQL."""
    run = as_run(run)
    need_rows(run, "expert_load")
    E = n_experts_of_run(run)
    layer = check_layer(run, layer, "expert_load")
    rows = run.sql(f"select step, expert, sum(count) as n from expert_load where layer = {layer} "
                   "group by all").fetchnumpy()
    steps = np.unique(rows["step"])
    out = np.zeros((len(steps), E))
    out[np.searchsorted(steps, rows["step"]), rows["expert"].astype(np.int64)] = rows["n"]
    return steps, out


def maxvio_batch_from_run(run) -> "pandas.DataFrame":  # noqa: F821
    """MaxVio_batch for every (layer, step), computed in SQL: (max - mean) / mean of the per-batch
    expert loads (2408.15664 Eq. 4). Columns layer, step, assignments, maxvio (NaN when empty)."""
    run = as_run(run)
    need_rows(run, "expert_load")
    E = n_experts_of_run(run)
    df = run.sql(f"""
        with b as (select layer, step, expert, sum(count) as n from expert_load group by all)
        select layer, step, sum(n)::double as assignments,
               (max(n) - sum(n) / {E}) / nullif(sum(n) / {E}, 0) as maxvio
        from b group by layer, step order by layer, step""").df()
    df["maxvio"] = df["maxvio"].astype(float)
    return df


def switch_inputs_from_run(run) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """layer -> (load [N], mean normalised score P [N], tokens T) over the routing rows that kept
    full scores (`--router-logits full`), aggregated in SQL; {} when no row has scores."""
    run = as_run(run)
    not_lost(run, "routing")
    if not run.files("routing"):
        return {}
    E = n_experts_of_run(run, "routing")
    t = run.sql("select layer, count(*) as t from routing where scores is not null group by layer").fetchnumpy()
    if len(t["layer"]) == 0:
        return {}
    f = run.sql("select layer, e, count(*) as n from (select layer, unnest(expert_ids) as e from routing "
                "where scores is not null) group by all").fetchnumpy()
    p = run.sql("""select layer, i, sum(s / tot) as p from (
                       select layer, unnest(range(len(scores))) as i, unnest(scores) as s,
                              list_sum(scores) as tot from routing where scores is not null)
                   group by all""").fetchnumpy()
    out = {}
    for layer, T in zip(t["layer"], t["t"]):
        load, ps = np.zeros(E), np.zeros(E)
        m = f["layer"] == layer
        load[f["e"][m].astype(np.int64)] = f["n"][m]
        m = p["layer"] == layer
        ps[p["i"][m].astype(np.int64)] = p["p"][m]
        out[int(layer)] = (load, ps / T, int(T))
    return out


def balance_table(run, n_gpus: int | None = None) -> "pandas.DataFrame":  # noqa: F821
    """One row per MoE layer with every balance metric (`balance_summary`): MaxVio global and per
    batch (mean, max), balancedness, imbalance ratio (averaged over batches; per GPU of the
    contiguous placement when n_gpus is given, else per expert), CV, normalised entropy, Gini, Jain,
    relative-load range, Switch f.P (from rows with full scores; NaN without, and where a complete run
    has lost its routing table: `probe.run.lost_tables`). Aggregation in SQL."""
    import pandas as pd

    run = as_run(run)
    loads = layer_loads_from_run(run)
    # the Switch column alone reads routing: a run that lost it keeps its balance table, that column NaN as
    # without scores (the report noted the loss, said it left out the sections that read routing, then
    # stopped here with the RunError: no report at all)
    sw = {} if "routing" in (getattr(run, "lost_tables", None) or ()) else switch_inputs_from_run(run)
    rows = []
    for layer, load in loads.items():
        _, b = batch_loads_from_run(run, layer)
        row = {"layer": layer} | balance_summary(load, b, n_gpus)
        if layer in sw:  # f from the same scored tokens as P
            row["switch"] = switch_balance(sw[layer][0], sw[layer][1])
        rows.append(row)
    return pd.DataFrame(rows)
