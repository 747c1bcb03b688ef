"""`dsv3-probe import sglang` across ranks: data-parallel ranks and their sequences, tensor-parallel
copies, pipeline stages, other dump calls beside the imported files, and the placement maps the files
carry (the `world` fixture is in conftest.py; one server's modes are in test_sglang.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

import probe
from helpers import sglang_dumps as sg
from probe.sglang import SGLangError, import_sglang


def test_data_parallel_ranks_that_ran_the_same_batch_are_both_counted(world, tmp_path):
    """per_token kept one of two records alike (pass, tokens, positions) whatever their files: two
    data-parallel ranks that ran the same batch in one pass lost one of them (a review found 216 of
    260 assignments). Now only a whole file that repeats another (tensor parallel) counts once."""
    import copy

    both = sg.traffic(seed=2, passes=4, ranks=2)  # each rank its own tokens ...
    r0 = next(p for p in both if p.fp == 0 and p.rank == 0)
    twin = copy.deepcopy(r0)
    twin.rank = 1  # ... but in pass 0 rank 1 ran rank 0's batch
    both[next(i for i, p in enumerate(both) if p.fp == 0 and p.rank == 1)] = twin
    sg.write_per_token(tmp_path / "dp", both, world["map"], duplicate=False)
    run = probe.open_run(import_sglang(tmp_path / "dp", tmp_path / "run", config=str(world["config"])))
    want = sg.logical_counts(both)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    assert run.info["source"]["tokens"] == sum(len(p.input_ids) for p in both)
    assert run.info["source"]["copies_skipped"] == 0
    tp = probe.open_run(import_sglang(world["per_token"], tmp_path / "tp", config=str(world["config"])))
    assert tp.info["source"]["copies_skipped"] == 1  # the control: rank 1's file repeats rank 0's


def test_files_with_different_maps_are_said_and_the_last_map_is_the_placement(world, tmp_path, capsys):
    """SGLang's map may change while it records (EPLB rebalancing): each file is read with its own
    map, and the placement table holds the last file's, with a note (it silently took the first)."""
    import pyarrow.parquet as pq

    files = sg.write_per_pass(tmp_path / "d", world["passes"], world["map"])
    last = sorted(files)[-1]
    d = torch.load(last, weights_only=True)
    m = d["last_physical_to_logical_map"]
    m[1, [0, 1]] = m[1, [1, 0]]  # two slots of layer 1 swapped: the same experts, another placement
    torch.save(d, last)
    capsys.readouterr()
    run = import_sglang(tmp_path / "d", tmp_path / "run", config=str(world["config"]))
    assert "the files hold different physical-to-logical maps" in capsys.readouterr().err
    p = pq.read_table(run / "placement").to_pandas()
    got = p[p.layer == 1].sort_values("physical").logical.to_numpy()
    assert got.tolist() == m[1].tolist() and got.tolist() != world["map"][1].tolist()


def test_placement_needs_every_rank_or_the_gpu_count(world, tmp_path, capsys):
    """Rank 0's file alone of a 2-rank server put all 40 slots on one GPU (its ranks, [0], passed the
    0..n-1 check), and the Serving page measured that placement's balance as 1.0 (a review). One
    rank's records, or a dump whose other ranks' files lie beside it unimported, now keep no
    placement unless --gpus says how many GPUs the server had."""
    files = sorted(sg.write_per_pass(tmp_path / "d", world["passes"], world["map"]))
    capsys.readouterr()
    run = probe.open_run(import_sglang(files[0], tmp_path / "r0", config=str(world["config"])))
    assert "placement" not in run.tables and run.info["source"]["placement"] is None
    assert "the dump holds one rank's records (rank 0)" in capsys.readouterr().err
    run = probe.open_run(import_sglang(files[0], tmp_path / "r0-gpus", config=str(world["config"]), gpus=2))
    assert run.info["source"]["placement"]["gpus"] == 2 and run.df("placement").gpu.max() == 1
    assert "does not divide" not in capsys.readouterr().err  # above the ranks seen: the rest lie elsewhere
    # a 4-rank server whose ranks 0 and 1 were imported, ranks 2 and 3 beside them; each rank stamps
    # its file with its own time.time() (the check matched one shared stamp, so never a real dump's)
    for rank in (2, 3):
        d = torch.load(files[1], weights_only=True)
        torch.save(d | {"records": [r | {"rank": rank} for r in d["records"]]}, files[1].with_name(sg.rank_file(rank)))
    from probe.sglang import _gpus_unknown
    from probe.sglang_dumps import find_dumps

    two = find_dumps(files[0]) + find_dumps(files[1])  # ranks 0 and 1 imported (a dump names one file or folder)
    assert "files of rank(s) [2, 3] lie beside" in _gpus_unknown(two, [0, 1])
    capsys.readouterr()
    full = probe.open_run(import_sglang(tmp_path / "d", tmp_path / "all", config=str(world["config"])))
    assert full.info["source"]["placement"]["gpus"] == 4 and full.df("placement").gpu.max() == 3
    assert "note: placement read as 4 expert-parallel GPUs" in capsys.readouterr().err  # said, as it is a guess
    # --gpus is the expert-parallel size: a divisor of the ranks' count (1: tensor parallelism only)
    for ep in (1, 2):
        run = probe.open_run(import_sglang(tmp_path / "d", tmp_path / f"ep{ep}", config=str(world["config"]), gpus=ep))
        assert run.info["source"]["placement"]["gpus"] == ep and run.df("placement").gpu.max() == ep - 1
    with pytest.raises(SGLangError, match=r"20 physical experts do not split over 3 GPUs"):
        import_sglang(tmp_path / "d", tmp_path / "bad", config=str(world["config"]), gpus=3)
    # ranks 0-2 of those 4 imported alone: 3 ranks seen, so any EP size may divide the server's count
    three = tmp_path / "three"
    three.mkdir()
    for rank in range(3):
        shutil.copy(tmp_path / "d" / sg.rank_file(rank), three)
    capsys.readouterr()
    run = probe.open_run(import_sglang(three, tmp_path / "ep2of3", config=str(world["config"]), gpus=2))
    assert run.info["source"]["placement"]["gpus"] == 2
    assert "note: --gpus 2 does not divide the 3 ranks that recorded" in capsys.readouterr().err
    with pytest.raises(SGLangError, match=r"--gpus 0: the server's expert-parallel size"):
        import_sglang(tmp_path / "d", tmp_path / "bad", config=str(world["config"]), gpus=0)
    with pytest.raises(SGLangError, match=r"a stat dump has no map"):
        import_sglang(world["stat"], tmp_path / "bad", config=str(world["config"]), gpus=2)


