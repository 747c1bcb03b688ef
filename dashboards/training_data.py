"""The Training page's data (runs of `python -m train`, run.json `kind: train`): its metrics per step
and per evaluation, and a router's balancing bias over the steps, as `dashboards.data` reads the
recorded runs' aggregates (the same cache, `data.cached`, and the same DuckDB views, `data.query`)."""

from __future__ import annotations

import pandas as pd

from .data import RunRef, _gate, _labelled, cached, layer_number, query


def smooth(s, w: int):
    """The mean over `w` steps centred on each step (fewer at the ends): a trailing mean drew a falling
    loss (w - 1) / 2 steps late, so the validation diamonds at the same step sat well below it. The
    Training page's curves and Compare's of two training runs."""
    return s.rolling(w, min_periods=1, center=True).mean() if w > 1 else s


@cached
def train_metrics(ref: RunRef) -> pd.DataFrame:
    """One row per step: train_steps' columns, plus loss_<domain> and maxvio_<gate> / bias_norm_<gate>
    (gates named as in run.json, `_gate`) from the train split of train_domains and train_gates."""
    steps = query(ref, "select * from train_steps order by step", ("train_steps",))
    dom = query(ref, "select step, domain, loss from train_domains where split = 'train'", ("train_domains",))
    gates = _labelled(ref, query(ref, "select step, layer, maxvio, bias_norm from train_gates where split = 'train'",
                                 ("train_gates",)), _gate)
    return _wide(steps, dom, gates)


@cached
def eval_metrics(ref: RunRef) -> pd.DataFrame:
    """One row per evaluation: train_eval's columns, plus val_loss_<domain>, val_mtp_loss_<domain>
    and val_maxvio_<gate>."""
    ev = query(ref, "select * from train_eval order by step", ("train_eval",))
    dom = query(ref, "select step, domain, loss, mtp_loss from train_domains where split = 'val'", ("train_domains",))
    gates = _labelled(ref, query(ref, "select step, layer, maxvio from train_gates where split = 'val'",
                                 ("train_gates",)), _gate)
    return _wide(ev, dom.rename(columns={"loss": "val_loss", "mtp_loss": "val_mtp_loss"}),
                 gates.rename(columns={"maxvio": "val_maxvio"}))


def _wide(base: pd.DataFrame, dom: pd.DataFrame, gates: pd.DataFrame) -> pd.DataFrame:
    """base joined with dom pivoted to <value>_<domain> and gates to <value>_<gate> columns, by step."""
    out = base
    for df, key in ((dom, "domain"), (gates, "layer")):
        if df.empty:
            continue
        wide = df.pivot_table(index="step", columns=key, values=[c for c in df.columns if c not in ("step", key)],
                              dropna=False)
        wide.columns = [f"{value}_{name}" for value, name in wide.columns]
        out = out.merge(wide.reset_index(), on="step", how="left")
    return out


@cached
def bias_by_step(ref: RunRef, gate: str, every: int = 1) -> pd.DataFrame:
    """step, expert, bias, load of one gate ('layer 3', 'MTP 0') over steps (every `every`-th step)."""
    layer = layer_number(ref, gate)
    return query(ref, "select b.step, b.expert, b.bias::double as bias, coalesce(l.load, 0)::bigint as load "
                      "from router_bias b left join (select step, layer, expert, sum(count) as load from expert_load "
                      "group by all) l using (step, layer, expert) where b.layer = ? and b.step % ? = 0 "
                      "order by b.step, b.expert", ("router_bias", "expert_load"), [layer, max(1, every)])
