"""A sharded job (`--model-parallel 2`) with one rank killed, then resumed, equal to one process; layouts
that cannot shard give one line on every rank; `--dry-run` plans the 671B from its config and index
alone (tests/helpers/mp_jobs.py has the checkpoint and options)."""

from __future__ import annotations

import json
import re
import os
import signal
import time
from pathlib import Path

import pytest

import model
import probe
from model.parallel import ParallelError

from helpers import make_corpus, random_model
from helpers.checkpoints import index_only
from helpers.mp_jobs import RECORD, ROOT, TABLES, TOPOLOGY, opts, our_frames, record_args, torchrun
from helpers.processes import HELD_PROBE, hold_env, wait_until_held, worker_pids
from helpers.tables import assert_same_tables
from helpers.threads import one_thread

pytestmark = pytest.mark.slow  # torchrun launches, a browser or notebook kernels: `pytest -m "not slow"` skips them


# NOTE: 10 batches of a tiny model (~55 ms each on 2 ranks, float64), committed every 2: the first
# launch is killed at batch 3 (one commit kept), the first resume at batch 7 (two more), and the
# second resume commits twice more (the 20 batches of before, killed at 5 and 13, crossed no commit
# boundary these do not). The kills do not race the run: each launch goes through
# helpers/held_probe.py, which holds both ranks at the start of one batch until the victim is killed
# (a kill timed from the commits once landed after a loaded machine had finished the run).
RESUME_TOKENS = 640


@pytest.fixture(scope="module")
def single(env):
    """The record job in this process (one whole model): what a resumed sharded run must equal."""
    from probe.record import RecordOptions, record

    with one_thread():
        record(RecordOptions(**opts(env, env["base"] / "single", RECORD | {"max_tokens": RESUME_TOKENS})))
    return {"rec": probe.open_run(env["base"] / "single")}


def _launch_and_kill(env, out: Path, victim: int, at: int, *extra: str) -> None:
    """Start the sharded record job on 2 ranks, SIGKILL rank `victim` while both are held at the start of
    batch `at`, then let the survivor go on: it must notice, mark the run interrupted and the launch end
    within 60 s."""
    gate = out.parent / f"gate-{at}"
    args = record_args(env, out, "--model-parallel", "2", "--commit-every", "2", *extra, max_tokens=RESUME_TOKENS)
    assert args[:2] == ["-m", "probe"]
    proc = torchrun(2, str(HELD_PROBE), *args[2:], popen=True, env=hold_env(gate, at))
    assert wait_until_held(proc, gate, ranks=2), "the job ended before batch %d: %s" % (at, proc.stderr.read()[-2000:])
    pids = worker_pids(proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[victim], signal.SIGKILL)
    gate.unlink()
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    stopped = time.time() - t0
    print(f"\nrank {victim} killed: the launch ended {stopped:.1f} s later")
    assert stopped < 60
    assert proc.returncode != 0
    assert f"rank {1 - victim} of 2 stopped" in err and "is marked interrupted (continue with --resume)" in err, \
        err[-3000:]
    assert not our_frames(err)  # one line from our rank, no traceback of ours
    assert probe.open_run(out).status == "interrupted"


