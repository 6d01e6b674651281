"""The warm pool server of the process sandbox, its supervisors and the sandboxed child.

Process tree (all standard library; started by :class:`mx_envs.sandbox.process.ProcessSandbox`)::

    host ──unix SEQPACKET──▶ server (imports numpy, sympy, ...; gc.freeze)
                              ├── supervisor 1 (subreaper) ── prefork child (namespaces ready)
                              ├── supervisor 2 ...

Every supervisor blocks in ``recvmsg`` on the shared request socket; the kernel hands each request
(a small JSON header plus file descriptors passed with SCM_RIGHTS) to exactly one idle supervisor.
The supervisor already holds a *prefork child*: forked, in its own session, with fresh network and
mount namespaces, a private tmpfs for its work dir, and the root file system read-only. On a request
the child receives its descriptors (payload memfd, stdin memfd, stdout/stderr pipe ends, channel),
writes the files, sets rlimits, drops to a per-run unprivileged uid, and runs the source as
``__main__``. The supervisor enforces the wall clock, kills the whole process tree at the end, and
reports the exit status, rusage and timings over the per-run control socket. It then preforks the
next child, so no fork, namespace or mount work sits on the critical path of a request.
"""

from __future__ import annotations

import atexit
import errno
import gc
import importlib
import json
import math
import os
import pickle
import resource
import select
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any

from mx_envs.sandbox import _linux, interpreter_paths
from mx_envs.sandbox.wire import FrameReader, encode_frame

_VM_BASELINE = 0  # the prefork child's address-space size before a request (bytes)
UID_BASE = 1_000_000  # per-run uid = UID_BASE + pid of the child: unique among live runs
WORKDIR_IN_NS = "/tmp/work"
CHANNEL_FD = 3
STATUS_FD = 4
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
# What the prefork children need of the interpreter's directories; set once by :func:`main`.
_NEEDED_DIRS: list[str] = []
_MASKS: list[interpreter_paths.Mask] = []
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MX_ENVS_NO_REGISTER": "1",  # `import mx_envs` in a run (or its subprocesses) skips gymnasium
}


# ----------------------------------------------------------------------------- child (the program)


