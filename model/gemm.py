"""Which CPU GEMM runs the float32 projections: torch's `F.linear` (MKL or OpenBLAS sgemm) or oneDNN's
linear primitive (`torch.ops.mkldnn._linear_pointwise`). Neither wins everywhere (on a 2-core AMD
EPYC oneDNN ran twice as fast; on an Intel Xeon with AVX-512, MKL was as fast or faster), so the
choice is measured on the machine at hand: on first use, both paths are timed on the shapes of that
first GEMM (its transpose and a square one too, the calls of the two paths interleaved; tens of
milliseconds; oneDNN with its weights pre-packed, as the jobs run it, model/frozen.py), the
faster is kept and cached per CPU model, torch version and thread count in
`$XDG_CACHE_HOME/dsv3-probe/gemm.json` (default `~/.cache`); a tie (within 3%) keeps F.linear.
Caching every choice matters beyond speed: the two paths sum in different orders, so processes that
chose differently (the ranks of one job, a run and its resume) would not compute the same numbers. `DSV3_ONEDNN=1` or `0`
forces the choice; `DSV3_GEMM_CACHE=0` measures afresh every process without reading or writing
the cache.

The routed experts get a choice of their own per expert shape (`experts_choice`), whichever path
the other GEMMs took: their GEMMs are small, read pre-packed weights in a layout of their own, and
which library is faster depends on their size.

    from model import gemm
    gemm.choice()            # GemmChoice(path='onednn', source='measured', reason='...', ...)
    gemm.experts_choice(192, 64)   # GemmChoice(path='linear', ...): the bundled model's experts
    gemm.low_precision_speed(torch.bfloat16, 192)   # bf16 against float32 GEMMs here (0.11 without native bf16)
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .frozen import pack, pack_expert, packed

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
        return torch.allclose(onednn_linear(x, w), F.linear(x, w),
                              rtol=1e-5, atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


def _time_both(x: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """Median seconds of each path on one shape, their calls interleaved (ABAB..., the order swapped
    every round) so that a drift in the machine's speed (other jobs, clocks) hits both alike."""
    wp = pack(w)  # as the jobs run it: their weights frozen, so pre-packed (model/frozen.py)
    return _interleaved({"onednn": lambda: onednn_linear(x, wp), "linear": lambda: F.linear(x, w)})


