"""Reading SGLang's expert-distribution dump files for `dsv3-probe import sglang` (probe/sglang.py, whose
docstring says what the files hold and how they become a run): each file loaded without running
pickled code, its mode recognised, every field the import reads checked (one-line SGLangError naming
the file), and the model's shape (layers, experts, top-k) from --config or the dumps themselves."""

from __future__ import annotations

import numbers
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .job import RecordError, first_line
from .sglang_fused import Fused, pass_slots, stat_looks_fused, stat_slots, token_slots

MODES = ("stat", "per_pass", "per_token")
DEFAULT_TOPK = 8  # DeepSeek-V3's experts per token: counts -> tokens when no --config says otherwise


class SGLangError(RecordError):
    """A dump we cannot import (one line naming the file)."""


@dataclass
class Dump:
    path: Path
    mode: str
    data: dict
    # the record reader (per_pass, per_token) that read the records, letting each one's counts or ids
    # go as it read them (a DeepSeek-V3 dump of 8 ranks is GBs): read once (`consume`)
    consumed: str | None = None


def check_unread(dumps: list[Dump]) -> None:
    """One line naming the file when a record reader has read (and emptied) a dump already: its records'
    counts or ids are gone (a second read was a KeyError from deep inside the reader)."""
    for d in dumps:
        if d.consumed:
            raise SGLangError(f"{d.path}: its records were read by {d.consumed} already, which lets each record's "
                              f"{'ids' if d.mode == 'per_token' else 'counts'} go as it reads them (the memory of a "
                              "server's dump): load the file again (read_dump, find_dumps) to read it again")


def consume(dumps: list[Dump], reader: str) -> None:
    """Mark the dumps read by `reader`, which empties their records as it goes (refused if read already):
    as it empties the first (a reader that refuses the dumps before leaves them to read again)."""
    check_unread(dumps)
    for d in dumps:
        d.consumed = reader


@dataclass
class Shape:
    """What the import knows of the model: its layers, experts and top-k."""
    n_layers: int
    n_experts: int
    topk: int = DEFAULT_TOPK
    dense: list[int] = field(default_factory=list)  # layers run dense (skipped)
    groups: int = 1
    args: dict | None = None  # the config's ModelArgs, when --config was given
    fused: Fused | None = None  # a fused shared expert's slot(s) found in the dump (sglang_fused.py)
    fused_assumed: bool = False  # none could be told either way (a stat dump without --config): none assumed
    fused_hint: int | None = None  # ... though its last column counts 1 per this many of the others, as a slot
    topk_seen: bool = False  # the dump shows the top-k (per_token ids, per_pass slot counts)

    def model_args(self, moe_layers: list[int]) -> dict:
        if self.args is not None:
            return self.args
        first = moe_layers[0] if moe_layers else 0
        return {"n_layers": self.n_layers, "n_dense_layers": first, "n_routed_experts": self.n_experts,
                "n_activated_experts": self.topk, "n_expert_groups": self.groups}


# ------------------------------------------------------------------------------ reading
# every imported row's domain: the server's traffic is one stream ("all" is the analyses' name for
# the rows of every domain together, so it cannot name a domain)
DOMAIN = "sglang"


def read_dump(path: Path) -> Dump:
    """One dump file, loaded without running pickled code, its mode recognised."""
    import pickle

    import torch

    # torch.save has written a zip archive since torch 1.6; anything else is not a dump at all (and
    # torch.load would read it as a legacy pickle stream, failing on whatever byte comes first)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise SGLangError(f"{path}: not a readable torch.save file (not a torch zip archive)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), "")
        why = why.split("Unsupported global:", 1)[-1].split(" was not")[0].strip() if why else "a non-tensor object"
        raise SGLangError(f"{path}: refused: it holds pickled Python objects ({why}), which "
                          "torch.load(weights_only=True) will not run") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        why = first_line(e, 160)
        raise SGLangError(f"{path}: not a readable torch.save file ({why})") from None
    if not isinstance(data, dict):
        raise SGLangError(f"{path}: not an SGLang expert-distribution dump (a {type(data).__name__}, not a dict)")
    d = Dump(path, _mode(data, path), data)
    _check_fields(d)
    return d


