"""Policy losses, KL estimators and loss aggregation, registered by name.

A **policy loss** maps per-token tensors ``[B, L]`` to a per-token loss ``[B, L]`` plus per-token
statistics (summed over unmasked tokens by the caller)::

    fn(logprobs, old_logprobs, advantages, *, clip_low, clip_high, mask, settings, **_) -> (loss_tok, stats_tok)

``mask`` (float ``[B, L]``, 1 = a trained response token) and ``settings`` (a :class:`LossSettings`; in
training the learner's own config)
let a loss work per sequence: GSPO's sequence-level ratio ``exp(mean over the sequence's tokens of
log r)`` needs the mask (see ``examples/gspo_plugin.py``). Losses that do not need them take ``**_``.

``advantages`` is ``[B, 1]`` (one per sequence) or ``[B, L]``. Registered: ``ppo_clip`` (the
PPO/GRPO clipped surrogate) and ``pg`` (importance-weighted policy gradient, no clipping).

A **KL estimator** maps ``(logprobs, ref_logprobs)`` to a per-token estimate of
KL(pi || pi_ref): ``k1`` = log r, ``k2`` = (log r)^2 / 2, ``k3`` = exp(-log r) - 1 + log r
(Schulman's low-variance unbiased estimator; what TRL uses), with log r = logprobs - ref_logprobs.

**Aggregation** turns per-token values into a scalar. It takes the *global* counts of the whole
update batch so that summing the per-micro-batch results gives exactly the full-batch value
(gradient accumulation without re-weighting):

* ``token_mean``: sum over all tokens / total tokens (DAPO, verl default);
* ``seq_mean_token_mean``: mean over sequences of each sequence's token mean (original GRPO, TRL
  ``loss_type="grpo"``);
* ``seq_mean_token_sum_norm``: mean over sequences of token sum / a constant length (Dr. GRPO).

:func:`policy_objective` combines policy loss, KL penalty and entropy bonus:
``loss = agg(pg) + kl_coef * agg(kl) - entropy_coef * agg(entropy)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mx_train.registry import Registry

if TYPE_CHECKING:
    import torch

PolicyLoss = Callable[..., "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
KLEstimator = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    **_: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)`` per token, ratio = pi/pi_old.

    Stats: ``clip_frac`` (tokens where the clipped branch is the active one) and ``approx_kl``
    (k3 estimate of KL(pi_old || pi), PPO's early-stopping diagnostic).
    """
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    with torch.no_grad():
        is_clipped = ((ratio < 1.0 - clip_low) & (advantages < 0)) | ((ratio > 1.0 + clip_high) & (advantages > 0))
        approx_kl = (ratio - 1.0) - log_ratio
    return loss, {"clip_frac": is_clipped.to(logprobs.dtype), "approx_kl": approx_kl}


@POLICY_LOSSES.register("pg")
def pg(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, **_: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Unclipped importance-weighted policy gradient ``-ratio * A`` (= REINFORCE when on-policy)."""
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        approx_kl = (ratio - 1.0) - log_ratio
    return -ratio * advantages, {"clip_frac": torch.zeros_like(logprobs), "approx_kl": approx_kl}


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    import torch

    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


@dataclass(frozen=True)
class BatchCounts:
    """Global sizes of one update batch, shared by all of its micro-batches."""

    tokens: int  # unmasked response tokens
    sequences: int
    norm_length: int  # the constant length for ``seq_mean_token_sum_norm``


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, counts: BatchCounts) -> torch.Tensor:
    """This micro-batch's share of the batch-level aggregate of ``values`` (see module doc)."""
    masked = values * mask
    if mode == "token_mean":
        return masked.sum() / max(counts.tokens, 1)
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(counts.sequences, 1)
    if mode == "seq_mean_token_sum_norm":
        return masked.sum() / (max(counts.norm_length, 1) * max(counts.sequences, 1))
    raise KeyError(f"unknown loss aggregation {mode!r}; known: {', '.join(AGGREGATIONS)}")


@dataclass(frozen=True)
class LossSettings:
    """What :func:`policy_objective` reads. The learner's own settings extend these
    (:class:`mx_train.learner.config.LearnerConfig` is a ``LossSettings``), so a loss sees the very
    object the run's ``learner:`` block was built into, never a copy of it."""

    policy_loss: str = "ppo_clip"  # a name in POLICY_LOSSES
    loss_agg: str = "token_mean"  # one of AGGREGATIONS
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0  # 0: no reference model, no KL term
    kl_estimator: str = "k3"  # a name in KL_ESTIMATORS
    entropy_coef: float = 0.0  # entropy bonus (0: entropy is only logged)

    def validate(self) -> None:
        POLICY_LOSSES.get(self.policy_loss)
        KL_ESTIMATORS.get(self.kl_estimator)
        if self.loss_agg not in AGGREGATIONS:
            raise KeyError(f"unknown loss aggregation {self.loss_agg!r}; known: {', '.join(AGGREGATIONS)}")


def policy_objective(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    counts: BatchCounts,
    settings: LossSettings,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the total loss and its token-summed statistics.

    ``mask`` is float ``[B, L]`` (1 = a trained response token). Returns ``(loss, stats)`` where
    ``stats`` holds sums over unmasked tokens (``*_sum`` keys) for the caller to divide by the
    batch token count, plus the aggregated components (``pg_loss``, ``kl``, ``entropy``).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    fn = POLICY_LOSSES.get(settings.policy_loss)
    loss_tok, stats_tok = fn(
        logprobs, old_logprobs, advantages, clip_low=settings.clip_low, clip_high=settings.clip_high,
        mask=mask, settings=settings,
    )
    pg_loss = aggregate(loss_tok, mask, settings.loss_agg, counts)
    loss = pg_loss
    stats: dict[str, float] = {"pg_loss": float(pg_loss.detach())}
    for name, tok in stats_tok.items():
        stats[f"{name}_sum"] = float((tok * mask).sum())
    if settings.kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef != 0 needs reference logprobs")
        kl_tok = KL_ESTIMATORS.get(settings.kl_estimator)(logprobs, ref_logprobs)
        kl = aggregate(kl_tok, mask, settings.loss_agg, counts)
        loss = loss + settings.kl_coef * kl
        stats["kl"] = float(kl.detach())
    if entropy is not None:
        ent = aggregate(entropy, mask, settings.loss_agg, counts)
        if settings.entropy_coef != 0.0:
            loss = loss - settings.entropy_coef * ent
        stats["entropy"] = float(ent.detach())
    return loss, stats
