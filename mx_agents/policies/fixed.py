"""Baselines: a library design plays the designer turn; another policy answers its agents.

``FixedDesignPolicy("single", executor)`` is the paper's "Single Agent" row; ``vote``,
``reflection``, ``debate``, ``ensemble_judge`` and ``tool_solver`` are its hand-made MAS rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mx_agents.action import Action
from mx_agents.backends.base import ChatRequest
from mx_agents.observation import ActorTurn, parse_observation
from mx_agents.policies.base import Policy, RoutedPolicy
from mx_agents.policies.design_prompt import library_design_source


def fence(script: str) -> str:
    """A script as a designer would reply with it: one fenced Python block."""
    return f"```python\n{script.strip()}\n```"


class FixedDesigner:
    """Designer turns only: always the same design (no LLM, no token data).

    ``prompter`` is the LLM designer this one stands in for (a policy with ``build_request``): its
    :meth:`build_request` is then the request that designer would have sent for a turn (its prompt
    material included), which a cold start needs to pair designer prompts with designs; without it,
    the turn's own messages."""

    def __init__(self, name: str | None = None, source: str | None = None, prompter: Any = None) -> None:
        if (name is None) == (source is None):
            raise ValueError("give exactly one of a library design name or a design source")
        self.script = source if source is not None else library_design_source(name)  # type: ignore[arg-type]
        self.name = f"design:{name}" if name else "design:<source>"
        self.text = fence(self.script)
        self.prompter = prompter

    def build_request(self, turn: ActorTurn) -> ChatRequest:
        """The chat request an LLM designer would get for ``turn`` (nothing is generated from it)."""
        if turn.role != "designer":
            raise ValueError(f"{self.name} only plays designer turns, got agent {turn.agent!r}")
        if self.prompter is not None:
            return self.prompter.build_request(turn)
        return ChatRequest(messages=[dict(m) for m in turn.messages],
                           metadata={"role": "designer", "agent": turn.agent})

    def act(self, observations: Sequence[Any]) -> list[Action]:
        actions = []
        for obs in observations:
            turn = parse_observation(obs)
            if turn.role != "designer":
                raise ValueError(f"{self.name} only plays designer turns, got agent {turn.agent!r}")
            actions.append(
                Action(text=self.text, role="designer", agent=turn.agent, source="fixed",
                       messages=turn.messages, script=self.script)
            )
        return actions


class FixedDesignPolicy(RoutedPolicy):
    """A fixed design (a library design ``name``, or ``source`` text) with ``executor`` for its agents;
    ``prompter``: the LLM designer it replaces (see :class:`FixedDesigner`)."""

    def __init__(self, name: str | None, executor: Policy, source: str | None = None, prompter: Any = None) -> None:
        designer = FixedDesigner(name, source, prompter=prompter)
        super().__init__(designer, executor, name=f"{designer.name}+{executor.name}")
        self.design_name = name
