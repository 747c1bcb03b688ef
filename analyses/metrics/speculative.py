"""Speculative decoding with MTP drafts, from `dsv3-probe spec`'s `spec_decode` and `spec_drafts` tables
(docs/metrics.md, "MTP and speculative decoding"): the acceptance rate (accepted / proposed drafts) and the
mean acceptance length (1 + that rate) overall, per domain and by generated position. The dashboard's MTP
page and the report's "Speculative decoding" section both read them here, so their figures are one
computation.

The aggregates take a DuckDB connection on which the tables are views (`probe.Run.con`, or the dashboard's
cursor over a run's part files); the `*_from_run` forms take a run and refuse one without rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import as_run, need_rows, whole_count

if TYPE_CHECKING:  # the frames come from DuckDB's .df(): importing pandas here put 0.2 s on every job's ranks
    import pandas as pd

SPEC_NEW_TOKENS = 32  # `dsv3-probe spec`'s default --new-tokens, where run.json names none


def spec_by_domain(con) -> pd.DataFrame:
    """domain, prompts, proposed, accepted, acceptance (accepted / proposed; NaN where none was proposed),
    mean_length (1 + acceptance), tokens_per_forward (new tokens / forward passes), over `spec_decode`. The
    counts are integers: DuckDB sums int32 into a HUGEINT, which pandas reads as floats ('7.0 of 11.0 drafts'
    in the dashboard's hover, 11.0000 in the report's table)."""
    return con.execute(
        "select domain, count(*) as prompts, sum(drafts_proposed)::bigint as proposed, "
        "sum(drafts_accepted)::bigint as accepted, "
        "sum(drafts_accepted) / nullif(sum(drafts_proposed), 0) as acceptance, "
        "1 + sum(drafts_accepted) / nullif(sum(drafts_proposed), 0) as mean_length, "
        "sum(new_tokens) / nullif(sum(forward_passes), 0) as tokens_per_forward "
        "from spec_decode group by domain order by domain").df()


def spec_by_position(con, size: int = 1) -> pd.DataFrame:
    """domain, position (the first of its bucket of `size` generated positions), proposed, acceptance,
    over `spec_drafts`."""
    size = whole_count(size, "size", why=" (generated positions a bucket)")
    return con.execute("select domain, ((position - 1) // ?) * ? + 1 as position, count(*) as proposed, "
                       "avg(accepted::int) as acceptance from spec_drafts group by all order by domain, position",
                       [size, size]).df()


def spec_bucket_size(info: dict, buckets: int = 8) -> int:
    """Generated positions that a point of acceptance by position averages: spec's new tokens (run.json's
    `spec_decode`, else its default 32) in `buckets`. A point a position held each prompt's one draft there:
    with a few prompts a domain every point read 0%, 50% or 100%, the domains' lines crossing at every step
    (a browser tour of a 10-prompt run)."""
    buckets = whole_count(buckets, "buckets")
    new = int((info.get("spec_decode") or {}).get("new_tokens") or SPEC_NEW_TOKENS)
    return max(1, -(-new // buckets))


def spec_totals(by_domain: pd.DataFrame) -> dict:
    """The whole run's figures from `spec_by_domain`'s rows: prompts, proposed, accepted, acceptance and
    mean_length (None where no draft was proposed: one new token a prompt, or every prompt ended at once,
    is 0/0, no rate, and no length below 1)."""
    proposed, accepted = int(by_domain.proposed.sum()), int(by_domain.accepted.sum())
    acceptance = accepted / proposed if proposed else None
    return {"prompts": int(by_domain.prompts.sum()), "proposed": proposed, "accepted": accepted,
            "acceptance": acceptance, "mean_length": 1 + acceptance if acceptance is not None else None}


def unprompted_domains(by_domain: pd.DataFrame, domains) -> list[str]:
    """The run's `domains` that `spec_by_domain`'s rows hold no prompt of (spec's --max-prompts below the
    domains' count, or no document of --prompt-tokens tokens): per-domain figures leave them out without a
    word, so the report and the dashboard name them."""
    have = set(by_domain.domain)
    return [d for d in domains or () if d not in have]


def spec_by_domain_from_run(run) -> pd.DataFrame:
    """`spec_by_domain` of a run (a `probe.Run` or its directory) that holds spec_decode rows."""
    run = as_run(run)
    need_rows(run, "spec_decode")
    return spec_by_domain(run.con)


def spec_by_position_from_run(run, size: int = 1) -> pd.DataFrame:
    """`spec_by_position` of a run that holds spec_drafts rows."""
    run = as_run(run)
    need_rows(run, "spec_drafts")
    return spec_by_position(run.con, size)
