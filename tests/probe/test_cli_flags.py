"""probe/__main__.py in this process: the flags' defaults and how the commands read them (no job runs:
the jobs are replaced where a command would start one). tests/probe/test_cli.py has the fresh-process tests."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys

import pytest

from probe import __main__ as cli


def test_the_commands_defaults_are_the_options_defaults():
    # `dsv3-probe record` and `dsv3-probe spec` with no flags run as RecordOptions() and SpecOptions() do
    # from Python (scripts and notebooks)
    from probe.record import RecordOptions
    from probe.speculative import SpecOptions

    got, want = dataclasses.asdict(cli.record_options([])), dataclasses.asdict(RecordOptions())
    assert str(got.pop("model_parallel")) == str(want.pop("model_parallel")) == "1"  # "1" and 1 alike
    assert got == want
    ns = vars(cli.parser().parse_args(["spec"]))
    for f in dataclasses.fields(SpecOptions):
        if f.init:  # default_prompts is no option: SpecOptions sets it
            assert str(ns[f.name]) == str(f.default), f.name


def _spec_options(monkeypatch, *argv) -> object:
    """The SpecOptions `dsv3-probe spec ARGV` passes to the job."""
    import probe.speculative

    seen = []

    def job(opts):
        seen.append(opts)
        raise KeyboardInterrupt  # the command returns 130 and writes nothing

    monkeypatch.setattr(probe.speculative, "record_spec", job)
    assert cli.main(["spec", "--out", "nowhere", *argv]) == 130
    return seen[0]


def test_spec_takes_64_prompts_unless_a_token_budget_or_0_says_otherwise(monkeypatch, capsys):
    assert _spec_options(monkeypatch).max_prompts == 64
    assert _spec_options(monkeypatch, "--max-tokens", "1000").max_prompts is None  # the budget caps them
    assert _spec_options(monkeypatch, "--max-prompts", "0").max_prompts is None  # 0 = every document
    assert _spec_options(monkeypatch, "--max-prompts", "5", "--max-tokens", "1000").max_prompts == 5
    assert cli.main(["spec", "--max-prompts", "-1"]) == 2
    assert "--max-prompts -1: must be >= 0" in capsys.readouterr().err


def test_spec_summary_rates_by_hand(monkeypatch, tmp_path, capsys):
    import probe.speculative

    info = {"prompts": 4, "generated": 36, "forward_passes": 24, "drafts_proposed": 20, "drafts_accepted": 5,
            "acceptance_rate": 0.25}
    (tmp_path / "run.json").write_text(json.dumps({"spec_decode": info}))
    monkeypatch.setattr(probe.speculative, "record_spec", lambda opts: tmp_path)
    assert cli.main(["spec", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 36 tokens / 24 passes; each pass gives its own token plus an accepted draft a quarter of the time
    assert "4 prompts, 36 tokens in 24 forward passes (1.50 tokens/pass)" in out
    assert "MTP draft acceptance 25.0% (5/20), mean acceptance length 1.25" in out
    assert out.endswith(f"wrote {tmp_path}\n")  # a recorded run's run.json: the tables were added to it


def test_spec_says_when_its_out_is_a_new_run_of_the_spec_tables_alone(monkeypatch, tmp_path, capsys):
    """`dsv3-probe spec --out runs/model-vall` (a typo for the recorded runs/model-val) made a run of the
    spec tables alone and said only 'wrote runs/model-vall', as for a record it added them to (a review):
    the report of the record then had no section, and of this run refuses it. The line says which it is."""
    import probe.speculative

    info = {"prompts": 4, "generated": 36, "forward_passes": 24, "drafts_proposed": 20, "drafts_accepted": 5,
            "acceptance_rate": 0.25}
    (tmp_path / "run.json").write_text(json.dumps({"kind": "spec", "spec_decode": info}))
    monkeypatch.setattr(probe.speculative, "record_spec", lambda opts: tmp_path)
    assert cli.main(["spec", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"wrote {tmp_path}: a run of the spec tables alone, no record (the dashboard shows it; for the "
                    "report's Speculative decoding section, `dsv3-probe spec --out RUN` of a recorded run adds them there)")


def test_a_value_error_from_a_job_is_one_line(monkeypatch, capsys):
    import probe.record

    def job(opts):
        raise ValueError("--batch-size 0: must be >= 1")

    monkeypatch.setattr(probe.record, "record", job)
    assert cli.main(["record", "--out", "nowhere"]) == 2
    assert capsys.readouterr().err == "error: --batch-size 0: must be >= 1\n"


@pytest.mark.parametrize("command, argv, prog, unknown", [
    ("probe", ["spec", "--prompt-tokns", "8"], "dsv3-probe spec", "--prompt-tokns 8"),  # for --prompt-tokens
    ("probe", ["record", "--max-tokens", "8", "--maxtokens", "3"], "dsv3-probe record", "--maxtokens 3"),
    ("probe", ["import", "sglang", "dumps", "--overwite"], "dsv3-probe import", "--overwite"),
    ("model", ["params", "--confg", "671B"], "python -m model params", "--confg 671B"),
])
def test_a_subcommands_unknown_flag_is_refused_with_its_usage(command, argv, prog, unknown, capsys):
    """argparse refused a flag that a subcommand does not take with the top-level usage ("usage:
    dsv3-probe [-h] {record,spec,import,dashboard} ..."), which names none of the subcommand's flags:
    now the subcommand's usage, with the flags it does take, and its name in the error."""
    from model.__main__ import main as model_main

    main = {"probe": cli.main, "model": model_main}[command]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"usage: {prog} [-h] "), err
    assert err.endswith(f"\n{prog}: error: unrecognized arguments: {unknown}\n"), err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_this_machine_on_a_tcp_port_by_default():
    parser = cli.parser()
    ns = parser.parse_args(["dashboard"])
    assert (ns.host, ns.port) == ("127.0.0.1", 8501)  # not every interface unless --host says so
    assert [parser.parse_args(["dashboard", "--port", p]).port for p in ("1", "65535")] == [1, 65535]
    for bad in ("0", "65536", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["dashboard", "--port", bad])


