"""The numbers behind the findings report (`analyses.report`) and the notebooks: each function takes
a run (a `probe.Run` or its directory) and returns DataFrames computed with `analyses.metrics` and
the ablation API (`analyses.ablate`); nothing here defines a metric of its own.

    from analyses.report import data as rd
    rd.balance(run); rd.specialisation(run); rd.repetition(run); rd.mtp_by_domain(run); rd.latent_rank(run)
    rd.spec_decoding(run)                                # a run `dsv3-probe spec` added its tables to
    sweep = rd.ablation_sweep(run, max_tokens=20000)     # loss vs masked fraction, per-domain ablation
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.metrics import (MetricsError, balance_table, layer_loads_from_run, lift_from_run, relative_load,
                              repetition_from_run, specialisation_table)
from analyses.metrics._common import as_run, need_rows
from analyses.metrics.speculative import (spec_bucket_size, spec_by_domain_from_run, spec_by_position_from_run,
                                          spec_totals)
from probe.schema import layer_label

FRACTIONS = (1 / 16, 1 / 8, 1 / 4)
SEEDS = (0, 1, 2, 3, 4)


# ------------------------------------------------------------------------ routing statistics
def balance(run) -> pd.DataFrame:
    """`balance_table`: one row per MoE layer (MaxVio, balancedness, CV, entropy, Gini, ...)."""
    return balance_table(as_run(run))


def relative_loads(run) -> pd.DataFrame:
    """[layer x expert] `relative_load` (load / mean load; 1 = balanced) of the whole run."""
    loads = layer_loads_from_run(as_run(run))
    return pd.DataFrame({layer_label(k): relative_load(v) for k, v in loads.items()}).T.rename_axis("layer")


def specialisation(run) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """(`specialisation_table` per layer: MI, NMI, max lift; {layer: [domain x expert] `lift`})."""
    run = as_run(run)
    table = specialisation_table(run)
    lifts = {}
    for layer in table.layer:
        domains, li = lift_from_run(run, int(layer))
        lifts[int(layer)] = pd.DataFrame(li, index=pd.Index(domains, name="domain"))
    return table, lifts


def repetition(run) -> pd.DataFrame:
    """`repetition_from_run`, with the measured / random-baseline ratios added."""
    df = repetition_from_run(as_run(run))
    df["top1_vs_uniform"] = df.same_top1 / df.baseline_top1_uniform
    df["top1_vs_load"] = df.same_top1 / df.baseline_top1_load
    df["top2_any_vs_uniform"] = df.top2_any / df.baseline_top2_any_uniform
    df["topk_any_vs_uniform"] = df.topk_any / df.baseline_topk_any_uniform
    return df


def mtp_by_domain(run) -> pd.DataFrame:
    """Teacher-forced MTP agreement (metrics.md: share of positions where the MTP module's top-1
    for token i+2 equals the main model's top-1 at i+1; the `mtp` table's `agree`) per domain and
    overall, with the MTP module's own accuracy on the real token i+2 and its mean loss (nats)."""
    run = as_run(run)
    need_rows(run, "mtp")
    q = """select {key} as domain, count(*)::bigint as positions, avg(agree::int) as agreement,
                  avg(case when target is null then null else (mtp_top1 = target)::int end) as mtp_accuracy,
                  avg(mtp_loss) as mtp_loss
           from mtp {group}"""
    per = run.sql(q.format(key="domain", group="group by domain order by domain")).df()
    allr = run.sql(q.format(key="'all'", group="")).df()
    return pd.concat([per, allr], ignore_index=True)


def spec_decoding(run) -> dict:
    """Speculative decoding with MTP drafts (`dsv3-probe spec`'s tables), the figures of the dashboard's MTP
    page through its functions (`analyses.metrics.speculative`): `by_domain` (prompts, drafts proposed and
    accepted, acceptance, mean_length, tokens_per_forward), `totals` (`spec_totals`: the whole run's, its
    acceptance None where no draft was proposed), `size` (generated positions a bucket, `spec_bucket_size`)
    and `by_position` (acceptance per domain and bucket; None without a draft, or without a spec_drafts row:
    a part file of none, stray or hand-made, failed the whole report in `need_rows`, as a table absent does not)."""
    run = as_run(run)
    by_domain = spec_by_domain_from_run(run)
    totals = spec_totals(by_domain)
    size = spec_bucket_size(run.info)
    drafts = "spec_drafts" in run.tables and run.sql("select count(*) from spec_drafts").fetchall()[0][0] > 0
    by_position = spec_by_position_from_run(run, size) if totals["proposed"] and drafts else None
    return {"by_domain": by_domain, "totals": totals, "size": size, "by_position": by_position}


