"""Running ablations over a corpus: the baseline and every ablation pass over the same batches,
per-domain losses and routing changes, the `ablations` table (usage: the package docstring)."""


from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analyses.metrics._common import counted
from probe.corpus import CorpusError, corpus_windows, fingerprint
from probe.job import check_out_parent, check_outside_corpus, check_run_place, run_inputs
from probe.job_exit import launch_rank0
from probe.recorders import Batch, model_token_nll
from probe.schema import TABLES
from probe.windows import Window
from probe.writer import read_run_json, refuse_running, run_status, write_result_part

from .select import ALL, Ablation, AblationError, Loads, Plan, RouterShape, check_names, plan_hooks, resolve
from .sweep import Sweep

ACC = ("nll", "n", "pairs", "changed", "replaced")  # per-domain sums of an ablation pass


# ------------------------------------------------------------------------------ evaluation
def _domains_of(batch: Batch, index: dict[str, int]) -> np.ndarray:
    """Domain index of every valid token of the batch (row-major, as `valid` flattens)."""
    d = np.array([index[w.domain] for w in batch.windows])
    return np.repeat(d, batch.tokens.shape[1])[batch.valid.reshape(-1).numpy()]


@torch.no_grad()
def forward_batch(model, batch: Batch, moe_layers: list[int], hooks: list) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (per-token surprisal [B, S] with NaN at pos 0 / padding, top-k ids [L, n_valid, K] int16)."""
    cap: dict[str, torch.Tensor] = {}

    def save(t, hook):
        cap[hook.name] = t.cpu()

    names = [f"layers.{i}.ffn.gate.hook_topk_ids" for i in moe_layers]
    with model.hooks(hooks + [(n, save) for n in names]):
        nll = model_token_nll(model, batch)
    valid = batch.valid.reshape(-1)
    ids = torch.stack([cap[n][valid] for n in names]) if names else torch.empty(0, 0, 0)
    return nll, ids.to(torch.int16)


def add_loss(acc_D2: np.ndarray, nll: torch.Tensor, dom: np.ndarray) -> None:
    """acc[:, 0] += per-domain surprisal sums, acc[:, 1] += scored tokens (float64)."""
    flat = nll.reshape(-1).double().numpy()
    ok = ~np.isnan(flat)
    acc_D2[:, 0] += np.bincount(dom[ok], flat[ok], len(acc_D2))
    acc_D2[:, 1] += np.bincount(dom[ok], minlength=len(acc_D2))


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
    """The pass with nothing disabled: per-domain loss sums [D, 2], loads [D, L, E], and each batch's
    top-k ids and token domains (what the ablated passes compare against)."""
    moe, E = shape.moe_layers, shape.n_experts
    index = {d: i for i, d in enumerate(domains)}
    D = len(domains)
    base_acc, base_loads, stored = np.zeros((D, 2)), np.zeros((D, len(moe), E), np.int64), []
    for batch in batches:
        nll, ids = forward_batch(model, batch, moe, [])
        dom_tok, dom_nll = _batch_domains(batch, index)
        add_loss(base_acc, nll, dom_nll)
        for j in range(len(moe)):
            key = torch.from_numpy(dom_tok.astype(np.int64))[:, None] * E + ids[j].long()
            base_loads[:, j] += torch.bincount(key.reshape(-1), minlength=D * E).reshape(D, E).numpy()
        stored.append((ids, dom_tok, dom_nll))
        tick()
    return base_acc, base_loads, stored


def _ablated(model, batches: list[Batch], stored: list, plan: Plan, shape: RouterShape, D: int, tick) -> np.ndarray:
    """One ablation's pass: per-domain sums [D, len(ACC)] (loss, tokens, compared pairs, changed
    top-k sets, replaced experts)."""
    moe, K = shape.moe_layers, shape.topk
    acc = np.zeros((D, len(ACC)))
    hooks = plan_hooks(model, plan)
    first = plan.first_layer
    # routing is compared at the MoE layers after the first ablated layer (all when nothing is)
    down = slice(0 if first is None else moe.index(first) + 1, None)
    n_down = len(moe[down])
    for batch, (base_ids, dom_tok, dom_nll) in zip(batches, stored):
        nll, ids = forward_batch(model, batch, moe, hooks)
        add_loss(acc, nll, dom_nll)
        if n_down:
            changed, replaced = _pairs_changed(ids, base_ids, down)
            acc[:, 2] += np.bincount(dom_tok, minlength=D) * n_down
            acc[:, 3] += np.bincount(dom_tok, changed.numpy(), D)
            acc[:, 4] += np.bincount(dom_tok, replaced.numpy() / K, D)
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
        if s[1] == 0:
            continue
        loss, base = s[0] / s[1], b[0] / b[1]
        rows.append({"ablation": a.name, "spec": plan.spec(), "mode": a.mode, "renormalise": a.renormalise,
                     "shared": bool(plan.shared_layers), "n_disabled": plan.n_disabled, "domain": d,
                     "tokens": int(s[1]), "loss": loss, "baseline_loss": base, "delta": loss - base,
                     "routing_changed": s[3] / s[2] if s[2] else None,
                     "experts_changed": s[4] / s[2] if s[2] else None, "downstream_layers": n_down})
    return rows


def _allreduce(x: np.ndarray, world) -> np.ndarray:
    """Sum over the replicas (the ranks of one sharded model hold the same sums; one counts)."""
    return x if world is None else world.sum_replicas(x)


# ---------------------------------------------------------------------------------- the job
@dataclass
class AblateOptions:
    run: str | None = None
    out: str | None = None
    ckpt: str | None = None
    corpus: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    domain_tokens: int | None = None  # at most this many tokens of each domain (each domain's own order)
    order: str | None = None  # domains | corpus (default: the run's, else domains; see probe.corpus)
    seq_len: int | None = None
    batch_size: int | None = None
    add_bos: bool | None = None
    dtype: str | None = None
    gemm: str = "bf16"
    device: str | None = None
    model_parallel: str | int = 1
    loads_from: str = "auto"  # auto | run | baseline
    progress: bool = True
    fresh: bool = False  # compute every ablation again, taking nothing from an interrupted attempt (sweep.py)


def job_defaults(opts: AblateOptions) -> tuple[AblateOptions, dict | None]:
    """Fill unset options from --run's run.json; returns (options, run info)."""
    info = None
    if opts.run is None and opts.out is None:
        raise AblationError("pass --run RUN (a recorded run) or --out DIR (where to write the results)")
    if opts.loads_from not in ("auto", "run", "baseline"):
        raise AblationError(f"--loads-from {opts.loads_from!r}: choose auto, run or baseline")
    if opts.run is not None:
        info = read_run_json(Path(opts.run))
        opts.ckpt, opts.corpus = run_inputs(info, str(opts.run), opts.ckpt, opts.corpus, AblationError)
        ro = info.get("options", {})
        opts.tokenizer = opts.tokenizer or ro.get("tokenizer")
        for k in ("max_tokens", "seq_len", "batch_size", "add_bos"):
            if getattr(opts, k) is None:
                setattr(opts, k, ro.get(k))
        # a record run from before --order read the corpus in order; a run with no record options
        # (spec only) takes the default, every domain interleaved
        opts.order = opts.order or ro.get("order", "corpus" if "router_logits" in ro else "domains")
    elif opts.loads_from == "run":
        raise AblationError("--loads-from run needs --run RUN")
    opts.order = opts.order or "domains"
    opts.batch_size = 8 if opts.batch_size is None else opts.batch_size  # 0 became 8, silently (a review)
    opts.add_bos = True if opts.add_bos is None else opts.add_bos
    if opts.batch_size < 1:  # each flag named with its value (it said "--batch-size must be >= 1 and --seq-len >= 2")
        raise AblationError(f"--batch-size {opts.batch_size}: must be >= 1 (windows per forward pass)")
    if opts.seq_len is not None and opts.seq_len < 2:
        raise AblationError(f"--seq-len {opts.seq_len}: must be >= 2 (tokens per window)")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise AblationError(f"--max-tokens {opts.max_tokens}: must be >= 1")
    if opts.domain_tokens is not None and opts.domain_tokens < 1:
        raise AblationError(f"--domain-tokens {opts.domain_tokens}: must be >= 1")
    return opts, info


