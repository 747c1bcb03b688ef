"""probe.job: what the jobs share (the heap thresholds of the long jobs, the ranks' options, the inputs and
flags they check, error lines)."""

from __future__ import annotations

import json

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.thread_ranks import ThreadRanks

ROOT = Path(__file__).resolve().parents[2]

# A fresh process, since heap thresholds are the whole process's. Allocates a batch-sized activation
# again and again, as a job's forwards do, and prints the page faults of the last ten: first under the
# thresholds bound_heap set before 2026-12-02 (a 1 MiB mmap threshold: every 8 MiB block is a fresh
# mapping, so the heap does not grow), then under bound_heap's. One process for both: each costs a
# torch import (~1.5 s).
REUSE = """
import ctypes, resource
import torch
from probe.job import bound_heap

def faults():
    n = (8 << 20) // 4  # 8 MiB of float32
    for _ in range(20):  # the first few grow the heap (glibc extends it a few times before it settles)
        torch.ones(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(n)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

ctypes.CDLL(None).mallopt(-3, 1 << 20)
old = faults()
bound_heap()
print(old, faults())
"""


def faults() -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", REUSE], cwd=ROOT, capture_output=True, text=True, check=True)
    old, bound = map(int, out.stdout.split())
    return {"old": old, "bound": bound}


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="bound_heap sets glibc's thresholds (a no-op elsewhere)")
def test_bound_heap_reuses_activations_instead_of_faulting_them_in_again():
    """With bound_heap's thresholds an activation's memory is reused from one batch to the next:
    no page faults. The old 1 MiB mmap threshold (the control) mapped each one afresh, 2,048 faults
    per 8 MiB, which made record 1.4x and a bf16 forward 2x slower on an Intel Xeon VM (docs/performance.md)."""
    counts = faults()
    assert counts["bound"] < 100, counts
    assert counts["old"] > 10 * 2048 // 2, counts  # the control: the test can tell the two apart


def _note_parts(run: str, who: str, n: int) -> None:
    from probe.writer import updating_run_json

    for i in range(n):
        with updating_run_json(run) as info:
            info.setdefault("parts", {})[f"{who}{i}"] = i


def test_jobs_noting_their_parts_at_once_lose_none(tmp_path):
    """ablate, steer, importance and spec note their part in run.json by read-change-write: two at
    once lost entries (112 of 300 in a review's test); under the lock every entry stays."""
    import json
    import multiprocessing as mp

    (tmp_path / "run.json").write_text(json.dumps({"status": "complete"}))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_note_parts, args=(str(tmp_path), who, 60)) for who in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    parts = json.loads((tmp_path / "run.json").read_text())["parts"]
    assert len(parts) == 120 and json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


def _run_two(options0, options1):
    from probe.job import same_options

    return ThreadRanks(2).run(lambda world: same_options(world, (options0, options1)[world.rank]))


def test_ranks_with_different_options_stop_alike_naming_the_flag():
    """Under torchrun each node types its own command. Ranks with different --max-tokens hung in a
    collective, different --batch-size crashed inside gloo, and different --dtype wrote one
    "complete" run of mixed settings (found by a review): every rank now raises the same line."""
    import dataclasses

    from probe.job import RecordError, job_options
    from probe.record import RecordOptions

    a = job_options(RecordOptions(max_tokens=4096, out="/node0/run"))
    assert "out" not in a and "progress" not in a  # where each node finds its files may differ
    assert _run_two(a, job_options(RecordOptions(max_tokens=4096, out="/node1/run", progress=False))) == [None, None]
    errors = _run_two(a, job_options(dataclasses.replace(RecordOptions(max_tokens=8192, dtype="bfloat16"))))
    assert all(isinstance(e, RecordError) for e in errors) and str(errors[0]) == str(errors[1])
    assert str(errors[0]) == ("ranks run different jobs: --dtype is None on rank 0 but 'bfloat16' on rank 1 (and 1 "
                              "more); every node's command must pass the same options")
    def derived(top):  # what a job derived from its flags (analyses.ablate's ablations) is compared too
        return job_options(RecordOptions(max_tokens=4096), **{"the ablations (--top, ...)": [f"Ablation(top={top})"]})

    errors = _run_two(derived(2), derived(4))
    assert "the ablations (--top, ...) is ['Ablation(top=2)'] on rank 0 but ['Ablation(top=4)'] on rank 1" \
        in str(errors[1])


