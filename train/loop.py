"""The training run: set up (data, model, optimizer, a restored checkpoint), then steps (forward,
backward, the all-reduced losses and loads, the bias update), logged and checkpointed, then the
bias settling, the final evaluation and the shipped model."""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model import Transformer
from model.memory import available_memory
from probe.ckpt_identity import checkpoint_identity
from probe.job import check_out_parent, os_refusal
from probe.writer import RunError, replace_keeping_others, updating_run_json, write_json_atomic, writer_lock

from .balance import RoutingTap, moe_gates, settle_biases, update_bias
from .data import Batches, TrainError, check_corpus_dir, input_digests, load_tokenizer, token_streams, val_windows
from .flags import check_flags
from .log import TABLES, TrainLog
from .state import (changed_flags, changed_inputs, check_resume_run, completed_run, config_record, load_state,
                    resume_dir, run_id, save_final, save_state)
from .steps import Dist, bias_speed_at, evaluate, forward_losses, lr_at, make_optimizer, model_args


# run.json keys a session writes at its end (`_Run.flush`'s extras, the settling): a later session's run.json
# has them only if it writes them again
SESSION_KEYS = ("final", "model_dir", "model_bytes", "checkpoint", "corpus", "tokens_per_s", "error", "stop_reason",
                "bias_settle")


def run(ns: argparse.Namespace) -> dict:
    """Train as `ns` says; returns run.json's content. Raises TrainError / ConfigError on bad input."""
    check_flags(ns)
    dist = Dist(ns.device)
    try:
        with contextlib.ExitStack() as held:  # the run's writer lock, once taken (`_Run.go`)
            return _Run(ns, dist, held).go()
    finally:
        dist.close()


def _short_domains_note(what: str, split: str, streams: dict, kept, seq_len: int) -> None:
    """One note naming the domains of `streams` left out of `kept` for want of one window's tokens."""
    short = [d for d in streams if d not in kept]
    if short:
        print(f"note: {what} (fewer {split} tokens than one window of --seq-len + 1 = {seq_len + 1}): "
              + ", ".join(f"{d} ({len(streams[d])})" for d in short), file=sys.stderr)


@dataclass
class _Data:
    batches: Batches
    val: dict  # domain -> validation windows
    train_tokens: dict
    val_tokens: dict
    inputs: dict = field(default_factory=dict)  # the SHA-256 of the splits and the tokenizer, kept in each checkpoint


def _param_count(args, built: int = 64) -> int:
    """The parameters of a model of `args`, counted on the meta device. Past `built` layers, from two
    small models' difference (every MoE layer holds as many): building 10**12 layers, even on the meta
    device, hung (--set n_layers=1000000000000)."""
    def count(layers: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in Transformer(replace(args, n_layers=layers), init=False).parameters())

    if args.n_layers <= built:
        return count(args.n_layers)
    base = args.n_dense_layers + 1  # the dense layers and one MoE layer
    one = count(base)
    return one + (args.n_layers - base) * (count(base + 1) - one)


