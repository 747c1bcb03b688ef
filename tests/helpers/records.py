"""The record tests' shared step: a record job of the probe test checkpoint in-process
(tests/probe/test_record.py, tests/probe/test_resume.py; their tables are compared with
`helpers.tables.assert_same_tables`)."""

from __future__ import annotations

from probe.record import RecordOptions, record


def rec(env, out, **kw):
    opts = RecordOptions(ckpt=str(env["ckpt"]), corpus=str(kw.pop("corpus", env["corpus"])), out=str(out),
                         seq_len=kw.pop("seq_len", 64), batch_size=kw.pop("batch_size", 4), progress=False, **kw)
    return record(opts)
