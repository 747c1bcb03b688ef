"""analyses.ablate.run.loads_from_run: a run's expert_load ranks the experts of `--top` only when it was
counted on the checkpoint's model (probe.model_shape), layer for layer."""

from __future__ import annotations

import json

import pytest

from analyses.ablate import AblationError
from analyses.ablate.run import loads_from_run
from analyses.ablate.select import RouterShape
from helpers.synthetic_run import write_run

# the checkpoint: 4 layers, layer 0 dense, MoE layers 1-3 of 8 experts, top-2
SHAPE = RouterShape(n_layers=4, n_dense_layers=1, n_experts=8, topk=2, n_groups=4, topk_groups=2, has_bias=True,
                    n_shared=1)
ARGS = {"n_layers": 4, "n_dense_layers": 1, "n_routed_experts": 8}


def _run(path, layers=(1, 2, 3), **model_args):
    write_run(path, E=8, layers=layers)
    info = json.loads((path / "run.json").read_text())
    info["model_args"] = {k: v for k, v in (info["model_args"] | ARGS | model_args).items() if v is not None}
    (path / "run.json").write_text(json.dumps(info))
    return path


def test_the_loads_of_the_same_model_rank_its_experts(tmp_path):
    loads = loads_from_run(_run(tmp_path / "r"), SHAPE)
    assert loads["all"].shape == (3, 8) and (loads["all"].sum(1) > 0).all()
    assert loads["all"].sum() == sum(loads[d].sum() for d in ("code", "prose"))


@pytest.mark.parametrize("model_args, theirs", [
    ({"n_routed_experts": 16}, "4 layers, 1 dense, 16 experts"),
    ({"n_layers": 5}, "5 layers, 1 dense, 8 experts"),
    # a field the run does not state is unknown: the ones it states still decide (the whole check was
    # skipped when any of the three was missing)
    ({"n_dense_layers": None, "n_routed_experts": 16}, "4 layers, ? dense, 16 experts"),
])
def test_the_loads_of_another_model_are_refused_naming_both_shapes(tmp_path, model_args, theirs):
    run = _run(tmp_path / "r", **model_args)
    with pytest.raises(AblationError) as e:
        loads_from_run(run, SHAPE)
    assert str(e.value) == (f"{run}: its expert_load was counted on another model ({theirs}; the checkpoint has 4, "
                            "1, 8): pass --loads-from baseline to rank experts on this model")


def test_a_run_that_states_no_model_is_not_refused_for_it(tmp_path):
    run = _run(tmp_path / "r", n_layers=None, n_dense_layers=None, n_routed_experts=None)
    assert loads_from_run(run, SHAPE)["all"].shape == (3, 8)
