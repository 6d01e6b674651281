"""Peak resident memory of the training process, per phase of a step.

Why: ``/usr/bin/time -v`` gives one peak for a whole run; to cut it one must know whether it comes
from a rollout, an update, a checkpoint or the cold start. A daemon thread samples the resident set
(``/proc/self/statm``, a read of a few bytes) every ``interval_s`` and keeps the maximum of each
phase named with :meth:`PhaseRSS.phase`; the kernel's own peak (``ru_maxrss``) bounds them all.
Only this process: engines in processes of their own (vLLM) report their own memory.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_GB = 1e9


def current_rss_bytes() -> int:
    """Resident set of this process now (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def max_rss_bytes() -> int:
    """The kernel's record of this process's peak resident set (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class PhaseRSS:
    """Per-phase peaks of this process's resident set, sampled in a daemon thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = float(interval_s)
        self._peaks: dict[str, int] = {}
        self._current = "other"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PhaseRSS:
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample_loop, name="mx-rss-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        with self._lock:
            name = self._current
            if rss > self._peaks.get(name, 0):
                self._peaks[name] = rss

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the resident set to ``name`` while the block runs (sampled at its edges too,
        so a block shorter than the interval still counts)."""
        with self._lock:
            outer, self._current = self._current, name
        self._sample()
        try:
            yield
        finally:
            self._sample()
            with self._lock:
                self._current = outer

    def metrics(self) -> dict[str, float]:
        """``memory/peak_rss_gb/<phase>`` so far for every phase seen, and the process's
        ``memory/peak_rss_gb`` (the kernel's maximum, every phase and moment included)."""
        with self._lock:
            out = {f"memory/peak_rss_gb/{k}": v / _GB for k, v in sorted(self._peaks.items())}
        out["memory/peak_rss_gb"] = max_rss_bytes() / _GB
        return out
