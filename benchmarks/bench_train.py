"""Training throughput of candidate model configs: the exact step `python -m train` takes.

    python benchmarks/bench_train.py                                   # data/model_config.json, 1 thread
    python benchmarks/bench_train.py --config data/model_config.json tiny --threads 2 --steps 8
    python benchmarks/bench_train.py --set dim=128 --set q_lora_rank=64 --set kv_lora_rank=48 --set inter_dim=384

One step = forward with MTP + the sequence-wise balance loss, backward, AdamW, bias update, on
random tokens (batch x seq_len), after two warm-up steps. Printed per config: parameters, the
checkpoint size in bf16 / fp32 (MTP layer with its embedding/head copies included, as `model.save`
writes it), median wall-clock tokens/s and tokens per CPU-second of this process. On a shared
machine the wall figure drops with the load; tokens per CPU-second is what one free core gives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _cli import positive_int, run  # first: it puts this checkout on sys.path
from model import ModelArgs, Transformer
from train import RoutingTap, forward_losses, make_optimizer, moe_gates, parse_args, update_bias


def load_args(src: str, overrides: list[str]) -> ModelArgs:
    """The config `src` (a ModelArgs JSON file or a shipped name) with the --set FIELD=VALUE overrides,
    each VALUE read as JSON (false, 128, [128, 128], null), else as the string it is. A value of the
    wrong kind is refused, naming --set (`false` made a bool field True, and a field whose default is
    null kept the string '128'; a review)."""
    p = Path(src)
    d = (ModelArgs.from_json(p) if p.exists() else ModelArgs.from_name(src)).to_dict()
    for item in overrides:
        k, eq, text = item.partition("=")
        if not eq or k not in d:
            raise ValueError(f"--set {item}: expected FIELD=VALUE with FIELD one of ModelArgs' fields")
        try:
            d[k] = json.loads(text)
        except ValueError:
            d[k] = text
    try:
        return ModelArgs.from_dict(d)
    except ValueError as e:  # model.args.ConfigError, e.g. "norm_topk_prob='yes' must be true or false"
        raise ValueError(f"--set {' '.join(overrides)}: {e}") from None


def bench(args: ModelArgs, ns: argparse.Namespace) -> str:
    torch.manual_seed(0)
    m = Transformer(args, dtype=torch.float32).train()
    tns = parse_args([])
    tap = RoutingTap(moe_gates(m))
    opt = make_optimizer(m, tns)
    g = torch.Generator().manual_seed(0)
    wall, cpu = [], []
    for _ in range(ns.steps + 2):
        x = torch.randint(0, args.vocab_size, (ns.batch_size, ns.seq_len + 1), generator=g)
        t0, c0 = time.perf_counter(), time.process_time()
        o = forward_losses(m, m, tap, x, tns, train=True)
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        opt.step()
        for gi, gr in enumerate(tap.gates):
            update_bias(m.get_submodule(gr.prefix).bias, o.loads[gi], 1e-3)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    wall, cpu = wall[2:], cpu[2:]
    n = ns.batch_size * ns.seq_len
    c = m.param_counts()
    file_params = c["main"] + c["mtp"] + (2 * args.vocab_size * args.dim if args.n_mtp_layers else 0)
    return (f"dim={args.dim} layers={args.n_layers} experts={args.n_routed_experts} top-{args.n_activated_experts}: "
            f"{c['main'] / 1e6:.2f}M main ({c['activated'] / 1e6:.2f}M activated) + {c['mtp'] / 1e6:.2f}M MTP, "
            f"checkpoint ~{2 * file_params / 2**20:.1f} MiB bf16 / {4 * file_params / 2**20:.1f} MiB fp32; "
            f"{n / statistics.median(wall):,.0f} tokens/s wall (best {n / min(wall):,.0f}), "
            f"{n / statistics.median(cpu):,.0f} tokens per CPU-second")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["data/model_config.json"],
                   help="ModelArgs JSON files or shipped names")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of every config (repeatable); VALUE is read as JSON (true, 128, "
                        "[128, 128], null), else taken as a string")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps (after 2 warm-up steps)")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    print(f"threads={ns.threads} batch={ns.batch_size}x{ns.seq_len}")
    for src in ns.config:
        print(f"{src}: {bench(load_args(src, ns.overrides), ns)}")


if __name__ == "__main__":
    run(main)
