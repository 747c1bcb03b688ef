"""TextCodec.str_tokens: each token's own text, lined up with the model's positions, on the bundled
model's tokenizer and corpus (Chinese text is split inside characters there, code is not)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from generate import GenerateError, load_codec
from helpers import REPO


@pytest.fixture(scope="module")
def codec():
    return load_codec(REPO / "data" / "model")


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    """The first 400 characters of each domain's first document in the bundled corpus."""
    out: dict[str, str] = {}
    for line in (REPO / "data" / "corpus" / "val.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        out.setdefault(doc["domain"], doc["text"][:400])
    return out


def read_back(texts: list[str]) -> str:
    """The joined texts with each run of `\\xNN` escapes read back as the bytes it stands for."""
    def joined(m: re.Match) -> str:
        return bytes.fromhex(m.group(0).replace("\\x", "")).decode("utf-8", errors="replace")
    return re.sub(r"(?:\\x[0-9a-f]{2})+", joined, "".join(texts))


def test_chinese_text_shows_split_characters_as_bytes_and_reads_back_to_decode(codec, corpus):
    text = corpus["chinese"]
    ids = codec.encode(text)
    texts = codec.str_tokens(text)
    assert len(texts) == len(ids) and texts[0] == "<|bos|>"  # BOS shown: position i is token i
    assert not any("\ufffd" in t for t in texts)
    split = [t for t in texts if "\\x" in t]
    assert split and all(re.fullmatch(r"(?:\\x[0-9a-f]{2})+", t) for t in split)  # only bytes, all of them
    assert sum(not t.startswith("\\x") and "\\x" not in t for t in texts[1:]) > len(texts) // 2  # mostly whole
    assert read_back(texts[1:]) == codec.decode(ids) == text
    # '峰' (e5 b3 b0) is split after its second byte by this tokenizer: each token shows its own bytes
    at = texts.index("其")
    assert texts[at + 1: at + 3] == ["\\xe5\\xb3", "\\xb0"] and text[:4] == "孙其峰先"


def test_code_text_joins_to_decode_exactly(codec, corpus):
    """Code is whole characters in every token: the texts join to decode(ids) with nothing to read back,
    and a backslash of the code's own stays itself."""
    for text in (corpus["code"], "code='\\x8a'\n\tif x:\n        return \"\\\\\"\n"):
        ids = codec.encode(text)
        texts = codec.str_tokens(ids)
        assert "".join(texts[1:]) == codec.decode(ids) == text
        assert texts == codec.str_tokens(text)


def test_ids_as_a_tensor_an_array_and_a_batch(codec):
    ids = codec.encode("def mean(xs):")
    one = codec.str_tokens(ids)
    assert codec.str_tokens(torch.tensor(ids)) == codec.str_tokens(np.array(ids)) == codec.str_tokens(tuple(ids)) == one
    batch = torch.tensor([ids, ids[::-1]])
    assert codec.str_tokens(batch) == [one, one[::-1]]
    assert codec.str_tokens(batch[0]) == one and codec.str_tokens([]) == []
    # a list of numpy's integers (list(array), a DataFrame column's values) is ids too: refused as "no integers"
    assert codec.str_tokens(list(np.array(ids))) == codec.str_tokens([list(np.array(ids))])[0] == one


@pytest.mark.parametrize("bad, says", [
    (torch.tensor([1.0, 2.0]), "dtype torch.float32"), (torch.zeros(1, 2, 3, dtype=torch.long), "3 dimensions"),
    # a text's bytes are no token ids: they were shown as the tokens of those ids
    (torch.frombuffer(bytearray(b"def"), dtype=torch.uint8), r"ids of dtype torch.uint8: uint8 holds bytes"),
    (np.frombuffer(b"def", np.uint8), r"ids of dtype uint8: uint8 holds bytes.* \(or pass the text itself\)$"),
    ([1, [2]], "must be integers"), ([True, 1], "must be integers"), (7, r"got 7 \(int\)"),
    ([5, 99999], r"token id 99999 \(position 1\) is not in the tokenizer's vocabulary \(4096 ids\)"),
    ([[5], [-1]], r"token id -1 \(row 1, position 0\)"),
    # past what the tokenizer's ids hold (32 bits): its OverflowError was no one line naming str_tokens
    ([5, 2**32], r"token id 4294967296 \(position 1\) is not"), ([2**64], r"token id 18446744073709551616 "),
])
def test_what_is_no_token_ids_is_one_line_naming_str_tokens(codec, bad, says):
    with pytest.raises(GenerateError, match="str_tokens: .*" + says) as ei:
        codec.str_tokens(bad)
    assert "\n" not in str(ei.value)


def test_special_tokens_of_another_spelling_show_as_their_text(demo_dir):
    """The demo's tokenizer has DeepSeek's markers, whose characters spell no byte (full-width bars):
    shown as written, as the tokenizer's decoder reads them."""
    codec = load_codec(demo_dir)
    texts = codec.str_tokens(codec.encode("hi", chat=True))
    assert texts == ["<｜begin▁of▁sentence｜>", "<｜User｜>", "h", "i", "<｜Assistant｜>"]


def test_decode_takes_the_ids_str_tokens_takes(codec):
    """decode of a [1, S] batch (the tokens a forward takes) was torch's 'only integer tensors of a single
    element can be converted to an index': it reads the ids str_tokens reads, a text per row of a batch."""
    ids = codec.encode("def mean(xs):")
    text = codec.decode(ids)
    assert text == "def mean(xs):"
    assert codec.decode(torch.tensor(ids)) == codec.decode(np.array(ids)) == codec.decode(tuple(ids)) == text
    batch = torch.tensor([ids, ids])
    assert codec.decode(batch) == codec.decode(batch.numpy()) == codec.decode(batch.tolist()) == [text, text]
    assert codec.decode(batch[:1]) == [text] and codec.decode([]) == ""
    # a batch of no rows is no rows, as a 2-D tensor or array: it read as one empty sequence ("")
    assert codec.decode(batch[:0]) == codec.decode(batch[:0].numpy()) == codec.str_tokens(batch[:0]) == []


@pytest.mark.parametrize("bad, says", [
    # past the vocabulary: the empty string with no error; a negative id: the tokenizer's OverflowError
    ([5, 99999], r"token id 99999 \(position 1\) is not in the tokenizer's vocabulary \(4096 ids\)"),
    ([[5], [-1]], r"token id -1 \(row 1, position 0\)"),
    # a text's bytes decoded as the tokens of those ids: 'def' read back as another text, with no error
    (torch.frombuffer(bytearray(b"def"), dtype=torch.uint8), r"ids of dtype torch.uint8: uint8 holds bytes"),
    (torch.tensor(5), "ids of 0 dimensions"), ([1.0, 2.0], "must be integers"), ("def", r"got 'def' \(str\)"),
])
def test_what_decode_cannot_read_is_one_line_naming_decode(codec, bad, says):
    with pytest.raises(GenerateError, match="^decode: .*" + says) as ei:
        codec.decode(bad)
    assert "\n" not in str(ei.value)


def test_encode_of_no_text_is_one_line(codec):
    """A list of texts was the TypeError of a regular expression inside encode."""
    with pytest.raises(GenerateError, match=r"^encode: expected one text \(a str\), got list; encode each text"):
        codec.encode(["def", "mean"])
    with pytest.raises(GenerateError, match=r"^encode: expected one text \(a str\), got int$"):
        codec.encode(5)
