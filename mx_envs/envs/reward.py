"""How an episode's outcome becomes reward: the graded outcome plus optional, configurable shaping."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RewardConfig:
    """Reward of one episode.

    The outcome is ``correct_reward`` for a correct answer (math: equivalent to the reference;
    code: every test passes) and ``incorrect_reward`` otherwise; with ``code_pass_fraction`` a code
    answer earns ``incorrect_reward + fraction * (correct_reward - incorrect_reward)`` where
    ``fraction`` is the share of tests passed. Shaping, all zero by default:
    ``invalid_design_penalty`` is subtracted at the end when the design fails (any termination but
    ``completed``); ``llm_call_penalty`` is subtracted on every step that yields an executor turn.
    """

    correct_reward: float = 1.0
    incorrect_reward: float = 0.0
    code_pass_fraction: bool = False
    invalid_design_penalty: float = 0.0
    llm_call_penalty: float = 0.0

    @classmethod
    def from_kwargs(cls, base: RewardConfig | dict[str, Any] | None = None, **overrides: Any) -> RewardConfig:
        """Build from an instance or a dict, then apply env-kwarg ``overrides`` that are not ``None``."""
        if isinstance(base, RewardConfig):
            values = asdict(base)
        elif base is None:
            values = {}
        elif isinstance(base, dict):
            values = dict(base)
        else:
            raise TypeError(f"reward must be a RewardConfig or a dict, got {type(base).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown reward settings {sorted(unknown)}; known: {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def outcome(self, kind: str, correct: bool, score: float) -> float:
        if correct:
            return float(self.correct_reward)
        if kind == "code" and self.code_pass_fraction:
            frac = min(max(float(score), 0.0), 1.0)
            return float(self.incorrect_reward + frac * (self.correct_reward - self.incorrect_reward))
        return float(self.incorrect_reward)
