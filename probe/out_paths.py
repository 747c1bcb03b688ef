"""Where a job may write: an output's parent must be writable, a file output must not replace a run's
run.json, land in a run's table folders, overwrite a checkpoint's own files, an input of the job or a
file of another kind, a directory output must not lie inside a corpus, a new run neither inside a run
nor over a folder of runs, `--overwrite` deletes only what the command writes (never a training run),
and an OS refusal the checks could not foresee is one line (`probe.job` re-exports these for the jobs)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import RecordError


def check_out_parent(out: Path, flag: str = "--out", file: bool = False,
                     error: type[Exception] = RecordError) -> None:
    """A one-line `error` when `out` (a directory to create, or with `file` a file to write) could
    not be written: it is a directory where a file should go, or its nearest existing ancestor is a
    file or a directory where this process cannot create an entry (tried for real: os.access says yes
    to root on procfs, a read-only bind mount or a root-squashed NFS share, and the write then failed
    after the work was done, a review); with `file`, also when it would replace a run's
    run.json or a checkpoint's file, or land in one of a run's table folders (a plan written over
    run.json lost the run's metadata, found by a review). A new file directly in a run directory (a
    plan, a report) is fine."""
    if file and out.is_dir():
        raise error(f"{flag} {out}: is a directory, not a file")
    if file:
        _refuse_inside_a_run(out, flag, error)
    parent = out if out.exists() and not file else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{flag} {out}: {parent} is a file, not a directory")
    _check_writable(parent, f"{flag} {out}", error)


def check_not_an_input(out: Path, inputs: dict[str, str | Path | None], flag: str = "--out",
                       error: type[Exception] = RecordError) -> None:
    """A file output must not replace a file the job reads (or that its run was recorded from), nor
    land inside such a folder (a corpus folder reads every file in it as a document): `inputs` maps
    how to name each one ("the run's corpus", said before its path, or with `{path}` where the path
    goes: "{path}, the train.jsonl of --corpus DIR") to its path, None where there is none. A report
    written over the run's corpus file replaced the corpus (a tour)."""
    path = out.resolve()
    for what, given in inputs.items():
        if given is None:
            continue
        src = Path(given).resolve()
        if path == src or (src.is_dir() and path.is_relative_to(src)):
            named = what.replace("{path}", str(given)) if "{path}" in what else f"{what} {given}"
            raise error(f"{flag} {out}: is {'' if path == src else 'inside '}{named}, which it would "
                        f"{'overwrite' if path == src else 'overwrite or add to'}; write elsewhere")


def check_inputs_outside(out: Path, inputs: dict[str, str | Path | None],
                         error: type[Exception] = RecordError) -> None:
    """Before `--overwrite` deletes the directory `out`: none of the job's inputs (`inputs`: flag -> path,
    None where not given) may lie inside it. Recording into a training run deleted the model it read
    (a review), and an import deleted the dumps kept in the run they had been imported into (a tour)."""
    if not out.is_dir():
        return
    for flag, path in inputs.items():
        if path is not None and Path(path).resolve().is_relative_to(out.resolve()):
            raise error(f"--out {out}: --overwrite would delete it, and {flag} {path} lies inside it; write the run "
                        "elsewhere, or move the input out first")


def check_outside_corpus(out: Path, corpus: Path | None, what: str, error: type[Exception] = RecordError,
                         name: str = "--corpus") -> None:
    """A directory output must not lie inside a corpus folder, whose every file is read as a document:
    a run's or a table's Parquet files there were read as corpus documents, and every later job over
    that corpus failed on them (reviews and a tour). `what`: what to write elsewhere ("the run")."""
    if corpus is not None and corpus.is_dir() and out.resolve().is_relative_to(corpus.resolve()):
        raise error(f"--out {out}: lies inside {name} {corpus}, whose every file is read as a document; "
                    f"write {what} elsewhere")


def check_run_place(out: Path, flag: str = "--out", error: type[Exception] = RecordError) -> None:
    """A new run directory `out` must not lie inside another run (a folder above it holding run.json),
    nor be a folder that holds runs: the dashboard lists the runs directly in the folder it serves, so
    a run inside a run was never listed, and the outer run's `record --overwrite` deleted it with a
    table folder of its name; a run written over a folder of runs hid them all (a tour). A run that
    already exists is written into (resumed, tables added) wherever it lies."""
    if (out / "run.json").is_file():
        return
    outer = next((p for p in out.resolve().parents if (p / "run.json").is_file()), None)
    if outer is not None:
        raise error(f"{flag} {out}: lies inside the run {outer}, where the dashboard does not list it and that "
                    "run's --overwrite may delete it; write the run beside that one")
    held = sorted(p.parent.name for p in out.glob("*/run.json")) if out.is_dir() else []
    if held:
        raise error(f"{flag} {out}: holds the runs {', '.join(held[:3])}{' ...' * (len(held) > 3)}, which a run "
                    f"written there would hide; give the run a folder of its own (e.g. {out / 'new-run'})")


def check_file_replaceable(out: Path, signatures: tuple[bytes, ...], what: str, flag: str = "--out",
                           error: type[Exception] = RecordError) -> None:
    """An existing file at `out` is replaced only when it is `what`, a file of the kind the command
    writes (its first KiB, or its last 4 KiB where Parquet keeps its column names, holds one of
    `signatures`) or empty: a user's notes given as --out were replaced without a word (a tour)."""
    if not out.is_file():
        return
    try:
        with open(out, "rb") as f:
            head = f.read(1024)
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read()
    except OSError:
        return  # the write itself names what is wrong
    if head.strip() and not any(s in head or s in tail for s in signatures):
        raise error(f"{flag} {out}: exists and is not {what}; write to a new file (or delete it first)")


