"""Measuring every routed expert's causal importance: one baseline pass (losses and loads), then each
chosen expert of each chosen MoE layer removed in turn (reroute), G removals per forward pass, and
the `expert_importance` table (usage: the package docstring).

Batching: G removals run in ONE forward pass over the batch repeated G times along the batch
dimension (`Batch(index, windows * G)`: tokens.repeat(G, 1), lengths.repeat(G)). The gate sees
the [G*B, S, D] activations flattened row-major to [T = G*B*S, D] (`model.moe.MoE.forward`), so
token rows g*B*S .. (g+1)*B*S - 1 are block g, and the hook on that layer's
`gate.hook_select_scores` sets expert e_g's selection score to -inf on those rows only: per block,
exactly what `analyses.ablate.reroute_hook` does for the whole batch. Rows never interact (each
row's logits are that row alone; the experts have no capacity limit), so block g's losses are
those of the batch with e_g removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from analyses.ablate.inputs import (AblateOptions, check_finished, check_out, inputs_key, job_defaults, job_meta,
                                    sample_windows, start_job)
from analyses.ablate.run import LOSS, add_loss, reduce_entry, saved_or_baseline, warn_nonfinite
from analyses.ablate.sweep import NONFINITE
from analyses.ablate.select import ALL, AblationError, RouterShape, also_removed, check_routable
from analyses.ablate.sweep import Commits
from analyses.importance import TOKEN_BUDGET
from probe.corpus import CorpusError
from probe.recorders import Batch, model_token_nll
from probe.schema import TABLES
from probe.writer import replacing, table_lock, updating_run_json, write_result_part

from .table import TABLE, ImportanceError


# ------------------------------------------------------------------------------ selection
def id_ranges(value, flag: str) -> list[tuple[int, int]] | None:
    """`"0-7,12"` (or a list of ints) -> its (first, last) ranges, as given; None stays None (= all)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [(int(value), int(value))]
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ImportanceError(f"{flag} {value!r}: expected ids like 0-7,12")
    out = []
    for item in items:
        text = str(item).strip()
        lo, dash, hi = text.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or isinstance(item, bool):
            raise ImportanceError(f"{flag} {value!r}: expected ids like 0-7,12 (got {text!r})")
        if dash and int(hi) < int(lo):
            raise ImportanceError(f"{flag} {text}: empty range (the end is below the start)")
        out.append((int(lo), int(hi or lo)))
    if not out:
        raise ImportanceError(f"{flag} {value!r}: no ids given")
    return out


def parse_ids(value, flag: str, limit: int | None = None) -> list[int] | None:
    """`"0-7,12"` (or a list of ints) -> sorted unique ids; None stays None (= all). With `limit`, a range
    stops at the first id >= limit, which the caller refuses: 0-1000000000000 was expanded whole and hung."""
    ranges = id_ranges(value, flag)
    if ranges is None:
        return None
    return sorted({i for lo, hi in ranges for i in range(lo, (hi if limit is None else min(hi, max(lo, limit))) + 1)})


def _out_of_range(ranges: list[tuple[int, int]], limit: int) -> str | None:
    """The ids >= limit in `ranges`, as a message names them: one id, a..b, or the first five."""
    bad = sorted((max(lo, limit), hi) for lo, hi in ranges if hi >= limit)
    blocks: list[list[int]] = []
    for lo, hi in bad:  # merged where they touch or overlap
        if blocks and lo <= blocks[-1][1] + 1:
            blocks[-1][1] = max(blocks[-1][1], hi)
        else:
            blocks.append([lo, hi])
    if not blocks:
        return None
    if len(blocks) == 1:
        lo, hi = blocks[0]
        return str(lo) if lo == hi else f"{lo}..{hi}"
    first = [i for lo, hi in blocks for i in range(lo, min(hi, lo + 5) + 1)][:6]
    return ",".join(map(str, first[:5])) + (",..." if len(first) > 5 else "")


