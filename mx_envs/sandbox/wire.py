"""Framing shared by the host, the pool server and its supervisors (standard library only).

Control frames travel on a per-run ``SOCK_STREAM`` socket: a 4-byte big-endian length followed by
a UTF-8 JSON object. Host -> supervisor: ``{"op": "kill" | "pause" | "resume"}``. Supervisor ->
host: ``{"op": "started"}`` then ``{"op": "result", ...}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 24
MAX_STATUS = 1 << 16


def parse_bounded(raw: bytes, limit: int = MAX_STATUS) -> Any:
    """JSON from a less trusted peer, or ``None``: never raises, never reads more than ``limit``.

    Deep nesting (``[`` x 3000: RecursionError), huge numbers (ValueError in int conversion),
    invalid UTF-8 and oversize input all yield ``None``.
    """
    if not isinstance(raw, bytes | bytearray) or len(raw) > limit:
        return None
    try:
        return json.loads(raw)
    except Exception:  # noqa: BLE001 - RecursionError, ValueError, UnicodeDecodeError, MemoryError...
        return None


def encode_frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Incremental decoder: feed bytes, get complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ValueError(f"control frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4 : 4 + n])
            del self._buf[: 4 + n]
            frame = parse_bounded(body, MAX_FRAME)
            if not isinstance(frame, dict):
                raise ValueError("malformed control frame")
            out.append(frame)
        return out
