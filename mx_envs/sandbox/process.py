"""Host side of the default sandbox backend: a warm pool of forked, isolated Python children.

See ``mx_envs/sandbox/README.md`` for the limits enforced and how. Standard library only.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mx_envs.sandbox.api import Limits, RunResult, Verdict
from mx_envs.sandbox.io_pump import KILL_GRACE_S, RunIO
from mx_envs.sandbox.verdict import classify  # noqa: F401 - re-exported (older imports)

log = logging.getLogger(__name__)

DEFAULT_PRELOAD: tuple[str, ...] = ("numpy", "sympy")
# Code run once in the pool server after the preloads, for modules whose first use is slow
# (sympy builds caches and imports its polys/solvers lazily: ~80 ms on the first factor()).
WARMUP: dict[str, str] = {
    # numpy imports numpy.random lazily (80 ms from disk, in every run that touches np.random)
    "numpy": "import numpy.random\nnumpy.random.default_rng(0).random(4)\n",
    "sympy": (
        "import sympy\n"
        "x, y = sympy.symbols('x y')\n"
        "sympy.factor(x**2 - 1); sympy.expand((x + y)**3); sympy.simplify(sympy.sin(x)**2 + sympy.cos(x)**2)\n"
        "sympy.solve(x**2 - 2, x); sympy.nsimplify(0.5); sympy.Rational(1, 3) + sympy.sqrt(2)\n"
        "sympy.sympify('x**2 + 1'); sympy.latex(x**2)\n"
    ),
}
# Environment of the pool server: an allow-list, so no token or key of the host is inherited.
SERVER_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ")
_SERVER_ENV_FIXED = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MX_ENVS_NO_REGISTER": "1",  # the server imports mx_envs.sandbox: no gymnasium in the pool
}
_PKG_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = "import sys; sys.path.insert(0, {root!r}); from mx_envs.sandbox.server import main; main(sys.argv[1])"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program)."""


class ChannelClosed(RuntimeError):
    """The sandboxed program's channel is closed (it exited or was killed)."""


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Server:
    """One running pool server process and the host end of its request socket."""

    def __init__(
        self,
        python: str,
        preload: list[str],
        pool_size: int,
        startup_timeout: float,
        warmup: list[str],
        max_pool_size: int = 256,
        kernel_controls: bool = True,
    ) -> None:
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: os.environ[k] for k in SERVER_ENV_ALLOW if k in os.environ}
        env.update(_SERVER_ENV_FIXED)
        cfg = json.dumps(
            {
                "fd": server_end.fileno(),
                "preload": preload,
                "pool_size": pool_size,
                "max_pool_size": max_pool_size,
                "warmup": warmup,
                "cgroups": kernel_controls,
                "pid_ns": kernel_controls,
            }
        )
        self.log = tempfile.TemporaryFile(prefix="mx-sandbox-server-")  # noqa: SIM115 - lives with the server
        self.proc = subprocess.Popen(
            [python, "-I", "-c", _BOOT.format(root=_PKG_ROOT), cfg],
            stdin=subprocess.PIPE,  # lifeline: the server exits when this host goes away
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            pass_fds=[server_end.fileno()],
            start_new_session=True,
            cwd="/",
        )
        server_end.close()
        self.sock = host_end
        ready, _, _ = select.select([self.proc.stdout], [], [], startup_timeout)
        line = self.proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if not line:
            self.close()
            raise SandboxError(f"sandbox pool server failed to start: {self.log_tail()}")
        self.info = json.loads(line)
        if self.info.get("failed"):
            log.warning("sandbox pool: preload failed for %s", self.info["failed"])

    def log_tail(self, n: int = 2000) -> str:
        try:
            self.log.seek(0)
            return self.log.read().decode(errors="replace")[-n:]
        except (OSError, ValueError):
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            self.sock.close()
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


