"""Values computed from files (a corpus's sha256, a checkpoint's identity), kept for the process while the
files stay as they were: the same paths, inodes, sizes and times. One owner for the jobs' caches of such
values (`probe.corpus.fingerprint`, `probe.ckpt_identity.checkpoint_identity`).

Two limits. A value is not kept while a file's times are within `RACY_NS` of its computation: a file
written again within one tick of the filesystem's clock (a kernel's coarse timestamps, NFS's or FAT's
seconds) keeps its inode, size and times, so its old value would stand for new bytes (git calls such index
entries "racy"). And a memo holds at most `maxsize` values, the least recently used going first: a
notebook or a sweep that hashes many corpora or checkpoints in one process kept every one before."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")

RACY_NS = 2_000_000_000  # FAT's modification times are 2 s apart, the coarsest a corpus may sit on


class FileMemo:
    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._kept: OrderedDict[tuple, object] = OrderedDict()

    def get(self, key: Hashable, files: Sequence[Path], compute: Callable[[], T]) -> T:
        """`compute()`'s value for `key` over `files`: the kept one while no file changed, else computed
        (and kept once every file's times are older than `RACY_NS` before the computation began)."""
        stats = [(f, f.stat()) for f in files]
        full = (key, tuple((str(f), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for f, st in stats))
        if full in self._kept:
            self._kept.move_to_end(full)
            return self._kept[full]  # type: ignore[return-value]
        began = time.time_ns()
        value = compute()
        if all(max(st.st_mtime_ns, st.st_ctime_ns) < began - RACY_NS for _, st in stats):
            self._kept[full] = value
            while len(self._kept) > self.maxsize:
                self._kept.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._kept)
