"""SGLang's expert-distribution dumps as runs: `dsv3-probe import sglang DUMP`.

    dsv3-probe import sglang /tmp/sglang_dumps/ --config DeepSeek-V3/config.json --out runs/prod
    dsv3-probe import sglang expert_distribution_recorder_1733000000.0.pt --out runs/prod-stat

SGLang records routing when started with `--expert-distribution-recorder-mode stat | per_pass |
per_token`, between POST `/start_expert_distribution_record` and `/stop_expert_distribution_record`;
`/dump_expert_distribution_record` writes `torch.save` files into SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR:

- stat (and stat_approx): one file per dump call, written by rank 0, {rank, logical_count [passes,
  layers, logical experts] (summed over the ranks), average_utilization_rate_over_window}; the pass
  buffer is circular, so passes that counted nothing (unused buffer rows) are dropped; a directory of
  several such files is joined in the order they were written (the time in their names). A buffer
  with no unused row may have wrapped: it then holds only the last `buffer size` passes (1,000 by
  default), rotated, so their order is unknown; the import says so (run.json `source.
  pass_order_unknown`). A server running MTP leaves its draft passes' rows empty, single unused rows
  between the passes: the buffer's own gap is then the one longer run of unused rows (with none, or
  several, the order is unknown). `--expert-distribution-recorder-buffer-size -1` keeps every pass in order:
  import such dumps with `--buffer-size -1` (its rows are then read in order as they are; a zero row
  there is a pass that counted nothing, such as a speculative-decoding draft pass).
  On a server whose ranks all route the same tokens (tensor parallel, no all-to-all MoE backend),
  SGLang's sum over ranks multiplies the counts by the number of ranks (shares are unaffected);
- per_pass: one file per rank, {records: [{forward_pass_id, rank, gatherer_key,
  global_physical_count [layers, physical experts]}], last_physical_to_logical_map [layers, physical]};
- per_token: one file per rank, records with input_ids, positions, extend_seq_lens, forward_mode,
  topk_ids_of_layer [layers, tokens, 8] (physical expert ids, -1 where nothing was chosen: the
  buffer is 8 wide whatever the model's top-k, so the most ids a token chose is the top-k, which
  run.json takes when no --config gives it and which a --config must agree with) and
  misc_objects, plus last_physical_to_logical_map.
A server running speculative decoding (MTP) records its draft passes too, with nothing routed (their
MoE layers do not record) and pass ids of the draft's own: per_pass and per_token records that chose
no expert are skipped (run.json `source.empty_records_skipped`), and so are records whose
`gatherer_key` names a draft (`source.draft_records_skipped`).

DUMP is a file or a directory of such files (every `*.pt` in it). The run gets `expert_load` (one
step per forward pass; ranks summed, as SGLang's own stat mode sums them, except per_pass counts that
are identical on every rank, i.e. the same tokens counted on each, which are kept once; domain
`sglang`), per_token
also `tokens` (input ids and positions; a forward pass's sequences split by extend_seq_lens, a
decode pass one sequence per token; records repeated on several ranks kept once) and `routing`
(logical expert ids; SGLang records no weights), and `placement` when the dump carries the
physical-to-logical map (the GPU of a slot: slot // (physical experts / GPUs), the GPUs being
--gpus, else the ranks that recorded when nothing says they are not all: see `_gpus_of`). Layers the model runs dense
(`first_k_dense_replace` of --config), or that counted nothing when no config is given, are skipped. Files are read with
`torch.load(weights_only=True)`: a file that holds pickled Python objects is refused, never run.
A server that fuses the shared expert into the routed ones appends an id past them to every token's
top-k: told from the dump where it can be, that slot is set aside (probe/sglang_fused.py, run.json
`source.shared_fused`; docs/sglang.md has what SGLang's source does).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import numbers
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from .job import (DEFAULT_RUNS, check_inputs_outside, check_out_parent, check_replaceable, check_run_place,
                  load_tokenizer, os_refusal, package_version, refuse_a_symlinked_out,
                  refuse_a_training_run)
from .schema import TABLES
from .sglang_dumps import DOMAIN, Dump, SGLangError, Shape, draft_record, find_dumps, model_shape
from .sglang_fused import say as say_fused, source as fused_source
from .overwrite import replace_run, say_kept
from .writer import PartWriter, write_json_atomic

# ------------------------------------------------------------------------------ the import
def import_sglang(dump: str | Path, out: str | Path | None = None, config: str | None = None,
                  tokenizer: str | None = None, overwrite: bool = False, buffer_size: int | None = None,
                  gpus: int | None = None) -> Path:
    """Import SGLang dumps into a run directory; returns it. `buffer_size`: the server's
    --expert-distribution-recorder-buffer-size, for stat dumps (-1: an unbounded buffer, its rows
    every pass in order; N: a circular buffer of N rows; None: circular assumed, SGLang's default).
    `gpus`: the server's expert-parallel size (its GPU count under EP; 1 for tensor parallelism only),
    for the `placement` table; None: the ranks seen, when every rank's file was imported."""
    dumps = find_dumps(dump)
    shape = model_shape(dumps, config)
    mode = dumps[0].mode
    _check_buffer_size(buffer_size, mode)
    _check_gpus(gpus, mode)
    if tokenizer is not None:  # read now, so that a typo is not found only when a page decodes tokens
        vocab = (shape.args or {}).get("vocab_size", sys.maxsize)
        load_tokenizer(tokenizer, Path(tokenizer).parent, vocab, error=SGLangError)
    out = Path(out) if out else DEFAULT_RUNS / f"sglang-{mode}-{Path(dump).stem}"
    if out.exists() and not overwrite:
        raise SGLangError(f"--out {out} exists: pass --overwrite to replace it")
    refuse_a_symlinked_out(out, SGLangError)  # the run went into the link's target
    check_run_place(out, error=SGLangError)
    check_replaceable(out, "run.json", "a run directory", error=SGLangError)
    refuse_a_training_run(out, SGLangError)
    check_inputs_outside(out, {"DUMP": dump, "--config": config, "--tokenizer": tokenizer}, SGLangError)
    check_out_parent(out)
    tmp = out.with_name(f".{out.name}.importing")
    with os_refusal(f"--out {out}: cannot create the run there", SGLangError):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    try:
        _import_into(tmp, dumps, shape, mode, tokenizer, buffer_size, gpus)
        # the run appears whole or not at all; of an earlier one, only what a run is made of is replaced
        with os_refusal(f"--out {out}: cannot put the run there", SGLangError):
            kept = replace_run(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
    say_kept(out, kept)
    return out


def _check_buffer_size(buffer_size, mode: str) -> None:
    if buffer_size is None:
        return
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, numbers.Integral) or \
            not (buffer_size == -1 or buffer_size >= 1):
        raise SGLangError(f"--buffer-size {buffer_size!r}: the server's --expert-distribution-recorder-buffer-size, "
                          "-1 (unbounded) or a number of rows >= 1")
    if mode != "stat":
        raise SGLangError(f"--buffer-size applies to stat dumps (a circular buffer of passes); this is a {mode} "
                          "dump, whose records are kept whole")


def _check_gpus(gpus, mode: str) -> None:
    if gpus is None:
        return
    if isinstance(gpus, bool) or not isinstance(gpus, numbers.Integral) or gpus < 1:
        raise SGLangError(f"--gpus {gpus!r}: the server's expert-parallel size, a number >= 1")
    if mode == "stat":
        raise SGLangError("--gpus places the physical-to-logical map of per_pass and per_token dumps; a stat dump "
                          "has no map, so no placement to place")


def _import_into(tmp: Path, dumps: list[Dump], shape: Shape, mode: str, tokenizer: str | None,
                 buffer_size: int | None = None, gpus: int | None = None) -> None:
    """Every table of the run, then its run.json, into `tmp`."""
    if mode == "stat":
        steps = _stat(dumps, shape, tmp, buffer_size)
    else:
        steps = {"per_pass": _per_pass, "per_token": _per_token}[mode](dumps, shape, tmp)
    placement = _write_placement(dumps, shape, tmp, steps["moe_layers"], gpus)
    info = {"status": "complete", "format": 1, "kind": "import",
            "source": {"name": "sglang", "mode": mode, "files": [str(d.path.resolve()) for d in dumps],
                       "ranks": _ranks(dumps),
                       **steps, "placement": placement, **fused_source(shape.fused, shape.fused_assumed)},
            "model_args": shape.model_args(steps["moe_layers"]), "domains": [DOMAIN],
            "tables": sorted(p.name for p in tmp.iterdir() if p.is_dir() and any(p.glob("*.parquet"))),
            "options": {"tokenizer": str(Path(tokenizer).resolve()) if tokenizer else None},
            "versions": {"dsv3_probe": package_version()}, "started": time.time()}
    if steps.get("tokens") is not None:
        info["planned"] = {"tokens": steps["tokens"], "tokens_per_domain": {DOMAIN: steps["tokens"]}}
    write_json_atomic(tmp / "run.json", info)
    say_fused(shape)


def _moe_layers(shape: Shape, counts_LE: np.ndarray) -> list[int]:
    """Layers that route: not dense per the config; without one, those that counted something."""
    if shape.args is not None:
        return [i for i in range(shape.n_layers) if i not in shape.dense]
    return [i for i in range(shape.n_layers) if counts_LE[i].sum() > 0]


def _load_rows(step: int, layers: list[int], counts_LE: np.ndarray, tokens: int) -> pa.RecordBatch:
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


def _dump_time(d: Dump) -> tuple:
    """The dump's time from SGLang's file name `expert_distribution_recorder_<time.time()>.pt`, else its name."""
    stem = d.path.stem.removeprefix("expert_distribution_recorder_")
    try:
        return (0, float(stem.split("_")[0]), d.path.name)
    except ValueError:
        return (1, 0.0, d.path.name)


def _stat(dumps: list[Dump], shape: Shape, out: Path, buffer_size: int | None = None) -> dict:
    """One file per `/dump_expert_distribution_record` call (rank 0's, summed over the ranks): their
    passes in the order the files were written, as SGLang's own reader joins them. `buffer_size` -1:
    an unbounded buffer, whose dump is every pass in order (zero rows are passes that counted
    nothing: a speculative-decoding draft pass, whose MoE layers record nothing); else a circular one
    (see _buffer_order)."""
    dumps.sort(key=_dump_time)
    for d in dumps:
        if int(d.data.get("rank", 0)) != 0:
            raise SGLangError(f"{d.path}: a stat dump of rank {int(d.data['rank'])}; SGLang writes stat dumps "
                              "on rank 0 only (the counts already summed over the ranks)")
    counts, unknown = [], {}  # dumps whose pass order is unknown -> whether every row was used
    for d in dumps:
        c = d.data["logical_count"].numpy()  # [buffer rows, L, E], integers of at most int32 (checked)
        if buffer_size is not None and buffer_size > 0 and len(c) != buffer_size:
            raise SGLangError(f"{d.path}: {len(c)} pass rows, but --buffer-size {buffer_size}: SGLang's circular "
                              "buffer dumps all its rows (an unbounded one, -1, only the passes it holds)")
        used = c.reshape(len(c), -1).any(1)  # counts are never negative (checked)
        # NOTE: an unbounded buffer holds every pass in order, so a zero row inside it is a pass that
        # counted nothing, not the gap a circular buffer's write position leaves (which the rotation
        # below looks for): read as circular, such a dump was rotated out of order (a review)
        order, known = (np.flatnonzero(used).tolist(), True) if buffer_size == -1 else _buffer_order(used)
        counts.append(c[order])
        if not known:
            unknown[d.path.name] = bool(used.all())
    # [passes, L, E], empty rows dropped, each dump's in the order written
    counts = counts[0] if len(counts) == 1 else np.concatenate(counts)
    if shape.fused:  # the experts past --config's n_routed_experts: a fused shared expert's (sglang_fused.py)
        counts = shape.fused.strip_counts(counts, shape.n_experts)
    if not len(counts):
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: every pass row of the stat dump is zero: "
                          "no expert was chosen while it recorded (was the recorder started before the traffic?)")
    if counts.shape[2] < shape.n_experts:
        counts = np.pad(counts, ((0, 0), (0, 0), (0, shape.n_experts - counts.shape[2])))
    if unknown:
        why = ("every row used: it may have wrapped, holding only the last passes" if all(unknown.values()) else
               "several runs of unused rows and no single longer gap among them: it may have wrapped while a "
               "server running MTP left its draft passes' rows empty")
        print(f"warning: {', '.join(list(unknown)[:3])}: SGLang's circular pass buffer has no single run of unused "
              f"rows, so the order its passes were written in is unknown ({why}). Totals are right; the order of "
              "passes (the Serving page's windows) is not. A server started with "
              "--expert-distribution-recorder-buffer-size -1 keeps every pass in order: import its dumps with "
              "--buffer-size -1.", file=sys.stderr)
    layers = _moe_layers(shape, counts.sum(0, dtype=np.int64))
    w = PartWriter(out, 0, ["expert_load"])
    for step, c in enumerate(counts):
        tokens = int(c[layers[0]].sum(dtype=np.int64) // shape.topk) if layers else 0
        w.append("expert_load", _load_rows(step, layers, c, tokens), step)
    w.commit(max(len(counts) - 1, 0))
    rows = sum(len(d.data["logical_count"]) for d in dumps)
    return {"passes": len(counts), "dropped_empty_passes": rows - len(counts), "moe_layers": layers,
            "topk_assumed": shape.args is None and not shape.topk_seen, "pass_order_unknown": bool(unknown),
            "full_buffers": list(unknown), "buffer_size": buffer_size}


def _buffer_order(used: np.ndarray) -> tuple[list[int], bool]:
    """The used rows of one stat dump's circular buffer in the order SGLang wrote them, and whether
    that order is known. Its writer goes round the rows and never returns to row 0 when a recording
    starts again (reset() zeroes the rows, not the write index), so one recording's passes are the
    used rows from just after the run of unused ones, round to just before it. With no unused row
    the buffer may have wrapped, and with several runs of them the order is ambiguous: rows in
    buffer order then, flagged unknown."""
    idx = np.flatnonzero(used).tolist()
    n = len(used)
    if not idx or len(idx) == n:
        return idx, len(idx) != n or n == 1
    starts = [i for i in idx if not used[(i - 1) % n]]  # a used row after an unused one
    if len(starts) != 1:
        # a server running MTP leaves each draft pass's row empty: single unused rows between passes. The
        # buffer's own gap is then the one longer run of unused rows, if there is exactly one (a serving
        # engineer's review: every MTP server's stat dump was flagged, as if it had wrapped)
        long = [i for i in starts if _unused_run(used, i) > 1]
        if len(long) != 1:
            return idx, False
        starts = long
    return [(starts[0] + k) % n for k in range(n) if used[(starts[0] + k) % n]], True


def _unused_run(used: np.ndarray, start: int) -> int:
    """How many unused rows lie just before row `start` of a circular buffer."""
    k = 0
    while k < len(used) and not used[(start - 1 - k) % len(used)]:
        k += 1
    return k


def _per_pass(dumps: list[Dump], shape: Shape, out: Path) -> dict:
    """global_physical_count per rank and pass -> logical counts, summed over ranks per pass; when
    every pass counted the same on every rank (each rank routed the whole batch: tensor parallel
    without an all-to-all backend), one rank's counts, not their sum."""
    per_rank: dict[int, list[np.ndarray]] = {}
    empty = drafts = 0
    owners: dict[tuple, Path] = {}
    for d in dumps:
        m = d.data["last_physical_to_logical_map"].numpy().astype(np.int64)
        for r in d.data["records"]:
            if draft_record(r):
                drafts += 1
                continue
            c = r["global_physical_count"].numpy().astype(np.int64)
            if shape.fused:  # count columns past the map: a fused shared expert's (sglang_fused.py)
                c = shape.fused.strip_counts(c, m.shape[1])
            if c.shape != m.shape:
                raise SGLangError(f"{d.path}: global_physical_count of pass {r.get('forward_pass_id')} has shape "
                                  f"{list(c.shape)}, the map {list(m.shape)}")
            if not c.any():  # see _recorded
                empty += 1
                continue
            _claim(owners, d, r, c.any(1))
            logical = np.zeros((m.shape[0], shape.n_experts), np.int64)
            np.add.at(logical, (np.arange(m.shape[0])[:, None].repeat(m.shape[1], 1), m), c)
            per_rank.setdefault(int(r["forward_pass_id"]), []).append(logical)
    if not per_rank:
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: every per_pass record counted nothing: no "
                          "expert was chosen while it recorded (was the recorder started before the traffic?)")
    repeated = (len({len(v) for v in per_rank.values()}) == 1 and min(map(len, per_rank.values()), default=0) > 1
                and all(all(np.array_equal(v[0], x) for x in v[1:]) for v in per_rank.values()))
    passes = {fp: v[0] if repeated else sum(v) for fp, v in per_rank.items()}
    if repeated and shape.fused:  # its slot counted once, as the routed counts are
        shape.fused.dropped //= len(next(iter(per_rank.values())))
    order = sorted(passes)
    layers = _moe_layers(shape, sum(passes.values()))
    w = PartWriter(out, 0, ["expert_load"])
    for step, fp in enumerate(order):
        c = passes[fp]
        w.append("expert_load", _load_rows(step, layers, c, int(c[layers[0]].sum() // shape.topk) if layers else 0), step)
    w.commit(max(len(order) - 1, 0))
    return {"passes": len(order), "forward_pass_ids": [order[0], order[-1]] if order else [], "moe_layers": layers,
            "topk_assumed": shape.args is None and not shape.topk_seen, "ranks_counted_the_same_tokens": repeated,
            "empty_records_skipped": empty, "draft_records_skipped": drafts}


def _per_token(dumps: list[Dump], shape: Shape, out: Path) -> dict:
    """Every recorded token: its input id, position and the logical top-k of each MoE layer."""
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
        sig = tuple((int(r["forward_pass_id"]), tuple(r["input_ids"]), tuple(r["positions"]),
                     hashlib.blake2b(lg.tobytes(), digest_size=16).digest()) for r, lg in zip(records, logical))
        if sig in seen:
            copies += 1
            continue
        seen.add(sig)
        for r, lg in zip(records, logical):
            _claim(owners, d, r, (lg >= 0).reshape(len(lg), -1).any(1))
            _keep_or_merge(kept, at, d, r, lg)
    if not kept:
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: no per_token record chose an expert (every "
                          "id -1): nothing was routed while it recorded")
    kept.sort(key=lambda x: x[0])
    _count_fused(shape, kept)
    vocab = (shape.args or {}).get("vocab_size")
    for fp, d, r, _ in kept if vocab else ():
        top = max(map(int, r["input_ids"]), default=-1)
        if top >= vocab:
            raise SGLangError(f"{d.path}: pass {fp} holds input id {top}, outside the vocabulary of --config "
                              f"(vocab_size={vocab}): is it this model's dump?")
    totals = np.zeros((shape.n_layers, shape.n_experts), np.int64)
    for _, _, _, lg in kept:
        for layer in range(lg.shape[0]):
            valid = lg[layer][lg[layer] >= 0]
            totals[layer] += np.bincount(valid, minlength=shape.n_experts)
    layers = _moe_layers(shape, totals)
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
        w.append("expert_load", _load_rows(step_of[fp], layers, counts, n), step_of[fp])
    w.commit(max(len(step_of) - 1, 0))
    return {"passes": len(step_of), "records": len(kept), "moe_layers": layers,
            "tokens": sum(n for _, n in per_pass.values()), "topk_assumed": False,
            "ranks_counted_the_same_tokens": copies > 0, "copies_skipped": copies, "empty_records_skipped": empty,
            "draft_records_skipped": drafts}


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
    """topk_ids_of_layer [L, n, K] physical -> logical (the dump's map), -1 kept."""
    ids = r["topk_ids_of_layer"].numpy().astype(np.int64)
    m = d.data["last_physical_to_logical_map"].numpy().astype(np.int64)
    if shape.fused:  # a fused shared expert's slot ids: set aside (sglang_fused.py)
        ids = shape.fused.strip_ids(ids, m.shape[1])
    if ids.ndim != 3 or ids.shape[0] != m.shape[0] or ids.shape[1] != len(r["input_ids"]):
        raise SGLangError(f"{d.path}: topk_ids_of_layer of pass {r['forward_pass_id']} has shape {list(ids.shape)}, "
                          f"expected [{m.shape[0]} layers, {len(r['input_ids'])} tokens, K]")
    if ids.max(initial=-1) >= m.shape[1]:
        raise SGLangError(f"{d.path}: physical expert id {int(ids.max())} is outside the map's {m.shape[1]} experts")
    out = np.full_like(ids, -1)
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
    counts = np.zeros((shape.n_layers, shape.n_experts), np.int64)
    np.add.at(counts, (np.repeat(np.asarray(layers, np.int64), chose.sum((1, 2))), flat), 1)
    return layer_of, t, flat, offsets, counts


def _ranks(dumps: list[Dump]) -> list[int]:
    """The ranks that recorded: per_pass / per_token records carry theirs (one file per rank per dump
    call, so a folder of two dumps of two ranks is four files but two ranks); a stat file its own."""
    found = {int(r["rank"]) for d in dumps for r in d.data.get("records", ()) if "rank" in r}
    return sorted(found or {int(d.data.get("rank", i)) for i, d in enumerate(dumps)})


# SGLang's per-rank dump files: <name>_<time.time()>_<rank>.pt, each rank stamping its own time
_RANK_FILE = re.compile(r"^(?P<name>.+?)_(?P<stamp>\d+(?:\.\d*)?)_(?P<rank>\d+)\.pt$")


def _gpus_unknown(dumps: list[Dump], seen: list[int]) -> str | None:
    """Why the ranks seen may not be the server's every GPU (None: as far as the files tell, they
    are): not 0..n-1; one rank only (rank 0 of a 1-GPU server and of an 8-GPU one look alike); files
    of other ranks lying beside the imported ones (any time stamp: each rank stamps its own)."""
    if seen != list(range(len(seen))):
        return f"the dump holds ranks {seen}, not 0..{len(seen) - 1}"
    if len(seen) == 1:
        return f"the dump holds one rank's records (rank {seen[0]})"
    imported = {d.path.resolve() for d in dumps}
    beside = set()
    for d in dumps:
        m = _RANK_FILE.match(d.path.name)
        if m:
            near = d.path.parent.glob(f"{glob.escape(m['name'])}_*_*.pt")
            beside |= {int(other["rank"]) for f in near if f.resolve() not in imported
                       and (other := _RANK_FILE.match(f.name)) and other["name"] == m["name"]}
    beside -= set(seen)
    if beside:
        return f"files of rank(s) {sorted(beside)} lie beside the imported ones"
    return None


def _gpus_of(dumps: list[Dump], gpus: int | None) -> int | None:
    """The server's expert-parallel size: `gpus` as given (more GPUs than ranks seen: some ranks'
    files were not imported; fewer: EP narrower than the world, which it divides, said when the
    ranks seen are not a multiple), else the ranks seen when nothing says they are not all (said on
    stderr), else None (said why)."""
    seen = _ranks(dumps)
    if gpus is not None:
        if gpus < len(seen) and len(seen) % gpus:
            print(f"note: --gpus {gpus} does not divide the {len(seen)} ranks that recorded, as an expert-parallel "
                  "size divides the server's: taken as given (the server had ranks whose files are elsewhere)",
                  file=sys.stderr)
        return gpus
    why = _gpus_unknown(dumps, seen)
    if why:
        print(f"note: {why}: the server's GPU count is unknown, so its placement is not imported (import every "
              "rank's file, or pass --gpus N)", file=sys.stderr)
        return None
    print(f"note: placement read as {len(seen)} expert-parallel GPUs, one per rank that recorded; pass --gpus N if "
          "the server had more (ranks whose files lie elsewhere) or another --ep-size (1 for tensor parallel only)",
          file=sys.stderr)
    return len(seen)


def _write_placement(dumps: list[Dump], shape: Shape, out: Path, layers: list[int],
                     gpus: int | None = None) -> dict | None:
    """The dump's physical-to-logical map (per_pass / per_token) as the `placement` table; the GPU of
    a physical slot is slot // (physical experts / GPUs), SGLang's layout, its expert-parallel rank.
    The GPUs: `_gpus_of`. None without a map, or when the GPU count is unknown."""
    with_map = sorted((x for x in dumps if "last_physical_to_logical_map" in x.data), key=_dump_time)
    if not with_map:
        return None
    d = with_map[-1]  # the last written: the placement the server held when the recording ended
    m = d.data["last_physical_to_logical_map"].numpy().astype(np.int64)
    if any(not np.array_equal(x.data["last_physical_to_logical_map"].numpy(), m) for x in with_map):
        print(f"note: the files hold different physical-to-logical maps (the server rebalanced between dumps?): "
              f"each file's expert ids are read with its own map; the placement table holds the last one "
              f"({d.path.name})", file=sys.stderr)
    gpus = _gpus_of(dumps, gpus)
    if gpus is None:
        return None
    P = m.shape[1]
    if P % gpus:
        raise SGLangError(f"{d.path}: {P} physical experts do not split over {gpus} GPUs")
    per = P // gpus  # `layers`: expert_load's (the config's MoE layers, or without one those that routed)
    w = PartWriter(out, 0, ["placement"])
    w.append("placement", {"layer": np.repeat(np.array(layers, np.int16), P), "physical": np.tile(np.arange(P, dtype=np.int32), len(layers)),
                           "logical": m[layers].reshape(-1).astype(np.int32),
                           "gpu": np.tile(np.arange(P, dtype=np.int32) // per, len(layers))}, 0)
    w.commit(0)
    return {"physical_experts": P, "gpus": gpus, "from": str(d.path.name)}
