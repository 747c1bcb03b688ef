"""The report's model sections on a run whose cap held fewer domains than its corpus: they sample
within the run's own windows (its --max-tokens and --order, inherited), so every section of one report
speaks of the run's domains (analyses.ablate.inputs.sample_windows, `within_run`)."""

from __future__ import annotations

import pytest

import probe
from analyses.report import __main__ as report
from analyses.report import ablation_sweep


def test_the_importance_section_of_a_one_domain_run_scores_that_domain_alone(probe_env, tmp_path):
    """The model sections inherit the run's sample: a run whose cap (order corpus) held code alone had
    code and prose scored, while the report said the run had one domain (code) (a tour)."""
    from analyses.report import research_model
    from helpers.analysis_runs import corpus_order_run, scored_tokens

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    ns = report.parser().parse_args([str(rec), "--importance-tokens", "40", "--no-progress"])
    got = research_model.importance(probe.open_run(rec), ns)
    assert set(got["table"].domain) == {"all", "code"} and got["tokens"] <= scored_tokens(rec)["code"]
    assert got["scored"] == f"{got['tokens']} tokens scored, --importance-tokens 40 a domain"
    assert "pass a larger --importance-tokens" in got["too_few"]


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_tokens_scored_name_the_domain_the_run_s_cap_cut(probe_env, tmp_path):
    """A run whose cap (order corpus) took code whole and 29 tokens of prose: the importance section said
    '--importance-tokens 300 a domain', as the cap was over 300 x 2 (a tour); it names prose's 29."""
    from analyses.report import research_model
    from helpers.analysis_runs import corpus_order_run, corpus_tokens

    code = corpus_tokens(probe_env, "code")
    assert code > 300
    rec = corpus_order_run(probe_env, tmp_path / "rec", code + 29)
    ns = report.parser().parse_args([str(rec), "--importance-tokens", "300", "--no-progress"])
    got = research_model.importance(probe.open_run(rec), ns)
    per = got["table"][got["table"].domain != "all"].groupby("domain").tokens.max()
    assert set(per.index) == {"code", "prose"} and per["prose"] < 29
    assert got["scored"] == (f"{got['tokens']:,} tokens scored: code {per['code']:,}, prose {per['prose']:,}; "
                             "--importance-tokens 300 a domain, but the run's own windows, up to its --max-tokens "
                             f"{code + 29:,} (which these sections inherit), hold 29 tokens of prose")


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_masking_sweep_of_a_one_domain_run_evaluates_that_domain_alone(probe_env, tmp_path):
    """The sweep passes the report's --max-tokens to ablate, which then took a balanced sample of every
    corpus domain: a run whose cap (order corpus) held code alone had code and prose evaluated, while the
    report said the run had one domain (a tour). Now: the run's own windows, then at most --max-tokens."""
    from helpers.analysis_runs import corpus_order_run, scored_tokens

    rec = corpus_order_run(probe_env, tmp_path / "rec", 150)
    held = scored_tokens(rec)
    assert set(held) == {"code"}
    sw = ablation_sweep(rec, max_tokens=3000, fractions=(1 / 8,), seeds=(0,))
    assert set(sw.rows.domain) == {"all", "code"} and sw.options["tokens"] <= held["code"]
    assert {e["sample"] for e in probe.open_run(rec).info["ablation_parts"].values()} == {"run"}
    few = ablation_sweep(rec, max_tokens=60, fractions=(1 / 8,), seeds=(0,))  # under the run's cap: at most 60
    assert set(few.rows.domain) == {"all", "code"} and few.options["tokens"] < 60
