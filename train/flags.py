"""The command-line flags of `python -m train` (usage and recipe: the package docstring, train/__init__.py)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from probe.job import DEFAULT_RUNS, check_out_parent, check_run_place, path_arg
from probe.writer import RunError, read_run_json

from .errors import TrainError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "data" / "model_config.json"
BALANCE_MODES = ("aux-free", "switch", "none")
# flags that change what a resumed run computes; a resume with other values is allowed but reported (the
# corpus, the settle phase, the tokenizer and the validation windows too: they changed silently before;
# reviews); batch_size is compared as the global batch, times the processes (train.state.changed_flags)
RESUME_CHECKED = ("seed", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup_steps", "steps", "weight_decay",
                  "beta1", "beta2", "grad_clip", "mtp_weight", "balance", "bias_update_speed", "bias_schedule",
                  "seq_aux_weight", "switch_weight", "mix_alpha", "corpus", "settle_updates", "settle_batches",
                  "settle_speed", "tokenizer", "eval_windows")


# ------------------------------------------------------------------------------------------ flags
def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _data_flags(p.add_argument_group("data and model"))
    _optimisation_flags(p.add_argument_group("optimisation"))
    _balance_flags(p.add_argument_group("MTP and load balancing"))
    _run_flags(p.add_argument_group("run control"))
    return p


def _data_flags(a) -> None:
    a.add_argument("--corpus", type=path_arg, default=REPO / "data" / "corpus",
                   help="directory with train.jsonl and val.jsonl (default: data/corpus)")
    a.add_argument("--tokenizer", type=path_arg, default=REPO / "data" / "tokenizer.json",
                   help="tokenizer.json with <|bos|>=0, <|eos|>=1, <|pad|>=2 (default: data/tokenizer.json)")
    a.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="model: a shipped config name (tiny, 16B, ...), a ModelArgs JSON or a Hugging Face "
                        "config.json (default: data/model_config.json); vocab_size follows the tokenizer")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelArgs field, e.g. --set n_routed_experts=64 (repeatable; JSON values)")
    a.add_argument("--token-cache", type=path_arg, default=None,
                   help="where tokenised corpora are cached as .npz (default: CORPUS/token_cache); an edited "
                        "corpus' cache replaces its earlier one")
    a.add_argument("--out", type=path_arg, default=DEFAULT_RUNS / "train",
                   help="run directory (default: runs/train in the repository, beside record's runs)")


def _optimisation_flags(t) -> None:
    t.add_argument("--steps", type=int, default=700, help="optimizer steps in the whole run (the schedule's length)")
    t.add_argument("--batch-size", type=int, default=16, help="sequences per step on each process")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (windows hold seq_len + 1)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of the peak (cosine)")
    t.add_argument("--warmup-steps", type=int, default=40, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices only)")
    t.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    t.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    t.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    t.add_argument("--mix-alpha", type=float, default=1.0,
                   help="domain sampling weights ~ (tokens in domain)^alpha: 0 = uniform, 1 = proportional")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the batches")


def _balance_flags(b) -> None:
    b.add_argument("--mtp-weight", type=float, default=0.3, help="lambda: weight of the MTP loss (0 = skip it; the "
                   "MTP module stays, untrained: --set n_mtp_layers=0 leaves it out)")
    b.add_argument("--balance", choices=BALANCE_MODES, default="aux-free",
                   help="aux-free: bias updates + sequence-wise loss; switch: Switch-style aux loss; none")
    b.add_argument("--bias-update-speed", type=float, default=5e-3, help="gamma: bias step per update (aux-free; DeepSeek-V3 used 0.001 over ~"
                        "100k steps, a 700-step run needs a faster bias)")
    b.add_argument("--bias-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant: gamma throughout (DeepSeek-V3); cosine: gamma follows the learning-rate "
                        "decay after warm-up (gamma x lr/peak), so the bias jitters less at the end")
    b.add_argument("--seq-aux-weight", type=float, default=1e-4,
                   help="alpha: sequence-wise balance loss weight (aux-free; DeepSeek-V3's 1e-4)")
    b.add_argument("--settle-updates", type=int, default=30,
                   help="aux-free, after the last step: bias-only updates with the weights frozen (0 = off)")
    b.add_argument("--settle-batches", type=int, default=8,
                   help="batches whose loads each settle update pools (fresh training batches)")
    b.add_argument("--settle-speed", type=float, default=1e-3,
                   help="the first settle update's bias step; it decays linearly to 0")
    b.add_argument("--switch-weight", type=float, default=1e-2, help="Switch-style balance loss weight (switch)")


def _run_flags(r) -> None:
    r.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                   help="continue from a checkpoint directory (default: OUT/checkpoint)")
    r.add_argument("--eval-every", type=int, default=100,
                   help="validation every N steps (and at the end; 0 = at the end only)")
    r.add_argument("--eval-windows", type=int, default=32, help="validation windows per domain")
    r.add_argument("--checkpoint-every", type=int, default=100, help="save checkpoint/ every N steps (0 = end only)")
    r.add_argument("--flush-every", type=int, default=50, help="commit the run's table rows and run.json every N steps")
    r.add_argument("--load-every", type=int, default=1, help="record per-expert loads every N steps")
    r.add_argument("--stop-at", type=int, default=None,
                   help="stop (with a checkpoint) after this step, keeping the --steps schedule")
    r.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many minutes")
    r.add_argument("--save-dtype", choices=("float32", "bfloat16"), default="bfloat16",
                   help="dtype of the final Hugging Face checkpoint (the router stays float32)")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_flags(ns: argparse.Namespace) -> None:
    positive = ("steps", "batch_size", "seq_len", "eval_windows", "flush_every", "load_every", "settle_batches")
    for name in positive:
        if getattr(ns, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')}={getattr(ns, name)} must be at least 1")
    if ns.seq_len < 3:
        raise TrainError(f"--seq-len={ns.seq_len} must be at least 3 (MTP predicts two tokens ahead)")
    for name in ("lr", "warmup_steps", "weight_decay", "grad_clip", "mtp_weight", "bias_update_speed",
                 "seq_aux_weight", "settle_updates", "settle_speed", "switch_weight", "mix_alpha", "eval_every",
                 "checkpoint_every"):
        if getattr(ns, name) < 0:
            raise TrainError(f"--{name.replace('_', '-')}={getattr(ns, name)} must not be negative")
    for name, value in vars(ns).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainError(f"--{name.replace('_', '-')}={value} must be a finite number")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(ns, name) < 1:
            raise TrainError(f"--{name}={getattr(ns, name)} must be in [0, 1) (AdamW's moment decay)")
    if not 0 <= ns.min_lr_ratio <= 1:
        raise TrainError(f"--min-lr-ratio={ns.min_lr_ratio} must be in [0, 1]")
    if ns.stop_at is not None and ns.stop_at < 1:
        raise TrainError(f"--stop-at={ns.stop_at} must be a step of at least 1")
    if ns.time_limit is not None and ns.time_limit <= 0:
        raise TrainError(f"--time-limit={ns.time_limit} must be a positive number of minutes")
    if not 0 <= ns.seed < 2**64:  # the batches' numpy generator takes no negative seed: a traceback at step 1
        raise TrainError(f"--seed={ns.seed} must be a whole number from 0 to 2**64 - 1")
    if ns.threads is not None and ns.threads < 1:
        raise TrainError(f"--threads={ns.threads} must be at least 1")
    if ns.threads is not None and ns.threads >= 2**31:  # torch.set_num_threads takes a C int: a traceback (a tour)
        raise TrainError(f"--threads={ns.threads} is more than torch can set (at most 2**31 - 1)")
    check_out_parent(Path(ns.out), error=TrainError)  # before the corpus is read and the model built, not after
    check_run_place(Path(ns.out), error=TrainError)
    if getattr(ns, "token_cache", None):  # a folder the tokenised corpus is saved to, after tokenising it
        check_out_parent(Path(ns.token_cache), "--token-cache", error=TrainError)
    out = Path(ns.out)
    if ns.resume is None and (out / "run.json").is_file() and _run_kind(out) not in ("train", None):
        # it said "pass --resume to continue it", which then refused a record's run as not a training run
        raise TrainError(f"--out {out} holds {_run_kind(out)}, not a training run: pass another --out")
    if ns.resume is None and out.is_dir() and ((out / "run.json").exists() or (out / "train_steps").exists()):
        # a second run's rows would land beside the first's in the same tables, and every reader
        # (placement, metrics, the dashboard) would sum the two
        if not (out / "checkpoint" / "state.pt").is_file():  # --resume then said "no checkpoint there": a loop
            raise TrainError(f"--out {out} already holds a run that saved no checkpoint, so there is nothing to "
                             "--resume: delete it to start again there, or pass another --out")
        raise TrainError(f"--out {out} already holds a run: pass --resume to continue it, or another --out "
                         "(delete the old one first to start again there)")
    _refuse_theirs(out, ns.resume is not None)
    if ns.resume is not None and (out / "run.json").is_file():  # --resume DIR wrote into a record's run
        kind = _run_kind(out)
        if kind not in ("train", None):  # None: unreadable, which a resume replaces (train.loop)
            raise TrainError(f"--out {out} holds {kind}, not a training run: --resume continues a training run "
                             "in its own --out (give the --out of the run that saved the checkpoint)")


def _refuse_theirs(out: Path, resume: bool) -> None:
    """The run replaces OUT/model whole at its end and writes OUT/checkpoint/state.pt: in an --out that
    is not a training run, a folder of either name is someone else's (a user's own model/ in the folder
    given as --out was deleted without a word at the end of the run; a tour). A resume may start from
    a checkpoint/ copied there."""
    if (out / "train_steps").is_dir() or ((out / "run.json").is_file() and _run_kind(out) in ("train", None)):
        return
    for name in ("model",) if resume else ("model", "checkpoint"):
        if (out / name).exists():
            raise TrainError(f"--out {out} holds {name}/ and is not a training run: the run would replace it "
                             f"with its own {name}/; pass another --out (or move {name}/ away)")


def _run_kind(out: Path) -> str:
    """What --out's run.json says the run is: "train", a phrase naming another kind, or None where it
    cannot be read."""
    try:
        kind = read_run_json(out).get("kind")
    except (RunError, OSError):
        return None
    if kind == "train":
        return kind
    kind = str(kind or "record")
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} run"