def test_dashboard_no_record_serves_an_empty_folder_with_arrows_default_allocator(monkeypatch, tmp_path):
    import probe.allocator
    import probe.record

    servers = []
    monkeypatch.setattr(cli, "_exec_streamlit", lambda cmd, env: servers.append(env) or 0)
    monkeypatch.setattr(probe.record, "record", lambda opts: pytest.fail("--no-record recorded a run"))
    # this process chose Arrow's system allocator for itself; the server reads runs with the default
    monkeypatch.setenv(probe.allocator.VARIABLE, "system")
    monkeypatch.setattr(probe.allocator, "_set_here", True)
    assert cli.main(["dashboard", str(tmp_path), "--no-record", "--port", str(_free_port())]) == 0
    assert len(servers) == 1 and probe.allocator.VARIABLE not in servers[0] and not any(tmp_path.iterdir())
    assert servers[0]["DSV3_RUNS_DIR"] == str(tmp_path)


def test_a_users_allocator_is_kept_and_the_choice_takes_effect_only_before_pyarrow(monkeypatch):
    import probe.allocator
    from probe.allocator import VARIABLE, reader_env, use_system_allocator

    monkeypatch.setenv(VARIABLE, "mimalloc")  # the user's, set before the process started
    monkeypatch.setattr(probe.allocator, "_set_here", False)
    assert "pyarrow" in sys.modules and use_system_allocator() is False  # too late in this process
    monkeypatch.delitem(sys.modules, "pyarrow")
    assert use_system_allocator() is True and os.environ[VARIABLE] == "mimalloc"
    assert reader_env(dict(os.environ))[VARIABLE] == "mimalloc"
