"""Durable sweeps: each ablation of a command committed as it finishes, and a rerun of an interrupted
command continuing from what it committed (usage: the package docstring).

A command's rows go into one part file, `ablations/<name>.parquet`, `<name>` a hash of the sweep
(its ablations as selected, in any order), the loads' source, the checkpoint, the corpus and the options
(`sweep_key`). When the baseline pass ends, its sums and routing are saved under
`ablations/.sweep-<name>/` (one file per replica) and run.json's `ablation_parts[<name>]` says the
sweep is unfinished (`pending`: the ablations not done). After each ablation the part is written
again whole with every finished ablation's rows (temporary name, then rename) and its run.json
entry lists them; the last one's commit drops `pending` and the saved baseline, which leaves what
an uninterrupted command writes. A rerun of the same command finds `pending`, takes the baseline
and the finished ablations' rows (one whose resolved experts differ is computed again) and
computes the rest; a finished part is computed again whole, as before (it replaces itself). An
attempt whose windows were sampled otherwise (run.json's `sample`, `Commits._same_sample`) gives
nothing to take: its units are computed again.

`Commits` is that machinery for any job whose part is made of units (`Sweep`: ablate's ablations;
`analyses.importance.run.LayerCommits`: importance's layers).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from probe.job_exit import say_on_stop
from probe.writer import RunError, note_result_part, part_name, read_run_json, write_result_part

TABLE, PARTS = "ablations", "ablation_parts"
# a pass's per-domain loss sums (run.add_loss), the first columns of every job's sums and the whole of the saved
# baseline's: surprisal, scored tokens, and those of them the model gave a NaN or inf surprisal
LOSS = ("nll", "n", "nonfinite")
NLL, N, NONFINITE = range(len(LOSS))  # their columns
# a part's `sample` (job_meta): where its windows were taken; an entry without one was written before
# jobs given --run sampled within the run's windows, when every job sampled the corpus
SAMPLES = {"corpus": "the whole corpus", "run": "the run's own windows"}


def sweep_key(ablations: list, meta: dict, out: Path | None = None) -> dict:
    """What decides a sweep's numbers: its part's name hashes it (a rerun with other options or
    inputs writes another part and takes nothing from this one). The ablations as a set, each as
    selected (experts and layers sorted: `1:5+3` is `1:3+5`), as the part's key was before; the inputs
    by content (`inputs_key`), and loads from the run written into as that run, not its path."""
    from .inputs import inputs_key

    loads = meta["loads"]
    if out is not None and loads.startswith("run:") and Path(loads[4:]) == Path(out).resolve():
        loads = "run:out"
    return {"ablations": sorted(json.dumps(_selection(a), sort_keys=True, default=str) for a in ablations),
            "loads": loads, **inputs_key(meta), "options": meta["options"]}


def _selection(a) -> dict:
    from dataclasses import asdict

    d = asdict(a)
    if d.get("token_top") is None:  # a key added with --token-top: the other selections keep their part names
        d.pop("token_top", None)
    try:
        if d["experts"] is not None:
            d["experts"] = {str(k): sorted({int(e) for e in v}) for k, v in sorted(d["experts"].items())}
        if d["layers"] is not None:
            d["layers"] = sorted({int(x) for x in d["layers"]})
    except (TypeError, ValueError):  # resolved later, where a bad value is refused
        pass
    return d


class Commits:
    """A job's result part committed unit by unit into `out` (rank 0 writes; every replica's leader
    saves its share of the baseline), and what an unfinished earlier attempt of the same job (the
    same `key`) committed, for a rerun to take. A subclass names the table, its run.json entry, the
    entry's field listing the committed units and the unit of a row (`unit_of`). `units`: the job's
    units in order (names or numbers: JSON keeps them). `fresh`: take nothing from an earlier attempt."""

    TABLE, PARTS, FIELD = "", "", ""  # the table, run.json's entry of its parts, the field listing the units done
    NOUN, COMMAND, WHAT = "", "", ""  # said as "<COMMAND>: continuing an interrupted <WHAT>: 3 of 9 <NOUN> ..."
    KEEP_ROUTING = True  # the saved baseline holds every token's top-k ids (ablate compares routing with them)

    def __init__(self, out, units: list, key: dict, meta: dict, args, world, fresh: bool = False) -> None:
        self.out, self.units, self.meta, self.args, self.world = Path(out), list(units), meta, args, world
        self.key = key
        self.name = part_name(key)
        self.dir = self.out / self.TABLE / f".sweep-{self.name}"
        self.rows: dict = {}  # the committed units' rows, by unit
        self.resampled = None  # the earlier attempt's sample, where it is not this one's (`_same_sample`)
        self.earlier = None if fresh else self._earlier()  # unit -> rows of an unfinished earlier attempt
        self.kept = 0  # units taken from it
        self._finished = False  # the part written with every unit's rows
        self._writing = None  # the unit whose commit is under way: in `rows`, not yet said committed
        self._same_on_every_rank()
        say_on_stop(self._said_on_stop)  # under torchrun, a rank stopped by a lost peer or SIGTERM says it too

    def _same_on_every_rank(self) -> None:
        """Every rank must find what rank 0 finds of an earlier attempt (the units it takes, its saved
        baseline): each rank decides from `out` which passes it runs, and a rank that does not see the
        run (its node without the shared disk) ran the passes rank 0 took from the earlier attempt, in
        collectives the others were not in (gloo aborted the job). A RunError on every rank otherwise."""
        if self.world.size == 1:
            return
        mine = (sorted(map(str, self.earlier or {})) if self.resuming else None, self.baseline_saved())
        every = self.world.everyone(mine)
        if any(theirs != every[0] for theirs in every):
            rank = next(r for r, theirs in enumerate(every) if theirs != every[0])
            raise RunError(f"{self.out / self.TABLE}: rank {rank} does not find the earlier {self.WHAT} there that "
                           f"rank 0 finds (its committed {self.NOUN} or saved baseline): every rank must see --out "
                           "(a filesystem every node shares); or pass --fresh")

    def unit_of(self, row: dict):
        raise NotImplementedError

    @property
    def resuming(self) -> bool:
        return self.earlier is not None

    def _earlier(self) -> dict | None:
        """The rows an unfinished attempt of this job committed (None: no such attempt)."""
        entry = self._entry()
        if entry is None or "pending" not in entry:
            return None  # none, or finished: a rerun computes it again
        return self._committed(entry) if self._same_sample(entry) else None

    def _same_sample(self, entry: dict) -> bool:
        """Whether `entry`'s rows were measured on this attempt's windows: where both entries keep their
        windows' digest (`inputs.windows_digest`), the two digests are equal (the report's sweep samples
        within the run under the key its corpus sample had: a label alone could not tell); else (an
        entry from before the digest) its sample is this one's (none said: the whole corpus, the one
        sample then), or the two are the same windows whatever they are called: the corpus read whole
        either way (no --max-tokens, as in a run without a cap; a capped read within the run may stop
        short of the caller's cap, inputs.sample_windows). Else `resampled` notes theirs:
        an attempt interrupted before jobs given --run sampled within its windows, resumed after, mixed
        units of the whole corpus with units of the run's windows in one part."""
        theirs, ours = entry.get("sample") or "corpus", self.meta.get("sample") or "corpus"
        if entry.get("windows_digest") is not None and self.meta.get("windows_digest") is not None:
            same = entry["windows_digest"] == self.meta["windows_digest"]
        else:  # the same label, or the corpus read whole either way (no cap of the run's or the caller's)
            same = theirs == ours or (self.meta.get("options") or {}).get("max_tokens") is None
        if not same:
            self.resampled = theirs if theirs != ours else "other windows"
        return same

    def _entry(self) -> dict | None:
        """run.json's entry of this job's part (None: none, or no run.json yet)."""
        try:
            entry = (read_run_json(self.out).get(self.PARTS) or {}).get(self.name)
        except RunError:
            return None  # no run.json yet: nothing committed
        return entry if isinstance(entry, dict) else None

    def _committed(self, entry: dict, part: Path | None = None) -> dict:
        """The rows of the units `entry` lists as committed, by unit, read from `part` (default: this
        job's part file). A finished entry without the list (a part written whole, before parts were
        committed unit by unit) has every unit its part holds."""
        part = part or self.out / self.TABLE / f"{self.name}.parquet"
        whole = self.FIELD not in entry and "pending" not in entry
        listed = set(entry.get(self.FIELD) or [])
        rows: dict = {}
        if (listed or whole) and part.exists():
            for r in pq.read_table(part).to_pylist():
                if whole or self.unit_of(r) in listed:
                    rows.setdefault(self.unit_of(r), []).append(r)
        return rows

    def note_start(self) -> None:
        """Say, on rank 0, what a rerun takes from the earlier attempt (one line on stderr)."""
        self.note_resampled(len(self.units))
        if not self.resuming or self.world.rank != 0:
            return
        n = sum(u in self.earlier for u in self.units)
        base = " and the baseline pass" if self.baseline_saved() else ""
        print(f"{self.COMMAND}: continuing an interrupted {self.WHAT}: {n} of {len(self.units)} {self.NOUN}{base} "
              f"taken from the earlier attempt ({self.out / self.TABLE}), {len(self.units) - n} to compute (--fresh "
              "computes them all)", file=sys.stderr, flush=True)

    def note_resampled(self, n: int) -> None:
        """Say, on rank 0, that the earlier attempt's `n` units are computed again, sampled otherwise."""
        if self.resampled is None or self.world.rank != 0:
            return
        ours = self.meta.get("sample") or "corpus"
        was = (f"was sampled from {SAMPLES.get(self.resampled, self.resampled)}, this command samples from "
               f"{SAMPLES.get(ours, ours)}" if self.resampled in SAMPLES else
               "evaluated other windows than this command's (the run or its corpus changed since?)")
        print(f"{self.COMMAND}: the earlier {self.WHAT} in {self.out / self.TABLE} {was}: none of its {self.NOUN} "
              f"taken, all {n} computed again", file=sys.stderr, flush=True)

    def to_compute(self) -> int:
        """Units this attempt will compute (as far as can be told before they start)."""
        return sum(not self.resuming or u not in self.earlier for u in self.units)

    def take(self, unit, same=None) -> list[dict] | None:
        """The earlier attempt's rows of `unit` (None: none, or `same(rows)` says they measured
        something else)."""
        rows = (self.earlier or {}).get(unit)
        if not rows or (same is not None and not same(rows)):
            return None
        self.rows[unit] = rows
        self.kept += 1
        return rows

    # ------------------------------------------------------------------------ the baseline
    def _state(self, replica: int) -> Path:
        return self.dir / f"replica{replica:03d}.npz"

    def baseline_saved(self) -> bool:
        """Every replica's share of the baseline is saved, for this layout (the same on every rank). One
        saved before its sums counted the NaN surprisals (`LOSS`; it dropped them) is computed again."""
        if not self.resuming:
            return False
        for r in range(self.world.replicas):
            try:
                with np.load(self._state(r)) as z:
                    if int(z["replicas"]) != self.world.replicas or z["base_acc"].shape[-1] != len(LOSS):
                        return False
            except (OSError, ValueError, KeyError, EOFError):
                return False
        return True

    def restore_baseline(self, batches: list, domains: list[str]):
        """(base_acc, base_loads, per-batch top-k ids: None each without KEEP_ROUTING) saved by the
        earlier attempt, or None."""
        if not self.baseline_saved():
            return None
        with np.load(self._state(self.world.replica)) as z:
            if z["batches"].tolist() != [b.index for b in batches] or json.loads(str(z["domains"])) != domains:
                raise RunError(f"{self.dir}: the saved baseline is of other batches or domains; rerun with --fresh")
            counts, ids = z["counts"], z["ids"]
            if not len(counts):  # no routing kept (KEEP_ROUTING), or no batch
                return z["base_acc"], z["base_loads"], [None] * len(batches)
            parts = np.split(ids, np.cumsum(counts)[:-1], axis=1)
            return z["base_acc"], z["base_loads"], [torch.from_numpy(p.copy()) for p in parts]

    def save_baseline(self, base_acc, base_loads, ids: list, batches: list, domains: list[str]) -> None:
        """Each replica's leader saves its share (temporary name, then rename), rank 0's first; rank 0
        notes the unfinished sweep in run.json (what makes a rerun continue it). A failure on any rank
        is raised on every rank.

        NOTE: a leader that does not find rank 0's share, just saved, in its own view of `out` (its node
        without the shared disk) saves nothing: its share was left there in a `.sweep-<name>/` that no
        rerun reads and no commit removes. A rerun computes the baseline again (`baseline_saved`)."""
        from probe.job import agree

        share = (base_acc, base_loads, ids if self.KEEP_ROUTING else [], batches, domains)
        attempt = secrets.token_hex(8) if self.world.rank == 0 else None  # tells this attempt's share apart
        failed = self._save_share(*share, attempt) if self.world.rank == 0 else ""
        attempt, first = self.world.broadcast((attempt, failed))
        if first:
            raise RunError(failed or "another rank could not save its baseline pass")
        if self.world.writes and self.world.rank != 0 and self._sees_share(0, attempt):
            failed = self._save_share(*share, attempt)
        if self.world.any(bool(failed)) and not failed:  # every rank learns of a failure (a rank alone
            failed = "another rank could not save its baseline pass"  # raising left the others waiting)
        if failed:
            raise RunError(failed)
        if not self.resuming:  # a rerun's entry already says so, and lists what it keeps
            agree(self.world, lambda: self._note(listed=False))

    def _save_share(self, base_acc, base_loads, ids: list, batches: list, domains: list[str], attempt: str) -> str:
        """This replica's share of the baseline saved, under `attempt`'s token; what went wrong ("": nothing)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self._state(self.world.replica).with_suffix(".tmp.npz")
            np.savez(tmp, base_acc=base_acc, base_loads=base_loads, replicas=self.world.replicas,
                     batches=np.array([b.index for b in batches]), domains=json.dumps(domains), attempt=attempt,
                     counts=np.array([x.shape[1] for x in ids], np.int64),
                     ids=np.concatenate([x.numpy() for x in ids], axis=1) if ids else np.zeros((0, 0, 0)))
            tmp.replace(self._state(self.world.replica))
        except OSError as e:
            return f"{self.dir}: cannot save the baseline pass ({e})"
        return ""

    def _sees_share(self, replica: int, attempt: str) -> bool:
        """Whether `replica`'s share saved by this attempt (`attempt`, its token) is in `dir` as this rank sees it."""
        try:
            with np.load(self._state(replica)) as z:
                return str(z["attempt"]) == attempt
        except (OSError, ValueError, KeyError, EOFError):
            return False

    # ------------------------------------------------------------------------ the units
    def commit(self, unit, rows: list[dict]) -> None:
        """`unit` finished: the part written again with every finished unit's rows, and run.json's
        entry listing them; after the last one, the saved baseline is dropped."""
        from probe.job import agree

        self.rows[unit] = rows
        self._writing = unit  # a rank stopped in the write (or waiting on rank 0's) cannot tell it is in
        agree(self.world, self._write)
        self._writing = None  # the other ranks: rank 0 has written it
        self._finished = not self._pending()  # on every rank (rank 0 alone writes)

    def finish(self) -> None:
        """After the last unit: the part written as finished if no commit of this attempt did
        (every unit taken from the earlier one)."""
        from probe.job import agree

        if not self._finished:
            agree(self.world, self._write)
            self._finished = True

    def df(self):
        """The rows of every unit, in the job's order (as an uninterrupted job builds them)."""
        import pandas as pd

        from probe.schema import TABLES

        return pd.DataFrame([r for u in self.units for r in self.rows.get(u, ())], columns=TABLES[self.TABLE].names)

    def _done(self) -> list:
        return [u for u in self.units if u in self.rows]

    def _pending(self) -> list:
        return [u for u in self.units if u not in self.rows]

    def _note(self, listed: bool) -> None:
        from probe.job import signals_held, stop_signals

        entry = self.meta | {self.FIELD: self._done(), "pending": self._pending()}
        # run.json as a whole or not at all (write_json_atomic) anyway
        with signals_held(*stop_signals()):
            note_result_part(self.out, self.TABLE, self.PARTS, self.name, entry, self.args, listed)

    def _write(self) -> None:
        from probe.job import signals_held, stop_signals

        pending = self._pending()
        note = {self.FIELD: self._done()} | ({"pending": pending} if pending else {})
        with signals_held(*stop_signals()):  # the part and its run.json entry together
            self.write_part(self.df(), note)
            self._writing = None  # in the part: so said where a stop held here ends the commit at the block's end
        if not pending:
            shutil.rmtree(self.dir, ignore_errors=True)

    def write_part(self, df, note: dict) -> None:
        """The part written whole, `note` added to its run.json entry."""
        write_result_part(self.out, self.TABLE, df, self.key, self.meta, self.PARTS, note, self.args)

    @contextmanager
    def computing(self, bar=None):
        """The block that computes the units: Ctrl-C leaves it as `interrupted()`'s one message (what was
        committed stays), and the progress bar, if any, is closed either way."""
        try:
            yield
        except KeyboardInterrupt:
            raise self.interrupted() from None
        finally:
            if bar is not None:
                bar.close()

    def interrupted(self) -> KeyboardInterrupt:
        """What Ctrl-C says: what was kept and how to go on."""
        return KeyboardInterrupt(f"interrupted: {self.committed_note() or 'nothing was committed'}")

    def committed_note(self) -> str:
        """What this attempt has kept for a rerun and how to go on ("": nothing, not even a saved baseline).
        A unit whose commit has not returned is not counted: a rank whose peer died while it waited on rank
        0's write said "1 of 2 ablations committed" where rank 0 had written nothing (a review)."""
        done = len(self.rows) - (self._writing is not None)
        if not done and not self.dir.exists():
            return ""
        return (f"{done} of {len(self.units)} {self.NOUN} committed in {self.out / self.TABLE}; run the same "
                "command again to compute the rest")

    def _said_on_stop(self) -> str:
        """`committed_note()` for the line of a torchrun rank stopped by a lost peer or SIGTERM
        (probe.job_exit.say_on_stop); nothing once the part is written whole (no rest to compute)."""
        return "" if self._finished else self.committed_note()


class Sweep(Commits):
    """One command's ablations, committed one by one (`Commits`; the unit: an ablation, by name)."""

    TABLE, PARTS, FIELD = TABLE, PARTS, "ablations"
    NOUN, COMMAND, WHAT = "ablations", "ablate", "sweep"

    def __init__(self, out, ablations: list, meta: dict, args, world, fresh: bool = False) -> None:
        self.ablations = ablations
        super().__init__(out, [a.name for a in ablations], sweep_key(ablations, meta, out), meta, args, world, fresh)

    def unit_of(self, row: dict) -> str:
        return row["ablation"]

    def take(self, name: str, spec: str) -> list[dict] | None:
        """The earlier attempt's rows of ablation `name`, when it disabled the same experts (`spec`)."""
        return super().take(name, lambda rows: all(r["spec"] == spec for r in rows))
