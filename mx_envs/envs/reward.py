"""How an episode's outcome becomes reward: the graded outcome plus optional, configurable shaping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RewardConfig:
    """Reward of one episode.

    The outcome is ``correct_reward`` for a correct answer (math: equivalent to the reference;
    code: the program solved the task, :attr:`mx_envs.tasks.code_grader.CodeGrade.solved`) and
    ``incorrect_reward`` otherwise; with ``code_pass_fraction`` a code answer earns
    ``incorrect_reward + fraction * (correct_reward - incorrect_reward)`` where ``fraction`` is
    :attr:`~mx_envs.tasks.code_grader.CodeGrade.fraction`: the hidden tests passed beyond what the
    best constant output passes, so a constant or a replay of the prompt's examples earns nothing.
    Shaping, all zero by default: ``invalid_design_penalty`` is subtracted at the end when the design
    fails (any termination but ``completed``; the rollout charges the same when an episode ends in a
    rollout error); ``llm_call_penalty`` is subtracted on every step that yields an executor turn.

    Settings are checked when the config is built: finite numbers, ``correct_reward >
    incorrect_reward`` (otherwise solving pays less than failing), penalties ``>= 0`` (a negative
    penalty pays for broken designs or pointless LLM calls) and a ``bool`` ``code_pass_fraction``.
    """

    correct_reward: float = 1.0
    incorrect_reward: float = 0.0
    code_pass_fraction: bool = False
    invalid_design_penalty: float = 0.0
    llm_call_penalty: float = 0.0

    def __post_init__(self) -> None:
        for name in ("correct_reward", "incorrect_reward", "invalid_design_penalty", "llm_call_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"reward setting {name} must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"reward setting {name} must be finite, got {value!r}")
        if not isinstance(self.code_pass_fraction, bool):
            raise TypeError(f"reward setting code_pass_fraction must be a bool, got "
                            f"{type(self.code_pass_fraction).__name__} {self.code_pass_fraction!r}")
        if not self.correct_reward > self.incorrect_reward:
            raise ValueError(f"correct_reward ({self.correct_reward}) must be greater than incorrect_reward "
                             f"({self.incorrect_reward}): otherwise solving a task pays no more than failing it")
        for name in ("invalid_design_penalty", "llm_call_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (it is subtracted), got {getattr(self, name)}: a negative "
                                 f"penalty pays for {'broken designs' if name.startswith('invalid') else 'LLM calls'}")

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
            frac = float(score)
            frac = min(max(frac, 0.0), 1.0) if math.isfinite(frac) else 0.0
            return float(self.incorrect_reward + frac * (self.correct_reward - self.incorrect_reward))
        return float(self.incorrect_reward)
