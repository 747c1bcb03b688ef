"""Figures of the bundled model on the validation split, written to data/REPORT.md.

    python -m data.report                                   # data/model vs runs/nobal2/model
    python -m data.report --model data/model --baseline runs/nobal2/model --max-tokens 60000

It records both models on `data/corpus/val.jsonl` with the probe (`--runs-dir`/report-*), then prints and
writes: validation loss per domain against a unigram baseline fitted on the training split;
MaxVio_global per MoE layer for the shipped (bias-balanced) model and for the baseline trained
with the same budget and no balancing; MTP teacher-forced agreement; NMI between domain and chosen
expert per layer; and a greedy continuation of a short prompt from each domain. Every figure is
measured by this command; nothing in REPORT.md is written by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from probe.bundled_corpus import read_documents
from probe.corpus import CorpusError

if TYPE_CHECKING:
    from probe.run import Run  # pyarrow: imported when a run is recorded, not with this module

REPO = Path(__file__).resolve().parent.parent


def record_run(ckpt: Path, corpus: Path, out: Path, max_tokens: int | None, seq_len: int) -> Run:
    import probe
    from probe.record import RecordOptions, record

    record(RecordOptions(ckpt=str(ckpt), corpus=str(corpus), out=str(out), max_tokens=max_tokens,
                         seq_len=seq_len, batch_size=8, router_logits="topk", overwrite=out.exists(),
                         progress=True))
    return probe.open_run(out)


def unigram_loss(texts: list[str], tok, val_tokens, vocab: int) -> dict[str, float]:
    """Cross-entropy (nats) of each domain's validation tokens under an add-one unigram model
    fitted on the whole training split (its documents' `texts`)."""
    counts: Counter = Counter()
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256], add_special_tokens=False):
            counts.update(enc.ids)
    c = np.ones(vocab)
    for k, v in counts.items():
        c[k] += v
    logp = np.log(c / c.sum())
    out = {}
    for dom, g in val_tokens.groupby("domain"):
        out[dom] = float(-logp[g.token_id.to_numpy()].mean())
    return out


def greedy(m, tok, prompt_ids: list[int], n: int, stop_ids: list[int]) -> str:
    """Up to `n` greedy tokens after `prompt_ids`, decoded, the stop token (one of `stop_ids`) left out.
    It stopped at config.json's eos_token_id only when that was one id, never when a list."""
    from generate import generate

    out = generate(m, [prompt_ids], max_new_tokens=n, stop_ids=stop_ids).tokens[0]
    return tok.decode(out[:-1] if out and out[-1] in stop_ids else out)


def layer_figures(run) -> dict[int, dict[str, float]]:
    from analyses import metrics as M

    loads = M.layer_loads_from_run(run)
    cont = M.domain_contingency_from_run(run)
    return {layer: {"maxvio": M.maxvio(loads[layer]), "nmi": M.domain_nmi(cont[layer][1]),
                    "balancedness": M.balancedness(loads[layer])} for layer in loads}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "data" / "model"), help="the shipped checkpoint")
    p.add_argument("--baseline", default=str(REPO / "runs" / "nobal2" / "model"),
                   help="a checkpoint trained with the same budget and --balance none (data/README.md: "
                        "python -m train --out runs/nobal2 --balance none)")
    p.add_argument("--corpus", default=str(REPO / "data" / "corpus" / "val.jsonl"), help="validation split")
    p.add_argument("--train", default=str(REPO / "data" / "corpus" / "train.jsonl"),
                   help="training split, for the unigram baseline (python -m data.build_corpus makes it)")
    p.add_argument("--max-tokens", type=int, default=None, help="validation tokens to use (default all)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--out", default=str(REPO / "data" / "REPORT.md"))
    p.add_argument("--runs-dir", default=str(REPO / "runs"),
                   help="where the two record runs go (report-model, report-baseline; default runs/)")
    return p


