"""Checkpoint files for the model tests: FP8 dims with partial blocks, a batch of tokens for a model,
in-place edits of a checkpoint's tensors or config (to damage a copy), and a checkpoint of config and
index alone (what --dry-run plans from before the weights are downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model import CheckpointError

# Dims that are not multiples of 128, some above it: every FP8 weight has partial edge blocks and
# several have full ones too (wq_a 136x200, w1 300x200, experts 136x200 / 200x136, wo 200x32).
FP8_OVERRIDES = dict(vocab_size=97, dim=200, inter_dim=300, moe_inter_dim=136, n_layers=2, n_heads=2,
                     q_lora_rank=136, kv_lora_rank=24)


def tokens_for(m, seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(0, m.args.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def edit_tensors(file: Path, fn, index: bool = True) -> None:
    """Rewrite one .safetensors file through fn(dict) -> dict. index: keep the directory's
    model.safetensors.index.json in step (names gone from the file leave it, new names point at the
    file), as a tool that edits a checkpoint would; False leaves the index as it was."""
    before = load_file(file)
    tensors = fn(dict(before))
    save_file(tensors, str(file), metadata={"format": "pt"})
    p = file.parent / "model.safetensors.index.json"
    if index and p.exists():
        j = json.loads(p.read_text())
        wm = {k: v for k, v in j["weight_map"].items() if not (v == file.name and k not in tensors)}
        j["weight_map"] = wm | {k: file.name for k in tensors if k not in before}
        p.write_text(json.dumps(j))


def edit_config(d: Path, fn) -> None:
    p = d / "config.json"
    p.write_text(json.dumps(fn(json.loads(p.read_text()))))


def index_only(path: Path, args, n_files: int = 163, drop: str | None = None, add: str | None = None) -> Path:
    """A checkpoint directory as a user has it before downloading the weights: config.json and
    model.safetensors.index.json (names -> shard files), no shard file."""
    from model import Transformer
    from model.names import MTP_SHARED, ours_to_hf

    with torch.device("meta"):
        m = Transformer(args, init=False)
    scaled = args.quant_block is not None  # an FP8 checkpoint stores block scales beside FP8 weights
    names = [n for hf, _, _, fp8 in ours_to_hf(m) for n in ([hf, hf + "_scale_inv"] if fp8 and scaled else [hf])]
    names += [f"model.layers.{args.n_layers}.{k}" for k in MTP_SHARED]
    names = [n for n in names if n != drop] + ([add] if add else [])
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(args.to_hf_config()))
    wm = {n: f"model-{i * n_files // len(names) + 1:05d}-of-{n_files:06d}.safetensors" for i, n in enumerate(names)}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return path


def load_error(path, *needles) -> str:
    """model.load(path) must raise a one-line CheckpointError containing every needle."""
    with pytest.raises(CheckpointError) as ei:
        model.load(path)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, f"{n!r} not in {msg!r}"
    return msg