MAX_EXPERT_ID = 65535  # the routing table keeps expert ids as uint16
MAX_INDEX = 2**31 - 1  # token ids and positions: int32 columns
MAX_COUNT = 2**31 - 1  # SGLang counts in int32 tensors; sums of larger ones wrapped round to negative loads


def _ints(d: Dump, value, name: str, dims: int, nonneg: bool = True):
    """`value` as an integer tensor of `dims` dimensions (non-negative unless told), else one line
    naming the file and the field."""
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() != dims:
        got = f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        raise SGLangError(f"{d.path}: {name} should be a {dims}-D tensor, found {got}")
    if value.layout != torch.strided:  # sparse: min() and numpy() fail with a traceback
        raise SGLangError(f"{d.path}: {name} is a {value.layout} tensor; SGLang writes dense ones")
    # the integer dtypes torch reduces (min/max): SGLang writes int32 and int64; unsigned 16-64-bit,
    # quantized and complex tensors failed with a traceback, floats and bools are no counts or ids
    if value.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise SGLangError(f"{d.path}: {name} holds {value.dtype} values; SGLang writes integer counts and ids")
    if nonneg and value.numel() and int(value.min()) < 0:
        raise SGLangError(f"{d.path}: {name} holds a negative value ({int(value.min())})")
    return value


def _counts(d: Dump, value, name: str, dims: int):
    """A count tensor as SGLang writes it (int32: at most MAX_COUNT), else one line naming it: larger
    counts are no recorder's, and their sums over ranks and passes overflowed int64 into negative
    loads in the run."""
    c = _ints(d, value, name, dims)
    if c.numel() and int(c.max()) > MAX_COUNT:
        raise SGLangError(f"{d.path}: {name} holds {int(c.max())}, above {MAX_COUNT}: SGLang counts in int32")
    return c


