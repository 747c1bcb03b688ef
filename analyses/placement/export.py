"""Placement plans in the formats serving engines read.

- `sglang`: `{"physical_to_logical_map": [layers][physical experts]}` (.json, or a .pt of tensors), what
  SGLang's `--init-expert-location FILE` loads (with `--ep-num-redundant-experts` = the redundant
  slots and the expert-parallel size = the GPUs). It covers every layer SGLang counts (the model's
  `num_hidden_layers`), in layer order; layers without a plan (dense ones) get SGLang's trivial map,
  `physical % experts`. Physical experts are GPU-major: slot s of GPU g is `g * slots_per_gpu + s`.
- `eplb`: `phy2log` [layers, physical], `log2phy` [layers, experts, most replicas] padded with -1,
  `logcnt` [layers, experts]: the outputs of deepseek-ai/EPLB's `rebalance_experts`, one row per
  planned (MoE) layer in layer order.
- `logical-count`: `{"logical_count": [layers][experts]}`, the measured loads in SGLang's own
  statistics format (every layer it counts; dense layers zero), for the server to run its EPLB.

Every file is written under a temporary name and renamed; `read_export` reads one back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probe.writer import replacing

from . import Placement, PlacementError

FORMATS = ("table", "sglang", "eplb", "logical-count")


def sglang_map(plans: dict[int, Placement], n_layers: int, n_experts: int) -> np.ndarray:
    """[n_layers, physical] int64: the plans' maps, SGLang's trivial map elsewhere."""
    P = {p.phy_to_log.size for p in plans.values()}
    if len(P) > 1:
        raise PlacementError(f"layers planned with different numbers of physical slots: {sorted(P)}")
    P = P.pop() if P else n_experts
    out = np.tile(np.arange(P) % n_experts, (n_layers, 1)).astype(np.int64)
    for layer, p in plans.items():
        if not 0 <= layer < n_layers:
            raise PlacementError(f"layer {layer} is outside the model's {n_layers} layers")
        out[layer] = p.phy_to_log.reshape(-1)
    return out


def eplb_maps(plans: dict[int, Placement]) -> dict[str, np.ndarray]:
    """phy2log, log2phy (-1 padded to the most replicas any logical expert has, as deepseek-ai/EPLB's
    rebalance_experts pads it: `logcnt.max()`), logcnt, over the planned layers. A logical expert's
    replicas are listed in slot order (EPLB lists them in the order it made them)."""
    layers = sorted(plans)
    phy2log = np.stack([plans[x].phy_to_log.reshape(-1) for x in layers]).astype(np.int64)
    E = len(plans[layers[0]].loads)
    logcnt = np.stack([np.bincount(row, minlength=E) for row in phy2log]).astype(np.int64)
    log2phy = np.full((len(layers), E, int(logcnt.max())), -1, np.int64)
    for i, row in enumerate(phy2log):
        for e in range(E):
            slots = np.nonzero(row == e)[0]
            log2phy[i, e, : len(slots)] = slots
    return {"phy2log": phy2log, "log2phy": log2phy, "logcnt": logcnt}


def logical_count(loads: dict[int, np.ndarray], n_layers: int, n_experts: int) -> np.ndarray:
    """[n_layers, experts] int64 loads (layers without loads: zeros)."""
    out = np.zeros((n_layers, n_experts), np.int64)
    for layer, v in loads.items():
        out[layer] = np.rint(np.asarray(v, dtype=np.float64)).astype(np.int64)
    return out


def write_export(payload: dict[str, np.ndarray], out: Path) -> Path:
    """`payload` as JSON lists (.json) or int64 tensors (.pt, torch.save), atomically."""
    out = Path(out)
    if out.suffix not in (".json", ".pt"):
        raise PlacementError(f"--out {out}: use a .json or .pt file name for this format")
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder not made yet, as write_plan
    with replacing(out) as tmp:
        if out.suffix == ".json":
            tmp.write_text(json.dumps({k: v.tolist() for k, v in payload.items()}) + "\n")
        else:
            import torch

            torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in payload.items()}, tmp)
    return out


def read_export(path: Path) -> dict[str, np.ndarray]:
    """A file `write_export` wrote (or SGLang / EPLB would read), as numpy arrays."""
    path = Path(path)
    if path.suffix == ".json":
        return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    import torch

    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


# the top-level keys of every file this command writes: the sglang, eplb and logical-count exports
# (JSON or .pt) and the table as JSON (write_plan); the table as Parquet is known by its columns
EXPORT_KEYS = ({"physical_to_logical_map"}, {"phy2log", "log2phy", "logcnt"}, {"logical_count"})
TABLE_JSON_KEYS = {"config", "layers"}
TABLE_COLUMNS = {"layer", "node", "gpu", "slot", "physical", "logical", "replicas", "predicted_load"}


def is_placement_file(path: Path) -> bool:
    """Whether the file at `path` is one this command writes (or empty), read as its suffix says: JSON
    (a byte-order mark and white space allowed) holding exactly the keys of one of the formats, Parquet
    with the table's columns, or a torch .pt of an export's keys. Anything that does not parse as that
    is not. An OSError (unreadable) is raised for the caller to name."""
    path = Path(path)
    if path.stat().st_size == 0:
        return True  # nothing to lose
    try:
        if path.suffix == ".json":
            text = path.read_bytes().decode("utf-8-sig")
            if not text.strip():
                return True
            keys = json.loads(text)
            return isinstance(keys, dict) and (set(keys) == TABLE_JSON_KEYS or set(keys) in EXPORT_KEYS)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return TABLE_COLUMNS <= set(pq.read_schema(path).names)
        if path.suffix == ".pt":
            import torch

            keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: reads no tensor data
            return isinstance(keys, dict) and set(keys) in EXPORT_KEYS
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - any way of not parsing (UTF-8, JSON, Arrow, pickle, zip): not ours
        return False
    return False


def export(fmt: str, plans: dict[int, Placement] | None, loads: dict[int, np.ndarray], n_layers: int,
           n_experts: int, out: Path) -> Path:
    """Write `fmt` (sglang, eplb or logical-count) to `out`."""
    if fmt == "sglang":
        return write_export({"physical_to_logical_map": sglang_map(plans, n_layers, n_experts)}, out)
    if fmt == "eplb":
        return write_export(eplb_maps(plans), out)
    if fmt == "logical-count":
        return write_export({"logical_count": logical_count(loads, n_layers, n_experts)}, out)
    raise PlacementError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
