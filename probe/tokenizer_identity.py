"""Which tokenizer file a run's token ids are read with, as run.json keeps it (`run_tokenizer_file`): the file
its --tokenizer named (the path run.json resolved, else the option as typed), else its checkpoint's
tokenizer.json, each refused where its sha256 is not the one run.json recorded. The one place that decides it
for the jobs (`probe.job.run_tokenizer`), the report's token texts (`analyses.report.research.text_tokenizer`)
and the dashboard's (`dashboards.ui.tokenizer_file`), which each say the answer their own way; they had a
candidate list and a sha256 comparison each, and the jobs checked no checkpoint's tokenizer.json at all (a
review)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .corpus import fingerprint


def holds_recorded_tokenizer(info: dict, path: str | Path) -> bool:
    """Whether the file at `path` holds the bytes of the tokenizer whose sha256 run.json `info` recorded
    (`probe.record.tokenizer_info`), hashed under the name that sha256 was taken under: the --tokenizer's,
    else the checkpoint's tokenizer.json (whatever file that resolved to). A copy named otherwise is the
    same tokenizer (`record --resume` refused one; the jobs on a run compare a --tokenizer this way)."""
    given = (info.get("options") or {}).get("tokenizer")
    return fingerprint(path, name=Path(given).name if given else "tokenizer.json") == \
        (info.get("tokenizer") or {}).get("fingerprint")


@dataclass(frozen=True)
class TokenizerFile:
    """`run_tokenizer_file`'s answer. `path`: the run's tokenizer file, or None, with `why`: 'gone' (`named` is
    not there), 'relative' (`named` is a relative --tokenizer of a run recorded before run.json kept the whole
    path, not in this folder), 'changed' (`named`'s sha256 is not the run's) or 'unnamed' (run.json names no
    tokenizer, nor a checkpoint). `own`: the run was read with its checkpoint's tokenizer.json (no --tokenizer),
    `named` that file. `others`: the files looked at for a copy (`copies`) that are not the run's. `recorded`:
    the file run.json says the run was read with (None in a run recorded before it said)."""
    path: str | None
    why: str | None = None
    named: str | None = None
    own: bool = False
    others: tuple[str, ...] = ()
    recorded: str | None = None


def run_tokenizer_file(info: dict, ckpt: str | Path | None = None, copies: bool = False) -> TokenizerFile:
    """The tokenizer file of the run whose run.json is `info`: the file a record (or the spec, ablate,
    importance or steer --out that made the run) was given with --tokenizer, else the tokenizer.json of
    `ckpt` (default: the run's checkpoint), else a training run's --tokenizer (one that has no model yet).
    A file whose sha256 (`probe.corpus.fingerprint`, under the name the record hashed: the --tokenizer's, or
    tokenizer.json) is not run.json's is not the run's: its token ids would read as other tokens. A run recorded before run.json kept
    a sha256 has its file taken unchecked. `copies`: where that file is gone or changed, another that holds
    its bytes stands in (the checkpoint's tokenizer.json for a --tokenizer tok.json of the same bytes: the same
    tokenizer), as a reader of token texts may take it; never an unchecked one."""
    kept, options = info.get("tokenizer") or {}, info.get("options") or {}
    was = kept.get("path")
    given, trained = options.get("tokenizer"), (info.get("flags") or {}).get("tokenizer")
    ck = ckpt or (info.get("checkpoint") or {}).get("path")
    own = str(Path(ck) / "tokenizer.json") if ck else None
    # a job's checkpoint (`ckpt`) is read with its own tokenizer.json; a reader of the run, with the file run.json
    # resolved (the checkpoint's, through the links a download cache keeps)
    named = str(was or given) if given else (own if ckpt else was or own) or (str(trained) if trained else None)
    mine = not given and named is not None and own is not None and Path(named).resolve() == Path(own).resolve()
    if named is None:
        return TokenizerFile(None, "unnamed")
    recorded = kept.get("fingerprint")
    # the name the record hashed with the bytes (probe.record.tokenizer_info): the option's, or the checkpoint's
    # tokenizer.json, not that of the file run.json resolved (a download cache links it to a blob of another name)
    name = Path(given).name if given else "tokenizer.json" if mine else Path(was or named).name
    theirs = lambda path: not recorded or fingerprint(path, name=name) == recorded  # noqa: E731
    if Path(named).is_file():
        if theirs(named):
            return TokenizerFile(named, named=named, own=mine, recorded=was)
        why = "changed"
    else:
        # a run recorded before run.json kept the whole path has the option as typed: a relative one is not
        # 'no longer there' (a review), it is relative to a folder run.json does not name
        why = "gone" if was or not given or Path(given).is_absolute() else "relative"
    if not (copies and recorded):  # a copy is known by its sha256 alone
        return TokenizerFile(None, why, named, mine, recorded=was)
    looked = dict.fromkeys(str(c) for c in (named, given, trained, own) if c and Path(c).is_file())
    if copy := next((c for c in looked if c != named and theirs(c)), None):
        return TokenizerFile(copy, named=named, own=mine, recorded=was)
    return TokenizerFile(None, why, named, mine, tuple(looked), was)


def tokenizer_refusal(found: TokenizerFile) -> str:
    """Why `found` (a `run_tokenizer_file` with no file) gives no tokenizer, as a clause the caller ends with
    what to pass."""
    if found.why == "unnamed":
        return "run.json names no tokenizer, nor a checkpoint that holds one"
    which = f"the run's tokenizer, its checkpoint's {found.named}," if found.own else \
        f"the run's tokenizer {found.named}"
    if found.why == "changed" and found.own and found.recorded and \
            Path(found.named).resolve() != Path(found.recorded).resolve():
        # another checkpoint than the run's (a job's --ckpt): its tokenizer.json was never the run's
        return (f"the checkpoint's {found.named} is not the tokenizer the run was recorded with, {found.recorded} "
                "(its sha256 is not the one run.json keeps)")
    if found.why == "changed":
        return (f"{which} has changed since the run was recorded (its sha256 is not the one run.json keeps)"
                + ("" if found.own else ", so its token ids would not be the run's"))
    if found.why == "relative":
        return (f"{which} is not in this folder: run.json keeps it as typed to the record, relative to the folder "
                "that ran it (a run recorded before run.json kept the whole path)")
    return f"{which} is no longer there"
