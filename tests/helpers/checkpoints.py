"""Checkpoint files for the model tests: FP8 dims with partial blocks, a batch of tokens for a model,
and in-place edits of a checkpoint's tensors or config (to damage a copy)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Dims that are not multiples of 128, some above it: every FP8 weight has partial edge blocks and
# several have full ones too (wq_a 136x200, w1 300x200, experts 136x200 / 200x136, wo 200x32).
FP8_OVERRIDES = dict(vocab_size=97, dim=200, inter_dim=300, moe_inter_dim=136, n_layers=2, n_heads=2,
                     q_lora_rank=136, kv_lora_rank=24)


def tokens_for(m, seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(0, m.args.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def edit_tensors(file: Path, fn) -> None:
    """Rewrite one .safetensors file through fn(dict) -> dict."""
    tensors = fn(load_file(file))
    save_file(tensors, str(file), metadata={"format": "pt"})


def edit_config(d: Path, fn) -> None:
    p = d / "config.json"
    p.write_text(json.dumps(fn(json.loads(p.read_text()))))
