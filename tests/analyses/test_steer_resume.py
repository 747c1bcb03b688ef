"""Durable steering (analyses/steer/run.py, `SteerCommits`): an interrupted `python -m analyses.steer`
keeps the passes it finished (the loss pass, each prompt's continuations), and rerunning the same
command runs only the rest."""

from __future__ import annotations

import shutil
import signal

import pandas as pd
import pytest

import probe
from analyses.steer import run as run_module
from analyses.steer.__main__ import main


def _cli(env, out, *extra):
    return ["--ckpt", str(env["ckpt"]), "--corpus", str(env["corpus"]), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--domain-tokens", "60", "--max-new-tokens", "3", "--prompt-tokens", "6",
            "--experts", "1:3+5,2:7", "--no-progress", *extra]


@pytest.fixture
def counted(monkeypatch):
    """Counts the passes run (loss: evaluate; a prompt's: generations) and the loss forward batches;
    with `stop_at` = N, Ctrl-C (KeyboardInterrupt) arrives as the (N+1)th pass starts."""
    return _count(monkeypatch)


def _count(monkeypatch) -> dict:
    """`counted`'s counters, installed with `monkeypatch`."""
    calls = {"passes": 0, "loss": 0, "prompts": 0, "forward": 0, "stop_at": None}
    real_eval, real_gen, real_forward = run_module.evaluate, run_module.generations, run_module.forward_batch

    def start(kind):
        if calls["stop_at"] is not None and calls["passes"] == calls["stop_at"]:
            raise KeyboardInterrupt
        calls["passes"] += 1
        calls[kind] += 1

    def evaluate(*a, **k):
        start("loss")
        return real_eval(*a, **k)

    def generations(*a, **k):
        start("prompts")
        return real_gen(*a, **k)

    def forward(*a, **k):
        calls["forward"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(run_module, "evaluate", evaluate)
    monkeypatch.setattr(run_module, "generations", generations)
    monkeypatch.setattr(run_module, "forward_batch", forward)
    return calls


def _reset(calls, stop_at=None):
    calls.update(passes=0, loss=0, prompts=0, forward=0, stop_at=stop_at)


@pytest.fixture(scope="module")
def whole_run(probe_env, tmp_path_factory):
    """The command run uninterrupted, once for the module (its tests read its table and counts; the
    negative control runs the finished command again in its folder): (folder, table, prompts, loss
    forward batches)."""
    out = tmp_path_factory.mktemp("steer") / "whole"
    with pytest.MonkeyPatch.context() as mp:
        calls = _count(mp)
        assert main(_cli(probe_env, out)) == 0
    n_prompts, n_forward = calls["prompts"], calls["forward"]
    assert calls["loss"] == 1 and n_prompts >= 2 and n_forward > 0
    return out, probe.open_run(out).df("steering"), n_prompts, n_forward


@pytest.fixture
def whole(whole_run):
    """The uninterrupted command's (table, prompts, loss forward batches)."""
    return whole_run[1:]


def _finished(out, n):
    (entry,) = probe.open_run(out).info["steering_parts"].values()
    assert "pending" not in entry and len(entry["committed"]) == n
    assert not list((out / "steering").glob(".*"))  # no temporary left behind


def test_an_interrupted_command_keeps_its_passes_and_a_rerun_runs_the_rest(probe_env, tmp_path, capsys, counted,
                                                                         whole):
    ref, n_prompts, n_forward = whole
    out, n = tmp_path / "cut", 1 + n_prompts
    counted["stop_at"] = 2  # the loss pass and the first prompt's
    assert main(_cli(probe_env, out)) == 130
    assert (f"interrupted: 2 of {n} steering passes committed in {out / 'steering'}; run the same command again "
            "to compute the rest") in capsys.readouterr().err
    run = probe.open_run(out)
    kept = run.df("steering")  # what finished is in the table, bit for bit as the whole command's
    pd.testing.assert_frame_equal(kept, ref.iloc[:len(kept)], check_exact=True)
    assert (kept.kind == "generation").sum() == 1
    (entry,) = run.info["steering_parts"].values()
    assert len(entry["committed"]) == 2 and len(entry["pending"]) == n_prompts - 1

    _reset(counted)
    assert main(_cli(probe_env, out)) == 0
    assert (f"steer: continuing an interrupted steering: 2 of {n} steering passes taken from the earlier attempt"
            in capsys.readouterr().err)
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (0, 0, n_prompts - 1)  # only the rest
    done = probe.open_run(out)
    pd.testing.assert_frame_equal(done.df("steering"), ref, check_exact=True)
    assert len(done.files("steering")) == 1  # one part: no row twice
    _finished(out, n)


def test_interrupted_before_anything_finished_commits_nothing(probe_env, tmp_path, capsys, counted, whole):
    ref, n_prompts, n_forward = whole
    out = tmp_path / "cut"
    counted["stop_at"] = 0
    assert main(_cli(probe_env, out)) == 130
    assert "interrupted: nothing was committed" in capsys.readouterr().err
    _reset(counted)
    assert main(_cli(probe_env, out)) == 0
    assert "continuing" not in capsys.readouterr().err
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (1, n_forward, n_prompts)
    pd.testing.assert_frame_equal(probe.open_run(out).df("steering"), ref, check_exact=True)


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_negative_control_nothing_is_taken_across_options_finished_commands_or_fresh(probe_env, tmp_path, capsys,
                                                                                   counted, whole_run):
    """The counts above can fail: other options (another part), a finished command and --fresh run
    every pass. (Other generation options alone: the test below.)"""
    finished, ref, n_prompts, n_forward = whole_run
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    assert main(_cli(probe_env, out)) == 130
    _reset(counted)
    assert main(_cli(probe_env, out, "--order", "corpus")) == 0  # other options: another part
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (1, n_forward, n_prompts)
    assert "continuing" not in capsys.readouterr().err
    assert len(probe.open_run(out).files("steering")) == 2
    _reset(counted)
    assert main(_cli(probe_env, out, "--fresh")) == 0  # the interrupted one, from the start
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (1, n_forward, n_prompts)
    assert len(probe.open_run(out).files("steering")) == 2  # it replaced its own part
    assert "continuing" not in capsys.readouterr().err
    _reset(counted)
    assert main(_cli(probe_env, finished)) == 0  # finished: computed again, as before
    assert (counted["loss"], counted["prompts"]) == (1, n_prompts)
    pd.testing.assert_frame_equal(probe.open_run(finished).df("steering"), ref, check_exact=True)


@pytest.mark.slow  # 0.6 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_other_generation_options_alone_take_the_loss_pass_and_replace_the_part(probe_env, tmp_path, capsys, counted,
                                                                                whole_run):
    """A command differing from a finished one only in --max-new-tokens or its prompts computed the loss
    pass again, into a second part: every loss row twice in the table. Its loss rows are taken (and the
    continuations of a prompt both have, of as many tokens), and the part replaced."""
    finished, ref, n_prompts, _ = whole_run
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 0
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (0, 0, n_prompts)
    assert (f"steer: {out / 'steering'} holds this steering's part, of other --max-new-tokens: 1 of {1 + n_prompts} "
            "steering passes taken from it") in capsys.readouterr().err
    run = probe.open_run(out)
    df = run.df("steering")
    assert len(run.files("steering")) == 1 and (df.kind == "loss").sum() == (ref.kind == "loss").sum()
    pd.testing.assert_frame_equal(df[df.kind == "loss"], ref[ref.kind == "loss"], check_exact=True)
    gen, was = df[df.kind == "generation"], ref[ref.kind == "generation"]
    assert gen.prompt.tolist() == was.prompt.tolist() and gen.tokens.max() <= 2 < was.tokens.max()
    (entry,) = run.info["steering_parts"].values()
    assert entry["options"]["max_new_tokens"] == 2 and "pending" not in entry
    # other prompts, as many tokens: a prompt both commands have is taken, the other computed; the
    # corpus prompts' continuations the part holds stay in it (they were dropped, a review)
    corpus_prompts = was.prompt.tolist()
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2", "--prompt", "x = 1", "--prompt", "y")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, 2)
    assert f"its continuations of {n_prompts} prompts this command does not give stay in it" in capsys.readouterr().err
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2", "--prompt", "y")) == 0
    assert "--prompt/--prompt-tokens: 2 of 2 steering passes taken" in capsys.readouterr().err
    assert (counted["loss"], counted["prompts"]) == (0, 0)
    df = probe.open_run(out).df("steering")
    assert (df.kind == "loss").sum() == (ref.kind == "loss").sum()
    assert df[df.kind == "generation"].prompt.tolist() == ["y", "x = 1", *corpus_prompts]  # its own first
    # another --max-new-tokens: a prompt's continuation is computed again, the loss pass still taken,
    # the other prompts' continuations kept at their own length
    _reset(counted)
    assert main(_cli(probe_env, out, "--prompt", "y")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, 1)
    gen = probe.open_run(out).df("steering").query("kind == 'generation'")
    assert sorted(gen.prompt) == sorted(["y", *corpus_prompts, "x = 1"]) and len(gen) == len(set(gen.prompt))
    assert (gen[gen.prompt != "y"].tokens <= 2).all()
    # the same command again (a finished part, computed again whole): the other prompts' still stay
    _reset(counted)
    assert main(_cli(probe_env, out, "--prompt", "y")) == 0
    assert (counted["loss"], counted["prompts"]) == (1, 1)
    again = probe.open_run(out).df("steering").query("kind == 'generation'")
    assert sorted(again.prompt) == sorted(gen.prompt) and len(probe.open_run(out).files("steering")) == 1
    # --fresh: only the command's own
    assert main(_cli(probe_env, out, "--prompt", "y", "--fresh")) == 0
    assert probe.open_run(out).df("steering").query("kind == 'generation'").prompt.tolist() == ["y"]