@dataclass
class _Run:
    ns: argparse.Namespace
    dist: Dist
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # what the run holds until it ends
    t_start: float = field(default_factory=time.perf_counter)
    step: int = 0
    tokens_seen: int = 0
    saved_step: int | None = None  # the step the checkpoint holds (None: none saved yet)
    recent_tps: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))

    # ------------------------------------------------------------------------------- set-up
    def go(self) -> dict:
        ns, dist = self.ns, self.dist
        if ns.threads:
            torch.set_num_threads(ns.threads)
        tok = load_tokenizer(ns.tokenizer)
        args = model_args(ns, tok.get_vocab_size())
        where = resume_dir(ns)
        saved = load_state(where, args) if where is not None else None
        if saved is not None:
            check_resume_run(saved, where, ns.out)
            if dist.main and run_id(ns.out) is None and where.resolve() != (ns.out / "checkpoint").resolve():
                # it went on without a word, into the default runs/train where --out was left out (a review)
                print(f"note: --resume {ns.resume}: a new run in --out {ns.out}, from the checkpoint in {where} "
                      f"(step {saved['step']}); the rows up to step {saved['step']} stay in the run "
                      "that saved it", file=sys.stderr)
        # the run's id, in run.json and every checkpoint: a resume continues the run whose id it carries;
        # a new --out started from another run's checkpoint is a run of its own
        self.run_id = run_id(ns.out) or uuid.uuid4().hex
        if saved is not None and int(saved["step"]) > ns.steps:
            # it trained nothing, re-settled and wrote run.json "complete" at step 450 of steps 50
            raise TrainError(f"--steps {ns.steps}: the checkpoint in {where} is already at step {saved['step']} "
                             f"(--steps is the whole run's length: pass at least {saved['step']})")
        if saved is not None and ns.stop_at is not None and ns.stop_at <= int(saved["step"]) < ns.steps:
            # the check after each step comes after the first one: it trained a step past the checkpoint, then stopped
            raise TrainError(f"--stop-at {ns.stop_at}: the checkpoint in {where} is already at step {saved['step']} "
                             f"(pass a later step, or leave --stop-at out to go on to step {ns.steps})")
        if saved is not None and (done := completed_run(ns.out, saved, ns.steps)) is not None:
            # first: these flags were not used at all
            if dist.main and (changed := changed_flags(saved, ns, dist.world)):
                print("note: the run is complete, so these flags, which differ from the run's own, were not used: "
                      + ", ".join(changed), file=sys.stderr)
            if dist.main:
                print(f"the run in {ns.out} is already complete (step {ns.steps} of --steps {ns.steps}, its model in "
                      f"{ns.out / 'model'}): nothing to do, nothing changed (pass a larger --steps to train on)")
            return done
        self.data = self._data(tok)
        self._build(args)
        if dist.main and args.n_mtp_layers and ns.mtp_weight == 0:  # generate --mtp then drafted from random weights
            print("note: --mtp-weight 0 leaves the MTP module untrained, and OUT/model keeps its random weights "
                  "(pass --set n_mtp_layers=0 to build the model without it)", file=sys.stderr)
        if saved is not None:
            self._restore(saved, where)
        self._attach()
        domains = self.data.batches.all_domains
        if dist.main:  # a second process in the same --out (a --resume while it runs) cut the tables under
            # the first's writer, and both ended in tracebacks over a part file left broken (a review)
            try:
                with os_refusal(f"--out {ns.out}: cannot create the run there", TrainError):
                    self.held.enter_context(writer_lock(ns.out))
            except RunError as e:
                raise TrainError(str(e)) from None
        self.log = TrainLog(ns.out, self.gates, domains, args.n_routed_experts,
                            self.step if saved is not None else None) if dist.main else None
        self.info = self._info(args, domains)
        self.flush("running")
        return self._loop()

    def _build(self, args) -> None:
        """The model, seeded, and its optimizer."""
        self._check_size(args)
        torch.manual_seed(self.ns.seed)
        self.raw = Transformer(args, dtype=torch.float32, device=self.dist.device).train()
        self.opt = make_optimizer(self.raw, self.ns)

    def _check_size(self, args) -> None:
        """A model too large for this machine's memory is refused before it is built: --set dim=1000000000000
        (or a config as large) was the allocator's RuntimeError traceback."""
        what = f"--config {self.ns.config}" + "".join(f" --set {o}" for o in self.ns.overrides)
        try:
            n = _param_count(args)
        except RuntimeError as e:  # a tensor whose size overflows: "Storage size calculation overflowed"
            raise TrainError(f"{what}: a model too large to build ({str(e).splitlines()[0]})") from None
        need, have = 16 * n, available_memory()  # float32 weights, gradients and AdamW's two moments
        if self.dist.device.type == "cpu" and have is not None and need > have:
            raise TrainError(f"{what}: {n:,} parameters need {need / 2**30:,.1f} GiB for float32 weights, gradients "
                             f"and AdamW's moments, more than the {have / 2**30:,.1f} GiB available here")

    def _attach(self) -> None:
        """The model as the steps call it (DDP over several ranks) and the routing taps on its gates."""
        self.model = self._wrap(self.raw)
        self.gates = moe_gates(self.raw)
        self.tap = RoutingTap(self.gates)
        self.gate_mods = {g.label: self.raw.get_submodule(g.prefix) for g in self.gates}

    def _default_cache(self) -> Path | None:
        """CORPUS/token_cache, or no cache where that cannot be written (a read-only corpus): saving
        it failed after the whole corpus was tokenised. An explicit --token-cache is checked up front."""
        d = self.ns.corpus / "token_cache"
        try:
            check_out_parent(d, "--token-cache", error=TrainError)
        except TrainError as e:
            if self.dist.main:
                print(f"note: the tokenised corpus is not cached ({e})", file=sys.stderr)
            return None
        return d

    def _data(self, tok) -> _Data:
        ns, dist = self.ns, self.dist
        check_corpus_dir(ns.corpus)  # before the token cache beside it is looked for
        cache = ns.token_cache or self._default_cache()
        if dist.main:  # rank 0 tokenises (and caches); the others then read its cache
            train_streams = token_streams(ns.corpus / "train.jsonl", tok, cache)
        dist.barrier()
        if not dist.main:
            train_streams = token_streams(ns.corpus / "train.jsonl", tok, cache)
        if not train_streams:  # it said "corpus too small ... lower --batch-size / --seq-len": no setting helps
            raise TrainError(f"{ns.corpus / 'train.jsonl'}: holds no documents (build the corpus with: "
                             "python -m data.build_corpus)")
        val_streams = token_streams(ns.corpus / "val.jsonl", tok, None) if (ns.corpus / "val.jsonl").exists() else {}
        batches = Batches(train_streams, ns.seq_len, ns.batch_size * dist.world, ns.mix_alpha, ns.seed)
        val = val_windows(val_streams, ns.seq_len, ns.eval_windows)
        if dist.main:
            # never sampled: its train_domains rows are NaN, and nothing said why
            _short_domains_note("never trained on", "training", train_streams, batches.domains, ns.seq_len)
            # left out of every evaluation (with none left, the run had no val loss at all)
            _short_domains_note("never evaluated", "validation", val_streams, val, ns.seq_len)
            if not val_streams:  # a missing or empty val.jsonl: the run ended with no val loss and no word why
                print(f"note: {ns.corpus / 'val.jsonl'} is missing or holds no documents: the run has no "
                      "validation (no val loss, no train_eval rows)", file=sys.stderr)
        return _Data(batches, val, {d: int(len(s)) for d, s in train_streams.items()},
                     {d: int(len(s)) for d, s in val_streams.items()}, input_digests(ns.corpus, ns.tokenizer))

    def _restore(self, saved: dict, where: Path) -> None:
        """Model, optimizer, step and RNG from a checkpoint (flags that differ are reported)."""
        from .data import TrainError

        try:
            self.raw.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f"cannot resume from {where}: {str(e).splitlines()[0]}") from None
        self.step, self.tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
        self.saved_step = self.step
        torch.set_rng_state(saved["rng"]["torch"])
        if saved["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        if (changed := changed_flags(saved, self.ns, self.dist.world)) and self.dist.main:
            print("note: resuming with changed flags: " + ", ".join(changed), file=sys.stderr)
        if (edited := changed_inputs(saved, self.data.inputs, self.ns)) and self.dist.main:
            print(f"note: resuming on inputs whose content changed since the checkpoint was saved: {', '.join(edited)}"
                  " (the steps from here are not those the run would have made on its own)", file=sys.stderr)

    def _wrap(self, raw: Transformer):
        if self.dist.world == 1:
            return raw
        from torch.nn.parallel import DistributedDataParallel

        # NOTE: forward_sync_buffers=False: the gate biases are updated identically on every rank from
        # all-reduced loads; rank 0's copy must not be re-broadcast over them each forward.
        dev = self.dist.device
        return DistributedDataParallel(raw, device_ids=[dev.index] if dev.type == "cuda" else None,
                                       forward_sync_buffers=False,
                                       find_unused_parameters=len(raw.mtp) > 0 and self.ns.mtp_weight == 0)

    def _info(self, args, domains: list[str]) -> dict:
        ns, d = self.ns, self.data
        return {"status": "running", "format": 1, "kind": "train", "run_id": self.run_id, "started": time.time(),
                "updated": time.time(),
                "step": self.step, "steps": ns.steps, "tokens_seen": self.tokens_seen, "world": self.dist.ranks.describe(),
                "device": str(self.dist.device), "domains": domains, "gates": [g.label for g in self.gates],
                "gate_layers": {g.label: g.layer for g in self.gates}, "flags": config_record(ns),
                "model_args": args.to_dict(), "params": self.raw.param_counts(), "tables": TABLES,
                "train_tokens": d.train_tokens, "val_tokens": d.val_tokens,
                "domain_weights": dict(zip(d.batches.domains, map(float, d.batches.weights)))}

    def flush(self, status: str, **extra) -> None:
        """Rank 0: commit the rows so far and rewrite run.json: this run's record, and what other jobs
        noted there (an ablation's part and table; a --resume dropped them, a review). What an earlier
        session of this run wrote at its end (`SESSION_KEYS`: a final evaluation, a stop reason) is
        not kept: a resumed run that stops again kept the model and figures of its first end."""
        if not self.dist.main:
            return
        self.info.update(status=status, updated=time.time(), step=self.step, tokens_seen=self.tokens_seen, **extra)
        with self._writing():
            self.log.commit()
            try:
                with updating_run_json(self.ns.out, new=dict) as on_disk:
                    replace_keeping_others(on_disk, self.info, SESSION_KEYS)
            except RunError:  # an unreadable run.json: this run's own record replaces it, as it always did
                write_json_atomic(self.ns.out / "run.json", self.info)

    def _writing(self):
        """The run's rows and run.json written in this block: a write the OS refuses (a full disk) is a
        one-line TrainError naming --out; it was pyarrow's OSError traceback, chained to a second one
        from marking the run interrupted."""
        return os_refusal(f"--out {self.ns.out}: cannot write the run's rows and run.json", TrainError)

    # --------------------------------------------------------------------------------- steps
    def _loop(self) -> dict:
        from tqdm.auto import tqdm

        ns = self.ns
        self.bar = tqdm(total=ns.steps, initial=self.step, disable=not self.dist.main or ns.no_progress,
                        dynamic_ncols=True, mininterval=1.0, unit="step")
        stop_reason = None
        try:  # the settling, the final evaluation and the save too: a stop there left run.json 'running'
            while self.step < ns.steps:
                row, domain_loss, loads = self._train_step()
                self._log_step(row, domain_loss, loads)
                self._check_finite(row)
                stop_reason = self._after_step()
                if stop_reason:
                    break
            self.bar.close()
            if not stop_reason:
                self._settle()
                return self._finish()
        except BaseException as e:
            self.bar.close()
            if self.info.get("status") != "complete":  # a stop said "KeyboardInterrupt: " (SIGTERM "_Terminated: ")
                why = (str(e) or "Ctrl-C") if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
                try:
                    self.flush("interrupted", error=why.splitlines()[0])
                except TrainError:  # a full disk: run.json cannot be marked either; the run's own error first
                    if not isinstance(e, TrainError):
                        raise
            raise
        self.flush("interrupted", stop_reason=stop_reason)
        if self.dist.main:
            print(f"stopped after step {self.step} ({stop_reason}); continue with --resume")
        return self.info

    def _check_finite(self, row: dict) -> None:
        """A loss or gradient that is no longer a number never comes back: stop at once, before a
        checkpoint saves broken weights (the row is in train_steps; a non-finite gradient was not
        applied, and the last checkpoint predates the step). The gradient counts too: a finite loss
        with an infinite gradient updated the weights to NaN, and the next checkpoint kept them."""
        if math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]):
            return
        what, key = ("loss", "loss") if not math.isfinite(row["loss"]) else ("gradient norm", "grad_norm")
        where = (f"--resume from {self.ns.out / 'checkpoint'}, which holds step {self.saved_step}, the last saved "
                 "before it," if self.saved_step is not None else
                 "start again (no checkpoint was saved before it: see --checkpoint-every)")
        raise TrainError(f"the training {what} became {row[key]} "
                         f"at step {row['step']} (loss {row['loss']:.4g}, lr {row['lr']:.3g}, gradient norm "
                         f"{row['grad_norm']:.3g}): the run diverged. Lower --lr (or raise --warmup-steps) and {where}")

    def _train_step(self) -> tuple[dict, list[float], torch.Tensor]:
        """One optimizer step on the global batch; returns its train_steps row, each domain's loss in
        the batch, and the loads [G, E] of every gate over the global batch."""
        ns, dist, raw = self.ns, self.dist, self.raw
        t0 = time.perf_counter()
        domains = self.data.batches.all_domains
        dom_index = torch.tensor([domains.index(d) for d in self.data.batches.domains], device=dist.device)
        x, dom = self.data.batches.get(self.step, dist.rank, dist.world)
        x, dom = x.to(dist.device), dom_index[dom.to(dist.device)]
        lr = lr_at(self.step, ns)
        for group in self.opt.param_groups:
            group["lr"] = lr
        o = forward_losses(self.model, raw, self.tap, x, ns, train=True)
        self.opt.zero_grad(set_to_none=True)
        o.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), ns.grad_clip or float("inf")))
        if math.isfinite(grad_norm):  # else not applied: _check_finite stops the run after logging this step
            self.opt.step()
        B, D = x.shape[0], len(domains)
        ones = torch.ones(B, device=dist.device)
        s = dist.sum(lm=o.lm_rows.sum(), mtp=o.mtp_rows.sum() if o.mtp_rows is not None else torch.zeros((), device=dist.device),
                     aux=o.aux * B, loss=o.loss.detach() * B, rows=torch.tensor(float(B), device=dist.device),
                     domain_loss=torch.zeros(D, device=dist.device).index_add_(0, dom, o.lm_rows),
                     domain_rows=torch.zeros(D, device=dist.device).index_add_(0, dom, ones), loads=o.loads)
        if ns.balance == "aux-free" and ns.bias_update_speed > 0:
            for gi, g in enumerate(self.gates):
                update_bias(self.gate_mods[g.label].bias, s["loads"][gi], bias_speed_at(self.step, ns))
        self.step += 1
        n = float(s["rows"])
        step_tokens = n * ns.seq_len
        self.tokens_seen += int(step_tokens)
        dt = time.perf_counter() - t0
        self.recent_tps.append(step_tokens / dt)
        ds, dc = s["domain_loss"].tolist(), s["domain_rows"].tolist()
        row = {"step": self.step, "lr": lr, "loss": float(s["loss"]) / n, "lm_loss": float(s["lm"]) / n,
                "mtp_loss": float(s["mtp"]) / n if o.mtp_rows is not None else None,  # null without MTP
                "aux_loss": float(s["aux"]) / n, "grad_norm": grad_norm, "tokens": int(step_tokens),
                "tokens_seen": self.tokens_seen, "step_time_s": dt, "tokens_per_s": step_tokens / dt,
               "elapsed_s": time.perf_counter() - self.t_start}
        return row, [a / b if b else float("nan") for a, b in zip(ds, dc)], s["loads"]

    def _log_step(self, row: dict, domain_loss: list[float], loads: torch.Tensor) -> None:
        if self.dist.main:
            biases = [self.gate_mods[g.label].bias for g in self.gates]
            with self._writing():  # a table's rows go to disk once they fill a row group
                self.log.step(row, domain_loss, loads, biases)
                if self.step % self.ns.load_every == 0 and self.gates:
                    self.log.loads(self.step, loads, biases, row["tokens"], self.ns.seq_len)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['lm_loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)

    def _after_step(self) -> str | None:
        """Evaluate, checkpoint and flush on schedule; the reason to stop early, if any."""
        ns = self.ns
        last = self.step == ns.steps
        if ns.eval_every and self.step % ns.eval_every == 0 and not last:
            res = self.evaluate()
            if res and self.dist.main:
                self.bar.write(f"step {self.step}: val loss {res['val_loss']:.3f} " + " ".join(
                    f"{d}={res[f'val_loss_{d}']:.3f}" for d in sorted(self.data.val)))
        stop_reason = None
        if ns.stop_at is not None and self.step >= ns.stop_at and not last:
            stop_reason = f"--stop-at {ns.stop_at}"
        elif ns.time_limit is not None and not last and self._out_of_time():
            stop_reason = f"--time-limit {ns.time_limit} min"
        if stop_reason or (ns.checkpoint_every and self.step % ns.checkpoint_every == 0) or last:
            # the rows first: a kill between the two leaves rows past the checkpoint, which a resume drops and
            # records again; saved first, the checkpoint was past rows that no resume recorded (a review)
            self.flush("running")
            if self.dist.main:
                save_state(ns.out / "checkpoint", self.raw, self.opt, self.step, ns, self.tokens_seen, self.run_id,
                           self.dist.world, self.data.inputs)
            self.saved_step = self.step
        elif self.step % ns.flush_every == 0:
            self.flush("running")
        return stop_reason

    def _out_of_time(self) -> bool:
        """Whether --time-limit has passed, on every rank when on any rank's clock: each rank read its own,
        rank 0 (its checkpoint and rows written after each step) later than the others, so one rank
        stopped while another went on to the next step and died in its all-reduce (a traceback, and
        torchrun's failure)."""
        return self.dist.ranks.any(time.perf_counter() - self.t_start > self.ns.time_limit * 60)

    def evaluate(self) -> dict:
        if not self.data.val:
            return {}
        res = evaluate(self.raw, self.tap, self.data.val, self.ns, self.dist)
        if self.dist.main:
            self.log.evaluation(self.step, self.tokens_seen, res)
        return res

    # ---------------------------------------------------------------------------------- end
    def _settle(self) -> None:
        """Bias-only updates after the last step (weights frozen), on loads pooled over fresh batches."""
        ns, dist = self.ns, self.dist
        if not (ns.balance == "aux-free" and ns.settle_updates and self.gates):
            return
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        # NOTE: the phase forwards (updates + 1) x batches batches after the last step's bar closed: three
        # minutes of silence after a 30-step run's one minute, the run still "running" (a tour)
        bar = tqdm(total=(ns.settle_updates + 1) * ns.settle_batches, desc="settling the bias (weights frozen)",
                   unit="batch", disable=not dist.main or ns.no_progress, leave=False)

        def settle_batch(i: int) -> torch.Tensor:  # training batches after the last step's
            return self.data.batches.get(ns.steps + i, dist.rank, dist.world)[0].to(dist.device)

        with bar:  # a batch counted once its forward pass is done, not when drawn
            history = settle_biases(self.raw, self.tap, self.gate_mods, settle_batch, ns.settle_updates,
                                    ns.settle_batches, ns.settle_speed, dist.all_reduce, done=lambda: bar.update(1))
        self.info["bias_settle"] = {"updates": ns.settle_updates, "batches_per_update": ns.settle_batches,
                                    "speed": ns.settle_speed, "seconds": time.perf_counter() - t0,
                                    "maxvio_pooled": history}
        if dist.main:
            print("bias settled (weights frozen): MaxVio over pooled batches, before -> after settling " + " ".join(
                f"{g}={h[0]:.2f}->{h[-1]:.2f}" for g, h in history.items()))

    def _finish(self) -> dict:
        """The final evaluation and the shipped model (OUT/model)."""
        ns = self.ns
        final = self.evaluate() if self.data.val else {}
        if not self.dist.main:
            return self.info
        path = save_final(self.raw, ns.out, ns.tokenizer, getattr(torch, ns.save_dtype))
        size = sum(f.stat().st_size for f in path.iterdir())
        # the run's model and held-out text, where the analysis jobs (importance, steer, spec, report)
        # look for a run's own: without them they took the bundled model silently (a review)
        val = ns.corpus / "val.jsonl"
        self.flush("complete", final=final, model_dir=str(path), model_bytes=size, checkpoint=checkpoint_identity(path),
                   **({"corpus": {"path": str(val.resolve())}} if val.exists() else {}),
                   tokens_per_s=float(np.median(self.recent_tps)) if self.recent_tps else None)
        print(f"done: {self.step} steps, {self.tokens_seen:,} tokens in {time.perf_counter() - self.t_start:.0f} s; "
              f"model in {path} ({size / 2**20:.1f} MiB)")
        if final:
            print(_final_line(final, sorted(self.data.val), [g.label for g in self.gates]))
        return self.info


def _final_line(final: dict, domains: list[str], gates: list[str]) -> str:
    """The closing summary; a figure the run never measured (no MTP module, or --mtp-weight 0 leaving its
    gate unrouted, no MoE layer) is left out rather than printed as 'nan' or as a label alone."""
    vio = {g: final[f"val_maxvio_{g}"] for g in gates}
    line = "  val loss " + " ".join(f"{d}={final[f'val_loss_{d}']:.3f}" for d in domains)
    measured = [f"{g}={v:.2f}" for g, v in vio.items() if math.isfinite(v)]
    if measured:  # none: a model without MoE layers printed the label alone
        line += "  MaxVio_global " + " ".join(measured)
    if math.isfinite(final["val_mtp_agree"]):
        line += f"  MTP agreement {final['val_mtp_agree']:.1%}"
    return line
