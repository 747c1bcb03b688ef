"""bfloat16 (and FP8) against float32 for routing studies: the same record job in each, compared.

    python benchmarks/bench_dtype.py                      # bundled model, 30,000 tokens (every domain)
    python benchmarks/bench_dtype.py --fp8                # and FP8 weights with FP8 GEMMs
    python benchmarks/bench_dtype.py --ckpt DIR --corpus PATH --max-tokens 100000
    python benchmarks/bench_dtype.py --config benchmarks/config_wide.json --max-tokens 20000   # a wider model

Records the same windows twice (`dsv3-probe record --dtype float32`, then `--dtype bfloat16`; topk
routing, no kv-stats or MTP tables, so the time is the model's) into a temporary directory, one
after the other in this process, and prints: tokens/s of each and their ratio, the share of
(token, MoE layer) pairs whose top-k expert set is the same, the share whose top-1 expert is the
same, the mean number of the K experts that differ, and the mean loss per domain in each dtype with
the difference. The CPU's bfloat16 support decides the speed: AMX (`amx_bf16`) and AVX-512 BF16
(`avx512_bf16`) run bf16 matrix products natively; elsewhere bf16 is emulated and slower.

`--fp8` records a third time: an FP8 copy of the checkpoint (its projections float8_e4m3fn with
128 x 128 block scales, written to the temporary directory) with FP8 weights resident and FP8
GEMMs on bf16 activations (`--gemm fp8 --dtype bfloat16`, DeepSeek-V3's inference format; the torch
twins of the kernels on a CPU), compared with float32 the same way. A model trained in higher
precision (the bundled one) meets FP8 rounding only here; DeepSeek-V3 was trained with it.

How much bf16 saves depends on the model's width as much as on the CPU: the bundled model's GEMMs
are small (hidden 192), so most of its time is not in them. The first lines printed time F.linear
in both dtypes at the model's own shapes (a dense projection at a batch's rows, one routed expert at
its share of them). `--config` records a model of another architecture (a Hugging Face config.json,
vocabulary set to the bundled tokenizer's) on random weights instead, its routers drawn with std
1/sqrt(hidden) so that their scores spread; its tokens/s show what bf16 is worth at that width,
while its routing agreement is only that of a random router, not a trained one's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _cli import positive_int, run


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f")))


def random_checkpoint(config: str, out: Path) -> str:
    """A checkpoint of `config`'s architecture on random weights (seed 0), with the bundled tokenizer."""
    import json
    import shutil

    import torch

    import model
    from model.args import ModelArgs
    from model.moe import Gate
    from model.transformer import Transformer
    from probe.job import DEFAULT_CKPT, checkpoint_args

    vocab = checkpoint_args(DEFAULT_CKPT).vocab_size
    try:
        args = ModelArgs.from_hf_config(json.loads(Path(config).read_text()) | {"vocab_size": vocab})
    except ValueError as e:  # model.args.ConfigError, or json's decode error
        raise ValueError(f"--config {config}: {e}") from None  # one line, exit status 2 (_cli.run)
    m = Transformer(args, init=False)
    m.reset_parameters(seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for gate in (mod for mod in m.modules() if isinstance(mod, Gate)):  # scores that spread like a trained router's
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * args.dim ** -0.5)
    model.save(m, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEFAULT_CKPT / name, out / name)
    print(f"random weights: {config} (hidden {args.dim}, {args.n_layers} layers, {args.n_routed_experts} experts "
          f"of {args.dim} x {args.moe_inter_dim}, top-{args.n_activated_experts}), written to a temporary directory")
    return str(out)


def gemm_ratio(rows: int, k: int, n: int, repeats: int = 20) -> tuple[float, float]:
    """Best-of-`repeats` seconds of F.linear on [rows, k] x [n, k]^T in float32 and in bfloat16."""
    import torch
    import torch.nn.functional as F

    out = []
    for dt in (torch.float32, torch.bfloat16):
        x, w = torch.randn(rows, k, dtype=dt), torch.randn(n, k, dtype=dt)
        F.linear(x, w)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.linear(x, w)
            best = min(best, time.perf_counter() - t0)
        out.append(best)
    return out[0], out[1]