def latent_rank(run) -> pd.DataFrame:
    """Per layer, from the `kv_stats` table: latent dim C, effective rank of the c_kv covariance
    (Roy & Vetterli, accumulated in float64 by the probe), components for 90/95/99% energy. A layer
    of fewer than two tokens has a zero covariance: its rank and components are NaN, not the 0.0
    and 0s the probe writes (they read as measured in the notebook's table; a tour)."""
    run = as_run(run)
    need_rows(run, "kv_stats")
    cols = ["layer", "tokens", "latent_dim", "effective_rank", "energy90", "energy95", "energy99"]
    df = run.df("kv_stats", columns=cols).sort_values("layer", ignore_index=True)
    measured = df.tokens >= 2
    for c in ("effective_rank", "energy90", "energy95", "energy99"):
        df[c] = df[c].astype(float).where(measured)
    df["rank_share"] = df.effective_rank / df.latent_dim
    return df


# ------------------------------------------------------------------------------ ablations
@dataclass
class Sweep:
    """An ablation sweep's results. `rows`: the `ablations` rows as written into the run; `curve`:
    one row per masked count (top-used vs random, all domains pooled); `domains`: [evaluated domain x
    masked domain] loss deltas; `domain_summary`: own vs other deltas per domain; `skipped`: selections
    the routing guard refused (name -> reason)."""
    rows: pd.DataFrame
    curve: pd.DataFrame
    domains: pd.DataFrame
    domain_summary: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def masked_counts(n_experts: int, fractions) -> list[int]:
    """0 plus f * E rounded half up for each fraction (distinct, sorted; at least 1 for f > 0). Not
    Python's round, which takes a half to the even number: 3/64 and 5/64 of 32 experts both masked 2,
    one point of the sweep where two were asked for. The product is rounded to 9 decimals first, so
    that a decimal fraction's half is one (0.145 x 100 is 14.499999999999998 in floats)."""
    out = {0}
    for f in fractions:
        if not 0 <= f <= 1:
            raise ValueError(f"fraction {f} out of range: expected 0..1 of the {n_experts} experts")
        out.add(max(1, math.floor(round(f * n_experts, 9) + 0.5)) if f > 0 else 0)
    return sorted(out)


RANK_BY = ("eval", "run")


