"""A checkpoint's small vectors (the routers' balancing bias) read from its safetensors files without torch,
which the dashboard does not import: `data.bias` for runs recorded before the `router_bias` table.
NOTE: by hand, not the safetensors library: its numpy reader has no bfloat16, the published checkpoints'
dtype."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def safetensors_vectors(path: Path, suffix: str) -> dict[str, np.ndarray]:
    """Read the small tensors whose name ends with `suffix` straight from a safetensors file (8-byte
    header length, JSON header, raw little-endian data), so the dashboard needs no torch."""
    out = {}
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        for name, meta in header.items():
            if not name.endswith(suffix) or not isinstance(meta, dict):
                continue
            a, b = meta["data_offsets"]
            fh.seek(8 + n + a)
            raw = fh.read(b - a)
            if meta["dtype"] == "F32":
                out[name] = np.frombuffer(raw, "<f4").astype(np.float64)
            elif meta["dtype"] == "BF16":
                out[name] = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
            elif meta["dtype"] == "F16":
                out[name] = np.frombuffer(raw, "<f2").astype(np.float64)
    return out
