"""Model arguments: one dataclass for every DeepSeek-V3-family size.

`ModelArgs` uses the field names of DeepSeek's published inference code. Two ways in:

    ModelArgs.from_name("671B")               # a shipped JSON in model/configs/
    ModelArgs.from_hf_config("ckpt/")         # a Hugging Face config.json (dir, file or dict)

and one way out, `args.to_hf_config()`, which writes the Hugging Face keys back (used to save
checkpoints that transformers also reads). The mapping between the two vocabularies is the table
`_HF_KEYS` below; nothing else in the project reads Hugging Face config keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .args_checks import PROBLEM_STEPS, _type_problem

CONFIG_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """The names `ModelArgs.from_name` takes ('16B', '236B', '671B', 'V3.1', 'tiny')."""
    return sorted(p.stem.removeprefix("config_") for p in CONFIG_DIR.glob("config_*.json"))


SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v2")
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")  # what config.json torch_dtype may name


class ConfigError(ValueError):
    """A config that cannot describe a model we can build (message names the file and key)."""


class InputError(ValueError):
    """Arguments a forward call cannot run on (tokens, start_pos, lengths, targets, logits_at, ...;
    `Transformer.forward` and what it calls): the message names the argument and the bad value."""


def given_path(path, what: str, error: type[Exception]) -> Path:
    """`path` (text or os.PathLike) as a Path for a library call, refusing empty text or another type by
    name as `error`: Path('') is '.', so `model.load("")` read the current folder and its error said '.',
    and `model.load(5)` was Path's own TypeError (model's own copy of `probe.errors.given_path`: the
    model library does not import probe)."""
    if isinstance(path, str) and not path.strip():
        raise error(f"{what}={path!r}: an empty path (for the current folder, give .)")
    if not isinstance(path, (str, os.PathLike)):  # Path(5) was Python's own TypeError
        raise error(f"{what}={path!r}: expected a path (str or os.PathLike), not {type(path).__name__}")
    return Path(path)


@dataclass
class ModelArgs:
    # sizes
    vocab_size: int = 129280
    dim: int = 7168
    inter_dim: int = 18432  # dense SwiGLU hidden size
    moe_inter_dim: int = 2048  # per routed / shared expert
    n_layers: int = 61
    n_dense_layers: int = 3  # layers [0, n_dense_layers) are dense, the rest MoE
    n_heads: int = 128
    # MoE
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 8
    n_expert_groups: int = 8
    n_limited_groups: int = 4
    score_func: str = "sigmoid"  # "sigmoid" (V3) or "softmax" (V2)
    route_scale: float = 2.5
    norm_topk_prob: bool = True  # renormalise the chosen weights to sum 1 (V3: yes, V2: no)
    # MLA
    q_lora_rank: int = 1536  # 0 = a single full-rank wq (V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # RoPE / YaRN
    rope_theta: float = 10000.0
    rope_type: str = "yarn"  # "yarn" or "default" (plain RoPE); taken from the checkpoint's config
    rope_factor: float = 40.0
    original_seq_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    rope_truncate: bool = True  # round the YaRN ramp's ends to whole pair indices (HF `truncate`)
    mscale: float = 1.0  # YaRN softmax-scale multiplier (HF `mscale_all_dim`)
    rope_attention_factor: float = 1.0  # cos/sin multiplier (HF: mscale(factor, mscale)/mscale(factor, all_dim))
    max_seq_len: int = 163840
    # misc
    norm_eps: float = 1e-6
    n_mtp_layers: int = 1  # MTP depth D (HF `num_nextn_predict_layers`)
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    dtype: str = "bfloat16"  # the checkpoint's compute dtype (FP8 checkpoints compute in bf16)
    # FP8 checkpoint format (None = plain weights)
    quant_block: tuple[int, int] | None = None
    scale_fmt: str | None = None  # "ue8m0" for power-of-two activation scales (V3.1)
    model_type: str = "deepseek_v3"
    # not part of the architecture: provenance notes kept with the args
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.quant_block, list):
            self.quant_block = tuple(self.quant_block)
        self.validate()

    # ----------------------------------------------------------------- derived
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def yarn(self) -> bool:
        return self.rope_type == "yarn"

    @property
    def softmax_scale(self) -> float:
        """(nope+rope)^-0.5, times mscale^2 when YaRN is on (0.1352338 for 671B)."""
        scale = self.qk_head_dim**-0.5
        if self.yarn and self.rope_factor > 1 and self.mscale:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale = scale * m * m
        return scale

    def is_moe_layer(self, layer_id: int) -> bool:
        """True for MoE layers, including the MTP block (layer index >= n_layers)."""
        return layer_id >= self.n_dense_layers

    def validate(self) -> None:
        """Reject configs the architecture forbids, with the offending fields named (the first problem
        found, in the order of the steps below)."""
        for step in PROBLEM_STEPS:
            if msg := step(self):
                raise ConfigError(f"invalid ModelArgs: {msg}")

    # --------------------------------------------------------------- factories
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelArgs fields {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelArgs":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read model args: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        """A shipped size: '671B', 'V3.1', '236B', '16B' or 'tiny'."""
        path = CONFIG_DIR / f"config_{name}.json"
        if not path.exists():
            raise ConfigError(f"no shipped config {name!r}; available: {shipped_configs()}")
        return cls.from_json(path)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        if d["quant_block"] is not None:
            d["quant_block"] = list(d["quant_block"])
        return d

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_hf_config(cls, source: str | Path | dict[str, Any]) -> "ModelArgs":
        """Read a DeepSeek-V3 / V2 / V2-Lite Hugging Face `config.json` (a directory, a file, or a dict;
        an empty path is a ConfigError, not the current folder)."""
        if isinstance(source, dict):
            cfg, where = dict(source), "config dict"
        elif not isinstance(source, (str, os.PathLike)):  # Path(5) was Python's own TypeError
            raise ConfigError(f"source={source!r}: expected a checkpoint directory, a config.json path or a "
                              f"config dict, not {type(source).__name__}")
        else:
            p = given_path(source, "source", ConfigError)
            if p.is_dir():
                p = p / "config.json"
            where = str(p)
            if not p.exists():
                run_model = p.parent / "model"  # a training run's folder (python -m train --out) given for its model
                from .checkpoint_files import cache_folder_note  # (it imports this module)

                hint = f"; a training run keeps its model in {run_model}" if (run_model / "config.json").exists() \
                    else cache_folder_note(p.parent)
                raise ConfigError(f"{where}: not found (a checkpoint directory needs a config.json{hint})")
            try:
                cfg = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{where}: not valid JSON: {e}") from None
        return _from_hf(cfg, where)

    def to_hf_config(self) -> dict[str, Any]:
        """Hugging Face `config.json` keys for these args (readable by transformers' DeepseekV3)."""
        cfg: dict[str, Any] = {
            "architectures": ["DeepseekV3ForCausalLM" if self.model_type == "deepseek_v3"
                              else "DeepseekV2ForCausalLM"],
            "model_type": self.model_type,
        }
        for hf_key, ours in _HF_KEYS.items():
            cfg[hf_key] = getattr(self, ours)
        cfg["q_lora_rank"] = self.q_lora_rank or None
        cfg["num_key_value_heads"] = self.n_heads
        cfg["scoring_func"] = self.score_func
        cfg["topk_method"] = "noaux_tc" if self.score_func == "sigmoid" else (
            "group_limited_greedy" if self.n_expert_groups > 1 else "greedy")
        cfg["moe_layer_freq"] = 1
        cfg["hidden_act"] = "silu"
        cfg["tie_word_embeddings"] = False
        cfg["attention_bias"] = False
        cfg["rope_theta"] = self.rope_theta
        if self.yarn:
            cfg["rope_scaling"] = {
                "type": "yarn", "rope_type": "yarn", "factor": self.rope_factor,
                "original_max_position_embeddings": self.original_seq_len,
                "beta_fast": self.beta_fast, "beta_slow": self.beta_slow,
                "mscale": self.mscale, "mscale_all_dim": self.mscale,
            }
            if not self.rope_truncate:
                cfg["rope_scaling"]["truncate"] = False
            # readers derive the cos/sin factor from mscale / mscale_all_dim unless it is given:
            # write it whenever that derivation would not give ours back
            derived = 1.0 if self.mscale else _yarn_mscale(self.rope_factor, 1.0)
            if self.rope_attention_factor != derived:
                cfg["rope_scaling"]["attention_factor"] = self.rope_attention_factor
        else:
            cfg["rope_scaling"] = None
        cfg["torch_dtype"] = self.dtype
        if self.quant_block is not None:
            cfg["quantization_config"] = {
                "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": list(self.quant_block),
            }
            if self.scale_fmt:
                cfg["quantization_config"]["scale_fmt"] = self.scale_fmt
        return cfg


# Hugging Face key -> ModelArgs field, for keys that map one to one.
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "intermediate_size": "inter_dim",
    "moe_intermediate_size": "moe_inter_dim",
    "num_hidden_layers": "n_layers",
    "first_k_dense_replace": "n_dense_layers",
    "num_attention_heads": "n_heads",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "n_group": "n_expert_groups",
    "topk_group": "n_limited_groups",
    "routed_scaling_factor": "route_scale",
    "norm_topk_prob": "norm_topk_prob",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "max_position_embeddings": "max_seq_len",
    "rms_norm_eps": "norm_eps",
    "num_nextn_predict_layers": "n_mtp_layers",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
# What transformers' DeepseekV3Config / DeepseekV2Config give a key that config.json leaves out, so a
# sparse config reads as transformers reads it (an explicit null keeps the meaning given below).
# Every published checkpoint writes all of them.
_ABSENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": {
        "moe_intermediate_size": 2048, "first_k_dense_replace": 3, "n_shared_experts": 1, "n_routed_experts": 256,
        "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
        "norm_topk_prob": True, "q_lora_rank": 1536, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "num_nextn_predict_layers": 1, "bos_token_id": 0, "eos_token_id": 1, "rope_theta": 10000.0,
    },
    "deepseek_v2": {  # no default top-k: a V2 config must say num_experts_per_tok
        "moe_intermediate_size": 1407, "first_k_dense_replace": 0, "n_shared_experts": 2, "n_routed_experts": 64,
        "routed_scaling_factor": 1.0, "norm_topk_prob": False, "q_lora_rank": 1536,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "num_nextn_predict_layers": 0,
        "bos_token_id": 1, "eos_token_id": 2, "topk_method": "greedy", "rope_theta": 10000.0,
    },
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def _yarn_mscale(factor: float, m: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def _moe_from_hf(cfg: dict[str, Any], model_type: str, where: str) -> dict[str, Any]:
    """The expert counts and group limit, as transformers' router for `model_type` reads them."""
    if cfg.get("moe_layer_freq", 1) != 1:
        # (!r: the string "1" was 'moe_layer_freq=1 is not supported (only 1)'; a bug hunt)
        raise ConfigError(f"{where}: moe_layer_freq={cfg['moe_layer_freq']!r} is not supported (only 1)")
    if cfg.get("n_routed_experts") is None:  # an explicit null: a dense-only config
        return {"n_routed_experts": 1, "n_expert_groups": 1, "n_limited_groups": 1, "n_activated_experts": 1,
                "n_dense_layers": cfg["num_hidden_layers"]}
    if cfg.get("num_experts_per_tok") is None:
        raise ConfigError(f"{where}: num_experts_per_tok is missing (how many routed experts each token "
                          f"gets; {model_type} has no default for it)")
    groups, limit = cfg.get("n_group"), cfg.get("topk_group")
    if model_type == "deepseek_v2":  # the V2 router limits groups only when topk_method says so
        method = cfg.get("topk_method")
        if method not in ("greedy", "group_limited_greedy"):
            raise ConfigError(f"{where}: topk_method={method!r} is not supported for deepseek_v2 "
                              "('greedy' or 'group_limited_greedy')")
        if method == "greedy":  # V2-Lite: no group limit, whatever n_group says
            return {"n_expert_groups": groups or 1, "n_limited_groups": groups or 1}
        if groups is None or limit is None:
            raise ConfigError(f"{where}: topk_method='group_limited_greedy' needs n_group and topk_group")
    # deepseek_v3: always group-limited (its topk_method, "noaux_tc" in published configs, is not read);
    # an explicit null n_group or topk_group means no group limit
    if groups is None or limit is None:
        return {"n_expert_groups": 1, "n_limited_groups": 1}
    return {}


def _section(cfg: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """A nested object of the config (`rope_scaling`, `quantization_config`); absent or null is {}."""
    value = cfg.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}={value!r} must be an object (a JSON {{...}})")
    return value


def _number(section: dict[str, Any], key: str, default: float, where: str, name: str, kind=float):
    """section[key] (or `default` where absent or null, or 0 as older configs write it) as `kind`;
    a value that is not a number names `name.key` (`key` alone for the config's top level, name "")."""
    value = section.get(key)
    if value is None:
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}: {name + '.' if name else ''}{key}={value!r} must be {what}")
    return kind(value)


