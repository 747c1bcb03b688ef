"""The report's "Speculative decoding" section (`analyses/report/spec.py`): the acceptance of MTP drafts
that `dsv3-probe spec` measured, against numbers counted by hand from the Parquet files of a small spec run
on the bundled model; the same numbers as the dashboard's MTP page, which reads them through the same
functions; and the runs without them (no spec tables, no draft proposed)."""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from analyses.report import data as rd
from analyses.report import spec
from analyses.report.render import SECTIONS, _missing, summary
from probe.record import DEFAULT_CKPT, DEFAULT_CORPUS
from probe.speculative import SpecOptions, record_spec

NEW_TOKENS = 10  # spec_bucket_size: ceil(10 / 8) = 2 generated positions a point


def _spec(out, new_tokens: int = NEW_TOKENS, prompts: int = 6):
    """A spec run on the bundled model (its validation corpus, a few prompts), `out` made or extended."""
    return record_spec(SpecOptions(ckpt=str(DEFAULT_CKPT), corpus=str(DEFAULT_CORPUS), out=str(out), prompt_tokens=12,
                                   new_tokens=new_tokens, max_prompts=prompts, batch_size=prompts, progress=False))


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
    return _spec(tmp_path_factory.mktemp("spec") / "run")


def _by_hand(run_dir, size: int):
    """Per domain [prompts, proposed, accepted, new tokens, forward passes], and per (domain, first position
    of its bucket of `size`) [drafts, accepted], counted row by row from the Parquet files (no DuckDB)."""
    dec = pq.read_table(run_dir / "spec_decode").to_pylist()
    drafts = pq.read_table(run_dir / "spec_drafts").to_pylist()
    per = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in dec:
        c = per[r["domain"]]
        for i, v in enumerate((1, r["drafts_proposed"], r["drafts_accepted"], r["new_tokens"], r["forward_passes"])):
            c[i] += v
    pos = defaultdict(lambda: [0, 0])
    for r in drafts:
        c = pos[(r["domain"], (r["position"] - 1) // size * size + 1)]
        c[0] += 1
        c[1] += r["accepted"]
    return dict(per), dict(pos)


@pytest.mark.slow  # a spec run on the bundled model: ~2 s on the 2-core EPYC (the quick loop leaves it out)
def test_the_section_s_numbers_are_the_spec_tables_counted_by_hand(spec_run):
    s = rd.spec_decoding(spec_run)
    assert s["size"] == 2  # the run's --new-tokens 10 (run.json) in 8 buckets
    per, pos = _by_hand(spec_run, 2)
    d = s["by_domain"].set_index("domain")
    assert list(d.index) == sorted(per) and len(per) >= 2
    # counts, not floats (DuckDB's sum of int32 read '7.0 of 11.0 drafts' on the MTP page)
    assert d.prompts.dtype.kind == d.proposed.dtype.kind == d.accepted.dtype.kind == "i"
    for dom, (prompts, proposed, accepted, new, passes) in per.items():
        assert (d.loc[dom, "prompts"], d.loc[dom, "proposed"], d.loc[dom, "accepted"]) == (prompts, proposed, accepted)
        assert d.loc[dom, "acceptance"] == pytest.approx(accepted / proposed)
        assert d.loc[dom, "mean_length"] == pytest.approx(1 + accepted / proposed)
        assert d.loc[dom, "tokens_per_forward"] == pytest.approx(new / passes)
    proposed, accepted = (sum(c[i] for c in per.values()) for i in (1, 2))
    assert 0 < accepted < proposed  # a rate that is neither 0 nor 1: a wrong count shows
    t = s["totals"]
    assert (t["prompts"], t["proposed"], t["accepted"]) == (6, proposed, accepted)
    assert t["acceptance"] == pytest.approx(accepted / proposed) and t["mean_length"] == pytest.approx(
        1 + accepted / proposed)
    p = s["by_position"]
    assert [(x.domain, x.position, x.proposed) for x in p.itertuples()] == [(k[0], k[1], v[0])
                                                                            for k, v in sorted(pos.items())]
    assert p.acceptance.tolist() == pytest.approx([v[1] / v[0] for _, v in sorted(pos.items())])
    # the summary says them, rounded as printed
    line = next(x for x in summary(_summed(s)) if x.startswith("Speculative decoding"))
    assert (f"6 prompts): acceptance rate {accepted / proposed:.3f} ({accepted} of {proposed} drafts), mean "
            f"acceptance length {1 + accepted / proposed:.3f}; by domain ") in line, line
    for dom, (_, dp, da, new, passes) in per.items():
        assert f"{dom} {da / dp:.3f} (length {1 + da / dp:.3f})" in line and f"{dom} {new / passes:.3f}" in line


def _summed(s: dict | None) -> dict:
    """What `summary` reads: the spec section's values `s`, the other sections' small and hand-made."""
    import pandas as pd

    sp = pd.DataFrame({"layer": [1], "domain_nmi": [0.1], "max_lift": [1.5], "max_lift_domain": ["a"],
                       "max_lift_expert": [3]})
    return {"balance": pd.DataFrame({"layer": [1], "maxvio_global": [0.5], "balancedness": [0.8]}),
            "specialisation": sp, "domains": ["a", "b"], "sweep": None, "repetition": None, "mtp": None, "kv": None,
            "spec": s}


@pytest.mark.slow  # a spec run on the bundled model: ~2 s on the 2-core EPYC (the quick loop leaves it out)
def test_the_report_and_the_dashboard_show_one_computation(spec_run):
    """The MTP page's frames (dashboards.data, a cursor over the part files) and the report's (`probe.Run`)
    come from the same functions: equal, to the last bit."""
    import json

    from dashboards import data

    ref = data.RunRef("run", str(spec_run), "probe", "complete", json.loads((spec_run / "run.json").read_text()))
    s = rd.spec_decoding(spec_run)
    assert data.spec_by_domain.uncached(ref).equals(s["by_domain"])
    assert data.spec_by_position.uncached(ref, s["size"]).equals(s["by_position"])


@pytest.mark.slow  # a spec run on the bundled model: ~2 s on the 2-core EPYC (the quick loop leaves it out)
def test_the_section_draws_the_whole_run_the_domains_and_the_positions(spec_run):
    s = rd.spec_decoding(spec_run)
    figs = spec.figures(s)
    assert [f[0].split(":")[0].split(" (")[0] for f in figs] == [
        "Whole run", "Acceptance and tokens per forward pass by domain", "Acceptance by generated position per domain"]
    whole = figs[0][2].iloc[0]
    assert whole.drafts_proposed == s["totals"]["proposed"] and whole.acceptance_rate == s["totals"]["acceptance"]
    assert [tr.name for tr in figs[2][1].data] == sorted(s["by_domain"].domain)
    assert figs[2][1].layout.xaxis.title.text == "generated token (first of each bucket of 2)"
    # the table (stdout, --findings) has no axis: its title says a row's position starts its bucket
    assert figs[2][0] == ("Acceptance by generated position per domain (each point and row the drafts of 2 generated "
                          "positions, from its position on; proposed: its drafts)")
    assert figs[2][2].position.tolist()[:2] == [1, 3]


@pytest.mark.slow  # a spec run on the bundled model: ~2 s on the 2-core EPYC (the quick loop leaves it out)
def test_the_run_s_domains_without_a_prompt_are_named_in_the_summary_and_the_domains_figure(spec_run):
    """A spec of fewer prompts than the run's domains (`--max-prompts 3` into a run of five) listed the
    domains it had and left the others out without a word, in the summary and in the per-domain table
    (a review): both name the run's domains that had no prompt."""
    s = rd.spec_decoding(spec_run)
    have = list(s["by_domain"].domain)
    r = _summed(s) | {"domains": sorted(have + ["poetry", "zoology"])}
    line = next(x for x in summary(r) if x.startswith("Speculative decoding"))
    assert line.endswith(". No prompt of poetry, zoology, which the run holds."), line
    title = spec.figures(s, r["domains"])[1][0]
    assert title == ("Acceptance and tokens per forward pass by domain (no prompt of poetry, zoology, which the run "
                     "holds)")
    covered = _summed(s) | {"domains": have}  # the control: every domain of the run has its prompts
    assert "prompt of" not in next(x for x in summary(covered) if x.startswith("Speculative decoding"))
    assert spec.figures(s, have)[1][0] == "Acceptance and tokens per forward pass by domain"


@pytest.mark.slow  # a spec run on the bundled model: ~2 s on the 2-core EPYC (the quick loop leaves it out)
def test_a_spec_run_without_a_draft_says_so_and_draws_no_acceptance(tmp_path):
    """One new token a prompt: the prefill gives it, no draft is verified, and 0/0 is no rate (the MTP page says
    'n/a' and draws no acceptance chart): the section says why, keeps tokens per forward pass, draws no position."""
    s = rd.spec_decoding(_spec(tmp_path / "run", new_tokens=1, prompts=3))
    assert s["totals"]["proposed"] == 0 and s["totals"]["acceptance"] is None and s["by_position"] is None
    line = spec.sentence(s)
    assert "no MTP draft was proposed" in line and "acceptance rate" not in line and "nan" not in line, line
    assert line.endswith("Tokens per forward pass " + ", ".join(f"{d} 1.000" for d in s["by_domain"].domain) + "."), line
    figs = spec.figures(s)
    assert len(figs) == 2 and figs[0][0] == f"Whole run: {spec.NO_DRAFT}"
    assert math.isnan(figs[0][2].acceptance_rate.iloc[0])


def test_a_spec_drafts_part_without_a_row_beside_proposed_drafts_draws_no_position(spec_run, tmp_path):
    """spec_decode proposed drafts but spec_drafts' part file holds no row (a stray or hand-made file): the
    by-position part is None, as where spec_drafts is absent; it failed the whole report ("run's spec_drafts
    table is empty"). The rest of the section is the run's, unchanged."""
    import shutil

    from probe.schema import TABLES

    run = shutil.copytree(spec_run, tmp_path / "run")
    shutil.rmtree(run / "spec_drafts")
    (run / "spec_drafts").mkdir()
    pq.write_table(TABLES["spec_drafts"].empty_table(), run / "spec_drafts" / "part-r000-000000.parquet")
    s, whole = rd.spec_decoding(run), rd.spec_decoding(spec_run)
    assert s["totals"] == whole["totals"] and s["totals"]["proposed"] > 0 and whole["by_position"] is not None
    assert s["by_position"] is None
    assert [f[0] for f in spec.figures(s)] == [f[0] for f in spec.figures(whole)][:2]


def test_a_run_without_spec_tables_has_the_section_s_placeholder_and_no_sentence():
    """The control: no spec tables, no sentence and no figure; the placeholder says what makes them."""
    assert not any(x.startswith("Speculative decoding") for x in summary(_summed(None)))
    assert _missing(spec.SECTION, {"lost_tables": [], "run": None, "domains": ["a", "b"]}) == (
        "(not in this run: spec_decode and spec_drafts, the tables `dsv3-probe spec --out RUN` adds to a run; it "
        "generates with MTP drafts and records how many are accepted)")


@pytest.mark.slow  # a small record and the report twice without the model sections: ~8 s on the 2-core EPYC
def test_the_report_of_a_record_gains_the_section_once_spec_adds_its_tables(tmp_path, capsys):
    from analyses.notebook_utils import record_small
    from analyses.report import __main__ as report

    run = record_small(tmp_path / "run", 600)
    argv = [str(run), "--skip-ablation", "--importance-tokens", "0", "--out", str(tmp_path / "r.html")]
    assert report.main(argv) == 0  # the control: a record alone
    text = capsys.readouterr().out
    assert SECTIONS.index(spec.SECTION) == SECTIONS.index("MTP agreement") + 1
    assert f"## {spec.SECTION}\n(not in this run: spec_decode and spec_drafts, the tables `dsv3-probe spec" in text
    assert "- Speculative decoding" not in text
    _spec(run)  # `dsv3-probe spec --out RUN`: its tables added to the record
    assert report.main(argv) == 0
    text = capsys.readouterr().out
    _, proposed, accepted = (sum(c[i] for c in _by_hand(run, 2)[0].values()) for i in (0, 1, 2))
    assert (f"- Speculative decoding with MTP drafts (`dsv3-probe spec`, 6 prompts): acceptance rate "
            f"{accepted / proposed:.3f} ({accepted} of {proposed} drafts)") in text
    section = text[text.index(f"## {spec.SECTION}\n"):text.index("## Latent KV effective rank")]
    assert "### Acceptance by generated position per domain" in section and "(not in this run" not in section
    doc = (tmp_path / "r.html").read_text()
    assert f">{spec.SECTION}</h2>" in doc and "Acceptance and tokens per forward pass by domain" in doc


@pytest.mark.parametrize("table,section", [("spec_decode", spec.SECTION), ("mtp", "MTP agreement"),
                                           ("kv_stats", "Latent KV effective rank")])
@pytest.mark.slow  # 0.7-0.9 s each: a report end to end (the AVX2-only EPYC, 2026-12-07)
def test_an_optional_table_without_a_row_is_the_section_s_placeholder(tmp_path, capsys, table, section):
    """A spec_decode part of no row (a stray or hand-made file) failed the whole report ("run's spec_decode
    table is empty", exit 2) once every other section, the ablation sweep first, had run; so did an mtp or
    kv_stats part of none. Each is now its section's placeholder, as the table without part files is."""
    import pyarrow.parquet as pq

    from analyses.report import __main__ as report
    from helpers.synthetic_run import write_run
    from probe.schema import TABLES

    run = tmp_path / "run"
    write_run(run)
    (run / table).mkdir()
    pq.write_table(TABLES[table].empty_table(), run / table / "part-r000-000000.parquet")
    assert report.main([str(run), "--skip-ablation", "--importance-tokens", "0", "--out", str(tmp_path / "r.html")]) == 0
    text = capsys.readouterr().out
    assert (f"## {section}\n(not measured: the run's {table} table has part files but no row: a stray or hand-made "
            "file?)") in text
