"""Train a small DeepSeek-V3 (our `model.Transformer`) on the multi-domain corpus in data/.

    python -m data.build_corpus && python -m data.tokenizer        # corpus + data/tokenizer.json, once
    python -m model.train --out runs/small                          # the recipe: data/model_config.json,
                                                                    # 700 steps x 16 x 256 tokens (~10 min on 2 idle cores)
    torchrun --standalone --nproc-per-node 2 -m model.train --out runs/small --batch-size 8
                                    # the same global batch as 2 processes x 8 (gloo; one core each on a
                                    # 2-core CPU, nccl on GPUs): the same steps up to float rounding
    python -m model.train --out runs/small --resume                 # continue from runs/small/checkpoint
    python -m model.train --out runs/nobal --balance none           # same budget, no balancing at all
    python -m model.train --out runs/switch --balance switch        # Switch-style auxiliary loss instead
    python -m model.train --config tiny --steps 50 --out runs/smoke # any shipped config or ModelArgs/HF JSON

The DeepSeek-V3 recipe at small scale:
- AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to
  `--min-lr-ratio` x peak, gradient clipping at 1.0.
- MTP (depth 1): loss = L_main + lambda * L_MTP (`--mtp-weight`), L_MTP the cross-entropy of the
  MTP module's prediction of token i+2.
- Balancing (`--balance`):
  aux-free (default): after every optimizer step, on every MoE gate (main layers and the MTP block),
      bias_i -= gamma * sign(load_i - mean_load) (`--bias-update-speed`), loads counted over the
      whole global batch; plus the sequence-wise balance loss alpha * sum_i f_i P_i per sequence
      (`--seq-aux-weight`), f_i = E / (K S) * #tokens of the sequence choosing i, P_i = mean over
      the sequence's tokens of s'_i,t = s_i,t / sum_j s_j,t; averaged over sequences, summed over gates.
      After the last step the bias settles (`--settle-updates` U, `--settle-batches` P, `--settle-speed`
      g): U bias-only updates with the weights frozen, each on loads pooled over P fresh training
      batches, the step decaying linearly from g to 0 (DeepSeek-V3 froze the bias for its last 500B
      tokens; a 700-step run instead ends with the bias wherever its last +-gamma jitter left it).
  switch: no bias updates; w * E * sum_i f_i P_i over the batch (`--switch-weight`) with
      f_i = #assignments to i / (K T) and P_i = mean_t s'_i,t (1.0 at perfect balance; the same
      quantity as Wang et al. 2024, Eq. 2, with their f_i = E x ours).
  none: no bias updates and no auxiliary loss.
- Data: each domain's documents are joined as <|bos|> text <|eos|> into one token stream; a step
  draws, from a generator seeded by (seed, step), a domain per row (weights ~ tokens^`--mix-alpha`)
  and a random window of seq_len + 1 tokens in it. A resumed run therefore sees exactly the batches
  an uninterrupted one would.

Outputs under --out: `train_metrics.parquet` (one row per step: loss per domain, MTP loss, MaxVio
per MoE gate, bias norms, lr, tokens/s), `eval_metrics.parquet` (validation loss per domain,
MaxVio_global, MTP agreement), `expert_load.parquet` (step, gate, expert, load, bias), `run.json`
(status, flags, model args, final figures), `checkpoint/state.pt` (model + optimizer + step + RNG,
for --resume) and, when finished, `model/`: a Hugging Face checkpoint (`model.save`) that
transformers' DeepseekV3ForCausalLM also reads, with `tokenizer.json` next to it.
Rank 0 alone prints and writes; `torch.distributed` is initialised only when WORLD_SIZE > 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .args import ConfigError, ModelArgs
from .checkpoint import save as save_hf
from .train_balance import (GateRef, RoutingTap, expert_counts, max_violation, moe_gates,  # noqa: F401
                            seq_balance_loss, settle_biases, switch_balance_loss, update_bias)
from .train_data import SPECIAL_TOKENS, Batches, TrainError, load_tokenizer, token_streams, val_windows  # noqa: F401
from .train_flags import RESUME_CHECKED, build_parser, check_flags
from .train_log import LoadLog, _now, read_table, write_json, write_table  # noqa: F401
from .transformer import Transformer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser(__doc__).parse_args(argv)


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
        base = ModelArgs.from_hf_config(raw) if "model_type" in raw and "hidden_size" in raw \
            else ModelArgs.from_dict(raw)
        d = base.to_dict()
    else:
        d = ModelArgs.from_name(src).to_dict()
    for item in ns.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrainError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in d:
            raise TrainError(f"--set {item!r}: ModelArgs has no field {key!r}")
        d[key] = _parse_value(value)
    d.update(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1)
    args = ModelArgs.from_dict(d)
    if args.n_mtp_layers > 1:
        raise TrainError(f"n_mtp_layers={args.n_mtp_layers}: training supports MTP depth 0 or 1 "
                         "(the model's forward runs the first MTP module only)")
    if ns.seq_len > args.max_seq_len:
        raise TrainError(f"--seq-len={ns.seq_len} exceeds the config's max_seq_len={args.max_seq_len}")
    return args


# -------------------------------------------------------------------------------------- training
def lr_at(step: int, ns: argparse.Namespace) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from the peak to min_lr_ratio x peak."""
    if step < ns.warmup_steps:
        return ns.lr * (step + 1) / ns.warmup_steps
    progress = min(1.0, (step - ns.warmup_steps) / max(1, ns.steps - ns.warmup_steps))
    return ns.lr * (ns.min_lr_ratio + (1 - ns.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def bias_speed_at(step: int, ns: argparse.Namespace) -> float:
    """gamma for the bias update after optimizer step `step` (`--bias-schedule`)."""
    if ns.bias_schedule == "constant" or step < ns.warmup_steps:
        return ns.bias_update_speed
    return ns.bias_update_speed * lr_at(step, ns) / ns.lr


def make_optimizer(m: Transformer, ns: argparse.Namespace) -> torch.optim.AdamW:
    decay = [p for p in m.parameters() if p.dim() >= 2]
    no_decay = [p for p in m.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": ns.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=ns.lr, betas=(ns.beta1, ns.beta2), eps=1e-8)


class Dist:
    """Process-group facts; everything single-process when WORLD_SIZE is unset or 1."""

    def __init__(self, device_flag: str) -> None:
        want_cuda = device_flag.startswith("cuda") or (device_flag == "auto" and torch.cuda.is_available())
        if device_flag not in ("auto", "cpu") and not device_flag.startswith("cuda"):
            raise TrainError(f"--device={device_flag!r}: choose auto, cpu or cuda")
        if want_cuda and not torch.cuda.is_available():
            raise TrainError("--device=cuda but torch sees no CUDA device")
        from .parallel import init_world  # the one place that creates process groups

        self.ranks = init_world(1, device="cuda" if want_cuda else "cpu")  # data parallel: a whole model each
        self.world, self.rank, self.device = self.ranks.size, self.ranks.rank, torch.device(self.ranks.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        self.ranks.barrier()

    def close(self) -> None:
        self.ranks.close()


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
    G, E = len(tap.gates), raw.args.n_routed_experts
    # per domain: lm token sum, mtp token sum, lm tokens, mtp tokens; then loads; then agreement
    acc = torch.zeros(len(domains) * 4 + G * E + 2, dtype=torch.float64, device=dist.device)
    for j, d in enumerate(domains):
        w = windows[d][dist.rank:: dist.world]
        for i in range(0, len(w), ns.batch_size):
            x = w[i: i + ns.batch_size].to(dist.device)
            o = forward_losses(raw, raw, tap, x, ns, train=False)
            S = x.shape[1] - 1
            acc[4 * j] += o.lm_rows.sum().double() * S
            acc[4 * j + 2] += x.shape[0] * S
            if o.mtp_rows is not None:
                acc[4 * j + 1] += o.mtp_rows.sum().double() * (S - 1)
                acc[4 * j + 3] += x.shape[0] * (S - 1)
            acc[4 * len(domains): 4 * len(domains) + G * E] += o.loads.flatten().double()
            acc[-2] += o.agree[0]
            acc[-1] += o.agree[1]
    dist.all_reduce(acc)
    raw.train()
    res: dict = {}
    for j, d in enumerate(domains):
        lm_sum, mtp_sum, n_lm, n_mtp = acc[4 * j: 4 * j + 4].tolist()
        res[f"val_loss_{d}"] = lm_sum / n_lm if n_lm else float("nan")
        res[f"val_mtp_loss_{d}"] = mtp_sum / n_mtp if n_mtp else float("nan")
    lm_all = [res[f"val_loss_{d}"] for d in domains]
    res["val_loss"] = float(np.mean(lm_all)) if lm_all else float("nan")
    loads = acc[4 * len(domains): 4 * len(domains) + G * E].view(G, E).float()
    for gi, g in enumerate(tap.gates):
        res[f"val_maxvio_{g.label}"] = max_violation(loads[gi])
    res["val_mtp_agree"] = float(acc[-2] / acc[-1]) if acc[-1] > 0 else float("nan")
    return res


def _config_record(ns: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()}


def _resume_dir(ns: argparse.Namespace) -> Path | None:
    if ns.resume is None:
        return None
    d = ns.out / "checkpoint" if ns.resume == "auto" else Path(ns.resume)
    if (d / "checkpoint" / "state.pt").exists():  # a run directory was given
        d = d / "checkpoint"
    if not (d / "state.pt").exists():
        raise TrainError(f"--resume {d}: no checkpoint there (expected {d / 'state.pt'})")
    return d


def check_resume_shape(saved: dict, args: ModelArgs, where: Path) -> None:
    """A checkpoint of another architecture cannot be resumed: name the differing fields."""
    theirs, ours = saved, args.to_dict()
    diff = [k for k in ours if theirs.get(k) != ours[k]]
    if diff:
        shown = diff[:4]
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise TrainError(f"cannot resume from {where}: it holds a model with "
                         + ", ".join(f"{k}={theirs.get(k)}" for k in shown)
                         + "; this run builds " + ", ".join(f"{k}={ours[k]}" for k in shown) + more)


def save_state(path: Path, raw: Transformer, opt, step: int, ns: argparse.Namespace, tokens_seen: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    state = {
        "model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step, "tokens_seen": tokens_seen,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "model_args": raw.args.to_dict(), "flags": _config_record(ns),
    }
    tmp = path / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / "state.pt")


def save_final(raw: Transformer, out: Path, tokenizer: Path, dtype: torch.dtype) -> Path:
    """HF checkpoint + tokenizer files in OUT/model (built in model.tmp, then renamed)."""
    final, tmp = out / "model", out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_hf(raw, tmp, dtype=dtype)
    shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    write_json(tmp / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[2], "add_bos_token": False,
        "model_max_length": raw.args.max_seq_len})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def run(ns: argparse.Namespace) -> dict:
    """Train as `ns` says; returns run.json's content. Raises TrainError / ConfigError on bad input."""
    check_flags(ns)
    dist = Dist(ns.device)
    try:
        return _run(ns, dist)
    finally:
        dist.close()


def _run(ns: argparse.Namespace, dist: Dist) -> dict:
    t_start = time.perf_counter()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    tok = load_tokenizer(ns.tokenizer)
    args = model_args(ns, tok.get_vocab_size())
    resume = _resume_dir(ns)
    saved = None
    if resume is not None:
        try:
            saved = torch.load(resume / "state.pt", map_location="cpu", weights_only=False)
            saved_args = saved["model_args"]
        except Exception as e:  # a truncated or foreign file: torch raises many kinds
            raise TrainError(f"cannot resume from {resume}: state.pt is not a training checkpoint "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        check_resume_shape(saved_args, args, resume)

    cache = ns.token_cache or ns.corpus / "token_cache"
    if dist.main:  # rank 0 tokenises (and caches); the others then read its cache
        train_streams = token_streams(ns.corpus / "train.jsonl", tok, cache)
    dist.barrier()
    if not dist.main:
        train_streams = token_streams(ns.corpus / "train.jsonl", tok, cache)
    val_streams = token_streams(ns.corpus / "val.jsonl", tok, None) if (ns.corpus / "val.jsonl").exists() else {}
    batches = Batches(train_streams, ns.seq_len, ns.batch_size * dist.world, ns.mix_alpha, ns.seed)
    vwin = val_windows(val_streams, ns.seq_len, ns.eval_windows)
    domains = batches.all_domains

    torch.manual_seed(ns.seed)
    raw = Transformer(args, dtype=torch.float32, device=dist.device).train()
    opt = make_optimizer(raw, ns)
    step, tokens_seen = 0, 0
    rows: list[dict] = []
    eval_rows: list[dict] = []
    gates = moe_gates(raw)
    load_log = LoadLog([g.label for g in gates], args.n_routed_experts)
    if saved is not None:
        try:
            raw.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f"cannot resume from {resume}: {str(e).splitlines()[0]}") from None
        step, tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
        torch.set_rng_state(saved["rng"]["torch"])
        if saved["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        changed = [k for k in RESUME_CHECKED if saved["flags"].get(k) != getattr(ns, k)]
        if changed and dist.main:
            print("note: resuming with changed flags: " + ", ".join(
                f"{k} {saved['flags'].get(k)} -> {getattr(ns, k)}" for k in changed), file=sys.stderr)
        rows = read_table(ns.out / "train_metrics.parquet", step)
        eval_rows = read_table(ns.out / "eval_metrics.parquet", step)
        load_log.read(ns.out / "expert_load.parquet", step)
        del saved
    model = raw
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # NOTE: forward_sync_buffers=False: the gate biases are updated identically on every rank from
        # all-reduced loads; rank 0's copy must not be re-broadcast over them each forward.
        model = DistributedDataParallel(raw, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                                        forward_sync_buffers=False,
                                        find_unused_parameters=len(raw.mtp) > 0 and ns.mtp_weight == 0)
    tap = RoutingTap(gates)
    gate_mods = {g.label: raw.get_submodule(g.prefix) for g in gates}
    E = args.n_routed_experts
    counts = raw.param_counts()
    if dist.main:
        ns.out.mkdir(parents=True, exist_ok=True)
    info = {
        "status": "running", "started": _now(), "updated": _now(), "step": step, "steps": ns.steps,
        "tokens_seen": tokens_seen, "world_size": dist.world, "device": str(dist.device),
        "domains": domains, "gates": [g.label for g in gates], "flags": _config_record(ns),
        "model_args": args.to_dict(), "params": counts,
        "train_tokens": {d: int(len(s)) for d, s in train_streams.items()},
        "val_tokens": {d: int(len(s)) for d, s in val_streams.items()},
        "domain_weights": dict(zip(batches.domains, map(float, batches.weights))),
    }

    def flush(status: str, **extra) -> None:
        if not dist.main:
            return
        write_table(rows, ns.out / "train_metrics.parquet") if rows else None
        write_table(eval_rows, ns.out / "eval_metrics.parquet") if eval_rows else None
        load_log.write(ns.out / "expert_load.parquet") if load_log.steps else None
        info.update(status=status, updated=_now(), step=step, tokens_seen=tokens_seen, **extra)
        write_json(ns.out / "run.json", info)

    def do_eval() -> dict:
        if not vwin:
            return {}
        res = evaluate(raw, tap, vwin, ns, dist)
        eval_rows[:] = [r for r in eval_rows if r["step"] != step]  # a completed run resumed again
        eval_rows.append({"step": step, "tokens_seen": tokens_seen, **res})
        return res

    flush("running")
    from tqdm.auto import tqdm

    bar = tqdm(total=ns.steps, initial=step, disable=not dist.main or ns.no_progress, dynamic_ncols=True,
               mininterval=1.0, unit="step")
    stop_reason = None
    D = len(domains)
    dom_index = torch.tensor([domains.index(d) for d in batches.domains], device=dist.device)
    try:
        while step < ns.steps:
            t0 = time.perf_counter()
            x, dom = batches.get(step, dist.rank, dist.world)
            x, dom = x.to(dist.device), dom_index[dom.to(dist.device)]
            lr = lr_at(step, ns)
            for group in opt.param_groups:
                group["lr"] = lr
            o = forward_losses(model, raw, tap, x, ns, train=True)
            opt.zero_grad(set_to_none=True)
            o.loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), ns.grad_clip or float("inf")))
            opt.step()
            # one all-reduce: sums of losses and per-domain losses, then the per-gate loads
            B = x.shape[0]
            dom_sum = torch.zeros(D, device=dist.device).index_add_(0, dom, o.lm_rows)
            dom_cnt = torch.zeros(D, device=dist.device).index_add_(0, dom, torch.ones(B, device=dist.device))
            mtp_sum = o.mtp_rows.sum() if o.mtp_rows is not None else torch.zeros((), device=dist.device)
            vec = torch.cat([torch.stack([o.lm_rows.sum(), mtp_sum, o.aux * B, o.loss.detach() * B,
                                          torch.tensor(float(B), device=dist.device)]),
                             dom_sum, dom_cnt, o.loads.flatten()])
            vec = dist.all_reduce(vec)
            n = float(vec[4])
            loads = vec[5 + 2 * D:].view(len(gates), E)
            if ns.balance == "aux-free" and ns.bias_update_speed > 0:
                for gi, g in enumerate(gates):
                    update_bias(gate_mods[g.label].bias, loads[gi], bias_speed_at(step, ns))
            step += 1
            step_tokens = n * ns.seq_len
            tokens_seen += int(step_tokens)
            dt = time.perf_counter() - t0
            row = {"step": step, "lr": lr, "loss": float(vec[3]) / n, "lm_loss": float(vec[0]) / n,
                   "mtp_loss": float(vec[1]) / n if o.mtp_rows is not None else float("nan"),
                   "aux_loss": float(vec[2]) / n, "grad_norm": grad_norm, "tokens": int(step_tokens),
                   "tokens_seen": tokens_seen, "step_time_s": dt, "tokens_per_s": step_tokens / dt,
                   "elapsed_s": time.perf_counter() - t_start}
            ds, dc = vec[5: 5 + D].tolist(), vec[5 + D: 5 + 2 * D].tolist()
            for j, d in enumerate(domains):
                row[f"loss_{d}"] = ds[j] / dc[j] if dc[j] else float("nan")
            for gi, g in enumerate(gates):
                row[f"maxvio_{g.label}"] = max_violation(loads[gi])
                bias = gate_mods[g.label].bias
                row[f"bias_norm_{g.label}"] = float(bias.norm()) if bias is not None else float("nan")
            rows.append(row)
            if step % ns.load_every == 0 and dist.main and gates:
                load_log.append(step, loads, torch.stack([
                    gate_mods[g.label].bias if gate_mods[g.label].bias is not None
                    else torch.full((E,), float("nan"), device=dist.device) for g in gates]))
            bar.update(1)
            bar.set_postfix(loss=f"{row['lm_loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)
            last = step == ns.steps
            if ns.eval_every and step % ns.eval_every == 0 and not last:
                res = do_eval()
                if res and dist.main:
                    bar.write(f"step {step}: val loss {res['val_loss']:.3f} " + " ".join(
                        f"{d}={res[f'val_loss_{d}']:.3f}" for d in sorted(vwin)))
            if ns.stop_at is not None and step >= ns.stop_at and not last:
                stop_reason = f"--stop-at {ns.stop_at}"
            elif ns.time_limit is not None and time.perf_counter() - t_start > ns.time_limit * 60 and not last:
                stop_reason = f"--time-limit {ns.time_limit} min"
            if stop_reason or (ns.checkpoint_every and step % ns.checkpoint_every == 0) or last:
                if dist.main:
                    save_state(ns.out / "checkpoint", raw, opt, step, ns, tokens_seen)
                flush("running")
            elif step % ns.flush_every == 0:
                flush("running")
            if stop_reason:
                break
    except BaseException as e:
        bar.close()
        flush("failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    bar.close()
    if stop_reason:
        flush("stopped", stop_reason=stop_reason)
        if dist.main:
            print(f"stopped after step {step} ({stop_reason}); continue with --resume")
        return info
    if ns.balance == "aux-free" and ns.settle_updates and gates:
        t0 = time.perf_counter()

        def settle_batch(i: int) -> torch.Tensor:  # training batches after the last step's
            return batches.get(ns.steps + i, dist.rank, dist.world)[0].to(dist.device)

        history = settle_biases(raw, tap, gate_mods, settle_batch, ns.settle_updates, ns.settle_batches,
                                ns.settle_speed, dist.all_reduce)
        info["bias_settle"] = {"updates": ns.settle_updates, "batches_per_update": ns.settle_batches,
                               "speed": ns.settle_speed, "seconds": time.perf_counter() - t0,
                               "maxvio_pooled": history}
        if dist.main:
            print("bias settled (weights frozen): MaxVio over pooled batches " + " ".join(
                f"{g}={h[0]:.2f}->{h[-1]:.2f}" for g, h in history.items()))
    final = do_eval() if vwin else {}
    if dist.main:
        path = save_final(raw, ns.out, ns.tokenizer, getattr(torch, ns.save_dtype))
        size = sum(f.stat().st_size for f in path.iterdir())
        train_s = [r["tokens_per_s"] for r in rows[-50:]]
        flush("completed", final=final, model_dir=str(path), model_bytes=size,
              tokens_per_s=float(np.median(train_s)) if train_s else None)
        print(f"done: {step} steps, {tokens_seen:,} tokens in {time.perf_counter() - t_start:.0f} s; "
              f"model in {path} ({size / 2**20:.1f} MiB)")
        if final:
            print("  val loss " + " ".join(f"{d}={final[f'val_loss_{d}']:.3f}" for d in sorted(vwin))
                  + "  MaxVio_global " + " ".join(f"{g.label}={final[f'val_maxvio_{g.label}']:.2f}" for g in gates)
                  + f"  MTP agreement {final['val_mtp_agree']:.1%}")
    return info


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    try:
        run(ns)
    except (TrainError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
