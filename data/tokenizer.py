"""Byte-level BPE tokenizer for the corpus, trained with the `tokenizers` library.

    python -m data.tokenizer                                   # data/corpus/train.jsonl -> data/tokenizer.json
    python -m data.tokenizer --corpus DIR --out PATH --vocab-size 4096

Byte-level: every UTF-8 byte is in the base alphabet, so any text (Chinese, code, LaTeX) encodes
and decodes back exactly; there is no normaliser. Digits are split one by one before the byte
level step, so numbers are never merged (helps the arithmetic domain). Special tokens come first
with fixed ids: <|bos|> = 0, <|eos|> = 1, <|pad|> = 2 (the ids `ModelArgs` expects for bos/eos).
Nothing is added automatically on encode; the training code adds <|bos|> / <|eos|> itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # `python data/tokenizer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from data.build_corpus import DATA_DIR, CorpusError, read_jsonl  # noqa: E402
from probe.job import (check_file_replaceable, check_not_an_input, check_out_parent, first_line,  # noqa: E402
                       path_arg, terminate_as_interrupt)
from probe.job_exit import say_stopped  # noqa: E402
from probe.writer import replacing  # noqa: E402

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
BOS, EOS, PAD = 0, 1, 2
BASE_VOCAB = 256 + len(SPECIAL_TOKENS)  # a vocabulary must exceed the bytes and the special tokens


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train byte-level BPE on `texts`; `vocab_size` includes the 256 bytes and the special tokens."""
    if vocab_size <= BASE_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} must exceed {BASE_VOCAB} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special)")
    # each merge joins a pair of symbols of the text, so a vocabulary holds at most one token per byte
    # beyond BASE_VOCAB; the trainer allocates for vocab_size up front, and --vocab-size 10**12 aborted
    # the process in Rust ("memory allocation of ... bytes failed"). The merges learned are the same.
    texts = list(texts)
    vocab_size = min(vocab_size, BASE_VOCAB + 4 * sum(map(len, texts)))  # at most 4 UTF-8 bytes a character
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write `tokenizer.json` under a temporary name, then rename; a failed or stopped save removes the
    temporary (`tokenizer.json.tmp` was left beside it for good) and leaves `path` as it was. A write
    the OS refuses (a file or folder put where --out goes since it was checked) is a CorpusError naming
    `path`: an OSError, or the bare Exception `tokenizers` raises for its own write, was a traceback."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tok.save(str(tmp))
    except Exception as e:
        if not isinstance(e, OSError) and type(e) is not Exception:  # a bug of ours stays a traceback
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)  # not the temporary's name
        raise CorpusError(f"{path}: cannot write the tokenizer there ({why}); nothing written") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json and check it has our special tokens at their ids (clear error if not)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no tokenizer (train one with: python -m data.tokenizer)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise CorpusError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise CorpusError(f"{path}: special token {s} must have id {i}, has {tok.token_to_id(s)}")
    return tok


def _train(ns: argparse.Namespace) -> tuple[Tokenizer, list[dict]]:
    """Check the flags, --out and both splits, train and save: the tokenizer and the validation split.
    Bad input is one line and exit status 2, Ctrl-C one line and 130, with --out as it was."""
    try:  # flags, --out and both splits checked before the training, and before anything is written
        if ns.min_frequency < 0:
            raise CorpusError(f"--min-frequency {ns.min_frequency}: must be >= 0")
        if ns.vocab_size <= BASE_VOCAB:  # train_tokenizer's own error named vocab_size=, not the flag (a review)
            raise CorpusError(f"--vocab-size {ns.vocab_size}: must exceed {BASE_VOCAB} "
                              f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        check_out_parent(ns.out, file=True, error=CorpusError)
        # --out over the corpus' train.jsonl replaced the training texts with the tokenizer (a tour)
        # named as given: "the val.jsonl of --corpus DIR/val.jsonl" named the file as the flag (a tour)
        splits = {f"{{path}}, the {split} of --corpus {ns.corpus}": ns.corpus / split
                  for split in ("train.jsonl", "val.jsonl")}
        check_not_an_input(ns.out, splits, error=CorpusError)
        check_file_replaceable(ns.out, (b'"added_tokens"',), "a tokenizer.json", error=CorpusError)
        if ns.corpus.is_file():  # data/corpus/train.jsonl given: reported as ".../train.jsonl/train.jsonl: not found"
            raise CorpusError(f"--corpus {ns.corpus}: is a file; --corpus must be a folder holding train.jsonl, "
                              "e.g. data/corpus")
        docs = read_jsonl(ns.corpus / "train.jsonl")
        if not docs:
            raise CorpusError(f"{ns.corpus / 'train.jsonl'}: no documents to learn merges from")
        val = read_jsonl(ns.corpus / "val.jsonl") if (ns.corpus / "val.jsonl").exists() else []
        tok = train_tokenizer((d["text"] for d in docs), ns.vocab_size, ns.min_frequency)
        save_tokenizer(tok, ns.out)
    except (CorpusError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # while training or saving (the temporary is gone): one line, not a traceback
        say_stopped(f"\ninterrupted: nothing written ({ns.out} is as it was)")  # its terminal may be gone (SIGHUP)
        raise SystemExit(130) from None
    return tok, val


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=path_arg, default=DATA_DIR / "corpus",
                   help="corpus directory with train.jsonl (default: data/corpus)")
    p.add_argument("--out", type=path_arg, default=DATA_DIR / "tokenizer.json",
                   help="where to write tokenizer.json (default: data/tokenizer.json)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary incl. bytes and special tokens")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    ns = p.parse_args(argv)
    with terminate_as_interrupt():  # SIGTERM (`timeout`, a scheduler) as Ctrl-C: the temporary is removed
        tok, val = _train(ns)
    print(f"wrote {ns.out} (vocab {tok.get_vocab_size()})")
    if tok.get_vocab_size() < ns.vocab_size:  # it was a smaller vocabulary without a word (a tour)
        print(f"note: --vocab-size {ns.vocab_size} asked for more: the corpus has no further pair seen at least "
              f"{ns.min_frequency} times (--min-frequency) to merge", file=sys.stderr)
    try:
        with terminate_as_interrupt():
            _print_validation(tok, val)
    except KeyboardInterrupt:  # a traceback before (SIGTERM ended it without a word); the tokenizer is saved
        say_stopped(f"\ninterrupted: the validation figures were cut short; {ns.out} is written and complete")
        raise SystemExit(130) from None


def _print_validation(tok: Tokenizer, val: list[dict]) -> None:
    """Per domain of the validation split: its tokens, bytes per token and documents that round-trip."""
    by_domain: dict[str, list[int]] = {}
    for d in val:
        n = by_domain.setdefault(d["domain"], [0, 0, 0])
        ids = tok.encode(d["text"]).ids
        n[0] += len(d["text"].encode("utf-8"))
        n[1] += len(ids)
        n[2] += tok.decode(ids, skip_special_tokens=False) == d["text"]
    for domain, (nbytes, ntok, ok) in sorted(by_domain.items()):
        print(f"  val {domain:<11} {ntok:>8,} tokens  {nbytes / max(ntok, 1):.2f} bytes/token  "
              f"round trip {ok}/{sum(d['domain'] == domain for d in val)} docs")


if __name__ == "__main__":
    main()
