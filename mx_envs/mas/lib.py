"""The library a designer's MAS script is written against (imported in scripts as ``mas``).

Standard library only and cheap to import, so the sandbox's warm server can preload it. Inside a
running script every LLM call and every tool run is a message to the host, one of the typed messages
of :mod:`mx_envs.mas.protocol` (see :mod:`mx_envs.mas.runner`); nothing here talks to a model or runs
agent-written code itself. What a script hands the library is checked with the protocol's own checks
here, so a script mistake is an exception in the script, never a message the host rejects.

Answers are read by the grader's extractor (:mod:`mx_envs.tasks.math_extract`, standard library
only): ``extract_boxed``, ``extract_answer`` and ``majority_vote`` see in a reply exactly the answer
the grader will read in it.

Public names: :class:`Agent`, :func:`pipeline`, :func:`ensemble`, :func:`majority_vote`,
:func:`reflect`, :func:`debate`, :func:`route`, :func:`extract_boxed`, :func:`extract_code`,
:func:`extract_answer`, :func:`final_answer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from mx_envs.mas.protocol import (
    MAX_NAME_CHARS,
    MAX_WIRE_NAME_CHARS,
    ROLES,
    TOOLS,
    AgentNotice,
    ChatMessage,
    LLMCall,
    ProtocolViolation,
    Reply,
    ToolRequest,
    ToolResult,
    check_options,
)
from mx_envs.tasks.math_extract import extract_all as _extract_all
from mx_envs.tasks.math_extract import last_boxed as _last_boxed
from mx_envs.tasks.math_extract import vote_key as _vote_key

__all__ = [
    "Agent",
    "pipeline",
    "ensemble",
    "majority_vote",
    "reflect",
    "debate",
    "route",
    "extract_boxed",
    "extract_code",
    "extract_answer",
    "final_answer",
    "MASError",
]

TOOL_OUTPUT_CHARS = 2000
FINAL_MARK = "FINAL ANSWER"

PYTHON_TOOL_PROMPT = (
    "You can run Python. Write code in a ```python block and it is executed in a fresh process "
    "(print what you need to see); its output comes back in the next message. When you are done, "
    "reply without a python block, or put the final answer in \\boxed{...}, or write FINAL ANSWER "
    "before a final program."
)


class MASError(RuntimeError):
    """Misuse of the library inside a script (wrong arguments, calls outside ``forward``)."""


class Transport(Protocol):
    """How the script talks to the host: one JSON-able dict out, the host's answer back."""

    def notify(self, message: dict[str, Any]) -> None: ...

    def request(self, message: dict[str, Any]) -> dict[str, Any]: ...


