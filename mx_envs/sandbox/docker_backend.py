"""Docker backend: the same :class:`~mx_envs.sandbox.api.Sandbox` API, one container per run.

Needs the ``docker`` extra (``pip install metaagentx[docker]``), a reachable Docker daemon and an
image with Python: by default ``mx-sandbox:latest``, built locally from the host interpreter by
``mx sandbox build-image`` (:mod:`mx_envs.sandbox.docker_image`; built on first use if missing), so
nothing is pulled from a registry.

One run, as the host drives it:

1. ``create`` a container whose PID 1 is the runner (:mod:`mx_envs.sandbox.docker_runner`), with
   every limit as container options (:meth:`DockerSandbox.host_config_kwargs`): no network,
   memory = swap limit (tmpfs pages count: they are charged to the container's cgroup), pids,
   1 CPU, read-only root, ``noexec`` tmpfs ``/work`` and ``/tmp``, ``cap_drop=ALL``,
   ``no-new-privileges``, the daemon's default seccomp profile, uid 65534, no log storage;
2. ``attach`` (stdin, stdout, stderr) *before* ``start``, so no byte is missed;
3. :func:`~mx_envs.sandbox.docker_pump.pump` sends the bundle (files, source) and the program's
   stdin, reads and caps the output while the program runs, and kills the container at the wall
   deadline (counted from the runner's start marker, not from container start) or over the cap;
4. ``wait`` + ``inspect`` (``State.OOMKilled``), then ``remove``.

The verdict (:func:`decide`) uses only what the host and the daemon observed and the runner's
nonce-authenticated trailer (true wait status from ``wait4``, cgroup OOM-kill count); never the
program's exit code alone (``sys.exit(137)`` is an exit, not a kill) nor its output ("MemoryError"
on stderr is just text).

``start`` (a host channel) is not offered by this backend: the MAS runtime uses the process
backend for scripts.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mx_envs.sandbox import seccomp_policy
from mx_envs.sandbox.api import BASE_CHILD_ENV, Limits, RunResult, Verdict
from mx_envs.sandbox.docker_image import DEFAULT_TAG, FORMAT_VERSION, LABEL_FORMAT, LABEL_PYTHON
from mx_envs.sandbox.docker_pump import PumpResult, pump
from mx_envs.sandbox.docker_runner import MAGIC

DEFAULT_IMAGE = DEFAULT_TAG
FALLBACK_PYTHON = "/usr/local/bin/python3"  # where official python images keep it
RUNNER_OVERHEAD_MB = 32  # the runner interpreter's share, added to the program's memory budget
STARTUP_S = 30.0  # container start until the runner's start marker (a busy daemon is slow)
# The runner's own deadline past the wall limit: it only acts when the host is gone or stuck
# (then the verdict is a timeout either way), and bounds how long a run outlives a dead host.
BACKSTOP_MARGIN_S = 5.0
LABEL_OWNER = "mx.sandbox.owner"  # "<hostname>:<pid>" of the host process that made the container
LABEL_INSTANCE = "mx.sandbox.instance"  # which DockerSandbox of that process (several may share a pid)
CHILD_ENV = {
    **BASE_CHILD_ENV,
    "HOME": "/work",
    "TMPDIR": "/tmp",
}
# The process backend's list of closed kernel interfaces, stacked on the daemon's default profile.
SECCOMP_DENY: list[str] = sorted(seccomp_policy.DENIED)
SECCOMP_ENOSYS: list[str] = list(seccomp_policy.ENOSYS_CALLS)
_RUNNER_SOURCE = (Path(__file__).with_name("docker_runner.py")).read_text(encoding="utf-8")


class DockerUnavailable(RuntimeError):
    """The docker SDK is not installed, no Docker daemon answers, or the image cannot be had."""


@dataclass
class Observed:
    """Everything the verdict may depend on: host, daemon and runner observations."""

    pumped: PumpResult
    report: dict[str, Any] | None  # the runner's authenticated trailer, parsed
    oom_killed: bool  # the daemon's State.OOMKilled
    container_exit: int | None  # the daemon's exit status of PID 1 (the runner)


def decide(obs: Observed, limits: Limits) -> tuple[Verdict, str]:
    """The verdict policy: observed state only (see the module docstring)."""
    p, rep = obs.pumped, obs.report or {}
    oom = obs.oom_killed or int(rep.get("oom_kills") or 0) > 0
    if p.output_exceeded or max(p.stdout_bytes, p.stderr_bytes) > limits.output_bytes:
        return Verdict.OUTPUT_EXCEEDED, f"output over the cap of {limits.output_bytes} bytes per stream"
    if p.timed_out:
        return Verdict.TIMEOUT, f"wall-clock limit of {limits.wall_s:g} s reached"
    if oom:
        return (
            Verdict.MEMORY_EXCEEDED,
            f"container memory limit reached (OOM kill; budget {limits.memory_mb} MB)",
        )
    if p.startup_timed_out:
        return Verdict.SANDBOX_ERROR, f"the container did not start the program within {STARTUP_S:g} s"
    if obs.report is None:
        return (
            Verdict.SANDBOX_ERROR,
            f"the runner ended without a report (container exit {obs.container_exit})",
        )
    if "setup_error" in rep:
        return Verdict.SANDBOX_ERROR, f"runner: {rep['setup_error']}"
    if rep.get("backstop"):
        return Verdict.TIMEOUT, "the runner's own deadline ended the run (the host did not)"
    sig, code = rep.get("signal"), rep.get("exit")
    if sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and float(rep.get("cpu_s") or 0) >= limits.effective_cpu_s()
    ):
        return Verdict.TIMEOUT, f"CPU-time limit of {limits.effective_cpu_s():g} s reached"
    if sig == signal.SIGXFSZ:
        return Verdict.OUTPUT_EXCEEDED, f"file size limit of {limits.file_size_mb} MB reached"
    if sig is not None:
        return Verdict.KILLED, f"terminated by signal {sig}"
    if code is None:
        return Verdict.SANDBOX_ERROR, "the runner could not tell how the program ended"
    if code != 0:
        return Verdict.RUNTIME_ERROR, f"exit status {code}"
    return Verdict.OK, ""


def bundle(source: str, files: dict[str, str | bytes] | None, header: dict[str, Any]) -> bytes:
    """The runner's stdin prefix: magic, header length, JSON header, then the file bytes in order."""
    blobs = {k: (v.encode("utf-8") if isinstance(v, str) else bytes(v)) for k, v in (files or {}).items()}
    blobs["main.py"] = source.encode("utf-8", errors="surrogateescape")
    hdr = dict(header, files=[[name, len(data)] for name, data in blobs.items()], main="main.py")
    head = json.dumps(hdr).encode()
    return MAGIC + len(head).to_bytes(4, "big") + head + b"".join(blobs.values())


