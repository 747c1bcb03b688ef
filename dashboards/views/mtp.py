"""MTP: teacher-forced agreement of the MTP module with the main model (greedy acceptance) by domain
and by position in the window; and, when `dsv3-probe spec` has run, the acceptance measured by
actually generating with MTP drafts."""

from __future__ import annotations

import streamlit as st

from analyses.metrics.speculative import spec_bucket_size, spec_totals, unprompted_domains
from dashboards import charts, data, ui


def teacher_forced(ref: data.RunRef, colors: dict) -> None:
    if not data.table_folder_exists(ref, "mtp") and "mtp" not in (ref.info.get("tables") or []):
        # a spec-only run (or a record with --no-mtp) showed the agreement's definition above 'has no `mtp`
        # table', which named neither why nor what records it (a tour)
        st.info(f"Run `{ref.name}` has no teacher-forced agreement (no `mtp` table: a `dsv3-probe spec` run alone, "
                "or a record with `--no-mtp`): `dsv3-probe record` measures it on the corpus' own tokens.",
                icon="ℹ️")
        return
    st.caption("Agreement: the MTP module's top-1 guess of token i+2 equals the main model's top-1 at i+1 "
               "(teacher-forced greedy acceptance). Mean acceptance length = 1 + agreement.")
    if not data.has_table(ref, "mtp") and data.table_folder_exists(ref, "mtp") and ref.status == "complete":
        # the recorder made the table and no window gave it a row: 'has no mtp table' read as --no-mtp (a tour)
        st.info(f"No MTP rows: run `{ref.name}` recorded the table, but none of its windows has a position with two "
                "more tokens after it, which a draft of token i+2 is scored against (record longer windows or a "
                "larger `--max-tokens`).", icon="ℹ️")
        return
    d = data.mtp_by_domain(ref)
    if d.empty:
        st.info("No MTP rows recorded yet.")
        return
    tot = (d.agree * d.positions).sum() / d.positions.sum()
    m = st.columns(3)
    m[0].metric("Agreement (all)", f"{tot:.1%}")
    m[1].metric("Mean acceptance length", f"{1 + tot:.2f}")
    m[2].metric("Positions", f"{int(d.positions.sum()):,}")
    if len(d) == 1:  # one bar each, the headline's figure again (a one-domain run, a browser tour)
        row = d.iloc[0]
        st.caption(f"One domain (`{row.domain}`): its agreement is the figure above; its MTP loss "
                   f"{row.mtp_loss:.3f} nats, MTP top-1 accuracy {row.accuracy:.1%}.")
    else:
        by_domain(d, colors)
    p = data.mtp_by_position(ref)
    series = {dom: (g.bucket, g.agree) for dom, g in p.groupby("domain")}
    # each point is a bucket's mean, drawn at its first position: "position" alone read the first point as
    # position 0's agreement (a tour)
    size = data.mtp_bucket_size(ref)
    st.plotly_chart(charts.lines(series, title="Agreement by position in the window",
                                 xlabel=f"position (first of each bucket of {size})" if size > 1 else "position",
                                 ylabel="agreement", colors=colors, fmt=".2%", markers=True), key="agree_pos")


def by_domain(d, colors: dict) -> None:
    """Agreement and MTP loss per domain, side by side."""
    left, right = st.columns(2)
    left.plotly_chart(charts.bars(d.domain, d.agree, title="Agreement by domain", xlabel="domain",
                                  ylabel="agreement", colors=[colors.get(x, "#888") for x in d.domain],
                                  fmt=".2%", hover_extra=[f"positions {n:,}" for n in d.positions]),
                      key="agree_domain")
    right.plotly_chart(charts.bars(d.domain, d.mtp_loss, title="MTP loss by domain (nats)", xlabel="domain",
                                   ylabel="loss", colors=[colors.get(x, "#888") for x in d.domain], fmt=".3f",
                                   hover_extra=[f"MTP top-1 accuracy {a:.1%}" for a in d.accuracy]),
                       key="loss_domain")


