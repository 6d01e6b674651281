"""The policy learner: PPO/GRPO-style updates of a Hugging Face causal LM from transitions.

One :class:`Learner` owns one model, its AdamW optimizer and LR schedule. ``update(transitions)``:

1. drops transitions of inactive roles (the co-evolution freeze: they never enter the loss or its
   normaliser) and those with nothing to train;
2. computes the *old* log-probs once, before any parameter changes, with no grad (or takes the
   backend's sampling log-probs with ``old_logprobs="sampling"``), and reference log-probs when a
   KL penalty is on;
3. splits the batch into ``mini_batches`` optimizer steps; each is cut into micro-batches by a
   **token budget** (padded prompt+response tokens per forward), gradients accumulate across them and
   the loss is normalised by the *mini-batch's* token/sequence counts, so the gradient equals that of
   one big batch; then clips the gradient norm and steps;
4. calls ``on_weights_updated(state_dict)`` so the generation backend serves the new weights.

Log-probs are computed from ``logits / temperature``, the same distribution a backend samples from
at that temperature. Sequences are laid out as ``[left pad | prompt | response | right pad]`` so all
responses start at one column and only ``R+1`` positions of logits are materialised.

Precision: ``dtype="auto"`` keeps fp32 parameters; on CUDA the forward runs under bf16 autocast
(fp32 master weights). ``dtype="bfloat16"`` stores parameters in bf16 (for models whose fp32 Adam
state would not fit). LoRA (``lora={...}``, peft) trains adapters only; the weights pushed to the
backend are the merged ones under the base model's parameter names.

Dropout is not used during updates (the model stays in eval mode unless gradient checkpointing needs
train mode), so on-policy ratios are exactly 1.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mx_train.losses import BatchCounts, LossSettings, aggregate, policy_objective

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WeightSync = Callable[[dict[str, Any]], None]


class SequenceLike(Protocol):
    """What the learner reads from a transition (``mx_agents.transition.Transition`` fits)."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None
    loss_mask: list[int] | None
    advantage: float
    role: str


