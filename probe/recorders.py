"""Turn one batch's hooked tensors into table rows. The model only exposes tensors through its hook
points; every reduction and all row building happen here.

Legend: B windows in the batch, S padded length, T = B*S token slots, K top-k, E routed experts,
C latent dim, R rope dim, V vocab; "valid" = not padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from model.head_stats import TokenStats
from model.head_stats import logit_stats as model_logit_stats

from .stats import KVAccumulator
from .windows import Window


@dataclass
class RecordConfig:
    router_logits: str = "topk"  # none | topk | full
    sample: float = 1.0  # fraction of tokens whose full scores are kept (router_logits=full)
    kv_stats: bool = True
    mtp: bool = True


def sample_mask(seq_id: np.ndarray, pos: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic per-token sampling from (seq_id, pos), the same whatever the batching or
    world size: each token keeps its row when a hash of (seq_id, pos) mapped into [0, 1) falls
    below `fraction`. The hash is SplitMix64's finaliser, whose outputs for neighbouring keys are
    as good as independent; the multiplicative hash used before (2026-12-05) stepped by the golden
    ratio along a window, so that below a fraction of about 0.38 no two adjacent tokens were ever
    kept together."""
    if fraction >= 1:
        return np.ones(len(seq_id), bool)
    h = (seq_id.astype(np.uint64) << np.uint64(32)) | pos.astype(np.uint64)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        h = (h ^ (h >> np.uint64(shift))) * np.uint64(mult)  # uint64 arithmetic wraps, as the hash wants
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def list_array(values: np.ndarray, width: int, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """[n, width] numpy -> a pyarrow list array (null rows where `valid` is False)."""
    n = len(values)
    if valid is None:
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1), type=typ))
    counts = np.where(valid, width, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = values[valid].reshape(-1)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=typ), mask=pa.array(~valid))


@dataclass
class Batch:
    """A padded batch of windows."""
    index: int  # global batch index
    windows: list[Window]
    tokens: torch.Tensor = field(init=False)  # [B, S]
    lengths: torch.Tensor = field(init=False)  # [B]

    def __post_init__(self) -> None:
        lens = [len(w.ids) for w in self.windows]
        self.tokens = torch.zeros(len(lens), max(lens), dtype=torch.long)
        for i, w in enumerate(self.windows):
            self.tokens[i, : lens[i]] = torch.from_numpy(w.ids.astype(np.int64))
        self.lengths = torch.tensor(lens)

    @property
    def valid(self) -> torch.Tensor:  # [B, S] bool
        return torch.arange(self.tokens.shape[1])[None] < self.lengths[:, None]

    @property
    def scored(self) -> torch.Tensor:  # [B, S] bool
        """The tokens a surprisal is computed for (`surprisal`): every valid one but a window's first,
        which nothing predicts. What the jobs count as scored, whatever value the model gives them."""
        return self.valid & (torch.arange(self.tokens.shape[1]) > 0)[None]


def logit_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, top1), two [B, N] CPU tensors from logits [B, N, V] (any float dtype) and targets
    [B, N]: model.head_stats.logit_stats, for callers that hold the logits anyway."""
    return tuple(model_logit_stats(logits, targets).cpu())


def _next_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """[B, S] -> the token after each position [B, S] (0 after the last: a placeholder)."""
    return torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)


def surprisal(batch: Batch, nll_next: torch.Tensor) -> torch.Tensor:
    """[B, S] surprisal of each token from logit_stats' nll against the next tokens (position p's
    loss is the prediction at p-1's); NaN at position 0 and at padding, the positions `Batch.scored`
    leaves out. A scored position holds what the model gave, NaN or inf included: tell the two apart
    by `Batch.scored`, not by isnan."""
    B, S = batch.tokens.shape
    nll = torch.full((B, S), float("nan"))
    nll[:, 1:] = torch.where(batch.scored[:, 1:], nll_next[:, :-1], float("nan"))
    return nll


def token_nll(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Surprisal [B, S] (nats, float32) of token p from the prediction at p-1; NaN at position 0
    and at padding. The `tokens.loss` column, and the loss `analyses.ablate` compares."""
    return surprisal(batch, logit_stats(logits, _next_tokens(batch.tokens))[0])