class DockerSandbox:
    """Runs each program in a fresh, network-less, read-only container (see the module docstring)."""

    name = "docker"

    def __init__(
        self, image: str | None = None, client: Any = None, build: bool = True, warm: int = 1
    ) -> None:
        try:
            import docker  # the `docker` extra
        except ImportError as exc:
            raise DockerUnavailable(
                "the docker SDK is not installed (pip install metaagentx[docker])"
            ) from exc
        try:
            self.client = client or docker.from_env(timeout=120, max_pool_size=64)
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any connection failure means "no daemon"
            raise DockerUnavailable(f"no Docker daemon reachable (dockerd): {exc}") from exc
        self.image = image or DEFAULT_IMAGE
        self.api = getattr(self.client, "api", self.client)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.instance = os.urandom(6).hex()
        self._live: set[str] = set()  # containers of ours not yet removed (a sweep leaves them alone)
        self.python = FALLBACK_PYTHON
        self._info: dict[str, Any] = {}
        self._removals = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mx-docker-bg")
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()
        self.warm = int(warm) if client is None else 0
        self._warm: list[_Launched] = []
        self._warm_key: tuple[Any, ...] | None = None
        self._warm_inflight = 0
        self._closed = False
        if client is None:  # a real daemon: resolve the image now, so the first run is not slower
            self._prepare(build)

    def _prepare(self, build: bool) -> None:
        import docker

        try:
            meta = self.api.inspect_image(self.image)
        except docker.errors.ImageNotFound:
            if not (build and self.image == DEFAULT_IMAGE):
                raise DockerUnavailable(
                    f"image {self.image!r} not found; build it offline with `mx sandbox build-image`"
                ) from None
            from mx_envs.sandbox.docker_image import build_image

            build_image(self.client, tag=self.image)
            meta = self.api.inspect_image(self.image)
        labels = (meta.get("Config") or {}).get("Labels") or {}
        if build and self.image == DEFAULT_IMAGE and labels.get(LABEL_FORMAT) != FORMAT_VERSION:
            # An image of an older layout (other packages than the world's): rebuild, never reuse.
            from mx_envs.sandbox.docker_image import build_image

            build_image(self.client, tag=self.image)
            meta = self.api.inspect_image(self.image)
            labels = (meta.get("Config") or {}).get("Labels") or {}
        self.python = labels.get(LABEL_PYTHON) or FALLBACK_PYTHON
        try:
            self._info = self.api.info()
        except Exception:  # noqa: BLE001 - only used to describe the isolation
            self._info = {}
        self.sweep()

    # ------------------------------------------------------------------ options
    def host_config_kwargs(self, limits: Limits) -> dict[str, Any]:
        """The container's host options that enforce ``limits`` (public so tests can check them)."""
        mem = (int(limits.memory_mb) + RUNNER_OVERHEAD_MB) << 20
        tmpfs_mb = max(16, int(limits.memory_mb))  # tmpfs pages are charged to the memory limit
        return {
            "network_mode": "bridge" if limits.network else "none",
            "mem_limit": mem,
            "memswap_limit": mem,  # no swap: tmpfs and anonymous memory stay in the budget
            "pids_limit": int(limits.max_processes) + 1,  # + the runner
            "nano_cpus": int(1e9),
            "read_only": True,
            "tmpfs": {
                "/work": f"rw,noexec,nosuid,nodev,size={tmpfs_mb}m,uid=65534,gid=65534,mode=0700",
                "/tmp": f"rw,noexec,nosuid,nodev,size={tmpfs_mb}m,mode=1777",
            },
            "shm_size": min(64, tmpfs_mb) << 20,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "ulimits": [
                {"name": "nofile", "soft": limits.open_files, "hard": limits.open_files},
                {"name": "core", "soft": 0, "hard": 0},
            ],
            "log_config": {"type": "none", "config": {}},
            "init": False,  # the runner is PID 1 on purpose
        }

    def create_kwargs(self, limits: Limits) -> dict[str, Any]:
        """Everything but the host config: command, user, stdin, labels."""
        return {
            "image": self.image,
            "command": [self.python, "-I", "-S", "-c", _RUNNER_SOURCE],
            "user": "65534:65534",
            "working_dir": "/work",
            "environment": {"LANG": "C.UTF-8"},
            "stdin_open": True,  # with detach=False the SDK also sets StdinOnce: our EOF closes fd 0
            "detach": False,
            "tty": False,
            "labels": {LABEL_OWNER: self.owner, LABEL_INSTANCE: self.instance},
        }

    def _host_config(self, limits: Limits) -> Any:
        from docker.types import LogConfig, Ulimit

        kw = self.host_config_kwargs(limits)
        kw["ulimits"] = [Ulimit(**u) for u in kw["ulimits"]]
        kw["log_config"] = LogConfig(type=kw["log_config"]["type"])
        return self.api.create_host_config(**kw)

    def isolation(self, limits: Limits) -> dict[str, Any]:
        kw = self.host_config_kwargs(limits)
        sec = self._info.get("SecurityOptions") or []
        return {
            "backend": "docker",
            "image": self.image,
            "network": kw["network_mode"],
            "readonly_root": True,
            "uid": 65534,
            "cap_drop": "ALL",
            "no_new_privileges": True,
            "seccomp": "docker default" if any("seccomp" in s for s in sec) else "unknown",
            "pid_ns": True,
            "file_view": "image",  # the image is the allow-list: interpreter, stdlib, chosen packages
            "memory_limit_mb": kw["mem_limit"] >> 20,
            "pids_limit": kw["pids_limit"],
            "cgroup": f"v{self._info.get('CgroupVersion', '?')}",
        }

    # ------------------------------------------------------------------ runs
    def run(
        self,
        source: str,
        stdin: str | bytes = "",
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> RunResult:
        limits = limits or Limits()
        stdin_b = stdin.encode("utf-8", errors="surrogateescape") if isinstance(stdin, str) else bytes(stdin)
        nonce = secrets.token_hex(16)
        header = {
            "nonce": nonce,
            "python": self.python,
            "env": CHILD_ENV,
            "cpu_s": limits.effective_cpu_s(),
            "file_size": int(limits.file_size_mb) << 20,
            "backstop_s": float(limits.wall_s) + BACKSTOP_MARGIN_S,
            "seccomp_deny": SECCOMP_DENY,
            "seccomp_enosys": SECCOMP_ENOSYS,
        }
        try:
            payload = bundle(source, files, header) + stdin_b
        except (TypeError, ValueError) as exc:
            return RunResult(
                verdict=Verdict.SANDBOX_ERROR, exit_code=None, message=f"docker: bad input: {exc}"
            )
        launched: _Launched | None = None
        try:
            launched = self._take_warm(limits)
            warm = launched is not None
            if launched is None:
                launched = self._launch(limits)
            self._refill(limits)
            pumped, status, state = self._drive(launched, payload, nonce, limits)
            if warm and pumped.eof and pumped.started is None and not pumped.stderr_bytes:
                # A pre-started container that died while idle (daemon restart): once more, cold.
                self._discard(launched)
                launched = self._launch(limits)
                pumped, status, state = self._drive(launched, payload, nonce, limits)
        except Exception as exc:  # noqa: BLE001 - a daemon failure is the sandbox's failure
            return RunResult(verdict=Verdict.SANDBOX_ERROR, exit_code=None, message=f"docker: {exc}")
        finally:
            if launched is not None:
                self._discard(launched)
        report = None
        if pumped.trailer is not None:
            try:
                report = json.loads(pumped.trailer)
                report = report if isinstance(report, dict) else None
            except ValueError:
                report = None
        obs = Observed(pumped, report, bool(state.get("OOMKilled")), status.get("StatusCode"))
        verdict, message = decide(obs, limits)
        rep = report or {}
        wall = (pumped.ended or 0.0) - pumped.started if pumped.started is not None else 0.0
        return RunResult(
            verdict=verdict,
            exit_code=rep.get("exit") if isinstance(rep.get("exit"), int) else None,
            stdout=pumped.stdout.decode("utf-8", errors="replace"),
            stderr=pumped.stderr.decode("utf-8", errors="replace"),
            stdout_truncated=pumped.stdout_bytes > limits.output_bytes,
            stderr_truncated=pumped.stderr_bytes > limits.output_bytes,
            wall_s=round(wall, 4),
            cpu_s=float(rep.get("cpu_s") or 0.0),
            peak_memory_mb=round(int(rep.get("maxrss_kb") or 0) / 1024, 1),
            oom_kills=max(int(rep.get("oom_kills") or 0), int(obs.oom_killed)),
            signal=rep.get("signal") if isinstance(rep.get("signal"), int) else None,
            message=message,
            isolation=dict(self.isolation(limits), seccomp_extra=_seccomp_extra(rep)),
        )

    def _launch(self, limits: Limits) -> _Launched:
        """Create, attach and start a container; its runner then waits for the bundle on stdin."""
        cid = self.api.create_container(host_config=self._host_config(limits), **self.create_kwargs(limits))[
            "Id"
        ]
        with self._lock:
            self._live.add(cid)
        try:
            sock = self.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            try:
                self.api.start(cid)
            except Exception:
                _close(sock)
                raise
        except Exception:
            self._remove(cid)
            raise
        return _Launched(cid, sock, _pool_key(limits))

    def _drive(
        self, launched: _Launched, payload: bytes, nonce: str, limits: Limits
    ) -> tuple[PumpResult, dict[str, Any], dict[str, Any]]:
        """Pump one started container to its end; then the daemon's exit status and state."""
        cid = launched.cid
        # The daemon finishes a kill only once the output copy drains, so the kill must not block
        # the thread that reads the stream: it runs beside the pump.
        killer = threading.Thread(target=self._kill, args=(cid,), name="mx-docker-kill", daemon=True)
        try:
            pumped = pump(
                getattr(launched.sock, "_sock", launched.sock),
                payload,
                cap=limits.output_bytes,
                wall_s=limits.wall_s,
                startup_s=STARTUP_S,
                nonce=nonce.encode(),
                kill=killer.start,
            )
        finally:
            _close(launched.sock)
        if not pumped.eof:
            self._kill(cid)
        if killer.is_alive():
            killer.join(STARTUP_S)
        status = self.api.wait(cid, timeout=STARTUP_S)
        state = self.api.inspect_container(cid).get("State") or {}
        return pumped, status, state

    # ------------------------------------------------------------------ warm containers
    def _take_warm(self, limits: Limits) -> _Launched | None:
        key = _pool_key(limits)
        with self._lock:
            if self._warm_key == key and self._warm:
                return self._warm.pop()
        return None

    def _refill(self, limits: Limits) -> None:
        """Keep ``warm`` started containers for the limits of the latest run, from their second use.

        A one-off run (``mx sandbox exec``) or a change of limits starts nothing extra; a loop over
        the same limits (grading candidates) finds a container started while it was elsewhere.
        """
        if self.warm <= 0 or self._closed:
            return
        key = _pool_key(limits)
        stale: list[_Launched] = []
        with self._lock:
            if self._warm_key != key:  # new limits: pre-start only once they are used again
                stale, self._warm, self._warm_key = self._warm, [], key
                missing = 0
            else:
                missing = self.warm - len(self._warm) - self._warm_inflight
                self._warm_inflight += max(0, missing)
        for old in stale:
            self._discard(old)
        for _ in range(max(0, missing)):
            self._track(self._removals.submit(self._prestart, limits, key))

    def _prestart(self, limits: Limits, key: tuple[Any, ...]) -> None:
        try:
            launched = self._launch(limits)
        except Exception:  # noqa: BLE001 - a failed pre-start only means the next run starts cold
            with self._lock:
                self._warm_inflight -= 1
            return
        with self._lock:
            self._warm_inflight -= 1
            keep = not self._closed and self._warm_key == key and len(self._warm) < self.warm
            if keep:
                self._warm.append(launched)
        if not keep:
            self._discard(launched)

    def _discard(self, launched: _Launched) -> None:
        """Close the stream (an idle runner then exits on EOF) and remove the container, off-path."""
        _close(launched.sock)
        try:
            self._track(self._removals.submit(self._remove, launched.cid))
        except RuntimeError:  # closed meanwhile: remove here
            self._remove(launched.cid)

    def _track(self, fut: Future[None]) -> None:
        with self._lock:
            self._pending = {f for f in self._pending if not f.done()}
            self._pending.add(fut)

    def warm_ids(self) -> list[str]:
        """Ids of the pre-started containers waiting for a run (idle runners, no program yet)."""
        with self._lock:
            return [w.cid for w in self._warm]

    def _kill(self, cid: str) -> None:
        try:
            self.api.kill(cid)
        except Exception:  # noqa: BLE001 - already gone or stopping: the wait that follows tells
            pass

    def _remove(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True)
        except Exception:  # noqa: BLE001 - a removal already in progress, or the daemon went away
            pass
        with self._lock:
            self._live.discard(cid)

    def sweep(self) -> int:
        """Remove containers left by sandbox hosts of this machine that no longer exist, and our own
        leftovers; never a container another live sandbox (of this process too) or we still use."""
        removed = 0
        host = socket.gethostname()
        try:
            found = self.api.containers(all=True, filters={"label": LABEL_OWNER}, quiet=False)
        except Exception:  # noqa: BLE001
            return 0
        for c in found:
            owner = (c.get("Labels") or {}).get(LABEL_OWNER, "")
            h, _, pid = owner.rpartition(":")
            if h != host or not pid.isdigit():
                continue
            if owner != self.owner and _alive(int(pid)):
                continue
            if owner == self.owner:
                with self._lock:
                    ours_in_use = c["Id"] in self._live
                if (c.get("Labels") or {}).get(LABEL_INSTANCE) != self.instance or ours_in_use:
                    continue
            self._remove(c["Id"])
            removed += 1
        return removed

    def start(
        self, source: str, limits: Limits | None = None, files: dict[str, str | bytes] | None = None
    ) -> Any:
        raise NotImplementedError("DockerSandbox has no host channel; use the process backend for start()")

    def settle(self) -> None:
        """Wait until every finished run's container is removed and pre-starts are done."""
        while True:
            with self._lock:
                pending = [f for f in self._pending if not f.done()]
            if not pending:
                return
            wait_futures(pending)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            warm, self._warm = self._warm, []
        for launched in warm:
            self._discard(launched)
        self.settle()
        self._removals.shutdown(wait=True)
        if self._info:
            self.sweep()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Launched:
    """A started container whose runner waits for its bundle; used by exactly one run."""

    cid: str
    sock: Any  # the attach socket (stdin, stdout, stderr)
    key: tuple[Any, ...]


def _pool_key(limits: Limits) -> tuple[Any, ...]:
    """The limits a container is created with (the rest travels in the bundle's header)."""
    return (limits.memory_mb, limits.max_processes, limits.network, limits.open_files)


def _seccomp_extra(report: dict[str, Any]) -> str:
    """What the runner's own filter closed on top of the daemon's profile, for ``isolation``."""
    extra = report.get("seccomp_extra")
    if isinstance(extra, list):
        return f"{len(extra)} calls closed (process backend's list)"
    return str(extra) if extra else "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close(sock: Any) -> None:
    for obj in (getattr(sock, "_response", None), sock):
        try:
            if obj is not None:
                obj.close()
        except Exception:  # noqa: BLE001
            pass
