"""The report's research sections (issue: questions no other MoE tool answers yet): causal vs
observed importance, expert paths, token-id dependence, run vs run, steering. Each has a compute
step (numbers into the report dict), summary sentences and figures, like the sections of render.py.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pandas as pd

from analyses import metrics as M
from analyses.metrics._common import counted, n_experts_of_run, unrecorded_why

RESEARCH_SECTIONS = ("Causal vs observed importance", "Expert paths", "Domain probes", "Token-id dependence",
                     "Run vs run", "Steering")


# --------------------------------------------------------------------------------- compute
def compute_tables(run, ns, out: dict) -> None:
    """Fill out["paths"], out["token_dependence"] and out["run_vs_run"]: from the run's tables."""
    tables = set(run.tables)
    # the checkpoint the model sections run (run_inputs': the run's, or --ckpt's where it moved), whose
    # tokenizer.json run_tokenizer checked as the run's: the texts looked at run.json's path alone (a review)
    ckpt = None if getattr(ns, "skip_ablation", True) else getattr(ns, "ckpt", None)
    # the run's tokenizer found and loaded once for both sections' token texts
    text = functools.cache(lambda: text_tokenizer(run, getattr(ns, "tokenizer", None), ckpt))
    if "routing" in tables and "tokens" in tables:
        routes = M.routes_from_run(run, compact=True)  # read once: both sections use every routed token
        out["paths"] = paths(run, routes, text=text)
        out["token_dependence"] = M.token_dependence_from_run(run, routes=routes, min_count=M.VOCAB_MIN_COUNT,
                                                              baseline=True)
        out["probes"] = probes(run)
    if getattr(ns, "compare", None):
        out["run_vs_run"] = run_vs_run(run, ns.compare, text=text)


def compute_model(run, ns, out: dict) -> None:
    """Unless --skip-ablation or --importance-tokens 0, fill out["importance"] and out["steering"]:
    they run the model (every rank of a torchrun launch together); steering reads out["lift"]."""
    if not ns.skip_ablation and ns.importance_tokens:
        from . import research_model

        if (cap := (run.info.get("options") or {}).get("max_tokens")) is not None and cap < 2:
            # both evaluate the run's windows, capped as it was recorded: a window of one token has no loss,
            # and the job's refusal ('capped at 1 token in all (max_tokens)') cost the report (a tour)
            out["importance_skip"] = (f"the run was recorded with --max-tokens {cap}, and causal importance and "
                                      "steering evaluate its windows, capped the same way: a window of one token "
                                      "has no next token to score; record with a larger --max-tokens")
            return
        t = time.time()
        out["importance"] = research_model.importance(run, ns)
        out["steering"] = research_model.steering(run, ns, out.get("lift") or {})
        out["research_seconds"] = time.time() - t


def text_tokenizer(run, given: str | None = None, ckpt: str | None = None):
    """(the tokenizer the report's token texts read with, None), or (None, why there is none and what to pass):
    --tokenizer `given`, else the run's own as `probe.tokenizer_identity.run_tokenizer_file` decides it for the
    jobs too: the file run.json names, else the tokenizer.json of the run's checkpoint, each only where its
    sha256 is run.json's. The paths section fell back to ids without a word, even where --tokenizer was given;
    and a checkpoint's tokenizer changed since the run read as other tokens' text (a review). `ckpt`: the
    checkpoint the report's jobs run, where not the run's (default: run.json's)."""
    from probe.job import load_tokenizer
    from probe.tokenizer_identity import run_tokenizer_file, tokenizer_refusal

    found = None if given else run_tokenizer_file(run.info, ckpt)
    ckpt = ckpt or (run.info.get("checkpoint") or {}).get("path")
    if found is not None and found.path is None:
        told = {"changed": "pass --tokenizer with the run's" if found.own else "pass --tokenizer to take it"}
        return None, f"{tokenizer_refusal(found)}; {told.get(found.why, 'pass --tokenizer')}"
    try:  # the checkpoint's own as load_tokenizer reads it (an unreadable one is not a --tokenizer's)
        path = given or (None if found.own else found.path)
        return load_tokenizer(path, Path(ckpt) if ckpt else None, 1 << 30, ValueError), None
    except ValueError as e:  # load_tokenizer's
        return None, str(e)