def check_finished(run, info: dict | None, error: type[Exception] = AblationError) -> None:
    """probe.writer.refuse_running, with this package's error by default."""
    refuse_running(run, info, error)


def loads_from_run(run_dir: str | Path, shape: RouterShape) -> Loads:
    """{domain or "all": [n_moe_layers, E] counts} summed over a run's `expert_load` table. Rows of an
    MTP module's router (layer n_layers + k, which training runs record) are left out: ablations act
    on the main layers. Loads of another model, or with a MoE layer that counts nothing, are refused."""
    import probe

    run = probe.open_run(run_dir)
    if "expert_load" in run.lost_tables:  # said through DuckDB's "Invalid Input Error: ..." before
        from probe.run import lost_message

        raise AblationError(lost_message(run_dir, "expert_load"))
    _check_same_router(run_dir, run.info.get("model_args") or {}, shape)
    df = run.sql("select layer, expert, domain, sum(count)::bigint as n from expert_load group by all").df()
    df = df[df.layer < shape.n_layers]
    if df.empty:
        raise AblationError(f"{run_dir}: empty run: its expert_load table has no rows (record it first, "
                            "or pass --loads-from baseline)")
    moe = shape.moe_layers
    bad = sorted(set(df.layer) - set(moe))
    if bad or df.expert.max() >= shape.n_experts:
        raise AblationError(f"{run_dir}: its expert_load does not fit this model (layers {sorted(set(df.layer))}, "
                            f"experts up to {df.expert.max()}; the model has MoE layers {moe} and "
                            f"{shape.n_experts} experts)")
    _check_every_layer(run_dir, df, moe)
    out = {}
    for dom, g in df.groupby("domain"):
        a = np.zeros((len(moe), shape.n_experts), np.int64)
        np.add.at(a, ([moe.index(x) for x in g.layer], g.expert.to_numpy()), g.n.to_numpy())
        out[dom] = a
    out[ALL] = sum(out.values())
    return out


