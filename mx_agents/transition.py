"""Standardized transitions: one per LLM turn, what the learner consumes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["designer", "executor"]


@dataclass
class Transition:
    """One LLM turn of a hierarchical episode.

    Group ids are explicit: ``task_uid`` groups every turn of one task in a training step (the M x N
    block); ``design_id`` groups the executions of one design; ``execution_id`` one execution of it.
    ``reward`` is filled at episode end; ``advantage`` by the credit assignment.
    ``metadata["temperature"]`` is the temperature the turn was sampled at (the rollout records it on
    every turn; 1 for a turn no model sampled): the one place the learner reads it from.
    ``policy_version`` is the learner version (optimizer steps) of the weights that sampled the turn;
    ``staleness`` = the learner's version when it trained on the turn minus ``policy_version`` (0 in a
    synchronous run; up to the updates of ``rollout.async.max_staleness`` steps in an async one).
    """

    episode_id: str
    task_uid: str
    task_id: str
    design_id: int
    execution_id: int
    role: Role
    agent: str  # "designer" or the sub-agent's name
    turn: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None
    loss_mask: list[int] | None = None  # over response_ids; None = all ones
    reward: float = 0.0
    advantage: float = 0.0
    termination_reason: str = ""
    policy_version: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    response_text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    staleness: int = 0  # last: older JSON lines (without it) and positional callers stay valid

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Transition:
        return cls(**json.loads(line))


def sampled_temperature(turn: Any) -> float:
    """The temperature ``turn``'s tokens are scored at: its recorded ``metadata["temperature"]``
    (a transition, an SFT example). Greedy turns (0) give 1, the convention their log-probs were
    recorded with; a turn that records none was not sampled at another temperature, so 1."""
    meta = getattr(turn, "metadata", None)
    value = meta.get("temperature") if isinstance(meta, dict) else None
    return 1.0 if value is None or float(value) <= 1e-5 else float(value)
