"""Fault tolerance of the Ray path with real Ray on CPU (tiny model): a rollout worker killed between
steps or while its rollout call is in flight is replaced in its slot, gets the current weights and
re-runs its episodes (the step stays complete, the restart is counted); past
``distributed.max_worker_restarts`` the run stops; a dead learner rank stops the run with a clear
error and ``--resume`` finishes it; and a two-raylet ``ray start`` cluster on this machine trains the
smoke config with ``--learner-procs 2``. The local runs share conftest's local Ray instance, the
cluster is conftest's ``ray_cluster``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from mx_envs.errors import ConfigError
from mx_train.config import TrainConfig

ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")


def test_max_worker_restarts_is_checked():
    TrainConfig.from_dict({"distributed": {"max_worker_restarts": 0}}).validate()
    with pytest.raises(ConfigError, match=r"distributed\.max_worker_restarts"):
        TrainConfig.from_dict({"distributed": {"max_worker_restarts": -1}}).validate()


def _config(tmp_path: Path, model: Path, **distributed: Any) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "seed": 0,
            "max_steps": 4,
            "out": str(tmp_path / "run"),
            "tensorboard": False,
            "save_every": 1,
            "full_save_every": 1,
            "keep_last": 1,
            "env": {"id": "MetaAgentX-Arithmetic-v0", "kwargs": {"loader_kwargs": {"level": 1, "n": 20}}},
            "policy": {"model": str(model), "device": "cpu", "dtype": "float32"},
            "rollout": {
                "tasks_per_step": 2, "designs": 2, "executions": 2,
                "designer": {"max_new_tokens": 8}, "executor": {"max_new_tokens": 8},
                "designer_prompt": {"system_prompt": "Write a MAS script."},
            },
            # A random model's designs fail alike (zero advantages): the entropy bonus makes every
            # update a real step, so each step has a new version to push.
            "learner": {"lr": 1e-3, "device": "cpu", "entropy_coef": 1e-3},
            "schedule": {"mode": "joint"},
            "distributed": {"backend": "ray", "num_rollout_workers": 2, "worker_cpus": 0.5, **distributed},
        }
    )


def _wait_dead(actor: Any) -> None:
    """Until Ray reports the actor dead: a call to it fails with RayActorError (a call that still
    reaches the dying process answers; the next one is asked again, never a sleep)."""
    for _ in range(1000):
        try:
            ray.get(actor.pid.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
    raise AssertionError("the killed actor still answers")


def _designer_digest(worker: Any) -> list[float]:
    """Per-parameter sums of the weights a worker's designer engine serves (read in the actor)."""

    def digest(self: Any) -> list[float]:
        return [float(p.detach().double().sum()) for p in self.backends["designer"].model.parameters()]

    return ray.get(worker.__ray_call__.remote(digest))


def _learner_digest(learner: Any) -> list[float]:
    return [float(v.detach().double().sum()) for v in learner.weights_for_sync().values()]


