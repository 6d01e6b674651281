"""Gymnasium envs of MetaAgentX: the hierarchical designer/executor env, its spaces and registration.

Kept import-light (``import mx_envs`` imports :mod:`mx_envs.envs.registration` through here): the env
class and the spaces load on first attribute access.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "MetaAgentXEnv": "mx_envs.envs.meta_env",
    "RewardConfig": "mx_envs.envs.reward",
    "LLMText": "mx_envs.envs.spaces",
    "SubAgentTrajectory": "mx_envs.envs.trajectory",
    "Turn": "mx_envs.envs.trajectory",
    "decode_messages": "mx_envs.envs.observation",
    "ENV_IDS": "mx_envs.envs.registration",
    "ENVS": "mx_envs.envs.registration",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mx_envs.envs' has no attribute {name!r}")
