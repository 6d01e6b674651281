"""Per-run cgroups: the kernel's memory, pids and CPU accounting for the whole run (standard library).

A run is every process it creates, and every page it makes the kernel hold: anonymous memory,
tmpfs files, memfds, page tables of its children. Per-process rlimits see none of that as a whole;
a memory cgroup charges all of it to the run, a pids cgroup caps its processes and threads, and the
cgroup's CPU counter adds up every thread's time. Each run gets its own cgroup, created by its
supervisor before the child is forked; the child joins it first thing (it writes ``0`` to the
``cgroup.procs`` descriptors it inherited), so everything it does is charged.

Layouts (decided once by the pool server, :func:`detect`):

- ``v2``: the unified hierarchy with the memory and pids controllers enabled for our subtree. Our own
  cgroup must not hold processes once it delegates controllers ("no internal processes"), so the
  pool server first moves itself into a leaf ``<base>/server``; runs are ``<base>/run-*``.
- ``v1`` (here, often ``hybrid``): one directory per controller hierarchy (``memory``, ``pids``;
  CPU time from ``cpuacct`` or the unified hierarchy's core ``cpu.stat``). Where a unified hierarchy
  is mounted beside them, its core ``cgroup.kill`` kills a run atomically; otherwise the run's
  processes are SIGKILLed one by one until ``cgroup.procs`` is empty (they cannot escape a cgroup).
- ``none``: no writable hierarchy (not root, read-only cgroupfs): callers fall back to rlimits and
  say so in ``RunResult.isolation``.

The memory budget is resident memory *added by the run*: the limit is the cgroup's usage when the
request arrives (the prepared child's few pages) plus ``memory_mb``; pages the child shares
copy-on-write with the warm server are charged to the server, not the run.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

ROOT = "/sys/fs/cgroup"
_MB = 1 << 20


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


_SWAP: dict[str, bool] = {}


def _swap_accounted(mem_dir: str) -> bool:
    """Whether a v1 memsw limit means anything here (swap configured and accounted); cached."""
    if "v" not in _SWAP:
        try:
            with open("/proc/meminfo") as fh:
                swap = any(line.startswith("SwapTotal:") and int(line.split()[1]) > 0 for line in fh)
        except (OSError, ValueError):
            swap = True
        _SWAP["v"] = swap and os.path.exists(f"{mem_dir}/memory.memsw.limit_in_bytes")
    return _SWAP["v"]


def _own_paths() -> dict[str, str]:
    """``{controller or "": path}`` of this process, from ``/proc/self/cgroup``."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _id, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _mounts() -> dict[str, str]:
    """``{"unified" or controller: mount point}`` of the mounted cgroup file systems."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = (right.split() + ["", "", ""])[:3]
            mp = left.split()[4]
            if fstype == "cgroup2":
                out.setdefault("unified", mp)
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("memory", "pids", "cpuacct", "freezer"):
                        out.setdefault(opt, mp)
    return out


@dataclass
class Layout:
    """Where this pool's cgroups live; ``mode`` is ``v2``, ``v1`` or ``none``."""

    mode: str
    memory: str | None = None  # base directory of the pool in each hierarchy used
    pids: str | None = None
    cpu: str | None = None  # v1 cpuacct base, or the unified base for cpu.stat
    unified: str | None = None  # unified base (v2, or hybrid: cgroup.kill and cpu.stat)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {
            "cgroup": self.mode,
            "cgroup_kill": "cgroup.kill" if self.unified and os.path.exists(f"{self.unified}/cgroup.kill") else "signal loop",
            "cgroup_notes": list(self.notes),
        }


