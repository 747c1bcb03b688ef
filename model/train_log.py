"""What `model.train` writes besides checkpoints: per-step Parquet tables and JSON, atomically.
(pyarrow is imported lazily: the model package itself never needs it.)"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import torch

from .train_data import TrainError


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_table(rows: list[dict], path: Path) -> None:
    """Rewrite a Parquet table under a temporary name, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def read_table(path: Path, max_step: int) -> list[dict]:
    """Rows of a Parquet table with step <= max_step (what a resumed run keeps)."""
    if not path.exists():
        return []
    import pyarrow.parquet as pq

    return [r for r in pq.read_table(path).to_pylist() if r["step"] <= max_step]


class LoadLog:
    """Per-expert loads and biases of every gate at recorded steps, kept as arrays (not row dicts):
    the table `expert_load.parquet` has columns step, gate, expert, load, bias."""

    def __init__(self, gates: list[str], n_experts: int) -> None:
        self.gates, self.E = gates, n_experts
        self.steps: list[int] = []
        self.loads: list[np.ndarray] = []  # [G, E] int64 each
        self.biases: list[np.ndarray] = []  # [G, E] float32 each

    def append(self, step: int, loads: torch.Tensor, biases: torch.Tensor) -> None:
        self.steps.append(step)
        self.loads.append(loads.round().long().cpu().numpy())
        self.biases.append(biases.float().cpu().numpy())

    def write(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, G, E = len(self.steps), len(self.gates), self.E
        table = pa.table({
            "step": np.repeat(np.asarray(self.steps, dtype=np.int64), G * E),
            "gate": pa.array(np.tile(np.repeat(np.asarray(self.gates, dtype=object), E), n).tolist(),
                             pa.string()),
            "expert": np.tile(np.arange(E, dtype=np.int64), n * G),
            "load": np.concatenate(self.loads).reshape(-1) if n else np.zeros(0, np.int64),
            "bias": np.concatenate(self.biases).reshape(-1) if n else np.zeros(0, np.float32),
        })
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    def read(self, path: Path, max_step: int) -> None:
        """Take back the records of an earlier run up to `max_step` (a resume)."""
        if not path.exists():
            return
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        steps, gates = t.column("step").to_numpy(), t.column("gate").to_pylist()
        loads, biases = t.column("load").to_numpy(), t.column("bias").to_numpy()
        G, E = len(self.gates), self.E
        if len(steps) % (G * E) or (len(steps) and gates[: G * E: E] != self.gates):
            raise TrainError(f"{path}: does not match this model's gates {self.gates} x {E} experts")
        for i in range(0, len(steps), G * E):
            if steps[i] <= max_step:
                self.steps.append(int(steps[i]))
                self.loads.append(loads[i: i + G * E].reshape(G, E))
                self.biases.append(biases[i: i + G * E].reshape(G, E))


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