def measure(ns, ckpt: Path, base: Path, val: list[dict], train: list[dict]) -> dict:
    """Every figure of the report: both models recorded on the validation split (`val`, its
    documents), the unigram baseline fitted on `train`'s, per-layer balance and NMI, MTP agreement,
    and a greedy continuation per domain."""
    import model
    from generate.text import stop_ids
    from tokenizers import Tokenizer

    runs_dir = Path(ns.runs_dir)
    run = record_run(ckpt, Path(ns.corpus), runs_dir / "report-model", ns.max_tokens, ns.seq_len)
    run_b = record_run(base, Path(ns.corpus), runs_dir / "report-baseline", ns.max_tokens, ns.seq_len)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    toks = run.df("tokens")
    scored = toks[toks.loss.notna()]
    mt = run.df("mtp")
    f = {"tokens": len(toks), "windows": run.info["planned"]["windows"],
         "loss": scored.groupby("domain").loss.mean().to_dict(),
         "loss_b": run_b.df("tokens").dropna(subset=["loss"]).groupby("domain").loss.mean().to_dict(),
         "uni": unigram_loss([d["text"] for d in train], tok, scored, model.ModelArgs.from_hf_config(ckpt).vocab_size),
         "layers": layer_figures(run), "layers_b": layer_figures(run_b),
         "agree": float(mt.agree.mean()), "agree_dom": mt.groupby("domain").agree.mean().to_dict()}
    m = model.load(ckpt, dtype=torch.float32)
    stops = stop_ids(ckpt, m.args, tok)  # config.json's eos_token_id(s), generation_config's, the tokenizer's
    f["samples"] = {}
    for dom in sorted(f["loss"]):
        doc = next(d for d in val if d.get("domain") == dom)
        ids = tok.encode(doc["text"], add_special_tokens=False).ids[:12]
        prompt = [m.args.bos_token_id, *ids] if m.args.bos_token_id is not None else ids
        f["samples"][dom] = (tok.decode(ids), greedy(m, tok, prompt, 40, stops))
    return f


def checks(f: dict) -> list[tuple[str, bool]]:
    """The claims the bundled model must meet, each with whether it does."""
    loss, uni, figs, figs_b = f["loss"], f["uni"], f["layers"], f["layers_b"]
    return [
        ("loss below the unigram baseline on every domain", all(loss[d] < uni[d] for d in loss)),
        ("MaxVio_global <= 0.3 on every MoE layer (shipped model)", all(v["maxvio"] <= 0.3 for v in figs.values())),
        ("balanced model has lower MaxVio_global than the no-balancing one on every layer",
         all(figs[layer]["maxvio"] < figs_b[layer]["maxvio"] for layer in figs)),
        ("MTP teacher-forced agreement >= 40%", f["agree"] >= 0.4),
        ("NMI(domain; expert) >= 0.1 in at least one layer", max(v["nmi"] for v in figs.values()) >= 0.1),
    ]


def _shown(runs_dir, name: str) -> str:
    """Where a run of the report went, as the report names it: relative to the repository when
    inside it (the default `runs/`), else as given (it said runs/ whatever --runs-dir was; a review)."""
    p = Path(runs_dir).resolve() / name
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else str(p)


