"""The record tests' shared steps: a record job of the probe test checkpoint in-process, and two
runs' tables compared row by row (tests/probe/test_record.py, tests/probe/test_resume.py)."""

from __future__ import annotations

import numpy as np

from probe.record import RecordOptions, record


def rec(env, out, **kw):
    opts = RecordOptions(ckpt=str(env["ckpt"]), corpus=str(kw.pop("corpus", env["corpus"])), out=str(out),
                         seq_len=kw.pop("seq_len", 64), batch_size=kw.pop("batch_size", 4), progress=False, **kw)
    return record(opts)


def sorted_df(run, table):
    df = run.df(table)
    keys = [c for c in ("step", "seq_id", "pos", "layer", "expert", "domain", "component") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def assert_tables_equal(a, b, tables):
    for t in tables:
        da, db = sorted_df(a, t), sorted_df(b, t)
        assert len(da) == len(db) and len(da) > 0, t
        for c in da.columns:
            x, y = da[c].to_numpy(), db[c].to_numpy()
            if x.dtype == object and len(x) and isinstance(x[0], np.ndarray):
                assert all(np.allclose(u, v, atol=1e-5) if u is not None else v is None for u, v in zip(x, y)), (t, c)
            elif np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"{t}.{c}")
            else:
                assert (x == y).all(), (t, c)
