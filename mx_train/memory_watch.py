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
from typing import Any

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
    """The kernel's record of this process's peak resident set (``ru_maxrss``).

    Linux carries the high-water mark across exec: a process forked from a big one (a test runner)
    reports at least its parent's size at the fork; started from a shell it is the process's own."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _glibc_function(name: str) -> Any:
    """glibc's function ``name`` through ctypes; ``None`` off Linux or where the C library lacks it
    (musl and others have neither ``malloc_trim`` nor ``mallopt``'s arena parameter)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim``); False elsewhere.

    Why: glibc keeps freed memory of its arenas (an update's gradients and activations, a rollout's
    KV caches) mapped, so the resident set after a phase stays at that phase's peak and the next
    phase's peak lands on top of it. Costs milliseconds per call (a walk over the heap).
    """
    trim = _glibc_function("malloc_trim")
    return trim is not None and bool(trim(0))


#: glibc's M_ARENA_MAX parameter of mallopt (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas of this process at ``arenas`` (``mallopt(M_ARENA_MAX)``); True when
    set. A ``MALLOC_ARENA_MAX`` in the environment is the user's choice and is left alone (False).

    Why: glibc gives threads their own arenas (up to 8 per core) and a freed block goes back to its
    thread's arena, where only that arena's allocations can reuse it. A rollout or an evaluation runs
    one thread per episode and the batcher's leader changes thread by thread, so the KV caches and
    activations of each step are spread over many arenas and the resident set grows with their
    fragments: `mx heldout`'s trained condition peaked at 3.99-4.05 GB with the default arenas and at
    3.00-3.14 GB with two, same result (benchmarks/results/heldout_memory.md). Call it before the threads
    start (the CLI does, first thing).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, int(arenas)))


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
    def phase(self, name: str, release: bool = False) -> Iterator[None]:
        """Attribute the resident set to ``name`` while the block runs (sampled at its edges too,
        so a block shorter than the interval still counts); ``release``: hand the heap's free pages
        back to the kernel when it ends (:func:`release_free_heap`)."""
        with self._lock:
            outer, self._current = self._current, name
        self._sample()
        try:
            yield
        finally:
            self._sample()
            if release:
                release_free_heap()
            with self._lock:
                self._current = outer

    def metrics(self) -> dict[str, float]:
        """``memory/peak_rss_gb/<phase>`` so far for every phase seen, and the process's
        ``memory/peak_rss_gb`` (the kernel's maximum, every phase and moment included)."""
        with self._lock:
            out = {f"memory/peak_rss_gb/{k}": v / _GB for k, v in sorted(self._peaks.items())}
        out["memory/peak_rss_gb"] = max_rss_bytes() / _GB
        return out
