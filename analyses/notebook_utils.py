"""Small helpers shared by the notebooks (`analyses/notebooks/`) and the report: finding (or
recording) the run to analyse, and a token-balanced sample of a corpus (the bundled corpus is
sorted by domain, so a plain token limit would keep only its first domain).

    from analyses.notebook_utils import default_run
    run = default_run()            # a probe.Run: $DSV3_NOTEBOOK_RUN, else runs/model-val, else a small run

Environment (what the notebook tests set to point the notebooks at a small run):
- DSV3_NOTEBOOK_RUN: the run directory to open (recorded there on the bundled model when missing);
- DSV3_NOTEBOOK_MAX_TOKENS: tokens of the small run recorded when no run exists (default 40000);
- DSV3_NOTEBOOK_ABLATION_TOKENS: tokens the ablation notebook evaluates per pass (default 8000);
- DSV3_NOTEBOOK_COMPARE_RUN: the second run of the run-vs-run notebook (default: `compare_run`);
- DSV3_NOTEBOOK_IMPORTANCE_EXPERTS: the experts the causal-importance notebook removes (default all).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUN = REPO / "runs" / "model-val"  # what `dsv3-probe record` writes with its defaults
SMALL_TOKENS = 40_000
ABLATION_TOKENS = 8_000


def need_domains(run, what: str) -> list[str]:
    """The run's domains (from `tokens`), or one clear error when it has fewer than two: `what`
    compares domains, and on one domain it crashed deep in pandas or printed empty conclusions
    (a review)."""
    from analyses.metrics import MetricsError
    from analyses.metrics._common import not_lost

    not_lost(run, "tokens")  # a table the run has lost: the RunError every metric raises, naming its parts
    domains, why = _domains(run, what)
    if why:
        raise MetricsError(f"{run.path}: {why}")
    return domains


def one_domain_note(run, what: str) -> str | None:
    """None when the run's tokens hold two domains or more; else why `what`, a part of a notebook that
    compares domains, is not measured (one domain, or a tokens table the run has lost: `_tokens_lost`),
    for the notebook to show in its place (on one domain the
    latent_kv notebook's domain probe raised "a probe needs training tokens of two labels" halfway
    through, and mtp's conclusion named the one domain both best and worst; a tour)."""
    return _tokens_lost(run, what) or _domains(run, what)[1]


def _domains(run, what: str) -> tuple[list[str], str | None]:
    """The run's domains, and why `what` cannot compare them where they are fewer than two (the tokens
    table read as it is: `need_domains` and `one_domain_note` check first that the run has not lost it)."""
    domains = [d for (d,) in run.sql("select distinct domain from tokens order by 1").fetchall()]
    if len(domains) >= 2:
        return domains, None
    return domains, (f"{what} compares domains, and this run has {'one: ' + domains[0] if domains else 'no tokens'}. "
                     "Record a corpus with several domains (folders, or a `domain` field), or point "
                     "$DSV3_NOTEBOOK_RUN at such a run")


def _tokens_lost(run, what: str) -> str | None:
    """Why `what` is not measured where the run (complete) has lost its tokens table (its folder, or a rank's
    parts: `probe.run.lost_tables`), else None. The notes read the table and raised DuckDB's 'Invalid Input
    Error' wrapping the loss halfway through a notebook (latent_kv, mtp: they read tokens for this part alone)."""
    from analyses.metrics._common import not_lost
    from probe.writer import RunError

    try:
        not_lost(run, "tokens")
    except RunError as e:
        return f"{what} reads the run's tokens table, which it has lost ({e})"
    return None


def heldout_note(run, what: str) -> str | None:
    """None when two domains or more of the run's tokens have two windows or more, or the run has fewer
    than two domains (`one_domain_note` says that); else why `what`, a held-out score of the domain, is
    not measured. The split (`analyses.metrics.heldout_windows`: every 5th window of each domain, its
    first included) holds a domain of one window out whole, so the scores leave it out, never trained
    on, and name it beside their figure (`left_out`, `analyses.metrics.left_out_note`; a run of 2,000
    tokens over five domains read "a linear probe reads the domain at 58.5%" with two of them scored
    untrained, a tour): with fewer than two domains left there is nothing to tell apart. A tokens table the
    run has lost is a reason too (`_tokens_lost`)."""
    return _tokens_lost(run, what) or _thin_domains(run, what)


def _thin_domains(run, what: str) -> str | None:
    """`heldout_note`'s reason but a lost tokens table (`need_heldout` and `heldout_note` check that first)."""
    from analyses.metrics._common import listed

    n = dict(run.sql("select domain, count(distinct seq_id) from tokens group by 1").fetchall())
    thin = sorted(d for d, w in n.items() if w < 2)
    if len(n) < 2 or len(n) - len(thin) >= 2:
        return None
    return (f"{what} holds out one window in five of each domain, and {listed(thin)} "
            f"{'has' if len(thin) == 1 else 'have'} one window only: held out whole and never trained on, "
            f"which leaves {len(n) - len(thin)} domain{'' if len(n) - len(thin) == 1 else 's'} to train on, and "
            "it needs two. Record more tokens (two windows of every domain), or point $DSV3_NOTEBOOK_RUN at "
            "such a run")


def left_out_said(result) -> str:
    """`analyses.metrics.left_out_note` of a held-out result (its `left_out` column), as a Markdown line to
    say beside its figure and in the conclusions; "" when it left no domain out."""
    from analyses.metrics import left_out_note

    return left_out_note(result) or ""


def need_heldout(run, what: str) -> None:
    """Raise `heldout_note`'s reason as one clear error, for the first cell of a notebook whose question is
    a held-out score of the domain (expert_paths)."""
    from analyses.metrics import MetricsError
    from analyses.metrics._common import not_lost

    not_lost(run, "tokens")  # as need_domains
    why = _thin_domains(run, what)
    if why:
        raise MetricsError(f"{run.path}: {why}")


def need_tables(run, what: str, *tables: str) -> None:
    """Raise one clear error, for a notebook's first cell, when the run has no rows in one of `tables`,
    which `what` reads: the cause as run.json records it (an SGLang import, --no-mtp, --no-kv-stats,
    --router-logits none). latent_kv, mtp, token_dependence and expert_paths stopped in a later cell
    on such runs, and specialisation on a stat import said it "has no tokens", not which table it lacks
    (a tour)."""
    from analyses.metrics import MetricsError
    from analyses.metrics._common import need_rows

    for table in tables:
        try:
            need_rows(run, table)
        except MetricsError as e:
            raise MetricsError(f"{e}; {what} reads it") from None


def tables_note(run, what: str, *tables: str) -> str | None:
    """None when the run has rows in every one of `tables`; else `need_tables`' reason, for a notebook to
    show in place of `what`, a part of it that reads them, and run on (specialisation refused a run
    recorded with --router-logits none in its first cell, though its domain x expert part reads
    `expert_load` alone; a tour)."""
    return _refusal(need_tables, run, what, *tables)


def model_note(run, what: str) -> str | None:
    """None when `what`, a part of a notebook that runs the run's checkpoint over the run's own recorded
    tokens, can (`need_model`'s checks, the corpus left out); else why not, for the notebook to show in its
    place and run on (latent_kv's domain probe stopped halfway with "CheckpointError: ...: no such
    directory" on a run whose checkpoint was gone, and would have probed a changed one silently; a tour)."""
    return _refusal(need_model, run, what, on_corpus=False)


def _refusal(need, *args, **kwargs) -> str | None:
    """The MetricsError a notebook's `need_*` check raises, as the note a notebook shows in its part's place
    (None: nothing refused)."""
    from analyses.metrics import MetricsError

    try:
        need(*args, **kwargs)
    except MetricsError as e:
        return str(e)
    return None


def need_model(run, what: str, files: bool = True, tokenizer: bool = False, on_corpus: bool = True) -> None:
    """Raise one clear error, for a notebook's first cell, when `what` (a part that runs the run's
    checkpoint on its corpus: ablation, causal importance, steering, the run-vs-run variant) has no
    model or corpus to run: an import (SGLang's dumps name neither: ablation and run_vs_run raised a
    KeyError on 'checkpoint', causal_importance advised flags a notebook has none of; a tour), or a
    run whose checkpoint or corpus is gone or changed (`probe.job.run_inputs`' checks, with the advice of
    `_notebook_advice`: they said "pass --ckpt", a flag a notebook has none of, and not which part needed it;
    a tour; `files=False`: only that run.json names both, for compare_run, whose variant checkpoint may be
    written already). `tokenizer`: `what` reads the corpus with the run's tokenizer (ablation's sweep, causal
    importance and steering: their jobs refused one gone or changed in a later cell, with "pass --tokenizer";
    a tour), checked too (`probe.job.run_tokenizer`). `on_corpus=False`: `what` runs the checkpoint on the run's
    own recorded tokens, not on its corpus (latent_kv's probe), so the corpus is not checked."""
    from analyses.metrics import MetricsError
    from probe.job import run_inputs, run_tokenizer

    info = run.info or {}
    if info.get("kind") == "import":
        name = (info.get("source") or {}).get("name", "import")
        raise MetricsError(f"{run.path}: {what} runs the run's checkpoint on its corpus, and this run is an import "
                           f"({name}) with neither; point $DSV3_NOTEBOOK_RUN at a run recorded with `dsv3-probe "
                           "record`")
    named = [(info.get(k) or {}).get("path") for k in ("checkpoint", "corpus")]
    advice = partial(_notebook_advice, what, on=" on its corpus" if on_corpus else "")
    unchecked = None if on_corpus else (named[1] or "(not read)")  # given, so run_inputs leaves it be
    ckpt, corpus = (run_inputs(info, str(run.path), None, unchecked, error=MetricsError, run=run.path,
                               advice=advice) if files else named)
    if not (ckpt and corpus):
        lost = " and no ".join(k for k, v in (("checkpoint", ckpt), ("corpus", corpus)) if not v)
        raise MetricsError(f"{run.path}: {what} runs the run's checkpoint on its corpus, and run.json names no "
                           f"{lost}; point $DSV3_NOTEBOOK_RUN at a run recorded with `dsv3-probe record`")
    if files and tokenizer:
        run_tokenizer(info, str(run.path), MetricsError, advice=advice, ckpt=ckpt)


def _notebook_advice(what: str, lost: str, why: str, on: str = " on its corpus") -> str:
    """`probe.job.run_inputs`' advice for a notebook, which has no --ckpt or --corpus: `what` (the
    notebook's part) needs the run's model, so another run, or the run's files put back. `lost`: the
    checkpoint, the corpus, both, a training run's model, or the tokenizer (`probe.job.run_tokenizer`'s);
    `why`: their reason; `on`: what `what` runs the checkpoint on, as said."""
    other = "point $DSV3_NOTEBOOK_RUN at a run"
    verb = "are" if " and " in lost else "is"
    how = {"unwritten": f"{other} whose model is written",
           "unnamed": f"{other} recorded with `dsv3-probe record`",
           "gone": f"{other} whose {lost} {verb} there, or restore the files where run.json names them",
           "changed": f"{other} recorded on this {lost}, or restore the {lost} the run was recorded with"}[why]
    read = ", read with the tokenizer it was recorded with" if lost == "tokenizer" else ""
    return f"{what} runs the run's checkpoint{on}{read}: {how}"


def latent_summary(kv, stats) -> str:
    """The latent_kv notebook's conclusion (markdown): the effective-rank and energy ranges over the
    layers with finite latents of two tokens or more, the layers without (a diverged checkpoint: the
    probe writes NaN there; the notebook raised deep in pandas, or left the layer out unsaid; a
    review; under two tokens a layer, whose covariance is zero: it read "ranges from 0.0", a tour),
    and the cache bytes. `kv`: `analyses.report.latent_rank(run)`; `stats`: the `kv_stats` rows."""
    import numpy as np

    few_mask = kv.tokens < 2 if "tokens" in kv else np.zeros(len(kv), bool)
    finite = kv[np.isfinite(kv.effective_rank.astype(float)) | few_mask]  # latent_rank: NaN under two tokens
    lines = []
    bad = sorted(int(x) for x in set(kv.layer) - set(finite.layer))
    if bad:
        lines.append(f"- Layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}: non-finite latents (NaN "
                     "or inf) in this recording, so no effective rank or spectrum.")
    few = finite[finite.tokens < 2] if "tokens" in finite else finite.iloc[:0]
    if len(few):
        n = int(few.tokens.min())
        lines.append(f"- Layer{'s' if len(few) > 1 else ''} {', '.join(str(int(x)) for x in few.layer)}: no effective "
                     f"rank or energy components (n/a): a covariance needs two tokens or more, and the run recorded "
                     f"{n} token{'' if n == 1 else 's'} a layer (record with a larger `--max-tokens`).")
        finite = finite.drop(few.index)
    if finite.empty and not len(few):
        lines.append("- No layer has finite latents: there is no rank to summarise.")
    elif not finite.empty:
        lo, hi = finite.loc[finite.effective_rank.idxmin()], finite.loc[finite.effective_rank.idxmax()]
        lines.append(f"- Effective rank of c_kv ranges from {lo.effective_rank:.1f} (layer {int(lo.layer)}) to "
                     f"{hi.effective_rank:.1f} (layer {int(hi.layer)}) out of {int(kv.latent_dim.max())} channels "
                     f"({finite.rank_share.mean():.0%} on average).")
        lines.append(f"- 99% of the energy needs {int(finite.energy99.min())} to {int(finite.energy99.max())} "
                     f"components; 90% needs {int(finite.energy90.min())} to {int(finite.energy90.max())}.")
    c = stats.iloc[0]
    lines.append(f"- Cache per token and layer: {int(c.bytes_absorb)} bytes absorbed vs {int(c.bytes_naive)} naive "
                 f"MLA vs {int(c.bytes_mha)} standard MHA ({c.bytes_mha / c.bytes_absorb:.1f}x smaller than MHA).")
    return "\n".join(lines)


def cumulative_energy(spec):
    """The latent_kv notebook's curves: per layer of `kv_spectrum` rows (layer, component, eigenvalue),
    `component` counted from 1 and `share` the cumulative energy share sum_{j <= k} lambda_j / sum lambda
    (negative rounding clipped to 0). A layer whose covariance holds no energy (under two tokens: zero)
    is left out: its curve was 0 / 0, NaN throughout, drawn as an empty chart with a RuntimeWarning (a
    tour of `record --max-tokens 1`)."""
    import numpy as np
    import pandas as pd

    rows = []
    for layer, g in spec.sort_values(["layer", "component"]).groupby("layer"):
        e = np.clip(g.eigenvalue.to_numpy(np.float64), 0, None)
        if e.sum() > 0:
            rows.append(pd.DataFrame({"layer": layer, "component": np.arange(1, len(e) + 1),
                                      "share": np.cumsum(e) / e.sum()}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["layer", "component", "share"])


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v in (None, ""):
        return default
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"${name}={v!r}: expected an integer") from None
    if n < 1:
        raise ValueError(f"${name}={v!r}: must be >= 1")
    return n


def balanced_corpus(corpus: str | Path, tokenizer: str | Path, tokens_per_domain: int,
                    dest_dir: str | Path) -> Path:
    """A JSONL sample of `corpus` with about `tokens_per_domain` tokens of every domain (documents
    taken in corpus order, the last one of a domain cut at a token boundary), the domains'
    documents interleaved (1st of each domain, then the 2nd, ...). Needed because the bundled
    corpus is sorted by domain, so a plain token limit would keep only its first domain.
    Deterministic; written once per (corpus content, tokenizer, budget) under a temporary name,
    then renamed; returns its path. A corpus or tokenizer file that is missing or unreadable (or an
    empty path), or a `tokens_per_domain` that is not a whole number >= 1, is a one-line
    `probe.corpus.CorpusError` naming it (2.5 or '3' failed in a TypeError deep in the sampling, a
    NaN wrote a sample of whole documents; a tour)."""
    from tokenizers import Tokenizer

    from analyses.metrics._common import whole_count
    from probe.corpus import CorpusError, fingerprint, iter_documents
    from probe.errors import first_line, given_path
    from probe.writer import replacing

    tokens_per_domain = whole_count(tokens_per_domain, "tokens_per_domain", error=CorpusError,
                                    why=" (the tokens of each domain to take)")
    corpus, tokenizer = given_path(corpus, "corpus", CorpusError), given_path(tokenizer, "tokenizer", CorpusError)
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus not found")
    if not tokenizer.is_file():  # fingerprint() raised FileNotFoundError, or hashed a whole folder
        raise CorpusError(f"{tokenizer}: " + ("a folder, not a tokenizer.json file" if tokenizer.is_dir()
                                             else "tokenizer not found"))
    key = digest(fingerprint(corpus), fingerprint(tokenizer), tokens_per_domain)
    out = Path(dest_dir) / f"{corpus.stem}-{tokens_per_domain}per-domain-{key}.jsonl"
    if out.exists():
        return out
    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception ('EOF while parsing ...')
        from model.checkpoint_files import lfs_pointer_note

        raise CorpusError(f"{tokenizer}: not a readable tokenizer ({first_line(e)}){lfs_pointer_note(tokenizer)}") \
            from None
    picked: dict[str, list[tuple[str, str]]] = defaultdict(list)
    have: dict[str, int] = defaultdict(int)
    for d in iter_documents(corpus):
        left = tokens_per_domain - have[d.domain]
        if left <= 0 or not d.text:
            continue
        enc = tok.encode(d.text, add_special_tokens=False)
        text = d.text
        if len(enc.ids) > left:
            text = d.text[: enc.offsets[left - 1][1]]
        picked[d.domain].append((d.doc_id, text))
        have[d.domain] += min(left, len(enc.ids))
    if not picked:
        raise CorpusError(f"{corpus}: corpus has no documents")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(v) for v in picked.values())
    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            for dom in sorted(picked):
                if i < len(picked[dom]):
                    doc_id, text = picked[dom][i]
                    f.write(json.dumps({"id": doc_id, "domain": dom, "text": text}, ensure_ascii=False) + "\n")
    return out