def test_two_ranks_one_sharded_model_killed_twice_then_resumed(env, single, tmp_path):
    """`--model-parallel 2` on 2 ranks: the writer (rank 0) is killed mid-run; the resumed run loses
    its other rank later; a second --resume finishes it, equal to one process. (One run through both
    kills: three launches where two runs took four.) The second --resume gives rank 1, which writes
    nothing, a folder where the run is not (a node without the shared disk): it read the progress there
    and began at batch 0 while its writer went on from the last commit, the sharded forward mixing two
    batches' halves into the rows written. Its --tokenizer there is that node's copy of the tokenizer
    under another name, as each node may name it: the ranks compared the files' sha256 with the file
    name hashed in (`probe.corpus.fingerprint`, as run.json keeps it), so a node's tok.json of the same
    bytes as the other's tokenizer.json stopped every rank with "is another tokenizer" (a review; a
    launch of its own before)."""
    import shutil

    copy = tmp_path / "node1" / "tok.json"
    copy.parent.mkdir()
    shutil.copyfile(env["ckpt"] / "tokenizer.json", copy)
    out = tmp_path / "run"
    _launch_and_kill(env, out, 0, 3)
    first = len(probe.open_run(out).df("tokens"))
    assert 0 < first < single["rec"].info["recorded"]["tokens"]
    _launch_and_kill(env, out, 1, 7, "--resume")
    partial = probe.open_run(out)
    assert partial.info["resumed"] == 1 and first < len(partial.df("tokens")) < single["rec"].info["recorded"]["tokens"]
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), f"out={tmp_path / 'not-shared'}",
                 f"tokenizer={copy}", *record_args(env, out, "--model-parallel", "2", "--resume", "--tokenizer",
                                                   str(env["ckpt"] / "tokenizer.json"), max_tokens=RESUME_TOKENS)[2:],
                 timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    done = probe.open_run(out)
    assert done.status == "complete" and done.info["resumed"] == 2
    assert done.info["world"]["model_parallel"] == 2 and done.info["world"]["replicas"] == 1
    assert_same_tables(done, single["rec"], TABLES)


def test_layout_errors_are_one_line_on_every_rank(env, tmp_path):
    out = tmp_path / "never"
    p = torchrun(2, *record_args(env, out, "--model-parallel", "3"))
    assert p.returncode != 0
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    # NOTE: every rank runs the same check, but torchrun stops the other workers as soon as one exits
    # non-zero: a rank still importing torch (a loaded machine) is stopped before it gets to print,
    # and a rank stopped later says so. So at least one rank says this line, and each says one line.
    # (Two ranks printing at once may interleave their lines: hence the regex.)
    want = "error: --model-parallel 3 does not divide the world size 2 (torchrun started 2 processes)"
    assert 1 <= len(lines) <= 2 and want in lines, p.stderr
    assert all(ln == want or re.match(r"error: rank [01] of 2 stopped by signal 15 ", ln) for ln in lines), lines
    assert not our_frames(p.stderr)  # torchrun prints its own report; no traceback of ours
    assert not out.exists()


@pytest.mark.parametrize("mode", ["load", "after-create"])
def test_a_rank_failing_before_the_batches_ends_every_rank_in_one_line(env, tmp_path, mode):
    """A rank whose model load failed left rank 0 to create the run and die in its next collective
    with a traceback, the run "running" for good; a rank lost right after the run was created did
    the same (found by a review). Now a failed load reaches every rank before anything is written,
    and a peer lost after that marks the run interrupted."""
    out = tmp_path / "run"
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), mode,
                 *record_args(env, out, "--model-parallel", "2")[2:])
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    # the ranks print at the same moment: one's line may land inside the other's
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    if mode == "load":
        # both ranks agree on the failure and say it; a rank that exits first can have torchrun stop the other
        # before it prints, which then says so (as in the layout errors above; seen once in five runs)
        want = "error: the model did not load on every rank (rank 1: injected: cannot read this rank's shard)"
        assert want in lines and all(ln == want or re.match(r"error: rank [01] of 2 stopped by signal 15 ", ln)
                                     for ln in lines), p.stderr[-3000:]
        assert not (out / "run.json").exists()
    else:
        # rank 0 holds torchrun's SIGTERM until it has marked the run and said so
        assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 stopped before recording: ") \
            and lines[0].endswith("is marked interrupted (continue with --resume)"), p.stderr[-3000:]
        assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("job", ["spec", "ablate"])