def test_loss_rows_of_another_sample_are_not_taken(probe_env, tmp_path, capsys, counted, whole_run):
    """Other generation options take the earlier part's loss rows only if they were measured on the same
    windows: a part sampled within a run's windows (its `sample`), taken by a command sampling the whole
    corpus, put two samples' rows in one table. Capped at --max-tokens with --domain-tokens, the two
    differ; without a cap both read the whole corpus."""
    from probe.writer import updating_run_json

    def sampled(out, sample):  # as an entry from before the windows' digest
        with updating_run_json(out) as info:
            (entry,) = info["steering_parts"].values()
            entry["sample"] = sample
            entry.pop("windows_digest")

    finished, ref, n_prompts, _ = whole_run
    out = tmp_path / "capped"
    assert main(_cli(probe_env, out, "--max-tokens", "400")) == 0
    sampled(out, "run")
    _reset(counted)
    capsys.readouterr()
    assert main(_cli(probe_env, out, "--max-tokens", "400", "--max-new-tokens", "2")) == 0
    assert (counted["loss"], counted["prompts"]) == (1, n_prompts)
    assert (f"steer: the earlier steering in {out / 'steering'} was sampled from the run's own windows, this command "
            f"samples from the whole corpus: none of its steering passes taken, all {1 + n_prompts} computed "
            "again") in capsys.readouterr().err
    assert len(probe.open_run(out).files("steering")) == 1
    out = tmp_path / "whole"
    shutil.copytree(finished, out)
    sampled(out, "run")
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, n_prompts)  # no --max-tokens: the same windows
    assert "was sampled from" not in capsys.readouterr().err

