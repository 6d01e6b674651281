"""The host<->script protocol of the MAS runtime, and the host-side types of a run.

Two processes speak the protocol: the sandboxed script child (:mod:`~mx_envs.mas.runner` and
:mod:`~mx_envs.mas.lib`) and the host (:mod:`~mx_envs.mas.session`). Every message is one of the
dataclasses below; on the wire it is the JSON object its ``to_wire()`` returns, and the receiver
rebuilds it with :func:`parse_script_message` or :func:`parse_host_message`. They accept exactly those
shapes: a known ``type``, exactly its fields, each of its type and within the bounds here. Anything
else raises :class:`ProtocolViolation`.

Script -> host: :class:`AgentNotice` (``agent``), :class:`LLMCall` (``llm``, a request),
:class:`ToolRequest` (``tool``, a request), then one of :class:`ScriptResult` (``result``) or
:class:`ScriptError` (``error``). Host -> script: :class:`Init` (``init``) once, then one answer per
request: :class:`Reply` (``reply``) for ``llm``, :class:`ToolResult` (``tool_result``) for ``tool``.
A request is sent with the channel's ``request`` (the sandbox pauses the script's wall clock until
the answer); every other script message with ``send``.

The library never sends what the host rejects: it checks what a script hands it (names, chats,
options, the answer) with the functions here and raises ``MASError`` in the script instead (an
``exception`` ending). A message the host rejects is therefore one the runtime cannot produce, a forged
or corrupted frame, and the episode ends as :attr:`TerminationReason.PROTOCOL_VIOLATION`, with no
reward. A well-formed frame a script writes itself is no stronger than the library call it imitates
(a forged ``result`` is what ``return`` would have sent): what the host grades is only ever the answer
of a :class:`ScriptResult`.

A :class:`~mx_envs.mas.session.MASSession` is resumable: ``start(script, task_text)`` and
``reply(text)`` each return the script's next :class:`LLMRequest` or a :class:`Finished`.

Standard library only: the sandboxed child imports this module (preloaded in the warm server).
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypedDict

# ---------------------------------------------------------------- bounds (both sides check them)

TOOLS = ("python",)
ROLES = ("system", "user", "assistant")
OPTION_KEYS = ("max_tokens", "temperature", "top_p", "stop")
MAX_NAME_CHARS = 64  # an agent name as the script gives it
MAX_WIRE_NAME_CHARS = MAX_NAME_CHARS + 16  # with the library's "#n" suffix for a repeated name
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1000
MAX_ANSWER_DEPTH = 32  # nesting of lists/dicts in an answer (deeper answers are sent as their str)
MAX_VERDICT_CHARS = 64
ERROR_KINDS = ("missing_entry", "exception", "protocol")


class ProtocolViolation(ValueError):
    """A message outside the protocol: unknown type, missing/extra field, wrong type, out of bounds."""


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
    PROTOCOL_VIOLATION = "protocol_violation"  # the script sent a message the runtime never sends


# ---------------------------------------------------------------- field checks


def _str(value: Any, what: str, max_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise ProtocolViolation(f"{what} must be a string, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise ProtocolViolation(f"{what} longer than {max_chars} characters ({len(value)})")
    return value


def check_agent_name(name: Any, max_chars: int = MAX_WIRE_NAME_CHARS) -> str:
    """``name`` when it is a non-empty, stripped string of at most ``max_chars`` characters."""
    name = _str(name, "agent name", max_chars)
    if not name.strip() or name != name.strip():
        raise ProtocolViolation(f"agent name must be non-empty without surrounding spaces, got {name!r}")
    return name


def check_tools(tools: Any) -> tuple[str, ...]:
    """``tools`` as a tuple: distinct names from :data:`TOOLS`."""
    if not isinstance(tools, list | tuple):
        raise ProtocolViolation(f"tools must be a list, got {type(tools).__name__}")
    unknown = [t for t in tools if not isinstance(t, str) or t not in TOOLS]
    if unknown:
        raise ProtocolViolation(f"unknown tool(s) {unknown!r:.100}; available: {', '.join(TOOLS)}")
    if len(set(tools)) != len(tools):
        raise ProtocolViolation(f"repeated tools {list(tools)!r}")
    return tuple(tools)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_options(options: Any) -> LLMOptions:
    """The sampling options of a call, as sent: keys from :data:`OPTION_KEYS`, no ``None`` values.

    ``max_tokens`` a positive int; ``temperature``/``top_p`` finite numbers >= 0; ``stop`` a list of
    at most :data:`MAX_STOP_SEQUENCES` strings of at most :data:`MAX_STOP_CHARS` characters.
    """
    if not isinstance(options, dict):
        raise ProtocolViolation(f"options must be an object, got {type(options).__name__}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTION_KEYS:
            raise ProtocolViolation(f"unknown LLM option {key!r:.80}; known: {', '.join(OPTION_KEYS)}")
        if key == "max_tokens" and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ProtocolViolation(f"max_tokens must be a positive int, got {value!r:.80}")
        if key in ("temperature", "top_p") and not (_number(value) and value >= 0):
            raise ProtocolViolation(f"{key} must be a non-negative number, got {value!r:.80}")
        if key == "stop":
            if not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
                raise ProtocolViolation("stop must be a string or a list of strings")
            if len(value) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in value):
                raise ProtocolViolation(
                    f"stop takes at most {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_CHARS} characters"
                )
            value = list(value)
        out[key] = value
    return out  # type: ignore[return-value]


def check_chat(messages: Any) -> list[ChatMessage]:
    """A chat as sent: a list of ``{"role", "content"}`` objects, roles from :data:`ROLES`."""
    if not isinstance(messages, list):
        raise ProtocolViolation(f"messages must be a list, got {type(messages).__name__}")
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):  # the common case first: no string is formatted unless it fails
        if not (isinstance(m, dict) and len(m) == 2 and "role" in m and "content" in m):
            raise ProtocolViolation(f"message {i} must be an object with exactly 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ProtocolViolation(f"message {i} has role {role!r:.40}; roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            _str(content, f"content of message {i}")
        out.append({"role": role, "content": content})
    return out


def json_depth_ok(value: Any, max_depth: int = MAX_ANSWER_DEPTH) -> bool:
    """Whether ``value`` is plain JSON data (finite numbers, string keys) nested at most ``max_depth`` deep.

    Iterative, so a deep value cannot overflow the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, str | bool | int):
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                return False
            continue
        if isinstance(v, list | dict):
            if depth >= max_depth:
                return False
            if isinstance(v, dict):
                if not all(isinstance(k, str) for k in v):
                    return False
                v = v.values()
            stack.extend((x, depth + 1) for x in v)
            continue
        return False
    return True


