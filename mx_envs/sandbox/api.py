"""The sandbox contract shared by every backend: limits in, a result out.

Backends (`process`, `docker`) implement :class:`Sandbox`. Everything here is standard library
only, so the API can be imported anywhere (including inside a warm pool server).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


class Verdict(str, enum.Enum):  # noqa: UP042 - str mixin kept for JSON/str compatibility
    """How a sandboxed run ended."""

    OK = "ok"  # exited with status 0 within every limit
    RUNTIME_ERROR = "runtime_error"  # non-zero exit status or an uncaught exception
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit reached
    MEMORY_EXCEEDED = "memory_exceeded"  # the run's memory budget reached (OOM kill in its cgroup)
    OUTPUT_EXCEEDED = "output_exceeded"  # stdout/stderr over the cap, or a file over the size limit
    KILLED = "killed"  # ended by a signal not caused by one of our limits
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; says nothing about the program


# The environment every backend gives a run (backends add their own keys): UTF-8 I/O, no bytecode
# writes, one BLAS/OpenMP thread so a run's CPU use is what its own code asks for.
BASE_CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


FILE_VIEW_ALLOWLIST = "allowlist"
FILE_VIEW_HOST = "host"
# Names a caller may pass as ``Limits.file_view``, and the view each one means.
FILE_VIEWS: dict[str, str] = {
    FILE_VIEW_ALLOWLIST: FILE_VIEW_ALLOWLIST,
    "default": FILE_VIEW_ALLOWLIST,
    "grading": FILE_VIEW_ALLOWLIST,
    FILE_VIEW_HOST: FILE_VIEW_HOST,
}


def canonical_file_view(name: object) -> str:
    """``"allowlist"`` or ``"host"`` for a name of :data:`FILE_VIEWS`; ``ValueError`` otherwise.

    An unknown name is refused rather than read as either view: a typo must not widen a run.
    """
    view = FILE_VIEWS.get(name) if isinstance(name, str) else None
    if view is None:
        raise ValueError(f"unknown file_view {name!r}; expected one of {sorted(FILE_VIEWS)}")
    return view


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. ``None`` means "backend default" where noted."""

    wall_s: float = 10.0
    cpu_s: float | None = None  # None: same as wall_s
    memory_mb: int = 1024  # resident memory of the whole run (cgroup; RLIMIT_AS only as fallback)
    max_processes: int = 32  # processes+threads the run may create (cgroup pids limit)
    output_bytes: int = 1 << 20  # cap on each of stdout and stderr
    file_size_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    open_files: int = 256  # RLIMIT_NOFILE
    network: bool = False  # True leaves networking as the host has it (never the default)
    # What of the file system the run sees (see ``file_view.py``). "allowlist" (the default; the
    # old names "default" and "grading" mean the same): a read-only world holding only the
    # interpreter, the stdlib, the packages of ``file_view.ALLOWED_PACKAGES`` and a private work
    # dir and tmp; no checkout, no data directory, no cache, no home, no other package. Every run of
    # policy-written code (MAS scripts, tool programs, judged candidates) gets it. "host": the host's
    # root, read-only, secrets masked: an explicit widening that no env asks for.
    file_view: str = FILE_VIEW_ALLOWLIST

    def __post_init__(self) -> None:
        object.__setattr__(self, "file_view", canonical_file_view(self.file_view))

    def effective_cpu_s(self) -> float:
        return float(self.cpu_s if self.cpu_s is not None else self.wall_s)


@dataclass
class RunResult:
    """Everything a caller may want to know about one sandboxed run."""

    verdict: Verdict
    exit_code: int | None  # None when ended by a signal
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_memory_mb: float = 0.0  # peak resident memory the run added (its cgroup's record)
    oom_kills: int = 0  # processes of the run the kernel OOM-killed at its memory limit
    signal: int | None = None
    message: str = ""  # human-readable reason for the verdict (e.g. which limit)
    isolation: dict[str, Any] = field(default_factory=dict)  # what was enforced (namespaces, uid, ...)

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        return d


@runtime_checkable
class Channel(Protocol):
    """A live sandboxed run with a message channel to the host (JSON objects, not stdout)."""

    def send(self, message: dict[str, Any]) -> None: ...

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Next message from the program; ``None`` when it has exited (then call :meth:`wait`).

        Raises ``TimeoutError`` if nothing arrived within ``timeout`` seconds.
        """

    def wait(self, timeout: float | None = None) -> RunResult: ...

    def kill(self) -> RunResult: ...


@runtime_checkable
class Sandbox(Protocol):
    """Runs untrusted Python source under :class:`Limits`."""

    name: str

    def run(
        self,
        source: str,
        stdin: str | bytes = "",
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> RunResult:
        """Run ``source`` as ``__main__`` to completion in a fresh private working directory.

        ``files`` are written into the working directory first. Never raises for anything the
        program does; a failure of the sandbox itself is ``Verdict.SANDBOX_ERROR``.
        """

    def start(
        self,
        source: str,
        limits: Limits | None = None,
        files: dict[str, str | bytes] | None = None,
    ) -> Channel:
        """Start ``source`` with a host channel; inside, ``mx_envs.sandbox.channel`` talks to it."""

    def close(self) -> None: ...
