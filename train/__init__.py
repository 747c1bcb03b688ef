"""Train a small DeepSeek-V3 (our `model.Transformer`) on the multi-domain corpus in data/.

    python -m data.build_corpus && python -m data.tokenizer        # corpus + data/tokenizer.json, once
    python -m train --out runs/small                          # the recipe: data/model_config.json,
                                                                    # 700 steps x 16 x 256 tokens (~10 min on 2 idle cores)
    torchrun --standalone --nproc-per-node 2 -m train --out runs/small --batch-size 8
                                    # the same global batch as 2 processes x 8 (gloo; one core each on a
                                    # 2-core CPU, nccl on GPUs): the same steps up to float rounding
    python -m train --out runs/small --resume                 # continue from runs/small/checkpoint
    python -m train --out runs/nobal --balance none           # same budget, no balancing at all
    python -m train --out runs/switch --balance switch        # Switch-style auxiliary loss instead
    python -m train --config tiny --steps 50 --out runs/smoke # any shipped config or ModelArgs/HF JSON

The DeepSeek-V3 recipe at small scale:
- AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to
  `--min-lr-ratio` x peak, gradient clipping at 1.0.
- MTP (depth 1): loss = L_main + lambda * L_MTP (`--mtp-weight`), L_MTP the cross-entropy of the
  MTP module's prediction of token i+2.
- Balancing (`--balance`):
  aux-free (default; sigmoid routers only, a softmax config is refused: pass switch or none there):
      after every optimizer step, on every MoE gate (main layers and the MTP block),
      bias_i -= gamma * sign(load_i - mean_load) (`--bias-update-speed`), loads counted over the
      whole global batch; plus the sequence-wise balance loss alpha * sum_i f_i P_i per sequence
      (`--seq-aux-weight`), f_i = E / (K S) * #tokens of the sequence choosing i, P_i = mean over
      the sequence's tokens of s'_i,t = s_i,t / sum_j s_j,t; averaged over sequences, summed over gates.
      After the last step the bias settles (`--settle-updates` U, `--settle-batches` P, `--settle-speed`
      g): U bias-only updates with the weights frozen, each on loads pooled over P fresh training
      batches, the step decaying linearly from g to 0 (DeepSeek-V3 froze the bias for its last 500B
      tokens; a 700-step run instead ends with the bias wherever its last +-gamma jitter left it).
      run.json's `bias_settle.maxvio_pooled` holds per gate U + 1 MaxVio values over pooled loads:
      before each update, then after the last one on P more fresh batches.
  switch: no bias updates; w * E * sum_i f_i P_i over the batch (`--switch-weight`) with
      f_i = #assignments to i / (K T) and P_i = mean_t s'_i,t (1.0 at perfect balance; the same
      quantity as Wang et al. 2024, Eq. 2, with their f_i = E x ours).
  none: no bias updates and no auxiliary loss.
- Data: each domain's documents are joined as <|bos|> text <|eos|> into one token stream; a step
  draws, from a generator seeded by (seed, step), a domain per row (weights ~ tokens^`--mix-alpha`)
  and a random window of seq_len + 1 tokens in it. A resumed run therefore sees exactly the batches
  an uninterrupted one would.

Outputs under --out, a run directory like any other (`probe.open_run` reads it; tables in
probe/schema.py): `train_steps` (one row per step: losses, lr, grad norm, tokens/s), `train_domains`
(loss per domain, each step and each evaluation), `train_gates` (MaxVio and bias norm per MoE
router), `train_eval` (validation loss, MTP agreement), `expert_load` and `router_bias` (per expert,
every --load-every steps), `run.json` (status, flags, model args, final figures, the run's id),
`checkpoint/state.pt` (model + optimizer + step + RNG + the run's id and processes + the SHA-256 of the
corpus's splits and the tokenizer file, for --resume, which notes the flags given that change what it
computes, --batch-size as the global batch, and those inputs where their content changed since (a corpus
rebuilt, a tokenizer retrained under the same paths): a checkpoint is
resumed only into a new --out, a new run that says so, or the run whose id it carries; a --resume of a run already complete at
its --steps says so and changes nothing, after a note naming the flags given that differ from the
run's own, which it did not use) and, when finished, `model/`: a
Hugging Face checkpoint (`model.save`) that transformers' DeepseekV3ForCausalLM also reads, with
`tokenizer.json` next to it. Rank 0 alone prints and writes. A step whose loss is not a finite
number (a learning rate that blew the weights up) ends the run with an error at once: its row is in
`train_steps`, `run.json` says `interrupted`, and the checkpoint keeps the last step saved before it.
Ctrl-C, SIGTERM (a scheduler, torchrun) or SIGHUP (the terminal or ssh session closed; not under
nohup) stops a run with one line and `run.json` `interrupted` (exit status 130, 143, 129): --resume
continues it from its last checkpoint.

Library: `run(flags)` (loop.py) with its pieces in steps.py (losses, schedules, ranks), balance.py,
data.py, state.py and log.py; the command is `__main__.py` (`python -m model.train` is an alias).
"""

from probe.job_signals import quiet_start
from probe.lazy import exports

with quiet_start():  # `python -m train`: Ctrl-C while the package imports (train/__main__ takes it from there)
    from .flags import build_parser

# NOTE: the library is imported on first use (probe/lazy.py), and the command imports torch once its flags
# parse (train/__main__.py), so that `python -m train --help` answers at once (it took about 2 s, nearly
# all of it importing torch). `from train import run` works as before.
__getattr__, __dir__, _names = exports(__name__, {
    ".loop": ("run",),
    ".errors": ("TrainError",),
    ".balance": ("GateRef", "RoutingTap", "expert_counts", "max_violation", "moe_gates", "seq_balance_loss",
                 "settle_biases", "switch_balance_loss", "update_bias"),
    ".steps": ("forward_losses", "make_optimizer"),
})


def parse_args(argv: list[str] | None = None):
    """The command's flags (see `python -m train --help`)."""
    return build_parser(__doc__).parse_args(argv)


__all__ = ["parse_args", *_names]
