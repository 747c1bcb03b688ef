"""The head's statistics without logits (model/head_stats.py) against the logits and then their
statistics, at the released model's vocabulary: peak memory and time of one forward.

    python benchmarks/bench_head_stats.py                      # vocab 129,280, hidden 512, 2 layers, 4x512 tokens
    python benchmarks/bench_head_stats.py --batch 8 --mtp

Each way runs in a child process of its own (a fresh heap, so that one's peak is not the other's):
a random float32 model of the published vocabulary and small widths, frozen as the jobs run it,
one warm-up forward, then `--repeats` forwards; printed per way: the peak resident memory above
the loaded model (VmHWM minus VmRSS after the load) and the median seconds a forward. "logits"
is `model(tokens)` then `logit_stats`, what the recorder did before; "targets" is
`model(tokens, targets=...)`, what the jobs run now. Also checked: the two give the same
statistics (argmax equal, losses within 1e-5 relative) at every position of the warm-up forward,
for the main head and, with --mtp, for the MTP head too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _cli import positive_int, run


def child(ns) -> dict:
    import torch

    import model
    from model.head_stats import logit_stats
    from model.memory import process_memory

    torch.set_num_threads(ns.threads)
    args = model.ModelArgs.from_dict(model.ModelArgs.from_name("tiny").to_dict() | dict(
        vocab_size=ns.vocab, dim=512, inter_dim=1024, moe_inter_dim=256, n_layers=2, n_dense_layers=1,
        n_heads=8, n_routed_experts=16, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2,
        q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        n_mtp_layers=1 if ns.mtp else 0, max_seq_len=4096, dtype="float32"))
    torch.manual_seed(0)
    m = model.Transformer(args, dtype=torch.float32).eval()
    frozen = model.frozen_weights(m)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, ns.vocab, (ns.batch, ns.seq_len), generator=g)
    targets = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)

    def run():
        with torch.no_grad():
            if ns.way == "targets":
                out = m(tokens, mtp=ns.mtp, targets=targets, mtp_targets=targets[:, 1:] if ns.mtp else None)
                return out if ns.mtp else (out,)
            out = m(tokens, mtp=ns.mtp)
            out = out if ns.mtp else (out,)
            stats = [logit_stats(out[0], targets)]
            if ns.mtp:
                stats.append(logit_stats(out[1], targets[:, 1:]))
            return stats

    base = process_memory()["rss"]
    first = run()
    times = []
    for _ in range(ns.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    frozen.release()
    return {"peak_above_model": process_memory()["peak_rss"] - base, "seconds": statistics.median(times),
            "heads": [{"nll": s.nll.flatten().tolist(), "top1": s.top1.flatten().tolist()} for s in first]}


def compare(a: dict, b: dict) -> tuple[bool, float]:
    """Whether two children's statistics have the same argmax at every position of every head (the
    main one, and the MTP one with --mtp), and their largest relative loss difference. Only the main
    head's first 4,096 positions were compared before (a review)."""
    if len(a["heads"]) != len(b["heads"]):
        return False, float("inf")
    same, worst = True, 0.0
    for x, y in zip(a["heads"], b["heads"]):
        same = same and x["top1"] == y["top1"]
        if len(x["nll"]) != len(y["nll"]):
            return False, float("inf")
        worst = max([worst, *(abs(u - v) / max(abs(u), 1e-30) for u, v in zip(x["nll"], y["nll"]))])
    return same, worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=positive_int, default=129280)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--seq-len", type=positive_int, default=512)
    p.add_argument("--mtp", action="store_true", help="also the MTP head's statistics")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--way", choices=["logits", "targets"], help=argparse.SUPPRESS)  # a child's
    ns = p.parse_args()
    if ns.way:
        print(json.dumps(child(ns)))
        return
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(ns).items() if k not in ("way", "mtp")]
    res = {}
    for way in ("logits", "targets"):
        out = subprocess.run([sys.executable, __file__, *flags, *(["--mtp"] if ns.mtp else []), "--way", way],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the {way} child failed:\n{out.stderr[-3000:]}")
        res[way] = json.loads(out.stdout.strip().splitlines()[-1])
    n = ns.batch * ns.seq_len
    logits_gb = n * ns.vocab * 4 / 2**30 * (2 if ns.mtp else 1)
    print(f"one forward of {ns.batch}x{ns.seq_len} tokens at vocab {ns.vocab:,} (float32 logits {logits_gb:.2f} GiB"
          f"{' with the MTP head' if ns.mtp else ''}), {ns.threads} threads, {ns.repeats} repeats")
    print(f"{'':10} {'peak above the model':>22} {'median s':>9}")
    for way, r in res.items():
        print(f"{way:10} {r['peak_above_model'] / 2**20:18.0f} MiB {r['seconds']:9.3f}")
    a, b = res["logits"], res["targets"]
    same_top1, worst = compare(a, b)
    print(f"peak: targets / logits = {b['peak_above_model'] / a['peak_above_model']:.3f}; time: logits / targets = "
          f"{a['seconds'] / b['seconds']:.2f}x")
    heads = "main and MTP heads" if ns.mtp else "main head"
    print(f"same statistics ({heads}, every position): argmax {'equal' if same_top1 else 'DIFFERENT'}, "
          f"losses within {worst:.1e} (relative)")
    if not same_top1 or worst > 1e-5:
        sys.exit("the two ways disagree")


if __name__ == "__main__":
    run(main)
