"""Does an expert's load predict its causal importance? Pure functions over the `expert_importance`
table (a DataFrame, a run directory or a `probe.Run`); nothing here runs a model.

    from analyses.importance import load_vs_importance, rank_disagreement
    load_vs_importance("runs/model-val")             # per layer: Spearman / Pearson of load_share vs delta
    load_vs_importance("runs/model-val", domain="code")
    rank_disagreement("runs/model-val", top=5)       # experts more (or less) important than their load says

Ranks: 1 = the most loaded (load_rank) or the most important (causal_rank, largest delta); ties
share the average of their ranks (as Spearman's rho uses them). rank_gap = load_rank - causal_rank:
positive = more important than its load suggests. A correlation is NaN, never an error, where it is
undefined: fewer than two experts, or load_share or delta the same for every expert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .table import TABLE, ImportanceError

KEY = ["layer", "expert", "domain"]


# --------------------------------------------------------------------------------- the table
def importance_table(df_or_run) -> pd.DataFrame:
    """The `expert_importance` rows of a DataFrame, a run directory or a `probe.Run`, checked: the
    columns are there and no (layer, expert, domain) was measured twice (two parts of differently
    configured commands: filter the DataFrame, or delete one part)."""
    if isinstance(df_or_run, pd.DataFrame):
        df, where = df_or_run, "the DataFrame"
    else:
        df, where = _read(df_or_run), str(getattr(df_or_run, "path", df_or_run))
    missing = [c for c in ("layer", "expert", "domain", "load_share", "delta") if c not in df.columns]
    if missing:
        raise ImportanceError(f"{where}: not an {TABLE} table (no column {missing[0]!r})")
    dup = df.duplicated(KEY)
    if dup.any():
        layer, expert, domain = df.loc[dup, KEY].iloc[0]
        raise ImportanceError(f"{where}: layer {layer} expert {expert} domain {domain!r} was measured more than once "
                              f"({int(dup.sum())} repeated rows; parts of commands with different options): keep "
                              f"one measurement (filter the DataFrame or delete a part of {TABLE}/)")
    return df


def _read(run) -> pd.DataFrame:
    import probe

    if not hasattr(run, "df"):
        run = probe.open_run(Path(run))
    if not run.files(TABLE):
        raise ImportanceError(f"{run.path}: no {TABLE} table: measure it with "
                              f"`python -m analyses.importance --run {run.path}`")
    return run.df(TABLE)


def _domain_rows(df: pd.DataFrame, domain: str) -> pd.DataFrame:
    rows = df[df.domain == domain]
    if rows.empty:
        raise ImportanceError(f"domain {domain!r}: not in the table; domains are {sorted(df.domain.unique())}")
    return rows.sort_values(["layer", "expert"])


# ------------------------------------------------------------------------------ correlations
def pearson(x, y) -> float:
    """Pearson's r; NaN when fewer than two values or either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.clip((dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties given their average rank; NaN when undefined."""
    return pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())


def undefined_why(load_share, delta) -> str | None:
    """Why the correlations of load share with loss delta are undefined (NaN) over these experts, in
    words for a summary; None where they are defined (Spearman's rho and Pearson's r are NaN together:
    ranks are constant exactly where the values are)."""
    x, y = np.asarray(load_share, np.float64), np.asarray(delta, np.float64)
    if len(x) < 2:
        return (f"a rank correlation needs at least two experts, and {len(x)} "
                f"{'was' if len(x) == 1 else 'were'} measured")
    if np.isnan(x).any() or np.isnan(y).any():
        return "some expert's load share or loss delta is not a number"
    if np.ptp(x) == 0:
        return "every expert has the same load share, so there is no ranking to compare"
    if np.ptp(y) == 0:
        return "every expert changed the loss by the same delta, so there is no ranking to compare"
    return None


FEW_EXPERTS = 5  # below it a rank correlation takes few values: over 2 experts it is +1 or -1, over 3 one of four


def few_experts_note(n: int) -> str | None:
    """Words for a summary where `n` experts (2 to FEW_EXPERTS - 1) give a rho that says little: over 2 it
    is always +1 or -1, over 3 one of -1, -0.5, +0.5, +1; None otherwise. `--experts 3-5` printed
    "rho = -1.000" as if it were a finding (a tour)."""
    if not 2 <= n < FEW_EXPERTS:
        return None
    values = {2: "always +1 or -1", 3: "one of -1, -0.5, +0.5, +1", 4: "a multiple of 0.2"}[n]  # untied ranks
    return f"over {n} experts a rank correlation is {values}: select at least {FEW_EXPERTS} for a trend"


