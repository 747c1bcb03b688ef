"""What a training run records: the tables of `probe.schema` (train_steps, train_domains, train_gates,
train_eval, expert_load, router_bias), streamed into the run directory by `probe.writer.PartWriter`,
so `probe.open_run` and the dashboard read a training run as they read any run. Rank 0 writes.

Rows are committed at every flush (part files named by their first and last step); a run resumed
from a checkpoint at step S first drops the rows of later steps (`probe.writer.truncate_after`), and
the rows of a validation pass that a kill left in some of its tables only (`whole_evaluations`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from probe.job import os_refusal
from probe.writer import PartWriter, parquet_options, truncate_after

from .balance import GateRef, max_violation
from .data import TrainError

TABLES = ["train_steps", "train_domains", "train_gates", "train_eval", "expert_load", "router_bias"]


class TrainLog:
    def __init__(self, out: Path, gates: list[GateRef], domains: list[str], n_experts: int, resume_step: int | None):
        self.gates, self.domains, self.E = gates, domains, n_experts
        with os_refusal(f"--out {out}: cannot create the run there", TrainError):  # check_flags checked it
            out.mkdir(parents=True, exist_ok=True)
        self.evaluated: set[int] = set()  # steps with a validation pass on record
        if resume_step is not None:
            truncate_after(out, 0, TABLES, resume_step)
            self.evaluated = whole_evaluations(out, bool(gates))
        self.writer = PartWriter(out, 0, TABLES)
        self.last = resume_step or 0

    def step(self, row: dict, domain_loss: list[float], loads: torch.Tensor, biases: list[torch.Tensor | None]) -> None:
        """One optimizer step: its scalars, each domain's loss in the batch, each gate's MaxVio and
        bias norm (loads [G, E] over the global batch)."""
        s = row["step"]
        self.writer.append("train_steps", {k: [v] for k, v in row.items()}, s)
        self.writer.append("train_domains", {"step": [s] * len(self.domains), "split": ["train"] * len(self.domains),
                                             "domain": self.domains, "loss": domain_loss,
                                             "mtp_loss": pa.nulls(len(self.domains), pa.float64())}, s)
        G = len(self.gates)
        self.writer.append("train_gates", {
            "step": [s] * G, "split": ["train"] * G, "layer": [g.layer for g in self.gates],
            "maxvio": [max_violation(loads[i]) for i in range(G)],
            "bias_norm": [float(b.norm()) if b is not None else float("nan") for b in biases]}, s)
        self.last = s

    def loads(self, step: int, loads: torch.Tensor, biases: list[torch.Tensor | None], tokens: int,
              seq_len: int) -> None:
        """Per-expert loads and balancing biases of every gate at this step (`tokens`: the step's, in
        windows of `seq_len`; an MTP block routes all but each window's last position)."""
        G, E = len(self.gates), self.E
        layer = np.repeat(np.array([g.layer for g in self.gates], np.int16), E)
        routed = [tokens // seq_len * (seq_len - 1) if g.label.startswith("mtp") else tokens for g in self.gates]
        self.writer.append("expert_load", {
            "step": np.full(G * E, step, np.int64), "layer": layer, "expert": np.tile(np.arange(E, dtype=np.int32), G),
            "domain": ["all"] * (G * E), "count": loads.round().long().cpu().numpy().reshape(-1),
            "weight_sum": pa.nulls(G * E, pa.float64()), "tokens": np.repeat(np.array(routed, np.int64), E)}, step)
        bias = np.stack([b.float().cpu().numpy() if b is not None else np.full(E, np.nan, np.float32) for b in biases])
        self.writer.append("router_bias", {"step": np.full(G * E, step, np.int64), "layer": layer,
                                           "expert": np.tile(np.arange(E, dtype=np.int32), G),
                                           "bias": bias.reshape(-1)}, step)

    def evaluation(self, step: int, tokens_seen: int, res: dict) -> None:
        """A validation pass (the dict `steps.evaluate` returns). A pass already on record for this
        step (a completed run resumed again redoes its final one) is not written twice."""
        if not res or step in self.evaluated:
            return
        self.evaluated.add(step)
        self.writer.append("train_eval", {"step": [step], "tokens_seen": [tokens_seen], "val_loss": [res["val_loss"]],
                                          "val_mtp_agree": [res["val_mtp_agree"]]}, step)
        # every validation domain val_loss averages, those training never saw too (they had no row; a review)
        doms = sorted(k[len("val_loss_"):] for k in res if k.startswith("val_loss_"))
        self.writer.append("train_domains", {"step": [step] * len(doms), "split": ["val"] * len(doms), "domain": doms,
                                             "loss": [res[f"val_loss_{d}"] for d in doms],
                                             "mtp_loss": [res[f"val_mtp_loss_{d}"] for d in doms]}, step)
        G = len(self.gates)
        self.writer.append("train_gates", {"step": [step] * G, "split": ["val"] * G,
                                           "layer": [g.layer for g in self.gates],
                                           "maxvio": [res[f"val_maxvio_{g.label}"] for g in self.gates],
                                           "bias_norm": pa.nulls(G, pa.float64())}, step)

    def commit(self) -> None:
        """Make every row so far durable (rank 0, at flushes and checkpoints)."""
        self.writer.commit(self.last)


def whole_evaluations(out: Path, gates: bool) -> set[int]:
    """The steps whose validation pass is on record in every table it writes (train_eval, and its `val` rows
    in train_domains and, with `gates`, train_gates). A commit renames its tables' parts one by one: a kill
    in the final one, which adds the final pass to parts already committed at the last step, left the pass
    in some tables only, and the resumed run, asking train_eval alone, wrote it twice into the others or
    never into them (a review). The rows of a pass not in all of them are deleted, to be written again."""
    tables = ["train_eval", "train_domains"] + (["train_gates"] if gates else [])
    found = {t: _val_steps(out, t) for t in tables}
    whole = set.intersection(*found.values())
    for t in tables:
        if found[t] - whole:
            _drop_val_rows(out, t, found[t] - whole)
    return whole


def _parts(out: Path, table: str) -> list[Path]:
    return sorted((out / table).glob("*.parquet")) if (out / table).is_dir() else []


def _val_steps(out: Path, table: str) -> set[int]:
    """The steps of the validation passes `table` holds, read from its step (and split) columns only."""
    columns = ["step"] if table == "train_eval" else ["step", "split"]
    return {int(s) for f in _parts(out, table)
            for s in _val_rows(pq.read_table(f, columns=columns), table).column("step").to_pylist()}


def _val_rows(rows: pa.Table, table: str) -> pa.Table:
    """A validation pass's rows of `table` (all of train_eval's)."""
    return rows if table == "train_eval" else rows.filter(pc.equal(rows["split"], "val"))


def _drop_val_rows(out: Path, table: str, steps: set[int]) -> None:
    """Rewrite `table`'s parts without the validation rows of `steps` (temporary name, then rename)."""
    for f in _parts(out, table):
        rows = pq.read_table(f)
        drop = pc.is_in(rows["step"], pa.array(sorted(steps), rows.schema.field("step").type))
        if table != "train_eval":
            drop = pc.and_(drop, pc.equal(rows["split"], "val"))
        if not pc.any(drop).as_py():
            continue
        kept = rows.filter(pc.invert(drop))
        tmp = f.with_name(f".{f.name}.tmp")
        pq.write_table(kept, tmp, **parquet_options(kept.schema))
        os.replace(tmp, f)
