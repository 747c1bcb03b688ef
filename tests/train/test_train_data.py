"""train.data: the token streams, the seeded batch sampler and the validation windows, on small
hand-made streams. (Whole training runs: test_train.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from train import TrainError
from train.data import Batches, load_tokenizer, token_streams, val_windows

REPO = Path(__file__).resolve().parents[2]


def test_batches_are_windows_of_seq_len_plus_1_from_every_start_and_depend_on_seed_and_step():
    # "a": 10 tokens, two starts (0 and 1) for a window of 9; "b": exactly one window; "c": too short
    streams = {"a": np.arange(10), "b": np.arange(100, 109), "c": np.arange(200, 205)}
    b = Batches(streams, seq_len=8, global_batch=2, mix_alpha=1.0, seed=3)
    assert b.domains == ["a", "b"] and b.all_domains == ["a", "b", "c"]
    firsts = set()
    for step in range(40):
        x, dom = b.get(step)
        assert x.shape == (2, 9) and x.dtype == torch.int64
        for row, d in zip(x.tolist(), dom.tolist()):
            base = 100 * d
            assert row == list(range(row[0], row[0] + 9)) and base <= row[0] <= base + len(streams["ab"[d]]) - 9
            firsts.add(row[0])
    assert firsts == {0, 1, 100}  # every start drawn, the last one included; "b"'s single window too
    long = {"a": np.arange(1000)}
    b, again, other = (Batches(long, 8, 2, 1.0, seed) for seed in (3, 3, 4))
    assert torch.equal(again.get(7)[0], b.get(7)[0])  # a step's batch is the same in a resumed run
    assert len({tuple(b.get(s)[0].flatten().tolist()) for s in range(6)}) == 6  # each step its own batch
    assert not torch.equal(other.get(0)[0], b.get(0)[0])  # and each seed


def test_domain_weights_are_token_counts_to_the_power_mix_alpha():
    streams = {"a": np.zeros(100, np.int32), "b": np.zeros(400, np.int32)}
    for alpha, want in ((0.0, [0.5, 0.5]), (0.5, [1 / 3, 2 / 3]), (1.0, [0.2, 0.8])):  # 10:20, 100:400
        np.testing.assert_allclose(Batches(streams, 8, 2, alpha, 0).weights, want, rtol=1e-12)


def test_a_corpus_with_exactly_one_batch_of_windows_is_enough():
    streams = {"a": np.arange(18), "b": np.arange(5)}  # two windows of 9 in all
    assert Batches(streams, 8, 2, 1.0, 0).get(0)[0].shape == (2, 9)
    with pytest.raises(TrainError, match="corpus too small for one batch: the train split has 23 tokens, 2 windows"):
        Batches(streams, 8, 3, 1.0, 0)


def test_val_windows_are_the_first_non_overlapping_windows_of_each_domain():
    streams = {"a": np.arange(30), "b": np.arange(100, 108)}  # "a": 3 windows of 9 (27 tokens), "b": none
    out = val_windows(streams, seq_len=8, per_domain=5)
    assert list(out) == ["a"] and out["a"].tolist() == [list(range(0, 9)), list(range(9, 18)), list(range(18, 27))]
    assert val_windows(streams, 8, per_domain=2)["a"].tolist() == [list(range(0, 9)), list(range(9, 18))]


def test_token_streams_join_each_domains_documents_as_bos_text_eos(tmp_path):
    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    docs = [("x", "one two"), ("y", "three"), ("x", "four")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"id": str(i), "domain": d, "text": t}) + "\n"
                                                  for i, (d, t) in enumerate(docs)))
    streams = token_streams(tmp_path / "train.jsonl", tok, None)
    bos, eos = tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>")
    enc = [tok.encode(t).ids for _, t in docs]
    assert sorted(streams) == ["x", "y"]
    assert streams["x"].tolist() == [bos, *enc[0], eos, bos, *enc[2], eos]
    assert streams["y"].tolist() == [bos, *enc[1], eos]


def test_a_token_cache_write_stopped_part_way_leaves_no_partial_file(tmp_path, monkeypatch):
    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "0", "domain": "x", "text": "one two"}) + "\n")

    def cut_short(path, **arrays):  # Ctrl-C while the file is being written
        Path(path).write_bytes(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", cut_short)
    with pytest.raises(KeyboardInterrupt):
        token_streams(tmp_path / "train.jsonl", tok, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()  # the control: an uninterrupted write leaves the cache file alone
    token_streams(tmp_path / "train.jsonl", tok, tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


@pytest.mark.parametrize("damage", ["empty", "cut", "flipped"])
def test_a_damaged_token_cache_is_tokenised_again_and_replaced(tmp_path, capsys, damage):
    """A cache file cut short or damaged (a copy stopped part-way, a bad disk) ended training in a
    zipfile or numpy traceback; a cache is only a cache: the corpus is tokenised again."""
    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for d, t in
                             [("a", "some words here"), ("b", "other words, more of them")]))
    cache = tmp_path / "cache"
    good = token_streams(jsonl, tok, cache)
    (f,) = cache.glob("*.npz")
    data = f.read_bytes()
    f.write_bytes({"empty": b"", "cut": data[: len(data) // 2],
                   "flipped": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]}[damage])
    again = token_streams(jsonl, tok, cache)
    assert again.keys() == good.keys() and all(np.array_equal(again[k], good[k]) for k in good)
    assert f"note: {f}: not a readable token cache (" in capsys.readouterr().err
    assert f.read_bytes() == data  # replaced by a good one


def test_domains_named_as_savez_arguments_are_cached_and_read_back(tmp_path):
    """The cache was np.savez(path, **streams): a domain named `file` was a TypeError, and one named
    `allow_pickle` was taken for the flag, so a second run read a cache without that domain."""
    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    jsonl = tmp_path / "train.jsonl"
    names = ["file", "allow_pickle", "args", "a/b", ""]
    jsonl.write_text("".join(json.dumps({"text": f"text of {d!r}", "domain": d}) + "\n" for d in names))
    first = token_streams(jsonl, tok, tmp_path / "cache")
    again = token_streams(jsonl, tok, tmp_path / "cache")  # from the cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert sorted(first) == sorted(again) == sorted(names)
    assert all(np.array_equal(first[d], again[d]) for d in names)


def test_the_cache_of_an_edited_corpus_replaces_its_earlier_one_and_no_other(tmp_path):
    """Every edit of the corpus left one more cache file (named by the file's content) in the folder
    for good. The new one now replaces the earlier ones of the same corpus and tokenizer once written;
    another corpus' cache in the same folder, another tokenizer's and a run's temporary stay."""
    from tokenizers import Tokenizer

    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    other_tok = Tokenizer.from_str(tok.to_str())
    other_tok.add_tokens(["zzzz"])  # another tokenizer of the same special ids
    cache = tmp_path / "cache"
    (tmp_path / "b").mkdir()
    jsonl, other = tmp_path / "train.jsonl", tmp_path / "b" / "train.jsonl"
    for path, text in ((jsonl, "first words"), (other, "another corpus")):
        path.write_text(json.dumps({"text": text, "domain": "a"}) + "\n")
    token_streams(other, tok, cache)
    token_streams(jsonl, other_tok, cache)
    keep = {p.name for p in cache.iterdir()}
    token_streams(jsonl, tok, cache)
    (first,) = {p.name for p in cache.iterdir()} - keep
    running = cache / f"{first[:-4]}.{os.getpid()}.tmp.npz"  # a run still writing its cache of the same corpus
    running.write_bytes(b"PK")
    for text in ("second words", "third words"):
        jsonl.write_text(json.dumps({"text": text, "domain": "a"}) + "\n")
        streams = token_streams(jsonl, tok, cache)
    assert streams["a"].tolist() == [0, *tok.encode("third words").ids, 1]
    now = sorted(p.name for p in cache.iterdir())
    assert len(now) == 4 and first not in now and running.exists(), now
    assert keep < set(now)  # the other corpus' and the other tokenizer's caches stay
    again = token_streams(jsonl, tok, cache)  # the new cache is the one read
    assert np.array_equal(again["a"], streams["a"]) and sorted(p.name for p in cache.iterdir()) == now


def test_a_killed_runs_temporary_cache_is_removed_and_a_live_ones_kept(tmp_path):
    """A training run killed by SIGKILL while saving its token cache left its `*.PID.tmp.npz` in the cache
    folder for good (a tour). The next save of the same corpus removes those of processes that are gone,
    and leaves those of live ones (a run still writing) and another corpus' alone."""
    import subprocess
    import sys

    tok = load_tokenizer(REPO / "data" / "tokenizer.json")
    jsonl, cache = tmp_path / "train.jsonl", tmp_path / "cache"
    jsonl.write_text(json.dumps({"text": "first words", "domain": "a"}) + "\n")
    token_streams(jsonl, tok, cache)
    (first,) = (p.name for p in cache.iterdir())
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # reaped: no process has its pid now
    other_corpus = f"val-{'0' * 8}-{'0' * 16}.{gone.pid}.tmp.npz"  # another corpus' killed run: not this save's
    dead, live = (cache / f"{first[:-4]}.{pid}.tmp.npz" for pid in (gone.pid, os.getpid()))
    earlier = cache / f"{first.rsplit('-', 1)[0]}-{'1' * 16}.{gone.pid}.tmp.npz"  # of an earlier content, killed
    for f in (dead, live, earlier, cache / other_corpus):
        f.write_bytes(b"PK")
    jsonl.write_text(json.dumps({"text": "second words", "domain": "a"}) + "\n")
    token_streams(jsonl, tok, cache)
    now = {p.name for p in cache.iterdir()}
    assert live.name in now and other_corpus in now and dead.name not in now and earlier.name not in now, now
    assert len(now) == 3  # and the new cache (the first one replaced)
