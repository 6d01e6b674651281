"""Group-relative advantage estimators, registered by name.

Every estimator has the same signature::

    fn(rewards: np.ndarray, *, normalize_std: bool = True, eps: float = 1e-6,
       std: str = "population") -> np.ndarray

``rewards`` is a float array shaped ``[G, K]``: ``G`` groups of ``K`` samples that share a baseline
(e.g. the M designs of one task, or the N executions of one design). The result has the same shape.
The whole array is one training batch, which batch-level estimators (``reinforce_pp``) use.
A group whose rewards are all equal carries no signal: its advantages are exactly 0 for every
estimator. ``std`` picks the population (``ddof=0``, default, the paper's choice) or the sample
(``ddof=1``, what TRL uses) standard deviation; ``eps`` is added to it before dividing.

Registered: ``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``. A new estimator is one function
decorated with ``@ADVANTAGE_ESTIMATORS.register("name")``; select it with ``estimator: name`` in the
training config (see ``mx_train/ALGORITHMS.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mx_train.registry import Registry

AdvantageEstimator = Callable[..., np.ndarray]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def _check(rewards: np.ndarray) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be shaped [groups, group_size], got shape {r.shape}")
    if r.shape[1] == 0:
        raise ValueError("groups must not be empty")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite (no NaN/inf)")
    return r


def _ddof(std: str) -> int:
    if std == "population":
        return 0
    if std == "sample":
        return 1
    raise ValueError(f"std must be 'population' or 'sample', got {std!r}")


def _constant_groups(r: np.ndarray) -> np.ndarray:
    """[G, 1] bool: groups whose rewards are all equal (their advantages are forced to exactly 0,
    which float noise in ``r - mean`` would otherwise spoil)."""
    return (r.max(axis=1, keepdims=True) - r.min(axis=1, keepdims=True)) == 0


def _group_std(r: np.ndarray, std: str) -> np.ndarray:
    ddof = _ddof(std)
    if r.shape[1] - ddof <= 0:
        return np.zeros((r.shape[0], 1))
    return r.std(axis=1, ddof=ddof, keepdims=True)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(
    rewards: np.ndarray, *, normalize_std: bool = True, eps: float = 1e-6, std: str = "population"
) -> np.ndarray:
    """GRPO: ``(r - mean_group) / (std_group + eps)``; without ``normalize_std`` just ``r - mean_group``."""
    r = _check(rewards)
    adv = r - r.mean(axis=1, keepdims=True)
    if normalize_std:
        adv = adv / (_group_std(r, std) + eps)
    return np.where(_constant_groups(r), 0.0, adv)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(
    rewards: np.ndarray, *, normalize_std: bool = True, eps: float = 1e-6, std: str = "population"
) -> np.ndarray:
    """Dr. GRPO (Liu et al. 2025): ``r - mean_group``, never divided by the group std (the std
    division over-weights near-constant groups). ``normalize_std`` is accepted and ignored."""
    return grpo(rewards, normalize_std=False, eps=eps, std=std)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(
    rewards: np.ndarray, *, normalize_std: bool = True, eps: float = 1e-6, std: str = "population"
) -> np.ndarray:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j`` = ``K/(K-1) * (r_i - mean_group)``.

    Leave-one-out baselines are not std-normalised (``normalize_std`` is ignored); a group of size 1
    has no baseline and gets 0.
    """
    r = _check(rewards)
    k = r.shape[1]
    if k == 1:
        return np.zeros_like(r)
    adv = (r - r.mean(axis=1, keepdims=True)) * (k / (k - 1))
    return np.where(_constant_groups(r), 0.0, adv)


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp(
    rewards: np.ndarray, *, normalize_std: bool = True, eps: float = 1e-6, std: str = "population"
) -> np.ndarray:
    """REINFORCE++ with group baseline (Hu et al. 2025, "REINFORCE++-baseline", the outcome-reward
    variant for grouped samples): subtract the group mean, then whiten across the whole batch
    (``(a - mean_batch) / (std_batch + eps)``), instead of GRPO's per-group std.

    Constant groups stay exactly 0 (they are excluded from the batch statistics, so the batch
    whitening cannot give them a spurious non-zero advantage). Without ``normalize_std`` only the
    group mean is subtracted.
    """
    r = _check(rewards)
    const = np.broadcast_to(_constant_groups(r), r.shape)
    adv = r - r.mean(axis=1, keepdims=True)
    if normalize_std:
        live = adv[~const]
        if live.size > _ddof(std):
            adv = (adv - live.mean()) / (live.std(ddof=_ddof(std)) + eps)
    return np.where(const, 0.0, adv)
