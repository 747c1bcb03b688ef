"""Checkpoints: FP8 blocks, the loading variants and counts on the meta device (bad input:
test_checkpoint_errors.py; shared checkpoints: conftest.py here).

    python -m pytest tests/model/test_checkpoint.py -q -s      # -s shows the parameter counts
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
import model.checkpoint as ckpt
from model import checkpoint_files
from model.names import ours_to_hf
from model import ModelArgs, Transformer
import model.fp8 as ckpt_fp8
from model.fp8 import FP8_MAX, dequantize_block, quantize_block

from helpers import load_hf, random_model
from helpers.checkpoints import FP8_OVERRIDES, edit_tensors, tokens_for

BLOCK = (128, 128)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """|got - want| <= rel * max|want| everywhere."""
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x max|ref| {scale:.3g}"


# ----------------------------------------------------------------------------------------- FP8


def blockwise_dequant_loop(q: torch.Tensor, s: torch.Tensor, block=BLOCK) -> torch.Tensor:
    """An independent dequantisation: one slice per block, W = Q * scale_inv."""
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            rows = slice(i * block[0], (i + 1) * block[0])
            cols = slice(j * block[1], (j + 1) * block[1])
            out[rows, cols] = q[rows, cols].float() * s[i, j]
    return out


def test_quantize_block_round_trip_error_and_scale_shapes():
    g = torch.Generator().manual_seed(0)
    o, i = 300, 200  # blocks: rows 128,128,44 x cols 128,72
    w = torch.randn(o, i, generator=g)
    # a different magnitude in every block (1e-4 .. 1e2), heavy tails, and one all-zero block
    mags = torch.tensor([[1e-4, 1e-1], [1.0, 30.0], [1e2, 0.0]])
    w = w * mags.repeat_interleave(128, 0).repeat_interleave(128, 1)[:o, :i]
    w[5, 7] = 40.0 * w.abs().max()  # an outlier: the rest of its block falls into small FP8 values
    q, s = quantize_block(w, BLOCK)

    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert tuple(s.shape) == (math.ceil(o / 128), math.ceil(i / 128)) == (3, 2)
    assert q.float().abs().max() <= FP8_MAX
    deq = dequantize_block(q, s, BLOCK)
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    assert torch.equal(deq, blockwise_dequant_loop(q, s))
    # the largest element of every non-empty block is stored as +-448 (scale = amax / 448)
    for bi in range(3):
        for bj in range(2):
            blk = q[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128].float().abs()
            if mags[bi, bj] > 0:
                assert blk.max() == FP8_MAX
    assert torch.equal(deq[256:, 128:], torch.zeros_like(deq[256:, 128:]))  # the zero block stays zero

    # Error bound. x = w / s lies in [-448, 448]. e4m3 has 3 mantissa bits: a normal x (|x| >= 2^-6)
    # rounds with error <= half a spacing = 2^-4 |x|; a subnormal one (spacing 2^-9) with error
    # <= 2^-10. So |deq - w| <= max(2^-4 |w|, 2^-10 s), plus float32 rounding of the divide and
    # multiply (a few 2^-24 |w|).
    s_el = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:o, :i]
    err = (deq - w).abs()
    bound = torch.maximum(2.0**-4 * w.abs(), 2.0**-10 * s_el) + 2.0**-20 * w.abs()
    assert (err <= bound).all(), f"worst excess {(err - bound).max().item():.3g}"
    # the bound is nearly reached (so this checks FP8 rounding really happened, not a float copy)
    normal = w.abs() >= 2.0**-6 * s_el
    worst_rel = (err[normal] / w.abs()[normal]).max().item()
    assert 2.0**-5 < worst_rel <= 2.0**-4 * (1 + 1e-5)
    assert (err[~normal] > 0).any()  # the outlier's block has subnormal entries, also rounded


def test_quantize_block_scales_are_amax_over_448_correctly_rounded():
    """Each scale is amax / 448 rounded once, the value every device gives (divided by a tensor: on
    CUDA torch multiplies by the reciprocal of a Python divisor, an ulp off in many blocks)."""
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    q, s = quantize_block(w, (16, 16))
    amax = w.abs().reshape(16, 16, 16, 16).amax(dim=(1, 3))
    assert torch.equal(s, (amax.double() / FP8_MAX).float())
    # the control: the reciprocal-multiply is a different rounding, in some of these 256 blocks
    reciprocal = amax * torch.tensor(1 / FP8_MAX, dtype=torch.float32)
    assert 0 < int((reciprocal != s).sum()) < 256


def test_dequantize_block_whole_blocks_path_equals_the_elementwise_one():
    """Shapes of whole 128-blocks take the in-place broadcast path; it gives the same floats as scaling
    by the expanded elementwise scales (stacked experts too, and into bf16)."""
    for shape in ((256, 384), (3, 128, 256)):
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
        q, s = quantize_block(w, BLOCK)
        want = q.float() * ckpt_fp8._expand(s, q.shape, BLOCK)
        assert torch.equal(dequantize_block(q, s, BLOCK), want)
        assert torch.equal(dequantize_block(q, s, BLOCK, torch.bfloat16), want.bfloat16())
        assert not torch.equal(dequantize_block(q, s * 2, BLOCK), want)  # the control: the scales matter


def test_quantize_block_in_blocks_that_are_not_square():
    block = (64, 128)
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))  # partial blocks both ways
    q, s = quantize_block(w, block)
    assert tuple(s.shape) == (math.ceil(300 / 64), math.ceil(200 / 128)) == (5, 2)
    deq = dequantize_block(q, s, block)
    assert torch.equal(deq, blockwise_dequant_loop(q, s, block))
    for i in range(5):
        for j in range(2):  # every block's largest element is stored as +-448
            assert q[i * 64:(i + 1) * 64, j * 128:(j + 1) * 128].float().abs().max() == FP8_MAX
    assert ((deq - w).abs() <= 2.0**-4 * w.abs() + 2.0**-10 * s.max()).all()


def test_round_ue8m0_rounds_up_to_a_power_of_two_and_keeps_nan():
    x = torch.tensor([1.0, 1.5, 2.0, 3.0, 0.75, 1e-12, 448.0, 7e30], dtype=torch.float32)
    x = torch.cat([x, torch.nextafter(x, torch.full_like(x, math.inf))])  # one ulp above each
    want = torch.exp2(torch.ceil(torch.log2(x.double()))).float()  # the next power of two, in float64
    assert torch.equal(ckpt_fp8.round_ue8m0(x), want)
    special = ckpt_fp8.round_ue8m0(torch.tensor([math.nan, math.inf]))
    assert special[0].isnan() and special[1] == math.inf  # a NaN amax stays NaN, not a 0.0 scale


def test_dequantize_block_rejects_wrong_scale_shape():
    q, s = quantize_block(torch.randn(300, 200), BLOCK)
    with pytest.raises(ValueError, match="scale shape"):
        dequantize_block(q, s[:2], BLOCK)


def test_dequantize_block_rejects_an_out_of_another_shape_or_a_narrow_dtype():
    q, s = quantize_block(torch.randn(256, 200), BLOCK)
    for kw in (dict(out=torch.empty(256, 100)),  # another shape
               dict(out=torch.empty(100, 256)),
               dict(dtype=torch.bfloat16, out=torch.empty(256, 200, dtype=torch.bfloat16))):  # out is float32/64 only
        with pytest.raises(ValueError, match="out must be"):
            dequantize_block(q, s, BLOCK, **kw)


def test_fp8_checkpoint_layout(fp8_dir, fp8_model):
    sd = load_file(fp8_dir / "model.safetensors")
    cfg = json.loads((fp8_dir / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8"
    assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    fp8 = {k: t for k, t in sd.items() if t.dtype == torch.float8_e4m3fn}
    assert fp8, "no FP8 tensors written"
    partial_and_full = 0
    for k, t in fp8.items():
        s = sd[k + "_scale_inv"]
        assert s.dtype == torch.float32
        assert tuple(s.shape) == (math.ceil(t.shape[0] / 128), math.ceil(t.shape[1] / 128)), k
        partial_and_full += any(n > 128 and n % 128 for n in t.shape)
    assert partial_and_full >= 5  # weights with a full block and a partial edge block
    # never FP8: embedding, head, norms, router weight and bias
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
              "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
              "model.layers.1.input_layernorm.weight"):
        assert sd[k].dtype == torch.float32, k
    # every FP8-capable projection of the model was quantised (layer 2 is the MTP block)
    for hf, _, _, is_fp8 in ours_to_hf(fp8_model):
        assert (hf in fp8) == is_fp8, hf


def test_fp8_checkpoint_logits_equal_dequantised_checkpoint(fp8_dir, fp8_model, tmp_path):
    # Reference: dequantise every FP8 tensor ourselves and save a plain float32 checkpoint.
    sd = load_file(fp8_dir / "model.safetensors")
    plain = {}
    for k, t in sd.items():
        if k.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = sd[k + "_scale_inv"]
            plain[k] = dequantize_block(t, s, BLOCK)
            assert torch.equal(plain[k], blockwise_dequant_loop(t, s))
        else:
            plain[k] = t.float()
    ref_dir = tmp_path / "dequantised"
    ref_dir.mkdir()
    save_file(plain, str(ref_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((fp8_dir / "config.json").read_text())
    del cfg["quantization_config"]
    cfg["torch_dtype"] = "float32"
    (ref_dir / "config.json").write_text(json.dumps(cfg))

    ref = model.load(ref_dir, dtype=torch.float32)
    got = model.load(fp8_dir, dtype=torch.float32)
    assert next(got.parameters()).dtype == torch.float32
    tok = tokens_for(got)
    ref_logits, ref_mtp = ref(tok, mtp=True)
    got_logits, got_mtp = got(tok, mtp=True)
    assert_close_rel(got_logits, ref_logits, 1e-6)
    assert_close_rel(got_mtp, ref_mtp, 1e-6)
    # Negative control: the FP8 model is NOT the unquantised original (rounding really happened;
    # its logits can differ a lot, as rounding flips some routing choices), but every weight is
    # within FP8 rounding (2^-4 relative, or 2^-10 of its block scale) of the original.
    orig = fp8_model(tok)
    assert (got_logits - orig).abs().max() > 1e-4 * orig.abs().max()
    for name, w in fp8_model.named_parameters():
        w8 = got.get_parameter(name)
        amax = w.detach().abs().max()
        assert ((w8 - w).abs() <= 2.0**-4 * w.abs() + 2.0**-10 * amax / FP8_MAX + 1e-7 * amax).all(), name


def test_fp8_checkpoint_in_blocks_that_are_not_square_loads_dequantised(tmp_path):
    # "bf16 dequantises any block size": a 64 x 128 one too (rows x columns)
    m = random_model("tiny", seed=1, **FP8_OVERRIDES, quant_block=(64, 128))
    model.save(m, tmp_path, fp8=True)
    sd = load_file(tmp_path / "model.safetensors")
    got = model.load(tmp_path, dtype=torch.float32)
    for hf, ours, e, is_fp8 in ours_to_hf(m):
        if is_fp8 and e in (None, 1):
            q, s = sd[hf], sd[hf + "_scale_inv"]
            assert tuple(s.shape) == (math.ceil(q.shape[0] / 64), math.ceil(q.shape[1] / 128)), hf
            w = got.get_parameter(ours) if e is None else got.get_parameter(ours)[e]
            assert torch.equal(w, blockwise_dequant_loop(q, s, (64, 128))), hf


def test_fp8_checkpoint_default_dtype_is_bf16_with_fp32_router(fp8_dir):
    m = model.load(fp8_dir)
    assert m.args.quant_block == (128, 128)
    assert next(p for n, p in m.named_parameters() if "gate" not in n).dtype == torch.bfloat16
    assert m.layers[0].attn.wq_a.weight.dtype == torch.bfloat16
    for blk in (m.layers[1], m.mtp[0].block):
        assert blk.ffn.gate.weight.dtype == torch.float32
        assert blk.ffn.gate.bias.dtype == torch.float32
    assert torch.isfinite(m(tokens_for(m))).all()


# ------------------------------------------------------------------------------- loading variants


def test_single_file_round_trip(tiny, tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["config.json", "model.safetensors",
                                                           "model.safetensors.index.json"]
    m = model.load(tiny_dir)
    assert m.args == tiny.args and m.args.dtype == "float32"
    assert not m.training
    want = tiny.state_dict()
    got = m.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    tok = tokens_for(m)
    assert torch.equal(m(tok), tiny(tok))


def test_sharded_with_index(tiny, sharded_dir):
    shards = sorted(sharded_dir.glob("*.safetensors"))
    assert len(shards) >= 3, [s.name for s in shards]
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    on_disk = set()
    for s in shards:
        on_disk |= set(load_file(s))
    assert set(index["weight_map"]) == on_disk
    m = model.load(sharded_dir)
    tok = tokens_for(m)
    a, b = m(tok, mtp=True), tiny(tok, mtp=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_load_maps_at_most_two_shard_files_at_once(tiny, sharded_dir, monkeypatch):
    """Each mapped file's touched pages count as resident memory until it is closed: the loader reads
    file by file and keeps at most two open (the tensor's file and its scales' file)."""
    real, state = checkpoint_files.safe_open, {"open": 0, "most": 0, "opened": 0}

    class Counting:
        def __init__(self, *a, **kw):
            self.cm = real(*a, **kw)

        def __enter__(self):
            state["open"] += 1
            state["opened"] += 1
            state["most"] = max(state["most"], state["open"])
            return self.cm.__enter__()

        def __exit__(self, *exc):
            state["open"] -= 1
            return self.cm.__exit__(*exc)

    monkeypatch.setattr(checkpoint_files, "safe_open", Counting)
    m = model.load(sharded_dir)
    n_files = len(list(sharded_dir.glob("*.safetensors")))
    assert state["open"] == 0 and state["most"] <= 2 and n_files >= 3
    assert n_files <= state["opened"] <= 2 * n_files  # headers once, then each file once: read in file order
    tok = tokens_for(m)
    assert torch.equal(m(tok), tiny(tok))


def test_sharded_without_index(tiny, sharded_dir, tmp_path):
    d = Path(shutil.copytree(sharded_dir, tmp_path / "noindex"))
    (d / "model.safetensors.index.json").unlink()
    assert len(list(d.glob("*.safetensors"))) >= 3
    m = model.load(d)
    tok = tokens_for(m)
    assert torch.equal(m(tok), tiny(tok))
    assert len(m.mtp) == 1


def test_mtp_weights_round_trip(tiny, tiny_dir):
    n = tiny.args.n_layers
    names = set(load_file(tiny_dir / "model.safetensors"))
    assert f"model.layers.{n}.eh_proj.weight" in names
    assert f"model.layers.{n}.shared_head.head.weight" in names  # copies, as published
    assert f"model.layers.{n}.embed_tokens.weight" in names
    m = model.load(tiny_dir)
    assert len(m.mtp) == 1 and m.args.extra["mtp_weights"]
    tok = tokens_for(m, shape=(2, 11))
    before = tiny(tok, mtp=True)[1]
    after = m(tok, mtp=True)[1]
    assert after.shape == (2, 10, tiny.args.vocab_size)
    assert torch.equal(after, before)


def test_checkpoint_without_mtp_layer_loads_without_mtp(tiny, tiny_copy):
    prefix = f"model.layers.{tiny.args.n_layers}."
    edit_tensors(tiny_copy / "model.safetensors",
                 lambda sd: {k: v for k, v in sd.items() if not k.startswith(prefix)})
    m = model.load(tiny_copy)
    assert len(m.mtp) == 0 and m.args.n_mtp_layers == 0 and not m.args.extra["mtp_weights"]
    tok = tokens_for(m)
    assert torch.equal(m(tok), tiny(tok))
    with pytest.raises(ValueError, match="no MTP module"):
        m(tok, mtp=True)


@pytest.mark.parametrize("overrides", [
    {},
    dict(mscale=0.0),  # YaRN without mscale_all_dim: config.json must spell out attention_factor 1.0
    dict(rope_attention_factor=1.2),
])


def test_transformers_reads_our_checkpoint(overrides, tiny, tiny_dir, tmp_path):
    m, d = tiny, tiny_dir
    if overrides:
        m = random_model("tiny", seed=2, **overrides)
        d = tmp_path / "ckpt"
        model.save(m, d)
        assert model.load(d).args == m.args
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = load_hf(d)
    tok = tokens_for(m, seed=3, shape=(2, 13))
    with torch.no_grad():
        want = hf(tok).logits
        got = m(tok)
    assert_close_rel(got, want, 1e-4)
    # Negative control: without the balancing bias the routing changes and the check fails.
    with torch.no_grad():
        off = model.load(d)
        for layer in off.layers[off.args.n_dense_layers:]:
            layer.ffn.gate.bias.zero_()
        off_logits = off(tok)
    assert (off_logits - want).abs().max() > 1e-3 * want.abs().max()


def test_transformers_attention_from_our_config_without_query_lora_has_our_checkpoint_names():
    # q_lora_rank 0 (V2-Lite) must reach config.json as null: transformers builds a rank-0 q_a_proj
    # from a 0 and leaves the checkpoint's q_proj unread
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    args = ModelArgs.from_dict(ModelArgs.from_name("tiny").to_dict() | {"q_lora_rank": 0})
    with torch.device("meta"):
        m = Transformer(args, init=False)
        theirs = set(DeepseekV3Attention(DeepseekV3Config(**args.to_hf_config()), layer_idx=0).state_dict())
    ours = {hf.removeprefix("model.layers.0.self_attn.") for hf, _, _, _ in ours_to_hf(m)
            if hf.startswith("model.layers.0.self_attn.")}
    assert "q_proj.weight" in ours and ours == theirs


def test_load_on_meta_reads_no_tensor_data(tiny, tiny_dir, monkeypatch):
    """Headers only: every tensor byte of a load goes through TensorReader.rows, made to fail here."""
    from model.tensor_reader import TensorReader

    def no_data(self, path, name, *a, **kw):
        raise AssertionError(f"tensor data read: {name}")

    monkeypatch.setattr(TensorReader, "rows", no_data)
    m = model.load(tiny_dir, device="meta")
    assert isinstance(m, Transformer)
    assert all(p.is_meta for p in m.parameters())
    assert m.args == tiny.args and len(m.mtp) == 1
    assert {n: p.shape for n, p in m.named_parameters()} == {n: p.shape for n, p in tiny.named_parameters()}
    with pytest.raises(AssertionError, match="tensor data read"):  # the patch does bite
        model.load(tiny_dir)


# ------------------------------------------------------------------------------ counts on meta


def meta_counts(name: str) -> dict[str, int]:
    args = ModelArgs.from_name(name)
    with torch.device("meta"):
        m = Transformer(args)
    assert all(p.is_meta for p in m.parameters())
    return m.param_counts() | {"embed": args.vocab_size * args.dim}


def test_param_counts_671B():
    c = meta_counts("671B")
    mtp_stored = c["mtp"] + 2 * c["embed"]  # + the embedding and head copies in layer 61
    print(f"\n671B: main {c['main'] / 1e9:.3f}B, activated {c['activated'] / 1e9:.3f}B, MTP unique "
          f"{c['mtp'] / 1e9:.3f}B (activated {c['mtp_activated'] / 1e9:.3f}B), MTP as stored "
          f"{mtp_stored / 1e9:.3f}B, on disk {(c['main'] + mtp_stored) / 1e9:.3f}B")
    assert abs(c["main"] / 671e9 - 1) < 0.01
    assert abs(c["activated"] / 36.6e9 - 1) < 0.002  # DeepSeek's README_WEIGHTS: 36.6B, the 0.9B head included
    # by hand: 58 MoE layers each leave 256 - 8 routed experts of 3 x 7168 x 2048 unused, and a token reads one
    # row of the input embedding table, not the table (it was counted: 37.55B; a review)
    assert c["activated"] == c["main"] - 58 * (256 - 8) * 3 * 7168 * 2048 - 129280 * 7168
    assert abs(c["mtp"] / 11.6e9 - 1) < 0.01
    assert abs(mtp_stored / 14e9 - 1) < 0.05
    assert abs((c["main"] + mtp_stored) / 685e9 - 1) < 0.01


@pytest.mark.parametrize("name,total,activated", [("236B", 236e9, 21e9), ("16B", 15.7e9, 2.4e9)])
def test_param_counts_v2(name, total, activated):
    c = meta_counts(name)
    print(f"\n{name}: main {c['main'] / 1e9:.3f}B, activated {c['activated'] / 1e9:.3f}B, MTP {c['mtp']}")
    assert abs(c["main"] / total - 1) < 0.01
    if activated:
        assert abs(c["activated"] / activated - 1) < 0.03
    assert c["mtp"] == 0


def test_fp8_copy_rewrites_a_checkpoint_in_fp8_with_its_tokenizer(tmp_path):
    """`fp8_copy`: the same model with its projections block-quantised (what `save(fp8=True)` of the
    loaded model writes, tensor for tensor), the checkpoint's other files alongside (tokenizer,
    generation config), its own config.json the FP8 one, loadable FP8 resident."""
    from model.saving import fp8_copy

    m = random_model("tiny", seed=2, **FP8_OVERRIDES)
    model.save(m, tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text('{"not": "read here"}')
    (tmp_path / "src" / "generation_config.json").write_text('{"temperature": 0.6}')
    out = fp8_copy(tmp_path / "src", tmp_path / "fp8")
    assert (out / "tokenizer.json").read_text() == '{"not": "read here"}'
    assert (out / "generation_config.json").read_text() == '{"temperature": 0.6}'
    assert not (out / "tokenizer_config.json").exists()  # only what the source has
    assert "quantization_config" in json.loads((out / "config.json").read_text())  # save's, not the source's
    assert not list(out.glob("*.tmp"))
    model.save(model.load(tmp_path / "src", dtype=torch.float32), tmp_path / "want", fp8=True)
    got, want = (load_file(str(d / "model.safetensors")) for d in (out, tmp_path / "want"))
    assert got.keys() == want.keys() and any(k.endswith("weight_scale_inv") for k in got)
    assert all(torch.equal(got[k].view(torch.uint8) if got[k].dtype == torch.float8_e4m3fn else got[k],
                           want[k].view(torch.uint8) if want[k].dtype == torch.float8_e4m3fn else want[k]) for k in got)
    resident = model.load(out, gemm_impl="fp8", dtype=torch.float32)
    tok = tokens_for(resident)
    with torch.no_grad():
        a, b = resident(tok), m(tok)
    assert (a - b).abs().mean() / b.abs().mean() < 0.25  # FP8 rounding, not another model
    # a bfloat16 source (as DeepSeek publishes its weights) stays bfloat16 outside the FP8 projections:
    # the copy was float32 there, torch_dtype included (a review)
    model.save(m, tmp_path / "bf16", dtype="bfloat16")
    out = fp8_copy(tmp_path / "bf16", tmp_path / "fp8-of-bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    got = load_file(str(out / "model.safetensors"))
    assert got["model.embed_tokens.weight"].dtype == got["lm_head.weight"].dtype == torch.bfloat16
    assert {t.dtype for k, t in got.items() if k.endswith("norm.weight")} == {torch.bfloat16}
    assert {t.dtype for k, t in got.items() if k.endswith("_proj.weight") and "eh_proj" not in k} == {torch.float8_e4m3fn}


def test_fp8_copy_into_its_own_source_is_refused_and_leaves_it_whole(tmp_path):
    """fp8_copy(ckpt, ckpt) replaced the checkpoint's weights by their FP8 rounding without a word: the
    higher-precision original was gone. Refused, by any spelling of the same folder, before anything is written."""
    from model.saving import fp8_copy

    model.save(random_model("tiny", seed=2, **FP8_OVERRIDES), tmp_path / "src")
    before = {f.name: f.read_bytes() for f in (tmp_path / "src").iterdir()}
    for out in (tmp_path / "src", tmp_path / "src" / ".." / "src"):
        with pytest.raises(model.CheckpointError, match=r"^out .*src: is the source checkpoint .*src; write the FP8 "
                                                        "copy elsewhere"):
            fp8_copy(tmp_path / "src", out)
    assert {f.name: f.read_bytes() for f in (tmp_path / "src").iterdir()} == before


def test_the_names_moved_out_of_model_checkpoint_still_import_from_it():
    """model/checkpoint.py's files, index and headers moved to model/checkpoint_files.py and the tensors'
    copy to model/checkpoint_stream.py; users' `from model.checkpoint import weight_files` keeps working,
    and gives the same objects as the new home."""
    from model import checkpoint_files

    for name in ("weight_files", "read_index", "lfs_pointer_note", "LFS_POINTER"):
        assert getattr(ckpt, name) is getattr(checkpoint_files, name), name


@pytest.mark.slow  # 2.4 s: a fresh interpreter that imports the model package (torch) (the AVX2-only EPYC, 2026-12-07)
def test_the_model_library_imports_nothing_from_probe():
    """model/ is the library probe/ stands on: none of its modules but the command (`python -m model`:
    __main__.py, its flags, and commands.py, what they run; both share the jobs' flag checks) imports probe, so
    that loading a model never imports the recorders (a module split must not pull one in). Two exceptions, both
    standard-library only: `probe.job_signals`' `quiet_start`, the guard every command's start is wrapped in,
    and `probe.lazy`, whose exports make model/__init__ import its names on first use. Importing model then
    loads the probe package's lazy __init__ and probe.lazy, no torch until a name is used, and the whole library
    nothing more of probe (checked in a fresh interpreter)."""
    import ast
    import subprocess
    import sys

    root = Path(model.__file__).parent
    found = []
    for f in sorted(root.glob("*.py")):
        if f.name in ("__main__.py", "commands.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{f.name}: {n}" for n in names
                      if (n == "probe" or n.startswith("probe.")) and n not in ("probe.job_signals", "probe.lazy")]
    assert len(list(root.glob("*.py"))) > 20 and found == []
    said = "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'probe')), 'torch' in sys.modules)"
    # the torch-free helpers that readers of runs import (model.indices in analyses.metrics, the checkpoint's
    # files in the report's label): no torch either
    code = (f"import sys, model, model.indices, model.checkpoint_files; {said}; "
            f"[getattr(model, n) for n in model.__all__]; {said}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["probe probe.lazy False", "probe probe.lazy True"], out
