"""Running ablations over a corpus: the baseline and every ablation pass over the same batches,
per-domain losses and routing changes, the `ablations` table (usage: the package docstring). The job's
inputs are inputs.py's; the loads that rank --top, loads.py's."""


from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from probe.corpus import CorpusError
from probe.recorders import Batch, model_token_nll
from probe.schema import TABLES
from probe.writer import write_result_part

# the job's inputs and --top's loads moved to inputs.py and loads.py; imports of them from here still work
from .inputs import (AblateOptions, check_finished, check_out, inputs_key, job_defaults, job_meta,  # noqa: F401
                     limit_per_domain, replica_batches, sample_windows, start_job)
from .loads import loads_from_run, run_loads  # noqa: F401
from .select import ALL, Ablation, AblationError, Loads, Plan, RouterShape, plan_hooks, resolve
from .spec import check_names, check_repeats
from .sweep import LOSS, N, NLL, NONFINITE, Sweep

ACC = LOSS + ("pairs", "changed", "replaced")  # per-domain sums of an ablation pass
PAIRS, CHANGED, REPLACED = (ACC.index(c) for c in ("pairs", "changed", "replaced"))


# ------------------------------------------------------------------------------ evaluation
def _domains_of(batch: Batch, index: dict[str, int]) -> np.ndarray:
    """Domain index of every valid token of the batch (row-major, as `valid` flattens)."""
    d = np.array([index[w.domain] for w in batch.windows])
    return np.repeat(d, batch.tokens.shape[1])[batch.valid.reshape(-1).numpy()]


