"""DeepSeek-V3 671B at its real widths on a CPU: a two-layer slice recorded under torchrun, with the
memory plan set beside what each rank measures. A script, not a test.

    python benchmarks/bench_full_width.py                      # checkpoint (once), plan, 2 ranks, 1 process
    python benchmarks/bench_full_width.py --tokens 4096 --skip-single
    python benchmarks/bench_full_width.py --gemm fp8-weights --dtype float32   # dequantised numbers (transformers')
    python benchmarks/bench_full_width.py --device cuda --ranks 1   # the same slice on one GPU (Triton FP8 GEMMs)

The slice is the published 671B config.json with `num_hidden_layers: 2`: one dense layer and one MoE
layer (256 routed experts of 2048, 8 groups, top-8, one shared expert), 128 heads with MLA ranks
1536 / 512, a 129,280-token vocabulary, YaRN at factor 40; with --mtp also the MTP layer. Its random
weights are stored as the published checkpoint stores them: every projection FP8 e4m3 with 128 x 128
`weight_scale_inv` blocks, the embedding, head, norms and router in BF16, the balancing bias in
float32, in safetensors files of about 2 GB with an index. It is written once into the cache
directory (default ~/.cache/dsv3-probe/full-width-671B-2L) and reused; a --cache folder that holds
anything but an earlier write of this bench (a marker file says which) is refused, never replaced.

Then: `dsv3-probe record --dry-run` for the layout (the plan per rank: weights, their packed copy for
oneDNN (float32 on a CPU), activations, and their total),
`torchrun --nproc-per-node 2 -m probe record --model-parallel 2 --gemm fp8 --dtype bfloat16` over the bundled corpus,
and the same in one process when the machine's available memory holds the plan's single-process
total. Printed: checkpoint write and load times, tokens/s, each rank's peak resident memory (from
run.json, measured by the job) beside the plan's prediction, and the share of (token, layer) pairs
whose top-8 expert set is the same in the two runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from _cli import REPO, positive_int, run as run_cli  # first: it puts this checkout on sys.path
from model import ModelArgs, Transformer
from model.names import MTP_SHARED, ours_to_hf
from model.saving import write_checkpoint as save_tensors
from model.fp8 import FP8_MAX

GB = 1e9
STD = 0.02  # projections (the FP8 ones, and the head)
EMBED_STD = 1.0  # unit-scale embeddings: each random layer adds a small update to the residual stream
FP8_UNIT = 112.0  # a unit normal is stored as q = 112 z (|q| <= 448 = 4 sigma), scale = STD / 112 per block


def slice_args(mtp: bool) -> ModelArgs:
    a = ModelArgs.from_name("671B")
    return dataclasses.replace(a, n_layers=2, n_dense_layers=1, n_mtp_layers=1 if mtp else 0)


# --------------------------------------------------------------------------------- the checkpoint
def _tensor(hf: str, shape: torch.Size, fp8: bool, dim: int, gen: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    """One checkpoint tensor (and its block scales when FP8), random, in the published dtypes."""
    if fp8:
        q = torch.randn(shape, generator=gen).mul_(FP8_UNIT).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        blocks = (-(-shape[0] // 128), -(-shape[1] // 128))
        scale = (STD / FP8_UNIT) * (0.75 + 0.5 * torch.rand(blocks, generator=gen))
        return [(hf, q), (hf + "_scale_inv", scale.float())]
    if hf.endswith("e_score_correction_bias"):
        return [(hf, 0.02 * torch.randn(shape, generator=gen))]
    if hf.endswith("mlp.gate.weight"):  # router logits of unit std for a unit-RMS input
        return [(hf, torch.randn(shape, generator=gen).div_(dim ** 0.5).bfloat16())]
    if "norm" in hf:
        return [(hf, torch.ones(shape, dtype=torch.bfloat16))]
    std = EMBED_STD if "embed_tokens" in hf or hf.endswith(".embed_tokens.weight") else STD
    return [(hf, torch.randn(shape, generator=gen).mul_(std).bfloat16())]


OURS = ".written-by-bench-full-width"  # in every cache folder this bench writes, from its first file on


def write_checkpoint(args: ModelArgs, path: Path, seed: int = 0, shard_bytes: float = 2 * GB) -> float:
    """Write the slice as a Hugging Face FP8 checkpoint (skipped when `path` holds this one complete),
    drawing one tensor at a time (model.saving.write_checkpoint holds one file's tensors); returns
    the seconds it took (0 when reused). What `path` holds is replaced only when it is empty or this
    bench wrote it (a partial or other write, holding OURS); anything else there is refused."""
    want = {"args": args.to_dict(), "seed": seed, "std": STD, "embed_std": EMBED_STD, "format": 1}
    marker = path / "COMPLETE.json"
    if marker.exists() and _read_json(marker) == want:
        return 0.0
    t0 = time.time()
    clear_cache(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OURS).write_text("a checkpoint of random weights written by benchmarks/bench_full_width.py; "
                             "it replaces this folder when it writes another\n")
    with torch.device("meta"):
        meta = Transformer(args, dtype=torch.bfloat16, init=False)
    state = meta.state_dict()
    entries = [(hf, state[ours].shape if e is None else state[ours].shape[1:], fp8)
               for hf, ours, e, fp8 in ours_to_hf(meta)]
    for k in range(len(meta.mtp)):  # the published MTP layer carries its own embedding and head copies
        entries += [(f"model.layers.{args.n_layers + k}.{hf}", state[ours].shape, False) for hf, ours in MTP_SHARED.items()]
    gen = torch.Generator().manual_seed(seed)

    def tensors():
        for i, (hf, shape, fp8) in enumerate(entries):
            if i % 100 == 0:
                print(f"\r  writing the checkpoint: {i + 1}/{len(entries)} tensors", end="", flush=True)
            yield from _tensor(hf, shape, fp8, args.dim, gen)
        print()

    save_tensors(path, args, tensors(), fp8=True, dtype=torch.bfloat16, max_shard_bytes=shard_bytes)
    tmp = path / "COMPLETE.json.tmp"
    tmp.write_text(json.dumps(want))
    tmp.replace(marker)
    return time.time() - t0


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clear_cache(path: Path) -> None:
    """Empty --cache's folder `path` for a new checkpoint: delete it when this bench wrote it (it holds
    OURS); leave it when empty or absent; refuse anything else (a user's folder or a real checkpoint
    was deleted before; a review)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if (path / OURS).is_file():
            shutil.rmtree(path)
            return
        if not any(path.iterdir()):
            return
    raise ValueError(f"--cache {path}: holds files this bench did not write (not its checkpoint); "
                     "pass another --cache, or empty that folder")


