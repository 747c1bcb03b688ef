"""Fixtures shared by the SGLang import's tests (test_sglang.py, test_sglang_refusals.py)."""

from __future__ import annotations

import pytest

from helpers import sglang_dumps as sg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dumps of the three recorder modes built in SGLang's structures from one known traffic, and a
    config beside them."""
    base = tmp_path_factory.mktemp("sglang")
    passes = sg.traffic(seed=3)
    m = sg.physical_map(redundant=4)
    return {"base": base, "passes": passes, "map": m, "config": sg.config(base / "model"),
            "stat": sg.write_stat(base / "stat", passes),
            "per_pass": sg.write_per_pass(base / "per_pass", passes, m)[0].parent,
            "per_token": sg.write_per_token(base / "per_token", passes, m)[0].parent}