def _scalar(d: Dump, value, name: str) -> int:
    """A non-negative integer field (rank, forward_pass_id), else one line naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SGLangError(f"{d.path}: {name}={value!r} should be a non-negative integer")
    return int(value)


def _seq(d: Dump, value, name: str, hi: int = MAX_INDEX) -> np.ndarray:
    """A list (or 1-D tensor) of integers in [0, hi], as SGLang writes input_ids, positions and
    extend_seq_lens, else one line naming the field."""
    try:
        a = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    except (TypeError, ValueError):
        a = np.asarray([None])
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise SGLangError(f"{d.path}: {name} should be a list of integers, found {type(value).__name__}"
                          + (f" of {a.dtype}" if a.ndim == 1 else ""))
    if a.size and (int(a.min()) < 0 or int(a.max()) > hi):
        bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise SGLangError(f"{d.path}: {name} holds {bad}, outside [0, {hi}]")
    return a.astype(np.int64)


def _check_fields(d: Dump) -> None:
    """Every field the import reads, present and of the kind SGLang writes, before anything is
    written: a broken dump is one line naming the file, the record and the field."""
    if d.mode == "stat":
        c = _counts(d, d.data["logical_count"], "logical_count", 3)
        if not len(c):
            raise SGLangError(f"{d.path}: logical_count holds no passes (a buffer of 0 rows)")
        _no_empty_dims(d, c, "logical_count", "[passes, layers, experts]")
        _scalar(d, d.data.get("rank", 0), "rank")
        return
    m = _ints(d, d.data.get("last_physical_to_logical_map"), "last_physical_to_logical_map", 2)
    _no_empty_dims(d, m, "last_physical_to_logical_map", "[layers, physical experts]")
    if m.numel() and int(m.max()) > MAX_EXPERT_ID:
        raise SGLangError(f"{d.path}: last_physical_to_logical_map names expert {int(m.max())}; ids above "
                          f"{MAX_EXPERT_ID} are not expert ids")
    _every_expert_placed(d, m)
    for i, r in enumerate(d.data["records"]):
        need = ("forward_pass_id", "global_physical_count") if d.mode == "per_pass" else \
            ("forward_pass_id", "input_ids", "positions", "topk_ids_of_layer")
        missing = [k for k in need if not isinstance(r, dict) or k not in r]
        if missing:
            raise SGLangError(f"{d.path}: record {i} has no {', '.join(missing)}")
        _scalar(d, r["forward_pass_id"], f"record {i}'s forward_pass_id")
        if "rank" in r:
            _scalar(d, r["rank"], f"record {i}'s rank")
        where = f"record {i} (pass {r['forward_pass_id']})"
        if d.mode == "per_pass":
            _counts(d, r["global_physical_count"], f"global_physical_count of {where}", 2)
            continue
        ids = _ints(d, r["topk_ids_of_layer"], f"topk_ids_of_layer of {where}", 3, nonneg=False)
        if ids.numel() and int(ids.min()) < -1:
            raise SGLangError(f"{d.path}: topk_ids_of_layer of {where} holds {int(ids.min())}; "
                              "SGLang pads with -1 only")
        n = len(_seq(d, r["input_ids"], f"input_ids of {where}"))
        n_pos = len(_seq(d, r["positions"], f"positions of {where}"))
        if n_pos != n:
            raise SGLangError(f"{d.path}: {where} has {n} input_ids but {n_pos} positions")
        lens = r.get("extend_seq_lens")
        if lens is not None and len(lens := _seq(d, lens, f"extend_seq_lens of {where}")) and int(lens.sum()) != n:
            raise SGLangError(f"{d.path}: {where}'s extend_seq_lens sum to {int(lens.sum())}, "
                              f"but it has {n} input_ids")


def _every_expert_placed(d: Dump, m) -> None:
    """One line naming the file and the layer where the map [layers, physical] gives a logical expert
    (0 to the map's largest id) no physical slot: SGLang places every one in every layer (its trivial
    map, EPLB's and a loaded map's, whose expert without a slot it could not dispatch). Imported, the
    map became the run's placement, and `analyses.placement` failed on it later, after its table's
    header, naming neither the layer nor the dump ("experts [5] have no slot in the map")."""
    a = m.numpy().astype(np.int64)
    E = int(a.max()) + 1
    held = np.bincount((np.arange(len(a))[:, None] * E + a).reshape(-1), minlength=len(a) * E).reshape(len(a), E)
    layer, missing = next(((i, np.flatnonzero(row == 0)) for i, row in enumerate(held) if not row.all()), (None, None))
    if layer is not None:
        raise SGLangError(f"{d.path}: last_physical_to_logical_map gives logical expert(s) {missing[:8].tolist()} of "
                          f"layer {layer} no physical slot (experts 0..{E - 1}): SGLang places every logical expert "
                          "in every layer")


def _no_empty_dims(d: Dump, t, name: str, dims: str) -> None:
    """One line naming the file where tensor `t` has a dimension of size 0 (no layers, no experts): an
    empty map was torch's "max(): Expected reduction dim" traceback, and a logical_count without layers
    or experts was called a dump whose every pass counted nothing."""
    if 0 in t.shape:
        raise SGLangError(f"{d.path}: {name} has shape {list(t.shape)} ({dims}): a server's dump has at least one "
                          "of each")


def _mode(data: dict, path: Path) -> str:
    if "logical_count" in data:
        return "stat"
    records = data.get("records")
    if isinstance(records, list) and records and not isinstance(records[0], dict):  # the keys are right: it
        # said "unknown key layout (keys: ['last_physical_to_logical_map', 'records'])"
        raise SGLangError(f"{path}: record 0 is a {type(records[0]).__name__}, not a dict; SGLang's per_pass and "
                          "per_token records are dicts of tensors")
    if isinstance(records, list) and records:
        if "topk_ids_of_layer" in records[0]:
            return "per_token"
        if "global_physical_count" in records[0]:
            return "per_pass"
        raise SGLangError(f"{path}: unknown record layout (record keys: {sorted(records[0])}); expected "
                          "topk_ids_of_layer (per_token) or global_physical_count (per_pass)")
    if isinstance(records, list) and not records:
        raise SGLangError(f"{path}: the dump holds no records (was the recorder started before the traffic?)")
    raise SGLangError(f"{path}: unknown key layout (keys: {sorted(map(str, data))}); expected SGLang's stat dump "
                      "(logical_count) or a per_pass / per_token dump (records)")


def find_dumps(dump: str | Path) -> list[Dump]:
    """The dump file, or every *.pt of the directory (one per rank), all of one mode."""
    p = Path(dump)
    if not p.exists():
        raise SGLangError(f"{p}: no such file or directory")
    files = sorted(p.glob("*.pt")) if p.is_dir() else [p]
    if not files:
        # a multi-node server writes each node's ranks' files on that node: copied back as one folder per
        # node, they were "no *.pt dump files" without a word on where they lie
        inner = sorted(p.glob("*/*.pt"))
        where = (f" (its sub-folders hold {len(inner)}, as {inner[0].relative_to(p)}; they are not searched: put "
                 "one recording's files of every rank in one folder and import that)") if inner else ""
        raise SGLangError(f"{p}: no *.pt dump files in this directory{where}")
    dumps = [read_dump(f) for f in files]
    modes = sorted({d.mode for d in dumps})
    if len(modes) > 1:
        raise SGLangError(f"{p}: the files mix dump modes {modes} ({', '.join(f'{d.path.name}: {d.mode}' for d in dumps)})")
    return dumps


def model_shape(dumps: list[Dump], config: str | None) -> Shape:
    """Layers, experts and top-k: from --config, checked against every dump (ranks must agree); without
    one, the dumps' own (top-k: `dump_topk`, else DEFAULT_TOPK)."""
    check_unread(dumps)
    sizes, physical = {}, {}
    for d in dumps:
        if d.mode == "stat":
            c = d.data["logical_count"]
            if c.dim() != 3:
                raise SGLangError(f"{d.path}: logical_count has shape {list(c.shape)}, expected [passes, layers, experts]")
            sizes[d.path] = (int(c.shape[1]), int(c.shape[2]))
        else:
            m = d.data.get("last_physical_to_logical_map")
            if m is None or m.dim() != 2:
                raise SGLangError(f"{d.path}: no last_physical_to_logical_map [layers, physical experts] in the dump")
            sizes[d.path] = (int(m.shape[0]), int(m.max()) + 1)
            physical[d.path] = int(m.shape[1])
    if len(set(physical.values())) > 1:  # one server keeps one count of physical slots
        raise SGLangError("the dumps disagree on the number of physical experts (files of different servers?): "
                          + ", ".join(f"{p.name}: {n}" for p, n in physical.items()))
    if len(set(sizes.values())) > 1:
        raise SGLangError("the ranks' dumps disagree on layers x experts: " + ", ".join(
            f"{p.name}: {a} x {b}" for p, (a, b) in sizes.items()))
    layers, experts = next(iter(sizes.values()))
    if config is None:
        fused = _fused(dumps, None, experts=experts)
        topk = dump_topk(dumps, fused)
        stat = dumps[0].mode == "stat"  # no slot can be told: none assumed, a last column like one noted
        return Shape(layers, experts, topk or DEFAULT_TOPK, fused=fused, topk_seen=topk is not None,
                     fused_assumed=stat, fused_hint=stat_looks_fused(dumps) if stat else None)
    from model.args import ConfigError, ModelArgs

    try:
        a = ModelArgs.from_hf_config(Path(config))
    except (ConfigError, OSError) as e:
        raise SGLangError(f"--config {config}: {e}") from None
    if a.n_layers != layers:
        raise SGLangError(f"{dumps[0].path}: the dump has {layers} layers, --config {config} has {a.n_layers}")
    fused = _fused(dumps, a, config)
    if experts > a.n_routed_experts and not (fused and fused.space == "logical"):
        raise SGLangError(f"{dumps[0].path}: expert id {experts - 1} is outside --config {config} "
                          f"(n_routed_experts={a.n_routed_experts})")
    if experts < a.n_routed_experts:
        # SGLang counts every logical expert (stat: logical_count's last dimension) and gives each a slot
        # of its map: a dump of 16 experts read with a 32-expert config was imported with 16 experts that
        # never loaded, planned as cold (and its map refused only by the placement command, later)
        raise SGLangError(f"{dumps[0].path}: the dump has {experts} experts "
                          f"({'logical_count' if dumps[0].mode == 'stat' else 'its physical-to-logical map'}), "
                          f"--config {config} has n_routed_experts={a.n_routed_experts}: is it this model's dump?")
    topk = dump_topk(dumps, fused)
    if topk is not None and topk != a.n_activated_experts:
        raise SGLangError(f"{dumps[0].path}: its tokens choose {topk} experts each, --config {config} has "
                          f"n_activated_experts={a.n_activated_experts}: is it this model's dump? (a server that "
                          "fuses the shared expert into the routed ones records one id more per token)")
    if fused and fused.columns > a.n_shared_experts:
        raise SGLangError(f"{dumps[0].path}: its tokens also choose {fused.columns} fused shared-expert slot(s) "
                          f"{fused.slots}, --config {config} has n_shared_experts={a.n_shared_experts}: "
                          "is it this model's dump?")
    return Shape(layers, a.n_routed_experts, a.n_activated_experts, list(range(a.n_dense_layers)),
                 a.n_expert_groups, a.to_dict(), fused=fused, topk_seen=topk is not None)


