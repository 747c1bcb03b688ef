"""Shared fixtures (the helpers they build on: tests/helpers/)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from helpers import hf_checkpoint, make_corpus, make_probe_ckpt, random_model

torch.set_num_threads(min(2, os.cpu_count() or 1))
# model/gemm.py caches its measured CPU GEMM choice in the user's cache directory: not the tests'
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dsv3-tests-cache-")


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


def pytest_collection_modifyitems(items):
    """Tests that share the torchrun launch of tests/model/test_parallel.py are slow too."""
    for item in items:
        if "worker_results" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
