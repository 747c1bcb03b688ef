"""Two runs' tables compared row by row (the record, resume and sharded-job tests)."""

from __future__ import annotations

import numpy as np

# the columns that order a table's rows, where present
ROW_KEYS = ("step", "seq_id", "pos", "layer", "expert", "domain", "component", "doc_id", "position", "ablation",
            "steer", "kind", "prompt")


def sorted_df(run, table):
    df = run.df(table)
    return df.sort_values([c for c in ROW_KEYS if c in df.columns]).reset_index(drop=True)


def assert_same_tables(a, b, tables, rtol=1e-9, atol=1e-12):
    """Same rows; integers, ids and strings equal; floats (losses, weights, scores), also inside list
    columns, within rtol and atol."""
    for t in tables:
        da, db = sorted_df(a, t), sorted_df(b, t)
        assert len(da) == len(db) > 0, (t, len(da), len(db))
        assert list(da.columns) == list(db.columns), t
        for c in da.columns:
            x, y = da[c].to_numpy(), db[c].to_numpy()
            if x.dtype == object and any(isinstance(v, np.ndarray) for v in x):
                _assert_lists_close(x, y, rtol, atol, f"{t}.{c}")
            else:
                _assert_close(x, y, rtol, atol, f"{t}.{c}")


def _assert_lists_close(x: np.ndarray, y: np.ndarray, rtol: float, atol: float, what: str) -> None:
    """A list column: None in the same rows, the others close. Rows of one shape are stacked and compared
    at once (one call per row was 2 s of a resume test's 3 s: a record's routing has a list per token)."""
    gone = np.array([u is None for u in x], dtype=bool)
    np.testing.assert_array_equal(gone, [v is None for v in y], err_msg=f"{what}: rows without a list")
    x, y = [np.asarray(u) for u in x[~gone]], [np.asarray(v) for v in y[~gone]]
    try:
        x, y = [np.stack(x)], [np.stack(y)]
    except ValueError:  # rows of several lengths (or none): row by row
        pass
    for u, v in zip(x, y):
        _assert_close(u, v, rtol, atol, what)


def _assert_close(x: np.ndarray, y: np.ndarray, rtol: float, atol: float, what: str) -> None:
    if np.issubdtype(x.dtype, np.floating):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=what)
    elif x.dtype == object:  # strings with missing values (None or NaN): missing in the same rows, else equal
        import pandas as pd

        gone = pd.isna(x)
        np.testing.assert_array_equal(gone, pd.isna(y), err_msg=what)
        np.testing.assert_array_equal(x[~gone], y[~gone], err_msg=what)
    else:
        np.testing.assert_array_equal(x, y, err_msg=what)
