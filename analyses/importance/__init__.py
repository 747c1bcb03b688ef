"""Causal importance of every routed expert: remove each expert of a MoE layer in turn (reroute: its
selection score set to -inf before group-limited top-k, at that layer only), measure the mean
surprisal per domain against one shared baseline pass, and ask whether load predicts importance.

    python -m analyses.importance --run runs/model-val                  # every MoE layer and expert
    python -m analyses.importance --run runs/model-val --layers 1,3 --experts 0-7,12
    python -m analyses.importance --ckpt CKPT --corpus val.jsonl --out runs/imp --domain-tokens 4000
    torchrun --nproc-per-node 2 -m analyses.importance -- --run runs/model-val      # 2 replicas (flags after
    torchrun --nproc-per-node 8 -m analyses.importance -- --run runs/v3 --model-parallel auto --gemm fp8  # `--`)

`--run RUN` takes the checkpoint, corpus, window length, batch size and token limit from RUN's
run.json and writes into RUN; `--out DIR` writes elsewhere (a new run directory holding only
`expert_importance`; an existing run of another checkpoint is refused). The tokens: by default the first 2000 of each domain (`--domain-tokens`; 0 =
no per-domain cap) of the run's own windows, the corpus read as the run read it (up to its
--max-tokens, in its --order): the run's domains, none with more tokens than the run holds. With
--max-tokens given (or no --run, or an --order, --seq-len or --bos given unlike the run's: other
windows than the run's, a note says), of every domain of the corpus, at most --max-tokens in all.

Batched: one baseline pass gives the losses and every expert's load (its top-k assignments, per
domain); then G removals share each forward pass, the batch repeated G times along the batch
dimension with expert e_g removed on the rows of copy g (run.py explains the row layout). The
blocks before the layer run once per batch: the removal passes start at the layer's input
(`model(..., start_at_layer=L, resid=h)`), so a late layer costs only its own and later blocks. G fits a
budget of 16,384 token rows per pass (batch size x window x G) unless `--group G` says otherwise.
The result does not depend on G nor on the ranks' layout (up to rounding).

Results: one row per layer, expert and domain (plus `all`) in the run's `expert_importance` table
(`probe/schema.py`): tokens, load, load_share, baseline_loss, loss, delta = loss - baseline_loss.
One part file per command (its name hashes the layers, experts and inputs, so repeating a command
replaces its own part), written under a temporary name and renamed, and noted in run.json
(`importance_parts`). A measurement of an expert in a domain replaces any older one: a command with
other options (another token budget, e.g. the report's own) takes those rows out of the older parts,
so the table holds one measurement per layer, expert and domain. The command prints per layer Spearman's rho between load_share and delta and
the most important experts.

Interrupted: each layer is committed as it finishes (the part rewritten whole; run.json's entry lists
`measured_layers` and `pending`), and the baseline pass's sums are saved under
`expert_importance/.sweep-<part>/`. Ctrl-C, SIGTERM or SIGHUP keeps the finished layers; running the same command again
continues (one line says what it took) and measures only the missing layers, with the table an
uninterrupted run writes, bit for bit. `--fresh` measures everything again; another command (other
layers, experts, options or inputs) takes nothing (run.py, `LayerCommits`), nor does an attempt that
sampled other windows (its part's `windows_digest`, and its `sample`: the run's own or the whole corpus).

Under torchrun the ranks form replicas of --model-parallel ranks (probe/job.py): global batch b is
evaluated by replica b % R and the per-domain sums are added over the replicas; rank 0 writes.

Library: run.py (`measure` on a loaded model, the job `importance`, `write_importance`),
analysis.py (`load_vs_importance`, `correlation_by_domain`, `rank_disagreement`: pure functions of
the table), table.py (the table's name and `ImportanceError`, for the ranks: no pandas, no torch); the
command is `__main__.py`.
"""

from probe.lazy import exports

TOKEN_BUDGET = 16_384  # default: at most this many token rows (G x batch x window) per forward pass
DOMAIN_TOKENS = 2000  # the command's default sample: this many tokens of every domain

# NOTE: imported on first use (probe/lazy.py): run.py imports torch, and
# `python -m analyses.importance --help` runs this file first
__getattr__, __dir__, __all__ = exports(__name__, {
    ".table": ("TABLE", "ImportanceError"),
    ".analysis": ("correlation_by_domain", "importance_table", "load_vs_importance",
                  "pearson", "rank_disagreement", "spearman", "undefined_why"),
    ".run": ("ImportanceOptions", "check_selection", "default_group", "importance",
             "measure", "parse_ids", "rows_reroute_hook", "write_importance"),
})
__all__ += ["TOKEN_BUDGET", "DOMAIN_TOKENS"]
