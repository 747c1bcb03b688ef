"""The shared expert SGLang fuses into its routed experts' kernel, as it shows in expert-distribution
dumps (what SGLang's own source does with it: docs/sglang.md). A fused server appends to every
token's top-k one id past the routed ones (256 for DeepSeek-V3), the "slot" here: told from the dump,
it is set aside, so that a top-8 model over 256 experts is not read as top-9 over 257.

- per_token: ids past the dump's physical-to-logical map, each token's last id in every MoE layer;
  with no such id, one id that is every token's last in every MoE layer (at least MIN_ROWS rows, and
  with --config only where tokens choose one id more than num_experts_per_tok) whose id is the logical
  experts' count (SGLang's slot id, n_routed_experts) and where every other id is below it (a server
  whose slot lies inside the map dispatches to no replica: see _last_alike): a routed expert every
  token chose, its own id or a replica's, is every token's last too where ids are sorted, and no slot.
- per_pass: count columns past the map, one count per token: the routed counts of each layer are
  k times the slot's, one k everywhere, which is then the model's top-k.
- stat: logical counts hold no ids and no map; with --config, the experts past n_routed_experts,
  checked as per_pass's; without one nothing tells a slot from a routed expert: none is assumed
  (run.json `source.shared_fused_assumed`), and a last column that looks like one is noted."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

MIN_ROWS = 16  # (layer, token) rows whose last id must agree before an id inside the map is a slot
MIN_HINT_ROWS = 4  # (pass, layer) rows of a stat dump whose last column must count as a slot's for the note


@dataclass
class Fused:
    """Fused shared-expert slot(s) found in a dump, and what the import set aside."""
    slots: list[int]
    columns: int  # slot ids per token (per_token); counts modes count one per token
    space: str  # "physical" (per_token, per_pass) or "logical" (stat)
    found_by: str
    topk: int | None = None  # the routed top-k the counts show (per_pass, stat)
    dropped: int = 0
    inside: set[int] = field(default_factory=set)  # per_token: slot ids inside the map (position decides)

    def strip_ids(self, ids: np.ndarray, width: int) -> np.ndarray:
        """A record's topk_ids_of_layer [L, n, W] without its slot ids (-1 there); counted by the import
        on the records it keeps (tensor-parallel copies are read too)."""
        mask = _last_chosen(ids >= 0, self.columns) if self.inside else ids >= width
        return np.where(mask, -1, ids)

    def strip_counts(self, counts: np.ndarray, width: int) -> np.ndarray:
        """Counts [..., W] without the columns from `width` on (the slot's)."""
        self.dropped += int(counts[..., width:].sum(dtype=np.int64))
        return counts[..., :width]

    def source(self) -> dict:
        return {"shared_fused": True, "shared_slots": self.slots, "shared_slot_ids_are": self.space,
                "shared_fused_found_by": self.found_by, "shared_selections_dropped": self.dropped}


def source(fused: Fused | None, assumed: bool) -> dict:
    """run.json's `source` keys on the fused shared expert."""
    base = fused.source() if fused else {"shared_fused": False}
    return {**base, "shared_fused_assumed": assumed}


def say(shape) -> None:
    """The stderr line of an import that set slot ids aside, or of a stat dump without --config whose
    last column counts as a slot would (`shape`: sglang_dumps.Shape); on stderr, as the import's other
    notes and warnings: stdout is the command's result (what it imported, where it wrote)."""
    fused, topk = shape.fused, shape.topk
    if shape.fused_hint is not None:
        last = shape.n_experts - 1  # a routed expert every token chose counts so too: --config tells which
        print(f"note: expert {last}, the last, counts 1 per {shape.fused_hint} of the others' in every pass and "
              "layer, as a fused shared expert (chosen once by every token) would, or a routed expert every token "
              f"chose; without --config it is read as a routed expert: pass --config (the model's), which sets it "
              f"aside if its n_routed_experts is {last} and keeps it if {last + 1} (run.json "
              "source.shared_fused_assumed)", file=sys.stderr)
    if fused:
        print(f"note: fused shared expert found: {fused.space} id(s) {fused.slots} ({fused.found_by}); "
              f"{fused.dropped:,} selections of it set aside, the run holds the {topk} routed experts a token "
              "chose (run.json source.shared_fused)", file=sys.stderr)


# ------------------------------------------------------------------------------ per_token
def token_slots(dumps, draft, topk: int | None = None, logical: int | None = None) -> Fused | None:
    """The slot of a per_token dump (see the module docstring), None without one; a physical id past
    the map that is not every token's last is refused, as before. `topk`: --config's top-k; `logical`:
    the logical experts (--config's n_routed_experts, else the map's), below which no id is a slot."""
    def rows():  # (dump, its ids, the map's width) record by record: a dump's records together can be GBs
        for d in dumps:
            width = d.data["last_physical_to_logical_map"].shape[1]
            for r in d.data["records"]:
                if not draft(r):
                    yield d, r["topk_ids_of_layer"].numpy().astype(np.int64), width

    past = any(bool((r["topk_ids_of_layer"] >= d.data["last_physical_to_logical_map"].shape[1]).any())
               for d in dumps for r in d.data["records"] if not draft(r))  # on the tensors: no int64 copies
    if past:
        return _past_the_map(rows())
    return _last_alike(rows(), topk, logical)


def _past_the_map(rows) -> Fused:
    found, columns, first = set(), set(), None
    for d, ids, width in rows:
        first = first or (d, ids, width)
        chosen, out = ids >= 0, ids >= width
        m, c = chosen.sum(-1), out.sum(-1)
        last = _last_chosen(chosen, c[..., None])
        used = m > 0
        if not (out == last).all() or not (c[used] > 0).all():
            raise _outside(d, ids, width)
        columns |= set(c[used].tolist())
        found |= set(ids[out].tolist())
    if len(columns) != 1:
        raise _outside(*first, f"tokens hold {sorted(columns)} of them")
    return Fused(sorted(found), columns.pop(), "physical", "past the physical-to-logical map, every token's last id")


def _last_chosen(chosen: np.ndarray, n) -> np.ndarray:
    """The last `n` (a number, or one per row [..., 1]) chosen ids of each row of `chosen` [..., W]."""
    return chosen & (np.cumsum(chosen, -1) > chosen.sum(-1, keepdims=True) - n)


def _outside(d, ids, width, why: str = "not every token's last id") -> Exception:
    from .sglang_dumps import SGLangError

    return SGLangError(f"{d.path}: physical expert id {int(ids.max())} is outside the map's {width} experts ({why}, "
                       "so no fused shared-expert slot)")


# NOTE: SGLang's layout where a slot id lies inside the map (python/sglang/srt/layers/moe/topk.py,
# _post_process_topk_ids; eplb/expert_location_dispatch.py). The slot's id is n_routed_experts, the
# logical experts' count (one shared expert; the old n_share_experts_fusion's several ids are not every
# token's last). Off DeepEP, the ids, slot column included, go through topk_ids_logical_to_physical,
# whose tables are num_logical_experts long: with a dispatch algorithm set (--enable-eplb or
# --init-expert-location, which set "static"; or one named) the slot's id would index past them (SGLang's
# own comment there says so, and keeps the column out for DeepEP only). A slot id inside the map thus
# comes from a server that dispatches nothing: its routed ids are logical ones, all below the slot's,
# and its map the trivial one (slot p holds p % 256), whose slots past 256 no token is sent to.
# A dispatching server's replicas past the logical count are routed traffic: a hot expert's copy that
# every token chose last (SGLang orders a token's ids by score, not by id) is no slot when it is not
# the logical count or when any other id reaches past it. Not told apart: that copy at exactly the
# logical count, every token's last in every MoE layer, in a dump where no other replica was chosen.
def _last_alike(rows, topk: int | None, logical: int | None = None) -> Fused | None:
    """One id inside the map that is every MoE row's last (each row choosing as many, from column 0),
    in no other column; with --config's `topk`, only where rows choose topk + 1. With `logical` (the
    logical experts' count), the id is `logical` itself and every other id below it, as SGLang's layout
    has it (the NOTE above): a routed expert that every token chose, last where ids are sorted, was taken
    for a slot and its selections dropped, whether its id was below `logical` or a replica's past it."""
    last, counts, total, beyond = set(), set(), 0, False
    for _, ids, _ in rows:
        chosen = ids >= 0
        m = chosen.sum(-1)
        used = m > 0
        if not used.any():
            continue
        counts |= set(m[used].tolist())
        if len(counts) > 1:
            return None
        k = next(iter(counts))
        if not (ids[used][:, :k] >= 0).all() or (topk is not None and k != topk + 1):
            return None
        tail = ids[used][:, k - 1]
        last |= set(tail.tolist())
        if len(last) > 1 or (ids[used][:, :k - 1] == tail[:, None]).any():
            return None
        beyond = beyond or (logical is not None and bool((ids[used][:, :k - 1] >= logical).any()))
        total += int(used.sum())
    if total < MIN_ROWS or next(iter(counts)) < 2 or (logical is not None and (last != {logical} or beyond)):
        return None
    return Fused(sorted(last), 1, "physical", "the same id last for every token in every MoE layer",
                 inside=set(last))


# ------------------------------------------------------------------------------ counts
def _one_per_token(routed: np.ndarray, slot: np.ndarray) -> int | None:
    """k where every counting row's routed total is k times its slot total (one k), else None.
    routed, slot: [rows] totals; rows counting nothing are skipped."""
    use = (routed > 0) | (slot > 0)
    if not use.any() or (slot[use] == 0).any() or (routed[use] % slot[use]).any():
        return None
    k = set((routed[use] // slot[use]).tolist())
    return k.pop() if len(k) == 1 and min(k) >= 1 else None


def pass_slots(dumps, draft) -> Fused | None:
    """per_pass count columns past the map, one count per token; refused when they are not."""
    from .sglang_dumps import SGLangError

    ks, found = set(), set()
    for d in dumps:
        width = d.data["last_physical_to_logical_map"].shape[1]
        for r in d.data["records"]:
            if draft(r) or r["global_physical_count"].shape[1] <= width:  # an unfused pass: no int64 copy
                continue
            c = r["global_physical_count"].numpy().astype(np.int64)
            if not c.any():
                continue
            k = _one_per_token(c[:, :width].sum(1), c[:, width:].sum(1))
            if k is None:
                raise SGLangError(f"{d.path}: global_physical_count of pass {r['forward_pass_id']} has {c.shape[1]} "
                                  f"columns, the map {width}: the columns past it are no fused shared-expert slot "
                                  "(counted once a token: each layer's routed counts k times theirs)")
            ks.add(k)
            found |= {width + j for j in np.flatnonzero(c[:, width:].any(0))}
    if not ks:
        return None
    if len(ks) > 1:
        raise SGLangError(f"{dumps[0].path}: the count columns past the map give top-k {sorted(ks)} in different "
                          "passes: no fused shared-expert slot")
    return Fused(sorted(int(x) for x in found), 1, "physical", "count columns past the map, one per token",
                 topk=ks.pop())


def stat_slots(dumps, routed: int, topk: int, config: str) -> Fused | None:
    """stat experts from `routed` (the config's n_routed_experts) on, one count per token at `topk`;
    refused when they are not."""
    from .sglang_dumps import SGLangError

    found = set()
    for d in dumps:
        if d.data["logical_count"].shape[2] <= routed:  # before an int64 copy of the dump
            continue
        c = d.data["logical_count"].numpy().astype(np.int64)  # [rows, L, W]
        k = _one_per_token(c[..., :routed].sum(-1).reshape(-1), c[..., routed:].sum(-1).reshape(-1))
        if k != topk:
            raise SGLangError(f"{d.path}: expert id {c.shape[2] - 1} is outside --config {config} (n_routed_experts="
                              f"{routed}), and experts {routed}.. are no fused shared-expert slot (counted once a "
                              f"token: {topk} routed counts to each of theirs)")
        found |= {routed + j for j in np.flatnonzero(c[..., routed:].reshape(-1, c.shape[2] - routed).any(0))}
    if not found:
        return None
    return Fused(sorted(int(x) for x in found), 1, "logical",
                 "experts past n_routed_experts of --config, one per token", topk=topk)


def stat_looks_fused(dumps) -> int | None:
    """Without --config: k when the last expert column counts 1 per k of the others in every pass and
    layer that counted (at least MIN_HINT_ROWS of them), as a fused slot would; else None. Only a note:
    the counts are read as they are."""
    cs = [d.data["logical_count"].numpy() for d in dumps]  # the dumps agree on their shape (checked)
    if cs[0].shape[2] < 2:
        return None
    # per dump, per (row, layer): the dumps joined as int64 were held twice over (20 of 1,000 rows: 2.4 GB)
    routed = np.concatenate([c[..., :-1].sum(-1, dtype=np.int64).reshape(-1) for c in cs])
    slot = np.concatenate([c[..., -1].reshape(-1).astype(np.int64) for c in cs])
    if int(((routed > 0) | (slot > 0)).sum()) < MIN_HINT_ROWS:
        return None
    return _one_per_token(routed, slot)