# A fresh process with glibc's heap (the thresholds are the whole process's): 64 blocks of 1 MiB, touched
# and freed; prints the resident bytes they leave behind.
TRIM = """
import ctypes, os, sys
from probe.job import bound_heap

if sys.argv[1] == "bound":
    bound_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before = rss()
blocks = [libc.malloc(1 << 20) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in reversed(blocks):
    libc.free(b)
print(rss() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="bound_heap sets glibc's thresholds (a no-op elsewhere)")
def test_bound_heap_keeps_freed_batch_buffers_for_the_next_batch():
    # 1 MiB blocks come from the heap (below the 64 MiB mmap threshold), and the 64 MiB they free stay
    # mapped for reuse (below the 128 MiB trim threshold) instead of going back to the kernel
    kept = {mode: int(subprocess.run([sys.executable, "-c", TRIM, mode], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout) for mode in ("bound", "default")}
    assert kept["bound"] > 60 << 20
    assert kept["default"] < 8 << 20  # the control: glibc's own thresholds map and unmap each block


def test_a_window_may_be_as_long_as_the_model_allows():
    import model
    from probe.job import RecordError, window_length

    tiny = model.ModelArgs.from_name("tiny")
    assert window_length(tiny.max_seq_len, tiny) == tiny.max_seq_len
    with pytest.raises(RecordError, match=f"--seq-len {tiny.max_seq_len + 1} exceeds the model's max_seq_len"):
        window_length(tiny.max_seq_len + 1, tiny)


def test_a_tokenizer_as_large_as_the_vocabulary_belongs_to_it(probe_env):
    from probe.job import RecordError, load_tokenizer

    n = load_tokenizer(None, probe_env["ckpt"], 10**6).get_vocab_size(with_added_tokens=True)
    assert load_tokenizer(None, probe_env["ckpt"], n).get_vocab_size(with_added_tokens=True) == n
    with pytest.raises(RecordError, match=f"has {n} tokens but the checkpoint's vocab_size is {n - 1}"):
        load_tokenizer(None, probe_env["ckpt"], n - 1)


def test_a_tokenizer_whose_ids_pass_the_vocabulary_is_refused_whatever_its_count(probe_env, tmp_path):
    """A vocabulary with a gap in its ids counts fewer tokens than its largest id: the count passed the
    check, and the id failed the first forward pass (a checkpoint tour)."""
    from probe.job import RecordError, load_tokenizer

    spec = json.loads((probe_env["ckpt"] / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    n = load_tokenizer(None, probe_env["ckpt"], 10**6).get_vocab_size(with_added_tokens=True)
    far = max(vocab, key=vocab.get)
    vocab[far] = 10 * n  # the count stays n
    (tmp_path / "gaps.json").write_text(json.dumps(spec))
    with pytest.raises(RecordError, match=f"has {n} tokens with ids up to {10 * n} but the checkpoint's vocab_size "
                                          f"is {n}"):
        load_tokenizer(str(tmp_path / "gaps.json"), probe_env["ckpt"], n)
    assert load_tokenizer(str(tmp_path / "gaps.json"), probe_env["ckpt"], 10 * n + 1)  # control: within it


def test_an_imported_run_needs_both_ckpt_and_corpus():
    from probe.job import RecordError, run_inputs

    info = {"kind": "import", "source": {"name": "sglang"}}
    for ckpt, corpus in (("ckpt", None), (None, "corpus.txt"), (None, None)):
        with pytest.raises(RecordError, match="an imported run .sglang. has no checkpoint or corpus of its own"):
            run_inputs(info, "runs/x", ckpt, corpus)
    assert run_inputs(info, "runs/x", "ckpt", "corpus.txt") == ("ckpt", "corpus.txt")


def test_the_flags_win_over_the_runs_own_inputs(tmp_path):
    from probe.job import run_inputs

    (tmp_path / "theirs.txt").write_text("a document")
    info = {"checkpoint": {"path": str(tmp_path / "gone")}, "corpus": {"path": str(tmp_path / "theirs.txt")}}
    assert run_inputs(info, "runs/x", "mine", "mine.txt") == ("mine", "mine.txt")
    assert run_inputs(info, "runs/x", "mine", None) == ("mine", str(tmp_path / "theirs.txt"))  # unset: the run's


def test_a_gone_or_changed_input_is_advised_in_the_callers_words(tmp_path, probe_env):
    """The CLI is told which flag to pass; a caller without flags (a notebook, `analyses.notebook_utils.
    need_model`) passed the same "pass --ckpt" on (a tour): `advice(lost, why)` says it instead."""
    from probe.job import RecordError, checkpoint_identity, run_inputs

    ckpt, corpus = probe_env["ckpt"], probe_env["corpus"]
    was = checkpoint_identity(ckpt)
    gone_ckpt = {"checkpoint": {"path": str(tmp_path / "gone")}, "corpus": {"path": str(corpus)}}
    changed = {"checkpoint": was | {"fingerprint": "0" * 64}, "corpus": {"path": str(corpus)}}
    gone_corpus = {"checkpoint": was, "corpus": {"path": str(tmp_path / "gone.txt")}}
    cases = [(gone_ckpt, f"the run's checkpoint {tmp_path / 'gone'} is no longer there; ",
              "pass --ckpt with the model the run was recorded with", "checkpoint gone"),
             (changed, f"the checkpoint at {was['path']} has changed since the run was recorded (its fingerprint or "
                       "weights sample differs); ", "pass --ckpt to use it anyway", "checkpoint changed"),
             (gone_corpus, f"the run's corpus {tmp_path / 'gone.txt'} is no longer there; ", "pass --corpus",
              "corpus gone"),
             ({"planned": {}}, "run.json names no checkpoint and no corpus path (a damaged or hand-edited run.json): ",
              "pass --ckpt and --corpus with what the run was recorded with", "checkpoint and corpus unnamed")]
    for info, said, cli, told in cases:
        with pytest.raises(RecordError) as ei:
            run_inputs(info, "runs/x", None, None)
        assert str(ei.value) == f"runs/x: {said}{cli}"  # the CLI's advice, unchanged
        with pytest.raises(RecordError) as ei:
            run_inputs(info, "runs/x", None, None, advice=lambda lost, why: f"ADVICE {lost} {why}")
        assert str(ei.value) == f"runs/x: {said}ADVICE {told}"
    with pytest.raises(RecordError, match=r"^runs/x: a training run interrupted .* --resume\); ADVICE model "
                                          r"unwritten$"):
        run_inputs({"kind": "train", "status": "interrupted"}, "runs/x", None, None, run=tmp_path,
                   advice=lambda lost, why: f"ADVICE {lost} {why}")
    same = {"checkpoint": was, "corpus": {"path": str(corpus)}}  # the control: both there, as recorded
    assert run_inputs(same, "runs/x", None, None, advice=lambda *a: "unused") == (was["path"], str(corpus))


def test_a_record_run_that_lost_its_paths_is_refused_not_filled_in(tmp_path):
    """A record run whose run.json had no checkpoint ran ablate and spec on the bundled model, silently (a
    bad-input audit); now refused unless the flag is given."""
    from probe.job import RecordError, run_inputs

    (tmp_path / "c.txt").write_text("a document")
    info = {"planned": {"tokens": 10}, "corpus": {"path": str(tmp_path / "c.txt")}}
    with pytest.raises(RecordError, match=r"^runs/x: run.json names no checkpoint path \(a damaged or hand-edited "
                                          r"run.json\): pass --ckpt with what the run was recorded with$"):
        run_inputs(info, "runs/x", None, None)
    with pytest.raises(RecordError, match="names no checkpoint and no corpus path .*pass --ckpt and --corpus"):
        run_inputs({"planned": {}}, "runs/x", None, None)
    assert run_inputs(info, "runs/x", "m", None) == ("m", str(tmp_path / "c.txt"))  # the control: --ckpt given
    assert run_inputs({"kind": "spec"}, "runs/x", None, None) == (None, None)  # not a record run: defaults apply


def test_a_run_recorded_before_weights_samples_matches_on_its_fingerprint():
    from probe.ckpt_identity import same_checkpoint

    now = {"path": "/m", "fingerprint": "f", "sample": "s"}
    assert same_checkpoint({"path": "/m", "fingerprint": "f"}, now)  # no sample recorded: the layout decides
    assert same_checkpoint({"fingerprint": "f", "sample": "s"}, now)
    assert not same_checkpoint({"fingerprint": "f", "sample": "t"}, now)
    assert not same_checkpoint({"fingerprint": "g"}, now)


def test_a_checkpoints_identity_is_read_once_until_a_file_changes(probe_env, tmp_path, monkeypatch):
    """spec checked the run's checkpoint and then recorded it, reading every weight file twice. (The copy's
    times are this second's: `RACY_NS` 0 lets it be kept; test_file_memo.py has the tick.)"""
    import shutil

    import probe.ckpt_identity as identity
    import probe.file_memo
    from helpers.checkpoints import edit_tensors

    monkeypatch.setattr(probe.file_memo, "RACY_NS", 0)
    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    reads = []
    real = identity._checkpoint_hashes
    monkeypatch.setattr(identity, "_checkpoint_hashes", lambda *a, **k: reads.append(a) or real(*a, **k))
    first = identity.checkpoint_identity(ckpt)
    first["path"] = "changed by the caller"  # a copy: the kept record is not the caller's
    assert identity.checkpoint_identity(ckpt)["path"] == str(ckpt.resolve()) and len(reads) == 1
    edit_tensors(next(ckpt.glob("*.safetensors")),
                 lambda t: {k: (v + 1 if k.endswith("e_score_correction_bias") else v) for k, v in t.items()})
    after = identity.checkpoint_identity(ckpt)
    assert len(reads) == 2 and after["sample"] != first["sample"]  # the control: a rewritten file is read again