def check_selection(shape: RouterShape, layers=None, experts=None) -> tuple[list[int], list[int]]:
    """(MoE layers, experts), defaults all of them; refuses dense or unknown layers, experts out of
    range, and an expert whose removal the routing guard refuses (`check_routable`)."""
    layers = parse_ids(layers, "--layers", shape.n_layers)  # check_layer names the first out of range
    ranges = id_ranges(experts, "--experts")
    try:
        layers = [shape.check_layer(x, "--layers") for x in layers] if layers is not None else shape.moe_layers
    except AblationError as e:
        raise ImportanceError(str(e)) from None
    if ranges is not None and (given := _out_of_range(ranges, shape.n_experts)):  # named from the ranges given,
        raise ImportanceError(f"--experts: {given} out of range: the model's MoE layers have experts "  # not a
                              f"0..{shape.n_experts - 1}")  # list of every id (0-1000000000000 hung)
    experts = parse_ids(experts, "--experts") if ranges is not None else list(range(shape.n_experts))
    for layer in layers:
        for e in experts:
            try:
                check_routable(shape, layer, [e])
            except AblationError as err:
                raise ImportanceError(f"--experts {e}: cannot be removed alone ({err})") from None
            if more := also_removed(shape, [e]):
                raise ImportanceError(
                    f"--experts {e}: cannot be removed alone: its group (of {shape.n_experts // shape.n_groups}) "
                    f"would keep only expert(s) {more}, and a group needs two enabled experts to be scored, so "
                    f"rerouting would remove them too and the row would measure {[e, *more]}")
    return layers, experts


