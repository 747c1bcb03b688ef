"""Expert paths: the sequence of experts a token visits through the MoE layers (metrics.md
"Expert paths"). A token's top-1 path is its first-choice expert at each chosen layer; its top-k
path is the (unordered) top-k set at each layer. Questions: how many distinct paths are used, how
concentrated tokens are on few of them (path entropy, per domain), and whether the path carries
more information about the domain than any single layer's expert does.

Domain information is reported three ways, because a path has many more possible values than one
layer's expert and the plug-in mutual information grows with the number of values even when there
is nothing to find:
- domain_nmi: plug-in I(domain; unit) / H(domain) (as `analyses.metrics.domain_nmi`);
- ami: scikit-learn's adjusted mutual information, (I - E[I]) / (mean(H(domain), H(unit)) - E[I])
  (its default arithmetic mean; metrics.md), E[I] under random labellings with the same marginals:
  0 for independent labels, 1 for identical partitions. It charges a unit for values the domain does
  not need, which a path has many of. (The "min" form, (I - E[I]) / (H(domain) - E[I]), was used
  before: it is 0/0 when nearly every token's path is its own, I and E[I] both reaching H(domain),
  and read about 1, "the path fixes the domain", for paths that told nothing about it);
- heldout_accuracy: the domain predicted as the majority domain of the unit's value on training
  windows, scored on held-out windows (every `every`-th window of each domain: `Routes.heldout`;
  unseen values predict the overall majority), against `majority_baseline` (always the majority domain).
  A domain of one window is held out whole and never trained on: it is left out of the score, and the
  `left_out` column names it (a capped run of five domains read 58.5% with two of them scored untrained).

Array versions take ids [T, L, K] (tokens x layers x top-k, best first); run versions read the run's
`routing` and `tokens` tables (only tokens routed at every chosen layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import (MetricsError, as_run, layer_numbers, listed, need_rows, recorded_layers, same_length,
                      small_codes, whole_count)
from .specialisation import domain_nmi, entropy


# ------------------------------------------------------------------------------ arrays
def _as_routes(ids) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 2:  # [T, L]: top-1 per layer
        a = a[:, :, None]
    if a.ndim != 3:
        raise MetricsError(f"ids: expected [tokens, layers, K] expert ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise MetricsError("ids: expert ids must be non-negative integers")
    if a.dtype == np.uint64:  # the one type a code's int64 key cannot add in place; any other is kept (no copy:
        a = a.astype(np.int64)  # a compact run's int16 routes as int64 were 0.77 GB for 2M tokens x 8 layers)
    if a.size and a.min() < 0:  # after the cast: a uint64 id past 2^63 reads negative there, and codes pack ids
        raise MetricsError("ids: expert ids must be non-negative integers (below 2^63)")
    return a


def _top(a: np.ndarray, k) -> int:
    """`k` checked against the K experts recorded per token."""
    k = whole_count(k, "k", why=" (experts per layer in a path)")  # 1.5 was numpy's slice TypeError
    if not 1 <= k <= a.shape[2]:
        raise MetricsError(f"k={k}: must be between 1 and the K={a.shape[2]} experts recorded per token")
    return k


def path_keys(ids, k: int = 1) -> np.ndarray:
    """[T, L*k] the path of each token: top-1 per layer (k=1, ordered by layer), or each layer's
    top-k set sorted (k>1, so that two tokens with the same sets have equal keys)."""
    a = _as_routes(ids)
    k = _top(a, k)
    sub = a[:, :, :k] if k == 1 else np.sort(a[:, :, :k], axis=2)
    return sub.reshape(len(a), sub.shape[1] * sub.shape[2])  # (-1 cannot be inferred for 0 tokens)


def path_codes(ids, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distinct paths [P, L*k] in lexicographic order, code [T] of each token's path into them): as
    np.unique(path_keys(ids, k), axis=0, return_inverse=True) gives them."""
    a = _as_routes(ids)
    k = _top(a, k)
    if not len(a):
        return path_keys(a, k), np.zeros(0, np.int64)
    code = _path_ranks(a, k)
    return path_keys(a[_a_row_of_each(code)], k), code


