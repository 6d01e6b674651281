"""Accuracy with a confidence interval: mean pass@1 over samples, bootstrapped over tasks.

Each task contributes one number, its pass@1 estimate: the fraction of its K samples that were
correct. Accuracy is the mean of those numbers over tasks. The interval resamples *tasks* (not
episodes) with replacement, since the K samples of one task are correlated: it is a percentile
bootstrap with a seeded ``numpy.random.Generator`` so a report is reproducible. With fewer than two
tasks no interval can be estimated and the bounds equal the point estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AccuracyEstimate:
    """Mean pass@1 over tasks and a percentile-bootstrap interval at level ``confidence``."""

    mean: float
    low: float
    high: float
    confidence: float
    n_tasks: int
    n_samples: int  # episodes behind the estimate

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def per_task_pass1(outcomes: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """pass@1 per task: fraction of that task's samples that were correct (tasks with none dropped)."""
    return {t: sum(bool(x) for x in xs) / len(xs) for t, xs in outcomes.items() if len(xs) > 0}


def bootstrap_accuracy(
    outcomes: Mapping[str, Sequence[bool]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> AccuracyEstimate:
    """Mean pass@1 over tasks with a percentile bootstrap interval over tasks.

    ``outcomes`` maps a task id to the correctness of each of its samples. An empty mapping gives a
    zero estimate over zero tasks (reports stay writable before anything ran).
    """
    import numpy as np

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    scores = np.array(list(per_task_pass1(outcomes).values()), dtype=float)
    n_samples = sum(len(xs) for xs in outcomes.values())
    if scores.size == 0:
        return AccuracyEstimate(0.0, 0.0, 0.0, confidence, 0, 0)
    mean = float(scores.mean())
    if scores.size < 2:
        return AccuracyEstimate(mean, mean, mean, confidence, int(scores.size), n_samples)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(n_resamples, scores.size))
    means = scores[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return AccuracyEstimate(mean, float(low), float(high), confidence, int(scores.size), n_samples)
