"""Checkpoint variants for run-vs-run comparisons: a copy of a checkpoint with one thing changed,
to record over the same windows and compare routing with `analyses.metrics.routing_agreement_from_runs`.

    python -m analyses.variants no-router-bias --ckpt data/model --out runs/ckpt-no-bias
    dsv3-probe record --ckpt runs/ckpt-no-bias --out runs/model-val-no-router-bias --max-tokens 60000
    python -m analyses.report --compare runs/model-val-no-router-bias   # with runs/model-val

no-router-bias: every MoE gate's balancing bias (`e_score_correction_bias`, the aux-loss-free
balancing term added to the selection scores) set to zero, everything else (the checkpoint
directory's other files and its folders too) byte-identical. The comparison then measures how much
of the routing the balancing bias decides. The copy is written into a temporary folder beside
`--out` and renamed when complete; tensors are streamed one shard file at a time. `--overwrite` of an
earlier variant replaces only what a variant is made of (the entries of the names the new one writes,
and the old one's weights, config and tokenizer files), once the new one is complete; anything else
there (a user's notes, results) stays, and is named.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from probe.job_signals import quiet_start, signals_held, stop_signals, terminate_as_interrupt

with quiet_start(__name__ == "__main__"):  # Ctrl-C while pyarrow is imported: one line, not a traceback
    from probe.job import (check_inputs_outside, check_not_an_input, check_out_parent, check_replaceable,
                           os_refusal, path_text, refuse_a_symlinked_out)
    from probe.job_exit import closed_pipe_quiet
    from probe.out_paths import is_checkpoint_file
    from probe.overwrite import replace_entries, say_kept

BIAS = "e_score_correction_bias"


class VariantError(ValueError):
    """A checkpoint the variant cannot be made from (one line)."""


def _checked_source(ckpt: Path) -> list[Path]:
    """The weight files of `ckpt`, after the checks `model.load(ckpt, device="meta")` makes (config,
    every shard's header, each tensor's name and shape against the config, none missing), so that a
    truncated shard or a wrong tensor is refused before anything is written instead of being copied."""
    from model.checkpoint import CheckpointError, load, not_a_directory
    from model.checkpoint_files import weight_files
    from model.names import ours_to_hf

    if why := not_a_directory(ckpt):  # the flag named, as record, generate and the jobs name a --ckpt that is not there
        raise VariantError(f"--ckpt {ckpt}: {why}")
    try:
        files = weight_files(ckpt)  # the files a load reads
        if not (ckpt / "config.json").exists() or not files:
            raise VariantError(f"--ckpt {ckpt}: not a checkpoint (needs config.json and *.safetensors)")
        meta = load(ckpt, device="meta", parallel=False)  # reads headers only, no tensor data
    except CheckpointError as e:
        raise VariantError(str(e)) from None
    if not any(hf.endswith(BIAS) for hf, *_ in ours_to_hf(meta)):  # a softmax router has none
        raise VariantError(f"{ckpt}: no `{BIAS}` tensor: the checkpoint has no balancing bias to remove")
    return files


def without_router_bias(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> tuple[Path, int]:
    """Copy `ckpt` to `out` with every router bias zeroed; returns (out, tensors zeroed)."""
    # Ctrl-C, SIGTERM and SIGHUP held while torch is imported, then met as KeyboardInterrupt before anything is
    # written: raised inside `import torch` one ended the process by its C++ abort (status 134, "terminate called
    # after throwing ... KeyboardInterrupt"), or by SIGINT after its one line (-2, not 130) (a real signal, a review)
    with signals_held(*stop_signals()):
        from safetensors import safe_open
        from safetensors.torch import save_file

        import model.checkpoint  # noqa: F401 - _checked_source's, imported here with the signals held

    ckpt, out = Path(ckpt), Path(out)
    files = _checked_source(ckpt)
    if out.exists() and out.resolve() == ckpt.resolve():  # --overwrite would replace the source it reads
        raise VariantError(f"--out {out}: is the checkpoint the variant is made from (--ckpt {ckpt}); write the "
                           "variant elsewhere, so that both can be compared")
    if out.exists() and not overwrite:
        raise VariantError(f"--out {out}: exists (pass --overwrite to replace it)")
    refuse_a_symlinked_out(out, VariantError, "a checkpoint directory")  # as record and import sglang do
    check_replaceable(out, "config.json", "a checkpoint directory", error=VariantError)
    # the variant copies the checkpoint's folders too: one inside it would be copied into itself, and
    # --overwrite of a folder holding the checkpoint would delete the source
    check_not_an_input(out, {"the checkpoint --ckpt": ckpt}, error=VariantError)
    check_inputs_outside(out, {"--ckpt": ckpt}, VariantError)
    check_out_parent(out, error=VariantError)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with os_refusal(f"--out {out}: cannot write the variant there", VariantError):
        tmp.mkdir(parents=True)
    zeroed = 0
    try:
        for f in files:
            tensors = {}
            with safe_open(str(f), "pt") as fh:
                meta = fh.metadata()
                for name in fh.keys():
                    t = fh.get_tensor(name)
                    if name.endswith(BIAS):
                        t = t.zero_()
                        zeroed += 1
                    tensors[name] = t
            save_file(tensors, str(tmp / f.name), metadata=meta)
            shutil.copymode(f, tmp / f.name)  # safetensors creates 0600 files; the source's mode is shared
        if not zeroed:
            raise VariantError(f"{ckpt}: no `{BIAS}` tensor: the checkpoint has no balancing bias to remove")
        _copy_the_rest(ckpt, tmp, {f.name for f in files})
        # an earlier variant stays whole until this one is in place; a user's files beside it stay
        kept = replace_entries(tmp, out, lambda entry: is_checkpoint_file(entry.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say_kept(out, kept, "variant")
    return out, zeroed


def _copy_the_rest(ckpt: Path, tmp: Path, weights: set[str]) -> None:
    """Everything in `ckpt` but the weight files the variant rewrote, byte for byte: its other files
    (a .safetensors a load does not read too) and its folders whole. Only the top folder's files other
    than .safetensors were copied: a checkpoint's subfolders (DeepSeek-V3's inference/ code and
    configs) and unlisted .safetensors files were missing from the variant without a word (a tour)."""
    for f in ckpt.iterdir():
        if f.name in weights:
            continue
        if f.is_dir():
            shutil.copytree(f, tmp / f.name)
        elif f.is_file():
            shutil.copy2(f, tmp / f.name)


@closed_pipe_quiet
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analyses.variants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", choices=["no-router-bias"])
    p.add_argument("--ckpt", type=path_text, default=str(Path(__file__).resolve().parents[1] / "data" / "model"),
                   help="checkpoint directory (default: the bundled model)")
    p.add_argument("--out", type=path_text, required=True, help="directory to write the variant into")
    p.add_argument("--overwrite", action="store_true", help="replace the variant in --out (keeping other files there)")
    ns = p.parse_args(argv)
    try:
        with terminate_as_interrupt():  # the temporary copy is removed on SIGTERM too
            out, n = without_router_bias(ns.ckpt, ns.out, ns.overwrite)
    except (VariantError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {n} router bias tensors zeroed, every other tensor copied unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
