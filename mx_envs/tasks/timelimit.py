"""Run a pure function under a wall-clock limit, from any thread.

math-verify's own limit uses ``signal.alarm`` (whole seconds, main thread only: it raises in worker
threads). Here: in the main thread a ``SIGALRM`` interval timer (sub-second, previous handler and
timer restored); in any other thread the call goes to a per-thread worker process, which is killed
and replaced when it overruns (a thread cannot be interrupted safely).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from typing import Any


class CallTimeout(BaseException):
    """The call did not finish within its limit.

    A ``BaseException`` so that libraries' ``except Exception`` blocks (math-verify has several)
    cannot swallow it; callers catch it by name.
    """


def _alarm_handler(signum: int, frame: Any) -> None:
    raise CallTimeout()


def _call_with_alarm(fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
    old_handler = signal.signal(signal.SIGALRM, _alarm_handler)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # someone else's timer (e.g. pytest-timeout) keeps its remaining time
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3))


def _worker_main(conn: Any) -> None:
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            conn.send((False, repr(exc)))


class _Worker:
    def __init__(self) -> None:
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        self.conn.send((fn, args))
        if not self.conn.poll(timeout_s):
            self.kill()
            raise CallTimeout()
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(value)
        return value

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(1)
        self.conn.close()


_local = threading.local()


def call_with_timeout(fn: Callable[..., Any], args: tuple, timeout_s: float | None) -> Any:
    """``fn(*args)``, raising :class:`CallTimeout` after ``timeout_s`` seconds (``None``: no limit).

    Off the main thread ``fn``, its arguments and its result must be picklable (module-level
    function); the first such call per thread starts a worker process (about a second).
    """
    if timeout_s is None or timeout_s <= 0:
        return fn(*args)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _call_with_alarm(fn, args, timeout_s)
    worker: _Worker | None = getattr(_local, "worker", None)
    if worker is None or not worker.proc.is_alive():
        worker = _local.worker = _Worker()
    try:
        return worker.call(fn, args, timeout_s)
    except CallTimeout:
        _local.worker = None
        raise
