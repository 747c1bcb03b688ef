"""Fixtures of the generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from generate import write_demo_checkpoint
from helpers.threads import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    """Decoding is many tiny ops: one thread is faster, and immune to busy-waiting when the CPU is shared."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo checkpoint (a random tiny model, a byte-level tokenizer with DeepSeek's chat markers)."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "ckpt")
