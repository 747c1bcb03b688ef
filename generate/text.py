"""Text in and out: the checkpoint's tokenizer and chat format, prompt files, and a demo checkpoint."""

from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from model.indices import BYTES_NOT_IDS, bytes_not_ids
from probe.errors import given_path

from .sampling import GenerateError

USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
BOS_TEXT, EOS_TEXT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


@dataclass
class TextCodec:
    """The checkpoint's tokenizer plus what generation needs from its configs."""
    tokenizer: object
    bos_id: int | None
    stop_ids: list[int]
    chat: bool  # the tokenizer config has a chat template
    # BOS in the chat format: the template's own `{{ bos_token }}`, whatever add_bos_token says (DeepSeek's
    # config sets it false and lets the template add BOS; chat prompts went without it: a review)
    chat_bos_id: int | None = None

    def encode(self, text: str, *, chat: bool | None = None, system: str | None = None) -> list[int]:
        """Token ids of `text` as generation feeds it: in the chat format where `chat` (None: where the
        checkpoint has a chat template; True where it has none is refused), else raw after BOS where the
        config adds one (`system` then refused: it has no turn to go in)."""
        chat = self.chat if chat is None else chat
        if chat and not self.chat:
            # V3's markers were sent as plain text in pieces, with no BOS: a prompt the model was never
            # trained on, and no error (the bundled model's tokenizer has no chat template; a tour)
            raise GenerateError("encode(chat=True): this tokenizer has no DeepSeek-V3 chat template (tokenizer_config"
                                f".json has no chat_template, or the tokenizer no {USER!r} / {ASSISTANT!r} tokens); "
                                "encode with chat=False")
        if system is not None and not chat:  # dropped without a word (the command line refuses --system so)
            raise GenerateError("encode(system=...): the text is encoded raw (chat=False, or no chat template), so a "
                                "system text has no turn to go in")
        if not isinstance(text, str):  # a list of texts was the TypeError of the regex below (a tour)
            raise GenerateError(f"encode: expected one text (a str), got {type(text).__name__}"
                                + ("; encode each text on its own" if isinstance(text, (list, tuple)) else ""))
        if chat:
            text = (system or "") + USER + text + ASSISTANT
        # bytes that are not UTF-8 reach Python as lone surrogates (argv, stdin; "\ud83d" in JSON), which
        # the tokenizer refuses with a TypeError (a traceback, and the end of an interactive session;
        # a review): each becomes U+FFFD, as a corpus file's bad bytes do
        text = _SURROGATE.sub("\ufffd", text)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.chat_bos_id if chat else self.bos_id
        return ([bos] if bos is not None else []) + ids

    def decode(self, ids) -> str | list[str]:
        """The text of token ids, special tokens left out: of the ids `str_tokens` takes (a list, a 1-D tensor
        or array), or a list of texts, one per row, of a 2-D [B, S] batch (the [1, S] tokens a forward takes
        too). An id past the vocabulary is a GenerateError naming it, as in `str_tokens`.
        NOTE: it read list(ids) as they came: a [1, S] tensor was torch's 'only integer tensors of a single
        element can be converted to an index', a negative id an OverflowError, one past the vocabulary the
        empty string and a text's uint8 bytes other tokens' text, with no error (a tour)."""
        rows = _id_rows(ids, "decode")
        if _batched(ids, rows):
            return [self._decode_row(row, f"row {r}, ") for r, row in enumerate(rows)]
        return self._decode_row(rows, "")

    def _decode_row(self, ids: list[int], where: str) -> str:
        n = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if bad := next(((i, t) for i, t in enumerate(ids) if not 0 <= t < n), None):
            raise GenerateError(f"decode: token id {bad[1]} ({where}position {bad[0]}) is not in the tokenizer's "
                                f"vocabulary ({n} ids)")
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def str_tokens(self, text_or_ids) -> list[str] | list[list[str]]:
        """Each token's own text (TransformerLens's `to_str_tokens`): of a text, encoded as record feeds
        it (`encode(text, chat=False)`: BOS first where the config adds one, so index i is position i
        of `m(tokens)` and of a run), or of ids: a list, a 1-D tensor or array; a 2-D [B, S] batch gives
        a list per row. Special tokens are shown (decode() drops them). A byte that is no whole
        character within its token (a Chinese character split over two tokens) is a `\\xNN` escape,
        not U+FFFD; joined, the texts are decode(ids) wherever there is none (probe/token_text.py)."""
        if isinstance(text_or_ids, str):
            return self.str_tokens(self.encode(text_or_ids, chat=False))
        rows = _id_rows(text_or_ids)
        if _batched(text_or_ids, rows):
            return [self._row_strings(row, f"row {r}, ") for r, row in enumerate(rows)]
        return self._row_strings(rows, "")

    def _row_strings(self, ids: list[int], where: str) -> list[str]:
        from probe.token_text import text_of, token_bytes

        raw = token_bytes(self.tokenizer, ids)
        if None in raw:  # id_to_token has no piece for it: an id past the vocabulary
            i = raw.index(None)
            raise GenerateError(f"str_tokens: token id {ids[i]} ({where}position {i}) is not in the tokenizer's "
                                f"vocabulary ({self.tokenizer.get_vocab_size(with_added_tokens=True)} ids)")
        return [text_of(b) for b in raw]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _id_rows(ids, what: str = "str_tokens") -> list[int] | list[list[int]]:
    """Token ids as a list (1-D) or a list of lists (2-D), from a tensor, an array or lists of ints;
    anything else is a GenerateError naming the argument of `what` (str_tokens, decode)."""
    given = ids
    if isinstance(ids, torch.Tensor) or hasattr(ids, "dtype") and hasattr(ids, "tolist"):  # or a numpy array
        whole = (getattr(ids.dtype, "kind", "") in "iu" if not isinstance(ids, torch.Tensor) else
                 not (ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex))
        if whole and bytes_not_ids(ids.dtype):  # a text's bytes were shown as the tokens they are not ids of
            text = " (or pass the text itself)" if what == "str_tokens" else ""
            raise GenerateError(f"{what}: ids of dtype {ids.dtype}: {BYTES_NOT_IDS}{text}")
        if not whole or ids.ndim not in (1, 2):
            kind = f"dtype {ids.dtype}" if not whole else f"{ids.ndim} dimensions"
            raise GenerateError(f"{what}: ids of {kind}; token ids are integers, 1-D or a 2-D [B, S] batch")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        text = "a text, or " if what == "str_tokens" else ""
        raise GenerateError(f"{what}: got {given!r:.60} ({type(given).__name__}); give {text}token ids "
                            "(a list, a 1-D tensor or a 2-D [B, S] batch)")
    flat = all(_is_id(i) for i in ids)
    if not flat and not all(isinstance(r, (list, tuple)) and all(_is_id(i) for i in r) for r in ids):
        raise GenerateError(f"{what}: token ids must be integers, in a list or a 1-D tensor (or a 2-D [B, S] "
                            f"batch); got {str(given)[:60]}")
    return [int(i) for i in ids] if flat else [[int(i) for i in r] for r in ids]


