"""PID 1 of a Docker sandbox container: receives the program on stdin, runs it, reports what it saw.

This file is not imported inside the container: the Docker backend sends its source as
``python -I -S -c <source>`` (so any image with a Python 3.8+ works, and the image never needs
rebuilding when this changes). Standard library only, and nothing here may depend on the project.

Why a runner at all, instead of running the program as the container's command:

- **Files on a read-only root.** The root file system is read-only and the working directory is a
  tmpfs that exists only once the container runs, so nothing can be uploaded beforehand
  (``put_archive`` fails with "container rootfs is marked read-only"). The runner reads a framed
  bundle from fd 0 (``MXR1``, header length, JSON header, file bytes) and writes the files into
  ``/work``; it reads exactly the bundle's bytes, so whatever follows on fd 0 is the program's
  **real stdin**, inherited as fd 0.
- **A clock that starts with the program.** Just before it starts the program, the runner writes
  :data:`START` as the very first bytes on stderr (before any user code can write there); the
  host starts the wall clock when it reads them, so container start-up is not charged to the run.
- **Verdicts nobody can forge.** The runner is PID 1 of the container's PID namespace, so signals
  sent from inside without a handler (``kill -9 1``) are ignored, and it makes itself
  non-dumpable, so the program (same uid) cannot ptrace it or read ``/proc/1/mem``. It waits for the
  program with ``wait4``, kills every other process of the namespace when the program ends, and
  only then appends a trailer to stderr: :data:`END`, a per-run nonce (which the program never
  sees: it was read from the bundle before the program existed, and the program is a fresh
  ``exec``), and JSON with the true wait status, CPU time, peak RSS and the cgroup's OOM-kill
  count. A program that exits with 137 or prints "MemoryError" is reported as exactly that.
- **The process backend's seccomp list, here too.** Right before ``exec`` the program's process loads
  a libseccomp filter (built by the runner through ctypes) that fails the host-supplied list of
  calls with EPERM; it stacks on the daemon's default profile, which on Docker 20.10 still allows
  io_uring and ptrace. If the program cannot be started (exec, rlimits, filter), the reason comes
  back on a close-on-exec pipe and is reported as a set-up error, never as the program's exit 127.
"""

from __future__ import annotations

MAGIC = b"MXR1"
START = b"\x00MXSTART\n"
END = b"\x00MXEND "
WORK = "/work"


