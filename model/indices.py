"""Integer ids and positions as a researcher has them: Python ints, numpy ints and arrays (a pandas
column's values), integer tensors. The ids and positions model/ takes (`patch_experts`' layers,
experts and positions, `patch_sweep`'s positions, `cache.apply_final_norm`'s pos, forward's
`start_at_layer` and an int `start_pos`, `mtp_logits`' depth, the layer of a TransformerLens cache
key) go through here, so that all of them accept the same integers and refuse the same non-integers.

A bool, a float or a string is refused, never rounded or read character by character: `int(2.7)`
is 2, and `[int(c) for c in "13"]` is experts 1 and 3.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from .args import InputError


def as_int(value) -> int | None:
    """`value` as an int where it is one integer (a Python or numpy int, a 0-d integer tensor or
    array); None where it is anything else (a bool, a float, a string, a tensor of several)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "tolist"):
        value = value.tolist()  # a 0-d tensor or array, a numpy scalar: its Python scalar (bool, int, float)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def as_ints(values, what: str) -> list[int]:
    """`values` as a list of ints: one integer, or integers in a list, tuple, range, numpy array,
    pandas Series or integer tensor (of any shape: flattened, row by row). Anything else is an
    InputError of one line naming `what` and the value that is not an integer."""
    if getattr(values, "ndim", 0) and hasattr(values, "tolist"):  # a tensor, an array, a Series
        items = values.reshape(-1).tolist() if values.ndim > 1 else values.tolist()
        kind = f" (of a {type(values).__name__} of {values.dtype})" if hasattr(values, "dtype") else ""
    elif as_int(values) is not None:
        items, kind = [values], ""
    elif isinstance(values, Iterable) and not isinstance(values, (str, bytes)) and getattr(values, "ndim", 1) == 1:
        # NOTE: a 0-d float or bool tensor or array is Iterable too, and list() of it was torch's
        # TypeError 'iteration over a 0-d tensor'; a pandas DataFrame (ndim 2, no tolist) iterates over
        # its column labels, read as ids 0, 1, ... (a review): both are refused as a float scalar is
        items, kind = list(values), ""
    else:
        raise InputError(f"{what}={shown(values)}: expected an int or integers (a list, range, numpy array "
                         "or integer tensor)")
    out = []
    for v in items:
        if (i := as_int(v)) is None:
            raise InputError(f"{what}: {shown(v)}{kind} is not an integer: expected an int or integers (a "
                             "bool, float or string is refused, not rounded)")
        out.append(i)
    return out


# why uint8 is no token ids (forward, targets, generate's prompts, str_tokens): bytes read as ids name other
# tokens with no error, and torch reads a uint8 index as a mask
BYTES_NOT_IDS = "uint8 holds bytes, a text's or an image's, not token ids: encode text with the tokenizer"


def bytes_not_ids(dtype) -> bool:
    """Whether `dtype` (torch's or numpy's) is uint8, which the token-id arguments refuse (BYTES_NOT_IDS)."""
    return str(dtype) in ("torch.uint8", "uint8")


def shown(value, width: int = 60) -> str:
    """repr(value) on one line, cut to about `width` characters (a tensor's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def consecutive_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending ints as runs of consecutive ones, (first, last) each: [1, 2, 3, 5] -> [(1, 3), (5, 5)]
    (layer numbers in one line of a message: model/hook_suggest.py's, probe/sglang_records.py's)."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]
