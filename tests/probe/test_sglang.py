"""`dsv3-probe import sglang`: dumps built in SGLang's structures (tests/helpers/sglang_dumps.py) from a
known routing, for the three recorder modes and two ranks, imported and checked against that
routing (the `world` fixture is in conftest.py; refused input is in test_sglang_refusals.py, several
ranks' and stages' files in test_sglang_ranks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from helpers import sglang_dumps as sg
from probe.sglang import SGLangError, import_sglang


@pytest.mark.parametrize("mode", ["stat", "per_pass", "per_token"])
def test_expert_load_per_pass_equals_the_routing(world, tmp_path, mode):
    run = probe.open_run(import_sglang(world[mode], tmp_path / "run", config=str(world["config"])))
    want = sg.logical_counts(world["passes"])
    got = sg.run_loads(run)
    assert sorted(got) == list(range(len(want)))  # one step per forward pass (empty buffer rows dropped)
    for step, fp in enumerate(sorted(want)):
        np.testing.assert_array_equal(got[step][1:], want[fp][1:], err_msg=f"{mode} pass {fp}")
    assert set(run.df("expert_load").layer) == {1, 2}  # the dense layer is skipped
    src = run.info["source"]
    assert src["name"] == "sglang" and src["mode"] == mode and src["passes"] == len(want)
    assert run.info["model_args"]["n_routed_experts"] == sg.E and run.status == "complete"
    if mode == "stat":
        assert src["dropped_empty_passes"] == 8 - len(want) and "placement" not in run.tables
    else:
        assert src["ranks"] == [0, 1]
        pl = run.df("placement")
        np.testing.assert_array_equal(pl[pl.layer == 1].sort_values("physical").logical, world["map"][1])
        assert pl.gpu.max() == 1 and (pl.groupby("gpu").size() == (sg.E + 4) // 2 * 2).all()


@pytest.mark.parametrize("mode", ["stat", "per_pass"])
def test_expert_load_tokens_are_the_passes_tokens(world, tmp_path, mode):
    """The tokens of a pass (expert_load's `tokens`, the mean load's T) were never checked for the
    count imports: a pass's top-k assignments not divided by top-k gave K times its tokens (a review).
    By hand: the tokens every rank sent through the pass."""
    run = probe.open_run(import_sglang(world[mode], tmp_path / "run", config=str(world["config"])))
    el = run.df("expert_load")
    want = {}
    for p in world["passes"]:
        want[p.fp] = want.get(p.fp, 0) + len(p.input_ids)
    for step, fp in enumerate(sorted(want)):
        assert set(el[el.step == step].tokens) == {want[fp]}, (mode, step)


def test_placement_gpus_are_contiguous_blocks_of_slots(world, tmp_path):
    """SGLang puts physical slots on expert-parallel ranks in contiguous blocks (slot // slots per
    GPU); the existing checks (GPU count, slots per GPU) also held for slots dealt round-robin
    (a review). Exactly, per layer: gpu = arange(P) // (P / GPUs)."""
    run = probe.open_run(import_sglang(world["per_pass"], tmp_path / "run", config=str(world["config"])))
    pl = run.df("placement")
    P, gpus = sg.E + 4, 2
    assert run.info["source"]["placement"]["gpus"] == gpus
    for layer, g in pl.groupby("layer"):
        g = g.sort_values("physical")
        np.testing.assert_array_equal(g.physical, np.arange(P))
        np.testing.assert_array_equal(g.gpu, np.arange(P) // (P // gpus), err_msg=f"layer {layer}")


def test_per_token_tokens_and_routing_equal_the_routing(world, tmp_path):
    run = probe.open_run(import_sglang(world["per_token"], tmp_path / "run", config=str(world["config"])))
    tok = run.df("tokens").sort_values(["seq_id", "pos"])
    passes = world["passes"]
    assert len(tok) == sum(len(p.input_ids) for p in passes)  # the tensor-parallel duplicates kept once
    assert tok.token_id.tolist() == [t for p in sorted(passes, key=lambda p: p.fp) for t in p.input_ids] or \
        sorted(tok.token_id) == sorted(t for p in passes for t in p.input_ids)
    r = run.df("routing")
    assert set(r.layer) == {1, 2} and r.expert_weights.isna().all()
    assert all(len(x) == sg.K for x in r.expert_ids)  # the -1 padding of SGLang's 8-wide buffer dropped
    # every token's logical top-k per layer, as routed
    want = {}
    for p in passes:
        for t, (tid, pos) in enumerate(zip(p.input_ids, p.positions)):
            for layer in (1, 2):
                want.setdefault((p.fp, tid, pos, layer), []).append(sorted(p.logical[layer, t]))
    merged = r.merge(tok[["seq_id", "pos", "token_id", "doc_id"]], on=["seq_id", "pos"])
    merged["fp"] = merged.doc_id.str.extract(r"pass(\d+):").astype(int)
    for row in merged.itertuples():
        assert sorted(row.expert_ids) in want[(row.fp, row.token_id, row.pos, row.layer)]
    # prefill passes split into their sequences, decode passes one token per sequence
    first = tok[tok.doc_id.str.startswith("pass0:")]
    assert first.groupby("seq_id").size().tolist() == [n for p in passes if p.fp == 0 for n in p.extend_seq_lens]
    assert run.info["planned"]["tokens"] == len(tok)
    # one document per sequence: a rank's file holding two records of one pass numbered both from seq0,
    # and the token explorer showed two sequences interleaved as one document (a review)
    assert tok.groupby("doc_id").seq_id.nunique().max() == 1 and tok.doc_id.nunique() == tok.seq_id.nunique()


def test_without_config_the_dump_decides(world, tmp_path):
    run = probe.open_run(import_sglang(world["per_pass"], tmp_path / "run"))
    assert run.info["model_args"]["n_dense_layers"] == 1  # layer 0 counted nothing
    # the placement covers the layers expert_load does (it held the dense layer 0 too; a review)
    assert set(run.df("placement").layer) == set(run.df("expert_load").layer) == {1, 2}
    assert run.info["source"]["topk_assumed"] is True


def test_an_assumed_top_k_is_said_on_stderr(world, tmp_path, capsys):
    """Counts without --config do not show the top-k (stat; per_pass without a fused slot): the import
    took DeepSeek-V3's 8 for the tokens per pass and model_args, said only in run.json; now on stderr
    too, naming what rests on it. Controls: the same dumps with --config, and a per_token dump, whose
    ids show the top-k."""
    for mode in ("stat", "per_pass", "per_token"):
        for cfg in (None, str(world["config"])):
            capsys.readouterr()
            run = probe.open_run(import_sglang(world[mode], tmp_path / f"{mode}-{cfg is None}", config=cfg))
            err = capsys.readouterr().err
            assumed = mode != "per_token" and cfg is None
            assert run.info["source"]["topk_assumed"] is assumed, (mode, cfg)
            assert ("8 assumed (DeepSeek-V3's)" in err and "expert_load's tokens per pass" in err) is assumed, err
            if assumed:
                el = run.df("expert_load")
                moe = el[el.layer == run.info["source"]["moe_layers"][0]]
                assert (moe.groupby("step")["count"].sum() // 8 == moe.groupby("step").tokens.first()).all()


def test_without_config_a_per_token_dump_gives_its_own_top_k(world, tmp_path):
    """SGLang's per-token buffer is 8 wide whatever the model's top-k: a top-4 model's tokens leave 4
    columns -1. The import recorded top-8 (the default) in model_args, the Overview showing "16 ·
    top-8" beside a routing of 4 ids a token."""
    run = probe.open_run(import_sglang(world["per_token"], tmp_path / "run"))
    a = run.info["model_args"]
    assert (a["n_activated_experts"], a["n_routed_experts"]) == (sg.K, sg.E)
    assert set(run.df("routing").expert_ids.map(len)) == {sg.K}


def test_several_stat_dumps_join_in_the_order_they_were_written(world, tmp_path):
    """Each /dump_expert_distribution_record call writes one stat file named by time.time(): a folder of
    them is one run, passes in time order whatever the file system lists first; rank != 0 is refused."""
    passes = world["passes"]
    late = tmp_path / "dumps"
    sg.write_stat(late, [p for p in passes if p.fp >= 3], buffer=6, stamp=1733000099.5)  # written first
    sg.write_stat(late, [p for p in passes if p.fp < 3], buffer=4, stamp=999999999.25)  # sorts after by name
    run = probe.open_run(import_sglang(late, tmp_path / "run", config=str(world["config"])))
    want = sg.logical_counts(passes)
    got = sg.run_loads(run)
    assert len(got) == len(want) and run.info["source"]["passes"] == len(want)
    for step, fp in enumerate(sorted(want)):
        np.testing.assert_array_equal(got[step][1:], want[fp][1:], err_msg=f"pass {fp}")
    assert [f.rsplit("_", 1)[-1] for f in run.info["source"]["files"]] == ["999999999.25.pt", "1733000099.5.pt"]
    d = torch.load(next(late.glob("*99.5.pt")), weights_only=True) | {"rank": 1}
    torch.save(d, late / "expert_distribution_recorder_1733000200.0.pt")
    with pytest.raises(SGLangError, match=r"1733000200.0.pt: a stat dump of rank 1"):
        import_sglang(late, tmp_path / "run2")


def test_several_dump_calls_full_buffers_and_ranks_that_counted_the_same(world, tmp_path, capsys):
    """Found against SGLang's own code: (1) a folder of two dump calls of two ranks is four files but
    two ranks (the placement was spread over four GPUs); (2) a stat buffer with no unused row may
    have wrapped, so its pass order is unknown: said, not hidden; (3) per_pass counts that every rank
    recorded alike (tensor parallel: each rank routes the whole batch) are kept once, not summed."""
    passes, m = world["passes"], world["map"]
    d = tmp_path / "two-calls"
    for name, part in (("a", [p for p in passes if p.fp < 3]), ("b", [p for p in passes if p.fp >= 3])):
        for f in sg.write_per_pass(tmp_path / name, part, m):
            d.mkdir(exist_ok=True)
            f.rename(d / f"{name}-{f.name}")
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    assert run.info["source"]["ranks"] == [0, 1] and run.info["source"]["placement"]["gpus"] == 2
    assert run.df("placement").gpu.max() == 1
    want = sg.logical_counts(passes)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    assert run.info["source"]["ranks_counted_the_same_tokens"] is False
    # (2) five passes in a buffer of five
    capsys.readouterr()
    full = probe.open_run(import_sglang(sg.write_stat(tmp_path / "full", passes, buffer=len(want)), tmp_path / "f",
                                        config=str(world["config"])))
    assert full.info["source"]["pass_order_unknown"] is True and "may have wrapped" in capsys.readouterr().err
    assert probe.open_run(import_sglang(world["stat"], tmp_path / "s", config=str(world["config"]))
                          ).info["source"]["pass_order_unknown"] is False  # the control: unused rows left
    # (2b) a second recording on the same server starts where the first stopped (SGLang's buffer keeps
    # its write index across resets) and wraps round to row 0: its passes are still read in order
    for start in (3, 6):
        rot = probe.open_run(import_sglang(sg.write_stat(tmp_path / f"rot{start}", passes, buffer=8, start=start),
                                           tmp_path / f"r{start}", config=str(world["config"])))
        assert rot.info["source"]["pass_order_unknown"] is False and "warning" not in capsys.readouterr().err
        assert [a[1:].tolist() for _, a in sorted(sg.run_loads(rot).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    # (3) rank 1 recorded exactly what rank 0 did
    one = sg.traffic(seed=3, ranks=1)
    (f,) = sg.write_per_pass(tmp_path / "tp", one, m, ranks=1)
    dump = torch.load(f, weights_only=True)
    torch.save(dump | {"records": [r | {"rank": 1} for r in dump["records"]]}, f.with_name("rank1.pt"))
    tp = probe.open_run(import_sglang(tmp_path / "tp", tmp_path / "tp-run", config=str(world["config"])))
    assert tp.info["source"]["ranks_counted_the_same_tokens"] is True
    want = sg.logical_counts(one)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(tp).items())] == [want[fp][1:].tolist() for fp in sorted(want)]


def test_metrics_and_placement_work_on_an_import(world, tmp_path):
    from analyses.metrics import balance_table, layer_loads_from_run
    from analyses.placement import plan_run

    out = import_sglang(world["per_pass"], tmp_path / "run", config=str(world["config"]))
    assert set(layer_loads_from_run(probe.open_run(out))) == {1, 2}
    assert len(balance_table(probe.open_run(out))) == 2
    plans = plan_run(out, n_gpus=4, n_redundant=4)
    assert all(p.balancedness_after >= p.balancedness_before for p in plans.values())


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_model_jobs_do_not_stand_the_bundled_model_in_for_an_import(world, tmp_path, capsys):
    """An import has loads but no model or text: ablate says to pass --ckpt and --corpus (before, the
    bundled model and corpus stood in silently), and the report (per_token: with paths, which domain
    'all' broke) leaves the model's sections out and says so."""
    from analyses.ablate.__main__ import main as ablate_main
    from analyses.report.__main__ import main as report_main

    out = import_sglang(world["per_token"], tmp_path / "run", config=str(world["config"]))
    assert ablate_main(["--run", str(out), "--top", "2", "--no-progress"]) == 2
    assert "an imported run (sglang) has no checkpoint or corpus of its own: pass --ckpt and --corpus" \
        in capsys.readouterr().err
    from probe.__main__ import main as probe_main  # spec too (it once generated with the bundled model)

    assert probe_main(["spec", "--out", str(out), "--no-progress"]) == 2
    assert "an imported run (sglang) has no checkpoint or corpus of its own: pass --ckpt and --corpus" \
        in capsys.readouterr().err
    assert "spec_decode" not in probe.open_run(out).info
    assert report_main([str(out), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "is an import (sglang): it has no checkpoint or corpus, so the sections that run the model" in err
    assert (tmp_path / "r.html").stat().st_size > 0


def test_ablate_top_refuses_the_loads_of_another_model(world, tmp_path, capsys):
    """An import of the tiny model (16 experts, 3 layers) ablated with --ckpt of the bundled one (32
    experts, 4 layers): --top ranked the bundled model's experts by the tiny model's loads, and took
    experts 0 and 1 of layer 3, which the import has no loads for (a tour). Refused before the model
    loads, naming both shapes; --loads-from baseline is the way out."""
    from analyses.ablate.__main__ import main as ablate_main
    from probe.job import DEFAULT_CKPT, DEFAULT_CORPUS

    out = import_sglang(world["per_token"], tmp_path / "run", config=str(world["config"]))
    capsys.readouterr()  # the import's own notes
    code = ablate_main(["--run", str(out), "--ckpt", str(DEFAULT_CKPT), "--corpus", str(DEFAULT_CORPUS),
                        "--top", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert ("its expert_load was counted on another model (3 layers, 1 dense, 16 experts; the checkpoint has "
            "4, 1, 32): pass --loads-from baseline") in err
    assert "ablations" not in probe.open_run(out).tables


def test_the_tokenizer_is_read_when_the_import_runs(world, tmp_path, capsys):
    """--tokenizer is only stored in run.json for the pages to decode tokens with: a typo or a file
    that is not a tokenizer is an error now, not when a page first decodes."""
    from probe.__main__ import main

    from probe.job import DEFAULT_CKPT

    tok = DEFAULT_CKPT / "tokenizer.json"
    (tmp_path / "text.json").write_text("not json")
    for path, msg in ((tmp_path / "nosuch.json", "nosuch.json: no tokenizer"),
                      (tmp_path / "text.json", "text.json: not a tokenizers JSON file")):
        code = main(["import", "sglang", str(world["stat"]), "--tokenizer", str(path), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and msg in err, err
        assert not (tmp_path / "run").exists()
    out = import_sglang(world["stat"], tmp_path / "run", tokenizer=str(tok))  # the control
    assert probe.open_run(out).info["options"]["tokenizer"] == str(tok.resolve())


def test_overwrite_replaces_a_run_and_nothing_else(world, tmp_path, capsys):
    """--overwrite deletes an earlier run (run.json) or an empty folder, never another directory."""
    from probe.__main__ import main

    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("keep")
    code = main(["import", "sglang", str(world["stat"]), "--config", str(world["config"]), "--out", str(mine),
                 "--overwrite"])
    assert code == 2 and "is not a run directory (no run.json): refusing to delete it" in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text() == "keep"
    run = import_sglang(world["stat"], tmp_path / "run", config=str(world["config"]))
    assert probe.open_run(run).df("expert_load").domain.unique().tolist() == ["sglang"]  # not "all"
    assert import_sglang(world["per_pass"], run, config=str(world["config"]), overwrite=True) == run  # the control
    assert probe.open_run(run).info["source"]["mode"] == "per_pass"


def test_an_import_inside_a_run_is_refused_in_one_line(world, tmp_path, capsys):
    """An import into runs/a/sub, inside the run runs/a, was never listed by the dashboard (it lists the
    runs directly in the folder it serves) and runs/a's --overwrite could delete it (a tour)."""
    from probe.__main__ import main

    outer = import_sglang(world["stat"], tmp_path / "runs" / "a", config=str(world["config"]))
    code = main(["import", "sglang", str(world["stat"]), "--config", str(world["config"]), "--out", str(outer / "sub")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: --out {outer / 'sub'}: lies inside the run {outer}, where the dashboard "
                                 "does not list it and that run's --overwrite may delete it; write the run beside "
                                 "that one"), err
    assert not (outer / "sub").exists() and not list(outer.glob(".sub*"))
    with pytest.raises(SGLangError, match="holds the runs a, which a run written there would hide"):
        import_sglang(world["stat"], tmp_path / "runs", config=str(world["config"]), overwrite=True)


def test_overwrite_keeps_and_names_what_no_run_writes(world, tmp_path, capsys):
    """--overwrite replaced the whole folder, deleting a user's notes kept beside the run's tables, where
    `record --overwrite` keeps them (a tour): the old run's own files go, the rest stays and is named."""
    from probe.__main__ import main

    run = import_sglang(world["per_pass"], tmp_path / "run", config=str(world["config"]))
    (run / "notes.md").write_text("mine")
    (run / "old_table").mkdir()  # a table folder of a name this version does not know: the old run's
    (run / "old_table" / "part-0.parquet").write_bytes(b"PAR1")
    code = main(["import", "sglang", str(world["stat"]), "--config", str(world["config"]), "--out", str(run),
                 "--overwrite"])
    assert code == 0 and f"note: --overwrite kept what no run writes in {run}: notes.md\n" in capsys.readouterr().err
    assert (run / "notes.md").read_text() == "mine" and not (run / "old_table").exists()
    new = probe.open_run(run)
    assert new.info["source"]["mode"] == "stat" and "placement" not in new.tables and not (run / "placement").exists()
    assert not list(tmp_path.glob(".run*"))  # no temporary folder left beside it


def test_overwrite_refuses_a_symlinked_out_as_record_does(world, tmp_path, capsys):
    """`--out LINK --overwrite`, LINK a symbolic link to a run, wrote the new run into the link's target,
    where `record --overwrite` refuses such an --out with one line (a tour): the same check now."""
    from probe.__main__ import main

    run = import_sglang(world["stat"], tmp_path / "r", config=str(world["config"]))
    (tmp_path / "link").symlink_to(run)
    code = main(["import", "sglang", str(world["per_pass"]), "--config", str(world["config"]),
                 "--out", str(tmp_path / "link"), "--overwrite"])
    assert code == 2 and capsys.readouterr().err == (
        f"error: --out {tmp_path / 'link'}: a symbolic link (to {run}); --overwrite replaces a run directory: "
        "pass the directory itself\n")
    assert probe.open_run(run).info["source"]["mode"] == "stat" and sorted(p.name for p in tmp_path.iterdir()) == [
        "link", "r"]


def test_overwrite_refuses_a_training_run(world, tmp_path):
    """--overwrite deleted a training run, its trained model and checkpoint with it (a tour)."""
    out = tmp_path / "small"
    for folder in ("train_steps", "model"):
        (out / folder).mkdir(parents=True)
    (out / "run.json").write_text('{"status": "complete", "format": 1, "kind": "train"}')
    with pytest.raises(SGLangError, match="is a training run .train_steps/.; --overwrite would delete its model"):
        import_sglang(world["stat"], out, config=str(world["config"]), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model", "run.json", "train_steps"]


def test_overwrite_refuses_a_run_that_holds_the_dumps_it_imports(world, tmp_path, capsys):
    """Dumps (or the config) kept inside the run they were imported into were deleted with it by the
    next import with --overwrite, after being read (a tour)."""
    import shutil

    from probe.__main__ import main

    run = import_sglang(world["stat"], tmp_path / "run", config=str(world["config"]))
    (run / "dumps").mkdir()
    dump = Path(shutil.copy(world["stat"], run / "dumps"))
    config = Path(shutil.copy(world["config"], run / "config.json"))
    for argv, flag, path in (([str(dump), "--config", str(world["config"])], "DUMP", dump),
                             ([str(world["stat"]), "--config", str(config)], "--config", config)):
        code = main(["import", "sglang", *argv, "--out", str(run), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and f"--overwrite would delete it, and {flag} {path} lies inside it" in err, err
        assert dump.read_bytes() == world["stat"].read_bytes() and config.read_bytes() == world["config"].read_bytes()
        assert probe.open_run(run).info["source"]["mode"] == "stat"


def test_sigterm_during_an_import_leaves_no_half_written_run(world, tmp_path, capsys, monkeypatch):
    """SIGTERM (`timeout`, a scheduler) ended an import where it stood, leaving .OUT.importing, a
    half-written run, beside --out (a tour); it is removed as after Ctrl-C."""
    import signal

    import probe.sglang as ps
    from probe.__main__ import main

    before, real = signal.getsignal(signal.SIGTERM), ps._import_into

    def terminated(tmp, *a, **kw):
        real(tmp, *a, **kw)
        # without a handler of the command's own, SIGTERM would end the test process itself
        assert signal.getsignal(signal.SIGTERM) is not before, "SIGTERM is left to Python's default"
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(ps, "_import_into", terminated)
    (tmp_path / "runs").mkdir()
    code = main(["import", "sglang", str(world["stat"]), "--config", str(world["config"]),
                 "--out", str(tmp_path / "runs" / "prod")])
    assert code == 130 and capsys.readouterr().err.strip() == "terminated"
    assert list((tmp_path / "runs").iterdir()) == [] and signal.getsignal(signal.SIGTERM) is before


def test_draft_passes_of_a_speculative_server_are_skipped(world, tmp_path):
    """A server running MTP speculative decoding records its draft model's passes too: nothing routed
    (the draft's MoE layers do not record), pass ids from the draft's own counter (overlapping the
    target's), the target's tokens again. They doubled a per_token run's tokens and, merged into the
    target's passes, broke the per_pass check for ranks that counted alike (a review against SGLang's
    model_runner and expert_distribution code)."""
    passes, m = world["passes"], world["map"]
    one = sg.traffic(seed=3, ranks=1)
    (f,) = sg.write_per_pass(tmp_path / "tp", one, m, ranks=1)
    dump = torch.load(f, weights_only=True)
    zero = torch.zeros_like(dump["records"][0]["global_physical_count"])
    drafts = [{"forward_pass_id": r["forward_pass_id"], "rank": 0, "gatherer_key": "primary",
               "global_physical_count": zero} for r in dump["records"]]
    for rank in (0, 1):  # a tensor-parallel server: both ranks record the target's passes and the drafts
        recs = [r | {"rank": rank} for r in dump["records"]] + [r | {"rank": rank} for r in drafts]
        torch.save(dump | {"records": recs}, f.with_name(f"rank{rank}.pt"))
    f.unlink()
    tp = probe.open_run(import_sglang(tmp_path / "tp", tmp_path / "tp-run", config=str(world["config"])))
    src = tp.info["source"]
    assert src["ranks_counted_the_same_tokens"] is True and src["empty_records_skipped"] == 2 * len(drafts)
    want = sg.logical_counts(one)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(tp).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    # per_token: every rank's file also holds the draft-extend passes, every id -1
    d = tmp_path / "tok"
    for f in sg.write_per_token(d, passes, m):
        dump = torch.load(f, weights_only=True)
        drafts = [r | {"topk_ids_of_layer": torch.full_like(r["topk_ids_of_layer"], -1)} for r in dump["records"]]
        torch.save(dump | {"records": dump["records"] + drafts}, f)
    run = probe.open_run(import_sglang(d, tmp_path / "tok-run", config=str(world["config"])))
    assert len(run.df("tokens")) == sum(len(p.input_ids) for p in passes)  # not twice as many
    assert run.info["source"]["empty_records_skipped"] == 2 * len(passes)
    want = sg.logical_counts(passes)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]


def test_an_unbounded_stat_buffer_is_read_in_order_with_buffer_size_minus_1(world, tmp_path, capsys):
    """SGLang's unbounded buffer (--expert-distribution-recorder-buffer-size -1) dumps exactly its passes,
    in order: a zero row there is a pass that counted nothing, not a circular buffer's unused gap.
    Read as circular it was rotated round that row, silently, and a dump without one was flagged
    'may have wrapped' although the README's own advice had been followed (a review)."""
    passes, cfg = world["passes"], str(world["config"])
    want = sg.logical_counts(passes)
    order = [want[fp][1:].tolist() for fp in sorted(want)]
    path = sg.write_stat(tmp_path / "unbounded", passes, buffer=len(want) + 1)
    d = torch.load(path, weights_only=True)
    lc = d["logical_count"]
    # a pass that counted nothing (a draft pass) after the second pass: rows p0 p1 0 p2 p3 p4
    torch.save(d | {"logical_count": torch.cat([lc[:2], torch.zeros_like(lc[:1]), lc[2:-1]])}, path)
    capsys.readouterr()
    ok = probe.open_run(import_sglang(path.parent, tmp_path / "ok", config=cfg, buffer_size=-1))
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(ok).items())] == order
    assert ok.info["source"]["pass_order_unknown"] is False and ok.info["source"]["buffer_size"] == -1
    assert ok.info["source"]["dropped_empty_passes"] == 1  # the zero row: skipped, and counted (README)
    # control: read as SGLang's default circular buffer, the same dump comes out rotated
    rotated = probe.open_run(import_sglang(path.parent, tmp_path / "rot", config=cfg))
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(rotated).items())] != order
    # every row a pass: in order, no warning
    full = sg.write_stat(tmp_path / "full", passes, buffer=len(want))
    run = probe.open_run(import_sglang(full, tmp_path / "full-run", config=cfg, buffer_size=-1))
    assert run.info["source"]["pass_order_unknown"] is False and "warning" not in capsys.readouterr().err
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == order
    probe.open_run(import_sglang(full, tmp_path / "full-default", config=cfg))  # circular assumed: warned
    assert "--buffer-size -1" in capsys.readouterr().err
    # --buffer-size N names a circular buffer of N rows; a dump of another size is refused
    with pytest.raises(SGLangError, match=r"6 pass rows, but --buffer-size 8"):
        import_sglang(path, tmp_path / "n", config=cfg, buffer_size=8)
    assert not (tmp_path / "n").exists()
    for bad in (0, -2, 1.5):
        with pytest.raises(SGLangError, match="--buffer-size"):
            import_sglang(path, tmp_path / "n", config=cfg, buffer_size=bad)
    with pytest.raises(SGLangError, match="applies to stat dumps"):
        import_sglang(world["per_pass"], tmp_path / "n", config=cfg, buffer_size=-1)


def test_a_one_row_buffer_with_its_one_pass_is_read_in_order(world, tmp_path, capsys):
    # --buffer-size 1 is a circular buffer of one row: one pass has one order, so nothing is flagged
    one = [p for p in world["passes"] if p.fp == 0]
    path = sg.write_stat(tmp_path / "one", one, buffer=1)
    capsys.readouterr()
    run = probe.open_run(import_sglang(path, tmp_path / "run", config=str(world["config"]), buffer_size=1))
    assert run.info["source"]["passes"] == 1 and run.info["source"]["pass_order_unknown"] is False
    assert "warning" not in capsys.readouterr().err
    assert sg.run_loads(run)[0][1:].tolist() == sg.logical_counts(one)[0][1:].tolist()


def test_per_token_sequences_are_numbered_in_pass_order(world, tmp_path):
    run = probe.open_run(import_sglang(world["per_token"], tmp_path / "run", config=str(world["config"])))
    tok = run.df("tokens").sort_values(["seq_id", "pos"])
    fp = tok.doc_id.str.extract(r"^pass(\d+):")[0].astype(int)
    assert fp.is_monotonic_increasing and fp.iloc[0] == 0  # seq_id 0.. are pass 0's sequences, then pass 1's, ...


def test_per_token_documents_are_numbered_from_seq0_in_each_pass_and_rank(world, tmp_path):
    """doc_id is pass<fp>:rank<r>:seq<i>, i counting the sequences of that pass recorded by that rank from 0,
    over every record of it in the rank's file. By hand: a tensor-parallel dump of three ranks, where
    rank 0's file (the one kept) holds all three ranks' records of each pass as its own."""
    passes = sg.traffic(seed=4, passes=3, ranks=3)
    sg.write_per_token(tmp_path / "d", passes, world["map"], ranks=3)
    run = probe.open_run(import_sglang(tmp_path / "d", tmp_path / "run", config=str(world["config"]), gpus=1))
    tok = run.df("tokens")
    want = set()
    for fp in sorted({p.fp for p in passes}):
        n = sum(len(p.extend_seq_lens) if p.extend_seq_lens else len(p.input_ids) for p in passes if p.fp == fp)
        want |= {f"pass{fp}:rank0:seq{i}" for i in range(n)}
    assert set(tok.doc_id) == want
    assert tok.groupby("doc_id").seq_id.nunique().max() == 1  # one sequence per document


def test_an_mtp_servers_stat_buffer_is_read_in_order(world, tmp_path, capsys):
    """A server running MTP leaves each draft pass's row of the stat buffer empty, so real passes sit between
    single unused rows: every such dump was flagged pass_order_unknown with 'every row used: it may have
    wrapped' (a serving engineer's review). The buffer's own gap is the one longer run of unused rows."""
    want = sg.logical_counts(world["passes"])
    fps = sorted(want)

    def dump(name: str, rows: list[int], buffer: int):
        lc = torch.zeros(buffer, sg.L, sg.E, dtype=torch.int32)
        for fp, row in zip(fps, rows):
            lc[row] = torch.from_numpy(want[fp]).int()
        d = tmp_path / name
        d.mkdir()
        torch.save(dict(rank=0, logical_count=lc, average_utilization_rate_over_window=None),
                   d / "expert_distribution_recorder_1733000000.0.pt")
        capsys.readouterr()
        return probe.open_run(import_sglang(d, tmp_path / f"run-{name}", config=str(world["config"])))

    n = len(fps)
    for name, rows, buffer in (("from0", [2 * i for i in range(n)], 20),  # a draft row after every pass
                               ("wrapped", [(13 + 2 * i) % 20 for i in range(n)], 20)):  # started at 13, wraps
        run = dump(name, rows, buffer)
        assert run.info["source"]["pass_order_unknown"] is False and "warning" not in capsys.readouterr().err
        assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in fps]
    # the control: only single unused rows (no longer gap), the order is ambiguous and said to be, with why
    run = dump("ambiguous", [2 * i for i in range(n)], 2 * n)
    assert run.info["source"]["pass_order_unknown"] is True
    assert "several runs of unused rows and no single longer gap" in capsys.readouterr().err


def test_records_keyed_as_drafts_are_skipped_even_when_they_routed(world, tmp_path):
    """A recorder that routes the draft model's MoE layers may key those records "speculative_draft" (seen in a
    test of SGLang's per_token gatherer, a serving engineer's review): their tokens repeat the target's and
    counted as traffic (15 tokens where 9 were served). Records keyed otherwise ("primary", or two-batch
    overlap's micro-batches) are traffic and stay."""
    passes, m = world["passes"], world["map"]
    d = tmp_path / "tok"
    for f in sg.write_per_token(d, passes, m):
        dump = torch.load(f, weights_only=True)
        drafts = [r | {"gatherer_key": "speculative_draft"} for r in dump["records"]]  # routed, keyed as drafts
        torch.save(dump | {"records": dump["records"] + drafts}, f)
    run = probe.open_run(import_sglang(d, tmp_path / "tok-run", config=str(world["config"])))
    assert len(run.df("tokens")) == sum(len(p.input_ids) for p in passes)
    assert run.info["source"]["draft_records_skipped"] == 2 * len(passes)
    want = sg.logical_counts(passes)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(run).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
    # the control: the same records keyed as a micro-batch of two-batch overlap are traffic, not drafts
    for f in d.glob("*.pt"):
        dump = torch.load(f, weights_only=True)
        torch.save(dump | {"records": [r | {"gatherer_key": "child_a"} if r["gatherer_key"] != "primary" else r
                                       for r in dump["records"]]}, f)
    more = probe.open_run(import_sglang(d, tmp_path / "tok-run2", config=str(world["config"])))
    assert more.info["source"]["draft_records_skipped"] == 0 and len(more.df("tokens")) > len(run.df("tokens"))
    # per_pass: a draft-keyed record with counts is skipped too
    one = sg.traffic(seed=3, ranks=1)
    (f,) = sg.write_per_pass(tmp_path / "pp", one, m, ranks=1)
    dump = torch.load(f, weights_only=True)
    torch.save(dump | {"records": dump["records"] + [r | {"gatherer_key": "speculative_draft"}
                                                      for r in dump["records"]]}, f)
    pp = probe.open_run(import_sglang(tmp_path / "pp", tmp_path / "pp-run", config=str(world["config"])))
    assert pp.info["source"]["draft_records_skipped"] == len(dump["records"])
    want = sg.logical_counts(one)
    assert [a[1:].tolist() for _, a in sorted(sg.run_loads(pp).items())] == [want[fp][1:].tolist() for fp in sorted(want)]
