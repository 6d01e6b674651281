"""The acting turn an env observation describes: who acts (designer or a named sub-agent) and its chat.

Policies receive raw env observations; :func:`parse_observation` turns one into an :class:`ActorTurn`
so every policy reads the same fields whatever container the env uses (a dict whose ``messages`` is a
list or a JSON string, a role given as text or as its index in :data:`ROLES`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mx_agents.backends.base import Message
from mx_agents.transition import Role

ROLES: tuple[Role, Role] = ("designer", "executor")


@dataclass(frozen=True)
class ActorTurn:
    """One pending LLM turn: ``role``, the acting ``agent`` ("designer" or a sub-agent's name), its chat.

    ``options`` are the per-call options the script attached to the request (for example
    ``max_tokens``, ``temperature``); ``raw`` is the env's observation, unchanged. ``seed_key``, set
    by a rollout that knows which episode and turn this is, makes a seeded policy derive the request's
    sampling seed from (policy seed, key) instead of its RNG's call order, so the same turn samples
    the same tokens whatever batch, shard or process it is played in.
    """

    role: Role
    agent: str
    messages: list[Message]
    options: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    raw: Any = None
    seed_key: str | None = None


def _decode(value: Any, what: str) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"observation field {what!r} is not valid JSON: {exc}") from None
    return value


def _role(value: Any) -> Role:
    if hasattr(value, "item"):  # numpy scalar from a Discrete space
        value = value.item()
    if isinstance(value, int) and 0 <= value < len(ROLES):
        return ROLES[value]
    if isinstance(value, str) and value in ROLES:
        return value  # type: ignore[return-value]
    raise ValueError(f"observation role must be one of {ROLES} (or its index), got {value!r}")


def parse_observation(obs: Any) -> ActorTurn:
    """Read an env observation (or an :class:`ActorTurn`, returned as is) into an :class:`ActorTurn`."""
    if isinstance(obs, ActorTurn):
        return obs
    if not isinstance(obs, Mapping):
        raise ValueError(f"expected a dict observation with role/agent/messages, got {type(obs).__name__}")
    role = _role(obs.get("role", obs.get("actor")))
    messages = _decode(obs.get("messages"), "messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    ):
        raise ValueError("observation 'messages' must be a list of {'role', 'content'} dicts")
    agent = obs.get("agent") or ("designer" if role == "designer" else "")
    if not isinstance(agent, str) or not agent:
        raise ValueError("executor observation without an agent name")
    options = _decode(obs.get("options") or {}, "options")
    task_id = obs.get("task_id")
    return ActorTurn(
        role=role,
        agent=agent,
        messages=[{"role": str(m["role"]), "content": str(m["content"])} for m in messages],
        options=dict(options) if isinstance(options, Mapping) else {},
        task_id=str(task_id) if task_id not in (None, "") else None,
        raw=obs,
    )
