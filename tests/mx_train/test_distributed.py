"""Ray scale-out: the weight channel from the driver to rollout workers (on the shared local Ray
instance of conftest), joining a `ray start` cluster with its token, refusals before Ray starts, the
driver's GPU pin. A training run with 2 Ray rollout workers is test_ray_parity's (the same run as the
local one, step for step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mx_train.config import TrainConfig
from tests.mx_train.conftest import free_port

ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")


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
def test_weight_channel_sends_each_stale_role_to_every_worker(local_ray):
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

    actors = [ray.remote(num_cpus=0.5)(Probe).remote() for _ in range(2)]
    group = None
    try:
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
    finally:  # the instance is shared: its CPUs back for the next test
        if group is not None and group.channel is not None:
            group.channel.close()
        for a in actors:
            ray.kill(a)


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


@pytest.mark.slow
def test_join_a_ray_start_cluster_with_its_token_or_say_why_not(ray_cluster, tmp_path):
    """The shared two-raylet cluster of conftest (`ray start`, token authentication as this Ray sets it
    up, its token in the cluster's own HOME)."""
    import subprocess
    import sys

    address, env = ray_cluster.address, ray_cluster.env
    root = str(Path(__file__).resolve().parents[2])
    # RAY_AUTH_MODE unset, the token in ~/.ray/auth_token: token auth is switched on and the join works.
    out = subprocess.run([sys.executable, "-c", _JOIN, address], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert f"JOINED {ray_cluster.cpus}" in out.stdout, out.stdout + out.stderr[-2000:]  # both raylets' CPUs
    # No token here: refused, and the one line says what to set (Ray's retries cut to 2 s for the test).
    other = tmp_path / "other-home"
    other.mkdir()
    env2 = {**env, "HOME": str(other), "RAY_gcs_server_port_wait_time_s": "2"}
    out = subprocess.run([sys.executable, "-c", _JOIN, address], env=env2, cwd=root, capture_output=True, text=True,
                         timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("REFUSED")]
    assert line and "RAY_AUTH_MODE=token" in line[0] and "ray get-auth-token" in line[0], out.stdout + out.stderr[-2000:]
    # Nothing listening: said at once, without Ray's retries.
    out = subprocess.run([sys.executable, "-c", _JOIN, f"127.0.0.1:{free_port()}"], env=env2, cwd=root,
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
