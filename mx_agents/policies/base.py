"""The policy protocol (batched: observations in, one action each out) and role routing.

A :class:`RoutedPolicy` sends designer turns to one policy and executor turns to another. When both
are LLM role policies on the *same* backend object, their requests go out in a single
``backend.generate`` call, so designer and executor turns of many envs share one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from mx_agents.action import Action
from mx_agents.backends.base import Backend, ChatRequest, Completion
from mx_agents.observation import ActorTurn, parse_observation


@runtime_checkable
class Policy(Protocol):
    """Anything that answers a batch of env observations with one :class:`Action` per observation."""

    name: str

    def act(self, observations: Sequence[Any]) -> list[Action]: ...


@runtime_checkable
class LLMRolePolicy(Protocol):
    """A policy whose actions come from one ``backend.generate`` call: requests are built and read apart
    so that a router can merge the requests of several role policies sharing a backend."""

    name: str
    backend: Backend

    def build_request(self, turn: ActorTurn) -> ChatRequest: ...

    def to_action(self, turn: ActorTurn, request: ChatRequest, completion: Completion) -> Action: ...


def generate_actions(policy: LLMRolePolicy, turns: Sequence[ActorTurn]) -> list[Action]:
    """One backend call for all ``turns``."""
    if not turns:
        return []
    requests = [policy.build_request(t) for t in turns]
    completions = policy.backend.generate(requests)
    if len(completions) != len(requests):
        raise RuntimeError(
            f"backend {policy.backend.name!r} returned {len(completions)} completions for {len(requests)} requests"
        )
    return [policy.to_action(t, r, c) for t, r, c in zip(turns, requests, completions, strict=True)]


class RoutedPolicy:
    """Designer turns to ``designer``, executor turns to ``executor``; merges backend calls when it can."""

    def __init__(self, designer: Policy, executor: Policy, name: str | None = None) -> None:
        self.designer = designer
        self.executor = executor
        self.name = name or f"{designer.name}+{executor.name}"

    def act(self, observations: Sequence[Any]) -> list[Action]:
        turns = [parse_observation(o) for o in observations]
        actions: list[Action | None] = [None] * len(turns)
        by_role = {
            "designer": [i for i, t in enumerate(turns) if t.role == "designer"],
            "executor": [i for i, t in enumerate(turns) if t.role == "executor"],
        }
        d, e = self.designer, self.executor
        if (
            by_role["designer"]
            and by_role["executor"]
            and isinstance(d, LLMRolePolicy)
            and isinstance(e, LLMRolePolicy)
            and d.backend is e.backend
        ):
            order = by_role["designer"] + by_role["executor"]
            owners = [d] * len(by_role["designer"]) + [e] * len(by_role["executor"])
            requests = [p.build_request(turns[i]) for p, i in zip(owners, order, strict=True)]
            completions = d.backend.generate(requests)
            if len(completions) != len(requests):
                raise RuntimeError(
                    f"backend {d.backend.name!r} returned {len(completions)} completions for {len(requests)} requests"
                )
            for p, i, r, c in zip(owners, order, requests, completions, strict=True):
                actions[i] = p.to_action(turns[i], r, c)
        else:
            for role, policy in (("designer", d), ("executor", e)):
                idx = by_role[role]
                if idx:
                    for i, a in zip(idx, policy.act([turns[i] for i in idx]), strict=True):
                        actions[i] = a
        assert all(a is not None for a in actions)
        return actions  # type: ignore[return-value]
