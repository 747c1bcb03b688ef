"""The report's "Speculative decoding" section: the acceptance of MTP drafts that `dsv3-probe spec` measured
by generating with them (its `spec_decode` and `spec_drafts` tables, added to a recorded run with
`dsv3-probe spec --out RUN`), beside the teacher-forced agreement of the "MTP agreement" section. Its
numbers are `data.spec_decoding`'s, the dashboard's MTP page's through the same functions; here they are
said in a sentence, drawn and tabled."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.metrics.speculative import unprompted_domains

from .research import not_recorded

SECTION = "Speculative decoding"
NOT_RUN = ("spec_decode and spec_drafts, the tables `dsv3-probe spec --out RUN` adds to a run; it generates with MTP "
           "drafts and records how many are accepted")
# a spec run of its own has no expert_load, which the report needs: what gives a report this section
INTO_A_RECORD = (f"`dsv3-probe spec --out RUN` of a recorded run adds its tables there, for the report's {SECTION} "
                 "section")
NO_DRAFT = ("no MTP draft was proposed (every prompt stopped before a draft could be verified, e.g. "
            "`dsv3-probe spec --new-tokens 1`), so there is no acceptance, by domain or by position; run it with "
            "more --new-tokens")


def sentence(s: dict, domains: list[str] | None = None) -> str:
    """The summary's sentence of `data.spec_decoding`'s figures; `domains`, the run's, those with no prompt
    named (`unprompted`)."""
    t, d = s["totals"], s["by_domain"]
    head = f"Speculative decoding with MTP drafts (`dsv3-probe spec`, {t['prompts']:,} prompts): "
    per_pass = ", ".join(f"{x.domain} {x.tokens_per_forward:.3f}" for x in d.itertuples())
    none = f" {unprompted(s, domains).capitalize()}." if unprompted(s, domains) else ""
    if t["acceptance"] is None:
        return f"{head}{NO_DRAFT}. Tokens per forward pass {per_pass}.{none}"
    return (f"{head}acceptance rate {t['acceptance']:.3f} ({t['accepted']:,} of {t['proposed']:,} drafts), mean "
            f"acceptance length {t['mean_length']:.3f}; by domain " + ", ".join(
                f"{x.domain} {_share(x.acceptance)} (length {_share(x.mean_length)})" for x in d.itertuples())
            + f"; tokens per forward pass {per_pass}.{none}")


def unprompted(s: dict, domains: list[str] | None) -> str:
    """'no prompt of math, technical, which the run holds': the run's domains the spec measured nothing of
    (its --max-prompts below the domains' count, or no document of --prompt-tokens tokens), which its
    per-domain figures leave out without a word; '' where it covered them all (or `domains` is None)."""
    left = unprompted_domains(s["by_domain"], domains)
    return f"no prompt of {', '.join(left)}, which the run holds" if left else ""


def _share(x) -> str:
    """A rate of the domain's drafts: 'none proposed' for a domain without one (0/0)."""
    return "none proposed" if pd.isna(x) else f"{x:.3f}"


def figures(s: dict, domains: list[str] | None = None) -> list:
    """[(title, figure or None, table, show index)]: the whole run's figures, acceptance and tokens per
    forward pass by domain (the run's `domains` without a prompt named), and acceptance by generated
    position per domain (where a draft was proposed)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t, d = s["totals"], s["by_domain"]
    none = t["acceptance"] is None  # NaN in the table, as a domain without a draft reads
    whole = pd.DataFrame([{"prompts": t["prompts"], "drafts_proposed": t["proposed"], "drafts_accepted": t["accepted"],
                           "acceptance_rate": np.nan if none else t["acceptance"],
                           "mean_acceptance_length": np.nan if none else t["mean_length"]}])
    said = NO_DRAFT if none else "acceptance rate (accepted / proposed drafts) and mean acceptance length (1 + rate)"
    out = [(f"Whole run: {said}", None, whole, False)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Acceptance rate", "Tokens per forward pass"))
    fig.add_trace(go.Bar(name="acceptance rate", x=d.domain, y=d.acceptance), row=1, col=1)
    fig.add_trace(go.Bar(name="tokens per forward pass", x=d.domain, y=d.tokens_per_forward), row=1, col=2)
    none = f" ({unprompted(s, domains)})" if unprompted(s, domains) else ""
    out.append((f"Acceptance and tokens per forward pass by domain{none}", fig.update_layout(showlegend=False), d,
                False))
    p = s["by_position"]
    if p is None:
        return out
    size = s["size"]
    axis = f"generated token (first of each bucket of {size})" if size > 1 else "generated token"
    lines = go.Figure([go.Scatter(name=dom, x=g.position, y=g.acceptance, mode="lines+markers")
                       for dom, g in p.groupby("domain")])
    lines.update_layout(xaxis_title=axis, yaxis_title="acceptance")
    # the table's rows too (stdout, --findings), where a row's `position` is the first of its bucket
    bucket = (f"each point and row the drafts of {size} generated positions, from its position on" if size > 1
              else "each point and row one position")
    out.append((f"Acceptance by generated position per domain ({bucket}; proposed: its drafts)", lines, p, False))
    return out


def missing(r: dict) -> str:
    """The section's placeholder where the run holds no spec_decode (`research.not_recorded`: it names the
    tables a run lists and has lost)."""
    return not_recorded(r, NOT_RUN)
