"""Frozen weights: a promise that a model's weights hold still, which lets oneDNN's GEMMs read them
pre-packed.

oneDNN's linear primitive (the "onednn" float32 path of model/gemm.py) reorders its weight into a
blocked layout on every call. Inside `frozen_weights(m)` each weight of `m` that such a GEMM reads
is reordered once (`torch.ops.mkldnn._reorder_linear_weight`), kept, and passed pre-packed from then
on: the same kernel on the same numbers, so the results are bit-equal (tested), only the per-call
copy is gone. On a 2-core AMD EPYC it made 32 experts' GEMMs of 128 rows 1.12x faster and
benchmarks/bench_prefill.py's whole float32 forward 1.06-1.08x (an A/B in one process; 1.02-1.05x
in the bench's own rotation of seven cases; docs/performance.md). The jobs (record, spec, ablate,
importance, steer) load their model frozen where the copies fit (probe/job.py's load_model).

    with model.frozen_weights(m):       # or: handle = model.frozen_weights(m); ...; handle.release()
        logits = m(tokens)

What the promise covers:
- An in-place change through the parameter itself (`with torch.no_grad(): w[5].zero_()`, an
  optimiser step, `load_state_dict`) bumps the tensor's version counter: the packed copy is
  remade on its next use.
- A step of a fused optimiser (`fused=True`) does not bump the version counter; every optimiser
  step, fused or not, drops the packed copies of the weights it updated (a global optimiser
  post-step hook, registered with the first frozen scope): they are remade on their next use.
- A change through `.data` (`w.data.zero_()`) is invisible to the version counter: inside the scope
  it is NOT seen. Edit weights through the parameter, or outside the scope.
- Weights made under `torch.inference_mode()` have no version counter: their GEMMs run unpacked.
- A parameter given new storage (`w.data = t`, `m.to(...)`) falls out of the scope (its GEMMs run
  unpacked) until the module is frozen again.
- An expert's W1 and W3, which one GEMM reads together, are packed into one copy of both, and a
  layer's routed experts are packed together (`packed_experts`): an edit of one expert remakes the
  copies of all of that layer's experts.
- The packed copies cost as much memory as the float32 weights they copy, and live until the scope
  ends or the module is garbage collected (the registry holds the module weakly).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn


class _Entry:
    """One frozen module: its weights' storages (held, so that no other tensor can take their
    addresses while the scope lasts) and the packed copies made so far."""

    def __init__(self, module: nn.Module) -> None:
        self.storages = {t.untyped_storage().data_ptr(): t.untyped_storage()
                         for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu"}
        self.packed: dict[tuple, tuple[tuple, object]] = {}  # views' keys -> (versions, packed weight(s))
        self.holds = 0


_FROZEN: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
_OPTIMISER_HOOK = None  # the global optimiser post-step hook, registered with the first frozen scope


def _watch_optimisers() -> None:
    global _OPTIMISER_HOOK
    if _OPTIMISER_HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _OPTIMISER_HOOK = register_optimizer_step_post_hook(_after_optimiser_step)


def _after_optimiser_step(optimizer, args, kwargs) -> None:
    """Drop the packed copies of every weight `optimizer` holds: a fused step (`fused=True`) edits
    them in place without bumping their version counters, and the copies kept the old weights (the
    logits of a frozen model were 11.9 off its parameters after one AdamW step; a review)."""
    if not _FROZEN:
        return
    ptrs = {p.untyped_storage().data_ptr() for g in optimizer.param_groups for p in g["params"]
            if isinstance(p, torch.Tensor) and p.device.type == "cpu"}
    for entry in _FROZEN.values():
        for key in [k for k in entry.packed if any(view[0] in ptrs for view in k)]:
            del entry.packed[key]


class FrozenWeights:
    """The handle `frozen_weights` returns: the module is frozen from its creation until `release()`
    or the end of a `with` block. Freezing a module twice nests (it stays frozen until both end)."""

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)
        entry = _FROZEN.get(module)
        if entry is None:
            entry = _FROZEN[module] = _Entry(module)
            _watch_optimisers()
        entry.holds += 1
        self._held = True

    def release(self) -> None:
        module = self._module()
        if not self._held or module is None:
            self._held = False
            return
        self._held = False
        entry = _FROZEN.get(module)
        if entry is not None:
            entry.holds -= 1
            if entry.holds <= 0:
                del _FROZEN[module]

    def __enter__(self) -> "FrozenWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def frozen_weights(module: nn.Module) -> FrozenWeights:
    """Freeze `module`'s weights (see the module docstring) until the handle is released."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"frozen_weights takes an nn.Module, not {type(module).__name__}")
    return FrozenWeights(module)


