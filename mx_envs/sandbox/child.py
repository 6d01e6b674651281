"""The sandboxed child: isolation prepared before a request (prefork), then the run itself.

:func:`prepare` runs right after the supervisor forked the child (into the run's PID namespace
and cgroup): mount/IPC namespaces and the run's file view, either the allow-list world
(:mod:`mx_envs.sandbox.file_view`, entered with ``chroot`` right here) or, when a request asked
for it explicitly, the host view (masks, read-only root, private tmpfs, its own ``/proc``). Still
privileged, it then waits for the request. :func:`run` applies what depends on the request (tmpfs
sizes, rlimits), drops every privilege (fresh uid, no groups, ``no_new_privs``, seccomp filter),
closes the status socket, and only then runs the program: nothing the program can reach speaks
for the sandbox.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

from mx_envs.sandbox import _linux, file_view, interpreter_paths
from mx_envs.sandbox.api import BASE_CHILD_ENV, FILE_VIEW_ALLOWLIST, FILE_VIEW_HOST

WORKDIR = "/tmp/work"
CHANNEL_FD = 3
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # host view: private tmpfs over the host's
PRIVATE_WORLD_TMP = ("/tmp", "/dev/shm")  # the world's own (paths inside it)
PREFORK_TMP_MB = 1024  # size of each private tmpfs; a request with a smaller budget shrinks it
SETUP_FAILED = 70  # exit status of a child whose set-up failed before the program ran
CHILD_ENV = {
    **BASE_CHILD_ENV,
    "MX_ENVS_NO_REGISTER": "1",  # `import mx_envs` in a run (or its subprocesses) skips gymnasium
}


@dataclass
class PoolPlan:
    """What every child of the pool needs, computed once by the server (inherited by fork)."""

    needed_dirs: list[str] = field(default_factory=list)
    masks: list[interpreter_paths.Mask] = field(default_factory=list)
    view: file_view.ViewPlan | None = None
    seccomp_bpf: bytes = b""
    seccomp: _linux.SeccompProgram | None = None
    seccomp_error: str = ""
    view_error: str = ""
    world_ns_fd: int = -1  # the world's template mount namespace (file_view.make_template), or -1


PLAN = PoolPlan()


@dataclass
class ChildSpec:
    """Per-child facts from the supervisor."""

    uid: int | None  # the run's fresh uid (root pools); None: user namespace / unprivileged
    network: bool
    pid_ns: bool  # forked into a fresh PID namespace (mount its /proc)
    host_netns_fd: int  # -1, or the host network namespace (for Limits(network=True))
    cgroup_fds: list[int]  # cgroup.procs descriptors to join
    view: str  # FILE_VIEW_ALLOWLIST (the world, entered at once) or FILE_VIEW_HOST
    shared_netns: bool  # the supervisor already sits in an empty network namespace of its own


def prepare(spec: ChildSpec, status: socket.socket) -> dict[str, Any]:
    """Prefork phase: join the cgroup, set up namespaces and mounts. Returns what holds."""
    t0, c0 = time.perf_counter(), time.process_time()
    # First of all, drop every descriptor inherited from the supervisor (it may be running another
    # run meanwhile: its control socket and its namespace init's lifeline must not stay open here).
    _close_inherited(status, [*spec.cgroup_fds, spec.host_netns_fd, PLAN.world_ns_fd])
    for fd in spec.cgroup_fds:
        os.write(fd, b"0")  # join the run's cgroup before touching any memory of our own
        os.close(fd)
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    iso: dict[str, Any] = {"root": os.geteuid() == 0, "errors": [], "pid_ns": spec.pid_ns}
    if spec.network and spec.host_netns_fd >= 0:
        _linux.setns(spec.host_netns_fd, _linux.CLONE_NEWNET)
    if spec.host_netns_fd >= 0:
        os.close(spec.host_netns_fd)
    # The world's template namespace replaces a copy of the host's mounts (see file_view.make_template).
    template = spec.view == FILE_VIEW_ALLOWLIST and PLAN.world_ns_fd >= 0 and spec.pid_ns and os.geteuid() == 0
    flags = _linux.CLONE_NEWIPC if template else _linux.CLONE_NEWNS | _linux.CLONE_NEWIPC
    if not spec.network and not spec.shared_netns:
        flags |= _linux.CLONE_NEWNET | _linux.CLONE_NEWUTS
    if os.geteuid() != 0:
        flags |= _linux.CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    try:
        _linux.unshare(flags)
        iso["user_ns"] = bool(flags & _linux.CLONE_NEWUSER)
        iso["mount_ns"] = not template  # with the template: once it is entered, below
        # With shared_netns the supervisor's own empty network namespace is inherited.
        iso["net_ns"] = not spec.network
    except OSError as exc:
        iso["errors"].append(f"namespaces refused by the kernel: {exc}")
        iso.update(user_ns=False, net_ns=False, mount_ns=False)
        template = False
    if iso["user_ns"]:
        try:
            with open("/proc/self/setgroups", "w") as fh:
                fh.write("deny")
            with open("/proc/self/uid_map", "w") as fh:
                fh.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as fh:
                fh.write(f"0 {gid} 1")
        except OSError as exc:
            iso["errors"].append(f"uid map: {exc}")
    iso["network"] = "host" if spec.network else ("none (empty network namespace)" if iso["net_ns"] else "host")
    iso.update(readonly_root=False, private_tmp=False, masked=[], proc="host", file_view=None)
    if iso["mount_ns"]:
        try:
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        except OSError as exc:
            iso["errors"].append(f"private mount propagation: {exc}")
            iso["mount_ns"] = False  # never mount anything that could propagate to the host
    if spec.view == FILE_VIEW_ALLOWLIST:
        if template:
            _enter_world(iso)
        elif iso["mount_ns"]:
            _prepare_world(spec, iso)
        else:
            iso["errors"].append("allow-list world: needs a private mount namespace")
    else:
        if iso["mount_ns"]:
            _prepare_host_view(spec, iso)
        iso["file_view"] = FILE_VIEW_HOST  # the explicit wide view: as much isolation as held
    if PLAN.world_ns_fd >= 0:
        os.close(PLAN.world_ns_fd)  # never reaches the program
    workdir = WORKDIR if iso["private_tmp"] else _host_tempdir()
    if iso["private_tmp"]:
        os.mkdir(workdir, 0o700)
    iso["workdir"] = workdir
    iso["uid"] = spec.uid
    if spec.uid is not None:
        os.chown(workdir, spec.uid, spec.uid)
    _python_state(workdir)
    # Off the request's critical path, but on the machine's: wall and CPU (kernel work included).
    iso["prepare_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    iso["prepare_cpu_ms"] = round((time.process_time() - c0) * 1e3, 3)
    return iso


def _host_tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="mx-sbx-")


def _enter_world(iso: dict[str, Any]) -> None:
    """Enter a private copy of the pool's world namespace and mount this run's own tmpfs and /proc."""
    try:
        file_view.enter_template(PLAN.world_ns_fd, tmp_size=f"{PREFORK_TMP_MB}m", p=PLAN.view)
    except OSError as exc:
        iso["errors"].append(f"allow-list world (template): {exc}")
        return
    iso.update(mount_ns=True, file_view=FILE_VIEW_ALLOWLIST, readonly_root=True,
               private_tmp=list(PRIVATE_WORLD_TMP), proc="own (PID namespace)", world="template namespace")


def _prepare_world(spec: ChildSpec, iso: dict[str, Any]) -> None:
    """Build the allow-list world and enter it (``chroot``): from here on nothing else exists."""
    if PLAN.view is None:
        iso["errors"].append(f"allow-list world unavailable: {PLAN.view_error or 'not planned'}")
        return
    try:
        file_view.build(PLAN.view, tmp_size=f"{PREFORK_TMP_MB}m", proc=spec.pid_ns)
        os.chroot(file_view.VIEW_ROOT)
        os.chdir("/")
    except OSError as exc:
        iso["errors"].append(f"allow-list world: {exc}")
        return
    iso.update(
        file_view=FILE_VIEW_ALLOWLIST,
        readonly_root=True,
        private_tmp=list(PRIVATE_WORLD_TMP),
        proc="own (PID namespace)" if spec.pid_ns else "host (bound: no PID namespace)",
        world="built in the child",
    )


def _prepare_host_view(spec: ChildSpec, iso: dict[str, Any]) -> None:
    """The explicit wide view: the host's root read-only, secrets masked, private tmpfs."""
    try:
        iso["masked"] = interpreter_paths.apply_masks(PLAN.masks)
    except OSError as exc:
        iso["errors"].append(f"masking unreadable ancestors of the interpreter: {exc}")
    try:
        _linux.make_tree_readonly("/")
        iso["readonly_root"] = True
    except OSError as exc:
        iso["errors"].append(f"read-only root: {exc}")
    try:
        tmp_masks = interpreter_paths.private_tmp_masks(PRIVATE_TMP, PLAN.needed_dirs)
        for m in tmp_masks:
            m.size = f"{PREFORK_TMP_MB}m"
        interpreter_paths.apply_masks(tmp_masks, readonly_binds=True)
        iso["private_tmp"] = [m.root for m in tmp_masks]
    except OSError as exc:
        iso["errors"].append(f"private tmpfs: {exc}")
    if spec.pid_ns:
        try:
            _linux.mount("proc", "/proc", "proc", _linux.MS_NOSUID | _linux.MS_NODEV | 8)  # 8: MS_NOEXEC
            iso["proc"] = "own (PID namespace)"
        except OSError as exc:
            iso["errors"].append(f"/proc of the PID namespace: {exc}")


