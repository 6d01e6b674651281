"""The nested execution envs of an episode: one trajectory per sub-agent, one turn per LLM call."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    """One LLM call of a sub-agent: the chat the executor saw and the reply it gave.

    ``reply`` is ``None`` while the turn is pending (the episode ended before the executor answered,
    e.g. on reset or close). ``tool_runs_before`` is how many tool runs the episode had made when the
    script asked for this turn: it places tool runs between LLM turns (their output is ordered against
    the replies by :mod:`mx_envs.envs.integrity`); it is not part of :meth:`to_dict`.
    """

    call_index: int
    agent: str
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)
    reply: str | None = None
    tool_runs_before: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_index": self.call_index,
            "agent": self.agent,
            "messages": copy.deepcopy(self.messages),
            "options": copy.deepcopy(self.options),
            "reply": self.reply,
        }


@dataclass
class SubAgentTrajectory:
    """Every turn of one named sub-agent, in call order."""

    agent: str
    turns: list[Turn] = field(default_factory=list)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "turns": [t.to_dict() for t in self.turns]}


class EpisodeTrace:
    """The executor turns of one episode, globally ordered and grouped per sub-agent."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.by_agent: dict[str, SubAgentTrajectory] = {}

    def open_turn(
        self,
        call_index: int,
        agent: str,
        messages: list[dict[str, str]],
        options: dict[str, Any],
        tool_runs_before: int = 0,
    ) -> Turn:
        turn = Turn(
            call_index=call_index,
            agent=agent,
            messages=copy.deepcopy(messages),
            options=dict(options),
            tool_runs_before=tool_runs_before,
        )
        self.turns.append(turn)
        self.by_agent.setdefault(agent, SubAgentTrajectory(agent)).turns.append(turn)
        return turn

    @property
    def pending(self) -> Turn | None:
        if self.turns and self.turns[-1].reply is None:
            return self.turns[-1]
        return None

    def to_dict(self) -> dict[str, Any]:
        """``{agent: {"agent", "turns": [...]}}`` in order of each agent's first call (fresh objects)."""
        return {name: traj.to_dict() for name, traj in self.by_agent.items()}