def test_one_ranks_per_pass_file_did_not_count_the_same_tokens_as_another(world, tmp_path):
    # "ranks_counted_the_same_tokens" compares ranks: a single rank's file has none to compare with
    f = sorted(world["per_pass"].glob("*.pt"))[0]
    run = probe.open_run(import_sglang(f, tmp_path / "run", config=str(world["config"])))
    assert run.info["source"]["ranks_counted_the_same_tokens"] is False
    want = sg.logical_counts([p for p in world["passes"] if p.rank == 0])
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]


def test_the_placement_is_the_last_written_files_map_whatever_its_rank(world, tmp_path, capsys):
    # two dump calls; the second's rank 1 file is missing: the last written is the second call's rank 0
    # file (its time stamp), not the first call's rank 1 file (a higher rank)
    import pyarrow.parquet as pq

    d = tmp_path / "d"
    sg.write_per_pass(tmp_path / "a", [p for p in world["passes"] if p.fp < 3], world["map"])
    sg.write_per_pass(tmp_path / "b", [p for p in world["passes"] if p.fp >= 3], world["map"])
    d.mkdir()
    for rank in (0, 1):
        shutil.copy(tmp_path / "a" / sg.rank_file(rank, 1733000000.0), d)
    late = torch.load(tmp_path / "b" / sg.rank_file(0), weights_only=True)
    m = late["last_physical_to_logical_map"]
    m[1, [0, 1]] = m[1, [1, 0]]  # the server rebalanced before the second dump
    torch.save(late, d / sg.rank_file(0, 1733000100.0))
    run = import_sglang(d, tmp_path / "run", config=str(world["config"]))
    p = pq.read_table(run / "placement").to_pandas()
    assert p[p.layer == 1].sort_values("physical").logical.tolist() == m[1].tolist() != world["map"][1].tolist()


def test_other_dump_calls_of_the_same_ranks_beside_the_imported_files_are_not_missing_ranks(world, tmp_path):
    from probe.sglang import _gpus_unknown
    from probe.sglang_dumps import find_dumps

    d = tmp_path / "d"
    d.mkdir()
    for stamp in (1733000000.0, 1733000100.0):  # two dump calls of ranks 0 and 1 in one folder
        for rank, f in enumerate(sg.write_per_pass(tmp_path / f"w{stamp}", world["passes"], world["map"])):
            f.rename(d / sg.rank_file(rank, stamp))
    first = [x for rank in (0, 1) for x in find_dumps(d / sg.rank_file(rank, 1733000000.0))]
    assert _gpus_unknown(first, [0, 1]) is None


def test_per_token_data_parallel_sequences_are_numbered_in_pass_order(world, tmp_path):
    # two data-parallel ranks, each file holding its own passes 0..4: seq ids follow the passes across
    # the files, not rank 0's every pass first and then rank 1's
    sg.write_per_token(tmp_path / "dp", world["passes"], world["map"], duplicate=False)
    run = probe.open_run(import_sglang(tmp_path / "dp", tmp_path / "run", config=str(world["config"]), gpus=2))
    tok = run.df("tokens").sort_values(["seq_id", "pos"])
    fp = tok.doc_id.str.extract(r"^pass(\d+):")[0].astype(int)
    assert fp.is_monotonic_increasing and set(fp) == {p.fp for p in world["passes"]}
    assert set(tok.doc_id.str.extract(r":rank(\d+):")[0].astype(int)) == {0, 1}  # both ranks' tokens kept


