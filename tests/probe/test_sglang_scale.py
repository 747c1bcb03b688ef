"""The SGLang import's record readers at a server's width: what they hold while reading many ranks' records
(DeepSeek-V3 dumps of 8 ranks x 2,000 passes are GBs), measured with tracemalloc, which sees numpy's
arrays (the dump's torch tensors are made before it starts)."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from probe.sglang_dumps import Dump, Shape
from probe.sglang_records import per_pass

L, E, P = 2, 4096, 4096 + 64  # wide: one pass's logical counts [L, E] in int64 are 64 KiB
RANKS, PASSES = 8, 12


def _per_pass_dumps(tmp: Path, ranks: int, seed: int = 0) -> tuple[list[Dump], np.ndarray]:
    """`ranks` files of PASSES records each, in SGLang's per_pass structure; and the logical counts
    [pass, L, E] summed over the ranks, computed here slot by slot."""
    rng = np.random.default_rng(seed)
    m = np.stack([rng.permutation(np.concatenate([np.arange(E), np.arange(P - E)])) for _ in range(L)])
    want = np.zeros((PASSES, L, E), np.int64)
    dumps = []
    for rank in range(ranks):
        records = []
        for fp in range(PASSES):
            c = rng.integers(0, 5, (L, P)).astype(np.int32)
            for layer in range(L):
                np.add.at(want[fp, layer], m[layer], c[layer])
            records.append({"forward_pass_id": fp, "rank": rank, "gatherer_key": "primary",
                            "global_physical_count": torch.from_numpy(c)})
        data = {"records": records, "last_physical_to_logical_map": torch.from_numpy(m)}
        dumps.append(Dump(tmp / f"expert_distribution_recorder_1733000000.{rank:02d}_{rank}.pt", "per_pass", data))
    return dumps, want


def test_per_pass_sums_each_pass_as_read_holding_one_array_per_pass_not_per_record(tmp_path):
    """Every record's logical counts were kept until all files were read (2 GB more than the dump at
    DeepSeek-V3's size): now each pass's sum, so what the reader holds grows with passes, not ranks."""
    import pyarrow.parquet as pq

    def peak(ranks: int) -> tuple[int, np.ndarray, Path]:
        dumps, want = _per_pass_dumps(tmp_path, ranks)
        out = tmp_path / f"run{ranks}"
        shutil.rmtree(out, ignore_errors=True)
        tracemalloc.start()
        try:
            info = per_pass(dumps, Shape(L, E, topk=8), out)
            top = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert info["passes"] == PASSES and not info["ranks_counted_the_same_tokens"]
        return top, want, out

    peak(1)  # the first import's one-time allocations (modules, caches) out of the way
    one, _, _ = peak(1)
    many, want, out = peak(RANKS)
    # the same passes written: more ranks add a record's temporaries, not every record's counts
    # (kept, the 7 ranks' more records were 7 x 12 x 64 KiB, 5.25 MiB, more)
    assert many - one < (RANKS - 1) * PASSES * L * E * 8 / 4, (one, many)
    loads = pq.read_table(out / "expert_load").to_pandas()
    got = np.zeros_like(want)
    np.add.at(got, (loads.step.to_numpy(), loads.layer.to_numpy(), loads.expert.to_numpy()), loads["count"].to_numpy())
    assert np.array_equal(got, want)


def _per_token_dump(tmp: Path, records: int, tokens: int, seed: int = 0, experts: int = E) -> Dump:
    """One rank's per_token file: `records` passes of `tokens` decode tokens, top-8 of `experts` in
    every one of L MoE layers, through an identity map."""
    rng = np.random.default_rng(seed)
    recs = []
    for fp in range(records):
        ids = rng.integers(0, experts // 8, (L, tokens, 1)) + np.arange(8) * (experts // 8)  # 8 distinct
        recs.append({"forward_pass_id": fp, "rank": 0, "gatherer_key": "primary",
                     "input_ids": rng.integers(2, 1000, tokens).tolist(),
                     "positions": rng.integers(0, 4000, tokens).tolist(), "extend_seq_lens": None,
                     "topk_ids_of_layer": torch.from_numpy(np.ascontiguousarray(ids, np.int32))})
    data = {"records": recs, "last_physical_to_logical_map": torch.arange(experts).repeat(L, 1)}
    return Dump(tmp / "expert_distribution_recorder_1733000000.00_0.pt", "per_token", data)


def test_per_token_holds_the_kept_records_logical_ids_at_the_dumps_width(tmp_path, monkeypatch):
    """The records' logical ids are held until they are written: in int64 they were twice the dump's
    int32 ids (a 3 GB copy of a 1.5 GB dump of 8 ranks x 10^5 tokens); now int32, and the run the same.
    Measured as what 3 more records add to the reader's peak (the one-record temporaries alike), of 256
    experts (a pass's counts [L, E] are held per pass, not per id) with the writer flushing each record:
    its buffer of up to 65,536 rows is as large with more records at the dump's size, not at this one's
    (4,000 tokens a record, 10 and 20 records of 4,096 experts, took 1.4 s of CPU, this 0.1 s)."""
    import functools

    import pyarrow.parquet as pq

    from probe import sglang_records
    from probe.sglang_records import per_token
    from probe.writer import PartWriter

    experts, tokens = 256, 500
    monkeypatch.setattr(sglang_records, "PartWriter", functools.partial(PartWriter, row_group_rows=tokens))

    def peak(records: int) -> tuple[int, np.ndarray, Path]:
        dump, out = _per_token_dump(tmp_path, records, tokens, experts=experts), tmp_path / f"run{records}"
        ids = np.concatenate([r["topk_ids_of_layer"].numpy().reshape(-1, 8) for r in dump.data["records"]])
        tracemalloc.start()
        try:
            info = per_token([dump], Shape(L, experts, topk=8), out)
            top = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert info["tokens"] == records * tokens and info["records"] == records
        return top, ids, out

    peak(1)  # one-time allocations out of the way
    (three, _, _), (six, want, out) = peak(3), peak(6)
    more_ids = 3 * L * tokens * 8 * 4  # the 3 more records' int32 ids
    assert six - three < 2 * more_ids, (three, six, more_ids)  # int64 kept: 2.4x; int32: 1.4x
    routing = pq.read_table(out / "routing")
    lists = routing.column("expert_ids").combine_chunks()
    assert routing.num_rows == 6 * L * tokens and set(lists.value_lengths().to_pylist()) == {8}
    got = lists.flatten().to_numpy().reshape(-1, 8)
    assert np.array_equal(np.sort(got, 1), np.sort(want, 1))


def test_per_token_lets_each_records_physical_ids_go_once_mapped(tmp_path):
    """The dump's physical ids stayed loaded beside the logical ids made from them until the import
    ended: the dump twice over (8 ranks x 60,000 tokens: 2.3 GB peak, now 1.4 GB). The import's own
    load of the file lets them go once mapped; the run holds what they routed."""
    import gc
    import weakref

    import pyarrow.parquet as pq

    from probe.sglang_records import per_token

    dump = _per_token_dump(tmp_path, records=3, tokens=50)
    want = np.concatenate([r["topk_ids_of_layer"].numpy().reshape(-1, 8) for r in dump.data["records"]])
    held = [weakref.ref(r["topk_ids_of_layer"]) for r in dump.data["records"]]
    info = per_token([dump], Shape(L, E, topk=8), tmp_path / "run")
    gc.collect()
    assert info["records"] == 3 and all(ref() is None for ref in held)
    got = np.stack(pq.read_table(tmp_path / "run" / "routing").column("expert_ids").to_pylist())
    assert np.array_equal(np.sort(got, 1), np.sort(want, 1))


def test_per_pass_lets_each_records_counts_go_once_summed(tmp_path):
    """As per_token's ids: the loaded per_pass counts are read no more once summed into their pass."""
    import gc
    import weakref

    dumps, want = _per_pass_dumps(tmp_path, 2)
    held = [weakref.ref(r["global_physical_count"]) for d in dumps for r in d.data["records"]]
    info = per_pass(dumps, Shape(L, E, topk=8), tmp_path / "run")
    gc.collect()
    assert info["passes"] == PASSES and all(ref() is None for ref in held)


def test_a_dump_read_once_is_refused_a_second_read_naming_the_file(tmp_path):
    """The readers let each record's counts or ids go as they read (the tests above): a caller reading
    the same loaded dumps again met a KeyError from inside the reader; now one line naming the file and
    what to do, and a fresh load reads alike."""
    import pytest

    from probe.sglang_dumps import SGLangError, model_shape
    from probe.sglang_records import per_token

    dumps, _ = _per_pass_dumps(tmp_path, 2)
    per_pass(dumps, Shape(L, E, topk=8), tmp_path / "p1")
    with pytest.raises(SGLangError, match=f"{dumps[0].path}: its records were read by per_pass already.*load the file"):
        per_pass(dumps, Shape(L, E, topk=8), tmp_path / "p2")
    fresh, _ = _per_pass_dumps(tmp_path, 2)
    assert per_pass(fresh, Shape(L, E, topk=8), tmp_path / "p3")["passes"] == PASSES
    dump = _per_token_dump(tmp_path, records=2, tokens=20)
    assert per_token([dump], Shape(L, E, topk=8), tmp_path / "t1")["records"] == 2
    for again in (lambda: per_token([dump], Shape(L, E, topk=8), tmp_path / "t2"), lambda: model_shape([dump], None)):
        with pytest.raises(SGLangError, match="read by per_token already, which lets each record's ids go"):
            again()


def test_a_dump_a_reader_refused_before_emptying_a_record_is_read_again_whole(tmp_path):
    """The dumps were marked read before the readers' first checks: a caller that fixed what was refused (the
    config's expert count) and read the same loaded dumps again was refused as if they were emptied, though
    every record was whole. They are marked as the first record is emptied; refused after, still marked."""
    import pytest

    from probe.sglang_dumps import SGLangError
    from probe.sglang_records import per_token

    dump = _per_token_dump(tmp_path, records=2, tokens=20, experts=64)
    with pytest.raises(SGLangError, match="expert id .* is outside the config's 8 experts"):
        per_token([dump], Shape(L, 8, topk=8), tmp_path / "t1")
    assert dump.consumed is None and all("topk_ids_of_layer" in r for r in dump.data["records"])
    assert per_token([dump], Shape(L, 64, topk=8), tmp_path / "t2")["records"] == 2
    # a record of the second file refused, the first file's emptied: marked
    first, second = _per_token_dump(tmp_path, records=2, tokens=20, experts=64), \
        _per_token_dump(tmp_path / "b", records=2, tokens=20, seed=1, experts=64)
    second.data["records"][0]["topk_ids_of_layer"][0, 0, 0] = 99  # past the map's 64 experts
    with pytest.raises(SGLangError, match="physical expert id 99 is outside the map's 64 experts"):
        per_token([first, second], Shape(L, 64, topk=8), tmp_path / "t3")
    with pytest.raises(SGLangError, match="read by per_token already"):
        per_token([first, second], Shape(L, 64, topk=8), tmp_path / "t4")
    # per_pass: a first record of another shape than the map refused, the dumps whole; read again, the same error
    dumps, _ = _per_pass_dumps(tmp_path, 2)
    dumps[0].data["records"][0]["global_physical_count"] = torch.zeros(L, P + 1, dtype=torch.int32)
    for out in ("p1", "p2"):
        with pytest.raises(SGLangError, match=f"global_physical_count of pass 0 has shape \\[{L}, {P + 1}\\]"):
            per_pass(dumps, Shape(L, E, topk=8), tmp_path / out)
        assert not any(d.consumed for d in dumps)
        assert all("global_physical_count" in r for d in dumps for r in d.data["records"])
    dumps[1].data["records"][0]["global_physical_count"] = torch.zeros(L, P + 1, dtype=torch.int32)
    dumps[0].data["records"].pop(0)
    with pytest.raises(SGLangError, match="has shape"):  # the first file's records emptied before it
        per_pass(dumps, Shape(L, E, topk=8), tmp_path / "p3")
    assert all(d.consumed == "per_pass" for d in dumps)


@pytest.mark.slow  # 0.8 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_stat_reads_each_dumps_rows_where_they_lie(tmp_path):
    """Each stat dump's used rows were copied out (c[order]) and the dumps joined (np.concatenate): a
    folder of 20 DeepSeek-V3 dumps of 1,000-pass buffers (1.2 GB) was held three times (3.75 GB peak,
    now 1.7 GB). The rows are now written where they lie, in the order written, as before."""
    import pyarrow.parquet as pq

    from probe.sglang import _stat

    rng = np.random.default_rng(0)
    dumps, want = [], []
    for k in range(2):
        c = rng.integers(1, 9, (100, L, E)).astype(np.int32)
        c[[5 + k, 6 + k]] = 0  # the circular buffer's gap: passes written from row 7 + k on, round to 4 + k
        want.append(np.concatenate([c[7 + k:], c[:5 + k]]))
        path = tmp_path / f"expert_distribution_recorder_{1733000000.0 + k}.pt"
        dumps.append(Dump(path, "stat", {"rank": 0, "logical_count": torch.from_numpy(c)}))
    held = sum(d.data["logical_count"].numel() * 4 for d in dumps)
    _stat([_stat_dump(tmp_path)], Shape(L, E, topk=8), tmp_path / "warm")  # one-time allocations
    tracemalloc.start()
    try:
        info = _stat(dumps, Shape(L, E, topk=8), tmp_path / "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["passes"] == 196 and not info["pass_order_unknown"]
    assert peak < held / 2, (peak, held)  # copied out and joined: twice the dumps' counts
    loads = pq.read_table(tmp_path / "run" / "expert_load").to_pandas()
    got = np.zeros((196, L, E), np.int64)
    got[loads.step.to_numpy(), loads.layer.to_numpy(), loads.expert.to_numpy()] = loads["count"].to_numpy()
    assert np.array_equal(got, np.concatenate(want))


def _stat_dump(tmp: Path) -> Dump:
    c = torch.ones((3, L, E), dtype=torch.int32)
    return Dump(tmp / "expert_distribution_recorder_1.0.pt", "stat", {"rank": 0, "logical_count": c})


def test_a_stat_dumps_fused_slot_is_looked_for_without_joining_the_dumps(tmp_path):
    """Without --config, whether the last column counts as a fused slot was read from every dump joined
    in int64 (20 DeepSeek-V3 dumps of 1,000 rows: 2.4 GB more, 6.4 GB peak): now per dump, the same note."""
    from probe.sglang_fused import stat_looks_fused

    rng = np.random.default_rng(0)
    dumps = []
    for k in range(2):
        routed = rng.integers(0, 5, (100, L, E - 1)).astype(np.int32) * 3  # each token: 3 routed, 1 shared
        c = np.concatenate([routed, routed.sum(-1, keepdims=True) // 3], -1)
        dumps.append(Dump(tmp_path / f"d{k}.pt", "stat", {"rank": 0, "logical_count": torch.from_numpy(c)}))
    held = sum(d.data["logical_count"].numel() * 4 for d in dumps)
    stat_looks_fused(dumps[:1])  # one-time allocations
    tracemalloc.start()
    try:
        k = stat_looks_fused(dumps)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert k == 3 and peak < held / 2, (k, peak, held)  # joined in int64: twice the dumps' counts
    dumps[1].data["logical_count"][0, 0, -1] += 1  # one (pass, layer) off: no slot
    assert stat_looks_fused(dumps) is None
