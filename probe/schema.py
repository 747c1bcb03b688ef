"""Every table of a run directory: its columns, types and meaning, in one place.

A run directory holds `run.json` and one Parquet dataset (a folder of part files) per table:

    runs/NAME/run.json
    runs/NAME/tokens/r000-b0000000-0000063.parquet   (rank 0, global batches 0..63)
    runs/NAME/routing/...   expert_load/...   mtp/...   kv_stats/...   kv_spectrum/...
    runs/NAME/spec_decode/part-0.parquet, spec_drafts/...   (written by `dsv3-probe spec`)
    runs/NAME/ablations/<hash>.parquet   (written by `python -m analyses.ablate`)
    runs/NAME/expert_importance/<hash>.parquet, steering/<hash>.parquet   (analyses.importance, analyses.steer)
    runs/NAME/train_steps/..., train_domains/, train_gates/, train_eval/   (written by `python -m train`)
    runs/NAME/placement/...   (a serving engine's expert placement, from `dsv3-probe import sglang`)

`TABLES[name]` is the pyarrow schema; `DOCS[name]` documents each column (docs/run-tables.md, the
table reference, is generated from it). Definitions follow `docs/metrics.md`.
"""

from __future__ import annotations

import pyarrow as pa

K_LIST = pa.list_(pa.uint16())  # expert ids (K per token)

