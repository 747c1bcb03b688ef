"""Whether two runs (or a run and a checkpoint) were made on the same model, as far as their model
arguments tell: `model_differences(a, b, fields)`.

    from probe.model_shape import ROUTING, model_differences
    model_differences(probe.open_run("runs/a"), probe.open_run("runs/b"), ROUTING)
    # [Difference(field='n_routed_experts', a=8, b=16)]: expert 3 of one is not expert 3 of the other

Each side is a run (`probe.Run`, the dashboard's RunRef: anything with run.json as `.info`), a run.json
dict (its "model_args"), a dict of model arguments, or a `model.args.ModelArgs`. A field that one
side does not state (an older run.json, an import without --config) is unknown, not a difference:
only two stated values that differ are listed. The callers (the report's --compare, the run vs run
metrics, ablate's --loads-from RUN, the dashboard's Compare page) each say it in their own sentence;
a ROUTING field is named in one wording, `Difference.words` (`FIELD_WORDS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

# what expert ids, compared by index, need for expert i of one run to be expert i of the other
ROUTING = ("n_routed_experts", "n_activated_experts")
# what a run's loads per (layer, expert) need to rank the experts of another model's layers
LAYOUT = ("n_layers", "n_dense_layers", "n_routed_experts")
# how a message names a ROUTING field ("16 routed experts a layer"): the report's --compare and the run vs run
# metrics each kept a copy of these words
FIELD_WORDS = {"n_routed_experts": "routed experts a layer", "n_activated_experts": "experts a token"}


class Difference(NamedTuple):
    """One model argument that both sides state, with different values (`a`'s, then `b`'s)."""
    field: str
    a: Any
    b: Any

    @property
    def words(self) -> str:
        """The field as a message names it (`FIELD_WORDS`; a field without words there: its name)."""
        return FIELD_WORDS.get(self.field, self.field)


def model_args_of(x) -> dict:
    """The model arguments `x` states (see the module's docstring for what `x` may be); {} where it
    states none."""
    if hasattr(x, "info") and not isinstance(x, Mapping):  # a Run, a RunRef
        x = x.info or {}
    if isinstance(x, Mapping):
        return dict((x["model_args"] if "model_args" in x else x) or {})  # run.json, or its model_args
    if hasattr(x, "to_dict"):  # model.args.ModelArgs
        return dict(x.to_dict())
    raise TypeError(f"expected a run, a run.json dict, a model_args dict or a ModelArgs, got {type(x).__name__}")


def model_differences(a, b, fields=ROUTING) -> list[Difference]:
    """The `fields` both `a` and `b` state and that differ, in the order of `fields`; [] when they
    agree or one side does not say (unknown is not a difference)."""
    ma, mb = model_args_of(a), model_args_of(b)
    out = []
    for f in fields:
        va, vb = ma.get(f), mb.get(f)
        if va is not None and vb is not None and va != vb:
            out.append(Difference(f, va, vb))
    return out
