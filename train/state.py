"""What a training run keeps to continue or to ship: the resumable state (model, optimizer, step,
RNG), and the final Hugging Face checkpoint with its tokenizer."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from model import CheckpointError, ModelArgs, Transformer
from model import save as save_hf
from probe.errors import first_line
from probe.writer import RunError, read_run_json, replace_dir, write_json_atomic

from .data import SPECIAL_TOKENS, TrainError
from .flags import RESUME_CHECKED


def config_record(ns: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()}


def changed_flags(saved: dict, ns: argparse.Namespace, world: int = 1) -> list[str]:
    """The flags that change what a resumed run computes (`RESUME_CHECKED`) whose values differ from
    those the checkpoint was saved with, each as "name saved -> now"; paths compared as the folders
    they name. --batch-size is compared as the global batch, times the processes (`world` now, the
    checkpoint's `world`): a run resumed under torchrun with another number of processes doubled or
    halved its batch without a word, and 1 x 16 resumed as 2 x 8, the same batches, was reported."""
    then, now = saved.get("flags", {}), config_record(ns)

    def same(k: str) -> bool:
        a, b = then.get(k), now.get(k)
        if k == "batch_size" and saved.get("world") is not None and a is not None and b is not None:
            return a * saved["world"] == b * world  # a checkpoint without its world: the flag alone
        return a == b or k in ("corpus", "tokenizer") and _same_path(a, b)

    def change(k: str) -> str:
        if k == "batch_size" and saved.get("world") is not None:
            return f"batch_size {then.get(k)} x {_processes(saved['world'])} -> {now.get(k)} x {_processes(world)}"
        return f"{k} {then.get(k)} -> {now.get(k)}"

    return [change(k) for k in RESUME_CHECKED if not same(k)]


def _same_path(a: str | None, b: str | None) -> bool:
    """Two paths of a flag name the same file or folder (`data/corpus` and `./data/../data/corpus`)."""
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _processes(n: int) -> str:
    return f"{n} process{'' if n == 1 else 'es'}"


def resume_dir(ns: argparse.Namespace) -> Path | None:
    if ns.resume is None:
        return None
    d = ns.out / "checkpoint" if ns.resume == "auto" else Path(ns.resume)
    if (d / "checkpoint" / "state.pt").exists():  # a run directory was given
        d = d / "checkpoint"
    if not (d / "state.pt").exists():
        raise TrainError(f"--resume {d}: no checkpoint there (expected {d / 'state.pt'})")
    return d


def check_resume_run(saved: dict, where: Path, out: Path) -> None:
    """A checkpoint is resumed only into a new --out or the run that saved it: resumed into another
    training run's --out, that run's first rows were kept under the resumed run's later ones, and its
    checkpoint and model replaced (a tour). Where both record the run's id (`run_id`, made when a run
    starts and saved in its checkpoints), they must match, wherever the folders were moved or the
    checkpoint copied; otherwise a checkpoint in OUT/checkpoint, or one saved with this --out, is
    taken as the run's own."""
    if not ((out / "train_steps").is_dir() or (out / "run.json").is_file()):
        return
    theirs, ours = saved.get("flags", {}).get("out"), run_id(out)
    if saved.get("run_id") is not None and ours is not None:
        if saved["run_id"] == ours:
            return
    elif where.resolve() == (out / "checkpoint").resolve() or (theirs is not None
                                                               and Path(theirs).resolve() == out.resolve()):
        return
    raise TrainError(f"--resume {where}: the checkpoint was saved by the run in {theirs}, but --out {out} holds "
                     "another training run: a resume continues the run that saved it (give --out "
                     f"{theirs}, or a new --out to start a run from the checkpoint)")


def run_id(out: Path) -> str | None:
    """The run id in OUT/run.json, or None (none recorded, or unreadable)."""
    try:
        return read_run_json(out).get("run_id")
    except (RunError, OSError):
        return None


def completed_run(out: Path, saved: dict, steps: int) -> dict | None:
    """OUT/run.json where it records this run finished (status complete, at `steps`, with its model in
    OUT/model) and the checkpoint resumed is that run's last (at `steps`, the same run id): a --resume
    then has nothing to do, and changes nothing (it re-settled the biases and rewrote model/ and
    run.json, without a word that the run was complete). None otherwise."""
    try:
        info = read_run_json(out)
    except (RunError, OSError):
        return None
    same_run = saved.get("run_id") is None or info.get("run_id") == saved.get("run_id")
    if (info.get("kind") == "train" and info.get("status") == "complete" and info.get("step") == steps
            and int(saved["step"]) == steps and same_run and (out / "model").is_dir()):
        return info
    return None


