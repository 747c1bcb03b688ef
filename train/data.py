"""Training data for `model.train`: the corpus JSON lines, the tokenizer, token streams per domain
(cached as .npz), the seeded batch sampler and the validation windows."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from probe.bundled_corpus import read_documents
from probe.file_memo import FileMemo

from .errors import TrainError  # re-exported: the package's modules take it from here

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")  # ids 0, 1, 2 (data/tokenizer.py)
# a cache file's array names: "domain:" + the domain. Saved as the domains themselves, a domain named `file`
# was np.savez's own argument (a TypeError) and one named `allow_pickle` its flag (left out of the cache)
CACHE_KEY = "domain:"
CACHE_FORMAT = "token-streams 2"  # in the cache's name: files of the first format are not read


def _corpus_file(path: Path) -> Path:
    """`path`, or a TrainError naming it when it is not a file."""
    if not path.is_file():
        raise TrainError(f"{path}: not found (build the corpus with: python -m data.build_corpus)")
    return path


def check_corpus_dir(corpus: Path) -> None:
    """--corpus is a folder holding train.jsonl (and val.jsonl): a file given instead (data/corpus/val.jsonl)
    was reported as ".../val.jsonl/train.jsonl: not found"."""
    if corpus.is_file():
        raise TrainError(f"--corpus {corpus}: is a file; --corpus must be a folder holding train.jsonl (and "
                         "val.jsonl), e.g. data/corpus")


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    # `path` is --tokenizer's: its errors name the flag, as the other flags' do
    if not path.exists():
        raise TrainError(f"--tokenizer {path}: no tokenizer (train one with: python -m data.tokenizer)")
    if path.is_dir():  # "not a readable tokenizer.json (Is a directory (os error 21))" before
        raise TrainError(f"--tokenizer {path}: a directory; give the tokenizer.json file itself")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
        from model.checkpoint_files import lfs_pointer_note  # a clone without git-lfs: say so, as record does

        raise TrainError(f"--tokenizer {path}: not a readable tokenizer.json ({str(e).splitlines()[0]})"
                         f"{lfs_pointer_note(path)}") from None
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise TrainError(f"--tokenizer {path}: special token {s} must have id {i} (has {tok.token_to_id(s)})")
    return tok


_DIGESTS = FileMemo()  # a split hashed to name its token cache is hashed once more for the checkpoint's digests


def _sha256(path: Path) -> str:
    """The file's SHA-256, kept for the process while the file stays as it was (probe.file_memo)."""
    return _DIGESTS.get("sha256", [Path(path)], lambda: _hash_file(path))


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_digests(corpus: Path, tokenizer: Path) -> dict[str, str | None]:
    """The SHA-256 of what a run's batches are made of: the corpus's two splits (None: no val.jsonl)
    and the tokenizer file. A checkpoint keeps them, so that a resume on a corpus rebuilt or a tokenizer
    retrained since says so: it went on without a word on batches other than the run's own, under the
    same paths (a tour)."""
    val = corpus / "val.jsonl"
    return {"train.jsonl": _sha256(corpus / "train.jsonl"), "val.jsonl": _sha256(val) if val.is_file() else None,
            "tokenizer": _sha256(tokenizer)}


def _cache_file(cache_dir: Path, jsonl: Path, tok) -> Path:
    """`STEM-WHICH-CONTENT.npz`: WHICH names the corpus file (its full path) with the tokenizer and the
    cache format, CONTENT the file's SHA-256, so that a cache of an edited corpus is told from the
    caches of other corpora and other tokenizers kept in the same folder (`_save_cache`)."""
    which = hashlib.sha256(f"{jsonl.resolve()}\n{tok.to_str()}\n{CACHE_FORMAT}".encode()).hexdigest()[:8]
    return cache_dir / f"{jsonl.stem}-{which}-{_sha256(jsonl)[:16]}.npz"


