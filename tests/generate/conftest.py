"""Fixtures of the generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generate import write_demo_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Decoding is many tiny ops: one thread is faster, and immune to busy-waiting when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo checkpoint (a random tiny model, a byte-level tokenizer with DeepSeek's chat markers)."""
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "ckpt")
