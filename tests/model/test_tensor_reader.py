"""model/tensor_reader.py and the loader's use of it: chunked plain reads equal safetensors' own, for
whole tensors, row and column cuts, FP8 kept or dequantised over whole blocks, with chunks far smaller
than a tensor (so that every boundary case is crossed)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model import checkpoint_stream as stream
from model import tensor_reader
from model.fp8 import dequantize_block, quantize_block
from model.parallel import Cut
from model.tensor_reader import ReadError, TensorReader, copy_range

from helpers import random_model
from helpers.load_peak import load_peak


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(tensor_reader, "CHUNK", 700)  # a few rows of a 320-wide tensor per chunk


@pytest.fixture
def st_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 320, generator=g)
    q, s = quantize_block(w, (128, 128))
    tensors = {"w.bf16": w.to(torch.bfloat16), "w.f32": w, "v": torch.randn(77, generator=g),
               "q": q, "q_scale_inv": s, "e": torch.randn(0, 4)}
    f = tmp_path / "t.safetensors"
    save_file(tensors, f)
    return f, load_file(f)


@pytest.mark.parametrize("name", ["w.bf16", "w.f32", "v", "q", "q_scale_inv"])
def test_whole_tensors_equal_safetensors(st_file, small_chunks, name):
    f, ref = st_file
    with TensorReader() as r:
        assert torch.equal(r.read(f, name).view(torch.uint8), ref[name].view(torch.uint8))
        chunks = list(r.rows(f, name, 0, ref[name].shape[0]))
    assert name in ("v", "q_scale_inv") or len(chunks) > 3  # the small chunks really split the matrices


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_every_float_dtype_reads_as_safetensors_reads_it(tmp_path, dtype):
    # the bytes alone do not say it: bf16 and f16 rows are the same size
    f = tmp_path / "d.safetensors"
    save_file({"w": torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)}, f)
    dst = torch.empty(5, 7, dtype=torch.float64)
    with TensorReader() as r:
        got = r.read(f, "w")
        copy_range(r, f, "w", dst, dim=0, start=0, end=5)
    assert got.dtype == dtype and torch.equal(dst, load_file(f)["w"].double())


@pytest.mark.parametrize("dim, start, end", [(0, 0, 300), (0, 150, 300), (0, 7, 131), (1, 160, 320), (1, 5, 130)])
def test_row_and_column_ranges_convert_into_the_destination(st_file, small_chunks, dim, start, end):
    f, ref = st_file
    want = ref["w.bf16"].narrow(dim, start, end - start).float()
    dst = torch.full(want.shape, float("nan"))
    with TensorReader() as r:
        copy_range(r, f, "w.bf16", dst, dim=dim, start=start, end=end)
    assert torch.equal(dst, want)


@pytest.mark.parametrize("cut", [None, Cut(0, 150, 150, 300), Cut(0, 128, 128, 300), Cut(1, 160, 160, 320),
                                 Cut(1, 0, 64, 320)])
def test_fp8_dequantised_over_whole_blocks_then_trimmed(st_file, small_chunks, cut):
    f, ref = st_file
    full = dequantize_block(ref["q"], ref["q_scale_inv"], (128, 128), torch.float32)
    want = full if cut is None else cut.slice(full)
    headers = {n: (f, t.shape, t.dtype) for n, t in ref.items()}
    dst = torch.full(want.shape, float("nan"))
    with TensorReader() as r:
        stream._copy_tensor(r, headers, "q", cut, dst, None, (128, 128))
    assert torch.equal(dst, want)


@pytest.mark.parametrize("block", [(128, 128), (64, 128)])
@pytest.mark.parametrize("rows_per_chunk", [3, 200])  # chunks that straddle block rows, or more than one
@pytest.mark.parametrize("cut", [None, Cut(0, 150, 150, 300), Cut(1, 160, 160, 320)])
def test_fp8_dequantised_in_chunks_of_any_height_and_blocks_of_any_shape(tmp_path, monkeypatch, block,
                                                                         rows_per_chunk, cut):
    g = torch.Generator().manual_seed(1)
    q, s = quantize_block(torch.randn(300, 320, generator=g), block)
    f = tmp_path / "b.safetensors"
    save_file({"q": q, "q_scale_inv": s}, f)
    monkeypatch.setattr(tensor_reader, "CHUNK", rows_per_chunk * 320)  # 320 one-byte FP8 values a row
    # W = Q * scale, each scale covering block[0] rows x block[1] columns (no model code)
    full = q.float() * s.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:300, :320]
    want = full if cut is None else cut.slice(full)
    headers = {"q": (f, q.shape, q.dtype), "q_scale_inv": (f, s.shape, s.dtype)}
    dst = torch.full(want.shape, float("nan"))
    with TensorReader() as r:
        stream._copy_tensor(r, headers, "q", cut, dst, None, block)
    assert torch.equal(dst, want)


def test_fp8_resident_cut_takes_its_scale_blocks(st_file, small_chunks):
    f, ref = st_file
    headers = {n: (f, t.shape, t.dtype) for n, t in ref.items()}
    cut = Cut(0, 128, 128, 300)
    dst, sdst = torch.empty(128, 320, dtype=torch.float8_e4m3fn), torch.empty(1, 3)
    with TensorReader() as r:
        stream._copy_tensor(r, headers, "q", cut, dst, sdst, (128, 128))
    assert torch.equal(dst.view(torch.uint8), ref["q"][128:256].view(torch.uint8))
    assert torch.equal(sdst, ref["q_scale_inv"][1:2])


def test_a_load_in_small_chunks_equals_the_model(tmp_path, small_chunks):
    m = random_model("tiny", seed=1)
    model.save(m, tmp_path / "fp8", fp8=True)
    model.save(m, tmp_path / "plain")
    got = model.load(tmp_path / "plain", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), m.state_dict().values()))
    banded = model.load(tmp_path / "fp8", dtype=torch.float32)  # dequantised in bands of block rows
    tensor_reader.CHUNK = 1 << 30  # the same checkpoint read in one chunk per tensor (restored by the fixture)
    whole = model.load(tmp_path / "fp8", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(banded.state_dict().values(), whole.state_dict().values()))


def test_a_truncated_file_names_the_tensor(st_file, tmp_path):
    f, _ = st_file
    short = tmp_path / "short.safetensors"
    short.write_bytes(f.read_bytes()[:-1000])
    with TensorReader() as r, pytest.raises(ReadError, match=r"short.safetensors: tensor \S+: the file ends inside"):
        for name in ("w.bf16", "w.f32", "v", "q", "q_scale_inv"):
            r.read(short, name)



@pytest.mark.parametrize("head, why", [
    ((2 ** 63 + 5).to_bytes(8, "little") + b"{}", "its header length 9,223,372,036,854,775,813 is past"),
    ((50).to_bytes(8, "little") + b"{}", "it is truncated inside its header: 10 bytes, the header alone 58"),
    # safetensors' own limit, 100,000,000 bytes (it was 100 << 20 here: this read as a header cut short)
    ((100_000_001).to_bytes(8, "little") + b"{}", "its header length 100,000,001 is past safetensors' limit of "
                                                  "100,000,000 bytes"),
    ((2).to_bytes(8, "little") + b"[]", "its header is a JSON list, not an object of tensors"),
    ((200_000).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000, "its header is not JSON (RecursionError"),
    (b"\1\2", "it is 2 bytes, too short for a safetensors header")],
    ids=["length 2**63", "length past the end", "length past the limit", "a list", "deeply nested", "2 bytes"])
def test_a_header_that_cannot_be_read_is_a_read_error_saying_why(tmp_path, head, why):
    """The reader parsed its header by hand, apart from the loader's length note: a length of 2**63 escaped
    as an OverflowError, a list as a TypeError, a deep nesting as a RecursionError, and a length past the
    file's end read the bytes there were as the whole header (a review). Now one helper reads both."""
    f = tmp_path / "bad.safetensors"
    f.write_bytes(head)
    with TensorReader() as r, pytest.raises(ReadError) as ei:
        r.read(f, "w")
    assert str(ei.value).startswith(f"{f}: not a safetensors file: {why}"), ei.value


@pytest.mark.slow  # two processes load 280 MB each
def test_a_load_holds_the_weights_plus_one_chunk(tmp_path):
    """The full-width finding as a regression test: a load's resident memory grows by the weights and
    one chunk, not by the mapped file (a process of its own, so that its peak RSS is the load's). The
    control reads each tensor in one chunk: the peak then carries the largest tensor (the 134 MB
    embedding) on top of the weights."""
    m = random_model("tiny", seed=0, vocab_size=65536, dim=512)  # embedding and head 134 MB each
    model.save(m, tmp_path / "ck")
    grown, weights = load_peak(tmp_path / "ck", 4 << 20)
    big, _ = load_peak(tmp_path / "ck", 1 << 30)
    print(f"\nload of {weights / 1e6:.0f} MB of weights: resident memory grew {grown / 1e6:.0f} MB in 4 MB chunks, "
          f"{big / 1e6:.0f} MB in one chunk per tensor")
    assert weights > 270e6
    # ~45 MB of the growth is not tensor data (allocator and module state, the same in both loads)
    assert grown < weights + 100e6 and big > grown + 70e6  # about half the 134 MB tensor: measured 110 MB
