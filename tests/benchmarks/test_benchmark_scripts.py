"""The benchmark scripts are how the speed figures of the README and docs/performance.md are
measured, and the GPU checks (tests/gpu/) run only where there is a GPU: no test runs them end to
end here, so their imports (most inside functions) are checked the way each script resolves them
when run as `python path/to/script.py`. The GPU checks' runner, tests/gpu/run_all.sh, runs end to
end in its CPU mode, so that a short GPU lease does not find it broken."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

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
               "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}  # one thread each: the suite's other worker runs too
        return subprocess.run(["bash", str(run_all), "--cpu", *steps], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600)

    done = run(sys.executable, tmp_path / "ok")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith(f"every step passed (logs in {tmp_path / 'ok'})")
    logs = {p.name: p.read_text() for p in (tmp_path / "ok").iterdir()}
    assert sorted(logs) == ["env.log", "jobs.log", "kernels.log", "parallel.log", "record.log"]
    assert "all checks passed" in logs["kernels.log"]
    assert "identical 100.00% (>= 99%): ok" in logs["record.log"]  # decisive choices, group margins included
    assert all(f"== {step}: exit 0 after" in logs[f"{step}.log"] for step in ("kernels", "record", "parallel", "jobs"))
    assert "spec, float32" in logs["jobs.log"] and logs["jobs.log"].count(": ok") == 5  # 4 records, spec
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


def test_benchmark_command_lines_give_one_line_errors():
    """A count of 0 or a checkpoint that is not there is one line and exit status 2 (tracebacks from
    GenerateError, CheckpointError or statistics' empty median before; found by a review)."""
    for args, msg in ((["bench_record.py", "--repeats", "0"], "argument --repeats: 0 must be at least 1"),
                      (["bench_decode.py", "--ckpt", "/nonexistent-ckpt"],
                       "error: /nonexistent-ckpt: not a checkpoint")):
        p = subprocess.run([sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]], capture_output=True,
                           text=True, cwd=REPO, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


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