def detect(tag: str) -> Layout:
    """Create this pool's cgroup subtree (``mx-sandbox-<tag>``) in what the kernel offers.

    Never raises: a refusal anywhere yields ``Layout("none")`` with the reason in ``notes``.
    """
    notes: list[str] = []
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        return Layout("none", notes=[f"cannot read cgroup mounts: {exc}"])
    name = f"mx-sandbox-{tag}"
    uni_mp = mounts.get("unified")
    if uni_mp and "memory" not in mounts:
        layout = _detect_v2(uni_mp, own.get("", "/"), name, notes)
        if layout is not None:
            return layout
    if "memory" in mounts and "pids" in mounts:
        try:
            mem = _mkdir(f"{mounts['memory']}{own.get('memory', '/').rstrip('/')}/{name}")
            pids = _mkdir(f"{mounts['pids']}{own.get('pids', '/').rstrip('/')}/{name}")
            unified = None
            if uni_mp:
                try:
                    unified = _mkdir(f"{uni_mp}{own.get('', '/').rstrip('/')}/{name}")
                    if not os.path.exists(f"{unified}/cgroup.kill"):
                        os.rmdir(unified)
                        unified = None
                        notes.append("unified hierarchy without cgroup.kill (kernel < 5.14): kill by signal loop")
                except OSError as exc:
                    notes.append(f"unified hierarchy not writable ({exc}); kill by signal loop")
            cpu = unified
            if cpu is None and "cpuacct" in mounts:
                cpu = _mkdir(f"{mounts['cpuacct']}{own.get('cpuacct', '/').rstrip('/')}/{name}")
            try:  # the OOM killer, not a hang, when the run reaches its limit
                _write(f"{mem}/memory.oom_control", "0")
            except OSError:
                pass
            if unified:
                notes.append("hybrid: memory and pids from cgroup v1, kill and CPU time from the unified hierarchy")
            return Layout("v1", memory=mem, pids=pids, cpu=cpu, unified=unified, notes=notes)
        except OSError as exc:
            notes.append(f"cgroup v1 hierarchy not writable: {exc}")
    return Layout("none", notes=notes or ["no cgroup hierarchy with memory and pids controllers"])


