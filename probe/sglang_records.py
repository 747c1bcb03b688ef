"""The record-based modes of `dsv3-probe import sglang` (probe/sglang.py, whose docstring says what the
dumps hold and how they become a run): per_pass counts and per_token routing read into a run's
expert_load, tokens and routing tables, and expert_load's rows, which stat shares. The readers let each
record's counts or ids go as they read them (a server's dump is GBs): loaded dumps are read once, a
second read of them refused (sglang_dumps.consume); load the files again to read them again. They are
marked read as the first record is emptied: a reader that refuses them before (a record of the wrong
shape) leaves them whole, to read again once the cause is fixed (--config)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from .schema import TABLES
from .sglang_dumps import DOMAIN, Dump, SGLangError, Shape, check_unread, consume, draft_record
from .writer import PartWriter


def moe_layers(shape: Shape, counts_LE: np.ndarray, dumps: list[Dump]) -> list[int]:
    """Layers that route: not dense per the config; without one, those that counted something.
    `counts_LE`: the dumps' counts [L, E] summed (some layer counted: the modes refuse a dump that
    chose nothing). With a config, a dump is refused where a layer it runs dense counted (SGLang's
    dense layers select no expert, so their rows stay 0: another model's dump, whose counts of that
    layer were dropped without a word) or where some of its MoE layers counted nothing while others
    did (every token a server routes passes every MoE layer: one pipeline stage's files of several,
    or a model with more dense layers; imported, those layers read as never loaded, planned as evenly
    loaded and named MoE layers in the import's summary line)."""
    if shape.args is None:
        return [i for i in range(shape.n_layers) if counts_LE[i].sum() > 0]
    files = ", ".join(d.path.name for d in dumps[:3])
    dense = f"--config has first_k_dense_replace={len(shape.dense)}"
    counted = [i for i in shape.dense if counts_LE[i].sum() > 0]
    if counted:
        raise SGLangError(f"{files}: layer {counted[0]} counted {int(counts_LE[counted[0]].sum())} expert selections, "
                          f"but {dense} (layers 0..{len(shape.dense) - 1} dense, choosing no expert): is it this "
                          "model's dump?")
    layers = [i for i in range(shape.n_layers) if i not in shape.dense]
    idle = [i for i in layers if not counts_LE[i].any()]
    if idle:
        raise SGLangError(f"{files}: MoE layer(s) {_spans(idle)} counted nothing while layer(s) "
                          f"{_spans([i for i in layers if i not in idle])} counted (every token routes in every MoE "
                          "layer): a pipeline-parallel server's dump without some stage's files (import every "
                          f"stage's), or another model's ({dense}, {shape.n_layers} layers)? Without --config the "
                          "layers that counted are imported")
    return layers


def _spans(layers: list[int]) -> str:
    """Layer numbers as runs, "3..30, 45": a model's 58 MoE layers in a line (only with --config, whose
    reading has imported the model package already)."""
    from model.indices import consecutive_runs

    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in consecutive_runs(layers))


def load_rows(step: int, layers: list[int], counts_LE: np.ndarray, tokens: int) -> pa.RecordBatch:
    """The expert_load rows of one pass (or step): every MoE layer's counts of every expert."""
    n = len(layers) * counts_LE.shape[1]
    fixed = _fixed_load_columns(tuple(layers), counts_LE.shape[1])
    return pa.RecordBatch.from_arrays(
        [pa.array(np.full(n, step, np.int64)), *fixed[:3], pa.array(counts_LE[layers].reshape(-1).astype(np.int64)),
         fixed[3], pa.array(np.full(n, tokens, np.int64))], schema=TABLES["expert_load"])


@functools.lru_cache(maxsize=4)
def _fixed_load_columns(layers: tuple[int, ...], E: int) -> tuple:
    """layer, expert, domain and weight_sum of `_load_rows`, alike for every pass: built once (a stat
    dump of 4,500 passes spent most of its import making the same 15k-string column again per pass)."""
    n = len(layers) * E
    return (pa.array(np.repeat(np.array(layers, np.int16), E)),
            pa.array(np.tile(np.arange(E, dtype=np.int32), len(layers))),
            pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [DOMAIN]).cast(pa.string()),
            pa.nulls(n, pa.float64()))