def token_texts(run, ids, tok=False) -> list[str]:
    """Display text of token ids with the run's tokenizer (`tok`, else `text_tokenizer(run)`'s), as
    `TextCodec.str_tokens` reads them, written as repr() writes text (the ids as text when there is none)."""
    tok = text_tokenizer(run)[0] if tok is False else tok
    if tok is None:
        return [str(i) for i in ids]
    from probe.token_text import token_strings

    # each token's bytes, a partial character's as \xNN escapes: decoded one by one, the tokens of a
    # Chinese character split in two each read U+FFFD (the bundled tokenizer splits many so)
    return token_strings(tok, ids, quoted=True, missing="<{id}>")


def paths(run, routes=None, text=None) -> dict:
    """Top-1 path summary per domain, domain information of the path vs each layer (top-1 and the
    top-k sets), and the most common paths with example tokens (routes: `routes_from_run(run)`; their
    texts: `text()`, default `text_tokenizer(run)`, with "ids" saying why where they are token ids)."""
    r = routes if routes is not None else M.routes_from_run(run)
    test = r.heldout(5)
    info1 = M.domain_information(r.ids, r.domain, r.layers, 1, test).assign(target="top1")
    K = r.ids.shape[2]
    infok = M.domain_information(r.ids, r.domain, r.layers, K, test).assign(target=f"top{K} set") if K > 1 else None
    common = M.common_paths(r.ids, r.domain, r.token_id, k=1, top=10, examples=5)
    tok, ids_why = text() if text else text_tokenizer(run)
    common["examples"] = [" ".join(token_texts(run, ids, tok)) for ids in common.pop("token_ids")]
    common["path"] = [" → ".join(f"L{la}:{e}" for la, e in zip(r.layers, p)) for p in common.path]
    return {"summary": M.path_summary(r.ids, r.domain, 1), "information": pd.concat([info1, infok]),
            "common": common, "layers": r.layers, "K": K, "E": n_experts_of_run(run, "routing"), "ids": ids_why}


def probes(run) -> dict:
    """Linear probes of the domain from each layer's gate weights, and from every expert's score where
    the run kept them (--router-logits full): {"table": rows of both, "note": why nothing was probed}."""
    parts, note = [], _too_few_probe_windows(run)
    for features in M.PROBE_FEATURES if note is None else ():
        try:
            parts.append(M.domain_probe_from_run(run, features=features))
        except M.MetricsError as e:
            if features == "weights":  # every routed run has weights: say why they could not be probed
                note = str(e).split(": ", 1)[-1] if str(run.path) in str(e) else str(e)
                break
    return {"table": pd.concat(parts, ignore_index=True) if parts else None, "note": note}


def _too_few_probe_windows(run) -> str | None:
    """Why no probe can train, in the words the paths and token-id sections use: every fifth window of
    a domain is held out, its first among them, so a domain of one window gives no training token, and
    a probe needs two domains to train on (one window a domain read 'got 0 training labels, 640 held
    out', a tour). None when two domains or more have a window to train on, or the run has one domain
    (the probe's own note says that)."""
    n = dict(run.sql("select domain, count(distinct seq_id) from tokens group by 1").fetchall())
    if len(n) < 2 or sum(w >= 2 for w in n.values()) >= 2:
        return None
    return (f"{TOO_FEW_WINDOWS}: every fifth window of a domain is held out, its first among them, and "
            f"{sum(w < 2 for w in n.values())} of the {len(n)} domains have one window")


