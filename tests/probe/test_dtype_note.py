"""--dtype bfloat16 (float16) on a CPU that runs those GEMMs far slower than float32 says so in one line
(probe.job.note_slow_dtype, on the speed model.gemm.low_precision_speed measures)."""

from __future__ import annotations

import math

import pytest
import torch

from model import gemm
from probe.job import note_slow_dtype


@pytest.mark.parametrize("speed, said", [(0.07, True), (0.49, True), (0.5, False), (1.8, False)])
def test_a_slow_low_precision_is_one_line_naming_the_speed(monkeypatch, capsys, speed, said):
    monkeypatch.setattr(gemm, "low_precision_speed", lambda dtype, width: speed)
    note_slow_dtype("bfloat16", 192, "cpu")
    err = capsys.readouterr().err
    if said:
        assert err.startswith(f"note: --dtype bfloat16: this CPU runs bfloat16 matrix products at {speed:.2f}x ")
        assert err.count("\n") == 1 and "--dtype float32" in err
    else:
        assert err == ""


@pytest.mark.parametrize("dtype, device", [(None, "cpu"), ("float32", "cpu"), ("float64", "cpu"),
                                           ("bfloat16", "meta")])
def test_nothing_is_measured_for_float32_or_off_the_cpu(monkeypatch, capsys, dtype, device):
    def measured(*a):
        raise AssertionError("measured")

    monkeypatch.setattr(gemm, "low_precision_speed", measured)
    note_slow_dtype(dtype, 192, device)
    assert capsys.readouterr().err == ""


def test_the_speed_is_float32_time_over_the_low_precision_time(monkeypatch):
    """The real measurement, and its direction: a bfloat16 GEMM made 5 ms slower reads as slower."""
    speed = gemm.low_precision_speed(torch.bfloat16, 4096)  # capped at 512 wide: milliseconds
    assert math.isfinite(speed) and speed > 0
    linear = gemm.F.linear

    def slow_low(x, w):
        if x.dtype == torch.bfloat16:
            import time
            time.sleep(0.005)
        return linear(x, w)

    monkeypatch.setattr(gemm.F, "linear", slow_low)
    assert gemm.low_precision_speed(torch.bfloat16, 64) < 0.5  # control: [128, 64] GEMMs take microseconds
