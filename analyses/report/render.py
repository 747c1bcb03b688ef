"""The report's sections: computed from a run (`compute`), summarised in sentences, drawn as plotly
figures, printed as tables, written as one HTML file and as Markdown findings (usage: the package
docstring)."""


from __future__ import annotations

import datetime as dt
import html
import os
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import data as rd
from . import research, spec
from .research_model import job_opts
from analyses.notebook_utils import DEFAULT_RUN
from probe.run import one_window_cap
from probe.schema import layer_label
from probe.writer import replacing

ONE_DOMAIN = ("the run has one domain ({}): record a corpus with two or more (a sub-folder or a `domain` field "
              "each; with --max-tokens the default --order domains takes tokens from every domain).")
ONE_DOMAIN_IMPORT = ("the run is imported serving traffic, one stream ({}): domains are compared in a run recorded "
                     "from a corpus of two or more (`dsv3-probe record`).")
NO_PAIRS = ("every window holds one token (a record with --max-tokens 1, or documents of one token), so no token "
            "has a neighbour to share an expert with")
SECTIONS = ("Summary", "Load balance", "Domain specialisation", "Loss vs masked experts",
            "Per-domain ablation", "Consecutive-token repetition", "MTP agreement", spec.SECTION,
            "Latent KV effective rank", *research.RESEARCH_SECTIONS)


class ReportError(ValueError):
    """A run the report cannot use (one line)."""


