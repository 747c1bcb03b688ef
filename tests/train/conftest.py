"""The training tests' corpus: built once a session (each test file, each xdist worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.training import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))
