"""One training step's pieces: the model's arguments from the flags, the schedules, the losses of
a batch, the validation pass, and the ranks (data parallel: each rank a whole model).

Legend: B rows of the batch, S positions, D domains, G MoE gates (main layers, then MTP blocks),
E routed experts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import ConfigError, ModelArgs, Transformer
from model.args import _HF_KEYS, shipped_configs

from .balance import RoutingTap, expert_counts, max_violation, seq_balance_loss, switch_balance_loss
from .data import TrainError


# ------------------------------------------------------------------------------------------ model
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def model_args(ns: argparse.Namespace, vocab_size: int) -> ModelArgs:
    """ModelArgs from --config and --set; vocab_size and bos/eos follow the tokenizer.
    A config the architecture forbids raises ConfigError (one line, from ModelArgs.validate)."""
    src = str(ns.config)
    path = Path(src)
    if path.is_dir() or path.suffix == ".json" or path.exists():
        if not path.exists():
            raise TrainError(f"--config {src}: no such file")
        try:
            raw = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TrainError(f"--config {src}: not a readable JSON file ({e})") from None
        if not isinstance(raw, dict):
            raise TrainError(f"--config {src}: a JSON {type(raw).__name__}, not a config object")
        try:  # its errors named "config dict", not the file (a review)
            base = ModelArgs.from_hf_config(raw) if "model_type" in raw and "hidden_size" in raw \
                else ModelArgs.from_dict(raw)
        except ConfigError as e:
            raise TrainError(f"--config {src}: {str(e).removeprefix('config dict: ')}") from None
        d = base.to_dict()
    else:
        if src not in shipped_configs():  # ModelArgs.from_name's own message named neither the flag nor files
            raise TrainError(f"--config {src}: neither a config file nor a shipped config (available: "
                             f"{', '.join(shipped_configs())})")
        d = ModelArgs.from_name(src).to_dict()
    for item in ns.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrainError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in d:
            # a Hugging Face config.json key (what OUT/model/config.json shows) named only the miss
            ours = _HF_KEYS.get(key)
            hint = f" (the Hugging Face name of {ours}: --set {ours}={value})" if ours in d else ""
            raise TrainError(f"--set {item!r}: ModelArgs has no field {key!r}{hint}")
        d[key] = _parse_value(value)
    d.update(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1)
    args = ModelArgs.from_dict(d)  # refuses MTP depth 2 and beyond (ModelArgs.validate)
    if ns.seq_len > args.max_seq_len:
        raise TrainError(f"--seq-len={ns.seq_len} exceeds the config's max_seq_len={args.max_seq_len}")
    if getattr(ns, "balance", None) == "aux-free" and args.n_routed_experts and args.score_func != "sigmoid":
        # a softmax router has no bias to move: the first update was a traceback (a review)
        raise TrainError(f"--balance aux-free moves the routers' bias, which only sigmoid routers have; this "
                         f"config's score_func is {args.score_func!r}: pass --balance switch or --balance none")
    return args


# -------------------------------------------------------------------------------------- schedules
def lr_shape(step: int, ns: argparse.Namespace) -> float:
    """The schedule as a fraction of the peak: linear warm-up over `warmup_steps`, then cosine from 1
    to min_lr_ratio."""
    if step < ns.warmup_steps:
        return (step + 1) / ns.warmup_steps
    progress = min(1.0, (step - ns.warmup_steps) / max(1, ns.steps - ns.warmup_steps))
    return ns.min_lr_ratio + (1 - ns.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at(step: int, ns: argparse.Namespace) -> float:
    return ns.lr * lr_shape(step, ns)


def bias_speed_at(step: int, ns: argparse.Namespace) -> float:
    """gamma for the bias update after optimizer step `step` (`--bias-schedule`: constant, or the
    learning rate's cosine; with --lr 0 too, which divided by zero when it was lr_at / lr)."""
    if ns.bias_schedule == "constant" or step < ns.warmup_steps:
        return ns.bias_update_speed
    return ns.bias_update_speed * lr_shape(step, ns)


def make_optimizer(m: Transformer, ns: argparse.Namespace) -> torch.optim.AdamW:
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": ns.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=ns.lr, betas=(ns.beta1, ns.beta2), eps=1e-8)


# ------------------------------------------------------------------------------------------ ranks
class Dist:
    """The ranks of a data-parallel run (every rank a whole model); one process when WORLD_SIZE is
    unset or 1. Groups come from model.parallel.init_world, the one place that creates them."""

    def __init__(self, device_flag: str) -> None:
        from model.parallel import init_world
        from model.ranks import env_world_size

        want_cuda = device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available())
        if device_flag not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device_flag):
            raise TrainError(f"--device={device_flag!r}: choose auto, cpu, cuda or cuda:N")
        if want_cuda and not torch.cuda.is_available():
            raise TrainError(f"--device={device_flag} but torch sees no CUDA device")
        if ":" in device_flag and env_world_size() > 1:  # every rank would take that one GPU
            raise TrainError(f"--device={device_flag}: under torchrun each process takes its own GPU (LOCAL_RANK): "
                             "pass --device cuda")
        if ":" in device_flag and int(device_flag.split(":")[1]) >= (n := torch.cuda.device_count()):
            raise TrainError(f"--device={device_flag}: torch sees {n} CUDA device{'s' * (n != 1)} (cuda:0"
                             f"{f' to cuda:{n - 1}' if n > 1 else ''})")
        # cuda:N as given: it was passed on as "cuda", which trains on this rank's LOCAL_RANK GPU (cuda:0 alone)
        self.ranks = init_world(1, device=device_flag if ":" in device_flag else "cuda" if want_cuda else "cpu")
        self.world, self.rank, self.device = self.ranks.size, self.ranks.rank, torch.device(self.ranks.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def sum(self, **parts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each named tensor summed over the ranks, in one all-reduce: packed into one vector here
        and read back by name (no caller indexes the packed vector)."""
        names = list(parts)
        flat = torch.cat([parts[n].reshape(-1) for n in names])
        self.all_reduce(flat)
        out, i = {}, 0
        for n in names:
            k = parts[n].numel()
            out[n] = flat[i: i + k].view(parts[n].shape)
            i += k
        return out

    def barrier(self) -> None:
        self.ranks.barrier()

    def close(self) -> None:
        self.ranks.close()


# ----------------------------------------------------------------------------------------- losses
@dataclass
class StepOut:
    loss: torch.Tensor  # total, with grad
    lm_rows: torch.Tensor  # [B] mean LM loss of each row (detached)
    mtp_rows: torch.Tensor | None  # [B]
    aux: torch.Tensor  # weighted balance loss (detached)
    loads: torch.Tensor  # [G, E] assignments this step on this process
    agree: tuple[float, float] = (0.0, 0.0)  # MTP teacher-forced agreement (hits, positions), eval only


def forward_losses(model, raw: Transformer, tap: RoutingTap, x: torch.Tensor, ns: argparse.Namespace,
                   train: bool) -> StepOut:
    """Main + MTP losses and the balance loss for windows x [B, S+1] (inputs x[:, :S])."""
    B, S = x.shape[0], x.shape[1] - 1
    inp = x[:, :S]
    use_mtp = len(raw.mtp) > 0 and ns.mtp_weight > 0
    tap.clear()
    with raw.hooks(tap.hooks()):
        out = model(inp, mtp=use_mtp)
    logits, mtp_logits = (out if use_mtp else (out, None))
    V = logits.shape[-1]
    lm_tok = F.cross_entropy(logits.reshape(-1, V).float(), x[:, 1:].reshape(-1), reduction="none").view(B, S)
    loss = lm_tok.mean()
    mtp_rows = None
    agree = (0.0, 0.0)
    if mtp_logits is not None:
        # mtp_logits[:, i] predicts token i+2 of the input, i.e. x[:, i+2]
        mtp_tok = F.cross_entropy(mtp_logits.reshape(-1, V).float(), x[:, 2:].reshape(-1),
                                  reduction="none").view(B, S - 1)
        loss = loss + ns.mtp_weight * mtp_tok.mean()
        mtp_rows = mtp_tok.detach().mean(1)
        if not train:  # share of positions where the MTP draft equals the main model's next prediction
            hits = (mtp_logits.argmax(-1) == logits[:, 1:].argmax(-1)).sum().item()
            agree = (float(hits), float(B * (S - 1)))
    aux = torch.zeros((), device=x.device)
    if train and ns.balance != "none":
        for g in tap.gates:
            if g.label not in tap.scores:
                continue
            if ns.balance == "aux-free" and ns.seq_aux_weight > 0:
                aux = aux + ns.seq_aux_weight * seq_balance_loss(tap.scores[g.label], tap.ids[g.label], B)
            elif ns.balance == "switch" and ns.switch_weight > 0:
                aux = aux + ns.switch_weight * switch_balance_loss(tap.scores[g.label], tap.ids[g.label])
        loss = loss + aux
    E = raw.args.n_routed_experts
    loads = torch.stack([expert_counts(tap.ids[g.label], E) if g.label in tap.ids
                         else torch.zeros(E, device=x.device) for g in tap.gates]) \
        if tap.gates else torch.zeros(0, E, device=x.device)
    return StepOut(loss, lm_tok.detach().mean(1), mtp_rows, aux.detach(), loads.detach(), agree)


@torch.no_grad()
def evaluate(raw: Transformer, tap: RoutingTap, windows: dict[str, torch.Tensor], ns: argparse.Namespace,
             dist: Dist) -> dict:
    """Validation loss per domain (main and MTP), MaxVio_global per gate over the whole validation
    set, MTP teacher-forced agreement. Windows are shared out across ranks and summed."""
    raw.eval()
    domains = sorted(windows)
    D, G, E = len(domains), len(tap.gates), raw.args.n_routed_experts
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=dist.device)  # noqa: E731
    acc = {"lm_sum": z(D), "mtp_sum": z(D), "lm_tokens": z(D), "mtp_tokens": z(D), "loads": z(G, E),
           "agree": z(2)}  # agree: (MTP drafts equal to the main prediction, positions)
    for j, d in enumerate(domains):
        w = windows[d][dist.rank:: dist.world]
        for i in range(0, len(w), ns.batch_size):
            x = w[i: i + ns.batch_size].to(dist.device)
            o = forward_losses(raw, raw, tap, x, ns, train=False)
            S = x.shape[1] - 1
            acc["lm_sum"][j] += o.lm_rows.sum().double() * S
            acc["lm_tokens"][j] += x.shape[0] * S
            if o.mtp_rows is not None:
                acc["mtp_sum"][j] += o.mtp_rows.sum().double() * (S - 1)
                acc["mtp_tokens"][j] += x.shape[0] * (S - 1)
            acc["loads"] += o.loads.double()
            acc["agree"] += torch.tensor(o.agree, dtype=torch.float64, device=dist.device)
    acc = dist.sum(**acc)
    raw.train()
    res: dict = {}
    for j, d in enumerate(domains):
        lm_sum, mtp_sum, n_lm, n_mtp = (float(acc[k][j]) for k in ("lm_sum", "mtp_sum", "lm_tokens", "mtp_tokens"))
        res[f"val_loss_{d}"] = lm_sum / n_lm if n_lm else float("nan")
        res[f"val_mtp_loss_{d}"] = mtp_sum / n_mtp if n_mtp else float("nan")
    lm_all = [res[f"val_loss_{d}"] for d in domains]
    res["val_loss"] = float(np.mean(lm_all)) if lm_all else float("nan")
    loads = acc["loads"].float()
    for gi, g in enumerate(tap.gates):
        res[f"val_maxvio_{g.label}"] = max_violation(loads[gi])
    hits, positions = acc["agree"].tolist()
    res["val_mtp_agree"] = hits / positions if positions > 0 else float("nan")
    return res