def _check_every_layer(run_dir, df, moe: list[int]) -> None:
    """Every MoE layer has loads to rank. A run of the same model whose expert_load lacks a layer's rows
    (recorded with fewer layers hooked, an import of some pipeline stages' dumps, an edited table), or
    whose rows there count nothing (such an import with --config writes zeros), ranked that layer's
    experts from zeros: a "top" of tie-broken ids. A record, a training run and an import of a whole
    server's dumps count every MoE layer."""
    per_layer = df.groupby("layer").n.sum()
    missing = [x for x in moe if per_layer.get(x, 0) == 0]
    if missing:
        raise AblationError(f"{run_dir}: its expert_load counts no loads in MoE layer{'s' * (len(missing) > 1)} "
                            f"{', '.join(map(str, missing))} of the model's {moe[0]}..{moe[-1]} (recorded with fewer "
                            "layers, an import of some pipeline stages' dumps, or an edited table?): --top would rank "
                            "their experts from zeros; pass --loads-from baseline to rank experts on the tokens "
                            "evaluated")


def run_loads(opts: AblateOptions, info: dict | None, shape: RouterShape,
              needs: bool) -> tuple[Loads | None, str, dict | None]:
    """The loads that rank --top: (the run's, "run:PATH") where --loads-from says run (or auto, and the
    run has them), else (None, "baseline"): the baseline pass counts them. Third, where the run's record
    or training did not finish (run.json interrupted: Ctrl-C, SIGTERM, a crash), what its partial loads
    cover ({status, tokens, planned_tokens}, for run.json), said in one line: they were taken silently."""
    if not needs or not (opts.loads_from == "run" or (opts.loads_from == "auto" and opts.run is not None
                                                      and _has_loads(opts.run))):
        return None, "baseline", None
    loads = loads_from_run(opts.run, shape)
    status = run_status(opts.run, info)
    if status in ("complete", "unknown"):
        return loads, f"run:{Path(opts.run).resolve()}", None
    # every token counts once in each MoE layer's top-k assignments
    tokens, planned = int(loads[ALL][0].sum()) // shape.topk, ((info or {}).get("planned") or {}).get("tokens")
    job = "training" if (info or {}).get("kind") == "train" else "record"
    if launch_rank0():
        print(f"note: --top ranks experts by partial loads: the {job} of {opts.run} did not finish (run.json status "
              f"{status}), and its expert_load covers {tokens:,} tokens"
              + (f" of the {planned:,} planned" if planned else "")
              + f"; finish the {job} with --resume, or pass --loads-from baseline", file=sys.stderr)
    return loads, f"run:{Path(opts.run).resolve()}", {"status": status, "tokens": tokens, "planned_tokens": planned}


