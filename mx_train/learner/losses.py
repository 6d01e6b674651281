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
``loss = agg(w * pg) + kl_coef * agg(kl) - entropy_coef * agg(entropy)``, where ``w`` is the
off-policy correction weight per token (1 without one).

An **off-policy correction** corrects for a sampler that is not the learner (a bf16 vLLM engine
behind an fp32 learner, another dtype, stale weights). Tokens were drawn from ``pi_sampler``; the
PPO ratio is taken against ``pi_learner_old`` (the learner's own log-probs at the rollout's
weights), so the policy gradient is re-weighted per token by the detached importance ratio
``rho = pi_learner_old / pi_sampler`` (Yao et al. 2025, "Your efficient RL framework secretly brings
you off-policy RL training"; TRL's ``vllm_importance_sampling_correction``, verl's rollout IS)::

    fn(log_rho, cap) -> weights        # both [B, L]; weights carry no gradient

Registered: ``none`` (w = 1), ``tis`` (truncated: ``w = min(rho, cap)``) and ``mis`` (masked:
``w = rho`` where ``rho <= cap``, else 0: a token the sampler drew far more rarely than the learner
would is dropped instead of counted at the cap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mx_train.registry import Registry

if TYPE_CHECKING:
    import torch

PolicyLoss = Callable[..., "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
KLEstimator = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")
OffPolicyCorrection = Callable[["torch.Tensor", float], "torch.Tensor"]
OFF_POLICY_CORRECTIONS: Registry[OffPolicyCorrection] = Registry("off-policy correction")
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


@OFF_POLICY_CORRECTIONS.register("none")
def no_correction(log_rho: torch.Tensor, cap: float) -> torch.Tensor:
    import torch

    return torch.ones_like(log_rho)


@OFF_POLICY_CORRECTIONS.register("tis")
def truncated_is(log_rho: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling: ``min(pi_learner_old / pi_sampler, cap)`` per token."""
    import torch

    return torch.clamp(torch.exp(log_rho), max=cap)


@OFF_POLICY_CORRECTIONS.register("mis")
def masked_is(log_rho: torch.Tensor, cap: float) -> torch.Tensor:
    """Masked importance sampling: the ratio where it is at most ``cap``; 0 (token masked) above."""
    import torch

    rho = torch.exp(log_rho)
    return torch.where(rho > cap, torch.zeros_like(rho), rho)


def correction_names() -> list[str]:
    """What ``off_policy_correction`` accepts: ``auto`` and the registered corrections."""
    return ["auto", *OFF_POLICY_CORRECTIONS.names()]


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
    # Off-policy correction of the sampler/learner mismatch (a name in OFF_POLICY_CORRECTIONS, or
    # "auto": "tis" when the sampler is not the learner's own forward pass -- a separate engine such
    # as vLLM, or the learner computing in another dtype -- else "none"; the learner resolves it).
    off_policy_correction: str = "auto"
    off_policy_cap: float = 2.0  # the importance-ratio cap (TRL's and verl's default)

    def validate(self) -> None:
        from mx_envs.errors import unknown_name

        POLICY_LOSSES.get(self.policy_loss)
        KL_ESTIMATORS.get(self.kl_estimator)
        if self.loss_agg not in AGGREGATIONS:
            raise KeyError(f"unknown loss aggregation {self.loss_agg!r}; known: {', '.join(AGGREGATIONS)}")
        if self.off_policy_correction not in correction_names():
            raise unknown_name("off-policy correction", self.off_policy_correction, correction_names(),
                               key="learner.off_policy_correction")
        if not self.off_policy_cap > 0:
            raise ValueError(f"off_policy_cap must be > 0, got {self.off_policy_cap!r}")


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
    sampling_logprobs: torch.Tensor | None = None,
    correction: str | None = None,
    groups: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the total loss and its token-summed statistics.

    ``mask`` is float ``[B, L]`` (1 = a trained response token). Returns ``(loss, stats)`` where
    ``stats`` holds sums over unmasked tokens (``*_sum`` keys) for the caller to divide by the
    batch token count, plus the aggregated components (``pg_loss``, ``kl``, ``entropy``).

    Off-policy correction: ``correction`` (a name in :data:`OFF_POLICY_CORRECTIONS`; default
    ``settings.off_policy_correction``, where ``"auto"`` means none -- the learner resolves it)
    weights the policy-gradient term by ``fn(old_logprobs - sampling_logprobs, cap)``. With
    ``sampling_logprobs`` the stats also hold the sampler/learner mismatch: ``mismatch_abs_sum``
    (``|log pi_learner_old - log pi_sampler|``), ``mismatch_kl_sum`` (k3 estimate of
    KL(pi_sampler || pi_learner_old)), ``mismatch_max``, ``is_weight_sum`` and ``is_clip_frac_sum``
    (tokens whose ratio exceeds the cap). ``groups`` (name -> bool ``[B]``, e.g. a role's rows)
    adds ``{key}/{name}`` for every summed statistic and ``tokens/{name}``.
    """
    import torch

    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    fn = POLICY_LOSSES.get(settings.policy_loss)
    loss_tok, stats_tok = fn(
        logprobs, old_logprobs, advantages, clip_low=settings.clip_low, clip_high=settings.clip_high,
        mask=mask, settings=settings,
    )
    name = correction if correction is not None else settings.off_policy_correction
    if name == "auto":
        name = "none"
    extra: dict[str, float] = {}
    if sampling_logprobs is not None:
        with torch.no_grad():
            log_rho = (old_logprobs - sampling_logprobs).float()
            weights = OFF_POLICY_CORRECTIONS.get(name)(log_rho, settings.off_policy_cap)
            stats_tok = {
                **stats_tok,
                "is_weight": weights,
                "is_clip_frac": (log_rho > math.log(settings.off_policy_cap)).to(logprobs.dtype),
                "mismatch_abs": log_rho.abs(),
                "mismatch_kl": torch.exp(log_rho) - 1.0 - log_rho,  # k3 of KL(sampler || learner_old)
            }
            live = mask > 0
            extra["mismatch_max"] = float(log_rho.abs()[live].max()) if bool(live.any()) else 0.0
        if name != "none":
            loss_tok = loss_tok * weights
    elif name != "none":
        raise ValueError(f"off-policy correction {name!r} needs the sampler's log-probs of every transition")
    pg_loss = aggregate(loss_tok, mask, settings.loss_agg, counts)
    loss = pg_loss
    stats: dict[str, float] = {"pg_loss": float(pg_loss.detach()), **extra}
    for key, tok in stats_tok.items():
        stats[f"{key}_sum"] = float((tok * mask).sum())
    for group, rows in (groups or {}).items():
        gmask = mask * rows.to(mask.dtype)[:, None]
        stats[f"tokens/{group}"] = float(gmask.sum())
        for key, tok in stats_tok.items():
            stats[f"{key}_sum/{group}"] = float((tok * gmask).sum())
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
