"""Shared by tests/e2e/test_mp_jobs.py (sharded jobs equal one process) and test_mp_resume.py (kill and
resume, bad layouts, --dry-run): the tiny checkpoint with DeepSeek-V3's routing topology, the jobs'
options and torchrun launches (tables are compared with helpers.tables).

The runs use float64 (`--dtype float64`): the sharded forward adds its partial sums in another order
than one process, and in float32 that rounding difference flips the rare near-tie in a top-8 choice;
in float64 the layouts give the same routing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import model

from . import make_corpus, make_tokenizer, random_model
from .processes import TORCHRUN
from .threads import one_thread

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = dict(n_routed_experts=256, n_expert_groups=8, n_limited_groups=4, n_activated_experts=8, moe_inter_dim=8)
RECORD = dict(seq_len=32, batch_size=2, router_logits="full", sample=0.5, dtype="float64", max_tokens=640,
              progress=False)
SPEC = dict(prompt_tokens=12, new_tokens=8, max_prompts=6, batch_size=2, dtype="float64", progress=False)
ABLATE = dict(seq_len=32, batch_size=4, max_tokens=320, dtype="float64", progress=False, loads_from="baseline")
ABLATIONS = [{"name": "top8", "top": 8}, {"name": "rand8", "random": 8, "seed": 1},
             {"name": "zero", "experts": {1: [0, 5, 77]}, "mode": "zero", "shared": True}]
IMPORTANCE = dict(seq_len=32, batch_size=4, max_tokens=320, dtype="float64", progress=False, experts="0-2,200", group=2)
STEER = dict(seq_len=32, batch_size=4, domain_tokens=100, dtype="float64", progress=False, prompt_tokens=8,
             max_new_tokens=4)
STEERING = {"name": "force-1:5+77", "experts": "1:5+77", "mode": "force"}
# test_mp_jobs.py's record: RECORD's 640 tokens in batches of 4 windows (5 batches: 3 and 2 per replica),
# the report's ablations then too (a run's batch size is theirs), as ABLATE, IMPORTANCE and STEER (3
# batches: a replica still runs two). A forward of this tiny model costs about the same at 2 or 4
# windows: the file's CPU (user + sys, children included) 40.7-49.0 s, mean 43.8, at 2 and 37.8-40.5 s, mean
# 39.4, at 4 (five runs each, alternated, `-n 0`, a shared 2-core EPYC, 2026-12-07)
RECORD_JOBS = RECORD | {"batch_size": 4}
TABLES = ["tokens", "routing", "expert_load", "mtp", "kv_stats", "kv_spectrum", "router_bias"]
REPORT = ["--max-tokens", "300", "--fractions", "1/32", "--seeds", "1", "--no-progress", "--dtype", "float64",
          "--importance-tokens", "0"]  # the importance job is compared on its own


def make_env(base: Path) -> dict:
    """A corpus and a tiny checkpoint (DeepSeek-V3's expert topology) with its tokenizer under `base`."""
    corpus = make_corpus(base / "corpus", docs_per_domain=8, seed=2, scale=2)
    ckpt = base / "ckpt"
    with one_thread():  # 0.26-0.33 s on two threads, 0.15-0.18 s on one
        model.save(random_model("tiny", seed=11, **TOPOLOGY), ckpt)
    make_tokenizer(corpus, ckpt / "tokenizer.json")
    return {"base": base, "corpus": corpus, "ckpt": ckpt}


def opts(env, out, extra: dict) -> dict:
    return {"ckpt": str(env["ckpt"]), "corpus": str(env["corpus"]), "out": str(out)} | extra


def torchrun(nproc: int, *args: str, timeout: int = 300, popen: bool = False, env: dict | None = None):
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), *args]
    kw = dict(cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | (env or {}), text=True,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if popen:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=timeout, **kw)



def record_args(env, out, *extra, max_tokens: int = RECORD["max_tokens"]):
    return ["-m", "probe", "record", "--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out),
            "--seq-len", "32", "--batch-size", "2", "--router-logits", "full", "--sample", "0.5", "--dtype",
            "float64", "--max-tokens", str(max_tokens), "--no-progress", *extra]


def our_frames(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if any(f'File "{ROOT / pkg}' in ln for pkg in ("probe", "model", "analyses"))]