def test_only_fp8_activations_refuse_float64():
    from probe.job import RecordError, check_model_flags

    for gemm in ("bf16", "fp8-weights"):  # fp8-weights: FP8 weights, float64 sums
        check_model_flags("float64", gemm)
    with pytest.raises(RecordError, match="--dtype float64 with --gemm fp8:"):
        check_model_flags("float64", "fp8")


def test_an_error_report_is_its_first_line_cut_short():
    from probe.job import first_line

    assert first_line(RuntimeError("Connection closed by peer\n  frame 1\n  frame 2")) == "Connection closed by peer"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("x" * 1000), limit=40) == "x" * 40


def test_rank_0_or_a_plain_process_prints_the_summary(monkeypatch):
    from probe.job_exit import launch_rank0

    monkeypatch.delenv("RANK", raising=False)
    assert launch_rank0()
    for rank, prints in (("0", True), ("1", False), ("7", False)):
        monkeypatch.setenv("RANK", rank)
        assert launch_rank0() is prints, rank


def test_a_single_process_raises_a_runtime_error_whole(monkeypatch):
    from probe.job_exit import one_line_when_a_peer_is_lost

    @one_line_when_a_peer_is_lost
    def main():
        raise RuntimeError("a bug to see whole")

    for world in (None, "1"):  # no torchrun, or torchrun with one process
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(RuntimeError, match="a bug to see whole"):
            main()


