"""probe.file_memo: values of files kept while the files stay as they were, never within a tick of the
filesystem's clock, and the last `maxsize` only (the corpus fingerprint's and the checkpoint identity's
own tests: test_corpus_input.py, test_job.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import probe.file_memo
from probe.file_memo import FileMemo


def _old(path: Path, text: str) -> Path:
    path.write_text(text)
    os.utime(path, ns=(time.time_ns() - 10**10,) * 2)  # ctime stays now: RACY_NS 0 below
    return path


def test_a_value_is_kept_until_a_file_changes_and_the_least_recently_used_goes_first(tmp_path, monkeypatch):
    monkeypatch.setattr(probe.file_memo, "RACY_NS", 0)
    memo, calls = FileMemo(maxsize=2), []

    def value(f: Path):
        return lambda: calls.append(f.name) or f.read_text()

    a, b, c = (_old(tmp_path / n, n * 3) for n in "abc")
    assert memo.get("a", [a], value(a)) == "aaa" and memo.get("a", [a], value(a)) == "aaa" and calls == ["a"]
    memo.get("b", [b], value(b))
    memo.get("a", [a], value(a))  # a is the most recently used now
    memo.get("c", [c], value(c))  # b goes: two at most
    assert len(memo) == 2 and calls == ["a", "b", "c"]
    memo.get("a", [a], value(a))
    memo.get("b", [b], value(b))
    assert calls == ["a", "b", "c", "b"]
    a.write_text("AAAA")  # another size
    assert memo.get("a", [a], value(a)) == "AAAA" and calls[-1] == "a"


def test_a_file_within_its_clocks_tick_is_read_again(tmp_path, monkeypatch):
    """A file written again with as many bytes within one tick of its filesystem's clock keeps inode, size and
    times: while its times are within RACY_NS of the computation, nothing is kept for it. The control: the
    same stat, older than RACY_NS, is kept."""
    f = tmp_path / "f.txt"
    f.write_text("alpha")
    real = os.stat(f)
    tick = {"now": time.time_ns()}
    stat = Path.stat

    def fake(self, **k):
        if self != f:
            return stat(self, **k)
        return SimpleNamespace(st_mode=real.st_mode, st_ino=real.st_ino, st_size=real.st_size,
                               st_mtime_ns=tick["now"], st_ctime_ns=tick["now"])

    monkeypatch.setattr(Path, "stat", fake)
    memo = FileMemo()
    assert memo.get("k", [f], f.read_text) == "alpha"
    f.write_text("gamma")
    assert memo.get("k", [f], f.read_text) == "gamma" and len(memo) == 0
    tick["now"] -= 2 * probe.file_memo.RACY_NS  # the control: times older than a tick are kept
    assert memo.get("k", [f], f.read_text) == "gamma" and len(memo) == 1
    f.write_text("delta")
    assert memo.get("k", [f], f.read_text) == "gamma"  # the same stat: what a racy entry would have kept


def test_a_checkpoint_rewritten_within_its_clocks_tick_is_identified_again(probe_env, tmp_path, monkeypatch):
    """The checkpoint identity's cache kept a weight file's first sample while its inode, size and times stayed
    (a review): a router bias edited within the file's tick now gives a new sample."""
    import shutil

    from helpers.checkpoints import edit_tensors
    from probe.ckpt_identity import checkpoint_identity

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "ckpt")
    frozen = {p: os.stat(p) for p in ckpt.iterdir()}
    now = time.time_ns()
    stat = Path.stat

    def fake(self, **k):
        s = frozen.get(self)
        if s is None:
            return stat(self, **k)
        return SimpleNamespace(st_mode=s.st_mode, st_ino=s.st_ino, st_size=s.st_size, st_mtime_ns=now, st_ctime_ns=now)

    monkeypatch.setattr(Path, "stat", fake)
    first = checkpoint_identity(ckpt)
    edit_tensors(next(ckpt.glob("*.safetensors")),
                 lambda t: {k: (v + 1 if k.endswith("e_score_correction_bias") else v) for k, v in t.items()})
    assert checkpoint_identity(ckpt)["sample"] != first["sample"]