def _rope_from_hf(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """RoPE's fields. HF has had two spellings: `rope_scaling` + `rope_theta`, or `rope_parameters`
    (transformers 5)."""
    name = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    rope = _section(cfg, name, where)
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype not in ("yarn", "default"):
        raise ConfigError(f"{where}: rope type {rtype!r} is not supported (yarn or default)")
    theta = (_number(rope, "rope_theta", 10000.0, where, name) if rope.get("rope_theta") is not None
             else _number(cfg, "rope_theta", 10000.0, where, ""))
    kw: dict[str, Any] = {"rope_theta": theta, "rope_type": rtype}
    if rtype != "yarn":
        kw["rope_factor"], kw["mscale"] = 1.0, 0.0
        return kw

    def num(key: str, default: float, kind=float):
        return _number(rope, key, default, where, name, kind)

    if rope.get("factor") is None:  # transformers refuses such a config too
        raise ConfigError(f"{where}: {name}.factor is missing (YaRN's context-extension factor)")
    factor = num("factor", 1.0)
    if not factor > 0:  # 0 was read as 1.0 (no extension); transformers makes inf frequencies of it
        raise ConfigError(f"{where}: {name}.factor={factor} must be positive (YaRN's context-extension factor)")
    if factor < 1:  # read as no extension, silently (transformers only warns): a typo, or a config not for YaRN
        raise ConfigError(f"{where}: {name}.factor={factor} must be at least 1 (YaRN's context-extension factor: "
                          "the trained context times it)")
    m, m_all = num("mscale", 0.0), num("mscale_all_dim", 0.0)
    kw["rope_factor"] = factor
    # absent: the context the model was trained at is taken to be max_position_embeddings, as transformers does
    kw["original_seq_len"] = num("original_max_position_embeddings", cfg.get("max_position_embeddings") or 4096, int)
    if not isinstance(rope.get("truncate", True), bool):
        raise ConfigError(f"{where}: {name}.truncate={rope['truncate']!r} must be true or false")
    kw["rope_truncate"] = rope.get("truncate", True)
    kw["beta_fast"] = num("beta_fast", 32) or 32.0
    kw["beta_slow"] = num("beta_slow", 1) or 1.0
    kw["mscale"] = m_all  # no mscale_all_dim: no softmax-scale correction
    if rope.get("attention_factor") is not None:
        kw["rope_attention_factor"] = num("attention_factor", 1.0)
    elif m and m_all:
        kw["rope_attention_factor"] = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all)
    else:
        kw["rope_attention_factor"] = _yarn_mscale(factor, 1.0)
    return kw


