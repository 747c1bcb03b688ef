"""Token ids to the text each token stands for, one implementation for `TextCodec.str_tokens`, the
report's token columns and the dashboard's token views (each had its own, and the report's printed
U+FFFD for every token that holds part of a character: Chinese text is split so in the bundled
tokenizer). No torch here: reading runs never imports it (probe/__init__.py).

A byte-level BPE token (DeepSeek-V3's, the bundled model's) stands for bytes, not characters: each
character of its piece spells one byte, and a character of several UTF-8 bytes may be split over
tokens. A token's text is its bytes decoded, with each byte that is no whole character within the
token written as a `\\xNN` escape, Python's "backslashreplace": '孙' whole, '\\xe5\\xb3' and '\\xb0'
for the two tokens that hold '峰'. Joined, the texts of a run of tokens are its decoded text
wherever no escape was written; the bytes themselves are `token_bytes`."""

from __future__ import annotations

import re
from collections.abc import Iterable


def _byte_table() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character (printable Latin-1 bytes as
    themselves, the others as chr(256 + n) in byte order); this maps those characters back."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {chr(b): b for b in keep}, 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table


BYTES = _byte_table()


def byte_level(tok) -> bool:
    """Whether the `tokenizers.Tokenizer` `tok` decodes byte-level pieces (its decoder is ByteLevel)."""
    from tokenizers import decoders

    return isinstance(tok.decoder, decoders.ByteLevel)


_BYTE_PIECE = re.compile("<0x([0-9A-Fa-f]{2})>")


def byte_fallback(tok) -> bool:
    """Whether the decoder of `tok` reads a '<0xNN>' piece as the byte NN (a ByteFallback step, as in
    Llama's and Mistral's tokenizers), alone or in a Sequence."""
    return tok.decoder is not None and b'"ByteFallback"' in tok.decoder.__getstate__()


def token_bytes(tok, ids: Iterable[int]) -> list[bytes | None]:
    """The bytes each token id stands for in the decoded text (None for an id the tokenizer lacks).

    A byte-level tokenizer's piece is read as its ByteLevel decoder reads it: each character as the
    byte it spells, or the piece's own UTF-8 where a character spells none (a special token such as
    DeepSeek's '<｜begin▁of▁sentence｜>'). Another tokenizer's token is its own decoded text, but a
    '<0xNN>' piece of a ByteFallback decoder is its byte (decoded alone, a byte of a character split
    over pieces is U+FFFD)."""
    bl, out = byte_level(tok), []
    fb = not bl and byte_fallback(tok)
    for i in ids:
        # tokenizers' ids are 32-bit: past that, id_to_token raised OverflowError, not None
        piece = tok.id_to_token(int(i)) if 0 <= int(i) < 1 << 32 else None
        if piece is None:
            out.append(None)
        elif bl:
            out.append(bytes(BYTES[c] for c in piece) if all(c in BYTES for c in piece) else piece.encode())
        elif fb and (m := _BYTE_PIECE.fullmatch(piece)):
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(tok.decode([int(i)], skip_special_tokens=False).encode())
    return out


def text_of(raw: bytes, quoted: bool = False) -> str:
    """The text of one token's bytes: whole characters as themselves, each byte of a partial one (or
    of no UTF-8 at all) as `\\xNN`. quoted=True (a table cell, between single quotes): also as repr()
    writes the characters, a newline as `\\n`, a backslash as `\\\\` and a quote as `\\'`, so that an
    escape cannot be read as the text's own (code holds `'\\x8a'`); a character repr() writes as
    `\\xNN` (U+0080-U+009F) is `\\u00NN` there."""
    out = []
    for c in raw.decode("utf-8", errors="surrogateescape"):
        if "\udc80" <= c <= "\udcff":  # a byte that is no whole character here
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif quoted:
            r = "\\'" if c == "'" else repr(c)[1:-1]
            out.append(f"\\u{ord(c):04x}" if r.startswith("\\x") else r)
        else:
            out.append(c)
    return "".join(out)


def token_strings(tok, ids: Iterable[int], quoted: bool = False, missing: str = "#{id}") -> list[str]:
    """`text_of` each token id's bytes (`token_bytes`); an id the tokenizer lacks as `missing`."""
    ids = [int(i) for i in ids]
    return [missing.format(id=i) if raw is None else text_of(raw, quoted) for i, raw in zip(ids, token_bytes(tok, ids))]