def default_group(batch_tokens: int, n_experts: int, budget: int = TOKEN_BUDGET) -> int:
    """Removals per forward pass: as many batch copies as fit `budget` token rows (at least 1, at
    most the number of experts)."""
    return max(1, min(n_experts, budget // max(1, batch_tokens)))


# ------------------------------------------------------------------------------ measuring
def rows_reroute_hook(experts_G: list[int], rows_per_block: int):
    """hook_select_scores of a batch repeated len(experts_G) times: on the token rows of block g
    (g*rows_per_block .. (g+1)*rows_per_block - 1), expert experts_G[g]'s score to -inf."""
    idx_T1 = torch.tensor(experts_G, dtype=torch.long).repeat_interleave(rows_per_block)[:, None]

    def fn(select_TE: torch.Tensor, hook) -> torch.Tensor:
        if select_TE.shape[0] != idx_T1.shape[0]:
            raise RuntimeError(f"{hook.name}: {select_TE.shape[0]} token rows, expected {len(experts_G)} blocks "
                               f"of {rows_per_block}")
        return select_TE.scatter(1, idx_T1.to(select_TE.device), float("-inf"))
    return fn


class _Reached(Exception):
    """Raised by a hook to end a forward pass once it has what it needs."""


@torch.no_grad()
def block_input(model, batch: Batch, layer: int) -> torch.Tensor:
    """The residual stream entering block `layer` [B, S, D]; the pass stops there (the later
    blocks and the head never run)."""
    got: dict[str, torch.Tensor] = {}

    def grab(h, hook):
        got["h"] = h
        raise _Reached

    dev = model.embed.weight.device
    try:
        with model.hooks([(f"layers.{layer}.hook_resid_pre", grab)]):
            model(batch.tokens.to(dev), lengths=batch.lengths.to(dev))
    except _Reached:
        pass
    return got["h"]


@torch.no_grad()
def suffix_nll(model, big: Batch, layer: int, resid: torch.Tensor, hooks: list) -> torch.Tensor:
    """Per-token surprisal [B', S] of `big` computed from block `layer` on (resid: that block's input)."""
    with model.hooks(hooks):
        return model_token_nll(model, big, start_at_layer=layer, resid=resid)


def removal_sums(model, batches: list[Batch], stored: list, layers: list[int], experts: list[int], group: int,
                 n_domains: int, tick) -> np.ndarray:
    """Per (layer, expert, domain): the loss sums of `LOSS` (surprisal, scored tokens, NaN or inf ones)
    with that expert removed at that layer, `group` removals per forward pass -> [len(layers),
    len(experts), D, len(LOSS)] float64. The blocks
    before the layer run once per batch (`block_input`); each group of removals runs only the
    blocks from the layer on, on that input repeated (`suffix_nll`)."""
    acc = np.zeros((len(layers), len(experts), n_domains, len(LOSS)))
    chunks = [list(range(s, min(s + group, len(experts)))) for s in range(0, len(experts), group)]
    for li, layer in enumerate(layers):
        name = f"layers.{layer}.ffn.gate.hook_select_scores"
        for batch, (_, _, dom_nll) in zip(batches, stored):
            B = batch.tokens.shape[0]
            h = block_input(model, batch, layer)
            for chunk in chunks:
                big = Batch(batch.index, batch.windows * len(chunk))
                hook = rows_reroute_hook([experts[k] for k in chunk], batch.tokens.numel())
                nll = suffix_nll(model, big, layer, h.repeat(len(chunk), 1, 1), [(name, hook)])
                for g, k in enumerate(chunk):
                    add_loss(acc[li, k], nll[g * B: (g + 1) * B], dom_nll, batch.scored)
                tick()
    return acc


def measure(model, batches: list[Batch], layers=None, experts=None, *, domains: list[str] | None = None,
            group: int | None = None, world=None, progress=None, commits=None):
    """Remove each of `experts` (default all) at each of `layers` (default every MoE layer) in turn,
    reroute mode, and compare the loss with one shared baseline pass over `batches`.

    Returns the `expert_importance` rows (DataFrame): per layer, expert and domain (plus `all`).
    batches: this replica's share (all of them in one process); domains: every domain of the corpus,
    the same on every rank (default: those of `batches`); group: removals per forward pass (default
    from TOKEN_BUDGET); world: sums over its replicas (None: one process). commits: a `LayerCommits`
    that commits the baseline and each layer as it finishes and hands back what an interrupted
    attempt of the same job committed (None: nothing is written).
    """
    import pandas as pd

    shape = RouterShape.of(model.args)
    layers, experts = check_selection(shape, layers, experts)
    domains = domains if domains is not None else sorted({w.domain for b in batches for w in b.windows})
    if group is None:
        group = default_group(max((b.tokens.numel() for b in batches), default=1), len(experts))
    if group < 1:
        raise ImportanceError(f"--group {group}: must be >= 1")
    tick = progress or (lambda: None)
    base_acc, base_loads, stored = saved_or_baseline(model, batches, domains, shape, tick, world, True, commits)
    warn_nonfinite("importance, the baseline pass (nothing removed)", base_acc, domains, world)
    moe_index = [shape.moe_layers.index(x) for x in layers]
    loads_DLX, assigned_DL = base_loads[:, moe_index][:, :, experts], base_loads[:, moe_index].sum(-1)
    rows = {}
    for li, layer in enumerate(layers):  # a layer at a time: the unit an interrupted job keeps
        rows[layer] = commits.take(layer) if commits is not None else None
        if rows[layer] is None:
            acc = removal_sums(model, batches, stored, [layer], experts, group, len(domains), tick)[0]
            acc = reduce_entry(acc, li, len(layers), world)  # as the whole [L', X, D, 3] at once: bit for bit
            _warn_removals(layer, experts, acc, domains, world)
            rows[layer] = layer_rows(layer, experts, domains, base_acc, loads_DLX[:, li], assigned_DL[:, li], acc)
            if commits is not None:
                commits.commit(layer, rows[layer])
    if commits is not None:
        commits.finish()
    return pd.DataFrame([r for layer in layers for r in rows[layer]], columns=TABLES[TABLE].names)


def _warn_removals(layer: int, experts: list[int], acc: np.ndarray, domains: list[str], world) -> None:
    """One line for a layer whose removals (acc [X, D, len(LOSS)]) gave scored tokens a NaN or inf
    surprisal, naming those experts (`warn_nonfinite`)."""
    bad = [k for k in range(len(experts)) if acc[k, :, NONFINITE].sum()]
    if not bad:
        return
    named = ", ".join(str(experts[k]) for k in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    what = f"importance, layer {layer}, expert{'s' * (len(bad) > 1)} {named} removed"
    if len(bad) > 1:
        what += f" (each in turn: the tokens counted over the {len(bad)} removals)"
    warn_nonfinite(what, acc[bad], domains, world)


def layer_rows(layer, experts, domains, base_acc, loads_DX, assigned_D, acc) -> list[dict]:
    """One layer's rows: base_acc [D, len(LOSS)], loads of the chosen experts [D, X], all assignments
    [D] (routed tokens x K), acc [X, D, len(LOSS)]."""
    groups = [(ALL, slice(None))] + [(d, j) for j, d in enumerate(domains)]
    rows = []
    for k, e in enumerate(experts):
        for dom, j in groups:
            (b_nll, n), (nll, n_abl) = (x.reshape(-1, len(LOSS)).sum(0)[:2] for x in (base_acc[j], acc[k, j]))
            assigned = int(np.sum(assigned_D[j]))
            if n == 0 or assigned == 0:
                continue
            load = int(np.sum(loads_DX[j, k]))
            rows.append({"layer": layer, "expert": e, "domain": dom, "tokens": int(n), "load": load,
                         "load_share": load / assigned, "baseline_loss": b_nll / n, "loss": nll / n_abl,
                         "delta": nll / n_abl - b_nll / n})
    return rows


# ---------------------------------------------------------------------------------- the job
@dataclass
class ImportanceOptions(AblateOptions):
    """`analyses.ablate.AblateOptions` (inputs, windows, how the model runs; loads_from is unused)
    plus what to remove. domain_tokens None: no per-domain cap (the run's own tokens)."""
    layers: str | list[int] | None = None  # MoE layers, e.g. "1,3" (default all)
    experts: str | list[int] | None = None  # routed experts, e.g. "0-7,12" (default all)
    group: int | None = None  # removals per forward pass (default: from token_budget)
    token_budget: int = TOKEN_BUDGET


def _prepare(opts: ImportanceOptions):
    """Options resolved and every input checked before anything big loads: (opts, ckpt, corpus,
    out, model args, layers, experts)."""
    from probe.job import checkpoint_args, resolve_paths, window_length

    opts, info = job_defaults(opts)
    check_finished(opts.run, info, ImportanceError)
    if opts.group is not None and opts.group < 1:
        raise ImportanceError(f"--group {opts.group}: must be >= 1")
    ckpt, corpus, out = resolve_paths(opts.ckpt, opts.corpus, opts.out or opts.run, error=ImportanceError)
    check_out(out, corpus, ckpt, opts.run)
    args = checkpoint_args(ckpt, ImportanceError)
    opts.seq_len = window_length(opts.seq_len, args, ImportanceError)
    layers, experts = check_selection(RouterShape.of(args), opts.layers, opts.experts)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    opts.group = opts.group or default_group(opts.batch_size * opts.seq_len, len(experts), opts.token_budget)
    return opts, ckpt, corpus, out, args, layers, experts


def _sample(opts: ImportanceOptions, ckpt: Path, corpus: Path, args) -> tuple[list, list[str]]:
    """The windows (--domain-tokens of each domain, within the run's own windows unless --max-tokens is
    given: `sample_windows`) and the domains among them."""
    from probe.job import load_tokenizer

    return sample_windows(opts, corpus, load_tokenizer(opts.tokenizer, ckpt, args.vocab_size, ImportanceError), args)


def importance(opts: ImportanceOptions):
    """Run the job; returns (output run directory, DataFrame of the rows). Rank 0 writes, a layer at a
    time (`LayerCommits`): Ctrl-C keeps the finished layers, and rerunning the same command computes
    only the rest (`opts.fresh`: all of them again)."""
    opts, ckpt, corpus, out, args, layers, experts = _prepare(opts)
    windows, domains = _sample(opts, ckpt, corpus, args)
    world, batches, m = start_job(opts, ckpt, args, windows, corpus)
    meta = job_meta(ckpt, corpus, opts, windows) | {"layers": layers, "experts": experts, "group": opts.group,
                                           "world": world.describe()}
    commits = LayerCommits(out, layers, meta, args, world, fresh=opts.fresh)
    commits.note_start()
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm
        per_layer = -(-len(experts) // opts.group)
        passes = (0 if commits.baseline_saved() else 1) + commits.to_compute() * per_layer
        bar = tqdm(total=len(batches) * passes, unit="pass", desc="importance", dynamic_ncols=True)
    with commits.computing(bar):
        df = measure(m, batches, layers, experts, domains=domains, group=opts.group, world=world,
                     progress=bar.update if bar is not None else None, commits=commits)
    return out, df


class LayerCommits(Commits):
    """An importance job's part committed a layer at a time (`analyses.ablate.sweep.Commits`): each
    commit rewrites the part whole and takes the rows it measures again out of older parts
    (`write_importance`); run.json's entry lists the layers done (`measured_layers`) and, until the
    last, `pending`. The saved baseline keeps the loss sums and loads, not the routing."""

    TABLE, PARTS, FIELD = TABLE, "importance_parts", "measured_layers"
    NOUN, COMMAND, WHAT, KEEP_ROUTING = "layers", "importance", "measurement", False

    def __init__(self, out, layers: list[int], meta: dict, args, world, fresh: bool = False) -> None:
        super().__init__(out, layers, part_key(meta), meta, args, world, fresh)

    def unit_of(self, row: dict) -> int:
        return row["layer"]

    def write_part(self, df, note: dict) -> None:
        write_importance(self.out, df, self.meta, self.args, note)


def part_key(meta: dict) -> dict:
    """What names the part file: what was measured and how (not the group size or the ranks'
    layout, which change nothing), so repeating a command replaces its own part."""
    return {k: meta[k] for k in ("layers", "experts", "options")} | inputs_key(meta)


def write_importance(out: str | Path, df, meta: dict, args=None, note: dict | None = None) -> Path:
    """Write `df` as one part of `out/expert_importance/` (temporary name, then rename) and note it
    in run.json under `importance_parts`; a directory without run.json becomes a run holding only
    this table (probe.writer.write_result_part). The newest measurement of an expert in a domain
    replaces older ones: their rows leave the older parts (`supersede`). `note`: more of the part's
    run.json entry (an unfinished job's layers done and pending, `LayerCommits`)."""
    with table_lock(out, TABLE):  # two jobs superseding each other at once deleted both (a review)
        part = write_result_part(out, TABLE, df, part_key(meta), meta, "importance_parts",
                                 (note or {}) | {"rows": len(df)}, args)
        supersede(Path(out), part, df)
    return part


def supersede(out: Path, part: Path, df) -> int:
    """Remove from every other part of `out/expert_importance/` the rows of a (layer, expert,
    domain) that `df` (part `part`) measures again: each part is rewritten whole (temporary name,
    then rename) or deleted when nothing is left, and run.json's `importance_parts` follows. Two
    measurements of one expert side by side (e.g. `analyses.importance` with its defaults, then a
    report's own at another token budget) made every reader of the table refuse it (a review).
    Returns the rows removed."""
    import pyarrow.parquet as pq

    from analyses.importance.analysis import KEY

    new = set(df[KEY].itertuples(index=False, name=None))
    removed, left, lost = 0, {}, {}
    for f in sorted((out / TABLE).glob("*.parquet")):
        if f == part:
            continue
        old = pq.read_table(f).to_pandas()
        keep = [k not in new for k in old[KEY].itertuples(index=False, name=None)]
        if all(keep):
            continue
        removed += len(old) - sum(keep)
        lost[f.stem] = {int(x) for x, k in zip(old.layer, keep) if not k}
        if any(keep):
            with replacing(f) as tmp:
                pq.write_table(pa.Table.from_pandas(old[keep], schema=TABLES[TABLE], preserve_index=False), tmp,
                               compression="zstd")
        else:
            f.unlink()
        left[f.stem] = sum(keep)
    if left:
        with updating_run_json(out) as info:
            parts = info.get("importance_parts", {})
            for stem, n in left.items():
                if "pending" in (parts.get(stem) or {}):
                    _unfinished_lost(parts[stem], lost[stem], n)
                elif n:
                    parts.setdefault(stem, {})["rows"] = n
                else:
                    parts.pop(stem, None)
    return removed


def _unfinished_lost(entry: dict, layers: set[int], rows: int) -> None:
    """An unfinished job's part (`LayerCommits`) lost rows of `layers` to a newer measurement: they
    are no longer done, so that a rerun computes them again instead of taking a layer with rows
    missing; the entry stays (with its saved baseline) even when its part went."""
    field = LayerCommits.FIELD
    entry[field] = [x for x in entry.get(field) or [] if x not in layers]
    entry["pending"] = [x for x in entry.get("layers") or [] if x not in entry[field]]
    entry["rows"] = rows
