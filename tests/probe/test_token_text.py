"""probe/token_text.py: one reading of token ids as text, shared by TextCodec.str_tokens, the report's
token columns and the dashboard's token views (the report printed U+FFFD for each token of a split
Chinese character; the dashboard wrote such bytes as '<e5 b3>')."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from generate import load_codec
from helpers import REPO
from probe.token_text import text_of


@pytest.fixture(scope="module")
def codec():
    return load_codec(REPO / "data" / "model")


@pytest.fixture(scope="module")
def chinese(codec) -> list[int]:
    """Token ids of the bundled corpus's first Chinese text, without BOS."""
    for line in (REPO / "data" / "corpus" / "val.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        if doc["domain"] == "chinese":
            return codec.encode(doc["text"][:200])[1:]
    raise AssertionError("the bundled corpus has no Chinese text")


def test_the_report_shows_each_token_as_str_tokens_does(codec, chinese):
    from analyses.report.research import token_texts

    run = SimpleNamespace(path=REPO / "runs" / "r",
                          info={"checkpoint": {"path": str(REPO / "data" / "model")}, "options": {}})
    texts = token_texts(run, chinese)
    assert not any("\ufffd" in t for t in texts) and any(t.startswith("\\x") for t in texts)
    assert texts == codec.str_tokens(chinese)  # Chinese prose: no quote, backslash or newline to write apart
    assert token_texts(run, codec.encode("a\n'b'\\")) == ["<|bos|>", "a", "\\n", "\\'", "b", "\\'", "\\\\"]


def test_the_dashboard_quotes_the_same_texts_and_streams_a_split_character_once(codec, chinese):
    from dashboards import ui

    tok = codec.tokenizer
    one = ui.token_text(tok, chinese, stream=False)
    assert one == [f"'{t}'" for t in codec.str_tokens(chinese)]
    streamed = ui.token_text(tok, chinese)  # in context: the character on the token that completes it
    at = one.index("'\\xe5\\xb3'")
    assert streamed[at: at + 2] == ["·", "峰"] and one[at + 1] == "'\\xb0'"
    assert "".join(t for t in streamed if t != "·") == codec.decode(chinese)
    assert ui.token_text(tok, [99999], stream=False) == ui.token_text(None, [99999]) == ["#99999"]


def test_a_table_cell_tells_an_escaped_byte_from_the_texts_own_backslash():
    assert text_of("code='\\x8a'".encode()) == "code='\\x8a'"           # the text's own, as it is
    assert text_of("code='\\x8a'".encode(), quoted=True) == "code=\\'\\\\x8a\\'"
    assert text_of(b"\x8a", quoted=True) == text_of(b"\x8a") == "\\x8a"   # a byte of no character
    assert text_of("\x85".encode(), quoted=True) == "\\u0085"           # a character repr() writes \x85
    assert text_of("峰".encode()[:2] + b"a") == "\\xe5\\xb3a"


def test_byte_fallback_pieces_of_another_tokenizer_are_their_bytes():
    """A tokenizer that is not byte-level but spells bytes as '<0xNN>' pieces (ByteFallback, Llama's and
    Mistral's): each such token is its byte, as the decoder reads it in a run, not decode([id]) alone,
    which is U+FFFD for every byte of a character split over pieces."""
    from tokenizers import Tokenizer, decoders, models

    from probe.token_text import token_bytes, token_strings

    vocab = {"<unk>": 0, "▁hello": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    ids = [1] + [2 + b for b in "峰".encode()]
    assert tok.decode(ids) == "hello峰" and tok.decode(ids[1:2]) == "\ufffd"
    assert token_bytes(tok, ids) == [b"hello", b"\xe5", b"\xb3", b"\xb0"]
    assert token_strings(tok, ids[1:]) == ["\\xe5", "\\xb3", "\\xb0"]
    assert token_bytes(tok, [2 + ord("a")]) == [b"a"]
