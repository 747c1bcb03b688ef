"""train (python -m train): resume is exact (from the last or an earlier checkpoint), a stop (Ctrl-C,
SIGTERM, --stop-at, while settling) leaves the run interrupted and resumable, and a resumed run's
run.json is its own. (Losses, balancing and bad input: test_train.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import torch

import probe
from helpers.forked import forked
from helpers.training import flags
from train import TrainError, parse_args, run

pytestmark = pytest.mark.slow  # every test here runs training, stops and resumes it


def test_resume_equals_uninterrupted(corpus, tmp_path):
    common = ("--steps", "6", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(flags(corpus, tmp_path / "a", *common)))
    stopped = run(parse_args(flags(corpus, tmp_path / "b", *common, "--stop-at", "3")))
    assert stopped["status"] == "interrupted" and stopped["stop_reason"] == "--stop-at 3" and stopped["step"] == 3
    with probe.writer.updating_run_json(tmp_path / "b") as info:  # another job notes its part meanwhile
        info["tables"].append("ablations")
        info["ablation_parts"] = {"part-x.parquet": {"experts": [1]}}
    run(parse_args(flags(corpus, tmp_path / "b", *common, "--resume")))
    info = json.loads((tmp_path / "b" / "run.json").read_text())  # training rewrote run.json, and kept it
    assert info["ablation_parts"] == {"part-x.parquet": {"experts": [1]}} and info["tables"][-1] == "ablations"
    a = torch.load(tmp_path / "a" / "checkpoint" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bitwise, biases included
    ra, rb = probe.open_run(tmp_path / "a"), probe.open_run(tmp_path / "b")
    sa, sb = ra.df("train_steps").sort_values("step"), rb.df("train_steps").sort_values("step")
    assert sb.step.tolist() == list(range(1, 7)) and sa.loss.tolist() == sb.loss.tolist()
    key = ["step", "layer", "expert"]
    for t in ("expert_load", "router_bias"):
        assert ra.df(t).sort_values(key).reset_index(drop=True).equals(rb.df(t).sort_values(key).reset_index(drop=True))


def test_a_resumed_run_keeps_no_figures_of_its_earlier_end_and_an_unreadable_run_json_is_replaced(corpus, tmp_path):
    """Training's run.json kept, across a --resume, every key of the earlier session's end: a run
    resumed and stopped again still named its first end's model and final figures, which the jobs on
    a run then took as its model (a review). An unreadable run.json ended --resume in a traceback."""
    common = ("--eval-every", "0", "--checkpoint-every", "0")
    out = tmp_path / "r"
    first = run(parse_args(flags(corpus, out, "--steps", "2", *common)))
    assert first["status"] == "complete" and first["final"] and first["checkpoint"]
    again = run(parse_args(flags(corpus, out, "--steps", "4", "--stop-at", "3", "--resume", *common)))
    info = json.loads((out / "run.json").read_text())
    assert again["status"] == info["status"] == "interrupted" and info["stop_reason"] == "--stop-at 3"
    assert not {"final", "checkpoint", "model_dir", "model_bytes", "corpus"} & set(info), sorted(info)
    (out / "run.json").write_text('{"status": "interrupted", ')  # cut short
    done = run(parse_args(flags(corpus, out, "--steps", "4", "--resume", *common)))
    info = json.loads((out / "run.json").read_text())
    assert done["status"] == info["status"] == "complete" and info["step"] == 4 and "stop_reason" not in info


def test_resume_from_an_earlier_checkpoint_drops_the_later_rows(corpus, tmp_path):
    """Rows committed after the checkpoint a run resumes from (a kill between the two) are dropped
    and recorded again, not kept twice."""
    import shutil

    opts = ("--steps", "5", "--eval-every", "0", "--checkpoint-every", "2", "--flush-every", "1")
    state = tmp_path / "c" / "checkpoint" / "state.pt"
    run(parse_args(flags(corpus, tmp_path / "c", *opts, "--stop-at", "2")))
    at_2 = shutil.copy(state, tmp_path / "state-2.pt")  # the run's state at 2
    run(parse_args(flags(corpus, tmp_path / "c", *opts, "--resume", "--stop-at", "3")))  # rows and checkpoint at 3
    shutil.copy(at_2, state)  # as if killed after committing row 3, before its checkpoint
    run(parse_args(flags(corpus, tmp_path / "c", *opts, "--resume")))
    run(parse_args(flags(corpus, tmp_path / "e", *opts)))  # uninterrupted
    c, e = (probe.open_run(tmp_path / x).df("train_steps").sort_values("step") for x in ("c", "e"))
    assert c.step.tolist() == list(range(1, 6)) and c.loss.tolist() == e.loss.tolist()


def test_ctrl_c_is_one_line_and_exit_status_130(corpus, tmp_path, monkeypatch, capsys):
    """`python -m train` showed a KeyboardInterrupt traceback on Ctrl-C (found by a review)."""
    import train.__main__ as cli
    import train.loop

    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.loop, "run", interrupted)  # where the command takes run() from once its flags parse
    with pytest.raises(SystemExit) as e:
        cli.main(flags(corpus, tmp_path / "run"))
    err = capsys.readouterr().err.strip()
    # no checkpoint yet: --resume would be refused, and so would a fresh run there (it told to resume)
    assert e.value.code == 130 and err.count("\n") == 0 and "(no checkpoint was saved yet: delete it" in err, err
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "state.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        cli.main(flags(corpus, tmp_path / "run", "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and err.count("\n") == 0 and "is marked interrupted (continue it with --resume" in err


@pytest.mark.parametrize("name, code, said", [("SIGTERM", 143, "terminated"), ("SIGHUP", 129, "hung up")])
def test_sigterm_or_sighup_marks_the_run_interrupted_and_exits_128_plus_it(corpus, tmp_path, capsys, name, code, said):
    """SIGTERM (a scheduler, torchrun) killed the process with run.json saying "running" (a review), and
    SIGHUP (a closed terminal) as well: now each is handled as Ctrl-C is, the run marked interrupted
    with the signal's name, one line, exit status 128 + the signal (143, 129), and the handlers put back
    afterwards."""
    import os
    import signal

    import train.__main__ as cli
    from train import loop

    signum = getattr(signal, name)
    real_step = loop._Run._train_step
    calls = []

    def step_then_term(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            # without a handler of the command's own, the signal would end the test process itself
            assert signal.getsignal(signum) is not before[signum], f"{name} is left to Python's default"
            os.kill(os.getpid(), signum)
        return real_step(self, *a, **kw)

    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it, whether or not pytest runs under nohup
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop._Run, "_train_step", step_then_term)
            with pytest.raises(SystemExit) as e:
                cli.main(flags(corpus, tmp_path / "run", "--steps", "6", "--eval-every", "0"))
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGHUP, hup)
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and err.startswith(f"{said}: the run in") and err.count("\n") == 0, err
    info = probe.open_run(tmp_path / "run").info
    assert info["status"] == "interrupted" and info["error"] == name  # it said "_Terminated: "


def test_resume_reports_another_corpus_and_settleflags(corpus, tmp_path, capsys):
    """The corpus and the settle phase were not among the flags a resume compares (a review)."""
    import shutil

    common = ("--steps", "4", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--stop-at", "2")))
    other = shutil.copytree(corpus, tmp_path / "corpus2")
    capsys.readouterr()
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--resume", "--stop-at", "3")
                   + ["--corpus", str(other), "--settle-updates", "3"]))
    note = capsys.readouterr().err
    assert "note: resuming with changed flags:" in note and "corpus " in note and "settle_updates 1 -> 3" in note
    # the same folder named another way is not a change
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--resume", "--settle-updates", "3")
                   + ["--corpus", str(other / ".." / "corpus2")]))
    assert "corpus" not in capsys.readouterr().err
    tok2 = tmp_path / "tok2.json"  # another tokenizer file (the same ids here): reported too (a review)
    tok2.write_bytes((corpus / "tokenizer.json").read_bytes())
    # (the run is complete at its 4 steps, which a --resume leaves alone: one step more)
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--resume", "--settle-updates", "3")
                   + ["--corpus", str(other), "--tokenizer", str(tok2), "--steps", "5"]))
    assert "tokenizer " in capsys.readouterr().err


def test_resume_reports_a_corpus_rebuilt_and_a_tokenizer_retrained_under_the_same_paths(corpus, tmp_path, capsys):
    """A user who rebuilds the corpus (`data.build_corpus --source` into the same --out) or retrains the
    tokenizer while a run is stopped, then resumes it: the flags are the same, so it went on without a
    word on batches that are not the run's own. The checkpoint keeps the inputs' SHA-256 now."""
    mine = shutil.copytree(corpus, tmp_path / "mine", ignore=shutil.ignore_patterns("token_cache"))
    common = ("--steps", "5", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(flags(mine, tmp_path / "r", *common, "--stop-at", "2")))
    capsys.readouterr()
    run(parse_args(flags(mine, tmp_path / "r", *common, "--resume", "--stop-at", "3")))  # as it was: no note
    assert "note: resuming" not in capsys.readouterr().err
    lines = (mine / "train.jsonl").read_text().splitlines(keepends=True)
    (mine / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))  # the same documents, in another order
    (mine / "tokenizer.json").write_text((mine / "tokenizer.json").read_text() + "\n")  # saved again
    run(parse_args(flags(mine, tmp_path / "r", *common, "--resume", "--stop-at", "4")))
    err = capsys.readouterr().err
    assert (f"note: resuming on inputs whose content changed since the checkpoint was saved: {mine / 'train.jsonl'}, "
            f"--tokenizer {mine / 'tokenizer.json'} (the steps") in err, err
    assert "changed flags" not in err


def test_resume_on_another_corpus_notes_the_flag_not_a_change_of_content(corpus, tmp_path, capsys):
    """Another --corpus, of other text, was noted twice: as the changed flag, and as splits whose content had
    'changed since the checkpoint was saved', which they had not (another folder's). The flag alone is
    noted; the same path edited is the content note's."""
    other = shutil.copytree(corpus, tmp_path / "other", ignore=shutil.ignore_patterns("token_cache"))
    lines = (other / "train.jsonl").read_text().splitlines(keepends=True)
    (other / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))
    common = ("--steps", "5", "--eval-every", "0", "--checkpoint-every", "0")
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--stop-at", "2")))
    capsys.readouterr()
    run(parse_args(flags(corpus, tmp_path / "r", *common, "--resume", "--stop-at", "3") + ["--corpus", str(other)]))
    err = capsys.readouterr().err
    assert f"note: resuming with changed flags: corpus {corpus} -> {other}" in err, err
    assert "content changed" not in err, err


