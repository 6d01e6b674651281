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
    write_all(2, START)
    pid = os.fork()
    if pid == 0:  # the program: a fresh interpreter, nothing of this one survives exec
        try:
            os.chdir(WORK)
            libc.prctl(4, 1, 0, 0, 0)  # own /proc/self again (exec would make it dumpable anyway)
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")  # the OOM killer takes the program, not the runner
            resource.setrlimit(resource.RLIMIT_CPU, (max(1, cpu), max(1, cpu) + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.execve(python, argv, env)
        except BaseException as exc:  # noqa: BLE001 - said on stderr, then the conventional 127
            write_all(2, f"sandbox: cannot start the program: {exc!r}\n".encode())
        finally:
            os._exit(127)

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
    report = {
        "exit": os.WEXITSTATUS(status) if known and os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if known and os.WIFSIGNALED(status) else None,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
        "maxrss_kb": int(ru.ru_maxrss),
        "oom_kills": oom,
        "backstop": backstop,
    }
    write_all(2, END + nonce + b" " + json.dumps(report).encode() + b"\n")
    os._exit(0)


if __name__ == "__main__":
    main()
