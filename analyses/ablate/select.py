"""Expert ablations, the core: what to disable (selections), the routing guard, and the hooks that
disable experts. A sweep's spec files are spec.py's; the job that runs them over a corpus is run.py.

    from analyses.ablate import ablated
    with ablated(model, {1: [3, 5], 2: [7]}, mode="reroute"):   # layer -> disabled routed experts
        logits = model(tokens)

Modes (definitions: docs/metrics.md, "Ablation"):

- `reroute` (DeepSeekMoE protocol, section 4.5): a hook on `layers.L.ffn.gate.hook_select_scores`
  sets the disabled experts' selection scores to -inf BEFORE group-limited routing, so the group
  scores and the top-k are chosen among the remaining experts. The weights still come from the
  unbiased scores of the experts finally chosen (normalised over them), exactly as in the Gate.
  The experts disabled here are the same for every token; `token_top` R (pertoken.py) masks each
  token's own top-R instead, the paper's Figure 4.
  NOTE: with the sigmoid bias a group's score is the sum of its two best selection scores, so a
  group left with fewer than two experts scores -inf and is never chosen (its last expert becomes
  unreachable) while fewer groups are kept than there are; without bias (max) one expert is enough.
  The guard below counts this. A router that keeps every group (`n_limited_groups` = G) limits
  nothing: its experts are routed as if ungrouped.
- `zero`: routing untouched; hooks on `hook_topk_ids` (to see the ids) and `hook_topk_weights` set
  the disabled experts' weights to 0. The other weights are left as they are, or with
  `renormalise` rescaled so each token's weights keep their original sum (route_scale when
  norm_topk_prob); a token whose K experts are all disabled gets no routed output either way.
- `shared_layers`: a hook on `layers.L.ffn.hook_shared_out` replaces the shared expert's output by 0.

Routing guard (reroute only): with E experts in G groups of E/G, top-k K and `n_limited_groups`
groups kept, a layer stays routable only when at least `n_limited_groups` groups remain eligible
(>= 2 remaining experts with bias, >= 1 without) and the `n_limited_groups` eligible groups with the
fewest remaining experts still hold K experts together (G = 1, or every group kept: K experts left;
a kept group that scores -inf is still kept, so its remaining experts stay reachable). Anything else could
route a token to a disabled expert, so it is refused before running.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import AblationError  # re-exported: the other modules and commands import it from here

MODES = ("reroute", "zero")
SPEC_KEYS = ("name", "mode", "renormalise", "experts", "top", "random", "token_top", "domain", "seed", "layers",
             "shared")
ALL = "all"  # the domain of the pooled rows
RANDOM_DRAWS = 100  # redraws of a random selection that the guard refuses (reroute)


# ----------------------------------------------------------------------------- the router
@dataclass(frozen=True)
class RouterShape:
    """What the guard and the selections need to know about a model's routing."""
    n_layers: int
    n_dense_layers: int
    n_experts: int  # E routed experts per MoE layer
    topk: int  # K
    n_groups: int  # G
    topk_groups: int  # groups kept per token
    has_bias: bool  # sigmoid routers carry the balancing bias: group score = sum of the top-2
    n_shared: int

    @classmethod
    def of(cls, args) -> "RouterShape":
        return cls(args.n_layers, args.n_dense_layers, args.n_routed_experts, args.n_activated_experts,
                   args.n_expert_groups, args.n_limited_groups, args.score_func == "sigmoid",
                   args.n_shared_experts)

    @property
    def moe_layers(self) -> list[int]:
        return list(range(self.n_dense_layers, self.n_layers))

    def check_layer(self, layer: int, what: str = "layer") -> int:
        if not 0 <= layer < self.n_layers:
            raise AblationError(f"{what} {layer} out of range: the model has layers 0..{self.n_layers - 1} "
                                f"(MoE layers {self.n_dense_layers}..{self.n_layers - 1})")
        if layer < self.n_dense_layers:
            raise AblationError(f"{what} {layer} is dense (n_dense_layers={self.n_dense_layers}): it has no "
                                f"experts; MoE layers are {self.n_dense_layers}..{self.n_layers - 1}")
        return layer

    def check_expert(self, layer: int, expert: int) -> int:
        if not 0 <= expert < self.n_experts:
            raise AblationError(f"expert {layer}:{expert} out of range: layers have experts 0..{self.n_experts - 1}")
        return expert