@pytest.mark.slow
def test_killed_rollout_worker_is_replaced_and_its_episodes_rerun(tmp_path, tiny_model_dir, monkeypatch, local_ray):
    import mx_train.distributed as dist
    from mx_train.trainer import Trainer

    trainer = Trainer(_config(tmp_path, tiny_model_dir, max_worker_restarts=2), progress=False)
    try:
        m0 = trainer.step()
        group = trainer._workers
        assert group is not None and m0["distributed/worker_restarts"] == 0

        # Between steps: Ray kills worker 1's actor (no Ray restart: the driver replaces it).
        old = group.actors[1]
        ray.kill(old, no_restart=False)
        _wait_dead(old)
        m1 = trainer.step()
        assert group.actors[1] is not old
        assert m1["distributed/worker_restarts"] == 1 and m1["distributed/rerun_episodes"] == 0
        assert m1["episodes"] == 8 and m1["transitions/designer"] == 4  # B * M * N, B * M

        # During a step: worker 0's process is SIGKILLed while its rollout call is in flight.
        victim = group.actors[0]
        pid = ray.get(victim.pid.remote())
        gather = dist._gather
        killed: list[int] = []

        def kill_then_gather(future: Any) -> Any:
            if not killed:
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
            return gather(future)

        monkeypatch.setattr(dist, "_gather", kill_then_gather)
        m2 = trainer.step()
        monkeypatch.setattr(dist, "_gather", gather)
        assert killed == [pid] and group.actors[0] is not victim
        assert m2["distributed/worker_restarts"] == 2
        assert m2["distributed/rerun_episodes"] == 4  # worker 0's shard: 1 task x M x N
        assert m2["distributed/restart_s"] > 0
        assert m2["episodes"] == 8 and m2["transitions/designer"] == 4
        rows = [json.loads(x) for x in (tmp_path / "run" / "transitions" / "step_00000002.jsonl").read_text().splitlines()]
        # both tasks' M designs came back, the re-run shard's included
        designs = sorted((r["task_uid"], r["design_id"]) for r in rows if r["role"] == "designer")
        assert len({u for u, _ in designs}) == 2 and designs == sorted({(u, m) for u, _ in designs for m in range(2)})
        # the replacements sampled with the current weights: the learner's version, and its values
        version = int(m2["policy_version"])
        assert {r["policy_version"] for r in rows} == {version}
        learner = trainer.learners["designer"]
        dist.sync_weights(trainer.learners, group)  # the step's update: push it, then compare
        for w in group.actors:
            assert _designer_digest(w) == pytest.approx(_learner_digest(learner), rel=1e-6, abs=1e-6)

        # A third death is one more than distributed.max_worker_restarts=2: the run stops, saying so.
        ray.kill(group.actors[1])
        _wait_dead(group.actors[1])
        with pytest.raises(RuntimeError, match="max_worker_restarts=2"):
            trainer.step()
    finally:
        trainer.close()


@pytest.mark.slow
def test_dead_learner_rank_stops_the_run_and_resume_finishes_it(tmp_path, tiny_model_dir, monkeypatch, local_ray):
    import mx_train.distributed as dist
    from mx_train.trainer import Trainer, train

    # One rollout worker: the rank's death and the resume do not depend on how many there are, and each
    # of the two runs starts its workers afresh.
    cfg = _config(tmp_path, tiny_model_dir, learner_procs=2, num_rollout_workers=1)
    cfg.max_steps = 2
    save = Trainer.save
    killed: list[int] = []

    def save_then_kill_rank_1(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        out = save(self, *args, **kwargs)
        res = dist.active_reservation()
        if self.step_index == 1 and not killed and res is not None:  # step 0's full checkpoint is written
            killed.append(1)
            ray.kill(res.learner_ranks[0])
            ray.wait(res.learner_runs, timeout=60)  # until Ray reports the rank's run ended (dead)
        return out

    monkeypatch.setattr(Trainer, "save", save_then_kill_rank_1)
    with pytest.raises(dist.LearnerRankDied, match=r"learner rank 1 of 2 died.*mx train --resume"):
        train(cfg, progress=False)
    assert killed == [1]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0]  # stopped before step 1

    monkeypatch.setattr(Trainer, "save", save)
    assert train(cfg, resume=True, progress=False) == 0  # what `mx train --resume` runs
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]


# ---------------------------------------------------------------------------- a two-raylet cluster
@pytest.mark.slow
def test_two_raylet_cluster_trains_the_smoke_config_with_two_learner_ranks(ray_cluster, tmp_path):
    """`mx train` of configs/smoke_cpu.yaml (2 steps) with --learner-procs 2 joined to conftest's cluster
    through distributed.ray_address: driver, learner rank 1 and two rollout workers need 4 CPUs, so the
    plan spreads them over both raylets (2 CPUs each)."""
    import subprocess
    import sys

    address, env = ray_cluster.address, ray_cluster.env
    assert ray_cluster.cpus == 4
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mx")), "train", "--config", str(root / "configs" / "smoke_cpu.yaml"),
         "--learner-procs", "2", "--out", str(out), "--no-progress",
         "--set", "distributed.backend=ray", "--set", f"distributed.ray_address={address}"],
        env=env, cwd=root, capture_output=True, text=True, timeout=540)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [0, 1]
    assert all(m["episodes"] == 8 and m["distributed/worker_restarts"] == 0 for m in steps)  # B * M * N
    # The placement the driver logged: 2 learner ranks, 2 engines, bundles on both raylets (4 CPUs
    # needed, 2 on each: the placement group cannot be ready without the second one).
    assert "2 learner rank(s), 2 rollout engine(s)" in log, log[-4000:]
    where = {line.split()[2] for line in log.splitlines() if line.startswith("  bundle ")}
    assert len(where) == 2, log[-4000:]