def _close_inherited(status: socket.socket, also: list[int]) -> None:
    """Keep only the status socket (and ``also``); stdio on /dev/null until the request's pipes."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target, inheritable=True)
    os.close(devnull)
    lo = 3
    for keep in sorted({status.fileno(), *(fd for fd in also if fd >= 3)}):
        os.closerange(lo, keep)
        lo = keep + 1
    os.closerange(lo, 1 << 20)


def _python_state(workdir: str) -> None:
    """Interpreter state for a run: environment, signals, standard streams, fresh RNGs."""
    os.environ.clear()
    os.environ.update(CHILD_ENV)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Python ignores SIGXFSZ (a write over RLIMIT_FSIZE then fails with EFBIG); the default action
    # ends the run with that signal, which the supervisor observes (-> output_exceeded).
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    # The program's standard streams live until the process exits: no context manager. They are
    # bound to descriptors 0-2, which the request's pipes replace (dup2) before the program runs.
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    npr = sys.modules.get("numpy.random")  # never import it here: 80 ms from disk
    if npr is not None:
        npr.seed()  # the pool's global numpy RNG state must not be shared across runs
    atexit._clear()


def _fail(status_fd: int, what: str) -> None:
    """Set-up failed before the program ran: tell the supervisor (trusted: no user code yet)."""
    try:
        os.write(status_fd, json.dumps({"setup_error": what[:500]}).encode())
    except OSError:
        pass
    os._exit(SETUP_FAILED)


def _apply_request_limits(limits: dict[str, Any], iso: dict[str, Any], cgroup: bool, status_fd: int) -> None:
    mb = 1 << 20
    if iso.get("private_tmp"):
        # tmpfs pages are charged to the run's memory cgroup; sizing each tmpfs to the budget makes
        # a full disk an ENOSPC for the program rather than an OOM kill.
        size = max(1, int(limits["memory_mb"]))
        roots = list(iso["private_tmp"])
        if size < PREFORK_TMP_MB:
            for root in roots:
                try:
                    _linux.mount(None, root, None, _linux.MS_REMOUNT | _linux.MS_NOSUID | _linux.MS_NODEV, f"size={size}m")
                except OSError as exc:
                    _fail(status_fd, f"tmpfs size of {root}: {exc}")
    cpu = int(math.ceil(float(limits.get("cpu_s") or limits["wall_s"])))
    rl: list[tuple[int, tuple[int, int]]] = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # per process; the cgroup bounds the run's total
        (resource.RLIMIT_FSIZE, (int(limits["file_size_mb"]) * mb,) * 2),
        (resource.RLIMIT_NOFILE, (int(limits["open_files"]),) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (int(limits["max_processes"]),) * 2),
    ]
    if not cgroup:
        # Fallback without a memory cgroup: address space per process (threads reserve a lot).
        rl.append((resource.RLIMIT_AS, (_vm_size_bytes() + int(limits["memory_mb"]) * mb,) * 2))
    for which, (soft, hard) in rl:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as exc:
            _fail(status_fd, f"setrlimit {which}: {exc}")


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _drop_privileges(uid: int | None, iso: dict[str, Any]) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif iso.get("user_ns"):
        _linux.drop_all_capabilities()
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change: set again
    if PLAN.seccomp is not None:
        PLAN.seccomp.install()


def run(header: dict[str, Any], fds: list[int], iso: dict[str, Any], status_fd: int) -> None:
    """Runs in the child once the request arrived; never returns."""
    limits = header["limits"]
    payload_fd, stdin_fd, out_fd, err_fd = fds[:4]
    chan_fd = fds[4] if len(fds) > 4 else None
    try:
        with os.fdopen(payload_fd, "rb") as fh:
            payload = pickle.load(fh)
        t0 = time.perf_counter()
        _apply_request_limits(limits, iso, bool(header.get("cgroup")), status_fd)
        t1 = time.perf_counter()
        workdir: str = iso["workdir"]
        if iso.get("file_view") != limits.get("file_view"):
            # Never run a program in another view than it asked for (a wider one least of all).
            why = "; ".join(iso.get("errors", [])) or f"child prepared for {iso.get('file_view')}"
            _fail(status_fd, f"file view {limits.get('file_view')!r} unavailable: {why}")
        os.chdir(workdir)
        t2 = time.perf_counter()
        _drop_privileges(iso.get("uid"), iso)
        t3 = time.perf_counter()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - any set-up failure is the sandbox's, reported as such
        _fail(status_fd, f"{type(exc).__name__}: {exc}")
    # From here on the program's code may run. The status socket stays open for one thing only:
    # the exit notice below, a hint that makes the supervisor look at the kernel's own record of
    # this process (it trusts nothing written here; see supervisor._Run.on_status).
    ms = {"rlimits_tmpfs": round((t1 - t0) * 1e3, 3), "uid_nnp_seccomp": round((t3 - t2) * 1e3, 3)}
    os.write(status_fd, json.dumps({"go": 1, "ms": ms}).encode())

    # Move the request's descriptors to 0-3; close the originals.
    wanted = [stdin_fd, out_fd, err_fd, chan_fd]
    high = [_dup_high(fd) if fd is not None else None for fd in wanted]
    for fd in fds[1:]:
        os.close(fd)
    for target, fd in enumerate(high):
        if fd is not None:
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
    if chan_fd is not None:
        os.environ["MX_CHANNEL_FD"] = str(CHANNEL_FD)

    filename = payload.get("filename", "main.py")
    files = dict(payload.get("files") or {})
    files.setdefault(filename, payload["source"])
    try:
        _write_files(workdir, files)  # as the run's uid, under its file-size limit
    except (OSError, ValueError) as exc:
        os.write(2, f"sandbox: cannot write files: {exc}\n".encode())
        os._exit(1)

    main_path = os.path.join(workdir, filename)
    sys.argv = [main_path]
    sys.path[0] = workdir
    module = types.ModuleType("__main__")
    module.__file__ = main_path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module

    code = 0
    try:
        compiled = compile(payload["source"], main_path, "exec")
        del payload, files
        exec(compiled, module.__dict__)
        _join_threads()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - the program's own failure, reported like CPython
        code = 1
        try:
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # hide this runner's frame
            traceback.print_exception(type(exc), exc, tb)
        except BaseException:  # noqa: BLE001
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    # Tearing down this address space (a copy of the warm server's) takes milliseconds: hand the
    # streams back and send the exit notice first, so the supervisor can confirm the exit in
    # /proc, kill what is left and report without waiting for the kernel to finish.
    for fd in (0, 1, 2, CHANNEL_FD):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.write(status_fd, b'{"exit":%d}' % code)
    except OSError:
        pass
    os._exit(code)


def _write_files(workdir: str, files: dict[str, bytes | str]) -> None:
    root = os.path.realpath(workdir)
    for name, content in files.items():
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep):
            raise ValueError(f"file name escapes the work dir: {name!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = content.encode() if isinstance(content, str) else bytes(content)
        with open(path, "wb") as fh:
            fh.write(data)


def _join_threads() -> None:
    main = threading.main_thread()
    for t in threading.enumerate():
        if t is not main and not t.daemon and t.is_alive():
            t.join()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
