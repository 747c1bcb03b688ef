"""Named hook points: identity modules that let a caller read or replace any internal tensor.

A `HookPoint` returns its input unchanged; the model calls it inline where a tensor is produced:

    scores = self.hook_scores(scores)  # [T, E]

Its dotted module name (`layers.3.ffn.gate.hook_scores`) is its stable public name. A hook function
has the signature `fn(tensor, hook) -> tensor | None`; returning a tensor replaces the value
downstream (ablation, steering, patching). Hooks are scoped: `with model.hooks([(name, fn)]):` attaches
and always detaches, and `run_with_cache` records copies. With nothing attached a HookPoint costs one
Python call (`nn.Module.__call__` takes its no-hook fast path).
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Union

import torch
from torch import nn

from .attribution import apply_final_norm, final_scale
from .args import InputError
from .indices import as_int, shown
from .hook_suggest import did_you_mean as _did_you_mean, tl_key as _tl_key

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Callable[[str], bool], Iterable[str], None]

# Hooks whose tensors are large ([B, H, S, T]; [T, K, D]; [B, S, H, D]); `run_with_cache` skips them unless
# named explicitly.
OPT_IN_SUFFIXES = ("hook_pattern", "hook_expert_out", "hook_result")


class HookError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0])


class HookPoint(nn.Module):
    """Identity; `name` is filled in by `HookedModule.setup_hooks()`. `index_bound`, on a hook point
    that carries indices (the router's chosen experts), is the number of valid indices: a hook's
    replacement must lie in [0, index_bound)."""

    def __init__(self, index_bound: int | None = None) -> None:
        super().__init__()
        self.name = ""
        self.index_bound = index_bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def layer(self) -> int:
        """The index of the layer this point is in: 3 for `layers.3.ffn.gate.hook_scores`
        (TransformerLens's `hook.layer()`), for a hook fn attached to the same point of many layers.
        A point outside the layers (`hook_embed`, `hook_final`, the MTP module's) is a ValueError."""
        if m := re.match(r"layers\.(\d+)\.", self.name):
            return int(m[1])
        if not self.name:
            raise ValueError("hook.layer(): this hook point has no name: the model names its points when it is "
                             "built (setup_hooks)")
        where = f"is in MTP module {m[1]}, not" if (m := re.match(r"mtp\.(\d+)\.", self.name)) else "is not"
        raise ValueError(f"hook.layer() on {self.name}: that point {where} in a layer (layers.{{i}}.*)")

    @property
    def active(self) -> bool:
        """True when something is attached (lets the model pick a path that materialises the tensor)."""
        return bool(self._forward_hooks)

    def add(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        self._check_signature(fn)

        def _wrapped(module: nn.Module, args: tuple, output: torch.Tensor):
            version = _version(output) if self.index_bound is not None else None
            try:
                out = fn(output, self)
            except Exception as e:  # the traceback named the hook's own line, never which hook point ran it
                e.add_note(f"(raised by the hook {_fn_name(fn)} on {self.name})")
                raise  # the same exception: a caller that catches its own (to end a pass early) still does
            if out is not None and (not isinstance(out, torch.Tensor) or out.shape != output.shape
                                    or out.dtype != output.dtype or out.device != output.device):
                # checked here, where the hook is known, rather than failing blocks downstream (a
                # replacement from a cache kept on the CPU, in a model on a GPU, failed deep inside; a review)
                got = (f"{out.dtype} of shape {tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor)
                       else type(out).__name__)
                raise ValueError(f"the hook on {self.name} returned {got}; a replacement must be a tensor of the "
                                 f"hook point's dtype, shape and device, {output.dtype} {tuple(output.shape)} on "
                                 f"{output.device} (or None to keep it)")
            if out is not None and self.index_bound is not None and out.numel():
                self._check_indices(out)
            elif out is None and self.index_bound is not None and output.numel() and (
                    version is None or _version(output) != version):
                # NOTE: an edit in place went unchecked: ids made to repeat were summed twice, with no
                # error, where the same edit returned as a copy was refused (a tour)
                self._check_indices(output, "left, edited in place,")
            return out

        return self.register_forward_hook(_wrapped)

    def _check_indices(self, out: torch.Tensor, did: str = "returned") -> None:
        """A replacement of an index point: every index in [0, index_bound), and no index twice in a row
        (a token's experts): an expert forced into a slot while another slot held it was summed twice,
        its weight doubled, with no error (a tour). One read back from the device."""
        rows = out.reshape(-1, out.shape[-1])
        srt = rows.sort(dim=-1).values
        twice = (srt[:, 1:] == srt[:, :-1]).any(-1)  # [rows]
        lo, hi, n_twice, row = torch.stack([rows.min(), rows.max(), twice.sum(), twice.long().argmax()]).tolist()
        if lo < 0 or hi >= self.index_bound:
            bad = lo if lo < 0 else hi
            raise ValueError(f"the hook on {self.name} {did} index {bad}; a replacement's indices must "
                             f"lie in [0, {self.index_bound})")
        if n_twice:
            ids = rows[row].tolist()
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"the hook on {self.name} {did} index {dup} twice in row {row} ({ids}; {n_twice} "
                             "row(s) so): a token's experts must differ, or one is summed twice. To force an "
                             "expert, replace the slot that holds it, or set its score to +inf at hook_allowed_scores")

    def _check_signature(self, fn: HookFn) -> None:
        """A hook is called as fn(tensor, hook): one that cannot take two arguments is refused when
        attached, naming the point, not by the forward with '<lambda>() takes 1 positional argument'."""
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError:
            raise HookError(f"the hook {_fn_name(fn)} for {self.name} cannot be called as fn(tensor, hook) "
                            f"(its signature: {inspect.signature(fn)})") from None
        except ValueError:  # no signature to read (some builtins): left to the call
            pass

    def extra_repr(self) -> str:
        return self.name


def _version(t: torch.Tensor) -> int | None:
    """t's version counter (bumped by each edit in place), or None for an inference tensor, which keeps none."""
    return None if t.is_inference() else t._version


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _matcher(names: NameFilter, all_names: list[str]) -> Callable[[str], bool]:
    """A name filter: None = all (except opt-in), str = exact name or glob, callable, or a list of names."""
    if names is None:
        return lambda n: not n.endswith(OPT_IN_SUFFIXES)
    if callable(names):
        return names
    if isinstance(names, str):
        names = [names]
    given, names = names, list(names) if isinstance(names, Iterable) and not isinstance(names, bytes) else None
    if names is None or not all(isinstance(n, str) for n in names):
        # names=5 or [5] was a TypeError from list() or from the glob test below
        raise HookError(f"hook point names {given!r}: expected a name or glob (a str), a list of them, or a "
                        "callable (see model.hook_names())")
    exact, patterns = set(), []
    for n in names:
        if any(c in n for c in "*?["):
            if not any(fnmatch.fnmatchcase(a, n) for a in all_names):  # a typo in one glob of a list
                raise HookError(f"names={n!r} matches no hook point{_did_you_mean(n, all_names)} "
                                "(see model.hook_names())")
            patterns.append(n)
        elif n in all_names:
            exact.add(n)
        else:
            raise HookError(f"no hook point named {n!r}{_did_you_mean(n, all_names)} (see model.hook_names())")
    return lambda n: n in exact or any(fnmatch.fnmatchcase(n, p) for p in patterns)


class ActivationCache(dict):
    """`run_with_cache`'s dict of name -> tensor. A name it lacks is a one-line HookError saying why
    (opt-in, not named, not reached, or no such hook point), not a bare KeyError of the name."""

    def __init__(self, all_names: list[str], named: Iterable[str]) -> None:
        super().__init__()
        self._all_names, self._named = all_names, set(named)
        # (1 / rms [B, S, 1] of a final norm's input, the norm's weight [D]), for apply_final_norm: key
        # None the model's final norm, k the MTP module k's (before the shared head; S-1 positions)
        self._norms: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}

    def __reduce__(self):  # pickled (torch.save) as an OrderedDict, which torch.load(weights_only=True) reads
        return collections.OrderedDict, (list(self.items()),)

    def __copy__(self) -> ActivationCache:  # copy.copy went through __reduce__: an OrderedDict, the reasons lost
        new = ActivationCache(self._all_names, self._named)
        new.update(self)
        new._norms = dict(self._norms)
        return new

    def copy(self) -> ActivationCache:  # dict.copy gave a plain dict
        return self.__copy__()

    def stack(self, names: str | Iterable[str]) -> torch.Tensor:
        """The cached tensors that a glob or a list of names picks, in forward order, stacked along a new
        first dimension: `cache.stack("layers.*.hook_resid_post")` is [L, B, S, D] (TransformerLens's
        `stack_activation`); `model.hook_names(names)` lists them in the same order, the stack's labels. A
        point picked but not cached is the HookError `cache[name]` raises."""
        if not isinstance(names, str) and not (isinstance(names, Iterable) and not callable(names)):
            raise HookError(f"cache.stack({names!r}): expected a name, a glob or a list of them")
        match = _matcher(names, self._all_names)  # a name or glob that matches no hook point is refused
        picked = [self[n] for n in self._all_names if match(n)]
        if not picked:  # names=[]: torch.stack's 'stack expects a non-empty TensorList'
            raise HookError(f"cache.stack({names!r}): names no hook point to stack")
        shapes = sorted({tuple(t.shape) for t in picked})
        if len(shapes) > 1:  # torch.stack's 'stack expects each tensor to be equal size'
            raise HookError(f"cache.stack({names!r}): the points it picks differ in shape ({shapes[0]} and "
                            f"{shapes[1]}): pick points of one shape (the MTP module's have S-1 positions)")
        return torch.stack(picked)

    def apply_final_norm(self, x: torch.Tensor, pos: int | slice | None = None, *,
                         mtp: int | None = None) -> torch.Tensor:
        """Pieces of the residual stream x [..., B, S, D] (`stack` of hook_embed, hook_attn_out and
        hook_ffn_out, or per-head `attn.hook_result`s moved to the front) scaled as the final norm
        scaled the residual they add up to in this cache's forward: divided by its RMS at each position,
        times the norm's weight (TransformerLens's `apply_ln_to_stack`). `model.head(...)` of that is
        each piece's direct logit attribution; summed over the pieces, the logits. `pos` (an int or a
        slice) when x holds only those positions (x [..., B, D] for an int: `pos=-1`, the last).

        `mtp=k`: pieces of MTP module k's residual stream instead, x [..., B, S-1, D] (`mtp.k.hook_in`,
        `mtp.k.block.hook_attn_out` and `hook_ffn_out`), scaled by that module's own norm: through the
        same `model.head`, their shares of its logits (`mtp.k.hook_logits`; a forward with mtp=True)."""
        key = None if mtp is None else as_int(mtp)
        if mtp is not None and key is None:
            raise InputError(f"cache.apply_final_norm: mtp={shown(mtp)}: expected the index of an MTP module "
                             "(0: DeepSeek-V3 has one), or None for the model's final norm")
        if key not in self._norms:
            raise HookError(f"cache.apply_final_norm: this cache has no {self._no_norm(key)}")
        where = "the cached forward" if key is None else f"the cached forward's MTP module {key}"
        return apply_final_norm(x, *self._norms[key], pos=pos, where=where)

    def _no_norm(self, key: int | None) -> str:
        """What the cache lacks, and why, for apply_final_norm of norm `key` (None: the final norm)."""
        if key is None:
            return ("final-norm scale: its forward did not reach the final norm (or the cache was not made by "
                    "run_with_cache)")
        have = sorted({int(m[1]) for n in self._all_names if (m := re.match(r"mtp\.(\d+)\.", n))})
        if key not in have:
            return f"MTP module {key}: the model's MTP modules are {have}" if have else "MTP module: the model has none"
        return (f"scale of MTP module {key}'s norm: its forward did not run the MTP module (run_with_cache(..., "
                "mtp=True))")

    def __missing__(self, name: str):
        if not isinstance(name, str):  # a TypeError from deep inside re (the name matched against a pattern)
            raise HookError(f"cache[{name!r}]: a cache's keys are hook point names (str)"
                            f"{_tl_key(name, self._all_names)}")
        if name not in self._all_names:
            why = f"there is no hook point named {name!r}{_did_you_mean(name, self._all_names)}"
        elif name not in self._named and name.endswith(OPT_IN_SUFFIXES):
            why = (f"{name} is opt-in: run_with_cache caches it only where names= names it "
                   f"(e.g. names=[..., {name!r}])")
        elif name not in self._named:
            why = f"{name} was not among the names= this cache was made with"
        else:
            why = (f"{name} was not reached by this forward (MTP runs only with mtp=True; start_at_layer and "
                   "stop_at_layer skip blocks)")
        raise HookError(f"cache[{name!r}]: not cached: {why}")


class HookedModule(nn.Module):
    """Mixin for the root model: names hook points, attaches and removes hooks, caches activations."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name
                self._hook_points[name] = mod

    @property
    def hook_points(self) -> dict[str, HookPoint]:
        return self._hook_points

    def hook_names(self, names: NameFilter = None) -> list[str]:
        """Every hook point's name, in the order the forward pass reaches them; with `names` (a name, a glob, a
        list of them or a predicate, as `run_with_cache` takes them) those it picks, opt-in points included:
        the order `ActivationCache.stack(names)` stacks them in, so its labels (the stack's order is forward
        order, not a list's own: `hook_names(["hook_embed", "layers.*.hook_attn_out", "layers.*.hook_ffn_out"])`
        interleaves the layers' attention and FFN outputs)."""
        if names is None:
            return list(self._hook_points)
        match = _matcher(names, list(self._hook_points))
        return [n for n in self._hook_points if match(n)]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()) -> Iterator["HookedModule"]:
        """Attach `(name_or_filter, fn)` pairs for the duration of the block; always detached after.

        `name_or_filter`: a hook point's name, a glob, a list of names or a predicate (as
        `run_with_cache`'s `names`); `fn(tensor, hook) -> tensor | None` runs each time the forward
        passes a matching point (returning a tensor replaces the value downstream). Yields the model."""
        handles = []
        _not_one_pair(fwd_hooks, "hooks()", "hooks([(name, fn)])")
        try:
            for pair in fwd_hooks:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
                    raise HookError(f"hooks() takes (name, fn) pairs, fn callable; got {pair!r}")
                name_filter, fn = pair
                handles.extend(self._hook_points[n].add(fn) for n in self._resolve(name_filter))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """`forward(*args, **kwargs)` with `fwd_hooks` attached for this one pass (TransformerLens's
        spelling of `with model.hooks(fwd_hooks): model(...)`); returns the forward's output."""
        if "bwd_hooks" in kwargs:  # else forward's "unexpected keyword argument 'bwd_hooks'"
            raise HookError("run_with_hooks takes no bwd_hooks: for a gradient with respect to an activation, "
                            "run_with_cache(..., names=..., detach=False) and torch.autograd.grad(out, cache[name])")
        if "names" in kwargs:  # else forward's "unexpected keyword argument 'names'"
            raise HookError("run_with_hooks caches nothing, so takes no names=: run_with_cache(..., names=..., "
                            "fwd_hooks=[(name, fn)]) caches a hooked pass")
        with self._hooked(fwd_hooks, "run_with_hooks"):
            return self(*args, **kwargs)

    @contextlib.contextmanager
    def _hooked(self, fwd_hooks, method: str) -> Iterator[None]:
        """`fwd_hooks` attached for one pass of `method` (run_with_hooks, run_with_cache), which is then
        warned of the points they named that the pass did not reach."""
        # NOTE: one pair, listed below, was two: "hooks() takes (name, fn) pairs; got 'hook_embed'" (a tour)
        _not_one_pair(fwd_hooks, method, "fwd_hooks=[(name, fn)]")
        # NOTE: each filter is read twice (attached, then asked which points it named): a generator of
        # names was empty the second time, "matches no hook point" (a tour); a list reads alike twice
        pairs, ran = [_reusable(p) for p in fwd_hooks], set()
        with self.hooks(pairs):  # checks the pairs; then which points they attached to, and which of them ran
            matched = [set(self._resolve(f)) for f, _ in pairs]
            named = [n for n in self._hook_points if any(n in m for m in matched)]
            with self.hooks([(named, lambda t, hook: ran.add(hook.name))] if named else []):
                yield
        # the caller's frame is 5 up: this generator, contextlib's __exit__, run_with_hooks or run_with_cache
        _warn_unreached(method, _unreached([f for f, _ in pairs], named, ran), len(named), stacklevel=5)

    def add_hook(self, name_filter: NameFilter, fn: HookFn) -> list[torch.utils.hooks.RemovableHandle]:
        """Attach `fn` to every matching hook point until removed (`handle.remove()` or `reset_hooks()`):
        for a session that keeps an edit across many forwards. Prefer `hooks()`, which always detaches."""
        if not callable(fn):
            raise HookError(f"add_hook({name_filter!r}, fn): fn must be callable, got {type(fn).__name__}")
        return [self._hook_points[n].add(fn) for n in self._resolve(name_filter)]

    def _resolve(self, name_filter: NameFilter) -> list[str]:
        """The hook points a filter names (at least one)."""
        if isinstance(name_filter, str) and name_filter in self._hook_points:
            return [name_filter]
        names = list(self._hook_points)
        match = _matcher(name_filter, names)
        hit = [n for n in names if match(n)]
        if not hit:
            raise HookError(f"hook filter {name_filter!r} matches no hook point")
        return hit

    def reset_hooks(self) -> int:
        """Remove every hook attached to any hook point (by `add_hook`, `hooks()` or `HookPoint.add`);
        returns how many were removed."""
        n = 0
        for point in self._hook_points.values():
            n += len(point._forward_hooks)
            point._forward_hooks.clear()
        return n

    def run_with_cache(self, *args, names: NameFilter = None, detach: bool = True, device=None,
                       fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """Run `forward(*args, **kwargs)` and return `(output, cache)` with `cache[name] = tensor` (a dict;
        a name it lacks raises a HookError that says why).

        `names`: None = every hook point except the opt-in ones (`hook_pattern`), a name, a glob
        ("layers.*.ffn.gate.hook_topk_ids"), a list of names or a predicate. Each entry is a copy of
        the tensor as it passed its hook point, so that nothing later in the forward (a hook that edits
        in place, or the same tensor passing the next hook point: `layers.0.hook_resid_post` is
        `layers.1.hook_resid_pre`) changes what was cached. Detached unless `detach=False`, and moved to
        `device` if given. With `detach=False` and gradients on, the copy (on the tensor's own device)
        is what the forward goes on with, so `torch.autograd.grad(logit, cache[name])` is the gradient
        with respect to that activation (weights held still with `requires_grad_(False)` too); a cached
        `hook_pattern` is then applied as a product, not by the fused kernel (the output moves by rounding).
        `fwd_hooks`: (name, fn) pairs attached for this pass, as `run_with_hooks` takes them, before the
        cache's own: a point they edit is cached as they left it (a patched or ablated run's activations).
        """
        if "names_filter" in kwargs:  # else forward's "unexpected keyword argument 'names_filter'"
            raise HookError("run_with_cache takes names=, not TransformerLens's names_filter= (the same filters: a "
                            "name, a glob, a list of names or a predicate)")
        device = _cache_device(device)
        names = reread(names)  # picked, then warned of
        if not detach and not torch.is_grad_enabled():  # the cache then held no graph, and grad() failed later
            warnings.warn("run_with_cache(detach=False) under torch.no_grad() or inference_mode(): gradients are off, "
                          "so the cached activations have none (call it with gradients on)", stacklevel=2)
        all_names = list(self._hook_points)
        match = _matcher(names, all_names)
        selected_names = [n for n in all_names if match(n)]
        cache = ActivationCache(all_names, selected_names)

        def save(t: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
            copy = t.detach() if detach else t
            copy = cache[hook.name] = copy.to(device, copy=True) if device is not None else copy.clone()
            if not detach and torch.is_grad_enabled() and copy.is_floating_point() and not copy.requires_grad:
                # NOTE: weights held still (m.requires_grad_(False)) left the activations without a graph,
                # so grad(logit, cache[name]) raised "element 0 of tensors does not require grad" (a
                # tour): the copy becomes a leaf that does
                copy.requires_grad_(True)
            # NOTE: a copy nothing downstream read had no gradient: grad(logit, cache[name]) raised "not
            # used in the graph" (a tour); the forward goes on with the copy, the same values
            return copy if copy.requires_grad and copy.device == t.device else None

        selected = [(n, save) for n in selected_names]
        if not selected:
            raise HookError(f"names={names!r} matches no hook point (see model.hook_names())")
        with self._hooked(fwd_hooks, "run_with_cache"), self.hooks(selected), self._final_scale_to(cache, detach):
            out = self(*args, **kwargs)
        if names is not None:  # asked for by name, and silently absent from the cache before
            _warn_unreached("run_with_cache", _unreached([names], selected_names, cache), len(selected))
        return out, cache

    @contextlib.contextmanager
    def _final_scale_to(self, cache: ActivationCache, detach: bool) -> Iterator[None]:
        """Record into `cache` the scale each final norm gives its input, for `cache.apply_final_norm`:
        [B, S, 1], one number a position. The final norm is `self.norm`, and MTP module k's `self.mtp[k].norm`
        (where the model has them)."""
        norms = {None: getattr(self, "norm", None)}
        norms.update((k, getattr(mod, "norm", None)) for k, mod in enumerate(getattr(self, "mtp", ())))

        def recorder(key: int | None) -> Callable:
            def record(mod: nn.Module, args: tuple) -> None:
                scale = final_scale(mod, args[0].detach() if detach else args[0])
                cache._norms[key] = (scale, mod.weight.detach() if detach else mod.weight)
            return record

        handles = [norm.register_forward_pre_hook(recorder(key)) for key, norm in norms.items() if norm is not None]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _cache_device(device) -> torch.device | None:
    """run_with_cache's `device`, checked before the forward: a name torch lacks ('gpu'), or a CUDA device this
    machine does not have, was torch's error from inside the first hook that copied to it, mid-forward (a bug
    hunt); each is one InputError."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch lists its 20 device types, or its overloads (5.0)
        raise InputError(f"run_with_cache: device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or a "
                         "torch.device") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise InputError(f"run_with_cache: device={str(device)!r}: this machine's torch sees {have} CUDA device(s)")
    return device


def _not_one_pair(fwd_hooks, call: str, fix: str) -> None:
    """One (name, fn) pair where `call` takes a list of them is refused, with the `fix` to write; so is what is
    no list at all (None, a function: a TypeError from the loop over it, a bug hunt)."""
    if fwd_hooks is None or callable(fwd_hooks) or isinstance(fwd_hooks, (str, bytes, dict)) \
            or not isinstance(fwd_hooks, Iterable):
        raise HookError(f"{call} takes a list of (name, fn) pairs; got {fwd_hooks!r}: write {fix}")
    if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and callable(fwd_hooks[1]):
        raise HookError(f"{call} takes a list of (name, fn) pairs; got one pair, {fwd_hooks[0]!r}: write {fix}")


def _reusable(pair):
    """A (filter, fn) pair with an iterator filter (a generator of names) read into a list."""
    if isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], Iterator):
        return (reread(pair[0]), pair[1])
    return pair


def reread(names: NameFilter) -> NameFilter:
    """A name filter that will be read more than once (picked, then asked what it named): an iterator (a
    generator of names) read into a list, which then reads alike every time; any other filter as it is."""
    return list(names) if isinstance(names, Iterator) else names


def _unreached(filters: list, named: list[str], reached) -> list[str]:
    """The points of `named` (what `filters` picked) that the forward did not reach (not in `reached`), less
    the MTP module's that a predicate or a glob picked with points of the layers in a forward without the
    MTP module: TransformerLens's `lambda n: n.endswith("hook_resid_post")` picks mtp.0.block.hook_resid_post
    too, and was warned of on every forward without mtp=True (a tour). An MTP point named by its own name or
    a glob of the MTP module's ("mtp.0.*"), or by a filter that picks only the MTP module's, is still warned of."""
    missed = [n for n in named if n not in reached]
    if any(n.startswith("mtp.") for n in reached) or all(n.startswith("mtp.") for n in named):
        return missed
    asked = set()  # the MTP points a name or a glob of the MTP module's picks
    for f in filters:
        items = [f] if isinstance(f, str) else f if isinstance(f, (list, tuple, set)) else []
        asked.update(n for n in missed for i in items if isinstance(i, str) and (i == n or i.startswith("mtp.")
                                                                                 and fnmatch.fnmatchcase(n, i)))
    return [n for n in missed if not n.startswith("mtp.") or n in asked]


def _warn_unreached(method: str, unreached: list[str], n_named: int, stacklevel: int = 3) -> None:
    """Warn, for the caller of `method`, that hook points it named were not reached by its forward."""
    if unreached:
        warnings.warn(f"{method}: {len(unreached)} of the {n_named} hook points named were not reached by this forward "
                      f"(e.g. {unreached[0]}): the MTP module runs only with mtp=True, and start_at_layer skips the "
                      "blocks before it (stop_at_layer those from it on)", stacklevel=stacklevel)
