"""The dashboard's token texts read with the run's own tokenizer only: a tokenizer that is not the one
run.json's sha256 recorded (the run's gone, the checkpoint's another) is said on the page, and the texts
are ids, not other tokens' text."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.apptest import app, texts
from helpers.dashboard_runs import dashboard_runs


@pytest.fixture(scope="module")
def runs(probe_env, tmp_path_factory):
    return dashboard_runs(probe_env, tmp_path_factory)


def _other_tokenizer(tok, out):
    """`tok` with the ids of its two longest tokens swapped: another tokenizer, the same vocabulary."""
    spec = json.loads(tok.read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=len)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    out.write_text(json.dumps(spec))
    return vocab[b], vocab[a]  # the ids a and b had


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_token_texts_only_from_the_tokenizer_the_run_was_recorded_with(runs, probe_env, tmp_path):
    """A run whose tokenizer is gone fell back to the checkpoint's tokenizer.json unchecked, and a run recorded
    with one tokenizer showed another's texts without a word (a review)."""
    from dashboards import data, ui
    from probe.corpus import fingerprint

    run, ckpt = tmp_path / "runs" / "demo", tmp_path / "ckpt"
    shutil.copytree(runs["demo"], run)
    shutil.copytree(probe_env["ckpt"], ckpt)
    info = json.loads((run / "run.json").read_text())
    info["checkpoint"]["path"] = str(ckpt)
    info["tokenizer"]["path"] = str(ckpt / "tokenizer.json")  # recorded with the checkpoint's own
    (run / "run.json").write_text(json.dumps(info))

    def ref():
        return data.RunRef("demo", str(run), "probe", "complete", json.loads((run / "run.json").read_text()))

    saved = tmp_path / "saved.json"
    shutil.copy(ckpt / "tokenizer.json", saved)
    ids = list(_other_tokenizer(saved, tmp_path / "other.json"))
    right = ui.token_text(ui.tokenizer_for(ref()), ids, stream=False)
    assert "#" not in "".join(right)  # the control: the run's own tokenizer
    assert "Token texts are shown as ids" not in texts(app(run.parent, "demo", page="token_explorer").info)

    shutil.copy(tmp_path / "other.json", ckpt / "tokenizer.json")  # the checkpoint's tokenizer changed since
    assert ui.token_text(ui.tokenizer_for(ref()), ids, stream=False) == [f"#{i}" for i in ids]  # not the swapped texts
    path, why = ui.tokenizer_file(ref())
    assert path is None and why == (f"{ckpt / 'tokenizer.json'} is not the run's tokenizer (sha256 not the one "
                                    "run.json keeps)")
    assert f"Token texts are shown as ids (#id): {why}." in texts(app(run.parent, "demo", page="token_explorer").info)

    moved = tmp_path / "moved" / "tok.json"  # recorded with a --tokenizer of the same bytes, gone since
    moved.parent.mkdir()
    shutil.copy(saved, moved)
    info["tokenizer"] = {"path": str(moved), "fingerprint": fingerprint(moved)}
    moved.unlink()
    (run / "run.json").write_text(json.dumps(info))
    assert ui.tokenizer_file(ref()) == (None, f"the tokenizer it was recorded with, {moved}, "
                                              f"is no longer there; {why}")
    shutil.copy(saved, ckpt / "tokenizer.json")  # the same bytes as the run's, under another name: the run's
    assert ui.tokenizer_file(ref()) == (str(ckpt / "tokenizer.json"), None)
    assert ui.token_text(ui.tokenizer_for(ref()), ids, stream=False) == right
    (ckpt / "tokenizer.json").unlink()
    assert ui.tokenizer_file(ref())[1] == f"the tokenizer it was recorded with, {moved}, is no longer there"
    bare = data.RunRef("bare", str(run), "probe", "complete", {})  # a stand-in run: nothing to read texts with
    assert ui.tokenizer_file(bare) == (None, "run.json names no tokenizer, nor a checkpoint that holds one")


