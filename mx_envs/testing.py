"""Test doubles for driving MetaAgentX envs without a model (for tests, benchmarks and examples).

- :class:`ScriptedLLM`: a TEST DOUBLE of an LLM whose replies are chosen by rules on the acting agent's
  name and its chat; it records every call.
- :class:`OracleLLM`: a TEST DOUBLE of an LLM that finds the task in the chat and answers it correctly
  or wrongly (the reference answer, or a reference solution from the task's tests) as its ``policy``
  decides.
- :func:`run_episode`: play one whole episode of a :class:`~mx_envs.envs.meta_env.MetaAgentXEnv`.

Both doubles are executors in the wrappers' sense (callable on a chat) and also take the agent name
(``reply(agent, messages)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mx_envs.tasks.record import Task

Messages = list[dict[str, str]]
ReplyFn = Callable[[str | None, Messages], str]


@dataclass(frozen=True)
class Rule:
    """``agent``: regex the agent name (or its base name before ``#``) must fully match (``None``: any);
    ``content``: regex searched in the last message (``None``: any); ``reply``: text or a function of
    ``(agent, messages)``.
    """

    agent: str | None
    content: str | None
    reply: str | ReplyFn


class ScriptedLLM:
    """TEST DOUBLE of an LLM: the first matching :class:`Rule` gives the reply, else ``default``.

    Without a match and without ``default`` it raises ``AssertionError`` (a test that forgot a rule).
    ``calls`` records ``(agent, messages)`` of every call.
    """

    def __init__(self, rules: Sequence[Rule | tuple[Any, Any, Any]] = (), default: str | ReplyFn | None = None) -> None:
        self.rules = [r if isinstance(r, Rule) else Rule(*r) for r in rules]
        self.default = default
        self.calls: list[tuple[str | None, Messages]] = []

    def reply(self, agent: str | None, messages: Messages) -> str:
        self.calls.append((agent, messages))
        last = messages[-1]["content"] if messages else ""
        for rule in self.rules:
            if rule.agent is not None:
                if agent is None:
                    continue
                base = agent.split("#")[0]
                if not (re.fullmatch(rule.agent, agent) or re.fullmatch(rule.agent, base)):
                    continue
            if rule.content is not None and not re.search(rule.content, last):
                continue
            return rule.reply(agent, messages) if callable(rule.reply) else rule.reply
        if self.default is None:
            raise AssertionError(f"ScriptedLLM: no rule for agent {agent!r}: {last[:200]!r}")
        return self.default(agent, messages) if callable(self.default) else self.default

    def __call__(self, messages: Messages) -> str:
        return self.reply(None, messages)


WRONG_MATH_ANSWER = "-987654321"
WRONG_PROGRAM = "import sys\nprint('wrong answer')\n"


def correct_reply(task: Task) -> str:
    """A reply that grades as correct for ``task`` (math: boxed reference; code: a reference solution)."""
    if task.kind == "math":
        if task.answer is None:
            raise ValueError(f"math task {task.id} has no reference answer")
        return f"Working it out carefully.\n\nFINAL ANSWER: \\boxed{{{task.answer}}}"
    solutions = task.tests.solutions if task.tests is not None else []
    if not solutions:
        raise ValueError(f"code task {task.id} has no reference solution to answer with")
    return f"FINAL ANSWER\n```python\n{solutions[0].strip()}\n```"


def wrong_reply(task: Task) -> str:
    """A well-formed reply that grades as incorrect for ``task``."""
    if task.kind == "math":
        return f"I think it is this.\n\nFINAL ANSWER: \\boxed{{{WRONG_MATH_ANSWER}}}"
    return f"FINAL ANSWER\n```python\n{WRONG_PROGRAM}```"


class OracleLLM:
    """TEST DOUBLE of an LLM that knows the reference answers of ``tasks``.

    For each call it finds the task whose prompt occurs in the chat (the longest match) and returns
    :func:`correct_reply` when ``policy(agent, messages, task)`` is true, else :func:`wrong_reply`.
    ``policy`` defaults to always correct; a bool fixes it. Agents matching ``approve_agents``
    (critics/reviewers) reply ``APPROVED`` so reflection loops stop. A chat that mentions no known
    task gets ``fallback``.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        policy: bool | Callable[[str | None, Messages, Task], bool] = True,
        approve_agents: str = r"(critic|reviewer|verifier).*",
        fallback: str = "I cannot tell.",
    ) -> None:
        self.tasks = sorted(tasks, key=lambda t: len(t.prompt), reverse=True)
        self.policy = policy
        self.approve_agents = approve_agents
        self.fallback = fallback
        self.calls = 0

    def find_task(self, messages: Messages) -> Task | None:
        text = "\n".join(m["content"] for m in messages)
        for task in self.tasks:
            if task.prompt and task.prompt in text:
                return task
        return None

    def reply(self, agent: str | None, messages: Messages) -> str:
        self.calls += 1
        if agent is not None and re.fullmatch(self.approve_agents, agent.split("#")[0]):
            return "APPROVED"
        if agent is None and messages and re.search(r"\b(reviewer|critic)\b", messages[0]["content"], re.I):
            return "APPROVED"
        task = self.find_task(messages)
        if task is None:
            return self.fallback
        ok = self.policy if isinstance(self.policy, bool) else self.policy(agent, messages, task)
        return correct_reply(task) if ok else wrong_reply(task)

    def __call__(self, messages: Messages) -> str:
        return self.reply(None, messages)


def run_episode(
    env: Any,
    design: str,
    llm: ScriptedLLM | OracleLLM | Callable[[str | None, Messages], str],
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    max_steps: int = 1000,
) -> tuple[float, dict[str, Any], int]:
    """Reset ``env``, submit ``design`` (script text), answer every executor turn with ``llm``.

    Returns ``(total reward, final info, number of steps)``.
    """
    import json

    reply_fn = llm.reply if hasattr(llm, "reply") else llm
    obs, _ = env.reset(seed=seed, options=options)
    obs, reward, terminated, truncated, info = env.step(design)
    total, steps = float(reward), 1
    while not (terminated or truncated):
        if steps >= max_steps:
            raise AssertionError(f"episode did not end within {max_steps} steps")
        reply = reply_fn(obs["agent"], json.loads(obs["messages"]))
        obs, reward, terminated, truncated, info = env.step(reply)
        total += float(reward)
        steps += 1
    return total, info, steps
