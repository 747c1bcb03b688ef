"""Replay measured traffic on a placement: what each GPU would have computed, pass by pass.

A placement maps each layer's physical expert slots to logical experts (`phy2log` [P], GPU-major:
slot s of GPU g is `g * P / G + s`). A logical expert with r replicas is assumed to split its tokens
evenly over them: EPLB's model, and the expectation under SGLang's `dynamic` dispatch; its `static`
dispatch (what `--init-expert-location` sets) sends each GPU's tokens to one fixed replica, which
differs from an even split by at most one source GPU's share. A GPU's load is the sum over its
slots; the balancedness of a layer in a pass is mean / max GPU load (the SGLang / vLLM EPLB metric;
1 = perfectly even), and of a pass the mean over its MoE layers. SGLang's recorder averages over
every layer, its dense ones (which count 1.0) included, so its figure reads higher: for DeepSeek-V3,
(3 + 58 x ours) / 61.

    gpu_loads(loads [..., E], phy2log [P], gpus)               -> [..., G]
    balancedness(loads [S, L, E], maps [L, P], gpus)           -> [S, L]   (NaN where nothing was routed)
    trivial_map(E, P)                                          -> SGLang's default `arange(P) % E`
    maps_from_rows(placement table rows)                       -> ({layer: map [P]}, GPUs)
"""

from __future__ import annotations

import numpy as np

from . import PlacementError


def maps_from_rows(df) -> tuple[dict[int, np.ndarray], int]:
    """({layer: physical-to-logical map [P]}, GPUs) of a `placement` table's rows (layer, physical,
    logical, gpu; ordered by layer and physical), as `dsv3-probe import sglang` writes the server's."""
    maps = {int(lay): g.logical.to_numpy(np.int64) for lay, g in df.groupby("layer")}
    return maps, int(df.gpu.max()) + 1 if len(df) else 0


def trivial_map(n_experts: int, n_physical: int) -> np.ndarray:
    """SGLang's `--init-expert-location trivial`: physical slot p holds logical expert p % E."""
    return np.arange(n_physical, dtype=np.int64) % n_experts


def _check(phy2log: np.ndarray, n_experts: int, n_gpus: int) -> np.ndarray:
    m = np.asarray(phy2log, dtype=np.int64)
    if m.ndim != 1 or m.size == 0:
        raise PlacementError(f"a layer's physical-to-logical map must be a non-empty vector, got shape {m.shape}")
    if n_gpus < 1 or m.size % n_gpus:
        raise PlacementError(f"{m.size} physical slots do not split evenly over {n_gpus} GPUs")
    if m.min() < 0 or m.max() >= n_experts:
        raise PlacementError(f"the map holds expert {int(m.max() if m.max() >= n_experts else m.min())}, "
                             f"outside 0..{n_experts - 1}")
    if (np.bincount(m, minlength=n_experts) == 0).any():
        missing = np.nonzero(np.bincount(m, minlength=n_experts) == 0)[0]
        raise PlacementError(f"experts {missing[:8].tolist()} have no slot in the map: their tokens could not run")
    return m


def gpu_loads(loads, phy2log, n_gpus: int) -> np.ndarray:
    """Per-GPU load [..., G] of logical loads [..., E] placed by `phy2log` [P] (replicas share evenly)."""
    x = np.asarray(loads, dtype=np.float64)
    m = _check(phy2log, x.shape[-1], n_gpus)
    per_slot = x[..., m] / np.bincount(m, minlength=x.shape[-1])[m]
    return per_slot.reshape(*x.shape[:-1], n_gpus, -1).sum(-1)


def balancedness(loads, maps, n_gpus: int) -> np.ndarray:
    """[S, L] mean / max GPU load of each pass and layer; loads [S, L, E], maps [L, P] (one per layer)."""
    x = np.asarray(loads, dtype=np.float64)
    if x.ndim != 3 or len(maps) != x.shape[1]:
        raise PlacementError(f"loads must be [passes, layers, experts] with one map per layer; got {x.shape} and "
                             f"{len(maps)} maps")
    out = np.full(x.shape[:2], np.nan)
    for i, m in enumerate(maps):
        g = gpu_loads(x[:, i], m, n_gpus)  # [S, G]
        top = g.max(1)
        ok = top > 0
        out[ok, i] = g[ok].mean(1) / top[ok]
    return out
