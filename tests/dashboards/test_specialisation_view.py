"""The Specialisation page on synthetic runs: a one-domain run says so instead of drawing empty charts,
the domain x expert heatmap's expert order, and the domain probe panel against its metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.apptest import app, open_page, texts


@pytest.mark.slow  # four page sessions over three runs
def test_a_one_domain_run_says_so_instead_of_empty_charts(tmp_path):
    """Specialisation and Compare runs need two domains; with one they say why, and draw no heatmap."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", domains=("code",))
    write_run(tmp_path / "two", seed=1)
    at = app(tmp_path, "one")
    open_page(at, "specialisation")
    note = texts(at.info)
    assert "compares domains, and run `one` has 1 domain (`code`)" in note and "--order domains" in note
    assert not at.error
    one_charts = len(at.get("plotly_chart"))
    assert any("Top tokens" in s.value for s in at.subheader)  # the per-expert view still works
    open_page(at, "compare")
    assert "I(domain; expert) / H(domain) compares domains, and run `one` has 1 domain" in texts(at.info)
    at = app(tmp_path, "two")
    open_page(at, "specialisation")
    assert "compares domains" not in texts(at.info)  # the control: two domains draw the heatmap and I / H
    assert len(at.get("plotly_chart")) == one_charts + 2 and at.toggle(key="probe_on")  # and offer the probe
    # an interrupted run that has not reached its other domains, and serving traffic, are not told to
    # record another corpus (a review found both were)
    for name, edit, want in (("part", {"status": "interrupted", "domains": ["code", "math", "prose"]},
                              "run `part` (interrupted) has rows from 1 of its 3 domains so far: continue it with "
                              "`--resume`"),
                             ("served", {"kind": "import"}, "run `served` is imported serving traffic, one stream")):
        write_run(tmp_path / name, domains=("code",))
        info = json.loads((tmp_path / name / "run.json").read_text())
        (tmp_path / name / "run.json").write_text(json.dumps(info | edit))
        at = app(tmp_path, name, page="specialisation")
        assert want in texts(at.info) and "Record a corpus with two" not in texts(at.info), texts(at.info)


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_compare_says_once_that_neither_run_has_two_domains(tmp_path):
    """Compare runs of two one-domain runs showed two notes near word for word, one a run (a tour): one
    names both, and the reason each has says what it has."""
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "one", domains=("code",))
    write_run(tmp_path / "uno", seed=1, domains=("prose",))
    at = app(tmp_path, "one", page="compare")
    notes = [e.value for e in at.info if "compares domains" in e.value]
    assert notes == ["I(domain; expert) / H(domain) compares domains, and run `one` has 1 domain (`code`) and run "
                     "`uno` has 1 domain (`prose`). Record a corpus with two or more (one sub-folder per domain, or "
                     "a `domain` field per record); with `--max-tokens` the default `--order domains` takes tokens "
                     "from every domain."], texts(at.info)
    info = json.loads((tmp_path / "uno" / "run.json").read_text())  # reasons apart: each said, still one note
    (tmp_path / "uno" / "run.json").write_text(json.dumps(info | {"kind": "import"}))
    at = app(tmp_path, "one", page="compare")
    notes = [e.value for e in at.info if "compares domains" in e.value]
    assert len(notes) == 1 and "run `one` has 1 domain (`code`). Record a corpus" in notes[0] and notes[0].endswith(
        "; run `uno` is imported serving traffic, one stream (`prose`): this view is for runs recorded from a "
        "corpus of two or more domains."), texts(at.info)
    assert not at.error, texts(at.error)


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_domain_probe_panel_draws_the_metric_of_the_run(tmp_path):
    """The specialisation page's probe bars (fitted when asked) are `domain_probe_from_run`'s held-out
    accuracies (at most PROBE_ROWS tokens a side), beside the shuffled-domain control; a run without
    scores offers weights only."""
    from analyses.metrics import domain_probe_from_run
    from dashboards.research import PROBE_ROWS
    from helpers.apptest import array, chart
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=200, seq_len=20, vocab=50)
    at = app(tmp_path, "r", page="specialisation")
    assert not any(c.proto.id.endswith("-probe") for c in at.get("plotly_chart"))  # fitted on demand only
    at.toggle(key="probe_on").set_value(True).run()
    assert not at.error, texts(at.error)
    fig = chart(at, "probe")
    bars = {t["name"]: array(t["y"]) for t in fig["data"]}
    want = domain_probe_from_run(tmp_path / "r", max_rows=PROBE_ROWS)
    # the majority domain: a dotted line named in the legend, not an annotation drawn over the last bars
    assert not fig["layout"].get("annotations") and not fig["layout"].get("shapes")
    np.testing.assert_allclose(bars["majority domain"], want.majority, rtol=1e-9)
    np.testing.assert_allclose(bars["probe"], want.accuracy, rtol=1e-9)
    np.testing.assert_allclose(bars["probe on shuffled domains"], want.shuffled, rtol=1e-9)
    # no --router-logits full: no scores to choose, so no choice (a radio of one option did nothing; a browser
    # tour), a caption naming the features instead; the control: a run of full scores offers both
    assert "probe_features" not in [r.key for r in at.radio], [r.key for r in at.radio]
    assert any(c.value.startswith("Features: the gate weights of the top-k experts") for c in at.caption)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    (tmp_path / "r" / "run.json").write_text(json.dumps(info | {"options": {"router_logits": "full"}}))
    at = app(tmp_path, "r", page="specialisation")
    at.toggle(key="probe_on").set_value(True).run()
    assert at.radio(key="probe_features").options == ["weights", "scores"] and not at.error
    assert not any(c.value.startswith("Features:") for c in at.caption)


