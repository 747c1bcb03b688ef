"""Expert steering, the core: what to steer (`Steer`) and the router hooks that do it.

    from analyses.steer import Steer, steered
    with steered(model, Steer(experts={2: [5, 7]})) as s:     # force experts 5 and 7 of layer 2
        logits = model(tokens)
    s.forced_share                                              # their share of the top-k, 1.0 here

Modes (the router: model/moe.py, Gate.forward):

- `force`: a hook on `layers.L.ffn.gate.hook_allowed_scores` (the selection scores after group
  masking, -inf outside the kept groups) sets the forced experts' scores of steered tokens to +inf,
  so top-k takes them whatever their group; the other K - n places go to the best remaining experts
  as usual. At most K experts per layer can be forced.
- `bias`: a hook on `layers.L.ffn.gate.hook_select_scores` (score + balancing bias, BEFORE group
  masking) adds `bias` to the steered experts' selection scores of steered tokens; group scores and
  top-k are then computed from the shifted scores, so the router may still refuse them.

Weights: neither hook touches them. The Gate computes the weights after top-k from its UNBIASED
scores gathered at the chosen ids, normalised over them when norm_topk_prob, times route_scale,
so a forced expert's weight is its own sigmoid score relative to the others' (tests/analyses/
test_steer.py recomputes them by hand from the captured hook_scores).

Which tokens: all, those of the windows whose domain is in `domains`, and/or those whose input
token id is in `token_ids` (both filters: both must hold). A forward pre-hook on the model reads
each call's input ids [B, S] (and `lengths`), and the gate hooks apply to the rows of the flattened
[T = B * S] gate input whose token passes; the caller says each batch row's domain through
`Steering.row_domains` (needed only when `domains` is set). Other rows are left bit-equal.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from analyses.ablate.select import AblationError, RouterShape, experts_label, normalise_disabled, parse_experts
from analyses.steer import MODES


class SteerError(AblationError):
    """A bad steering request (one line, naming the culprit)."""


# ------------------------------------------------------------------------------ the spec
@dataclass
class Steer:
    """One steering: experts per MoE layer ({2: [5, 7]} or "2:5+7,3:1"), a mode, and which tokens.

    mode: `force` (the experts enter the top-k) or `bias` (`bias` added to their selection scores).
    domains: steer only the tokens of these domains (None: every domain).
    token_ids: steer only tokens whose input id is one of these (None: every token).
    """
    name: str = ""
    experts: dict[int, list[int]] | str | None = None
    mode: str = "force"
    bias: float = 1.0
    domains: list[str] | None = None
    token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SteerError(f"mode {self.mode!r}: choose {' or '.join(MODES)}")
        if isinstance(self.experts, str):
            try:
                self.experts = parse_experts(self.experts)
            except AblationError as e:
                raise SteerError(str(e)) from None
        if not isinstance(self.experts, Mapping) or not any(self.experts.values()):
            raise SteerError("nothing to steer: give experts as layer:expert[+expert],... (e.g. 2:5+7)")
        if isinstance(self.bias, bool) or not isinstance(self.bias, (int, float)) or not math.isfinite(self.bias):
            raise SteerError(f"bias {self.bias!r}: must be a finite number")
        if isinstance(self.domains, str):
            self.domains = [self.domains]
        if self.domains is not None:
            self.domains = sorted(set(self.domains))
        if self.token_ids is not None:
            if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.token_ids):
                raise SteerError(f"token ids {self.token_ids!r}: must be non-negative integers")
            self.token_ids = sorted(set(self.token_ids))
        if not self.name:
            self.name = self.default_name()

    def default_name(self) -> str:
        name = f"{self.mode}-{experts_label(self.experts)}" + (f"-b{self.bias:g}" if self.mode == "bias" else "")
        if self.domains:
            name += "@" + "+".join(self.domains)
        if self.token_ids is not None:
            name += f"@{len(self.token_ids)}tokens"
        return name

    def resolve(self, shape: RouterShape) -> dict[int, list[int]]:
        """{layer: experts}, checked against the model: MoE layers, ids in range, <= K forced."""
        try:
            layers = normalise_disabled(shape, self.experts)  # validates layers and ids
        except AblationError as e:
            raise SteerError(str(e)) from None
        if self.mode == "force":
            for layer, ids in layers.items():
                if len(ids) > shape.topk:
                    raise SteerError(f"layer {layer}: {len(ids)} experts forced ({'+'.join(map(str, ids))}) but "
                                     f"a token takes only top-k={shape.topk}")
        return layers

    def spec(self, shape: RouterShape | None = None) -> str:
        """The steering as JSON (experts resolved when `shape` is given)."""
        experts = self.resolve(shape) if shape is not None else self.experts
        d = {"name": self.name, "mode": self.mode, "experts": {str(k): list(v) for k, v in experts.items()},
             "domains": self.domains, "token_ids": self.token_ids}
        if self.mode == "bias":
            d["bias"] = self.bias
        return json.dumps(d, sort_keys=True)


# ----------------------------------------------------------------------------- the hooks
@dataclass
class Steering:
    """A steering installed on a model: the hooks' shared state and what they counted.

    row_domains: the domain of each row of the next forward passes' batch (set by the caller when
    the steering has `domains`). Counters (over valid rows of every call since installation):
    `steered_tokens`, and per steered layer `pairs` (steered tokens) and `hits` (those whose top-k
    holds every steered expert of the layer). `last_rows` [T] / `last_hits[layer]` [T] are the
    masks of the latest call.
    """
    steer: Steer
    layers: dict[int, list[int]]
    row_domains: Sequence[str | None] | None = None
    steered_tokens: int = 0
    pairs: dict[int, int] = field(default_factory=dict)
    hits: dict[int, int] = field(default_factory=dict)
    last_rows: torch.Tensor | None = None
    last_valid: torch.Tensor | None = None
    last_hits: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def forced_share(self) -> float | None:
        n = sum(self.pairs.values())
        return sum(self.hits.values()) / n if n else None

    def reset(self) -> None:
        self.steered_tokens, self.pairs, self.hits = 0, {}, {}

    # --- per forward call: which rows are steered
    def on_call(self, module, args, kwargs) -> None:
        """Model forward pre-hook: the steered-row mask [T] from this call's input ids."""
        tokens = args[0] if args else kwargs["tokens"]
        rows = self._row_mask(tokens)
        lengths = kwargs.get("lengths")
        valid = torch.ones_like(tokens, dtype=torch.bool)
        if lengths is not None:
            valid = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths.to(tokens.device)[:, None]
        self.last_rows, self.last_valid = rows.reshape(-1), valid.reshape(-1)
        self.steered_tokens += int((self.last_rows & self.last_valid).sum())

    def _row_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.steer
        rows = torch.ones_like(tokens, dtype=torch.bool)
        if s.token_ids is not None:
            rows &= torch.isin(tokens, torch.tensor(s.token_ids, device=tokens.device))
        if s.domains is not None:
            if self.row_domains is None or len(self.row_domains) != tokens.shape[0]:
                raise SteerError(f"steering {s.name!r} applies to domains {s.domains}: set row_domains to the "
                                 f"domain of each of the batch's {tokens.shape[0]} rows")
            dom = [d is None or d in s.domains for d in self.row_domains]  # a row of no domain: not filtered
            rows &= torch.tensor(dom, device=tokens.device)[:, None]
        return rows

    def _rows(self, x_TE: torch.Tensor) -> torch.Tensor:
        rows = self.last_rows
        if rows is None or rows.numel() != x_TE.shape[0]:
            raise SteerError("steering hooks ran without the model's forward pre-hook (install them with "
                             "analyses.steer.steered(model, steer))")
        return rows.to(x_TE.device)

    # --- the gate hooks
    def force_hook(self, mask_E: torch.Tensor):
        """hook_allowed_scores: +inf at the forced experts of steered rows (chosen even in masked groups)."""
        def fn(allowed_TE: torch.Tensor, hook) -> torch.Tensor:
            hit_TE = self._rows(allowed_TE)[:, None] & mask_E.to(allowed_TE.device)
            return allowed_TE.masked_fill(hit_TE, float("inf"))
        return fn

    def bias_hook(self, mask_E: torch.Tensor, bias: float):
        """hook_select_scores: + bias at the steered experts of steered rows (before group masking)."""
        def fn(select_TE: torch.Tensor, hook) -> torch.Tensor:
            hit_TE = self._rows(select_TE)[:, None] & mask_E.to(select_TE.device)
            return torch.where(hit_TE, select_TE + bias, select_TE)
        return fn

    def count_hook(self, layer: int, experts: list[int]):
        """hook_topk_ids: per steered row, does the top-k hold every steered expert of the layer?"""
        want = torch.tensor(experts)

        def fn(ids_TK: torch.Tensor, hook) -> None:
            rows = self._rows(ids_TK)
            held = (ids_TK[:, None, :] == want.to(ids_TK.device)[None, :, None]).any(-1).all(-1)  # [T]
            self.last_hits[layer] = held & rows
            counted = rows & self.last_valid.to(rows.device)
            self.pairs[layer] = self.pairs.get(layer, 0) + int(counted.sum())
            self.hits[layer] = self.hits.get(layer, 0) + int((held & counted).sum())
        return fn

    def hooks(self, n_experts: int) -> list:
        out = []
        for layer, ids in self.layers.items():
            mask_E = torch.zeros(n_experts, dtype=torch.bool)
            mask_E[ids] = True
            g = f"layers.{layer}.ffn.gate."
            if self.steer.mode == "force":
                out.append((g + "hook_allowed_scores", self.force_hook(mask_E)))
            else:
                out.append((g + "hook_select_scores", self.bias_hook(mask_E, float(self.steer.bias))))
            out.append((g + "hook_topk_ids", self.count_hook(layer, ids)))
        return out


@contextlib.contextmanager
def steered(model, steer: Steer, row_domains: Iterable[str | None] | None = None):
    """`with steered(model, steer) as s: model(tokens)`: the steering hooks for the block (removed
    afterwards); yields the `Steering` (set `s.row_domains` per batch when `steer.domains` is set)."""
    shape = RouterShape.of(model.args)
    state = Steering(steer, steer.resolve(shape), list(row_domains) if row_domains is not None else None)
    handle = model.register_forward_pre_hook(state.on_call, with_kwargs=True)
    try:
        with model.hooks(state.hooks(shape.n_experts)):
            yield state
    finally:
        handle.remove()
