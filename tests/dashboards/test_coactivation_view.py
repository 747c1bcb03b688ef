"""The Co-activation & flow page's most common paths on synthetic runs: a run of one domain lists no
domain columns, whose every row read its one domain and 'in domain' 1.00, nor offers to colour its paths by
domain; a run of two does both."""

from __future__ import annotations

import json

import pytest

from helpers.apptest import app, texts
from helpers.synthetic_run import write_run


def _run(path, domains) -> None:
    """A synthetic run of MoE layers 1 and 2 (its run.json names the model's layers: the page draws paths
    of a model it knows has MoE layers)."""
    write_run(path, domains=domains)
    info = json.loads((path / "run.json").read_text())
    info["model_args"] |= {"n_layers": 3, "n_dense_layers": 1}
    (path / "run.json").write_text(json.dumps(info))


def _common_paths(at):
    found = [d.value for d in at.dataframe if "example tokens" in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


@pytest.mark.slow  # two page sessions
def test_the_common_paths_of_a_one_domain_run_have_no_domain_columns(tmp_path):
    _run(tmp_path / "one", ("code",))
    _run(tmp_path / "two", ("code", "prose"))
    at = app(tmp_path, "one", page="coactivation")
    assert not at.exception and not at.error, texts(at.error)
    table = _common_paths(at)
    assert list(table.columns) == ["path", "tokens", "share", "example tokens"] and len(table)
    assert "has 1 domain (`code`)" in texts(at.info)  # the page says why, beside the path statistics
    # nor a 'Colour by domain' that paints every flow alike: these run.json list no domains, and the radio was
    # offered for every run whose list did not hold exactly one
    assert "domains" not in json.loads((tmp_path / "one" / "run.json").read_text())
    assert not [r for r in at.radio if r.key == "path_color"]
    at = app(tmp_path, "two", page="coactivation")  # the control: two domains keep both columns
    assert not at.exception and not at.error, texts(at.error)
    table = _common_paths(at)
    assert list(table.columns) == ["path", "tokens", "share", "domain", "domain share", "example tokens"]
    assert [r.options for r in at.radio if r.key == "path_color"] == [["expert", "domain"]]
    assert set(table.domain) <= {"code", "prose"} and ((table["domain share"] > 0) & (table["domain share"] <= 1)).all()
