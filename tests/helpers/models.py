"""Small random checkpoints (written by transformers and by our own `model.save`), corpora and
tokenizers that the tests build."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# A small DeepSeek-V3 in Hugging Face config keys. Dims deliberately not multiples of 128.
HF_TINY = dict(
    vocab_size=211, hidden_size=72, intermediate_size=136, moe_intermediate_size=40,
    num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=40, kv_lora_rank=24,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=256,
    rope_theta=10000.0,
    rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                  "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    num_nextn_predict_layers=1,
)


def randomize_(module: torch.nn.Module, seed: int, bias_scale: float = 0.3) -> None:
    """Give every weight a scale where routing and attention are far from uniform, and make the
    balancing bias nonzero so a test notices if it is ignored."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:  # norms: around 1
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for name, b in module.named_buffers():
            if name.endswith("e_score_correction_bias") or name.endswith("gate.bias"):
                b.copy_(bias_scale * torch.randn(b.shape, generator=g))


def hf_checkpoint(dirpath: Path, seed: int = 0, *, base: dict = HF_TINY, family: str = "DeepseekV3",
                  **overrides) -> Path:
    """Save a random transformers `{family}ForCausalLM` (float32; config `base | overrides`) to
    `dirpath`; returns it."""
    import copy

    import transformers

    # a deep copy: transformers writes rope_theta into the rope_scaling dict it is given, which was
    # HF_TINY's own, for every later test of the process (where it overrode a config's rope_theta)
    cfg = getattr(transformers, f"{family}Config")(**copy.deepcopy(base | overrides))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = getattr(transformers, f"{family}ForCausalLM")(cfg).float()
    randomize_(hf, seed)
    hf.save_pretrained(dirpath)
    return Path(dirpath)


def load_hf(dirpath: Path, family: str = "DeepseekV3"):
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    return getattr(transformers, f"{family}ForCausalLM").from_pretrained(dirpath, dtype=torch.float32).eval()


def random_model(name_or_args="tiny", seed: int = 0, attn_impl: str = "absorb", **overrides):
    """Our Transformer with randomized float32 weights (see `randomize_`)."""
    from model import ModelArgs, Transformer

    args = ModelArgs.from_name(name_or_args) if isinstance(name_or_args, str) else name_or_args
    if overrides:
        args = ModelArgs.from_dict(args.to_dict() | overrides)
    m = Transformer(args, attn_impl=attn_impl, dtype=torch.float32)
    randomize_(m, seed)
    return m.eval()


def cast_(m, dtype: torch.dtype):
    """`m` cast to `dtype` in place, its routers (model.moe.Gate) kept float32 as model.load builds
    them; returns m."""
    from model.moe import Gate

    m.to(dtype)
    for mod in m.modules():
        if isinstance(mod, Gate):
            mod.float()
    return m


# ------------------------------------------------------------------ corpora and probe checkpoints
_WORDS = ("the quick brown fox jumps over a lazy dog while cats sleep in the warm sun and "
          "rivers run down to the sea under grey skies").split()


def make_corpus(root: Path, docs_per_domain: int = 6, seed: int = 0, scale: int = 1) -> Path:
    """A small two-domain corpus directory (prose, code); `scale` multiplies document lengths."""
    import random

    rng = random.Random(seed)
    for dom in ("code", "prose"):
        (root / dom).mkdir(parents=True, exist_ok=True)
    for i in range(docs_per_domain):
        n = rng.randint(20, 300) * scale
        (root / "prose" / f"d{i}.txt").write_text(" ".join(rng.choice(_WORDS) for _ in range(n)))
        body = "\n".join(f"def f{j}(x):\n    return x * {j} + {i}" for j in range(rng.randint(3, 40) * scale))
        (root / "code" / f"c{i}.py").write_text(body)
    return root


def make_tokenizer(texts_dir: Path, path: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on the corpus files (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(sorted(str(p) for p in Path(texts_dir).rglob("*") if p.is_file()), tr)
    tok.save(str(path))
    return path


def make_probe_ckpt(root: Path, corpus: Path, seed: int = 0) -> Path:
    """A random tiny checkpoint (with MTP) plus a tokenizer trained on `corpus`."""
    import model

    m = random_model("tiny", seed=seed)
    model.save(m, root)
    make_tokenizer(corpus, root / "tokenizer.json")
    return root


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference relative to the largest magnitude of `b`."""
    return ((a - b).abs().max() / b.abs().max()).item()


def random_tokens(b: int, s: int, seed: int = 0, vocab: int = 512) -> torch.Tensor:
    """A [b, s] batch of token ids drawn with its own generator."""
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))
