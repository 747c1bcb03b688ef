"""The head's statistics without [B, S, V] logits (model/head_stats.py): the loss of a target token and
the argmax, from logits (logit_stats), from the head a block of rows at a time (head_stats, the
forward's `targets=`), and combined from slices of the vocabulary as the ranks of a sharded model
hold them (merge; the collective itself runs in tests/e2e/test_mp_jobs.py's four-rank jobs)."""

from __future__ import annotations

import pytest
import torch

from model import TokenStats, head_stats as hs
from model.layers import wide

from helpers import cast_, random_model


# ------------------------------------------------------------------------------ logit_stats
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logit_stats_equal_torchs_own_ops(monkeypatch, dtype):
    """logit_stats' one pass (max, shift, exp, sum over a few rows at a time) gives torch.logsumexp(z)
    - z[t] and argmax bit for bit, whatever the step size, with -inf logits and a row that is all -inf."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(3, 37, 301, generator=g) * 4).to(dtype)
    z[0, 5, 7:] = float("-inf")  # a vocabulary mask
    z[1, 2, :] = float("-inf")  # nothing allowed: logsumexp -inf, loss nan
    z[2, 9, 10] = z[2, 9, 11] = z[2, 9].max() + 1  # a tie: the first index wins, as argmax
    t = torch.randint(0, 301, (3, 37), generator=g)
    t[0, 5] = 3
    want_nll = torch.logsumexp(z.float(), dim=-1) - z.float().gather(-1, t[..., None]).squeeze(-1)
    for elements in (301, 301 * 5, 1 << 20):  # 1 row, 5 rows (a ragged last step), everything at once
        monkeypatch.setitem(hs.STATS_ELEMENTS, "cpu", elements)
        nll, top1 = hs.logit_stats(z, t)
        assert nll.dtype == torch.float32 and top1.dtype == torch.long
        assert torch.equal(top1, z.argmax(-1)), elements
        assert torch.equal(nll.isnan(), want_nll.isnan()) and nll[1, 2].isnan()
        assert torch.equal(nll.nan_to_num(), want_nll.nan_to_num()), elements
    # control: a loss read against the wrong targets differs
    assert not torch.equal(hs.logit_stats(z, t.roll(1, dims=1))[0].nan_to_num(), want_nll.nan_to_num())


def test_float64_logits_are_reduced_in_float64():
    """A float64 model's losses come from float64 arithmetic (rounded to float32 once at the end):
    what lets the sharded combination agree with one process to far below float32's step."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 5, 97, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 97, (2, 5), generator=g)
    want = (torch.logsumexp(z, -1) - z.gather(-1, t[..., None]).squeeze(-1)).float()
    assert torch.equal(hs.logit_stats(z, t).nll, want)


def test_the_cpu_step_is_an_eighth_of_l2(tmp_path):
    """The reduction's step on the CPU follows the L2 cache's size as sysfs gives it (2 MiB -> 2^18
    float32 logits, 4 MiB -> 2^19), past the L1 entries, never under the default (2^17, the step
    measured before); without a readable L2 the default holds."""
    def cache(*entries):
        base = tmp_path / str(len(list(tmp_path.iterdir())))
        for i, (level, kind, size) in enumerate(entries):
            d = base / f"index{i}"
            d.mkdir(parents=True)
            for name, text in (("level", level), ("type", kind), ("size", size)):
                (d / name).write_text(text + "\n")
        return base

    l1 = [("1", "Data", "48K"), ("1", "Instruction", "64K")]
    assert hs._cpu_step_elements(cache(*l1, ("2", "Unified", "2048K"), ("3", "Unified", "491520K"))) == 1 << 18
    assert hs._cpu_step_elements(cache(*l1, ("2", "Unified", "1024K"))) == 1 << 17
    assert hs._cpu_step_elements(cache(*l1, ("2", "Unified", "4M"))) == 1 << 19
    assert hs._cpu_step_elements(cache(*l1, ("2", "Unified", "512K"))) == 1 << 17  # never under the default
    assert hs._cpu_step_elements(cache(*l1)) == 1 << 17  # no L2 listed
    assert hs._cpu_step_elements(cache(*l1, ("2", "Unified", "lots"))) == 1 << 17
    assert hs._cpu_step_elements(tmp_path / "missing", default=7) == 7