def ablation_sweep(run, *, max_tokens: int | None = 20_000, fractions=FRACTIONS, seeds=SEEDS,
                   domain_top: int | None = None, batch_size: int | None = None, progress: bool = False,
                   balanced: bool = True, rank_by: str = "eval", compare_run_ranking: bool = False,
                   model_opts: dict | None = None) -> Sweep:
    """DeepSeekMoE-style masking on the run's checkpoint, through `analyses.ablate` (one or two
    calls, each with its baseline pass over the same tokens): for each count n = f * E (rounded half
    up, `masked_counts`), the n most-used experts of every MoE layer vs n random experts per layer for
    each seed (mode reroute); and, per domain, that domain's own top-`domain_top` experts (default E/8), ranked by
    the run's per-domain `expert_load` (a domain's own ranking does not depend on the domain mix).
    Evaluated on at most `max_tokens` tokens of the run's own windows (the corpus read as the run read
    it, up to the cap it was recorded with; the whole corpus where it had none), so the sweep's domains
    are the run's D domains, those of every other section: with `balanced`, the first max_tokens / D
    tokens of each (the API's `domain_tokens`), else the first max_tokens. (It took max_tokens / D of
    every corpus domain, and a code-only run's sweep evaluated prose too, a tour.)

    rank_by: "eval" ranks the top-n by their load on the evaluated tokens (the baseline pass; ranking
    and loss on the same distribution, as in DeepSeekMoE), "run" by the run's `expert_load` (the
    whole recorded corpus, whose domain mix may differ from the balanced sample). With
    `compare_run_ranking` (and rank_by "eval") the top-n masks ranked by the run's loads are also
    evaluated (curve column `run_top_delta`). A selection the routing guard refuses is left out and
    listed in `skipped`. The rows are also written into the run's `ablations` table. `model_opts`:
    how the model runs (`analyses.ablate.AblateOptions` fields dtype, gemm, device, model_parallel;
    under torchrun the ranks split into replicas of model_parallel ranks)."""
    from analyses.ablate import ALL, RouterShape
    from model import ModelArgs

    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by {rank_by!r}: choose {' or '.join(RANK_BY)}")
    run = as_run(run)
    need_rows(run, "expert_load")
    margs = run.info.get("model_args")
    if not margs:
        raise MetricsError(f"{run.path}: run.json has no model_args (not a recorded run)")
    shape = RouterShape.of(ModelArgs.from_dict(margs))
    E = shape.n_experts
    domains = sorted(r[0] for r in run.sql("select distinct domain from expert_load").fetchall())
    domain_top = domain_top if domain_top is not None else max(1, E // 8)
    if isinstance(domain_top, bool) or not 1 <= int(domain_top) <= E:
        raise ValueError(f"--domain-top {domain_top}: experts masked per layer in the per-domain ablation, "
                         f"1..{E} (the run's model routes over {E} experts a layer)")
    counts = masked_counts(E, fractions)

    wanted, by_run = _sweep_ablations(counts, seeds, domains, domain_top, compare_run_ranking and rank_by == "eval")
    per_domain = max(1, max_tokens // len(domains)) if balanced and max_tokens else None
    skipped: dict[str, str] = {}
    if rank_by == "run":
        rows = _ablate_skipping(run, wanted + by_run, max_tokens, per_domain, batch_size, progress, "run", skipped,
                                model_opts)
    else:
        rows = pd.concat([_ablate_skipping(run, x, max_tokens, per_domain, batch_size, progress, src, skipped,
                                           model_opts)
                          for x, src in ((wanted, "baseline"), (by_run, "run"))], ignore_index=True)
    curve = _curve(rows, counts, seeds, E)
    mat, summary = _domain_table(rows, domains, domain_top)
    return Sweep(rows, curve, mat, summary, skipped,
                 {"max_tokens": max_tokens, "fractions": list(fractions), "seeds": list(seeds),
                  "domain_top": domain_top, "n_experts": E, "moe_layers": shape.moe_layers, "rank_by": rank_by,
                  "domain_tokens": per_domain, "tokens": int(rows.loc[rows.domain == ALL, "tokens"].max())})


def _sweep_ablations(counts, seeds, domains, domain_top: int, run_ranked_top: bool) -> tuple[list, list]:
    """The sweep's ablations in two lists: the top-n and n random per seed for each count; and
    those always ranked by the run's loads: each domain's own top experts, and with
    `run_ranked_top` the top-n again."""
    from analyses.ablate import Ablation

    wanted: list[Ablation] = []
    for n in counts:
        wanted.append(Ablation(name=f"top{n}", top=n))
        if n:
            wanted += [Ablation(name=f"random{n}-s{s}", random=n, seed=s) for s in seeds]
    # a domain's own top experts come from the run's per-domain loads (they do not depend on the
    # corpus's domain mix, and the run saw more of each domain than the sample evaluated here)
    by_run = [Ablation(name=f"own{domain_top}-{d}", top=domain_top, domain=d) for d in domains]
    if run_ranked_top:
        by_run += [Ablation(name=f"run-top{n}", top=n) for n in counts if n]
    return wanted, by_run


def _ablate_skipping(run, ablations, max_tokens, per_domain, batch_size, progress, loads_from,
                     skipped: dict, model_opts: dict | None = None) -> pd.DataFrame:
    """`analyses.ablate.ablate` on the run, sampling within its own windows (`within_run`: ablate's
    --max-tokens alone takes every corpus domain); an ablation the routing guard refuses (it names itself
    in the error) is moved to `skipped` and the rest rerun."""
    import re

    from analyses.ablate import AblateOptions, ablate
    from analyses.ablate import AblationError

    ablations = list(ablations)
    while ablations:
        opts = AblateOptions(run=str(run.path), max_tokens=max_tokens, domain_tokens=per_domain, within_run=True,
                             batch_size=batch_size, loads_from=loads_from, progress=progress, **(model_opts or {}))
        try:
            return ablate(opts, ablations)[1]
        except AblationError as e:
            m = re.match(r"ablation '([^']+)'", str(e))
            if not m or m.group(1) not in {a.name for a in ablations}:
                raise
            skipped[m.group(1)] = str(e)
            ablations = [a for a in ablations if a.name != m.group(1)]
    raise MetricsError("every ablation was refused by the routing guard")


def _curve(rows: pd.DataFrame, counts, seeds, E: int) -> pd.DataFrame:
    pooled = rows[rows.domain == "all"].set_index("ablation")
    base = float(pooled.baseline_loss.iloc[0])
    out = []
    for n in counts:
        top = pooled.loss.get(f"top{n}", np.nan)
        # the seeds the routing guard did not refuse (those in the table), a NaN loss of the model's kept: it makes
        # the mean NaN, where dropping every non-finite one averaged it away
        rnd = np.array([pooled.loss[k] for k in (f"random{n}-s{s}" for s in seeds) if k in pooled.index] if n
                       else [top], dtype=float)
        out.append({"masked": n, "fraction": n / E, "baseline_loss": base, "top_loss": top,
                    "top_delta": top - base, "random_loss": rnd.mean() if len(rnd) else np.nan,
                    "random_delta": rnd.mean() - base if len(rnd) else np.nan,
                    # the sample std (ddof 1): with 2-5 seeds the population's understates the spread
                    "random_delta_std": rnd.std(ddof=1) if len(rnd) > 1 else np.nan,  # one seed: unmeasured
                    "random_seeds": len(rnd) if n else 0,
                    "top_minus_random": top - rnd.mean() if len(rnd) else np.nan})
        if any(str(x).startswith("run-top") for x in pooled.index):
            out[-1]["run_top_delta"] = pooled.loss.get(f"run-top{n}", top if n == 0 else np.nan) - base
    return pd.DataFrame(out)


def _domain_table(rows: pd.DataFrame, domains: list[str], n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """[evaluated domain x masked domain] deltas, and per domain: own = its own top experts' delta
    on itself; by_others = mean delta on it of the other domains' top experts (row, off-diagonal);
    on_others = mean delta its top experts cause on the other domains (column, off-diagonal).
    A cell with no row (a selection the ablation refused) is left out of those means; a row whose
    delta is NaN (the model's own NaN surprisal, which the ablate job keeps) makes them NaN, as it
    makes that row's loss, instead of a mean over the other cells alone."""
    index, columns = pd.Index(domains, name="evaluated"), pd.Index(domains, name="masked")
    mat = pd.DataFrame(np.nan, index=index, columns=columns)
    nan_row = pd.DataFrame(False, index=index, columns=columns)
    for m in domains:
        sub = rows[(rows.ablation == f"own{n}-{m}") & (rows.domain != "all")]
        for _, r in sub.iterrows():
            if r.domain in mat.index:
                mat.loc[r.domain, m] = r.delta
                nan_row.loc[r.domain, m] = bool(pd.isna(r.delta))

    def mean(cells: pd.Series, nan: pd.Series) -> float:
        return np.nan if nan.any() or not len(cells) else cells.mean()

    out = []
    for d in domains:
        others = [x for x in domains if x != d]
        own = mat.loc[d, d]
        by = mean(mat.loc[d, others], nan_row.loc[d, others])
        on = mean(mat.loc[others, d], nan_row.loc[others, d])
        out.append({"domain": d, "own": own, "by_others": by, "on_others": on,
                    "own_minus_by_others": own - by, "own_minus_on_others": own - on,
                    "own_above_on_others_mean": bool(own > on) if np.isfinite(own) and np.isfinite(on) else None})
    return mat, pd.DataFrame(out)


IMPORT_SOURCES = {"sglang": "SGLang"}  # run.json's source name of an import -> the engine's name


def run_label(run) -> str:
    """The run's checkpoint: its directory and a fingerprint of its weight files' contents (the
    probe's checkpoint fingerprint covers the layout only, not the weights). The fingerprint hashes
    each file's name, size and first and last MiB, so it reads little of a 671B checkpoint and stays
    the same in every clone (a file's time would be the checkout's). An import (a serving engine's
    dumps) has no checkpoint: "none (imported from SGLang)"."""
    import hashlib

    from model.checkpoint_files import CheckpointError, weight_files  # no torch: the label reads files only

    run = as_run(run)
    if run.info.get("kind") == "import":
        name = (run.info.get("source") or {}).get("name", "?")
        return f"none (imported from {IMPORT_SOURCES.get(name, name)})"
    ck = Path(str(run.info.get("checkpoint", {}).get("path", "?")))
    try:
        files = weight_files(ck) if ck.is_dir() else []
    except CheckpointError:  # a broken index: the directory alone labels the run
        files = []
    if not files:
        return str(ck)
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return f"{ck} (weights {h.hexdigest()[:12]})"
