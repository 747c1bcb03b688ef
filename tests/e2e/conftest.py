"""Fixtures of the sharded-job tests (test_mp_jobs.py, test_mp_resume.py)."""

from __future__ import annotations

import pytest

from helpers.mp_jobs import make_env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A corpus and a tiny checkpoint with DeepSeek-V3's expert topology, one per test module."""
    return make_env(tmp_path_factory.mktemp("mp"))
