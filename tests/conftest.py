"""Shared fixtures (the helpers they build on: tests/helpers/)."""

from __future__ import annotations

import atexit
import gc
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings

import pytest

_t0, _fresh = time.perf_counter(), "torch" not in sys.modules
import torch  # noqa: E402

IMPORT_TORCH_S = time.perf_counter() - _t0 if _fresh else None  # for the machine reference (helpers/machine.py)

from helpers import hf_checkpoint, make_corpus, make_probe_ckpt, random_model, threads, zygote

# Ctrl-C as at a terminal: a shell that starts the suite in the background without job control (`bash
# .ci/run &` in a script, nohup) leaves SIGINT ignored, Python then keeps it ignored, and the tests of
# what a job does on Ctrl-C (a stop held through a write, a command stopped mid-way) saw nothing
# happen (two failed so in a clean-clone run, 2026-12-07). The jobs keep an ignored SIGINT ignored,
# as they should; the tests are of a process in the foreground.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# torch's threads per pytest process: the cores shared among xdist's workers (at most 2, at least 1).
# Two workers of 2 threads each on 2 cores spin against each other in every parallel region, and the
# tests' models are tiny: a 1,280-token record took 0.75-0.89 s on one thread against 5.2-10.1 s on
# two while other tests ran (a loaded 2-core EPYC, 2026-12-06). The whole suite ran on one thread
# before this only because test modules that set it at import (test_ablate_cli.py, ...) are collected by
# every worker; a run of a few files (`pytest tests/model`) did not.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS_EACH = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS_EACH)
threads.for_children(_THREADS_EACH)  # and as many for the processes an xdist worker's tests start
# model/gemm.py caches its measured CPU GEMM choice in the user's cache directory: not the tests'
# (one per pytest process, xdist workers included, removed when it exits)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dsv3-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
# and the processes the tests start make their temporary files in a folder of their own, removed with it:
# every torchrun launch leaves a torchelastic_* log folder in the temporary directory (17 a suite run)
os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="dsv3-tests-tmp-")
atexit.register(shutil.rmtree, os.environ["TMPDIR"], ignore_errors=True)
# the torchrun launches' zygote (helpers/zygote.py: no `import torch` a launch), its socket in that folder
zygote.install(os.environ["TMPDIR"])


_THREADS: list[int] = []  # torch's thread count when the first test starts (after every module's import)


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """Each test ends on the thread count the tests began with: one that raised it (to start torch's pool
    in tests/probe/test_job.py) left 2 threads for every later test of its xdist worker, whose parallel
    regions then spun against the other worker's on 2 cores (tests of 0.1 s took 5-7 s; the suite 323 s
    in two clean-clone runs, against ~245 s)."""
    if not _THREADS:
        _THREADS.append(torch.get_num_threads())
    yield
    if torch.get_num_threads() != _THREADS[0]:
        torch.set_num_threads(_THREADS[0])


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    return hf_checkpoint(tmp_path_factory.mktemp("hf_tiny"), seed=0)


