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
(`first_k_dense_replace` of --config), or that counted nothing when no config is given, are skipped; with
--config, a dense layer that counted or a MoE layer that did not is refused (sglang_records.moe_layers). Files are read with
`torch.load(weights_only=True)`: a file that holds pickled Python objects is refused, never run.
A server that fuses the shared expert into the routed ones appends an id past them to every token's
top-k: told from the dump where it can be, that slot is set aside (probe/sglang_fused.py, run.json
`source.shared_fused`; docs/sglang.md has what SGLang's source does).
The per_pass and per_token records are read in probe/sglang_records.py.
"""

from __future__ import annotations

import glob
import numbers
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .job import (DEFAULT_RUNS, check_inputs_outside, check_out_parent, check_replaceable, check_run_place,
                  load_tokenizer, os_refusal, package_version, refuse_a_symlinked_out,
                  refuse_a_training_run)
from .sglang_dumps import DOMAIN, Dump, SGLangError, Shape, find_dumps, model_shape
from .sglang_fused import say as say_fused, source as fused_source
from .overwrite import replace_run, say_kept
from .sglang_records import load_rows, moe_layers, per_pass, per_token
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
        steps = {"per_pass": per_pass, "per_token": per_token}[mode](dumps, shape, tmp)
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
    if steps.get("topk_assumed"):
        print(f"note: no --config, and {mode} counts do not show the model's top-k: {shape.topk} assumed "
              "(DeepSeek-V3's), so expert_load's tokens per pass (assignments / top-k) and model_args' "
              "n_activated_experts rest on it, the loads and their shares do not (run.json source.topk_assumed); "
              "pass --config (the model's config.json) for its own", file=sys.stderr)


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
    parts, unknown = _stat_parts(dumps, buffer_size)
    if shape.fused:  # the experts past --config's n_routed_experts: a fused shared expert's (sglang_fused.py)
        parts = [(shape.fused.strip_counts(c, shape.n_experts), order) for c, order in parts]  # unused rows: 0
    if not sum(len(order) for _, order in parts):
        raise SGLangError(f"{', '.join(d.path.name for d in dumps[:3])}: every pass row of the stat dump is zero: "
                          "no expert was chosen while it recorded (was the recorder started before the traffic?)")
    if unknown:
        why = ("every row used: it may have wrapped, holding only the last passes" if all(unknown.values()) else
               "several runs of unused rows and no single longer gap among them: it may have wrapped while a "
               "server running MTP left its draft passes' rows empty")
        print(f"warning: {', '.join(list(unknown)[:3])}: SGLang's circular pass buffer has no single run of unused "
              f"rows, so the order its passes were written in is unknown ({why}). Totals are right; the order of "
              "passes (the Serving page's windows) is not. A server started with "
              "--expert-distribution-recorder-buffer-size -1 keeps every pass in order: import its dumps with "
              "--buffer-size -1.", file=sys.stderr)
    layers = moe_layers(shape, sum(c.sum(0, dtype=np.int64) for c, _ in parts), dumps)  # unused rows: 0
    w = PartWriter(out, 0, ["expert_load"])
    step = 0
    for c, order in parts:  # each dump's used rows in the order written, read where they lie (no copy of the dump)
        for i in order:
            row = c[i]  # as many experts as --config's (model_shape refuses fewer, strip_counts more)
            tokens = int(row[layers[0]].sum(dtype=np.int64) // shape.topk) if layers else 0
            w.append("expert_load", load_rows(step, layers, row, tokens), step)
            step += 1
    w.commit(max(step - 1, 0))
    rows = sum(len(d.data["logical_count"]) for d in dumps)
    return {"passes": step, "dropped_empty_passes": rows - step, "moe_layers": layers,
            "topk_assumed": shape.args is None and not shape.topk_seen, "pass_order_unknown": bool(unknown),
            "full_buffers": list(unknown), "buffer_size": buffer_size}


def _stat_parts(dumps: list[Dump], buffer_size: int | None) -> tuple[list, dict]:
    """Each dump's counts [buffer rows, L, E] with its used rows in the order SGLang wrote them, and the
    dumps whose order is unknown (-> whether every row was used). The rows stay where they lie: copied
    out and joined, a folder of 20 dumps of 1,000-pass buffers (1.2 GB) was held three times."""
    parts, unknown = [], {}
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
        parts.append((c, order))
        if not known:
            unknown[d.path.name] = bool(used.all())
    return parts, unknown


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


def _gpus_of(dumps: list[Dump], gpus: int | None, physical: int) -> int | None:
    """The server's expert-parallel size: `gpus` as given (more GPUs than ranks seen: some ranks'
    files were not imported; fewer: EP narrower than the world, which it divides, said when the
    ranks seen are not a multiple), else the ranks seen when nothing says they are not all (said on
    stderr), else None (said why). Ranks seen that do not split the map's `physical` slots are not
    all of a server's GPUs (SGLang puts as many on each): a folder of ranks 0-4 of a 288-slot
    server failed the whole import on the placement read from them ("do not split over 5 GPUs")."""
    seen = _ranks(dumps)
    if gpus is not None:
        if gpus < len(seen) and len(seen) % gpus:
            print(f"note: --gpus {gpus} does not divide the {len(seen)} ranks that recorded, as an expert-parallel "
                  "size divides the server's: taken as given (the server had ranks whose files are elsewhere)",
                  file=sys.stderr)
        return gpus
    why = _gpus_unknown(dumps, seen)
    if why is None and physical % len(seen):
        why = f"the map's {physical} physical experts do not split over the {len(seen)} ranks that recorded"
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
    P = m.shape[1]
    gpus = _gpus_of(dumps, gpus, P)
    if gpus is None:
        return None
    if P % gpus:
        raise SGLangError(f"{d.path}: {P} physical experts do not split over {gpus} GPUs")
    per = P // gpus  # `layers`: expert_load's (the config's MoE layers, or without one those that routed)
    w = PartWriter(out, 0, ["placement"])
    w.append("placement", {"layer": np.repeat(np.array(layers, np.int16), P), "physical": np.tile(np.arange(P, dtype=np.int32), len(layers)),
                           "logical": m[layers].reshape(-1).astype(np.int32),
                           "gpu": np.tile(np.arange(P, dtype=np.int32) // per, len(layers))}, 0)
    w.commit(0)
    return {"physical_experts": P, "gpus": gpus, "from": str(d.path.name)}
