"""probe.model_shape: the one answer to "were these two runs made on the same model?" that the report's
--compare, the run vs run metrics, ablate's --loads-from RUN and the dashboard's Compare page share."""

from __future__ import annotations

import json

import pytest

import probe
from probe.model_shape import FIELD_WORDS, LAYOUT, ROUTING, Difference, model_args_of, model_differences

ARGS = {"n_layers": 4, "n_dense_layers": 1, "n_routed_experts": 32, "n_activated_experts": 4}


def test_the_same_model_differs_in_nothing():
    assert model_differences(ARGS, dict(ARGS), ROUTING) == []
    assert model_differences(ARGS, dict(ARGS), LAYOUT) == []
    assert model_differences(ARGS, ARGS | {"dim": 999}, ROUTING + LAYOUT) == []  # a field not asked about


def test_each_differing_field_is_listed_with_both_values_in_the_order_asked():
    other = ARGS | {"n_routed_experts": 16, "n_activated_experts": 2, "n_layers": 3}
    assert model_differences(ARGS, other, ROUTING) == [Difference("n_routed_experts", 32, 16),
                                                       Difference("n_activated_experts", 4, 2)]
    got = model_differences(other, ARGS, LAYOUT)
    assert got == [("n_layers", 3, 4), ("n_routed_experts", 16, 32)]
    assert (got[0].field, got[0].a, got[0].b) == ("n_layers", 3, 4)



def test_a_routing_field_is_worded_in_one_place():
    """The report's --compare and the run vs run metrics each kept their own copy of these words; both
    now name a difference by `Difference.words` (their messages: test_report_cli, test_run_metrics)."""
    other = ARGS | {"n_routed_experts": 16, "n_activated_experts": 2, "n_layers": 3}
    got = model_differences(ARGS, other, ROUTING + ("n_layers",))
    assert [d.words for d in got] == ["routed experts a layer", "experts a token", "n_layers"]
    assert set(FIELD_WORDS) == set(ROUTING)


@pytest.mark.parametrize("missing", [{"n_routed_experts": None}, {}])
def test_a_field_one_side_does_not_state_is_unknown_not_a_difference(missing):
    partial = {k: v for k, v in ARGS.items() if k != "n_routed_experts"} | missing
    other = ARGS | {"n_routed_experts": 16}
    assert model_differences(partial, other, ROUTING) == []
    assert model_differences(other, partial, ROUTING) == []
    assert model_differences({}, other, LAYOUT) == []
    # the fields it does state are still compared
    assert model_differences(partial, other | {"n_activated_experts": 8}, ROUTING) == [("n_activated_experts", 4, 8)]


def test_runs_run_json_and_model_args_are_read_alike(tmp_path, tiny_model):
    (tmp_path / "run.json").write_text(json.dumps({"status": "complete", "model_args": tiny_model.args.to_dict()}))
    run = probe.open_run(tmp_path)
    assert model_args_of(run) == model_args_of(run.info) == model_args_of(tiny_model.args) == \
        tiny_model.args.to_dict()
    E = tiny_model.args.n_routed_experts
    assert model_differences(run, {"n_routed_experts": E + 1}) == [("n_routed_experts", E, E + 1)]
    assert model_differences(run, tiny_model.args, ROUTING + LAYOUT) == []
    assert model_args_of({"status": "complete", "model_args": None}) == {}  # a run.json stating none
    with pytest.raises(TypeError, match="expected a run, a run.json dict, a model_args dict or a ModelArgs, got int"):
        model_args_of(3)
