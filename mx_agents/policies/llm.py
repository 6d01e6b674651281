"""LLM policies: a designer and an executor role policy over a backend, and their shared/split pairs."""

from __future__ import annotations

import dataclasses
import random
import threading
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from mx_agents.action import Action
from mx_agents.backends.base import Backend, BackendError, ChatRequest, Completion, SamplingParams
from mx_agents.observation import ActorTurn, parse_observation
from mx_agents.policies.base import RoutedPolicy, generate_actions
from mx_agents.policies.design_prompt import DesignerPrompt, extract_script
from mx_agents.transition import Role

DEFAULT_DESIGNER_PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=768)
DEFAULT_EXECUTOR_PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=512)


def check_completion(backend: Backend, completion: Completion, agent: str) -> Completion:
    """``completion`` itself, or :class:`BackendError` when the backend reported a failure."""
    if completion.finish_reason == "error":
        reason = completion.metadata.get("error") or "no reason given"
        raise BackendError(f"backend {getattr(backend, 'name', '?')!r} failed on the {agent!r} turn: {reason}")
    return completion


_TURN_KEY = threading.local()


@contextmanager
def turn_seed_key(key: str):  # noqa: ANN201 - a context manager
    """Within the block, seeded role policies on this thread derive each request's sampling seed from
    ``(policy seed, key)`` instead of drawing it from their RNG in call order. The continuous rollout
    sets ``key`` to (run, episode, turn), so a seeded rollout samples the same tokens whatever order
    the episode threads reach the policy in."""
    before = getattr(_TURN_KEY, "key", None)
    _TURN_KEY.key = key
    try:
        yield
    finally:
        _TURN_KEY.key = before


class _LLMRole:
    role: Role

    def __init__(self, backend: Backend, params: SamplingParams, seed: int | None, name: str | None) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.backend = backend
        self.params = params
        self.name = name or f"{self.role}:{getattr(backend, 'name', type(backend).__name__)}"
        # Per-request seeds come from this RNG, so a seeded policy samples reproducibly and two
        # requests in one batch (e.g. N executions of one design) still get different seeds.
        self._rng = random.Random(seed) if seed is not None else None
        self._seed = seed

    def _sampling(self, turn: ActorTurn | None = None, **overrides: Any) -> SamplingParams:
        params = dataclasses.replace(self.params, **overrides) if overrides else self.params
        if params.seed is None and self._rng is not None:
            key = turn.seed_key if turn is not None and turn.seed_key is not None else getattr(_TURN_KEY, "key", None)
            if key is not None:
                derived = zlib.crc32(f"{self._seed}|{self.role}|{key}".encode()) & 0x7FFFFFFF
                params = dataclasses.replace(params, seed=derived)
            else:
                params = dataclasses.replace(params, seed=self._rng.getrandbits(31))
        return params

    def _check_role(self, turn: ActorTurn) -> None:
        if turn.role != self.role:
            raise ValueError(f"{type(self).__name__} got a {turn.role} turn (agent {turn.agent!r})")

    def act(self, observations: Sequence[Any]) -> list[Action]:
        return generate_actions(self, [parse_observation(o) for o in observations])  # type: ignore[arg-type]


