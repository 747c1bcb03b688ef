"""Load-balance and specialisation metrics, defined as in `docs/metrics.md`.

Every metric has an array version (numpy, in memory) and a run version that aggregates a run
directory's Parquet tables with DuckDB SQL (GROUP BY / UNNEST) so that only per-expert or per-layer
aggregates reach Python. Run arguments accept a `probe.Run` or a run directory path. Bad input
raises `MetricsError` (a ValueError) with a one-line message; so does a count or threshold outside its
meaning (top=0, min_count=2.5, every=1, near=-1), naming the argument. A table that a complete run has
lost (its folder, or one rank's part files: `probe.run.lost_tables`) is the `probe.RunError` that reading
it through the run raises, naming the run, the table and the missing parts. A "load" is the number of
(token, top-k slot) assignments an expert received.

    from analyses.metrics import balance_table, maxvio
    balance_table("runs/x")                  # one row per MoE layer, every balance metric

Load balance (`balance.py`)
- maxvio(load, mean_load=None)            MaxVio = (max - mean)/mean (2408.15664 Eq. 4), global
- maxvio_batch(batch_loads)               MaxVio per batch, rows of a [batches, N] table
- relative_load(load)                     load / mean load (DeepSeek-V3 Fig. 9)
- balancedness(load)                      mean / max (SGLang / vLLM EPLB)
- imbalance_ratio(load)                   max / mean - 1 of per-rank loads (TensorRT-LLM)
- cv, normalised_entropy, gini, jain_index   secondary views
- normalised_scores(scores)               s / sum(s) per token
- switch_balance(load, mean_score)        sum f_i P_i, top-K Switch form (2408.15664 Eq. 2)
- gpu_loads(load, n_gpus)                 per-GPU loads of the contiguous placement
- balance_summary(load, batch_loads=None, n_gpus=None, mean_score=None)   all of the above, a dict
- layer_loads_from_run(run)               {layer: [N] total loads}
- batch_loads_from_run(run, layer)        (steps, [B, N]) per-batch loads
- maxvio_batch_from_run(run)              DataFrame layer, step, assignments, maxvio (SQL)
- switch_inputs_from_run(run)             {layer: (load, mean normalised score, tokens)} from scored rows
- balance_table(run, n_gpus=None)         DataFrame, one row per layer, every balance metric

Specialisation (`specialisation.py`)
- contingency(labels, expert_ids, n_experts=None)   (labels, [D, N] top-k assignment counts)
- entropy(p), mutual_information(table)   nats
- nmi(table, average="arithmetic")        I / mean(H) (also geometric, min, max, rows)
- domain_nmi(table)                       I(domain; expert) / H(domain)
- domain_share(table)                     P(domain | expert)
- lift(table)                             P(domain | expert) / P(domain)
- vocabulary_specialisation(token_ids, top1, min_count=1)   OLMoE: mean over ids of top expert share
- vocabulary_specialisation_baseline(token_ids, top1, min_count=1)   its value with the experts shuffled
- VOCAB_MIN_COUNT                         the min_count the dashboard and the report use (5)
- expert_vocabulary(token_ids, top1, n_experts=None, top=5) per expert: ids, entropy, top ids, share
- contingency_from_run(run, layer=None), domain_contingency_from_run(run), lift_from_run(run, layer)
- specialisation_table(run)               DataFrame per layer: MI, domain_nmi, nmi, max lift
- vocabulary_specialisation_from_run(run, against="current"|"next", min_count=1)
- expert_vocabulary_from_run(run, layer, top=5)

Routing patterns (`routing.py`)
- repetition(expert_ids, seq_id=None, pos=None, n_experts=None)  Mixtral Table 5 + baselines
- random_overlap_baseline(n_experts, k)   1 - C(N-k, k) / C(N, k)
- coactivation(expert_ids, n_experts=None, normalise=True)   OLMoE N(Ei, Ej) / N(Ei)
- routing_agreement(ids_a, ids_b)         top1_same, set_same, overlap |∩|/K, jaccard, nmi_top1
- margin_summary(margins, near=0.01)      count, mean, std, quantiles, share below `near`
- score_entropy(scores)                   per-token normalised routing entropy
- repetition_from_run(run, layer=None), coactivation_from_run(run, layer, normalise=True)
- layer_agreement_from_run(run, layers=None)     consecutive MoE layers
- routing_agreement_from_runs(run_a, run_b)      same tokens, two runs (check_comparable: its checks alone)
- routing_agreement_by_layer(routing_a, routing_b)   the same on two routing tables in memory (no DuckDB)
- record_agreement(tokens_ref, routing_ref, tokens_got, routing_got)   one record against another: top-k
  sets, top-1, experts differing and mean loss per domain, summed over layers (no DuckDB)
- margins_from_run(run, near=0.01), score_entropy_from_run(run)

Expert paths (`paths.py`)
- path_keys(ids, k=1), path_codes(ids, k=1)   a token's experts through the layers (top-1, or top-k sets)
- path_entropy(codes), path_summary(ids, domains=None, k=1)   distinct paths, entropy, top-10 share
- domain_information(ids, domains, layers=None, k=1, test=None)   path vs each layer: NMI, AMI, held-out accuracy
- heldout_accuracy(labels, values, test)  majority-label decoding on held-out rows, and its baseline
- heldout_windows(seq_id, domain, every=5)   the held-out mask: every `every`-th window of each domain
- heldout_left_out(labels, test), left_out_note(names or result, every=None)   the domains held out whole (one
  window), which the held-out scores leave out and name in their `left_out` column (a list in each row, the split's
  `every` in the result's attrs); the one sentence every consumer says
- common_paths(ids, domains=None, token_ids=None, k=1, top=10)   the most used paths, their domain (with two or more
  domains), tokens
- routes_from_run(run, layers=None, compact=False) -> Routes   tokens routed at every chosen layer, [T, L, K] (int64;
  compact: int16 for up to 32,767 experts, a quarter of the memory)
- path_summary_from_run, domain_information_from_run, common_paths_from_run

Token-id dependence (`token_dependence.py`)
- majority_predict(keys, labels, test, fallback=None)   majority label per key, learned on training rows
- token_dependence(token_id, prev_id, pos, labels, test)   held-out accuracy: token id vs context baselines
- token_dependence_from_run(run, layers=None, every=5, k=None, min_count=1, baseline=False)   per layer, top-1
  and top-k, + OLMoE vocab spec (with baseline: its value with the experts shuffled beside it)

Linear probes (`probes.py`)
- routing_features(ids, weights, n_experts)   [T, E] gate weights at the chosen experts, 0 elsewhere
- linear_probe(features, labels, test, seed=0)   logistic regression on ~test, scored on test: accuracy,
  balanced accuracy, and two controls (the majority label; the probe trained on shuffled labels)
- domain_probe_from_run(run, layers=None, features="weights"|"scores", every=5, max_rows=50_000)
  the token's domain probed from each layer's routing and from all of them side by side

Run vs run (`routing.py`): routing_agreement_from_runs (also share_of_a / share_of_b matched) and
route_changes_from_runs(run_a, run_b, top=20): the tokens whose routes changed most. Both, and
check_comparable, refuse runs of models with other routed or activated expert counts
(probe.model_shape): expert ids are compared by index.

Speculative decoding (`speculative.py`; `dsv3-probe spec`'s tables, the dashboard's MTP page and the report)
- spec_by_domain(con), spec_by_position(con, size=1)   acceptance per domain (with mean_length, tokens per
  forward pass) and by generated position, on a connection with the tables as views (`run.con`)
- spec_totals(by_domain)                  the whole run's prompts, drafts, acceptance rate, mean acceptance length
- spec_bucket_size(info, buckets=8)       generated positions a point of acceptance by position averages
- unprompted_domains(by_domain, domains)  the run's domains the spec held no prompt of
- spec_by_domain_from_run(run), spec_by_position_from_run(run, size=1)

The run versions of the routing metrics and the paths read a run's routing a MoE layer at a time (several a
query where they are small), in window order (`readings.py`, internal).
"""

