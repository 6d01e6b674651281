"""Ray scale-out on a local Ray instance: rollout workers (envs + sandboxes + a generation engine)
and the learner in the driver, weights pushed to the workers after each update."""

from __future__ import annotations

from pathlib import Path

import pytest

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
