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

from probe.lazy import exports

# NOTE: imported on first use (probe/lazy.py): `import model` imports no torch until a name of the model's
# is used, so that what reads runs and needs one torch-free helper of the model's (`model.indices.as_int` in
# analyses.metrics, the checkpoint's files in the report's label) does not pay torch's import (~1.5-2.5 s,
# ~190 MB) for it. `python -m model` imports what it runs in its __main__, under `quiet_start`.
__getattr__, __dir__, __all__ = exports(__name__, {
    ".args": ("ModelArgs", "ConfigError", "InputError"),
    ".checkpoint_files": ("CheckpointError",),  # torch-free: commands name it before they load a model
    ".checkpoint": ("load",),
    ".frozen": ("frozen_weights",),
    ".head_stats": ("TokenStats",),
    ".saving": ("save",),
    ".hooks": ("HookError", "HookPoint"),
    ".parallel": ("ParallelError",),
    ".patching": ("ExpertPatchReport", "patch_experts", "patch_sweep"),
    ".transformer": ("MTP", "Block", "Transformer"),
})