def test_per_token_pipeline_stages_are_merged_not_dropped_as_copies(world, tmp_path):
    """Pipeline-parallel stages record the same tokens under the same (pass, rank), each its own
    layers (-1 elsewhere). The second stage's file was taken for a tensor-parallel copy and skipped:
    every layer after the first stage's read as never routed, and no word said."""
    tr = sg.traffic(seed=1, passes=4, ranks=1)
    (f,) = sg.write_per_token(tmp_path / "whole", tr, world["map"], ranks=1)
    dump = torch.load(f, weights_only=True)
    d = tmp_path / "stages"
    d.mkdir()
    for stage, other in ((0, 2), (1, 1)):  # stage 0 routes layer 1, stage 1 layer 2 (layer 0 is dense)
        records = [r | {"topk_ids_of_layer": r["topk_ids_of_layer"].index_fill(0, torch.tensor([other]), -1)}
                   for r in dump["records"]]
        torch.save(dump | {"records": records}, d / f"stage{stage}-{f.name}")
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    want = sg.logical_counts(tr)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    assert len(run.df("tokens")) == sum(len(p.input_ids) for p in tr)  # each token once, not once a stage
    assert run.info["source"]["copies_skipped"] == 0
    # the same pass and rank with other tokens is no pipeline stage: refused, naming both files
    other = dump | {"records": [r | {"input_ids": [x + 1 for x in r["input_ids"]],
                                     "topk_ids_of_layer": r["topk_ids_of_layer"].index_fill(0, torch.tensor([1]), -1)}
                                for r in dump["records"]]}
    torch.save(other, d / f"stage1-{f.name}")
    with pytest.raises(SGLangError, match=r"stage1-.*: pass \d+ of rank 0 is recorded also in stage0-.* with other "
                                          r"tokens"):
        import_sglang(d, tmp_path / "run2", config=str(world["config"]))


def test_tensor_parallel_copies_that_dispatch_to_other_replicas_are_still_copies(world, tmp_path):
    """Tensor-parallel ranks route alike but may each send a token to another replica of its expert
    (SGLang's static dispatch prefers a replica on the rank's own GPU): their files are copies in
    logical experts, not in physical slots, and count once."""
    tr = sg.traffic(seed=2, passes=4, ranks=1)
    m = world["map"]
    d = tmp_path / "tp"
    for rank, seed in ((0, 0), (1, 1)):  # each rank draws its own replicas of the same logical routing
        (f,) = sg.write_per_token(tmp_path / f"r{rank}", tr, m, ranks=1, seed=seed)
        dump = torch.load(f, weights_only=True)
        d.mkdir(exist_ok=True)
        torch.save(dump | {"records": [r | {"rank": rank} for r in dump["records"]]}, d / sg.rank_file(rank))
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    assert run.info["source"]["copies_skipped"] == 1
    assert len(run.df("tokens")) == sum(len(p.input_ids) for p in tr)


def test_ranks_that_do_not_split_the_map_keep_the_loads_and_no_placement(world, tmp_path, capsys):
    """SGLang puts as many physical experts on every GPU, so ranks 0-2 of a 4-rank server with a
    20-slot map are not all of its GPUs: the whole import failed ("20 physical experts do not split over
    3 GPUs") on a placement the import had guessed, not been told. Now its loads are kept, without a
    placement, with a note; --gpus that does not split the map is still refused."""
    passes = sg.traffic(seed=5, passes=3, ranks=4)
    sg.write_per_pass(tmp_path / "d", passes, world["map"], ranks=4)
    three = tmp_path / "three"
    three.mkdir()
    for rank in range(3):
        shutil.copy(tmp_path / "d" / sg.rank_file(rank), three)
    capsys.readouterr()
    run = probe.open_run(import_sglang(three, tmp_path / "run", config=str(world["config"])))
    assert "placement" not in run.tables and run.info["source"]["placement"] is None
    assert run.df("expert_load")["count"].sum() > 0
    err = capsys.readouterr().err
    assert "note: the map's 20 physical experts do not split over the 3 ranks that recorded: the server's GPU " \
           "count is unknown" in err and "placement read as 3" not in err
    with pytest.raises(SGLangError, match=r"20 physical experts do not split over 3 GPUs"):
        import_sglang(three, tmp_path / "bad", config=str(world["config"]), gpus=3)
    ok = probe.open_run(import_sglang(three, tmp_path / "ep4", config=str(world["config"]), gpus=4))
    assert ok.info["source"]["placement"]["gpus"] == 4  # told: the rest lie elsewhere