class _Runtime:
    """Per-run state: the transport (set only while ``forward`` runs) and agent names taken."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.names: set[str] = set()

    def reset(self) -> None:
        self.transport = None
        self.names = set()


_runtime = _Runtime()


def _install(transport: Transport | None) -> None:
    """Runner hook: enable (or, with ``None``, disable) host calls."""
    _runtime.transport = transport


def _reset() -> None:
    """Runner hook: forget agents and the transport (a fresh run in a forked child)."""
    _runtime.reset()


def _transport() -> Transport:
    if _runtime.transport is None:
        raise MASError(
            "agents can only be called while forward(task) runs inside a MAS session "
            "(module-level code of a design may only define things)"
        )
    return _runtime.transport


def _unique_name(name: str) -> str:
    base, n = name, 1
    while name in _runtime.names:
        n += 1
        name = f"{base}#{n}"
    if len(name) > MAX_WIRE_NAME_CHARS:
        raise MASError(f"too many agents named {base[:80]!r}")
    _runtime.names.add(name)
    return name


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as the protocol sends them (``None`` dropped, one stop string as a list), or MASError."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "stop" and isinstance(value, str):
            value = [value]
        elif key == "stop" and isinstance(value, tuple):
            value = list(value)
        out[key] = value
    try:
        return dict(check_options(out))
    except ProtocolViolation as exc:
        raise MASError(str(exc)) from None


def _chat_message(m: Any, i: int) -> ChatMessage:
    if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
        raise MASError(
            f"agent history item {i} must be a dict with a role in {ROLES} and a string content, got {m!r:.100}"
        )
    return {"role": m["role"], "content": m["content"]}


class Agent:
    """A named sub-agent: a system prompt, its own chat history, optional tools.

    ``agent(prompt)`` (same as ``agent.ask(prompt)``) appends ``prompt`` as a user message, asks
    the host for the LLM's reply given the full chat, appends the reply and returns its text.
    With ``tools=("python",)`` a reply holding a ```python block (and no ``\\boxed{}`` or
    ``FINAL ANSWER``) has its last block run by the host in a separate sandbox; the output is
    sent back as the next user message, for up to ``max_tool_rounds`` rounds.
    Names are unique per run: a repeated name gets a ``#2``, ``#3``... suffix.
    """

    def __init__(
        self,
        name: str,
        system: str = "",
        tools: Sequence[str] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        max_tool_rounds: int = 3,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise MASError(f"Agent name must be a non-empty string, got {name!r}")
        if len(name.strip()) > MAX_NAME_CHARS:
            raise MASError(f"Agent name longer than {MAX_NAME_CHARS} characters: {name[:80]!r}")
        if not isinstance(system, str):
            raise MASError(f"system must be a string, got {type(system).__name__}")
        if isinstance(tools, str):
            tools = (tools,)
        unknown = [t for t in tools if t not in TOOLS]
        if unknown:
            raise MASError(f"unknown tool(s) {unknown}; available: {', '.join(TOOLS)}")
        if not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
            raise MASError(f"max_tool_rounds must be an int >= 0, got {max_tool_rounds!r}")
        self.options = _check_options({"max_tokens": max_tokens, "temperature": temperature})
        self.tools = tuple(tools)
        self.max_tool_rounds = max_tool_rounds
        self.system = system
        if "python" in self.tools:
            self.system = (system + "\n\n" if system else "") + PYTHON_TOOL_PROMPT
        self.history: list[dict[str, str]] = []
        self.name = _unique_name(name.strip())
        # An agent created at module level is announced to the host at its first call.
        self._announced = False
        if _runtime.transport is not None:
            _runtime.transport.notify(AgentNotice(self.name, self.tools).to_wire())
            self._announced = True

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        """The chat as the LLM sees it: system message (if any) then the history.

        Raises :class:`MASError` when the script put something other than a chat message (a dict with
        a role in :data:`~mx_envs.mas.protocol.ROLES` and a string content) into ``history``; keys other
        than ``role`` and ``content`` are not sent.
        """
        head: list[ChatMessage] = [{"role": "system", "content": self.system}] if self.system else []
        return head + [_chat_message(m, i) for i, m in enumerate(self.history)]  # type: ignore[return-value]

    def __call__(self, prompt: str, **options: Any) -> str:
        return self.ask(prompt, **options)

    def ask(self, prompt: str, **options: Any) -> str:
        """Send ``prompt`` (plus the history) to the LLM; return the reply text."""
        if not isinstance(prompt, str):
            raise MASError(f"an agent prompt must be a string, got {type(prompt).__name__}")
        transport = _transport()
        if not self._announced:
            transport.notify(AgentNotice(self.name, self.tools).to_wire())
            self._announced = True
        opts = {**self.options, **_check_options(options)}
        self.history.append({"role": "user", "content": prompt})
        reply = self._llm(transport, opts)
        rounds = 0
        while "python" in self.tools and rounds < self.max_tool_rounds and _wants_tool(reply):
            code = extract_code(reply, "python") or ""
            out = _host_answer(transport.request(ToolRequest(self.name, "python", code).to_wire()), ToolResult)
            self.history.append({"role": "user", "content": _format_tool_output(out)})
            reply = self._llm(transport, opts)
            rounds += 1
        return reply

    def _llm(self, transport: Transport, opts: dict[str, Any]) -> str:
        call = LLMCall(self.name, self.messages(), opts)  # type: ignore[arg-type]
        text = _host_answer(transport.request(call.to_wire()), Reply).text
        self.history.append({"role": "assistant", "content": text})
        return text


def _host_answer(raw: Any, cls: type[Any]) -> Any:
    """The host's answer to a request as ``cls`` (:class:`Reply` or :class:`ToolResult`)."""
    try:
        return cls.from_wire(raw)
    except ProtocolViolation as exc:
        raise MASError(f"host sent a malformed answer: {exc}") from None


def _wants_tool(reply: str) -> bool:
    return (
        extract_code(reply, "python") is not None
        and "\\boxed" not in reply
        and FINAL_MARK not in reply.upper()
    )


def _format_tool_output(out: ToolResult) -> str:
    text, err = out.stdout, out.stderr
    if err:
        text += ("\n" if text else "") + err
    if len(text) > TOOL_OUTPUT_CHARS:
        half = TOOL_OUTPUT_CHARS // 2
        text = text[:half] + "\n...[output truncated]...\n" + text[-half:]
    status = "" if out.verdict == "ok" else f" ({out.verdict})"
    return f"Python output{status}:\n```output\n{text.rstrip()}\n```"


# ---------------------------------------------------------------- answer extraction


def extract_boxed(text: str) -> str | None:
    """Content of the LAST top-level ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), as the grader reads it.

    A box inside a box is part of the outer one; ``\\{``/``\\}`` are content, not grouping;
    ``\\boxed 5`` (a space, then a token) is a box of ``5``. ``None`` when there is no box, or when the
    last one never closes (a truncated reply has no answer; an earlier box is not taken instead).
    """
    if not isinstance(text, str):
        return None
    return _last_boxed(text)


_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.S | re.M)
_LANG_ALIASES = {"python": {"python", "py", "python3"}}


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


def extract_code(text: str, lang: str | None = "python") -> str | None:
    """The LAST fenced code block in ``lang`` (``None``: any language).

    Falls back to the last block without a language tag. An unclosed final fence counts (a
    reply cut at the token limit). Returns ``None`` when there is no block.
    """
    if not isinstance(text, str):
        return None
    blocks = _blocks(text)
    if lang is None:
        return blocks[-1][1].rstrip("\n") if blocks else None
    names = _LANG_ALIASES.get(lang.lower(), {lang.lower()})
    for wanted in (names, {""}):
        for tag, body in reversed(blocks):
            if tag in wanted:
                return body.rstrip("\n")
    return None


def extract_answer(text: str, kind: str | None = None) -> str | None:
    """The comparable answer of a reply.

    ``kind="math"``: exactly what the grader reads (:func:`mx_envs.tasks.math_extract.extract_answer`):
    the last box (``None`` when the last box never closes), else the last "final answer" phrase
    ("The final answer is 7", "Answer: 7", "#### 7"). ``kind="code"``: the last python block.
    ``kind=None``: a box as for math; without a box, the last python block; else the phrase.
    """
    if kind not in (None, "math", "code"):
        raise MASError(f"extract_answer kind must be 'math', 'code' or None, got {kind!r}")
    if not isinstance(text, str):
        return None
    if kind != "code":
        ex = _extract_all(text)
        if kind == "math" or ex.source == "boxed":
            return None if ex.unclosed or not ex.answers else ex.answers[-1]
    code = extract_code(text, "python")
    if code is not None or kind == "code":
        return code.strip() if code is not None else None
    return ex.answers[-1] if ex.answers else None


def final_answer(text: Any, kind: str | None = None) -> str:
    """Format an answer for the grader.

    ``kind="math"``: ``\\boxed{X}`` (X: the answer the grader reads, :func:`extract_answer` with
    ``kind="math"``, else the whole text);
    ``kind="code"``: the last python block (or the whole text) as one ```python block;
    ``kind=None``: math if the text has a box, code if it has a python block, else the text.
    """
    if kind not in (None, "math", "code"):
        raise MASError(f"final_answer kind must be 'math', 'code' or None, got {kind!r}")
    s = text if isinstance(text, str) else str(text)
    boxed = extract_boxed(s)
    code = extract_code(s, "python")
    if kind is None:
        kind = "math" if boxed is not None else "code" if code is not None else None
    if kind == "math":
        answer = extract_answer(s, "math")
        return "\\boxed{" + (answer if answer is not None else s.strip()) + "}"
    if kind == "code":
        body = code if code is not None else s.strip()
        return "```python\n" + body.strip("\n") + "\n```"
    return s.strip()


# ---------------------------------------------------------------- composition helpers


def _norm(answer: Any) -> str:
    """The vote's key: the form the grader compares (:func:`~mx_envs.tasks.math_extract.vote_key`) for
    a one-line answer; a program (several lines) with trailing spaces and blank edges dropped."""
    s = str(answer)
    if "\n" in s.strip():
        return "\n".join(line.rstrip() for line in s.strip("\n").splitlines())
    return _vote_key(s)


def majority_vote(answers: Iterable[Any], key: Callable[[Any], Any] | None = None) -> Any:
    """Most common answer (compared after ``key``; default: the form the grader compares, so answers
    merged here get one grade, e.g. ``$\\dfrac{1}{2}$`` and ``\\frac{1}{2}``).

    Ties go to the answer seen first; ``None`` and empty answers do not vote. Returns ``None``
    when nothing votes.
    """
    key = key or _norm
    counts: dict[Any, int] = {}
    first: dict[Any, Any] = {}
    for a in answers:
        if a is None or (isinstance(a, str) and not a.strip()):
            continue
        k = key(a)
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, a)
    if not counts:
        return None
    best = max(counts.values())
    for k in first:  # insertion order = first seen
        if counts[k] == best:
            return first[k]
    return None  # unreachable


def _call(target: Agent | Callable[[str], Any], prompt: str) -> Any:
    return target(prompt)


def pipeline(agents: Sequence[Agent | Callable[[str], Any]], task: str) -> str:
    """Sequential hand-offs: agent 1 gets the task; agent k gets the task and agent k-1's output.

    Returns the last agent's reply.
    """
    if not agents:
        raise MASError("pipeline needs at least one agent")
    out = _call(agents[0], task)
    for prev, agent in zip(agents, agents[1:], strict=False):
        name = getattr(prev, "name", "the previous agent")
        out = _call(agent, f"Task:\n{task}\n\nOutput of {name}:\n{out}\n\nDo your part of the work.")
    return str(out)


def _candidates(replies: Sequence[str]) -> str:
    return "\n\n".join(f"### Candidate {i + 1}\n{r}" for i, r in enumerate(replies))


def ensemble(
    agents: Sequence[Agent | Callable[[str], Any]],
    task: str,
    aggregate: str | Agent | Callable[[list[str]], Any] = "vote",
) -> Any:
    """Every agent answers ``task`` independently; then aggregate.

    ``"vote"``: the first reply whose :func:`extract_answer` is the majority; an :class:`Agent`:
    a judge that sees every candidate and writes the final reply; a callable: ``f(replies)``.
    """
    if not agents:
        raise MASError("ensemble needs at least one agent")
    if aggregate != "vote" and not callable(aggregate):
        raise MASError(f"aggregate must be 'vote', an Agent or a callable, got {aggregate!r}")
    replies = [str(_call(a, task)) for a in agents]
    if aggregate == "vote":
        winner = majority_vote([extract_answer(r) for r in replies])
        if winner is None:
            return replies[0]
        for r in replies:
            a = extract_answer(r)
            if a is not None and _norm(a) == _norm(winner):
                return r
        return replies[0]
    if isinstance(aggregate, Agent):
        return aggregate(
            f"Task:\n{task}\n\n{_candidates(replies)}\n\n"
            "Compare the candidates, decide which is correct, and give the final answer in the "
            "format the task needs."
        )
    return aggregate(replies)


_APPROVED_RE = re.compile(r"\bAPPROVED\b")
_NOT_APPROVED_RE = re.compile(r"\bNOT\s+APPROVED\b", re.I)


def approved(critique: str) -> bool:
    """True when a critic's reply says ``APPROVED`` (and not ``NOT APPROVED``)."""
    return bool(_APPROVED_RE.search(critique)) and not _NOT_APPROVED_RE.search(critique)


