"""Inside a sandboxed program started with ``Sandbox.start``: talk to the host (standard library only).

Messages are JSON-able objects, one JSON line each way on the socket whose descriptor number is in
the environment variable ``MX_CHANNEL_FD``. ``request(obj)`` marks the message as awaiting a reply,
which pauses the run's wall clock on the host side until the reply is sent::

    from mx_envs.sandbox import channel
    reply = channel.request({"type": "llm", "agent": "solver", "messages": [...]})
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

ENV_VAR = "MX_CHANNEL_FD"

_lock = threading.Lock()
_sock: socket.socket | None = None
_rfile: Any = None


class ChannelUnavailable(RuntimeError):
    """Not running under ``Sandbox.start`` (no channel descriptor), or the host went away."""


def _connect() -> tuple[socket.socket, Any]:
    global _sock, _rfile
    if _sock is None:
        fd = os.environ.get(ENV_VAR)
        if fd is None:
            raise ChannelUnavailable(f"no host channel: ${ENV_VAR} is not set (not started with Sandbox.start)")
        _sock = socket.socket(fileno=int(fd))
        _rfile = _sock.makefile("rb")
    return _sock, _rfile


def _write(frame: dict[str, Any]) -> None:
    sock, _ = _connect()
    try:
        sock.sendall((json.dumps(frame, separators=(",", ":")) + "\n").encode())
    except OSError as exc:
        raise ChannelUnavailable(f"host channel closed: {exc}") from exc


def _read() -> Any:
    _, rfile = _connect()
    line = rfile.readline()
    if not line:
        raise ChannelUnavailable("host channel closed")
    return json.loads(line)["msg"]


def send(obj: Any) -> None:
    """Send one message to the host (no reply expected)."""
    with _lock:
        _write({"msg": obj})


def recv() -> Any:
    """Block until the host sends a message; return it."""
    with _lock:
        return _read()


def request(obj: Any) -> Any:
    """Send ``obj`` and block for the host's reply (the wall clock is paused meanwhile)."""
    with _lock:
        _write({"req": obj})
        return _read()