def _batched(ids, rows: list) -> bool:
    """Whether `rows` (`_id_rows(ids)`) are a 2-D batch's: a [0, S] tensor's are an empty list, which read
    as one empty sequence (decode gave "", not [], a review)."""
    return getattr(ids, "ndim", None) == 2 or bool(rows) and isinstance(rows[0], list)


def _is_id(i) -> bool:
    """An int, or numpy's (a list of an array's items); not a bool, which is no token id."""
    return isinstance(i, numbers.Integral) and not isinstance(i, bool)


def _token_text(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _read_json(p: Path) -> dict:
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenerateError(f"{p}: not valid JSON ({e})") from None


def load_codec(ckpt: str | os.PathLike, args=None, tokenizer: str | os.PathLike | None = None) -> TextCodec:
    """tokenizer.json (required) + tokenizer_config.json / generation_config.json (optional). An empty
    `ckpt` is a GenerateError, not the current folder. `tokenizer`: a tokenizer.json read in place of the
    checkpoint's (a run's --tokenizer, `probe.job.run_tokenizer`), the checkpoint's configs kept."""
    from tokenizers import Tokenizer

    ckpt = given_path(ckpt, "ckpt", GenerateError)
    path = Path(tokenizer) if tokenizer else ckpt / "tokenizer.json"
    if tokenizer and not path.is_file():
        raise GenerateError(f"{path}: no tokenizer file there")
    if ckpt.is_file():  # tokenizer.json itself was told it had 'no tokenizer.json' (a tour)
        raise GenerateError(f"{ckpt}: a file; load_codec takes the checkpoint's folder, the one holding tokenizer.json "
                            f"and tokenizer_config.json (here {ckpt.parent})")
    if not path.exists():
        raise GenerateError(f"{ckpt}: no tokenizer.json (generation needs the checkpoint's tokenizer)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own exception type
        from model.checkpoint_files import lfs_pointer_note  # a clone without git-lfs: say so, as record does

        raise GenerateError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0]}){lfs_pointer_note(path)}") \
            from None
    cfg = _read_json(ckpt / "tokenizer_config.json")
    gen_cfg = _read_json(ckpt / "generation_config.json")
    bos_text = _token_text(cfg.get("bos_token"))
    bos_token = tok.token_to_id(bos_text) if bos_text else None
    if bos_token is None and args is not None:
        bos_token = args.bos_token_id
    bos = bos_token if cfg.get("add_bos_token", True) else None
    template = cfg.get("chat_template")
    chat_bos = bos_token if isinstance(template, str) and "bos_token" in template else None
    stops = _stop_ids(ckpt, args, tok, cfg, gen_cfg)
    chat = bool(template)
    if chat and any(tok.token_to_id(marker.strip()) is None for marker in (USER, ASSISTANT)):
        # a template of another format (DeepSeek-V2's "User: ... Assistant:"): V3's markers would be
        # sent as plain text, split into pieces (a review); the prompt goes raw instead, with a note
        print(f"note: {ckpt / 'tokenizer_config.json'}: its chat template is not DeepSeek-V3's (the tokenizer has "
              f"no {USER.strip()!r} / {ASSISTANT.strip()!r} tokens): prompts are sent without it", file=sys.stderr)
        chat, chat_bos = False, None
    return TextCodec(tok, bos, stops, chat, chat_bos)