def check_resume_shape(saved: dict, args: ModelArgs, where: Path, flags: dict | None = None) -> None:
    """A checkpoint of another architecture cannot be resumed: name the differing fields, and the --config
    and --set flags the checkpoint's run was given (`flags`, its saved flags), which build its model
    again: the fields alone left the user to find which config made them (found by the train hunt)."""
    theirs, ours = saved, args.to_dict()
    diff = [k for k in ours if theirs.get(k) != ours[k]]
    if diff:
        shown = diff[:4]
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        made = ""
        if (flags or {}).get("config"):
            sets = "".join(f" --set {x}" for x in flags.get("overrides") or [])
            made = f"; its run was given --config {flags['config']}{sets}: pass the same to resume it"
        raise TrainError(f"cannot resume from {where}: it holds a model with "
                         + ", ".join(f"{k}={theirs.get(k)}" for k in shown)
                         + "; this run builds " + ", ".join(f"{k}={ours[k]}" for k in shown) + more + made)


def changed_inputs(saved: dict, inputs: dict, ns: argparse.Namespace) -> list[str]:
    """The inputs (`train.data.input_digests`) whose content differs from the checkpoint's, named as
    the note names them; none for a checkpoint saved before checkpoints kept them, nor for those of a
    --corpus or --tokenizer that names another path than the checkpoint's (`changed_flags` notes the
    flag: another corpus's splits were also said to have 'changed since', a review)."""
    names = {"train.jsonl": f"{ns.corpus / 'train.jsonl'}", "val.jsonl": f"{ns.corpus / 'val.jsonl'}",
             "tokenizer": f"--tokenizer {ns.tokenizer}"}
    flag = {"train.jsonl": "corpus", "val.jsonl": "corpus", "tokenizer": "tokenizer"}
    then, flags = saved.get("inputs") or {}, saved.get("flags", {})
    return [names.get(k, k) for k in then if then[k] != inputs.get(k)
            and (k not in flag or _same_path(flags.get(flag[k]), str(getattr(ns, flag[k]))))]


def save_state(path: Path, raw: Transformer, opt, step: int, ns: argparse.Namespace, tokens_seen: int,
               run_id: str | None = None, world: int = 1, inputs: dict | None = None) -> None:
    """The resumable state in PATH/state.pt; `world`: the processes whose --batch-size rows made each step,
    `inputs`: the SHA-256 of the corpus's splits and the tokenizer (`changed_inputs`).
    Written as state.pt.tmp, then renamed; a write that fails (a full disk) is a TrainError naming the
    file, and the partial temporary is removed, as after a Ctrl-C: it stayed, filling the disk, so that the
    run could not even mark itself interrupted (a traceback, run.json left "running")."""
    state = {"run_id": run_id, "world": world,
        "model": raw.state_dict(), "optimizer": opt.state_dict(), "step": step, "tokens_seen": tokens_seen,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "model_args": raw.args.to_dict(), "flags": config_record(ns), "inputs": inputs,
    }
    tmp, why = path / "state.pt.tmp", None
    try:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path / "state.pt")
    except (OSError, RuntimeError) as e:  # torch's writer raises a RuntimeError where the disk is full
        why = _why(e, path)
    finally:
        tmp.unlink(missing_ok=True)
    if why is not None:  # raised here, not in the handler: the error's frames held torch's writer, and its
        # file open, so that the disk stayed full after the unlink
        raise TrainError(f"{path / 'state.pt'}: cannot save the checkpoint ({why}); the one saved there before, "
                         "if any, is as it was")


def _why(e: Exception, where: Path) -> str:
    """Why a write in `where` failed: an OSError's reason; torch's and safetensors' writers do not say that
    the disk is full, so a folder with under 1 MiB free is said to be full."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        full = where.exists() and shutil.disk_usage(where).free < 2**20
    except OSError:
        full = False
    return "no space left on the device" if full else first_line(e)


def save_final(raw: Transformer, out: Path, tokenizer: Path, dtype: torch.dtype) -> Path:
    """HF checkpoint + tokenizer files in OUT/model (built in model.tmp, then renamed). A write that fails
    (a full disk) is a TrainError naming OUT/model, with model.tmp removed (as `save_state` says why)."""
    final, tmp, why = out / "model", out / "model.tmp", None
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        save_hf(raw, tmp, dtype=dtype)
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        write_json_atomic(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_TOKENS[0],
            "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[2], "add_bos_token": True,
            "model_max_length": raw.args.max_seq_len})
        replace_dir(tmp, final)  # the previous model stays whole until this one is in place
    except (OSError, RuntimeError, SafetensorError) as e:
        why = _why(e, out)
    except CheckpointError as e:  # model.save's one line for a folder it cannot write: its cause says why
        why = _why(e.__cause__ or e, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if why is not None:
        raise TrainError(f"{final}: cannot save the trained model ({why}); the last step's checkpoint is kept, "
                         "to --resume from")
    return final


def load_state(where: Path, args: ModelArgs) -> dict:
    """state.pt of `where` (checked to hold this architecture); a one-line TrainError otherwise."""
    try:
        saved = torch.load(where / "state.pt", map_location="cpu", weights_only=False)
        saved_args = saved["model_args"]
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise TrainError(f"cannot resume from {where}: state.pt is not a training checkpoint "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    check_resume_shape(saved_args, args, where, saved.get("flags") if isinstance(saved, dict) else None)
    return saved