def fmt(x, digits: int = 4) -> str:
    if x is pd.NA:  # a nullable integer column's missing value, as a float's NaN reads
        return "nan"
    if isinstance(x, (float, np.floating)):
        return "nan" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def md_table(df: pd.DataFrame, index: bool = False, digits: int = 4) -> str:
    """A Markdown table of `df` (no extra dependency)."""
    d = df.reset_index() if index else df
    head = "| " + " | ".join(map(str, d.columns)) + " |"
    sep = "|" + "|".join("---" for _ in d.columns) + "|"
    rows = ["| " + " | ".join(_cell(fmt(v, digits)) for v in r) + " |" for r in d.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def _cell(text: str) -> str:
    """A Markdown table cell: line breaks shown as ⏎, backslashes and pipes escaped (generated text holds
    them all; Markdown read a token text's `\\\\x8a`, a backslash of its own, as the escape `\\x8a`)."""
    return text.replace("\r", "").replace("\n", "⏎").replace("\\", "\\\\").replace("|", "\\|")


# --------------------------------------------------------------------------------- compute
def check_run(path: Path):
    """The run at `path` (a `probe.Run`), refused unless it holds expert_load rows, which every section reads."""
    import probe

    if not path.exists():
        raise ReportError(f"{path}: no such run directory")
    if not (path / "run.json").exists():
        raise ReportError(f"{path}: not a run directory (no run.json)")
    run = probe.open_run(path)
    if "expert_load" in run.lost_tables:  # deleted, not unrecorded: "empty run ... record it first" misled
        lost = research.lost_words(run, ["expert_load"], "it")
        raise ReportError(f"{path}: run.json lists expert_load but the run has {lost}: every section reads it; "
                          "record the run again")
    if not run.files("expert_load") or run.sql("select count(*) from expert_load").fetchall()[0][0] == 0:
        if made_by := _made_by_another_command(run):  # not empty, and record refuses its folder (a tour)
            into = f"; {spec.INTO_A_RECORD}" if run.info.get("kind") == "spec" else ""
            raise ReportError(f"{path}: {made_by}, with no expert_load, which every section reads: the report is "
                              f"of a run that `dsv3-probe record` made (pass one; the dashboard shows this one{into})")
        raise ReportError(f"{path}: empty run: no expert_load rows (status {run.status!r}); record it first")
    return run


def _made_by_another_command(run) -> str | None:
    """What a run without expert_load holds where a command other than record made it (a spec run, an
    ablate/importance/steer --out run): "a run made by CMD (it holds T1, T2)"; None otherwise."""
    from probe.run import MADE_BY

    kind = run.info.get("kind")
    if kind not in MADE_BY:
        return None
    held = run.tables
    return f"a run made by {MADE_BY[kind]}" + (f" (it holds {', '.join(held)})" if held else "")


def run_notes(run, ns) -> list[str]:
    """What the report says before it starts about a run it cannot treat as a whole recorded run;
    for an import (SGLang: loads, no model or text) it also turns the model's sections off."""
    notes = []
    if run.info.get("kind") == "import" and not ns.skip_ablation:
        ns.skip_ablation = True
        ns.skip_reason = "an import has no checkpoint or corpus to run the model on"
        notes.append(f"{run.path} is an import ({(run.info.get('source') or {}).get('name', '?')}): it has no "
                     "checkpoint or corpus, so the sections that run the model (masking, importance, steering) "
                     "are left out")
    status = run.status  # re-reads run.json: "interrupted" for a killed record, whose run.json says running
    if run.info.get("status") == "running" and not ns.skip_ablation:
        _check_model_sections_can_run(run)
    if status in ("running", "interrupted"):
        killed = (" (its job was killed: run.json still says running; continue it with --resume)"
                  if status == "interrupted" and run.info.get("status") == "running" else "")
        notes.append(f"{run.path} is {status!r}{killed}, not complete: the report covers the tokens recorded so far")
    if lost := run.lost_tables:  # they read as empty, and the sections were "not recorded" (a review)
        notes.append(f"{run.path}: run.json lists {', '.join(lost)} but the run has "
                     f"{research.lost_words(run, lost, 'them' if len(lost) > 1 else 'it')}: the sections that read "
                     f"{'them' if len(lost) > 1 else 'it'} are left out; record the run again for a whole report")
    return notes


def _check_model_sections_can_run(run) -> None:
    """The model sections (ablate, importance, steer) refuse a run still marked running; refused here,
    before the note that the report covers the tokens so far (which the error then contradicted), with
    the way to a report of those tokens as well as the way to finish the run."""
    from analyses.ablate.inputs import check_finished

    try:
        check_finished(run.path, run.info, ReportError)
    except ReportError as e:
        raise ReportError(f"{e}; or pass --skip-ablation for a report of the tokens recorded so far, without the "
                          "sections that run the model") from None


def compute(run_dir: Path, ns, writer: bool = True) -> dict:
    """Every section's numbers: DataFrames and the sentences of the summary, from the run.

    writer=False, on every rank of a torchrun launch but the one that writes the report: only the
    sections that run the model (ablations, importance, steering), which all ranks run together, and
    the specialisation steering picks its experts from; not the sections computed from the run's
    tables alone (each a scan of every routed token, some with scikit-learn fits). The model sections
    come first, so that a table section failing on the writer cannot leave the other ranks waiting
    for it in a collective."""
    import probe

    run = probe.open_run(run_dir)
    out: dict = {"run": run, "label": rd.run_label(run),
                 # why the sections that run the model are missing, in their place in the report
                 "skip_reason": getattr(ns, "skip_reason", None) or ("--skip-ablation" if ns.skip_ablation else
                                                                     "--importance-tokens 0")}
    out["specialisation"], out["lift"] = rd.specialisation(run)
    out["sweep"] = None
    if not ns.skip_ablation:
        t = time.time()
        out["sweep"] = rd.ablation_sweep(run, max_tokens=ns.max_tokens, fractions=ns.fractions,
                                         seeds=tuple(range(ns.seeds)), domain_top=ns.domain_top,
                                         batch_size=ns.batch_size, progress=ns.progress, rank_by=ns.rank_by,
                                         compare_run_ranking=ns.rank_by == "eval",
                                         model_opts=job_opts(ns))
        out["ablation_seconds"] = time.time() - t
    research.compute_model(run, ns, out)
    if writer:
        tables = set(run.tables)
        out["lost_tables"] = run.lost_tables  # run_notes said so; the sections' placeholders say so too
        out["tokens"] = run.sql("select domain, count(*)::bigint as tokens from tokens group by 1 order by 1").df() \
            if "tokens" in tables else None
        out["balance"] = rd.balance(run)
        out["relative_load"] = rd.relative_loads(run)
        out["domains"] = [d for (d,) in run.sql("select distinct domain from expert_load order by 1").fetchall()]
        out["repetition"] = rd.repetition(run) if "routing" in tables else None
        rows = with_rows(run, tables)
        out["mtp"] = rd.mtp_by_domain(run) if "mtp" in rows else None
        out["spec"] = rd.spec_decoding(run) if "spec_decode" in rows else None
        out["kv"] = rd.latent_rank(run) if "kv_stats" in rows else None
        research.compute_tables(run, ns, out)
        out["summary"] = summary(out)
    return out


OPTIONAL = ("mtp", "spec_decode", "kv_stats")  # a record's optional tables (--no-mtp, --kv-stats) and spec's


def with_rows(run, tables: set[str]) -> set[str]:
    """The `OPTIONAL` tables of `tables` (the run's) that hold a row. One whose part files hold none (a stray or
    hand-made file) gives its section's placeholder, as the table without part files does: its section's
    computation (`need_rows`) failed the whole report, after the ablation sweep had run (a review)."""
    return {t for t in OPTIONAL if t in tables and run.sql(f"select count(*) from {t}").fetchall()[0][0]}


def _rowless(r: dict, table: str) -> str | None:
    """The placeholder of a section whose `table` has part files but no row (`with_rows`); None otherwise."""
    run = r.get("run")
    if run is None or r.get("lost_tables") or not run.files(table):
        return None
    return f"(not measured: the run's {table} table has part files but no row: a stray or hand-made file?)"


def _sweep_summary(sw) -> list[str]:
    """The masking sweep's sentences: top-used against random experts per fraction, per domain."""
    # fractions measured both ways (a refused one, NaN, is no comparison: it counted in "of N")
    c = sw.curve[(sw.curve.masked > 0) & np.isfinite(sw.curve.top_delta) & np.isfinite(sw.curve.random_delta)]
    how = ("ranked by load on the evaluated tokens" if sw.options["rank_by"] == "eval"
           else "ranked by load over the whole run")
    head = (f"Masking the most-used experts ({how}; reroute, {research.counted(sw.options['tokens'], 'token')}, "
            f"at most {sw.options['domain_tokens']} per domain): ")
    # measured, but a loss is NaN or inf: the model's own output, which the job keeps (and warned of)
    skipped = getattr(sw, "skipped", None) or {}
    refused = sw.curve.masked.map(lambda n: f"top{n}" in skipped) | (sw.curve.random_seeds == 0)
    nan = sw.curve[(sw.curve.masked > 0) & ~refused & ~sw.curve.index.isin(c.index)]
    s = _curve_sentences(sw, c, head) if len(c) else [] if len(nan) else [
        head + "not measured (the routing guard refused every selection; see the refused selections)."]
    if len(nan):
        E = sw.options["n_experts"]
        at = ", ".join(f"{int(n)}/{E}" for n in nan.masked)
        s.append((f"{head}not" if not len(c) else "Not") + f" compared at {at}: a loss there is NaN or infinite, "
                 "the model's own output (the ablate job warned of it).")
    ds = sw.domain_summary.dropna(subset=["own", "on_others"])
    n_own = int(ds.own_above_on_others_mean.astype(bool).sum())
    n_row, of_row = int((ds.own > ds.by_others).sum()), int(ds.by_others.notna().sum())  # NaN: a NaN loss
    rows = getattr(sw, "rows", None)
    nan_loss = rows is not None and len(rows) > 0 and bool(  # the model's own NaN, kept by the job
        rows[rows.ablation.str.startswith(f"own{sw.options['domain_top']}-")].delta.isna().any())
    nan_said = " or a loss there is NaN or infinite, the model's own output (the ablate job warned of it)"
    if not len(ds) and len(sw.domain_summary) >= 2 and nan_loss:
        s.append(f"Per-domain ablation: not measured (a selection was refused{nan_said}).")
    elif not len(ds) and len(sw.domain_summary) >= 2:
        s.append("Per-domain ablation: not measured (the routing guard refused every domain's selection; see "
                 "the refused selections).")
    elif not len(ds):
        s.append("Per-domain ablation: not measured (it compares a domain's own experts with the others', "
                 "and the run has fewer than two domains).")
    else:
        s.append(f"Per-domain ablation (each domain's top {sw.options['domain_top']} experts per layer by its "
                 "load over the whole run; reroute): a domain's "
                 f"own experts hurt it more than they hurt the other domains (mean) for {n_own} of {len(ds)} "
                 f"domains, and more than the other domains' experts hurt it (mean) for {n_row} of {of_row}; "
                 "own deltas "
                 + ", ".join(f"{x.domain} {x.own:+.4f} (on others {x.on_others:+.4f})" for x in ds.itertuples())
                 + "." + (f" Left out: {len(sw.domain_summary) - len(ds)} domain(s) where a selection was refused"
                          f"{nan_said}." if nan_loss and len(ds) < len(sw.domain_summary) else ""))
    return s


def _curve_sentences(sw, c: pd.DataFrame, head: str) -> list[str]:
    """The loss deltas of the fractions measured both ways (`c`, not empty): top-used against random,
    and the top-used ranked over the whole run where the sweep measured them."""
    s = [head + "loss delta " + ", ".join(
        f"{int(x.masked)}/{sw.options['n_experts']} -> {x.top_delta:+.4f} (random {x.random_delta:+.4f}"
        + (f" ± {x.random_delta_std:.4f}, {int(x.random_seeds)} seeds)" if np.isfinite(x.random_delta_std)
           else f", {int(x.random_seeds)} seed)") for x in c.itertuples())
        + f"; top-used hurts more than random at {int((c.top_delta > c.random_delta).sum())} of {len(c)} "
        "fractions."]
    if "run_top_delta" in c:
        s.append("The same masks ranked by load over the whole run instead (its domain mix differs from the "
                 "balanced sample): loss delta " + ", ".join(
                     f"{int(x.masked)}/{sw.options['n_experts']} -> {x.run_top_delta:+.4f}" for x in c.itertuples())
                 + f"; more than random at {int((c.run_top_delta > c.random_delta).sum())} of {len(c)} fractions.")
    return s


def summary(r: dict) -> list[str]:
    """One sentence per finding, written from the computed values."""
    s = []
    b = r["balance"]
    s.append("Load balance: MaxVio_global per layer " + ", ".join(
        f"L{int(x.layer)} {x.maxvio_global:.3f}" for x in b.itertuples()) + "; balancedness (mean/max) "
        + ", ".join(f"L{int(x.layer)} {x.balancedness:.3f}" for x in b.itertuples()) + ".")
    sp = r["specialisation"]
    if len(r["domains"]) < 2:
        s.append(f"Domain specialisation: not measured, {_one_domain(r)}")
    else:
        top = sp.loc[sp.max_lift.fillna(-np.inf).idxmax()]
        s.append("Domain specialisation: I(domain; expert)/H(domain) per layer " + ", ".join(
            f"L{int(x.layer)} {x.domain_nmi:.3f}" for x in sp.itertuples()) + f"; largest lift {top.max_lift:.2f} "
            f"({top.max_lift_domain}, {layer_label(top.layer)}, expert {int(top.max_lift_expert)}).")
    if r["sweep"] is not None:
        s += _sweep_summary(r["sweep"])
    rep = r["repetition"]
    if rep is not None and not rep.pairs.any():
        s.append(f"Consecutive tokens with the same first-choice expert: not measured ({NO_PAIRS}).")
    elif rep is not None:
        s.append("Consecutive tokens with the same first-choice expert: " + ", ".join(
            f"L{int(x.layer)} {x.same_top1:.3f} (uniform {x.baseline_top1_uniform:.3f}, load-matched "
            f"{x.baseline_top1_load:.3f})" for x in rep.itertuples()) + ".")
    m = r["mtp"]
    if m is not None:
        s.append("Teacher-forced MTP agreement: " + ", ".join(
            f"{x.domain} {x.agreement:.3f}" for x in m.itertuples()) + ".")
    if r.get("spec") is not None:
        s.append(spec.sentence(r["spec"], r["domains"]))
    kv = r["kv"]
    if kv is not None and (few := kv_too_few(kv)):
        s.append(f"Latent c_kv effective rank: not measured ({few}).")
    elif kv is not None:
        s.append("Latent c_kv effective rank: " + ", ".join(
            (f"L{int(x.layer)} {x.effective_rank:.1f}/{int(x.latent_dim)} (99% energy in {int(x.energy99)})"
             if x.energy99 == x.energy99 else f"L{int(x.layer)} none (non-finite latents)")
            for x in kv.itertuples()) + ".")
    return s + research.summary(r)


# --------------------------------------------------------------------------------- figures
def figures(r: dict) -> dict[str, list]:
    """section -> [(title, plotly figure or None, table DataFrame, show index)]."""
    out: dict[str, list] = {s: [] for s in SECTIONS}
    several = len(r["domains"]) >= 2
    out["Load balance"] += _balance_figures(r["balance"], r["relative_load"])
    if several:
        out["Domain specialisation"] += _specialisation_figures(r["specialisation"], r["lift"])
    if r["sweep"] is not None:
        out["Loss vs masked experts"] += _sweep_figures(r["sweep"])
        if several:
            out["Per-domain ablation"] += _domain_ablation_figures(r["sweep"])
    if r["repetition"] is not None:
        out["Consecutive-token repetition"] += _repetition_figures(r["repetition"])
    if r["mtp"] is not None:
        out["MTP agreement"] += _mtp_figures(r["mtp"])
    if r.get("spec") is not None:
        out[spec.SECTION] += spec.figures(r["spec"], r["domains"])
    if r["kv"] is not None:
        out["Latent KV effective rank"] += _kv_figures(r["kv"])
    return out | research.figures(r)


def _heat(df: pd.DataFrame, title: str, zmid=None, colorscale: str = "Viridis", x: str = "expert"):
    """A heatmap of `df` (columns along x, index down y), its colour bar titled `title`."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=df.to_numpy(dtype=float), x=[str(c) for c in df.columns],
                               y=[str(i) for i in df.index], zmid=zmid, colorscale=colorscale,
                               colorbar={"title": title}))
    return fig.update_layout(xaxis_title=x, height=180 + 28 * len(df), margin={"t": 40})


def _layer_bars(df: pd.DataFrame, series):
    """Grouped bars per layer ("layer <n>", `layer_label`): one bar series per (legend name, column of df)."""
    import plotly.graph_objects as go

    x = [layer_label(v) for v in df.layer]
    return go.Figure([go.Bar(name=name, x=x, y=df[col]) for name, col in series]).update_layout(barmode="group")


def _balance_figures(b: pd.DataFrame, rl: pd.DataFrame) -> list:
    cols = ["layer", "maxvio_global", "maxvio_batch_mean", "balancedness", "cv", "normalised_entropy", "gini",
            "max_relative_load", "min_relative_load"]
    fig = _layer_bars(b, [(c, c) for c in ("maxvio_global", "balancedness", "normalised_entropy", "gini")])
    return [("Balance metrics per MoE layer (balance_table)", fig, b[[c for c in cols if c in b]], False),
            ("Relative expert load (load / mean load) per layer",
             _heat(rl, "relative", zmid=1.0, colorscale="RdBu_r"), rl.round(3), True)]


def _specialisation_figures(sp: pd.DataFrame, lift: dict) -> list:
    fig = _layer_bars(sp, [("domain_nmi", "domain_nmi"), ("nmi", "nmi")]).update_layout(yaxis_title="nats / nats")
    out = [("I(domain; expert) / H(domain) and NMI per layer (specialisation_table)", fig, sp, False)]
    for layer, li in lift.items():
        out.append((f"Lift P(domain | expert) / P(domain), {layer_label(layer)}",
                     _heat(np.log2(li.astype(float).where(li > 0)), "log2 lift", zmid=0.0, colorscale="RdBu_r"),
                     li.round(2), True))
    return out


def _sweep_figures(sw) -> list:
    """The loss delta against the fraction of experts masked (top-used and random), and the refusals."""
    import plotly.graph_objects as go

    c = sw.curve
    extra = [go.Scatter(name="top-used, ranked over the whole run", x=c.fraction, y=c.run_top_delta,
                        mode="lines+markers", line={"dash": "dot"})] if "run_top_delta" in c else []
    seeds = research.counted(len(sw.options["seeds"]), "seed")
    fig = go.Figure(extra + [
                     go.Scatter(name="top-used experts masked", x=c.fraction, y=c.top_delta, mode="lines+markers"),
                     go.Scatter(name=f"random experts masked (mean of {seeds})",
                                x=c.fraction, y=c.random_delta, mode="lines+markers",
                                error_y={"type": "data", "array": c.random_delta_std})])
    fig.update_layout(xaxis_title="fraction of routed experts masked in every MoE layer",
                      yaxis_title="loss - baseline (nats)")
    out = [("Loss delta vs fraction masked (reroute)", fig, c, False)]
    if sw.skipped:
        out.append(("Selections refused by the routing guard (not run)", None,
                    pd.DataFrame({"ablation": list(sw.skipped), "reason": list(sw.skipped.values())}), False))
    return out


def _domain_ablation_figures(sw) -> list:
    title = (f"Loss delta (rows: evaluated domain; columns: domain whose top {sw.options['domain_top']} experts "
             "per layer are masked)")
    return [(title, _heat(sw.domains, "delta", zmid=0.0, colorscale="RdBu_r", x="masked domain"), sw.domains, True),
            ("Own vs other domains' top experts", None, sw.domain_summary, False)]


def _repetition_figures(rep: pd.DataFrame) -> list:
    if not rep.pairs.any():  # every measured share is 0 / 0: the chart drew the baselines beside nothing
        return [(f"No adjacent tokens: {NO_PAIRS}", None, rep[["layer", "tokens", "pairs"]], False)]
    fig = _layer_bars(rep, [("same top-1 (measured)", "same_top1"), ("uniform 1/N", "baseline_top1_uniform"),
                            ("load-matched", "baseline_top1_load"), ("top-2 share one (measured)", "top2_any"),
                            ("top-2 uniform", "baseline_top2_any_uniform"), ("top-k share one (measured)", "topk_any"),
                            ("top-k uniform", "baseline_topk_any_uniform")])
    return [("Adjacent tokens routed alike vs random baselines (repetition_from_run)", fig, rep, False)]


def _mtp_figures(m: pd.DataFrame) -> list:
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(name="agreement", x=m.domain, y=m.agreement),
                     go.Bar(name="MTP accuracy on token i+2", x=m.domain, y=m.mtp_accuracy)])
    return [("Teacher-forced MTP agreement by domain", fig.update_layout(barmode="group"), m, False)]


def kv_too_few(kv: pd.DataFrame) -> str | None:
    """Why the latents give no rank (None when they do): a covariance of one token is zero, so its
    effective rank and energy components read 0, as if measured (record --max-tokens 1)."""
    n = int(kv.tokens.min()) if len(kv) else None
    return (f"a covariance needs two tokens or more, and the run recorded {n} token{'' if n == 1 else 's'} a layer; "
            "record with a larger --max-tokens" if n is not None and n < 2 else None)


def _kv_figures(kv: pd.DataFrame) -> list:
    import plotly.graph_objects as go

    if few := kv_too_few(kv):  # no chart or column shows the zeros of a zero covariance as a result
        return [(f"No effective rank: {few}", None, kv[["layer", "tokens", "latent_dim"]], False)]
    x = [f"L{v}" for v in kv.layer]
    fig = go.Figure([go.Bar(name="effective rank", x=x, y=kv.effective_rank)] +
                    [go.Scatter(name=f"{p}% energy", x=x, y=kv[f"energy{p}"], mode="lines+markers")
                     for p in (90, 95, 99)])
    title = f"c_kv effective rank and components for 90/95/99% energy (of {int(kv.latent_dim.max())})"
    # counts of components as integers: float since latent_rank's NaN for a layer of under two tokens, they
    # read 29.0000 in the findings' table
    counts = kv.assign(**{f"energy{p}": kv[f"energy{p}"].astype("Int64") for p in (90, 95, 99)})
    return [(title, fig, counts, False)]


# ----------------------------------------------------------------------------------- output
def print_text(r: dict, figs: dict) -> None:
    print(f"# Findings report: {r['run'].path} — checkpoint {r['label']}")
    if r["tokens"] is not None:
        print(r["tokens"].to_string(index=False))
    for sec in SECTIONS:
        print(f"\n## {sec}")
        if sec == "Summary":
            for line in r["summary"]:
                print(f"- {line}")
            continue
        if not figs[sec]:
            print(_missing(sec, r))
        for title, _, table, index in figs[sec]:
            print(f"\n### {title}")
            if table.shape[1] > 12 and all(isinstance(c, (int, np.integer)) for c in table.columns):
                _print_expert_table(table)  # layer/domain x expert tables
            else:
                print(table.to_string(index=index, float_format=lambda x: f"{x:.4f}"))


# An expert table of more experts prints the standouts of each row on stdout, the HTML's heatmap every value: a
# run of DeepSeek-V3's shape (256 experts, 58 MoE layers) printed 15,000 lines of lift tables
WIDE_EXPERTS, STANDOUTS = 64, 5


def _print_expert_table(table: pd.DataFrame) -> None:
    """A [layers or domains, experts] table on stdout: one row per expert, or, past WIDE_EXPERTS experts, each
    layer's or domain's STANDOUTS highest and lowest experts (ties: the lower expert id first)."""
    t = table.T.rename_axis("expert")
    if len(t) <= WIDE_EXPERTS:
        print("(transposed: one row per expert)")
        print(t.to_string(float_format=lambda x: f"{x:.2f}"))
        return
    by = table.index.name or "row"
    print(f"({len(t)} experts: the {STANDOUTS} highest and the {STANDOUTS} lowest of each {by}, as expert: value; "
          "the HTML report's heatmap holds every value)")

    def listed(col: pd.Series) -> str:
        return ", ".join(f"{e}: {v:.2f}" for e, v in col.items())

    rows = {}
    for c in t.columns:
        col = t[c].astype(float).dropna()
        rows[c] = {"highest": listed(col.sort_values(ascending=False, kind="stable").head(STANDOUTS)),
                   "lowest": listed(col.sort_values(kind="stable").head(STANDOUTS))}
    print(pd.DataFrame.from_dict(rows, orient="index").rename_axis(by).to_string())


def _one_domain(r: dict) -> str:
    """Why a run of fewer than two domains has no domain sections, and what would have them: a
    recorded run's corpus with more domains; an import has none to give."""
    info = r["run"].info
    text = ONE_DOMAIN_IMPORT if info.get("kind") == "import" else ONE_DOMAIN
    if why := one_window_cap(info):  # "record a corpus with two or more" told what it had done (a tour)
        text = f"the run has one domain ({{}}): {why}."
    return text.format(", ".join(r["domains"]) or "none")


def _missing(sec: str, r: dict) -> str:
    if sec in ("Domain specialisation", "Per-domain ablation") and len(r["domains"]) < 2:
        return f"(not measured: {_one_domain(r)})"
    if sec in ("Loss vs masked experts", "Per-domain ablation") and r["sweep"] is None:
        return f"(skipped: {r.get('skip_reason') or '--skip-ablation'})"
    if sec in research.RESEARCH_SECTIONS:
        return research.missing(sec, r)
    if sec == spec.SECTION:
        return _rowless(r, "spec_decode") or spec.missing(r)
    run = r["run"]
    if sec == "MTP agreement" and run.status == "complete" and (Path(run.path) / "mtp").is_dir() \
            and not r.get("lost_tables"):  # recorded without a row: "not recorded" read as --no-mtp (a tour)
        return ("(not measured: the run recorded the mtp table, but none of its windows has a position with two more "
                "tokens after it, which the MTP head's guess of token i+2 is scored against; record longer windows "
                "or a larger --max-tokens)")
    table = {"Consecutive-token repetition": "routing", "MTP agreement": "mtp"}.get(sec, "kv_stats")
    return _rowless(r, table) or research.not_recorded(r, research.unrecorded_why(run, table))


def write_html(r: dict, figs: dict, path: Path, argv: list[str]) -> Path:
    from plotly.offline import get_plotlyjs

    now = dt.datetime.now(dt.timezone.utc)
    parts = [(f"<h1>Findings report</h1><p>Run <code>{html.escape(str(r['run'].path))}</code>, checkpoint "
              f"<code>{html.escape(r['label'])}</code>; generated {now:%Y-%m-%d %H:%M UTC} by "
              f"<code>{html.escape(command(argv))}</code>.</p>")]
    if r["tokens"] is not None:
        parts.append("<p>Tokens per domain in the run:</p>" + r["tokens"].to_html(index=False))
    for i, sec in enumerate(SECTIONS):
        parts.append(f'<h2 id="s{i}">{html.escape(sec)}</h2>')
        if sec == "Summary":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in r["summary"]) + "</ul>")
            continue
        if not figs[sec]:
            parts.append(f"<p>{html.escape(_missing(sec, r))}</p>")
        for title, fig, table, index in figs[sec]:
            parts.append(f"<h3>{html.escape(title)}</h3>")
            if fig is not None:
                parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
            parts.append("<details><summary>table</summary>" +
                         table.to_html(index=index, float_format=lambda x: f"{x:.4f}", na_rep="nan") + "</details>")
    toc = "<nav>" + " · ".join(f'<a href="#s{i}">{html.escape(s)}</a>' for i, s in enumerate(SECTIONS)) + "</nav>"
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>DeepSeek-V3 probe findings</title>"
           "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:"
           "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
           f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>{toc}{"".join(parts)}</body></html>')
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path


