"""Ray scale-out on a local Ray instance: rollout workers (envs + sandboxes + a generation engine)
and the learner in the driver, weights pushed to the workers after each update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mx_train.config import TrainConfig

ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")


@pytest.mark.slow
def test_ray_rollout_workers_train_like_local(tmp_path, tiny_model_dir):
    from mx_train.trainer import Trainer

    cfg = TrainConfig.from_dict(
        {
            "seed": 0,
            "max_steps": 2,
            "out": str(tmp_path / "run"),
            "tensorboard": False,
            "env": {"id": "MetaAgentX-Arithmetic-v0", "kwargs": {"loader_kwargs": {"level": 1, "n": 20}}},
            "policy": {"model": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
            "rollout": {
                "tasks_per_step": 2, "designs": 2, "executions": 2,
                "designer": {"max_new_tokens": 8}, "executor": {"max_new_tokens": 8},
                # The tiny model's context is 1k byte-level tokens: a one-line system prompt instead of
                # the API reference. Its designs fail (no code); the test checks the plumbing.
                "designer_prompt": {"system_prompt": "Write a MAS script."},
            },
            "learner": {"lr": 1e-3, "device": "cpu"},
            "schedule": {"mode": "joint"},
            "distributed": {"backend": "ray", "num_rollout_workers": 2, "worker_cpus": 0.5},
        }
    )
    trainer = Trainer(cfg, progress=False)
    try:
        history = trainer.run()
        group = trainer._workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert group is None  # closed by run()
    assert len(history) == 2
    for m in history:
        assert m["episodes"] == 8  # B * M * N episodes, gathered from both workers
        assert m["transitions/designer"] == 4
    shard = (tmp_path / "run" / "transitions" / "step_00000001.jsonl").read_text().splitlines()
    assert len(shard) >= 4
    # Workers sampled with the weights of the learner after step 0 (version pushed through Ray).
    import json

    versions = {json.loads(line)["policy_version"] for line in shard}
    assert versions == {int(history[1]["policy_version"])}


class _FakeLearner:
    def __init__(self, version: int, seed: int) -> None:
        import torch

        self.version = version
        gen = torch.Generator().manual_seed(seed)
        self.state = {"w": torch.randn(3, 5, generator=gen), "b": torch.randn(7, generator=gen),
                      "h": torch.randn(4, generator=gen).to(torch.bfloat16)}

    def weights_for_sync(self):
        return self.state


def test_stale_roles_are_tracked_per_role():
    from mx_train.distributed import stale_roles

    d, e = _FakeLearner(3, 0), _FakeLearner(3, 1)
    split = {"designer": d, "executor": e}
    assert stale_roles(split, {}) == ["designer", "executor"]
    assert stale_roles(split, {"designer": 3, "executor": 3}) == []
    e.version = 5  # an executor phase: only the executor's learner stepped
    assert stale_roles(split, {"designer": 3, "executor": 3}) == ["executor"]
    shared = {"designer": d, "executor": d}  # one engine, under "designer"
    assert stale_roles(shared, {"designer": 3}) == []
    d.version = 4
    assert stale_roles(shared, {"designer": 3}) == ["designer"]


def test_worker_gpus_zero_with_cuda_policy_is_refused():
    from mx_train.distributed import check_gpu_assignment

    cfg = TrainConfig.from_dict({"policy": {"device": "cuda"}, "distributed": {"backend": "ray", "worker_gpus": 0.0}})
    with pytest.raises(ValueError, match="cuda:0"):
        check_gpu_assignment(cfg)
    check_gpu_assignment(TrainConfig.from_dict({"policy": {"device": "cuda"}, "distributed": {"worker_gpus": 1.0}}))


@pytest.mark.slow
def test_weight_channel_sends_each_stale_role_to_every_worker():
    """Driver -> 2 Ray actors over the gloo weight channel; split policy, executor-only phase."""
    from mx_train.distributed import RolloutWorker, WeightChannel, WorkerGroup, sync_weights
    from mx_train.learner.fsdp import free_port

    class _Backend:
        def __init__(self):
            self.state = None

        def load_weights(self, state):
            self.state = {k: v.clone() for k, v in state.items()}

    class Probe(RolloutWorker):
        def __init__(self):  # the real weight path, without envs or models
            self.backends = {"designer": _Backend(), "executor": _Backend()}
            self.versions = {"designer": 0, "executor": 0}
            self.channel = None
            self.weight_check = {}

        def received(self):
            return {r: b.state for r, b in self.backends.items()}

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        actors = [ray.remote(num_cpus=0.5)(Probe).remote() for _ in range(2)]
        port = free_port()
        futures = [a.join_channel.remote("127.0.0.1", port, i + 1, 3, "gloo") for i, a in enumerate(actors)]
        group = WorkerGroup(actors, channel=WeightChannel("127.0.0.1", port, 0, 3, "gloo"))
        ray.get(futures)
        learners = {"designer": _FakeLearner(2, 0), "executor": _FakeLearner(2, 1)}
        assert sync_weights(learners, group) == ["designer", "executor"]
        learners["executor"].version = 3
        learners["executor"].state = _FakeLearner(0, 2).state  # what the executor phase trained
        assert sync_weights(learners, group) == ["executor"]  # the designer is not re-sent
        assert sync_weights(learners, group) == []
        for got in ray.get([a.received.remote() for a in actors]):
            for role, learner in learners.items():
                assert got[role].keys() == learner.state.keys()
                for k, v in learner.state.items():
                    assert got[role][k].dtype == v.dtype and torch.equal(got[role][k], v), (role, k)
        assert group.pushed == {"designer": 2, "executor": 3}
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- joining a `ray start` cluster
_JOIN = """
import sys
from mx_train.config import TrainConfig
from mx_train.distributed import connect
cfg = TrainConfig.from_dict({"distributed": {"backend": "ray", "ray_address": sys.argv[1]}})
try:
    ray = connect(cfg)
