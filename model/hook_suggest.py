"""What a hook point name that matches none is told (model/hooks.py's HookErrors): the closest name, the blocks
a point is in, and what this model calls what other toolkits name (TransformerLens's `blocks.2.hook_mlp_out`,
`attn.hook_q`, `hook_unembed`, `cache["resid_pre", 2]`)."""

from __future__ import annotations

import difflib
import fnmatch
import re

from .indices import as_int, consecutive_runs


def did_you_mean(name: str, all_names: list[str]) -> str:
    """' (did you mean ...?)' naming the hook point closest to a mistyped `name`, or '' where none is
    close. A glob is compared with the names' layer-generic forms (`layers.*.hook_resid_post`); a
    block the model has not (`layers.9.` of a 3-layer model) is told the blocks it has instead, and a
    point that other blocks have (the router of a dense layer) which blocks have it."""
    layer = re.match(r"(layers|mtp)\.(\d+)\.", name)
    have = {int(m[1]) for n in all_names if (m := re.match(re.escape(layer[1]) + r"\.(\d+)\.", n))} if layer else set()
    if have and int(layer[2]) not in have:  # not a typo: a block the model has not
        kind = layer[1]
        return f" (this model has {kind}.{min(have)}" + (f" to {kind}.{max(have)})" if len(have) > 1 else " only)")
    if layer and (elsewhere := _blocks_with(name[layer.end():], layer[1], all_names)):
        # a point of another kind of block (the router of a dense layer): the nearest name was the
        # same point in another block, 'did you mean layers.3.ffn.gate.hook_scores?' for layers.0's (a tour)
        rest = name[layer.end():]
        return (f" ({layer[1]}.{layer[2]} has no {rest}; {_spans(elsewhere, layer[1])} "
                f"{'has' if len(elsewhere) == 1 else 'have'} it{_block_note(rest)})")
    if end := _model_end(name, all_names) or _tl_point(name, all_names):
        return end
    if any(c in name for c in "*?["):
        all_names = sorted({re.sub(r"(?<=\.)\d+(?=\.)", "*", n) for n in all_names})
    close = difflib.get_close_matches(name, all_names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_end(name: str, all_names: list[str]) -> str:
    """For a name other toolkits give the head, the final norm or the positional embedding (TransformerLens's
    `hook_unembed`, `ln_final.hook_normalized`, `hook_pos_embed`), ' (...)' saying what this model has there;
    else ''. The closest name was the other end, or the token embedding: 'hook_unembed' was 'did you mean
    hook_embed?' (a bug hunt), and 'hook_pos_embed' too (a review)."""
    if re.fullmatch(r"(hook_)?(ln_final|final_norm|norm)(\.hook_\w+)?", name):
        return " (did you mean 'hook_final'? the final norm's output)"
    if re.fullmatch(r"(hook_)?(pos_embed|pos_emb|wpe)(\.hook_\w+)?", name):  # was 'did you mean hook_embed?'
        return (" (this model has no positional embedding: RoPE rotates the queries and keys in each attention, "
                "attn.hook_q_pe and attn.hook_k_pe; 'hook_embed' is the token embedding alone)")
    if not re.fullmatch(r"(hook_)?(unembed|logits|lm_head|head)(\.hook_\w+)?", name):
        return ""
    mtp = [n for n in all_names if re.fullmatch(r"mtp\.\d+\.hook_logits", n)]
    return (" (the head has no hook point: its input is 'hook_final', after the final norm, and its logits are "
            "what forward returns" + (f"; the MTP module's are {mtp[0]!r})" if mtp else ")"))


# TransformerLens's names of a block's points that this model names otherwise: its own (two where MLA makes
# one in parts), and what a note says of them
_TL_POINTS = {"hook_mlp_in": ("hook_ffn_in",), "hook_mlp_out": ("hook_ffn_out",),
              "ln1.hook_normalized": ("hook_attn_in",), "ln2.hook_normalized": ("hook_ffn_in",),
              "mlp.hook_post": ("ffn.hook_hidden",),
              "attn.hook_q": ("attn.hook_q_nope", "attn.hook_q_pe"),
              "attn.hook_k": ("attn.hook_c_kv", "attn.hook_k_pe"),
              "attn.hook_v": ("attn.hook_c_kv",), "attn.hook_attn_scores": ("attn.hook_pattern",)}
_TL_NOTES = {"attn.hook_q": ": MLA's query in its two parts, the second after RoPE",
             "attn.hook_k": ": MLA's keys are the latent expanded by wkv_b, with one RoPE key all heads share",
             "attn.hook_v": ": MLA's values are the latent expanded by wkv_b",
             "attn.hook_attn_scores": ": the probabilities; the scores before the softmax have no hook point"}


def _tl_point(name: str, all_names: list[str]) -> str:
    """For TransformerLens's name of a block's point (`blocks.2.hook_mlp_out`, `layers.2.attn.hook_q`),
    ' (...)' naming this model's; else ''. The closest name was another point: 'layers.0.hook_resid_post'
    for `mlp.hook_post`, 'attn.hook_z' for `attn.hook_q` (a tour)."""
    m = re.fullmatch(r"(blocks|layers)\.(\d+|\*)\.(.+)", name)
    ours = m and _TL_POINTS.get(m[3])  # `blocks.2.hook_resid_pre`, a point of the same name: did you mean
    if not ours:
        return ""
    full = [f"layers.{m[2]}.{r}" for r in ours]
    if all(any(fnmatch.fnmatchcase(a, f) for a in all_names) for f in full):
        return f" (TransformerLens's {name!r} is {' and '.join(map(repr, full))} here{_TL_NOTES.get(m[3], '')})"
    why = did_you_mean(full[0], all_names)[2:-1] if len(full) == 1 else ""  # a block without it, or none such
    return f" (TransformerLens's {name!r} would be {full[0]!r}" + (f": {why})" if why else
                                                                    ", which this model has not)")


def _blocks_with(rest: str, kind: str, all_names: list[str]) -> list[int]:
    """The blocks of `kind` (layers, mtp) that have the point `{kind}.{i}.{rest}`."""
    pattern = re.escape(kind) + r"\.(\d+)\." + re.escape(rest)
    return sorted(int(m[1]) for n in all_names if (m := re.fullmatch(pattern, n)))


def _spans(ids: list[int], kind: str) -> str:
    """[1, 2, 3, 5] of layers -> 'layers.1 to layers.3, layers.5'."""
    return ", ".join(f"{kind}.{a}" + (f" to {kind}.{b}" if b > a else "") for a, b in consecutive_runs(ids))


def _block_note(rest: str) -> str:
    """Why a block lacks a point: a dense layer has no router or routed experts, an MoE layer no
    dense hidden state."""
    if rest.startswith(("ffn.gate.", "ffn.experts.", "ffn.shared_experts.", "ffn.hook_routed_out",
                        "ffn.hook_shared_out")):
        return ": a dense layer has no router or experts"
    if rest == "ffn.hook_hidden":
        return ": an MoE layer's is its shared experts', ffn.shared_experts.hook_hidden"
    return ""


def tl_key(key, all_names: list[str]) -> str:
    """For TransformerLens's `cache["resid_pre", 2]` key, ': ... is cache[name] here' naming the hook
    point it means, where one matches; else a pointer to the names."""
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and as_int(key[1]) is not None):
        return " (see model.hook_names())"
    short, layer = key[0].removeprefix("hook_"), as_int(key[1])
    hit = [n for n in all_names if re.fullmatch(rf"layers\.{layer}\.(\w+\.)*hook_{re.escape(short)}", n)]
    if len(hit) != 1:
        return " (see model.hook_names())"
    return f"; TransformerLens's cache[{key!r}] is cache[{hit[0]!r}] here"