def run_vs_run(run, other, text=None) -> dict:
    """Per-layer agreement with another run over the same windows, and the tokens whose routes
    changed most (with their text: `paths`', `text` as there)."""
    agr = M.routing_agreement_from_runs(run, other)
    ch = M.route_changes_from_runs(run, other, top=15)
    # the ranking ends in tokens routed alike (Jaccard 1, no first choice changed): not changes, and
    # they filled the table under "changed most" where fewer than 15 changed (all 15 for a run itself)
    ch = ch[(ch.top1_changed > 0) | (ch.set_changed > 0)].reset_index(drop=True)
    tok, ids_why = (text() if text else text_tokenizer(run)) if len(ch) else (None, None)
    ch.insert(3, "token", token_texts(run, ch.token_id.fillna(0).astype(int), tok))
    from .render import shown

    name = shown(getattr(other, "path", other))
    return {"agreement": agr, "changes": ch, "other": name, "uncompared": _uncompared(run, other, agr, name),
            "ids": ids_why}


def _uncompared(run, other, agr: pd.DataFrame, name: str) -> str | None:
    """The MoE layers of either run that the agreement leaves out (the other's model has no such
    layer), said rather than dropped from the per-layer lists; None when both have the same."""
    from probe import open_run

    done = set(agr.layer.astype(int))
    parts = []
    for r, whose in ((run, "this run"), (open_run(getattr(other, "path", other)), name)):
        left = sorted({int(x) for (x,) in r.sql("select distinct layer from expert_load").fetchall()} - done)
        if left:
            parts.append(f"{', '.join(f'L{x}' for x in left)} (only in {whose})")
    return "layers not compared: " + "; ".join(parts) if parts else None


# --------------------------------------------------------------------------------- summary
def summary(r: dict) -> list[str]:
    """The research sections' summary sentences, written from the computed values."""
    s = []
    if r.get("importance") is not None:
        s.append(_importance_sentence(r["importance"]))
    if r.get("paths") is not None:
        s += _path_sentences(r["paths"])
    if r.get("probes") is not None:
        s.append(_probe_sentence(r["probes"]))
    if r.get("token_dependence") is not None:
        s += _token_sentences(r["token_dependence"])
    rv = r.get("run_vs_run")
    if rv is not None:
        g = rv["agreement"]
        s.append(f"Run vs run ({rv['other']}): top-1 agreement per layer " + ", ".join(
            f"L{int(x.layer)} {x.top1_same:.3f}" for x in g.itertuples()) + "; identical top-k sets "
            + ", ".join(f"L{int(x.layer)} {x.set_same:.3f}" for x in g.itertuples()) + "; mean Jaccard of top-k sets "
            + ", ".join(f"L{int(x.layer)} {x.jaccard:.3f}" for x in g.itertuples())
            + f"; {counted(int(g.tokens.min()), 'token')} matched ({_small_share(g.share_of_a.min())} of this run's)"
            + (f"; {rv['uncompared']}." if rv.get("uncompared") else "."))
    if r.get("steering") is not None:
        s += r["steering"]["sentences"]
    few = {k: x["too_few"] for k, x in (("causal importance", r.get("importance")), ("steering", r.get("steering")))
           if x and x.get("too_few")}
    if few:  # "p 0.026" over 4 tokens read as a finding (a tour)
        s.append(f"Warning, {' and '.join(few)}: {next(iter(few.values()))}.")
    if r.get("importance_skip"):
        s.append(f"Causal vs observed importance and steering: not measured ({r['importance_skip']}).")
    return s


def _small_share(x: float) -> str:
    """A share in whole percent, but one that rounds to 0% or 100% is not said to be none or all (1
    token of 1,280 read '0% of this run's')."""
    if x in (0, 1) or 0.005 <= x < 0.995:
        return f"{x:.0%}"
    return f"{x:.1%}" if 0.0005 <= x < 0.9995 else "under 0.1%" if x < 0.5 else "over 99.9%"


