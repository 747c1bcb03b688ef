"""Which CPU GEMM runs the float32 projections: torch's `F.linear` (MKL or OpenBLAS sgemm) or oneDNN's
linear primitive (`torch.ops.mkldnn._linear_pointwise`). Neither wins everywhere (on a 2-core AMD
EPYC oneDNN ran twice as fast; on an Intel Xeon with AVX-512, MKL was as fast or faster), so the
choice is measured on the machine at hand: on first use, both paths are timed on the shapes of that
first GEMM (its transpose and a square one too, the calls of the two paths interleaved; tens of
milliseconds), the faster is kept and cached per CPU model, torch version and thread count in
`$XDG_CACHE_HOME/dsv3-probe/gemm.json` (default `~/.cache`); a tie (within 3%) keeps F.linear.
Caching every choice matters beyond speed: the two paths sum in different orders, so processes that
chose differently (the ranks of one job, a run and its resume) would not compute the same numbers. `DSV3_ONEDNN=1` or `0`
forces the choice; `DSV3_GEMM_CACHE=0` measures afresh every process without reading or writing
the cache.

    from model import gemm
    gemm.choice()            # GemmChoice(path='onednn', source='measured', reason='...', ...)
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

PATHS = ("onednn", "linear")
REPEATS = 15  # timed calls per path and shape, the two paths alternating (the median counts), after a warm-up
TIE = 0.03  # paths closer than this (relative) are a tie: F.linear is kept (and cached like any choice)


@dataclass(frozen=True)
class GemmChoice:
    path: str  # "onednn" or "linear"
    source: str  # "env" (DSV3_ONEDNN), "cache", "measured" or "unavailable" (no oneDNN in this torch)
    reason: str  # one line a person can read
    cpu: str = ""
    torch: str = ""
    threads: int = 0
    seconds: dict = field(default_factory=dict)  # path -> median seconds of the timed shapes, summed

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onednn_available() -> bool:
    """oneDNN's linear primitive exists in this torch build and agrees with F.linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.randn(3, 5), torch.randn(4, 5)
        return torch.allclose(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), F.linear(x, w),
                              rtol=1e-5, atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


def _time_both(x: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """Median seconds of each path on one shape, their calls interleaved (ABAB..., the order swapped
    every round) so that a drift in the machine's speed (other jobs, clocks) hits both alike."""
    fns = {"onednn": _onednn, "linear": F.linear}
    for fn in fns.values():
        fn(x, w)  # warm-up: oneDNN compiles a kernel per shape
    ts: dict[str, list[float]] = {p: [] for p in fns}
    for i in range(REPEATS):
        for p in (PATHS if i % 2 == 0 else PATHS[::-1]):
            t0 = time.perf_counter()
            fns[p](x, w)
            ts[p].append(time.perf_counter() - t0)
    return {p: sorted(v)[len(v) // 2] for p, v in ts.items()}


def _onednn(x, w):
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def measure(shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """Median seconds of each path over `shapes` (rows, in, out), summed; float32, no gradient."""
    g = torch.Generator().manual_seed(0)
    out = dict.fromkeys(PATHS, 0.0)
    with torch.no_grad():
        for rows, k, n in shapes:
            x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
            for p, t in _time_both(x, w).items():
                out[p] += t
    return out


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsv3-probe" / "gemm.json"


def _key() -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def decide(shapes: list[tuple[int, int, int]]) -> GemmChoice:
    """The choice for this machine: forced by DSV3_ONEDNN, read from the cache, or measured on `shapes`
    (and cached)."""
    base = dict(cpu=cpu_model(), torch=torch.__version__, threads=torch.get_num_threads())
    forced = os.environ.get("DSV3_ONEDNN")
    if not onednn_available():
        return GemmChoice("linear", "unavailable", "oneDNN's linear primitive is not in this torch build", **base)
    if forced in ("0", "1"):
        path = "onednn" if forced == "1" else "linear"
        return GemmChoice(path, "env", f"DSV3_ONEDNN={forced} forces {path}", **base)
    use_cache = os.environ.get("DSV3_GEMM_CACHE", "1") != "0"
    cached = _read_cache().get(_key()) if use_cache else None
    if cached and cached.get("path") in PATHS:
        return GemmChoice(cached["path"], "cache", f"{cached.get('reason', '')} (cached in {_cache_file()})",
                          seconds=cached.get("seconds", {}), **base)
    secs = measure(shapes)
    path = min(PATHS, key=lambda p: secs[p])
    other = next(p for p in PATHS if p != path)
    ratio = secs[other] / max(secs[path], 1e-12)
    tie = ratio < 1 + TIE
    if tie:
        path, other = "linear", "onednn"
    reason = (f"measured on this CPU: {path} {secs[path] * 1e3:.2f} ms vs {other} {secs[other] * 1e3:.2f} ms "
              f"({secs[other] / max(secs[path], 1e-12):.2f}x) on {len(shapes)} GEMM shapes"
              + (f"; a tie (within {TIE:.0%}): F.linear kept" if tie else ""))
    choice = GemmChoice(path, "measured", reason, seconds=secs, **base)
    if use_cache:  # every process of this machine (the ranks of a job too) then runs the same arithmetic
        _write_cache(choice)
    return choice


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(choice: GemmChoice) -> None:
    """Add this machine's choice to the cache file (temporary name, then rename; a failure to write
    only means measuring again next time)."""
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache() | {_key(): {"path": choice.path, "reason": choice.reason, "seconds": choice.seconds,
                                          "measured": time.time()}}
        tmp = f.with_name(f"{f.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, f)
    except OSError:
        pass


_CHOICE: GemmChoice | None = None


def choice(shape: tuple[int, int, int] = (256, 512, 512)) -> GemmChoice:
    """This process's choice, made on its first call: the GEMM `shape` (rows, in, out) of that first
    call, its transpose and the square of its larger side are timed (rows clipped to 256..512,
    features to 2048: a prefill's row counts and enough work per call, ~10-50 ms in all, that
    timer noise does not decide)."""
    global _CHOICE
    if _CHOICE is None:
        rows, k, n = shape
        rows, k, n = min(max(rows, 256), 512), min(k, 2048), min(n, 2048)
        big = max(k, n, 512)
        _CHOICE = decide([(rows, k, n), (rows, n, k), (rows, big, big)])
    return _CHOICE


def agree_across_ranks() -> GemmChoice:
    """Under torch.distributed: every rank takes rank 0's choice (made now if not yet), so that the
    ranks of one job run the same arithmetic even when they would each measure a near tie apart.
    A collective: every rank calls it, at the same point (model.parallel.init_world does)."""
    import torch.distributed as dist

    global _CHOICE
    box = [choice().to_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if dist.get_rank() != 0:
        made = box[0]
        _CHOICE = GemmChoice(**(made | {"source": "rank 0", "reason": f"rank 0's choice: {made['reason']}"}))
    return _CHOICE


def current() -> GemmChoice | None:
    """The choice if this process has made one (no float32 CPU GEMM big enough yet: None)."""
    return _CHOICE


def reset() -> None:
    """Forget this process's choice (the next GEMM decides again; tests and benchmarks)."""
    global _CHOICE
    _CHOICE = None