# ---------------------------------------------------------------------- the forward's targets=
@pytest.fixture(scope="module")
def tiny():
    m = random_model("tiny", seed=5)
    tokens = torch.randint(0, m.args.vocab_size, (3, 11), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, m.args.vocab_size, (3, 11), generator=torch.Generator().manual_seed(3))
    return m, tokens, targets


def _small_blocks(monkeypatch, rows: int) -> None:
    """Head GEMMs of `rows` rows (and reduction steps of 2 rows): many blocks, a ragged last one."""
    monkeypatch.setitem(hs.HEAD_CHUNK, "cpu", (1, rows))
    monkeypatch.setitem(hs.STATS_ELEMENTS, "cpu", 2)


TOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 0.02}  # a logit's last bit, per dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_targets_give_the_stats_of_the_full_logits(tiny, monkeypatch, dtype):
    """model(tokens, targets=t) equals logit_stats(model(tokens), t): bit for bit with the head in one
    block, and to a logit's last bit in blocks of 4 rows (33 rows: 9 blocks of 3-4; MKL picks its
    kernel by row count at these small dims), with padding."""
    m, tokens, targets = tiny
    m = cast_(random_model("tiny", seed=5), dtype) if dtype != torch.float32 else m
    lengths = torch.tensor([11, 7, 4])
    with torch.no_grad():
        want = hs.logit_stats(m(tokens, lengths=lengths), targets)
    for rows in (1000, 4):
        _small_blocks(monkeypatch, rows)
        got = m(tokens, lengths=lengths, targets=targets)
        assert isinstance(got, TokenStats) and got.nll.shape == got.top1.shape == (3, 11)
        if rows == 1000:
            assert torch.equal(got.top1, want.top1) and torch.equal(got.nll, want.nll)
        else:
            torch.testing.assert_close(got.nll, want.nll, rtol=TOL[dtype], atol=TOL[dtype])
            assert (got.top1 == want.top1).float().mean() > 0.9  # a near tie may flip with a last bit
    # control: other targets give other losses, the same argmax
    other = m(tokens, lengths=lengths, targets=targets.roll(1, dims=1))
    assert not torch.equal(other.nll, want.nll) and torch.equal(other.top1, want.top1)


def test_mtp_targets_and_a_hooked_mtp_head(tiny, monkeypatch):
    """mtp_targets gives the MTP head's statistics (row i against token i+2) without logits; with
    its hook_logits in use the hook still sees the full [B, S-1, V] logits and the statistics are
    the same."""
    m, tokens, targets = tiny
    _small_blocks(monkeypatch, 1000)  # one block: bit-equal to the logits'
    with torch.no_grad():
        logits, mtp_logits = m(tokens, mtp=True)
    stats, mtp_stats = m(tokens, mtp=True, targets=targets, mtp_targets=targets[:, 1:])
    want = hs.logit_stats(mtp_logits, targets[:, 1:])
    assert torch.equal(stats.nll, hs.logit_stats(logits, targets).nll)
    assert mtp_stats.nll.shape == (3, 10)
    assert torch.equal(mtp_stats.nll, want.nll) and torch.equal(mtp_stats.top1, want.top1)
    seen = []
    with m.hooks([("mtp.0.hook_logits", lambda t, hook: seen.append(t.shape))]):
        hooked = m(tokens, mtp=True, targets=targets, mtp_targets=targets[:, 1:])[1]
    assert seen == [(3, 10, m.args.vocab_size)]
    assert torch.equal(hooked.nll, want.nll)
    # only the MTP's statistics: the main head gives logits
    mixed = m(tokens, mtp=True, mtp_targets=targets[:, 1:])
    assert torch.equal(mixed[0], logits) and torch.equal(mixed[1].nll, want.nll)