# ---------------------------------------------------------------------- parts written by older versions
def _old_name(entry: dict) -> str:
    """The name a steering part had before the generation options left it (f885557): every option in
    its key. Written out here, not taken from the module, as the older versions named it."""
    from analyses.ablate.inputs import inputs_key
    from probe.writer import part_name

    rows = sorted({(s, spec) for s, spec in zip(entry["steers"], entry["specs"])})
    return part_name({"rows": rows, **inputs_key(entry), "options": entry["options"]})


def _legacy(finished, out, whole=False):
    """`finished` copied to `out` with its steering part as an older version wrote it: under its old
    name and without a `sample` (written before jobs sampled within a run's windows); `whole`: nor a
    `committed` list (written whole, before passes were committed one by one). Returns the old name."""
    from probe.writer import updating_run_json

    shutil.copytree(finished, out)
    table = probe.open_run(out).df("steering")
    with updating_run_json(out) as info:
        ((name, entry),) = info["steering_parts"].items()
        entry.pop("sample")
        if whole:
            entry.pop("committed")
        old = _old_name(entry | {"specs": list(dict.fromkeys(table.spec))})
        info["steering_parts"] = {old: entry}
    (out / "steering" / f"{name}.parquet").rename(out / "steering" / f"{old}.parquet")
    return old