def per_pass(dumps: list[Dump], shape: Shape, out: Path) -> dict:
    """global_physical_count per rank and pass -> logical counts, summed over ranks per pass; when
    every pass counted the same on every rank (each rank routed the whole batch: tensor parallel
    without an all-to-all backend), one rank's counts, not their sum. Each pass's records are summed
    as they are read: kept one by one until the end, the records of 8 ranks x 2,000 passes of
    DeepSeek-V3 held twice the dump again (2 GB more). Each record's counts are let go once summed: the
    dumps are read once (marked consumed with the first; a second read of them is refused, naming the file)."""
    check_unread(dumps)
    sums: dict[int, list] = {}  # pass -> [logical counts [L, E] summed over its records, records]
    alike = True  # so far, every pass's records counted the same
    empty = drafts = 0
    owners: dict[tuple, Path] = {}
    for d in dumps:
        m = d.data["last_physical_to_logical_map"].numpy().astype(np.int64)
        logical = _logical_of(m, shape.n_experts)
        for r in d.data["records"]:
            if draft_record(r):
                drafts += 1
                continue
            c = r["global_physical_count"].numpy()
            if shape.fused:  # count columns past the map: a fused shared expert's (sglang_fused.py)
                c = shape.fused.strip_counts(c, m.shape[1])
            if c.shape != m.shape:
                raise SGLangError(f"{d.path}: global_physical_count of pass {r.get('forward_pass_id')} has shape "
                                  f"{list(c.shape)}, the map {list(m.shape)}")
            if not d.consumed:  # the first record emptied: the dumps are read (refused before, they were whole)
                consume(dumps, "per_pass")
            del r["global_physical_count"]  # read no more (the import's own load): let it go once summed
            if not c.any():  # see _recorded
                empty += 1
                continue
            _claim(owners, d, r, c.any(1))
            lg, acc = logical(c), sums.get(int(r["forward_pass_id"]))
            if acc is None:
                sums[int(r["forward_pass_id"])] = [lg, 1]
                continue
            alike = alike and np.array_equal(lg * acc[1], acc[0])  # the sum of n alike records is n times one
            acc[0] += lg
            acc[1] += 1
    if not sums:
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: every per_pass record counted nothing: no "
                          "expert was chosen while it recorded (was the recorder started before the traffic?)")
    n = {k for _, k in sums.values()}
    repeated = alike and len(n) == 1 and min(n) > 1
    passes = {fp: total // k if repeated else total for fp, (total, k) in sums.items()}
    if repeated and shape.fused:  # its slot counted once, as the routed counts are
        shape.fused.dropped //= min(n)
    return _write_passes(passes, shape, out, dumps) | {"ranks_counted_the_same_tokens": repeated,
                                                       "empty_records_skipped": empty, "draft_records_skipped": drafts}


def _write_passes(passes: dict[int, np.ndarray], shape: Shape, out: Path, dumps: list[Dump]) -> dict:
    """per_pass's expert_load, one step per forward pass in pass order, and its run.json keys."""
    order = sorted(passes)
    layers = moe_layers(shape, sum(passes.values()), dumps)
    w = PartWriter(out, 0, ["expert_load"])
    for step, fp in enumerate(order):
        c = passes[fp]
        w.append("expert_load", load_rows(step, layers, c, int(c[layers[0]].sum() // shape.topk) if layers else 0), step)
    w.commit(max(len(order) - 1, 0))
    return {"passes": len(order), "forward_pass_ids": [order[0], order[-1]] if order else [], "moe_layers": layers,
            "topk_assumed": shape.args is None and not shape.topk_seen}


def _logical_of(m: np.ndarray, n_experts: int):
    """A function of physical counts [L, P] -> logical counts [L, E] (int64) through the map `m` [L, P],
    a logical expert's replicas summed: the map's cells are sorted by (layer, expert) once, and each
    record's counts summed in runs of that order (np.add.at over each record's cells was the most
    of a per_pass import of 16,000 records)."""
    cell = (np.arange(m.shape[0])[:, None] * n_experts + m).reshape(-1)
    order = np.argsort(cell, kind="stable")
    cells, starts = np.unique(cell[order], return_index=True)

    def logical(c: np.ndarray) -> np.ndarray:
        out = np.zeros(m.shape[0] * n_experts, np.int64)
        out[cells] = np.add.reduceat(c.reshape(-1)[order], starts, dtype=np.int64)
        return out.reshape(m.shape[0], n_experts)

    return logical


def per_token(dumps: list[Dump], shape: Shape, out: Path) -> dict:
    """Every recorded token: its input id, position and the logical top-k of each MoE layer. Each
    record's physical ids are let go once mapped: the dumps are read once (marked consumed; a second
    read of them is refused, naming the file; marked consumed with the first)."""
    check_unread(dumps)
    kept, copies, empty, drafts = _kept_records(dumps, shape)
    if not kept:
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: no per_token record chose an expert (every "
                          "id -1): nothing was routed while it recorded")
    kept.sort(key=lambda x: x[0])
    _count_fused(shape, kept)
    _check_vocab(shape, kept)
    layers = moe_layers(shape, sum(_counts(lg, range(len(lg)), shape) for *_, lg in kept), dumps)
    passes, tokens = _write_token_tables(kept, layers, shape, out)
    return {"passes": passes, "records": len(kept), "moe_layers": layers, "tokens": tokens, "topk_assumed": False,
            "ranks_counted_the_same_tokens": copies > 0, "copies_skipped": copies, "empty_records_skipped": empty,
            "draft_records_skipped": drafts}


def _kept_records(dumps: list[Dump], shape: Shape) -> tuple[list, int, int, int]:
    """per_token's reading step: each record's logical ids, its physical ids let go (the first one
    marks the dumps read); (kept: (pass, file, record, logical ids) per record, pipeline stages merged;
    tensor-parallel copies skipped, empty records skipped, draft records skipped)."""
    kept, seen, copies, empty, drafts = [], set(), 0, 0, 0
    owners: dict[tuple, Path] = {}
    at: dict[tuple, int] = {}  # (pass, rank, gatherer key) -> its index in kept
    for d in dumps:
        mine = [r for r in d.data["records"] if not draft_record(r)]
        drafts += len(d.data["records"]) - len(mine)
        records = [r for r in mine if _recorded(r)]
        empty += len(mine) - len(records)
        # a file whose every record another file holds too, logical routing included (ranks may send a
        # token to different replicas), is a tensor-parallel copy and counts once; data-parallel ranks'
        # records alike otherwise are each kept, and pipeline stages' (same tokens, own layers) merged
        logical = [_record_logical(d, r, shape) for r in records]  # each record's once, copies included
        for r in records:  # the physical ids are read no more (the import's own load of the file): let them
            if not d.consumed:  # go, not held beside the logical ones (8 x 60,000 tokens: 0.9 GB); the first
                consume(dumps, "per_token")  # emptied marks the dumps read (refused before, they were whole)
            del r["topk_ids_of_layer"]
        sig = tuple((int(r["forward_pass_id"]), tuple(r["input_ids"]), tuple(r["positions"]),
                     hashlib.blake2b(lg.tobytes(), digest_size=16).digest()) for r, lg in zip(records, logical))
        if sig in seen:
            copies += 1
            continue
        seen.add(sig)
        for r, lg in zip(records, logical):
            _claim(owners, d, r, (lg >= 0).reshape(len(lg), -1).any(1))
            _keep_or_merge(kept, at, d, r, lg)
    return kept, copies, empty, drafts


def _check_vocab(shape: Shape, kept: list) -> None:
    """Refuse a kept record whose input ids fall outside --config's vocabulary (another model's dump);
    without a config, nothing to check."""
    vocab = (shape.args or {}).get("vocab_size")
    for fp, d, r, _ in kept if vocab else ():
        top = max(map(int, r["input_ids"]), default=-1)
        if top >= vocab:
            raise SGLangError(f"{d.path}: pass {fp} holds input id {top}, outside the vocabulary of --config "
                              f"(vocab_size={vocab}): is it this model's dump?")


def _write_token_tables(kept: list, layers: list[int], shape: Shape, out: Path) -> tuple[int, int]:
    """per_token's writing step: the tokens, routing and expert_load tables of the kept records (sorted
    by pass), one step per forward pass; (passes, tokens)."""
    w = PartWriter(out, 0, ["tokens", "routing", "expert_load"])
    step_of = {fp: i for i, fp in enumerate(sorted({fp for fp, *_ in kept}))}  # one step per pass
    per_pass: dict[int, list] = {}
    seq = 0
    docs: dict[tuple, int] = {}  # sequences named so far per (pass, rank): two records of one pass on one
    for fp, d, r, lg in kept:  # rank's file numbered theirs from 0 alike, one doc_id (a review)
        key = (fp, int(r.get("rank", 0)))
        first = docs.get(key, 0)
        after, counts = _token_rows(w, step_of[fp], fp, d, r, lg, layers, shape, seq, first)
        docs[key] = first + after - seq
        seq = after
        acc = per_pass.setdefault(fp, [0, 0])
        acc[0], acc[1] = acc[0] + counts, acc[1] + len(r["input_ids"])
    for fp, (counts, n) in sorted(per_pass.items()):
        w.append("expert_load", load_rows(step_of[fp], layers, counts, n), step_of[fp])
    w.commit(max(len(step_of) - 1, 0))
    return len(step_of), sum(n for _, n in per_pass.values())


def _count_fused(shape: Shape, kept: list) -> None:
    """The fused shared-expert slot ids _record_logical set aside in the records kept (copies not
    counted): each (layer, token) row that routed chose them too."""
    if shape.fused:
        shape.fused.dropped = shape.fused.columns * sum(int((lg >= 0).any(-1).sum()) for *_, lg in kept)


def _claim(owners: dict, d: Dump, r: dict, layers: np.ndarray) -> None:
    """A (forward pass, rank, gatherer key) recorded in one file only, as SGLang's own per_pass reader
    asserts, unless the files count disjoint layers (`layers`: bool [L], the layers this record
    counted): pipeline-parallel stages share their ranks' numbers and each records its own layers.
    The same key counting the same layers in two files (drafts, empty records and tensor-parallel
    copies set aside) is files of two server runs in one folder: SGLang numbers passes from 0 at
    each start and writes every run's files into SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR (/tmp by
    default); so do the replicas of a data-parallel server without DP attention, each its own ranks
    0..n-1. Summed, their passes were merged step by step."""
    key = _record_key(r)
    first, seen = owners.get(key, (d.path, np.zeros_like(layers)))
    if first != d.path and (seen & layers).any():
        raise SGLangError(f"{d.path}: pass {key[0]} of rank {key[1]} is recorded also in {first.name} (dumps of two "
                          "server runs in one folder, or of data-parallel replicas without --enable-dp-attention? "
                          "each numbers its ranks and passes from 0): move one run's files to a folder of their own "
                          "and import that")
    owners[key] = (first, seen | layers)


def _record_key(r: dict) -> tuple[int, int, str]:
    """(forward pass, rank, gatherer key): what names one record of one rank's pass."""
    return int(r["forward_pass_id"]), int(r.get("rank", 0)), str(r.get("gatherer_key"))


def _keep_or_merge(kept: list, at: dict, d: Dump, r: dict, lg: np.ndarray) -> None:
    """Append (pass, file, record, logical ids `lg`) to `kept`, or merge `lg` into the kept record of
    the same `_record_key` from another file: a pipeline stage's, whose disjoint layers `_claim` has
    checked. Its tokens must be the same; its ids (each file's through its own map) fill the layers
    the earlier stages left at -1."""
    key = _record_key(r)
    if key not in at or kept[at[key]][1] is d:  # records of one file are each kept, as they were
        at.setdefault(key, len(kept))
        kept.append((key[0], d, r, lg))
        return
    fp, d0, r0, lg0 = kept[at[key]]
    if list(r0["input_ids"]) != list(r["input_ids"]) or list(r0["positions"]) != list(r["positions"]) \
            or lg0.shape != lg.shape:
        raise SGLangError(f"{d.path}: pass {fp} of rank {key[1]} is recorded also in {d0.path.name} with other "
                          "tokens: not two pipeline stages of one pass (files of two server runs?)")
    kept[at[key]] = (fp, d0, r0, np.where(lg0 >= 0, lg0, lg))


def _recorded(r: dict) -> bool:
    """Whether a per_token record chose any expert. A server running speculative decoding (MTP) also
    records its draft model's passes: their MoE layers record nothing (every id -1), their
    forward_pass_ids come from the draft's own counter (overlapping the target's) and their tokens
    repeat the target's. Kept, they doubled the tokens and merged into the target's passes (a review
    against SGLang's model_runner and expert_distribution code); per_pass skips such passes too
    (every count zero)."""
    ids = r.get("topk_ids_of_layer")
    return ids is None or bool((ids >= 0).any())


def _record_logical(d: Dump, r: dict, shape: Shape) -> np.ndarray:
    """topk_ids_of_layer [L, n, K] physical -> logical (the dump's map), -1 kept; int32, as SGLang writes
    the ids: the import holds every record's until it writes them (int64 held twice the dump's size)."""
    ids = r["topk_ids_of_layer"].numpy().astype(np.int64)
    m = d.data["last_physical_to_logical_map"].numpy().astype(np.int64)
    if shape.fused:  # a fused shared expert's slot ids: set aside (sglang_fused.py)
        ids = shape.fused.strip_ids(ids, m.shape[1])
    if ids.ndim != 3 or ids.shape[0] != m.shape[0] or ids.shape[1] != len(r["input_ids"]):
        raise SGLangError(f"{d.path}: topk_ids_of_layer of pass {r['forward_pass_id']} has shape {list(ids.shape)}, "
                          f"expected [{m.shape[0]} layers, {len(r['input_ids'])} tokens, K]")
    if ids.max(initial=-1) >= m.shape[1]:
        raise SGLangError(f"{d.path}: physical expert id {int(ids.max())} is outside the map's {m.shape[1]} experts")
    out = np.full(ids.shape, -1, np.int32)  # expert ids are at most 65535 (checked): int32 holds half of int64
    for layer in range(ids.shape[0]):
        valid = ids[layer] >= 0
        out[layer][valid] = m[layer][ids[layer][valid]]
    if out.max(initial=-1) >= shape.n_experts:
        raise SGLangError(f"{d.path}: expert id {int(out.max())} is outside the config's {shape.n_experts} experts")
    return out


def _token_rows(w: PartWriter, step: int, fp: int, d: Dump, r: dict, lg: np.ndarray, layers: list[int],
                shape: Shape, seq: int, first_doc: int = 0) -> tuple[int, np.ndarray]:
    """tokens and routing rows of one record, its sequences named pass<fp>:rank<r>:seq<first_doc + i>;
    returns the next free seq_id and its counts [L, E]."""
    ids, pos = np.asarray(r["input_ids"], np.int64), np.asarray(r["positions"], np.int64)
    n = len(ids)
    lens = r.get("extend_seq_lens")
    lens = [int(x) for x in lens] if lens is not None and len(lens) else [1] * n  # decode: one token a sequence
    seq_of = np.repeat(np.arange(seq, seq + len(lens)), lens)
    rank = int(r.get("rank", 0))
    doc = np.array([f"pass{fp}:rank{rank}:seq{first_doc + s - seq}" for s in seq_of], dtype=object)
    w.append("tokens", {"doc_id": doc, "seq_id": seq_of, "pos": pos.astype(np.int32), "doc_pos": pos,
                        "token_id": ids.astype(np.int32), "domain": [DOMAIN] * n,
                        "loss": pa.nulls(n, pa.float32())}, step)
    layer_of, t, flat, offsets, counts = _chosen(lg, layers, shape)
    rows = {"seq_id": seq_of[t], "pos": pos[t], "layer": layer_of}
    k = len(rows["seq_id"])
    if k:
        lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat.astype(np.uint16)))
        w.append("routing", {"seq_id": np.asarray(rows["seq_id"], np.int64), "pos": np.asarray(rows["pos"], np.int32),
                             "layer": np.asarray(rows["layer"], np.int16), "expert_ids": lists,
                             "expert_weights": pa.nulls(k, pa.list_(pa.float32())), "margin_k": pa.nulls(k, pa.float32()),
                             "margin_1": pa.nulls(k, pa.float32()), "scores": pa.nulls(k, pa.list_(pa.float32()))}, step)
    return seq + len(lens), counts


def _chosen(lg: np.ndarray, layers: list[int], shape: Shape):
    """The (layer, token) pairs of a record's logical ids `lg` [L, n, K] that chose an expert, layer by
    layer in token order: their layer and token index, their ids without SGLang's -1 padding (flat, with
    list offsets), and the counts [L, E]."""
    ids = lg[layers]  # [l, n, K]
    chose = ids >= 0
    li, t = np.nonzero(chose.any(2))
    flat = ids[chose]  # row-major: the same (layer, token) order
    offsets = np.concatenate([[0], np.cumsum(chose[li, t].sum(1))])
    layer_of = np.asarray(layers, np.int64)[li]
    return layer_of, t, flat, offsets, _counts(lg, layers, shape)


def _counts(lg: np.ndarray, layers, shape: Shape) -> np.ndarray:
    """[n_layers, n_experts] int64: how often each expert was chosen in `layers` of the logical ids `lg`
    [L, n, K] (-1: none); one bincount (np.add.at was a tenth of a per_token import)."""
    layers = np.asarray(layers, np.int64)
    ids = lg[layers]
    cells = (layers[:, None, None] * shape.n_experts + ids)[ids >= 0]
    return np.bincount(cells, minlength=shape.n_layers * shape.n_experts).reshape(shape.n_layers, shape.n_experts)
