"""Saving checkpoints (model.saving): a save over an existing checkpoint replaces it whole or, when it
fails, leaves it as it was; a folder it cannot write, one line; shard names and numbering, file
permissions, FP8 saves keeping the model's block and scale format, and bfloat16 saves keeping the
router in float32."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
import model.checkpoint as ckpt
from model import CheckpointError
from model.saving import write_checkpoint

from helpers import random_model
from helpers.checkpoints import FP8_OVERRIDES, tokens_for
from helpers.forked import forked


def test_saving_over_a_checkpoint_replaces_it_whole(tiny, sharded_dir, tmp_path):
    """A save into a directory that holds an earlier checkpoint leaves none of its weight files or
    index behind: before, a single-file save over a sharded one kept the old index, and a load then
    read the OLD weights. Files that are not weights are kept; a file as the target is one line."""
    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    (d / "notes.txt").write_text("mine")
    changed = random_model("tiny", seed=9)
    model.save(changed, d)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "model.safetensors.index.json",
                                                   "notes.txt"]
    tok = tokens_for(changed)
    assert torch.equal(model.load(d)(tok), changed(tok)) and not torch.equal(changed(tok), tiny(tok))
    model.save(tiny, d, max_shard_bytes=500_000)  # and back to shards, fewer than the first time
    assert not (d / "model.safetensors").exists() and (d / "model.safetensors.index.json").exists()
    assert torch.equal(model.load(d)(tok), tiny(tok))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="afile: a file, not a checkpoint directory"):
        model.save(tiny, tmp_path / "afile")
    # DeepSeek-V3's own release numbers its shards 00001-of-000163, and an index may name any file:
    # a save over such a download replaced the index but kept the shards (the next load found every
    # tensor twice)
    rel = Path(shutil.copytree(sharded_dir, tmp_path / "release"))
    index = json.loads((rel / "model.safetensors.index.json").read_text())
    renames = {f: (f"model-{i + 1:05d}-of-{len(set(index['weight_map'].values())):06d}.safetensors" if i else
                   "weights-a.safetensors") for i, f in enumerate(sorted(set(index["weight_map"].values())))}
    for old, new in renames.items():
        (rel / old).rename(rel / new)
    index["weight_map"] = {k: renames[v] for k, v in index["weight_map"].items()}
    (rel / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(model.load(rel)(tok), tiny(tok))
    model.save(changed, rel)
    assert sorted(p.name for p in rel.iterdir()) == ["config.json", "model.safetensors", "model.safetensors.index.json"]
    assert torch.equal(model.load(rel)(tok), changed(tok))


@pytest.mark.parametrize("fail_at", ["second shard", "config", "index"])
def test_a_save_that_fails_while_replacing_leaves_the_old_checkpoint_whole(tiny, sharded_dir, tmp_path,
                                                                          monkeypatch, fail_at):
    """Replacing a checkpoint and failing part way (a full disk) keeps the old one loadable and whole:
    before, the old index went first and the new shards were renamed over the old names one by one,
    so a failure in between left no index, and a load read new and old files mixed (found by a
    review: 12 tensors new, 55 old). The new index is now the commit."""
    import model.saving as saving

    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    before = sorted(p.name for p in d.iterdir())
    changed = random_model("tiny", seed=9)
    real, seen = os.replace, []

    def failing(src, dst):
        name = Path(dst).name
        seen.append(name)
        hit = {"second shard": name.endswith(".safetensors") and sum(n.endswith(".safetensors") for n in seen) == 2,
               "config": name == "config.json", "index": name == saving.INDEX}[fail_at]
        if hit:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(saving.os, "replace", failing)
    with pytest.raises(CheckpointError) as e:
        model.save(changed, d, max_shard_bytes=400_000)
    assert str(e.value) == f"{d}: cannot write the checkpoint into this folder (No space left on device)"
    monkeypatch.setattr(saving.os, "replace", real)
    if fail_at == "config":  # after the commit: the new weights, the old config (the same model here)
        assert torch.equal(model.load(d)(tokens_for(changed)), changed(tokens_for(changed)))
        return
    assert sorted(p.name for p in d.iterdir()) == before  # no temporary or half-placed file left
    tok = tokens_for(tiny)
    assert torch.equal(model.load(d)(tok), tiny(tok))


def test_a_failed_save_over_a_checkpoint_holding_some_of_its_shard_names_leaves_it_whole(tiny, sharded_dir, tmp_path,
                                                                                       monkeypatch):
    # the old checkpoint has the new save's first shard names but not its last: none may be written over
    import model.saving as saving

    d = Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))
    p = d / saving.INDEX
    index = json.loads(p.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    (d / last).rename(d / "tail.safetensors")
    index["weight_map"] = {k: "tail.safetensors" if v == last else v for k, v in index["weight_map"].items()}
    p.write_text(json.dumps(index))
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == saving.INDEX:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(saving.os, "replace", failing)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint into this folder \(No space left"):
        model.save(random_model("tiny", seed=9), d, max_shard_bytes=300_000)  # as many shards as the old one
    monkeypatch.setattr(saving.os, "replace", real)
    tok = tokens_for(tiny)
    assert torch.equal(model.load(d)(tok), tiny(tok))


def test_shards_are_numbered_from_one_and_never_empty(tiny, tmp_path):
    # a tensor larger than max_shard_bytes gets a file of its own, the first one too
    tensors = [("a", torch.zeros(1000)), ("b", torch.zeros(10)), ("c", torch.zeros(1000))]
    write_checkpoint(tmp_path, tiny.args, iter(tensors), fp8=False, dtype=torch.float32, max_shard_bytes=100)
    names = [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]  # transformers' shard names
    assert sorted(f.name for f in tmp_path.glob("*.safetensors")) == names
    assert [list(load_file(tmp_path / n)) for n in names] == [["a"], ["b"], ["c"]]
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"] == dict(zip("abc", names))


def test_saved_files_get_the_permissions_of_any_new_file(tiny, tmp_path):
    # safetensors creates its files 0600; a checkpoint is read by other users and jobs
    old = os.umask(0o022)
    try:
        model.save(tiny, tmp_path / "ckpt", max_shard_bytes=300_000)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain").stat().st_mode & 0o777
    assert want == 0o644 and {f.stat().st_mode & 0o777 for f in (tmp_path / "ckpt").iterdir()} == {want}


def test_a_save_over_a_release_without_its_index_replaces_its_six_digit_shards(tiny, sharded_dir, tmp_path):
    # DeepSeek-V3's release names its shards model-00001-of-000163: gone too when no index names them
    d = Path(shutil.copytree(sharded_dir, tmp_path / "release"))
    (d / "model.safetensors.index.json").unlink()
    shards = sorted(d.glob("*.safetensors"))
    for i, f in enumerate(shards):
        f.rename(d / f"model-{i + 1:05d}-of-{len(shards):06d}.safetensors")
    model.save(tiny, d)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "model.safetensors.index.json"]


def test_a_save_beside_other_safetensors_files_loads(tiny, tiny_dir, tmp_path):
    """A single-file save wrote no index, and a load without one read every *.safetensors file in
    the directory: a save beside an old `consolidated.safetensors` or an `activations.safetensors`
    did not load again (a review). Saves now always write an index, and without one a load reads
    `model.safetensors` alone where it exists, as transformers does."""
    tok = tokens_for(tiny)
    for other in ("consolidated.safetensors", "activations.safetensors"):
        d = Path(shutil.copytree(tiny_dir, tmp_path / other))
        shutil.copy(d / "model.safetensors", d / other)  # an old copy of every tensor, or anything else
        changed = random_model("tiny", seed=9)
        model.save(changed, d)  # over model.safetensors: the new file is named apart, then it goes
        assert (d / other).exists() and (d / "model.safetensors.index.json").exists()
        assert torch.equal(model.load(d)(tok), changed(tok))
        (d / "model.safetensors.index.json").unlink()
        assert len(list(d.glob("*.safetensors"))) == 2 and not (d / "model.safetensors").exists()
        with pytest.raises(CheckpointError, match="also appears in"):  # the control: no index, two files
            model.load(d)
    d = Path(shutil.copytree(tiny_dir, tmp_path / "noindex"))
    (d / "model.safetensors.index.json").unlink()
    save_file({"acts": torch.zeros(3)}, str(d / "activations.safetensors"))
    assert torch.equal(model.load(d)(tok), tiny(tok))  # model.safetensors alone


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_fp8_saves_keep_the_models_block_and_scale_format(tmp_path):
    """An FP8 save writes back the model's own block size and activation-scale format: before, every
    save claimed 128x128 blocks (a 64-block model's save did not load again, or failed) and dropped
    `scale_fmt` (a V3.1-style checkpoint saved and reloaded computed other activation scales)."""
    m = random_model("tiny", seed=1, **FP8_OVERRIDES, quant_block=(64, 64), scale_fmt="ue8m0")
    model.save(m, tmp_path / "a", fp8=True)
    q = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert q["weight_block_size"] == [64, 64] and q["scale_fmt"] == "ue8m0"
    resident = model.load(tmp_path / "a", gemm_impl="fp8-weights", dtype=torch.float32)
    assert (resident.args.quant_block, resident.args.scale_fmt) == ((64, 64), "ue8m0")
    model.save(resident, tmp_path / "b", fp8=True)  # the FP8 tensors as they are
    model.save(resident, tmp_path / "c")  # dequantised, in their own blocks
    tok = tokens_for(resident)
    again = model.load(tmp_path / "b", gemm_impl="fp8", dtype=torch.float32)
    assert again.args.scale_fmt == "ue8m0"
    assert torch.equal(again(tok), model.load(tmp_path / "a", gemm_impl="fp8", dtype=torch.float32)(tok))
    plain = model.load(tmp_path / "c", dtype=torch.float32)
    assert plain.args.quant_block is None and torch.equal(plain(tok), resident(tok))
    # made resident by hand in 64-blocks on a model whose args named no block: the args now say so
    # (the save declared 128 and its reload was refused), without touching the caller's ModelArgs
    m = random_model("tiny", seed=1, **FP8_OVERRIDES)
    before = m.args
    ckpt.make_fp8_resident(m, block=64)
    assert m.args.quant_block == (64, 64) and before.quant_block is None
    model.save(m, tmp_path / "d", fp8=True)
    assert torch.equal(model.load(tmp_path / "d", gemm_impl="fp8", dtype=torch.float32)(tok), m(tok))
    with pytest.raises(ValueError, match=r"already keeps weights in FP8 in 64x64 blocks .* would mix two formats"):
        ckpt.make_fp8_resident(plain, ["layers.0.attn.wq_a.weight"], block=64)
        ckpt.make_fp8_resident(plain, ["layers.0.attn.wkv_a.weight"], block=128)


def test_a_failed_save_leaves_the_directory_as_it_was(tiny, tiny_copy):
    """A save that fails part way (here the tensors' source raises) removes its temporary files; the
    checkpoint already there stays whole. Bad arguments are one line before anything is written."""
    before = {p.name: p.read_bytes() for p in tiny_copy.iterdir()}

    def tensors():
        yield "a", torch.zeros(1000)
        yield "b", torch.zeros(1000)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_checkpoint(tiny_copy, tiny.args, tensors(), fp8=False, dtype=torch.float32, max_shard_bytes=4000)
    assert {p.name: p.read_bytes() for p in tiny_copy.iterdir()} == before
    for bad in ("1GB", -5, 0):
        with pytest.raises(CheckpointError, match=f"max_shard_bytes={bad!r}: expected a positive number"):
            model.save(tiny, tiny_copy, max_shard_bytes=bad)
    with pytest.raises(CheckpointError, match="dtype='int8': expected a floating-point torch dtype"):
        model.save(tiny, tiny_copy, dtype="int8")
    with pytest.raises(CheckpointError, match="cannot save a model on the meta device"):
        model.save(model.load(tiny_copy, device="meta"), tiny_copy / "meta")
    assert {p.name: p.read_bytes() for p in tiny_copy.iterdir()} == before
    model.save(tiny, tiny_copy, dtype="bfloat16")  # the control: a dtype by name is taken
    assert model.load(tiny_copy).embed.weight.dtype == torch.bfloat16


def test_a_bfloat16_save_keeps_the_router_in_float32(tiny, tmp_path):
    # routing compares scores: rounding the router to bf16 on save changed which experts tokens pick
    model.save(tiny, tmp_path, dtype="bfloat16")
    sd, want = load_file(tmp_path / "model.safetensors"), tiny.state_dict()
    router = {"model.layers.1.mlp.gate.weight": want["layers.1.ffn.gate.weight"],
              "model.layers.2.mlp.gate.e_score_correction_bias": want["layers.2.ffn.gate.bias"],
              "model.layers.3.mlp.gate.weight": want["mtp.0.block.ffn.gate.weight"]}  # the MTP block's too
    for k, w in router.items():
        assert w.dtype == sd[k].dtype == torch.float32 and torch.equal(sd[k], w), k
        assert not torch.equal(w.bfloat16().float(), w)  # the control: bf16 would round these
    assert sd["model.layers.1.mlp.experts.0.up_proj.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("path, msg", [("", "path='': an empty path (for the current folder, give .)"),
                                       (" ", "path=' ': an empty path (for the current folder, give .)"),
                                       (5, "path=5: expected a path (str or os.PathLike), not int")])
def test_a_save_to_an_empty_path_is_refused_as_a_load_from_it_is(tiny, tmp_path, monkeypatch, path, msg):
    """model.save(m, "") wrote the checkpoint into the current folder (Path('') is '.'), which
    model.load("") then refused; and model.save(m, 5) was Path's own TypeError."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        model.save(tiny, path)
    assert str(e.value) == msg
    assert list(tmp_path.iterdir()) == []
    model.save(tiny, ".")  # the control: the current folder, given as such
    assert (tmp_path / "config.json").exists()


def test_a_save_under_a_file_is_refused_by_name(tiny, tmp_path):
    """A folder that cannot be made (a file where a parent folder belongs) was mkdir's own
    NotADirectoryError, as a CheckpointError is everywhere else a save's path is wrong."""
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError) as e:
        model.save(tiny, tmp_path / "f.txt" / "ckpt")
    assert str(e.value).startswith(f"{tmp_path / 'f.txt' / 'ckpt'}: cannot make the checkpoint directory ("), e.value
    assert "\n" not in str(e.value) and (tmp_path / "f.txt").read_text() == "x"


NOBODY = 65534  # the user a root test drops to: root writes into a chmod 555 folder all the same


def _save_as_nobody(m, out: Path, w: int) -> None:
    """Forked: model.save(m, out) as a user that may not write in `out`; what happened, into pipe `w`."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    try:
        open(out / "probe.txt", "w").close()
        said = "the folder took a file"  # then the test would prove nothing
    except PermissionError:
        try:
            model.save(m, out)
            said = "saved"
        except Exception as e:
            said = f"{type(e).__name__}: {e}"
    os.write(w, said.encode())


def test_a_save_into_a_read_only_folder_is_one_line_and_leaves_it_as_it_was(tiny, tiny_dir):
    """A folder the user may not write (chmod 555) was safetensors' "Error while serializing: I/O error:
    Permission denied (os error 13) at path .../.tmpXXXX", raised from inside save_file. Run as another
    user where the test runs as root, whom the mode does not stop."""
    top = Path(tempfile.mkdtemp(prefix="dsv3-ro-"))  # under /tmp, not pytest's 0700 folders: nobody may enter
    try:
        os.chmod(top, 0o755)
        d = Path(shutil.copytree(tiny_dir, top / "ckpt"))
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        os.chmod(d, 0o555)
        r, w = os.pipe()
        assert forked(_save_as_nobody, random_model("tiny", seed=9), d, w) == 0
        os.close(w)
        with os.fdopen(r) as f:
            said = f.read()
        assert said == f"CheckpointError: {d}: cannot write the checkpoint into this folder (Permission denied)"
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # no temporary file left
        tok = tokens_for(tiny)
        assert torch.equal(model.load(d)(tok), tiny(tok))
    finally:
        os.chmod(top / "ckpt", 0o755)
        shutil.rmtree(top)


def test_a_save_the_disk_cannot_hold_is_one_line_and_leaves_no_folder_behind(tiny, tmp_path, monkeypatch):
    """safetensors' error for a full disk names a temporary file and no folder; the folder the save
    made for the checkpoint (and its parent) go with its partial files."""
    import model.saving as saving
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28) "
                              f"at path \"{filename}\"")

    monkeypatch.setattr(saving, "save_file", full)
    with pytest.raises(CheckpointError) as e:
        model.save(tiny, tmp_path / "new" / "ckpt")
    want = "cannot write the checkpoint into this folder (No space left on device)"
    assert str(e.value) == f"{tmp_path / 'new' / 'ckpt'}: {want}"
    assert list(tmp_path.iterdir()) == []