def _one_part(out, ref):
    """The table holds one part, named as now, and every loss row once (as `ref`'s)."""
    run = probe.open_run(out)
    df = run.df("steering")
    assert len(run.files("steering")) == 1 and list(run.info["steering_parts"]) == [run.files("steering")[0].stem]
    pd.testing.assert_frame_equal(df[df.kind == "loss"], ref[ref.kind == "loss"], check_exact=True)
    return df


def test_a_part_under_its_old_name_is_taken_and_replaced(probe_env, tmp_path, capsys, counted, whole_run):
    """A part written before the generation options left its name: the same command again (the report's
    steering section, say) wrote a second part beside it, every loss row twice in the table. It is this
    command's earlier part now: taken as such, and replaced."""
    finished, ref, n_prompts, n_forward = whole_run
    out = tmp_path / "same"
    old = _legacy(finished, out)
    assert main(_cli(probe_env, out)) == 0
    pd.testing.assert_frame_equal(_one_part(out, ref), ref, check_exact=True)
    assert old not in probe.open_run(out).info["steering_parts"]
    assert (counted["loss"], counted["prompts"]) == (1, n_prompts)  # finished: computed again, as its own part is
    assert (f"steer: {out / 'steering'} holds this steering's part under 1 older name (from before the generation "
            "options left a part's name): it is this command's part, replaced by the one this command writes"
            ) in capsys.readouterr().err
    # other generation options: its loss pass taken, from a part written whole too
    out = tmp_path / "other"
    _legacy(finished, out, whole=True)
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 0
    assert "holds this steering's part, of other --max-new-tokens: 1 of" in capsys.readouterr().err
    assert (counted["loss"], counted["forward"], counted["prompts"]) == (0, 0, n_prompts)
    assert (_one_part(out, ref).query("kind == 'generation'").tokens <= 2).all()


def test_a_stop_while_a_legacy_part_is_replaced_leaves_every_row_once(probe_env, tmp_path, capsys, counted,
                                                                     monkeypatch, whole_run):
    """The legacy part's entry moves to the new name, then its file, and then the new part is written
    over it: a stop before that write leaves its rows once, under the new name or the old, which the
    rerun takes, and one after it leaves the new part alone."""
    finished, ref, n_prompts, _ = whole_run
    real = run_module.write_result_part
    # a stop just after the new part's first write: the legacy part is gone already (written first and the
    # legacy part deleted after, the stop left its loss rows twice)
    after = tmp_path / "after"
    _legacy(finished, after)

    def written_then_stop(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "write_result_part", written_then_stop)
    assert main(_cli(probe_env, after, "--max-new-tokens", "2")) == 130
    assert len(_one_part(after, ref).query("kind == 'generation'")) == 1

    out = tmp_path / "cut"
    old = _legacy(finished, out)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "write_result_part", stop)  # after the file's rename
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 130
    run = probe.open_run(out)
    ((name, entry),) = run.info["steering_parts"].items()
    assert entry["adopted"] == old and [f.stem for f in run.files("steering")] == [name]
    pd.testing.assert_frame_equal(run.df("steering"), ref, check_exact=True)  # the old part's rows, once
    # a stop between the entry's move and the file's: the entry names the file still under its old name
    (out / "steering" / f"{name}.parquet").rename(out / "steering" / f"{old}.parquet")
    pd.testing.assert_frame_equal(probe.open_run(out).df("steering"), ref, check_exact=True)
    monkeypatch.setattr(run_module, "write_result_part", real)
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, n_prompts)  # its loss pass taken
    _one_part(out, ref)
    assert "adopted" not in probe.open_run(out).info["steering_parts"][name]