def test_targets_of_minus_100_ask_for_no_loss(tiny, monkeypatch):
    """Padded batches needed dummy targets and a mask afterwards: -100 (torch's cross_entropy's
    ignore_index) gives a NaN loss there, the argmax and every other loss unchanged; the MTP's too."""
    m, tokens, targets = tiny
    lengths = torch.tensor([11, 7, 4])
    pad = targets.clone()
    for row, n in enumerate(lengths.tolist()):
        pad[row, n:] = hs.IGNORE_INDEX
    for rows in (1000, 4):  # one block of the head, and several (the head_stats path)
        _small_blocks(monkeypatch, rows)
        want = m(tokens, lengths=lengths, targets=targets)
        got, mtp = m(tokens, lengths=lengths, targets=pad, mtp=True, mtp_targets=pad[:, 1:])
        real = pad != hs.IGNORE_INDEX
        assert got.nll[~real].isnan().all() and torch.equal(got.nll[real], want.nll[real])
        assert torch.equal(got.top1, want.top1)
        assert mtp.nll[~real[:, 1:]].isnan().all() and not mtp.nll[real[:, 1:]].isnan().any()
    with m.hooks([("mtp.0.hook_logits", lambda t, hook: None)]):  # the logits path (logit_stats) too
        hooked = m(tokens, lengths=lengths, targets=pad, mtp=True, mtp_targets=pad[:, 1:])[1]
    assert torch.equal(hooked.nll.isnan(), ~real[:, 1:])


def test_head_stats_of_a_start_at_layer_pass(tiny):
    """targets combine with start_at_layer/resid (analyses.importance's suffix passes)."""
    m, tokens, targets = tiny
    got = {}
    with m.hooks([("layers.1.hook_resid_pre", lambda t, hook: got.setdefault("h", t.clone()))]):
        full = m(tokens, targets=targets)
    part = m(tokens, targets=targets, start_at_layer=1, resid=got["h"])
    assert torch.equal(part.nll, full.nll) and torch.equal(part.top1, full.top1)


def test_targets_of_any_integer_dtype_but_uint8_are_read_as_ids(tiny):
    """uint16 ids (a token file's dtype) were torch's '"min_all" not implemented for 'UInt16''; int32 and
    int16 give what int64 gives."""
    m, tokens, targets = tiny
    want = m(tokens, targets=targets)
    for dtype in (torch.int32, torch.int16, torch.uint16):
        got = m(tokens, targets=targets.to(dtype))
        assert torch.equal(got.nll, want.nll) and torch.equal(got.top1, want.top1), dtype
    with pytest.raises(ValueError, match=r"^targets: token ids must be in \[0, 512\) or -100 .*got \[600, 600\]$"):
        m(tokens, targets=torch.full_like(targets, 600).to(torch.uint16))


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets=torch.zeros(3, 10, dtype=torch.long)),
     r"targets: expected token ids of shape \(3, 11\), got \(3, 10\)"),
    (dict(targets=torch.zeros(3, 11)), "targets: expected integer token ids, got dtype torch.float32"),
    (dict(targets=torch.zeros(3, 11, dtype=torch.uint8)), r"^targets: got dtype torch.uint8: uint8 holds bytes, "),
    (dict(mtp=True, mtp_targets=torch.zeros(3, 10, dtype=torch.uint8)), r"^mtp_targets: got dtype torch.uint8: "),
    (dict(targets=torch.full((3, 11), 10**6)),
     r"targets: token ids must be in \[0, \d+\) or -100 \(no loss\); got \[1000000, 1000000\]"),
    (dict(targets=torch.full((3, 11), -1)), r"targets: token ids must be in \[0, \d+\) or -100 .*got \[-1, -1\]"),
    (dict(targets=torch.zeros(3, 11, dtype=torch.long), logits_at=torch.zeros(3, 1, dtype=torch.long)),
     "targets asks for statistics at every position"),
    (dict(mtp_targets=torch.zeros(3, 10, dtype=torch.long)), "mtp_targets is for the MTP predictions: pass mtp=True"),
    (dict(mtp=True, mtp_targets=torch.zeros(3, 11, dtype=torch.long)),
     r"^mtp_targets: expected token ids of shape \(3, 10\)"),  # named as the caller named it
])
def test_bad_targets_are_named(tiny, kwargs, message):
    m, tokens, _ = tiny
    with pytest.raises(ValueError, match=message):
        m(tokens, **kwargs)