# ---------------------------------------------------------------- messages


class ChatMessage(TypedDict):
    role: str
    content: str


class LLMOptions(TypedDict, total=False):
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]


def _payload(raw: Any, cls: type, fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields of ``raw`` for message ``cls``: exactly ``type`` plus ``fields``."""
    if not isinstance(raw, dict):
        raise ProtocolViolation(f"a message must be an object, got {type(raw).__name__}")
    keys = set(raw)
    want = {"type", *fields}
    if keys != want:
        extra, missing = sorted(map(str, keys - want)), sorted(want - keys)
        parts = ([f"unexpected field(s) {extra!r:.120}"] if extra else []) + (
            [f"missing field(s) {missing}"] if missing else []
        )
        raise ProtocolViolation(f"{cls.TYPE!r} message: {'; '.join(parts)}")  # type: ignore[attr-defined]
    return raw


@dataclass(frozen=True)
class AgentNotice:
    """Script -> host: sub-agent ``name`` exists (sent once per agent, before its first call)."""

    TYPE: ClassVar[str] = "agent"
    name: str
    tools: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "name": self.name, "tools": list(self.tools)}

    @classmethod
    def from_wire(cls, raw: Any) -> AgentNotice:
        f = _payload(raw, cls, ("name", "tools"))
        return cls(check_agent_name(f["name"]), check_tools(f["tools"]))


@dataclass(frozen=True)
class LLMCall:
    """Script -> host (request): agent ``agent`` wants a reply to its chat ``messages``."""

    TYPE: ClassVar[str] = "llm"
    agent: str
    messages: list[ChatMessage]
    options: LLMOptions = field(default_factory=dict)  # type: ignore[assignment]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "agent": self.agent, "messages": self.messages, "options": self.options}

    @classmethod
    def from_wire(cls, raw: Any) -> LLMCall:
        f = _payload(raw, cls, ("agent", "messages", "options"))
        return cls(check_agent_name(f["agent"]), check_chat(f["messages"]), check_options(f["options"]))


@dataclass(frozen=True)
class ToolRequest:
    """Script -> host (request): run ``code`` with ``tool`` for agent ``agent``."""

    TYPE: ClassVar[str] = "tool"
    agent: str
    tool: str
    code: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "agent": self.agent, "tool": self.tool, "code": self.code}

    @classmethod
    def from_wire(cls, raw: Any) -> ToolRequest:
        f = _payload(raw, cls, ("agent", "tool", "code"))
        (tool,) = check_tools([f["tool"]])
        return cls(check_agent_name(f["agent"]), tool, _str(f["code"], "tool code"))


@dataclass(frozen=True)
class ScriptResult:
    """Script -> host, last: what ``forward`` returned (JSON data, see :func:`json_depth_ok`)."""

    TYPE: ClassVar[str] = "result"
    answer: Any

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "answer": self.answer}

    @classmethod
    def from_wire(cls, raw: Any) -> ScriptResult:
        f = _payload(raw, cls, ("answer",))
        if not json_depth_ok(f["answer"]):
            raise ProtocolViolation(
                f"the answer is not plain JSON data nested at most {MAX_ANSWER_DEPTH} deep with finite numbers"
            )
        return cls(f["answer"])


@dataclass(frozen=True)
class ScriptError:
    """Script -> host, last: the run failed (``kind`` from :data:`ERROR_KINDS`; ``error`` the traceback)."""

    TYPE: ClassVar[str] = "error"
    kind: str
    error: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "kind": self.kind, "error": self.error}

    @classmethod
    def from_wire(cls, raw: Any) -> ScriptError:
        f = _payload(raw, cls, ("kind", "error"))
        if f["kind"] not in ERROR_KINDS:
            raise ProtocolViolation(f"error kind {f['kind']!r:.40}; kinds: {', '.join(ERROR_KINDS)}")
        return cls(f["kind"], _str(f["error"], "error text"))


@dataclass(frozen=True)
class Init:
    """Host -> script, first: the script's source and the task text."""

    TYPE: ClassVar[str] = "init"
    script: str
    task: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "script": self.script, "task": self.task}

    @classmethod
    def from_wire(cls, raw: Any) -> Init:
        f = _payload(raw, cls, ("script", "task"))
        return cls(_str(f["script"], "script"), _str(f["task"], "task"))