def main() -> None:  # noqa: C901 - one linear protocol, easier to audit in one piece
    import json
    import os
    import resource
    import select
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 + default action: ignored from inside

    def read_exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(0, n - len(buf))
            if not chunk:
                raise EOFError("stdin closed inside the bundle")
            buf += chunk
        return bytes(buf)

    def write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                return

    def fail(msg: str) -> None:
        write_all(2, START + END + nonce + b" " + json.dumps({"setup_error": msg}).encode() + b"\n")
        os._exit(0)

    nonce = b"-"
    try:
        if read_exact(4) != MAGIC:
            raise ValueError("bad bundle magic")
        hdr = json.loads(read_exact(int.from_bytes(read_exact(4), "big")))
        nonce = hdr["nonce"].encode()
    except Exception as exc:  # noqa: BLE001 - reported on the trailer, never to the program
        fail(f"bundle: {exc!r}")
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0: no ptrace, /proc/1/* root-owned
    except Exception as exc:  # noqa: BLE001
        fail(f"prctl(PR_SET_DUMPABLE) failed: {exc!r}")
    try:
        for name, size in hdr["files"]:
            data = read_exact(int(size))
            path = os.path.normpath(os.path.join(WORK, name))
            if not path.startswith(WORK + "/"):
                raise ValueError(f"file name outside the work dir: {name!r}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
    except Exception as exc:  # noqa: BLE001
        fail(f"files: {exc!r}")

    python = hdr["python"]
    argv = [python, "-s", os.path.join(WORK, hdr["main"])]
    env = dict(hdr["env"])
    cpu = int(hdr["cpu_s"]) + (0 if float(hdr["cpu_s"]).is_integer() else 1)
    fsize = int(hdr["file_size"])
    try:
        seccomp = _seccomp_filter(hdr.get("seccomp_deny") or [], hdr.get("seccomp_enosys") or [])
        extra = seccomp[2]
    except Exception as exc:  # noqa: BLE001 - no libseccomp in this image: the daemon's profile only
        seccomp, extra = None, f"unavailable: {exc!r}"
    write_all(2, START)
    errr, errw = os.pipe()  # close-on-exec: EOF on exec, or the reason the program did not start
    pid = os.fork()
    if pid == 0:  # the program: a fresh interpreter, nothing of this one survives exec
        try:
            os.close(errr)
            os.chdir(WORK)
            libc.prctl(4, 1, 0, 0, 0)  # own /proc/self again (exec would make it dumpable anyway)
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")  # the OOM killer takes the program, not the runner
            resource.setrlimit(resource.RLIMIT_CPU, (max(1, cpu), max(1, cpu) + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if seccomp is not None and seccomp[0].seccomp_load(seccomp[1]) != 0:
                raise OSError("seccomp_load failed")
            os.execve(python, argv, env)
        except BaseException as exc:  # noqa: BLE001 - told to the runner, never a program verdict
            write_all(errw, repr(exc).encode()[:1000])
        finally:
            os._exit(127)
    os.close(errw)
    start_error = b""
    while True:
        try:
            chunk = os.read(errr, 1000)
        except InterruptedError:
            continue
        if not chunk:
            break
        start_error += chunk
    os.close(errr)

    deadline = time.monotonic() + float(hdr["backstop_s"])
    try:
        pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pidfd = None
    status = None
    backstop = False
    while status is None:
        left = deadline - time.monotonic()
        if left <= 0 and not backstop:  # the host is gone or stuck: never outlive it for long
            backstop = True
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
        if pidfd is not None:
            select.select([pidfd], [], [], max(0.0, min(left, 0.05)) if not backstop else 0.05)
        else:
            time.sleep(0.002)
        while True:  # reap the program and any orphan reparented to PID 1
            try:
                wpid, st, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:  # cannot happen while the program is unreaped
                status = -1 if status is None else status
                break
            if wpid == 0:
                break
            if wpid == pid:
                status = st
    while True:  # the program ended: nothing else of the run may go on writing or running
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    oom = 0
    for path, key in (
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
    ):
        try:
            with open(path) as fh:
                for line in fh:
                    k, _, v = line.partition(" ")
                    if k == key:
                        oom = max(oom, int(v))
        except (OSError, ValueError):
            continue
    known = status >= 0
    if start_error:
        report = {"setup_error": f"cannot start the program: {start_error.decode(errors='replace')}"}
        write_all(2, END + nonce + b" " + json.dumps(report).encode() + b"\n")
        os._exit(0)
    report = {
        "exit": os.WEXITSTATUS(status) if known and os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if known and os.WIFSIGNALED(status) else None,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
        "maxrss_kb": int(ru.ru_maxrss),
        "oom_kills": oom,
        "backstop": backstop,
        "seccomp_extra": extra,
    }
    write_all(2, END + nonce + b" " + json.dumps(report).encode() + b"\n")
    os._exit(0)


def _seccomp_filter(deny: list[str], enosys: list[str]) -> tuple[object, object, list[str]]:
    """A libseccomp filter (allow by default) failing ``deny`` with EPERM and ``enosys`` with ENOSYS.

    Built in the runner, loaded by the program's process right before ``exec``; it stacks on the
    daemon's default profile (seccomp filters only ever add restrictions), closing what that
    profile leaves open (io_uring and ptrace on Docker 20.10) with the process backend's list.
    Uses the system libseccomp through ctypes (the runner is standard library only).
    """
    import ctypes
    import errno

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
    if not ctx:
        raise OSError("seccomp_init failed")
    applied = []
    for names, err in ((deny, errno.EPERM), (enosys, errno.ENOSYS)):
        for name in names:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0 and lib.seccomp_rule_add(ctx, 0x00050000 | err, nr, 0) == 0:  # SCMP_ACT_ERRNO
                applied.append(name)
    return lib, ctypes.c_void_p(ctx), applied


if __name__ == "__main__":
    main()
