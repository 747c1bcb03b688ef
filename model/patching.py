"""Activation patching on the hook points (model/hooks.py): a clean run's activations written into a
corrupted run, to find where the difference between them is carried.

    _, clean = m.run_with_cache(clean_tokens, names=model.patching.EXPERT_NAMES)
    logits, report = model.patch_experts(m, corrupted_tokens, clean, experts=[3])
    table = model.patch_sweep(m, clean_tokens, corrupted_tokens, "layers.*.hook_resid_post", metric)

`hook_expert_out` is [T, K, D] in each token's top-k SLOT order, so the same slot of two runs holds
different experts wherever their routing differs: `patch_experts` matches the slots by expert id.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .hooks import HookError, HookPoint, _unreached, reread
from .indices import as_ints

# what a clean cache needs for patch_experts: each MoE layer's chosen experts and their outputs
EXPERT_NAMES = ["layers.*.ffn.gate.hook_topk_ids", "layers.*.ffn.experts.hook_expert_out"]
_EXPERT_OUT = re.compile(r"layers\.(\d+)\.ffn\.experts\.hook_expert_out")


@dataclass
class ExpertPatchReport:
    """What `patch_experts` did, per MoE layer: `patched[L]` (token, expert) pairs took the clean run's
    output; `not_patched[L]` pairs the corrupted run routed to a chosen expert that the clean run did not
    choose for that token (no clean output to take: left as they were)."""
    patched: dict[int, int] = field(default_factory=dict)
    not_patched: dict[int, int] = field(default_factory=dict)

    @property
    def n_patched(self) -> int:
        return sum(self.patched.values())

    @property
    def n_not_patched(self) -> int:
        return sum(self.not_patched.values())


def patch_experts(model, tokens: torch.Tensor, clean_cache, *, layers: Iterable[int] | None = None,
                  experts: Iterable[int] | None = None, positions: Iterable[int] | None = None,
                  **forward_kwargs) -> tuple[torch.Tensor, ExpertPatchReport]:
    """Run `model(tokens, **forward_kwargs)` (the corrupted input) with routed experts' outputs patched
    in from `clean_cache` BY EXPERT ID: where this run routes token t to expert e in some slot and the
    clean run chose e for t too, that slot's output becomes the clean run's output of e for t. Returns
    (logits, ExpertPatchReport).

    `clean_cache`: `run_with_cache(clean_tokens, names=EXPERT_NAMES)` (both points of every layer
    patched) on tokens of the same [B, S]. `layers`: MoE layer numbers (None: every MoE layer);
    `experts`: expert ids (None: all); `positions`: sequence positions, of every row (None: all). Each
    an int or integers: a list, range, numpy array or integer tensor (flattened); not bools or floats.
    The routing compared is this run's own at each layer, as patches in earlier layers left it. With
    `lengths=` (a right-padded batch) a row's padded positions are neither patched nor counted."""
    B, S = _batch_shape(tokens, "patch_experts: tokens")
    if not isinstance(clean_cache, Mapping):  # (logits, cache) whole was told the cache 'lacks' a point (a tour)
        got = ("a tuple: run_with_cache returns (logits, cache), pass the cache" if isinstance(clean_cache, tuple)
               else f"a {type(clean_cache).__name__}")
        raise ValueError(f"patch_experts: clean_cache is {got} (run_with_cache(clean_tokens, "
                         "names=model.patching.EXPERT_NAMES)'s)")
    moe_layers = [int(m[1]) for n in model.hook_names() if (m := _EXPERT_OUT.fullmatch(n))]
    # a layer named twice was hooked twice: patched again (the same values) and counted twice in the report
    picked = moe_layers if layers is None else list(dict.fromkeys(_ints(layers, "patch_experts: layers")))
    if bad := [L for L in picked if L not in moe_layers]:
        raise ValueError(f"patch_experts: layers={bad[0]} is not an MoE layer of this model (its MoE layers: "
                         f"{moe_layers})")
    E = model.hook_points[f"layers.{moe_layers[0]}.ffn.gate.hook_topk_ids"].index_bound if moe_layers else 0
    want_e = None if experts is None else _ints(experts, "patch_experts: experts")
    if want_e is not None and (bad := [e for e in want_e if not 0 <= e < E]):
        raise ValueError(f"patch_experts: experts={bad[0]} is outside this model's [0, {E})")
    rows = None
    if positions is not None:
        pos = _ints(positions, "patch_experts: positions")
        if bad := [p for p in pos if not 0 <= p < S]:
            raise ValueError(f"patch_experts: positions={bad[0]} is outside the tokens' [0, {S})")
        rows = (torch.arange(B)[:, None] * S + torch.tensor(pos, dtype=torch.long)[None]).flatten()
    report = ExpertPatchReport()
    live: dict[int, torch.Tensor] = {}  # this run's ids at each layer, read as its router passes them
    hooks = []
    for L in picked:
        clean_ids, clean_out = _clean_pair(clean_cache, L, B * S)
        hooks.append((f"layers.{L}.ffn.gate.hook_topk_ids", _keep_ids(live, L)))
        hooks.append((f"layers.{L}.ffn.experts.hook_expert_out",
                      _expert_patch(live, L, clean_ids, clean_out, want_e, rows, report,
                                    forward_kwargs.get("lengths"))))
    with model.hooks(hooks):
        logits = model(tokens, **forward_kwargs)
    if missed := [L for L in picked if L not in live]:  # a layer start_at_layer skipped: silently unpatched
        warnings.warn(f"patch_experts: layers {missed} were not reached by this forward (start_at_layer skips the "
                      "blocks before it, stop_at_layer those from it on): nothing was patched there, and the report "
                      "has no entry for them", stacklevel=2)
    return logits, report