TABLES: dict[str, pa.Schema] = {
    "tokens": pa.schema([
        ("doc_id", pa.string()),
        ("seq_id", pa.int64()),
        ("pos", pa.int32()),
        ("doc_pos", pa.int64()),
        ("token_id", pa.int32()),
        ("domain", pa.string()),
        ("loss", pa.float32()),
    ]),
    "routing": pa.schema([
        ("seq_id", pa.int64()),
        ("pos", pa.int32()),
        ("layer", pa.int16()),
        ("expert_ids", K_LIST),
        ("expert_weights", pa.list_(pa.float32())),
        ("margin_k", pa.float32()),
        ("margin_1", pa.float32()),
        ("scores", pa.list_(pa.float32())),
    ]),
    "expert_load": pa.schema([
        ("step", pa.int64()),
        ("layer", pa.int16()),
        ("expert", pa.int32()),
        ("domain", pa.string()),
        ("count", pa.int64()),
        ("weight_sum", pa.float64()),
        ("tokens", pa.int64()),
    ]),
    "mtp": pa.schema([
        ("seq_id", pa.int64()),
        ("pos", pa.int32()),
        ("domain", pa.string()),
        ("mtp_top1", pa.int32()),
        ("main_top1", pa.int32()),
        ("agree", pa.bool_()),
        ("target", pa.int32()),
        ("mtp_loss", pa.float32()),
    ]),
    "kv_stats": pa.schema([
        ("layer", pa.int16()),
        ("tokens", pa.int64()),
        ("latent_dim", pa.int32()),
        ("latent_norm_mean", pa.float64()),
        ("latent_norm_std", pa.float64()),
        ("latent_norm_min", pa.float64()),
        ("latent_norm_max", pa.float64()),
        ("k_pe_norm_mean", pa.float64()),
        ("k_pe_norm_std", pa.float64()),
        ("k_pe_norm_min", pa.float64()),
        ("k_pe_norm_max", pa.float64()),
        ("channel_mean", pa.list_(pa.float64())),
        ("channel_var", pa.list_(pa.float64())),
        ("effective_rank", pa.float64()),
        ("energy90", pa.int32()),
        ("energy95", pa.int32()),
        ("energy99", pa.int32()),
        ("bytes_absorb", pa.int64()),
        ("bytes_naive", pa.int64()),
        ("bytes_mha", pa.int64()),
    ]),
    "kv_spectrum": pa.schema([
        ("layer", pa.int16()),
        ("component", pa.int32()),
        ("eigenvalue", pa.float64()),
    ]),
    "spec_decode": pa.schema([
        ("doc_id", pa.string()),
        ("domain", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("new_tokens", pa.int32()),
        ("forward_passes", pa.int32()),
        ("drafts_proposed", pa.int32()),
        ("drafts_accepted", pa.int32()),
        ("tokens_per_forward", pa.float64()),
        ("finish_reason", pa.string()),
    ]),
    "spec_drafts": pa.schema([
        ("doc_id", pa.string()),
        ("domain", pa.string()),
        ("position", pa.int32()),
        ("token", pa.int32()),
        ("accepted", pa.bool_()),
    ]),
    "ablations": pa.schema([
        ("ablation", pa.string()),
        ("spec", pa.string()),
        ("mode", pa.string()),
        ("renormalise", pa.bool_()),
        ("shared", pa.bool_()),
        ("n_disabled", pa.int32()),
        ("token_top", pa.int32()),
        ("domain", pa.string()),
        ("tokens", pa.int64()),
        ("loss", pa.float64()),
        ("baseline_loss", pa.float64()),
        ("delta", pa.float64()),
        ("routing_changed", pa.float64()),
        ("experts_changed", pa.float64()),
        ("downstream_layers", pa.int32()),
    ]),
    "expert_importance": pa.schema([
        ("layer", pa.int16()),
        ("expert", pa.int32()),
        ("domain", pa.string()),
        ("tokens", pa.int64()),
        ("load", pa.int64()),
        ("load_share", pa.float64()),
        ("baseline_loss", pa.float64()),
        ("loss", pa.float64()),
        ("delta", pa.float64()),
    ]),
    "steering": pa.schema([
        ("steer", pa.string()),
        ("spec", pa.string()),
        ("kind", pa.string()),
        ("domain", pa.string()),
        ("tokens", pa.int64()),
        ("steered_tokens", pa.int64()),
        ("forced_share", pa.float64()),
        ("baseline_loss", pa.float64()),
        ("loss", pa.float64()),
        ("delta", pa.float64()),
        ("prompt", pa.string()),
        ("baseline_text", pa.string()),
        ("steered_text", pa.string()),
    ]),
    "placement": pa.schema([
        ("layer", pa.int16()),
        ("physical", pa.int32()),
        ("logical", pa.int32()),
        ("gpu", pa.int32()),
    ]),
    "router_bias": pa.schema([
        ("step", pa.int64()),
        ("layer", pa.int16()),
        ("expert", pa.int32()),
        ("bias", pa.float32()),
    ]),
    "train_steps": pa.schema([
        ("step", pa.int64()),
        ("lr", pa.float64()),
        ("loss", pa.float64()),
        ("lm_loss", pa.float64()),
        ("mtp_loss", pa.float64()),
        ("aux_loss", pa.float64()),
        ("grad_norm", pa.float64()),
        ("tokens", pa.int64()),
        ("tokens_seen", pa.int64()),
        ("step_time_s", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("elapsed_s", pa.float64()),
    ]),
    "train_domains": pa.schema([
        ("step", pa.int64()),
        ("split", pa.string()),
        ("domain", pa.string()),
        ("loss", pa.float64()),
        ("mtp_loss", pa.float64()),
    ]),
    "train_gates": pa.schema([
        ("step", pa.int64()),
        ("split", pa.string()),
        ("layer", pa.int16()),
        ("maxvio", pa.float64()),
        ("bias_norm", pa.float64()),
    ]),
    "train_eval": pa.schema([
        ("step", pa.int64()),
        ("tokens_seen", pa.int64()),
        ("val_loss", pa.float64()),
        ("val_mtp_agree", pa.float64()),
    ]),
}
DOCS: dict[str, dict[str, str]] = {
    "tokens": {
        "doc_id": "document id (the corpus record's `id`, else `relative/path` or `file:line`; `#2`, `#3` appended to a repeat)",
        "seq_id": "global index of the sequence window (documents are cut into windows of --seq-len)",
        "pos": "position inside the window (0-based; the model sees each window on its own)",
        "doc_pos": "position inside the whole document (window start + pos)",
        "token_id": "token id",
        "domain": "corpus domain (sub-folder name, or the record's `domain`; `all` is reserved for the "
                  "analyses' rows of every domain together; `sglang` in an import)",
        "loss": "surprisal of this token: -log p(token | earlier tokens of the window) under the main "
                "model, nats; null at pos 0",
    },
    "routing": {
        "seq_id": "window (joins tokens)", "pos": "position in the window",
        "layer": "MoE layer index (dense layers have no rows)",
        "expert_ids": "the K chosen experts, best selection score first",
        "expert_weights": "their weights (unbiased scores, normalised, times route_scale)",
        "margin_k": "selection score of the K-th chosen minus the best unchosen allowed expert "
                    "(distance to a different route; null when no expert is left)",
        "margin_1": "top-1 selection score minus the best unchosen allowed expert",
        "scores": "every routed expert's unbiased score [E] (--router-logits full, on the --sample "
                  "fraction of tokens; null elsewhere)",
    },
    "expert_load": {
        "step": "global batch index", "layer": "MoE layer", "expert": "routed expert id",
        "domain": "domain of the tokens", "count": "top-k assignments of this batch's tokens of this domain",
        "weight_sum": "sum of their routing weights",
        "tokens": "tokens of this domain in this batch (mean load = tokens*K/E); every expert has a "
                  "row, zero counts included. An SGLang import of counts (stat, per_pass) has no tokens: a "
                  "pass's assignments in its first MoE layer / the top-k, which without `--config` is assumed "
                  "to be 8 unless the dump shows it (`run.json` `source.topk_assumed`, said by the import and "
                  "the Overview); the loads and their shares do not rest on it",
    },
    "mtp": {
        "seq_id": "window", "pos": "position i (the MTP module sees h_i and token i+1)", "domain": "domain",
        "mtp_top1": "MTP module's top-1 prediction of token i+2",
        "main_top1": "main model's top-1 prediction at position i+1 (also of token i+2)",
        "agree": "mtp_top1 == main_top1: teacher-forced agreement (greedy acceptance)",
        "target": "the actual token i+2 (null at the window's last usable position)",
        "mtp_loss": "-log p_MTP(token i+2), nats (null where target is null)",
    },
    "kv_stats": {
        "layer": "layer (the MTP block is not included)", "tokens": "tokens accumulated",
        "latent_dim": "kv_lora_rank C",
        "latent_norm_*": "L2 norm statistics of c_kv after kv_norm",
        "k_pe_norm_*": "L2 norm statistics of the shared rope key after RoPE",
        "channel_mean": "per-channel mean of c_kv [C]", "channel_var": "per-channel variance [C] (0.0 within the float64 "
                                                                      "subtraction's rounding: docs/metrics.md)",
        "effective_rank": "exp(-sum p_k ln p_k), p_k = eigenvalue_k / sum (Roy & Vetterli), of the "
                          "latent covariance (accumulated in float64); 0.0 where the covariance holds no variance "
                          "(a layer of fewer than two tokens: no measurement, shown as none by the report and the "
                          "dashboard; or one whose latents never varied: the float64 subtraction's rounding is "
                          "taken as none, docs/metrics.md), NaN where the latents held NaN or inf",
        "energy90/95/99": "components needed for 90/95/99% of the covariance's energy (0 and null in those two "
                          "cases)",
        "bytes_absorb": "cache bytes per token per layer, absorb form: (C + R) x element size (of the checkpoint's "
                        "dtype, as a server caches it, whatever --dtype the run used)",
        "bytes_naive": "naive MLA cache: H x (N + R + V) x element size",
        "bytes_mha": "a standard MHA cache of the same model width: 2 x dim x element size",
    },
    "kv_spectrum": {
        "layer": "layer", "component": "rank of the eigenvalue (0 = largest)",
        "eigenvalue": "eigenvalue of the latent covariance",
    },
    "spec_decode": {
        "doc_id": "document whose first tokens are the prompt (`dsv3-probe spec`)", "domain": "its domain",
        "prompt_tokens": "prompt length (BOS included)",
        "new_tokens": "tokens generated greedily (stops at EOS or --new-tokens)",
        "forward_passes": "main-model forward passes for this prompt, prefill included",
        "drafts_proposed": "MTP drafts verified", "drafts_accepted": "drafts equal to the main model's greedy token",
        "tokens_per_forward": "new_tokens / forward_passes (1.0 without drafts)",
        "finish_reason": "`stop` (EOS) or `length`",
    },
    "spec_drafts": {
        "doc_id": "prompt document", "domain": "its domain",
        "position": "index of the generated token the draft was proposed for (0 would be the first new token, "
                    "which the prefill gives with no draft, so positions start at 1)",
        "token": "the drafted token id", "accepted": "the main model's greedy token equals the draft",
    },
    "ablations": {
        "ablation": "name of the ablation (`python -m analyses.ablate`; one row per ablation and domain)",
        "spec": "the ablation as JSON: its selection rule and the resolved `disabled` experts per layer",
        "mode": "`reroute`: disabled experts' selection scores set to -inf before group-limited top-k "
                "(DeepSeekMoE protocol); `zero`: routing kept, disabled experts' weights set to 0",
        "renormalise": "zero mode: the remaining weights rescaled to the token's original weight sum "
                       "(false = left as they are; always false for reroute)",
        "shared": "the shared expert was disabled too (in the ablation's layers)",
        "n_disabled": "routed experts disabled, summed over layers (token_top: R per ablated layer, each "
                      "token its own R, so n_disabled / (E x layers) is the ratio of DeepSeekMoE's Figure 4)",
        "token_top": "R of a per-token ablation (`--token-top R`): each token's own top-R routed experts by its "
                     "router's selection score (bias included) masked in every ablated layer (zero mode: its "
                     "first R routed experts dropped); null for the fixed selections (top, random, experts), "
                     "which disable the same experts for every token",
        "domain": "corpus domain, or `all` for every token",
        "tokens": "tokens scored (positions > 0 of each window), whatever surprisal the model gave them",
        "loss": "mean surprisal under the ablation, nats; NaN (or inf) where the model gave a scored token a "
                "NaN (or infinite) surprisal (see above)",
        "baseline_loss": "mean surprisal of the same tokens with nothing disabled (NaN or inf likewise)",
        "delta": "loss - baseline_loss",
        "routing_changed": "share of (token, MoE layer after the first ablated layer, ablated or not; "
                           "every MoE layer when nothing is disabled) whose top-k set differs from the "
                           "baseline's (null when no MoE layer follows; every position, the first included)",
        "experts_changed": "mean share of the K experts replaced, over the same (token, layer) pairs",
        "downstream_layers": "MoE layers compared (those after the first ablated layer)",
    },
    "expert_importance": {
        "layer": "MoE layer whose expert was removed (`python -m analyses.importance`)",
        "expert": "the routed expert removed (reroute: its selection score set to -inf at this layer only)",
        "domain": "corpus domain, or `all` for every token",
        "tokens": "tokens scored (positions > 0 of each window), whatever surprisal the model gave them",
        "load": "top-k assignments the expert received at this layer, baseline pass (every position of "
                "each window, the first included: it is routed, though it has no target to score)",
        "load_share": "load / (routed tokens x K): the expert's share of the layer's assignments",
        "baseline_loss": "mean surprisal of the tokens with nothing removed, nats (NaN or inf: see above)",
        "loss": "mean surprisal with the expert removed (NaN or inf: see above)",
        "delta": "loss - baseline_loss (the expert's causal importance)",
    },
    "steering": {
        "steer": "name of the steering (`python -m analyses.steer`)",
        "spec": "the steering as JSON: experts per layer, force or bias, which tokens",
        "kind": "`loss`: one row per domain (and `all`); `generation`: one row per prompt",
        "domain": "corpus domain, `all`, or the prompt's domain (null when none)",
        "tokens": "loss rows: tokens scored, whatever surprisal the model gave them; generation rows: tokens "
                  "generated",
        "steered_tokens": "tokens the steering applied to (loss rows: of those scored)",
        "forced_share": "share of (steered token, steered layer) pairs whose top-k holds every steered "
                        "expert (1.0 when forcing; lower for a bias)",
        "baseline_loss": "loss rows: mean surprisal without steering, nats (null for generation rows)",
        "loss": "loss rows: mean surprisal with steering (NaN or inf: see above)",
        "delta": "loss - baseline_loss",
        "prompt": "generation rows: the prompt text",
        "baseline_text": "generation rows: greedy continuation without steering",
        "steered_text": "generation rows: greedy continuation with steering",
    },
    "placement": {
        "layer": "MoE layer",
        "physical": "physical expert slot (GPU-major: slot s of GPU g is g x slots per GPU + s)",
        "logical": "the logical (routed) expert that slot holds",
        "gpu": "the GPU (expert-parallel rank) holding the slot",
    },
    "router_bias": {
        "step": "training step the bias is from (0 in a recorded run: the checkpoint's bias)",
        "layer": "MoE layer (an MTP block's router: n_layers + k, its index in the checkpoint)",
        "expert": "routed expert id",
        "bias": "the balancing bias `e_score_correction_bias` (selection score = score + bias)",
    },
    "train_steps": {
        "step": "optimizer step (1-based)", "lr": "learning rate of the step",
        "loss": "total loss (LM + MTP weight x MTP + balance terms)", "lm_loss": "main next-token loss, nats",
        "mtp_loss": "MTP loss (token i+2), nats; null without MTP", "aux_loss": "weighted balance loss",
        "grad_norm": "gradient norm before clipping", "tokens": "tokens in the global batch",
        "tokens_seen": "tokens so far", "step_time_s": "seconds of the step", "tokens_per_s": "throughput",
        "elapsed_s": "seconds since this session started",
    },
    "train_domains": {
        "step": "step", "split": "`train` (the step's batch) or `val` (the validation set at an evaluation)",
        "domain": "corpus domain", "loss": "main next-token loss of this domain's rows, nats",
        "mtp_loss": "MTP loss of the domain (val only)",
    },
    "train_gates": {
        "step": "step", "split": "`train` (the step's global batch) or `val` (MaxVio_global on the validation set)",
        "layer": "MoE layer of the router (an MTP block's: n_layers + k)",
        "maxvio": "MaxVio = (max load - mean load) / mean load",
        "bias_norm": "L2 norm of the router's balancing bias after the step (train only)",
    },
    "train_eval": {
        "step": "step of the evaluation", "tokens_seen": "tokens trained on so far",
        "val_loss": "validation loss, the mean of the per-domain losses",
        "val_mtp_agree": "MTP teacher-forced agreement on the validation set",
    },
}


def layer_label(layer: int, n_layers: int | None = None) -> str:
    """How pages and the report name a layer to a reader: 'layer 3', or 'MTP 0' for an MTP block's
    router (layer n_layers + k, as in the checkpoint and the tables' `layer` column, which keep the
    integer). Display only: run.json's `gates` and the tables are unchanged."""
    layer = int(layer)
    return f"MTP {layer - n_layers}" if n_layers is not None and layer >= n_layers else f"layer {layer}"


def markdown() -> str:
    """The table reference as Markdown: docs/run-tables.md holds this text under its introduction (a
    test keeps the two equal; regenerate with `python -c "import probe.schema as s; print(s.markdown())"`)."""
    out = []
    for table, schema in TABLES.items():
        out.append(f"## `{table}`\n\n| column | type | meaning |\n|---|---|---|")
        docs = DOCS.get(table, {})
        for f in schema:
            doc = docs.get(f.name)
            if doc is None:  # grouped docs such as "latent_norm_*" or "energy90/95/99"
                doc = next((v for k, v in docs.items() if _matches(k, f.name)), "")
            typ = str(f.type).replace("list<item: ", "list<")
            out.append(f"| `{f.name}` | {typ} | {doc.replace('|', chr(92) + '|')} |")
        out.append("")
    return "\n".join(out)


def _matches(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    if "/" in pattern:  # "energy90/95/99"
        head = pattern.rstrip("0123456789/")
        return name.startswith(head) and name[len(head):] in pattern[len(head):].split("/")
    return False