def _check_writable(folder: Path, what: str, error: type[Exception]) -> None:
    """Really create (and remove) an entry in `folder`: the only test root cannot pass by privilege."""
    try:
        made = tempfile.mkdtemp(dir=folder, prefix=".dsv3-write-check-")
    except OSError as e:
        raise error(f"{what}: directory {folder} does not accept new files ({_refusal_reason(e)})") from None
    with contextlib.suppress(OSError):  # it could be made: the folder takes entries
        os.rmdir(made)


# why creating an entry in an existing folder failed, in words that fit: ENOENT's "No such file or
# directory" read as if the folder were missing, when procfs (a virtual file system) just takes no
# new entries (a tour)
_REFUSALS = {
    errno.ENOENT: "its file system takes no new entries, as virtual ones such as /proc do",
    errno.EACCES: "permission denied", errno.EPERM: "the operation is not permitted there",
    errno.EROFS: "it is on a read-only file system", errno.ENOSPC: "no space is left on its device",
    errno.EDQUOT: "the disk quota is used up",
}


def _refusal_reason(e: OSError) -> str:
    return _REFUSALS.get(e.errno, f"the OS said: {e.strerror or e}")


def _refuse_inside_a_run(out: Path, flag: str, error: type[Exception]) -> None:
    path = out.resolve()
    ckpt = path.parent
    if is_checkpoint_file(path.name) and (ckpt / "config.json").is_file() and any(ckpt.glob("*.safetensors")):
        # the report written over a checkpoint's config.json left a model that no longer loads (a review)
        raise error(f"{flag} {out}: is a file of the checkpoint {ckpt} (its weights, config or tokenizer); "
                    "write elsewhere")
    for run in path.parents:
        if (run / "run.json").is_file():
            if path == run / "run.json":
                raise error(f"{flag} {out}: is the run.json of the run {run}; write elsewhere")
            folder = path.relative_to(run).parts[0]
            if path.parent != run and folder in _run_folders(run, folder):
                raise error(f"{flag} {out}: is inside the folder {folder}/ of the run {run}, which holds its "
                            "tables; write elsewhere")
            return


def is_checkpoint_file(name: str) -> bool:
    """A file a checkpoint directory is made of (writing a plan or a report beside them is fine)."""
    return (name in ("config.json", "generation_config.json") or name.startswith("tokenizer")
            or name.endswith((".safetensors", ".safetensors.index.json")))


def _run_folders(run: Path, folder: str) -> set[str]:
    """The folders a run writes: its tables (run.json's list, or every folder it holds when that is
    unreadable) and the record's bookkeeping; `{folder}` when neither can be read (another user's
    run: refused as a table folder rather than a traceback, a review)."""
    from .writer import PROGRESS, RunError, read_run_json

    try:
        tables = read_run_json(run).get("tables")
    except (RunError, OSError):
        tables = None
    if not isinstance(tables, list):
        try:
            tables = [p.name for p in run.iterdir() if p.is_dir()]
        except OSError:
            return {folder}
    return {str(t) for t in tables} | {PROGRESS}


def check_replaceable(out: Path, marker: str, what: str, flag: str = "--out",
                      error: type[Exception] = RecordError) -> None:
    """Before `--overwrite` deletes `out`: it must be empty or hold `marker` (run.json, config.json),
    i.e. be the kind of thing the command writes, never a user's other directory."""
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise error(f"{flag} {out} is not {what} (no {marker}): refusing to delete it")


def refuse_a_symlinked_out(out: Path, error: type[Exception] = RecordError, what: str = "a run directory") -> None:
    """Before `what` in the directory `out` is replaced (`--overwrite`): not a symbolic link. `record`
    found one only when deleting it, after the model had loaded (a review); `import sglang` wrote the new
    run into the link's target, where record refused it, and `analyses.variants` replaced the link by a
    folder, leaving the link under a hidden name (tours)."""
    if out.is_symlink():
        raise error(f"--out {out}: a symbolic link (to {os.readlink(out)}); --overwrite replaces {what}: "
                    "pass the directory itself")


def refuse_a_training_run(out: Path, error: type[Exception] = RecordError) -> None:
    """Before `--overwrite` deletes a run directory: not a training run's (its train_steps/ table), whose
    model/ and checkpoint/ no other command makes again (a mistyped `record --out runs/small
    --overwrite` deleted the trained model; a tour)."""
    if (out / "train_steps").is_dir():
        raise error(f"--out {out}: is a training run (train_steps/); --overwrite would delete its model and "
                    "checkpoint too: pass another --out (or delete the run yourself)")


@contextlib.contextmanager
def os_refusal(message: str, error: type[Exception] = RecordError):
    """Within the block, an OSError becomes one line: `error(f"{message} ({reason})")`. For the
    writes no up-front check (check_out_parent) can foresee, e.g. a disk that fills or a folder
    made read-only after the check: `with os_refusal(f"--out {out}: cannot create the run there"): out.mkdir()`."""
    try:
        yield
    except OSError as e:
        raise error(f"{message} ({e.strerror or e})") from None
