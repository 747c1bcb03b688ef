"""The report's held-out sections on a capped run where a domain has one window: the held-out split
(every 5th window of each domain, its first included) holds that domain out whole, never trained on,
and the metrics leave it out (`analyses.metrics.heldout_left_out`). The summary and the figure titles
say so in one sentence; the numbers they print are the metrics' of the other domains."""

from __future__ import annotations

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
