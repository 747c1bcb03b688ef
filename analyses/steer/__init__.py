"""Expert steering (SteerMoE-style): force chosen routed experts INTO the top-k of steered tokens (or
bias their selection scores), then compare the language-model loss per domain and greedy
continuations with a baseline over the same tokens and prompts.

    python -m analyses.steer --run runs/model-val --experts 2:5+7                    # force on all tokens
    python -m analyses.steer --run runs/model-val --experts 2:5 --steer-domain code  # only code's tokens
    python -m analyses.steer --run runs/model-val --experts 1:3,2:9 --mode bias --bias 0.5
    python -m analyses.steer --run runs/model-val --experts 2:5 --steer-tokens "def,class" --prompt "def f(x):"
    python -m analyses.steer --ckpt CKPT --corpus val.jsonl --out runs/steer --experts 3:1 --max-new-tokens 64
    torchrun --nproc-per-node 2 -m analyses.steer -- --run runs/model-val --experts 2:5   # 2 replicas (after --)

Modes (details: hooks.py): `force` puts the experts into the top-k of every steered token (+inf
selection score after group masking, so even in a group the router excluded; at most K per layer);
`bias` adds `--bias` to their selection scores before group-limited routing (the router may still
refuse them). Either way the routing weights are the router's own: the unbiased scores of the
chosen experts, normalised over them (norm_topk_prob) and times route_scale.

Which tokens (`--steer-domain`, repeatable; `--steer-tokens`: words or token ids; both = both
must hold): all by default. Loss: one baseline pass and one steered pass over the same batches
(`--domain-tokens` per domain, default 2000: with `--run` and no `--max-tokens`, of the run's own
windows, so only its domains, unless `--order`, `--seq-len` or `--bos` differ from the run's; else of
every domain of the corpus, `--max-tokens` in all);
`steered_tokens` counts the scored tokens the steering applied to, `forced_share` the share of
(steered token, steered layer) pairs whose top-k holds every steered expert of the layer.
Generation: greedy continuations (`--max-new-tokens`, default 32) of each `--prompt` (repeatable, a
repeat run once; no domain, so a domain filter does not exclude them) or, by default, of the first
`--prompt-tokens` (24) tokens of each domain's first window, steered at prefill and every decode
step, one prompt at a time.

`--run RUN` takes the checkpoint, corpus, window length and token limit from RUN's run.json and
writes into RUN; `--out DIR` writes elsewhere (a new run directory holding only `steering`; an
existing run of another checkpoint is refused).
Results: rows of kind `loss` (per domain and `all`) and `generation` (per prompt) in the run's
`steering` table (probe/schema.py), one part file per command (its name hashes the steering, the
inputs and the options but the generation ones, so repeating a command replaces its own part),
written under a temporary name and renamed. Each pass (the loss pass, then each prompt's
continuations) is committed as it finishes: Ctrl-C, SIGTERM or SIGHUP keeps them, and rerunning the same command runs
only the missing ones (`--fresh`: all again; run.py `SteerCommits`). A command that differs from an
earlier one only in --prompt, --prompt-tokens or --max-new-tokens takes that part's loss pass (and
the continuations of the prompts both give, of as many tokens), computes the rest and replaces the
part: no loss row twice. The continuations the part held of prompts the command does not give stay
in it, of their own length (`--fresh` keeps only the command's own). A part named as before the
generation options left the name is this part too: taken as the earlier one and replaced. Loss
rows of another sample (a part's `windows_digest`, and its `sample`: the run's windows or the whole corpus) are not taken.

Under torchrun the ranks form replicas of --model-parallel ranks: batch b is evaluated by replica
b % R and the per-domain sums are added over the replicas; every replica generates the same
continuations (greedy, so the same text); rank 0 writes.

Library: hooks.py (`Steer`, `Steering`, `steered`), run.py (the job: `evaluate`, `generations`,
`steer`, `write_steering`); the command is `__main__.py`.
"""

from probe.lazy import exports

MODES = ("force", "bias")  # how a Steer moves its experts (hooks.py)

# NOTE: imported on first use (probe/lazy.py): hooks.py and run.py import torch, and
# `python -m analyses.steer --help` runs this file first
__getattr__, __dir__, __all__ = exports(__name__, {
    ".hooks": ("Steer", "SteerError", "Steering", "steered"),
    ".run": ("Prompt", "SteerOptions", "corpus_prompts", "evaluate", "generations", "parse_token_filter", "steer",
             "text_prompts", "write_steering"),
})
__all__ += ["MODES"]