def _setup_isolation(network: bool) -> dict[str, Any]:
    """Runs in the prefork child: namespaces, mounts and work dir. Returns what actually holds."""
    iso: dict[str, Any] = {"root": os.geteuid() == 0, "errors": []}
    flags = _linux.CLONE_NEWNS | _linux.CLONE_NEWIPC | _linux.CLONE_NEWUTS
    if not network:
        flags |= _linux.CLONE_NEWNET
    if os.geteuid() != 0:
        flags |= _linux.CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    try:
        _linux.unshare(flags)
        iso["user_ns"] = bool(flags & _linux.CLONE_NEWUSER)
        iso["net_ns"] = not network
        iso["mount_ns"] = True
    except OSError as exc:
        iso["errors"].append(f"namespaces refused by the kernel: {exc}")
        iso.update(user_ns=False, net_ns=False, mount_ns=False)
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
    iso["network"] = "host" if network else ("none (empty network namespace)" if iso["net_ns"] else "host")
    iso["readonly_root"] = False
    iso["private_tmp"] = False
    iso["masked"] = []
    if iso["mount_ns"]:
        try:
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        except OSError as exc:
            iso["errors"].append(f"private mount propagation: {exc}")
            iso["mount_ns"] = False  # never mount anything that could propagate to the host
    if iso["mount_ns"]:
        try:
            iso["masked"] = interpreter_paths.apply_masks(_MASKS)
        except OSError as exc:
            iso["errors"].append(f"masking unreadable ancestors of the interpreter: {exc}")
        try:
            _linux.make_tree_readonly("/")
            iso["readonly_root"] = True
        except OSError as exc:
            iso["errors"].append(f"read-only root: {exc}")
        try:
            tmp_masks = interpreter_paths.private_tmp_masks(PRIVATE_TMP, _NEEDED_DIRS)
            interpreter_paths.apply_masks(tmp_masks, readonly_binds=True)
            iso["private_tmp"] = True
        except OSError as exc:
            iso["errors"].append(f"private tmpfs: {exc}")
    if iso["private_tmp"]:
        workdir = WORKDIR_IN_NS
        os.mkdir(workdir, 0o700)
    else:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="mx-sbx-")
    iso["workdir"] = workdir
    iso["uid"] = UID_BASE + os.getpid() if os.geteuid() == 0 and not iso["user_ns"] else None
    if iso["uid"] is not None:
        os.chown(workdir, iso["uid"], iso["uid"])
    return iso


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


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_prepare(status_sock: socket.socket, iso: dict[str, Any]) -> int:
    """Prefork phase after isolation: drop privileges and set up the interpreter for a run.

    Everything that does not depend on the request happens here, off the critical path. Returns the
    status descriptor (the socket to the supervisor, moved to :data:`STATUS_FD`).
    """
    status_raw = status_sock.detach()
    if status_raw != STATUS_FD:
        os.dup2(status_raw, STATUS_FD, inheritable=True)
        os.close(status_raw)
    # Close everything inherited from the server (lifeline pipe, log, request socket, ...).
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target, inheritable=True)
    os.close(devnull)
    os.closerange(3, STATUS_FD)
    os.closerange(STATUS_FD + 1, 1 << 20)

    workdir: str = iso["workdir"]
    uid: int | None = iso["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif iso.get("user_ns"):
        _linux.drop_all_capabilities()
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change: set again

    os.environ.clear()
    os.environ.update(CHILD_ENV)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    os.chdir(workdir)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The program's standard streams live until the process exits: no context manager. They are
    # bound to descriptors 0-2, which the request's pipes replace (dup2) before the program runs.
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()  # the pool's global numpy RNG state must not be shared across runs
    atexit._clear()
    global _VM_BASELINE
    _VM_BASELINE = _vm_size_bytes()  # read here, off the request's critical path
    return STATUS_FD


def _child_run(header: dict[str, Any], fds: list[int], iso: dict[str, Any]) -> None:
    """Runs in the child once the request arrived; never returns."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    os.write(STATUS_FD, json.dumps({"cpu0": ru.ru_utime + ru.ru_stime}).encode())
    limits = header["limits"]
    payload_fd, stdin_fd, out_fd, err_fd = fds[:4]
    chan_fd = fds[4] if len(fds) > 4 else None
    payload_size = os.fstat(payload_fd).st_size
    with os.fdopen(payload_fd, "rb") as fh:
        payload = pickle.load(fh)

    # The payload's bytes and objects are the sandbox's, not the program's: not charged to it.
    baseline = _VM_BASELINE + 2 * payload_size
    mb = 1 << 20
    cpu = int(math.ceil(float(limits.get("cpu_s") or limits["wall_s"])))
    rl = [
        (resource.RLIMIT_AS, baseline + int(limits["memory_mb"]) * mb),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, int(limits["file_size_mb"]) * mb),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, int(limits["max_processes"])),
    ]
    for which, value in rl:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as exc:
            os.write(err_fd, f"sandbox: setrlimit {which} failed: {exc}\n".encode())
            os._exit(70)

    # Move the request's descriptors to 0-3; close the originals.
    wanted = [stdin_fd, out_fd, err_fd, chan_fd]
    high = [fcntl_dup(fd) if fd is not None else None for fd in wanted]
    for fd in fds[1:]:
        os.close(fd)
    for target, fd in enumerate(high):
        if fd is not None:
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
    if chan_fd is not None:
        os.environ["MX_CHANNEL_FD"] = str(CHANNEL_FD)

    workdir: str = iso["workdir"]
    filename = payload.get("filename", "main.py")
    files = dict(payload.get("files") or {})
    files.setdefault(filename, payload["source"])
    try:
        _write_files(workdir, files)  # as the run's uid, under its file-size limit
    except (OSError, ValueError) as exc:
        os.write(2, f"sandbox: cannot write files: {exc}\n".encode())
        hint = "EFBIG" if isinstance(exc, OSError) and exc.errno == errno.EFBIG else "FilesError"
        os.write(STATUS_FD, json.dumps({"exception": hint}).encode())
        os._exit(1)

    main_path = os.path.join(workdir, filename)
    sys.argv = [main_path]
    sys.path[0] = workdir
    module = types.ModuleType("__main__")
    module.__file__ = main_path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module

    code = 0
    hint: str | None = None
    try:
        compiled = compile(payload["source"], main_path, "exec")
        del payload, files
        exec(compiled, module.__dict__)
        _join_threads()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - the program's own failure, reported like CPython
        hint = type(exc).__name__
        if isinstance(exc, MemoryError):
            hint = "MemoryError"
        elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            hint = "EFBIG"
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
    if hint is not None:
        try:
            os.write(STATUS_FD, json.dumps({"exception": hint}).encode())
        except OSError:
            pass
    # Tearing down this address space (a copy of the warm server's) takes milliseconds: hand the
    # streams back and announce the exit first, so the supervisor can kill what is left and report
    # without waiting for the kernel to finish (see _Supervisor._run).
    ru_s = resource.getrusage(resource.RUSAGE_SELF)
    ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
    final = {
        "exit": code,
        "cpu": ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime,
        "maxrss_kb": max(ru_s.ru_maxrss, ru_c.ru_maxrss),
    }
    for fd in (0, 1, 2, CHANNEL_FD):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.write(STATUS_FD, json.dumps(final).encode())
    except OSError:
        pass
    os._exit(code)


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


def fcntl_dup(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- supervisor


class _Prefork:
    def __init__(self, pid: int, sock: socket.socket, iso: dict[str, Any], network: bool) -> None:
        self.pid, self.sock, self.iso, self.network = pid, sock, iso, network
        # Hold the child's namespaces: tearing a mount namespace down waits for an RCU grace
        # period (milliseconds); with a reference here, that happens after the result is sent.
        self.ns_fds: list[int] = []
        for ns in ("mnt", "net"):
            try:
                self.ns_fds.append(os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass

    def release_namespaces(self) -> None:
        for fd in self.ns_fds:
            os.close(fd)
        self.ns_fds = []

    def discard(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.sock.close()
        self.release_namespaces()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _prefork(network: bool, close_in_child: list[socket.socket]) -> _Prefork:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            for s in close_in_child + [parent_sock]:
                s.close()
            _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.setsid()
            iso = _setup_isolation(network)
            status_sock = socket.socket(fileno=_child_prepare(child_sock, iso))
            # "Ready" only once fully prepared: the supervisor accepts no request before that, so a
            # request always goes to a supervisor whose child can start it at once.
            status_sock.send(json.dumps(iso).encode())
            msg, fds, _flags, _addr = socket.recv_fds(status_sock, 1 << 16, 8)
            status_sock.detach()  # keep STATUS_FD open for the run
            if not msg:
                os._exit(0)
            _child_run(json.loads(msg), fds, iso)
        except BaseException:  # noqa: BLE001
            try:
                traceback.print_exc()
            finally:
                os._exit(70)
    child_sock.close()
    raw = parent_sock.recv(1 << 16)
    iso = json.loads(raw) if raw else {"errors": ["prefork child died during set-up"]}
    return _Prefork(pid, parent_sock, iso, network)


def _exit_claim(raw: bytes) -> dict[str, Any] | None:
    """The child's "I am exiting" message, if ``raw`` is one (untrusted: see _Supervisor._run)."""
    try:
        msg = json.loads(raw)
        if isinstance(msg, dict) and isinstance(msg.get("exit"), int):
            return {
                "exit": msg["exit"] & 0xFF,
                "cpu": max(0.0, float(msg.get("cpu") or 0.0)),
                "maxrss_kb": max(0.0, float(msg.get("maxrss_kb") or 0.0)),
            }
    except (ValueError, TypeError, AttributeError, RecursionError):
        pass
    return None


def _only_child_left(pid: int) -> bool:
    """True if ``pid`` (already sent SIGKILL, so it can fork no more) has no children and this
    supervisor has no child but ``pid``: then no other process of the run exists."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                if fh.read().split():
                    return False
        except FileNotFoundError:
            continue  # thread already gone; its children (if any) show up as ours below
        except OSError:
            return False
    return _own_children() == [pid]


def _status(raw: bytes, hint: str | None, cpu0: float) -> tuple[str | None, float]:
    """Parse one status message of the child (untrusted: the program can write to it too)."""
    try:
        msg = json.loads(raw)
        if "exception" in msg:
            hint = str(msg["exception"])[:64]
        if "cpu0" in msg and cpu0 == 0.0:
            cpu0 = max(0.0, float(msg["cpu0"]))
    except (ValueError, TypeError, AttributeError):
        pass
    return hint, cpu0


def _children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == ppid:
            out.append(int(name))
    return out


def _own_children() -> list[int]:
    """Children of this (single-threaded) process, from procfs' per-thread list if available."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        return _children_of(os.getpid())


def _kill_group(pgid: int) -> None:
    """SIGKILL the run's process group; the child leads it, so its exit wakes the supervisor."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(pgid: int) -> int:
    """Kill the run's process group, then every remaining descendant of this subreaper.

    Orphans of the run are re-parented to this supervisor (PR_SET_CHILD_SUBREAPER), so "no children
    left" means "no process of the run left". Returns how many stray processes had to be hunted.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    hunted = 0
    deadline = time.monotonic() + 5.0
    while True:
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            return hunted  # the common case: the run's leader was the last one
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return hunted
        # Block (no polling) until one of the strays exits: SIGKILL through a pidfd, poll on all.
        poller = select.poll()
        pidfds = []
        for pid in _own_children():
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            pidfds.append(fd)
            poller.register(fd, select.POLLIN)
            hunted += 1
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        try:
            if pidfds:
                poller.poll(remaining * 1000)
        finally:
            for fd in pidfds:
                os.close(fd)


class _Supervisor:
    def __init__(self, request_sock: socket.socket, info: dict[str, Any], busy_fd: int = -1) -> None:
        self.request_sock = request_sock
        self.info = info
        self.busy_fd = busy_fd  # write end of the server's busy/idle pipe (-1: none)
        self.current_pgid: int | None = None
        self.stopping = False

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.current_pgid is not None:
            try:
                os.killpg(self.current_pgid, signal.SIGKILL)
            except OSError:
                pass
        else:
            raise SystemExit(0)

    def serve(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
        pre = _prefork(False, [self.request_sock])
        while not self.stopping:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.request_sock, 1 << 16, 16)
            except InterruptedError:
                continue
            if not msg:
                break  # host closed the request socket
            self._notify(b"+")
            try:
                header = json.loads(msg)
                if bool(header["limits"].get("network")) != pre.network:
                    pre.discard()
                    pre = _prefork(bool(header["limits"].get("network")), [self.request_sock])
                self._run(header, msg, fds, pre)
            except Exception:  # noqa: BLE001 - never let one bad request kill the supervisor
                traceback.print_exc()
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                _kill_tree(pre.pid)
            if not self.stopping:
                pre = _prefork(False, [self.request_sock])
            self._notify(b"-")  # idle again, with a prepared child
        pre.discard()

    def _notify(self, mark: bytes) -> None:
        # One byte per transition (atomic on a pipe): the server counts busy supervisors and adds one
        # when none is idle, so runs that stay suspended (MAS scripts waiting for an LLM) never
        # starve new runs of a supervisor.
        if self.busy_fd >= 0:
            try:
                os.write(self.busy_fd, mark)
            except OSError:
                pass

    def _run(self, header: dict[str, Any], msg: bytes, fds: list[int], pre: _Prefork) -> None:
        ctl = socket.socket(fileno=fds[0])
        child_fds = fds[1:]
        limits = header["limits"]
        wall = float(limits["wall_s"])
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        self.current_pgid = pre.pid
        socket.send_fds(pre.sock, [msg], child_fds)
        for fd in child_fds:
            os.close(fd)
        try:
            ctl.sendall(encode_frame({"op": "started"}))
        except OSError:
            pass
        pidfd = os.pidfd_open(pre.pid)
        sel = selectors.DefaultSelector()
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(pre.sock, selectors.EVENT_READ, "status")
        reader = FrameReader()
        deadline = t0 + wall
        paused_at: float | None = None
        paused_total = 0.0
        reason: str | None = None
        hint: str | None = None
        cpu0 = 0.0
        exited = False
        claim: dict[str, Any] | None = None  # the child's own exit announcement
        early = False  # result sent before the exiting child was reaped
        while not exited:
            now = time.monotonic()
            if paused_at is None and now >= deadline and reason is None:
                reason = "wall"
                _kill_group(pre.pid)
            timeout = None if (paused_at is not None or reason is not None) else max(0.0, deadline - now)
            for key, _ in sel.select(timeout):
                if key.data == "exit":
                    exited = True
                elif key.data == "status":
                    try:
                        raw = pre.sock.recv(4096)
                    except OSError:
                        raw = b""
                    if not raw:
                        sel.unregister(pre.sock)
                        continue
                    hint, cpu0 = _status(raw, hint, cpu0)
                    if claim is None and reason is None:
                        claim = _exit_claim(raw)
                        if claim is not None:
                            # The program is done (or forged the message, which only ends it the way
                            # sys.exit would). SIGKILL the group: nothing of the run can fork or run
                            # user code again; if nothing else of the run exists, report now.
                            _kill_group(pre.pid)
                            if _only_child_left(pre.pid):
                                exited = early = True
                elif key.data == "ctl":
                    try:
                        data = ctl.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(ctl)
                        if reason is None:
                            reason = "host_gone"
                            _kill_group(pre.pid)
                        continue
                    for frame in reader.feed(data):
                        op = frame.get("op")
                        if op == "kill" and reason is None:
                            reason = str(frame.get("reason") or "host")[:32]
                            _kill_group(pre.pid)
                        elif op == "pause" and paused_at is None:
                            paused_at = time.monotonic()
                        elif op == "resume" and paused_at is not None:
                            dt = time.monotonic() - paused_at
                            paused_total += dt
                            deadline += dt
                            paused_at = None
        if early:
            t1 = time.monotonic()
            status, hunted, ru1 = 0, 0, ru0
        else:
            _, status, ru = os.wait4(pre.pid, 0)
            t1 = time.monotonic()
            hunted = _kill_tree(pre.pid)
            self.current_pgid = None
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if paused_at is not None:
            paused_total += t1 - paused_at
        sel.close()
        os.close(pidfd)
        while not early:
            try:
                raw = pre.sock.recv(4096, socket.MSG_DONTWAIT)
            except OSError:
                break
            if not raw:
                break
            hint, cpu0 = _status(raw, hint, cpu0)
            if claim is None and reason is None:
                claim = _exit_claim(raw)
        if not pre.iso.get("private_tmp"):
            import shutil

            shutil.rmtree(pre.iso.get("workdir", "/nonexistent"), ignore_errors=True)
        if claim is not None and reason is None:
            # The run ended itself; any SIGKILL in the status is ours, sent after the announcement.
            exit_code: int | None = claim["exit"]
            sig: int | None = None
        else:
            exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if early:
            assert claim is not None
            cpu_s = max(0.0, claim["cpu"] - cpu0)
            peak_mb = claim["maxrss_kb"] / 1024.0
        else:
            cpu_s = max(0.0, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime) - cpu0)
            peak_mb = ru.ru_maxrss / 1024.0
        result = {
            "op": "result",
            "exit_code": exit_code,
            "signal": sig,
            "reason": reason,
            "exception": hint,
            "wall_s": t1 - t0 - paused_total,
            "paused_s": paused_total,
            "cpu_s": cpu_s,
            "peak_memory_mb": peak_mb,
            "stray_processes_killed": hunted,
            "isolation": {**pre.iso, **self.info},
        }
        try:
            ctl.sendall(encode_frame(result))
        except OSError:
            pass
        ctl.close()
        if early:
            # Reap the announced, SIGKILLed child (and anything unexpected) off the critical path.
            os.waitpid(pre.pid, 0)
            _kill_tree(pre.pid)
            self.current_pgid = None
        pre.sock.close()
        pre.release_namespaces()