def _two_legacy(finished, out, ref) -> str:
    """`_legacy`, and a second legacy part beside it, older, of a command that gave prompt "y" alone (its
    loss rows too: every loss row twice in the table). Returns the second part's name."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES
    from probe.writer import updating_run_json

    _legacy(finished, out)
    table = probe.open_run(out).df("steering")
    y = pd.concat([table[table.kind == "loss"],
                   table[table.kind == "generation"].iloc[:1].assign(prompt="y", domain=None, steered_text="Y")])
    with updating_run_json(out) as info:
        (entry,) = info["steering_parts"].values()
        second = json.loads(json.dumps(entry))
        second["options"]["prompts"] = ["y"]
        second |= {"committed": ["loss", '[null, "y"]'], "written": entry["written"] - 1}  # the older
        name = _old_name(second | {"specs": list(dict.fromkeys(table.spec))})
        info["steering_parts"][name] = second
    pq.write_table(pa.Table.from_pandas(y, schema=TABLES["steering"], preserve_index=False),
                   out / "steering" / f"{name}.parquet")
    assert (probe.open_run(out).df("steering").kind == "loss").sum() == 2 * (ref.kind == "loss").sum()
    return name


def test_several_legacy_parts_go_and_keep_their_other_continuations(probe_env, tmp_path, capsys, counted, whole_run):
    """Commands differing only in their prompts each wrote a legacy part, each with the loss rows: they all
    go, and the continuations they hold of prompts this command does not give stay."""
    finished, ref, n_prompts, _ = whole_run
    out = tmp_path / "two"
    _two_legacy(finished, out, ref)
    assert main(_cli(probe_env, out)) == 0
    df = _one_part(out, ref)
    assert df[df.kind == "generation"].prompt.tolist() == [*ref[ref.kind == "generation"].prompt, "y"]
    assert df[df.prompt == "y"].steered_text.tolist() == ["Y"]
    assert "under 2 older names" in capsys.readouterr().err



def test_a_stop_between_dropping_the_legacy_parts_files_and_their_entries_leaves_every_row_once(
        probe_env, tmp_path, capsys, counted, monkeypatch, whole_run):
    """Once the part is written, the other legacy parts go: their files, then their run.json entries. A
    stop between the two (a kill, or run.json not written) leaves entries without files, which nothing
    reads as rows and the next command drops; their files left without entries would be read, every loss
    row twice in the table, and no command would know them for this part's again. The stop comes as the
    second of the two steps starts, whichever it is."""
    import pathlib

    finished, ref, _, _ = whole_run
    out = tmp_path / "stopped"
    second = _two_legacy(finished, out, ref)
    real_drop, real_update, real_unlink = (run_module.SteerCommits._drop_legacy, run_module.updating_run_json,
                                           pathlib.Path.unlink)
    steps: list[str] = []

    def step(kind):
        if steps and steps[-1] == "armed":
            steps[-1] = kind
        elif steps and steps[-1] != kind:
            raise KeyboardInterrupt

    def drop(self):
        steps.append("armed")
        return real_drop(self)

    def update(*a, **k):
        step("entries")
        return real_update(*a, **k)

    def unlink(self, *a, **k):
        step("files")
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(run_module.SteerCommits, "_drop_legacy", drop)
    monkeypatch.setattr(run_module, "updating_run_json", update)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    assert main(_cli(probe_env, out)) == 130
    monkeypatch.undo()
    assert steps in (["files"], ["entries"])  # stopped as the second step started
    run = probe.open_run(out)
    df = run.df("steering")
    pd.testing.assert_frame_equal(df[df.kind == "loss"].reset_index(drop=True), ref[ref.kind == "loss"],
                                  check_exact=True)
    assert df[df.kind == "generation"].prompt.tolist() == ["y"]  # the first write: the loss pass, and y kept
    assert len(run.files("steering")) == 1 and second in run.info["steering_parts"]  # its entry alone left
    assert main(_cli(probe_env, out)) == 0  # the entry left without its file goes
    _one_part(out, ref)


def test_a_kept_continuation_of_another_length_is_not_taken_as_this_length(probe_env, tmp_path, capsys, counted,
                                                                           whole_run):
    """The continuations a part keeps of prompts its last command did not give are of their own length,
    not of the entry's --max-new-tokens: a later command of that length giving those prompts computes them
    again (they were taken, a 3-token continuation reported as one of --max-new-tokens 2)."""
    finished, ref, n_prompts, _ = whole_run
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    assert ref[ref.kind == "generation"].tokens.max() > 2
    assert main(_cli(probe_env, out, "--max-new-tokens", "2", "--prompt", "y")) == 0  # the corpus prompts' stay
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2")) == 0  # the corpus prompts, of 2 tokens
    assert (counted["loss"], counted["prompts"]) == (0, n_prompts)
    gen = probe.open_run(out).df("steering").query("kind == 'generation'")
    assert sorted(gen.prompt) == sorted([*ref[ref.kind == "generation"].prompt, "y"]) and (gen.tokens <= 2).all()
    _reset(counted)  # the last command's own continuations, of its length, are still taken
    assert main(_cli(probe_env, out, "--max-new-tokens", "2", "--prompt", "y")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, 1)  # y: kept of a length the entry does not say
    _reset(counted)
    assert main(_cli(probe_env, out, "--max-new-tokens", "2", "--prompt", "y", "--prompt", "z")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, 1)  # z alone


def test_a_prompt_an_older_part_holds_twice_stays_once(probe_env, tmp_path, counted, whole_run):
    """A part written before a prompt given twice was one unit holds that prompt's row twice: kept as a
    continuation of a prompt the new command does not give, it stayed twice in the part written over it
    (the other legacy parts' were kept once); one row a prompt, as the command's own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from probe.schema import TABLES

    finished, ref, n_prompts, _ = whole_run
    out = tmp_path / "twice"
    old = _legacy(finished, out, whole=True)
    part = out / "steering" / f"{old}.parquet"
    table = pq.read_table(part).to_pandas()
    first = table[table.kind == "generation"].iloc[:1]
    pq.write_table(pa.Table.from_pandas(pd.concat([table, first]), schema=TABLES["steering"], preserve_index=False),
                   part)
    assert main(_cli(probe_env, out, "--prompt", "y")) == 0
    assert (counted["loss"], counted["prompts"]) == (0, 1)
    gen = _one_part(out, ref).query("kind == 'generation'")
    assert sorted(gen.prompt) == sorted([*ref[ref.kind == "generation"].prompt, "y"]), gen.prompt.tolist()


@pytest.mark.slow  # 3.2 s: a child process that imports torch, signalled mid-command (the AVX2-only EPYC, 2026-12-07)
def test_sigterm_mid_command_is_ctrl_c_and_a_rerun_runs_the_rest(probe_env, tmp_path, whole):
    """SIGTERM (`timeout`, a scheduler, a closed notebook kernel) after the first prompt's commit ended
    the command at once: exit status 143, not a word of the passes kept or that the same command goes
    on. It now stops as Ctrl-C does: one line naming what was kept, 130, and the rerun runs the rest.
    In a child process: SIGTERM's default ends the process."""
    from helpers.processes import signalled_at

    ref, n_prompts, _ = whole
    out, n = tmp_path / "cut", 1 + n_prompts
    done = signalled_at("analyses.steer.__main__:main", "analyses.steer.run:generations", 1, signal.SIGTERM,
                        _cli(probe_env, out))  # as the second prompt's pass starts: the loss pass and one prompt's kept
    assert done.returncode == 130, done.stderr
    said = (f"interrupted: 2 of {n} steering passes committed in {out / 'steering'}; run the same command again "
            "to compute the rest")
    assert done.stderr.strip().splitlines()[-1] == said and done.stderr.count("interrupted") == 1, done.stderr
    (entry,) = probe.open_run(out).info["steering_parts"].values()
    assert len(entry["committed"]) == 2 and len(entry["pending"]) == n_prompts - 1
    assert main(_cli(probe_env, out)) == 0
    # float32 losses: the child process rounds some in their last bits otherwise than this one (its thread
    # count); the rows, their keys and every integer are the same
    pd.testing.assert_frame_equal(probe.open_run(out).df("steering"), ref, rtol=1e-5, atol=1e-5)
    _finished(out, n)
