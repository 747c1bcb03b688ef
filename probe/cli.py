"""`python -m probe` / `dsv3-probe`: record runs (more subcommands join as they land).

    dsv3-probe record                               # bundled model + corpus -> runs/<name>
    dsv3-probe record --ckpt CKPT --corpus DIR --out runs/x --max-tokens 100000
    torchrun --nproc-per-node 2 -m probe record --ckpt CKPT --corpus DIR --out runs/x
"""

from __future__ import annotations

import argparse
import sys

from .corpus import CorpusError
from .record import DEFAULT_CKPT, DEFAULT_CORPUS, RecordError, RecordOptions, record
from .writer import RunError


def _add_record(sub) -> None:
    p = sub.add_parser("record", help="feed a corpus through the model and write a run directory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help=f"Hugging Face checkpoint directory (default: the bundled {DEFAULT_CKPT.name})")
    p.add_argument("--corpus", help="directory of text files (domain = sub-folder), .txt, .jsonl or .parquet "
                                    f"(default: the bundled {DEFAULT_CORPUS})")
    p.add_argument("--out", help="run directory to write (default: runs/<ckpt>-<corpus>)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: the whole corpus)")
    p.add_argument("--seq-len", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--router-logits", choices=["none", "topk", "full"], default="topk",
                   help="per-token routing rows: none, top-k ids and weights, or also every expert's score")
    p.add_argument("--sample", type=float, default=1.0,
                   help="with --router-logits full: fraction of tokens whose full scores are kept (default 1)")
    p.add_argument("--kv-stats", action=argparse.BooleanOptionalAction, default=True,
                   help="latent-KV statistics and spectrum (default on)")
    p.add_argument("--mtp", action=argparse.BooleanOptionalAction, default=True,
                   help="MTP teacher-forced agreement table (default on, when the checkpoint has MTP weights)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--commit-every", type=int, default=32, help="batches between durable commits (default 32)")
    p.add_argument("--bos", dest="add_bos", action=argparse.BooleanOptionalAction, default=True,
                   help="prepend the model's BOS token to each document (default on)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default float32)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(fn=_record)


def _record(ns) -> int:
    opts = RecordOptions(**{k: v for k, v in vars(ns).items() if k in RecordOptions.__dataclass_fields__})
    try:
        out = record(opts)
    except KeyboardInterrupt as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dsv3-probe", description="Look inside DeepSeek-V3 models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_record(sub)
    ns = p.parse_args(argv)
    try:
        return ns.fn(ns)
    except (RecordError, CorpusError, RunError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