def _save_cache(cached: Path, streams: dict[str, np.ndarray]) -> None:
    """Write the cache under a temporary name and rename it; then delete the caches of the same corpus
    and tokenizer made from an earlier content of the file, which no run reads again (one was kept for
    every edit of the corpus, without bound; a tour), and their temporaries left by runs that are gone
    (killed by SIGKILL: no `finally` removed them; a tour). Other corpora's and tokenizers' caches stay,
    as do the temporaries of runs still writing theirs (their process is alive)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")  # concurrent runs share the cache
    try:
        np.savez(tmp, **{CACHE_KEY + k: v for k, v in streams.items()})
        os.replace(tmp, cached)
    finally:  # a Ctrl-C or a full disk part-way left the partial file in the cache for good
        tmp.unlink(missing_ok=True)
    same = re.compile(re.escape(cached.stem.rsplit("-", 1)[0]) + r"-[0-9a-f]{16}(?:\.(\d+)\.tmp)?\.npz")
    for old in cached.parent.iterdir():
        m = same.fullmatch(old.name)
        if old != cached and m and (m[1] is None or not _alive(int(m[1]))):
            old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's too); a temporary named by a pid of no process is a
    killed run's."""
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except (ProcessLookupError, OverflowError):  # no such process (OverflowError: not even such a pid)
        return False
    except PermissionError:  # another user's
        pass
    return True


def token_streams(jsonl: Path, tok, cache_dir: Path | None) -> dict[str, np.ndarray]:
    """domain -> int32 stream of <|bos|> ids <|eos|> for its documents in file order.
    Cached as .npz in `cache_dir`, keyed by the corpus file (its path and SHA-256) and the tokenizer."""
    _corpus_file(jsonl)
    cached = _cache_file(cache_dir, jsonl, tok) if cache_dir else None
    if cached is not None and cached.exists():
        try:
            with np.load(cached) as z:
                return {k[len(CACHE_KEY):]: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a cut or damaged copy: a traceback
            why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
            print(f"note: {cached}: not a readable token cache ({why}); tokenising again, and replacing it",
                  file=sys.stderr)
    docs = read_documents(jsonl, ("text", "domain"), TrainError)
    encoded = tok.encode_batch([d["text"] for d in docs])
    parts: dict[str, list[np.ndarray]] = {}
    for d, enc in zip(docs, encoded):
        parts.setdefault(d["domain"], []).append(np.asarray([0, *enc.ids, 1], dtype=np.int32))
    streams = {k: np.concatenate(v) for k, v in sorted(parts.items())}
    if cached is not None:
        _save_cache(cached, streams)
    return streams


class Batches:
    """Random windows of seq_len + 1 tokens; a step's batch depends only on (seed, step)."""

    def __init__(self, streams: dict[str, np.ndarray], seq_len: int, global_batch: int, mix_alpha: float,
                 seed: int) -> None:
        self.all_domains = list(streams)
        self.domains = [d for d in streams if len(streams[d]) >= seq_len + 1]
        self.streams = [torch.from_numpy(streams[d].astype(np.int64)) for d in self.domains]
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        windows = sum(len(s) // (seq_len + 1) for s in self.streams)
        if windows < global_batch:
            total = sum(len(s) for s in streams.values())
            raise TrainError(f"corpus too small for one batch: the train split has {total:,} tokens, "
                             f"{windows} windows of seq_len+1={seq_len + 1}, and a batch needs {global_batch}; "
                             "lower --batch-size / --seq-len or build a larger corpus")
        sizes = np.array([len(s) for s in self.streams], dtype=np.float64)
        with np.errstate(over="ignore"):
            w = sizes**mix_alpha
        if not np.isfinite(w.sum()):  # a large alpha overflows: the same shares from sizes scaled to <= 1
            w = (sizes / sizes.max()) ** mix_alpha
        self.weights = w / w.sum()

    def get(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows [B, seq_len + 1] int64, domain index per row [B]) for this rank's share of `step`."""
        g = np.random.default_rng([self.seed, step])
        dom = g.choice(len(self.domains), size=self.global_batch, p=self.weights)
        hi = np.array([len(self.streams[d]) - self.seq_len for d in dom])  # exclusive upper bound of starts
        starts = (g.random(self.global_batch) * hi).astype(np.int64)
        per = self.global_batch // world
        rows = range(rank * per, (rank + 1) * per)
        x = torch.stack([self.streams[dom[i]][starts[i]: starts[i] + self.seq_len + 1] for i in rows])
        return x, torch.as_tensor(dom[rank * per: (rank + 1) * per], dtype=torch.long)


def val_windows(streams: dict[str, np.ndarray], seq_len: int, per_domain: int) -> dict[str, torch.Tensor]:
    """The first `per_domain` non-overlapping windows of each domain's validation stream."""
    out = {}
    for d, s in streams.items():
        n = min(per_domain, len(s) // (seq_len + 1))
        if n:
            out[d] = torch.from_numpy(s[: n * (seq_len + 1)].astype(np.int64)).view(n, seq_len + 1)
    return out