def _interleaved(fns: dict, repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of each of the calls `fns` ({path: fn}), after a warm-up call each (oneDNN
    compiles a kernel per shape), `repeats` calls each, interleaved ABAB..., the order swapped every
    round."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {p: [] for p in fns}
    names = list(fns)
    for i in range(repeats):
        for p in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[p]()
            ts[p].append(time.perf_counter() - t0)
    return {p: sorted(v)[len(v) // 2] for p, v in ts.items()}


def low_precision_speed(dtype: torch.dtype, width: int, rows: int = 128) -> float:
    """How fast `dtype` (bfloat16, float16) GEMMs run on this CPU against float32: float32's seconds over
    `dtype`'s for F.linear of [rows, w] by [w, w] (w = min(width, 512): a few ms even where `dtype` is
    emulated), the calls interleaved, 5 each. Below 1, `dtype` is the slower. A CPU without native
    bfloat16 matrix products (AVX-512 BF16, AMX) computes them another way: on a 2-core AVX2-only AMD
    EPYC (2026-12-07) they ran at 11 GF/s against float32's 169, and a bfloat16 record at 0.23x
    float32's tokens/s (benchmarks/bench_dtype.py)."""
    w = max(1, min(width, 512))
    gen = torch.Generator().manual_seed(0)
    x, m = torch.randn(rows, w, generator=gen), torch.randn(w, w, generator=gen)
    xl, ml = x.to(dtype), m.to(dtype)
    with torch.no_grad():
        t = _interleaved({"float32": lambda: F.linear(x, m), "low": lambda: F.linear(xl, ml)}, repeats=5)
    return t["float32"] / t["low"]


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W^T on oneDNN's linear primitive (the "onednn" path); a frozen module's weight goes in
    pre-packed (model/frozen.py)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed(w), None, "none", [], "")


def onednn_swiglu(x: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    """silu(x W1^T) * (x W3^T) on oneDNN from one GEMM over W13 = [W1; W3] ([2I, D]; model.frozen's
    pack_expert makes it): an expert's hidden state in model.moe's padded layout, and what
    experts_choice times.

    One GEMM of 2I outputs beat two of I with the multiply fused into the second as a binary post-op
    (the previous form) on the 2-core AMD EPYC: 1.02-1.3x on 32 experts' SwiGLU at 16-256 rows, and
    benchmarks/bench_prefill.py's whole forward 1.05x (paired, 15 repeats), its logits bit-equal
    (2026-12-03): the input is read once, one call's overhead is saved, and the wider GEMM runs
    nearer its peak at few rows."""
    h = onednn_linear(x, w13)
    inter = h.shape[-1] // 2
    return F.silu(h[:, :inter]).mul_(h[:, inter:])


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
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | onednn packed"


def decide(shapes: list[tuple[int, int, int]]) -> GemmChoice:
    """The choice for this machine: forced by DSV3_ONEDNN, read from the cache, or measured on `shapes`
    (and cached)."""
    base = _base()
    return _forced(base) or _cached_or_measured(_key(), lambda: measure(shapes), f"{len(shapes)} GEMM shapes", base)


def _base() -> dict:
    return dict(cpu=cpu_model(), torch=torch.__version__, threads=torch.get_num_threads())


def check_env() -> None:
    """Refuse a mistyped DSV3_ONEDNN or DSV3_GEMM_CACHE now, with the KernelError the first GEMM big
    enough to choose would raise: model.ranks.init_world calls it, so that a job stops before it
    writes anything (a record had left an "interrupted" run behind, and on a model too small to
    choose the typo went unsaid)."""
    _forced_env()
    _caching()


def _forced_env() -> str | None:
    """DSV3_ONEDNN: "0", "1" or None (unset or empty); anything else is refused."""
    forced = os.environ.get("DSV3_ONEDNN") or None
    if forced not in (None, "0", "1"):  # a typo ("yes", "2") was ignored, and the cached choice taken (a review)
        from .kernels import KernelError

        raise KernelError(f"DSV3_ONEDNN={forced!r}: set 1 (oneDNN's linear primitive) or 0 (F.linear), or leave "
                          "it unset to choose by measurement")
    return forced


def _forced(base: dict) -> GemmChoice | None:
    """F.linear when this torch has no oneDNN; DSV3_ONEDNN's path when set; else None (measure)."""
    forced = _forced_env()
    if not onednn_available():
        return GemmChoice("linear", "unavailable", "oneDNN's linear primitive is not in this torch build", **base)
    if forced in ("0", "1"):
        path = "onednn" if forced == "1" else "linear"
        return GemmChoice(path, "env", f"DSV3_ONEDNN={forced} forces {path}", **base)
    return None


def _cached_or_measured(key: str, timed, what: str, base: dict) -> GemmChoice:
    """The cached choice under `key`, or the faster path of `timed()` ({path: seconds}) on `what`
    (a tie keeps F.linear), cached under `key`."""
    use_cache = _caching()
    cached = _read_cache().get(key) if use_cache else None
    if _valid_entry(cached):  # else (a hand-edited or foreign entry) measured again: it was an AttributeError
        return GemmChoice(cached["path"], "cache", f"{cached.get('reason', '')} (cached in {_cache_file()})",
                          seconds=cached.get("seconds", {}), **base)
    secs = timed()
    path = min(PATHS, key=lambda p: secs[p])
    other = next(p for p in PATHS if p != path)
    ratio = secs[other] / max(secs[path], 1e-12)
    tie = ratio < 1 + TIE
    if tie:
        path, other = "linear", "onednn"
    reason = (f"measured on this CPU: {path} {secs[path] * 1e3:.2f} ms vs {other} {secs[other] * 1e3:.2f} ms "
              f"({secs[other] / max(secs[path], 1e-12):.2f}x) on {what}"
              + (f"; a tie (within {TIE:.0%}): F.linear kept" if tie else ""))
    choice = GemmChoice(path, "measured", reason, seconds=secs, **base)
    if use_cache:  # every process of this machine (the ranks of a job too) then runs the same arithmetic
        _write_cache(key, choice)
    return choice


def _valid_entry(entry) -> bool:
    """A cache entry as _write_cache writes it: a path of PATHS, seconds {path: number} if any."""
    if not isinstance(entry, dict) or entry.get("path") not in PATHS:
        return False
    secs = entry.get("seconds", {})
    return isinstance(secs, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          for v in secs.values())


def _caching() -> bool:
    """Whether choices are read from and written to the cache (DSV3_GEMM_CACHE=0: not; 1 or unset:
    yes; anything else is refused, as DSV3_ONEDNN's typos are: "false" or "off" used the cache)."""
    value = os.environ.get("DSV3_GEMM_CACHE") or "1"
    if value not in ("0", "1"):
        from .kernels import KernelError

        raise KernelError(f"DSV3_GEMM_CACHE={value!r}: set 0 (measure afresh, no cache) or 1 (the default: use "
                          "the cache)")
    return value == "1"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, choice: GemmChoice) -> None:
    """Add this machine's choice to the cache file (temporary name, then rename; a failure to write
    only means measuring again next time)."""
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache() | {key: {"path": choice.path, "reason": choice.reason, "seconds": choice.seconds,
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
    global _CHOICE
    _CHOICE = _rank0s(choice)
    return _CHOICE


def agree_experts_across_ranks(dim: int, inter: int) -> GemmChoice:
    """The same for the experts' choice of dim x inter weights (probe.job.start_world calls it on every
    rank once the model's shape is known)."""
    _EXPERTS[(dim, inter)] = _rank0s(lambda: experts_choice(dim, inter))
    return _EXPERTS[(dim, inter)]


def _rank0s(make) -> GemmChoice:
    """Rank 0's `make()`, broadcast to every rank (a collective)."""
    import torch.distributed as dist

    mine = make() if dist.get_rank() == 0 else None
    box = [mine.to_dict() if mine is not None else None]
    dist.broadcast_object_list(box, src=0)
    if mine is not None:
        return mine
    made = box[0]
    return GemmChoice(**(made | {"source": "rank 0", "reason": f"rank 0's choice: {made['reason']}"}))


def current() -> GemmChoice | None:
    """The choice if this process has made one (no float32 CPU GEMM big enough yet: None)."""
    return _CHOICE


def reset() -> None:
    """Forget this process's choices (the next GEMM decides again; tests and benchmarks)."""
    global _CHOICE
    _CHOICE = None
    _EXPERTS.clear()


# ------------------------------------------------------------------------- the routed experts
EXPERT_ROWS = 128  # rows per expert that the experts' choice is timed at (a prefill's share)
EXPERT_STREAM_BYTES = 64 << 20  # weights the experts' timing reads per call: more than a CPU's caches
EXPERT_STREAM_MAX = 32  # experts per call at most (the bench's and the bundled model's layer has 32)
EXPERT_REPEATS = 7  # timed calls per path; a call runs every streamed expert (~25 ms at 512 x 256, 2 cores)
_EXPERTS: dict[tuple[int, int], GemmChoice] = {}


def experts_choice(dim: int, inter: int) -> GemmChoice:
    """How float32 routed experts of `dim` x `inter` weights run, whichever path the choice above
    gave the other GEMMs: "onednn" = all experts' rows padded into one gather, oneDNN GEMMs, each
    expert's W1 and W3 in one (model.moe.Experts._onednn_padded); "linear" = one expert at a time on
    F.linear (Experts._gathered).

    NOTE: oneDNN's lead depends on the size of the GEMM. On the 2-core AMD EPYC where oneDNN is the
    main choice, one expert's SwiGLU ran 1.2-1.8x faster on F.linear at 192 x 64 (the bundled model),
    and 1.0-1.1x faster on oneDNN at 512 x 256, 1.2-1.4x at 1024 x 512. So each expert shape is
    timed on first use and cached beside the main choice under the machine's key and the shape;
    DSV3_ONEDNN forces it too. The timing runs the experts as a forward does (_time_swiglu): many
    experts' weights, each read once per call, more of them than the caches hold. With one expert's
    weights reused, they stay in cache and the timing misses the memory traffic: on that EPYC it
    called a tie at 512 x 256 (0.81 vs 0.81 ms) and kept F.linear, while whole forwards ran 2-4%
    faster with the experts on oneDNN. Processes of one machine that start together take turns on a
    lock beside the cache: the first measures, the others read its choice, so the ranks of a job
    compute alike."""
    if (dim, inter) not in _EXPERTS:
        base = _base()
        made = _forced(base)
        if made is None:
            with _cache_lock() if _caching() else nullcontext():
                n = streamed_experts(dim, inter)
                made = _cached_or_measured(f"{_key()} | experts {dim}x{inter} w13 | {n} streamed",
                                           lambda: _time_swiglu(dim, inter),
                                           f"{n} {dim} x {inter} experts' SwiGLU at {EXPERT_ROWS} rows each", base)
        _EXPERTS[(dim, inter)] = made
    return _EXPERTS[(dim, inter)]


def experts_made() -> dict[str, dict]:
    """The experts' choices this process has made, by shape ("512x256": GemmChoice as a dict)."""
    return {f"{d}x{i}": c.to_dict() for (d, i), c in _EXPERTS.items()}


def streamed_experts(dim: int, inter: int) -> int:
    """How many distinct dim x inter experts _time_swiglu runs per call: enough float32 weights
    (EXPERT_STREAM_BYTES) that they come from memory, as in a forward, at most EXPERT_STREAM_MAX."""
    return min(EXPERT_STREAM_MAX, max(1, -(-EXPERT_STREAM_BYTES // (3 * dim * inter * 4))))


def _time_swiglu(dim: int, inter: int) -> dict[str, float]:
    """Median seconds of each path on streamed_experts(dim, inter) experts' SwiGLU in turn, each on
    the same EXPERT_ROWS rows, every expert's weights its own (EXPERT_REPEATS calls a path)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(EXPERT_ROWS, dim, generator=g)
    experts = [(torch.randn(inter, dim, generator=g), torch.randn(inter, dim, generator=g),
                torch.randn(dim, inter, generator=g)) for _ in range(streamed_experts(dim, inter))]

    packed_weights = [pack_expert(w1, w3, w2) for w1, w3, w2 in experts]  # as the jobs run them

    def on_onednn():
        for w13, w2 in packed_weights:
            onednn_linear(onednn_swiglu(x, w13), w2)

    def on_linear():
        for w1, w3, w2 in experts:
            F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    with torch.no_grad():
        return _interleaved({"onednn": on_onednn, "linear": on_linear}, EXPERT_REPEATS)


@contextmanager
def _cache_lock():
    """An exclusive lock on `gemm.json.lock` beside the cache (none where it cannot be made)."""
    try:
        import fcntl

        f = _cache_file()
        f.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f.with_name(f.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o666)  # not executable
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): measure unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the lock