def _fused(dumps: list[Dump], a, config: str | None = None, experts: int | None = None) -> Fused | None:
    """The fused shared expert's slot(s) the dumps show, by mode (sglang_fused.py); `a`: --config's
    ModelArgs or None; `experts`: the dumps' logical experts, without it."""
    mode = dumps[0].mode
    if mode == "per_token":
        return token_slots(dumps, draft_record, a.n_activated_experts if a else None,
                           a.n_routed_experts if a else experts)
    if mode == "per_pass":
        return pass_slots(dumps, draft_record)
    return stat_slots(dumps, a.n_routed_experts, a.n_activated_experts, config) if a else None


def draft_record(r: dict) -> bool:
    """Whether a record is a speculative-decoding draft pass by its gatherer key: SGLang keys each record
    ("primary"; two-batch overlap would add its micro-batches, real traffic), and a recorder that routes
    the draft model's MoE layers may key them as drafts ("speculative_draft" in a recent test of its
    per_token gatherer, a serving engineer's review): their tokens repeat the target's."""
    return "draft" in str(r.get("gatherer_key") or "")


def dump_topk(dumps: list[Dump], fused: Fused | None = None) -> int | None:
    """The model's top-k as the dump shows it. per_token: the most routed ids any token chose in one
    layer (a fused shared-expert slot not counted). SGLang's per-token buffer is 8 wide whatever the
    model's top-k (the columns past it stay -1), and a token chooses none in a dense layer, a padded
    slot or a draft pass; each real token of a MoE layer chooses exactly top-k. per_pass: the top-k
    a fused slot's counts give (each token counted once there). None otherwise (stat, per_pass
    without a slot: counts only), or when no token chose (refused later, naming the files)."""
    if fused is not None and fused.topk is not None:
        return fused.topk
    most = 0
    for d in dumps:
        if d.mode != "per_token":
            return None
        for r in d.data["records"]:
            ids = r["topk_ids_of_layer"]
            if not draft_record(r) and ids.numel():
                width = d.data["last_physical_to_logical_map"].shape[1]
                routed = fused.strip_ids(ids.numpy().astype(np.int64), width) if fused else ids.numpy()
                most = max(most, int((routed >= 0).sum(-1).max()))
    return most or None
