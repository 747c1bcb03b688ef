"""A faithful, hookable DeepSeek-V3 (and V2) in PyTorch.

    import model
    m = model.load("path/to/hf-checkpoint")          # -> model.Transformer, eval mode
    logits, cache = m.run_with_cache(tokens, names="layers.*.ffn.gate.hook_topk_ids")
    m = model.load("path/to/hf-checkpoint", parallel=True)   # under torchrun: TP + EP shards (model.parallel)
    with model.frozen_weights(m):                     # weights held still: oneDNN reads them pre-packed
        logits = m(tokens)
    stats = m(tokens, targets=next_ids)               # model.TokenStats(nll, top1): no [B, S, V] logits
    logits, report = model.patch_experts(m, corrupted, clean_cache)   # patching by expert id (model.patching)
    table = model.patch_sweep(m, clean, corrupted, "layers.*.hook_resid_post", metric)  # a DataFrame
"""

from probe.job_signals import quiet_start

with quiet_start():  # `python -m model`: Ctrl-C while torch is imported (model/__main__ takes it from there)
    from .args import ConfigError, InputError, ModelArgs
    from .checkpoint import CheckpointError, load
    from .frozen import frozen_weights
    from .head_stats import TokenStats
    from .saving import save
    from .hooks import HookError, HookPoint
    from .parallel import ParallelError
    from .patching import ExpertPatchReport, patch_experts, patch_sweep
    from .transformer import MTP, Block, Transformer

__all__ = ["ModelArgs", "ConfigError", "Transformer", "Block", "MTP", "HookPoint", "HookError", "load", "save",
           "CheckpointError", "ParallelError", "InputError", "frozen_weights", "TokenStats",
           "patch_experts", "ExpertPatchReport", "patch_sweep"]
