"""Checkpoints a download left unfinished or damaged: a shard cut short (inside its header or its data),
a shard aria2c is still filling (and one it finished that kept its control file), a Git LFS pointer in
place of a shard, a Hugging Face cache snapshot whose download has not finished or whose links point to
nothing, and --dry-run's check of the shards already there. Each is one CheckpointError naming
the file and what is wrong with it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import model
import model.checkpoint as ckpt
from model import CheckpointError

from helpers.checkpoints import edit_tensors, load_error


@pytest.mark.parametrize("keep", [0.5, 0.999, -1])
def test_error_truncated_file_says_so_and_names_the_first_tensor_cut_short(tiny_copy, keep):
    """A shard cut short (an interrupted download or copy) was safetensors' 'incomplete metadata, file not
    fully covered', its words for a file too long as well, naming no tensor (a checkpoint tour): the message
    says the file is truncated, by how much, and from which tensor on."""
    f = tiny_copy / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")  # the format: an 8-byte header length, the JSON header, the data
    ends = sorted((v["data_offsets"][1], k) for k, v in json.loads(data[8: 8 + n]).items() if k != "__metadata__")
    keep = len(data) + keep if keep < 0 else int(len(data) * keep)
    cut = [k for end, k in ends if 8 + n + end > keep]
    f.write_bytes(data[:keep])
    load_error(tiny_copy, f, "not a readable safetensors file",
               f"it is truncated: {keep:,} of the {len(data):,} bytes its header describes, {len(cut):,} of its "
               f"{len(ends):,} tensors cut short from {cut[0]} on (an interrupted download? fetch the file again)")
    if keep == len(data) - 1:
        assert cut == [ends[-1][1]]


def test_error_file_cut_inside_its_header_or_longer_than_its_header_says(tiny_copy):
    f = tiny_copy / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    f.write_bytes(data[:6])
    load_error(tiny_copy, f, "not a readable safetensors file", "it is 6 bytes, too short for a safetensors header")
    f.write_bytes(data[: n // 2])
    load_error(tiny_copy, f, f"it is truncated inside its header: {n // 2:,} bytes, the header alone {8 + n:,}")
    f.write_bytes(data + b"\0" * 3)  # safetensors' message is the same as for a short file
    msg = load_error(tiny_copy, f, f"it holds 3 bytes past the {len(data):,} its header describes")
    assert "truncated" not in msg
    f.write_bytes(data)  # the control: the same file whole loads
    model.load(tiny_copy)


@pytest.mark.parametrize("header", [b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}',
                                    b"[" * 100_000 + b"]" * 100_000], ids=["infinite offset", "deeply nested"])
def test_error_a_header_the_length_note_cannot_read_is_safetensors_message_alone(tiny_copy, header):
    """A damaged or hostile header that safetensors refuses was read again for the length note, whose
    int(inf) (OverflowError) or json nesting (RecursionError) escaped as that error, not a CheckpointError
    (a review): the note is left out, safetensors' own message stands."""
    f = tiny_copy / "model.safetensors"
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    msg = load_error(tiny_copy, f, "not a readable safetensors file")
    assert "truncated" not in msg and "past the" not in msg


def test_error_a_shard_aria2c_has_not_finished(fp8_model, tmp_path):
    """aria2c allocates a file whole and fills it piece by piece: an interrupted download has the full
    length, its header and zeros where pieces are missing, and loaded without a word (a checkpoint tour).
    Its control file beside the shard refuses it in load; inspect (--dry-run) counts it as not downloaded."""
    d = tmp_path / "ckpt"
    model.save(fp8_model, d, fp8=True, max_shard_bytes=60_000)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8 + n + (len(data) - 8 - n) // 2:] = bytes(len(data) - 8 - n - (len(data) - 8 - n) // 2)  # pieces not fetched
    shard.write_bytes(data)
    (d / (shard.name + ".aria2")).write_bytes(b"\0\1" + b"\0" * 30)
    load_error(d, shard, f"its download is not finished: aria2c's control file {shard.name}.aria2 is beside it",
               "resume the download")
    got = ckpt.inspect(d)
    assert got["checked"] == "index" and got["missing_files"] == [shard.name]
    (d / (shard.name + ".aria2")).unlink()  # the control: the same zeros load, with nothing to tell them apart
    model.load(d)


