"""A run's routing read a MoE layer at a time (several a query where they are small), each layer's rows as
(expert_ids [T, K], seq_id, pos) in window order: what the run versions of the routing metrics and the expert
paths measure, one layer in memory at a time rather than the whole routing table in a SQL join."""

from __future__ import annotations

import numpy as np

from ._common import as_ids


# rows a grouped read of several layers' routing holds at most (`_layer_readings`): about 70 MB of them
ROWS_PER_READ = 1 << 21


def _layer_readings(run, layers: list[int]):
    """(layer, its reading) of each of `layers` in turn, a reading being the layer's routing rows as
    (expert_ids [T, K], seq_id, pos) sorted by (seq_id, pos) (`_reading`). The first layer is read alone; the rest
    as many a query as ROWS_PER_READ allows at the first one's rows: every query scans the run's routing parts,
    and a layer a query was 58 scans for DeepSeek-V3's MoE layers (1.6 s of a dashboard page's 2.4 s at its
    shape), while a run of 2M tokens a layer still reads one a query."""
    i, group = 0, 1
    while i < len(layers):
        part = layers[i:i + group]
        t = _read_layers(run, part)
        for n in part:
            yield n, _reading(t, n)
        if i == 0:
            group = max(1, ROWS_PER_READ // max(1, t.num_rows))
        i += len(part)


def _read_layers(run, layers: list[int]):
    """The routing rows (layer, seq_id, pos, expert_ids) of `layers`, as one arrow table."""
    t = run.sql(f"select layer, seq_id, pos, expert_ids from routing where layer in ({', '.join(map(str, layers))})"
                ).arrow()
    return t.read_all() if hasattr(t, "read_all") else t  # duckdb 2 gives a batch reader, 1.x a table


def _reading(t, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer `layer`'s rows in the table `t` (`_read_layers`) as (expert_ids [T, K], seq_id, pos), sorted by
    (seq_id, pos): the parts of several ranks interleave their windows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    layers = t.column("layer").to_numpy()
    if not (layers == layer).all():
        t = t.filter(pa.array(layers == layer))
    seq, pos = t.column("seq_id").to_numpy(), t.column("pos").to_numpy()
    lists = t.column("expert_ids").combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    name = f"routing layer {layer}: expert_ids"
    flat = lists.flatten()
    if len(lists) and lists.null_count == flat.null_count == 0 and (lengths == lengths[0]).all():  # [T, K]
        ids = flat.to_numpy().reshape(len(lists), int(lengths[0]))  # as stored (uint16)
    else:  # a missing or a shorter row: the array version's error, naming it
        ids = as_ids(lists.to_numpy(zero_copy_only=False), name)
    step, ahead = np.diff(seq), np.diff(pos)
    if not ((step > 0) | ((step == 0) & (ahead > 0))).all():
        order = np.lexsort((pos, seq))
        ids, seq, pos = ids[order], seq[order], pos[order]
    return ids, seq, pos