def _importance_sentence(imp: dict) -> str:
    c = imp["correlation"]
    tokens = imp.get("scored") or counted(imp["tokens"], "token")  # the tokens and what limited them
    return ("Causal vs observed importance (each routed expert removed in turn, reroute, "
            f"{tokens}): Spearman(load share, loss delta) per layer " + ", ".join(
                _layer_rho(x, imp.get("table")) for x in c.itertuples())
            + f"; {_load_predicts(c)}. Most important: " + ", ".join(
                f"L{int(x.layer)} expert {int(x.top_expert)} ({x.top_delta:+.4f})" if pd.notna(x.top_expert) else
                f"L{int(x.layer)} n/a (a loss delta is NaN)" for x in c.itertuples()) + ".")


def _layer_rho(x, table: pd.DataFrame | None) -> str:
    """One layer's rho with its p-value, or nan with why it is undefined (e.g. one expert measured)."""
    if pd.notna(x.spearman):
        return f"L{int(x.layer)} {x.spearman:+.2f} (p {x.spearman_p:.2g})"
    from analyses.importance.analysis import undefined_why

    rows = None if table is None else table[(table.domain == "all") & (table.layer == x.layer)]
    why = None if rows is None else undefined_why(rows.load_share, rows.delta)
    return f"L{int(x.layer)} nan ({why or 'undefined'})"


TOO_FEW_WINDOWS = "too few windows to hold some out and train on the rest"
NO_HELD_OUT = f"held-out domain accuracy not measured ({TOO_FEW_WINDOWS})"


def _path_verdict(ami_beats: bool, heldout_beats: bool | None) -> str:
    """Whether the path beats every single layer (metrics.md): by held-out accuracy, the predictive
    test, with AMI said beside it; by AMI alone where nothing could be held out."""
    if heldout_beats is None:
        return ("by AMI, paths carry more domain information than any single layer's expert." if ami_beats else
                "by AMI, paths do not carry more domain information than the best single layer's expert.")
    ami = ("AMI agrees" if ami_beats == heldout_beats else
           "AMI, which also charges the path for its many values, " + ("favours it" if ami_beats else "does not"))
    return (("paths carry more domain information than any single layer's expert" if heldout_beats else
             "paths do not carry more domain information than the best single layer's expert")
            + f" (held-out accuracy; {ami}).")


def _path_sentences(p: dict) -> list[str]:
    a = p["summary"].set_index("domain").loc["all"]
    info = p["information"]
    t1 = info[info.target == "top1"].set_index("unit")
    layers = t1.drop(index="path")
    head = (f"Expert paths (top-1 over MoE layers {', '.join(map(str, p['layers']))}): "
            f"{int(a.distinct_paths)} distinct paths used of {p['E']}^{len(p['layers'])} possible, "
            f"perplexity {a.perplexity:.0f}, the ten most common cover {a.top10_share:.1%} of tokens.")
    if not layers.ami.notna().any():  # one domain: nothing to tell apart
        return [head + " Domain information: not measured (the run has one domain)."]
    best = layers.ami.idxmax()
    acc = t1.heldout_accuracy
    best_acc = layers.heldout_accuracy.idxmax() if layers.heldout_accuracy.notna().any() else best
    held = (f"held-out domain accuracy {acc['path']:.3f} vs {acc[best_acc]:.3f} ({best_acc}; majority "
            f"{t1.loc['path', 'majority_baseline']:.3f})" if pd.notna(acc["path"]) else NO_HELD_OUT)
    out = [_with_left_out(head + f" Domain information: path AMI {t1.loc['path', 'ami']:.3f} vs best single layer "
                          f"({best}) {layers.ami.max():.3f}; {held}: "
                          + _path_verdict(t1.loc["path", "ami"] > layers.ami.max(),
                                          acc["path"] > acc[best_acc] if pd.notna(acc["path"]) else None), info)]
    tk = info[info.target != "top1"]
    if len(tk):
        tk = tk.set_index("unit")
        lk = tk.drop(index="path")
        path = tk.loc["path"]
        # why the set path's accuracy can fall below a layer's: said only where tokens were held out (with none,
        # "many held-out tokens follow a path never seen in training" described tokens that do not exist)
        unseen = ", so many held-out tokens follow a path never seen in training"
        if lk.heldout_accuracy.notna().any():
            bk = lk.heldout_accuracy.idxmax()
            held = (f"held-out domain accuracy {path.heldout_accuracy:.3f} vs {lk.loc[bk, 'heldout_accuracy']:.3f} "
                    f"({bk})")
        else:
            held, unseen = NO_HELD_OUT, ""
        out.append(f"With the whole top-{p['K']} set per layer as the path: AMI {path.ami:.3f} vs best "
                   f"single layer {lk.ami.max():.3f}, {held}; {int(path['values']):,} distinct set paths{unseen}.")
    return out


