"""Ray scale-out on a local Ray instance: rollout workers (envs + sandboxes + a generation engine)
and the learner in the driver, weights pushed to the workers after each update."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mx_train.config import TrainConfig

ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


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