def aria2_control(total: int, piece: int, done: int, version: int = 1) -> bytes:
    """An aria2 control file (aria2's technical notes: version, extension, info hash, piece length, total
    length, upload length, bitfield, in-flight pieces) for a download of `total` bytes in pieces of
    `piece`, the first `done` of them fetched; version 0 in this host's byte order, 1 big-endian."""
    n = -(-total // piece)
    bits = bytearray(-(-n // 8))
    for i in range(done):
        bits[i // 8] |= 0x80 >> (i % 8)
    e = ">" if version else "="
    return (version.to_bytes(2, "big") + struct.pack(f"{e}II", 0, 0)  # no extension, no info hash
            + struct.pack(f"{e}IQQI", piece, total, 0, len(bits)) + bytes(bits) + struct.pack(f"{e}I", 0))


@pytest.mark.parametrize("version", [0, 1])
def test_a_control_file_aria2c_kept_after_a_finished_download_does_not_refuse_it(fp8_model, tmp_path, version):
    """aria2c keeps the control file of a finished download with --force-save (as its GUI front ends set
    it), every piece marked fetched: that shard was refused as unfinished (a review). One piece short, or
    a control file of another length, still refuses it."""
    d = tmp_path / "ckpt"
    model.save(fp8_model, d, fp8=True, max_shard_bytes=60_000)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    size, control = shard.stat().st_size, d / (shard.name + ".aria2")
    n = -(-size // 1024)
    control.write_bytes(aria2_control(size, 1024, n - 1, version))
    load_error(d, shard, "its download is not finished")
    assert ckpt.inspect(d)["missing_files"] == [shard.name]
    control.write_bytes(aria2_control(size + 1, 1024, -(-(size + 1) // 1024), version))  # another download's
    load_error(d, shard, "its download is not finished")
    control.write_bytes(aria2_control(size, 1024, n, version))
    model.load(d)
    assert ckpt.inspect(d)["checked"] == "headers"


def test_error_a_git_lfs_pointer_in_place_of_a_shard(sharded_dir, tmp_path):
    """A clone made without git-lfs holds ~130-byte pointer files in place of the shards, which safetensors
    reads as 'header too large' (a checkpoint tour): the message says what the file is and how to fetch it."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    shard = sorted(d.glob("*.safetensors"))[1]
    shard.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize 4302350824\n")
    load_error(d, shard, "not a readable safetensors file", "it is a Git LFS pointer, not the file", "git lfs pull")
    shard.write_bytes(b"\x00" * 6)  # the control: a damaged file is not called a pointer
    assert "Git LFS" not in load_error(d, shard, "not a readable safetensors file")


def test_inspect_mid_download_checks_the_shards_already_there(fp8_model, tmp_path):
    """With some shards missing, only the index's names were checked: a truncated shard, a Git LFS pointer or a
    tensor of the wrong shape among those already downloaded passed --dry-run and failed the load (a checkpoint
    tour). A weight whose block scale is in a shard still missing, or the reverse, is no error."""
    d = tmp_path / "ckpt"
    model.save(fp8_model, d, fp8=True, max_shard_bytes=60_000)

    def index() -> dict:
        return json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]

    j = index()
    a, b = [d / f for f in sorted({j[k] for k in j if k + "_scale_inv" in j})[:2]]  # two shards with FP8 weights
    w, v = [next(k for k, f in j.items() if f == s.name and k + "_scale_inv" in j) for s in (a, b)]
    for name, dst in ((w, b), (v, a)):  # each weight's scale moved into the other's shard
        src = d / index()[name + "_scale_inv"]
        scale = load_file(src)[name + "_scale_inv"]
        edit_tensors(src, lambda sd: {k: t for k, t in sd.items() if k != name + "_scale_inv"})
        edit_tensors(dst, lambda sd: sd | {name + "_scale_inv": scale})
    assert index()[w + "_scale_inv"] == b.name and index()[v + "_scale_inv"] == a.name
    a.rename(tmp_path / "away.safetensors")  # not downloaded yet: b holds w's scale and v without its scale
    assert ckpt.inspect(d)["checked"] == "index"  # the control
    there, keep, name = b, b.read_bytes(), v
    for damage, needles in [
            (lambda: there.write_bytes(keep[: len(keep) // 2]),
             ["not a readable safetensors file", f"it is truncated: {len(keep) // 2:,} of the {len(keep):,} bytes"]),
            (lambda: there.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\n"),
             ["it is a Git LFS pointer"]),
            (lambda: edit_tensors(there, lambda sd: sd | {name: sd[name][:, :-1].contiguous()}),
             [f"tensor {name} has shape"])]:
        there.write_bytes(keep)
        damage()
        with pytest.raises(CheckpointError) as ei:
            ckpt.inspect(d)
        assert str(ei.value).startswith(f"{there}: ") and all(n in str(ei.value) for n in needles), ei.value


def test_inspect_mid_download_refuses_a_tensor_the_index_puts_in_a_shard_still_missing(sharded_dir, tmp_path):
    """A tensor stored in a shard already downloaded but listed in the index under one still missing: the load
    refuses it (listed in one shard, stored in another), and --dry-run passed it, checking the index's entries
    for the shards on disk only (a checkpoint tour)."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    (d / shards[1]).rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control: the index as it was
    index["weight_map"][name] = shards[1]
    p.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as ei:
        ckpt.inspect(d)
    assert str(ei.value) == (f"{p}: tensor {name} is listed in {shards[1]} but stored in {shards[0]} (a stale or "
                             "hand-edited index)")
    (tmp_path / "away.safetensors").rename(d / shards[1])  # downloaded: the load refuses it the same way
    load_error(d, str(ei.value))


def test_inspect_mid_download_refuses_a_weight_cast_from_fp8_whose_scale_is_still_missing(fp8_model, tmp_path):
    """A bf16 weight on disk whose block scale the index puts in a shard not downloaded yet (a weight cast from FP8,
    its scale kept): the load refuses it (the scale would be dropped), and --dry-run passed it, looking at a
    weight's scale only when that was on disk too (a checkpoint tour)."""
    d = tmp_path / "ckpt"
    model.save(fp8_model, d, fp8=True, max_shard_bytes=60_000)
    j = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    w = next(k for k in j if k + "_scale_inv" in j)
    home, other = d / j[w], d / next(f for f in sorted(set(j.values())) if f != j[w])
    scale = load_file(home)[w + "_scale_inv"]  # the scale moved into another shard, the index kept in step
    edit_tensors(home, lambda sd: {k: t for k, t in sd.items() if k != w + "_scale_inv"})
    edit_tensors(other, lambda sd: sd | {w + "_scale_inv": scale})
    other.rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control: the FP8 weight as saved
    edit_tensors(home, lambda sd: sd | {w: sd[w].to(torch.bfloat16)})
    with pytest.raises(CheckpointError) as ei:
        ckpt.inspect(d)
    assert str(ei.value).startswith(f"{home}: tensor {w} is torch.bfloat16 but has a block scale {w}_scale_inv"), ei.value
    (tmp_path / "away.safetensors").rename(other)  # downloaded: the load refuses it the same way
    load_error(d, str(ei.value))


def test_inspect_mid_download_refuses_an_fp8_weight_whose_scale_the_index_lists_nowhere(fp8_model, tmp_path):
    """An FP8 weight on disk whose block scale is in no shard, the index listing none: the load refuses it, and
    --dry-run passed it once any shard was still missing, taking the scale for one in a shard not downloaded."""
    d = tmp_path / "ckpt"
    model.save(fp8_model, d, fp8=True, max_shard_bytes=60_000)
    j = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    w = next(k for k in j if k + "_scale_inv" in j)
    home, other = d / j[w], d / next(f for f in sorted(set(j.values())) if f != j[w])
    other.rename(tmp_path / "away.safetensors")  # not downloaded yet
    assert ckpt.inspect(d)["checked"] == "index"  # the control: the scale beside its weight
    edit_tensors(home, lambda sd: {k: t for k, t in sd.items() if k != w + "_scale_inv"})  # the index in step
    with pytest.raises(CheckpointError) as ei:
        ckpt.inspect(d)
    assert str(ei.value) == f"{home}: FP8 tensor {w} has no {w}_scale_inv"
    (tmp_path / "away.safetensors").rename(other)  # downloaded: the load refuses it the same way
    load_error(d, str(ei.value))


def test_a_control_file_with_a_short_bitfield_is_read_without_building_the_whole_one(tmp_path):
    """A control file of 1-byte pieces whose bitfield is cut short: the bitfield a finished download of
    the shard would have (size / 8 bytes: 600 MB for a 5 GB shard) was built before the lengths were
    compared (a review). Now the lengths are compared first: it still counts as unfinished."""
    import tracemalloc

    from model.checkpoint_files import downloading

    shard = tmp_path / "model-00001-of-00002.safetensors"
    with open(shard, "wb") as fh:
        fh.truncate(400 << 20)  # sparse: 400 MiB long, nothing on disk
    ctl = aria2_control(8, 1, 8)  # a finished 8-byte download's control file, its total edited to the shard's
    ctl = ctl.replace(struct.pack(">IQ", 1, 8), struct.pack(">IQ", 1, 400 << 20))
    (tmp_path / (shard.name + ".aria2")).write_bytes(ctl)
    tracemalloc.start()
    try:
        assert downloading(shard)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes allocated to read a {len(ctl)}-byte control file"


def hf_snapshot(src: Path, root: Path) -> Path:
    """`src` as huggingface_hub's cache holds it: every file a blob under blobs/ (named by its hash), linked
    from snapshots/REV/NAME by a relative symbolic link; the snapshot directory."""
    repo = root / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / sha)
        os.symlink(f"../../blobs/{sha}", snap / f.name)
    return snap


def test_a_hugging_face_cache_snapshot_with_a_download_unfinished_says_so(sharded_dir, tmp_path):
    """huggingface_hub downloads a file into blobs/HASH.incomplete (2.x: HASH.RANDOM.incomplete), renames it
    to blobs/HASH when whole and only then links it into the snapshot: an unfinished shard has no link. It
    was 'missing' without a word of the download; the message now says it has not finished. A stale
    .incomplete beside a whole blob (a forced download again, interrupted) leaves the linked blob whole."""
    snap = hf_snapshot(sharded_dir, tmp_path)
    model.load(snap)  # the control: the whole snapshot loads through its links
    shard = snap / sorted(p.name for p in snap.glob("*.safetensors"))[1]
    blob = shard.resolve()
    blob.with_name(blob.name + ".1a2b3c4d.incomplete").write_bytes(blob.read_bytes()[:100])
    model.load(snap)
    shard.unlink()
    blob.unlink()
    load_error(snap, f"{shard}: shard listed in model.safetensors.index.json", "is missing: huggingface_hub puts a "
               "file into this cache snapshot only once it is whole, so its download has not finished (1 partial "
               f"file, *.incomplete, in {blob.parent}; run huggingface-cli download again)")
    got = ckpt.inspect(snap)  # --dry-run plans from the index meanwhile
    assert got["checked"] == "index" and got["missing_files"] == [shard.name]


def test_a_local_dir_download_unfinished_says_so(sharded_dir, tmp_path):
    """`huggingface-cli download --local-dir D` keeps its partial files in D/.cache/huggingface/download."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    shard = sorted(d.glob("*.safetensors"))[1]
    shard.unlink()
    msg = load_error(d, f"{shard}: shard listed in model.safetensors.index.json")
    assert msg.endswith("is missing"), msg  # the control: a plain directory says nothing of huggingface_hub
    (d / ".cache" / "huggingface" / "download").mkdir(parents=True)
    load_error(d, "is missing: huggingface_hub puts a file into this --local-dir download only once it is whole",
               "(0 partial files, *.incomplete, in")


def test_a_snapshot_link_to_nothing_is_named_as_such_not_as_missing(sharded_dir, tmp_path):
    """A link whose blob is gone (deleted, or the snapshot copied with cp -r, which keeps the relative links)
    was 'missing' (a shard) or 'no config.json', which `ls` contradicts, and --dry-run counted the shard as
    not downloaded yet, which huggingface_hub never leaves so: each is one error naming the link's target."""
    snap = hf_snapshot(sharded_dir, tmp_path / "cache")
    shard = snap / sorted(p.name for p in snap.glob("*.safetensors"))[1]
    target = str(shard.readlink())
    shard.resolve().unlink()
    needle = f"{shard}: a symbolic link to {target}, which does not exist"
    load_error(snap, needle, "copy it with cp -rL, or download it again")
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        ckpt.inspect(snap)
    copied = Path(shutil.copytree(snap, tmp_path / "copied", symlinks=True))
    load_error(copied, f"{copied / 'config.json'}: a symbolic link to ../../blobs/")
    with pytest.raises(CheckpointError, match=re.escape(f"{copied / 'config.json'}: a symbolic link to")):
        ckpt.inspect(copied)


def test_a_cache_snapshot_given_as_a_relative_path_says_its_download_is_unfinished(sharded_dir, tmp_path,
                                                                                   monkeypatch):
    """The snapshot given as `.` from inside it (or `REV` from snapshots/): its parent's name was read from
    the path as typed, '' for `.`, and the note that its download has not finished was left out."""
    snap = hf_snapshot(sharded_dir, tmp_path)
    shard = snap / sorted(p.name for p in snap.glob("*.safetensors"))[1]
    shard.resolve().unlink()
    shard.unlink()
    note = "is missing: huggingface_hub puts a file into this cache snapshot only once it is whole"
    for where, given in ((snap, "."), (snap.parent, snap.name)):
        monkeypatch.chdir(where)
        load_error(given, "shard listed in model.safetensors.index.json", note)


def test_a_cache_folder_given_for_its_snapshot_names_the_snapshot(sharded_dir, tmp_path):
    """huggingface-cli download without --local-dir leaves the checkpoint in
    models--ORG--NAME/snapshots/REV: the cache's model folder (or its snapshots/) given in its place was
    'no config.json', which did not say where the checkpoint is."""
    snap = hf_snapshot(sharded_dir, tmp_path)
    repo = snap.parent.parent
    note = f"a Hugging Face cache folder: the checkpoint is its snapshot {snap}"
    for given in (repo, snap.parent):
        load_error(given, f"{given}: no config.json", note)
        with pytest.raises(model.ConfigError, match=re.escape(note)):  # what generate reads first
            model.ModelArgs.from_hf_config(given)
    other = repo / "snapshots" / ("b" * 40)  # a second revision: refs/main says which is the branch's
    shutil.copytree(snap, other, symlinks=True)
    load_error(repo, f"{repo}: no config.json", "; this is a Hugging Face cache folder: the checkpoint is one of "
               f"its snapshots in {repo / 'snapshots'}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    load_error(repo, f"the checkpoint is its snapshot {other}")
    load_error(tmp_path, f"{tmp_path}: no config.json (a Hugging Face checkpoint directory needs one)")  # a plain one
