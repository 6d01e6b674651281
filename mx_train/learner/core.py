"""The :class:`Learner`: the one object of the learner package that owns state (the model and its
scorer, the device and compute dtype, fp32 master weights, the phase-aware optimizer, the
data-parallel rank, the weight version) and the two updates that change it.

The pure parts live beside it: the losses (:mod:`.losses`), collation and the plan of an update
(:mod:`.collation`), chunked log-probs (:mod:`.logprobs`); :mod:`.fsdp` shards this same class.

**The policy update** (:meth:`Learner.update`):

1. drops transitions of inactive roles (the co-evolution freeze: they never enter the loss or its
   normaliser) and those with nothing to train, and selects the optimizer state of the active-role
   set (:mod:`.optim`);
2. returns without touching the weights when the batch has no gradient signal (every advantage is
   zero and there is no KL or entropy term): no forward, no optimizer step, no version bump;
3. plans ``ppo_epochs`` passes of mini-batches (``mini_batch_size`` sequences, or ``mini_batches``
   equal parts; reshuffled after the first epoch);
4. old log-probs: ``current`` (one optimizer step: the detached log-probs of the training forward,
   no extra pass), ``sampling`` (the sampler's) or ``recompute`` (one no-grad pass before any
   parameter changes); reference log-probs when a KL penalty is on;
5. per mini-batch: micro-batches by a **token budget** -- packed rows without padding where the
   model takes a 4-D attention mask, else the aligned padded layout (:mod:`.collation`) --,
   gradients accumulate across them, the loss is normalised by the mini-batch's token/sequence
   counts (so the gradient equals one big batch's), then clip and step (skipped on an all-zero
   gradient). The policy-gradient term is re-weighted by the off-policy correction when the
   sampler is not this learner's own forward pass (:meth:`Learner.off_policy_correction`);
6. pushes the new weights to the engine if any step was taken.

:meth:`Learner.sft_step` is one supervised step with the same micro-batching, accumulation,
data-parallel split and skip rules: the token-mean NLL of the masked response tokens, each scored
at the temperature its turn records (SFT examples record 1).

Data parallel (FSDP): every rank receives the whole batch and computes the same plan and counts;
rank ``r`` trains the sequences ``r, r + W, ...`` of each mini-batch with the loss normalised by the
*global* counts, and FSDP sums the ranks' gradients (:func:`mx_train.learner.fsdp.shard_scorer`
sets the divide factor to 1), so the gradient equals the single-process one. Ranks with fewer
micro-batches run padding batches so the collectives line up.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mx_train.learner.collation import (
    MicroBatch,
    Seq,
    SequenceLike,
    as_seq,
    batch_counts,
    collate,
    mask_kind_for,
    micro_batches,
    packing_support,
    plan_mini_batches,
)
from mx_train.learner.config import LearnerConfig
from mx_train.learner.losses import aggregate, policy_objective

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WeightSync = Callable[[dict[str, Any]], None]


class DataParallel(Protocol):
    """What the learner needs from a process group (see :class:`mx_train.learner.fsdp.DistContext`)."""

    rank: int
    world_size: int

    def all_max(self, value: int) -> int: ...

    def all_sum(self, values: list[float]) -> list[float]: ...


def _model_dtype(model: Any) -> torch.dtype:
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _phase_key(roles: Iterable[str] | None) -> str:
    return "+".join(sorted(roles)) if roles is not None else "all"


class Learner:
    """Trains one causal LM with a registered policy loss (see :mod:`mx_train.learner`).

    Args:
        model: a ``transformers`` causal LM.
        config: :class:`LearnerConfig` or a dict of its fields.
        tokenizer: optional; only used for the pad token id.
        on_weights_updated: called after every update that changed the weights, with the served
            weights (a state dict under the base model's names; copy tensors you keep).
        name: for logs and metrics.
        scorer, dist: set by :class:`mx_train.learner.fsdp.ShardedLearner` (an FSDP-sharded scorer
            and the data-parallel group); single-process learners leave them ``None``.
    """

    def __init__(
        self,
        model: Any,
        config: LearnerConfig | Mapping[str, Any] | None = None,
        *,
        tokenizer: Any = None,
        on_weights_updated: WeightSync | None = None,
        name: str = "policy",
        scorer: Any = None,
        dist: DataParallel | None = None,
    ) -> None:
        import torch

        from mx_train.learner.optim import PhaseOptimizer
        from mx_train.learner.precision import MasterWeights

        self.config = config if isinstance(config, LearnerConfig) else LearnerConfig.from_dict(config)
        self.config.validate()
        cfg = self.config
        self.name = name
        self.tokenizer = tokenizer
        self.on_weights_updated = on_weights_updated
        self.dist = dist
        self.sharded = scorer is not None
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self.is_peft = False
        self.private_copy = False  # trains a copy in another dtype than the model given (the engine's)
        given = model
        if self.sharded:
            if cfg.kl_coef != 0.0 or cfg.lora is not None:
                raise NotImplementedError("the FSDP learner supports full fine-tuning without a KL reference")
            self.compute_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
            self.autocast = False
        else:
            model, scorer = self._prepare_model(model)
        self.model = model
        self.scorer = scorer
        self.mask_kind = self._packing(model)
        # Eval mode between updates: the rollout backend may generate with this very model, and HF
        # drops the KV cache (use_cache=False) of a checkpointing model in train mode. Updates switch
        # train mode on around their passes (:meth:`training_mode`).
        self.model.train(False)
        self.pad_token_id = self._pad_id(tokenizer)
        self.ref_model = None
        if cfg.kl_coef != 0.0 and not self.is_peft:
            # A frozen copy of the starting weights (with LoRA, disabling the adapter gives them).
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.master: MasterWeights | None = None
        low = any(p.dtype != torch.float32 for p in params)
        if not self.sharded and ((low and cfg.master_weights == "auto") or cfg.optimizer_offload):
            where = torch.device("cpu") if cfg.optimizer_offload else self.device
            self.master = _shared_masters(self.model, params, where)
            if self.private_copy and _model_dtype(given) == torch.float32:
                # Masters start from the fp32 weights given, not from their rounded copy.
                self.master.load_from([p for p in given.parameters() if p.requires_grad])
            params = self.master.masters
        self.opt = PhaseOptimizer(params, cfg)
        # (phase key, thread, outcome) of a switch started ahead by prepare_phase
        self._prepared: tuple[str, threading.Thread, dict[str, Any]] | None = None
        self._switched_ahead: str | None = None
        self.version = 0  # optimizer steps taken (the weight version the engine serves)

    def _prepare_model(self, model: Any) -> tuple[Any, Any]:
        """The model this learner trains (in the compute dtype, on its device, checkpointing and LoRA
        as configured) and its scorer; sets ``compute_dtype``, ``autocast`` and ``is_peft``."""
        import torch

        from mx_train.learner.logprobs import ResponseScorer
        from mx_train.learner.precision import resolve_compute

        cfg = self.config
        own = _model_dtype(model)
        want, self.autocast = resolve_compute(cfg.dtype, own, self.device)
        if want != own:
            # Never change the dtype of the model we were given: it may be the rollout engine's.
            # Train a private copy; the trainer syncs it into the engine after each update.
            model = copy.deepcopy(model).to(device=self.device, dtype=want)
            self.private_copy = True
        else:
            model = model.to(device=self.device)
        # Under autocast (fp32 parameters, native bf16 on this device) the forward computes in bf16
        # while the fp32 parameters stay the master weights.
        self.compute_dtype = torch.bfloat16 if self.autocast else want
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        if cfg.lora is not None:
            from mx_train.learner.lora import wrap_lora

            model = wrap_lora(model, cfg.lora)
            self.is_peft = True
        return model, ResponseScorer(model)

    def _packing(self, model: Any) -> str | None:
        """The packed layout's mask kind for ``model``, or ``None`` for the aligned layout."""
        setting = self.config.packing
        if setting == "off":
            return None
        lm = getattr(self.scorer, "lm", model)
        why = packing_support(lm)
        if why is not None:
            if setting == "on":
                raise ValueError(f"learner.packing is 'on' but {why}")
            logger.info("%s: aligned (padded) micro-batches: %s", self.name, why)
            return None
        return mask_kind_for(lm)

    def sampler_differs(self) -> bool:
        """Whether the rollouts were sampled by something other than this learner's own forward
        pass: another engine it pushes weights into (vLLM, an FSDP group's serving copy), a private
        copy in another dtype, or bf16 autocast over the engine's fp32 model."""
        return bool(self.autocast or self.private_copy or self.sharded or self.on_weights_updated is not None)

    def off_policy_correction(self) -> str:
        """The correction ``off_policy_correction`` resolves to (``auto``: ``tis`` when
        :meth:`sampler_differs`, else ``none``)."""
        name = self.config.off_policy_correction
        if name != "auto":
            return name
        return "tis" if self.sampler_differs() else "none"

    # ---------------------------------------------------------------- compatibility views
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        self.settle_phase()
        return self.opt.optimizer

    @property
    def lr_scheduler(self) -> Any:
        self.settle_phase()
        return self.opt.lr_scheduler

    @property
    def rank(self) -> int:
        return self.dist.rank if self.dist is not None else 0

    @property
    def world_size(self) -> int:
        return self.dist.world_size if self.dist is not None else 1

    def _pad_id(self, tokenizer: Any) -> int:
        if self.config.pad_token_id is not None:
            return int(self.config.pad_token_id)
        for obj in (tokenizer, getattr(self.model, "config", None), getattr(self.model, "generation_config", None)):
            for attr in ("pad_token_id", "eos_token_id"):
                v = getattr(obj, attr, None) if obj is not None else None
                if isinstance(v, list):
                    v = v[0] if v else None
                if v is not None:
                    return int(v)
        return 0

    # ---------------------------------------------------------------- forward
    def forward(
        self, mb: MicroBatch, *, with_entropy: bool, entropy_grad: bool = False, scorer: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs ``[B, R]`` of the responses (and entropies), each turn at the temperature
        it records (:func:`mx_agents.transition.sampled_temperature`; the padding batch's: 1)."""
        import torch

        # Each turn is scored at the temperature it was sampled at (one global temperature would bias
        # the ratio of every turn a design sampled at its own); a plain float when they all agree.
        temps = [s.temperature for s in mb.seqs] or [1.0]
        per_turn: Any = temps[0] if len(set(temps)) <= 1 else torch.tensor(
            temps, dtype=torch.float32, device=mb.input_ids.device)
        extra = {} if mb.response_index is None else {"response_index": mb.response_index}
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return (scorer or self.scorer)(
                mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids,
                temperature=per_turn, chunk=self.config.logits_chunk_tokens,
                with_entropy=with_entropy, entropy_grad=entropy_grad, **extra,
            )

    def micro_batches(self, seqs: list[Seq]) -> list[MicroBatch]:
        return micro_batches(seqs, self.config.micro_batch_tokens, self.pad_token_id, self.device,
                             mask_kind=self.mask_kind, shared_prefix=self.config.shared_prefix_tokens)

    def padding_batch(self) -> MicroBatch:
        """A one-token micro-batch with nothing trained: a rank with fewer micro-batches than its
        peers runs it so every rank enters FSDP's collectives the same number of times."""
        seq = Seq(prompt=[self.pad_token_id], response=[self.pad_token_id], mask=[0.0], advantage=0.0,
                  sampling_logprobs=None)
        return collate([seq], self.pad_token_id, self.device)

    def local_share(self, seqs: list[Seq]) -> list[Seq]:
        """This rank's part of ``seqs`` (every ``world_size``-th, from ``rank``)."""
        return seqs[self.rank :: self.world_size]

    def aligned(self, batches: list[MicroBatch]) -> list[MicroBatch | None]:
        """``batches`` padded with ``None`` to the largest count across ranks."""
        n = self.dist.all_max(len(batches)) if self.dist is not None else len(batches)
        return [*batches, *([None] * (n - len(batches)))]

    def fill_logprobs(self, seqs: list[Seq], attr: str, ref: bool = False) -> None:
        import torch

        scorer, ctx = self._ref_context() if ref else (self.scorer, contextlib.nullcontext())
        with torch.no_grad(), ctx:
            for mb in self.aligned(self.micro_batches(seqs)):
                if mb is None:
                    self.forward(self.padding_batch(), with_entropy=False, scorer=scorer)
                    continue
                logprobs, _ = self.forward(mb, with_entropy=False, scorer=scorer)
                for i, s in enumerate(mb.seqs):
                    setattr(s, attr, logprobs[i, : len(s.response)].detach().float().cpu())

    def _ref_context(self) -> tuple[Any, Any]:
        """The reference scorer and a context manager under which it computes reference log-probs."""
        from mx_train.learner.logprobs import ResponseScorer

        if self.is_peft:
            return self.scorer, self.model.disable_adapter()
        return ResponseScorer(self.ref_model), contextlib.nullcontext()

    # ---------------------------------------------------------------- the optimizer step
    def clip_and_step(self) -> tuple[float, bool]:
        """Clip the gradient norm and step; returns ``(norm, stepped)``.

        No step is taken when the gradient is all zero (a frozen role, all-zero advantages): AdamW
        would still move the weights by its momentum and weight decay. A non-finite norm skips the
        step too (it would poison Adam's moments). Gradients are freed either way.
        """
        import torch

        if self.master is not None:
            self.master.grads_to_master()
        params = [p for p in self.opt.params if p.grad is not None]
        if not params:
            self.opt.zero_grad()
            return 0.0, False
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        norm_t = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm_t, "full_tensor"):
            norm_t = norm_t.full_tensor()
        norm = float(norm_t)
        if not torch.isfinite(norm_t) or norm == 0.0:
            if norm != 0.0:
                logger.warning("%s: non-finite gradient norm, optimizer step skipped", self.name)
            self.opt.zero_grad()
            return norm, False
        self.opt.step()
        self.opt.zero_grad()  # free gradients before the next rollout
        if self.master is not None:
            self.master.master_to_model()
        self.version += 1
        return norm, True

    def prepare_phase(self, roles: Iterable[str] | None) -> None:
        """Start :meth:`switch_phase`'s optimizer-state switch to ``roles``' phase in a background
        thread, when it is not the current phase. Why: on a CPU the leaving phase's AdamW moments are
        parked on disk and the arriving phase's read back (:mod:`.optim`), 3-10 s for a 135M model on
        the 2-core development machine; the trainer calls this as a step's rollout starts, which does
        not touch the optimizer, so the switch runs beside the rollout instead of before the update.
        :meth:`switch_phase` (and so :meth:`update`) waits for it; the resulting state is the same."""
        key = _phase_key(roles)
        if self._prepared is not None or key == self.opt.phase or self.opt.mode != "per_role":
            return
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["changed"] = self.opt.switch(key)
            except BaseException as exc:  # noqa: BLE001 - re-raised by settle_phase in the caller
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"{self.name}-phase-switch", daemon=True)
        self._prepared = (key, thread, outcome)
        thread.start()

    def settle_phase(self) -> None:
        """Wait for a switch started by :meth:`prepare_phase` (every use of the optimizer state
        does); what it changed is reported by the next :meth:`switch_phase`."""
        if self._prepared is None:
            return
        key, thread, outcome = self._prepared
        thread.join()
        self._prepared = None
        if "error" in outcome:
            raise outcome["error"]
        if outcome["changed"]:
            self._switched_ahead = key

    def switch_phase(self, roles: Iterable[str] | None) -> bool:
        """Select the optimizer state of the active-role set ``roles`` (see :mod:`.optim`)."""
        key = _phase_key(roles)
        self.settle_phase()
        changed = self.opt.switch(key)
        if self._switched_ahead is not None:
            changed = changed or self._switched_ahead == key
            self._switched_ahead = None
        if self.config.phase_lr:
            self.opt.set_lr(float(self.config.phase_lr.get(key, self.config.lr)))
        if changed:
            logger.info("%s: optimizer phase -> %s (%s, lr %.3g)", self.name, key, self.config.phase_optimizer,
                        self.opt.current_lr())
        return changed

    # ---------------------------------------------------------------- public API
    def prepare(self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None) -> list[Seq]:
        active = None if active_roles is None else set(active_roles)
        seqs = []
        for t in transitions:
            if active is not None and t.role not in active:
                continue  # the frozen role: out of the loss and out of its normaliser
            s = as_seq(t)
            if s.trained_tokens > 0:
                seqs.append(s)
        return seqs

    def compute_gradients(
        self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """Zero the gradients and accumulate those of the whole batch (no step): for tests/diagnostics."""
        self.opt.zero_grad()
        self.model.zero_grad(set_to_none=True)
        seqs = self.prepare(transitions, active_roles)
        if not seqs:
            return {"tokens": 0.0}
        local = self.local_share(seqs)
        mode = self.config.resolved_old_logprobs(1)
        with self.training_mode():
            self._set_old_and_ref(seqs, mode, local)
            return self._accumulate(seqs, local, mode)

    @contextlib.contextmanager
    def training_mode(self) -> Iterator[None]:
        """Train mode for the passes of an update when checkpointing activations (HF checkpoints
        only in train mode), restored afterwards; without checkpointing the model stays in eval
        mode (no dropout), as before."""
        was = self.model.training
        self.model.train(self.config.gradient_checkpointing)
        try:
            yield
        finally:
            self.model.train(was)

    def update(
        self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """One policy update (see module doc). Returns averaged metrics: loss, pg_loss, clip_frac,
        approx_kl, kl, entropy, grad_norm, lr, tokens, sequences, total_tokens, tokens_per_s, time_s,
        optimizer_steps, skipped (1.0 when no step was taken) and skip_reason codes."""
        t0 = time.perf_counter()
        self.settle_phase()
        with self.training_mode():
            seqs = self.prepare(transitions, active_roles)
            if not seqs:
                return {"skipped": 1.0, "skipped_no_tokens": 1.0, "tokens": 0.0, "sequences": 0.0,
                        "optimizer_steps": 0.0}
            self.switch_phase(active_roles)
            if not _has_signal(self.config, seqs):
                # All advantages zero and no KL/entropy term: the gradient is exactly zero. AdamW would
                # still move the weights (momentum, weight decay), so no step at all.
                return {"skipped": 1.0, "skipped_zero_advantage": 1.0,
                        "tokens": float(sum(s.trained_tokens for s in seqs)), "sequences": float(len(seqs)),
                        "optimizer_steps": 0.0, "policy_version": float(self.version)}
            cfg = self.config
            steps = plan_mini_batches(seqs, mini_batch_size=cfg.mini_batch_size, mini_batches=cfg.mini_batches,
                                      epochs=cfg.ppo_epochs, seed=self.version)
            mode = cfg.resolved_old_logprobs(len(steps))
            local_all = self.local_share(seqs)
            if mode == "recompute" or cfg.kl_coef != 0.0:
                # This rank's sequences across all steps, in a stable order (whole batch per rank is
                # fine: the same for every rank, so micro-batch counts line up).
                owned = {id(s) for st in steps for s in self.local_share(st)}
                local_all = [s for s in seqs if id(s) in owned]
            self._set_old_and_ref(seqs, mode, local_all)
            per_step: list[dict[str, float]] = []
            stepped = 0
            lr = self.current_lr()  # the LR of this update's first optimizer step (the scheduler moves on per step)
            for st in steps:
                self.opt.zero_grad()
                m = self._accumulate(st, self.local_share(st), mode)
                m["grad_norm"], ok = self.clip_and_step()
                stepped += int(ok)
                per_step.append(m)
            if stepped:
                self.push_weights()
        elapsed = time.perf_counter() - t0
        keys = {k for m in per_step for k in m}
        metrics = {k: sum(m.get(k, 0.0) for m in per_step) / len(per_step) for k in keys}
        if "off_policy/mismatch_max" in keys:
            metrics["off_policy/mismatch_max"] = max(m.get("off_policy/mismatch_max", 0.0) for m in per_step)
        metrics["tokens"] = float(sum(s.trained_tokens for s in seqs))
        metrics["sequences"] = float(len(seqs))
        metrics["total_tokens"] = float(sum(s.length for s in seqs))
        metrics["time_s"] = elapsed
        metrics["tokens_per_s"] = metrics["total_tokens"] / max(elapsed, 1e-9)
        metrics["lr"] = lr
        metrics["policy_version"] = float(self.version)
        metrics["optimizer_steps"] = float(stepped)
        metrics["skipped"] = 0.0 if stepped else 1.0
        return metrics

    def _set_old_and_ref(self, seqs: list[Seq], mode: str, local: list[Seq]) -> None:
        import torch

        if mode == "sampling":
            for s in seqs:
                if s.sampling_logprobs is None:
                    raise ValueError("old_logprobs='sampling' but a transition has no sampling logprobs")
                s.old = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
        elif mode == "recompute":
            self.fill_logprobs(local, "old")
        if self.config.kl_coef != 0.0:
            self.fill_logprobs(local, "ref", ref=True)

    def _accumulate(self, step_seqs: list[Seq], local: list[Seq], mode: str) -> dict[str, float]:
        """Backward over this rank's ``local`` part of ``step_seqs`` (normalised as the whole of
        ``step_seqs``); grads accumulate, no optimizer step. Metrics are summed over ranks.

        ``mode`` is the resolved ``old_logprobs``: unless the old log-probs *are* the sampler's, the
        sampler's log-probs (where every sequence of the step has them) give the off-policy
        correction (:meth:`off_policy_correction`) and the mismatch metrics, overall and per role.
        """
        cfg = self.config
        counts = batch_counts(step_seqs, cfg.norm_length)
        want_entropy = cfg.log_entropy or cfg.entropy_coef != 0.0
        correction = self.off_policy_correction()
        with_sampler = mode != "sampling" and all(s.sampling_logprobs is not None for s in step_seqs)
        if not with_sampler:
            if correction != "none" and cfg.off_policy_correction != "auto":
                raise ValueError(
                    f"off_policy_correction {correction!r} needs the sampler's log-probs of every transition and "
                    f"old log-probs of the learner (old_logprobs is {mode!r})")
            correction = "none"
        tok_stats = ["clip_frac", "approx_kl"] + (list(_OFF_POLICY_STATS) if with_sampler else [])
        roles = sorted({s.role for s in step_seqs})
        keys = (["loss", "pg_loss"] + [f"{k}_sum" for k in tok_stats] + (["kl"] if cfg.kl_coef != 0.0 else [])
                + (["entropy"] if want_entropy else []))
        keys += [f"tokens/{r}" for r in roles] + [f"{k}_sum/{r}" for r in roles for k in tok_stats]
        totals = dict.fromkeys(keys, 0.0)
        mismatch_max = 0.0
        for mb in self.aligned(self.micro_batches(local) if local else []):
            if mb is None:
                logprobs, entropy = self.forward(self.padding_batch(), with_entropy=False)
                (logprobs.sum() * 0.0).backward()
                continue
            logprobs, entropy = self.forward(mb, with_entropy=want_entropy, entropy_grad=cfg.entropy_coef != 0.0)
            old = mb.old if mb.old is not None else logprobs.detach()
            groups = {r: _rows_of(mb, r) for r in roles}
            loss, stats = policy_objective(
                logprobs, old, mb.advantages, mb.mask, counts, cfg, ref_logprobs=mb.ref, entropy=entropy,
                sampling_logprobs=mb.sampling if with_sampler else None, correction=correction, groups=groups,
            )
            loss.backward()
            totals["loss"] += float(loss.detach())
            mismatch_max = max(mismatch_max, stats.pop("mismatch_max", 0.0))
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        if self.dist is not None:
            totals = dict(zip(keys, self.dist.all_sum([totals[k] for k in keys]), strict=True))
            if with_sampler:  # a max over ranks through the one collective there is: a sum of one-hot slots
                slots = [0.0] * self.world_size
                slots[self.rank] = mismatch_max
                mismatch_max = max(self.dist.all_sum(slots))
        metrics = {"loss": totals["loss"], "pg_loss": totals["pg_loss"], "tokens": float(counts.tokens),
                   "sequences": float(counts.sequences)}
        for k in ("kl", "entropy"):
            if k in totals:
                metrics[k] = totals[k]
        for k in tok_stats:
            name = _METRIC_NAMES.get(k, k)
            metrics[name] = totals[f"{k}_sum"] / max(counts.tokens, 1)
            for r in roles:
                metrics[f"{name}/{r}"] = totals[f"{k}_sum/{r}"] / max(totals[f"tokens/{r}"], 1.0)
        if with_sampler:
            metrics["off_policy/mismatch_max"] = mismatch_max
        metrics["off_policy/corrected"] = float(correction != "none")
        return metrics

    def sft_step(self, examples: Iterable[SequenceLike]) -> dict[str, float]:
        """One supervised step (see module doc): token-mean NLL, then clip and step."""
        t0 = time.perf_counter()
        seqs = [s for s in (as_seq(e) for e in examples) if s.trained_tokens > 0]
        if not seqs:
            return {"skipped": 1.0, "tokens": 0.0}
        counts = batch_counts(seqs, self.config.norm_length)
        with self.training_mode():
            self.switch_phase(["sft"])
            self.opt.zero_grad()
            nll_total = 0.0
            for mb in self.aligned(self.micro_batches(self.local_share(seqs))):
                if mb is None:
                    logprobs, _ = self.forward(self.padding_batch(), with_entropy=False)
                    (logprobs.sum() * 0.0).backward()
                    continue
                logprobs, _ = self.forward(mb, with_entropy=False)
                loss = aggregate(-logprobs, mb.mask, "token_mean", counts)
                loss.backward()  # ranks' shares of the global mean; FSDP sums them
                nll_total += float(loss.detach())
            if self.dist is not None:
                nll_total = self.dist.all_sum([nll_total])[0]
            lr = self.current_lr()  # the LR this step applies (the scheduler moves on inside the step)
            grad_norm, stepped = self.clip_and_step()
            if stepped:
                self.push_weights()
        elapsed = time.perf_counter() - t0
        total = float(sum(s.length for s in seqs))
        return {
            "loss": nll_total,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": float(counts.tokens),
            "total_tokens": total,
            "time_s": elapsed,
            "tokens_per_s": total / max(elapsed, 1e-9),
            "skipped": 0.0 if stepped else 1.0,
        }

    def logprobs(self, transitions: Iterable[SequenceLike]) -> list[list[float]]:
        """Current per-token log-probs of each transition's response (no grad), in input order."""
        seqs = [as_seq(t) for t in transitions]
        self.fill_logprobs(seqs, "old")
        return [s.old.tolist() for s in seqs]  # type: ignore[union-attr]

    def current_lr(self) -> float:
        return self.opt.current_lr()

    def derive(self, overrides: Mapping[str, Any], name: str) -> Learner:
        """A learner on the same model (and fp32 masters) with its own optimizer and settings, e.g.
        an SFT warm start at another LR whose moments must not leak into RL."""
        child = type(self).__new__(type(self))
        child.__dict__.update(self.__dict__)
        child.config = self.config.replace(**{**dict(overrides), "lora": None})  # the model is already wrapped
        child.name = name
        from mx_train.learner.optim import PhaseOptimizer

        params = self.master.masters if self.master is not None else [p for p in self.model.parameters() if p.requires_grad]
        child.opt = PhaseOptimizer(params, child.config)
        child.version = 0
        return child

    def release(self) -> None:
        """Free this learner's optimizer state (a finished warm start); the model stays."""
        self.settle_phase()
        self.opt.zero_grad()
        self.opt.optimizer.state.clear()
        self.opt.clear_parked()

    def weights_for_sync(self) -> dict[str, Any]:
        """The full weights as the generation backend needs them (LoRA merged, base names)."""
        if not self.is_peft:
            return dict(self.model.state_dict())
        from mx_train.learner.lora import merged_weights

        return merged_weights(self.model)

    def push_weights(self) -> None:
        state = self.weights_for_sync()
        if self.on_weights_updated is not None and self.rank == 0:
            self.on_weights_updated(state)

    def fp32_weights(self) -> dict[str, Any]:
        """The trained parameters at full precision, by name: the fp32 masters when the model
        computes in a lower precision, else the model's own parameters."""
        import torch

        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.master is None:
            return {n: p.detach().float().clone() for n, p in named}
        return {n: m.detach().to(torch.float32).clone() for (n, _), m in zip(named, self.master.masters, strict=True)}

    def refresh_master(self) -> None:
        """Reload the fp32 masters from the model (after its weights were written from outside)."""
        if self.master is not None:
            self.master.model_to_master()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer (per phase), LR schedule, step count and fp32 masters (the model's own weights
        are saved separately; in bf16 they would lose what the masters hold below bf16 spacing)."""
        self.settle_phase()
        out: dict[str, Any] = {
            "optimizer_phases": self.opt.state_dict(),
            "optimizer": self.opt.optimizer.state_dict(),
            "lr_scheduler": self.opt.lr_scheduler.state_dict(),
            "version": self.version,
        }
        if self.master is not None:
            out["master"] = self.master.state_dict()
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.settle_phase()
        if "optimizer_phases" in state:
            self.opt.load_state_dict(state["optimizer_phases"])
        else:  # checkpoints from before per-phase state
            self.opt.optimizer.load_state_dict(state["optimizer"])
            self.opt.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.version = int(state["version"])
        if self.master is not None:
            if "master" in state:
                self.master.load_state_dict(state["master"])
            else:
                self.master.model_to_master()


def _shared_masters(model: Any, params: list[Any], device: Any) -> Any:
    """One fp32 master copy per model, shared by every learner of that model (an SFT warm start and
    the RL learner step the same masters, so neither sees stale weights from the other)."""
    from mx_train.learner.precision import MasterWeights

    key = (tuple(id(p) for p in params), str(device))
    cached = getattr(model, "_mx_master_weights", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    master = MasterWeights(params, device)
    object.__setattr__(model, "_mx_master_weights", (key, master))
    return master


_OFF_POLICY_STATS = ("is_weight", "is_clip_frac", "mismatch_abs", "mismatch_kl")
_METRIC_NAMES = {k: f"off_policy/{k}" for k in _OFF_POLICY_STATS}


def _rows_of(mb: MicroBatch, role: str) -> Any:
    import torch

    return torch.tensor([s.role == role for s in mb.seqs], dtype=torch.bool, device=mb.mask.device)


def _has_signal(cfg: LearnerConfig, seqs: list[Seq]) -> bool:
    """Whether the batch can have a non-zero gradient (some advantage, a KL or an entropy term)."""
    return cfg.kl_coef != 0.0 or cfg.entropy_coef != 0.0 or any(s.advantage != 0.0 for s in seqs)