def spearman_p(x, y) -> float:
    """Two-sided p-value of Spearman's rho against no association (scipy's t approximation); NaN
    when rho is undefined."""
    from scipy.stats import spearmanr

    if np.isnan(spearman(x, y)):
        return float("nan")
    return float(spearmanr(np.asarray(x, np.float64), np.asarray(y, np.float64)).pvalue)


def load_vs_importance(df_or_run, domain: str = "all") -> pd.DataFrame:
    """Per layer: experts, tokens (the fewest any of its experts was measured on), token_budgets (how
    many different token counts its experts were measured on: more than 1 when a later measurement of
    some experts, e.g. a notebook's quick look, replaced theirs at another budget; warned), spearman
    (with its p-value spearman_p) and pearson (load_share vs delta), the most important expert
    (top_expert, lowest id among ties) with its top_delta and top_load_share: all three None where
    some expert's delta is NaN (the model gave a NaN surprisal, which the job keeps: any expert could
    be the top one), as the correlations are then NaN."""
    import warnings

    df = _domain_rows(importance_table(df_or_run), domain)
    out = []
    for layer, g in df.groupby("layer", sort=True):
        top = None if g.delta.isna().any() else g.loc[g.delta.idxmax()]  # idxmax raised on a layer all NaN
        budgets = g.tokens.nunique() if "tokens" in g else None
        if budgets and budgets > 1:  # it said the largest budget, as if every expert had it (a review)
            warnings.warn(f"expert_importance, layer {int(layer)} ({domain}): its experts were measured on "
                          f"{budgets} token budgets ({int(g.tokens.min()):,} to {int(g.tokens.max()):,} tokens), so "
                          "the correlation mixes them; measure every expert again at one budget", stacklevel=2)
        out.append({"layer": int(layer), "experts": len(g), "tokens": int(g.tokens.min()) if "tokens" in g else None,
                    "token_budgets": budgets,
                    "spearman": spearman(g.load_share, g.delta), "spearman_p": spearman_p(g.load_share, g.delta),
                    "pearson": pearson(g.load_share, g.delta),
                    "top_expert": None if top is None else int(top.expert),
                    "top_delta": None if top is None else float(top.delta),
                    "top_load_share": None if top is None else float(top.load_share)})
    return pd.DataFrame(out, columns=["layer", "experts", "tokens", "token_budgets", "spearman", "spearman_p",
                                      "pearson", "top_expert", "top_delta", "top_load_share"])


def correlation_by_domain(df_or_run) -> pd.DataFrame:
    """load_vs_importance for every domain of the table (`all` first): columns domain, layer, ...."""
    df = importance_table(df_or_run)
    doms = sorted(df.domain.unique(), key=lambda d: (d != "all", d))
    return pd.concat([load_vs_importance(df, d).assign(domain=d) for d in doms], ignore_index=True)[
        ["domain", "layer", "experts", "tokens", "token_budgets", "spearman", "spearman_p", "pearson", "top_expert",
         "top_delta", "top_load_share"]]


def rank_disagreement(df_or_run, layer: int | None = None, top: int = 5, domain: str = "all") -> pd.DataFrame:
    """Per layer (or only `layer`), the `top` experts whose load rank and causal rank differ most
    (largest |rank_gap|; ties: lower expert id first): layer, expert, load_share, delta, load_rank,
    causal_rank, rank_gap."""
    from analyses.metrics._common import layer_number, whole_count

    # top=2.5, '3' or True were pandas' and Python's TypeErrors
    top = whole_count(top, "top", why=" (experts listed per layer)", error=ImportanceError)
    # layer='1' was "layer 1: not in the table; layers are [1]", and True taken for layer 1 (a tour)
    layer = None if layer is None else layer_number(layer, error=ImportanceError)
    df = _domain_rows(importance_table(df_or_run), domain)
    if layer is not None:
        if layer not in set(df.layer):
            raise ImportanceError(f"layer {layer}: not in the table; layers are "  # ints: numpy's read [np.int16(2)]
                                  f"{sorted(int(x) for x in df.layer.unique())}")
        df = df[df.layer == layer]
    parts = []
    for _, g in df.groupby("layer", sort=True):
        g = g[["layer", "expert", "load_share", "delta"]].copy()
        g["load_rank"] = g.load_share.rank(ascending=False)
        g["causal_rank"] = g.delta.rank(ascending=False)
        g["rank_gap"] = g.load_rank - g.causal_rank
        g = g.assign(_abs=g.rank_gap.abs()).sort_values(["_abs", "expert"], ascending=[False, True], kind="stable")
        parts.append(g.drop(columns="_abs").head(top))
    cols = ["layer", "expert", "load_share", "delta", "load_rank", "causal_rank", "rank_gap"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