def _probe_sentence(p: dict) -> str:
    head = "Domain probes (logistic regression on held-out windows, analyses.metrics.domain_probe_from_run)"
    if p["table"] is None:
        return f"{head}: not measured ({p['note']})."
    parts = []
    for features, g in p["table"].groupby("features", sort=False):
        what = "the gate weights" if features == "weights" else "every expert's score"
        lo, hi = f"{g.shuffled.min():.3f}", f"{g.shuffled.max():.3f}"
        parts.append(f"from {what}: accuracy (balanced accuracy) " + ", ".join(
            f"{x.unit.replace('layer ', 'L')} {x.accuracy:.3f} ({x.balanced_accuracy:.3f})" for x in g.itertuples())
            + f" (majority {g.majority.iloc[0]:.3f}, the probe trained on shuffled domains "
              f"{lo if lo == hi else f'{lo}-{hi}'}; {counted(int(g.n_test.iloc[0]), 'held-out token')})")
    return _with_left_out(f"{head}: " + "; ".join(parts) + ".", p["table"])


def _token_sentences(td: pd.DataFrame) -> list[str]:
    t = td[td.target == "top1"]
    if t.token_id.notna().any():
        acc = ", ".join(f"L{int(x.layer)} {x.token_id:.3f} (previous token {x.prev_token:.3f}, previous token + "
                        f"position {x.prev_and_position:.3f}, token + previous {x.token_and_prev:.3f}, majority "
                        f"{x.majority:.3f})" for x in t.itertuples())
    else:  # nothing held out, or nothing left to train on: every accuracy is NaN
        acc = f"not measured ({TOO_FEW_WINDOWS})"
    out = [_with_left_out("Token-id dependence (held-out windows, top-1 expert predicted by the token id alone): "
                          + acc + "; " + _vocabulary_clause(t) + ".", td)]
    tk = td[td.target == "topk"]
    if len(tk) and tk.token_id.notna().any():
        out.append("The whole top-k set predicted by the token id: " + ", ".join(
            f"L{int(x.layer)} {x.token_id:.3f} (majority {x.majority:.3f})" for x in tk.itertuples()) + ".")
    return out


def _vocabulary_clause(t: pd.DataFrame) -> str:
    """OLMoE's vocabulary specialisation per layer, input/next token, each beside its value without
    specialisation (docs/metrics.md: not 1/N), over the ids the dashboard counts too."""
    n = M.VOCAB_MIN_COUNT
    if t[["vocab_spec_input", "vocab_spec_next"]].isna().all(axis=None):
        return f"vocabulary specialisation not measured (no token id is seen {n} times or more)"
    return (f"vocabulary specialisation input/next over the ids seen at least {n} times (no specialisation: the "
            "first choices shuffled across the same tokens): " + ", ".join(
                f"L{int(x.layer)} {_share(x.vocab_spec_input)}/{_share(x.vocab_spec_next)} (no specialisation "
                f"{_share(x.vocab_spec_input_baseline)}/{_share(x.vocab_spec_next_baseline)})" for x in t.itertuples()))


def _share(x: float) -> str:
    return f"{x:.3f}" if pd.notna(x) else "not measured"


def left_out(df: pd.DataFrame | None) -> str | None:
    """`left_out_note` of a held-out result's `left_out` column: which domains a capped run's held-out
    scores leave out (one window, held out whole); None for none."""
    if df is None or "left_out" not in df:
        return None
    return M.left_out_note(df)


