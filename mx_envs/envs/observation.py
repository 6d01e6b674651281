"""The observation of a :class:`~mx_envs.envs.meta_env.MetaAgentXEnv`: who acts and that actor's chat.

Layout (a ``gymnasium.spaces.Dict``)::

    {
        "actor":    int in Discrete(2)    0 = the designer, 1 = the executor (playing sub-agent `agent`)
        "agent":    str (LLMText)          "designer", or the sub-agent's name; "" on the terminal observation
        "messages": str (LLMText)          JSON list of {"role": ..., "content": ...}: the actor's chat
        "options":  str (LLMText)          JSON object of per-call options the script set ("{}" if none)
    }

Messages are JSON text rather than a nested ``Sequence`` space so that observations batch, pickle and
travel through ``AsyncVectorEnv`` shared memory; :func:`decode_messages` reads them back. After the
episode ends the observation is :func:`terminal_observation` (``agent == ""``, no messages).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from mx_envs.envs.spaces import LLMText

Actor = Literal["designer", "executor"]
ACTORS: tuple[Actor, Actor] = ("designer", "executor")
DESIGNER, EXECUTOR = 0, 1
DESIGNER_AGENT = "designer"
MAX_AGENT_NAME_CHARS = 256
MAX_OPTIONS_CHARS = 4096


def observation_space(max_chars: int) -> spaces.Dict:
    """The observation space; ``max_chars`` bounds the JSON text of one actor's messages."""
    return spaces.Dict(
        {
            "actor": spaces.Discrete(2),
            "agent": LLMText(MAX_AGENT_NAME_CHARS, sample_max_length=32),
            "messages": LLMText(max_chars),
            "options": LLMText(MAX_OPTIONS_CHARS, sample_max_length=32),
        }
    )


def encode_messages(messages: list[dict[str, str]]) -> str:
    return json.dumps(
        [{"role": str(m["role"]), "content": str(m["content"])} for m in messages], ensure_ascii=False
    )


def make_observation(
    actor: int, agent: str, messages: list[dict[str, str]], options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A fresh observation dict (new objects every call, as gymnasium requires)."""
    return {
        "actor": np.int64(actor),
        "agent": agent,
        "messages": encode_messages(messages),
        "options": json.dumps(dict(options or {}), ensure_ascii=False, sort_keys=True, default=str),
    }


def terminal_observation() -> dict[str, Any]:
    return make_observation(DESIGNER, "", [])


def decode_messages(obs: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat of an observation as a list of ``{"role", "content"}`` dicts."""
    return json.loads(obs["messages"])


def actor_name(obs: Mapping[str, Any]) -> Actor:
    return ACTORS[int(obs["actor"])]