def _keep_ids(live: dict, L: int) -> Callable:
    def keep(ids: torch.Tensor, hook: HookPoint) -> None:
        live[L] = ids.clone()  # a later hook on the point edits its own copy, not ours
    return keep


def _expert_patch(live: dict, L: int, clean_ids: torch.Tensor, clean_out: torch.Tensor, want_e, rows, report,
                  lengths=None):
    """The hook on layer L's hook_expert_out: slot k of token t takes the clean output of expert
    ids[t, k] where the clean run chose it for t, among the chosen experts and positions, and with
    `lengths` (the forward's, checked by it before any hook runs) among each row's real tokens."""
    def patch(out: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        ids = live[L]  # [T, K]
        if out.shape != clean_out.shape:
            raise ValueError(f"patch_experts: {hook.name} is {tuple(out.shape)} in this run but "
                             f"{tuple(clean_out.shape)} in the clean cache: patch runs of the same [B, S]")
        if out.dtype != clean_out.dtype:  # was the hook point's refusal of 'the hook' patch_experts attached (a tour)
            raise ValueError(f"patch_experts: {hook.name} is {out.dtype} in this run but {clean_out.dtype} in the clean "
                             "cache: make the clean cache with this model at its dtype")
        match = ids[:, :, None] == clean_ids.to(ids.device)[:, None, :]  # [T, K (ours), K (clean)]
        found = match.any(-1)  # [T, K]: the clean run chose this slot's expert for this token
        asked = torch.ones_like(found)
        if want_e is not None:
            asked &= torch.isin(ids, torch.tensor(want_e, device=ids.device))
        if rows is not None:
            in_rows = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            asked &= in_rows.index_fill_(0, rows.to(ids.device), True)[:, None]
        if lengths is not None:  # NOTE: padded positions are routed too; they were patched and counted in the
            # report, which then differed from the rows patched one by one (a tour)
            B = lengths.shape[0]
            pos = torch.arange(ids.shape[0] // B, device=ids.device)
            asked &= (pos[None, :] < lengths.to(ids.device)[:, None]).reshape(-1, 1)
        take = found & asked
        src = match.long().argmax(-1)  # [T, K]: the clean slot that holds the same expert
        clean_here = clean_out.to(out.device).gather(1, src[..., None].expand_as(out))
        report.patched[L] = report.patched.get(L, 0) + int(take.sum())
        report.not_patched[L] = report.not_patched.get(L, 0) + int((asked & ~found).sum())
        return torch.where(take[..., None], clean_here, out)
    return patch


def _clean_pair(cache, L: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer L's clean (ids [T, K], outputs [T, K, D]) from the cache; a one-line error naming what is
    missing or of the wrong shape."""
    names = (f"layers.{L}.ffn.gate.hook_topk_ids", f"layers.{L}.ffn.experts.hook_expert_out")
    got = []
    for n in names:
        if n not in cache:
            raise HookError(f"patch_experts: the clean cache lacks {n}: make it with "
                            f"run_with_cache(clean_tokens, names=model.patching.EXPERT_NAMES)")
        got.append(cache[n])
    ids, out = got
    if ids.shape != out.shape[:2] or ids.shape[0] != T:
        raise ValueError(f"patch_experts: the clean cache's {names[0]} is {tuple(ids.shape)} and {names[1]} "
                         f"{tuple(out.shape)}; the tokens patched have {T} (B*S) rows: patch runs of the same [B, S]")
    return ids, out


def _batch_shape(tokens, what: str) -> tuple[int, int]:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{what}: expected token ids [B, S] (a 2-D tensor), got {shape}")
    return tokens.shape[0], tokens.shape[1]


def _ints(values, what: str) -> list[int]:
    """Ids or positions as ints (model/indices.py: numpy and tensor integers too); an empty list is refused."""
    out = as_ints(values, what)
    if not out:
        raise ValueError(f"{what}=[]: names nothing to patch (None means all)")
    return out


def patch_sweep(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, names,
                metric: Callable[[torch.Tensor], float], positions: str | Iterable[int] | None = None,
                **forward_kwargs):
    """Patch the clean run's activations into the corrupted run one hook point at a time (and with
    `positions`, one position at a time), and score each patched run's logits with `metric(logits)`
    (TransformerLens's `patching`). Returns a pandas DataFrame, a row per patched run in forward order:
    name, position (<NA> where the whole tensor was patched), metric, and the unpatched clean and
    corrupted runs' metric.

    `names`: a hook point name, a glob, a list of them or a predicate (as `run_with_cache`'s; the MTP module's
    points it picks with the layers' are left out of a forward without mtp=True). `positions`: None (the
    whole tensor), "each" (every position of [B, S] in turn, all rows at once) or positions (an int, a
    list, numpy array or integer tensor).
    A position is a sequence position: row b*S + s of the router's [T, ...] points (b*(S-1) + s in the
    MTP block's), query s of `hook_pattern`, MTP position s of the MTP module's [B, S-1, ...] points.
    Runs of the same [B, S] only; `forward_kwargs` go to every forward."""
    import pandas as pd

    # NOTE: each checked on its own first: two equal lists were told they 'differ in shape' (a tour)
    B, S = _batch_shape(clean_tokens, "patch_sweep: clean_tokens")
    _batch_shape(corrupted_tokens, "patch_sweep: corrupted_tokens")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"patch_sweep: clean_tokens {list(clean_tokens.shape)} and corrupted_tokens "
                         f"{list(corrupted_tokens.shape)} differ in shape: patching needs runs of the same [B, S]")
    names = reread(names)  # picked, then asked what it named
    picked = model._resolve(names)
    if bad := [n for n in picked if n.endswith("hook_expert_out")]:
        raise ValueError(f"patch_sweep: {bad[0]} is in top-k slot order, which differs between runs routed "
                         "differently: patch experts by id with model.patch_experts")
    pos = _sweep_positions(positions, S)
    score = _scorer(metric)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "run_with_cache: .* not reached")  # refused below, by name
        clean_logits, cache = model.run_with_cache(clean_tokens, names=picked, **forward_kwargs)
        # the MTP module's points a predicate or a glob picks with the layers' are left out where it did not run
        # (run_with_cache does not warn of them): "*hook_resid_post" was refused for mtp.0.block.hook_resid_post
        if missed := _unreached([names], picked, cache):
            raise ValueError(f"patch_sweep: {len(missed)} of the points named were not reached by the clean run "
                             f"(e.g. {missed[0]}; the MTP module runs only with mtp=True): name points it reaches")
        picked = [n for n in picked if n in cache]
        clean, corrupted = score(clean_logits), score(model(corrupted_tokens, **forward_kwargs))
        # every (point, position) checked before the first patched run: a position past an MTP point's S-1
        # was refused only once the runs before it had been made
        plan = [(name, p, None if p is None else _position_index(name, cache[name].shape, B, S, p))
                for name in picked for p in pos]
        rows = []
        for name, p, index in plan:
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, _replace(cache[name], index))],
                                          **forward_kwargs)
            rows.append((name, p, score(logits)))
    table = pd.DataFrame(rows, columns=["name", "position", "metric"])
    table["position"] = table["position"].astype("Int64")
    return table.assign(clean=clean, corrupted=corrupted)


def _sweep_positions(positions, S: int) -> list[int | None]:
    if positions is None:
        return [None]
    if isinstance(positions, str) and positions == "each":  # an array's == is elementwise (a tour)
        return list(range(S))
    if isinstance(positions, str):
        raise ValueError(f"patch_sweep: positions={positions!r}: expected None, 'each' or a list of positions")
    pos = _ints(positions, "patch_sweep: positions")
    if bad := [p for p in pos if not 0 <= p < S]:
        raise ValueError(f"patch_sweep: positions={bad[0]} is outside the tokens' [0, {S})")
    return pos


def _scorer(metric: Callable) -> Callable[[torch.Tensor], float]:
    if not callable(metric):
        raise ValueError(f"patch_sweep: metric must be a callable metric(logits) -> float, got {type(metric).__name__}")

    def score(logits: torch.Tensor) -> float:
        value = metric(logits)
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"patch_sweep: metric(logits) returned {got}; it must return one number") from None
    return score


def _position_index(name: str, shape: torch.Size, B: int, S: int, p: int) -> tuple:
    """The index of sequence position `p` in hook point `name`'s tensor of `shape`."""
    if ".ffn.gate.hook_" in name:  # the router's points: [T, ...], row b*n + s, n positions a row
        # NOTE: n is S but for the MTP block's router, whose T is B*(S-1): rows b*S + s patched another
        # row's tokens there, or fell past its end (an IndexError; a review)
        n = shape[0] // B
        if shape[0] != B * n or p >= n:
            raise ValueError(f"patch_sweep: {name} is {tuple(shape)}, {n} positions of each of {B} rows: positions="
                             f"{p} is not one of them (the MTP module's have S-1); ask for positions=range({n}), or "
                             "patch it whole (positions=None)")
        return (torch.arange(B) * n + p,)
    if name.endswith("hook_pattern"):  # [B, H, S, T]: position s's query
        if p >= shape[2]:  # the MTP block's S-1 queries: a bare IndexError of the hook's (a review)
            raise ValueError(f"patch_sweep: {name} is {tuple(shape)}, {shape[2]} queries: positions={p} is not one "
                             f"of them (the MTP module's have S-1); ask for positions=range({shape[2]}), or patch it "
                             "whole (positions=None)")
        return (slice(None), slice(None), p)
    # NOTE: the MTP module's [B, S-1, ...] points (hook_in, its block's residual, hook_logits) were
    # refused as not [B, S, ...], "patch it whole", though its router's rows and queries were patched
    # position by position (a tour)
    mtp = name.startswith("mtp.") and len(shape) >= 2 and tuple(shape[:2]) == (B, S - 1)
    if tuple(shape[:2]) != (B, S) and not mtp:
        raise ValueError(f"patch_sweep: {name} is {tuple(shape)}, not [B, S, ...] = [{B}, {S}, ...]: patch it "
                         "whole (positions=None)")
    if p >= shape[1]:
        raise ValueError(f"patch_sweep: {name} is {tuple(shape)}, {shape[1]} positions: positions={p} is not one "
                         f"of them (the MTP module's have S-1); ask for positions=range({shape[1]}) (positions='each' "
                         f"takes all {S} of the tokens), or patch it whole (positions=None)")
    return (slice(None), p)


def _replace(clean: torch.Tensor, index: tuple | None) -> Callable:
    """A hook that returns the clean tensor (a copy: a later hook may edit it in place), or the
    corrupted one with `index` taken from the clean one."""
    def hook(t: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if index is None:
            return clean.clone()
        out = t.clone()
        out[index] = clean[index]
        return out
    return hook
