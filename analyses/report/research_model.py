"""The research sections that run the model (skipped with --skip-ablation): causal importance of
every routed expert (`analyses.importance`) and steering the most domain-specific experts on
(`analyses.steer`). Both write their tables into the run, like the ablation sections."""

from __future__ import annotations

import numpy as np
import pandas as pd

from probe.job import MODEL_FLAGS
from probe.schema import layer_label


# the report's --ckpt, --corpus and --tokenizer, for a run whose own are gone, changed or not written
INPUT_FLAGS = ("ckpt", "corpus", "tokenizer")
# fewer tokens scored than this, and the importance and steering figures are said to mean nothing: an
# expert's loss delta (and a domain's steering delta) is a mean of per-token deltas, and over a few dozen
# tokens their noise decides the ranks and correlations (a 5-token run scored 4 and reported "p 0.026")
MIN_SCORED_TOKENS = 100


def job_opts(ns) -> dict:
    """The options the report's model sections pass to ablate, importance and steer: the model flags
    and --ckpt/--corpus/--tokenizer, where given (else the jobs take the run's own)."""
    return {k: getattr(ns, k) for k in (*MODEL_FLAGS, *INPUT_FLAGS) if getattr(ns, k, None) is not None}


def scored(run, ns, tokens: int, per_domain: dict[str, int]) -> tuple[str, str | None]:
    """What the model sections scored, for the summary: ('N tokens scored: each domain's; <what limited
    them>', and a warning where N is under MIN_SCORED_TOKENS, else None). Importance and steering take
    --importance-tokens a domain of the run's own windows, under its recording cap (its --max-tokens in
    run.json), which they inherit: that cap, not --importance-tokens, limited a 5-token run to 4 tokens
    (a tour). Said per domain, from the tokens the run holds of each (run.json's planned
    tokens_per_domain): a cap that cut the last domain alone was "--importance-tokens a domain" (a tour),
    and whether the cap or the corpus left a domain short, from the domains the cap cut (`_short`).
    `per_domain`: the tokens scored in each domain, the run's own (`analyses.ablate.inputs.sample_windows`)."""
    from .research import counted

    cap = ((getattr(run, "info", None) or {}).get("options") or {}).get("max_tokens")
    by_cap, small, capped = _short(getattr(run, "info", None) or {}, ns, per_domain)
    if capped:
        limit = f"capped by the run's own --max-tokens {cap:,}, which these sections inherit"
    elif by_cap or small:
        held = [f"the run's own windows, up to its --max-tokens {cap:,} (which these sections inherit), hold "
                f"{_tokens_of(by_cap)}"] if by_cap else []
        held += [f"the corpus holds {_tokens_of(small)}"] if small else []
        limit = f"--importance-tokens {ns.importance_tokens:,} a domain, but " + ", and ".join(held)
    else:
        limit = f"--importance-tokens {ns.importance_tokens:,} a domain"
    each = f": {', '.join(f'{d} {n:,}' for d, n in sorted(per_domain.items()))};" if len(per_domain) > 1 else ","
    what = f"{counted(tokens, 'token')} scored{each} {limit}"
    if tokens >= MIN_SCORED_TOKENS:
        return what, None
    more = ("record the run with a larger --max-tokens" + (", or from a --corpus that holds more" if small else "")
            if capped or by_cap else "pass a larger --importance-tokens, or a --corpus that holds more")
    return what, (f"{counted(tokens, 'token')} scored ({limit}) is too few for these figures to mean anything "
                  f"(under {MIN_SCORED_TOKENS}, each loss delta is a mean over so few tokens that noise decides "
                  f"the ranks, correlations and p-values); {more}")


def _short(info: dict, ns, per_domain: dict[str, int]) -> tuple[dict[str, int], dict[str, int], bool]:
    """The domains of which the run holds fewer tokens than --importance-tokens asks, by what left them
    short: (those the run's cap cut, those the corpus holds no more of, whether the cap alone limited
    every domain). run.json's planned capped_domains (the domains the cap cut with text left) tells
    the two apart; a run recorded before it was noted, by whether it stopped at its cap: every short
    domain the cap's then, though of several short ones some may be the corpus's whole (a tour)."""
    cap = (info.get("options") or {}).get("max_tokens")
    planned = info.get("planned") or {}
    held, cut = planned.get("tokens_per_domain"), planned.get("capped_domains")
    if not isinstance(held, dict):  # no record of the run's windows: the cap against the flag's tokens in all
        return {}, {}, cap is not None and cap < ns.importance_tokens * max(len(per_domain), 1)
    short = {d: int(held[d]) for d in sorted(per_domain) if d in held and held[d] < ns.importance_tokens}
    if isinstance(cut, list):
        by_cap = {d: n for d, n in short.items() if d in cut}
    else:  # the run stopped at its cap, not the corpus's end: its short domains said as the cap's
        by_cap = short if cap is not None and sum(held.values()) >= cap else {}
    small = {d: n for d, n in short.items() if d not in by_cap}
    return by_cap, small, bool(by_cap) and len(by_cap) == len(per_domain)


