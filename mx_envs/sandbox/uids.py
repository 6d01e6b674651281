"""Per-run uids that are never reused (standard library only).

Kernel state keyed by a uid can outlive the processes that made it (keyrings, per-user counts,
files on a writable file system). A run's uid therefore comes from a host-wide counter that only
grows: a small file in ``/run`` (cleared at boot, with every such kernel state) holds the next free
uid, and each supervisor claims a block of :data:`BLOCK` uids from it under ``flock``, then hands
them out one per run. Several pools, processes and restarts share the file, so two runs never
share a uid and no uid returns until the 32-bit range wraps (about four billion runs).
"""

from __future__ import annotations

import fcntl
import os

UID_BASE = 1_000_000
UID_LIMIT = 0xFFFF_FFFE - 1  # (uid_t)-1 and -2 are special
BLOCK = 4096
STATE_FILE = "/run/mx-sandbox-next-uid"
_FALLBACK_FILE = "/tmp/mx-sandbox-next-uid"


class UidAllocator:
    """Hands out fresh uids; one instance per supervisor process (not thread-safe)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or (STATE_FILE if os.access("/run", os.W_OK) else _FALLBACK_FILE)
        self._next = 0
        self._end = 0

    def next(self) -> int:
        if self._next >= self._end:
            self._next = self._claim()
            self._end = self._next + BLOCK
        uid = self._next
        self._next += 1
        return uid

    def _claim(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0).strip()
            start = int(raw) if raw.isdigit() else UID_BASE
            if start < UID_BASE or start + BLOCK > UID_LIMIT:
                start = UID_BASE  # wrapped: four billion runs ago
            data = str(start + BLOCK).encode()
            os.pwrite(fd, data.ljust(20), 0)
            return start
        finally:
            os.close(fd)