def _with_left_out(text: str, df: pd.DataFrame | None) -> str:
    """`text`, then the `left_out` sentence of `df` where it has one."""
    note = left_out(df)
    return f"{text} {note}" if note else text


def _titled(title: str, df: pd.DataFrame | None) -> str:
    """A figure's `title`, with the `left_out` sentence of `df` in brackets where it has one."""
    note = left_out(df)
    return f"{title} ({note[0].lower()}{note[1:].rstrip('.')})" if note else title


def _shown(df: pd.DataFrame) -> pd.DataFrame:
    """A held-out result as its table is printed: the `left_out` column is said in the title instead."""
    return df.drop(columns="left_out", errors="ignore")


def _load_predicts(c: pd.DataFrame) -> str:
    """How well load predicts importance, in words: |rho| >= 0.7 strong, 0.3-0.7 moderate, below weak."""
    rho = c.spearman.dropna()
    if not len(rho):
        return "no correlation measurable"
    kinds = pd.cut(rho.abs(), [-0.01, 0.3, 0.7, 1.01], labels=["weak", "moderate", "strong"], right=False)
    kinds = [f"{k}{' negative' if r < 0 and k != 'weak' else ''}" for k, r in zip(kinds, rho)]
    counts = pd.Series(kinds).value_counts()
    order = ("strong", "moderate", "strong negative", "moderate negative", "weak")
    parts = [f"{int(counts[k])} {k}" for k in order if counts.get(k, 0)]
    sig = int((c.spearman_p < 0.05).sum()) if "spearman_p" in c else 0
    head = f"rank correlation {', '.join(parts)} (of {len(rho)} layers; p < 0.05 in {sig})"
    if all(k == "strong" for k in kinds):
        return f"load predicts causal importance well: {head}"
    if all(k == "weak" or k.endswith("negative") for k in kinds):
        return f"load does not predict causal importance: {head}"
    return (f"load predicts causal importance only partly: {head}, so the most-used expert is not reliably the "
            "one the loss needs most")


# --------------------------------------------------------------------------------- figures
def figures(r: dict) -> dict[str, list]:
    """section -> [(title, figure or None, table, show index)] for the research sections."""
    import plotly.graph_objects as go

    out: dict[str, list] = {s: [] for s in RESEARCH_SECTIONS}
    imp = r.get("importance")
    if imp is not None:
        out["Causal vs observed importance"] += imp["figures"]
    p = r.get("paths")
    if p is not None:
        info = p["information"]
        held_out = bool(info["heldout_accuracy"].notna().any())  # too few windows: only the AMI bars
        fig = _bars([(f"{t}: {m}", g.unit, g[m]) for t, g in info.groupby("target", sort=False)
                     for m in ("ami", "heldout_accuracy")], "AMI / accuracy" if held_out else "AMI")
        if fig is not None:  # one domain: no domain information to draw or list
            title = "Path vs single layer: domain information (AMI, chance-adjusted)"
            title += " and held-out domain accuracy" if held_out else f"; {NO_HELD_OUT}"
            out["Expert paths"].append((_titled(title, info), fig, _shown(info), False))
        out["Expert paths"] += [
            ("Top-1 paths per domain: distinct paths, entropy (nats), perplexity, top-10 share", None,
             p["summary"], False),
            ("The ten most common top-1 paths" + _as_ids(p), None, p["common"], False)]
    pr = (r.get("probes") or {}).get("table")
    if pr is not None:
        fig = _bars([(f"{f}: {m}", g.unit, g[m]) for f, g in pr.groupby("features", sort=False)
                     for m in ("accuracy", "shuffled")], "held-out accuracy")
        out["Domain probes"].append((_titled("The token's domain read linearly from its routing: held-out "
                                                    "accuracy, and the same probe trained on shuffled domains "
                                                    f"(majority {pr.majority.iloc[0]:.3f})", pr), fig, _shown(pr),
                                     False))
    td = r.get("token_dependence")
    if td is not None:
        t = td[td.target == "top1"]
        fig = _bars([(c, [f"L{x}" for x in t.layer], t[c]) for c in M.PREDICTORS], "held-out accuracy (top-1 expert)")
        out["Token-id dependence"].append((_titled("Top-1 expert predicted from the token id vs context "
                                                          "baselines (token_dependence_from_run)", td), fig,
                                           _shown(td), False))
    rv = r.get("run_vs_run")
    if rv is not None:
        g = rv["agreement"]
        fig = go.Figure([go.Bar(name=c, x=[f"L{x}" for x in g.layer], y=g[c])
                         for c in ("top1_same", "set_same", "jaccard")])
        changes = rv["changes"]
        same = "" if len(changes) else (": no token's route changed (the same first choice and top-k set at "
                                        "every matched position and layer)")
        left = f" ({rv['uncompared']})" if rv.get("uncompared") else ""
        out["Run vs run"].append((f"Routing agreement with {rv['other']} per layer{left}{same}",
                                  fig.update_layout(barmode="group"), g, False))
        if len(changes):
            out["Run vs run"].append(("Tokens whose routes changed most" + _as_ids(rv), None, changes, False))
    st = r.get("steering")
    if st is not None:
        out["Steering"] += st["figures"]
    return out