def test_the_dashboard_decides_the_runs_tokenizer_as_the_jobs_do(probe_env, tmp_path):
    """`tokenizer_file` had its own candidates and sha256 comparison beside the jobs' (`probe.job.run_tokenizer`):
    it hashed a checkpoint's tokenizer.json under the name of the file run.json resolved, so a download cache's
    (tokenizer.json linked to a blob) read as another tokenizer and its texts as ids; and for a run recorded
    before run.json kept a sha256 it took the checkpoint's tokenizer.json, unchecked, for a --tokenizer gone
    since. Both now as `probe.tokenizer_identity.run_tokenizer_file` decides for the jobs too."""
    from dashboards import data, ui
    from probe.record import tokenizer_info

    ckpt = shutil.copytree(probe_env["ckpt"], tmp_path / "snapshot")
    blob = tmp_path / "blobs" / "0a1b2c"
    blob.parent.mkdir()
    (ckpt / "tokenizer.json").rename(blob)
    (ckpt / "tokenizer.json").symlink_to(blob)
    info = {"checkpoint": {"path": str(ckpt)}, "tokenizer": tokenizer_info(None, ckpt)}  # as a record keeps it
    assert ui.tokenizer_file(data.RunRef("cached", str(tmp_path), "probe", "complete", info)) == (str(blob), None)
    gone = tmp_path / "gone.json"
    old = {"checkpoint": {"path": str(ckpt)}, "options": {"tokenizer": str(gone)}}  # no sha256 to know a copy by
    assert ui.tokenizer_file(data.RunRef("old", str(tmp_path), "probe", "complete", old)) == (
        None, f"the tokenizer it was recorded with, {gone}, is no longer there")
    shutil.copy(blob, gone)  # the control: the file it names, there, is taken unchecked
    assert ui.tokenizer_file(data.RunRef("old", str(tmp_path), "probe", "complete", old)) == (str(gone), None)


def test_a_tokenizer_replaced_by_another_of_its_size_and_time_is_not_the_runs(tmp_path):
    """The page kept each file's sha256 while its size and modification time stayed: another tokenizer put in its
    place with both kept (`cp -p`, `rsync -a`, an `os.replace` of a copy dated as the file) read as the run's, and
    its texts as the run's tokens'. A new inode or change time asks again, as `probe.corpus.fingerprint` does."""
    import os

    from dashboards import data, ui
    from probe.record import tokenizer_info

    tok = tmp_path / "tok.json"
    tok.write_text('{"vocab": {"ab": 0, "cd": 1}}')
    info = {"options": {"tokenizer": str(tok)}, "tokenizer": tokenizer_info(str(tok), tmp_path)}
    ref = data.RunRef("r", str(tmp_path), "probe", "complete", info)
    assert ui.tokenizer_file(ref) == (str(tok), None)
    other = tmp_path / "other.json"
    other.write_text('{"vocab": {"ab": 1, "cd": 0}}')  # another tokenizer of as many bytes
    st = tok.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, tok)
    assert (tok.stat().st_size, tok.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    path, why = ui.tokenizer_file(ref)
    assert path is None and why == f"{tok} is not the run's tokenizer (sha256 not the one run.json keeps)"


def test_a_tokenizer_file_rewritten_for_another_run_reads_with_its_new_tokens(probe_env, tmp_path):
    """The loaded tokenizer was kept by path alone: a file written over with another tokenizer (re-exported
    in place) and a run recorded with that one showed the first run's tokens' texts, though the sha256 check
    had passed on the file now there (a review)."""
    from dashboards import data, ui
    from probe.record import tokenizer_info

    tok = tmp_path / "tok.json"
    shutil.copy(probe_env["ckpt"] / "tokenizer.json", tok)
    ids = list(_other_tokenizer(tok, tmp_path / "other.json"))

    def ref(name):
        info = {"options": {"tokenizer": str(tok)}, "tokenizer": tokenizer_info(str(tok), tmp_path)}
        return data.RunRef(name, str(tmp_path / name), "probe", "complete", info)

    first = ui.token_text(ui.tokenizer_for(ref("first")), ids, stream=False)
    shutil.copy(tmp_path / "other.json", tok)  # the second run's tokenizer, written over the first's
    second = ui.token_text(ui.tokenizer_for(ref("second")), ids, stream=False)
    assert "#" not in "".join(first + second) and second == first[::-1]  # the two ids' texts swapped


def test_a_tokenizer_written_again_within_its_time_tick_is_hashed_again(tmp_path, monkeypatch):
    """The page's own cache of sha256s, by size and time, kept a file's first one where it was written again
    with as many bytes within a tick of the filesystem's clock; it is `probe.corpus.fingerprint`'s now, which
    does not keep a sha256 while the file's times are that recent (a review)."""
    import hashlib
    import os
    import time
    from pathlib import Path
    from types import SimpleNamespace

    from probe.corpus import fingerprint  # the dashboard's sha256 of a tokenizer (ui.tokenizer_for, _file)

    f = tmp_path / "tok.json"
    f.write_text('{"a": 0}')
    real, now = os.stat(f), time.time_ns()
    tick = SimpleNamespace(st_mode=real.st_mode, st_ino=real.st_ino, st_size=real.st_size, st_mtime_ns=now,
                           st_ctime_ns=now, st_dev=real.st_dev)
    stat, os_stat = Path.stat, os.stat
    monkeypatch.setattr(Path, "stat", lambda self, **k: tick if self == f else stat(self, **k))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: tick if Path(p) == f else os_stat(p, *a, **k))
    assert fingerprint(str(f), name="t.json") == hashlib.sha256(b't.json{"a": 0}').hexdigest()
    f.write_text('{"a": 1}')
    assert fingerprint(str(f), name="t.json") == hashlib.sha256(b't.json{"a": 1}').hexdigest()