from __future__ import annotations

from ._common import MetricsError
from .balance import (balance_summary, balance_table, balancedness, batch_loads_from_run, cv, gini, gpu_loads,
                      imbalance_ratio, jain_index, layer_loads_from_run, maxvio, maxvio_batch,
                      maxvio_batch_from_run, normalised_entropy, normalised_scores, relative_load,
                      switch_balance, switch_inputs_from_run)
from .paths import (Routes, common_paths, common_paths_from_run, domain_information, domain_information_from_run,
                    heldout_accuracy, heldout_left_out, heldout_windows, left_out_note, path_codes, path_entropy,
                    path_keys, path_summary, path_summary_from_run, routes_from_run)
from .routing import (check_comparable, coactivation, coactivation_from_run, layer_agreement_from_run,
                      margin_summary, margins_from_run, random_overlap_baseline, repetition, repetition_from_run,
                      record_agreement, route_changes_from_runs, routing_agreement, routing_agreement_by_layer,
                      routing_agreement_from_runs, score_entropy, score_entropy_from_run)
from .probes import FEATURES as PROBE_FEATURES, domain_probe_from_run, linear_probe, routing_features
from .speculative import (spec_bucket_size, spec_by_domain, spec_by_domain_from_run, spec_by_position,
                          spec_by_position_from_run, spec_totals, unprompted_domains)
