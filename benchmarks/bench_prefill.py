"""Prefill throughput: our model vs transformers' DeepseekV3ForCausalLM on the same random weights.

    python benchmarks/bench_prefill.py                 # hidden 512, 6 layers, 32 experts top-4, 4x256, fp32
    python benchmarks/bench_prefill.py --repeats 10 --threads 2
    python benchmarks/bench_prefill.py --config data/model/config.json --batch 8   # the bundled model's shape

Both models run in this one process on the same checkpoint (written by transformers, loaded by
`model.load`), interleaved in an order shuffled every repeat, after a warm-up that checks every case's
logits against transformers', each repeat on a fresh random batch; transformers with use_cache=False
(ours makes no KV cache here either). Ours is timed three ways: hook points present with nothing
attached; a no-op hook attached to every hook point except the opt-in ones, the attention pattern and
each expert's output (`model.hooks.OPT_IN_SUFFIXES`; "attached but idle"); and with the attention pattern hooked (made for the hook beside the fused kernel). Printed: median
tokens/s and the ratio to transformers, the best-of-N times, and the paired ratio: the median over
repeats of the two times measured in the same repeat (the least sensitive to a shared machine whose
speed drifts), with its quartiles ("paired IQR": how far one run's figure can be trusted). Target: ours >= 1.3x transformers with idle hooks.

Our float32 CPU GEMMs go through whichever of oneDNN and F.linear model/gemm.py measured faster on
this machine (printed, with why); transformers' through F.linear (MKL or OpenBLAS sgemm). Ours runs
with its weights frozen, as the jobs (record, spec, ablate...) load it: oneDNN then reads them
pre-packed (model/frozen.py; bit-equal). The row "weights not frozen" shows what that is worth (it
matters only where oneDNN runs). The last two rows run ours with each path forced, to show what the
choice is worth (target: the chosen path no slower than the better of the two) and what the rest of
the implementation is worth.

`--profile` also splits one forward of each (torch.profiler, self CPU time of every op, mean of 3
forwards) into dense GEMMs (aten::mm / addmm), attention (bmm, softmax, the fused SDPA kernel) and
everything else, and prints the speed-up ours would reach if everything but its GEMMs cost nothing:
the ceiling for an implementation that runs the same GEMMs as transformers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from _cli import positive_int, run

CONFIG = dict(
    vocab_size=8192, hidden_size=512, intermediate_size=1408, moe_intermediate_size=256,
    num_hidden_layers=6, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
    n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=192, kv_lora_rank=128,
    qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, max_position_embeddings=4096,
    rope_theta=10000.0,
    rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                  "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(ns):
    """The random transformers model, ours loaded from its checkpoint, a batch of tokens, and the
    largest logit difference between the two on it (relative to the largest logit)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    from transformers.utils import logging

    import model

    logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**CONFIG)).float().eval()
    with torch.no_grad():  # a router that actually spreads tokens, and a nonzero balancing bias
        for layer in hf.model.layers[CONFIG["first_k_dense_replace"]:]:
            layer.mlp.gate.weight.normal_(0, CONFIG["hidden_size"] ** -0.5)
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = model.load(d, dtype=torch.float32)
    tokens = torch.randint(0, CONFIG["vocab_size"], (ns.batch, ns.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens)
    return hf, ours, tokens, ((ref - got).abs().max() / ref.abs().max()).item()


def make_cases(hf, ours, batch: dict) -> dict:
    """name -> a function running one forward of `batch["tokens"]`. Ours runs with its weights
    frozen, as the jobs load it (model/frozen.py), except in the row that says otherwise."""
    from model import frozen, frozen_weights, layers
    from model.hooks import OPT_IN_SUFFIXES

    frozen_weights(ours)  # held for the life of `ours`
    noop = [(lambda n: not n.endswith(OPT_IN_SUFFIXES), lambda t, hook: None)]
    pattern = [("layers.*.attn.hook_pattern", lambda t, hook: None)]

    def run_hf():
        # use_cache=False: its config's default would fill a KV cache ours does not make (about 1.02x
        # in transformers' favour once off; found by an audit of this bench)
        with torch.no_grad():
            return hf(batch["tokens"], use_cache=False).logits

    def run_ours(hooks=()):
        def f():
            with torch.no_grad(), ours.hooks(hooks):
                return ours(batch["tokens"])
        return f

    def run_forced(onednn: bool):  # one GEMM path for every GEMM, whatever was chosen
        def f():
            layers.ONEDNN_LINEAR = onednn
            try:
                return run_ours(noop)()
            finally:
                layers.ONEDNN_LINEAR = None
        return f

    def run_unfrozen():  # oneDNN reorders every weight on every call, as outside frozen_weights
        with frozen.suspended(ours):
            return run_ours(noop)()

    return {"transformers": run_hf, "ours (hook points, none attached)": run_ours(),
            "ours (no-op hooks attached)": run_ours(noop), "ours (attention pattern hooked)": run_ours(pattern),
            "ours, idle hooks, weights not frozen": run_unfrozen,
            "ours, idle hooks, oneDNN forced": run_forced(True),
            "ours, idle hooks, F.linear forced": run_forced(False)}


def time_cases(cases: dict, batch: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per forward of every case, `repeats` times, interleaved (in an order shuffled anew every
    repeat) so drift hits all cases alike; and every case's largest logit difference from
    transformers on the warm-up batch (relative to its largest logit), so that each timed path is
    checked, frozen and forced ones too.
    Every repeat feeds a fresh batch (the same one to every case): routing, and so each expert's
    row count, changes from repeat to repeat as it would over a corpus."""
    import random

    gen = torch.Generator().manual_seed(2)
    outs = {name: fn() for name, fn in cases.items()}  # warm-up
    ref = outs["transformers"]
    errs = {name: ((ref - out).abs().max() / ref.abs().max()).item() for name, out in outs.items()}
    del outs, ref
    results = {name: [] for name in cases}
    order, shuffle = list(cases), random.Random(3)
    for _ in range(repeats):
        batch["tokens"] = torch.randint(0, CONFIG["vocab_size"], batch["tokens"].shape, generator=gen)
        # shuffled, not rotated: a rotation keeps each case right after the same one (an audit of this
        # bench), and a case's neighbour (e.g. transformers freeing its memory) must not favour it
        shuffle.shuffle(order)
        for name in order:
            results[name].append(median_time(cases[name], 1))
    return results, errs


def report(ns, timed: tuple[dict, dict], err: float, chosen, weight_bytes: int) -> None:
    from model import frozen

    results, errs = timed
    n_tok = ns.batch * ns.seq_len
    base = statistics.median(results["transformers"])
    print(f"prefill {ns.batch}x{ns.seq_len} tokens, float32, {ns.threads} threads, {ns.repeats} repeats "
          f"(hidden {CONFIG['hidden_size']}, {CONFIG['num_hidden_layers']} layers, "
          f"{CONFIG['n_routed_experts']} experts top-{CONFIG['num_experts_per_tok']})")
    print(f"logits max |diff| / max |logit| = {err:.2e} (before freezing); on the warm-up batch, every timed case "
          f"within {max(errs.values()):.2e} of transformers")
    print(f"memory: ours' frozen weights keep {frozen.packed_bytes() / 2**20:,.0f} MiB of pre-packed copies beside "
          f"{weight_bytes / 2**20:,.0f} MiB of weights "
          "(the oneDNN path's cost; F.linear needs none)")
    best = min(results["transformers"])
    print(f"{'':36} {'median s':>9} {'tokens/s':>10} {'vs transformers':>16} {'best s':>8} {'best vs best':>13} "
          f"{'paired':>7} {'paired IQR':>11}")
    for name, ts in results.items():
        t, b = statistics.median(ts), min(ts)
        # paired: the median over repeats of transformers' time / this case's time in the same repeat (same
        # batch, seconds apart), which a drift in the shared machine's speed moves less than the others;
        # its quartiles show how far one run's figure can be trusted
        ratios = [h / c for h, c in zip(results["transformers"], ts)]
        # quartiles within the measured ratios (the default 'exclusive' method extrapolates: with 2
        # repeats it printed a negative ratio; a review)
        q1, paired, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        print(f"{name:36} {t:9.4f} {n_tok / t:10.0f} {base / t:15.2f}x {b:8.4f} {best / b:12.2f}x {paired:6.2f}x "
              f"{q1:5.2f}-{q3:4.2f}x")
    forced = {"onednn": "ours, idle hooks, oneDNN forced", "linear": "ours, idle hooks, F.linear forced"}
    better = min(forced, key=lambda p: statistics.median(results[forced[p]]))
    paired = statistics.median(f / c for f, c in zip(results[forced[better]], results["ours (no-op hooks attached)"]))
    print(f"chosen path ({chosen.path}) vs the better forced path ({better}), paired: {paired:.2f}x (>= 1 means the "
          "choice lost nothing; when both are the same path, the distance from 1 is this machine's noise)")
    frozen = statistics.median(u / f for u, f in zip(results["ours, idle hooks, weights not frozen"],
                                                     results["ours (no-op hooks attached)"]))
    print(f"weights frozen vs not, paired: {frozen:.2f}x")


def report_profile(cases: dict) -> None:
    parts = {name: op_split(cases[name]) for name in ("transformers", "ours (hook points, none attached)",
                                                      "ours, idle hooks, F.linear forced")}
    print("\nwhere one forward's time goes (self CPU ms, mean of 3 profiled forwards; GEMM GFLOP from the "
          "profiled shapes):")
    print(f"{'':36} {'GEMM':>8} {'attention':>10} {'other':>8} {'total':>8} {'GEMM GFLOP':>11} {'GEMM GF/s':>10}")
    for name, d in parts.items():
        print(f"{name:36} {d['gemm']:8.1f} {d['attention']:10.1f} {d['other']:8.1f} {total_ms(d):8.1f} "
              f"{d['gflop']:11.2f} {d['gflop'] / d['gemm'] * 1e3:10.0f}")
    hf, mkl = parts["transformers"], parts["ours, idle hooks, F.linear forced"]
    print(f"with transformers' GEMM kernel, ours could reach at most {total_ms(hf) / mkl['gemm']:.2f}x "
          "(everything but the GEMMs free)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--repeats", type=positive_int, default=9)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--profile", action="store_true", help="also print where one forward's time goes")
    p.add_argument("--config", help="a Hugging Face config.json whose architecture to run, on random weights "
                                    "(default: CONFIG above)")
    ns = p.parse_args()
    if ns.config:
        cfg = read_config(ns.config)
        CONFIG.clear()
        CONFIG.update(cfg)
    torch.set_num_threads(ns.threads)
    hf, ours, tokens, err = build(ns)

    from model import gemm

    chosen = gemm.choice((ns.batch * ns.seq_len, CONFIG["hidden_size"], CONFIG["moe_intermediate_size"]))
    print(f"our float32 GEMM path: {chosen.path} ({chosen.source}: {chosen.reason})")
    ex = gemm.experts_choice(CONFIG["hidden_size"], CONFIG["moe_intermediate_size"])
    layout = "oneDNN, rows padded into one gather" if ex.path == "onednn" else "F.linear, on one gather of their rows"
    print(f"routed experts: {layout} ({ex.source}: {ex.reason})")
    batch = {"tokens": tokens}
    cases = make_cases(hf, ours, batch)
    report(ns, time_cases(cases, batch, ns.repeats), err, chosen,
           sum(p.numel() * p.element_size() for p in ours.parameters()))
    if ns.profile:
        report_profile(cases)


def read_config(path: str) -> dict:
    """--config's architecture as transformers' config keys: the file read by our own reader first
    (ModelArgs.from_hf_config), so that a file it cannot describe a model from is one line naming it
    (our ModelArgs JSON, with `dim` for `hidden_size`, made transformers fall back to the 671B
    model's widths, and a missing key was a KeyError; a review); keys the file leaves out are the
    ones our reader defaulted them to."""
    import json
    from pathlib import Path

    from model import ModelArgs

    if not Path(path).is_file():  # e.g. the checkpoint's folder: IsADirectoryError before (a review)
        raise ValueError(f"--config {path}: not a file (a Hugging Face config.json)")
    try:
        args = ModelArgs.from_hf_config(path)
    except ValueError as e:  # model.args.ConfigError: names the file and the key
        raise ValueError(f"--config {e}") from None
    cfg = args.to_hf_config() | json.loads(Path(path).read_text())
    return {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype",
                                                       "quantization_config")}


GEMM_OPS = {"aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"}
ATTENTION_OPS = {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_scaled_dot_product_flash_attention_for_cpu"}


def op_split(fn, n: int = 3) -> dict[str, float]:
    """Self CPU time per forward (ms) in dense GEMMs, attention and the rest, and the GEMMs' GFLOP."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n):
            fn()
    out = {"gemm": 0.0, "attention": 0.0, "other": 0.0, "gflop": 0.0}
    for ev in prof.key_averages(group_by_input_shape=True):
        kind = "gemm" if ev.key in GEMM_OPS else "attention" if ev.key in ATTENTION_OPS else "other"
        out[kind] += ev.self_cpu_time_total / 1e3 / n
        if kind == "gemm":
            out["gflop"] += ev.count * gemm_flops(ev.key, ev.input_shapes) / 1e9 / n
    return out


def total_ms(d: dict) -> float:
    """One forward's self CPU ms in op_split's result (its GEMM GFLOP left out)."""
    return d["gemm"] + d["attention"] + d["other"]


def gemm_flops(op: str, shapes: list) -> int:
    """2 M N K of one GEMM call from its profiled input shapes: aten::mm [M, K] [K, N]; aten::addmm
    (bias, [M, K], [K, N]); oneDNN's linear x [..., K] with weight [N, K]."""
    if op == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
    elif op == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
    else:
        x = shapes[0]
        k, m = x[-1], 1
        for d in x[:-1]:
            m *= d
        n = shapes[1][0]
    return 2 * m * n * k


if __name__ == "__main__":
    run(main)
