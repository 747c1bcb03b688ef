"""model.gemm's choice itself, without timing a GEMM: the CPU name in the cache key, the interleaved
median, the shapes timed, the tie rule's bounds, a damaged cache file and the variables' empty values
(tests/model/test_gemm.py has the paths it chooses between and the cache across processes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from model import gemm

needs_onednn = pytest.mark.skipif(not gemm.onednn_available(), reason="oneDNN linear unavailable in this torch build")

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
"""


def test_cpu_model_is_the_model_name_line_of_cpuinfo(monkeypatch):
    # the "model" line (a number) comes first and must not be taken for the name
    monkeypatch.setattr(gemm, "Path", lambda path: SimpleNamespace(read_text=lambda: CPUINFO))
    assert gemm.cpu_model() == "AMD EPYC 7B13"
    monkeypatch.setattr(gemm, "Path", lambda path: SimpleNamespace(read_text=lambda: "processor\t: 0\n"))
    monkeypatch.setattr(gemm.platform, "processor", lambda: "")
    monkeypatch.setattr(gemm.platform, "machine", lambda: "aarch64")
    assert gemm.cpu_model() == "aarch64"  # no model name line: what platform says


def test_onednn_is_available_where_this_torch_has_mkldnn(monkeypatch, fresh):
    # wrongly false, it skips every test of the oneDNN path and runs every job on F.linear
    if torch.backends.mkldnn.is_available():
        assert gemm.onednn_available()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not gemm.onednn_available()
    assert (gemm.choice().path, gemm.choice().source) == ("linear", "unavailable")


def test_each_path_counts_its_median_call_after_a_warm_up(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(gemm, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    # per path: the warm-up call (slow: oneDNN compiles its kernel), then 5 timed calls
    durations = {"onednn": [100.0, 5.0, 1.0, 4.0, 2.0, 3.0], "linear": [100.0, 10.0, 50.0, 30.0, 20.0, 40.0]}
    calls = []

    def call(path):
        calls.append(path)
        clock[0] += durations[path][sum(c == path for c in calls) - 1]

    got = gemm._interleaved({"onednn": lambda: call("onednn"), "linear": lambda: call("linear")}, repeats=5)
    assert got == {"onednn": 3.0, "linear": 30.0}  # the medians of [5, 1, 4, 2, 3] and [10, 50, 30, 20, 40]
    # one warm-up each, then the order swapped every round
    assert calls == ["onednn", "linear"] + ["onednn", "linear", "linear", "onednn"] * 2 + ["onednn", "linear"]


def test_measure_sums_each_path_over_the_shapes(monkeypatch):
    seen = []

    def fake(x, w):  # one shape's medians: oneDNN 1 ms per row, F.linear 1 ms per input feature
        seen.append((tuple(x.shape), tuple(w.shape)))
        return {"onednn": x.shape[0] * 1e-3, "linear": x.shape[1] * 1e-3}

    monkeypatch.setattr(gemm, "_time_both", fake)
    got = gemm.measure([(4, 8, 16), (32, 2, 6)])
    assert seen == [((4, 8), (16, 8)), ((32, 2), (6, 2))]  # x [rows, in], w [out, in]
    assert got == pytest.approx({"onednn": (4 + 32) * 1e-3, "linear": (8 + 2) * 1e-3})


@needs_onednn
@pytest.mark.parametrize("first, timed", [
    # rows raised to 256, the larger side squared at least 512 x 512
    ((10, 64, 128), [(256, 64, 128), (256, 128, 64), (256, 512, 512)]),
    # rows cut to 512, features to 2048
    ((4096, 8192, 64), [(512, 2048, 64), (512, 64, 2048), (512, 2048, 2048)]),
])
def test_the_first_gemm_is_timed_clipped_to_a_prefills_shapes(fresh, monkeypatch, first, timed):
    got = []
    monkeypatch.setattr(gemm, "measure", lambda shapes: got.append(shapes) or {"onednn": 1.0, "linear": 2.0})
    gemm.choice(first)
    assert got == [timed]


@needs_onednn
def test_a_lead_beyond_the_tie_band_is_kept(fresh, monkeypatch):
    # 4% faster is not within 3%: oneDNN kept; 2.9% is a tie
    monkeypatch.setenv("DSV3_GEMM_CACHE", "0")
    monkeypatch.setattr(gemm, "measure", lambda shapes: {"onednn": 1.00, "linear": 1.04})
    c = gemm.choice()
    assert c.path == "onednn" and "tie" not in c.reason
    gemm.reset()
    monkeypatch.setattr(gemm, "measure", lambda shapes: {"onednn": 1.00, "linear": 1.029})
    assert gemm.choice().path == "linear" and "a tie" in gemm.choice().reason


@needs_onednn
def test_a_choice_is_cached_per_torch_version(fresh, monkeypatch):
    # the cache key holds the torch version: another torch's oneDNN or BLAS may favour the other path
    monkeypatch.setattr(gemm, "measure", lambda shapes: {"onednn": 1.0, "linear": 3.0})
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert gemm.choice().source == "measured" and gemm.choice().torch == "2.99.0"
    gemm.reset()
    assert gemm.choice().source == "cache"  # the control: the same torch reads it
    monkeypatch.setattr(torch, "__version__", "2.98.0")
    gemm.reset()
    assert gemm.choice().source == "measured"
    assert len(json.loads(fresh.read_text())) == 2


@needs_onednn
@pytest.mark.parametrize("damage", ["{not json", "[1, 2]",
                                    json.dumps({"KEY": {"path": "onednn", "seconds": {"onednn": True}}})],
                         ids=["not-json", "a-list", "bool-seconds"])
def test_a_damaged_cache_file_is_measured_again_and_rewritten(fresh, monkeypatch, damage):
    monkeypatch.setattr(gemm, "measure", lambda shapes: {"onednn": 1.0, "linear": 3.0})
    fresh.parent.mkdir(parents=True)
    fresh.write_text(damage.replace("KEY", gemm._key()))
    c = gemm.choice()
    assert (c.path, c.source) == ("onednn", "measured")
    assert json.loads(fresh.read_text())[gemm._key()]["path"] == "onednn"


@needs_onednn
def test_empty_variables_read_as_unset(fresh, monkeypatch):
    # `DSV3_ONEDNN= cmd` (empty): measured and cached as when unset, not refused as a typo
    monkeypatch.setattr(gemm, "measure", lambda shapes: {"onednn": 1.0, "linear": 3.0})
    monkeypatch.setenv("DSV3_ONEDNN", "")
    monkeypatch.setenv("DSV3_GEMM_CACHE", "")
    assert (gemm.choice().path, gemm.choice().source) == ("onednn", "measured") and fresh.exists()