def write_findings(r: dict, figs: dict, path: Path, argv: list[str]) -> Path:
    """The measured numbers as Markdown (date, exact command, checkpoint), written atomically."""
    ck = Path(str(r["run"].info.get("checkpoint", {}).get("path", "")))
    bundled = ck.resolve() == (DEFAULT_RUN.parents[1] / "data" / "model").resolve()
    label = r["label"].replace(str(DEFAULT_RUN.parents[1]) + os.sep, "")
    lines = ["# Findings on " + ("the bundled model" if bundled else f"checkpoint {label}"), "",
             (f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `{command(argv)}` "
              f"(run `{shown(r['run'].path)}`, checkpoint `{label}`). Every number below is computed by that "
              "command; rerun it to refresh this file."), "", "## Summary", ""]
    lines += [f"- {x}" for x in r["summary"]]
    keep = {"Load balance": [0], "Domain specialisation": [0], "Loss vs masked experts": None,
            "Per-domain ablation": None, "Consecutive-token repetition": None, "MTP agreement": None,
            spec.SECTION: None, "Latent KV effective rank": None} | dict.fromkeys(research.RESEARCH_SECTIONS)
    for sec, which in keep.items():
        items = figs[sec] if which is None else [figs[sec][i] for i in which if i < len(figs[sec])]
        lines += ["", f"## {sec}"]
        if not items:  # said in its place, as the HTML does: a missing heading read as nothing to say (a tour)
            lines += ["", _missing(sec, r)]
        for title, _, table, index in items:
            lines += ["", f"{title}:", "", md_table(table, index=index)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shown(path) -> str:
    """A path relative to the repository when inside it (what goes into committed files)."""
    p = Path(path).resolve()
    root = DEFAULT_RUN.parents[1]
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def command(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "analyses.report", *argv])