@pytest.mark.slow  # 0.7 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_domain_heatmap_orders_experts_by_domain_or_by_id(tmp_path):
    """With 256 experts in id order a domain's experts do not show as a block: by default the heatmap's
    columns follow `compute.experts_by_domain` of the layer's lifts; "by id" puts them back."""
    from dashboards import compute, data
    from helpers.apptest import chart
    from helpers.synthetic_run import write_run

    write_run(tmp_path / "r", n_seq=40, seq_len=10)
    at = app(tmp_path, "r", page="specialisation")
    ref = next(r for r in data.discover(tmp_path) if r.name == "r")
    de = data.domain_expert(ref)
    layer = at.selectbox(key="sp_layer").value
    _, C = compute.contingency(de, layer, 8)
    want = compute.experts_by_domain(compute.metric("lift")(C))
    assert chart(at, "dom_exp")["data"][0]["x"] == [str(e) for e in want] != [str(e) for e in range(8)]
    at.radio(key="sp_order").set_value("by id").run()
    assert chart(at, "dom_exp")["data"][0]["x"] == [str(e) for e in range(8)]


def test_one_domain_under_a_cap_within_the_first_window_is_told_to_record_more_tokens(monkeypatch):
    """record --max-tokens 5 of the five-domain bundled corpus holds one domain; the note told it to
    record 'a corpus with two or more', which it had (a tour): it says the cap fit in the first window,
    in the report's words (probe.run.one_window_cap)."""
    from dashboards import ui
    from dashboards.runs import RunRef

    said: list[str] = []
    monkeypatch.setattr(ui.st, "info", lambda text, **kw: said.append(text))
    opts = {"max_tokens": 5, "seq_len": 256, "order": "domains"}
    ui.one_domain_note(RunRef("r", "r", "probe", "complete", {"options": opts}), ["chinese"], "Specialisation")
    assert said == ["Specialisation compares domains, and run `r` has 1 domain (`chinese`): it was recorded with "
                    "--max-tokens 5, within the first window (--seq-len 256), and each domain takes a window in "
                    "turn; record with a --max-tokens over 256 from a corpus of two or more domains."]
    ui.one_domain_note(RunRef("r", "r", "probe", "complete", {"options": opts | {"max_tokens": 3000}}), ["code"], "S")
    assert "Record a corpus with two or more" in said[-1]  # a cap past one window: the corpus has one domain