def render(f: dict, checked: list[tuple[str, bool]], ns, ckpt: Path, base: Path, seconds: float) -> str:
    """REPORT.md's text."""
    loss, nan = f["loss"], float("nan")
    lines = ["# The bundled model: measured figures", "",
             f"Written by `python -m data.report` on {time.strftime('%Y-%m-%d')} in {seconds:.0f} s. "
             f"Validation split `{Path(ns.corpus).name}`: {f['tokens']} tokens "
             f"({f['windows']} windows of <= {ns.seq_len}); model `{ckpt.name}` vs baseline "
             f"`{base}` (same budget, `--balance none`). Runs: `{_shown(ns.runs_dir, 'report-model')}`, "
             f"`{_shown(ns.runs_dir, 'report-baseline')}`.", "",
             "## Checks", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checked]
    lines += ["", "## Validation loss per domain (nats/token)", "",
              "| domain | shipped model | no-balancing baseline | unigram baseline | MTP agreement |",
              "|---|---|---|---|---|"]
    for d in sorted(loss):
        lines.append(f"| {d} | {loss[d]:.3f} | {f['loss_b'].get(d, nan):.3f} | {f['uni'][d]:.3f} | "
                     f"{100 * f['agree_dom'].get(d, nan):.1f}% |")
    lines += ["", f"MTP teacher-forced agreement overall: {100 * f['agree']:.1f}% (MTP top-1 for token i+2 equals "
              "the main model's top-1 at i+1).", "",
              "## Balance and specialisation per MoE layer", "",
              "| layer | MaxVio_global shipped | MaxVio_global no-balancing | balancedness shipped | "
              "NMI(domain; expert) shipped | NMI no-balancing |", "|---|---|---|---|---|---|"]
    for layer in sorted(f["layers"]):
        v, vb = f["layers"][layer], f["layers_b"].get(layer, {})
        lines.append(f"| {layer} | {v['maxvio']:.3f} | {vb.get('maxvio', nan):.3f} | "
                     f"{v['balancedness']:.3f} | {v['nmi']:.3f} | {vb.get('nmi', nan):.3f} |")
    lines += ["", "MaxVio_global = (max_i load_i - mean) / mean over the whole validation split (Wang et al. 2024); "
              "NMI = I(domain; expert) / H(domain) over top-k assignments.", "",
              "## Greedy continuations (40 tokens) of a prompt from each domain", ""]
    for d, (prompt, cont) in f["samples"].items():
        lines += [f"**{d}** — prompt `{prompt!r}`", "", "```", prompt + cont, "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ns = parser().parse_args(argv)
    torch.set_num_threads(2)
    ckpt, base = Path(ns.model), Path(ns.baseline)
    for flag, c in (("--model", ckpt), ("--baseline", base)):
        if not (c / "config.json").exists():
            how = (" (train it first: python -m train --out runs/nobal2 --balance none, data/README.md)"
                   if flag == "--baseline" else "")
            what = "not a checkpoint directory (no config.json)" if c.exists() else "no such directory"
            print(f"error: {flag} {c}: {what}{how}", file=sys.stderr)
            return 2
    for flag, path in (("--corpus", ns.corpus), ("--train", ns.train)):
        if not Path(path).is_file():
            print(f"error: {flag} {path}: no such file (python -m data.build_corpus writes the splits)",
                  file=sys.stderr)
            return 2
    from probe.job import RecordError, check_out_parent

    try:  # both splits read, the flags, --out and --runs-dir checked, before anything is recorded
        if (ns.max_tokens is not None and ns.max_tokens < 1) or ns.seq_len < 2:
            raise RecordError(f"--max-tokens must be >= 1 and --seq-len >= 2 (got {ns.max_tokens}, {ns.seq_len})")
        check_out_parent(Path(ns.out), file=True)
        check_out_parent(Path(ns.runs_dir), flag="--runs-dir")  # the record job named it --out (a review)
        val = read_documents(ns.corpus, ("domain", "text"), CorpusError)
        train = read_documents(ns.train, ("text",), CorpusError)
        t0 = time.time()
        f = measure(ns, ckpt, base, val, train)
    except (CorpusError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a traceback, whose last line (record's) told to --resume, a flag this has not
        print(f"\ninterrupted: {ns.out} not written (the next python -m data.report records both runs again)",
              file=sys.stderr)
        return 130
    checked = checks(f)
    text = render(f, checked, ns, ckpt, base, time.time() - t0)
    out = Path(ns.out)
    tmp = out.with_suffix(".md.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)  # check_out_parent above found where it can go
    tmp.write_text(text)
    tmp.replace(out)
    print(text)
    return 0 if all(ok for _, ok in checked) else 1


if __name__ == "__main__":
    from probe.teardown import quick_teardown

    quick_teardown()
    sys.exit(main())
