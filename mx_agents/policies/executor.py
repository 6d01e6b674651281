"""A policy as a plain executor callable, for the wrappers that take one (DesignerOnly, DesignChoice).

``mx_envs.wrappers`` plays sub-agents with any callable ``executor(messages, options=..., agent=...)``
(see :func:`mx_envs.wrappers.call_executor`); :func:`make_executor` builds one from the same policy
specs the CLIs take (``default``, an HF id/path or run directory, ``http(s)://...``, ``scripted``,
``random[:SEED]``) or from a policy object, so that e.g. stable-baselines3 trains a design chooser
with the embedded model playing every agent::

    env = DesignChoice(gym.make("MetaAgentX-GSM8K-v0"), ["single", "vote"], make_executor("default"))

The script's per-agent options (``max_tokens``, ``temperature``) reach the policy with each turn, so
an LLM executor honours them as it does in the rollout engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mx_agents.observation import ActorTurn
from mx_agents.policies.base import Policy


class PolicyExecutor:
    """``executor(messages, options=None, agent="agent") -> reply text`` backed by ``policy``.

    One call is one executor turn (a batch of one); ``policy`` is any :class:`Policy` that answers
    executor turns. Picklable when its policy is.
    """

    def __init__(self, policy: Policy) -> None:
        if not callable(getattr(policy, "act", None)):
            raise TypeError(f"make_executor needs a policy with act(observations), got {type(policy).__name__}")
        self.policy = policy

    def __call__(self, messages: Sequence[Mapping[str, str]], options: Mapping[str, Any] | None = None,
                 agent: str = "agent") -> str:
        turn = ActorTurn(
            role="executor",
            agent=agent or "agent",
            messages=[{"role": str(m["role"]), "content": str(m["content"])} for m in messages],
            options=dict(options or {}),
        )
        (action,) = self.policy.act([turn])
        return action.text

    def __repr__(self) -> str:
        return f"PolicyExecutor({self.policy!r})"


def make_executor(spec: str | Policy, **spec_kwargs: Any) -> PolicyExecutor:
    """An executor callable from a policy spec (see :mod:`mx_agents.policies.spec`) or a policy.

    ``spec_kwargs`` go to :func:`~mx_agents.policies.spec.parse_policy_spec` (``max_new_tokens``,
    ``temperature``, ``seed``, ``backend_kw``...). A ``design:NAME`` spec names a designer, not an
    executor, and is refused.
    """
    if isinstance(spec, str):
        from mx_envs.errors import ConfigError

        if spec.strip().startswith("design:"):
            raise ConfigError(f"{spec!r} is a designer; an executor spec names a model, 'scripted' or 'random'")
        from mx_agents.policies.spec import parse_policy_spec

        return PolicyExecutor(parse_policy_spec(spec, **spec_kwargs))
    if spec_kwargs:
        raise TypeError("spec keyword arguments apply to a spec string, not to a policy object")
    return PolicyExecutor(spec)