class ProcessChannel:
    """A running ``start``-ed program: JSON-lines messages over a socket, output drained in a thread.

    Wall-clock semantics: while the program has an outstanding ``request`` (it sent one and the
    host has not answered yet), the supervisor's wall clock is paused; it resumes when the host
    sends the next message. CPU time (RLIMIT_CPU) is never paused, but a process blocked on a
    socket uses none. The host bounds its own waiting with ``recv(timeout)``.
    """

    def __init__(self, io: RunIO, chan: socket.socket, hard_deadline_s: float, max_message_bytes: int) -> None:
        self._io = io
        self._chan = chan
        self._rbuf = bytearray()
        self._eof = False
        self._pending_reply = False
        self._max = max_message_bytes
        self._send_lock = threading.Lock()
        self._done = threading.Event()
        self._hard_deadline_s = hard_deadline_s
        self._final: RunResult | None = None
        self._thread = threading.Thread(target=self._pump, name="mx-sandbox-channel", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while self._io.pump(None):
                pass
        finally:
            self._done.set()

    @property
    def awaiting_reply(self) -> bool:
        """True while the program waits in ``request()`` for the host's answer."""
        return self._pending_reply

    def hold(self) -> None:
        """Pause the run's wall clock until the next :meth:`send` (as if the program had made a
        request): for a program started ahead of time that waits for its first message."""
        with self._send_lock:
            if not self._pending_reply:
                self._pending_reply = True
                self._io.send_ctl({"op": "pause"})

    def send(self, message: dict[str, Any]) -> None:
        line = (json.dumps({"msg": message}, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            try:
                self._chan.sendall(line)
            except OSError as exc:
                raise ChannelClosed(f"the sandboxed program is gone: {exc}") from exc
            if self._pending_reply:
                self._pending_reply = False
                self._io.send_ctl({"op": "resume"})

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            nl = self._rbuf.find(b"\n")
            if nl >= 0:
                line = bytes(self._rbuf[:nl])
                del self._rbuf[: nl + 1]
                return self._decode(line)
            if self._eof:
                return None
            if len(self._rbuf) > self._max:
                self.kill()
                raise ChannelClosed(f"message over {self._max} bytes; program killed")
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no message from the sandboxed program within {timeout} s")
            ready, _, _ = select.select([self._chan], [], [], remaining)
            if not ready:
                continue
            try:
                data = self._chan.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self._eof = True
            else:
                self._rbuf += data

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            frame = json.loads(line)
        except (ValueError, RecursionError) as exc:
            self.kill()
            raise ChannelClosed(f"malformed message from the sandboxed program: {exc}") from exc
        if not isinstance(frame, dict):
            self.kill()
            raise ChannelClosed("malformed message from the sandboxed program")
        message = frame.get("req", frame.get("msg"))
        if message is None:  # None means "the program exited" to recv's caller: never a message
            self.kill()
            raise ChannelClosed("malformed message from the sandboxed program: a frame without a message")
        if "req" in frame:
            self._pending_reply = True
            self._io.send_ctl({"op": "pause"})
        return message

    def wait(self, timeout: float | None = None) -> RunResult:
        if self._final is not None:
            return self._final
        if not self._done.wait(timeout):
            raise TimeoutError(f"sandboxed program still running after {timeout} s")
        return self._finish()

    def terminate(self) -> None:
        """Ask for the run to be killed without waiting (collect the result later with :meth:`wait`)."""
        if self._final is None:
            self._io.kill("host")

    @property
    def done(self) -> bool:
        """True once the run's result is in (``wait`` then returns at once)."""
        return self._done.is_set()

    def kill(self) -> RunResult:
        if self._final is not None:
            return self._final
        self._io.kill("host")
        if not self._done.wait(self._hard_deadline_s):
            self._io.kill("host_timeout")
            self._done.wait(KILL_GRACE_S)
        return self._finish()

    def _finish(self) -> RunResult:
        if self._final is None:
            self._thread.join(timeout=1.0)
            self._final = self._io.to_result()
            if self._final.verdict is Verdict.KILLED and self._io.kill_reason == "host":
                self._final.message = "killed by the host (Channel.kill)"
            self._io.close()
            self._chan.close()
        return self._final

    def __enter__(self) -> ProcessChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class ProcessSandbox:
    """Default backend: a warm pool server forks one isolated child per run.

    ``preload`` modules are imported once in the pool server (default numpy and sympy), plus any
    ``extra_preload`` (e.g. ``"mx_envs.mas.lib"``); ``warmup`` also runs :data:`WARMUP` code for
    preloaded modules whose first use is slow. ``pool_size`` supervisors are kept warm; when all are
    busy (e.g. MAS scripts suspended while they wait for an LLM reply) the server adds supervisors,
    up to ``max_pool_size`` concurrent runs, after which runs queue. ``kernel_controls=False`` skips
    the per-run cgroup and PID namespace (the rlimit fallback of unprivileged hosts; for tests).
    Thread-safe; each process needs its own instance.
    """

    name = "process"

    def __init__(
        self,
        preload: tuple[str, ...] | list[str] = DEFAULT_PRELOAD,
        extra_preload: tuple[str, ...] | list[str] = (),
        pool_size: int = 4,
        max_pool_size: int = 256,
        python: str = sys.executable,
        startup_timeout: float = 120.0,
        max_message_bytes: int = 64 << 20,
        warmup: bool = True,
        kernel_controls: bool = True,
    ) -> None:
        self.warmup = warmup
        self.kernel_controls = kernel_controls
        self.preload = list(dict.fromkeys([*preload, *extra_preload]))
        self.pool_size = max(1, int(pool_size))
        self.max_pool_size = max(self.pool_size, int(max_pool_size))
        self.python = python
        self.startup_timeout = startup_timeout
        self.max_message_bytes = max_message_bytes
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()

    # -- server management
    def _get_server(self) -> _Server:
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            if self._pid != os.getpid():  # forked host: never share the parent's pool
                self._server, self._pid = None, os.getpid()
            if self._server is None or not self._server.alive():
                if self._server is not None:
                    log.warning("sandbox pool server died; restarting (log: %s)", self._server.log_tail(500))
                    self._server.close()
                warmup = [WARMUP[m] for m in self.preload if m in WARMUP] if self.warmup else []
                self._server = _Server(
                    self.python,
                    self.preload,
                    self.pool_size,
                    self.startup_timeout,
                    warmup,
                    self.max_pool_size,
                    self.kernel_controls,
                )
            return self._server

    def _drop_server(self, server: _Server) -> None:
        with self._lock:
            if self._server is server:
                server.close()
                self._server = None

    @property
    def server_pid(self) -> int | None:
        s = self._server
        return s.proc.pid if s is not None and s.alive() else None

    def warm_up(self) -> None:
        """Start the pool server now instead of on the first run."""
        self._get_server()

    def _submit(
        self, source: str, stdin: str | bytes, limits: Limits, files: dict[str, str | bytes] | None, channel: bool
    ) -> tuple[RunIO, socket.socket | None]:
        if not isinstance(source, str):
            raise TypeError(f"source must be str, not {type(source).__name__}")
        stdin_b = stdin.encode("utf-8", errors="surrogateescape") if isinstance(stdin, str) else bytes(stdin)
        payload = pickle.dumps({"source": source, "files": files or {}, "filename": "main.py"}, protocol=5)
        header = json.dumps({"limits": asdict(limits), "channel": channel}).encode()
        for _attempt in range(2):
            server = self._get_server()
            ctl_host, ctl_remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pfd = _memfd("mx-payload", payload)
            sfd = _memfd("mx-stdin", stdin_b)
            chan_host = chan_remote = None
            fds = [ctl_remote.fileno(), pfd, sfd, out_w, err_w]
            if channel:
                chan_host, chan_remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fds.append(chan_remote.fileno())
            try:
                socket.send_fds(server.sock, [header], fds)
                sent = True
            except OSError:
                sent = False
            finally:
                ctl_remote.close()
                for fd in (pfd, sfd, out_w, err_w):
                    os.close(fd)
                if chan_remote is not None:
                    chan_remote.close()
            io = RunIO(ctl_host, out_r, err_r, limits)
            if sent:
                return io, chan_host
            io.close()
            if chan_host is not None:
                chan_host.close()
            self._drop_server(server)
        raise SandboxError("could not submit the run to the sandbox pool server")

    # -- Sandbox API
    def run(
        self,
        source: str,
        stdin: str | bytes = "",
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> RunResult:
        limits = limits or Limits()
        for attempt in range(2):
            try:
                io, _ = self._submit(source, stdin, limits, files, channel=False)
            except SandboxError as exc:
                return RunResult(verdict=Verdict.SANDBOX_ERROR, exit_code=None, message=str(exc))
            try:
                io.drain(time.monotonic() + limits.wall_s + KILL_GRACE_S + 30.0)
                if io.result is None and not io.started and attempt == 0:
                    continue  # the server died before taking the run: retry on a fresh one
                return io.to_result()
            finally:
                io.close()
        return RunResult(verdict=Verdict.SANDBOX_ERROR, exit_code=None, message="sandbox pool unavailable")

    def start(
        self,
        source: str,
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> ProcessChannel:
        limits = limits or Limits()
        io, chan = self._submit(source, b"", limits, files, channel=True)
        assert chan is not None
        return ProcessChannel(io, chan, limits.wall_s + KILL_GRACE_S, self.max_message_bytes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._server is not None and self._pid == os.getpid():
                self._server.close()
            self._server = None

    def __enter__(self) -> ProcessSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[tuple[Any, ...], Any] = {}
_shared_lock = threading.Lock()


def get_sandbox(backend: str = "process", **kwargs: Any) -> Any:
    """A process-wide shared sandbox for ``backend`` and ``kwargs``, created on first use.

    Closed automatically at interpreter exit. ``backend`` is ``"process"`` or ``"docker"``.
    """
    key = (backend, os.getpid(), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _shared_lock:
        sb = _shared.get(key)
        if sb is None:
            if backend == "process":
                sb = ProcessSandbox(**kwargs)
            elif backend == "docker":
                from mx_envs.sandbox.docker_backend import DockerSandbox

                sb = DockerSandbox(**kwargs)
            else:
                raise ValueError(f"unknown sandbox backend {backend!r} (expected 'process' or 'docker')")
            if not _shared:
                atexit.register(_close_shared)
            _shared[key] = sb
        return sb


def default_sandbox() -> ProcessSandbox:
    """The shared default :class:`ProcessSandbox` (numpy and sympy preloaded)."""
    return get_sandbox("process")


def _close_shared() -> None:
    with _shared_lock:
        for sb in _shared.values():
            try:
                sb.close()
            except Exception:  # noqa: BLE001
                pass
        _shared.clear()
