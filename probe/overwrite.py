"""What `--overwrite` replaces in an output directory and what it keeps: the entries a run (or a
checkpoint variant) is made of go, a user's notes and anything else stay and are named. `record
--overwrite` clears the old run in place (`clear_run`) under its writer lock; `import sglang` and
`analyses.variants` build the new output beside it and swap it in entry by entry, the old one whole
until the new one is complete (`replace_run`, `replace_entries`)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from .job_signals import signals_held, stop_signals
from .schema import TABLES
from .writer import PROGRESS, RUN_JSON, WRITER_LOCK, replace_dir, writer_lock


def clear_run(run: Path) -> list[str]:
    """Delete what a run is made of for --overwrite: run.json, its lock and temporary files, its table
    folders (a table's name, or only Parquet files inside), _progress and the report written beside
    them; its writer lock stays (this job holds it). Anything else stays where it is, a user's notes or
    a run kept inside this one (all of it was deleted: a tour), and is returned by name to be said."""
    kept = []
    for child in sorted(run.iterdir()):
        if child.name == WRITER_LOCK:
            continue
        if not _of_a_run(child):
            kept.append(child.name + "/" * child.is_dir())
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return kept


def replace_run(tmp: Path, run: Path) -> list[str]:
    """Put the complete run directory `tmp` in place of `run` for --overwrite, as `record --overwrite`
    replaces one: what the old run is made of (`clear_run`'s choice) is replaced by `tmp`'s entries,
    run.json last, under `run`'s writer lock (a record still writing there is refused), by
    `replace_entries`; anything else in `run` stays, and is returned by name to be said. An import
    deleted the whole folder, a user's notes with it (a tour). Where `run` is not there yet, `tmp` is
    simply renamed."""
    if not run.exists():
        replace_dir(tmp, run)
        return []
    with writer_lock(run):
        return replace_entries(tmp, run, _of_a_run, last=RUN_JSON, leave=(WRITER_LOCK,))


def replace_entries(tmp: Path, out: Path, ours, last: str | None = None, leave: tuple[str, ...] = ()) -> list[str]:
    """Put the complete directory `tmp`'s entries into `out` for --overwrite, in place of `out`'s of the
    same names and those `ours(entry)` says an earlier output wrote; the rest stays and is returned by
    name to be said (`say_kept`; `leave`'s names are not). The old entries go into a hidden folder in
    `out` first, deleted once every new one is in (`last`'s name last), with Ctrl-C, SIGTERM and
    SIGHUP held (`stop_signals`); a failed move puts them back: a stop leaves the old ones in that
    folder at worst, which the next --overwrite deletes. Where `out` is not there yet, `tmp` is simply
    renamed (`replace_dir`)."""
    if not out.exists():
        replace_dir(tmp, out)
        return []
    aside, kept, moved = out / f"{_ASIDE}{os.getpid()}.tmp", [], []
    with signals_held(*stop_signals()):
        if aside.exists():
            shutil.rmtree(aside)
        aside.mkdir()
        try:
            new = {e.name for e in tmp.iterdir()}
            for child in sorted(out.iterdir()):
                if child == aside or child.name in leave:
                    continue
                if child.name in new or child.name.startswith(_ASIDE) or ours(child):
                    os.replace(child, aside / child.name)
                else:
                    kept.append(child.name + "/" * child.is_dir())
            for entry in sorted(tmp.iterdir(), key=lambda e: e.name == last):
                os.replace(entry, out / entry.name)
                moved.append(entry.name)
        except BaseException:  # all put back as it was
            for name in moved:
                os.replace(out / name, tmp / name)
            for old in aside.iterdir():
                os.replace(old, out / old.name)
            aside.rmdir()
            raise
        tmp.rmdir()
        shutil.rmtree(aside, ignore_errors=True)
    return kept


_ASIDE = ".overwritten"  # + pid + .tmp: the folder an --overwrite moves the old entries into


def say_kept(out: Path, kept: list[str], what: str = "run") -> None:
    """The note that --overwrite of a `what` ("run", "variant") kept `kept` in `out`; nothing if none."""
    if kept:
        print(f"note: --overwrite kept what no {what} writes in {out}: {', '.join(kept[:5])}"
              + (f" and {len(kept) - 5} more" if len(kept) > 5 else ""), file=sys.stderr)


def never_made(out: Path) -> bool:
    """Whether the folder `out` holds only what a record stopped before it wrote run.json leaves (killed,
    or a full disk, while it created the run): its locks and run.json's temporary file. Nothing was
    recorded there, yet the command again was refused as an existing folder, `--overwrite` as not a run
    and `--resume` as no run (a review): such a folder is taken as a new run's."""
    return (out / WRITER_LOCK).is_file() and all(e.name in (WRITER_LOCK, f".{RUN_JSON}.lock")
                                                 or _RUN_JSON_TMP.fullmatch(e.name) for e in out.iterdir())


_RUN_JSON_TMP = re.compile(re.escape(f".{RUN_JSON}.tmp") + r"\d+")  # probe.writer.replacing's, + the writer's pid


def _of_a_run(entry: Path) -> bool:
    """Whether `entry`, directly in a run directory, is one of the run's own (`clear_run`)."""
    name = entry.name
    if name in (RUN_JSON, PROGRESS, "report.html") or name in TABLES:
        return True
    if name.startswith(".") and name.endswith((".lock", ".tmp")) or _RUN_JSON_TMP.fullmatch(name):
        return True
    if entry.is_dir() and not entry.is_symlink():  # a table folder of a name this version does not know
        files = list(entry.iterdir())
        return bool(files) and all(f.is_file() and (f.suffix == ".parquet" or f.name.startswith(".")) for f in files)
    return False