# Keys packed from several columns stay below this, so that int64 arithmetic never overflows
_PACKED = 1 << 62


def dense_ranks(x) -> np.ndarray:
    """[T] int64 rank of each value among the distinct values of `x` (0 .. P-1 in sorted order), as np.unique's
    inverse gives it: through a table of the values seen where they are small non-negative integers (no sort;
    expert ids, codes that are ranks already), else np.unique."""
    x = np.asarray(x).reshape(-1)
    if small_codes(x):
        seen = np.zeros(int(x.max()) + 1, bool)
        seen[x] = True
        return (np.cumsum(seen, dtype=np.int64) - 1)[x]
    return np.unique(x, return_inverse=True)[1].reshape(-1).astype(np.int64, copy=False)


class _LexRanks:
    """Lexicographic ranks of rows given a column at a time (non-negative int64 [T] arrays): the columns are
    packed into one int64 key while the product of their value ranges fits, the key ranked (one 1-D sort)
    when the next column would not fit, and again at the end. np.unique(axis=0) sorts the rows as records,
    about 10x slower than a 1-D sort; ranking after each column (the earlier way) sorted once a column: for
    the top-6 sets of 8 layers, 48 sorts of every token where this takes 8 (one a layer), or 2 for top-1."""

    def __init__(self):
        self.key, self.span = None, 1

    def add(self, col: np.ndarray) -> None:
        base = int(col.max()) + 1
        if self.key is None:
            self.key, self.span = col.astype(np.int64), base  # a copy: the key is updated in place
            return
        if self.span * base >= _PACKED:  # Python ints: the test itself cannot overflow
            self.key = dense_ranks(self.key)
            self.span = int(self.key.max()) + 1
        self.key *= base
        self.key += col
        self.span *= base

    def ranks(self) -> np.ndarray:
        return dense_ranks(self.key)


def _set_columns(a: np.ndarray, j: int, k: int) -> np.ndarray:
    """[k, T]: the columns of layer j's part of the path keys, its first choice (k=1) or its top-k set sorted."""
    sub = a[:, j, :k]
    return sub.T if k == 1 else np.sort(sub, axis=1).T


def _layer_ranks(a: np.ndarray, j: int, k: int) -> np.ndarray:
    """[T] codes of layer j's first choice or top-k set (ranks, as path_codes(a[:, [j]], k) gives them); T > 0."""
    r = _LexRanks()
    for col in _set_columns(a, j, k):
        r.add(col)
    return r.ranks()


def _path_ranks(a: np.ndarray, k: int) -> np.ndarray:
    """[T] path codes, path_codes(a, k)'s second item, layer by layer; T > 0."""
    r = _LexRanks()
    for j in range(a.shape[1]):
        for col in _set_columns(a, j, k):
            r.add(col)
    return r.ranks()


def _a_row_of_each(code: np.ndarray) -> np.ndarray:
    """[P] one row index holding each code 0 .. P-1 (whichever: they hold the same path)."""
    rows = np.empty(int(code.max()) + 1, np.int64)
    rows[code] = np.arange(len(code))
    return rows


def path_entropy(codes) -> float:
    """Entropy (nats) of the path distribution; NaN without tokens."""
    c = np.asarray(codes)
    if not len(c):
        return float("nan")
    return entropy(np.bincount(c))


def path_summary(ids, domains=None, k: int = 1) -> "pandas.DataFrame":  # noqa: F821
    """One row for all tokens (domain "all") and, with `domains`, one per domain: tokens, layers,
    distinct_paths, path_entropy (nats), perplexity (e^H, the effective number of paths),
    top10_share (tokens on the ten most common paths of that group)."""
    import pandas as pd

    a = _as_routes(ids)
    k = _top(a, k)
    codes = _path_ranks(a, k) if len(a) else np.zeros(0, np.int64)
    groups = [("all", np.ones(len(codes), bool))]
    if domains is not None:
        d = np.asarray(domains)
        if len(d) != len(codes):
            raise MetricsError(f"domains: {len(d)} labels for {len(codes)} tokens")
        groups += [(str(x), d == x) for x in sorted(set(d.tolist()))]
    rows = []
    for name, m in groups:
        n = np.bincount(codes[m]) if m.any() else np.zeros(0, np.int64)
        n = n[n > 0]
        h = entropy(n) if len(n) else float("nan")
        rows.append({"domain": name, "tokens": int(m.sum()), "layers": a.shape[1], "distinct_paths": len(n),
                     "path_entropy": h, "perplexity": float(np.exp(h)) if len(n) else float("nan"),
                     "top10_share": float(np.sort(n)[::-1][:10].sum() / n.sum()) if len(n) else float("nan")})
    return pd.DataFrame(rows)