def _rank_1_terminated(err_path: str, argv: list[str]) -> None:
    """Rank 1 of 2 (its environment as torchrun sets it) stopped by torchrun's SIGTERM; stderr into a file."""
    import os
    import sys

    import train.__main__ as cli
    import train.loop

    os.environ.update(WORLD_SIZE="2", RANK="1")
    os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    sys.stderr = open(2, "w", buffering=1, closefd=False)

    def terminated(ns):
        raise cli._Terminated("SIGTERM")

    train.loop.run = terminated  # where the command takes run() from once its flags parse
    try:
        cli.main(argv)
    except SystemExit as e:
        sys.stderr.flush()
        os._exit(e.code)


def test_a_rank_other_than_0_stopped_by_torchrun_does_not_say_it_marked_the_run(corpus, tmp_path):
    """Rank 0 alone marks the run interrupted; rank 1, stopped by torchrun because rank 0 ended (here
    before the run began), said 'terminated: the run ... is marked interrupted' (found by the train hunt)."""
    err = tmp_path / "err.txt"
    assert forked(_rank_1_terminated, str(err), flags(corpus, tmp_path / "run")) == 143
    assert err.read_text().strip() == "error: rank 1 of 2 stopped by signal 15 (another rank failed or was stopped)"


def test_a_stop_while_settling_marks_the_run_interrupted(corpus, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM during the bias settling (about a minute in the shipped recipe), the final
    evaluation or the save left run.json saying "running" (a review)."""
    from train import loop

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop._Run, "_settle", stopped)
    with pytest.raises(KeyboardInterrupt):
        run(parse_args(flags(corpus, tmp_path / "run", "--steps", "2", "--eval-every", "0")))
    info = probe.open_run(tmp_path / "run").info
    assert info["status"] == "interrupted" and info["step"] == 2


def test_resume_with_a_stop_at_the_checkpoint_already_passed_is_refused(corpus, tmp_path):
    """--resume --stop-at S from a checkpoint at step >= S trained one step more, then stopped there
    (its check comes after a step): refused before anything is read or written, naming the flag."""
    common = ("--steps", "6", "--eval-every", "0", "--checkpoint-every", "0")
    out = tmp_path / "s"
    run(parse_args(flags(corpus, out, *common, "--stop-at", "3")))
    before = (out / "run.json").read_text()
    for stop in ("3", "2"):
        with pytest.raises(TrainError, match=rf"--stop-at {stop}: the checkpoint in .* is already at step 3"):
            run(parse_args(flags(corpus, out, *common, "--resume", "--stop-at", stop)))
    assert (out / "run.json").read_text() == before
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 3
    again = run(parse_args(flags(corpus, out, *common, "--resume", "--stop-at", "4")))
    assert again["status"] == "interrupted" and again["step"] == 4


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(corpus, tmp_path):
    """--resume --steps N from a checkpoint past step N trained nothing, re-settled the bias, replaced
    the model and wrote run.json 'complete' at a step beyond its own --steps: refused, naming the flag."""
    out = tmp_path / "s"
    run(parse_args(flags(corpus, out, "--steps", "6", "--eval-every", "0", "--stop-at", "3")))
    before = (out / "run.json").read_text()
    with pytest.raises(TrainError, match=r"--steps 2: the checkpoint in .* is already at step 3 .*at least 3"):
        run(parse_args(flags(corpus, out, "--steps", "2", "--eval-every", "0", "--resume")))
    assert (out / "run.json").read_text() == before and not (out / "model").exists()


def test_a_ctrl_c_in_the_loop_is_named_in_run_json(corpus, tmp_path, monkeypatch):
    """run.json's error read "KeyboardInterrupt: " after a Ctrl-C (the dashboard shows it as the reason)."""
    from train import loop

    def ctrl_c(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop._Run, "_train_step", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(parse_args(flags(corpus, tmp_path / "run", "--steps", "3", "--eval-every", "0")))
    info = probe.open_run(tmp_path / "run").info
    assert info["status"] == "interrupted" and info["error"] == "Ctrl-C"


def test_a_second_process_in_a_run_being_trained_is_refused(corpus, tmp_path):
    """A --resume started while the run was still training cut the tables under the first
    process's writer: both ended in tracebacks, over a part file left broken. The running one holds
    the run's writer lock; the second is refused in one line, and the lock goes with the run's end."""
    from probe.writer import writer_lock

    common = ("--steps", "3", "--eval-every", "0", "--checkpoint-every", "0")
    out = tmp_path / "run"
    run(parse_args(flags(corpus, out, *common, "--stop-at", "2")))
    # held as a training process holds it, through an open file of its own (flock locks an open file)
    with writer_lock(out):
        before = sorted(p.name for p in (out / "train_steps").iterdir())
        with pytest.raises(TrainError, match=r"another process is recording into this run"):
            run(parse_args(flags(corpus, out, *common, "--resume")))
        assert sorted(p.name for p in (out / "train_steps").iterdir()) == before
    done = run(parse_args(flags(corpus, out, *common, "--resume")))  # the lock went with the holder
    assert done["status"] == "complete"
    again = run(parse_args(flags(corpus, out, *common, "--resume")))  # and this process's with its run
    assert again["status"] == "complete"


def test_a_resume_into_another_training_runs_out_is_refused(corpus, tmp_path, capsys):
    """--resume A/checkpoint --out B, B another run (here another --seed), kept B's first rows under
    A's later ones and replaced B's checkpoint and model (a tour): refused before anything is
    written. A new --out may start from the checkpoint; A's own --out continues it."""
    common = ("--steps", "3", "--eval-every", "0", "--checkpoint-every", "0")
    a, b = tmp_path / "a", tmp_path / "b"
    run(parse_args(flags(corpus, a, *common, "--stop-at", "1")))
    run(parse_args(flags(corpus, b, *common, "--seed", "7", "--stop-at", "2")))
    before = {p: p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    with pytest.raises(TrainError, match=rf"--resume {a / 'checkpoint'}: the checkpoint was saved by the run in "
                                         rf"{a}, but --out {b} holds another training run"):
        run(parse_args(flags(corpus, b, *common, "--seed", "7", "--resume", str(a))))
    assert {p: p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()} == before
    # A's checkpoint copied over B's own: the runs' ids tell them apart (its place in OUT did not)
    shutil.rmtree(b / "checkpoint")
    shutil.copytree(a / "checkpoint", b / "checkpoint")
    with pytest.raises(TrainError, match=rf"the checkpoint was saved by the run in {a}, but --out {b} holds another"):
        run(parse_args(flags(corpus, b, *common, "--seed", "7", "--resume")))
    capsys.readouterr()
    assert run(parse_args(flags(corpus, tmp_path / "c", *common, "--resume", str(a))))["step"] == 3
    assert (f"note: --resume {a}: a new run in --out {tmp_path / 'c'}, from the checkpoint in {a / 'checkpoint'} "
            "(step 1); the rows up to step 1 stay in the run that saved it") in capsys.readouterr().err
    assert json.loads((tmp_path / "c" / "run.json").read_text())["run_id"] != json.loads((a / "run.json").read_text())["run_id"]
    assert run(parse_args(flags(corpus, a, *common, "--resume", str(a / "checkpoint"))))["step"] == 3
    assert "a new run" not in capsys.readouterr().err  # its own run, continued


def test_a_resume_of_a_complete_run_says_so_and_changes_nothing(corpus, tmp_path, capsys):
    """`--resume` of a run that had finished at its --steps re-settled the biases and rewrote model/
    and run.json without saying the run was complete (a review): it says so and leaves every file as
    it was; a larger --steps still trains on (the control)."""
    common = ("--eval-every", "0", "--checkpoint-every", "0")
    out = tmp_path / "done"
    first = run(parse_args(flags(corpus, out, "--steps", "2", *common)))
    assert first["status"] == "complete"
    capsys.readouterr()
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = run(parse_args(flags(corpus, out, "--steps", "2", "--resume", *common)))
    text = capsys.readouterr().out
    assert text == (f"the run in {out} is already complete (step 2 of --steps 2, its model in {out / 'model'}): "
                    "nothing to do, nothing changed (pass a larger --steps to train on)\n"), text
    assert again == first
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files  # byte-identical, none added
    # other flags: the user learns first that they were not used (the note came after "nothing to do", or never)
    both = io.StringIO()
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        run(parse_args(flags(corpus, out, "--steps", "2", "--resume", *common, "--seed", "5", "--lr", "0.5")))
    lines = both.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("note: the run is complete, so these flags, which differ from "
                                                   "the run's own, were not used: seed "), lines
    assert "-> 5" in lines[0] and "lr " in lines[0] and "-> 0.5" in lines[0] and "nothing to do" in lines[1], lines
    more = run(parse_args(flags(corpus, out, "--steps", "3", "--resume", *common)))
    assert more["status"] == "complete" and more["step"] == 3 and "done: 3 steps" in capsys.readouterr().out


def _kill_at_checkpoint(step: int, argv: list[str]) -> None:
    """`python -m train ARGV`, SIGKILLed once the first of the checkpoint save and the commit of the rows
    at `step` has happened (the order the run takes them in is what the tests look at): in a forked child."""
    import os
    import signal

    from train import log, loop
    from train.__main__ import main

    real_save, real_commit = loop.save_state, log.TrainLog.commit

    def save(path, raw, opt, at, *a, **kw):
        real_save(path, raw, opt, at, *a, **kw)
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def commit(self):
        real_commit(self)
        if self.last == step:
            os.kill(os.getpid(), signal.SIGKILL)

    loop.save_state, log.TrainLog.commit = save, commit
    main(argv)


def _killed(corpus, out, step: int, opts) -> None:
    """`python -m train` with `opts` into `out`, SIGKILLed as _kill_at_checkpoint says."""
    import signal

    code = forked(_kill_at_checkpoint, step, flags(corpus, out, *opts))
    assert code == -signal.SIGKILL, f"exit status {code} (its output: the captured stderr)"


def test_a_kill_between_a_checkpoint_and_its_rows_loses_no_row(corpus, tmp_path):
    """The checkpoint at a step was saved before that step's rows were committed: a SIGKILL between the two
    left a checkpoint past the committed rows, and the resumed run, going on after the checkpoint, said
    complete without those steps' rows (train_steps, expert_load, router_bias: found by killing a run at each
    of its renames). The rows go first now; a kill between leaves rows past the checkpoint, which the resume
    drops and records again (test_resume_from_an_earlier_checkpoint_drops_the_later_rows)."""
    opts = ("--steps", "5", "--eval-every", "0", "--checkpoint-every", "2", "--flush-every", "1")
    _killed(corpus, tmp_path / "k", 4, opts)
    done = run(parse_args(flags(corpus, tmp_path / "k", *opts, "--resume")))
    assert done["status"] == "complete"
    run(parse_args(flags(corpus, tmp_path / "e", *opts)))  # uninterrupted
    k, e = probe.open_run(tmp_path / "k"), probe.open_run(tmp_path / "e")
    assert k.df("train_steps").sort_values("step").step.tolist() == list(range(1, 6))
    for t in e.tables:
        assert len(k.df(t)) == len(e.df(t)), t


def _kill_in_final_commit(n: int, argv: list[str]) -> None:
    """`python -m train ARGV`, SIGKILLed after the Nth part file renamed into place by the run's final
    commit (the one that adds the final validation pass to the parts committed at the last step): in a
    forked child."""
    import os
    import signal

    from train import loop
    from train.__main__ import main

    real_flush, real_replace, renamed = loop._Run.flush, os.replace, []

    def flush(self, status, **extra):
        if status == "complete":
            renamed.append("final")
        real_flush(self, status, **extra)

    def replace(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        if renamed and str(dst).endswith(".parquet"):
            renamed.append(dst)
            if len(renamed) == n + 1:
                os.kill(os.getpid(), signal.SIGKILL)

    loop._Run.flush, os.replace = flush, replace
    main(argv)


@pytest.mark.parametrize("renamed", [1, 2])
def test_a_kill_in_the_final_commit_leaves_each_validation_row_once(corpus, tmp_path, renamed):
    """The final commit renames the final validation pass's parts table by table (train_domains, train_gates,
    train_eval): killed between two, the resumed run looked for the pass in train_eval alone, evaluated again
    and said complete with its rows twice in the tables renamed before the kill (found by killing a run at
    each of its renames). Each pass is in every table once."""
    import signal

    out = tmp_path / "k"
    opts = ("--steps", "3", "--eval-every", "0", "--checkpoint-every", "0", "--flush-every", "1")
    code = forked(_kill_in_final_commit, renamed, flags(corpus, out, *opts))
    assert code == -signal.SIGKILL, f"exit status {code} (its output: the captured stderr)"
    assert probe.open_run(out).status == "interrupted"
    assert run(parse_args(flags(corpus, out, *opts, "--resume")))["status"] == "complete"
    k = probe.open_run(out)
    assert k.df("train_eval").step.tolist() == [3]
    val = k.df("train_domains").query("split == 'val'")
    assert sorted(val.domain) == ["chinese", "literature", "math"] and set(val.step) == {3}
    gates = k.df("train_gates")
    assert len(gates.query("split == 'val'")) == len(gates.query("split == 'train' and step == 3")) > 0


def test_a_disk_that_fills_is_one_line_naming_out_also_after_a_ctrl_c(corpus, tmp_path, monkeypatch):
    """A commit of the rows on a full disk raised pyarrow's OSError, a traceback chained to a second one from
    marking the run interrupted (reproduced on a full tmpfs). A Ctrl-C whose run cannot be marked says why,
    rather than that the run is marked interrupted."""
    import errno
    import re

    from probe.writer import PartWriter
    from train import loop

    commits = []

    def full_after_the_first(self, *a, **kw):  # the disk fills once the run has begun
        commits.append(1)
        if len(commits) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PartWriter, "commit", full_after_the_first)
    said = r"^--out {}: cannot write the run's rows and run.json \(No space left on device\)$"
    with pytest.raises(TrainError, match=said.format(re.escape(str(tmp_path / "run")))):
        run(parse_args(flags(corpus, tmp_path / "run", "--steps", "2", "--eval-every", "0")))
    assert len(commits) == 3  # the run's start, its last step, then marking it interrupted

    def ctrl_c(self, *a, **kw):
        raise KeyboardInterrupt

    commits.clear()
    monkeypatch.setattr(loop._Run, "_train_step", ctrl_c)
    with pytest.raises(TrainError, match=said.format(re.escape(str(tmp_path / "again")))):
        run(parse_args(flags(corpus, tmp_path / "again", "--steps", "2", "--eval-every", "0")))
    assert probe.open_run(tmp_path / "again").info["status"] == "running"  # as the error says: not marked


def test_a_rank_other_than_0_hung_up_says_its_terminal_closed(tmp_path, monkeypatch):
    """A closed terminal hangs up torchrun's ranks with it: rank 1's line said 'stopped by signal 1 (another
    rank failed or was stopped)', not the cause. SIGTERM's line is the control."""
    from types import SimpleNamespace

    import train.__main__ as cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ns = SimpleNamespace(out=tmp_path / "run")
    assert cli._stopped_line(ns, 129) == "error: rank 1 of 2 stopped by signal 1 (its terminal or ssh session closed)"
    assert cli._stopped_line(ns, 143) == "error: rank 1 of 2 stopped by signal 15 (another rank failed or was stopped)"
