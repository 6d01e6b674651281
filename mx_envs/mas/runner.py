"""Script side of a MAS session: runs inside the sandboxed child, never in the host.

The host starts :data:`BOOTSTRAP` with ``sandbox.start``; the child then speaks the typed messages
of :mod:`mx_envs.mas.protocol` over the sandbox channel (never stdout): it reads one
:class:`~mx_envs.mas.protocol.Init`, runs the design (the library sends the agent, LLM and tool
messages) and ends with one :class:`~mx_envs.mas.protocol.ScriptResult` or
:class:`~mx_envs.mas.protocol.ScriptError`.

Standard library only (plus :mod:`mx_envs.mas.lib` and :mod:`mx_envs.mas.protocol`), so a warm
sandbox server can preload it.
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
from mx_envs.mas.protocol import Init, ProtocolViolation, ScriptError, ScriptResult, json_depth_ok

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
    """``answer`` as a :class:`~mx_envs.mas.protocol.ScriptResult` carries it: itself when it is plain
    JSON data (finite numbers, at most :data:`~mx_envs.mas.protocol.MAX_ANSWER_DEPTH` deep), its JSON
    round trip when JSON can write it (tuples as lists), else its ``str``."""
    if isinstance(answer, str | bool) or answer is None:
        return answer
    try:
        answer = json.loads(json.dumps(answer, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return str(answer)
    return answer if json_depth_ok(answer) else str(answer)


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
            channel.send(ScriptError("missing_entry", "no callable forward(task)").to_wire())
            return
        lib._install(ChannelTransport(channel))
        try:
            answer = forward(task)
        finally:
            lib._install(None)
        message = ScriptResult(jsonable(answer)).to_wire()
    except BaseException as exc:  # noqa: BLE001 - everything the script does is reported, never raised
        message = ScriptError("exception", script_traceback(exc)).to_wire()
    channel.send(message)


def main(channel: ChildChannel | None = None) -> None:
    """Entry point of the sandboxed child (see :data:`BOOTSTRAP`)."""
    if channel is None:
        from mx_envs.sandbox import channel as sandbox_channel

        channel = sandbox_channel
    raw = channel.recv()
    try:
        init = Init.from_wire(raw)
    except ProtocolViolation as exc:
        channel.send(ScriptError("protocol", f"expected init: {exc}").to_wire())
        return
    run_design(channel, init.script, init.task)
