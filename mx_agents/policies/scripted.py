"""Scripted policies: deterministic replies from a table, for tests and smoke runs (no model)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mx_agents.action import Action
from mx_agents.backends.base import Message
from mx_agents.observation import ActorTurn, parse_observation

Reply = str | Callable[[list[Message]], str]
ReplyFn = Callable[[ActorTurn], str | None]


class ScriptedPolicy:
    """Replies keyed by agent and messages.

    ``design`` answers designer turns (text, or a callable of the designer's messages). Executor
    turns are looked up in order: ``fn(turn)`` (if given; ``None`` means "no opinion"), then
    ``rules`` — ``(agent_pattern, content_pattern, reply)`` triples whose regexes are searched in the
    agent name and the last message's content —, then ``replies[agent]``, then ``default``. A turn
    nothing matches raises :class:`LookupError` naming the agent (a test should fail loudly, not hang).
    ``calls`` counts the turns answered, per agent.
    """

    def __init__(
        self,
        design: Reply | None = None,
        replies: Mapping[str, Reply] | None = None,
        rules: Sequence[tuple[str, str, Reply]] = (),
        default: Reply | None = None,
        fn: ReplyFn | None = None,
        name: str = "scripted",
    ) -> None:
        self.design = design
        self.replies = dict(replies or {})
        self.rules = [(re.compile(a), re.compile(c, re.DOTALL), r) for a, c, r in rules]
        self.default = default
        self.fn = fn
        self.name = name
        self.calls: dict[str, int] = {}

    @staticmethod
    def _render(reply: Reply, messages: list[Message]) -> str:
        text = reply(messages) if callable(reply) else reply
        if not isinstance(text, str):
            raise TypeError(f"a scripted reply must be a string, got {type(text).__name__}")
        return text

    def reply_for(self, turn: ActorTurn) -> str:
        if turn.role == "designer":
            if self.design is None:
                raise LookupError("ScriptedPolicy has no design for a designer turn")
            return self._render(self.design, turn.messages)
        if self.fn is not None:
            text = self.fn(turn)
            if text is not None:
                return text
        last = turn.messages[-1]["content"] if turn.messages else ""
        for agent_re, content_re, reply in self.rules:
            if agent_re.search(turn.agent) and content_re.search(last):
                return self._render(reply, turn.messages)
        if turn.agent in self.replies:
            return self._render(self.replies[turn.agent], turn.messages)
        if self.default is not None:
            return self._render(self.default, turn.messages)
        raise LookupError(f"ScriptedPolicy has no reply for agent {turn.agent!r}")

    def act(self, observations: Sequence[Any]) -> list[Action]:
        actions = []
        for obs in observations:
            turn = parse_observation(obs)
            text = self.reply_for(turn)
            self.calls[turn.agent] = self.calls.get(turn.agent, 0) + 1
            actions.append(
                Action(text=text, role=turn.role, agent=turn.agent, source="scripted", messages=turn.messages)
            )
        return actions


SCRIPTED_MATH_REPLY = "Let me work it out step by step. The answer is \\boxed{0}."
SCRIPTED_CODE_REPLY = (
    "```python\nimport sys\n\ndef main():\n    data = sys.stdin.read().split()\n    print(len(data))\n\n"
    "main()\n```"
)


def builtin_scripted_policy() -> ScriptedPolicy:
    """The ``scripted`` spec: the library ``single`` design and fixed replies (a smoke test, no model).

    Sub-agents asked for code (their chat mentions a code block or Python program) get a small
    program; every other agent gets a boxed answer.
    """
    from mx_agents.policies.design_prompt import library_design_source
    from mx_agents.policies.fixed import fence

    code_hint = re.compile(r"```|python|program|function|stdin", re.IGNORECASE)

    def reply(turn: ActorTurn) -> str:
        text = "\n".join(m["content"] for m in turn.messages)
        return SCRIPTED_CODE_REPLY if code_hint.search(text) and "boxed" not in text else SCRIPTED_MATH_REPLY

    return ScriptedPolicy(design=fence(library_design_source("single")), fn=reply, name="scripted")
