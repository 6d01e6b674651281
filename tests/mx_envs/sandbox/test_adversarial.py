"""Adversarial programs: each must be contained, get the right verdict, leave nothing behind."""

from __future__ import annotations

import os
import select
import signal
import socket
import time

import pytest

from mx_envs.sandbox import Limits, Verdict

MARGIN_S = 3.0  # allowed overshoot past a limit on a loaded 2-core machine


@pytest.fixture(autouse=True)
def _helpers(leftover_processes):
    global uid_processes
    uid_processes = leftover_processes


uid_processes = None


def run_checked(sandbox, source, limits=None, stdin="", files=None, max_s=None):
    limits = limits or Limits(wall_s=5)
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
    r = run_checked(sandbox, "x = bytearray(4 * 1024**3)", Limits(wall_s=5, memory_mb=256))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    r = run_checked(sandbox, "a = []\nwhile True:\n    a.append(' ' * 10**6)", Limits(wall_s=10, memory_mb=200))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    r = run_checked(sandbox, "import numpy as np; np.ones((50000, 50000))", Limits(wall_s=5, memory_mb=256))
    assert r.verdict is Verdict.MEMORY_EXCEEDED, r
    assert_host_fine(sandbox)


def test_infinite_loop_cpu_limit(sandbox):
    r = run_checked(sandbox, "while True:\n    pass", Limits(wall_s=10, cpu_s=1), max_s=1 + MARGIN_S + 1)
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
    r = run_checked(sandbox, src, Limits(wall_s=10, cpu_s=1), max_s=1 + MARGIN_S + 1)
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
    r = run_checked(sandbox, src, Limits(wall_s=5))
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
    limits = Limits(wall_s=10, output_bytes=100_000)
    r = run_checked(sandbox, "while True:\n    print('x' * 1000)", limits)
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.stdout_truncated, r
    assert len(r.stdout) == 100_000
    r = run_checked(sandbox, "import sys\nwhile True:\n    sys.stderr.write('y' * 4096)", limits)
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.stderr_truncated and len(r.stderr) == 100_000


def test_file_size_limit(sandbox):
    src = "open('big.bin', 'wb').write(b'0' * (3 * 1024 * 1024))"
    r = run_checked(sandbox, src, Limits(wall_s=5, file_size_mb=1))
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
        r = run_checked(sandbox, src.replace("('8.8.8.8', 53), ('1.1.1.1', 443)", ""), Limits(wall_s=5, network=True))
        assert r.stdout.startswith("['connected'"), r
    finally:
        listener.close()


def test_killing_the_parent_and_everyone(sandbox):
    r = run_checked(sandbox, "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
    assert r.verdict is Verdict.RUNTIME_ERROR and "PermissionError" in r.stderr, r
    # kill(-1) reaches only the processes of the run's own uid (Linux spares the caller).
    r = run_checked(sandbox, "import os, signal; os.kill(-1, signal.SIGKILL); print('alone')")
    assert r.verdict is Verdict.OK and r.stdout == "alone\n", r
    r = run_checked(sandbox, f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)")
    assert r.verdict is Verdict.RUNTIME_ERROR, r
    assert_host_fine(sandbox)


def test_deep_recursion(sandbox):
    r = run_checked(sandbox, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r.verdict is Verdict.RUNTIME_ERROR and "RecursionError" in r.stderr, r
    # C-level recursion (repr of a deeply nested list) overflows the C stack: SIGSEGV.
    src = "import sys\nsys.setrecursionlimit(10**8)\nl = []\nfor _ in range(10**6):\n    l = [l]\nrepr(l)"
    r = run_checked(sandbox, src, Limits(wall_s=10))
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


def test_forged_exit_announcement_only_ends_the_run(sandbox):
    """A program writing the child's exit message to the status descriptor gains nothing."""
    src = """
import json, os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
    os._exit(0)
print('forging', flush=True)
os.write(4, json.dumps({"exit": 0, "cpu": 0, "maxrss_kb": 1}).encode())
time.sleep(30)
"""
    r = run_checked(sandbox, src, Limits(wall_s=10), max_s=8)
    assert r.verdict is Verdict.OK and r.stdout == "forging\n", r
    assert _wait_all_gone(r.isolation.get("uid")) == []
    assert_host_fine(sandbox)
