"""The benchmark scripts are how the speed figures of the README and docs/performance.md are
measured, and the GPU checks (tests/gpu/) run only where there is a GPU: no test runs them end to
end here, so their imports (most inside functions) are checked the way each script resolves them
when run as `python path/to/script.py`. The GPU checks' runner, tests/gpu/run_all.sh, runs end to
end in its CPU mode, so that a short GPU lease does not find it broken."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, zygote

CHECKER = REPO / "tests" / "helpers" / "script_imports.py"


def problems(*scripts: Path) -> list[str]:
    out = subprocess.run([sys.executable, str(CHECKER), *map(str, scripts)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh process
def test_every_benchmark_and_gpu_check_script_imports_what_it_uses(tmp_path):
    scripts = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "tests" / "gpu").glob("check_*.py"))
    assert len(scripts) >= 10
    # negative control, in the same process: bench_record.py's old set-up put tests/ first on sys.path,
    # where tests/model/ (a folder of test files) shadowed the model package, and read helpers from
    # conftest after they had moved to tests/helpers
    bad = tmp_path / "bench_broken.py"
    bad.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n\n\n"
                   "def main():\n    import model\n    from conftest import make_tokenizer\n"
                   "    return model.ModelArgs\n")
    found = problems(*scripts, bad)
    assert [p for p in found if "bench_broken" not in p] == []
    broken = "\n".join(found)
    assert "model.ModelArgs does not exist" in broken and "conftest.make_tokenizer does not exist" in broken


@pytest.mark.slow  # three fresh processes and a torchrun launch
def test_the_gpu_checks_runner_passes_in_its_cpu_mode_and_names_what_fails(tmp_path):
    run_all = REPO / "tests" / "gpu" / "run_all.sh"

    def run(python: str, out: Path, *steps: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(out), "PYTHON": python,
               "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",  # one thread each: the suite's other worker runs too
               "TMPDIR": str(tmp_path)}  # its torchrun's torchelastic_* folder goes with the test's
        if zygote.ENV in os.environ:
            env[zygote.ENV] = os.environ[zygote.ENV]
        return subprocess.run(["bash", str(run_all), "--cpu", *steps], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600)

    # each step's interpreter (and check_parallel's torchrun workers) forked from the suite's zygote, with
    # torch imported (helpers/zygote.py): ~1.5-2 s of CPU a process less
    python = zygote.python_wrapper(str(tmp_path)) if zygote.ENV in os.environ else sys.executable
    done = run(python, tmp_path / "ok")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith(f"every step passed (logs in {tmp_path / 'ok'})")
    logs = {p.name: p.read_text() for p in (tmp_path / "ok").iterdir()}
    assert sorted(logs) == ["env.log", "jobs.log", "kernels.log", "parallel.log", "record.log"]
    assert "all checks passed" in logs["kernels.log"]
    assert "identical 100.00% (>= 99%): ok" in logs["record.log"]  # decisive choices, group margins included
    assert all(f"== {step}: exit 0 after" in logs[f"{step}.log"] for step in ("kernels", "record", "parallel", "jobs"))
    # 3 records judged (float32, bfloat16, FP8 against the twins; the CPU's twins are the reference) and spec
    assert "spec, float32" in logs["jobs.log"] and logs["jobs.log"].count(": ok") == 4
    assert "float32 on the CPU as the device: " in logs["jobs.log"]
    # the FP8-resident shards on the twins' float64 sums equal the whole model (both attention paths)
    assert logs["parallel.log"].count("fp8 twins") == 2
    assert all(line.endswith("yes") for line in logs["parallel.log"].splitlines() if line.startswith("fp8 twins"))
    # a step this mode has not: one line naming it, before anything runs
    unknown = run(sys.executable, tmp_path / "unknown", "record", "narrow")
    assert unknown.returncode == 2 and not (tmp_path / "unknown" / "record.log").exists()
    assert unknown.stderr.strip() == "run_all.sh: no step 'narrow' in cpu mode (steps: kernels record parallel jobs)"
    # control: an interpreter that fails every step; the runner exits 1 and names each step
    failed = run("/bin/false", tmp_path / "bad")
    assert failed.returncode == 1
    assert failed.stdout.rstrip().endswith(f"failed: kernels record parallel jobs (logs in {tmp_path / 'bad'})")


@pytest.mark.slow  # commands in fresh processes
def test_benchmark_command_lines_give_one_line_errors():
    """A count of 0 or a checkpoint that is not there is one line and exit status 2 (tracebacks from
    GenerateError, CheckpointError or statistics' empty median before; found by a review)."""
    for args, msg in ((["bench_record.py", "--repeats", "0"], "argument --repeats: 0 must be at least 1"),
                      (["bench_decode.py", "--ckpt", "/nonexistent-ckpt"],
                       "error: /nonexistent-ckpt: no such directory")):
        p = subprocess.run([sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


@pytest.mark.slow  # commands in fresh processes
def test_the_dashboard_benchs_synthetic_runs_are_made_and_bad_sizes_refused(tmp_path, monkeypatch):
    """bench_dashboard.py crashed on every run when TrainLog.loads grew an argument (only the test
    helper was updated), and --rows 1..7 failed deep inside; bench_prefill.py --config DIR was an
    IsADirectoryError (a review). Its training run is made here, as the bench makes it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import probe
    from bench_dashboard import synth_train_run

    synth_train_run(tmp_path / "train", steps=20)
    assert len(probe.open_run(tmp_path / "train").df("train_steps")) == 20
    for args, msg in ((["bench_dashboard.py", "--rows", "7"], "--rows 7: at least 4096"),
                      (["bench_prefill.py", "--config", "data/model"], "error: --config data/model: not a file")):
        p = subprocess.run([sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


@pytest.fixture
def benchmarks_path(monkeypatch):
    """The benchmark scripts importable as they import each other (`_cli`, as when run)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_dashboard_bench_refuses_a_run_folder_it_did_not_write(tmp_path):
    """--out runs deleted runs/train and runs/big whatever they held (a real training run; a review)."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "run.json").write_text("{}")
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dashboard.py"), "--out", str(tmp_path),
                        "--rows", "4096", "--repeat", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"{tmp_path / 'train'} exists and was not written by bench_dashboard.py" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert (tmp_path / "train" / "run.json").read_text() == "{}" and not (tmp_path / "big").exists()


@pytest.mark.slow  # 0.4 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_dashboard_bench_remakes_its_runs_for_another_row_count(tmp_path, monkeypatch, capsys, benchmarks_path):
    """--out reused its old runs whatever --rows asked; --out at a file was a NotADirectoryError (a review).
    The pages are not timed here, and the training run is short."""
    import bench_dashboard as bd

    monkeypatch.setattr(bd, "pages", lambda runs: {})
    short = bd.synth_train_run
    monkeypatch.setattr(bd, "synth_train_run", lambda out: short(out, steps=5))

    def main(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["bench_dashboard.py", *args])
        return bd.main()

    def recorded(rows: int) -> int:
        assert main("--out", str(tmp_path / "runs"), "--rows", str(rows)) == 0
        return json.loads((tmp_path / "runs" / "big" / "run.json").read_text())["recorded"]["tokens"]

    assert recorded(4096) == 4096 // bd.LAYERS
    assert recorded(8192) == 8192 // bd.LAYERS  # made again, not the 4096-row run
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main("--out", str(tmp_path / "file"), "--rows", "4096")
    assert e.value.code == 2 and f"--out {tmp_path / 'file'}: not a directory" in capsys.readouterr().err


@pytest.mark.slow  # 2.9 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_every_page_of_the_dashboard_bench_does_its_work_on_the_smallest_runs(tmp_path, monkeypatch, benchmarks_path):
    """The Training page's work called data.train_metrics, eval_metrics and bias_by_step, which had moved
    to dashboards/training_data.py: the bench stopped at its last page with an AttributeError (found
    splitting `pages`). Every page of the app is there, and each one's work runs (not timed) on the
    bench's smallest runs, the training run short."""
    import bench_dashboard as bd
    from helpers.apptest import PAGES

    short = bd.synth_train_run
    monkeypatch.setattr(bd, "synth_train_run", lambda out: short(out, steps=100))  # one evaluation
    bd.build_runs(tmp_path, 4096)
    pages = bd.pages(tmp_path)
    assert sorted(pages) == sorted(PAGES.values())
    for work in pages.values():
        work()


def test_the_dashboard_benchs_docstring_counts_the_gates_its_training_run_has(tmp_path, benchmarks_path):
    """The docstring said 4 gates; the training run has 8 (a review)."""
    import re

    import bench_dashboard as bd

    bd.synth_train_run(tmp_path / "train", steps=2)
    gates = json.loads((tmp_path / "train" / "run.json").read_text())["gates"]
    assert re.search(r"x (\d+) gates", bd.__doc__).group(1) == str(len(gates))


def test_the_full_width_bench_replaces_only_its_own_cache_folder(tmp_path, benchmarks_path):
    """write_checkpoint deleted any --cache folder without its COMPLETE.json (a user's folder, a real
    checkpoint; a review). A tiny config stands in for the 671B slice."""
    from bench_full_width import write_checkpoint

    from model import ModelArgs

    args = ModelArgs.from_name("tiny")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=f"--cache {user}: holds files this bench did not write"):
        write_checkpoint(args, user)
    assert (user / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_checkpoint(args, empty) > 0 and (empty / "COMPLETE.json").exists()
    assert write_checkpoint(args, empty) == 0  # reused
    (empty / "COMPLETE.json").unlink()  # a write of its own cut short: the folder is replaced
    (empty / "left-over.tmp").write_text("")
    assert write_checkpoint(args, empty, seed=1) > 0 and not (empty / "left-over.tmp").exists()
    assert json.loads((empty / "COMPLETE.json").read_text())["seed"] == 1


def test_the_full_width_benchs_plan_line_adds_up(benchmarks_path, capsys):
    """The plan's per-rank total counts the packed float32 copy for oneDNN; the printed terms left it
    out, so they did not add up to the total (a review)."""
    import re
    from types import SimpleNamespace

    from bench_full_width import GB, report

    pl = {"weights": {"per_rank_bytes": 10 * GB, "absorb_dense_bytes": 1 * GB, "packed_bytes": 5 * GB},
          "activations": {"peak": 2 * GB}, "per_rank": 18 * GB}
    info = {"recorded": {"tokens": 100}, "timings": {"load_s": 1.0, "last_session_s": 2.0},
            "memory": {"per_rank": [{"rank": 0, "before_load": GB, "after_load": 12 * GB, "peak_rss": 19 * GB}]}}
    report(SimpleNamespace(), pl, {"info": info, "wall": 3.0}, 1)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "plan per rank" in ln)
    terms, total = line.split("=")
    assert sum(map(float, re.findall(r"([\d.]+) GB", terms))) == pytest.approx(float(re.findall(r"[\d.]+", total)[0]))


def test_the_prefill_bench_reads_its_config_with_our_reader_first(benchmarks_path):
    """A ModelArgs JSON (`dim`, not `hidden_size`) made transformers fall back to the 671B widths, and
    a missing key was a KeyError (a review): a ValueError naming --config and the keys, which the
    benches' shared runner prints as one line with exit status 2 (the command-line test above)."""
    from bench_prefill import read_config

    ours = REPO / "data" / "model_config.json"
    with pytest.raises(ValueError, match=rf"^--config {ours}: missing required keys \['hidden_size'"):
        read_config(str(ours))
    cfg = read_config(str(REPO / "data" / "model" / "config.json"))  # a real one: keys filled, none dropped
    assert cfg["hidden_size"] == 192 and "first_k_dense_replace" in cfg and "quantization_config" not in cfg


def test_the_decode_bench_prints_a_run_without_drafts(benchmarks_path, capsys):
    """--new 1 proposes no drafts, and the acceptance rate None was formatted as a percentage (a review)."""
    from types import SimpleNamespace

    from bench_decode import report

    out = SimpleNamespace(acceptance_rate=None, mean_tokens_per_forward=1.0, tokens=[[5]], drafts_accepted=[[0]],
                          drafts_proposed=[[0]])
    report({"plain greedy": [1.0], "MTP drafts": [1.0], "oracle drafts (100% accepted)": [1.0]},
           {"plain greedy": out, "MTP drafts": out, "oracle drafts (100% accepted)": out}, out)
    assert "no drafts were proposed" in capsys.readouterr().out


def test_the_decode_bench_takes_prompts_from_the_domains_that_have_documents_left(benchmarks_path):
    """--batch 40 ran out of the technical domain's 7 validation documents: an IndexError (a review)."""
    from types import SimpleNamespace

    from bench_decode import corpus_prompts

    codec = SimpleNamespace(encode=lambda text: [ord(c) for c in text])
    val = (REPO / "data" / "corpus" / "val.jsonl").read_text().splitlines()
    docs = [json.loads(line)["text"][:120] for line in val]
    texts = ["".join(map(chr, p)) for p in corpus_prompts(codec, 40)]
    assert len(set(texts)) == 40 and set(texts) <= set(docs)
    assert len(corpus_prompts(codec, len(docs))) == len(docs)
    with pytest.raises(ValueError, match=f"--batch {len(docs) + 1}: .* at most {len(docs)}"):
        corpus_prompts(codec, len(docs) + 1)


def test_the_decode_and_dtype_benchs_bad_input_goes_through_the_shared_error_path(tmp_path, benchmarks_path):
    """A checkpoint without MTP weights and a bad --config raised SystemExit(str): exit status 1, not
    the one-line error with exit status 2 that _cli.run gives a ValueError (a review)."""
    from types import SimpleNamespace

    import model
    from bench_decode import model_and_prompts
    from bench_dtype import random_checkpoint

    model.save(model.Transformer(model.ModelArgs.from_dict(model.ModelArgs.from_name("tiny").to_dict()
                                                           | {"n_mtp_layers": 0})), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="has no MTP weights"):
        model_and_prompts(SimpleNamespace(ckpt=str(tmp_path / "ckpt"), gemm="bf16", prompt_file=None, batch=1))
    (tmp_path / "config.json").write_text('{"model_type": "deepseek_v3", "hidden_size": 64}')
    with pytest.raises(ValueError, match="--config .*missing required keys"):
        random_checkpoint(str(tmp_path / "config.json"), tmp_path / "random")


def test_the_train_benchs_set_reads_values_as_json(benchmarks_path):
    """--set norm_topk_prob=false left it True (bool('false')), and a field whose default is null kept
    the string it was given (a review)."""
    from bench_train import load_args

    args = load_args("tiny", ["norm_topk_prob=false", "quant_block=[128, 128]", "scale_fmt=ue8m0", "dim=128"])
    assert (args.norm_topk_prob, args.quant_block, args.scale_fmt, args.dim) == (False, (128, 128), "ue8m0", 128)
    for bad in ("norm_topk_prob=yes", "dim=wide", "no_such_field=1"):
        with pytest.raises(ValueError, match=f"--set {bad}"):
            load_args("tiny", [bad])


def test_the_record_benchs_memory_part_prints_the_tokens_recorded(tmp_path, monkeypatch, capsys, benchmarks_path):
    """The big run was labelled "10x tokens" when the bench's fixed corpus held less; --part memory also
    ran the size part, and --threads did not reach the child records (a review). The records are faked:
    one that stops where a corpus of 5,000 tokens ends."""
    import bench_record as br

    calls, envs = [], []

    def fake_record(cmd, env):
        out, asked = Path(cmd[cmd.index("--out") + 1]), int(cmd[cmd.index("--max-tokens") + 1])
        out.mkdir(parents=True)
        (out / "run.json").write_text(json.dumps({"recorded": {"tokens": min(asked, 5000)}}))
        envs.append(env)
        return 1024 * 1000, 1.0

    monkeypatch.setattr(br, "peak_rss", fake_record)
    monkeypatch.setattr(br, "build_env", lambda root: (root / "ckpt", root / "corpus"))
    for name in ("overhead", "size", "size_topk"):
        monkeypatch.setattr(br, name, lambda *a, name=name: calls.append(name))
    monkeypatch.setattr(sys, "argv", ["bench_record.py", "--part", "memory", "--tokens", "1000", "--threads", "3"])
    br.main()
    out = capsys.readouterr().out
    assert calls == [] and [e["OMP_NUM_THREADS"] for e in envs] == ["3", "3"]
    assert "5,000 tokens recorded (10,000 asked)" in out and "5.0x tokens" in out and "10x tokens" not in out


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_the_head_stats_bench_compares_every_position_of_both_heads(benchmarks_path):
    """Only the main head's first 4,096 positions were compared, though the docstring said the two ways
    give the same statistics, and --mtp computes the MTP head's too (a review)."""
    import copy
    from types import SimpleNamespace

    import torch

    from bench_head_stats import child, compare

    ns = SimpleNamespace(vocab=300, batch=1, seq_len=8, mtp=True, repeats=1, threads=torch.get_num_threads())
    a, b = child(SimpleNamespace(**vars(ns), way="logits")), child(SimpleNamespace(**vars(ns), way="targets"))
    assert len(a["heads"]) == 2 and len(a["heads"][0]["nll"]) == 8
    same, worst = compare(a, b)
    assert same and worst <= 1e-5
    mtp_differs = copy.deepcopy(b)
    mtp_differs["heads"][1]["top1"][-1] += 1
    assert not compare(a, mtp_differs)[0]
    long = {"heads": [{"nll": [1.0] * 5000, "top1": [0] * 5000}]}
    late = copy.deepcopy(long)
    late["heads"][0]["nll"][4999] = 2.0
    assert compare(long, late)[1] == pytest.approx(1.0)
