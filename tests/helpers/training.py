"""What the training tests share: a small three-domain corpus with its tokenizer, and the flags of a
small training run (tests/train/)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from data.mathgen import math_document
from data.tokenizer import save_tokenizer, train_tokenizer

WORDS = "the king queen night watch ghost castle sword crown speak love death".split()
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"


def docs(seed: int, n: int) -> list[dict]:
    """`n` documents of each domain (math, literature, chinese), drawn with `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({"id": f"math/{seed}/{i}", "domain": "math", "text": math_document(rng, 600)})
        out.append({"id": f"lit/{seed}/{i}", "domain": "literature",
                    "text": ".\n".join(" ".join(rng.choice(WORDS) for _ in range(9)) for _ in range(12))})
        out.append({"id": f"zh/{seed}/{i}", "domain": "chinese",
                    "text": "。".join("".join(rng.choice(HANZI) for _ in range(14)) for _ in range(20))})
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in records), encoding="utf-8")


def make_corpus(d: Path) -> Path:
    """train.jsonl, val.jsonl and a 320-token tokenizer of the three domains in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    train, val = docs(0, 12), docs(1, 2)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    save_tokenizer(train_tokenizer((x["text"] for x in train), vocab_size=320), d / "tokenizer.json")
    return d


def flags(corpus: Path, out: Path, *extra: str, settle: bool = False) -> list[str]:
    """Flags of a small run; the bias-settling phase (30 x 8 extra forward passes by default) is cut to
    one update on one batch unless a test looks at it."""
    quick = [] if settle else ["--settle-updates", "1", "--settle-batches", "1"]
    return ["--corpus", str(corpus), "--tokenizer", str(corpus / "tokenizer.json"), "--config", "tiny",
            "--out", str(out), "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "2",
            "--eval-windows", "2", "--no-progress", "--threads", "1", "--save-dtype", "float32", *quick, *extra]


def step_run(out: Path, streams: dict, *extra: str, seed: int = 0):
    """A `train.loop._Run` set up as `run` sets it up (tiny model, optimizer, routing tap, one process)
    but on the token `streams` given (domain -> int array), with --seq-len 8 and --batch-size 2: for
    unit tests of `_train_step`, `_restore` and `_settle` without a corpus, a tokenizer or a run
    directory."""
    from train import loop, parse_args
    from train.data import Batches
    from train.steps import Dist, model_args

    ns = parse_args(["--config", "tiny", "--out", str(out), "--seq-len", "8", "--batch-size", "2", "--lr", "1e-3",
                     "--warmup-steps", "2", "--steps", "10", "--seed", str(seed), "--no-progress", *extra])
    r = loop._Run(ns, Dist("cpu"))
    r._build(model_args(ns, 512))
    r._attach()
    r.data = loop._Data(Batches(streams, ns.seq_len, ns.batch_size, ns.mix_alpha, ns.seed), {}, {}, {})
    return r