def test_job_error_is_one_line_and_exit_status_2_but_passes_a_closed_pipe_on(capsys):
    from probe.job_exit import job_error

    assert job_error(OSError("disk full")) == 2
    assert job_error(ValueError("raw"), "runs/x: the message as the command words it") == 2
    assert capsys.readouterr().err == "error: disk full\nerror: runs/x: the message as the command words it\n"
    with pytest.raises(BrokenPipeError):  # for closed_pipe_quiet: the reader stopped, not a failure
        job_error(BrokenPipeError(32, "Broken pipe"))
    assert capsys.readouterr().err == ""


def test_signals_are_held_with_torchs_threads_running_and_delivered_at_the_end():
    """signals_held blocked them in the main thread's mask, but a signal sent to the process goes to any
    thread that does not block it (torch's pool, gloo's), and Python runs its handler on the main
    thread all the same: with torch's threads up a Ctrl-C ran inside the block every time (found with
    record's run creation under torchrun). A handler set inside the block stays (record's leaving rank
    ignores them); blocks nest."""
    import os
    import signal
    import time

    import torch

    from probe.job import signals_held

    torch.set_num_threads(2)
    torch.ones(512, 512) @ torch.ones(512, 512)  # torch's pool threads started
    got = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        for _ in range(5):
            with signals_held(signal.SIGINT, signal.SIGTERM):
                with signals_held(signal.SIGINT):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.01)
                time.sleep(0.01)
                assert got == []
            assert got == [signal.SIGINT]
            got.clear()
        with signals_held(signal.SIGINT):
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # leaving: what comes now must not cut the message
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and got == []
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_hangup_is_a_stop_unless_the_process_ignores_it_as_nohup_does():
    """SIGHUP (a closed terminal or ssh session) ended a job where it stood, as SIGTERM once did: it is
    now one of the stop signals, turned into Ctrl-C as SIGTERM is (its own words) and put back after.
    Started under `nohup` (SIGHUP ignored, to outlive the terminal) it stays ignored: a handler of ours
    would end the job that nohup kept."""
    import signal

    from probe.job import stop_signals, terminate_as_interrupt

    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # Python's default, whether or not pytest runs under nohup
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
        assert stop_signals() == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        assert stop_signals(ctrl_c=False) == (signal.SIGTERM, signal.SIGHUP)
        for signum, said in ((signal.SIGHUP, "hung up"), (signal.SIGTERM, "terminated")):
            with pytest.raises(KeyboardInterrupt, match=f"^{said}$"):
                with terminate_as_interrupt():
                    # without a handler of its own, the signal would end the test process itself
                    assert signal.getsignal(signum) is not before[signum], f"{signum!r} is left to Python's default"
                    signal.raise_signal(signum)
        assert {s: signal.getsignal(s) for s in before} == before
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` starts a command
        assert stop_signals() == (signal.SIGINT, signal.SIGTERM)
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)  # ignored: the block goes on
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hup)


@pytest.mark.parametrize("module, argv", [
    ("probe.__main__", ["record", "--corpus", ""]),
    ("probe.__main__", ["record", "--out", " "]),
    ("probe.__main__", ["spec", "--ckpt", ""]),
    ("probe.__main__", ["import", "sglang", ""]),
    ("analyses.ablate.__main__", ["--run", ""]),
    ("analyses.importance.__main__", ["--corpus", ""]),
    ("analyses.steer.__main__", ["--out", ""]),
    ("analyses.report.__main__", [""]),
    ("analyses.report.__main__", ["--findings", ""]),
    ("analyses.placement.__main__", [""]),
    ("analyses.variants", ["no-router-bias", "--out", ""]),
])
def test_an_empty_path_is_refused_by_its_flag(module, argv, capsys):
    """An empty path (an unset shell variable) read as "not given": `record --corpus "$CORPUS"` recorded the
    bundled corpus, `report ''` reported on the default run (a tour). argparse refuses it, naming the flag."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    flag = next((a for a in argv if a.startswith("--")), None)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.endswith(": an empty path (for the current folder, give .)"), err
    assert flag is None or f"argument {flag}:" in err


def _outer_run_with_a_note(tmp_path: Path) -> Path:
    """runs/a, a run, beside which runs/ holds nothing else."""
    outer = tmp_path / "runs" / "a"
    outer.mkdir(parents=True)
    (outer / "run.json").write_text('{"status": "complete", "format": 1}')
    return outer


def _run_place_checks(corpus: Path):
    """Each command's own --out check (before a model loads): what it raises for `out`."""
    from analyses.ablate.inputs import check_out as ablate_check_out
    from probe.record import RecordOptions, check_out as record_check_out
    from probe.speculative import _check_out as spec_check_out
    from train.flags import build_parser, check_flags

    return {"record": lambda out: record_check_out(out, RecordOptions(), corpus),
            "spec": lambda out: spec_check_out(out, False, corpus),
            "ablate": lambda out: ablate_check_out(out, corpus),  # importance and steer call it too
            "train": lambda out: check_flags(build_parser().parse_args(["--out", str(out)]))}


@pytest.mark.parametrize("command", ["record", "spec", "ablate", "train"])
def test_a_new_run_inside_a_run_or_over_a_folder_of_runs_is_refused(command, tmp_path):
    """`record --out runs/a/sub` wrote a run inside the run runs/a: the dashboard, which lists the runs
    directly in the folder it serves, never showed it, and runs/a's `--overwrite` deleted it with a
    table folder of its name; a run written over runs/ itself hid every run there (a tour). Each
    command that writes a run refuses both, naming the run; writing into an existing run goes on."""
    check = _run_place_checks(tmp_path / "corpus.txt")[command]
    outer = _outer_run_with_a_note(tmp_path)
    for out in (outer / "sub", outer / "routing" / "x"):
        with pytest.raises(Exception, match=f"--out {out}: lies inside the run {outer}, ") as e:
            check(out)
        assert "\n" not in str(e.value) and not out.exists()
    with pytest.raises(Exception, match=r"holds the runs a, which a run written there would hide") as e:
        check(tmp_path / "runs")
    assert not (tmp_path / "runs" / "run.json").exists()
    check(tmp_path / "runs" / "b")  # the control: a run beside the other
    if command in ("spec", "ablate"):  # record and train need --resume (or --overwrite) to write into one
        check(outer)


def test_a_killed_training_run_without_its_model_is_called_interrupted_with_the_way_to_resume(tmp_path):
    """A training run killed before it wrote its model (run.json still says running, no job holds its
    writer lock) was 'a training run whose model is not written yet (status 'running')', as if the model
    would come (a tour): it was interrupted, and `python -m train ... --resume` continues it."""
    from probe.job import RecordError, run_inputs
    from probe.writer import writer_lock

    run = tmp_path / "t"
    run.mkdir()
    info = {"kind": "train", "status": "running"}
    with pytest.raises(RecordError) as ei:
        run_inputs(info, str(run), None, None)
    assert str(ei.value) == (f"{run}: a training run interrupted before it wrote its model (its job was killed: "
                             "run.json still says running, and no job holds the run): continue it with `python -m "
                             "train ... --resume` (the command that started it, plus --resume), or pass --ckpt with "
                             "the model to use")
    with pytest.raises(RecordError, match=r"^--out x: a training run interrupted before it wrote its model: continue"):
        run_inputs(info | {"status": "interrupted"}, "--out x", None, None, run=run)  # stopped itself
    with writer_lock(run), pytest.raises(RecordError, match="whose model is not written yet .status 'running'"):
        run_inputs(info, str(run), None, None)  # still training: its model comes
    assert run_inputs(info, str(run), "m", None) == ("m", None)  # --ckpt given: used



