"""The Training page, and the routing pages, on training runs written by the training code's own log
(tests/helpers/dashboard_runs.py write_train_run) that are odd in one way: a run.json of an older format, or a run
at its first step. The training runs of the shared fixture: test_dashboard.py."""

from __future__ import annotations

import json

import pytest

from helpers.apptest import app, array, chart, texts
from helpers.dashboard_runs import write_train_run


@pytest.mark.slow  # five visits of the Training page, 0.8 s on the 2-core EPYC (2026-12-07)
def test_the_bias_settling_of_an_older_or_odd_run_json_is_not_called_settled(tmp_path):
    """A run trained before the settling measured its loads after the last update holds `updates` values a
    gate, the last before that update: the caption called it where the bias settled (a review). A
    bias_settle without its mapping of gates to values is one line, not a Python error."""
    run = write_train_run(tmp_path / "t", steps=3)
    info = json.loads((run / "run.json").read_text())
    settle = info["bias_settle"]
    for values, settled in ((4, True), (3, False)):  # updates + 1 (the format now), updates (the older)
        settle["maxvio_pooled"] = {g: [0.9, 0.6, 0.4, 0.3][:values] for g in settle["maxvio_pooled"]}
        (run / "run.json").write_text(json.dumps(info))
        at = app(tmp_path, "t", page="training")
        caption = next(c.value for c in at.caption if "settled bias" in c.value)
        assert not at.exception and ("the last point where it settled" in caption) == settled, caption
        assert ("the last point the loads before the last update" in caption) == (not settled), caption
        drawn = chart(at, "settle")["data"]  # a line a gate, named as the page names its layer, its values
        assert [t["name"] for t in drawn] == ["layer 1", "layer 2", "MTP 0"]
        assert all(list(array(t["y"])) == [0.9, 0.6, 0.4, 0.3][:values] for t in drawn)
    for odd in ({"updates": 3}, {"maxvio_pooled": [0.9, 0.3]}, {"maxvio_pooled": {"layer1": 0.3}}):
        info["bias_settle"] = odd
        (run / "run.json").write_text(json.dumps(info))
        at = app(tmp_path, "t", page="training")
        assert not at.exception and not at.error, odd
        assert "run.json's bias_settle has no maxvio_pooled mapping" in texts(at.warning), odd


@pytest.mark.slow
def test_a_training_run_at_its_first_step(tmp_path):
    """A run that has just started (run.json step 0) or ran --steps 1 has no window of steps to pick:
    the load page drew nothing ('min_value and max_value ... must not be equal')."""
    write_train_run(tmp_path / "t1", steps=1)
    at = app(tmp_path, "t1", page="load_balance")
    assert not at.exception and not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) >= 1 and not at.get("slider")
