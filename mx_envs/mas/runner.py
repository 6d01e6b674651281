"""Script side of a MAS session: runs inside the sandboxed child, never in the host.

The host starts :data:`BOOTSTRAP` with ``sandbox.start``; the child then speaks JSON messages
over the sandbox channel (never stdout):

host -> child: ``{"type": "init", "script", "task"}`` once, then one answer per request:
``{"type": "reply", "text"}`` for ``llm``, ``{"type": "tool_result", "verdict", "stdout",
"stderr"}`` for ``tool``.

child -> host: ``{"type": "agent", "name", "tools"}`` (notice, no answer),
``{"type": "llm", "agent", "messages", "options"}``, ``{"type": "tool", "agent", "tool",
"code"}``, and finally one of ``{"type": "result", "answer"}`` or ``{"type": "error", "kind",
"error"}``.

Standard library only (plus :mod:`mx_envs.mas.lib`), so a warm sandbox server can preload it.
"""

from __future__ import annotations

import builtins
import json
import linecache
import sys
import threading
import traceback
from typing import Any, Protocol

from mx_envs.mas import lib

SCRIPT_FILENAME = "<design>"
MAX_TRACE_FRAMES = 8
BOOTSTRAP = "from mx_envs.mas.runner import main\nmain()\n"


class ChildChannel(Protocol):
    """What the runner needs from the sandbox's in-child channel (:mod:`mx_envs.sandbox.channel`)."""

    def send(self, message: dict[str, Any]) -> None: ...

    def recv(self) -> dict[str, Any]: ...

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send and block for the host's answer (the sandbox pauses the wall clock meanwhile)."""


class ChannelTransport:
    """:class:`mx_envs.mas.lib.Transport` over a child channel; serialised for scripts with threads."""

    def __init__(self, channel: ChildChannel) -> None:
        self._channel = channel
        self._lock = threading.Lock()

    def notify(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._channel.send(message)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            answer = self._channel.request(message)
        if not isinstance(answer, dict):
            raise lib.MASError(f"host sent a malformed answer: {answer!r:.200}")
        return answer


def script_traceback(exc: BaseException) -> str:
    """The traceback trimmed to the script's own frames (the last few), then the exception."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SCRIPT_FILENAME]
    lines = []
    if frames:
        lines.append("Traceback (script frames only):\n")
        if len(frames) > MAX_TRACE_FRAMES:
            lines.append(f"  ... {len(frames) - MAX_TRACE_FRAMES} earlier frames omitted\n")
            frames = frames[-MAX_TRACE_FRAMES:]
        lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines).rstrip()


def jsonable(answer: Any) -> Any:
    """``answer`` itself when JSON can carry it unchanged, else its ``str``."""
    if isinstance(answer, str | int | float | bool) or answer is None:
        return answer
    try:
        return json.loads(json.dumps(answer))
    except (TypeError, ValueError, RecursionError):
        return str(answer)


def script_namespace() -> dict[str, Any]:
    """Globals a design runs in: the library's public names, pre-imported."""
    ns: dict[str, Any] = {name: getattr(lib, name) for name in lib.__all__}
    ns.update({"__name__": "__mas_design__", "__builtins__": builtins, "__file__": SCRIPT_FILENAME})
    return ns


def run_design(channel: ChildChannel, script: str, task: str) -> None:
    """Define the design, call ``forward(task)`` with host calls enabled, send the outcome."""
    lib._reset()
    sys.modules["mas"] = lib  # so that `from mas import Agent` works in a script
    linecache.cache[SCRIPT_FILENAME] = (len(script), None, script.splitlines(True), SCRIPT_FILENAME)
    ns = script_namespace()
    try:
        exec(compile(script, SCRIPT_FILENAME, "exec"), ns)
        forward = ns.get("forward")
        if not callable(forward):
            channel.send({"type": "error", "kind": "missing_entry", "error": "no callable forward(task)"})
            return
        lib._install(ChannelTransport(channel))
        try:
            answer = forward(task)
        finally:
            lib._install(None)
        message = {"type": "result", "answer": jsonable(answer)}
    except BaseException as exc:  # noqa: BLE001 - everything the script does is reported, never raised
        message = {"type": "error", "kind": "exception", "error": script_traceback(exc)}
    channel.send(message)


def main(channel: ChildChannel | None = None) -> None:
    """Entry point of the sandboxed child (see :data:`BOOTSTRAP`)."""
    if channel is None:
        from mx_envs.sandbox import channel as sandbox_channel

        channel = sandbox_channel
    init = channel.recv()
    if not isinstance(init, dict) or init.get("type") != "init":
        channel.send({"type": "error", "kind": "protocol", "error": f"expected init, got {init!r:.200}"})
        return
    run_design(channel, str(init.get("script", "")), str(init.get("task", "")))
