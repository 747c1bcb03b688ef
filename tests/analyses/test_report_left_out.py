"""The report's held-out sections on a capped run where a domain has one window: the held-out split
(every 5th window of each domain, its first included) holds that domain out whole, never trained on,
and the metrics leave it out (`analyses.metrics.heldout_left_out`). The summary and the figure titles
say so in one sentence; the numbers they print are the metrics' of the other domains."""

from __future__ import annotations

import pytest

from types import SimpleNamespace

import probe
from analyses import metrics as M
from analyses.report import research
from helpers.synthetic_run import write_run

DOMAINS = ("code", "prose", "web", "chat", "math", "wiki")


def _research(run) -> dict:
    out = {"run": probe.open_run(run)}
    research.compute_tables(out["run"], SimpleNamespace(compare=None), out)
    return {"summary": research.summary(out), "figures": research.figures(out), **out}


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_report_names_a_domain_left_out_of_the_held_out_scores(tmp_path):
    """A 2,000-token run over five domains read 'a linear probe reads the domain at 58.5%' with two
    domains scored but never trained on (a tour)."""
    write_run(tmp_path / "thin", n_seq=11, seq_len=12, domains=DOMAINS)  # wiki: window 5 only
    r = _research(tmp_path / "thin")
    note = M.left_out_note(["wiki"])
    paths, = [s for s in r["summary"] if s.startswith("Expert paths")]
    probes, = [s for s in r["summary"] if s.startswith("Domain probes")]
    tokens, = [s for s in r["summary"] if s.startswith("Token-id dependence")]
    for said in (paths, probes, tokens):
        assert said.endswith(f". {note}"), said
    info = M.domain_information_from_run(tmp_path / "thin").set_index("unit")
    assert f"held-out domain accuracy {info.heldout_accuracy['path']:.3f}" in paths  # code..math only
    pr = M.domain_probe_from_run(tmp_path / "thin")
    assert f"all layers {pr.accuracy.iloc[-1]:.3f}" in probes and f"{int(pr.n_test.iloc[0])} held-out tokens" in probes
    for section in ("Expert paths", "Domain probes", "Token-id dependence"):
        title, _, table, _ = r["figures"][section][0]
        assert title.endswith(f" (l{note[1:-1]})") and "left_out" not in table.columns, (section, title)
    write_run(tmp_path / "both", n_seq=12, seq_len=12, domains=DOMAINS)  # the control: two windows of each
    both = _research(tmp_path / "both")
    assert "Left out" not in " ".join(both["summary"])
    assert not any("Left out" in t for figs in both["figures"].values() for t, *_ in figs)


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_domain_named_with_a_comma_is_left_out_under_its_own_name(tmp_path):
    """A domain name is any text (a JSONL `domain` field): the `left_out` column, its names joined with ", "
    and split on ", " by every reader, named 'news, world' as two domains, news and world (a tour). It holds
    a list; the report, the notebooks and the dashboard say the one name."""
    from analyses.notebook_utils import left_out_said
    from dashboards import ui

    write_run(tmp_path / "thin", n_seq=11, seq_len=12, domains=DOMAINS[:-1] + ("news, world",))  # window 5 only
    note = M.left_out_note(["news, world"])
    assert note.startswith("Left out of the held-out scores: news, world has one window only"), note
    r = _research(tmp_path / "thin")
    paths, = [s for s in r["summary"] if s.startswith("Expert paths")]
    assert paths.endswith(f". {note}"), paths
    for result in (M.domain_information_from_run(tmp_path / "thin"), M.domain_probe_from_run(tmp_path / "thin"),
                   M.token_dependence_from_run(tmp_path / "thin")):
        assert result.left_out.tolist() == [["news, world"]] * len(result)
        assert left_out_said(result) == research.left_out(result) == note
        said = []
        ui.left_out_note(result, where=SimpleNamespace(info=lambda text, icon: said.append(text)))
        assert said == [note]


@pytest.mark.slow  # 0.3 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_left_out_sentence_names_the_splits_every(tmp_path):
    """`left_out_note` said "every 5th window" whatever `every` the held-out split used."""
    write_run(tmp_path / "thin", n_seq=11, seq_len=12, domains=DOMAINS)  # wiki: window 5 only
    for every, nth in ((5, "5th"), (3, "3rd"), (2, "2nd")):
        td = M.token_dependence_from_run(tmp_path / "thin", every=every)
        said = M.left_out_note(td)
        assert f"(every {nth} window of each domain, its first included)" in said and "wiki" in said, said
    assert "every 3rd window" in M.left_out_note(M.domain_information_from_run(tmp_path / "thin", every=3))
    assert "every 2nd window" in M.left_out_note(["wiki"], every=2)
