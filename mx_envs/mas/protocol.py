"""Host-side types of the MAS script runtime: what a running design asks for and how it ends.

A :class:`~mx_envs.mas.session.MASSession` is resumable: ``start(script, task_text)`` and
``reply(text)`` each return the script's next :class:`LLMRequest` or a :class:`Finished`.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class TerminationReason(str, enum.Enum):  # noqa: UP042 - str() behaviour kept for 3.10
    COMPLETED = "completed"  # entry function returned an answer
    NO_CODE = "no_code"  # no script found in the designer's text
    SYNTAX_ERROR = "syntax_error"
    MISSING_ENTRY = "missing_entry"  # no `forward(task)` entry function
    EXCEPTION = "exception"  # the script raised (trimmed traceback in `error`)
    BUDGET_EXCEEDED = "budget_exceeded"  # LLM calls, sub-agents or message size (see `error`)
    TIMEOUT = "timeout"  # wall-clock budget of the episode
    SANDBOX_ERROR = "sandbox_error"
    TRUNCATED = "truncated"  # the host stopped the session (e.g. env closed / reset mid-episode)


@dataclass(frozen=True)
class Budgets:
    max_llm_calls: int = 24
    max_agents: int = 12
    wall_s: float = 120.0  # the script's own time (LLM time excluded), across the episode
    max_message_chars: int = 32_000  # any single message the script sends to an agent
    tool_wall_s: float = 10.0  # one tool (python) call
    tool_memory_mb: int = 1024
    max_tool_calls: int = 16  # tool runs per episode (their time is not script time, so capped apart)


@dataclass
class LLMRequest:
    """The script wants a reply from sub-agent ``agent`` given ``messages`` (its full chat)."""

    call_index: int  # 0-based count of LLM calls in this episode
    agent: str
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)  # e.g. max_tokens, temperature

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ToolCall:
    """A tool run made on behalf of an agent (recorded for traces)."""

    agent: str
    tool: str
    code: str
    verdict: str
    stdout: str
    stderr: str


@dataclass
class AgentTurn:
    """One LLM turn of a sub-agent: the chat it was given and the reply it got (for trajectories)."""

    call_index: int
    agent: str
    messages: list[dict[str, str]]
    reply: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finished:
    """The script is done: an answer (when ``reason`` is COMPLETED) or a failure."""

    reason: TerminationReason
    answer: Any = None  # what `forward` returned (str or a small JSON-able object)
    answer_text: str | None = None  # the answer as text for the grader
    error: str = ""  # trimmed traceback / which budget / what was missing
    llm_calls: int = 0
    agents: list[str] = field(default_factory=list)  # sub-agent names in order of creation
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def valid_design(self) -> bool:
        return self.reason in (TerminationReason.COMPLETED,)
