"""Per-token ablation, DeepSeekMoE's redundancy protocol (Dai et al. 2024, section 4.5, Figure 4): every
token loses ITS OWN top-R routed experts, those its router ranks highest, and is routed again among the
rest. `Ablation(token_top=R)` (`--token-top R`); the fixed selections (`top`, `random`, `experts`)
disable the same experts for every token instead (select.py).

    from analyses.ablate.pertoken import token_top_hooks
    with model.hooks(token_top_hooks(model, 2)):   # every MoE layer: each token's top-2 masked
        logits = model(tokens)

The ranking is the router's SELECTION score, s_i + b_i with the balancing bias of a sigmoid (V3)
router, s_i alone without one (V2): the score that decides which experts a token is routed to, as the
paper's one routing probability did. The unbiased s_i still weighs the experts chosen after the mask.
docs/metrics.md, "Ablation", says why not s_i alone.

- `reroute`: a hook on `hook_select_scores` sets each token's top-R selection scores to -inf, BEFORE
  group-limited routing: the group scores and the top-K come from the remaining experts as in the Gate,
  and the weights from their unbiased scores (normalised over them). A layer's R is refused where
  some token could be left fewer than K routable experts (`max_token_top`): any R experts can be a
  token's top R, so the guard is `check_routable`'s rule for the worst R experts.
- `zero`: routing untouched; the hook on `hook_topk_weights` sets to 0 the weights of the token's first
  R routed experts (the Gate's ids are sorted best first by selection score), the rest left as they
  are or, with `renormalise`, rescaled to the token's original sum. R <= K. Where a token's top R by
  selection score lie in the groups it keeps (always without a group limit), reroute masks the same R
  experts that zero drops: the two differ by the substitutes rerouting finds, the redundancy measured.
"""

from __future__ import annotations

import torch

from .select import AblationError, RouterShape


def max_token_top(shape: RouterShape) -> int:
    """The largest R for which masking ANY R experts of a layer still leaves every token K routable
    experts under group-limited routing (`check_routable`'s rule, applied to the worst R experts).

    Without a group limit: E - K. With G groups of n = E/G, `keep` kept per token and a group needing
    `need` remaining experts to score (2 with the sigmoid bias, else 1), the cheapest failures are
    (a) G - keep + 1 groups starved: (G - keep + 1)(n - need + 1) experts, or (b) `keep` groups left
    with need <= r_i and sum r_i = K - 1 (possible when keep * need <= K - 1): keep * n - K + 1;
    and in any case fewer than K experts left: E - K + 1. R is one less than the cheapest."""
    E, K, G, keep = shape.n_experts, shape.topk, shape.n_groups, shape.topk_groups
    fail = [E - K + 1]
    if G > 1 and keep < G:
        n, need = E // G, 2 if shape.has_bias else 1
        fail.append((G - keep + 1) * (n - need + 1))
        if keep * need <= K - 1:
            fail.append(keep * n - K + 1)
    return max(min(fail) - 1, 0)


def check_token_top(shape: RouterShape, r: int, mode: str) -> None:
    """Raise AblationError (one line, naming --token-top and the numbers) for an R the mode cannot run."""
    if mode == "zero":
        if r > shape.topk:
            raise AblationError(f"token_top (--token-top) {r} > top-k={shape.topk}: mode zero drops the token's "
                                f"top-R of the {shape.topk} experts it is routed to; use reroute for more")
        return
    limit = max_token_top(shape)
    if r > limit:
        groups = (f"{shape.n_groups} groups of {shape.n_experts // shape.n_groups}, {shape.topk_groups} kept per "
                  f"token{', a group scored by its two best' if shape.has_bias else ''}; "
                  if shape.n_groups > 1 and shape.topk_groups < shape.n_groups else "")
        raise AblationError(f"token_top (--token-top) {r} > {limit}: a token's top {r} of {shape.n_experts} experts "
                            f"can be experts whose masking the routing guard refuses (fewer than top-k={shape.topk} "
                            f"routable experts, or groups too few to keep; {groups}at most {limit} per token)")


def token_top_hooks(model, r: int, layers=None, mode: str = "reroute", *, renormalise: bool = False) -> list:
    """`(hook name, fn)` pairs for `model.hooks(...)` that take each token's own top-`r` routed experts
    away in `layers` (default: every MoE layer); checks the layers and `r` first (`check_token_top`)."""
    shape = RouterShape.of(model.args)
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise AblationError(f"token_top must be a non-negative integer, not {r!r}")
    if renormalise and mode != "zero":
        raise AblationError("renormalise applies to mode zero only")
    check_token_top(shape, r, mode)
    hooks = []
    for layer in (shape.moe_layers if layers is None else layers) if r else ():
        g = f"layers.{shape.check_layer(layer)}.ffn.gate."
        if mode == "reroute":
            hooks.append((g + "hook_select_scores", token_reroute_hook(r)))
        elif mode == "zero":
            hooks.append((g + "hook_topk_weights", token_zero_hook(r, renormalise)))
        else:
            raise AblationError(f"mode {mode!r}: choose reroute or zero")
    return hooks


def token_reroute_hook(r: int):
    """hook_select_scores: each token's top-`r` selection scores to -inf (a new tensor: the scores the
    weights come from are not edited), before group-limited top-k."""
    def fn(select_TE: torch.Tensor, hook) -> torch.Tensor:
        return select_TE.scatter(1, select_TE.topk(r, dim=-1).indices, float("-inf"))
    return fn


def token_zero_hook(r: int, renormalise: bool):
    """hook_topk_weights: the weights of each token's first `r` routed experts (ids best first) to 0, the
    rest optionally rescaled to the token's original sum (a token that keeps none gets no routed output)."""
    def fn(w_TK: torch.Tensor, hook) -> torch.Tensor:
        out = w_TK.clone()
        out[:, :r] = 0.0
        if renormalise:
            total, kept = w_TK.sum(-1, keepdim=True), out.sum(-1, keepdim=True)
            out = out * torch.where(kept > 0, total / kept.where(kept > 0, torch.ones_like(kept)), 0.0)
        return out
    return fn
