"""Host end of one run: the I/O pump over its control socket and output pipes (standard library).

Output goes from the program straight into pipes the host reads here, capped per stream while the
run goes on (over the cap: truncated, the run killed). The supervisor's frames arrive on the
control socket; if that socket closes without a result the supervisor is dead, and the run is
reported as ``sandbox_error`` within :data:`SUPERVISOR_GONE_S` (its processes die with it).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any

from mx_envs.sandbox.api import Limits, RunResult, Verdict
from mx_envs.sandbox.verdict import classify
from mx_envs.sandbox.wire import FrameReader, encode_frame

KILL_GRACE_S = 5.0  # extra seconds the host waits past a limit before declaring the sandbox broken
SUPERVISOR_GONE_S = 0.5  # how long the pipes may stay open once the supervisor vanished


class RunIO:
    """Host end of one run: control socket and output pipes; drains them and builds the result."""

    def __init__(self, ctl: socket.socket, out_r: int, err_r: int, limits: Limits) -> None:
        self.ctl = ctl
        self.limits = limits
        self.fds = {out_r: "stdout", err_r: "stderr", ctl.fileno(): "ctl"}
        self.buf = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = {"stdout": False, "stderr": False}
        self.reader = FrameReader()
        self.result: dict[str, Any] | None = None
        self.started = False
        self.kill_reason: str | None = None
        self.ctl_lock = threading.Lock()
        self.poller = select.poll()
        for fd in self.fds:
            self.poller.register(fd, select.POLLIN)

    def send_ctl(self, frame: dict[str, Any]) -> None:
        with self.ctl_lock:
            try:
                self.ctl.sendall(encode_frame(frame))
            except OSError:
                pass

    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        self.send_ctl({"op": "kill", "reason": reason})

    def pump(self, timeout: float | None) -> bool:
        """Handle whatever is readable within ``timeout``; False once everything is closed."""
        if not self.fds:
            return False
        events = self.poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        for fd, _ev in events:
            name = self.fds.get(fd)
            if name is None:
                continue
            if name == "ctl":
                try:
                    data = self.ctl.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    self._close(fd)
                    continue
                try:
                    frames = self.reader.feed(data)
                except ValueError:
                    frames = []
                    self._close(fd)
                for frame in frames:
                    if frame.get("op") == "started":
                        self.started = True
                    elif frame.get("op") == "result":
                        self.result = frame
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                self._close(fd)
                continue
            buf = self.buf[name]
            room = self.limits.output_bytes - len(buf)
            if len(data) > room:
                buf += data[: max(room, 0)]
                self.truncated[name] = True
                if self.kill_reason is None:
                    self.kill("output")
            else:
                buf += data
        return bool(self.fds)

    def _close(self, fd: int) -> None:
        self.poller.unregister(fd)
        name = self.fds.pop(fd)
        if name != "ctl":
            os.close(fd)

    def drain(self, hard_deadline: float) -> None:
        """Pump until the result arrived and the pipes hit EOF, or the sandbox looks broken."""
        killed_at: float | None = None
        while self.fds:
            now = time.monotonic()
            if "ctl" not in self.fds.values():
                # With a result the tree is dead and the pipes close right after; without one the
                # supervisor died (its run dies with it). Bound the wait either way.
                hard_deadline = min(hard_deadline, now + (1.0 if self.result is not None else SUPERVISOR_GONE_S))
            if now >= hard_deadline:
                if self.result is not None or killed_at is not None:
                    break
                self.kill("host_timeout")
                killed_at = now
                hard_deadline = now + KILL_GRACE_S
            self.pump(hard_deadline - now)

    def close(self) -> None:
        for fd in list(self.fds):
            self._close(fd)
        self.ctl.close()

    def to_result(self) -> RunResult:
        out = self.buf["stdout"].decode("utf-8", errors="replace")
        err = self.buf["stderr"].decode("utf-8", errors="replace")
        r = self.result
        if r is None:
            return RunResult(
                verdict=Verdict.SANDBOX_ERROR,
                exit_code=None,
                stdout=out,
                stderr=err,
                stdout_truncated=self.truncated["stdout"],
                stderr_truncated=self.truncated["stderr"],
                message=(
                    "the sandbox supervisor died before reporting a result"
                    if self.started
                    else "the sandbox supervisor did not report a result"
                ),
            )
        verdict, message = classify(r, self.limits, any(self.truncated.values()))
        return RunResult(
            verdict=verdict,
            exit_code=r.get("exit_code"),
            stdout=out,
            stderr=err,
            stdout_truncated=self.truncated["stdout"],
            stderr_truncated=self.truncated["stderr"],
            wall_s=float(r.get("wall_s") or 0.0),
            cpu_s=float(r.get("cpu_s") or 0.0),
            peak_memory_mb=float(r.get("peak_memory_mb") or 0.0),
            oom_kills=int(r.get("oom_kills") or 0),
            signal=r.get("signal"),
            message=message,
            isolation=dict(r.get("isolation") or {}),
        )