class DesignerPolicy(_LLMRole):
    """Samples designs: the env's designer messages (plus ``prompt`` material) in, a design reply out.

    The action's ``text`` is the whole reply (the env extracts the script itself and the learner
    scores the whole reply); ``Action.script`` holds the script this policy extracted, or ``None``.
    """

    role: Role = "designer"

    def __init__(
        self,
        backend: Backend,
        params: SamplingParams = DEFAULT_DESIGNER_PARAMS,
        prompt: DesignerPrompt | None = None,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(backend, params, seed, name)
        self.prompt = prompt or DesignerPrompt()

    def build_request(self, turn: ActorTurn) -> ChatRequest:
        self._check_role(turn)
        return ChatRequest(
            messages=self.prompt.apply(turn.messages),
            params=self._sampling(turn),
            metadata={"role": "designer", "agent": turn.agent},
        )

    def to_action(self, turn: ActorTurn, request: ChatRequest, completion: Completion) -> Action:
        check_completion(self.backend, completion, turn.agent)
        action = Action.from_completion(completion, "designer", turn.agent, request.messages, request.params)
        action.script = extract_script(completion.text)
        return action


class ExecutorPolicy(_LLMRole):
    """Answers sub-agent turns: the agent's messages go to the model as they are.

    The script's per-call options are honoured: ``temperature``/``top_p``/``stop`` replace the
    policy's, and ``max_tokens`` (or ``max_new_tokens``) may lower, never raise, the policy's
    ``max_new_tokens`` (so a budget given on the command line holds). Set ``honor_options=False`` to
    ignore them.
    """

    role: Role = "executor"

    def __init__(
        self,
        backend: Backend,
        params: SamplingParams = DEFAULT_EXECUTOR_PARAMS,
        seed: int | None = None,
        honor_options: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(backend, params, seed, name)
        self.honor_options = honor_options

    def _overrides(self, options: dict[str, Any]) -> dict[str, Any]:
        if not self.honor_options:
            return {}
        out: dict[str, Any] = {}
        limit = options.get("max_tokens", options.get("max_new_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            out["max_new_tokens"] = min(limit, self.params.max_new_tokens)
        for key in ("temperature", "top_p"):
            value = options.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                out[key] = float(value)
        stop = options.get("stop")
        if isinstance(stop, str):
            out["stop"] = (stop,)
        elif isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop):
            out["stop"] = tuple(stop)
        return out

    def build_request(self, turn: ActorTurn) -> ChatRequest:
        self._check_role(turn)
        return ChatRequest(
            messages=[dict(m) for m in turn.messages],
            params=self._sampling(turn, **self._overrides(turn.options)),
            metadata={"role": "executor", "agent": turn.agent},
        )

    def to_action(self, turn: ActorTurn, request: ChatRequest, completion: Completion) -> Action:
        check_completion(self.backend, completion, turn.agent)
        return Action.from_completion(completion, "executor", turn.agent, request.messages, request.params)


class SharedPolicy(RoutedPolicy):
    """One backend plays both roles, the role given by the prompt (the paper's main setting).

    Designer and executor turns pending at the same time go out in one ``backend.generate`` call.
    """

    def __init__(
        self,
        backend: Backend,
        designer_params: SamplingParams = DEFAULT_DESIGNER_PARAMS,
        executor_params: SamplingParams = DEFAULT_EXECUTOR_PARAMS,
        prompt: DesignerPrompt | None = None,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        rng = random.Random(seed)
        super().__init__(
            DesignerPolicy(backend, designer_params, prompt, seed=None if seed is None else rng.getrandbits(31)),
            ExecutorPolicy(backend, executor_params, seed=None if seed is None else rng.getrandbits(31)),
            name=name or f"shared:{getattr(backend, 'name', type(backend).__name__)}",
        )
        self.backend = backend


class SplitPolicy(RoutedPolicy):
    """Two backends: one designs, the other executes (one backend call per role per round)."""

    def __init__(
        self,
        designer_backend: Backend,
        executor_backend: Backend,
        designer_params: SamplingParams = DEFAULT_DESIGNER_PARAMS,
        executor_params: SamplingParams = DEFAULT_EXECUTOR_PARAMS,
        prompt: DesignerPrompt | None = None,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        rng = random.Random(seed)
        super().__init__(
            DesignerPolicy(
                designer_backend, designer_params, prompt, seed=None if seed is None else rng.getrandbits(31)
            ),
            ExecutorPolicy(executor_backend, executor_params, seed=None if seed is None else rng.getrandbits(31)),
            name=name
            or f"split:{getattr(designer_backend, 'name', '?')}|{getattr(executor_backend, 'name', '?')}",
        )