def _check_same_router(run_dir, model_args: dict, shape: RouterShape) -> None:
    """The run's loads rank the experts of the model they were counted on: another model's (an SGLang
    import of a served model, then --ckpt of a smaller one) gave a "top" of tie-broken zeros in the
    layers the run lacks and of unrelated experts elsewhere."""
    from probe.model_shape import LAYOUT, model_differences

    ours = dict(zip(LAYOUT, (shape.n_layers, shape.n_dense_layers, shape.n_experts)))
    if model_differences(model_args, ours, LAYOUT):  # a field the run does not state is not held against it
        theirs = ["?" if model_args.get(k) is None else model_args[k] for k in LAYOUT]
        raise AblationError(f"{run_dir}: its expert_load was counted on another model ({theirs[0]} layers, "
                            f"{theirs[1]} dense, {theirs[2]} experts; the checkpoint has {ours['n_layers']}, "
                            f"{ours['n_dense_layers']}, {ours['n_routed_experts']}): pass --loads-from baseline to "
                            "rank experts on this model")


def ablate(opts: AblateOptions, ablations: list[Ablation]):
    """Run the job; returns (output run directory, DataFrame of the rows). Rank 0 writes."""
    from probe.job import checkpoint_args, load_tokenizer, resolve_paths, window_length

    if not ablations:
        raise AblationError("nothing to ablate: pass --experts, --top, --random, --shared or --spec")
    check_names(ablations)
    opts, info = job_defaults(opts)
    check_finished(opts.run, info)
    ckpt, corpus, out = resolve_paths(opts.ckpt, opts.corpus, opts.out or opts.run, error=AblationError)
    check_out(out, corpus)
    args = checkpoint_args(ckpt, AblationError)
    opts.seq_len = window_length(opts.seq_len, args, AblationError)
    shape = RouterShape.of(args)
    loads, source, partial = run_loads(opts, info, shape, any(a.needs_loads for a in ablations))
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
    world, batches, m = start_job(opts, ckpt, args, windows, **{what: [repr(a) for a in ablations]})
    meta = job_meta(ckpt, corpus, opts) | {"loads": source, "world": world.describe()}
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


def limit_per_domain(windows, per_domain: int, total: int | None) -> list:
    """The first `per_domain` tokens of every domain (corpus order; the last window cut), then at
    most `total` tokens overall: a balanced sample of a corpus stored domain by domain."""
    seen: dict[str, int] = {}
    out, n = [], 0
    for w in windows:
        left = min(per_domain - seen.get(w.domain, 0), (total - n) if total is not None else len(w.ids))
        if left <= 0:
            if total is not None and n >= total:
                break
            continue
        ids = w.ids[:left]
        out.append(Window(w.seq_id, w.doc_id, w.domain, w.doc_start, ids))
        seen[w.domain] = seen.get(w.domain, 0) + len(ids)
        n += len(ids)
    return out


def sample_windows(opts: AblateOptions, corpus: Path, tok, args) -> tuple[list, list[str]]:
    """The job's windows: `opts.domain_tokens` of every domain (a balanced sample) or the corpus up to
    `opts.max_tokens`, in `opts.order`; and the domains among them. An empty corpus is an error, and
    so are windows of one token each, which leave no token to score (its loss needs the next)."""
    from probe.corpus import CorpusStats
    from probe.job_exit import launch_rank0

    bos = args.bos_token_id if opts.add_bos else None
    stats = CorpusStats()  # what the reader skipped or replaced: said as record says it (it was silent; a review)
    windows = corpus_windows(corpus, lambda t: tok.encode(t, add_special_tokens=False).ids, opts.seq_len, bos,
                             None if opts.domain_tokens else opts.max_tokens, opts.order, stats)
    windows = limit_per_domain(windows, opts.domain_tokens, opts.max_tokens) if opts.domain_tokens else list(windows)
    if not windows:
        raise CorpusError(f"{corpus}: corpus has no text")
    if all(len(w.ids) < 2 for w in windows):
        caps = [f"{opts.max_tokens:,} token{'' if opts.max_tokens == 1 else 's'} in all (max_tokens)"] if opts.max_tokens else []
        caps += [f"{opts.domain_tokens:,} per domain (domain_tokens)"] if opts.domain_tokens else []
        why = f"the sample is capped at {' and '.join(caps)}" if caps else "the documents are one token long"
        each = "holds one token" if len(windows) == 1 else "hold one token each"
        raise CorpusError(f"{corpus}: the {counted(len(windows), 'window')} evaluated {each}, which leaves no token "
                          f"to score (a token's loss needs the next one); {why}")
    for note in stats.notes() if launch_rank0() else ():  # a sample the job takes: an error says enough
        print(note, file=sys.stderr)
    return windows, sorted({w.domain for w in windows})