def speculative(ref: data.RunRef, colors: dict) -> None:
    st.subheader("Speculative decoding with MTP drafts")
    if not data.has_table(ref, "spec_decode"):
        st.caption("Not measured for this run: `dsv3-probe spec --out RUN` generates with MTP drafts and "
                   "records how many are accepted.")
        return
    d = data.spec_by_domain(ref)
    if d.empty:
        st.info("The spec_decode table is empty.")
        return
    if left := unprompted_domains(d, [x for x in data.domains_of(ref) if x != "all"]):  # the report says so too
        st.caption(f"No prompt of {', '.join(left)}, which the run holds: spec's --max-prompts was below the "
                   "domains' count, or no document of theirs had --prompt-tokens tokens. The figures below leave "
                   f"{'it' if len(left) == 1 else 'them'} out.")
    t = spec_totals(d)  # no draft proposed (one new token a prompt): no rate, and no length below 1 (a review)
    proposed, acc = t["proposed"], t["acceptance"]
    m = st.columns(4)
    m[0].metric("Acceptance rate", f"{acc:.1%}" if acc is not None else "n/a", help="accepted drafts / proposed drafts")
    m[1].metric("Mean acceptance length", f"{t['mean_length']:.2f}" if acc is not None else "n/a",
                help="1 + accepted / proposed: the tokens a verifying pass yields with one MTP draft a pass, "
                     "before a prompt's last pass is cut at its new-token budget")
    m[2].metric("Prompts", f"{t['prompts']:,}")
    m[3].metric("Drafts proposed", f"{proposed:,}")
    left, right = st.columns(2)
    if proposed:
        left.plotly_chart(charts.bars(d.domain, d.acceptance, title="Acceptance rate by domain", xlabel="domain",
                                      ylabel="acceptance", colors=[colors.get(x, "#888") for x in d.domain],
                                      fmt=".2%", hover_extra=[f"{a:,} of {p:,} drafts; mean acceptance length {n:.2f}"
                                                              for a, p, n in zip(d.accepted, d.proposed,
                                                                                 d.mean_length)]),
                          key="spec_domain")
    else:  # the acceptance charts were drawn empty, without a word (a tour)
        left.info("No MTP draft was proposed: every prompt stopped before a draft could be verified (e.g. "
                  "`dsv3-probe spec --new-tokens 1`), so there is no acceptance to chart, by domain or by "
                  "position. Run it with more `--new-tokens`.")
    right.plotly_chart(charts.bars(d.domain, d.tokens_per_forward, title="Tokens per forward pass", xlabel="domain",
                                   ylabel="tokens / forward", colors=[colors.get(x, "#888") for x in d.domain],
                                   fmt=".3f"), key="spec_tpf")
    if not proposed:
        return
    with ui.guard("acceptance by position"):
        size = spec_bucket_size(ref.info)
        p = data.spec_by_position(ref, size)
        series = {dom: (g.position, g.acceptance) for dom, g in p.groupby("domain")}
        st.plotly_chart(charts.lines(series, title="Acceptance by generated position",
                                     xlabel=f"generated token (first of each bucket of {size})" if size > 1
                                     else "generated token", ylabel="acceptance", colors=colors, fmt=".2%",
                                     markers=True), key="spec_pos")
        lo, hi = int(p.proposed.min()), int(p.proposed.max())
        st.caption(f"Each point: the drafts of {size} generated position{'s' * (size > 1)} of a domain's prompts "
                   f"({lo:,}{f' to {hi:,}' if hi != lo else ''} drafts a point).")


def main() -> None:
    st.title("MTP")
    ref = ui.selected_run(("probe",))
    if ref is None or ui.engine_lacks(ref, ("mtp", "spec_decode"), "the MTP module's drafts"):
        return
    colors = ui.domain_colors()
    with ui.guard("the teacher-forced MTP agreement"):
        teacher_forced(ref, colors)
    with ui.guard("the speculative-decoding acceptance"):
        speculative(ref, colors)


with ui.guard("this page"):
    main()
