"""The files of a Hugging Face checkpoint directory, before any tensor is read: which safetensors
files a load reads (`model.safetensors.index.json`'s shards, else `model.safetensors`, else every
`*.safetensors` file), the index's weight map checked, every file's header (names, shapes, dtypes),
the index checked against the headers, the advice for a Git LFS pointer in place of a file, and
the note for a file shorter or longer than its header says (a download cut short); a file aria2c
is still filling is refused, a symbolic link to nothing is named as such (a Hugging Face cache
snapshot without its blobs), and a shard missing from huggingface_hub's download is said unfinished.
Every problem is a `CheckpointError` of one line naming the file (and the tensor)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from .safetensors_header import HeaderError, read_header

if TYPE_CHECKING:
    import torch


class CheckpointError(ValueError):
    """A checkpoint we cannot load; the message names the file and the tensor. (Defined here, in a module
    that imports no torch, for what only lists or fingerprints a checkpoint's files, such as the report's
    label of a run; model.checkpoint and model.checkpoint_checks re-export it.)"""


def _listed(path: Path) -> tuple[list[Path], dict[str, Path] | None]:
    """The safetensors files a load of checkpoint directory `path` reads, and the index's weight map:
    the index's shards; else `model.safetensors` alone where it exists (as transformers reads it:
    other .safetensors files there are not weights); else every `*.safetensors` file. Unchecked."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_index(index)
        # one Path per shard file, shared by its tensors: a Path per tensor cost ~0.1 s a call for an
        # index of 8,491 names, and jobs list their checkpoint several times (the 671B's names 91,991)
        files = {f: path / f for f in set(weight_map.values())}
        return sorted(files.values()), {k: files[v] for k, v in weight_map.items()}
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], None
    return sorted(path.glob("*.safetensors")), None


def weight_files(path: str | os.PathLike) -> list[Path]:
    """`_listed`'s files that are on disk, without an error for a missing shard or an empty
    directory (a broken index still is one): for fingerprints and copies of a checkpoint that loads."""
    return [f for f in _listed(Path(path))[0] if f.is_file()]


def shard_files(path: Path) -> tuple[list[Path], dict[str, Path] | None]:
    """`_listed`, checked: every shard the index names is there; without an index, some file is. No file
    is a symbolic link to nothing (`check_links`)."""
    check_links([path / "model.safetensors.index.json"])
    files, weight_map = _listed(path)
    if weight_map is None and not files:
        raise CheckpointError(f"{path}: no *.safetensors files{unfinished_download_note(path)}")
    check_links(files)
    for f in files if weight_map is not None else ():
        if not f.exists():
            some = next(k for k, v in weight_map.items() if v == f)
            raise CheckpointError(f"{f}: shard listed in model.safetensors.index.json (e.g. for {some}) is missing"
                                  f"{unfinished_download_note(path)}")
    return files, weight_map


def check_links(files: list[Path]) -> None:
    """No file of `files` is a symbolic link to nothing. A Hugging Face cache snapshot's files are links
    into its blobs/, each made once its blob is whole (huggingface_hub downloads into blobs/*.incomplete
    and renames it): a link to nothing is a blob deleted since, or a snapshot copied without its blobs/
    (cp -r and rsync -a copy the relative links), never a download in progress. It was called missing,
    config.json absent, and --dry-run counted such a shard as not downloaded yet (a review)."""
    for f in files:
        if f.is_symlink() and not f.exists():
            raise CheckpointError(f"{f}: a symbolic link to {os.readlink(f)}, which does not exist (a Hugging Face "
                                  "cache snapshot whose blob is gone, or one copied without its blobs/ directory: "
                                  "copy it with cp -rL, or download it again)")


def unfinished_download_note(path: Path) -> str:
    """'; ...' when checkpoint directory `path` is huggingface_hub's, a cache snapshot (snapshots/REV, links
    into ../../blobs) or a --local-dir download (its .cache/huggingface/download), so that a file missing
    from it is one huggingface_hub has not finished: it writes a file as *.incomplete there and moves it
    in (links it into the snapshot) only once it is whole; else ''. A relative `path` is read whole (`.`
    from inside a snapshot has no parent named snapshots as typed: the note was left out; a review)."""
    path = Path(os.path.abspath(path))
    if path.parent.name == "snapshots" and (path.parent.parent / "blobs").is_dir():
        where, what = path.parent.parent / "blobs", "this cache snapshot"
    elif (path / ".cache" / "huggingface" / "download").is_dir():
        where, what = path / ".cache" / "huggingface" / "download", "this --local-dir download"
    else:
        return ""
    n = sum(1 for _ in where.glob("*.incomplete"))
    return (f": huggingface_hub puts a file into {what} only once it is whole, so its download has not finished "
            f"({n} partial file{'s' if n != 1 else ''}, *.incomplete, in {where}; run huggingface-cli download again)")


