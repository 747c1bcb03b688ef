"""`python -m analyses.report`: the command line (usage: the package docstring, analyses/report/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from probe.job_signals import quiet_start

with quiet_start(__name__ == "__main__"):  # Ctrl-C while the command imports: one line, not a traceback
    import analyses.report as package
    from analyses.notebook_utils import DEFAULT_RUN
    from probe.bundled_corpus import check_not_a_built_corpus
    from probe.job import (MODEL_FLAGS, add_model_flags, check_file_replaceable, check_not_an_input, check_out_parent,
                           os_refusal, path_text, run_inputs, run_tokenizer)
    from probe.job_exit import (closed_pipe_quiet, exit_ranks, job_error, launch_rank0, one_line_when_a_peer_is_lost,
                                table_errors)
    from probe.teardown import quick_teardown

    from . import data as rd
    from .render import ReportError, check_run, compute, figures, print_text, run_notes, write_findings, write_html


def fractions_arg(text: str) -> list[float]:
    try:
        out = [float(eval_fraction(x)) for x in text.split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated fractions like 1/16,1/8,0.25") from None
    if not out or any(not 0 < f <= 1 for f in out):
        raise argparse.ArgumentTypeError(f"{text!r}: fractions must be in (0, 1]")
    return out


def eval_fraction(x: str) -> float:
    x = x.strip()
    if "/" in x:
        a, b = x.split("/", 1)
        return float(a) / float(b)
    return float(x)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analyses.report", description=package.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=path_text,
                   help=f"run directory (default {DEFAULT_RUN.relative_to(DEFAULT_RUN.parents[1])}, "
                        "recorded with the bundled model and validation corpus if missing)")
    p.add_argument("--out", type=path_text, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--findings", type=path_text,
                   help="also write the measured numbers as Markdown here (e.g. analyses/FINDINGS.md)")
    p.add_argument("--max-tokens", type=int, default=20_000,
                   help="tokens the ablations evaluate (default 20000), split evenly between the run's domains, "
                        "of its own windows: within the --max-tokens it was recorded with, as the other sections")
    p.add_argument("--fractions", type=fractions_arg, default=list(rd.FRACTIONS),
                   help="fractions of the routed experts to mask per layer, each a whole number of experts "
                        "(rounded half up, at least one; default 1/16,1/8,1/4)")
    p.add_argument("--seeds", type=int, default=len(rd.SEEDS),
                   help=f"random-masking seeds per fraction (default {len(rd.SEEDS)})")
    p.add_argument("--rank-by", choices=rd.RANK_BY, default="eval",
                   help="rank the most-used experts by their load on the evaluated tokens (eval, default; the "
                        "whole-run ranking is then shown too) or by the run's expert_load (run)")
    p.add_argument("--domain-top", type=int, help="experts per layer masked in the per-domain ablation (default E/8)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass in the ablations (default: the run's)")
    p.add_argument("--skip-ablation", action="store_true",
                   help="leave out the sections that run the model: ablations, causal importance, steering (fast)")
    p.add_argument("--compare", metavar="RUN", type=path_text,
                   help="a second run over the same windows (another checkpoint of the same model, or this one "
                        "changed): the 'Run vs run' section; the run itself or a copy of it (the same recording, or "
                        "the same SGLang dumps imported again) is refused")
    p.add_argument("--importance-tokens", type=int, default=1000,
                   help="tokens per domain the causal-importance and steering sections evaluate (default 1000; "
                        "0 leaves both out), of the run's own windows: within its --max-tokens, which they "
                        "inherit, and only the domains it holds; the summary says the tokens scored per domain "
                        "and warns under 100")
    p.add_argument("--ckpt", type=path_text,
                   help="checkpoint the model sections run (default: the run's own; needed where it has "
                        "moved or changed, or a training run's model is not written yet)")
    p.add_argument("--corpus", type=path_text, help="corpus the model sections evaluate (default: the run's own)")
    p.add_argument("--tokenizer", type=path_text,
                   help="tokenizer.json the model sections read the corpus with, and the token texts of the "
                        "expert paths and run vs run are read with (default: the run's own; needed where the file "
                        "it was recorded with has moved or changed, else those texts are token ids)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_flags(p.add_argument_group("how the ablations run the model (under torchrun: replicas of "
                                         "--model-parallel ranks, as analyses.ablate)"))
    return p


@closed_pipe_quiet
@one_line_when_a_peer_is_lost
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser().parse_args(argv)
    from analyses.ablate import AblationError
    from analyses.metrics import MetricsError
    from probe.corpus import CorpusError
    from probe.errors import RecordError
    from probe.writer import RunError

    try:
        _check_numbers(ns)
        if ns.corpus and not ns.skip_ablation:  # the folder of a built corpus: refused by the first ablation
            check_not_a_built_corpus(Path(ns.corpus), ReportError)  # job after minutes of work; now at once
        other = None
        if ns.compare:  # before the default run is recorded and minutes of ablations run, not after
            try:
                other = check_run(Path(ns.compare))
            except (ReportError, RunError) as e:  # the flag named: 'PATH: no such run directory' named no run
                raise ReportError(f"--compare {e}") from None
        if ns.run is None and not (DEFAULT_RUN / "run.json").exists():
            _record_default_run(ns)
        run_dir = Path(ns.run) if ns.run else DEFAULT_RUN
        run = check_run(run_dir)
        if ns.compare:  # other windows, or no routing: refused now, not after the ablations (a review)
            from analyses.metrics import check_comparable

            _check_not_itself(run, other, Path(ns.compare))
            _check_routed(run, other, Path(ns.compare))
            _check_same_experts(run, other, Path(ns.compare))  # before check_comparable's own wording of it
            check_comparable(run, other)
        for note in run_notes(run, ns):
            print(f"note: {note}", file=sys.stderr)
        if not ns.skip_ablation:  # the model sections' checkpoint and corpus (after run_notes: an import skips them),
            # checked once here and handed to every ablation, importance and steering job, which then
            # read the checkpoint's weights sample no more
            ns.ckpt, ns.corpus = run_inputs(run.info, str(run_dir), ns.ckpt, ns.corpus, ReportError)
            # the run's tokenizer, gone or changed: its first job refused it, after the report's checks, with
            # 'pass --tokenizer', a flag the report had none of (a tour)
            ns.tokenizer = ns.tokenizer or run_tokenizer(run.info, str(run_dir), ReportError, ckpt=ns.ckpt)
        html, findings = _outputs(ns, run_dir, run.info)  # before minutes of ablations, not after
        if ns.skip_ablation and (unused := _model_section_flags(ns)):  # dropped without a word (a tour);
            # said after the outputs are checked, so that a refusal stays the one line printed
            print(f"note: {', '.join(unused)} change{'s' * (len(unused) == 1)} nothing: the sections that run the "
                  f"model are left out ({getattr(ns, 'skip_reason', None) or '--skip-ablation'})", file=sys.stderr)
        t = time.time()
        writer = launch_rank0()  # under torchrun every rank runs the ablations; one writes
        r = compute(run_dir, ns, writer)
        if writer:
            _write(r, html, findings, argv, t)
    except (ReportError, AblationError, MetricsError, CorpusError, RecordError, RunError, ValueError, OSError,
            *table_errors()) as e:
        return job_error(e, " ".join(str(e).split()))
    return exit_ranks(0)


def _check_not_itself(run, other, other_dir: Path) -> None:
    """--compare of the run with itself, or with a copy of its recording (`_same_recording`), is refused:
    every agreement is 1.000 by construction, and the section did not say it was the same run (a tour)."""
    if Path(run.path).resolve() == other_dir.resolve():
        what = "this run itself"
    elif (why := _same_recording(run.info, other.info)) is not None:
        what = f"a copy of this run, {run.path} ({why})"
    else:
        return
    raise ReportError(f"--compare {other_dir}: {what}, whose routes agree with its own everywhere by construction; "
                      "compare a run of another checkpoint over the same windows (e.g. python -m analyses.variants "
                      "no-router-bias, then record it)")


def _same_recording(a: dict, b: dict) -> str | None:
    """Why run.json records `b` as the recording of `a` (None: another one). A whole run.json
    compared missed a copied run directory once either changed: the paths a --resume or a job
    rewrites (checkpoint, corpus, --out), the parts, tables and status later jobs note (the report's
    own ablations). What a recording keeps from its start is compared instead: its start time (kept
    across --resume), its training run id, the checkpoint's content (fingerprint and weights sample),
    the corpus's and tokenizer's fingerprints, the model and the windows planned. An import's start
    time is the import's: two imports of the same dump files (`source`, the files by name, less the
    placement --gpus picks) are one recording."""
    from probe.ckpt_identity import same_checkpoint

    if a.get("kind") == b.get("kind") == "import":
        def dumps(info):  # the files by name (SGLang's hold the dump's time): moved dumps are the same dumps
            src = {k: v for k, v in (info.get("source") or {}).items() if k != "placement"}
            return src | {"files": [Path(f).name for f in src.get("files") or []]} if src else {}
        return "the same dump files, imported again" if dumps(a) and dumps(a) == dumps(b) else None

    def fingerprint(info, key):
        v = info.get(key)
        return v.get("fingerprint") if isinstance(v, dict) else v
    same = a.get("started") is not None and same_checkpoint(a.get("checkpoint") or {}, b.get("checkpoint") or {}) \
        and all(a.get(k) == b.get(k) for k in ("started", "kind", "run_id", "model_args", "planned")) \
        and all(fingerprint(a, k) == fingerprint(b, k) for k in ("corpus", "tokenizer"))
    return "the same recording: its start time, checkpoint, corpus and tokenizer" if same else None


def _check_routed(run, other, other_dir: Path) -> None:
    """Run vs run compares the routing tables: a run without one is refused by --compare and its cause
    from its run.json (the metrics' 'run has no routing table (... --router-logits none?)' named neither
    the flag nor which run, and guessed where run.json says, a tour)."""
    from .research import lost_words, unrecorded_why

    for r, who in ((run, "this run"), (other, "the compared run")):
        if "routing" not in r.tables:
            why = (f"run.json lists routing but the run has {lost_words(r, ['routing'], 'it')}"
                   if "routing" in r.lost_tables else unrecorded_why(r, "routing"))
            raise ReportError(f"--compare {other_dir}: {who}, {r.path}, has no routing table ({why}); run vs run "
                              "compares the two runs' routes")


def _check_same_experts(run, other, other_dir: Path) -> None:
    """Run vs run compares expert ids by index: runs of models with other expert counts (the ids name
    different experts; agreement of 0.03 read as a measured disagreement, a tour) are refused."""
    from probe.model_shape import ROUTING, model_differences

    for d in model_differences(run, other, ROUTING)[:1]:  # the first, as before
        raise ReportError(f"--compare {other_dir}: its model routes to {d.b} {d.words}, this run's to {d.a}: run "
                          "vs run compares expert ids by index, which name the same experts only in two checkpoints "
                          "of one model")


def _model_section_flags(ns: argparse.Namespace) -> list[str]:
    """The flags given (other than their defaults) that only the sections running the model read (not
    --tokenizer: the token texts of the paths and run vs run sections are read with it too)."""
    defaults = parser()
    return [f"--{k.replace('_', '-')}" for k in ("max_tokens", "fractions", "seeds", "domain_top", "batch_size",
                                                 "importance_tokens", "ckpt", "corpus", *MODEL_FLAGS)
            if getattr(ns, k) != defaults.get_default(k)]


def _check_numbers(ns: argparse.Namespace) -> None:
    """The numeric flags, before any work."""
    if ns.max_tokens is not None and ns.max_tokens < 1:
        raise ReportError(f"--max-tokens {ns.max_tokens}: must be >= 1")
    if ns.importance_tokens < 0:
        raise ReportError(f"--importance-tokens {ns.importance_tokens}: must be >= 0")
    if ns.seeds < 1:
        raise ReportError(f"--seeds {ns.seeds}: must be >= 1")
    if ns.domain_top is not None and ns.domain_top < 1:
        raise ReportError(f"--domain-top {ns.domain_top}: must be >= 1")


def _record_default_run(ns: argparse.Namespace) -> None:
    """No RUN given and no default run yet: record it (the bundled model on its whole validation corpus)."""
    from probe.corpus import CorpusError
    from probe.record import RecordError, RecordOptions, record

    if DEFAULT_RUN.exists():  # record's own advice, "pass --overwrite", named a flag the report does not have
        raise ReportError(f"{DEFAULT_RUN}: the default run's folder exists but holds no run (no run.json), and the "
                          "report does not replace it: move it away, or pass RUN")
    from .research_model import INPUT_FLAGS

    # the model sections ran these in place of the run's own, over windows the run never read (a review)
    # (--tokenizer with --skip-ablation too: the token texts are read with it)
    given = [(f"--{k}", getattr(ns, k)) for k in INPUT_FLAGS
             if getattr(ns, k) is not None and (k == "tokenizer" or not ns.skip_ablation)]
    if given:
        flag, value = given[0]
        raise ReportError(f"{flag} {value}: no RUN given, and the default run {DEFAULT_RUN} would be recorded now of "
                          "the bundled model, on its corpus with its tokenizer, not with this; pass RUN, a run "
                          f"recorded with {flag}")
    print(f"no default run yet: recording {DEFAULT_RUN} (bundled model, whole validation corpus) ...",
          file=sys.stderr)
    try:
        record(RecordOptions(out=str(DEFAULT_RUN), progress=ns.progress, **{k: getattr(ns, k) for k in MODEL_FLAGS}))
    except (RecordError, CorpusError) as e:
        raise ReportError(f"cannot record the default run ({e}); or pass RUN, a run recorded with "
                          "`dsv3-probe record --ckpt DIR`") from None


def _outputs(ns: argparse.Namespace, run_dir: Path, info: dict) -> tuple[Path, Path | None]:
    """(the HTML report's path, the findings' or None), each checked writable, distinct and none of the
    files the run was recorded from."""
    html, findings = Path(ns.out) if ns.out else run_dir / "report.html", ns.findings and Path(ns.findings)
    for flag, value in (("--out", ns.out), ("--findings", ns.findings)):  # `reports/` wrote a file named
        if value and value.endswith(("/", os.sep)):  # reports (a review)
            raise ReportError(f"{flag} {value}: names a directory; give the file to write, e.g. "
                              f"{value}{'report.html' if flag == '--out' else 'findings.md'}")
    inputs = {"the run's corpus": _path(info.get("corpus")), "the run's tokenizer": _path(info.get("tokenizer")),
              "--corpus": ns.corpus, "--tokenizer": ns.tokenizer}
    check_out_parent(html, "--out", file=True)
    check_not_an_input(html, inputs, "--out", ReportError)
    check_file_replaceable(html, (b"<title>DeepSeek-V3 probe findings</title>",), "a report", "--out", ReportError)
    if findings:
        check_out_parent(findings, "--findings", file=True)
        check_not_an_input(findings, inputs, "--findings", ReportError)
        check_file_replaceable(findings, (b"# Findings on ",), "a findings file", "--findings", ReportError)
        if findings.resolve() == html.resolve():  # the findings were written over the report (a review)
            raise ReportError(f"--findings {findings}: the same file as --out; give each its own")
    return html, findings or None


def _path(entry) -> str | None:
    """The path a run.json entry ({"path": ..., "fingerprint": ...}) names, if any."""
    return entry.get("path") if isinstance(entry, dict) and isinstance(entry.get("path"), str) else None


def _write(r: dict, html: Path, findings: Path | None, argv: list[str], t0: float) -> None:
    """Write the report (and the findings), then print its text: the files first, so that a reader that
    stops reading the text (`| head`) does not cost the report."""
    figs = figures(r)
    with os_refusal(f"--out {html}: cannot write it there", ReportError):  # checked above; not all foreseeable
        out = write_html(r, figs, html, argv)
    md = None
    if findings:
        with os_refusal(f"--findings {findings}: cannot write it there", ReportError):
            md = write_findings(r, figs, findings, argv)
    print_text(r, figs)
    print(f"\nwrote {out} ({time.time() - t0:.0f} s" +
          (f", ablations {r['ablation_seconds']:.0f} s)" if "ablation_seconds" in r else ")"))
    if md:
        print(f"wrote {md}")


if __name__ == "__main__":
    quick_teardown()
    sys.exit(main())