def _dtype_from_hf(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The weights' dtype, and FP8's block size and scale format where the checkpoint is FP8."""
    q = _section(cfg, "quantization_config", where)
    if not q:
        key = "torch_dtype" if cfg.get("torch_dtype") is not None else "dtype"
        value = cfg.get(key)
        name = str(value or "bfloat16").removeprefix("torch.")
        if name == "auto":  # transformers' "as the weights are stored": bfloat16 for these models
            name = "bfloat16"
        if not isinstance(value, (str, type(None))) or name not in FLOAT_DTYPES:
            raise ConfigError(f"{where}: {key}={value!r} is not a floating-point dtype "
                              f"({', '.join(FLOAT_DTYPES)})")
        return {"dtype": name}
    if q.get("quant_method") != "fp8":
        raise ConfigError(f"{where}: quantization_config.quant_method={q.get('quant_method')!r} "
                          "is not supported (only fp8)")
    block = q.get("weight_block_size") or (128, 128)
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ConfigError(f"{where}: quantization_config.weight_block_size={block!r} must be two positive "
                          "integers, e.g. [128, 128]")
    # e4m3 weights with activations quantised on the fly, as DeepSeek publishes them; another format
    # or precomputed activation scales would be read as these and run wrong (a review)
    for key, want in (("fmt", "e4m3"), ("activation_scheme", "dynamic")):
        if q.get(key, want) != want:
            raise ConfigError(f"{where}: quantization_config.{key}={q[key]!r} is not supported (only {want!r})")
    if q.get("scale_fmt") not in (None, "ue8m0"):
        raise ConfigError(f"{where}: quantization_config.scale_fmt={q['scale_fmt']!r} is not supported "
                          "(null, or 'ue8m0' as DeepSeek-V3.1 writes it)")
    return {"quant_block": tuple(block), "scale_fmt": q.get("scale_fmt"), "dtype": "bfloat16"}


def _from_hf(cfg: dict[str, Any], where: str) -> ModelArgs:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a config must be a JSON object, found {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"{where}: unsupported model_type {model_type!r} "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"{where}: missing required keys {missing}")
    cfg = _ABSENT_DEFAULTS[model_type] | cfg
    kw: dict[str, Any] = {ours: cfg[hf] for hf, ours in _HF_KEYS.items() if cfg.get(hf) is not None}
    annotations = {f.name: f.type for f in dataclasses.fields(ModelArgs)}
    for hf, ours in _HF_KEYS.items():  # named by the config's own keys, before anything computes with them
        want = _type_problem(kw.get(ours), annotations[ours]) if ours in kw else None
        if want:
            raise ConfigError(f"{where}: {hf}={cfg[hf]!r} must be {want}")
    for k in ("bos_token_id", "eos_token_id"):  # an explicit null means "no such token", not the default
        if k in cfg and cfg[k] is None:
            kw[k] = None
    if cfg.get("num_nextn_predict_layers") is None:  # null (as transformers' V2 config writes it): no MTP
        kw["n_mtp_layers"] = 0
    kw["model_type"] = model_type
    if cfg.get("rope_interleave", True) is not True:
        # transformers' rotate-half RoPE; ours rotates interleaved pairs, as DeepSeek's checkpoints need
        raise ConfigError(f"{where}: rope_interleave={cfg['rope_interleave']!r} is not supported: this model "
                          "rotates interleaved pairs, as DeepSeek's own checkpoints do (true or absent)")
    if not isinstance(cfg.get("tie_word_embeddings", False), (bool, type(None))):
        # "false" (a string) is truthy: it was refused as 'tie_word_embeddings=true' (a bug hunt)
        raise ConfigError(f"{where}: tie_word_embeddings={cfg['tie_word_embeddings']!r} must be true or false")
    if cfg.get("tie_word_embeddings"):
        raise ConfigError(f"{where}: tie_word_embeddings=true is not supported: DeepSeek models keep an "
                          "output head (lm_head.weight) of their own")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: hidden_act={cfg['hidden_act']!r} is not supported: the experts and dense "
                          "layers are SwiGLU ('silu')")
    score_func = "sigmoid" if model_type == "deepseek_v3" else "softmax"  # what each family's router is
    if cfg.get("scoring_func", score_func) not in (score_func, None):
        raise ConfigError(f"{where}: scoring_func={cfg['scoring_func']!r} is not supported for {model_type}, "
                          f"whose router is {score_func}")
    if model_type == "deepseek_v2":
        # transformers' V2 router never renormalises the chosen weights, whatever norm_topk_prob says
        # (DeepSeek's own V2 code would; every published V2 config has it false)
        kw["norm_topk_prob"] = False
    kw["q_lora_rank"] = cfg.get("q_lora_rank") or 0  # null: a single full-rank wq (V2-Lite)
    kw["score_func"] = score_func
    # NOTE: `num_key_value_heads` is ignored: MLA has no grouped-query attention.
    kw.update(_moe_from_hf(cfg, model_type, where))
    kw.update(_rope_from_hf(cfg, where))
    kw.update(_dtype_from_hf(cfg, where))
    try:
        return ModelArgs(**kw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {_named_by_keys(str(e), cfg, kw)}") from None


def _named_by_keys(msg: str, cfg: dict[str, Any], kw: dict[str, Any]) -> str:
    """ModelArgs' message `msg` with each field read from a key of `cfg` named by that key
    (routed_scaling_factor=nan was "route_scale=nan", a name the file does not have; a bug hunt). A field
    whose value is not its key's keeps its name: a greedy V2 router's n_limited_groups is n_group, and
    'topk_group x experts per group' bounded num_experts_per_tok with topk_group 1 in the file (a review).
    Unchanged where the message does not begin with such a field."""
    keys = {ours: hf for hf, ours in _HF_KEYS.items()
            if ours in kw and (kw[ours] is cfg.get(hf) or kw[ours] == cfg.get(hf))}  # `is`: a NaN read as it is
    body = msg.removeprefix("invalid ModelArgs: ")
    if body.partition("=")[0] not in keys:
        return msg
    return re.sub(r"\b\w+\b", lambda m: keys.get(m[0], m[0]), body)
