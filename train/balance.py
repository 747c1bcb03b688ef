"""Load balancing for training: a tap on every MoE router, the DeepSeek-V3 balancing terms.

Legend: T tokens, E routed experts, K experts per token, B sequences.
- aux-free: after each optimizer step `update_bias` moves each gate's bias by -gamma * sign(load - mean).
- `seq_balance_loss`: the sequence-wise balance loss alpha * sum_i f_i P_i, averaged over sequences.
- `switch_balance_loss`: the Switch-style auxiliary loss over the whole batch (for comparisons).
- `settle_biases`: after training, bias updates alone (weights frozen) on loads pooled over several
  batches, with a step that decays to zero, so the shipped bias sits at balance instead of
  wherever the last +-gamma jitter of training left it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.moe import MoE
from model.transformer import Transformer


@dataclass(frozen=True)
class GateRef:
    label: str  # "layer3" or "mtp0": how run.json and messages name it
    layer: int  # its layer index in the tables (an MTP block's router: n_layers + k, as in the checkpoint)
    prefix: str  # hook prefix, e.g. "layers.3.ffn.gate"


def moe_gates(m: Transformer) -> list[GateRef]:
    """Every MoE router: main MoE layers, then each MTP block."""
    gates = [GateRef(f"layer{i}", i, f"layers.{i}.ffn.gate") for i, layer in enumerate(m.layers)
             if isinstance(layer.ffn, MoE)]
    gates += [GateRef(f"mtp{k}", m.args.n_layers + k, f"mtp.{k}.block.ffn.gate") for k in range(len(m.mtp))]
    return gates


class RoutingTap:
    """Hooks that keep the live (autograd-connected) scores [T, E] and chosen ids [T, K] of every gate."""

    def __init__(self, gates: list[GateRef]) -> None:
        self.gates = gates
        self.scores: dict[str, torch.Tensor] = {}
        self.ids: dict[str, torch.Tensor] = {}

    def hooks(self) -> list:
        def keep(store: dict, label: str):
            def fn(t: torch.Tensor, hook) -> None:
                store[label] = t
            return fn

        out = []
        for g in self.gates:
            out.append((f"{g.prefix}.hook_scores", keep(self.scores, g.label)))
            out.append((f"{g.prefix}.hook_topk_ids", keep(self.ids, g.label)))
        return out

    def clear(self) -> None:
        self.scores.clear()
        self.ids.clear()


def expert_counts(ids_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert [E] (float32)."""
    return torch.bincount(ids_TK.flatten(), minlength=n_experts).float()


def seq_balance_loss(scores_TE: torch.Tensor, ids_TK: torch.Tensor, batch: int) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss, before the alpha weight, averaged over sequences:
    sum_i f_i P_i with f_i = E/(K S) * #tokens of the sequence choosing i and P_i the sequence mean
    of s'_i,t = s_i,t / sum_j s_j,t. Equals 1 when every sequence is perfectly balanced."""
    E, K = scores_TE.shape[-1], ids_TK.shape[-1]
    s_BSE = scores_TE.view(batch, -1, E)
    S = s_BSE.shape[1]
    p_BE = (s_BSE / s_BSE.sum(-1, keepdim=True)).mean(1)
    ids_BA = ids_TK.reshape(batch, -1)  # A = S*K assignments of each sequence
    counts_BE = torch.zeros(batch, E, device=scores_TE.device).scatter_add_(
        1, ids_BA, torch.ones_like(ids_BA, dtype=torch.float32))
    f_BE = counts_BE * (E / (K * S))
    return (f_BE * p_BE).sum(-1).mean()


def switch_balance_loss(scores_TE: torch.Tensor, ids_TK: torch.Tensor) -> torch.Tensor:
    """Switch-style balance loss over this process's batch, before its weight: E * sum_i f_i P_i with
    f_i = #assignments to i / (K T) and P_i = mean_t s'_i,t. Equals 1 at perfect balance."""
    T, E = scores_TE.shape
    K = ids_TK.shape[-1]
    f = expert_counts(ids_TK, E) / (K * T)
    p = (scores_TE / scores_TE.sum(-1, keepdim=True)).mean(0)
    return E * (f * p).sum()


@torch.no_grad()
def update_bias(bias: torch.Tensor, load: torch.Tensor, speed: float) -> None:
    """Auxiliary-loss-free balancing: bias_i -= speed * sign(load_i - mean load) (in place).
    Overloaded experts become less likely to be chosen; the weights still come from unbiased scores."""
    bias.sub_(speed * torch.sign(load - load.mean()))


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = (max_i load_i - mean load) / mean load (Wang et al. 2024, Eq. 4); 0 = perfect balance."""
    mean = load.mean()
    return float((load.max() - mean) / mean) if mean > 0 else float("nan")


def _pooled_loads(raw: Transformer, tap: RoutingTap, get_batch, first: int, pooled: int, all_reduce,
                  done=None) -> torch.Tensor:
    """Each gate's expert loads [G, E] over batches first .. first + pooled - 1, summed over ranks;
    `done()` after each batch's forward pass."""
    E, use_mtp = raw.args.n_routed_experts, len(raw.mtp) > 0
    loads = torch.zeros(len(tap.gates), E, device=raw.embed.weight.device)
    for i in range(first, first + pooled):
        x = get_batch(i)
        tap.clear()
        with raw.hooks(tap.hooks()):
            raw(x[:, :-1], mtp=use_mtp)
        for gi, g in enumerate(tap.gates):
            if g.label in tap.ids:
                loads[gi] += expert_counts(tap.ids[g.label], E)
        if done is not None:
            done()
    return all_reduce(loads)


@torch.no_grad()
def settle_biases(raw: Transformer, tap: RoutingTap, gate_mods: dict, get_batch, updates: int, pooled: int,
                  speed: float, all_reduce, done=None) -> dict[str, list[float]]:
    """Bias-only updates with the weights frozen: `updates` times, count each gate's loads over
    `pooled` batches (`get_batch(i)` -> windows [B, S+1], i = 0, 1, ...; loads summed over ranks by
    `all_reduce`) and move the bias by -gamma_u * sign(load - mean), gamma_u = speed * (1 - u/updates).
    Then pool `pooled` more fresh batches to measure where the bias settled. Returns per gate
    `updates` + 1 MaxVio values of the pooled loads: before each update (the first is where training
    left the bias), then after the last update (where it settled). `done()`, if given, once per batch after
    its forward pass (a progress bar that counted each batch as `get_batch` handed it out read 9/9 during
    the last forward)."""
    labels = [g.label for g in tap.gates]
    history: dict[str, list[float]] = {label: [] for label in labels}
    for u in range(updates + 1):
        loads = _pooled_loads(raw, tap, get_batch, u * pooled, pooled, all_reduce, done)
        for gi, label in enumerate(labels):
            history[label].append(max_violation(loads[gi]))
            if u < updates:
                update_bias(gate_mods[label].bias, loads[gi], speed * (1 - u / updates))
    return history