def _as_ids(section: dict) -> str:
    """A table title's note that its tokens are ids, and why (`text_tokenizer`); "" where they are text."""
    return f" (tokens as ids: {section['ids']})" if section.get("ids") else ""


def _bars(series, yaxis_title: str):
    """Grouped bars, one per (name, x, y) that holds a measured value (an all-NaN series drew as an
    empty one); None when none does."""
    import plotly.graph_objects as go

    bars = [go.Bar(name=name, x=x, y=y) for name, x, y in series if pd.Series(y).notna().any()]
    return go.Figure(bars).update_layout(barmode="group", yaxis_title=yaxis_title) if bars else None


def missing(sec: str, r: dict) -> str:
    if sec == "Run vs run":
        # not "see FINDINGS.md": this text goes into findings files of any name, and the report's own
        return ("(not measured: pass --compare RUN, a run over the same windows: another checkpoint, or the same "
                "one with its router bias removed, `python -m analyses.variants no-router-bias`)")
    if sec == "Domain probes" and (r.get("probes") or {}).get("note"):
        return f"(not measured: {r['probes']['note']})"
    if sec in ("Causal vs observed importance", "Steering") and r.get("importance_skip"):
        return f"(not measured: {r['importance_skip']})"
    if sec == "Steering" and r.get("importance") is not None:
        return "(not measured: the run has one domain, so there is no domain-specific expert to steer with)"
    if sec in ("Causal vs observed importance", "Steering") and r.get("importance") is None:
        return f"(skipped: {r.get('skip_reason') or '--skip-ablation or --importance-tokens 0'})"
    run = r.get("run")
    return not_recorded(r, unrecorded_why(run, "routing" if run is None or not run.files("routing") else "tokens"))


def not_recorded(r: dict, why: str) -> str:
    """A section's placeholder where its table is not in the run: `why`, unless the run lists tables it
    has lost (their part files deleted, all or a rank's), which the report then names, as its note does
    (`lost_words`), rather than call unrecorded."""
    if lost := r.get("lost_tables"):
        them = "them" if len(lost) > 1 else "it"
        return f"(not in this run: run.json lists {', '.join(lost)} but the run has {lost_words(r['run'], lost, them)})"
    return f"(not in this run: {why})"


def lost_words(run, lost: list[str], them: str) -> str:
    """'no part files of THEM (deleted?)', or, where a lost table kept some parts (a rank's output
    missing: read, it would be a smaller run), 'lost part files of THEM (...)' naming the missing ones."""
    from probe.run import missing_parts

    if not any(run.files(t) for t in lost):
        return f"no part files of {them} (deleted?)"
    named = "; ".join(f"{t}: {missing_parts(run.path, t, run.info)}" for t in lost if run.files(t))
    return f"lost part files of {them} ({named}; deleted, or left on another node?)"