@torch.no_grad()
def forward_batch(model, batch: Batch, moe_layers: list[int], hooks: list) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (per-token surprisal [B, S] with NaN at pos 0 / padding (`Batch.scored` tells them from a NaN
    of the model's), top-k ids [L, n_valid, K] int16)."""
    cap: dict[str, torch.Tensor] = {}

    def save(t, hook):
        cap[hook.name] = t.cpu()

    names = [f"layers.{i}.ffn.gate.hook_topk_ids" for i in moe_layers]
    with model.hooks(hooks + [(n, save) for n in names]):
        nll = model_token_nll(model, batch)
    valid = batch.valid.reshape(-1)
    ids = torch.stack([cap[n][valid] for n in names]) if names else torch.empty(0, 0, 0)
    return nll, ids.to(torch.int16)


def add_loss(acc_D3: np.ndarray, nll: torch.Tensor, dom: np.ndarray, scored: torch.Tensor) -> None:
    """Per domain (float64, the columns of `LOSS`): acc[:, NLL] += the surprisal sums of the scored tokens
    (`scored` [B, S]: `Batch.scored`), acc[:, N] += scored tokens, acc[:, NONFINITE] += those whose surprisal
    is NaN or inf. A scored token's surprisal is summed as the model gave it: a NaN of the model makes its
    domain's mean NaN, where telling scored tokens by isnan dropped it and the mean covered fewer
    tokens than the baseline's, a normal-looking number (`warn_nonfinite` says so)."""
    flat, ok = nll.reshape(-1).double().numpy(), scored.reshape(-1).numpy()
    D = len(acc_D3)
    acc_D3[:, NLL] += np.bincount(dom[ok], flat[ok], D)
    acc_D3[:, N] += np.bincount(dom[ok], minlength=D)
    acc_D3[:, NONFINITE] += np.bincount(dom[ok & ~np.isfinite(flat)], minlength=D)


def warn_nonfinite(what: str, sums: np.ndarray, domains: list[str], world=None) -> None:
    """One line on stderr (rank 0) where `what`'s pass (or passes) gave scored tokens a NaN or inf surprisal:
    `sums` [..., D, C] are per-domain sums whose first columns are `LOSS` (add_loss's), added up over the
    leading axes. The model's own output, kept in the sums, so those domains' rows and `all`'s hold a NaN
    (or inf) loss."""
    per_domain = sums.reshape(-1, len(domains), sums.shape[-1]).sum(0)
    bad_D, scored = per_domain[:, NONFINITE], int(per_domain[:, N].sum())
    if not bad_D.sum() or (world is not None and world.rank != 0):
        return
    where = ", ".join(d for d, n in zip(domains, bad_D) if n)
    print(f"warning: {what}: {int(bad_D.sum()):,} of {scored:,} scored tokens got a NaN or infinite surprisal from "
          f"the model (domain {where}): those rows' loss, and the {ALL!r} row's, is NaN or inf in the table",
          file=sys.stderr, flush=True)


def _pairs_changed(ids, base, layers: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (top-k sets differing from the baseline's, experts replaced), summed over `layers`."""
    a, b = ids[layers].long(), base[layers].long()  # [L', n, K]
    changed = (a.sort(-1).values != b.sort(-1).values).any(-1)
    kept = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1)
    return changed.sum(0).double(), (a.shape[-1] - kept).sum(0).double()


def evaluate(model, batches: list[Batch], ablations: list[Ablation], *, domains: list[str] | None = None,
             loads: Loads | None = None, loads_source: str = "given", world=None, progress=None, sweep=None):
    """Run the baseline and every ablation over `batches`; returns (DataFrame of `ablations` rows, plans).

    batches: this replica's share (all of them in one process). domains: every domain of the
    corpus, the same list on every rank (default: those of `batches`). loads: {domain or "all":
    [n_moe_layers, E] counts} for top-N; None = measured on the baseline pass (summed over ranks).
    sweep: an `analyses.ablate.sweep.Sweep` that commits the baseline and each ablation as it
    finishes and hands back what an interrupted attempt of the same sweep committed (None: nothing
    is written).
    """
    import pandas as pd

    check_names(ablations)
    shape = RouterShape.of(model.args)
    domains = domains if domains is not None else sorted({w.domain for b in batches for w in b.windows})
    tick = progress or (lambda: None)
    # plans that need no loads are resolved (and refused) before any forward pass
    plans: dict[str, Plan] = {a.name: resolve(a, shape, loads, loads_source) for a in ablations
                              if not a.needs_loads or loads is not None}
    base_acc, base_loads, stored = saved_or_baseline(model, batches, domains, shape, tick, world, loads is None,
                                                     sweep)
    warn_nonfinite("the baseline pass (nothing ablated)", base_acc, domains, world)
    if loads is None:
        loads = {d: base_loads[i] for i, d in enumerate(domains)} | {ALL: base_loads.sum(0)}
        loads_source = "baseline"
    for a in ablations:
        if a.name not in plans:
            plans[a.name] = resolve(a, shape, loads, loads_source)
    rows = {a.name: sweep.take(a.name, plans[a.name].spec()) if sweep is not None else None for a in ablations}
    for i, a in enumerate(ablations):
        if rows[a.name] is None:
            acc = _ablated(model, batches, stored, plans[a.name], shape, len(domains), tick)
            acc = reduce_entry(acc, i, len(ablations), world)
            warn_nonfinite(f"ablation {a.name!r}", acc, domains, world)
            rows[a.name] = _rows(a, plans[a.name], base_acc, acc, domains, shape.moe_layers)
            if sweep is not None:
                sweep.commit(a.name, rows[a.name])
    if sweep is not None:
        sweep.finish()
    df = pd.DataFrame([r for a in ablations for r in rows[a.name]], columns=TABLES["ablations"].names)
    return df, [plans[a.name] for a in ablations]


def saved_or_baseline(model, batches: list[Batch], domains: list[str], shape: RouterShape, tick, world,
                      measure_loads: bool, sweep):
    """The baseline pass's loss sums (summed over the replicas), loads (summed when `measure_loads`)
    and per-batch routing (`baseline_pass`); the one an interrupted attempt of `sweep` (a
    `sweep.Commits`: ablate's or importance's) saved if there is one, else computed and saved for a
    rerun (a restored one's routing is None where the job keeps none)."""
    saved = sweep.restore_baseline(batches, domains) if sweep is not None else None
    if saved is not None:
        base_acc, base_loads, ids = saved
        index = {d: i for i, d in enumerate(domains)}
        return base_acc, base_loads, [(x, *_batch_domains(b, index)) for x, b in zip(ids, batches)]
    base_acc, base_loads, stored = baseline_pass(model, batches, domains, shape, tick)
    base_acc = _allreduce(base_acc, world)
    if measure_loads:
        base_loads = _allreduce(base_loads, world)
    if sweep is not None:
        sweep.save_baseline(base_acc, base_loads, [s[0] for s in stored], batches, domains)
    return base_acc, base_loads, stored


def reduce_entry(acc: np.ndarray, i: int, n: int, world) -> np.ndarray:
    """Ablation i's sums [D, len(ACC)] summed over the replicas, reduced at its place in an array of
    the whole sweep's n ablations: the sums a reduction of the whole sweep at once gives (the same
    tensor and position, hence the same order of additions), bit for bit."""
    if world is None:
        return acc
    full = np.zeros((n, *acc.shape))
    full[i] = acc
    return _allreduce(full, world)[i]


def _batch_domains(batch: Batch, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(domain of every valid token, domain of every position [B * S]) of a batch."""
    return _domains_of(batch, index), np.repeat([index[w.domain] for w in batch.windows], batch.tokens.shape[1])


def baseline_pass(model, batches: list[Batch], domains: list[str], shape: RouterShape, tick):
    """The pass with nothing disabled: per-domain loss sums [D, len(LOSS)], loads [D, L, E], and each batch's
    top-k ids and token domains (what the ablated passes compare against)."""
    moe, E = shape.moe_layers, shape.n_experts
    index = {d: i for i, d in enumerate(domains)}
    D = len(domains)
    base_acc, base_loads, stored = np.zeros((D, len(LOSS))), np.zeros((D, len(moe), E), np.int64), []
    for batch in batches:
        nll, ids = forward_batch(model, batch, moe, [])
        dom_tok, dom_nll = _batch_domains(batch, index)
        add_loss(base_acc, nll, dom_nll, batch.scored)
        for j in range(len(moe)):
            key = torch.from_numpy(dom_tok.astype(np.int64))[:, None] * E + ids[j].long()
            base_loads[:, j] += torch.bincount(key.reshape(-1), minlength=D * E).reshape(D, E).numpy()
        stored.append((ids, dom_tok, dom_nll))
        tick()
    return base_acc, base_loads, stored


def _ablated(model, batches: list[Batch], stored: list, plan: Plan, shape: RouterShape, D: int, tick) -> np.ndarray:
    """One ablation's pass: per-domain sums [D, len(ACC)] (loss, tokens, NaN or inf tokens, compared
    pairs, changed top-k sets, replaced experts)."""
    moe, K = shape.moe_layers, shape.topk
    acc = np.zeros((D, len(ACC)))
    hooks = plan_hooks(model, plan)
    first = plan.first_layer
    # routing is compared at the MoE layers after the first ablated layer (all when nothing is)
    down = slice(0 if first is None else moe.index(first) + 1, None)
    n_down = len(moe[down])
    for batch, (base_ids, dom_tok, dom_nll) in zip(batches, stored):
        nll, ids = forward_batch(model, batch, moe, hooks)
        add_loss(acc, nll, dom_nll, batch.scored)
        if n_down:
            changed, replaced = _pairs_changed(ids, base_ids, down)
            acc[:, PAIRS] += np.bincount(dom_tok, minlength=D) * n_down
            acc[:, CHANGED] += np.bincount(dom_tok, changed.numpy(), D)
            acc[:, REPLACED] += np.bincount(dom_tok, replaced.numpy() / K, D)
        tick()
    return acc


def _rows(a: Ablation, plan: Plan, base_acc: np.ndarray, acc: np.ndarray, domains: list[str],
          moe: list[int]) -> list[dict]:
    """An ablation's rows of the `ablations` table: one for all tokens and one per domain."""
    first = plan.first_layer
    n_down = len([x for x in moe if first is None or x > first])
    rows = []
    for d, (b, s) in [(ALL, (base_acc.sum(0), acc.sum(0)))] + [
            (dom, (base_acc[j], acc[j])) for j, dom in enumerate(domains)]:
        if s[N] == 0:
            continue
        loss, base = s[NLL] / s[N], b[NLL] / b[N]
        rows.append({"ablation": a.name, "spec": plan.spec(), "mode": a.mode, "renormalise": a.renormalise,
                     "shared": bool(plan.shared_layers), "n_disabled": plan.n_disabled, "token_top": a.token_top,
                     "domain": d,
                     "tokens": int(s[N]), "loss": loss, "baseline_loss": base, "delta": loss - base,
                     "routing_changed": s[CHANGED] / s[PAIRS] if s[PAIRS] else None,
                     "experts_changed": s[REPLACED] / s[PAIRS] if s[PAIRS] else None, "downstream_layers": n_down})
    return rows


def _allreduce(x: np.ndarray, world) -> np.ndarray:
    """Sum over the replicas (the ranks of one sharded model hold the same sums; one counts)."""
    return x if world is None else world.sum_replicas(x)


# ---------------------------------------------------------------------------------- the job
def ablate(opts: AblateOptions, ablations: list[Ablation]):
    """Run the job; returns (output run directory, DataFrame of the rows). Rank 0 writes."""
    from probe.job import checkpoint_args, load_tokenizer, resolve_paths, window_length

    if not ablations:
        raise AblationError("nothing to ablate: pass --experts, --top, --random, --shared or --spec")
    check_names(ablations)
    check_repeats(ablations)
    opts, info = job_defaults(opts)
    check_finished(opts.run, info)
    ckpt, corpus, out = resolve_paths(opts.ckpt, opts.corpus, opts.out or opts.run, error=AblationError)
    check_out(out, corpus, ckpt, opts.run)
    args = checkpoint_args(ckpt, AblationError)
    opts.seq_len = window_length(opts.seq_len, args, AblationError)
    shape = RouterShape.of(args)
    # the layers --top ranks: each such ablation's --layers, else every MoE layer
    ranked = sorted({x for a in ablations if a.needs_loads for x in (a.layers or shape.moe_layers)})
    loads, source, partial = run_loads(opts, info, shape, any(a.needs_loads for a in ablations), ranked)
    for a in ablations:  # refuse bad selections before loading anything big
        if (a.needs_loads and loads is None and a.top is not None and shape.n_experts - a.top < shape.topk
                and a.mode == "reroute"):
            # known whatever the loads: with the baseline's loads it was found after that pass (a review)
            raise AblationError(f"ablation {a.name!r}: top {a.top} leaves {shape.n_experts - a.top} of the "
                                f"{shape.n_experts} experts a layer, fewer than the {shape.topk} each token is "
                                "routed to (mode reroute)")
        if not a.needs_loads or loads is not None:
            try:
                resolve(a, shape, loads, source)
            except AblationError as e:  # each error names its ablation (one of a sweep's twenty)
                raise AblationError(str(e) if str(e).startswith("ablation ") else f"ablation {a.name!r}: {e}") \
                    from None

    tok = load_tokenizer(opts.tokenizer, ckpt, args.vocab_size, AblationError)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    windows, domains = sample_windows(opts, corpus, tok, args)
    for a in ablations:  # a top-N of a domain the sample lacks: said before the passes, not after the first
        if a.domain is not None and loads is None and a.domain not in domains:
            raise AblationError(f"ablation {a.name!r}: no tokens of domain {a.domain!r} in the sample; its domains "
                                f"are {domains}")
    what = "the ablations (--top, --random, --experts, --spec...)"
    world, batches, m = start_job(opts, ckpt, args, windows, corpus, **{what: [repr(a) for a in ablations]})
    meta = job_meta(ckpt, corpus, opts, windows) | {"loads": source, "world": world.describe()}
    if partial is not None:  # the part's entry in run.json says that --top ranked by an unfinished run's loads
        meta["loads_partial"] = partial
    sweep = Sweep(out, ablations, meta, args, world, fresh=opts.fresh)
    sweep.note_start()
    bar = None
    if opts.progress and world.rank == 0:
        from tqdm import tqdm
        passes = (0 if sweep.baseline_saved() else 1) + sweep.to_compute()
        bar = tqdm(total=len(batches) * passes, unit="batch", desc="ablate", dynamic_ncols=True)
    with sweep.computing(bar):  # each ablation is committed as it finishes (sweep.py); a rerun computes the rest
        df, plans = evaluate(m, batches, ablations, domains=domains, loads=loads, loads_source=source, world=world,
                             progress=bar.update if bar is not None else None, sweep=sweep)
    if world.rank == 0:
        _note_stranded(plans)
        _note_reused_names(out, df)
    return out, df


def _note_reused_names(out: Path, df) -> None:
    """Say when a name of this command's already names another ablation (other experts) in the run's
    table: both are kept, each in its own part, and whatever groups the table by name mixes them (a
    sweep user's review: '--name top4 --experts 1:3' beside an earlier '--top 4')."""
    import probe
    from probe.job_exit import table_errors

    try:
        table = probe.open_run(out).df("ablations")[["ablation", "spec"]].drop_duplicates()
    except (OSError, *table_errors()):  # another part unreadable: the rows are written, the note can go
        return
    for name, spec in dict(zip(df.ablation, df.spec)).items():
        if (table.ablation.eq(name) & table.spec.ne(spec)).any():
            print(f"note: {out / 'ablations'} already held an ablation named {name!r} that disables other experts: "
                  "both are kept, each in its own part, under one name; give this one another --name (or its "
                  "spec entry another name) to tell them apart", file=sys.stderr)


def _note_stranded(plans) -> None:
    """Say which experts an ablation removed without naming them (`Plan.unreachable`): they count in its
    n_disabled, and a reader comparing top-N with random-N should know (a sweep user's review)."""
    for p in plans:
        if p.unreachable:
            where = "; ".join(f"layer {layer}: {', '.join(map(str, ids))}" for layer, ids in p.unreachable.items())
            print(f"note: ablation {p.ablation.name!r} also removes experts it leaves alone in their group ({where}): "
                  "group-limited routing scores a group by its two best experts, so they cannot be chosen; counted "
                  "in n_disabled", file=sys.stderr)


def write_ablations(out: str | Path, df, meta: dict, args=None) -> Path:
    """Write `df` as one part of `out/ablations/` (temporary name, then rename) and note it in
    run.json under `ablation_parts`; a directory without run.json becomes a run holding only this
    table (probe.writer.write_result_part). The command writes its part an ablation at a time instead
    (`sweep.Sweep`); this one, for rows made with `evaluate`, is keyed by its rows and, as every result
    part, by its inputs' content (`inputs_key`)."""
    key = {"rows": sorted(set(zip(df.ablation, df.spec))), **inputs_key(meta), "options": meta["options"]}
    return write_result_part(out, "ablations", df, key, meta, "ablation_parts",
                             {"ablations": list(dict.fromkeys(df.ablation))}, args)
