"""Which checkpoint a run was made with, as run.json keeps it (`checkpoint_identity`): its path, a
fingerprint of its layout (config.json and every safetensors header) and a sample of its weights'
bytes, each weight file read once for both and kept for the process while no file changes; and
whether two such records name the same weights (`same_checkpoint`: a job on an existing run refuses
a checkpoint that changed since the run was recorded, `probe.job.run_inputs`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .file_memo import FileMemo


def checkpoint_fingerprint(ckpt: Path) -> str:
    """sha256 of config.json and every safetensors header (names, shapes, offsets): cheap, and it
    changes whenever the weights' layout does. Not a hash of the weights' bytes."""
    return _checkpoint_hashes(ckpt, sample=False)[0]


def checkpoint_identity(ckpt: Path) -> dict:
    """What run.json keeps of a run's checkpoint: its path, layout fingerprint and weights sample
    (each weight file read once for both). Kept for the process while no file's inode, size or
    times change (`probe.file_memo`: not while a file is as recent as the filesystem's clock's tick,
    and the last 32 only): a job on a run checks the run's checkpoint and then records it (spec read
    each file twice)."""
    from model.checkpoint_files import weight_files

    files = [ckpt / "config.json", *weight_files(ckpt)]
    path = str(ckpt.resolve())

    def identity() -> dict:
        fingerprint, sample = _checkpoint_hashes(ckpt, sample=True)
        return {"path": path, "fingerprint": fingerprint, "sample": sample}

    return dict(_IDENTITIES.get(path, files, identity))


_IDENTITIES = FileMemo()


def same_checkpoint(recorded: dict, now: dict) -> bool:
    """Whether two `checkpoint_identity` records name the same weights (the sample is compared where
    both have one: runs recorded before it existed have none)."""
    return recorded.get("fingerprint") == now.get("fingerprint") and (
        not recorded.get("sample") or not now.get("sample") or recorded["sample"] == now["sample"])


SAMPLE_BYTES = 1 << 16  # of each weight file's tensor data, for the weights sample (`checkpoint_identity`)


def _checkpoint_hashes(ckpt: Path, sample: bool) -> tuple[str, str | None]:
    """(`checkpoint_fingerprint`, the weights sample or None), reading each weight file's header once.

    The sample: sha256 of some of the weights' bytes, every router bias (`e_score_correction_bias`,
    what a variant or an edit of the balancing changes; a few KiB a layer) and the first 64 KiB of
    each weight file's tensor data. Checkpoints with one layout but other weights, such as
    `analyses.variants no-router-bias` of a model, differ there; it reads little of a 671B
    checkpoint (one read per router bias and per file). Still not a hash of every byte."""
    import json

    from model.checkpoint_files import weight_files

    layout, weights = hashlib.sha256((ckpt / "config.json").read_bytes()), hashlib.sha256()
    for f in weight_files(ckpt):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            head = fh.read(n if sample else min(n, 100_000_000))
            layout.update(f.name.encode() + head[:100_000_000])
            if sample:
                header = json.loads(head)
                weights.update(f.name.encode() + fh.read(SAMPLE_BYTES))
                for name in sorted(k for k in header if k.endswith("e_score_correction_bias")):
                    start, end = header[name]["data_offsets"]
                    fh.seek(8 + n + start)
                    weights.update(name.encode() + fh.read(end - start))
        layout.update(str(f.stat().st_size).encode())
    return layout.hexdigest(), weights.hexdigest() if sample else None
