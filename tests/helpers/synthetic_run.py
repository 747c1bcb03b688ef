"""A small synthetic run directory written with pyarrow after probe/schema.py's TABLES, with the
in-memory arrays it was built from (for checking run versions of metrics against array versions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from probe.schema import TABLES


def _write(run: Path, table: str, cols: dict, parts: list[np.ndarray]) -> None:
    """One part file per boolean row mask in `parts` (named like the writer's r000-b...-....parquet)."""
    (run / table).mkdir(parents=True, exist_ok=True)
    t = pa.Table.from_pydict(cols, schema=TABLES[table])
    for i, m in enumerate(parts):
        pq.write_table(t.filter(pa.array(m)), run / table / f"r000-b{i:07d}-{i:07d}.parquet")


def write_run(run: Path, seed: int = 0, E: int = 8, K: int = 2, layers=(1, 2), n_seq: int = 6, seq_len: int = 7,
              domains=("code", "prose"), groups: int = 4, vocab: int = 11, token_seed: int | None = None,
              empty: bool = False) -> dict:
    """Write a run directory; returns the arrays (token order = seq_id, pos) per layer.

    Layer `layers[0]` routes by token id (first choice = token_id % E: vocabulary-specialised),
    the others by domain (code prefers experts < E/2), with a random distinct second choice onward.
    Two batches (steps), one part file each. Full scores on even seq_ids only (others null)."""
    run = Path(run)
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    trng = np.random.default_rng(seed if token_seed is None else token_seed)
    seq = np.repeat(np.arange(n_seq), seq_len)
    pos = np.tile(np.arange(seq_len), n_seq).astype(np.int32)
    dom = np.array([domains[s % len(domains)] for s in seq], dtype=object)
    tok = trng.integers(0, vocab, len(seq)).astype(np.int32)
    step = (seq >= n_seq // 2).astype(np.int64)
    T = len(seq)
    if empty:
        T = 0
    out = {"seq": seq[:T], "pos": pos[:T], "domain": dom[:T], "token_id": tok[:T], "step": step[:T], "E": E, "K": K,
           "layers": list(layers), "ids": {}, "scores": {}, "margin_1": {}, "margin_k": {}}
    info = {"status": "done", "format": 1,
            "model_args": {"n_routed_experts": E, "n_activated_experts": K, "n_expert_groups": groups},
            "tables": list(TABLES)}
    (run / "run.json").write_text(json.dumps(info))
    if empty:
        return out
    parts = [step == 0, step == 1]
    _write(run, "tokens", {"doc_id": [f"d{s}" for s in seq], "seq_id": seq, "pos": pos, "doc_pos": pos.astype(np.int64),
                           "token_id": tok, "domain": dom, "loss": rng.random(T).astype(np.float32)}, parts)
    r_cols = {k: [] for k in ("seq_id", "pos", "layer", "expert_ids", "expert_weights", "margin_k", "margin_1",
                              "scores")}
    el = {k: [] for k in ("step", "layer", "expert", "domain", "count", "weight_sum", "tokens")}
    keep = seq % 2 == 0
    for li, layer in enumerate(layers):
        ids = _choices(rng, li == 0, tok, dom, domains[0], E, K)
        w = rng.random((T, K)).astype(np.float32)
        m1 = rng.random(T).astype(np.float32) * 0.05
        mk = (m1 * rng.random(T)).astype(np.float32)
        m1[::9] = np.nan  # null margins (no expert left)
        sc = rng.random((T, E)).astype(np.float32)
        out["ids"][layer], out["scores"][layer] = ids, np.where(keep[:, None], sc, np.nan)
        out["margin_1"][layer], out["margin_k"][layer] = m1, mk
        r_cols["seq_id"].append(seq)
        r_cols["pos"].append(pos)
        r_cols["layer"].append(np.full(T, layer, np.int16))
        r_cols["expert_ids"].append(_lists(ids, TABLES["routing"].field("expert_ids").type))
        r_cols["expert_weights"].append(_lists(w, pa.list_(pa.float32())))
        r_cols["margin_k"].append(mk)
        r_cols["margin_1"].append(m1)
        r_cols["scores"].append(_lists(sc, pa.list_(pa.float32()), keep))
        _add_loads(el, layer, ids, w, step, dom, domains, E)
    cat = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else pa.concat_arrays(v)) for k, v in r_cols.items()}
    cat["margin_1"] = pa.array(cat["margin_1"], mask=np.isnan(cat["margin_1"]))
    rstep = np.tile(step, len(layers))
    _write(run, "routing", cat, [rstep == 0, rstep == 1])
    ecat = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else v) for k, v in el.items()}
    _write(run, "expert_load", ecat, [ecat["step"] == 0, ecat["step"] == 1])
    return out