@pytest.fixture
def tiny_model():
    return random_model("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny():
    """One tiny model per test module (the ablation and steering tests): 3 layers (layer 0 dense),
    E=16 in 4 groups, top-4 of 2 groups. Modules with a `tiny` of their own keep theirs."""
    return random_model("tiny", seed=0)


@pytest.fixture(scope="module")
def tokens():
    """[3, 24] token ids for `tiny`."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(2, 512, (3, 24), generator=g)


@pytest.fixture(scope="session")
def probe_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe_env")
    corpus = make_corpus(base / "corpus")
    ckpt = make_probe_ckpt(base / "ckpt", corpus)
    return {"base": base, "corpus": corpus, "ckpt": ckpt}


# The suite's longest files, longest first (seconds per file in a full run on a 2-core machine): xdist
# (`--dist loadfile --no-loadscope-reorder`, pyproject.toml) hands out whole files in collection order, the
# next to whichever worker is free, so these go first and the many short files fill in at the end: the
# two workers then finish within seconds of each other. (xdist's own order, most tests first, left the
# browser test, one test of ~40 s, for last, and one worker idle meanwhile.) A file missing here only
# runs later; the order changes no result.
LONGEST_FIRST = [  # (seconds per file: a full run on the 2-core EPYC, 2026-12-06, 383 s of tests in all)
    "e2e/test_mp_resume.py",  # ~47 s: torchrun launches killed and resumed, failing ranks
    "benchmarks/test_benchmark_scripts.py",  # ~37 s: the GPU checks' runner in its CPU mode
    "model/test_parallel.py",  # ~23 s: the sharded model under torchrun
    "dashboards/test_dashboard.py",  # ~23 s: every page, several runs
    "e2e/test_dashboard_e2e.py",  # ~21 s: streamlit and chromium
    "e2e/test_mp_jobs.py",  # ~21 s: a four-rank launch of five jobs
    "analyses/test_report.py", "analyses/test_notebooks.py",  # ~15 s and ~14 s: eleven notebooks in one kernel
    "train/test_train.py", "probe/test_resume.py",  # ~13 s and ~12 s: records stopped and resumed
    "analyses/test_ablate_cli.py", "dashboards/test_metric_views.py",  # ~10 s and ~9 s
    "dashboards/test_serving.py", "model/test_tensor_reader.py",  # ~7 s each
    "dashboards/test_research_views.py", "probe/test_teardown.py", "generate/test_codec_cli.py",  # ~6 s each
    "model/test_gemm.py", "docs/test_doc_commands.py", "train/test_train_resume.py",  # ~5 s each
]


# fixtures that start processes (a torchrun launch, the Triton interpreter's worker): their tests are slow
FRESH_PROCESS_FIXTURES = {"worker_results", "interp_results"}


def pytest_collection_modifyitems(items):
    """Tests that share a fixture's fresh processes (FRESH_PROCESS_FIXTURES) are slow too; the longest
    files first (LONGEST_FIRST)."""
    for item in items:
        if FRESH_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests_dir = os.path.dirname(__file__)

    def key(item):
        rel = os.path.relpath(str(item.path), tests_dir).replace(os.sep, "/")
        return rank.get(rel, len(rank))

    items.sort(key=key)  # stable: the rest keep their order, and each file's tests theirs


def pytest_collection_finish(session):
    """Python's cyclic collector, tuned for a test process: what collection made (torch, transformers,
    pandas, every test module: about 300,000 objects a worker) lives as long as the worker, so
    gc.freeze() takes it out of the full passes, and the thresholds (700, 10, 10 by default) let
    fewer, larger passes find the tests' garbage. Counted with gc.callbacks over the whole suite
    (2026-12-06, 2-core EPYC): 9-11 s of collection per xdist worker before, 4 s after."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


def pytest_terminal_summary(terminalreporter):
    """The machine's speed reference under the summary (helpers/machine.py), by the controlling process
    alone: it says whether a slow suite is ours or the host's."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        from helpers.machine import reference

        terminalreporter.write_line(reference(IMPORT_TORCH_S))


# The quick loop (`pytest -m "not slow"`) leaves out tests that start fresh processes (pyproject.toml's
# marker). A test outside the mark whose child processes, reaped while it ran, used this much CPU (one
# `import torch` is 1.1-2.5 s) is named in the warnings summary, so that a new one is seen: eleven such
# tests were 28.6 s of an 86-second quick loop on the AVX2-only EPYC (2026-12-07) before they were marked.
CHILD_CPU_SLOW_S = 1.0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.fixture(autouse=True)
def _children_of_quick_tests(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = _children_cpu()
    yield
    used = _children_cpu() - before
    if used >= CHILD_CPU_SLOW_S:
        # pytest's own class: xdist rebuilds a worker's warning from its class's module, and this
        # conftest's class was not found there (the worker went down)
        warnings.warn(pytest.PytestWarning(
            f"{request.node.nodeid}: its child processes used {used:.1f} s of CPU; mark it slow "
            "(`pytest -m 'not slow'`, the quick loop, leaves out tests that start fresh processes)"))