from .token_dependence import PREDICTORS, majority_predict, token_dependence, token_dependence_from_run
from .specialisation import (contingency, contingency_from_run, domain_contingency_from_run, domain_nmi,
                             domain_share, entropy, expert_vocabulary, expert_vocabulary_from_run, lift,
                             lift_from_run, mutual_information, nmi, specialisation_table, VOCAB_MIN_COUNT,
                             vocabulary_specialisation, vocabulary_specialisation_baseline,
                             vocabulary_specialisation_from_run)

__all__ = [
    "MetricsError",
    "balance_summary", "balance_table", "balancedness", "batch_loads_from_run", "cv", "gini", "gpu_loads",
    "imbalance_ratio", "jain_index", "layer_loads_from_run", "maxvio", "maxvio_batch", "maxvio_batch_from_run",
    "normalised_entropy", "normalised_scores", "relative_load", "switch_balance", "switch_inputs_from_run",
    "check_comparable", "coactivation", "coactivation_from_run", "layer_agreement_from_run", "margin_summary",
    "margins_from_run",
    "random_overlap_baseline", "repetition", "repetition_from_run", "routing_agreement", "record_agreement",
    "routing_agreement_by_layer", "routing_agreement_from_runs", "route_changes_from_runs", "score_entropy",
    "score_entropy_from_run",
    "Routes", "common_paths", "common_paths_from_run", "domain_information", "domain_information_from_run",
    "heldout_accuracy", "heldout_left_out", "heldout_windows", "left_out_note", "path_codes", "path_entropy",
    "path_keys", "path_summary",
    "path_summary_from_run", "routes_from_run", "PREDICTORS", "majority_predict", "token_dependence", "token_dependence_from_run",
    "contingency", "contingency_from_run", "domain_contingency_from_run", "domain_nmi", "domain_share", "entropy",
    "expert_vocabulary", "expert_vocabulary_from_run", "lift", "lift_from_run", "mutual_information", "nmi",
    "specialisation_table", "VOCAB_MIN_COUNT", "vocabulary_specialisation", "vocabulary_specialisation_baseline",
    "vocabulary_specialisation_from_run",
    "PROBE_FEATURES", "domain_probe_from_run", "linear_probe", "routing_features",
    "spec_bucket_size", "spec_by_domain", "spec_by_domain_from_run", "spec_by_position", "spec_by_position_from_run",
    "spec_totals", "unprompted_domains",
]
