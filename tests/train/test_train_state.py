"""train.flags, train.state and train.log without a training run: the flags' ranges and the recipe's
defaults, where --resume looks, what a restored checkpoint brings back, the shipped tokenizer's
config, the log's figures. (Whole runs and resumes: test_train.py, test_train_resume.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import train
from train import TrainError, parse_args
from train.balance import GateRef
from train.flags import check_flags
from train.log import TrainLog
from train.state import load_state, resume_dir, save_final, save_state

from helpers.training import step_run

REPO = Path(__file__).resolve().parents[2]
POSITIVE = ("--steps", "--batch-size", "--seq-len", "--eval-windows", "--flush-every", "--load-every",
            "--settle-batches")
NON_NEGATIVE = ("--lr", "--warmup-steps", "--weight-decay", "--grad-clip", "--mtp-weight", "--bias-update-speed",
                "--seq-aux-weight", "--settle-updates", "--settle-speed", "--switch-weight", "--mix-alpha",
                "--eval-every", "--checkpoint-every")


def test_check_flags_refuses_each_out_of_range_value_and_takes_the_bounds(tmp_path):
    def check(*argv: str) -> None:
        check_flags(parse_args(["--out", str(tmp_path / "run"), *argv]))

    for flag in POSITIVE:
        with pytest.raises(TrainError, match=f"^{flag}=0 must be at least 1"):
            check(flag, "0")
    for flag in NON_NEGATIVE:
        with pytest.raises(TrainError, match=f"^{flag}=-1.* must not be negative"):
            check(flag, "-1")
    for flag, value, msg in (("--seq-len", "2", "must be at least 3 .MTP predicts two tokens ahead"),
                             ("--beta1", "1", r"must be in \[0, 1\)"), ("--beta2", "1", r"must be in \[0, 1\)"),
                             ("--min-lr-ratio", "1.01", r"must be in \[0, 1\]"),
                             ("--stop-at", "0", "must be a step of at least 1"),
                             ("--threads", str(10**12), "is more than torch can set")):
        with pytest.raises(TrainError, match=f"^{flag}={value}"):
            check(flag, value)
    for argv in (("--seq-len", "3"), ("--min-lr-ratio", "1"), ("--min-lr-ratio", "0"), ("--beta1", "0"),
                 ("--stop-at", "1"), *((flag, "0") for flag in NON_NEGATIVE)):
        check(*argv)


def test_an_out_folder_with_train_steps_alone_already_holds_a_run(tmp_path):
    (tmp_path / "run" / "train_steps").mkdir(parents=True)  # a run killed before its first run.json
    # and before its first checkpoint: "pass --resume" led to "--resume: no checkpoint there"
    with pytest.raises(TrainError, match="already holds a run that saved no checkpoint, so there is nothing to "
                                         "--resume: delete it to start again there, or pass another --out$"):
        check_flags(parse_args(["--out", str(tmp_path / "run")]))
    check_flags(parse_args(["--out", str(tmp_path / "run"), "--resume"]))
    (tmp_path / "run" / "checkpoint").mkdir()
    (tmp_path / "run" / "checkpoint" / "state.pt").write_bytes(b"")
    with pytest.raises(TrainError, match="already holds a run: pass --resume"):
        check_flags(parse_args(["--out", str(tmp_path / "run")]))


def test_an_out_folder_holding_someone_elses_model_or_checkpoint_is_refused(tmp_path):
    # the run's end replaced OUT/model whole: a user's own model/ there was deleted (a tour)
    for name in ("model", "checkpoint"):
        out = tmp_path / name / "project"
        (out / name).mkdir(parents=True)
        (out / name / "mine.txt").write_text("keep")
        with pytest.raises(TrainError, match=f"^--out {out} holds {name}/ and is not a training run"):
            check_flags(parse_args(["--out", str(out)]))
        assert (out / name / "mine.txt").read_text() == "keep"
    with pytest.raises(TrainError, match="holds model/ and is not a training run"):
        check_flags(parse_args(["--out", str(tmp_path / "model" / "project"), "--resume", str(tmp_path)]))
    check_flags(parse_args(["--out", str(tmp_path / "checkpoint" / "project"), "--resume"]))  # a copied checkpoint
    (tmp_path / "model" / "project" / "train_steps").mkdir()  # a training run's own model/: its resume replaces it
    check_flags(parse_args(["--out", str(tmp_path / "model" / "project"), "--resume"]))


def test_the_defaults_are_the_documented_recipe():
    ns = parse_args([])
    assert "700 steps x 16 x 256 tokens" in train.__doc__ and (ns.steps, ns.batch_size, ns.seq_len) == (700, 16, 256)
    assert "betas 0.9/0.95" in train.__doc__ and (ns.beta1, ns.beta2) == (0.9, 0.95)
    assert "clipping at 1.0" in train.__doc__ and ns.grad_clip == 1.0
    assert ns.balance == "aux-free" and ns.bias_schedule == "constant"
    # DeepSeek-V3's report: balance factor alpha = 0.0001, MTP weight lambda = 0.3 (its first 10T tokens)
    assert (ns.seq_aux_weight, ns.mtp_weight) == (1e-4, 0.3)


def test_resume_takes_a_checkpoint_folder_or_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"")
    other = tmp_path / "other"
    for resume, want in (("auto", run / "checkpoint"), (str(run), run / "checkpoint"),
                         (str(run / "checkpoint"), run / "checkpoint")):
        assert resume_dir(parse_args(["--out", str(other if resume != "auto" else run), "--resume", resume])) == want
    assert resume_dir(parse_args(["--out", str(run)])) is None
    with pytest.raises(TrainError, match="no checkpoint there"):
        resume_dir(parse_args(["--out", str(other), "--resume"]))


STREAMS = {"a": np.arange(10, 210, dtype=np.int32)}


def test_restore_brings_back_weights_optimizer_step_and_tokens_and_reports_changed_flags(tmp_path, capsys):
    a = step_run(tmp_path / "a", STREAMS)
    a._train_step()
    a._train_step()
    save_state(tmp_path / "ck", a.raw, a.opt, a.step, a.ns, a.tokens_seen)
    b = step_run(tmp_path / "b", STREAMS, "--mtp-weight", "0.5", seed=1)
    b._restore(load_state(tmp_path / "ck", b.raw.args), tmp_path / "ck")
    assert (b.step, b.tokens_seen) == (2, 2 * 2 * 8)  # two steps of 2 windows of 8 tokens
    for k, v in a.raw.state_dict().items():
        assert torch.equal(b.raw.state_dict()[k], v), k
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    note = capsys.readouterr().err
    assert "note: resuming with changed flags:" in note and "seed 0 -> 1" in note and "mtp_weight 0.3 -> 0.5" in note
    # a step that diverges right after the resume sends the user back to the checkpoint just restored
    row = {"step": 3, "loss": float("nan"), "grad_norm": 1.0, "lr": 1e-3}
    with pytest.raises(TrainError, match="which holds step 2, the last saved"):
        b._check_finite(row)


def test_the_shipped_tokenizer_config_names_the_tokenizers_special_tokens(tmp_path):
    from tokenizers import Tokenizer

    r = step_run(tmp_path / "run", STREAMS)
    tok_file = REPO / "data" / "tokenizer.json"
    path = save_final(r.raw, tmp_path / "run", tok_file, torch.float32)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(tok_file))
    args = r.raw.args
    named = tok.token_to_id(cfg["bos_token"]), tok.token_to_id(cfg["eos_token"])
    assert named == (args.bos_token_id, args.eos_token_id) == (0, 1)
    assert tok.token_to_id(cfg["pad_token"]) not in (args.bos_token_id, args.eos_token_id, None)


def _log_step(log: TrainLog, step: int, biases: list) -> None:
    row = {"step": step, "lr": 1e-3, "loss": 5.0, "lm_loss": 5.0, "mtp_loss": 5.0, "aux_loss": 0.0, "grad_norm": 1.0,
           "tokens": 16, "tokens_seen": 16 * step, "step_time_s": 0.1, "tokens_per_s": 160.0, "elapsed_s": 0.1 * step}
    log.step(row, [5.0], torch.tensor([[1.0, 2.0, 3.0, 6.0]]), biases)


def test_the_log_records_bias_norms_and_one_evaluation_per_step_across_a_resume(tmp_path):
    gates = [GateRef("layer1", 1, "layers.1.ffn.gate")]
    res = {"val_loss": 4.0, "val_mtp_agree": 0.5, "val_loss_x": 4.0, "val_mtp_loss_x": 4.5, "val_maxvio_layer1": 0.2}
    log = TrainLog(tmp_path, gates, ["x"], 4, None)
    _log_step(log, 1, [torch.tensor([3.0, 0.0, 0.0, -4.0])])
    log.evaluation(1, 16, res)
    log.evaluation(1, 16, res)  # a completed run resumed again redoes its final evaluation
    log.commit()
    again = TrainLog(tmp_path, gates, ["x"], 4, resume_step=1)
    again.evaluation(1, 16, res)
    again.commit()
    assert pq.read_table(tmp_path / "train_eval").num_rows == 1
    assert sorted(pq.read_table(tmp_path / "train_domains").column("split").to_pylist()) == ["train", "val"]
    g = pq.read_table(tmp_path / "train_gates").to_pandas().set_index("split")
    assert sorted(g.index) == ["train", "val"] and math.isnan(g.bias_norm.loc["val"])
    assert g.bias_norm.loc["train"] == pytest.approx(5.0)  # |(3, 0, 0, -4)|
    assert g.maxvio.loc["train"] == pytest.approx((6 - 3) / 3)  # loads (1, 2, 3, 6): (max - mean) / mean


@pytest.mark.parametrize("flag", ["--out", "--corpus", "--tokenizer", "--token-cache"])
def test_an_empty_path_flag_is_refused_not_taken_for_the_current_folder(flag, capsys):
    # Path('') is '.': `--out ''` trained into the current folder, `--token-cache ''` cached there
    with pytest.raises(SystemExit) as e:
        parse_args([flag, ""])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith(f"error: argument {flag}: an empty path (for the current folder, give .)\n")
    assert parse_args([flag, "."]) is not None


def test_a_time_limit_passed_on_one_ranks_clock_stops_every_rank(tmp_path):
    """Each rank read --time-limit off its own clock, rank 0 (writing its rows and checkpoints after each
    step) later than the others: one rank stopped while the other went on into the next step, which died
    in its all-reduce with the first gone (a traceback, and torchrun's failure; found by a review)."""
    import time

    from helpers.thread_ranks import ThreadRanks

    from train.loop import _Run
    from train.steps import Dist

    ns = parse_args(["--out", str(tmp_path / "run"), "--steps", "10", "--time-limit", "1", "--eval-every", "0",
                     "--checkpoint-every", "0", "--flush-every", "100"])

    def after_step(world):
        dist = Dist("cpu")
        dist.ranks, dist.rank = world, 1  # nothing written: the ranks' agreement is what is looked at
        r = _Run(ns, dist, step=3)
        if world.rank == 0:  # its clock past the minute, the other rank's not
            r.t_start = time.perf_counter() - 61
        return r._after_step()

    assert ThreadRanks(2).run(after_step) == ["--time-limit 1.0 min"] * 2


def test_a_resume_under_another_number_of_processes_reports_a_changed_global_batch(tmp_path):
    """--batch-size is per process: a run resumed under torchrun with twice the processes trained on twice
    the batch without a note, and 1 x 4 resumed as 2 x 2, the same batches, was reported as changed (a
    review). The checkpoint keeps the processes it was saved with; one saved before that compares the flag."""
    from train.state import changed_flags

    a = step_run(tmp_path / "a", STREAMS, "--batch-size", "4")
    save_state(tmp_path / "ck", a.raw, a.opt, 0, a.ns, 0, world=1)
    saved = load_state(tmp_path / "ck", a.raw.args)
    assert saved["world"] == 1

    def changed(batch: str, world: int, saved=saved) -> list[str]:
        return changed_flags(saved, parse_args(["--out", str(tmp_path / "a"), "--seq-len", "8", "--lr", "1e-3",
                                                "--warmup-steps", "2", "--steps", "10", "--batch-size", batch]), world)

    assert changed("4", 1) == changed("2", 2) == []
    assert changed("4", 2) == ["batch_size 4 x 1 process -> 4 x 2 processes"]
    assert changed("1", 2) == ["batch_size 4 x 1 process -> 1 x 2 processes"]
    older = {k: v for k, v in saved.items() if k != "world"}
    assert changed("4", 2, older) == [] and changed("2", 2, older) == ["batch_size 4 -> 2"]
    # the validation windows: later validation figures measured on other windows (it was not said; the train hunt)
    fewer = parse_args(["--out", str(tmp_path / "a"), "--seq-len", "8", "--lr", "1e-3", "--warmup-steps", "2",
                        "--steps", "10", "--batch-size", "4", "--eval-windows", str(a.ns.eval_windows // 2)])
    assert changed_flags(saved, fewer) == [f"eval_windows {a.ns.eval_windows} -> {a.ns.eval_windows // 2}"]


@pytest.mark.slow  # 1.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_checkpoint_or_model_the_disk_cannot_hold_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk at a checkpoint left the partial state.pt.tmp (at the end, model.tmp) filling it, held open
    by the error's frames even once deleted, so that the run could not mark itself interrupted either: a
    traceback of torch's writer and run.json left "running" (reproduced on a 3 MiB tmpfs). torch's writer
    raises a RuntimeError that does not say why, safetensors' an error of its own."""
    import shutil
    import weakref

    from safetensors import SafetensorError

    import train.state

    r = step_run(tmp_path / "run", STREAMS)
    ck = tmp_path / "run" / "checkpoint"
    save_state(ck, r.raw, r.opt, 1, r.ns, 16)
    before = (ck / "state.pt").read_bytes()
    opened = []

    def full_disk(obj, f, **kwargs):  # what torch's writer and safetensors' do when the disk fills
        out = open(f, "wb")
        out.write(b"partial")
        opened.append(weakref.ref(out))
        if str(f).endswith(".tmp"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(train.state.torch, "save", full_disk)
    monkeypatch.setattr(train.state.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**30, 2**30, 0))
    with pytest.raises(TrainError, match=r"^.*/checkpoint/state\.pt: cannot save the checkpoint \(no space left "
                                         r"on the device\); the one saved there before, if any, is as it was$") as e:
        save_state(ck, r.raw, r.opt, 2, r.ns, 32)
    assert sorted(p.name for p in ck.iterdir()) == ["state.pt"] and (ck / "state.pt").read_bytes() == before
    assert opened[0]() is None and e.value  # the partial file closed, its space back, while the error is handled

    def full_disk_model(raw, path, dtype):
        path.mkdir()
        full_disk(None, path / "model.safetensors")

    monkeypatch.setattr(train.state, "save_hf", full_disk_model)
    monkeypatch.setattr(train.state.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**30, 0, 2**30))
    with pytest.raises(TrainError, match=r"/run/model: cannot save the trained model \(Error while serializing: "
                                         r"I/O error: No space left on device \(os error 28\)\); the last step's "
                                         r"checkpoint is kept, to --resume from$") as e:
        save_final(r.raw, tmp_path / "run", REPO / "data" / "tokenizer.json", torch.float32)
    assert not (tmp_path / "run" / "model.tmp").exists() and opened[1]() is None and e.value


@pytest.mark.slow  # 0.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_a_trained_model_that_model_save_cannot_write_is_a_train_error(tmp_path, monkeypatch):
    """model.save refuses a folder it cannot write with a CheckpointError (the OSError its cause):
    save_final caught only the OSError, so that error escaped the command as a traceback."""
    import model.saving

    r = step_run(tmp_path / "run", STREAMS)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(model.saving, "save_file", read_only)
    with pytest.raises(TrainError, match=r"/run/model: cannot save the trained model \(Permission denied\); the last "
                                         r"step's checkpoint is kept, to --resume from$"):
        save_final(r.raw, tmp_path / "run", REPO / "data" / "tokenizer.json", torch.float32)
    assert not (tmp_path / "run" / "model.tmp").exists() and not (tmp_path / "run" / "model").exists()
