"""Running a steering over a corpus and a few prompts: per-domain loss with and without it (one shared
baseline pass), greedy continuations with and without it, and the `steering` table (usage: the
package docstring)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analyses.ablate.inputs import (AblateOptions, check_finished, check_out, inputs_key, job_defaults, job_meta,
                                    sample_windows, start_job)
from analyses.ablate.run import LOSS, add_loss, forward_batch, warn_nonfinite
from analyses.ablate.sweep import N, NLL
from analyses.ablate.select import ALL, RouterShape, experts_label
from analyses.ablate.sweep import Commits
from probe.corpus import CorpusError
from probe.recorders import Batch
from probe.schema import TABLES
from probe.writer import RunError, part_name, read_run_json, updating_run_json, write_result_part

from .hooks import Steer, SteerError, steered

LOSS_ACC = LOSS + ("steered", "pairs", "hits")  # per-domain sums of a steered pass
STEERED, PAIRS, HITS = (LOSS_ACC.index(c) for c in ("steered", "pairs", "hits"))


# ------------------------------------------------------------------------------ loss rows
def evaluate(model, batches: list[Batch], steers: list[Steer], *, domains: list[str] | None = None, world=None,
             progress=None):
    """The baseline and every steering over `batches` (this replica's share); returns the `loss`
    rows of the `steering` table (one per steering and domain, plus `all`), summed over replicas.

    steered_tokens counts the scored tokens (positions > 0) the steering applied to; forced_share
    is over those tokens times the steered layers."""
    shape = RouterShape.of(model.args)
    check_names(steers)
    for s in steers:
        s.resolve(shape)  # refuse bad steerings before any forward pass
    domains = domains if domains is not None else sorted({w.domain for b in batches for w in b.windows})
    index = {d: i for i, d in enumerate(domains)}
    tick = progress or (lambda: None)
    base = np.zeros((len(domains), len(LOSS)))
    for batch in batches:
        nll, _ = forward_batch(model, batch, [], [])
        add_loss(base, nll, _token_domains(batch, index), batch.scored)
        tick()
    acc = np.stack([_steered_pass(model, batches, s, index, tick) for s in steers]) if steers else \
        np.zeros((0, len(domains), len(LOSS_ACC)))
    base, acc = _sum(base, world), _sum(acc, world)
    warn_nonfinite("steer, the baseline pass (nothing steered)", base, domains, world)
    for s, a in zip(steers, acc):
        warn_nonfinite(f"steering {s.name!r}", a, domains, world)
    return _loss_rows(steers, shape, base, acc, domains)


def check_names(steers: list[Steer]) -> None:
    """Refuse two steerings of one name: their rows would share every key of the table (the same
    selection written twice got two identical sets of loss rows)."""
    seen = set()
    for s in steers:
        if s.name in seen:
            raise SteerError(f"two steerings are named {s.name!r}: names must be unique")
        seen.add(s.name)


def _token_domains(batch: Batch, index: dict[str, int]) -> np.ndarray:
    """Domain index of every token slot [B * S] of the batch (padding included, as token_nll's shape)."""
    return np.repeat([index[w.domain] for w in batch.windows], batch.tokens.shape[1])


def _steered_pass(model, batches: list[Batch], steer: Steer, index: dict[str, int], tick) -> np.ndarray:
    """One steering's pass: per-domain sums [D, len(LOSS_ACC)]."""
    D = len(index)
    acc = np.zeros((D, len(LOSS_ACC)))
    with steered(model, steer) as st:
        for batch in batches:
            st.row_domains = [w.domain for w in batch.windows]
            nll, _ = forward_batch(model, batch, [], [])
            dom = _token_domains(batch, index)
            add_loss(acc[:, :len(LOSS)], nll, dom, batch.scored)
            scored = batch.scored.reshape(-1)  # a token the model gave a NaN is still scored (add_loss)
            rows = (st.last_rows.cpu() & scored).numpy()
            acc[:, STEERED] += np.bincount(dom[rows], minlength=D)
            acc[:, PAIRS] += np.bincount(dom[rows], minlength=D) * len(st.layers)
            for hit in st.last_hits.values():
                acc[:, HITS] += np.bincount(dom[(hit.cpu() & scored).numpy()], minlength=D)
            tick()
    return acc


def _loss_rows(steers: list[Steer], shape: RouterShape, base: np.ndarray, acc: np.ndarray, domains: list[str]):
    import pandas as pd

    rows = []
    for i, s in enumerate(steers):
        spec = s.spec(shape)
        for d, b, a in [(ALL, base.sum(0), acc[i].sum(0))] + [(dom, base[j], acc[i, j]) for j, dom in
                                                               enumerate(domains)]:
            if a[N] == 0:
                continue
            loss, bl = a[NLL] / a[N], b[NLL] / b[N]
            rows.append({"steer": s.name, "spec": spec, "kind": "loss", "domain": d, "tokens": int(a[N]),
                         "steered_tokens": int(a[STEERED]), "forced_share": a[HITS] / a[PAIRS] if a[PAIRS] else None,
                         "baseline_loss": bl, "loss": loss, "delta": loss - bl})
    return pd.DataFrame(rows, columns=TABLES["steering"].names)


def _sum(x: np.ndarray, world) -> np.ndarray:
    return x if world is None else world.sum_replicas(x)


# ------------------------------------------------------------------------ generation rows
@dataclass
class Prompt:
    text: str
    ids: list[int]
    domain: str | None = None  # a corpus prompt's domain; None for a given text (no domain filter)


def corpus_prompts(windows, n_tokens: int, decode) -> list[Prompt]:
    """The first `n_tokens` tokens of the first window of each domain (domains in sorted order)."""
    first = {}
    for w in windows:
        first.setdefault(w.domain, w)
    out = []
    for d in sorted(first):
        ids = [int(t) for t in first[d].ids[:n_tokens]]
        out.append(Prompt(decode(ids), ids, d))
    return out


def text_prompts(texts: list[str], encode, bos: int | None) -> list[Prompt]:
    out = []
    for t in texts:
        ids = ([bos] if bos is not None else []) + list(encode(t))
        if not ids:
            raise SteerError(f"--prompt {t!r}: no tokens")
        out.append(Prompt(t, ids))
    return out


def generations(model, steers: list[Steer], prompts: list[Prompt], *, max_new_tokens: int = 32,
                stop_ids=(), decode=None):
    """Greedy continuations of each prompt without and with each steering (the steering applied at
    prefill and every decode step; its domain filter sees the prompt's domain). Returns the
    `generation` rows of the `steering` table.

    NOTE: one prompt at a time: every row of every forward call is then a real token of the
    prompt, so steered_tokens and forced_share count exactly the tokens fed (prompt and generated
    tokens fed back), without padding or finished rows."""
    from generate import generate

    import pandas as pd

    decode = decode or (lambda ids: " ".join(map(str, ids)))
    shape = RouterShape.of(model.args)
    check_names(steers)
    rows = []
    for p in distinct(prompts):
        base = generate(model, [p.ids], max_new_tokens=max_new_tokens, stop_ids=stop_ids).tokens[0]
        for s in steers:
            with steered(model, s, row_domains=[p.domain]) as st:
                got = generate(model, [p.ids], max_new_tokens=max_new_tokens, stop_ids=stop_ids).tokens[0]
            rows.append({"steer": s.name, "spec": s.spec(shape), "kind": "generation", "domain": p.domain,
                         "tokens": len(got), "steered_tokens": st.steered_tokens, "forced_share": st.forced_share,
                         "prompt": p.text, "baseline_text": decode(base), "steered_text": decode(got)})
    return pd.DataFrame(rows, columns=TABLES["steering"].names)


# ---------------------------------------------------------------------------------- the job
@dataclass
class SteerOptions(AblateOptions):
    """AblateOptions (inputs, windows, model flags; `loads_from` unused) plus the prompts."""
    domain_tokens: int | None = 2000  # a balanced sample: at most this many tokens per domain
    prompts: list[str] = field(default_factory=list)  # --prompt texts (default: corpus prompts)
    prompt_tokens: int = 24  # corpus prompts: the first tokens of each domain's first window
    max_new_tokens: int = 32


def parse_token_filter(text: str, tokenizer, vocab_size: int) -> list[int]:
    """--steer-tokens "def,class" or "17,42": a number is a token id; a word selects its own token
    and that of " word" (with a leading space), whichever are single tokens."""
    out: set[int] = set()
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if item.isascii() and item.isdigit():  # "²" is a digit to str.isdigit, not to int()
            if int(item) >= vocab_size:
                raise SteerError(f"--steer-tokens {item}: token id out of range (vocab_size {vocab_size})")
            out.add(int(item))
            continue
        found = [ids[0] for ids in (tokenizer.encode(v, add_special_tokens=False).ids for v in (item, " " + item))
                 if len(ids) == 1]
        if not found:
            raise SteerError(f"--steer-tokens {item!r}: not a single token of the tokenizer (with or without a "
                             "leading space); give token ids instead")
        out.update(found)
    if not out:
        raise SteerError(f"--steer-tokens {text!r}: no tokens")
    return sorted(out)


def steer(opts: SteerOptions, steering: Steer, token_filter: str | None = None):
    """Run the job; returns (output run directory, DataFrame of the rows). Rank 0 writes.
    token_filter: --steer-tokens text, resolved with the checkpoint's tokenizer into steering.token_ids.
    Each pass is committed as it finishes (`SteerCommits`): Ctrl-C keeps the finished ones, and rerunning
    the same command computes only the rest (`opts.fresh`: all of them again)."""
    opts, info = job_defaults(opts)
    check_finished(opts.run, info, SteerError)
    # each flag named with its value, as job_defaults names its own (it said "--max-new-tokens must be >= 0 and
    # --prompt-tokens >= 1" for either, naming neither the one at fault nor what it was given)
    if opts.max_new_tokens < 0:
        raise SteerError(f"--max-new-tokens {opts.max_new_tokens}: must be >= 0 (greedy tokens per continuation)")
    if opts.prompt_tokens < 1:
        raise SteerError(f"--prompt-tokens {opts.prompt_tokens}: must be >= 1 (tokens of each domain's prompt)")
    ckpt, corpus, out, args, tok = _inputs(opts)
    stops = _stops(ckpt, args, tok)
    try:  # refuse bad experts before reading the corpus, naming the flag as the job's other errors do
        steering.resolve(RouterShape.of(args))
    except SteerError as e:
        raise SteerError(f"--experts {experts_label(steering.experts)}: {e}") from None
    if token_filter is not None:
        auto = steering.name == steering.default_name()
        steering.token_ids = parse_token_filter(token_filter, tok, args.vocab_size)
        steering.name = steering.default_name() if auto else steering.name
    windows, domains = sample_windows(opts, corpus, tok, args)
    for d in steering.domains or []:
        if d not in domains:
            if opts.within_run and opts.run_max_tokens:
                more = (f"they are the run's own windows, up to its --max-tokens {opts.run_max_tokens:,}; pass "
                        "--max-tokens to sample every domain of the corpus")
            elif opts.max_tokens:
                more = "a larger --max-tokens samples more of the corpus"
            else:  # the whole corpus was read
                more = f"the corpus {corpus} has no documents of it"
            raise SteerError(f"--steer-domain {d!r}: no such domain in the windows sampled (domains there: "
                             f"{', '.join(domains)}); {more}")
    decode = lambda ids: tok.decode(list(ids), skip_special_tokens=True)  # noqa: E731
    prompts = text_prompts(opts.prompts, lambda t: tok.encode(t, add_special_tokens=False).ids,
                           args.bos_token_id if opts.add_bos else None) if opts.prompts else \
        corpus_prompts(windows, opts.prompt_tokens, decode)
    how = "the steering (--experts, --mode, --bias, --steer-domain, --steer-tokens)"
    world, batches, m = start_job(opts, ckpt, args, windows, corpus, **{how: repr(steering)})
    meta = job_meta(ckpt, corpus, opts, windows, max_new_tokens=opts.max_new_tokens, prompts=[p.text for p in prompts]) | {
        "world": world.describe()}
    commits = SteerCommits(out, steering, prompts, RouterShape.of(args), meta, args, world, fresh=opts.fresh)
    commits.note_start()
    with commits.computing():
        df = _run_passes(m, batches, steering, prompts, opts, domains, world, decode, stops, commits)
    return out, df


def _stops(ckpt: Path, args, tok) -> list[int]:
    """The ids the generations stop at, as `python -m generate` takes them (generate.text.stop_ids)."""
    from generate import GenerateError
    from generate.text import stop_ids

    try:
        return stop_ids(ckpt, args, tok)
    except GenerateError as e:  # a generation_config.json whose eos_token_id is not ids
        raise SteerError(str(e)) from None


def _inputs(opts: SteerOptions):
    """(checkpoint, corpus, output dir, model args, tokenizer), checked; opts.seq_len filled."""
    from probe.job import checkpoint_args, load_tokenizer, resolve_paths, window_length

    ckpt, corpus, out = resolve_paths(opts.ckpt, opts.corpus, opts.out or opts.run, error=SteerError)
    check_out(out, corpus, ckpt, opts.run)
    args = checkpoint_args(ckpt, SteerError)
    opts.seq_len = window_length(opts.seq_len, args, SteerError)
    tok = load_tokenizer(opts.tokenizer, ckpt, args.vocab_size, SteerError)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    return ckpt, corpus, out, args, tok


def _run_passes(m, batches, steering: Steer, prompts: list[Prompt], opts: SteerOptions, domains, world, decode,
                stops: list[int], commits: SteerCommits):
    """Loss rows (every replica its batches, summed) then generation rows (every rank alike), each
    pass committed as it finishes; a pass an interrupted attempt committed is taken, not run again."""
    if commits.take(LOSS) is None:
        bar = None
        if opts.progress and world.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=len(batches) * 2, unit="batch", desc="steer", dynamic_ncols=True)
        try:
            loss = evaluate(m, batches, [steering], domains=domains, world=world,
                            progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        commits.commit(LOSS, loss.to_dict("records"))
    for p in prompts:
        unit = prompt_unit(p)
        if unit in commits.rows or commits.take(unit) is not None:  # a repeated prompt: its continuations once
            continue
        gen = generations(m, [steering], [p], max_new_tokens=opts.max_new_tokens, stop_ids=stops, decode=decode)
        commits.commit(unit, gen.to_dict("records"))
    commits.finish()
    return commits.df()


LOSS = "loss"  # the unit of the loss rows; a prompt's generation rows: prompt_unit
# the options only the generation rows depend on (job_meta's options): left out of a part's name, so that a
# command differing from an earlier one only in them replaces its part and takes its loss rows (SteerCommits)
GENERATION_OPTIONS = {"max_new_tokens": "--max-new-tokens", "prompts": "--prompt/--prompt-tokens"}


def distinct(prompts: list[Prompt]) -> list[Prompt]:
    """The prompts less repeats (the same domain and text: the same row), in order."""
    return list({prompt_unit(p): p for p in prompts}.values())


def prompt_unit(p: Prompt) -> str:
    """The unit of a prompt's generation rows (its domain and text: what its rows hold of it)."""
    return _unit(p.domain, p.text)


def _unit(domain: str, text: str) -> str:  # one encoding for a prompt and for its rows (SteerCommits.unit_of)
    return json.dumps([domain, text])


class SteerCommits(Commits):
    """A steer command's part committed a pass at a time (`analyses.ablate.sweep.Commits`): the loss
    pass (baseline and steered, its `loss` rows), then each prompt's continuations (its `generation`
    row); run.json's `steering_parts` entry lists the passes done (`committed`) and, until the last,
    `pending`. Nothing is saved besides the rows (the baseline pass is part of the loss pass).

    An earlier command that differed only in its generation options (`GENERATION_OPTIONS`; finished or
    not) wrote the same part: its loss rows are taken, and so are its continuations where
    --max-new-tokens is the same (a prompt's own); the rest are computed and the part replaced. Its
    loss pass was computed again before, into a second part: every loss row twice in the table. The
    continuations it holds of prompts this command does not give stay in the part (`others`), of
    their own length: a command of other prompts adds its own, it does not drop the earlier ones (nor
    does the same command run again over its finished part; `--fresh` keeps only its own).

    A part written before the generation options left its name (`legacy_parts`) is this part too:
    without one of its own, the newest is taken as the earlier part, and the others' continuations
    of prompts not given stay; when the part is first written they all go (`_adopt`, `_drop_legacy`).
    Taken as a second part, every loss row was in the table twice."""

    TABLE, PARTS, FIELD = "steering", "steering_parts", "committed"
    NOUN, COMMAND, WHAT, KEEP_ROUTING = "steering passes", "steer", "steering", False

    def __init__(self, out, steering: Steer, prompts: list[Prompt], shape: RouterShape, meta: dict, args, world,
                 fresh: bool = False) -> None:
        self.steering = steering
        self.regenerating: list[str] = []  # the generation options the earlier command's part differs in
        rows = [(steering.name, steering.spec(shape))]
        key = steering_key(rows, meta)
        self.legacy = legacy_parts(out, rows, part_name(key))  # this part under its old names (name -> entry)
        self.source: Path | None = None  # the file of the earlier part's rows, if not this part's (`_entry`)
        # a prompt given twice is one unit: listed twice, its row was in the part twice
        super().__init__(out, [LOSS] + [prompt_unit(p) for p in distinct(prompts)], key, meta, args, world, fresh)
        # the earlier part's continuations of prompts this command does not give: kept, after its own; a
        # finished part's too (the same command run again computes its own passes and dropped them)
        kept = {} if fresh else self.earlier if self.earlier is not None else self._finished_rows()
        self.others = [u for u in kept if u != LOSS and u not in self.units]
        self.rows.update({u: kept[u][:1] for u in self.others})  # one steering: one row a prompt (`take`)
        for u in self.others:
            self.units.append(u)
        if fresh:
            self._entry()  # nothing taken, but the legacy part's file is still the one this part replaces
        else:
            self._keep_legacy_others()

    def unit_of(self, row: dict) -> str:
        return LOSS if row["kind"] == "loss" else _unit(row["domain"], row["prompt"])

    def _earlier(self) -> dict | None:
        """An interrupted attempt's rows (`Commits`), or those an earlier command differing only in its
        generation options wrote: its loss rows (of the same sample), and its continuations if of as
        many tokens: of its own prompts only (its `prompts`), since those it kept of earlier commands'
        (`others`) are of their own length, not of its --max-new-tokens (they were taken as of it)."""
        entry = self._entry()
        theirs, ours = (entry or {}).get("options") or {}, self.meta["options"]
        self.regenerating = [k for k in GENERATION_OPTIONS if entry is not None and theirs.get(k) != ours.get(k)]
        if not self.regenerating:
            return super()._earlier()
        same, own = self._same_sample(entry), set(theirs.get("prompts") or [])
        same_length = "max_new_tokens" not in self.regenerating
        return {u: rows for u, rows in self._committed(entry).items()  # other prompts': kept (__init__)
                if u not in self.units or same and (u == LOSS or same_length and json.loads(u)[1] in own)}

    def _entry(self) -> dict | None:
        """This part's run.json entry, else the newest legacy part's whose file is there (`source`:
        that file). An entry `adopted` from a legacy part whose file was not yet renamed (`_adopt`,
        interrupted) reads that file."""
        own, table = super()._entry(), self.out / self.TABLE
        if own is not None:
            old = table / f"{own.get('adopted')}.parquet"
            self.source = old if own.get("adopted") and old.exists() else None
            return own
        for name, entry in self.legacy.items():
            if (table / f"{name}.parquet").exists():
                self.source = table / f"{name}.parquet"
                return entry
        return None

    def _committed(self, entry: dict, part: Path | None = None) -> dict:
        return super()._committed(entry, part or self.source)

    def _finished_rows(self) -> dict:
        """The rows of this part as a finished command left them (`_entry`: or a legacy one's), by unit."""
        entry = self._entry()
        return self._committed(entry) if entry is not None else {}

    def _keep_legacy_others(self) -> None:
        """The continuations the legacy parts besides the one taken (`_entry`) hold of prompts this
        command does not give: kept, as the taken part's are (`others`), since those parts go."""
        for name, entry in self.legacy.items():
            part = self.out / self.TABLE / f"{name}.parquet"
            if part == self.source or not part.exists():
                continue
            for u, rows in self._committed(entry, part).items():
                if u != LOSS and u not in self.units:
                    self.others.append(u)
                    self.units.append(u)
                    self.rows[u] = rows[:1]

    def note_start(self) -> None:
        if self.legacy and self.world.rank == 0:
            n = len(self.legacy)
            print(f"steer: {self.out / self.TABLE} holds this steering's part under {n} older name"
                  f"{'s' * (n != 1)} (from before the generation options left a part's name): it is this "
                  "command's part, replaced by the one this command writes", file=sys.stderr, flush=True)
        if not self.regenerating:
            return super().note_start()
        own = [u for u in self.units if u not in self.others]
        self.note_resampled(len(own))
        if self.world.rank == 0:
            n, what = sum(u in self.earlier for u in own), " and ".join(GENERATION_OPTIONS[k] for k in self.regenerating)
            kept = (f"; its continuations of {len(self.others)} prompt{'s' * (len(self.others) != 1)} this command does "
                    "not give stay in it") if self.others else ""
            print(f"steer: {self.out / self.TABLE} holds this steering's part, of other {what}: {n} of "
                  f"{len(own)} steering passes taken from it (its loss pass, and continuations only of as "
                  f"many tokens), {len(own) - n} to compute, then the part replaced{kept} (--fresh computes "
                  "them all)", file=sys.stderr, flush=True)

    def take(self, unit: str) -> list[dict] | None:
        """The earlier attempt's rows of `unit` (a prompt given twice: its row once)."""
        if unit != LOSS and (self.earlier or {}).get(unit):  # one steering: one row a prompt
            self.earlier[unit] = self.earlier[unit][:1]
        return super().take(unit)

    def write_part(self, df, note: dict) -> None:
        """The part written whole (`Commits`); the first time, in place of its legacy parts: the
        table holds every row once (the legacy one or this one's) whenever the writes stop."""
        self._adopt()
        write_result_part(self.out, self.TABLE, df, self.key, self.meta, self.PARTS,
                          {"steers": [self.steering.name]} | note, self.args)
        self._drop_legacy()

    def _adopt(self) -> None:
        """The legacy part the earlier rows were read from (`source`) becomes this part before it is
        written: its run.json entry moves to this part's name, noting the file (`adopted`), then the
        file is renamed, so that the table holds its rows once until this part's replace them. A stop
        in between leaves the entry, which the rerun reads as this part's, with the file (`_entry`)."""
        part = self.out / self.TABLE / f"{self.name}.parquet"
        if self.source is None or part.exists():
            return
        old = self.source.stem
        if old in self.legacy:
            with updating_run_json(self.out) as info:
                parts = info.setdefault(self.PARTS, {})
                parts[self.name] = parts.pop(old, self.legacy[old]) | {"adopted": old}
        self.source.replace(part)
        self.source = part

    def _drop_legacy(self) -> None:
        """After this part is written: the legacy parts' files deleted, then their run.json entries.
        In this order: an entry left without its file by a stop reads as no rows (`_entry` and
        `_keep_legacy_others` look for the file) and the next write drops it, where a file left
        without its entry would be read (a table is its part files), every loss row twice, and no
        command would know it for this part's again (`legacy_parts` finds parts by their entries)."""
        if not self.legacy:
            return
        for name in self.legacy:
            (self.out / self.TABLE / f"{name}.parquet").unlink(missing_ok=True)
        with updating_run_json(self.out) as info:
            for name in self.legacy:
                info.get(self.PARTS, {}).pop(name, None)
        self.legacy, self.source = {}, None


def write_steering(out: str | Path, df, meta: dict, args=None) -> Path:
    """Write `df` as one part of `out/steering/` (temporary name, then rename) and note it in
    run.json under `steering_parts`; a directory without run.json becomes a run holding only this
    table (probe.writer.write_result_part). The command writes its part a pass at a time instead
    (`SteerCommits`), under the same name."""
    return write_result_part(out, "steering", df, steering_key(zip(df.steer, df.spec), meta), meta, "steering_parts",
                             {"steers": list(dict.fromkeys(df.steer))}, args)


def legacy_parts(out: Path, rows, name: str) -> dict[str, dict]:
    """The parts of `out`'s steering table that are part `name` (the steering `rows`) under the name
    they had before the generation options left it (`legacy_key`): same steering, inputs and other
    options, found by their run.json entries; name -> entry, the newest first."""
    try:
        parts = read_run_json(out).get("steering_parts") or {}
    except RunError:
        return {}  # no run yet
    found = {}
    for old, entry in parts.items():
        try:
            if old != name and part_name(legacy_key(rows, entry)) == old and \
                    part_name(steering_key(rows, entry)) == name:
                found[old] = entry
        except (KeyError, TypeError, AttributeError):  # an entry of no steer command: not this part
            continue
    return dict(sorted(found.items(), key=lambda kv: -_time(kv[1].get("written"))))


def _time(value) -> float:
    return value if isinstance(value, (int, float)) else 0.0


def legacy_key(rows, meta: dict) -> dict:
    """What named a steering part before the generation options left its name (`steering_key` with
    every option): a part of that name is the same part (`legacy_parts`)."""
    return {"rows": sorted(set(rows)), **inputs_key(meta), "options": meta["options"]}


def steering_key(rows, meta: dict) -> dict:
    """What names a steering part: its (steer, spec) pairs, the inputs by content and the options
    less the generation ones, so repeating a command (or changing only its generation options)
    replaces its own part and other options or inputs write another."""
    options = {k: v for k, v in meta["options"].items() if k not in GENERATION_OPTIONS}
    return {"rows": sorted(set(rows)), **inputs_key(meta), "options": options}