def test_no_positions_give_empty_stats(tiny):
    """A batch of zero positions (or one position, so no MTP target) gives empty TokenStats, as the
    logits path gives [B, 0, V]; the head's block sizing divided by zero there before."""
    m, tokens, _ = tiny
    none = tokens[:, :0]
    stats = m(none, targets=none)
    assert stats.nll.shape == (3, 0) and stats.top1.shape == (3, 0)
    _, mtp = m(tokens[:, :1], mtp=True, mtp_targets=none)
    assert mtp.nll.shape == (3, 0)


# ------------------------------------------------------------------ slices of the vocabulary
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("world", [2, 3])
def test_merged_slices_equal_the_whole_row(dtype, world):
    """Reducing each rank's columns (_reduce) and merging the partials (merge) gives the whole row's
    loss (to rounding: 1e-6 in float32, 1e-13 in float64) and exactly its argmax, with a tie across
    two slices (the lower index wins), a target in every slice, a row masked to -inf in one slice and
    a row that is -inf everywhere."""
    g = torch.Generator().manual_seed(world)
    V = 12 * world
    z = (torch.randn(40, V, generator=g, dtype=torch.float64) * 5).to(dtype)
    z[0, :] = float("-inf")  # nothing allowed: nan, as logsumexp
    z[1, : V // world] = float("-inf")  # the first slice masked out
    z[2, 3] = z[2, V - 2] = z[2].max() + 1  # a tie across the first and the last slice
    t = torch.randint(0, V, (40,), generator=g)
    want = hs.logit_stats(z[None], t[None])
    width = V // world
    parts = [torch.stack(list(hs._reduce(z[:, r * width:(r + 1) * width].to(wide(dtype)), t, r * width)),
                         dim=1).double() for r in range(world)]
    nll, top1 = hs.merge(torch.stack(parts))
    assert torch.equal(top1, want.top1[0]) and top1[2] == 3
    assert nll[0].isnan() and want.nll[0, 0].isnan()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(nll[1:].float(), want.nll[0, 1:], rtol=tol, atol=tol)
    # control: the slices merged against the wrong offsets lose their targets
    wrong = [torch.stack(list(hs._reduce(z[:, r * width:(r + 1) * width].to(wide(dtype)), t, 0)), dim=1).double()
             for r in range(world)]
    assert not torch.allclose(hs.merge(torch.stack(wrong))[0][1:].float(), want.nll[0, 1:])


def test_head_rows_keep_the_gemm_big_enough():
    """Rows per head GEMM: the byte budget's worth, never under the floor, never over the rows, and
    the rows split evenly (no small last block)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    budget, floor = hs.HEAD_CHUNK["cpu"]
    assert budget // (4 * 8192) == 256
    assert hs.head_rows(cpu, 8192, 4096) == 256
    assert hs.head_rows(cpu, 8192, 2000) == 250  # 8 blocks of 250, not 7 of 256 and one of 208
    assert hs.head_rows(cpu, 129280, 4096) == floor  # a large vocabulary: the floor, not 16 rows
    assert hs.head_rows(cpu, 8192, 100) == 100
    n = 100_000
    most = hs.HEAD_CHUNK_DEFAULT[0] // (4 * 16160)
    assert hs.head_rows(cuda, 16160, n) == -(-n // -(-n // most)) <= most


def test_the_memory_plan_counts_one_head_block():
    """With head_stats (as the jobs run) the plan's logits term is one block of this rank's slice and
    its reduction's temporaries, not the gathered [B, S, V] logits twice (with MTP): at the 671B
    shape on 8 ranks, 4,096 tokens, bf16, a sixth of it or less; on a CPU a few hundred MB."""
    from model import ModelArgs, memory

    a = ModelArgs.from_name("671B")
    kw = dict(model_parallel=8, batch=8, seq_len=512, dtype=torch.bfloat16, mtp=True)
    full, gpu, cpu = (memory.forward_plan(a, **kw, head_stats=d)["logits"] for d in (None, "cuda", "cpu"))
    assert full == 2 * (4096 * 129280 * 2 * 2.125 + 512 * 129280 * 4)
    assert gpu == memory.head_block_bytes("cuda", 129280 // 8, 4096, torch.bfloat16)
    assert 6 * gpu < full and cpu < gpu
    assert cpu == 256 * 16160 * 2 + 2 * min(256, hs.STATS_ELEMENTS["cpu"] // 16160) * 16160 * 4 + 256 * 6 * 8 * 16