def heldout_left_out(labels, test) -> list[str]:
    """The labels (domains) held out whole: every row of theirs is in `test`, none in training. A held-out
    score can only count their rows wrong, so it leaves them out (`heldout_accuracy`, `linear_probe`,
    `token_dependence_from_run`). Under `heldout_windows` these are the domains of one window: the first
    window of each domain is held out."""
    lab, test = np.asarray(labels).reshape(-1), np.asarray(test, bool).reshape(-1)
    same_length(lab, test, names="labels and test")
    return sorted(set(lab[test].astype(str).tolist()) - set(lab[~test].astype(str).tolist()))


def left_out_note(left_out, every: int | None = None) -> str | None:
    """One sentence on the domains a held-out score leaves out, for every page, report and notebook that
    shows one; None when there are none. `left_out`: the domain names (a list; a string is one name), or a
    held-out result, whose `left_out` column holds each row's list of names (a column joined with ", " split a
    domain named "a, b" in two: a JSONL `domain` field may hold any text; a tour) and whose `attrs["every"]`
    the split's `every` (the sentence said "every 5th" whatever it was). `every`: the split's, where
    `left_out` does not say it (default 5, `heldout_windows`')."""
    if hasattr(left_out, "columns"):  # a result: the names of all its rows
        every = left_out.attrs.get("every") if every is None else every
        left_out = sorted({x for v in left_out.get("left_out", []) for x in v})
    names = [x for x in ([left_out] if isinstance(left_out, str) else list(left_out)) if x]
    if not names:
        return None
    every = 5 if every is None else int(every)
    return (f"Left out of the held-out scores: {listed(names)} {'has' if len(names) == 1 else 'have'} one window only, "
            f"which the split holds out whole (every {_nth(every)} window of each domain, its first included), so "
            f"{'it was' if len(names) == 1 else 'they were'} never trained on.")


def _nth(n: int) -> str:
    """2nd, 3rd, 5th, 11th, 21st."""
    return f"{n}{'th' if n % 100 in (11, 12, 13) else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def heldout_accuracy(labels, values, test) -> tuple[float, float]:
    """(accuracy, majority baseline): predict `labels` of test rows as the majority label of the
    row's `values` on the training rows (ties: smallest label code; values unseen in training: the
    training majority label). Test rows of a label with no training row (`heldout_left_out`) are not scored.
    NaN when there is no training row or no test row left, or fewer than two labels to train on."""
    same_length(np.asarray(labels).reshape(-1), np.asarray(values).reshape(-1), np.asarray(test).reshape(-1),
                names="labels, values and test")
    lab, val = dense_ranks(labels), dense_ranks(values)
    tr = ~np.asarray(test, bool).reshape(-1)
    L = int(lab.max()) + 1 if len(lab) else 0
    trained = np.bincount(lab[tr], minlength=L)
    test = ~tr & (trained > 0)[lab]  # a label never trained on can only be scored wrong
    if not tr.any() or not test.any() or (trained > 0).sum() < 2:
        return float("nan"), float("nan")
    V = int(val.max()) + 1
    counts = np.bincount(val[tr] * L + lab[tr], minlength=V * L).reshape(V, L)
    overall = int(trained.argmax())
    pred = np.where(counts.sum(1) > 0, counts.argmax(1), overall)[val[test]]
    return float((pred == lab[test]).mean()), float((lab[test] == overall).mean())


