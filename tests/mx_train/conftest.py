"""Fixtures for the training tests: the tiny random-weight Llama of ``mx_agents.testing``, and the Ray
instances the Ray tests share.

Starting Ray costs seconds (GCS, raylet, agents; a ``ray start`` cluster more), which used to be paid by
every Ray test. Two kinds of instance are shared instead, each by the tests that ask for its fixture:

- ``local_ray``: one local instance, started the way ``mx train`` starts one
  (:func:`mx_train.distributed.connect`), for the tests that train or place actors on this machine;
  after each test whatever it left (placement groups, their actors) is removed and its CPUs are back
  before the next one starts.
- ``ray_cluster``: a ``ray start`` cluster of two raylets with token authentication (what a
  multi-node deployment looks like), for the tests that join one from outside.

The tests of each kind run as one block (collection moves them next to the first of them), and the
instance is stopped right after the block's last test, so no Ray runs during the other tests (a
sandbox forking beside Ray's threads, idle CPU). Tests that need a cluster of their own (fake GPUs,
``test_placement.ray8``) keep starting it themselves.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def tiny():
    """(model, tokenizer): fresh, bit-identical for every test (seeded generator, no global RNG)."""
    from mx_agents.testing import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama saved as a model directory (what ``policy.model`` names in Ray workers); read only."""
    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------- shared Ray instances
SHARED = ("local_ray", "ray_cluster")  # fixture names whose users run as one block each

# What the local instance is sized for: the largest plan among its users (driver, one more learner
# rank, two rollout workers at 0.5 CPU: 3 CPUs), so none of them waits for CPUs another one holds.
LOCAL_RAY_CONFIG = {"distributed": {"backend": "ray", "num_rollout_workers": 2, "worker_cpus": 0.5,
                                    "learner_procs": 2}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the tests that use one shared instance next to the first of them (order kept otherwise)."""
    for name in SHARED:
        users = [it for it in items if name in getattr(it, "fixturenames", ())]
        if len(users) < 2:
            continue
        first = items.index(users[0])
        ids = {id(it) for it in users}
        rest = [it for it in items if id(it) not in ids]
        items[:] = rest[:first] + users + rest[first:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """After the last test of a block (its fixtures torn down), stop that block's instance."""
    try:
        return (yield)
    finally:
        uses = set(getattr(item, "fixturenames", ())) & set(SHARED)
        after = set(getattr(nextitem, "fixturenames", ())) if nextitem is not None else set()
        if "local_ray" in uses and "local_ray" not in after:
            _stop_local_ray()
        if "ray_cluster" in uses and "ray_cluster" not in after:
            _stop_cluster()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An interrupted run (Ctrl-C, -x) leaves no instance behind either."""
    _stop_local_ray()
    _stop_cluster()


@pytest.fixture
def local_ray() -> Iterator[Any]:
    """The ``ray`` module, initialised to the shared local instance (started here if none runs: the
    first test of the block, or after a test shut it down)."""
    ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")
    if not ray.is_initialized():
        from mx_train.config import TrainConfig
        from mx_train.distributed import connect

        connect(TrainConfig.from_dict(LOCAL_RAY_CONFIG))
    yield ray
    if ray.is_initialized():
        _release_leftovers(ray)


def _release_leftovers(ray: Any, timeout: float = 60.0) -> None:
    """Remove the placement groups a test left (a failed test's run; their actors go with them) and wait
    until every CPU of the instance is free again; an instance that does not get there is shut down
    (the next test starts a fresh one) rather than handed on half full."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    from mx_train.distributed import release

    release()  # the run's reservation, if the test's run did not end normally
    for pg_id, info in placement_group_table().items():
        if info.get("state") != "REMOVED":
            try:
                remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))
            except Exception:  # noqa: BLE001 - removed meanwhile
                pass
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total - 1e-6:
        if time.monotonic() > deadline:
            ray.shutdown()
            return
        time.sleep(0.2)


def _stop_local_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@dataclasses.dataclass
class RayCluster:
    """A ``ray start`` cluster on this machine: ``address`` to join, ``env`` to join with (its own HOME,
    which holds the cluster's token; no RAY_* variables of the caller), ``cpus`` over all raylets."""

    address: str
    env: dict[str, str]
    cpus: float
    procs: list[subprocess.Popen]
    temp: str
    port: int


_CLUSTER: RayCluster | None = None


@pytest.fixture
def ray_cluster(tmp_path_factory) -> RayCluster:
    """The shared two-raylet cluster (started by the first test of the block)."""
    global _CLUSTER
    pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")
    if _CLUSTER is None:
        _CLUSTER = _start_cluster(tmp_path_factory.mktemp("raycluster"))
    return _CLUSTER


def _stop_cluster() -> None:
    global _CLUSTER
    cluster, _CLUSTER = _CLUSTER, None
    if cluster is not None:
        _stop_ray(cluster.procs, cluster.temp, cluster.port)


def _start_cluster(root: Path, cpus_per_raylet: int = 2) -> RayCluster:
    """``ray start --head`` and a second raylet ``ray start --address=...`` on this machine, token
    authentication with the token in ``root/home``. Each runs ``--block`` in a process group of its own,
    so :func:`_stop_ray` stops exactly them: never ``ray stop``, which stops every Ray instance of the
    machine (other runs, other tests)."""
    home = root / "home"
    home.mkdir()
    temp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_WAIT_POLICY="PASSIVE")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # What `ray get-auth-token --generate` writes (256 random bits, hex), without a process start for it.
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", f"--num-cpus={cpus_per_raylet}", "--num-gpus=0", "--disable-usage-stats",
              f"--dashboard-agent-listen-port={free_port()}"]
    procs: list[subprocess.Popen] = []
    try:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}", *common],
            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(head)
        wait_for_line(head, "Ray runtime started", 120)
        second = subprocess.Popen(
            [ray_bin, "start", f"--address={address}", *common],
            # a joining raylet, unlike the head, uses token auth only when told (Ray says so if not)
            env={**env, "RAY_AUTH_MODE": "token"}, start_new_session=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        procs.append(second)
        wait_for_line(second, "Ray runtime started", 120)  # printed once the raylet joined the head
    except BaseException:
        _stop_ray(procs, temp, port)
        raise
    return RayCluster(address, env, float(2 * cpus_per_raylet), procs, temp, port)


def _stop_ray(procs: list[subprocess.Popen], temp: str, port: int) -> None:
    """Stop ``ray start --block`` processes and everything they started: SIGINT first (each stops what it
    started), then SIGKILL for what is left of that instance (processes naming its temp dir or port,
    their descendants, the process groups), then its temp dir."""
    for p in reversed(procs):
        p.send_signal(signal.SIGINT)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            pass
    for pid in pids_of(temp, port):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of(temp: str, port: int) -> list[int]:
    """Processes of the instance with that temp dir and port: those naming either, and their descendants."""
    procs: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(name)] = (ppid, cmd)
    mine = {pid for pid, (_, cmd) in procs.items() if temp in cmd or f":{port}" in cmd}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    mine.discard(os.getpid())
    return sorted(mine)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Wait until ``proc`` prints a line holding ``needle`` (fail if it exits or ``timeout`` passes). A
    daemon thread reads its output to the end, so the pipe never fills while the process runs on."""
    import queue
    import threading

    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    pytest.fail(f"no {needle!r} from {proc.args[:3]}: {''.join(seen)[-2000:]}")