# ----------------------------------------------------------------------------- server


def main(config_json: str) -> None:
    """Entry point of the pool server process (see :class:`~mx_envs.sandbox.process.ProcessSandbox`)."""
    cfg = json.loads(config_json)
    request_sock = socket.socket(fileno=int(cfg["fd"]))
    preloaded, failed = [], {}
    for name in cfg.get("preload", []):
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # noqa: BLE001 - reported to the host, not fatal
            failed[name] = f"{type(exc).__name__}: {exc}"
    for snippet in cfg.get("warmup", []):
        try:
            exec(compile(snippet, "<warmup>", "exec"), {"__name__": "__warmup__"})
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs speed
            failed["<warmup>"] = f"{type(exc).__name__}: {exc}"
    # Keep the imported heap out of the collector so forks do not copy pages the GC would touch.
    gc.collect()
    gc.freeze()
    huge = _linux.collapse_anonymous_memory() if cfg.get("huge_pages", True) else 0
    try:
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    global _NEEDED_DIRS, _MASKS
    _NEEDED_DIRS = interpreter_paths.needed_dirs()
    if os.geteuid() == 0:
        _MASKS = interpreter_paths.plan_masks(_NEEDED_DIRS)  # for a per-run uid that owns nothing
    else:
        _MASKS = interpreter_paths.plan_masks(_NEEDED_DIRS, os.getuid(), [os.getgid(), *os.getgroups()])
    info = {"preloaded": preloaded, "huge_page_mb": huge >> 20}
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    stopping = False

    def on_term(*_a: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    supervisors: set[int] = set()
    base_size = max(1, int(cfg.get("pool_size", 2)))
    max_size = max(base_size, int(cfg.get("max_pool_size", 256)))
    busy_r, busy_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    busy = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(wake_r)
                os.close(wake_w)
                os.close(busy_r)
                os.set_blocking(busy_w, True)
                _Supervisor(request_sock, info, busy_w).serve()
            except SystemExit:
                pass
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        supervisors.add(pid)

    for _ in range(base_size):
        spawn()
    sys.stdout.write(json.dumps({"ok": True, "pid": os.getpid(), "preloaded": preloaded, "failed": failed}) + "\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "lifeline")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    sel.register(busy_r, selectors.EVENT_READ, "busy")
    while not stopping:
        for key, _ in sel.select(1.0):
            if key.data == "lifeline":
                if not os.read(sys.stdin.fileno(), 4096):
                    stopping = True
            elif key.data == "busy":
                try:
                    while marks := os.read(busy_r, 4096):
                        busy += marks.count(b"+") - marks.count(b"-")
                except BlockingIOError:
                    pass
                # Elastic pool: keep one idle supervisor while below the cap.
                while busy >= len(supervisors) and len(supervisors) < max_size and not stopping:
                    spawn()
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in supervisors:
                supervisors.discard(pid)
                if not stopping and len(supervisors) < base_size:
                    spawn()
    for pid in supervisors:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 3.0
    while supervisors and time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            sel.select(max(0.0, end - time.monotonic()))  # woken by SIGCHLD through the wakeup pipe
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        supervisors.discard(pid)
    for pid in supervisors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)