@dataclass(frozen=True)
class Reply:
    """Host -> script: the LLM's reply to the pending :class:`LLMCall`."""

    TYPE: ClassVar[str] = "reply"
    text: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "text": self.text}

    @classmethod
    def from_wire(cls, raw: Any) -> Reply:
        return cls(_str(_payload(raw, cls, ("text",))["text"], "reply text"))


@dataclass(frozen=True)
class ToolResult:
    """Host -> script: the outcome of the pending :class:`ToolRequest` (the sandbox verdict, output)."""

    TYPE: ClassVar[str] = "tool_result"
    verdict: str
    stdout: str
    stderr: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "verdict": self.verdict, "stdout": self.stdout, "stderr": self.stderr}

    @classmethod
    def from_wire(cls, raw: Any) -> ToolResult:
        f = _payload(raw, cls, ("verdict", "stdout", "stderr"))
        return cls(_str(f["verdict"], "verdict", MAX_VERDICT_CHARS), _str(f["stdout"], "stdout"),
                   _str(f["stderr"], "stderr"))


ScriptMessage = AgentNotice | LLMCall | ToolRequest | ScriptResult | ScriptError
HostMessage = Init | Reply | ToolResult
SCRIPT_MESSAGES: dict[str, type] = {c.TYPE: c for c in (AgentNotice, LLMCall, ToolRequest, ScriptResult, ScriptError)}
HOST_MESSAGES: dict[str, type] = {c.TYPE: c for c in (Init, Reply, ToolResult)}
REQUESTS = (LLMCall, ToolRequest)  # sent with the channel's request(): the script waits for an answer


def _parse(raw: Any, accepted: dict[str, type], sender: str, other: dict[str, type]) -> Any:
    if not isinstance(raw, dict):
        raise ProtocolViolation(f"a message must be an object, got {type(raw).__name__}")
    kind = raw.get("type")
    cls = accepted.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if isinstance(kind, str) and kind in other:
            raise ProtocolViolation(f"{kind!r} is a message to the {sender}, never from it")
        raise ProtocolViolation(f"unknown message type {kind!r:.80} from the {sender}")
    return cls.from_wire(raw)  # type: ignore[attr-defined]


def parse_script_message(raw: Any) -> ScriptMessage:
    """The typed form of a message the script sent; :class:`ProtocolViolation` if it is none."""
    return _parse(raw, SCRIPT_MESSAGES, "script", HOST_MESSAGES)


def parse_host_message(raw: Any) -> HostMessage:
    """The typed form of a message the host sent; :class:`ProtocolViolation` if it is none."""
    return _parse(raw, HOST_MESSAGES, "host", SCRIPT_MESSAGES)


# ---------------------------------------------------------------- host-side types of a run


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
    def design_valid(self) -> bool:
        return self.reason in (TerminationReason.COMPLETED,)