@contextmanager
def suspended(module: nn.Module):
    """Out of the scope while the block runs (its GEMMs read the weights unpacked), its packed
    copies kept for when it returns: what benchmarks/bench_prefill.py's "weights not frozen" row
    times. A module that is not frozen is left as it is."""
    entry = _FROZEN.pop(module, None)
    try:
        yield
    finally:
        if entry is not None:
            _FROZEN[module] = entry


def is_frozen(module: nn.Module) -> bool:
    return module in _FROZEN


def packed_bytes() -> int:
    """Bytes held in packed copies by every frozen module of this process (their logical float32
    size; oneDNN's blocked layout may pad a little)."""
    return sum(t.numel() * t.element_size() for e in _FROZEN.values() for _, p in e.packed.values()
               for t in _tensors(p))


def _tensors(p) -> list[torch.Tensor]:
    """The tensors of one cache entry: a packed weight, or packed_experts' list of pairs."""
    return [p] if isinstance(p, torch.Tensor) else [t for pair in p for t in pair]


def pack(w: torch.Tensor) -> torch.Tensor:
    """w [out, in] float32 reordered into oneDNN's blocked layout for its linear primitive."""
    return torch.ops.mkldnn._reorder_linear_weight(w)


def packed(w: torch.Tensor) -> torch.Tensor:
    """The pre-packed copy of `w` (a weight or a view of one) if it belongs to a frozen module, made
    on first use and remade when `w`'s version changes; else `w` itself."""
    p = None if w.is_mkldnn else _cached((w,), lambda: pack(w))
    return w if p is None else p


def packed_experts(w1: torch.Tensor, w2: torch.Tensor,
                   w3: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Routed experts' weights w1, w3 [E, I, D] and w2 [E, D, I] of a frozen module, pre-packed per
    expert (pack_expert): [(W13_e, W2_e)], made on first use and remade when any of the three
    changes in place (an edit of one expert's slice bumps the whole parameter's version); None
    outside the scope.

    NOTE: one lookup per layer instead of two per expert: on benchmarks/bench_prefill.py's
    32-expert layers the per-expert lookups cost 1.08-1.12x of the experts' time (paired A/B, 61
    repeats, 2-core AMD EPYC, 2026-12-03)."""
    return _cached((w1, w2, w3), lambda: [pack_expert(w1[e], w3[e], w2[e]) for e in range(w1.shape[0])])


def pack_expert(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One expert's weights as model.moe's padded oneDNN layout reads them, pre-packed: W13 = [W1; W3]
    stacked by rows ([2I, D], one GEMM for both: gemm.onednn_swiglu) and W2."""
    return pack(torch.cat([w1, w3])), pack(w2)


def _cached(ws: tuple[torch.Tensor, ...], make):
    """The entry's packed copy (or copies) made from the views `ws` of one frozen module's weights
    (made by `make` on first use, remade when a version changes, the stale copy freed first); None
    when they are not all such views, or autograd would see the copy."""
    if not _FROZEN or any(w.requires_grad for w in ws) and torch.is_grad_enabled():
        return None
    if any(w.is_inference() for w in ws):  # no version counter to watch (made under inference_mode): unpacked
        return None
    ptrs = [w.untyped_storage().data_ptr() for w in ws]
    for entry in _FROZEN.values():
        if all(ptr in entry.storages for ptr in ptrs):
            key = tuple((ptr, w.storage_offset(), tuple(w.shape), w.stride(), w.dtype) for ptr, w in zip(ptrs, ws))
            versions = tuple(w._version for w in ws)
            version, p = entry.packed.get(key, (None, None))
            if version != versions:
                entry.packed.pop(key, None)
                p = make()
                entry.packed[key] = (versions, p)
            return p
    return None