def _tokens_of(domains: dict[str, int]) -> str:
    from .research import counted

    return ", ".join(f"{counted(n, 'token')} of {d}" for d, n in domains.items())


def importance(run, ns) -> dict:
    """Remove each routed expert of every MoE layer in turn on --importance-tokens tokens per domain;
    the per-layer correlation of load share with loss delta and the largest rank disagreements."""
    import plotly.graph_objects as go

    from analyses.importance import ImportanceOptions, load_vs_importance, rank_disagreement
    from analyses.importance import importance as run_importance

    opts = ImportanceOptions(run=str(run.path), domain_tokens=ns.importance_tokens, progress=ns.progress,
                             batch_size=ns.batch_size, **job_opts(ns))
    _, df = run_importance(opts)
    corr = load_vs_importance(df)
    gaps = rank_disagreement(df, top=3)
    alld = df[df.domain == "all"]
    fig = go.Figure([go.Scatter(x=g.load_share, y=g.delta, mode="markers", name=layer_label(layer),
                                text=[f"expert {e}" for e in g.expert])
                     for layer, g in alld.groupby("layer")])
    fig.update_layout(xaxis_title="load share (of the layer's top-k assignments)",
                      yaxis_title="loss delta when removed (nats)")
    points = alld[["layer", "expert", "load_share", "delta"]].sort_values(["layer", "expert"], ignore_index=True)
    figs = [("Load share vs loss delta when the expert is removed (reroute), every routed expert", fig, points, False),
            ("Spearman and Pearson correlation of load share with loss delta per layer", None, corr, False),
            ("Experts whose load rank and causal rank disagree most (3 per layer)", None, gaps, False)]
    tokens = int(alld.tokens.max())
    per_domain = df[df.domain != "all"].groupby("domain").tokens.max()
    what, warning = scored(run, ns, tokens, {str(d): int(n) for d, n in per_domain.items()})
    return {"correlation": corr, "gaps": gaps, "table": df, "figures": figs, "tokens": tokens, "scored": what,
            "too_few": warning}


def steered_experts(lift: dict[int, pd.DataFrame]) -> tuple[str, dict[int, list[int]]]:
    """The domain with the largest lift anywhere, and in every MoE layer the expert with the largest
    lift for that domain (what to force on)."""
    best = max(((li.loc[d].max(), d) for li in lift.values() for d in li.index), key=lambda x: x[0])[1]
    return best, {int(layer): [int(li.loc[best].astype(float).idxmax())] for layer, li in lift.items()}


def steering(run, ns, lift: dict) -> dict | None:
    """Force the most specialised domain's top-lift expert on at every MoE layer, for every token:
    loss change per domain and greedy continuations of each domain's first prompt."""
    import plotly.graph_objects as go

    from analyses.steer import Steer, SteerOptions
    from analyses.steer import steer as run_steer

    if len(lift) == 0 or any(len(li) < 2 for li in lift.values()):
        return None  # one domain: no domain-specific expert to steer with
    dom, experts = steered_experts(lift)
    name = f"force-{dom}"
    opts = SteerOptions(run=str(run.path), domain_tokens=ns.importance_tokens, progress=ns.progress,
                        batch_size=ns.batch_size, max_new_tokens=24, **job_opts(ns))
    _, df = run_steer(opts, Steer(name=name, experts=experts, mode="force"))
    loss = df[df.kind == "loss"][["domain", "tokens", "steered_tokens", "forced_share", "baseline_loss", "loss",
                                  "delta"]].reset_index(drop=True)
    gen = df[df.kind == "generation"][["domain", "prompt", "baseline_text", "steered_text"]].reset_index(drop=True)
    what = ", ".join(f"L{layer}:{e[0]}" for layer, e in experts.items())
    fig = go.Figure(go.Bar(x=loss.domain, y=loss.delta))
    fig.update_layout(yaxis_title="loss delta (nats)", xaxis_title="evaluated domain")
    per = loss.set_index("domain")
    own = per.delta.get(dom, np.nan)
    others = per.drop(index=[dom, "all"], errors="ignore").delta
    changed = int((gen.baseline_text != gen.steered_text).sum())
    each = per.drop(index="all", errors="ignore").tokens
    tokens, warning = scored(run, ns, int(per.tokens.get("all", per.tokens.sum())),
                             {str(d): int(n) for d, n in each.items()})
    sentence = (f"Steering ({tokens}): forcing {dom}'s most specific expert on at every MoE layer ({what}) for "
                f"every token put it in {per.forced_share.get('all', np.nan):.0%} of the steered top-k sets; loss "
                f"delta on {dom} {own:+.4f} vs the other domains' mean {others.mean():+.4f}; greedy continuations "
                f"changed for {changed} of {len(gen)} prompts.")
    figs = [(f"Loss change per domain when {what} are forced on (mode force, every token)", fig, loss, False),
            ("Greedy continuations without and with the steering", None, gen, False)]
    return {"sentences": [sentence], "too_few": warning, "figures": figs, "loss": loss, "generation": gen,
            "experts": experts, "domain": dom}
