"""`dsv3-probe import sglang` on refused input: pickled objects, unknown layouts, broken fields,
mixed modes, ids and positions outside the config or the dump's own bounds, each a one-line error
naming the file, with nothing left behind (the `world` fixture of dumps is in conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import probe
from helpers import sglang_dumps as sg
from helpers.cli_errors import unwritable_msg, unwritable_out
from probe.sglang import SGLangError, import_sglang


class NotAllowed:  # a class a weights_only load cannot construct
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickled_object_is_refused_never_run(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"records": [NotAllowed()]}, evil)
    with pytest.raises(SGLangError, match=r"evil.pt: refused: it holds pickled Python objects"):
        import_sglang(evil, tmp_path / "run")
    assert "this must never run" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_bad_dumps_are_one_line_errors_naming_the_file(world, tmp_path, capsys, monkeypatch):
    from probe.__main__ import main

    (tmp_path / "text.pt").write_text("not a torch file")
    # text whose first bytes the legacy unpickler reads as opcodes (KeyError 101, IndexError before)
    (tmp_path / "hello.pt").write_text("hello world\n")
    (tmp_path / "garbage.pt").write_text("garbage\n")
    torch.save({"counts": torch.zeros(3), "rank": 0}, tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases = [(tmp_path / "text.pt", "text.pt: not a readable torch.save file"),
             (tmp_path / "hello.pt", "hello.pt: not a readable torch.save file (not a torch zip archive)"),
             (tmp_path / "garbage.pt", "garbage.pt: not a readable torch.save file (not a torch zip archive)"),
             (tmp_path / "other.pt", "other.pt: unknown key layout (keys: ['counts', 'rank'])"),
             (tmp_path / "list.pt", "list.pt: not an SGLang expert-distribution dump (a list, not a dict)")]
    # two ranks that disagree on the experts
    bad = tmp_path / "disagree"
    files = sg.write_per_pass(bad, world["passes"], world["map"])
    d = torch.load(files[1], weights_only=True)
    d["last_physical_to_logical_map"] = d["last_physical_to_logical_map"] % 8
    torch.save(d, files[1])
    cases.append((bad, "the ranks' dumps disagree on layers x experts"))
    # ... and on the number of physical slots (files of two servers)
    other = tmp_path / "two-servers"
    files = sg.write_per_pass(other, world["passes"], world["map"])
    d = torch.load(files[1], weights_only=True)
    d["last_physical_to_logical_map"] = torch.arange(10).repeat(sg.L, 1) % 8  # 8 experts, each placed
    torch.save(d, files[1])
    cases.append((other, "the dumps disagree on the number of physical experts (files of different servers?)"))
    for path, msg in cases:
        code = main(["import", "sglang", str(path), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and msg in err, err
    # an expert id outside the config
    small = tmp_path / "small.json"
    cfg = __import__("json").loads(world["config"].read_text()) | {"n_routed_experts": 8}
    small.write_text(__import__("json").dumps(cfg))
    code = main(["import", "sglang", str(world["stat"]), "--config", str(small), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is outside --config" in err and "n_routed_experts=8" in err
    assert not (tmp_path / "run").exists()
    # an --out where no run can go: under a file, or where the OS refuses new entries though os.access
    # says yes (procfs, for root)
    (tmp_path / "afile").write_text("x")
    proc = unwritable_out(monkeypatch, "dsv3-sglang-run")
    for out, msg in ((tmp_path / "afile" / "run", "afile is a file, not a directory"),
                     (proc, unwritable_msg("--out", proc))):
        code = main(["import", "sglang", str(world["stat"]), "--config", str(world["config"]), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and msg in err, err


@pytest.mark.slow  # 0.5 s on the 2-core EPYC (2026-12-07): the quick loop leaves it out
def test_broken_fields_are_named_and_leave_nothing_behind(world, tmp_path, capsys):
    """Fields of the wrong kind (found by a review: a -1 in the map counted as the last expert,
    negative or float counts taken, a record without its pass id a KeyError, extend_seq_lens that do
    not add up read as decode) are one line naming the file and field, and a failed import leaves no
    half-written `.NAME.importing` folder."""
    from probe.__main__ import main

    def broken(name: str, mode: str, edit) -> Path:
        src = world[mode]
        files = sorted(src.glob("*.pt")) if src.is_dir() else [src]
        out = tmp_path / name
        out.mkdir()
        for i, f in enumerate(files):
            d = torch.load(f, weights_only=True)
            if i == 0:
                edit(d)
            torch.save(d, out / f.name)
        return out

    def set_map(d, layer, slot, value):
        d["last_physical_to_logical_map"][layer, slot] = value

    cases = [
        (broken("mapneg", "per_pass", lambda d: set_map(d, 1, 5, -1)), "last_physical_to_logical_map holds a negative value (-1)"),
        (broken("negpp", "per_pass", lambda d: d["records"][1]["global_physical_count"].__setitem__((1, 0), -90)),
         "global_physical_count of record 1 (pass 1) holds a negative value (-90)"),
        (broken("nofp", "per_pass", lambda d: d["records"][2].pop("forward_pass_id")), "record 2 has no forward_pass_id"),
        (broken("statf", "stat", lambda d: d.__setitem__("logical_count", d["logical_count"].float() + 0.5)),
         "logical_count holds torch.float32 values"),
        (broken("statlist", "stat", lambda d: d.__setitem__("logical_count", d["logical_count"].tolist())),
         "logical_count should be a 3-D tensor, found a list"),
        (broken("ptpos", "per_token", lambda d: d["records"][0].__setitem__("positions", d["records"][0]["positions"][:-1])),
         "input_ids but"),
        (broken("ptlens", "per_token", lambda d: d["records"][0].__setitem__("extend_seq_lens", [1, 1])),
         "extend_seq_lens sum to 2, but it has"),
        # tracebacks once (TypeError, OverflowError, MemoryError), found by a second review
        (broken("rankless", "stat", lambda d: d.__setitem__("rank", None)),
         "rank=None should be a non-negative integer"),
        (broken("fpnone", "per_pass", lambda d: d["records"][0].__setitem__("forward_pass_id", None)),
         "record 0's forward_pass_id=None should be a non-negative integer"),
        (broken("rankstr", "per_pass", lambda d: d["records"][0].__setitem__("rank", "r0")),
         "record 0's rank='r0' should be a non-negative integer"),
        (broken("hugeid", "per_pass", lambda d: set_map(d, 1, 5, 10**12)),
         "last_physical_to_logical_map names expert 1000000000000; ids above 65535 are not expert ids"),
        (broken("posnone", "per_token", lambda d: d["records"][0].__setitem__("positions", None)),
         "positions of record 0 (pass 0) should be a list of integers, found NoneType"),
        (broken("poshuge", "per_token", lambda d: d["records"][0]["positions"].__setitem__(0, 2**40)),
         "positions of record 0 (pass 0) holds 1099511627776, outside [0, 2147483647]"),
        (broken("idneg", "per_token", lambda d: d["records"][0]["input_ids"].__setitem__(0, -3)),
         "input_ids of record 0 (pass 0) holds -3"),
        (broken("lensneg", "per_token", lambda d: d["records"][0].__setitem__("extend_seq_lens", [-1])),
         "extend_seq_lens of record 0 (pass 0) holds -1"),
        (broken("pad5", "per_token", lambda d: d["records"][0]["topk_ids_of_layer"].__setitem__((1, 0, 0), -5)),
         "holds -5; SGLang pads with -1 only"),
        (broken("nopass", "stat", lambda d: d.__setitem__("logical_count", d["logical_count"][:0])),
         "logical_count holds no passes"),
        # an empty "complete" run and ids from another model's vocabulary, found by a third review
        (broken("statzero", "stat", lambda d: d["logical_count"].zero_()),
         "every pass row of the stat dump is zero: no expert was chosen while it recorded"),
        (broken("idvocab", "per_token", lambda d: d["records"][1]["input_ids"].__setitem__(0, 100_000)),
         "holds input id 100000, outside the vocabulary of --config (vocab_size="),
    ]
    (tmp_path / "empty.pt").write_bytes(b"")
    cases.append((tmp_path / "empty.pt", "empty.pt: not a readable torch.save file"))
    for path, msg in cases:
        code = main(["import", "sglang", str(path), "--config", str(world["config"]), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and "\n" not in err and msg in err, (path.name, err)
    assert not list(tmp_path.glob(".*importing")) and not (tmp_path / "run").exists()


def test_refusals_start_exactly_at_their_bounds(world, tmp_path):
    """Each check refuses the first value past its bound and takes the bound itself (a value one past
    it was taken, and failed later with a traceback or a wrong table): input id = vocab_size (512),
    physical id = the map's slot count (20), a config with one expert fewer than the dump counts, or
    one layer more, extend_seq_lens summing to one token more, one position more than input ids."""
    import json

    base = str(world["config"])
    cfg = json.loads(world["config"].read_text())

    def config(name, **kw):
        (tmp_path / name).write_text(json.dumps(cfg | kw))
        return str(tmp_path / name)

    def token(name, key, value):
        def edit(d):
            r = d["records"][0]
            r[key] = value(r)
        return sg.edited_copy(world["per_token"], tmp_path / name, edit)

    def topk(d):
        d["records"][0]["topk_ids_of_layer"][1, 0, 0] = sg.E + 4

    cases = [
        (token("vocab", "input_ids", lambda r: [512] + list(r["input_ids"][1:])), base,
         "holds input id 512, outside the vocabulary of --config (vocab_size=512)"),
        (sg.edited_copy(world["per_token"], tmp_path / "slot", topk), base, "physical expert id 20 is outside the map's 20 experts"),
        (world["stat"], config("e15.json", n_routed_experts=15, n_group=1, topk_group=1), "expert id 15 is outside --config"),
        (world["stat"], config("l4.json", num_hidden_layers=4), "the dump has 3 layers, --config"),
        (token("lens", "extend_seq_lens", lambda r: list(r["extend_seq_lens"][:-1]) + [r["extend_seq_lens"][-1] + 1]),
         base, "extend_seq_lens sum to"),
        (token("pos", "positions", lambda r: list(r["positions"]) + [0]), base, "input_ids but"),
    ]
    for dump, c, msg in cases:
        with pytest.raises(SGLangError, match=re.escape(msg)):
            import_sglang(dump, tmp_path / "run", config=c)
        assert not (tmp_path / "run").exists()
    # the bounds themselves are taken
    ok = token("vocab511", "input_ids", lambda r: [511] + list(r["input_ids"][1:]))
    assert 511 in set(probe.open_run(import_sglang(ok, tmp_path / "ok", config=base)).df("tokens").token_id)
    far = token("pos-max", "positions", lambda r: [2**31 - 1] + list(r["positions"][1:]))  # int32's largest
    assert probe.open_run(import_sglang(far, tmp_path / "far", config=base)).df("tokens").pos.max() == 2**31 - 1


def test_a_config_of_more_experts_than_the_dump_is_refused(world, tmp_path):
    """SGLang counts every logical expert (stat's logical_count) and maps each to a slot (per_pass,
    per_token): a dump of 16 experts is not a 32-expert model's. It was imported with 16 experts that
    never loaded (stat: planned as cold ones; per_pass: a map the placement command refused later)."""
    cfg = json.loads(world["config"].read_text()) | {"n_routed_experts": 32}
    (tmp_path / "e32.json").write_text(json.dumps(cfg))
    for mode, where in (("stat", "logical_count"), ("per_pass", "its physical-to-logical map"),
                        ("per_token", "its physical-to-logical map")):
        with pytest.raises(SGLangError, match=re.escape(f"the dump has 16 experts ({where}), --config "
                                                        f"{tmp_path / 'e32.json'} has n_routed_experts=32")):
            import_sglang(world[mode], tmp_path / "run", config=str(tmp_path / "e32.json"))
        assert not (tmp_path / "run").exists()


def test_the_largest_uint16_expert_id_is_read_the_next_refused(world, tmp_path):
    from probe.sglang_dumps import read_dump

    src = sorted(world["per_pass"].glob("*.pt"))[0]
    for value, ok in ((65535, True), (65536, False)):
        d = torch.load(src, weights_only=True)
        # experts 0..value, each placed in every layer (SGLang's maps hold every expert)
        d["last_physical_to_logical_map"] = torch.arange(value + 1).repeat(sg.L, 1)
        torch.save(d, tmp_path / f"{value}.pt")
        if ok:  # the routing table keeps expert ids as uint16: 65535 is one
            assert read_dump(tmp_path / f"{value}.pt").mode == "per_pass"
        else:
            with pytest.raises(SGLangError, match="names expert 65536; ids above 65535"):
                read_dump(tmp_path / f"{value}.pt")


def test_a_folder_mixing_dump_modes_is_refused(world, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(world["stat"], d)
    for f in world["per_pass"].glob("*.pt"):
        shutil.copy(f, d)
    with pytest.raises(SGLangError, match=r"the files mix dump modes \['per_pass', 'stat'\]"):
        import_sglang(d, tmp_path / "run", config=str(world["config"]))


def test_a_topk_id_below_the_minus_1_padding_is_refused(world, tmp_path):
    from probe.sglang_dumps import read_dump

    src = sorted(world["per_token"].glob("*.pt"))[0]
    for value, ok in ((-1, True), (-2, False)):  # SGLang pads topk_ids_of_layer with -1, nothing lower
        d = torch.load(src, weights_only=True)
        d["records"][0]["topk_ids_of_layer"][1, 0, 0] = value
        torch.save(d, tmp_path / f"pad{-value}.pt")
        if ok:
            assert read_dump(tmp_path / f"pad{-value}.pt").mode == "per_token"
        else:
            with pytest.raises(SGLangError, match="holds -2; SGLang pads with -1 only"):
                read_dump(tmp_path / f"pad{-value}.pt")


def test_a_config_whose_top_k_the_per_token_dump_contradicts_is_refused(world, tmp_path, capsys):
    from probe.__main__ import main

    cfg = json.loads(world["config"].read_text()) | {"num_experts_per_tok": 2 * sg.K}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(cfg))
    code = main(["import", "sglang", str(world["per_token"]), "--config", str(tmp_path / "cfg" / "config.json"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert f"choose {sg.K} experts each" in err and f"n_activated_experts={2 * sg.K}" in err
    assert not (tmp_path / "run").exists()


def test_a_record_that_is_not_a_dict_is_named(tmp_path, capsys):
    """A dump whose records are strings said "unknown key layout (keys: ['last_physical_to_logical_map',
    'records'])", though those keys are SGLang's: the fault is record 0's type."""
    from probe.__main__ import main

    dump = tmp_path / "strings.pt"
    torch.save({"records": ["pass 0"], "last_physical_to_logical_map": torch.zeros(2, 4, dtype=torch.int64)}, dump)
    code = main(["import", "sglang", str(dump), "--out", str(tmp_path / "run")])
    assert (code, capsys.readouterr().err) == (2, f"error: {dump}: record 0 is a str, not a dict; SGLang's per_pass "
                                                  "and per_token records are dicts of tensors\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["per_pass", "per_token"])
def test_two_server_runs_in_one_folder_are_refused_not_merged(world, tmp_path, capsys, mode):
    """SGLang writes every run's files into SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR (/tmp by default)
    and numbers passes from 0 at each start: a folder holding two runs' files has each (pass, rank)
    in two files, which SGLang's own per_pass reader asserts against. They were summed, two runs'
    passes merged step by step (the totals right, every pass wrong)."""
    from probe.__main__ import main

    write = sg.write_per_pass if mode == "per_pass" else sg.write_per_token
    d = tmp_path / "tmp-dir"
    d.mkdir()
    for run, seed in (("first", 3), ("second", 4)):
        for f in write(tmp_path / run, sg.traffic(seed=seed), world["map"]):
            shutil.copy(f, d / f"{run}-{f.name}")
    code = main(["import", "sglang", str(d), "--config", str(world["config"]), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(r"second-\S+\.pt: pass 0 of rank 0 is recorded also in first-\S+\.pt \(dumps of two server "
                     r"runs in one folder, or of data-parallel replicas", err), err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    assert import_sglang(tmp_path / "first", tmp_path / "ok", config=str(world["config"])).is_dir()  # one run's files


def test_pipeline_stages_sharing_rank_numbers_are_summed_not_refused(world, tmp_path):
    """Pipeline-parallel stages number their ranks alike and each records its own layers: the same
    (pass, rank) in two files is refused only when both count a layer."""
    d = tmp_path / "pp-stages"
    d.mkdir()
    for f in sg.write_per_pass(tmp_path / "whole", world["passes"], world["map"]):
        dump = torch.load(f, weights_only=True)
        for stage, layer in ((0, 2), (1, 1)):  # stage 0 holds layer 1, stage 1 layer 2 (layer 0 is dense)
            records = [r | {"global_physical_count": r["global_physical_count"].index_fill(0, torch.tensor([layer]), 0)}
                       for r in dump["records"]]
            torch.save(dump | {"records": records}, d / f"stage{stage}-{f.name}")
    run = probe.open_run(import_sglang(d, tmp_path / "run", config=str(world["config"])))
    el = run.df("expert_load").groupby(["step", "layer", "expert"])["count"].sum()
    want = sg.logical_counts(world["passes"])
    assert [[el[i, layer].tolist() for layer in (1, 2)] for i in range(len(want))] == \
        [want[fp][1:].tolist() for fp in sorted(want)]


@pytest.mark.parametrize("mode", ["stat", "per_pass"])
def test_a_count_above_int32_is_refused_not_summed_into_negative_loads(world, tmp_path, mode):
    """SGLang counts in int32 tensors; an int64 count past that is no recorder's, and was taken: summed
    over ranks (per_pass) or by the analyses (stat), 2**62 wrapped round to a negative expert_load."""
    def edit(value):
        def set_count(d):
            if mode == "stat":
                d["logical_count"] = d["logical_count"].long()
                d["logical_count"][0, 1, 0] = value
            else:
                for r in d["records"]:
                    r["global_physical_count"] = r["global_physical_count"].long()
                    r["global_physical_count"][1, 0] = value
        return set_count

    src = world[mode]
    cfg = str(world["config"])
    with pytest.raises(SGLangError, match=rf"count of .*holds {2**62}, above {2**31 - 1}: SGLang counts in int32"
                       if mode == "per_pass" else rf"logical_count holds {2**62}, above {2**31 - 1}"):
        import_sglang(sg.edited_copy(src, tmp_path / "huge", edit(2**62)), tmp_path / "run", config=cfg)
    assert not (tmp_path / "run").exists()
    ok = probe.open_run(import_sglang(sg.edited_copy(src, tmp_path / "max", edit(2**31 - 1)), tmp_path / "ok", config=cfg))
    assert ok.df("expert_load")["count"].max() >= 2**31 - 1 and ok.df("expert_load")["count"].min() >= 0


@pytest.mark.parametrize("kind", ["complex", "sparse", "uint16"])
def test_tensors_torch_cannot_reduce_are_one_line_errors(world, tmp_path, capsys, kind):
    """A complex, sparse or unsigned 16-64-bit tensor where SGLang writes int32 passed the checks
    (neither float nor bool) and failed in min() with torch's NotImplementedError traceback."""
    from probe.__main__ import main

    def strange(t):
        if kind == "complex":
            return t.to(torch.complex64)
        if kind == "sparse":
            return t.to_sparse()
        return t.to(torch.uint16)

    stat = sg.edited_copy(world["stat"], tmp_path / "stat", lambda d: d.__setitem__("logical_count", strange(d["logical_count"])))
    tok = sg.edited_copy(world["per_token"], tmp_path / "tok", lambda d: d["records"][0].__setitem__(
        "topk_ids_of_layer", strange(d["records"][0]["topk_ids_of_layer"].clamp(min=0))))
    for dump, field in ((stat, "logical_count"), (tok, "topk_ids_of_layer of record 0")):
        code = main(["import", "sglang", str(dump), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(rf"\.pt: {field}.* (holds torch\.\w+ values|is a torch\.sparse_coo tensor)", err), err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode,cut", [("per_pass", (slice(None), slice(0))), ("per_token", (slice(0),)),
                                      ("stat", (slice(None), slice(0))), ("stat", (slice(None), slice(None), slice(0)))])
def test_a_map_or_counts_with_a_dimension_of_0_is_one_line(world, tmp_path, capsys, mode, cut):
    """A physical-to-logical map of no slots or no layers passed its checks (a 2-D tensor of integers) and
    failed in model_shape's max() with torch's RuntimeError traceback; a logical_count of no layers or no
    experts was called a dump whose every pass counted nothing. With and without --config."""
    from probe.__main__ import main

    field = "logical_count" if mode == "stat" else "last_physical_to_logical_map"
    dump = sg.edited_copy(world[mode], tmp_path / "cut", lambda d: d.__setitem__(field, d[field][cut]))
    for config in ([], ["--config", str(world["config"])]):
        code = main(["import", "sglang", str(dump), "--out", str(tmp_path / "run"), *config])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(rf"\.pt: {field} has shape \[[0-9, ]*\b0\b[0-9, ]*\] \(.*\): a server's dump has at least "
                         "one of each", err), err
        assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".*importing"))


@pytest.mark.parametrize("mode", ["stat", "per_pass", "per_token"])
def test_a_config_whose_dense_layers_the_dump_routed_in_is_refused(world, tmp_path, capsys, mode):
    """SGLang's dense layers select no expert, so their counts stay 0: a dump that routed in a layer
    --config runs dense (first_k_dense_replace=2 against the tiny model's 1) is another model's. Its
    counts of that layer were dropped without a word and the rest imported as this model's."""
    from probe.__main__ import main

    cfg = json.loads(world["config"].read_text()) | {"first_k_dense_replace": 2}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(cfg))
    code = main(["import", "sglang", str(world[mode]), "--config", str(tmp_path / "cfg" / "config.json"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert re.search(r"expert_distribution_recorder_[\d.]+(_0)?\.pt.*: layer 1 counted \d+ expert selections, but "
                     r"--config has first_k_dense_replace=2 \(layers 0\.\.1 dense", err), err
    assert not (tmp_path / "run").exists()
    # the model's own config (layer 0 dense, which counted nothing) imports
    assert probe.open_run(import_sglang(world[mode], tmp_path / "ok", config=str(world["config"]))).info["model_args"][
        "n_dense_layers"] == 1


@pytest.mark.parametrize("mode", ["stat", "per_pass", "per_token"])
def test_a_moe_layer_that_counted_nothing_is_refused_with_a_config(world, tmp_path, capsys, mode):
    """Every token a server routes passes every MoE layer, so a dump whose MoE layer 2 counted
    nothing while layer 1 counted is one pipeline stage's files of two (or a model with more dense
    layers than --config's). It was imported with layer 2 as a MoE layer that never loaded (the
    summary said "MoE layers 1..2"; the placement planned it as evenly loaded). Without --config the
    layers that counted are imported, as before."""
    from probe.__main__ import main

    def drop_layer_2(d):
        if "logical_count" in d:
            d["logical_count"][:, 2] = 0
        for r in d.get("records", ()):
            if "topk_ids_of_layer" in r:
                r["topk_ids_of_layer"][2] = -1
            r["global_physical_count"][2] = 0

    stage = sg.edited_copy(world[mode], tmp_path / "stage0", drop_layer_2)  # a folder (stat: of its one file)
    code = main(["import", "sglang", str(stage), "--config", str(world["config"]), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert "MoE layer(s) 2 counted nothing while layer(s) 1 counted" in err and "first_k_dense_replace=1" in err, err
    assert not (tmp_path / "run").exists()
    run = probe.open_run(import_sglang(stage, tmp_path / "no-config"))
    assert run.info["source"]["moe_layers"] == [1] and set(run.df("expert_load").layer) == {1}


@pytest.mark.parametrize("mode", ["per_pass", "per_token"])
def test_a_map_that_gives_an_expert_no_slot_is_refused_at_the_import(world, tmp_path, capsys, mode):
    """SGLang places every logical expert in every layer. A map whose layer 1 holds expert 6 where
    expert 5 was was imported as the run's placement, and `analyses.placement` failed on it later,
    after printing its table's header, naming neither the layer nor the dump."""
    from probe.__main__ import main

    def unplace_5(d):
        m = d["last_physical_to_logical_map"]
        m[1][m[1] == 5] = 6

    bad = sg.edited_copy(world[mode], tmp_path / "bad", unplace_5)
    code = main(["import", "sglang", str(bad), "--config", str(world["config"]), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert re.search(r"bad/expert_distribution_recorder_[\d.]+_0\.pt: last_physical_to_logical_map gives logical "
                     r"expert\(s\) \[5\] of layer 1 no physical slot \(experts 0\.\.15\)", err), err
    assert not (tmp_path / "run").exists()


def test_a_folder_whose_dumps_lie_in_sub_folders_says_where(world, tmp_path, capsys):
    """A multi-node server writes each node's ranks' files on that node; copied back one folder per
    node, the import said only "no *.pt dump files in this directory"."""
    from probe.__main__ import main

    for node, f in enumerate(sorted(world["per_pass"].glob("*.pt"))):
        (tmp_path / "dumps" / f"node{node}").mkdir(parents=True)
        shutil.copy(f, tmp_path / "dumps" / f"node{node}")
    code = main(["import", "sglang", str(tmp_path / "dumps"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert "dumps: no *.pt dump files in this directory (its sub-folders hold 2, as node0/" in err, err
    assert "they are not searched" in err
    (tmp_path / "empty").mkdir()  # a folder without any: as before
    assert main(["import", "sglang", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) != 0
    assert capsys.readouterr().err.strip().endswith("empty: no *.pt dump files in this directory")