def domain_information(ids, domains, layers=None, k: int = 1, test=None) -> "pandas.DataFrame":  # noqa: F821
    """How much each unit tells about the domain: one row per layer (the top-1 expert, or top-k set
    for k > 1, of that layer alone) and one for the whole path. Columns unit, values (distinct values
    seen), domain_nmi (plug-in I/H(domain)), ami (chance-adjusted with the arithmetic normalisation,
    scikit-learn's average_method="arithmetic": (I - E[I]) / ((H(domain) + H(unit)) / 2 - E[I])),
    heldout_accuracy, majority_baseline (NaN without `test`, a boolean [T] mask of held-out tokens),
    left_out (the domains the held-out accuracy leaves out, a list in each row: `heldout_left_out`; empty for
    none).
    Fewer than two domains: every measure NaN (nothing to tell apart)."""
    import pandas as pd

    a = _as_routes(ids)
    d = np.asarray(domains)
    if len(d) != len(a):
        raise MetricsError(f"domains: {len(d)} labels for {len(a)} tokens")
    names = list(layers) if layers is not None else list(range(a.shape[1]))
    if len(names) != a.shape[1]:
        raise MetricsError(f"layers: {len(names)} names for {a.shape[1]} layers of ids")
    k = _top(a, k)
    # the domains as codes in their names' order, once: each measure of each unit sorted the names again (a
    # third of this function's time on a 2.15M-token run); the measures depend only on which tokens share one
    seen, dc = np.unique(d, return_inverse=True)
    dc = dc.reshape(-1)
    rows, path = [], _LexRanks()
    for j, x in enumerate(names):
        codes = _layer_ranks(a, j, k) if len(a) else np.zeros(0, np.int64)
        rows.append(_informs(f"layer {x}", codes, dc, len(seen), test))
        if len(a):
            path.add(codes)  # a path's rank orders as its layers' ranks do, each layer's key of one width
    rows.append(_informs("path", path.ranks() if len(a) else np.zeros(0, np.int64), dc, len(seen), test))
    out = heldout_left_out(d, test) if test is not None and len(d) and len(seen) >= 2 else []
    return pd.DataFrame(rows).assign(left_out=[list(out) for _ in rows])  # after heldout_accuracy checked lengths


def _informs(unit: str, codes: np.ndarray, dc: np.ndarray, n_domains: int, test) -> dict:
    """`domain_information`'s row of one unit: codes [T] (ranks 0 .. P-1) against the domain codes dc [T]."""
    from sklearn.metrics import adjusted_mutual_info_score

    P = int(codes.max()) + 1 if len(codes) else 0
    nmi_d = ami = acc = base = float("nan")
    if P and n_domains >= 2:  # with one domain there is no domain information to measure
        table = np.bincount(dc * P + codes, minlength=n_domains * P).reshape(n_domains, P)
        nmi_d = domain_nmi(table)
        ami = float(adjusted_mutual_info_score(dc, codes, average_method="arithmetic"))
        if test is not None:
            acc, base = heldout_accuracy(dc, codes, test)
    return {"unit": unit, "values": P, "domain_nmi": nmi_d, "ami": ami, "heldout_accuracy": acc,
            "majority_baseline": base}