def test_an_old_runs_relative_tokenizer_is_said_to_be_relative_to_where_it_was_recorded(tmp_path, monkeypatch):
    """A run recorded before run.json kept the tokenizer's whole path has --tokenizer as typed; from another
    folder a relative one was 'no longer there', which sent one to look for a file that is where it was."""
    from probe.job import RecordError, run_tokenizer

    old = {"options": {"tokenizer": "tok.json"}}  # no "tokenizer" record: the option alone
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok.json").write_text("{}")
    assert run_tokenizer(old, "RUN") == "tok.json"  # the control: from the folder it was recorded in
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(RecordError) as ei:
        run_tokenizer(old, "RUN")
    assert str(ei.value) == ("RUN: the run's tokenizer tok.json is not in this folder: run.json keeps it as typed to "
                             "the record, relative to the folder that ran it (a run recorded before run.json kept the "
                             "whole path); pass --tokenizer")
    gone = {"options": {"tokenizer": "tok.json"}, "tokenizer": {"path": str(tmp_path / "gone.json")}}
    with pytest.raises(RecordError, match=rf"^RUN: the run's tokenizer {tmp_path}/gone.json is no longer there; "):
        run_tokenizer(gone, "RUN")


def test_a_runs_tokenizer_changed_since_it_was_recorded_is_refused(tmp_path):
    """The tokenizer a run was recorded with, edited since (another vocabulary, merges): a job on the run took
    it silently, its token ids no longer the run's, where a changed checkpoint is refused (a review)."""
    from probe.corpus import fingerprint
    from probe.job import RecordError, run_tokenizer

    tok = tmp_path / "tok.json"
    tok.write_text('{"model": 1}')
    info = {"options": {"tokenizer": "tok.json"}, "tokenizer": {"path": str(tok), "fingerprint": fingerprint(tok)}}
    assert run_tokenizer(info, "RUN") == str(tok)  # the control: unchanged
    tok.write_text('{"model": 2}')
    with pytest.raises(RecordError, match=rf"^RUN: the run's tokenizer {tok} has changed since the run was recorded"):
        run_tokenizer(info, "RUN")


