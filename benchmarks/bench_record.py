"""Recording cost: time overhead against a plain forward, peak memory against run length, bytes per row.

    python benchmarks/bench_record.py              # all three parts, ~2-4 minutes on 2 cores
    python benchmarks/bench_record.py --part overhead

1. overhead: the same padded batches (hidden 512, 6 layers, 32 experts top-8, 4x256 tokens) through
   a plain forward and through the recorder (hooks, row building, Parquet writing), interleaved
   in this process. Each timed run commits once (4 batches); the commit counts at the recorder's
   real cadence (one per 32 batches: 4/32 of its time), and its time is printed. Targets: router-logits topk <= 5%, full <= 25% (routing tables only; the
   optional kv-stats and mtp tables are reported separately: MTP runs an extra block and head).
2. memory: `python -m probe record` on N and 10N tokens in child processes (N = --tokens; the 10N
   run records as much of the bench's corpus, about 76,000 tokens, as it holds: the tokens each
   run recorded and their ratio are printed); peak RSS of each (target: the 10x run grows < 10%).
3. size: on-disk bytes per routing row (K = 8, zstd) of the big memory run, and of a third record of
   10N tokens with router-logits topk. Target <= 40. `--part size` runs the memory part for its runs.

The child records run with --threads torch threads (OMP_NUM_THREADS), as this process does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cli import REPO, positive_int, run

# the tests' helpers package, searched last: tests/model/ etc. must not shadow the packages of the same name
sys.path.append(str(REPO / "tests"))

COMMIT_EVERY = 32  # RecordOptions.commit_every: the recorder commits (writes Parquet parts) every 32 batches
BENCH_ARGS = dict(vocab_size=8192, dim=512, inter_dim=1408, moe_inter_dim=256, n_layers=6, n_dense_layers=1,
                  n_heads=8, n_routed_experts=32, n_activated_experts=8, n_expert_groups=4, n_limited_groups=2,
                  q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                  rope_factor=4.0, original_seq_len=1024, max_seq_len=4096, dtype="float32")


def build_env(root: Path, docs: int = 24, scale: int = 8):
    """A random hidden-512 checkpoint with a tokenizer, and a two-domain corpus."""
    import torch

    import model
    from helpers.models import make_corpus, make_tokenizer, randomize_

    corpus = make_corpus(root / "corpus", docs_per_domain=docs, seed=0, scale=scale)
    args = model.ModelArgs(**BENCH_ARGS)
    torch.manual_seed(0)
    m = model.Transformer(args)
    randomize_(m, 0)
    model.save(m, root / "ckpt")
    make_tokenizer(corpus, root / "ckpt" / "tokenizer.json", vocab_size=2000)
    return root / "ckpt", corpus


def overhead(ckpt: Path, corpus: Path, repeats: int) -> None:
    """Part 1: a plain forward and the recorder's configurations timed on the same 4 batches,
    interleaved `repeats` times, printed against the plain forward."""
    import torch

    m, batches = _overhead_batches(ckpt, corpus)
    tmp = Path(tempfile.mkdtemp())
    commits: list[float] = []

    def plain():
        with torch.no_grad():
            for b in batches:
                m(b.tokens, lengths=b.lengths)

    def recorder(router_logits, kv=False, mtp=False, sample=1.0):
        return _recorded(m, batches, tmp / f"{router_logits}{kv}{mtp}{sample}", commits, router_logits, kv, mtp,
                         sample)

    cases = {"plain forward": plain, "record topk": recorder("topk"), "record full": recorder("full"),
             "record full, sample 0.1": recorder("full", sample=0.1),
             "record topk + kv-stats": recorder("topk", kv=True), "record topk + mtp": recorder("topk", mtp=True)}
    times = _interleaved(cases, repeats, commits)
    _print_overhead(times, batches, repeats, commits)


def _overhead_batches(ckpt: Path, corpus: Path) -> tuple:
    """The overhead part's first step: the float32 model, and 4 batches of 4 windows of 256 tokens
    from the corpus."""
    import torch

    import model
    from probe.corpus import iter_documents
    from probe.recorders import Batch
    from probe.windows import iter_windows
    from tokenizers import Tokenizer

    m = model.load(ckpt, dtype=torch.float32)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    wins = list(iter_windows(iter_documents(corpus), lambda t: tok.encode(t).ids, 256, 0, max_tokens=4 * 256 * 6))
    return m, [Batch(i, wins[i * 4:(i + 1) * 4]) for i in range(len(wins) // 4)][:4]


def _recorded(m, batches: list, out: Path, commits: list[float], router_logits: str, kv: bool, mtp: bool,
              sample: float):
    """The overhead part's recorder case: a Recorder on `m` and its PartWriter under `out`, and the
    timed run of `batches` through them (its commit's time appended to `commits`)."""
    from probe.recorders import RecordConfig, Recorder
    from probe.writer import PartWriter

    cfg = RecordConfig(router_logits=router_logits, sample=sample, kv_stats=kv, mtp=mtp)
    rec = Recorder(m, cfg, ["code", "prose"])
    tables = ["tokens", "expert_load"] + (["routing"] if router_logits != "none" else []) + (["mtp"] if mtp else [])
    w = PartWriter(out, 0, tables)

    def run():
        """Returns the seconds to leave out: the commit beyond its share at the real cadence."""
        for b in batches:
            for t, cols in rec.run(b).items():
                if cols:
                    w.append(t, cols, b.index)
        t0 = time.perf_counter()
        w.commit(batches[-1].index, {}, rec.kv.state())
        dt = time.perf_counter() - t0
        commits.append(dt)
        return dt * (1 - len(batches) / COMMIT_EVERY)
    return run


def _interleaved(cases: dict, repeats: int, commits: list[float]) -> dict[str, list[float]]:
    """The overhead part's timing: every case once (warm-up; its commits forgotten), then `repeats`
    rounds of every case in turn; each case's seconds less the commit time it leaves out."""
    for f in cases.values():
        f()
    times = {k: [] for k in cases}
    commits.clear()
    for _ in range(repeats):
        for k, f in cases.items():
            t0 = time.perf_counter()
            excess = f() or 0.0
            times[k].append(time.perf_counter() - t0 - excess)
    return times


def _print_overhead(times: dict[str, list[float]], batches: list, repeats: int, commits: list[float]) -> None:
    """The overhead part's table: each case's median and best seconds, against the plain forward's."""
    base = statistics.median(times["plain forward"])
    best = min(times["plain forward"])
    n = sum(int(b.lengths.sum()) for b in batches)
    print(f"\n1. overhead: {len(batches)} batches of 4x256, {n} tokens, {repeats} interleaved repeats")
    print(f"{'':26} {'median s':>9} {'overhead':>9} {'best s':>8} {'best vs best':>13}")
    for k, ts in times.items():
        t, b = statistics.median(ts), min(ts)
        print(f"{k:26} {t:9.3f} {100 * (t / base - 1):8.1f}% {b:8.3f} {100 * (b / best - 1):12.1f}%")
    print(f"(each recorder run commits its {len(batches)} batches, median {1e3 * statistics.median(commits):.1f} ms; "
          f"counted at `dsv3-probe record`'s cadence, one commit per {COMMIT_EVERY} batches)")


def record_env(threads: int) -> dict:
    """The child records' environment: this repository importable, and --threads torch threads."""
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def peak_rss(cmd: list[str], env: dict) -> tuple[int, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"record failed: {p.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss, time.perf_counter() - t0  # KiB on Linux


def recorded_tokens(run: Path) -> int:
    """The tokens a run recorded (run.json's recorded.tokens): fewer than asked where the corpus ends."""
    import json

    return int(json.loads((run / "run.json").read_text())["recorded"]["tokens"])


def memory(ckpt: Path, corpus: Path, tokens: int, threads: int) -> Path:
    """Peak RSS of `probe record` on `tokens` and 10x `tokens` (as far as the corpus goes), printed
    with the tokens each run recorded; returns the bigger run."""
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for n in (tokens, 10 * tokens):
        cmd = [sys.executable, "-m", "probe", "record", "--ckpt", str(ckpt), "--corpus", str(corpus),
               "--out", str(tmp / f"run{n}"), "--max-tokens", str(n), "--seq-len", "256", "--batch-size", "4",
               "--router-logits", "full", "--sample", "0.1", "--no-progress"]
        rss, secs = peak_rss(cmd, record_env(threads))
        rows.append((n, recorded_tokens(tmp / f"run{n}"), rss, secs))
    print("\n2. memory: peak RSS of `probe record` (router-logits full, sample 0.1, kv-stats, mtp)")
    for n, got, rss, secs in rows:
        print(f"   {got:>8,} tokens recorded ({n:,} asked): {rss / 1024:8.1f} MiB peak RSS, {secs:6.1f} s")
    (_, small, rss0, _), (_, big, rss1, _) = rows
    print(f"   {big / small:.1f}x tokens -> RSS grows {100 * (rss1 / rss0 - 1):.1f}%")
    if big < 10 * small:  # the bench's corpus is fixed (about 76,000 tokens); it labelled this "10x" (a review)
        print(f"   (the corpus holds {big:,} tokens: --tokens {big // 10:,} or fewer gives a big run of 10x)")
    return tmp / f"run{10 * tokens}"


def size(run: Path) -> None:
    import probe

    r = probe.open_run(run)
    routing_bytes = sum(f.stat().st_size for f in r.files("routing"))
    n = r.sql("select count(*) from routing").fetchall()[0][0]
    K = len(r.sql("select expert_ids from routing limit 1").fetchall()[0][0])
    print(f"\n3. size: routing table (K = {K}, zstd, full scores on 10% of rows): {n} rows, "
          f"{routing_bytes / n:.1f} bytes/row")
    for t in r.tables:
        b = sum(f.stat().st_size for f in r.files(t))
        print(f"   {t:12} {b / 1024:9.1f} KiB")


def size_topk(ckpt: Path, corpus: Path, tokens: int, threads: int) -> None:
    import probe

    out = Path(tempfile.mkdtemp()) / "topk"
    subprocess.run([sys.executable, "-m", "probe", "record", "--ckpt", str(ckpt), "--corpus", str(corpus),
                    "--out", str(out), "--max-tokens", str(tokens), "--seq-len", "256", "--batch-size", "4",
                    "--router-logits", "topk", "--no-kv-stats", "--no-mtp", "--no-progress"], check=True,
                   env=record_env(threads))
    r = probe.open_run(out)
    n = r.sql("select count(*) from routing").fetchall()[0][0]
    b = sum(f.stat().st_size for f in r.files("routing"))
    print(f"   router-logits topk (K = 8): {n} rows, {b / n:.1f} bytes/row (target <= 40)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "overhead", "memory", "size"], default="all",
                   help="size measures the runs the memory part records, so it runs that part too")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--tokens", type=positive_int, default=4000,
                   help="tokens of the small memory run (default 4000); the big one asks 10x, and records what "
                        "the bench's corpus of about 76,000 tokens holds (both counts are printed)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="torch CPU threads, here and in the child records (OMP_NUM_THREADS; default 2)")
    ns = p.parse_args()
    import torch  # after the flags: a bad one is answered at once, not after torch's ~2 s import

    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory(prefix="bench_record-") as root:
        tempfile.tempdir = root  # every folder made below lands here, and goes with it
        try:
            ckpt, corpus = build_env(Path(tempfile.mkdtemp()))
            if ns.part in ("all", "overhead"):
                overhead(ckpt, corpus, ns.repeats)
            if ns.part in ("all", "memory", "size"):
                run = memory(ckpt, corpus, ns.tokens, ns.threads)
            if ns.part in ("all", "size"):
                size(run)
                size_topk(ckpt, corpus, 10 * ns.tokens, ns.threads)
        finally:
            tempfile.tempdir = None


if __name__ == "__main__":
    run(main)
