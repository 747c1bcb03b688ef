"""Dumps in the structures SGLang's expert-distribution recorder writes (python/sglang/srt/eplb/
expert_distribution.py: the stat accumulator's dict, the detail accumulator's records and
last_physical_to_logical_map, `torch.save` per rank), built from a known routing so that an import
can be checked against it. The model is the shipped `tiny` config: 3 layers (layer 0 dense), 16
routed experts, top-4 (SGLang's per-token buffer is 8 wide: the rest is -1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

L, E, K, WIDTH = 3, 16, 4, 8
DENSE = [0]


@dataclass
class Pass:
    fp: int  # forward_pass_id
    input_ids: list[int]
    positions: list[int]
    extend_seq_lens: list[int] | None  # None: decode (one token per sequence)
    logical: np.ndarray  # [L, n, K] logical top-k (dense layers -1)
    rank: int  # the data-parallel rank whose tokens these are


def run_loads(run) -> dict[int, np.ndarray]:
    """An imported run's expert_load as {step: counts [L, E]}, to compare with the routing built here."""
    df = run.df("expert_load")
    out = {}
    for step, g in df.groupby("step"):
        a = np.zeros((L, E), np.int64)
        np.add.at(a, (g.layer.to_numpy(), g.expert.to_numpy()), g["count"].to_numpy())
        out[int(step)] = a
    return out


def config(path: Path) -> Path:
    """The tiny model's config.json (Hugging Face keys)."""
    from model import ModelArgs

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(ModelArgs.from_name("tiny").to_hf_config()))
    return path / "config.json"


def traffic(seed: int = 0, passes: int = 5, ranks: int = 2) -> list[Pass]:
    """Prefill passes (2-3 sequences) and decode passes (one token per sequence), rank by rank."""
    rng = np.random.default_rng(seed)
    out = []
    for fp in range(passes):
        for rank in range(ranks):
            if fp % 2 == 0:
                lens = [int(x) for x in rng.integers(3, 9, int(rng.integers(2, 4)))]
                pos = [p for n in lens for p in range(n)]
            else:
                lens = None
                pos = [int(x) for x in rng.integers(5, 40, 3)]
            n = len(pos)
            logical = np.full((L, n, K), -1, np.int64)
            for layer in range(L):
                if layer not in DENSE:
                    # skewed: low expert ids are busier, so placement has something to fix
                    logical[layer] = np.stack([rng.choice(E, K, replace=False, p=_skew()) for _ in range(n)])
            out.append(Pass(fp, [int(x) for x in rng.integers(2, 300, n)], pos, lens, logical, rank))
    return out


def _skew() -> np.ndarray:
    w = 1.0 / np.arange(1, E + 1)
    return w / w.sum()


def physical_map(redundant: int = 4, seed: int = 0) -> np.ndarray:
    """[L, E + redundant]: every logical expert once, the busiest ones again (dense layers trivial)."""
    rng = np.random.default_rng(seed)
    P = E + redundant
    m = np.tile(np.arange(P) % E, (L, 1))
    for layer in range(L):
        if layer not in DENSE:
            m[layer] = rng.permutation(np.concatenate([np.arange(E), np.arange(redundant)]))
    return m


def logical_counts(passes: list[Pass]) -> dict[int, np.ndarray]:
    """forward pass -> [L, E] top-k assignments over every rank's tokens."""
    out: dict[int, np.ndarray] = {}
    for p in passes:
        c = out.setdefault(p.fp, np.zeros((L, E), np.int64))
        for layer in range(L):
            v = p.logical[layer][p.logical[layer] >= 0]
            c[layer] += np.bincount(v, minlength=E)
    return out