def print_gemms(ckpt: str | None, batch_size: int) -> None:
    """bf16 against float32 on this CPU at the model's own GEMM shapes: a dense projection at a
    batch's rows (batch_size windows of the record's default length), and one routed expert at
    its share of them."""
    from probe.job import DEFAULT_CKPT, checkpoint_args, default_seq_len

    args = checkpoint_args(Path(ckpt) if ckpt else DEFAULT_CKPT)
    rows = batch_size * default_seq_len(args)
    per_expert = max(1, rows * args.n_activated_experts // max(1, args.n_routed_experts))
    for what, shape in (("dense", (rows, args.dim, args.inter_dim)),
                        ("one expert", (per_expert, args.dim, args.moe_inter_dim))):
        f32, b16 = gemm_ratio(*shape)
        flops = 2 * shape[0] * shape[1] * shape[2]
        print(f"F.linear {what} {shape[0]} x {shape[1]} x {shape[2]}: float32 {flops / f32 / 1e9:,.0f} GF/s, "
              f"bfloat16 {flops / b16 / 1e9:,.0f} GF/s ({f32 / b16:.1f}x)")


def main() -> None:
    """Record in each dtype, then print the CPU's flags, each record's speed and its agreement with float32."""
    ns = _flags()
    runs, secs, choice = _record_variants(ns)
    n = len(runs["float32"][0])
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of amx/avx512'}; float32 GEMMs: "
          f"{choice.path if choice else 'n/a'}")
    labels = {"float32": "float32", "bfloat16": "bfloat16", "fp8": "fp8 (FP8 weights and GEMMs, bf16)"}
    width = max(len(labels[name]) for name in runs)
    for name in runs:
        ratio = "" if name == "float32" else f": {secs['float32'] / secs[name]:.2f}x float32"
        print(f"{labels[name]:{width}} {n / secs[name]:9,.0f} tokens/s ({secs[name]:.1f} s){ratio}")
    for name in [v for v in runs if v != "float32"]:
        _print_agreement(runs, name, labels[name], n)


def _flags():
    """`main`'s first step: the flags, a bad one answered before anything heavy is imported."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint (default: the bundled model)")
    p.add_argument("--corpus", help="corpus (default: the bundled validation corpus)")
    p.add_argument("--max-tokens", type=positive_int, default=30_000)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--config", help="a Hugging Face config.json: record that architecture on random weights "
                                    "(with the bundled tokenizer) instead of --ckpt")
    p.add_argument("--fp8", action="store_true",
                   help="also record an FP8 copy of the checkpoint with FP8 GEMMs (`--gemm fp8 --dtype bfloat16`, "
                        "DeepSeek-V3's inference format) and compare it with float32 too")
    ns = p.parse_args()
    if ns.config and ns.ckpt:
        p.error("--config makes a random checkpoint; it cannot be combined with --ckpt")
    if ns.config and not Path(ns.config).is_file():
        p.error(f"--config {ns.config}: no such file")
    return ns


def _record_variants(ns) -> tuple[dict, dict, object]:
    """`main`'s second step: the same record in float32, bfloat16 (and with --fp8 an FP8 copy) in a
    temporary directory, then the GEMM timings; returns each variant's tokens and routing, its
    seconds, and the float32 GEMM path the records took."""
    import probe
    from model import gemm
    from probe.record import RecordOptions, record

    runs, secs = {}, {}
    with tempfile.TemporaryDirectory() as d:
        if ns.config:
            ns.ckpt = random_checkpoint(ns.config, Path(d) / "ckpt")
        variants = {"float32": dict(dtype="float32"), "bfloat16": dict(dtype="bfloat16")}
        if ns.fp8:
            from model.saving import fp8_copy
            from probe.job import DEFAULT_CKPT

            fp8 = fp8_copy(ns.ckpt or DEFAULT_CKPT, Path(d) / "ckpt-fp8")
            variants["fp8"] = dict(dtype="bfloat16", gemm="fp8", ckpt=str(fp8))
        for name, kw in variants.items():
            t0 = time.perf_counter()
            out = record(RecordOptions(**(dict(ckpt=ns.ckpt) | kw), corpus=ns.corpus, out=str(Path(d) / name),
                                       max_tokens=ns.max_tokens, batch_size=ns.batch_size, kv_stats=False,
                                       mtp=False, progress=False))
            secs[name] = time.perf_counter() - t0
            run = probe.open_run(out)
            runs[name] = (run.df("tokens"), run.df("routing", columns=["seq_id", "pos", "layer", "expert_ids"]))
        choice = gemm.current()
        print_gemms(ns.ckpt, ns.batch_size)
    return runs, secs, choice


def _print_agreement(runs: dict, name: str, label: str, n: int) -> None:
    """`main`'s last step, for each variant but float32 (`name`, printed as `label`): its routing and loss
    against float32's."""
    from analyses.metrics import record_agreement

    c = record_agreement(*runs["float32"], *runs[name])
    print(f"{label} against float32: {n:,} tokens, {c['pairs']:,} (token, MoE layer) pairs, K = {c['K']}")
    print(f"top-k set identical {100 * c['same_set']:.2f}%, top-1 identical {100 * c['top1']:.2f}%, "
          f"experts differing per pair {c['differ']:.3f} of {c['K']}")
    for layer, v in c["per_layer"].items():
        print(f"  layer {layer}: top-k set identical {100 * v:.2f}%")
    print(f"mean loss per domain (nats): float32 / {name} / difference")
    for dom, row in c["loss"].iterrows():
        print(f"  {dom:12} {row.loss_ref:.4f} / {row.loss_got:.4f} / {row.loss_got - row.loss_ref:+.4f}")


if __name__ == "__main__":
    run(main)