def reflect(solver: Agent, critic: Agent, task: str, rounds: int = 2) -> str:
    """Solve, then up to ``rounds`` critique/revise cycles; stops once the critic says APPROVED.

    Returns the solver's latest reply.
    """
    if rounds < 0:
        raise MASError("rounds must be >= 0")
    solution = solver(task)
    for _ in range(rounds):
        critique = critic(
            f"Task:\n{task}\n\nProposed solution:\n{solution}\n\n"
            "Check it carefully. If it is correct, reply APPROVED. Otherwise explain the errors."
        )
        if approved(critique):
            break
        solution = solver(
            f"A reviewer found problems:\n{critique}\n\nRevise your solution and give the final answer "
            "in the same format."
        )
    return solution


def debate(
    debaters: Sequence[Agent], judge: Agent | None, task: str, rounds: int = 2
) -> str:
    """``rounds`` rounds: each debater answers, then revises after seeing the others' answers.

    A ``judge`` writes the final reply from the last answers; without one, majority vote.
    """
    if not debaters:
        raise MASError("debate needs at least one debater")
    if rounds < 1:
        raise MASError("debate needs rounds >= 1")
    answers = [str(d(task)) for d in debaters]
    for _ in range(rounds - 1):
        new = []
        for i, d in enumerate(debaters):
            others = "\n\n".join(
                f"### {debaters[j].name}\n{a}" for j, a in enumerate(answers) if j != i
            )
            new.append(
                str(
                    d(
                        f"The other agents answered:\n{others}\n\nConsider their reasoning, then "
                        "give your updated solution and final answer."
                    )
                )
            )
        answers = new
    if judge is None:
        return ensemble([lambda _t, a=a: a for a in answers], task, "vote")
    return judge(
        f"Task:\n{task}\n\n{_candidates(answers)}\n\n"
        "These are the debaters' final answers. Decide which is correct and give the final answer "
        "in the format the task needs."
    )


def route(
    router: Agent,
    task: str,
    routes: dict[str, Agent | Callable[[str], Any]],
    default: str | None = None,
) -> Any:
    """Ask ``router`` to pick one key of ``routes``; run that route on ``task``.

    The earliest route name mentioned in the router's reply wins (case-insensitive); if none
    is, ``default`` (or the first route).
    """
    if not routes:
        raise MASError("route needs at least one route")
    if default is not None and default not in routes:
        raise MASError(f"default route {default!r} is not one of {list(routes)}")
    names = list(routes)
    reply = router(
        f"Task:\n{task}\n\nChoose who should handle it, one of: {', '.join(names)}. "
        "Reply with the name only."
    )
    best: tuple[int, str] | None = None
    for name in names:
        m = re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", reply, re.I)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name)
    choice = best[1] if best else (default or names[0])
    return _call(routes[choice], task)