def write_stat(d: Path, passes: list[Pass], buffer: int = 8, stamp: float = 1733000000.0, start: int = 0,
               slot: bool = False) -> Path:
    """Rank 0's file: logical_count [buffer, L, E] summed over ranks; unused buffer rows zero. Named
    with `stamp` as SGLang names it with time.time() at the dump. `start`: the buffer row the first
    pass went to (SGLang's circular buffer keeps its write index across recordings: a second
    recording starts where the first stopped, and wraps round to row 0). `slot`: a fused shared
    expert counted as logical expert E, once by every token of a MoE layer ([buffer, L, E + 1])."""
    counts = logical_counts(passes)
    lc = torch.zeros(buffer, L, E + slot, dtype=torch.int32)
    for i, fp in enumerate(sorted(counts)):
        c = counts[fp]
        if slot:
            c = np.concatenate([c, c.sum(1, keepdims=True) // K], 1)  # each token: K routed, 1 shared
        lc[(start + i) % buffer] = torch.from_numpy(c).int()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"expert_distribution_recorder_{stamp}.pt"
    torch.save(dict(rank=0, logical_count=lc, average_utilization_rate_over_window=None), path)
    return path


def _physical(logical: np.ndarray, m: np.ndarray, rng) -> np.ndarray:
    """Each logical id -> one of its physical replicas (as dispatch does); -1 stays -1."""
    out = np.full(logical.shape, -1, np.int64)
    for layer in range(logical.shape[0]):
        for idx in zip(*np.nonzero(logical[layer] >= 0)):
            replicas = np.nonzero(m[layer] == logical[layer][idx])[0]
            out[layer][idx] = rng.choice(replicas)
    return out


def _with_slot(phys: np.ndarray, width: int, slots: int, inside: int | None = None) -> np.ndarray:
    """[L, n, K] physical ids plus, with `slots` or `inside`, a last column: the fused shared expert's
    id in every row that routed (id width + t % slots for token t, or `inside`), -1 elsewhere."""
    if not slots and inside is None:
        return phys
    n = phys.shape[1]
    slot = np.full(n, inside, np.int64) if inside is not None else width + np.arange(n) % slots
    col = np.where((phys >= 0).any(2), slot[None, :], -1)
    return np.concatenate([phys, col[:, :, None]], 2)


def rank_file(rank: int, stamp: float = 1733000000.0) -> str:
    """SGLang's name for a rank's per_pass / per_token dump: each rank stamps its own time.time(), so
    the ranks' stamps differ (here by 0.01 s a rank, two decimals: name order is rank order)."""
    return f"expert_distribution_recorder_{stamp + 0.01 * rank:.2f}_{rank}.pt"


def write_per_pass(d: Path, passes: list[Pass], m: np.ndarray, ranks: int = 2, seed: int = 0,
                   slots: int = 0) -> list[Path]:
    """One file per rank: per pass, that rank's tokens counted per physical expert. `slots`: a fused
    shared expert's replicas past the map (ids P..P+slots-1, as SGLang's n_share_experts_fusion dealt
    them), each token of a MoE layer counted once in one of them."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for rank in range(ranks):
        records = []
        for p in (x for x in passes if x.rank == rank):
            phys = _physical(p.logical, m, rng)
            phys = _with_slot(phys, m.shape[1], slots)
            c = np.zeros((L, m.shape[1] + slots), np.int64)
            for layer in range(L):
                v = phys[layer][phys[layer] >= 0]
                c[layer] += np.bincount(v, minlength=m.shape[1] + slots)
            records.append(dict(forward_pass_id=p.fp, rank=rank, gatherer_key="primary",
                                global_physical_count=torch.from_numpy(c).int()))
        path = d / rank_file(rank)
        torch.save(dict(records=records, last_physical_to_logical_map=torch.from_numpy(m)), path)
        files.append(path)
    return files


def write_per_token(d: Path, passes: list[Pass], m: np.ndarray, ranks: int = 2, seed: int = 0,
                    duplicate: bool = True, slots: int = 0, inside: int | None = None) -> list[Path]:
    """One file per rank: every pass's tokens with topk_ids_of_layer [L, n, 8] (physical, -1 padded).
    `duplicate`: every rank also records the other ranks' passes (what tensor parallelism does).
    `slots`: a fused shared expert's id(s) past the map after every MoE row's K routed ids (one id,
    P, as SGLang's select_experts appends it; several: replicas dealt round the tokens); `inside`:
    that slot is physical id `inside` of the map instead."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    phys = {id(p): _with_slot(_physical(p.logical, m, rng), m.shape[1], slots, inside) for p in passes}
    files = []
    for rank in range(ranks):
        records = []
        for p in passes:
            if p.rank != rank and not duplicate:
                continue
            ids = np.full((L, len(p.input_ids), WIDTH), -1, np.int64)
            ids[:, :, :phys[id(p)].shape[2]] = phys[id(p)]
            # the current source's detail gatherer also counts the pass per physical expert
            width = max(m.shape[1], int(ids.max()) + 1)  # a fused slot past the map is counted past it
            gpc = np.stack([np.bincount(ids[layer][ids[layer] >= 0], minlength=width) for layer in range(L)])
            records.append(dict(forward_pass_id=p.fp, rank=rank, gatherer_key="primary", input_ids=p.input_ids,
                                positions=p.positions, extend_seq_lens=p.extend_seq_lens, forward_mode=1,
                                topk_ids_of_layer=torch.from_numpy(ids).int(),
                                misc_objects=[dict(layer_id=1, num_tokens_per_rank=[len(p.input_ids)] * ranks,
                                                   num_tokens_per_rdma_rank=[len(p.input_ids)],
                                                   num_tokens_per_expert=gpc[1].tolist())],  # DeepEP's counts
                                global_physical_count=torch.from_numpy(gpc).int()))
        path = d / rank_file(rank)
        torch.save(dict(records=records, last_physical_to_logical_map=torch.from_numpy(m)), path)
        files.append(path)
    return files


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of the dump file or folder `src` in `dst` with `edit(data)` applied to every file (alike, so
    that tensor-parallel copies stay copies)."""
    files = sorted(src.glob("*.pt")) if src.is_dir() else [src]
    dst.mkdir(parents=True)
    for f in files:
        d = torch.load(f, weights_only=True)
        edit(d)
        torch.save(d, dst / f.name)
    return dst