def domains_of(corpus: str | Path) -> list[str]:
    from probe.corpus import iter_documents

    return sorted({d.domain for d in iter_documents(corpus)})


def record_small(out: str | Path, max_tokens: int, ckpt: str | Path | None = None,
                 corpus: str | Path | None = None, progress: bool = False, **options) -> Path:
    """Record a small run of about `max_tokens` tokens, split evenly between the domains of `corpus`
    (a `balanced_corpus` sample; default: the bundled model and validation corpus), into `out`."""
    from probe.record import DEFAULT_CKPT, DEFAULT_CORPUS, RecordError, RecordOptions, record

    out = Path(out)
    ckpt = Path(ckpt) if ckpt else DEFAULT_CKPT
    if not (ckpt / "config.json").exists():
        raise RecordError(f"{ckpt}: no checkpoint there (config.json missing); the bundled model may not be "
                          "trained yet, or pass a checkpoint")
    corpus = Path(corpus) if corpus else DEFAULT_CORPUS
    tokenizer = Path(options.get("tokenizer") or ckpt / "tokenizer.json")
    if not tokenizer.exists():
        raise RecordError(f"{tokenizer}: no tokenizer (is the checkpoint {ckpt} there?)")
    per = max(1, max_tokens // max(1, len(domains_of(corpus))))
    sample = balanced_corpus(corpus, tokenizer, per, out.parent / ".corpus-samples")
    opts = RecordOptions(ckpt=str(ckpt), corpus=str(sample), out=str(out), progress=progress, **options)
    return record(opts)


def _complete(path: Path) -> bool:
    try:
        return json.loads((path / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def _env_path(env: str) -> Path:
    """A run path from the environment ($DSV3_NOTEBOOK_RUN, $DSV3_NOTEBOOK_COMPARE_RUN) as an absolute
    path: a relative one that is not under the working directory is the repository root's
    (`runs/model-val` from a kernel in analyses/notebooks/ recorded a new run there, silently,
    instead of opening the user's; a review)."""
    path = Path(env).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO / path).resolve()


def env_run(var: str):
    """The run the environment variable `var` names, as a `probe.Run` (a relative path read as
    $DSV3_NOTEBOOK_RUN's is), or None when it is unset or empty."""
    value = os.environ.get(var)
    if not value:
        return None
    import probe

    return probe.open_run(_env_path(value))


def default_run(max_tokens: int | None = None):
    """The run the notebooks analyse, as a `probe.Run`:

    1. $DSV3_NOTEBOOK_RUN when set (recorded there, small, on the bundled model when missing; a run
       there that is not complete is analysed as it is, never recorded over); a relative path is
       read from the working directory when it is there, else from the repository root (Jupyter
       starts a notebook's kernel in the notebook's folder, not where the server was launched);
    2. else the default run `runs/model-val` when it is complete;
    3. else a small run `runs/model-val-<N>tok` of N = `max_tokens` ($DSV3_NOTEBOOK_MAX_TOKENS,
       default 40000) tokens of the bundled validation corpus, recorded now if missing (about a
       minute on two cores)."""
    import probe

    n = max_tokens or env_int("DSV3_NOTEBOOK_MAX_TOKENS", SMALL_TOKENS)
    env = os.environ.get("DSV3_NOTEBOOK_RUN")
    if env:
        path = _env_path(env)
    elif _complete(DEFAULT_RUN):
        path = DEFAULT_RUN
    else:
        path = DEFAULT_RUN.with_name(f"{DEFAULT_RUN.name}-{n}tok")
    if env and path.exists():  # the user's run: an interrupted 671B recording was replaced by 2,000
        run = probe.open_run(path)  # tokens of the bundled model (found by a review); never recorded over
        if run.status != "complete":
            print(f"note: {path} is {run.status!r}: the notebooks analyse the tokens recorded so far")
    else:
        if not _complete(path):
            print(f"recording a small run ({n} tokens) into {path} ...")
            record_small(path, n, overwrite=path.exists())
        run = probe.open_run(path)
    print(f"run {run.path}: {run.info.get('checkpoint', {}).get('path')} on {run.info.get('corpus', {}).get('path')}, "
          f"tables {run.tables}")
    return run


def compare_run(run, variant: str = "no-router-bias", out: str | Path | None = None, max_tokens: int | None = None):
    """A run of a variant of `run`'s checkpoint (`analyses.variants`) over the same windows (same
    corpus, tokenizer and recording options), as a `probe.Run`; recorded (and the variant written)
    beside the run when missing: `<run>-<variant>` and `<run>-<variant>-ckpt`. run: a `probe.Run` or
    its directory. max_tokens: only the run's first windows (the same ones: windows come in a fixed
    order), for a quicker comparison."""
    import probe
    from analyses.metrics import MetricsError
    from probe.job import run_tokenizer
    from probe.record import RecordOptions, record

    from .variants import without_router_bias

    if variant != "no-router-bias":
        raise ValueError(f"variant {variant!r}: only no-router-bias is known")
    if isinstance(run, (str, Path)):  # a run directory, as the metrics take one ('str' has no attribute 'tables')
        run = probe.open_run(run)
    if "routing" not in run.tables:  # before recording a whole variant run that cannot be compared (a review)
        from analyses.metrics._common import RECORD_AGAIN, unrecorded_why

        # the cause as run.json records it, not a guess at --router-logits none (a tour); where it already
        # says how to record the run again, that advice is not repeated
        why = unrecorded_why(run, "routing")
        fix = ", or" if RECORD_AGAIN in why else "; record the run with routing, or"
        raise MetricsError(f"{run.path}: no routing table to compare ({why}){fix} point $DSV3_NOTEBOOK_RUN at one "
                           "that has it")
    src = Path(run.path)
    out = Path(out) if out else src.with_name(f"{src.name}-{variant}")
    if not _complete(out):
        what = "recording the comparison run (the variant's checkpoint over the run's windows)"
        need_model(run, what, files=False)
        # run.json's whole path, before the variant is written: the option as typed is relative to where the
        # run was recorded, not to the kernel's folder, and record's refusal named its --tokenizer (a tour)
        tok = run_tokenizer(run.info, str(run.path), MetricsError, advice=partial(_notebook_advice, what))
        ckpt = out.with_name(f"{out.name}-ckpt")
        if not (ckpt / "config.json").exists():
            without_router_bias(run.info["checkpoint"]["path"], ckpt, overwrite=ckpt.exists())
        o = run.info.get("options") or {}
        keep = {k: o[k] for k in ("max_tokens", "order", "seq_len", "batch_size", "add_bos", "dtype", "gemm")
                if o.get(k) is not None} | ({"tokenizer": tok} if tok else {})
        if max_tokens is not None:
            keep["max_tokens"] = min(max_tokens, keep.get("max_tokens") or max_tokens)
        print(f"recording {out}: the {variant} variant of {run.info['checkpoint']['path']} over the same windows ...")
        record(RecordOptions(ckpt=str(ckpt), corpus=run.info["corpus"]["path"], out=str(out), progress=False,
                             overwrite=out.exists(), kv_stats=False, mtp=False, **keep))
    return probe.open_run(out)


def digest(*parts) -> str:
    """A short stable hash of `parts` (file names of cached results)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
