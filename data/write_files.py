"""The corpus's files written all or none (data.build_corpus): each under a temporary name first, then
renamed, the old versions set aside until every rename is done and put back if one fails."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(out: Path, files: dict[str, bytes], error: type[Exception]) -> None:
    """Write each file to NAME.tmp in `out`, then rename them all. A write that fails (a full disk, a
    folder in the way) or is interrupted removes the temporaries made and leaves the old files as they
    were; the failure is an `error` naming the file (the command passes its own class:
    run as `python -m data.build_corpus`, that module is `__main__`, whose class is another one). It replaced train.jsonl, left the old val.jsonl
    and manifest.json and a traceback (a review). A rename that fails part way puts back the files
    already replaced, so a corpus is never half old, half new."""
    made: list[Path] = []
    swapped: list[tuple[Path, Path | None]] = []  # (file, its old version set aside, or None)
    where = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in files:  # a rename onto a folder would fail after the first file was replaced
            if (out / name).is_dir():
                raise error(f"{out / name}: is a directory, not a file; move it away")
        for name, data in files.items():
            where = out / f"{name}.tmp"
            with open(where, "wb") as f:
                made.append(where)
                f.write(data)
        for tmp in made:
            where = tmp.with_suffix("")
            swapped.append((where, _set_aside(where)))
            os.replace(tmp, where)
    except OSError as e:
        _put_back(swapped)
        raise error(f"{where}: cannot write ({e.strerror or e})") from None
    except KeyboardInterrupt:  # between two renames: the corpus was left half new, the old files set aside
        _put_back(swapped)
        raise
    finally:
        for tmp in made:  # those renamed are gone already
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for _, old in swapped:
        if old is not None:
            with contextlib.suppress(OSError):
                old.unlink()


def _set_aside(path: Path) -> Path | None:
    """Rename an existing `path` to a hidden name of this process's (for _put_back); None if there was none."""
    if not path.exists():
        return None
    old = path.with_name(f".{path.name}.{os.getpid()}.old")  # never a name a user's own file may have
    os.replace(path, old)
    return old


def _put_back(swapped: list[tuple[Path, Path | None]]) -> None:
    """Undo write_all's renames: each old file back in its place, each new file with no old one removed."""
    for path, old in reversed(swapped):
        with contextlib.suppress(OSError):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(old, path)