def test_a_rank_lost_mid_job_is_one_line_on_the_other(env, tmp_path, job):
    """spec, ablate, importance and steer: a peer killed mid-job left the survivor a traceback of ~75
    frames through the collective that noticed (found by a review); now one line naming the rank."""
    common = ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(tmp_path / "o"),
              "--dtype", "float64", "--model-parallel", "2", "--no-progress"]
    argv = (["spec", *common, "--prompt-tokens", "12", "--new-tokens", "8", "--max-prompts", "4"] if job == "spec" else
            ["-m", "analyses.ablate", *common, "--top", "2", "--seq-len", "32", "--max-tokens", "320",
             "--loads-from", "baseline"])
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), "after-load", *argv)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    # either the collective noticed the lost peer first, or torchrun's SIGTERM came first: one line each way
    assert len(lines) == 1 and lines[0].startswith(("error: rank 0 of 2 stopped: ",
                                                    "error: rank 0 of 2 stopped by signal 15 ")), p.stderr[-3000:]


def test_a_rank_lost_mid_sweep_leaves_a_line_that_says_what_was_committed(env, tmp_path, capsys):
    """ablate on a sharded model, rank 1 killed after the first ablation's commit: the survivor said only
    that it stopped, where Ctrl-C says which ablations were kept and to run the command again (found
    running the README's layouts by hand). Now its line says it, and the same command in one process
    takes the committed ablation and computes the rest."""
    from analyses.ablate.__main__ import main

    out = tmp_path / "o"
    argv = ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--dtype", "float64",
            "--no-progress", "--top", "2", "--control", "--seq-len", "32", "--max-tokens", "320",
            "--loads-from", "baseline"]
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), "after-commit", "-m", "analyses.ablate",
                 *argv, "--model-parallel", "2", timeout=120)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    # the lost peer's error or torchrun's SIGTERM, whichever reaches rank 0 first: the same note after either
    kept = f"; 1 of 2 ablations committed in {out / 'ablations'}; run the same command again to compute the rest"
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 stopped") and lines[0].endswith(kept), \
        p.stderr[-3000:]
    with one_thread():
        assert main(argv) == 0
    assert "ablate: continuing an interrupted sweep: 1 of 2 ablations" in capsys.readouterr().err


def test_a_writing_rank_that_does_not_see_the_run_stops_every_rank_and_marks_it(env, tmp_path):
    """Two replicas (two writers), rank 1 given a folder rank 0 did not create the run in (a node without
    the shared disk): every rank stops before the batches, as before (untested), and the run rank 0
    created is marked interrupted; it said "running" for good, with no job holding it. Every rank's
    line names the rank that did not see the run and its --out (each said its own --out alone)."""
    out, elsewhere = tmp_path / "run", tmp_path / "not-shared"
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), f"out={elsewhere}",
                 *record_args(env, out)[2:], timeout=120)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    want = (f"error: --out {out}: rank 0 created the run there, but writing rank 1 (--out {elsewhere}) does not see "
            "its run.json: under several nodes the run directory must be on a filesystem every node shares (the run "
            "is marked interrupted: continue it with --resume once every node sees it)")
    assert want in lines, p.stderr[-3000:]
    assert all(ln == want or re.match(r"error: rank [01] of 2 stopped by signal 15 ", ln) for ln in lines), lines
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (elsewhere / "run.json").exists()


@pytest.mark.parametrize("job", ["record", "ablate"])
def test_a_node_with_another_corpus_is_refused_on_every_rank(env, tmp_path, job):
    """Paths may differ from node to node, contents not: a rank given another corpus (a stale copy on
    its node) recorded its replica's windows of that text into the run, or, where the two gave another
    number of batches, left both ranks waiting in different collectives until torchrun's timeout (found
    with a per-rank --corpus). Now every rank stops with one line naming both corpora."""
    other = make_corpus(tmp_path / "other", docs_per_domain=8, seed=3, scale=2)
    out = tmp_path / "o"
    argv = (record_args(env, out)[2:] if job == "record" else
            ["-m", "analyses.ablate", "--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out),
             "--dtype", "float64", "--no-progress", "--top", "2", "--seq-len", "32", "--max-tokens", "320",
             "--loads-from", "baseline"])
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), f"corpus={other}", *argv, timeout=120)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    what = "holds other text (its files' sha256 differs)" if job == "record" else \
        "gives other token windows (its text, or the tokenizer, differs)"
    want = (f"error: ranks read different inputs: --corpus {other} on rank 1 {what} than --corpus {env['corpus']} on "
            "rank 0; every node must see the same files (a shared filesystem, or identical copies)")
    # as in the layout errors above: a rank stopped by torchrun before it printed says so instead
    assert want in lines and all(ln == want or re.match(r"error: rank [01] of 2 stopped by signal 15 ", ln)
                                 for ln in lines), p.stderr[-3000:]
    assert not (out / "run.json").exists() and not (out / "ablations").exists()