def cache_folder_note(path: Path) -> str:
    """'; ...' when directory `path` is a model's folder in huggingface_hub's cache (models--ORG--NAME, with
    blobs/ and snapshots/) or its snapshots/, given in place of the checkpoint: a snapshot, snapshots/REV
    (the one refs/main names, or the only one); else ''."""
    path = Path(os.path.abspath(path))
    repo = path.parent if path.name == "snapshots" else path
    if not ((repo / "blobs").is_dir() and (repo / "snapshots").is_dir()):
        return ""
    snaps = sorted(p for p in (repo / "snapshots").iterdir() if p.is_dir())
    main = repo / "refs" / "main"
    rev = main.read_text().strip() if main.is_file() else ""
    if rev and (repo / "snapshots" / rev).is_dir():
        snaps = [repo / "snapshots" / rev]
    where = f"its snapshot {snaps[0]}" if len(snaps) == 1 else f"one of its snapshots in {repo / 'snapshots'}"
    return f"; this is a Hugging Face cache folder: the checkpoint is {where}"


def read_index(index: Path) -> dict[str, str]:
    """The weight map of a `model.safetensors.index.json`: tensor name -> shard file name (a plain
    name in the same directory), checked."""
    def unique(pairs: list) -> dict:  # json keeps the last of two equal keys, silently
        d = dict(pairs)
        if len(d) != len(pairs):
            seen: set = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise CheckpointError(f"{index}: names {twice!r} twice (a hand-edited or merged index?)")
        return d

    try:
        weight_map = json.loads(index.read_text(), object_pairs_hook=unique)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map must map tensor names to shard files, "
                              f"found {type(weight_map).__name__}")
    checked: dict[str, bool] = {}  # one Path per distinct file: the 671B's index names 91,991 tensors in 163

    def not_a_file_name(v) -> bool:
        if not isinstance(v, str):
            return True
        if v not in checked:
            checked[v] = not v or Path(v).name != v
        return checked[v]

    bad = next(((k, v) for k, v in weight_map.items() if not_a_file_name(v)), None)
    if bad:
        raise CheckpointError(f"{index}: weight_map[{bad[0]!r}] = {bad[1]!r} is not a shard file name in this "
                              "directory")
    return weight_map


def downloading(f: Path) -> bool:
    """Whether aria2c is still filling file `f`: its control file `NAME.aria2` lies beside it until the
    download completes, unless that control file records a finished download of f's length (aria2c keeps
    it, every piece marked fetched, with --force-save, as its GUI front ends set it)."""
    control = f.with_name(f.name + ".aria2")
    return control.exists() and not _aria2_finished(control, f.stat().st_size if f.exists() else -1)


MAX_CONTROL = 16 << 20  # a control file's bitfield is one bit a piece: 16 MiB is 2**27 pieces


