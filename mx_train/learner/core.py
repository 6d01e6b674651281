"""The :class:`Learner`: one model, its optimizer(s), precision handling and weight sync.

The update algorithms live beside it (:mod:`mx_train.learner.ppo`, :mod:`mx_train.learner.sft_step`);
this module holds what they share: the model and its scorer (chunked log-probs), the device and
compute dtype, fp32 master weights, the phase-aware optimizer, the data-parallel rank (FSDP), and
pushing weights to the generation engine.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mx_train.learner.collation import MicroBatch, Seq, SequenceLike, as_seq, collate, micro_batches
from mx_train.learner.config import LearnerConfig

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WeightSync = Callable[[dict[str, Any]], None]


class DataParallel(Protocol):
    """What the learner needs from a process group (see :class:`mx_train.fsdp.DistContext`)."""

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


class Learner:
    """Trains one causal LM with a registered policy loss (see :mod:`mx_train.learner`).

    Args:
        model: a ``transformers`` causal LM.
        config: :class:`LearnerConfig` or a dict of its fields.
        tokenizer: optional; only used for the pad token id.
        on_weights_updated: called after every update that changed the weights, with the served
            weights (a state dict under the base model's names; copy tensors you keep).
        name: for logs and metrics.
        scorer, dist: set by :func:`mx_train.fsdp.build_sharded_learner` (an FSDP-sharded scorer
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

        from mx_train.learner.logprobs import ResponseScorer
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
        if self.sharded:
            if cfg.kl_coef != 0.0 or cfg.lora is not None:
                raise NotImplementedError("the FSDP learner supports full fine-tuning without a KL reference")
            self.compute_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
            self.autocast = False
        else:
            own = _model_dtype(model)
            want = own if cfg.dtype == "auto" else (torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32)
            if want != own:
                # Never change the dtype of the model we were given: it may be the rollout engine's.
                # Train a private copy; the trainer syncs it into the engine after each update.
                model = copy.deepcopy(model).to(device=self.device, dtype=want)
            else:
                model = model.to(device=self.device)
            self.compute_dtype = want
            # fp32 parameters on a GPU: bf16 autocast compute (mixed precision with fp32 weights).
            self.autocast = self.device.type == "cuda" and want == torch.float32 and cfg.dtype == "auto"
            if cfg.gradient_checkpointing:
                model.gradient_checkpointing_enable()
                if hasattr(model, "enable_input_require_grads"):
                    model.enable_input_require_grads()
            if cfg.lora is not None:
                from mx_train.learner.lora import wrap_lora

                model = wrap_lora(model, cfg.lora)
                self.is_peft = True
            scorer = ResponseScorer(model)
        self.model = model
        self.scorer = scorer
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
            params = self.master.masters
        self.opt = PhaseOptimizer(params, cfg)
        self.version = 0  # optimizer steps taken (the weight version the engine serves)

    # ---------------------------------------------------------------- compatibility views
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt.optimizer

    @property
    def lr_scheduler(self) -> Any:
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
        self, mb: MicroBatch, *, with_entropy: bool, entropy_grad: bool = False, scorer: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs ``[B, R]`` of the responses (and entropies) at ``config.temperature``."""
        import torch

        # Each turn is scored at the temperature it was sampled at (one global temperature would bias
        # the ratio of every turn a design sampled at its own); a plain float when they all agree.
        temps = [self.config.temperature if s.temperature is None else s.temperature for s in mb.seqs]
        temperature: Any = temps[0] if len(set(temps)) <= 1 else torch.tensor(
            temps, dtype=torch.float32, device=mb.input_ids.device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return (scorer or self.scorer)(
                mb.input_ids, mb.attention_mask, mb.position_ids, mb.response_ids,
                temperature=temperature, chunk=self.config.logits_chunk_tokens,
                with_entropy=with_entropy, entropy_grad=entropy_grad,
            )

    def micro_batches(self, seqs: list[Seq]) -> list[MicroBatch]:
        return micro_batches(seqs, self.config.micro_batch_tokens, self.pad_token_id, self.device)

    def padding_batch(self) -> MicroBatch:
        """A one-token micro-batch with nothing trained: a rank with fewer micro-batches than its
        peers runs it so every rank enters FSDP's collectives the same number of times."""
        seq = Seq(prompt=[self.pad_token_id], response=[self.pad_token_id], mask=[0.0], advantage=0.0,
                  sampling_logprobs=None)
        return collate([seq], self.pad_token_id, self.device)

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

    def switch_phase(self, roles: Iterable[str] | None) -> bool:
        """Select the optimizer state of the active-role set ``roles`` (see :mod:`.optim`)."""
        key = "+".join(sorted(roles)) if roles is not None else "all"
        changed = self.opt.switch(key)
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
        from mx_train.learner.ppo import accumulate, local_share, set_old_and_ref

        self.opt.zero_grad()
        self.model.zero_grad(set_to_none=True)
        seqs = self.prepare(transitions, active_roles)
        if not seqs:
            return {"tokens": 0.0}
        local = local_share(self, seqs)
        with self.training_mode():
            set_old_and_ref(self, seqs, self.config.resolved_old_logprobs(1), local)
            return accumulate(self, seqs, local)

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
        """One policy update (:func:`mx_train.learner.ppo.ppo_update`)."""
        from mx_train.learner.ppo import ppo_update

        with self.training_mode():
            return ppo_update(self, transitions, active_roles)

    def sft_step(self, examples: Iterable[SequenceLike]) -> dict[str, float]:
        """One supervised step (:func:`mx_train.learner.sft_step.sft_step`)."""
        from mx_train.learner.sft_step import sft_step

        with self.training_mode():
            return sft_step(self, examples)

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
        cfg = {**self.config.to_dict(), **dict(overrides)}
        cfg["lora"] = None  # the model is already wrapped
        child = Learner.__new__(Learner)
        child.__dict__.update(self.__dict__)
        child.config = LearnerConfig.from_dict(cfg)
        child.config.validate()
        child.name = name
        from mx_train.learner.optim import PhaseOptimizer

        params = self.master.masters if self.master is not None else [p for p in self.model.parameters() if p.requires_grad]
        child.opt = PhaseOptimizer(params, child.config)
        child.version = 0
        return child

    def release(self) -> None:
        """Free this learner's optimizer state (a finished warm start); the model stays."""
        self.opt.zero_grad()
        self.opt.optimizer.state.clear()
        self.opt.clear_parked()

    def weights_for_sync(self) -> dict[str, Any]:
        """The full weights as the generation backend needs them (LoRA merged, base names).
        Sharded learners gather them: a collective every rank must enter; only rank 0 gets tensors."""
        if self.sharded:
            from mx_train.fsdp import full_state_dict

            return full_state_dict(self.scorer, prefix="lm.")
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
        out: dict[str, Any] = {
            "optimizer_phases": self.opt.state_dict(),
            "optimizer": self.opt.optimizer.state_dict(),
            "lr_scheduler": self.opt.lr_scheduler.state_dict(),
            "version": self.version,
        }
        if self.master is not None:
            out["master"] = self.master.state_dict()
        if self.sharded:
            from mx_train.fsdp import local_shards

            out["model_shard"] = local_shards(self.scorer)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
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
        if self.sharded and "model_shard" in state:
            from mx_train.fsdp import load_local_shards

            load_local_shards(self.scorer, state["model_shard"])


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