def _sweep_stale(parent: str) -> None:
    """Remove the subtrees of pools whose server is gone (killed before it could clean up)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        tag = name.removeprefix("mx-sandbox-")
        if tag == name or not tag.isdigit() or os.path.exists(f"/proc/{tag}"):
            continue
        base = f"{parent}/{name}"
        try:
            for sub in os.listdir(base):
                if os.path.isdir(f"{base}/{sub}"):
                    try:
                        os.rmdir(f"{base}/{sub}")
                    except OSError:
                        pass
            os.rmdir(base)
        except OSError:
            pass  # still populated (processes leaving): a later pool sweeps it


def _mkdir(path: str) -> str:
    parent = os.path.dirname(path)
    if os.path.basename(path).startswith("mx-sandbox-"):
        _sweep_stale(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    return path


def _detect_v2(mp: str, own: str, name: str, notes: list[str]) -> Layout | None:
    parent = f"{mp}{own.rstrip('/')}"
    try:
        avail = _read(f"{parent}/cgroup.controllers").split()
        if not {"memory", "pids"} <= set(avail):
            notes.append(f"cgroup v2: memory/pids not delegated to {own} (have {avail})")
            return None
        base = _mkdir(f"{parent}/{name}")
        leaf = _mkdir(f"{base}/server")
        # "No internal processes": a cgroup that delegates controllers may hold no process. Move
        # the pool server (this process) into a leaf; if our own cgroup still has other members
        # and is not the root, delegating to our subtree fails below and we fall back.
        _write(f"{leaf}/cgroup.procs", "0")
        wanted = [c for c in ("memory", "pids", "cpu") if c in avail]
        enabled = _read(f"{parent}/cgroup.subtree_control").split()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(f"{parent}/cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
        _write(f"{base}/cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        return Layout("v2", memory=base, pids=base, cpu=base, unified=base, notes=notes)
    except OSError as exc:
        notes.append(f"cgroup v2 delegation refused: {exc}")
        return None


class RunCgroup:
    """One run's cgroup (one directory per hierarchy used). Created empty; see module docstring."""

    def __init__(self, layout: Layout, name: str) -> None:
        self.layout = layout
        self.v2 = layout.mode == "v2"
        dirs = {layout.memory, layout.pids, layout.cpu, layout.unified} - {None}
        self.dirs = [_mkdir(f"{d}/{name}") for d in sorted(dirs)]  # type: ignore[arg-type]
        self.mem = f"{layout.memory}/{name}"
        self.pids = f"{layout.pids}/{name}"
        self.cpu = f"{layout.cpu}/{name}" if layout.cpu else None
        self.unified = f"{layout.unified}/{name}" if layout.unified else None
        self.baseline = 0
        self.oom0 = 0
        self.limits: tuple[int, int] | None = None
        self.procs_fds: list[int] = []

    # -- before the fork: descriptors the child writes "0" to, to join
    def open_procs(self) -> list[int]:
        self.procs_fds = [os.open(f"{d}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]
        return self.procs_fds

    def close_procs(self) -> None:
        for fd in self.procs_fds:
            os.close(fd)
        self.procs_fds = []

    # -- at the request (or ahead of it, with the limits the supervisor expects)
    def set_limits(self, memory_mb: int, max_processes: int) -> None:
        """Memory limit = usage now + ``memory_mb``; pids limit. Rewrites only what changed."""
        if self.limits == (memory_mb, max_processes):
            return
        if self.limits is None or self.limits[0] != memory_mb:
            self.baseline = self.memory_current()
            limit = self.baseline + int(memory_mb) * _MB
            if self.v2:
                _write(f"{self.mem}/memory.max", str(limit))
                if self.limits is None and os.path.exists(f"{self.mem}/memory.swap.max"):
                    _write(f"{self.mem}/memory.swap.max", "0")
            else:
                _write(f"{self.mem}/memory.limit_in_bytes", str(limit))
                if _swap_accounted(self.mem):  # no swap either, where swap exists
                    _write(f"{self.mem}/memory.memsw.limit_in_bytes", str(limit))
        if self.limits is None or self.limits[1] != max_processes:
            _write(f"{self.pids}/pids.max", str(max(1, int(max_processes))))
        if self.limits is None:
            self.oom0 = self.oom_kills()
        self.limits = (memory_mb, max_processes)

    def memory_current(self) -> int:
        return int(_read(f"{self.mem}/memory.current" if self.v2 else f"{self.mem}/memory.usage_in_bytes"))

    def peak_bytes(self) -> int:
        path = f"{self.mem}/memory.peak" if self.v2 else f"{self.mem}/memory.max_usage_in_bytes"
        try:
            return max(0, int(_read(path)) - self.baseline)
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        path = f"{self.mem}/memory.events" if self.v2 else f"{self.mem}/memory.oom_control"
        try:
            for line in _read(path).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def hit_limit(self) -> bool:
        """Whether usage reached the limit at some point (allocation failed or reclaim forced)."""
        try:
            if self.v2:
                for line in _read(f"{self.mem}/memory.events").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "max" and int(v) > 0:
                        return True
                return False
            return int(_read(f"{self.mem}/memory.failcnt")) > 0
        except (OSError, ValueError):
            return False

    def cpu_seconds(self) -> float:
        if self.cpu is None:
            return 0.0
        try:
            if self.cpu == self.unified:
                for line in _read(f"{self.cpu}/cpu.stat").splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
                return 0.0
            return int(_read(f"{self.cpu}/cpuacct.usage")) / 1e9
        except (OSError, ValueError):
            return 0.0

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in _read(f"{self.pids}/cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    # -- at the end (every exit path)
    def kill(self) -> None:
        """SIGKILL every process of the run (atomic with ``cgroup.kill``, else until none is left)."""
        if self.unified is not None:
            try:
                _write(f"{self.unified}/cgroup.kill", "1")
                return
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            left = self.procs()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.001)

    def try_destroy(self) -> bool:
        """Remove what is empty now; True once every directory is gone (never waits)."""
        left = []
        for d in self.dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)  # killed processes still leaving
        self.dirs = left
        return not left

    def destroy(self) -> None:
        """Remove the directories once empty (killed processes may take a moment to leave)."""
        deadline = time.monotonic() + 2.0
        for d in self.dirs:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)


def remove_tree(layout: Layout, timeout: float = 1.0) -> None:
    """Remove the pool's cgroup subtree (at server exit; killed runs may take a moment to leave;
    whatever is still populated then is swept by the next pool, :func:`_sweep_stale`)."""
    deadline = time.monotonic() + timeout
    bases = sorted({layout.memory, layout.pids, layout.cpu, layout.unified} - {None})  # type: ignore[type-var]
    while bases:
        left = []
        for base in bases:
            try:
                for name in os.listdir(base):
                    if os.path.isdir(f"{base}/{name}") and name != "server":
                        try:
                            os.rmdir(f"{base}/{name}")
                        except OSError:
                            pass
                os.rmdir(base)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(base)
        bases = left
        if not bases or time.monotonic() >= deadline:
            return
        time.sleep(0.01)
