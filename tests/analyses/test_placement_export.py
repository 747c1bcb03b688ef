"""Placement plans in SGLang's and deepseek-ai/EPLB's formats: read back, they equal our plan slot for slot and
GPU for GPU; DeepSeek EPLB's own README example is planned at least as well as EPLB plans it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.synthetic_run import write_run
from analyses.placement import Placement, plan_placement, plan_run
from analyses.placement.__main__ import main
from analyses.placement.export import read_export

# deepseek-ai/EPLB README: 2 layers x 12 experts, 16 physical slots (4 redundant), 4 groups, 2 nodes, 8 GPUs
EPLB_WEIGHTS = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
EPLB_BALANCEDNESS = (0.828, 0.805)  # mean / max GPU load of EPLB's plan for each layer (its README's phy2log)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eplb_readme_example_at_least_as_balanced_as_eplb():
    for w, theirs in zip(EPLB_WEIGHTS, EPLB_BALANCEDNESS):
        p = plan_placement(w, n_gpus=8, n_nodes=2, n_redundant=4, groups=4)
        assert p.phy_to_log.shape == (8, 2) and sorted(set(p.phy_to_log.reshape(-1))) == list(range(12))
        assert p.gpu_load.sum() == pytest.approx(sum(w))
        # hierarchical: each node holds whole groups (2 groups of 3 experts per node) and their replicas
        for node in range(2):
            groups = {e // 3 for e in p.phy_to_log[node * 4:(node + 1) * 4].reshape(-1)}
            assert len(groups) == 2, (node, groups)
        assert round(p.balancedness_after, 3) >= theirs, (p.balancedness_after, theirs)
    # negative control: the contiguous placement without replicas is far below EPLB on the same loads
    assert Placement(np.asarray(EPLB_WEIGHTS[0], float), np.arange(16).reshape(8, 2) % 12, 2,
                     "hierarchical").balancedness_after < 0.7


def _check_against_plan(phy2log_rows: np.ndarray, plans: dict, n_gpus: int):
    for row, (layer, plan) in zip(phy2log_rows, sorted(plans.items())):
        np.testing.assert_array_equal(row, plan.phy_to_log.reshape(-1))
        # predicted per-GPU load from the file alone: each logical load split evenly over its replicas
        cnt = np.bincount(row, minlength=len(plan.loads))
        gpu = (plan.loads[row] / cnt[row]).reshape(n_gpus, -1).sum(1)
        np.testing.assert_allclose(gpu, plan.gpu_load)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_export_round_trips(tmp_path, capsys, suffix):
    write_run(tmp_path / "run", E=8, K=2, layers=(1, 2), groups=4)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    info["model_args"]["n_layers"] = 4  # layers 0 (dense) and 3 have no loads: SGLang's trivial map there
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    out = tmp_path / f"plan{suffix}"
    code, stdout, err = _cli(capsys, tmp_path / "run", "--gpus", 4, "--redundant", 4, "--format", "sglang",
                             "--out", out)
    assert code == 0, err
    assert f"--init-expert-location {out} --ep-num-redundant-experts 4" in stdout
    got = read_export(out)
    assert list(got) == ["physical_to_logical_map"]  # SGLang passes the dict's keys as arguments: nothing else
    m = got["physical_to_logical_map"]
    assert m.shape == (4, 12) and m.dtype.kind == "i"
    plans = plan_run(tmp_path / "run", 4, 1, 4)
    _check_against_plan(m[[1, 2]], plans, 4)
    for layer in (0, 3):
        np.testing.assert_array_equal(m[layer], np.arange(12) % 8)
    if suffix == ".json":  # exactly what SGLang's json.loads(Path(data).read_text()) sees: nested int lists
        raw = json.loads(out.read_text())["physical_to_logical_map"]
        assert isinstance(raw[0][0], int) and len(raw) == 4
    assert not list(tmp_path.glob(".plan*"))  # temporary file renamed


def test_eplb_export_round_trips_with_eplbs_shapes(tmp_path, capsys):
    write_run(tmp_path / "run", E=8, K=2, layers=(1, 2), groups=4, seed=3)
    out = tmp_path / "eplb.pt"
    code, _, err = _cli(capsys, tmp_path / "run", "--gpus", 4, "--nodes", 2, "--redundant", 8, "--format", "eplb",
                        "--out", out)
    assert code == 0, err
    got = read_export(out)
    phy2log, log2phy, logcnt = got["phy2log"], got["log2phy"], got["logcnt"]
    plans = plan_run(tmp_path / "run", 4, 2, 8)
    assert phy2log.shape == (2, 16) and logcnt.shape == (2, 8)
    # EPLB pads log2phy to the most replicas any expert has (logcnt.max()), not to redundant + 1
    assert log2phy.shape == (2, 8, logcnt.max()) and logcnt.max() < 8 + 1
    _check_against_plan(phy2log, plans, 4)
    for i in range(2):
        np.testing.assert_array_equal(logcnt[i], np.bincount(phy2log[i], minlength=8))
        for e in range(8):
            slots = log2phy[i, e]
            valid = slots[slots >= 0]
            assert len(valid) == logcnt[i, e] and (slots[len(valid):] == -1).all()
            assert (phy2log[i, valid] == e).all()


def test_logical_count_export_needs_no_gpus(tmp_path, capsys):
    arrays = write_run(tmp_path / "run", E=8, K=2, layers=(1, 2), groups=4)
    out = tmp_path / "counts.json"
    code, stdout, err = _cli(capsys, tmp_path / "run", "--format", "logical-count", "--out", out)
    assert code == 0, err
    assert "--init-expert-location" in stdout
    lc = np.asarray(json.loads(out.read_text())["logical_count"])
    assert lc.shape == (3, 8)  # no n_layers in this run.json: last loaded layer + 1
    assert (lc[0] == 0).all()
    for layer in (1, 2):
        np.testing.assert_array_equal(lc[layer], np.bincount(arrays["ids"][layer].reshape(-1), minlength=8))


def test_export_errors_are_one_line_and_name_the_file(tmp_path, capsys):
    write_run(tmp_path / "run", E=8, K=2, groups=4)
    run = tmp_path / "run"
    for args, needles in (
        (("--gpus", 3, "--redundant", 0, "--format", "sglang", "--out", tmp_path / "p.json"),
         (str(run), "--gpus 3 does not divide the 8 slots")),
        (("--gpus", 4, "--format", "sglang"), ("--out",)),
        (("--gpus", 4, "--format", "eplb", "--out", tmp_path / "p.csv"), ("p.csv", ".json or .pt")),
        (("--format", "sglang", "--out", tmp_path / "p.json"), ("--gpus",)),
    ):
        code, _, err = _cli(capsys, run, *args)
        assert code == 2 and err.count("\n") == 1, err
        assert all(n in err for n in needles), (needles, err)
    assert not list(tmp_path.glob("p.*")) and not list(tmp_path.glob(".p.*"))


def test_replay_gpu_loads_hand_checked():
    from analyses.placement import PlacementError
    from analyses.placement.replay import balancedness, gpu_loads, trivial_map

    # 4 experts, 6 slots on 3 GPUs: [0 1 | 0 2 | 3 1]; experts 0 and 1 have two replicas each
    m = np.array([0, 1, 0, 2, 3, 1])
    np.testing.assert_allclose(gpu_loads([10, 4, 3, 5], m, 3), [5 + 2, 5 + 3, 5 + 2])
    b = balancedness(np.array([[[10, 4, 3, 5]], [[0, 0, 0, 0]]]), [m], 3)
    assert b[0, 0] == pytest.approx((22 / 3) / 8) and np.isnan(b[1, 0])  # an empty pass: no value
    np.testing.assert_array_equal(trivial_map(4, 6), [0, 1, 2, 3, 0, 1])
    for bad, needle in (((m, 4), "do not split evenly over 4 GPUs"), ((np.array([0, 1, 0, 2, 0, 1]), 3),
                        "experts [3] have no slot"), ((np.array([0, 1, 0, 2, 3, 7]), 3), "outside 0..3")):
        with pytest.raises(PlacementError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            gpu_loads([10, 4, 3, 5], *bad)


def test_a_trained_runs_mtp_router_is_not_a_layer_of_the_plan(tmp_path, capsys):
    """A trained run counts its MTP block's router as layer n_layers. Serving engines place the MTP
    draft module apart from the main model's expert map, so the exports leave it out: before, the
    logical-count export raised IndexError and the sglang one refused 'layer 3 outside 3 layers'."""
    write_run(tmp_path / "run", E=8, K=2, layers=(1, 2, 3), groups=4)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    info["model_args"] = (info.get("model_args") or {}) | {"n_layers": 3, "n_expert_groups": 4}
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    code, _, err = _cli(capsys, tmp_path / "run", "--format", "logical-count", "--out", tmp_path / "lc.json")
    assert code == 0, err
    assert np.asarray(json.loads((tmp_path / "lc.json").read_text())["logical_count"]).shape == (3, 8)
    code, _, err = _cli(capsys, tmp_path / "run", "--gpus", "4", "--redundant", "4", "--format", "sglang",
                        "--out", tmp_path / "plan.json")
    assert code == 0, err
    assert len(json.loads((tmp_path / "plan.json").read_text())["physical_to_logical_map"]) == 3
    assert set(plan_run(tmp_path / "run", n_gpus=4, n_redundant=4)) == {1, 2}


def test_a_plan_written_over_the_runs_own_files_is_refused(tmp_path, capsys):
    """`--out RUN/run.json` replaced the run's metadata with the plan and exited 0, and a plan inside a
    table folder was taken as well (a review). A plan beside run.json is fine (the control)."""
    write_run(tmp_path / "run", E=8, K=2, groups=4)
    run = tmp_path / "run"
    before = (run / "run.json").read_text()
    table = next(p for p in sorted(run.iterdir()) if p.is_dir() and not p.name.startswith(("_", ".")))
    for out, needle in ((run / "run.json", "is the run.json of the run"),
                        (table / "plan.json", f"inside the folder {table.name}/ of the run")):
        code, _, err = _cli(capsys, run, "--gpus", 4, "--format", "sglang", "--out", out)
        assert code == 2 and err.count("\n") == 1 and needle in err and str(out) in err, err
    assert (run / "run.json").read_text() == before and not (table / "plan.json").exists()
    code, _, err = _cli(capsys, run, "--gpus", 4, "--format", "sglang", "--out", run / "plan.json")
    assert code == 0 and (run / "plan.json").is_file(), err
    # a folder of the user's own in a run, and a plan beside a checkpoint's files (twice: the second time
    # over the first plan), are fine; the checkpoint's own files are not (a review of the first version)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    for out in (run / "plans" / "p.json", ckpt / "plan.json", ckpt / "plan.json"):
        out.parent.mkdir(exist_ok=True)
        code, _, err = _cli(capsys, run, "--gpus", 4, "--format", "sglang", "--out", out)
        assert code == 0 and out.is_file(), (out, err)
    code, _, err = _cli(capsys, run, "--gpus", 4, "--format", "sglang", "--out", ckpt / "config.json")
    assert code == 2 and f"is a file of the checkpoint {ckpt}" in err and (ckpt / "config.json").read_text() == "{}"


@pytest.mark.parametrize("fmt,suffix", [("sglang", ".json"), ("eplb", ".pt"), ("logical-count", ".json"),
                                        ("table", ".json"), ("table", ".parquet")])
def test_an_existing_file_is_replaced_only_when_it_is_a_placement_file(tmp_path, capsys, fmt, suffix):
    """--out naming a user's own file (settings.json) replaced it with the plan without a word (a tour);
    a file this command wrote, in any format, is replaced (the control)."""
    import pandas as pd
    import torch

    write_run(tmp_path / "run", E=8, K=2, groups=4)
    mine, plan = tmp_path / f"mine{suffix}", tmp_path / f"plan{suffix}"
    if suffix == ".json":
        mine.write_text('{"theme": "dark"}\n')
    elif suffix == ".parquet":  # a corpus of the user's: Parquet as the plan table is
        pd.DataFrame({"text": ["keep"]}).to_parquet(mine)
    else:  # weights of the user's: a torch.save zip as a .pt plan is
        torch.save({"w": torch.zeros(2)}, mine)
    before = mine.read_bytes()
    gpus = [] if fmt == "logical-count" else ["--gpus", 4]
    code, _, err = _cli(capsys, tmp_path / "run", *gpus, "--format", fmt, "--out", mine)
    assert code == 2 and err == f"error: --out {mine}: exists and is not a placement file; write to a new file " \
                                "(or delete it first)\n" and mine.read_bytes() == before
    for redundant in (0, 4):
        extra = [] if fmt == "logical-count" else ["--redundant", redundant]
        code, _, err = _cli(capsys, tmp_path / "run", *gpus, *extra, "--format", fmt, "--out", plan)
        assert code == 0, err


def test_an_existing_out_is_told_a_placement_file_by_parsing_it_not_by_its_first_bytes(tmp_path, capsys,
                                                                                      monkeypatch):
    """The check searched the file's first KiB (and last 4 KiB) for the formats' keys: a user's notes.json
    that named phy2log, or a CSV named .parquet with a predicted_load column, was replaced by the plan, and
    our own plan re-indented by json.tool was refused (a tour). Now the file is parsed as its suffix says."""
    import torch

    write_run(tmp_path / "run", E=8, K=2, groups=4)
    plan = ["--gpus", 4, "--redundant", 4]
    user = {"notes.json": b"My notes on the EPLB outputs: phy2log is the map, log2phy its inverse.\n",
            "brace.json": b'{\n "config": my notes, not JSON\n',
            "keys.json": b'{"phy2log": [], "theme": "dark"}',
            "mine.parquet": b"layer,predicted_load\n1,2\n", "mine.pt": b"phy2log logcnt log2phy"}
    for name, data in user.items():
        (tmp_path / name).write_bytes(data)
        code, _, err = _cli(capsys, tmp_path / "run", *plan, "--format", "eplb" if name.endswith(".pt") else "table",
                            "--out", tmp_path / name)
        assert code == 2 and "exists and is not a placement file" in err and err.count("\n") == 1, (name, err)
        assert (tmp_path / name).read_bytes() == data
    js = tmp_path / "plan.json"
    assert _cli(capsys, tmp_path / "run", *plan, "--out", js)[0] == 0
    ours = {"plan.json": b"\xef\xbb\xbf \n" + json.dumps(json.loads(js.read_text()), indent=4).encode(),
            "blank.json": b"\xef\xbb\xbf  \n"}
    for name, data in ours.items():  # our table re-indented, after a byte-order mark and white space
        (tmp_path / name).write_bytes(data)
        code, _, err = _cli(capsys, tmp_path / "run", *plan, "--out", tmp_path / name)
        assert code == 0 and json.loads((tmp_path / name).read_text())["config"]["gpus"] == 4, (name, err)
    torch.save({"logical_count": torch.zeros(2)}, tmp_path / "lc.pt")  # an export's keys in a .pt
    assert _cli(capsys, tmp_path / "run", *plan, "--format", "sglang", "--out", tmp_path / "lc.pt")[0] == 0

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # another user's file (root reads anything, so a stand-in)
    code, _, err = _cli(capsys, tmp_path / "run", *plan, "--out", js)
    assert code == 2 and err == (f"error: --out {js}: exists and cannot be read (Permission denied), so it cannot be "
                                 "told to be a placement file; write to a new file (or delete it first)\n"), err


@pytest.mark.parametrize("fmt,name", [("table", "plan.json"), ("table", "plan.parquet"), ("sglang", "plan.pt"),
                                      ("logical-count", "lc.json")])
def test_an_out_in_folders_not_made_yet_is_written(tmp_path, capsys, fmt, name):
    """check_out_parent passed an --out under folders not made yet (as report and tokenizer make them), and
    the write failed after planning: 'cannot write it there (No such file or directory)' (a tour)."""
    write_run(tmp_path / "run", E=8, K=2, groups=4)
    out = tmp_path / "plans" / "new" / name
    plan = [] if fmt == "logical-count" else ["--gpus", 4]
    code, _, err = _cli(capsys, tmp_path / "run", *plan, "--format", fmt, "--out", out)
    assert code == 0 and out.is_file() and out.stat().st_size > 0, err


def test_a_run_whose_run_json_cannot_be_read_is_refused_in_one_line(tmp_path, monkeypatch):
    """Deciding whether an --out below a run lands in one of its table folders read run.json and
    listed the run: another user's (permission denied) ended in a traceback (a review)."""
    from probe.job import RecordError, check_out_parent

    run = tmp_path / "run"
    (run / "notes").mkdir(parents=True)
    (run / "run.json").write_text('{"status": "complete", "tables": ["routing"]}')
    check_out_parent(run / "notes" / "x.json", file=True)  # the control: a folder of the user's own

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(run / "run.json"))

    monkeypatch.setattr("probe.writer.read_run_json", denied)
    monkeypatch.setattr(type(run), "iterdir", denied)
    with pytest.raises(RecordError, match=r"is inside the folder notes/ of the run .*, which holds its tables"):
        check_out_parent(run / "notes" / "x.json", file=True)