def check_routable(shape: RouterShape, layer: int, disabled: Iterable[int]) -> None:
    """Raise AblationError if `reroute` with `disabled` experts of `layer` could leave a token fewer
    than K experts to choose (see the module docstring for the rule)."""
    alive = np.ones(shape.n_experts, bool)
    alive[list(disabled)] = False
    K, G, keep = shape.topk, shape.n_groups, shape.topk_groups
    if G <= 1 or keep >= G:  # every group kept: no group limit (a review found such reroutes refused)
        if alive.sum() < K:
            raise AblationError(f"layer {layer}: {int(alive.sum())} experts left but every token needs top-k={K}: "
                                "too many experts disabled to reroute")
        return
    per_group = alive.reshape(G, -1).sum(1)
    need = 2 if shape.has_bias else 1
    eligible = np.sort(per_group[per_group >= need])
    if len(eligible) < keep:
        raise AblationError(
            f"layer {layer}: only {len(eligible)} of {G} expert groups keep >= {need} experts but routing keeps "
            f"{keep} groups per token (remaining per group: {per_group.tolist()}): a whole group is disabled "
            "and the group limit cannot be met")
    if eligible[:keep].sum() < K:
        raise AblationError(
            f"layer {layer}: a token routed to the {keep} groups with the fewest remaining experts "
            f"would have {int(eligible[:keep].sum())} < top-k={K} experts (remaining per group: "
            f"{per_group.tolist()}): too many experts disabled to reroute")