def _lists(rows: np.ndarray, type_: pa.DataType, keep: np.ndarray | None = None) -> pa.Array:
    """[T, n] rows as a [T] list array of `type_`, null where `keep` is False (without Python lists: a run of
    40,000 experts' scores was 3.6M Python floats)."""
    keep = np.ones(len(rows), bool) if keep is None else keep
    offsets = np.concatenate([[0], np.cumsum(np.where(keep, rows.shape[1], 0))]).astype(np.int32)
    values = pa.array(rows[keep].reshape(-1)).cast(type_.value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=type_, mask=pa.array(~keep))


def _choices(rng, by_token: bool, tok, dom, first_domain: str, E: int, K: int) -> np.ndarray:
    """[T, K] expert ids: the first by token id (token_id % E) or by domain (`first_domain` prefers
    experts < E/2, 80% of the time), then K - 1 distinct random others."""
    ids = np.empty((len(tok), K), dtype=np.int64)
    for t in range(len(tok)):
        if by_token:
            first = tok[t] % E
        else:
            lo = 0 if dom[t] == first_domain else E // 2
            first = rng.integers(lo, lo + E // 2) if rng.random() < 0.8 else rng.integers(0, E)
        rest = rng.permutation(np.delete(np.arange(E), first))[: K - 1]
        ids[t] = [first, *rest]
    return ids


def _add_loads(el: dict, layer: int, ids, w, step, dom, domains, E: int) -> None:
    """Append `layer`'s expert_load rows (per step, domain and expert: count, weight sum, tokens) to `el`."""
    for s in (0, 1):
        for d in domains:
            m = (step == s) & (dom == d)
            if not m.any():
                continue
            el["step"].append(np.full(E, s))
            el["layer"].append(np.full(E, layer, np.int16))
            el["expert"].append(np.arange(E, dtype=np.int32))
            el["domain"] += [d] * E
            el["count"].append(np.bincount(ids[m].reshape(-1), minlength=E))
            el["weight_sum"].append(np.bincount(ids[m].reshape(-1), weights=w[m].reshape(-1), minlength=E))
            el["tokens"].append(np.full(E, m.sum()))


def as_two_replicas(run: Path, tables, batches: int = 2) -> None:
    """`run` (write_run's) as two replicas of a sharded record write it (4 ranks, --model-parallel 2):
    batch 0's parts of `tables` by rank 0, batch 1's renamed as rank 2's, each writer's progress file
    naming its own, and run.json's world and planned batches saying so."""
    (run / "_progress").mkdir()
    parts = {0: {}, 2: {}}
    for t in tables:
        (run / t / "r000-b0000001-0000001.parquet").rename(run / t / "r002-b0000001-0000001.parquet")
        for rank in parts:
            parts[rank][t] = {f"r{rank:03d}-b{rank // 2:07d}-{rank // 2:07d}.parquet": 1}
    for rank, named in parts.items():
        (run / "_progress" / f"r{rank:03d}.json").write_text(json.dumps({"done": rank // 2, "parts": named}))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"world": {"size": 4, "model_parallel": 2, "replicas": 2},
                                                     "planned": {"batches": batches}}))