# --------------------------------------------------------------------------------- the runs
def record_flags(ns, ckpt: Path) -> list[str]:
    return ["--ckpt", str(ckpt), "--tokenizer", str(REPO / "data" / "tokenizer.json"), "--max-tokens",
            str(ns.tokens), "--seq-len", str(ns.seq_len), "--batch-size", str(ns.batch_size), "--gemm", ns.gemm,
            "--dtype", ns.dtype, "--device", ns.device, "--no-progress", "--overwrite"]


def plan(ns, ckpt: Path, ranks: int) -> dict:
    """The --dry-run plan of the run `run` starts, for `ranks` ranks holding one model (printed, and returned)."""
    from probe.__main__ import record_options
    from probe.plan import dry_run
    from probe.record import prepare

    opts = record_options(record_flags(ns, ckpt) + ["--out", str(ns.work / f"planned-{ranks}"), "--dry-run",
                                                    "--world-size", str(ranks), "--model-parallel", str(ranks)])
    return dry_run(prepare(opts), opts)


def run(ns, ckpt: Path, ranks: int) -> dict:
    """Record with `ranks` processes holding one model; returns run.json and the wall time."""
    out = ns.work / f"run-{ranks}"
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               "-m", "probe", "record",
               "--model-parallel", str(ranks)]
    else:
        cmd = [sys.executable, "-m", "probe", "record"]
    cmd += record_flags(ns, ckpt) + ["--out", str(out)]
    print("  $ " + " ".join(cmd), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: the {ranks}-process record failed (exit {p.returncode}):\n{tail}")
    info = json.loads((out / "run.json").read_text())
    return {"out": out, "info": info, "wall": wall}


def available_memory() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def same_routing(a: Path, b: Path) -> tuple[float, int, float]:
    """Share of (token, layer) pairs whose top-k set is the same in runs a and b, the pairs, and the
    largest relative difference of a token's loss."""
    import duckdb

    con = duckdb.connect()
    q = con.execute(f"""
        select avg(case when list_sort(x.expert_ids) = list_sort(y.expert_ids) then 1.0 else 0.0 end), count(*)
        from read_parquet('{a}/routing/*.parquet') x join read_parquet('{b}/routing/*.parquet') y
        using (seq_id, pos, layer)""").fetchone()
    loss = con.execute(f"""
        select max(abs(x.loss - y.loss) / abs(y.loss)) from read_parquet('{a}/tokens/*.parquet') x
        join read_parquet('{b}/tokens/*.parquet') y using (seq_id, pos)""").fetchone()[0]
    return float(q[0]), int(q[1]), float(loss)


def report(ns, pl: dict, r: dict, ranks: int) -> None:
    info = r["info"]
    tokens = info["recorded"]["tokens"]
    load = info["timings"]["load_s"]
    per_rank = info["memory"]["per_rank"]
    weights = pl["weights"]["per_rank_bytes"] + pl["weights"]["absorb_dense_bytes"]
    print(f"  {ranks} process(es): {tokens:,} tokens, load {load:.1f} s, record {r['wall'] - load:.1f} s of "
          f"{r['wall']:.1f} s wall -> {tokens / info['timings']['last_session_s']:.1f} tokens/s")
    print("    " + plan_line(pl))
    for m in per_rank:
        grown = m["peak_rss"] - m["before_load"]
        print(f"    rank {m['rank']}: before load {m['before_load'] / GB:.2f} GB, after load {m['after_load'] / GB:.2f} "
              f"GB, peak {m['peak_rss'] / GB:.2f} GB; peak - before load = {grown / GB:.2f} GB = "
              f"{grown / pl['per_rank']:.3f} x the plan; after load - before = "
              f"{(m['after_load'] - m['before_load']) / weights:.3f} x the plan's weights")


def plan_line(pl: dict) -> str:
    """The plan's terms per rank, which add up to its total: the weights (with the dequantised wkv_b),
    the oneDNN packed copy of them (float32 on a CPU; 0 elsewhere) and the activations."""
    w = pl["weights"]
    weights = w["per_rank_bytes"] + w["absorb_dense_bytes"]
    return (f"plan per rank: weights {weights / GB:.2f} GB + packed copy {w['packed_bytes'] / GB:.2f} GB + "
            f"activations {pl['activations']['peak'] / GB:.2f} GB = {pl['per_rank'] / GB:.2f} GB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "dsv3-probe" / "full-width-671B-2L", help="checkpoint directory (written once, reused)")
    p.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary directory)")
    p.add_argument("--tokens", type=positive_int, default=2048, help="tokens to record (default 2048)")
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--ranks", type=positive_int, default=2, help="processes holding one model (default 2)")
    p.add_argument("--mtp", action="store_true", help="include the MTP layer (another 11 GB of experts)")
    p.add_argument("--skip-single", action="store_true", help="no one-process run (and no routing comparison)")
    p.add_argument("--gemm", choices=["fp8-weights", "fp8"], default="fp8",
                   help="fp8 (default): FP8 weights and activations (DeepSeek's kernels; on the CPU the twin, whose "
                        "row-parallel sums are float64, see model.layers.LAYOUT_FREE_SUMS); fp8-weights: FP8 weights "
                        "resident, each dequantised for its GEMM, activations unquantised")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="compute dtype (default bfloat16: with --gemm fp8 DeepSeek's serving arithmetic)")
    ns = p.parse_args()
    t_start = time.time()
    import tempfile

    ns.work = ns.work or Path(tempfile.mkdtemp(prefix="full-width-"))
    ns.work.mkdir(parents=True, exist_ok=True)
    args = slice_args(ns.mtp)
    ckpt = ns.cache if not ns.mtp else ns.cache.with_name(ns.cache.name + "-mtp")
    print(f"checkpoint: {ckpt}")
    t = write_checkpoint(args, ckpt)
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"  {size / GB:.2f} GB in {len(list(ckpt.glob('*.safetensors')))} files, " +
          (f"written in {t:.0f} s" if t else "reused"))
    results = {}
    for ranks in ([ns.ranks] if ns.skip_single or ns.ranks == 1 else [ns.ranks, 1]):
        print(f"\n--model-parallel {ranks}: the plan")
        pl = plan(ns, ckpt, ranks)
        need = pl["per_rank"] * ranks
        if ranks == 1 and need > available_memory():
            print(f"  skipped: one process needs {need / GB:.2f} GB by the plan, {available_memory() / GB:.2f} GB "
                  "is available")
            continue
        results[ranks] = run(ns, ckpt, ranks)
        report(ns, pl, results[ranks], ranks)
    if len(results) == 2:
        share, n, loss = same_routing(results[ns.ranks]["out"], results[1]["out"])
        print(f"\nrouting: the top-8 set is the same in the {ns.ranks}-process and 1-process runs on "
              f"{100 * share:.3f}% of {n:,} (token, layer) pairs; token losses differ by at most {loss:.2g} (relative)")
    print(f"\nruns in {ns.work}; {time.time() - t_start:.0f} s in all")
    return 0


if __name__ == "__main__":
    run_cli(main)
