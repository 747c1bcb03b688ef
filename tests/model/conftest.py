"""Checkpoints the model tests share (per test module): the tiny model as one file and sharded, and
an FP8 checkpoint with partial blocks; a fresh model.gemm choice (`fresh`). `tiny` is tests/conftest.py's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import model
from helpers import random_model
from helpers.checkpoints import FP8_OVERRIDES


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory) -> Path:
    """The tiny model (with its MTP module) as one float32 model.safetensors."""
    d = tmp_path_factory.mktemp("tiny_ckpt")
    model.save(tiny, d)
    return d


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path) -> Path:
    """A private copy of `tiny_dir` that a test may damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def sharded_dir(tiny, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sharded")
    model.save(tiny, d, max_shard_bytes=300_000)
    return d


@pytest.fixture(scope="module")
def fp8_model():
    return random_model("tiny", seed=1, **FP8_OVERRIDES)


@pytest.fixture(scope="module")
def fp8_dir(fp8_model, tmp_path_factory) -> Path:
    """fp8_model saved with FP8 weights and 128 x 128 block scales."""
    d = tmp_path_factory.mktemp("fp8_ckpt")
    model.save(fp8_model, d, fp8=True)
    return d


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """model.gemm with no forcing, an empty cache directory and no choice made yet in this process
    (tests/model/test_gemm.py, test_gemm_choice.py); the cache file's path."""
    from model import gemm, layers

    monkeypatch.setattr(layers, "ONEDNN_LINEAR", None)
    monkeypatch.delenv("DSV3_ONEDNN", raising=False)
    monkeypatch.delenv("DSV3_GEMM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gemm.reset()
    yield tmp_path / "cache" / "dsv3-probe" / "gemm.json"
    gemm.reset()