def test_a_node_whose_checkpoint_holds_another_tokenizer_is_named_by_the_checkpoint(env, tmp_path):
    """Without --tokenizer each rank reads its checkpoint's tokenizer.json: a node's copy of the checkpoint with
    another one was refused as "--tokenizer CKPT/tokenizer.json", a flag the command did not have (a review)."""
    import shutil

    copy = shutil.copytree(env["ckpt"], tmp_path / "node1")
    spec = json.loads((copy / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=len)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # another tokenizer, the same vocabulary
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    out = tmp_path / "o"
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), f"ckpt={copy}", *record_args(env, out)[2:],
                 timeout=120)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    want = (f"error: ranks read different inputs: the checkpoint's tokenizer {copy / 'tokenizer.json'} on rank 1 is "
            f"another tokenizer (its sha256 differs) than the checkpoint's tokenizer {env['ckpt'] / 'tokenizer.json'} "
            "on rank 0; every node must see the same files (a shared filesystem, or identical copies)")
    assert want in p.stderr, p.stderr[-3000:]


def test_a_rank_that_does_not_see_an_interrupted_sweep_is_refused_on_every_rank(env, tmp_path, monkeypatch, capsys):
    """A sweep interrupted after its first ablation, continued by a sharded model whose rank 1 is given a
    folder where the sweep is not (a node without the shared disk): rank 0 took the baseline and the
    finished ablation while rank 1 computed them, in collectives rank 0 was not in, and gloo aborted
    the job. Now both ranks stop with one line before any pass."""
    from analyses.ablate import run as run_module
    from analyses.ablate.__main__ import main

    out = tmp_path / "o"
    argv = ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--dtype", "float64",
            "--no-progress", "--top", "2", "--control", "--seq-len", "32", "--max-tokens", "320",
            "--loads-from", "baseline"]
    real, passes = run_module._ablated, []

    def cut_after_one(*a, **k):  # Ctrl-C as the second ablation starts
        if passes:
            raise KeyboardInterrupt
        passes.append(1)
        return real(*a, **k)

    monkeypatch.setattr(run_module, "_ablated", cut_after_one)
    with one_thread():
        assert main(argv) == 130
    assert "interrupted: 1 of 2 ablations committed" in capsys.readouterr().err
    p = torchrun(2, str(ROOT / "tests" / "workers" / "failing_rank.py"), f"out={tmp_path / 'not-shared'}",
                 "-m", "analyses.ablate", *argv, "--model-parallel", "2", timeout=120)
    assert p.returncode != 0 and not our_frames(p.stderr), p.stderr[-3000:]
    lines = ["error: " + m for m in re.findall(r"error: (.*?)(?=error: |\n)", p.stderr + "\n")]
    said = (": rank 1 does not find the earlier sweep there that rank 0 finds (its committed ablations or saved "
            "baseline): every rank must see --out (a filesystem every node shares); or pass --fresh")
    assert f"error: {out / 'ablations'}{said}" in lines or f"error: {tmp_path / 'not-shared' / 'ablations'}{said}" \
        in lines, p.stderr[-3000:]
    assert all(ln.endswith(said) or re.match(r"error: rank [01] of 2 stopped by signal 15 ", ln) for ln in lines), \
        lines