@dataclass
class LearnerConfig:
    """Optimisation and loss settings of one learner (flat, so a YAML block maps onto it)."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (after warmup)
    total_steps: int | None = None  # needed by "cosine"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    max_grad_norm: float | None = 1.0
    micro_batch_tokens: int = 4096  # padded tokens per forward/backward
    mini_batches: int = 1  # optimizer steps per update (PPO-style; >1 makes clipping bite)
    policy_loss: str = "ppo_clip"
    loss_agg: str = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    norm_length: int | None = None  # seq_mean_token_sum_norm constant; default: longest response
    temperature: float = 1.0
    old_logprobs: str = "recompute"  # "recompute" | "sampling"
    device: str = "auto"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16"
    lora: dict[str, Any] | None = None  # peft.LoraConfig kwargs; None = full fine-tuning
    gradient_checkpointing: bool = False
    pad_token_id: int | None = None  # default: tokenizer/model config pad, else eos, else 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LearnerConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown learner setting(s) {unknown}; known: {sorted(known)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    def loss_settings(self) -> LossSettings:
        return LossSettings(
            policy_loss=self.policy_loss,
            loss_agg=self.loss_agg,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            entropy_coef=self.entropy_coef,
        )

    def validate(self) -> None:
        self.loss_settings().validate()
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not self.total_steps:
            raise ValueError("lr_schedule='cosine' needs total_steps")
        if self.old_logprobs not in ("recompute", "sampling"):
            raise ValueError(f"old_logprobs must be 'recompute' or 'sampling', got {self.old_logprobs!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.micro_batch_tokens < 1 or self.mini_batches < 1:
            raise ValueError("micro_batch_tokens and mini_batches must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


@dataclass
class _Seq:
    prompt: list[int]
    response: list[int]
    mask: list[float]
    advantage: float
    sampling_logprobs: list[float] | None
    old: torch.Tensor | None = None  # [len(response)]
    ref: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


@dataclass
class _MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor  # [B, R] float, trained response tokens
    response_ids: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B]
    old: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    seqs: list[_Seq] = field(default_factory=list)


def pack_by_tokens(costs: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size fits ``budget``.

    ``costs[i] = (prompt_len, response_len)``; a micro-batch of ``B`` sequences costs
    ``B * (max prompt_len + max response_len)`` tokens (the aligned layout). Longest first, greedy;
    a sequence larger than the budget gets a micro-batch of its own.
    """
    order = sorted(range(len(costs)), key=lambda i: (-(costs[i][0] + costs[i][1]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_p = max_r = 0
    for i in order:
        p, r = costs[i]
        new_p, new_r = max(max_p, p), max(max_r, r)
        if cur and (len(cur) + 1) * (new_p + new_r) > budget:
            batches.append(cur)
            cur, new_p, new_r = [], p, r
        cur.append(i)
        max_p, max_r = new_p, new_r
    if cur:
        batches.append(cur)
    return batches


def _as_seq(t: SequenceLike) -> _Seq:
    response = [int(x) for x in t.response_ids]
    mask = [1.0] * len(response) if t.loss_mask is None else [float(x) for x in t.loss_mask]
    if len(mask) != len(response):
        raise ValueError(f"loss_mask has {len(mask)} entries for {len(response)} response tokens")
    if t.logprobs is not None and len(t.logprobs) != len(response):
        raise ValueError(f"logprobs has {len(t.logprobs)} entries for {len(response)} response tokens")
    if not t.prompt_ids:
        raise ValueError("a transition needs a non-empty prompt (the first response token is predicted from it)")
    return _Seq(
        prompt=[int(x) for x in t.prompt_ids],
        response=response,
        mask=mask,
        advantage=float(t.advantage),
        sampling_logprobs=None if t.logprobs is None else [float(x) for x in t.logprobs],
    )


def _lr_lambda(cfg: LearnerConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        total = max(int(cfg.total_steps or 1) - cfg.warmup_steps, 1)
        progress = min(max(step - cfg.warmup_steps, 0) / total, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class Learner:
    """Trains one causal LM with a registered policy loss (see module doc).

    Args:
        model: a ``transformers`` causal LM (``model(input_ids, attention_mask, position_ids,
            logits_to_keep=...)`` returning ``.logits``).
        config: :class:`LearnerConfig` or a dict of its fields.
        tokenizer: optional; only used for the pad token id.
        on_weights_updated: called after every update with the served weights (a state dict of
            live tensors under the base model's names; copy them if you keep them).
        name: for logs and metrics.
    """

    def __init__(
        self,
        model: Any,
        config: LearnerConfig | Mapping[str, Any] | None = None,
        *,
        tokenizer: Any = None,
        on_weights_updated: WeightSync | None = None,
        name: str = "policy",
    ) -> None:
        import torch

        self.config = config if isinstance(config, LearnerConfig) else LearnerConfig.from_dict(config)
        self.config.validate()
        cfg = self.config
        self.name = name
        self.on_weights_updated = on_weights_updated
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        param_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.autocast = self.device.type == "cuda" and param_dtype == torch.float32
        model = model.to(device=self.device, dtype=param_dtype)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.is_peft = False
        if cfg.lora is not None:
            model = self._wrap_lora(model, cfg.lora)
        self.model = model
        self.model.train(cfg.gradient_checkpointing)
        self.pad_token_id = self._pad_id(tokenizer)
        self.ref_model = None
        if cfg.kl_coef != 0.0 and not self.is_peft:
            # A frozen copy of the starting weights (with LoRA, disabling the adapter gives them).
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.version = 0  # optimizer steps taken

    # ---------------------------------------------------------------- setup helpers
    def _wrap_lora(self, model: Any, lora: Mapping[str, Any]) -> Any:
        try:
            import peft
        except ImportError as exc:
            raise ImportError("LoRA needs peft: pip install 'metaagentx[peft]'") from exc
        kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
        kwargs.update(lora)
        kwargs.setdefault("task_type", "CAUSAL_LM")
        self.is_peft = True
        return peft.get_peft_model(model, peft.LoraConfig(**kwargs))

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

    # ---------------------------------------------------------------- batching / forward
    def _collate(self, seqs: list[_Seq]) -> _MicroBatch:
        import torch

        p_max = max(len(s.prompt) for s in seqs)
        r_max = max(len(s.response) for s in seqs)
        b = len(seqs)
        ids = torch.full((b, p_max + r_max), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, p_max + r_max), dtype=torch.long)
        mask = torch.zeros((b, r_max), dtype=torch.float32)
        resp = torch.full((b, r_max), self.pad_token_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            p, r = len(s.prompt), len(s.response)
            ids[i, p_max - p : p_max] = torch.tensor(s.prompt)
            attn[i, p_max - p : p_max + r] = 1
            if r:
                ids[i, p_max : p_max + r] = torch.tensor(s.response)
                resp[i, :r] = torch.tensor(s.response)
                mask[i, :r] = torch.tensor(s.mask)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        mb = _MicroBatch(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            position_ids=pos.to(self.device),
            mask=mask.to(self.device),
            response_ids=resp.to(self.device),
            advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32, device=self.device),
            seqs=seqs,
        )
        for attr in ("old", "ref"):
            vals = [getattr(s, attr) for s in seqs]
            if all(v is not None for v in vals):
                t = torch.zeros((b, r_max), dtype=torch.float32)
                for i, v in enumerate(vals):
                    t[i, : v.numel()] = v
                setattr(mb, attr, t.to(self.device))
        return mb

    def _forward(self, model: Any, mb: _MicroBatch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs ``[B, R]`` of the responses (and entropies) at ``config.temperature``."""
        import torch

        r_max = mb.response_ids.shape[1]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            out = model(
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                position_ids=mb.position_ids,
                logits_to_keep=r_max + 1,
                use_cache=False,
            )
        logits = out.logits[:, -(r_max + 1) : -1, :].float() / self.config.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logprobs = logp_all.gather(-1, mb.response_ids.unsqueeze(-1)).squeeze(-1)
        entropy = None
        if with_entropy:
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logprobs, entropy

    def _micro_batches(self, seqs: list[_Seq]) -> list[_MicroBatch]:
        groups = pack_by_tokens([(len(s.prompt), len(s.response)) for s in seqs], self.config.micro_batch_tokens)
        return [self._collate([seqs[i] for i in g]) for g in groups]

    def _fill_logprobs(self, seqs: list[_Seq], attr: str, model: Any) -> None:
        import torch

        with torch.no_grad():
            for mb in self._micro_batches(seqs):
                logprobs, _ = self._forward(model, mb, with_entropy=False)
                for i, s in enumerate(mb.seqs):
                    setattr(s, attr, logprobs[i, : len(s.response)].detach().float().cpu())

    def _ref_context(self) -> tuple[Any, Any]:
        """The reference model and a context manager under which it computes reference log-probs."""
        import contextlib

        if self.is_peft:
            return self.model, self.model.disable_adapter()
        return self.ref_model, contextlib.nullcontext()

    def _prepare(self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None) -> list[_Seq]:
        active = None if active_roles is None else set(active_roles)
        seqs = []
        for t in transitions:
            if active is not None and t.role not in active:
                continue  # the frozen role: out of the loss and out of its normaliser
            s = _as_seq(t)
            if sum(s.mask) > 0:
                seqs.append(s)
        return seqs

    def _counts(self, seqs: list[_Seq]) -> BatchCounts:
        return BatchCounts(
            tokens=int(sum(sum(s.mask) for s in seqs)),
            sequences=len(seqs),
            norm_length=int(self.config.norm_length or max(len(s.response) for s in seqs)),
        )

    def _set_old_and_ref(self, seqs: list[_Seq]) -> None:
        cfg = self.config
        if cfg.old_logprobs == "sampling":
            import torch

            for s in seqs:
                if s.sampling_logprobs is None:
                    raise ValueError("old_logprobs='sampling' but a transition has no sampling logprobs")
                s.old = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
        else:
            self._fill_logprobs(seqs, "old", self.model)
        if cfg.kl_coef != 0.0:
            ref_model, ctx = self._ref_context()
            with ctx:
                self._fill_logprobs(seqs, "ref", ref_model)

    def _accumulate(self, seqs: list[_Seq]) -> dict[str, float]:
        """Backward over ``seqs`` as one batch (grads accumulate; no optimizer step)."""
        settings = self.config.loss_settings()
        counts = self._counts(seqs)
        totals: dict[str, float] = {}
        loss_total = 0.0
        want_entropy = True
        for mb in self._micro_batches(seqs):
            logprobs, entropy = self._forward(self.model, mb, with_entropy=want_entropy)
            old = mb.old if mb.old is not None else logprobs.detach()
            loss, stats = policy_objective(
                logprobs, old, mb.advantages, mb.mask, counts, settings, ref_logprobs=mb.ref, entropy=entropy
            )
            loss.backward()
            loss_total += float(loss.detach())
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        metrics = {"loss": loss_total, "tokens": float(counts.tokens), "sequences": float(counts.sequences)}
        for k, v in totals.items():
            if k.endswith("_sum"):
                metrics[k[: -len("_sum")]] = v / max(counts.tokens, 1)
            else:
                metrics[k] = v
        return metrics

    # ---------------------------------------------------------------- public API
    def compute_gradients(
        self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """Zero the gradients and accumulate those of the whole batch (no step): for tests/diagnostics."""
        self.optimizer.zero_grad(set_to_none=True)
        seqs = self._prepare(transitions, active_roles)
        if not seqs:
            return {"tokens": 0.0}
        self._set_old_and_ref(seqs)
        return self._accumulate(seqs)

    def update(
        self, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """One policy update on ``transitions`` (see module doc). Returns averaged metrics:
        loss, pg_loss, clip_frac, approx_kl, kl, entropy, grad_norm, lr, tokens, sequences,
        total_tokens, tokens_per_s, time_s, skipped (1.0 when nothing was trainable)."""
        t0 = time.perf_counter()
        seqs = self._prepare(transitions, active_roles)
        if not seqs:
            return {"skipped": 1.0, "tokens": 0.0, "sequences": 0.0}
        self._set_old_and_ref(seqs)
        n_mini = min(self.config.mini_batches, len(seqs))
        per_step: list[dict[str, float]] = []
        for k in range(n_mini):
            chunk = seqs[k::n_mini]
            self.optimizer.zero_grad(set_to_none=True)
            m = self._accumulate(chunk)
            m["grad_norm"] = self._clip_and_step()
            per_step.append(m)
        self._push_weights()
        elapsed = time.perf_counter() - t0
        keys = {k for m in per_step for k in m}
        metrics = {k: sum(m.get(k, 0.0) for m in per_step) / len(per_step) for k in keys}
        metrics["tokens"] = float(sum(sum(s.mask) for s in seqs))
        metrics["sequences"] = float(len(seqs))
        metrics["total_tokens"] = float(sum(s.length for s in seqs))
        metrics["time_s"] = elapsed
        metrics["tokens_per_s"] = metrics["total_tokens"] / max(elapsed, 1e-9)
        metrics["lr"] = self.current_lr()
        metrics["policy_version"] = float(self.version)
        metrics["skipped"] = 0.0
        return metrics

    def _clip_and_step(self) -> float:
        import torch

        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(norm):
            # A non-finite gradient would poison Adam's moments: skip the step, keep the weights.
            logger.warning("%s: non-finite gradient norm, optimizer step skipped", self.name)
            self.optimizer.zero_grad(set_to_none=True)
            return float(norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.version += 1
        return float(norm)

    def sft_step(self, examples: Iterable[SequenceLike]) -> dict[str, float]:
        """One supervised step: token-mean negative log-likelihood of the masked response tokens
        (temperature 1), same micro-batching and accumulation as :meth:`update`."""
        t0 = time.perf_counter()
        seqs = [s for s in (_as_seq(e) for e in examples) if sum(s.mask) > 0]
        if not seqs:
            return {"skipped": 1.0, "tokens": 0.0}
        counts = self._counts(seqs)
        self.optimizer.zero_grad(set_to_none=True)
        temp, self.config.temperature = self.config.temperature, 1.0
        try:
            nll_total = 0.0
            for mb in self._micro_batches(seqs):
                logprobs, _ = self._forward(self.model, mb, with_entropy=False)
                loss = aggregate(-logprobs, mb.mask, "token_mean", counts)
                loss.backward()
                nll_total += float(loss.detach())
        finally:
            self.config.temperature = temp
        grad_norm = self._clip_and_step()
        self._push_weights()
        elapsed = time.perf_counter() - t0
        total = float(sum(s.length for s in seqs))
        return {
            "loss": nll_total,
            "grad_norm": grad_norm,
            "lr": self.current_lr(),
            "tokens": float(counts.tokens),
            "total_tokens": total,
            "time_s": elapsed,
            "tokens_per_s": total / max(elapsed, 1e-9),
            "skipped": 0.0,
        }

    def logprobs(self, transitions: Iterable[SequenceLike]) -> list[list[float]]:
        """Current per-token log-probs of each transition's response (no grad), in input order."""
        seqs = [_as_seq(t) for t in transitions]
        self._fill_logprobs(seqs, "old", self.model)
        return [s.old.tolist() for s in seqs]  # type: ignore[union-attr]

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def weights_for_sync(self) -> dict[str, Any]:
        """The full weights as the generation backend needs them (LoRA merged, base names)."""
        if not self.is_peft:
            return dict(self.model.state_dict())
        self.model.merge_adapter()
        try:
            out = {}
            for k, v in self.model.state_dict().items():
                if "lora_" in k:
                    continue
                name = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
                out[name] = v.detach().clone()
            return out
        finally:
            self.model.unmerge_adapter()

    def _push_weights(self) -> None:
        if self.on_weights_updated is not None:
            self.on_weights_updated(self.weights_for_sync())

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, LR schedule and step count (the model's weights are saved separately)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "version": self.version,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.version = int(state["version"])


class PolicyGroup:
    """Which learner trains which role.

    Shared policy: one learner for both roles (``PolicyGroup.shared(learner)``); its update sees the
    active roles' transitions together. Split policy: a learner per role
    (``PolicyGroup({"designer": l1, "executor": l2})``); each updates on its own role's transitions,
    and a learner none of whose roles is active is not stepped at all.
    """

    def __init__(self, learners: Mapping[str, Learner]) -> None:
        if not learners:
            raise ValueError("a PolicyGroup needs at least one role -> learner")
        self.by_role = dict(learners)

    @classmethod
    def shared(cls, learner: Learner, roles: Sequence[str] = ("designer", "executor")) -> PolicyGroup:
        return cls(dict.fromkeys(roles, learner))

    @property
    def is_shared(self) -> bool:
        return len({id(v) for v in self.by_role.values()}) == 1

    def learners(self) -> dict[str, Learner]:
        """Distinct learners by name (role name for split policies, the learner's name if shared)."""
        if self.is_shared:
            only = next(iter(self.by_role.values()))
            return {only.name: only}
        return dict(self.by_role)

    def update(
        self, transitions: Sequence[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """Update every learner that has an active role; metrics prefixed ``<learner>/``."""
        active = set(self.by_role) if active_roles is None else set(active_roles)
        if unknown := {t.role for t in transitions} - set(self.by_role):
            raise ValueError(f"transitions for roles {sorted(unknown)} that no learner trains")
        metrics: dict[str, float] = {}
        done: set[int] = set()
        for role, learner in self.by_role.items():
            if id(learner) in done:
                continue
            done.add(id(learner))
            roles = {r for r, lr in self.by_role.items() if lr is learner} & active
            if not roles:
                continue
            key = learner.name if self.is_shared else role
            for k, v in learner.update(transitions, active_roles=roles).items():
                metrics[f"{key}/{k}"] = v
        return metrics
