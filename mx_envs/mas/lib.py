"""The library a designer's MAS script is written against (imported in scripts as ``mas``).

Standard library only and cheap to import, so the sandbox's warm server can preload it. Inside a
running script every LLM call and every tool run is a message to the host (see
:mod:`mx_envs.mas.runner`); nothing here talks to a model or runs agent-written code itself.

Public names: :class:`Agent`, :func:`pipeline`, :func:`ensemble`, :func:`majority_vote`,
:func:`reflect`, :func:`debate`, :func:`route`, :func:`extract_boxed`, :func:`extract_code`,
:func:`extract_answer`, :func:`final_answer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

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

TOOLS = ("python",)
OPTION_KEYS = ("max_tokens", "temperature", "top_p", "stop")
MAX_NAME_CHARS = 64
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
    _runtime.names.add(name)
    return name


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in OPTION_KEYS:
            raise MASError(f"unknown LLM option {key!r}; known: {', '.join(OPTION_KEYS)}")
        if key == "max_tokens" and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise MASError(f"max_tokens must be a positive int, got {value!r}")
        if key in ("temperature", "top_p") and (
            not isinstance(value, int | float) or isinstance(value, bool) or value < 0
        ):
            raise MASError(f"{key} must be a non-negative number, got {value!r}")
        if key == "stop":
            value = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(s, str) for s in value):
                raise MASError("stop must be a string or a list of strings")
        out[key] = value
    return out


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
        if len(name) > MAX_NAME_CHARS:
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
            _runtime.transport.notify({"type": "agent", "name": self.name, "tools": list(self.tools)})
            self._announced = True

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        """The chat as the LLM sees it: system message (if any) then the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    def __call__(self, prompt: str, **options: Any) -> str:
        return self.ask(prompt, **options)

    def ask(self, prompt: str, **options: Any) -> str:
        """Send ``prompt`` (plus the history) to the LLM; return the reply text."""
        if not isinstance(prompt, str):
            raise MASError(f"an agent prompt must be a string, got {type(prompt).__name__}")
        transport = _transport()
        if not self._announced:
            transport.notify({"type": "agent", "name": self.name, "tools": list(self.tools)})
            self._announced = True
        opts = {**self.options, **_check_options(options)}
        self.history.append({"role": "user", "content": prompt})
        reply = self._llm(transport, opts)
        rounds = 0
        while "python" in self.tools and rounds < self.max_tool_rounds and _wants_tool(reply):
            code = extract_code(reply, "python") or ""
            out = transport.request({"type": "tool", "agent": self.name, "tool": "python", "code": code})
            self.history.append({"role": "user", "content": _format_tool_output(out)})
            reply = self._llm(transport, opts)
            rounds += 1
        return reply

    def _llm(self, transport: Transport, opts: dict[str, Any]) -> str:
        answer = transport.request(
            {"type": "llm", "agent": self.name, "messages": self.messages(), "options": opts}
        )
        text = str(answer.get("text", ""))
        self.history.append({"role": "assistant", "content": text})
        return text


def _wants_tool(reply: str) -> bool:
    return (
        extract_code(reply, "python") is not None
        and "\\boxed" not in reply
        and FINAL_MARK not in reply.upper()
    )


def _format_tool_output(out: dict[str, Any]) -> str:
    text = str(out.get("stdout", ""))
    err = str(out.get("stderr", ""))
    if err:
        text += ("\n" if text else "") + err
    if len(text) > TOOL_OUTPUT_CHARS:
        half = TOOL_OUTPUT_CHARS // 2
        text = text[:half] + "\n...[output truncated]...\n" + text[-half:]
    verdict = str(out.get("verdict", "ok"))
    status = "" if verdict == "ok" else f" ({verdict})"
    return f"Python output{status}:\n```output\n{text.rstrip()}\n```"


# ---------------------------------------------------------------- answer extraction


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept.

    ``\\boxed 5`` (no braces) yields ``"5"``. Returns ``None`` when there is none.
    """
    if not isinstance(text, str):
        return None
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced (truncated): try an earlier box
        if m.group(0).startswith("\\boxed") and i > m.start() + len("\\boxed"):
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                return tail.group(0)
    return None


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


def extract_answer(text: str) -> str | None:
    """The comparable answer of a reply: last ``\\boxed{}`` content, else last python block."""
    if not isinstance(text, str):
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    code = extract_code(text, "python")
    return code.strip() if code is not None else None


def final_answer(text: Any, kind: str | None = None) -> str:
    """Format an answer for the grader.

    ``kind="math"``: ``\\boxed{X}`` (X: the last boxed content if any, else the whole text);
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
        return "\\boxed{" + (boxed if boxed is not None else s.strip()) + "}"
    if kind == "code":
        body = code if code is not None else s.strip()
        return "```python\n" + body.strip("\n") + "\n```"
    return s.strip()


# ---------------------------------------------------------------- composition helpers


def _norm(answer: Any) -> str:
    s = str(answer).strip().strip("$").strip()
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def majority_vote(answers: Iterable[Any], key: Callable[[Any], Any] | None = None) -> Any:
    """Most common answer (compared after ``key``, default: whitespace/``$`` stripped).

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
