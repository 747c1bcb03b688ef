"""analyses.ablate.loads.loads_from_run: a run's expert_load ranks the experts of `--top` only when it was
counted on the checkpoint's model (probe.model_shape), layer for layer."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from analyses.ablate import AblationError
from analyses.ablate.loads import loads_from_run
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


def _why(run, layers: str) -> str:
    return (f"{run}: its expert_load counts no loads in MoE layer{'s' * (',' in layers)} {layers} of the model's 1..3 "
            "(recorded with fewer layers, an import of some pipeline stages' dumps, or an edited table?): --top "
            "would rank their experts from zeros; pass --loads-from baseline to rank experts on the tokens evaluated, "
            "or --layers to rank only the layers it counts")


@pytest.mark.parametrize("layers, missing", [((1, 2), "3"), ((2,), "1, 3")])
def test_a_run_of_the_same_model_lacking_a_moe_layers_rows_is_refused(tmp_path, layers, missing):
    """Its loads ranked the lacking layers' experts from zeros, a 'top' of tie-broken ids, without a word."""
    run = _run(tmp_path / "r", layers=layers)
    with pytest.raises(AblationError) as e:
        loads_from_run(run, SHAPE)
    assert str(e.value) == _why(run, missing)


def test_a_moe_layer_whose_rows_count_nothing_is_refused_too(tmp_path):
    """An import with --config of some pipeline stages' dumps writes every MoE layer's rows, zeros in the
    layers no stage it holds routed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = _run(tmp_path / "r")
    for f in (run / "expert_load").glob("*.parquet"):
        t = pq.read_table(f)
        zero = pc.if_else(pc.equal(t["layer"], 2), pa.scalar(0, pa.int64()), t["count"])
        pq.write_table(t.set_column(t.schema.get_field_index("count"), "count", zero), f)
    with pytest.raises(AblationError) as e:
        loads_from_run(run, SHAPE)
    assert str(e.value) == _why(run, "2")


def test_ablate_top_says_it_in_one_line_and_baseline_is_the_way_out(probe_env, tmp_path, capsys):
    """The refusal reaches `python -m analyses.ablate --top` as its one-line error, before any pass;
    the way it names, --loads-from baseline, runs."""
    from analyses.ablate.__main__ import main
    from helpers.cli_errors import assert_one_line_error
    from probe.job import checkpoint_args

    args = checkpoint_args(str(probe_env["ckpt"]), AblationError)
    moe = list(range(args.n_dense_layers, args.n_layers))
    run = tmp_path / "run"
    write_run(run, E=args.n_routed_experts, K=args.n_activated_experts, layers=moe[:-1])  # the last one lacking
    info = json.loads((run / "run.json").read_text()) | {
        "status": "complete", "model_args": args.to_dict(), "checkpoint": {"path": str(probe_env["ckpt"])},
        "corpus": {"path": str(probe_env["corpus"])}, "options": {"seq_len": 32}}
    (run / "run.json").write_text(json.dumps(info))
    argv = ["--run", str(run), "--top", "1", "--max-tokens", "64", "--out", str(tmp_path / "out"), "--no-progress"]
    assert_one_line_error(main(argv), capsys, f"its expert_load counts no loads in MoE layer {moe[-1]} of the "
                          f"model's {moe[0]}..{moe[-1]}", tmp_path / "out")
    assert main([*argv, "--loads-from", "baseline"]) == 0
    # --layers confines --top to the layers the run counts: its loads rank them
    assert main([*argv, "--layers", ",".join(map(str, moe[:-1]))]) == 0


def test_an_import_of_later_pipeline_stages_is_told_its_missing_layers_not_another_model(tmp_path):
    """An SGLang import without --config states as n_dense_layers the first layer its dumps counted in:
    of later pipeline stages' dumps (layers 2-3 here) it said 2, and the loads were refused as counted
    on 'another model (4 layers, 2 dense, 8 experts; the checkpoint has 4, 1, 8)'. The model is the same;
    the layers missing are named. A record stating another dense count is still another model."""
    run = _run(tmp_path / "r", layers=(2, 3), n_dense_layers=2)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"kind": "import"}))
    with pytest.raises(AblationError) as e:
        loads_from_run(run, SHAPE)
    assert str(e.value) == _why(run, "1")
    rec = _run(tmp_path / "rec", layers=(2, 3), n_dense_layers=2)
    with pytest.raises(AblationError, match=r"counted on another model \(4 layers, 2 dense, 8 experts; "):
        loads_from_run(rec, SHAPE)


def test_only_the_layers_top_ranks_need_loads(tmp_path, capsys):
    """A run lacking layer 1 (an import of later pipeline stages' dumps) ranks --top --layers 2,3: every
    MoE layer was required, so its own layers were refused too. The partial-loads note counts the
    tokens of a layer the run counts (layer 1's zeros said 0 tokens)."""
    from analyses.ablate.inputs import AblateOptions
    from analyses.ablate.loads import run_loads

    run = _run(tmp_path / "r", layers=(2, 3))
    loads = loads_from_run(run, SHAPE, ranked=[2, 3])
    assert loads["all"][0].sum() == 0 and (loads["all"][1:].sum(1) > 0).all()
    with pytest.raises(AblationError) as e:
        loads_from_run(run, SHAPE, ranked=[1, 3])
    assert str(e.value) == _why(run, "1")
    info = json.loads((run / "run.json").read_text()) | {"status": "interrupted"}
    got, source, partial = run_loads(AblateOptions(run=str(run), loads_from="run"), info, SHAPE, True, [2, 3])
    tokens = int(loads["all"][1].sum()) // SHAPE.topk
    assert got is not None and source.startswith("run:") and partial["tokens"] == tokens > 0
    assert f"its expert_load covers {tokens:,} tokens" in capsys.readouterr().err