def stop_ids(ckpt: str | os.PathLike, args, tok) -> list[int]:
    """The token ids generation from the checkpoint `ckpt` stops at, as `python -m generate` takes
    them: config.json's `eos_token_id` (`args`; one id or a list), generation_config.json's, and
    tokenizer_config.json's `eos_token` where the tokenizer `tok` (a `tokenizers.Tokenizer`) knows
    it. `dsv3-probe spec` and the steering job read only the first (a list was a TypeError in spec;
    a review)."""
    ckpt = Path(ckpt)
    return _stop_ids(ckpt, args, tok, _read_json(ckpt / "tokenizer_config.json"),
                     _read_json(ckpt / "generation_config.json"))


def _stop_ids(ckpt: Path, args, tok, cfg: dict, gen_cfg: dict) -> list[int]:
    stops: list[int] = []
    for v in (getattr(args, "eos_token_id", None), gen_cfg.get("eos_token_id")):
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) or isinstance(v, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v)):
            # a string or a float was a TypeError's traceback (a review)
            raise GenerateError(f"{ckpt / 'generation_config.json'}: eos_token_id={v!r} must be a token id or a list "
                                "of them")
        stops += [v] if isinstance(v, int) else list(v or [])
    eos_text = _token_text(cfg.get("eos_token"))
    if eos_text and tok.token_to_id(eos_text) is not None:
        stops.append(tok.token_to_id(eos_text))
    return sorted(set(stops))


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-blank line, or JSON Lines with a "prompt" field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is not prompt text (a review)
    except FileNotFoundError:
        raise GenerateError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GenerateError(f"{path}: is a directory, not a prompt file") from None
    except OSError as e:
        raise GenerateError(f"{path}: cannot read prompt file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise GenerateError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    # lines end at "\n" only: str.splitlines() also breaks at form feeds (Python source), U+2028 and
    # \x85, which JSON keeps raw inside strings (json.dumps(..., ensure_ascii=False))
    raw = text.split("\n")
    lines = [(n, line.removesuffix("\r")) for n, line in enumerate(raw, 1) if line.strip()]
    if not lines:
        raise GenerateError(f"{path}: no prompts (the file is {'empty' if not text else 'blank lines only'})")
    if path.suffix != ".jsonl" and not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenerateError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        p = obj.get("prompt") if isinstance(obj, dict) else None
        if not isinstance(p, str) or not p:
            raise GenerateError(f"{path}:{n}: each JSON line needs a non-empty string field \"prompt\"")
        prompts.append(p)
    return prompts


# ------------------------------------------------------------------------------------ demo weights
def demo_refusal(path: str | os.PathLike) -> str | None:
    """Why `path` cannot take a demo checkpoint (to follow the path in a message), or None. A folder that
    already holds files but no checkpoint with a tokenizer (config.json and tokenizer.json) is refused:
    writing there would put a random model's config.json and weights over what it holds (a real
    checkpoint kept without its tokenizer lost its weights that way)."""
    path = Path(path)
    if _holds_checkpoint(path):
        return None  # a demo (or any checkpoint with a tokenizer): used as it is
    if path.exists() and not path.is_dir():
        return "a file, not a folder"
    if path.is_dir() and any(path.iterdir()):
        held = "config.json but no tokenizer.json" if (path / "config.json").exists() else "files"
        return (f"the folder holds {held}, not a demo checkpoint; the demo is written only into a new "
                "or empty folder (nothing there is replaced)")
    return None


def _holds_checkpoint(path: Path) -> bool:
    """`path` holds a checkpoint with its tokenizer (config.json and tokenizer.json): the demo is kept."""
    return (path / "config.json").exists() and (path / "tokenizer.json").exists()


def write_demo_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random tiny DeepSeek-V3 (with MTP) and a byte-level tokenizer with DeepSeek's special
    tokens and a chat template, in `path` (kept if already there). Its text is noise.

    `path` must be new or empty (`demo_refusal`, a GenerateError otherwise). The checkpoint is built
    in a temporary folder beside it and renamed into place when complete, so an interrupted write
    leaves no half checkpoint that a later call would take for a whole one."""
    path = Path(path)
    if _holds_checkpoint(path):
        return path
    if why := demo_refusal(path):
        raise GenerateError(f"{path}: {why}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_demo(tmp, seed)
        try:
            if path.is_dir():
                path.rmdir()  # empty (checked above); rename() cannot replace it on every platform
            os.rename(tmp, path)
        except OSError:  # another process put its demo there first: that one is used
            if not _holds_checkpoint(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_demo(path: Path, seed: int) -> None:
    """The demo's tokenizer, tokenizer config and random weights, written into `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from model import ModelArgs, Transformer, save

    path.mkdir(parents=True)
    specials = [BOS_TEXT, EOS_TEXT, USER, ASSISTANT]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS_TEXT, "eos_token": EOS_TEXT, "add_bos_token": True,
        # stored for tools that run it; TextCodec renders the same format itself
        "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}" + USER +
                         "{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}" + ASSISTANT +
                         "{% endif %}",
    }, ensure_ascii=False, indent=1))
    args = ModelArgs.from_name("tiny")
    args.vocab_size = len(vocab)
    torch.manual_seed(seed)
    save(Transformer(args, dtype=torch.float32).eval(), path)
