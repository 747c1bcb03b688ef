"""Scripted expert ablations: disable routed (and shared) experts through the router's hooks, run a
corpus, and compare the language-model loss per domain with a baseline pass over the same tokens.

    python -m analyses.ablate --run runs/model-val --top 4 --control         # top-4 vs random-4 (reroute)
    python -m analyses.ablate --run runs/model-val --top 2 --domain code     # code's own top-2
    python -m analyses.ablate --run runs/model-val --experts 1:3+5,2:7 --mode zero --renormalise
    python -m analyses.ablate --run runs/model-val --token-top 2   # each token's own top-2 (DeepSeekMoE Fig. 4)
    python -m analyses.ablate --ckpt CKPT --corpus val.jsonl --out runs/abl --spec sweep.yaml --domain-tokens 4000
    torchrun --nproc-per-node 2 -m analyses.ablate -- --run runs/model-val --spec sweep.yaml   # 2 replicas
    torchrun --nproc-per-node 8 -m analyses.ablate -- --run runs/v3 --top 8 --model-parallel auto --gemm fp8

(Under torchrun the job's flags go after `--`: torchrun reads `--run` as an abbreviation of its own
`--run-path` and stops otherwise.)

Every ablation of one command shares one baseline pass. `--run RUN` takes the checkpoint, corpus,
window length and token limit from RUN's run.json and the loads for top-N from its `expert_load`
table (`--loads-from baseline` measures them on the baseline pass instead), and writes the results
into RUN; `--out DIR` writes them elsewhere (a new run directory holding only `ablations`; an existing
run of another checkpoint is refused).
`--domain-tokens N` takes at most N tokens of each domain: with `--run` and no `--max-tokens`, of the
run's own windows (the corpus up to the run's cap, so only the domains the run holds); else, also where
an `--order`, `--seq-len` or `--bos` given differs from the run's (a note says so), of every domain of
the corpus, a balanced sample of at most `--max-tokens` in all (inputs.py `sample_windows`).
Results: one row per ablation and domain (plus domain `all`) in the run's `ablations` table
(`probe/schema.py`), one part file per command (its name hashes the sweep and the inputs, so
repeating a command replaces its own part), written under a temporary name and renamed. A NaN (or inf)
surprisal the model gives at a scored token is kept in the sums: that domain's loss and `all`'s are NaN
(or inf), and one warning line per pass says how many (run.py `add_loss`, docs/run-tables.md).
Each ablation is committed as it finishes (the part written again with it): Ctrl-C (or SIGTERM, SIGHUP) keeps the
finished ones, and running the same command again takes them (and the baseline pass) and
computes only the rest; `--fresh` computes them all again (sweep.py). An attempt that sampled other
windows (its part's `windows_digest`, and its `sample`: the run's own or the whole corpus) gives nothing: all computed again.

Spec file (YAML or JSON; keys as `analyses.ablate.Ablation`):

    - {name: top4, top: 4}                          # mode reroute by default
    - {name: random4, random: 4, seed: 0}           # the control: same count, random experts
    - {name: code-top4, top: 4, domain: code}
    - {name: l1-zero, experts: "1:3+5", mode: zero, renormalise: true, shared: true}
    - {name: fig4-r2, token_top: 2}                 # each token's own top-2, rerouted (Figure 4)

Under torchrun the ranks form replicas of --model-parallel ranks (each one model, sharded over its
ranks; probe/job.py): global batch b is evaluated by replica b % R (as `probe record` does) and the
per-domain sums are added over the replicas, so the table is the same whatever the layout; rank 0
writes it.

Library: select.py (what to disable: `Ablation`, `resolve`, the routing guard, the hooks, `ablated`), spec.py
(sweeps: spec files, checked whole before the first pass, and the names and selections a sweep must not repeat),
pertoken.py (`--token-top`: each token's own top-R experts masked, DeepSeekMoE's Figure 4, and its guard),
run.py (the job: `evaluate`, `ablate`, `write_ablations`), inputs.py (a job's options, its checks of --run
and --out, the corpus sample, the batches and model: shared with importance and steer), loads.py (the loads
ranking --top: a run's expert_load or the baseline pass), sweep.py (committing a sweep as it goes and
continuing an interrupted one); the command is `__main__.py`.
"""

from probe.lazy import exports

# NOTE: imported on first use (probe/lazy.py): run.py and select.py import torch, and
# `python -m analyses.ablate --help` runs this file first
__getattr__, __dir__, __all__ = exports(__name__, {
    ".run": ("ablate", "add_loss", "baseline_pass", "evaluate", "forward_batch", "reduce_entry", "saved_or_baseline",
             "warn_nonfinite", "write_ablations"),
    ".inputs": ("AblateOptions", "check_finished", "check_out", "inputs_key", "job_defaults", "job_meta",
                "limit_per_domain", "replica_batches", "sample_windows", "start_job"),
    ".loads": ("loads_from_run",),
    ".pertoken": ("check_token_top", "max_token_top", "token_top_hooks"),
    ".errors": ("AblationError",),
    ".select": ("ALL", "MODES", "Ablation", "Plan", "RouterShape", "ablated", "ablation_hooks",
                "check_routable", "normalise_disabled", "parse_experts", "parse_layers", "plan_hooks", "resolve",
                "reroute_hook", "zero_hook"),
    ".spec": ("check_names", "check_repeats", "load_spec", "selection_key", "top_vs_random"),
})