def _aria2_finished(control: Path, size: int) -> bool:
    """Whether aria2 control file `control` marks every piece of a download of `size` bytes fetched and
    none in flight. Its layout (aria2's technical notes): version (2 bytes; 0: the writing host's byte
    order, 1: big-endian), extension (4), info-hash length (4) and hash, piece length (4), total length
    (8), upload length (8), bitfield length (4) and bitfield (piece i: bit 7 - i % 8 of byte i // 8),
    in-flight piece count (4). A file it cannot read so is not finished."""
    try:
        if control.stat().st_size > MAX_CONTROL:  # not a control file of a shard (read(MAX_CONTROL) took 16 MiB)
            return False
        data = control.read_bytes()
        e = {0: "=", 1: ">"}[int.from_bytes(data[:2], "big")]
        at = 10 + struct.unpack_from(f"{e}I", data, 6)[0]
        piece, total, _, n_bytes = struct.unpack_from(f"{e}IQQI", data, at)
        bits = data[at + 24: at + 24 + n_bytes]
        (in_flight,) = struct.unpack_from(f"{e}I", data, at + 24 + n_bytes)
    except (OSError, KeyError, struct.error):
        return False
    if not piece or total != size or in_flight:
        return False
    n = -(-total // piece)
    if len(bits) != -(-n // 8):  # compared before the expected bitfield is built: size / 8 bytes for 1-byte pieces
        return False
    return bits == b"\xff" * (n // 8) + (bytes([0xFF00 >> n % 8 & 0xFF]) if n % 8 else b"")


def read_headers(files: list[Path]) -> dict[str, tuple[Path, torch.Size, torch.dtype]]:
    """name -> (file, shape, dtype), from the headers only. A file aria2c has not finished is refused:
    aria2c allocates the whole file first and writes pieces as they arrive (16 at once with -x 16 -s 16),
    so an interrupted download has the full length, its header and zeros where pieces are missing, and
    it loaded without a word."""
    import torch

    from .tensor_reader import DTYPES

    found: dict[str, tuple[Path, torch.Size, torch.dtype]] = {}
    for f in files:
        if downloading(f):
            raise CheckpointError(f"{f}: its download is not finished: aria2c's control file {f.name}.aria2 is "
                                  "beside it, and the pieces not yet fetched are zeros (resume the download; delete "
                                  "the control file only if the file was fetched whole since)")
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    if k in found:
                        raise CheckpointError(f"{f}: tensor {k} also appears in {found[k][0].name}")
                    found[k] = (f, torch.Size(sl.get_shape()), DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        except (SafetensorError, OSError) as e:
            note = lfs_pointer_note(f) or length_note(f)
            raise CheckpointError(f"{f}: not a readable safetensors file ({e}){note}") from None
    return found


def length_note(f: Path) -> str:
    """'; ...' when safetensors file `f` is shorter or longer than its own header says (safetensors'
    message, 'incomplete metadata, file not fully covered', is the same for both and names no tensor):
    an interrupted download or copy is cut short, so the note gives the bytes there are of those the
    header describes and the first tensor cut off; else ''."""
    try:
        with open(f, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            header, data = read_header(fh)
        ends = sorted((int(v["data_offsets"][1]), k) for k, v in header.items() if k != "__metadata__")
    except HeaderError as e:  # cut short inside its header, said; another damage is safetensors' to say
        return f"; {e}" if e.cut_short else ""
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
        # not a header this can read (an offset of 1e400 is int(inf), escaping read_headers before: a
        # review): safetensors' own message stands alone
        return ""
    want = data + (ends[-1][0] if ends else 0)
    if size > want:
        return f"; it holds {size - want:,} bytes past the {want:,} its header describes (appended to?)"
    cut = [k for end, k in ends if data + end > size]
    if not cut:
        return ""
    return (f"; it is truncated: {size:,} of the {want:,} bytes its header describes, {len(cut):,} of its "
            f"{len(ends):,} tensors cut short from {cut[0]} on (an interrupted download? fetch the file again)")


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def lfs_pointer_note(f: Path) -> str:
    """'; ...' advice when file `f` is a Git LFS pointer (a clone made without git-lfs holds these ~130-byte
    text files in place of the weights; safetensors read one as 'header too large'), else ''."""
    try:
        with open(f, "rb") as fh:
            if fh.read(len(LFS_POINTER)) != LFS_POINTER:
                return ""
    except OSError:
        return ""
    return "; it is a Git LFS pointer, not the file: fetch it (git lfs pull, or huggingface-cli download)"


def check_index_against_headers(path: Path, weight_map: dict[str, Path] | None, headers: dict) -> None:
    """Every tensor the index lists is in the shard it names. A tensor found in another shard would
    load (the headers say where it is), but other loaders (transformers, the serving engines) open only
    the shard the index names, so a checkpoint that loads here would fail there: refused, naming both."""
    for k, f in (weight_map or {}).items():
        if k not in headers:
            raise CheckpointError(f"{f}: tensor {k} listed in the index is not in the file")
        if headers[k][0] != f:
            raise CheckpointError(f"{path / 'model.safetensors.index.json'}: tensor {k} is listed in {f.name} "
                                  f"but stored in {headers[k][0].name} (a stale or hand-edited index)")