@pytest.mark.parametrize("override, field", [
    ({"n_heads": 3}, "n_heads=3"), ({"vocab_size": 513}, "vocab_size=513"),
    ({"n_routed_experts": 15, "n_expert_groups": 3, "n_limited_groups": 2, "n_activated_experts": 4},
     "n_routed_experts=15")])
def test_model_parallel_must_divide_the_model(env, tmp_path, monkeypatch, override, field):
    """Checked before any process group exists, so every rank stops with the same line."""
    from probe.record import RecordOptions, record

    ckpt = tmp_path / "ck"
    model.save(random_model("tiny", seed=1, **(TOPOLOGY | override)), ckpt)
    (ckpt / "tokenizer.json").write_bytes((env["ckpt"] / "tokenizer.json").read_bytes())
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParallelError, match=f"--model-parallel 2 does not divide {field}"):
        record(RecordOptions(**opts(env, tmp_path / "out", RECORD) | {"ckpt": str(ckpt), "model_parallel": 2}))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- --dry-run
def dry(capsys, ckpt, *extra):
    from probe.__main__ import main

    code = main(["record", "--ckpt", str(ckpt), "--dry-run", "--no-progress", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_dry_run_plans_671B_from_config_and_index_alone(tmp_path, capsys):
    ckpt = index_only(tmp_path / "DeepSeek-V3", model.ModelArgs.from_name("671B"))
    out = tmp_path / "run"
    code, text, err = dry(capsys, ckpt, "--out", str(out), "--world-size", "8", "--model-parallel", "auto",
                          "--gemm", "fp8", "--dtype", "bfloat16", "--device-memory", "141", "--device", "cuda")
    print(text)
    assert code == 0, err
    assert "163 of 163 shard files are not downloaded yet" in text and "checked the 91,991 names" in text
    assert "8 rank(s) = 1 replica(s) x 8" in text
    assert "weights                87.02 GB" in text  # 685 GB of FP8 weights + scales over 8 ranks
    assert "fits 141 GB per rank with" in text and "ESTIMATED" in text
    assert not out.exists()  # nothing written
    # the same run on 80 GB cards does not fit at 8 ranks, and says by how much
    code, text, _ = dry(capsys, ckpt, "--out", str(out), "--world-size", "8", "--model-parallel", "auto",
                        "--gemm", "fp8", "--dtype", "bfloat16", "--device-memory", "80", "--device", "cuda")
    # exit status 1 (a script can tell), and no advice the command already follows (--gemm fp8; a review)
    assert code == 1 and "does NOT fit 80 GB per rank: 9.04 GB short (more ranks or a smaller --batch-size)" in text
    # the forward returns the head's statistics (model/head_stats.py): one block of logits, not [B, S, V]
    # twice; the Triton FP8 GEMM reads its weight as it is: no dequantised weight, no twin's copies
    assert "computing on cuda)" in text and "head block 0.67 GB" in text
    assert "CPU's FP8 GEMM" not in text and "dequantised 0.13" not in text
    # on CPUs the head's blocks are smaller and the FP8 GEMM's torch twin dequantises the weight and copies
    # its input (float32 and float64 for the row-parallel w2: 4,096 tokens x 144,640 bytes)
    code, text, _ = dry(capsys, ckpt, "--out", str(out), "--world-size", "8", "--model-parallel", "auto",
                        "--gemm", "fp8", "--dtype", "bfloat16", "--device", "cpu")
    assert code == 0 and "computing on cpu)" in text and "head block 9.5 MB" in text
    assert "largest FP8 weight dequantised 0.13 GB, its activations in the CPU's FP8 GEMM 0.59 GB" in text


def test_dry_run_advises_in_the_jobs_flags(tmp_path, capsys, monkeypatch):
    """A shard cutting FP8 blocks, and float64 with FP8 activations, were advised with the loader's
    arguments (gemm_impl='bf16', dtype float32) at the command line (a review)."""
    ckpt = index_only(tmp_path / "DeepSeek-V3", model.ModelArgs.from_name("671B"))
    code, _, err = dry(capsys, ckpt, "--world-size", "32", "--model-parallel", "auto", "--gemm", "fp8")
    assert code == 2 and "do not align to the 128-wide FP8 blocks; pass --gemm bf16 (dequantise on load) or a " \
                         "world size whose shards are multiples of 128" in err and "gemm_impl" not in err, err
    code, _, err = dry(capsys, ckpt, "--gemm", "fp8", "--dtype", "float64")
    assert code == 2 and err.strip() == ("error: --dtype float64 with --gemm fp8: FP8 GEMMs quantise float32 or "
                                         "bfloat16 activations, not float64; use --dtype float32, or --gemm "
                                         "fp8-weights (FP8 weights, float64 sums)")
    # --model-parallel 8 planned outside torchrun without --world-size said "torchrun started 1 process" (a review)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, err = dry(capsys, ckpt, "--model-parallel", "8")
    assert code == 2 and err.strip() == ("error: --model-parallel 8 does not divide the world size 1 (no --world-size "
                                         "given: pass the ranks to plan for)")


def test_dry_run_checks_the_index_names_and_the_layout(tmp_path, capsys):
    args = model.ModelArgs.from_name("tiny")
    bad = index_only(tmp_path / "a", args, n_files=3, drop="model.layers.1.mlp.experts.3.up_proj.weight")
    code, _, err = dry(capsys, bad)
    assert code == 2 and "missing tensor model.layers.1.mlp.experts.3.up_proj.weight" in err
    extra = index_only(tmp_path / "b", args, n_files=3, add="model.layers.9.mlp.gate.weight")
    code, _, err = dry(capsys, extra)
    assert code == 2 and "unexpected tensor model.layers.9.mlp.gate.weight" in err
    ok = index_only(tmp_path / "c", args, n_files=3)
    code, _, err = dry(capsys, ok, "--world-size", "6", "--model-parallel", "3")
    assert code == 2 and err.strip() == "error: --model-parallel 3 does not divide vocab_size=512 (embedding and head " \
                                        "rows are split across ranks)"
    code, _, err = dry(capsys, ok, "--world-size", "4", "--model-parallel", "3")
    assert code == 2 and "--model-parallel 3 does not divide the world size 4 (--world-size 4)" in err
    # "auto" is the world size, and the message says so; 0 ranks or no memory are refused, not ignored
    code, _, err = dry(capsys, ok, "--world-size", "6", "--model-parallel", "auto")
    assert code == 2 and err.startswith("error: --model-parallel auto: the world size 6 does not divide vocab_size=512")
    code, _, err = dry(capsys, ok, "--world-size", "0")
    assert code == 2 and err.strip() == "error: --world-size 0 must be >= 1"
    code, _, err = dry(capsys, ok, "--device-memory", "-1")
    assert code == 2 and err.strip() == "error: --device-memory -1: must be > 0 (GB per rank)"


def test_dry_run_with_the_weights_reads_headers_only(env, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = dry(capsys, env["ckpt"], "--corpus", str(env["corpus"]), "--out", str(out),
                          "--router-logits", "full", "--sample", "0.5")
    assert code == 0, err
    assert "every tensor's name, shape and dtype checked" in text and "ESTIMATED" not in text
    assert "tables per 1M tokens (--router-logits full, --sample 0.5)" in text
    assert not out.exists()
    # a tensor of the wrong shape is found from the headers, before anything loads
    import torch
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in env["ckpt"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    t = load_file(bad / "model.safetensors")
    t["model.layers.1.mlp.gate.weight"] = torch.zeros(256, 60)
    save_file(t, bad / "model.safetensors")
    code, _, err = dry(capsys, bad, "--corpus", str(env["corpus"]))
    assert code == 2 and "model.layers.1.mlp.gate.weight has shape [256, 60], expected [256, 64]" in err