def test_sglang_map_refuses_a_layer_outside_the_model_and_mixed_slot_counts():
    from analyses.placement import PlacementError
    from analyses.placement.export import sglang_map

    six = Placement(np.ones(4), np.array([[0, 1, 0], [2, 1, 3]]), 1, "global")
    eight = Placement(np.ones(4), np.array([[0, 1, 0, 1], [2, 3, 2, 3]]), 1, "global")
    np.testing.assert_array_equal(sglang_map({2: six}, 3, 4)[2], [0, 1, 0, 2, 1, 3])  # the control: last layer
    with pytest.raises(PlacementError, match="layer 3 is outside the model's 3 layers"):
        sglang_map({3: six}, 3, 4)
    with pytest.raises(PlacementError, match=r"different numbers of physical slots: \[6, 8\]"):
        sglang_map({1: six, 2: eight}, 3, 4)


def test_eplb_maps_list_layers_in_order_and_replicas_in_slot_order():
    from analyses.placement.export import eplb_maps

    a = Placement(np.ones(4), np.array([[0, 1, 0], [2, 1, 3]]), 1, "global")  # physical [0 1 0 2 1 3]
    b = Placement(np.ones(4), np.array([[3, 2, 1], [0, 3, 2]]), 1, "global")
    got = eplb_maps({2: a, 1: b})  # planned layers given out of order
    np.testing.assert_array_equal(got["phy2log"], [[3, 2, 1, 0, 3, 2], [0, 1, 0, 2, 1, 3]])
    # layer 2 by hand: expert 0 in slots 0 and 2, expert 1 in 1 and 4, expert 2 in 3, expert 3 in 5
    np.testing.assert_array_equal(got["log2phy"][1], [[0, 2], [1, 4], [3, -1], [5, -1]])
    np.testing.assert_array_equal(got["logcnt"], [[1, 1, 2, 2], [2, 2, 1, 1]])


def test_replay_refuses_maps_outside_the_experts_and_a_map_count_other_than_the_layers():
    from analyses.placement import PlacementError
    from analyses.placement.replay import balancedness, gpu_loads

    for bad in ([0, 1, 2, 3, -1, 1], [0, 1, 2, 3, 4, 1]):  # -1 would wrap to the last expert; 4 is past it
        with pytest.raises(PlacementError, match="outside 0..3"):
            gpu_loads([10, 4, 3, 5], np.array(bad), 3)
    m = np.array([0, 1, 0, 2, 3, 1])
    with pytest.raises(PlacementError, match="one map per layer"):
        balancedness(np.ones((2, 2, 4)), [m], 3)  # two layers, one map


def test_logical_count_rounds_loads_to_the_nearest_count_and_zeroes_unloaded_layers():
    from analyses.placement.export import logical_count

    loads = [2.6, 0.4, 7.0, 1.9999999]  # float sums of counts (e.g. 1.9999999 for 2)
    got = logical_count({1: np.array(loads)}, 3, 4)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[0] * 4, [round(x) for x in loads], [0] * 4])
