"""Wrappers that turn the hierarchical env into the shapes users train on.

- :class:`DesignerOnly`: a fixed executor plays every sub-agent inside ``step``; episodes are one
  step (a contextual bandit for designers, the paper's frozen-executor setting).
- :class:`ExecutorOnly`: a fixed design (script text or a library design name) is submitted on
  ``reset``; only executor turns remain.
- :class:`DesignChoice`: ``Discrete(K)`` over a list of designs, observation = an embedding of the
  task text; one-step episodes that classic RL libraries (stable-baselines3) can train.

Each wraps a :class:`~mx_envs.envs.meta_env.MetaAgentXEnv` (possibly wrapped itself, e.g. by
``gym.make``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mx_envs.envs.embedding import Embedder, make_embedder
from mx_envs.envs.observation import EXECUTOR, decode_messages

Messages = list[dict[str, str]]
# ``executor(messages)``, or ``executor(messages, options)`` / ``executor(messages, options=..., agent=...)``
# to receive the sub-agent's per-call options (``max_tokens``, ``temperature`` set by the script)
# and its name: see :func:`call_executor`. mx_agents.policies.executor builds one from a policy spec.
Executor = Callable[..., str]
StepResult = tuple[Any, float, bool, bool, dict[str, Any]]


def resolve_design(design: str) -> str:
    """Script text of ``design``: a library design name (``"vote"``, ``"design:vote"``) or script text."""
    if not isinstance(design, str):
        raise TypeError(f"a design is a library design name or script text, got {type(design).__name__}")
    from mx_envs.mas.designs import DESIGN_NAMES, load_design

    if design.removeprefix("design:") in DESIGN_NAMES:
        return load_design(design)
    if design.startswith("design:"):
        raise ValueError(f"unknown library design {design!r}; known: {', '.join(DESIGN_NAMES)}")
    return design


def _design_label(design: str) -> str:
    from mx_envs.mas.designs import DESIGN_NAMES

    name = design.removeprefix("design:")
    return name if name in DESIGN_NAMES else "custom"


def _executor_form(executor: Executor) -> tuple[bool, bool, bool]:
    """(options by keyword, agent by keyword, options as the second positional argument)."""
    try:
        params = inspect.signature(executor).parameters
    except (TypeError, ValueError):  # a builtin without a signature: messages only
        return False, False, False
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    opt_kw = var_kw or "options" in named
    agent_kw = var_kw or "agent" in named
    return opt_kw, agent_kw, not opt_kw and (len(positional) >= 2 or var_pos)


def call_executor(executor: Executor, obs: dict[str, Any]) -> str:
    """The executor's reply to the executor observation ``obs``, passing what its signature takes:
    always the messages; the sub-agent's options (decoded ``obs["options"]``) and name when it has an
    ``options`` / ``agent`` parameter (or ``**kwargs``), or options as a second positional argument."""
    messages = decode_messages(obs)
    opt_kw, agent_kw, opt_pos = _executor_form(executor)
    if not (opt_kw or agent_kw or opt_pos):
        return executor(messages)
    options = json.loads(obs.get("options") or "{}")
    if opt_pos:
        return executor(messages, options)
    kwargs: dict[str, Any] = {}
    if opt_kw:
        kwargs["options"] = options
    if agent_kw:
        kwargs["agent"] = str(obs.get("agent", ""))
    return executor(messages, **kwargs)


def play_executor(env: gym.Env, result: StepResult, executor: Executor) -> StepResult:
    """Continue an episode from ``result`` (a ``step`` return) with ``executor`` until it ends.

    The reward returned is the sum over the executor steps and ``result``'s own reward; ``info`` gains
    ``executor_turns``.
    """
    obs, total, terminated, truncated, info = result
    total = float(total)
    turns = 0
    while not (terminated or truncated):
        if int(obs["actor"]) != EXECUTOR:
            raise RuntimeError("expected an executor turn while playing the fixed executor")
        reply = call_executor(executor, obs)
        obs, reward, terminated, truncated, info = env.step(reply)
        total += float(reward)
        turns += 1
    info = dict(info)
    info["executor_turns"] = turns
    return obs, total, terminated, truncated, info


class DesignerOnly(gym.Wrapper[dict[str, Any], str, dict[str, Any], str], gym.utils.RecordConstructorArgs):
    """The designer's view: ``step(design_text)`` runs the whole episode with ``executor``.

    ``executor`` is any callable from a sub-agent's chat (list of ``{"role", "content"}``) to its reply
    text; one with an ``options`` (and ``agent``) parameter also gets the sub-agent's per-call options
    (see :func:`call_executor`). Every episode is one step; reward and ``info`` are those of the
    episode's end.
    """

    def __init__(self, env: gym.Env, executor: Executor) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, executor=executor)
        gym.Wrapper.__init__(self, env)
        if not callable(executor):
            raise TypeError("executor must be a callable from messages to reply text")
        self.executor = executor

    def step(self, action: str) -> StepResult:
        return play_executor(self.env, self.env.step(action), self.executor)


class ExecutorOnly(gym.Wrapper[dict[str, Any], str, dict[str, Any], str], gym.utils.RecordConstructorArgs):
    """The executor's view: ``reset`` submits the fixed ``design``; every step is a sub-agent reply.

    ``design`` is a library design name (``"vote"``) or script text. A design that ends before its
    first LLM request (invalid, or answering without the executor) leaves nothing to act on, so
    ``reset`` raises ``ValueError`` naming the termination reason.
    """

    def __init__(self, env: gym.Env, design: str) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, design=design)
        gym.Wrapper.__init__(self, env)
        self.design = design
        self.design_text = resolve_design(design)
        self._carry = 0.0  # reward of the design step, paid with the first executor step

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self.env.reset(seed=seed, options=options)
        obs, reward, terminated, truncated, info = self.env.step(self.design_text)
        if terminated or truncated:
            raise ValueError(
                f"the fixed design ended before any LLM request ({info.get('termination_reason')}): "
                f"{info.get('error', '')}"
            )
        self._carry = float(reward)
        return obs, info

    def step(self, action: str) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward, self._carry = float(reward) + self._carry, 0.0
        return obs, reward, terminated, truncated, info


class DesignChoice(gym.Wrapper[np.ndarray, np.int64, dict[str, Any], str], gym.utils.RecordConstructorArgs):
    """Choose one of K designs for the task: ``Discrete(K)`` actions, embedding observations.

    Args:
        env: a MetaAgentX env (the task source and the episode runner).
        designs: K library design names or script texts.
        executor: plays every sub-agent (callable from messages to reply text; with an ``options``
            parameter it also receives each sub-agent's per-call options, see :func:`call_executor`).
        embedder: ``"auto"`` (all-MiniLM-L6-v2 when installed, else hashing), ``"minilm"``,
            ``"hashing"`` or an :class:`~mx_envs.envs.embedding.Embedder`.
        embed_dim: dimension of the hashing embedder.

    The observation is the unit-norm embedding of the task prompt (``Box(-1, 1, (dim,), float32)``);
    ``step(k)`` runs design ``k`` to the end, so every episode is one step. Embeddings are cached per
    task id.
    """

    def __init__(
        self,
        env: gym.Env,
        designs: Sequence[str],
        executor: Executor,
        embedder: str | Embedder | None = "auto",
        embed_dim: int = 256,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, designs=list(designs), executor=executor, embedder=embedder, embed_dim=embed_dim
        )
        gym.Wrapper.__init__(self, env)
        if not designs:
            raise ValueError("DesignChoice needs at least one design")
        if not callable(executor):
            raise TypeError("executor must be a callable from messages to reply text")
        self.designs = list(designs)
        self.design_texts = [resolve_design(d) for d in self.designs]
        self.design_names = [_design_label(d) for d in self.designs]
        self.executor = executor
        self.embedder = make_embedder(embedder, embed_dim)
        self.action_space = spaces.Discrete(len(self.designs))
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(self.embedder.dim,), dtype=np.float32)
        self._cache: dict[str, np.ndarray] = {}
        self._obs: np.ndarray | None = None

    def embed_task(self, task: Any) -> np.ndarray:
        """The observation for ``task`` (a fresh array)."""
        vec = self._cache.get(task.id)
        if vec is None:
            vec = self.embedder([task.prompt])[0].astype(np.float32)
            self._cache[task.id] = vec
        return vec.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self._obs = self.embed_task(self.env.unwrapped.task)
        return self._obs.copy(), info

    def step(self, action: Any) -> StepResult:
        if self._obs is None:
            raise gym.error.ResetNeeded("step() before reset(): call env.reset() first")
        if isinstance(action, np.ndarray):
            if action.size != 1:
                raise ValueError(f"DesignChoice takes one design index, got an array of shape {action.shape}")
            action = action.reshape(()).item()
        if isinstance(action, bool) or not isinstance(action, int | np.integer) or not self.action_space.contains(int(action)):
            raise ValueError(f"action must be a design index in [0, {self.action_space.n}), got {action!r}")
        k = int(action)
        _, reward, terminated, truncated, info = play_executor(
            self.env, self.env.step(self.design_texts[k]), self.executor
        )
        info = dict(info)
        info["design_index"] = k
        info["design_name"] = self.design_names[k]
        obs = self._obs.copy()
        if terminated or truncated:
            self._obs = None
        return obs, reward, terminated, truncated, info