def replica_batches(windows: list, batch_size: int, world) -> list[Batch]:
    """This replica's batches: global batch b goes to replica b % R (the ranks of one replica, one
    sharded model, run the same ones), as `probe record` deals them."""
    return [Batch(b, windows[s: s + batch_size]) for b, s in enumerate(range(0, len(windows), batch_size))
            if b % world.replicas == world.replica]


def start_job(opts: AblateOptions, ckpt: Path, args, windows: list, **derived):
    """The model side of a job, once its inputs are checked: bound the heap, join the ranks (each
    running the job with rank 0's options and `derived` settings, e.g. the ablations), take this
    replica's batches and load the model sharded over the replica -> (world, batches, model)."""
    from probe.job import bound_heap, job_options, load_model, start_world

    bound_heap()
    world = start_world(opts.model_parallel, opts.device, args, job_options(opts, **derived))
    batches = replica_batches(windows, opts.batch_size, world)
    return world, batches, load_model(ckpt, world, dtype=opts.dtype, gemm=opts.gemm)


def job_meta(ckpt: Path, corpus: Path, opts: AblateOptions, **options) -> dict:
    """What a result part records about its inputs: checkpoint, corpus and tokenizer (path,
    fingerprint) and the options that decide the numbers (plus `options`)."""
    from probe.ckpt_identity import checkpoint_identity

    tok = Path(getattr(opts, "tokenizer", None) or ckpt / "tokenizer.json")
    return {"checkpoint": checkpoint_identity(ckpt),  # with the weights sample: a part names the weights it saw
            "corpus": {"path": str(corpus.resolve()), "fingerprint": fingerprint(corpus)},
            # the file that turned the corpus into ids: it was in neither the part's record nor its key
            "tokenizer": {"path": str(tok.resolve()), "fingerprint": fingerprint(tok) if tok.is_file() else None},
            "options": {"max_tokens": opts.max_tokens, "domain_tokens": opts.domain_tokens, "seq_len": opts.seq_len,
                        "batch_size": opts.batch_size, "add_bos": opts.add_bos, "order": opts.order,
                        "dtype": opts.dtype or "float32", "gemm": opts.gemm} | options}


def inputs_key(meta: dict) -> dict:
    """The inputs of `job_meta` as a result part's key takes them: by content, not path, so that the same
    command on a moved or copied run replaces its part instead of writing a second one beside it, with
    every row twice under one name (a sweep user's review)."""
    def content(d):
        return {k: v for k, v in (d or {}).items() if k != "path"}
    return {"checkpoint": content(meta["checkpoint"]), "corpus": content(meta["corpus"]),
            "tokenizer": content(meta.get("tokenizer"))}


def _has_loads(run: str) -> bool:
    d = Path(run) / "expert_load"
    # a recorded run (even an empty one, which then fails loudly) versus an ablations-only directory
    return (d.is_dir() and any(d.glob("*.parquet"))) or "planned" in read_run_json(Path(run))


def check_out(out: Path, corpus: Path | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise AblationError(f"--out {out}: is a file, not a directory")
    check_outside_corpus(out, corpus, "the table", AblationError, "the corpus")
    check_run_place(out, error=AblationError)
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").exists():
        raise AblationError(f"--out {out}: not a run directory (no run.json) and not empty")
    check_out_parent(out, error=AblationError)  # before a model loads, not when the table is written


def write_ablations(out: str | Path, df, meta: dict, args=None) -> Path:
    """Write `df` as one part of `out/ablations/` (temporary name, then rename) and note it in
    run.json under `ablation_parts`; a directory without run.json becomes a run holding only this
    table (probe.writer.write_result_part). The command writes its part an ablation at a time instead
    (`sweep.Sweep`); this one, for rows made with `evaluate`, is keyed by its rows and, as every result
    part, by its inputs' content (`inputs_key`)."""
    key = {"rows": sorted(set(zip(df.ablation, df.spec))), **inputs_key(meta), "options": meta["options"]}
    return write_result_part(out, "ablations", df, key, meta, "ablation_parts",
                             {"ablations": list(dict.fromkeys(df.ablation))}, args)