def common_paths(ids, domains=None, token_ids=None, k: int = 1, top: int = 10,
                 examples: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """The `top` most common paths: path (list, experts per layer; k > 1: sorted sets flattened
    layer by layer), count, share, and with `domains` of two or more distinct values the path's most
    common domain and its share of the path's tokens (top_domain, top_domain_share; with fewer there is
    no such column: every path's domain would be the one domain, its share 1), with `token_ids` the
    path's most frequent token ids (ties by id)."""
    import pandas as pd

    top = whole_count(top, "top", why=" (paths listed)")  # top=-1 listed all but the rarest path
    examples = whole_count(examples, "examples", 0, " (token ids listed per path)")
    a = _as_routes(ids)
    k = _top(a, k)
    codes = _path_ranks(a, k) if len(a) else np.zeros(0, np.int64)
    n = np.bincount(codes)
    order = np.lexsort((np.arange(len(n)), -n))[:top]
    uniq = dict(zip(order.tolist(), path_keys(a[_a_row_of_each(codes)[order]], k))) if len(a) else {}
    d = np.asarray(domains) if domains is not None else None
    t = np.asarray(token_ids) if token_ids is not None else None
    for name, x in (("domains", d), ("token_ids", t)):
        if x is not None:
            same_length(codes, x, names=f"ids and {name}")
    two_domains = d is not None and len(np.unique(d)) >= 2
    rows = []
    for p in order.tolist():
        m = codes == p
        row = {"path": uniq[p].tolist(), "count": int(n[p]), "share": float(n[p] / len(codes))}
        if two_domains:
            vals, c = np.unique(d[m], return_counts=True)
            j = np.lexsort((vals, -c))[0]
            row |= {"top_domain": str(vals[j]), "top_domain_share": float(c[j] / m.sum())}
        if t is not None:
            vals, c = np.unique(t[m], return_counts=True)
            row["token_ids"] = vals[np.lexsort((vals, -c))[:examples]].tolist()
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ runs
@dataclass
class Routes:
    """Tokens routed at every one of `layers`: ids [T, L, K] (int64; `routes_from_run(compact=True)`: the
    smallest signed type that holds them), with their window, position, token id, previous token id (-1 at a
    window's first position) and domain, ordered by (seq_id, pos)."""
    layers: list[int]
    seq_id: np.ndarray
    pos: np.ndarray
    token_id: np.ndarray
    prev_id: np.ndarray
    domain: np.ndarray
    ids: np.ndarray

    def heldout(self, every: int = 5) -> np.ndarray:
        """Held-out mask: the tokens of every `every`-th window OF EACH DOMAIN (its 1st, `every`+1-th,
        ... window in seq_id order), so that every domain is held out in the same proportion and every
        domain with two windows or more is in training too. A plain seq_id % every would line up with
        the recorder's domain interleave (`--order domains` takes windows from the domains in turn):
        with five domains every held-out window came from one domain, which training never saw. A
        domain of one window is still held out whole: the scores leave it out (`heldout_left_out`)."""
        return heldout_windows(self.seq_id, self.domain, every)


def heldout_windows(seq_id, domain, every: int = 5) -> np.ndarray:
    """`Routes.heldout` on any tokens: [T] True for the tokens of every `every`-th window of each domain
    (a domain of one window: all of its tokens, which the held-out scores then leave out, `heldout_left_out`)."""
    every = whole_count(every, "every", 2, " (one window in `every` is held out)")  # 2.5 held out windows 0, 5, ...
    seq_id, domain = np.asarray(seq_id), np.asarray(domain)
    test = np.zeros(len(seq_id), bool)
    for dom in np.unique(domain):
        rows = domain == dom
        rank = np.unique(seq_id[rows], return_inverse=True)[1]  # each window's place in its domain
        test[rows] = rank.reshape(-1) % every == 0
    return test


def routes_from_run(run, layers=None, compact: bool = False) -> Routes:
    """The run's routing as one array [T, L, K] over the tokens routed at every chosen MoE layer
    (default: every recorded one), joined to `tokens` for ids and domains. The ids are int64, or with
    `compact` the smallest signed integer type that holds them (int16 for DeepSeek-V3's 256 experts: a
    quarter of the memory, 0.93 GB for 1M tokens at its 58 MoE layers against 3.7 GB; the report reads them
    so, and every array function here takes them; arithmetic of your own on them can overflow)."""
    run = as_run(run)
    need_rows(run, "routing")
    need_rows(run, "tokens")
    have = recorded_layers(run)
    layers = have if layers is None else layer_numbers(layers)
    bad = [x for x in layers if x not in have]
    if bad or not layers:
        raise MetricsError(f"layers {bad or layers}: no routing rows (MoE layers recorded: {have})")
    twice = sorted({x for x in layers if layers.count(x) > 1})
    if twice:
        raise MetricsError(f"layers {layers}: layer {', '.join(map(str, twice))} named twice; a path visits each "
                           "layer once")
    layers = sorted(layers)  # a path runs in layer order, whatever order the layers were named in
    tok = run.sql("select seq_id, pos, token_id, domain from tokens order by seq_id, pos").arrow()
    tok = tok.read_all() if hasattr(tok, "read_all") else tok  # duckdb 2 gives a batch reader, 1.x a table
    seq, pos, token_id = (tok.column(c).to_numpy() for c in ("seq_id", "pos", "token_id"))
    prev_id = np.full(len(seq), -1, token_id.dtype)  # the token one position back in the same window, if recorded
    back = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
    prev_id[1:][back] = token_id[:-1][back]
    ids, held = _routed_ids(run, layers, seq, pos, np.int16 if compact else np.int64)
    keep = held == len(layers)
    if not keep.any():
        ids = np.zeros((0, len(layers), 1), np.int64)
    elif not keep.all():
        ids = ids[keep]
    domain = tok.column("domain").to_numpy(zero_copy_only=False).astype(str)
    return Routes(layers, seq[keep], pos[keep], token_id[keep], prev_id[keep], domain[keep], ids)


def _routed_ids(run, layers: list[int], seq: np.ndarray, pos: np.ndarray,
                dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Every layer's expert ids at the tokens' positions (seq, pos: sorted), read a layer at a time (several a
    query where they are small: `readings._layer_readings`): ids [T, L, K] (`dtype`, widened where a layer's ids
    need it) and, per token, how many of the layers routed it. Grouping every layer's lists by position in SQL
    (one query) peaked at 3.10 GB for 8 layers of 2M tokens, top-6, where the result is 0.77 GB; this way
    1.36 GB (docs/performance.md, "Runs at 2 million tokens")."""
    from .readings import _layer_readings

    windows = np.unique(seq)
    width = int(pos.max(initial=0)) + 1
    key = np.searchsorted(windows, seq) * width + pos  # sorted, as the tokens are
    ids, held = None, np.zeros(len(seq), np.int64)
    for i, (n, (got, s, p)) in enumerate(_layer_readings(run, layers)):
        w = np.searchsorted(windows, s).clip(max=len(windows) - 1)
        k = w * width + p
        at = np.searchsorted(key, k).clip(max=len(key) - 1)
        ok = (windows[w] == s) & (p >= 0) & (p < width) & (key[at] == k)  # a position the tokens hold
        if ids is None:
            ids = np.zeros((len(seq), len(layers), got.shape[1]), dtype)
        elif got.shape[1] != ids.shape[2]:
            raise MetricsError(f"routing layer {n}: top-{got.shape[1]} expert ids where layer {layers[0]} has "
                               f"top-{ids.shape[2]}: a path needs one K")
        if got.size and int(got.max()) > np.iinfo(ids.dtype).max:  # (compact) a layer of wider ids than the first
            ids = ids.astype(np.promote_types(ids.dtype, np.min_scalar_type(-int(got.max()))))
        ids[at[ok], i] = got[ok]
        held[at[ok]] += 1
    return ids, held


def path_summary_from_run(run, layers=None, k: int = 1) -> "pandas.DataFrame":  # noqa: F821
    """`path_summary` of a run (rows "all" and per domain)."""
    r = routes_from_run(run, layers)
    return path_summary(r.ids, r.domain, k)


def domain_information_from_run(run, layers=None, k: int = 1, every: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """`domain_information` of a run; held out: every `every`-th window (`attrs["every"]`, for `left_out_note`)."""
    r = routes_from_run(run, layers)
    return split_every(domain_information(r.ids, r.domain, r.layers, k, r.heldout(every)), every)


def split_every(result, every: int):
    """`result` (a held-out result) with its split's `every` in `attrs["every"]`, where `left_out_note` reads it."""
    result.attrs["every"] = int(every)
    return result


def common_paths_from_run(run, layers=None, k: int = 1, top: int = 10,
                          examples: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """`common_paths` of a run, with domains and example token ids."""
    r = routes_from_run(run, layers)
    return common_paths(r.ids, r.domain, r.token_id, k, top, examples)