except ConnectionError as exc:
    print("REFUSED", exc)
else:
    print("JOINED", ray.cluster_resources().get("CPU"))
    ray.shutdown()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head` (token authentication, as this Ray sets it up) in a process group of
    its own, with its own HOME (token) and temp dir, so no other Ray on this machine sees it; stopped
    by its own process ids, never `ray stop` (which stops every Ray of the machine)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    home = tmp_path / "home"
    home.mkdir()
    temp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_WAIT_POLICY="PASSIVE")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = _free_port()
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=1",
         "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while head.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    try:
        if head.poll() is not None:
            pytest.fail(f"ray start --head failed: {head.stdout.read()[-2000:] if head.stdout else ''}")
        yield f"127.0.0.1:{port}", env, home
    finally:
        head.send_signal(signal.SIGINT)  # --block: the head stops the processes it started
        try:
            head.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid in _pids_of(temp, port):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _pids_of(temp: str, port: int) -> list[int]:
    """Processes of that head: those naming its temp dir or port, and their descendants."""
    import os

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


@pytest.mark.slow
def test_join_a_ray_start_cluster_with_its_token_or_say_why_not(ray_head, tmp_path):
    import subprocess
    import sys

    address, env, home = ray_head
    root = str(Path(__file__).resolve().parents[2])
    # RAY_AUTH_MODE unset, the token in ~/.ray/auth_token: token auth is switched on and the join works.
    out = subprocess.run([sys.executable, "-c", _JOIN, address], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert "JOINED 1.0" in out.stdout, out.stdout + out.stderr[-2000:]
    # No token here: refused, and the one line says what to set (Ray's retries cut to 2 s for the test).
    other = tmp_path / "other-home"
    other.mkdir()
    env2 = {**env, "HOME": str(other), "RAY_gcs_server_port_wait_time_s": "2"}
    out = subprocess.run([sys.executable, "-c", _JOIN, address], env=env2, cwd=root, capture_output=True, text=True,
                         timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("REFUSED")]
    assert line and "RAY_AUTH_MODE=token" in line[0] and "ray get-auth-token" in line[0], out.stdout + out.stderr[-2000:]
    # Nothing listening: said at once, without Ray's retries.
    out = subprocess.run([sys.executable, "-c", _JOIN, f"127.0.0.1:{_free_port()}"], env=env2, cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert "REFUSED" in out.stdout and "nothing answers there" in out.stdout


def test_unplaceable_run_is_refused_before_local_ray_starts(tmp_path, capsys):
    """`mx train` itself (not only --dry-run): 1000 one-GPU engines fit no machine; the refusal comes
    with the plan and a suggestion in seconds, and no Ray instance is started for it."""
    import time

    from mx_train.cli import main

    t0 = time.monotonic()
    rc = main(["train", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "smoke_cpu.yaml"),
               "--set", "distributed.backend=ray", "--set", "policy.device=cuda", "--set", "distributed.worker_gpus=1",
               "--set", "distributed.num_rollout_workers=1000", "--max-steps", "1", "--out", str(tmp_path / "run"),
               "--no-progress"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 3 and "cannot place this run" in err and "NOT PLACEABLE" in err and "Try:" in err
    assert elapsed < 10, elapsed
    assert not ray.is_initialized()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_driver_is_pinned_to_the_gpu_its_lease_holds(monkeypatch):
    from mx_train.distributed import Reservation, pin_driver_device

    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already started in this process: the pin would be refused (see the next case)")
    pin_driver_device(Reservation(plan=None, placement_group=None, lease_gpus={0: [3]}))
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "3"
    # torchrun placed its ranks itself: they must be on the GPUs Ray reserved for them, else a clear stop.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    pin_driver_device(Reservation(plan=None, placement_group=None, lease_gpus={0: [4], 1: [5]}))
    with pytest.raises(RuntimeError, match=r"GPUs \[4, 5\] but Ray reserved \[4, 6\]"):
        pin_driver_device(Reservation(plan=None, placement_group=None, lease_gpus={0: [4], 1: [6]}))