def also_removed(shape: RouterShape, disabled: Iterable[int]) -> list[int]:
    """The experts that rerouting with `disabled` removes without naming them: the rest of a group
    left with fewer enabled experts than group-limited routing needs to score it (two with sigmoid
    routing's bias, which scores a group by its two best experts; see the module docstring)."""
    G, need = shape.n_groups, 2 if shape.has_bias else 1  # need: as check_routable
    if G <= 1 or shape.topk_groups >= G:  # every group kept, a starved one too: nothing else removed
        return []
    alive = np.ones(shape.n_experts, bool)
    alive[list(disabled)] = False
    starved = alive.reshape(G, -1).sum(1) < need
    return [int(e) for e in np.flatnonzero(alive & np.repeat(starved, shape.n_experts // G))]


def normalise_disabled(shape: RouterShape, disabled: Mapping) -> dict[int, list[int]]:
    """{layer: experts} validated, sorted and deduplicated (empty layers dropped). A selection that is not
    such a mapping ('2:5', parse_experts' text) or a layer's experts that are not a list ({2: 5}) are
    refused by name: they were "'str' object has no attribute 'items'" and "'int' object is not iterable"."""
    if not isinstance(disabled, Mapping):
        raise AblationError(f"experts {disabled!r}: expected {{layer: [expert, ...]}}, e.g. {{2: [5, 7]}}"
                            + (" (parse_experts reads the text form)" if isinstance(disabled, str) else ""))
    out: dict[int, list[int]] = {}
    for layer, experts in disabled.items():
        layer = shape.check_layer(_int(layer, "layer"))
        if isinstance(experts, (str, bytes, int, np.integer)) or not isinstance(experts, Iterable):
            raise AblationError(f"layer {layer}: experts {experts!r}: expected a list of expert ids, e.g. [5, 7]")
        ids = sorted({shape.check_expert(layer, _int(e, "expert")) for e in experts})
        if ids:
            out[layer] = sorted(set(out.get(layer, [])) | set(ids))
    return dict(sorted(out.items()))


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
        raise AblationError(f"{what} {v!r} is not an integer")
    try:
        return int(v)
    except ValueError:
        raise AblationError(f"{what} {v!r} is not an integer") from None


def experts_label(experts: Mapping) -> str:
    """`{2: [7, 5, 5], 1: [3]}` -> "1:3,2:5+7": a selection's name, the same however it was written
    (layers and ids sorted, repeats dropped; as given when they are not all integers, which the check
    against the model then refuses)."""
    try:
        items = sorted((_int(k, "layer"), sorted({_int(e, "expert") for e in v})) for k, v in experts.items())
    except (AblationError, TypeError):
        items = list(experts.items())
    return ",".join(f"{k}:{'+'.join(map(str, v)) if isinstance(v, Iterable) and not isinstance(v, str) else v}"
                    for k, v in items)


def parse_experts(text: str) -> dict[int, list[int]]:
    """`"1:3+5,2:7"` -> {1: [3, 5], 2: [7]} (layer:expert[+expert...], comma separated)."""
    out: dict[int, list[int]] = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        if not re.fullmatch(r"\d+:\d+(\+\d+)*", item.replace(" ", "")):
            raise AblationError(f"experts {item!r}: expected layer:expert or layer:e1+e2 (e.g. 1:3+5,2:7)")
        layer, ids = item.replace(" ", "").split(":")
        out.setdefault(int(layer), []).extend(int(e) for e in ids.split("+"))
    return out


def parse_layers(value) -> list[int] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise AblationError(f"layers {value!r}: expected a list of layer indices")
    try:
        return sorted({_int(x.strip() if isinstance(x, str) else x, "layer") for x in items})
    except AblationError as e:  # `--layers ''` (an unset shell variable) said "layer '' is not an integer"
        raise AblationError(f"layers {value!r}: {e}; give MoE layer indices, e.g. 1,3 (leave it out for all)") \
            from None


# ---------------------------------------------------------------------------- selections
@dataclass
class Ablation:
    """One ablation: a mode and a selection of experts to disable.

    Selection (at most one of): `experts` {layer: [ids]} (or "1:3+5,2:7"); `top` N = the N most
    loaded experts of every layer in `layers` (by `domain`'s load if given); `random` N = N experts
    drawn per layer, seeded by (`seed`, layer); `token_top` R = each token's own top-R experts by its
    router's selection score (DeepSeekMoE's Figure 4 protocol; pertoken.py); none = only the shared expert
    (`shared`) or nothing. `layers` restricts top/random/token_top (default: every MoE layer) and says
    where `shared` applies.
    """
    name: str = ""
    mode: str = "reroute"
    renormalise: bool = False
    experts: dict[int, list[int]] | None = None
    top: int | None = None
    random: int | None = None
    token_top: int | None = None
    domain: str | None = None
    seed: int = 0
    layers: list[int] | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AblationError(f"mode {self.mode!r}: choose {' or '.join(MODES)}")
        if isinstance(self.experts, str):
            self.experts = parse_experts(self.experts)
        elif self.experts is not None:
            if not isinstance(self.experts, Mapping):
                raise AblationError(f"experts {self.experts!r}: expected 'layer:e1+e2,...' or a mapping layer -> ids")
            merged: dict[int, list] = {}  # a layer written twice ("1" and 1) is one layer: its lists merge
            for k, v in self.experts.items():
                merged.setdefault(_int(k, "layer"), []).extend(str(v).split("+") if isinstance(v, (int, str))
                                                              else list(v))
            self.experts = merged
        self.layers = parse_layers(self.layers)
        if self.name is not None and not isinstance(self.name, str):  # YAML reads `name: 16` as a number
            raise AblationError(f"name {self.name!r} must be a string (in YAML, quote it: name: \"{self.name}\")")
        who = f"ablation {self.name!r}: " if self.name else ""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise AblationError(f"{who}seed must be a non-negative integer, not {self.seed!r}")
        for k in ("renormalise", "shared"):  # a spec file's "false" (a string) was true to Python (a review)
            if not isinstance(getattr(self, k), bool):
                raise AblationError(f"{who}{k} must be true or false, not {getattr(self, k)!r}")
        chosen = [k for k in ("experts", "top", "random", "token_top") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise AblationError(f"{who}choose one of experts, top, random, token_top (got {', '.join(chosen)})")
        for k in ("top", "random", "token_top"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise AblationError(f"{who}{k} must be a non-negative integer, not {v!r}")
        if self.domain is not None and self.top is None:
            raise AblationError(f"{who}domain selects the top experts of a domain: use it with top")
        if self.domain is not None and not (isinstance(self.domain, str) and self.domain.strip()):
            # '' (an unset shell variable) ranked the experts by every domain's load, without a word (a tour)
            raise AblationError(f"{who}domain {self.domain!r}: name a domain of the run (or leave it out for all)")
        if self.renormalise and self.mode != "zero":
            raise AblationError(f"{who}renormalise applies to mode zero only")
        if self.layers is not None and self.experts is not None and not self.shared:  # ignored: `experts: "1:3",
            # layers: [2]` ablated layer 1 without a word, where the command refuses --layers beside --experts
            raise AblationError(f"{who}layers {self.layers}: it chooses the layers of top, random, token_top and "
                                "shared; experts names its own (layer:expert, e.g. 2:3+5)")
        if self.renormalise and not chosen:  # shared alone: nothing to rescale, accepted without a word (a tour)
            raise AblationError(f"{who}renormalise rescales the routed experts left after mode zero, and this "
                                "ablation disables none (shared alone)")
        if not self.name:
            self.name = self.default_name()

    def default_name(self) -> str:
        if self.experts:
            sel = "experts-" + experts_label(self.experts)
        elif self.top is not None:
            sel = f"top{self.top}" + (f"-{self.domain}" if self.domain else "")
        elif self.random is not None:
            sel = f"random{self.random}-s{self.seed}"
        elif self.token_top is not None:
            sel = f"token-top{self.token_top}"
        else:
            sel = "none"
        if self.shared:
            sel = "shared" if sel == "none" else sel + "+shared"
        return sel + ("" if self.mode == "reroute" else "-zero" + ("-renorm" if self.renormalise else ""))

    @property
    def needs_loads(self) -> bool:
        return self.top is not None


@dataclass
class Plan:
    """An ablation resolved against a model (and loads): exactly which experts are disabled."""
    ablation: Ablation
    disabled: dict[int, list[int]]
    shared_layers: list[int] = field(default_factory=list)
    loads: str | None = None  # where top-N loads came from
    # reroute: experts left unreachable by `disabled` (`also_removed`: alone in a group, which routing
    # scores by its two best), removed as surely as the named ones
    unreachable: dict[int, list[int]] = field(default_factory=dict)
    token_layers: list[int] = field(default_factory=list)  # token_top: the layers where each token loses its top R

    @property
    def n_disabled(self) -> int:
        """Experts the ablation removes: the named ones and, rerouting, those it leaves unreachable (a
        top16 that stranded one more expert counted 48 of 96 where 49 were gone; a sweep user's review);
        token_top: R per layer, each token its own (so n_disabled / (E x layers) is Figure 4's ratio)."""
        return (sum(len(v) for v in self.disabled.values()) + sum(len(v) for v in self.unreachable.values())
                + (self.ablation.token_top or 0) * len(self.token_layers))

    @property
    def first_layer(self) -> int | None:
        layers = list(self.disabled) + self.shared_layers + self.token_layers
        return min(layers) if layers else None

    def spec(self) -> str:
        """The ablation as JSON, canonical (its part's key): experts as resolved, sorted and without
        duplicates ("1:5+3" is "1:3+5"), and no seed where nothing is drawn (a repeat of the same
        ablation wrote a second part beside the first; found by a review)."""
        a = {k: v for k, v in asdict(self.ablation).items() if v is not None}
        if self.ablation.experts is not None:
            a["experts"] = {str(k): v for k, v in self.disabled.items()}
        if self.ablation.random is None:
            a.pop("seed", None)
        a["disabled"] = {str(k): v for k, v in self.disabled.items()}
        if self.unreachable:  # only where there are some: other entries keep their keys
            a["unreachable"] = {str(k): v for k, v in self.unreachable.items()}
        if self.ablation.token_top is not None:
            a["token_layers"] = self.token_layers
        a["shared_layers"] = self.shared_layers
        if self.loads:
            a["loads"] = self.loads
        return json.dumps(a, sort_keys=True)


Loads = dict  # domain (or ALL) -> int64 [n_moe_layers, E] assignment counts


def resolve(ab: Ablation, shape: RouterShape, loads: Loads | None = None, loads_source: str | None = None) -> Plan:
    """Turn a selection into {layer: disabled experts}; checks layers, ids and (reroute) routability."""
    moe = shape.moe_layers
    layers = [shape.check_layer(x) for x in ab.layers] if ab.layers is not None else moe
    disabled: dict[int, list[int]] = {}
    if ab.experts is not None:
        disabled = normalise_disabled(shape, ab.experts)
    elif ab.top is not None:
        if ab.top > shape.n_experts:
            raise AblationError(f"ablation {ab.name!r}: top {ab.top} > the {shape.n_experts} experts of a layer")
        if loads is None:
            raise AblationError(f"ablation {ab.name!r}: top-N needs expert loads (a run or a baseline pass)")
        key = ab.domain or ALL
        if key not in loads:
            raise AblationError(f"ablation {ab.name!r}: no loads for domain {key!r}; domains are "
                                f"{sorted(k for k in loads if k != ALL)}")
        for layer in layers:
            counts = np.asarray(loads[key][moe.index(layer)])
            order = np.argsort(-counts, kind="stable")  # ties: lower expert id first
            if ab.top:
                disabled[layer] = sorted(order[: ab.top].tolist())
    elif ab.token_top is not None:
        from .pertoken import check_token_top  # pertoken imports this module

        try:
            check_token_top(shape, ab.token_top, ab.mode)
        except AblationError as e:
            raise AblationError(f"ablation {ab.name!r}: {e}") from None
    elif ab.random is not None:
        if ab.random > shape.n_experts:
            raise AblationError(f"ablation {ab.name!r}: random {ab.random} > the {shape.n_experts} experts of a layer")
        for layer in layers:
            if ab.random:
                disabled[layer] = _draw(ab, shape, layer)
    if ab.mode == "reroute":
        for layer, ids in disabled.items():
            try:
                check_routable(shape, layer, ids)
            except AblationError as e:
                raise AblationError(f"ablation {ab.name!r}: {e}") from None
    shared = []
    if ab.shared:
        if not shape.n_shared:
            raise AblationError(f"ablation {ab.name!r}: the model has no shared experts")
        shared = layers
    unreachable = {layer: more for layer, ids in disabled.items()
                   if ab.mode == "reroute" and (more := also_removed(shape, ids))}
    return Plan(ab, disabled, shared, loads_source if ab.needs_loads else None, unreachable,
                layers if ab.token_top else [])


def _draw(ab: Ablation, shape: RouterShape, layer: int) -> list[int]:
    """N distinct experts, seeded by (seed, layer) so each layer's draw is reproducible on its own;
    in reroute mode a draw the guard refuses is redrawn (deterministically), and so is one that leaves
    other experts unreachable (`also_removed`), while a draw that does not can be found: a random-16
    control then removes 16 experts, not 17 (a sweep user's review). Else the first routable draw."""
    rng = np.random.default_rng([ab.seed, layer])
    first = None
    for _ in range(RANDOM_DRAWS):
        ids = sorted(rng.choice(shape.n_experts, ab.random, replace=False).tolist())
        if ab.mode != "reroute":
            return ids
        try:
            check_routable(shape, layer, ids)
        except AblationError:
            continue
        if not also_removed(shape, ids):
            return ids
        first = first or ids
    if first is not None:
        return first
    raise AblationError(f"ablation {ab.name!r}: no routable draw of {ab.random} random experts in layer {layer} "
                        f"after {RANDOM_DRAWS} tries")


# ---------------------------------------------------------------------------------- hooks
def ablation_hooks(model, disabled: Mapping, mode: str = "reroute", *, renormalise: bool = False,
                   shared_layers: Iterable[int] = ()) -> list:
    """`(hook name, fn)` pairs for `model.hooks(...)` that disable `disabled` = {layer: experts}
    (and the shared expert of `shared_layers`). Validates ids and, for reroute, routability."""
    if mode not in MODES:
        raise AblationError(f"mode {mode!r}: choose {' or '.join(MODES)}")
    if renormalise and mode != "zero":
        raise AblationError("renormalise applies to mode zero only")
    shape = RouterShape.of(model.args)
    disabled = normalise_disabled(shape, disabled)
    hooks = []
    for layer, ids in disabled.items():
        mask_E = torch.zeros(shape.n_experts, dtype=torch.bool)
        mask_E[ids] = True
        g = f"layers.{layer}.ffn.gate."
        if mode == "reroute":
            check_routable(shape, layer, ids)
            hooks.append((g + "hook_select_scores", reroute_hook(mask_E)))
        else:
            seen: dict[str, torch.Tensor] = {}
            hooks.append((g + "hook_topk_ids", _remember(seen)))
            hooks.append((g + "hook_topk_weights", zero_hook(mask_E, seen, renormalise)))
    for layer in shared_layers:
        shape.check_layer(layer)
        if not shape.n_shared:
            raise AblationError("the model has no shared experts to disable")
        hooks.append((f"layers.{layer}.ffn.hook_shared_out", _drop))
    return hooks


@contextlib.contextmanager
def ablated(model, disabled: Mapping, mode: str = "reroute", *, renormalise: bool = False,
            shared_layers: Iterable[int] = ()):
    """`with ablated(model, {layer: [experts]}, mode): model(tokens)`; hooks removed afterwards.

    `disabled`: model layer index (1..n_layers-1, as in the hook names, MoE layers only) -> expert
    ids to disable. `mode`: "reroute" (their selection scores set to -inf, so each token is routed to
    its next-best allowed experts; refused where a layer's groups could not supply top-k experts) or
    "zero" (the routing as it was, the disabled experts' weights zeroed: the token loses their
    output); `renormalise` (zero only) rescales the remaining weights to the original sum.
    `shared_layers`: layers whose shared expert's output is dropped too. Bad ids, layers and modes are
    an `AblationError` before the forward."""
    with model.hooks(ablation_hooks(model, disabled, mode, renormalise=renormalise,
                                    shared_layers=shared_layers)):
        yield model


def plan_hooks(model, plan: Plan) -> list:
    from .pertoken import token_top_hooks

    ab = plan.ablation
    hooks = ablation_hooks(model, plan.disabled, ab.mode, renormalise=ab.renormalise, shared_layers=plan.shared_layers)
    if plan.token_layers:
        hooks += token_top_hooks(model, ab.token_top, plan.token_layers, ab.mode, renormalise=ab.renormalise)
    return hooks


def reroute_hook(mask_E: torch.Tensor):
    """hook_select_scores: the masked experts' selection scores to -inf (before group-limited top-k)."""
    def fn(select_TE: torch.Tensor, hook) -> torch.Tensor:
        return select_TE.masked_fill(mask_E.to(select_TE.device), float("-inf"))
    return fn


def _remember(seen: dict):
    def fn(ids_TK: torch.Tensor, hook) -> None:
        seen["ids"] = ids_TK  # read by the weights hook of the same gate call, just after
    return fn


def zero_hook(mask_E: torch.Tensor, seen: dict, renormalise: bool):
    """hook_topk_weights: the masked experts' weights to 0 (ids from the hook_topk_ids call that
    stored them in `seen`), the rest optionally rescaled to the token's original sum."""
    def fn(w_TK: torch.Tensor, hook) -> torch.Tensor:
        keep_TK = ~mask_E.to(w_TK.device)[seen.pop("ids")]
        out = w_TK * keep_TK
        if renormalise:
            total, kept = w_TK.sum(-1, keepdim=True), out.sum(-1, keepdim=True)
            out = out * torch.where(kept > 0, total / kept.where(kept > 0, torch.ones_like(kept)), 0.0)
        return out
    return fn


def _drop(out: torch.Tensor, hook) -> torch.Tensor:
    return torch.zeros_like(out)