def test_a_runs_tokenizer_gone_or_changed_is_advised_in_the_callers_words(tmp_path):
    """`run_tokenizer` told every caller to "pass --tokenizer", a flag the notebooks have none of (a tour):
    `advice(lost, why)` says it instead, as `run_inputs`' does for the checkpoint."""
    from probe.corpus import fingerprint
    from probe.job import RecordError, run_tokenizer

    tok = tmp_path / "tok.json"
    tok.write_text('{"model": 1}')
    gone = {"options": {"tokenizer": "tok.json"}, "tokenizer": {"path": str(tmp_path / "gone.json")}}
    changed = {"options": {"tokenizer": "tok.json"}, "tokenizer": {"path": str(tok), "fingerprint": "0" * 64}}
    advice = lambda lost, why: f"ADVICE {lost} {why}"  # noqa: E731
    for info, cli, told in [(gone, "pass --tokenizer", "ADVICE tokenizer gone"),
                            (changed, "pass --tokenizer to take it", "ADVICE tokenizer changed")]:
        with pytest.raises(RecordError) as ei:
            run_tokenizer(info, "RUN")
        assert str(ei.value).startswith("RUN: the run's tokenizer ") and str(ei.value).endswith(f"; {cli}")
        with pytest.raises(RecordError) as ei:
            run_tokenizer(info, "RUN", advice=advice)
        assert str(ei.value).endswith(f"; {told}") and "pass --" not in str(ei.value), str(ei.value)
    same = {"options": {"tokenizer": "tok.json"}, "tokenizer": {"path": str(tok), "fingerprint": fingerprint(tok)}}
    assert run_tokenizer(same, "RUN", advice=lambda *a: "unused") == str(tok)  # the control: there, as recorded


def test_the_names_moved_out_of_probe_job_still_import_from_it():
    """probe/job.py's commands' exits moved to probe/job_exit.py and the checkpoint identity to
    probe/ckpt_identity.py; users' `from probe.job import exit_ranks` keeps working, and gives the same
    objects as the new homes."""
    from probe import ckpt_identity, job, job_exit

    for name in ("closed_pipe_quiet", "one_line_when_a_peer_is_lost", "job_error", "table_errors", "launch_rank0",
                 "exit_ranks"):
        assert getattr(job, name) is getattr(job_exit, name), name
    for name in ("checkpoint_identity", "same_checkpoint", "checkpoint_fingerprint", "SAMPLE_BYTES"):
        assert getattr(job, name) is getattr(ckpt_identity, name), name