def model_token_nll(model, batch: Batch, **forward) -> torch.Tensor:
    """token_nll of `model` on `batch` without its logits: the forward (with `forward`'s extra
    arguments, e.g. start_at_layer and resid) returns the head's statistics against the next tokens
    (model/head_stats.py). Collective under model parallelism, like any forward."""
    dev = model.embed.weight.device
    stats = model(batch.tokens.to(dev), lengths=batch.lengths.to(dev), targets=_next_tokens(batch.tokens).to(dev),
                  **forward)
    return surprisal(batch, stats.nll.cpu())


class Recorder:
    """Attaches capture hooks, runs the model on a batch, and returns rows for each table."""

    def __init__(self, model, cfg: RecordConfig, domains: list[str]) -> None:
        self.model, self.cfg = model, cfg
        a = model.args
        self.moe_layers = [i for i in range(a.n_layers) if a.is_moe_layer(i)]
        self.E, self.K = a.n_routed_experts, a.n_activated_experts
        self.domains = domains  # domain index -> name (grows as new domains appear)
        self._dom_index = {d: i for i, d in enumerate(domains)}
        self.kv = KVAccumulator(list(range(a.n_layers)), a.kv_lora_rank)
        self.mtp = cfg.mtp and len(model.mtp) > 0
        self._cap: dict[str, torch.Tensor] = {}

    def hook_names(self) -> list[str]:
        names = []
        for i in self.moe_layers:
            g = f"layers.{i}.ffn.gate."
            names += [g + "hook_topk_ids", g + "hook_topk_weights", g + "hook_allowed_scores"]
            if self.cfg.router_logits == "full":
                names.append(g + "hook_scores")
        if self.cfg.kv_stats:
            for i in range(self.model.args.n_layers):
                names += [f"layers.{i}.attn.hook_c_kv", f"layers.{i}.attn.hook_k_pe"]
        return names

    def _save(self, t: torch.Tensor, hook) -> None:
        if hook.name.endswith("hook_allowed_scores"):  # only the margins need it: keep [T, K+1], not [T, E]
            t = t.topk(min(self.K + 1, self.E), dim=-1).values
        # routing goes to the host for rows; the latents stay where the model is (KVAccumulator's
        # float64 products are cheaper there on a GPU)
        self._cap[hook.name] = t if ".attn." in hook.name else t.cpu()

    def domain_index(self, d: str) -> int:
        if d not in self._dom_index:
            self._dom_index[d] = len(self.domains)
            self.domains.append(d)
        return self._dom_index[d]

    @torch.no_grad()
    def run(self, batch: Batch) -> dict[str, dict]:
        self._cap = {}
        with self.model.hooks([(n, self._save) for n in self.hook_names()]):
            out = self._forward(batch)
        stats, mtp_stats = (out if self.mtp else (out, None))
        return self.rows(batch, stats.cpu(), None if mtp_stats is None else mtp_stats.cpu())

    @torch.no_grad()
    def forward_only(self, batch: Batch) -> None:
        """The same forward pass without capturing anything: what the ranks of a sharded model that
        do not write contribute (their collectives), at no recording cost."""
        self._forward(batch)

    def _forward(self, batch: Batch):
        """The model's TokenStats against the next tokens (and the MTP's against the ones after):
        no [B, S, V] logits are made (model/head_stats.py)."""
        dev = self.model.embed.weight.device
        nxt = _next_tokens(batch.tokens).to(dev)
        return self.model(batch.tokens.to(dev), lengths=batch.lengths.to(dev), mtp=self.mtp, targets=nxt,
                          mtp_targets=nxt[:, 1:] if self.mtp else None)

    # ------------------------------------------------------------------------------ rows
    def rows(self, batch: Batch, stats: TokenStats, mtp_stats: TokenStats | None) -> dict[str, dict]:
        """Every table's rows of `batch` from the captured hooks and the head's statistics (on the CPU)."""
        B, S = batch.tokens.shape
        valid = batch.valid.reshape(-1)  # [T]
        vidx = valid.nonzero().squeeze(1)
        seq = np.repeat([w.seq_id for w in batch.windows], S)[valid.numpy()]
        pos = np.tile(np.arange(S, dtype=np.int32), B)[valid.numpy()]
        doms_b = np.array([self.domain_index(w.domain) for w in batch.windows])
        dom = np.repeat(doms_b, S)[valid.numpy()]
        nll_next, top1 = stats
        out: dict[str, dict] = {"tokens": self._tokens(batch, surprisal(batch, nll_next), seq, pos, dom)}
        out["expert_load"] = self._loads(batch.index, vidx, dom)
        if self.cfg.router_logits != "none":
            out["routing"] = self._routing(vidx, seq, pos)
        if self.mtp:
            out["mtp"] = self._mtp(batch, top1, mtp_stats)
        if self.cfg.kv_stats:
            for i in range(self.model.args.n_layers):
                c = self._cap[f"layers.{i}.attn.hook_c_kv"].reshape(B * S, -1)
                k = self._cap[f"layers.{i}.attn.hook_k_pe"].reshape(B * S, -1)
                c, k = c[vidx.to(c.device)], k[vidx.to(k.device)]
                self.kv.add(i, c, k)
        return out

    def _tokens(self, batch: Batch, nll, seq, pos, dom) -> dict:
        B, S = batch.tokens.shape
        valid = batch.valid.reshape(-1).numpy()
        loss = nll.reshape(-1).numpy()[valid]
        doc_ids = np.repeat(np.array([w.doc_id for w in batch.windows], dtype=object), S)[valid]
        doc_pos = (np.repeat([w.doc_start for w in batch.windows], S)[valid] + pos).astype(np.int64)
        return {"doc_id": doc_ids, "seq_id": seq, "pos": pos, "doc_pos": doc_pos,
                "token_id": batch.tokens.reshape(-1).numpy()[valid].astype(np.int32),
                "domain": np.array(self.domains, dtype=object)[dom],
                "loss": pa.array(loss.astype(np.float32), mask=np.isnan(loss))}

    def _routing(self, vidx, seq, pos) -> dict:
        K, E = self.K, self.E
        n = len(vidx)
        cols = {k: [] for k in ("seq_id", "pos", "layer", "ids", "w", "mk", "m1", "scores")}
        full = self.cfg.router_logits == "full"
        keep = sample_mask(seq, pos, self.cfg.sample) if full else None
        for layer in self.moe_layers:
            g = f"layers.{layer}.ffn.gate."
            ids = self._cap[g + "hook_topk_ids"][vidx]
            top = self._cap[g + "hook_allowed_scores"][vidx]  # [n, K+1] best allowed scores (see _save)
            kth, first = top[:, K - 1], top[:, 0]
            nxt = top[:, K] if E > K else torch.full_like(kth, float("-inf"))
            cols["seq_id"].append(seq)
            cols["pos"].append(pos)
            cols["layer"].append(np.full(n, layer, np.int16))
            cols["ids"].append(ids.numpy().astype(np.uint16))
            cols["w"].append(self._cap[g + "hook_topk_weights"][vidx].float().numpy())
            cols["mk"].append((kth - nxt).float().numpy())
            cols["m1"].append((first - nxt).float().numpy())
            if full:
                cols["scores"].append(self._cap[g + "hook_scores"][vidx].float().numpy())
        if not cols["seq_id"]:
            return {}
        cat = {k: np.concatenate(v) for k, v in cols.items() if v}
        mk, m1 = cat["mk"], cat["m1"]
        out = {"seq_id": cat["seq_id"], "pos": cat["pos"], "layer": cat["layer"],
               "expert_ids": list_array(cat["ids"], K, pa.uint16()),
               "expert_weights": list_array(cat["w"], K, pa.float32()),
               "margin_k": pa.array(mk, mask=~np.isfinite(mk)), "margin_1": pa.array(m1, mask=~np.isfinite(m1))}
        if full:
            out["scores"] = list_array(cat["scores"], E, pa.float32(), np.tile(keep, len(self.moe_layers)))
        else:
            out["scores"] = pa.nulls(len(cat["seq_id"]), pa.list_(pa.float32()))
        return out

    def _loads(self, step: int, vidx, dom) -> dict:
        E = self.E
        present = np.unique(dom)
        n_dom = len(self.domains)
        dom_t = torch.from_numpy(dom.astype(np.int64))
        tok_per_dom = np.bincount(dom, minlength=n_dom)
        cols = {k: [] for k in ("step", "layer", "expert", "domain", "count", "weight_sum", "tokens")}
        for layer in self.moe_layers:
            g = f"layers.{layer}.ffn.gate."
            ids = self._cap[g + "hook_topk_ids"][vidx]  # [n, K]
            w = self._cap[g + "hook_topk_weights"][vidx].double()
            key = (dom_t[:, None] * E + ids).reshape(-1)
            count = torch.bincount(key, minlength=n_dom * E).reshape(n_dom, E).numpy()
            wsum = torch.bincount(key, weights=w.reshape(-1), minlength=n_dom * E).reshape(n_dom, E).numpy()
            for d in present:
                cols["step"].append(np.full(E, step, np.int64))
                cols["layer"].append(np.full(E, layer, np.int16))
                cols["expert"].append(np.arange(E, dtype=np.int32))
                cols["domain"].append(np.full(E, self.domains[d], dtype=object))
                cols["count"].append(count[d].astype(np.int64))
                cols["weight_sum"].append(wsum[d])
                cols["tokens"].append(np.full(E, tok_per_dom[d], np.int64))
        return {k: np.concatenate(v) for k, v in cols.items()} if cols["step"] else {}

    def _mtp(self, batch: Batch, top1, mtp_stats: TokenStats) -> dict:
        """top1 [B, S]: the main model's argmax at every position; mtp_stats [B, S-1] against token i+2."""
        B, S = batch.tokens.shape
        if S < 2:
            return {}
        lens = batch.lengths
        i = torch.arange(S - 1)
        rows = i[None] <= (lens[:, None] - 2)  # [B, S-1]: position i uses token i+1
        main_top1 = top1[:, 1:]  # [B, S-1] main prediction at i+1
        has_target = i[None] <= (lens[:, None] - 3)
        target = _next_tokens(batch.tokens)[:, 1:]  # [B, S-1]: token i+2 (a 0 placeholder at the end)
        mtp_nll, mtp_top1 = mtp_stats  # [B, S-1]: the prediction of token i+2
        loss = torch.where(has_target, mtp_nll, float("nan"))
        sel = rows.reshape(-1).numpy()
        seq = np.repeat([w.seq_id for w in batch.windows], S - 1)[sel]
        doms = np.repeat(np.array([w.domain for w in batch.windows], dtype=object), S - 1)[sel]
        a, b = mtp_top1.reshape(-1).numpy()[sel], main_top1.reshape(-1).numpy()[sel]
        tgt_ok = has_target.reshape(-1).numpy()[sel]
        ls = loss.reshape(-1).numpy()[sel]
        return {"seq_id": seq, "pos": np.tile(np.arange(S - 1, dtype=np.int32), B)[sel], "domain": doms,
                "mtp_top1": a.astype(np.int32), "main_top1": b.astype(np.int32), "agree": a == b,
                "target": pa.array(target.reshape(-1).numpy()[sel].astype(np.int32), mask=~tgt_ok),
                "mtp_loss": pa.array(ls.astype(np.float32), mask=np.isnan(ls))}
