"""Several training envs in one run: routing, weighted draws, per-env metrics, resumable position."""

from __future__ import annotations

from pathlib import Path

import pytest

from mx_agents.design_groups import unique_names
from mx_train.config import TrainConfig
from mx_train.env_mix import MixedEnv, qualify, split_qualified


class _FakeEnv:
    def __init__(self, name: str, made: list[str]) -> None:
        self.name = name
        made.append(name)
        self.reset_with: list[str] = []
        self.closed = False

    def reset(self, *, seed=None, options=None):
        self.reset_with.append(options["task_id"])
        return {"env": self.name}, {"task_id": options["task_id"]}

    def step(self, action):
        return {"env": self.name, "action": action}, 0.0, True, False, {}

    @property
    def unwrapped(self):
        return self

    def close(self):
        self.closed = True


def test_mixed_env_routes_each_episode_to_its_env_and_makes_envs_lazily():
    made: list[str] = []
    envs = MixedEnv([lambda: _FakeEnv("a", made), lambda: _FakeEnv("b", made)])
    assert made == []
    obs, info = envs.reset(options={"task_id": qualify(1, "t/7")})
    assert obs == {"env": "b"} and info["task_id"] == "t/7" and made == ["b"]
    assert envs.step("x")[0] == {"env": "b", "action": "x"}
    assert envs.name == "b"  # attributes come from the current episode's env
    envs.reset(options={"task_id": "0::t/1"})
    assert envs.step("y")[0]["env"] == "a" and made == ["b", "a"]
    envs.reset(options={"task_id": "1::t/2"})
    assert made == ["b", "a"]  # reused, not remade
    with pytest.raises(KeyError, match="not qualified"):
        envs.reset(options={"task_id": "t/1"})
    with pytest.raises(KeyError, match="out of range"):
        envs.reset(options={"task_id": "5::t/1"})
    envs.close()


def test_qualified_ids_and_unique_names():
    assert split_qualified(qualify(3, "a::b")) == (3, "a::b")
    assert unique_names(["Arithmetic", "Arithmetic", "GSM8K"]) == ["Arithmetic", "Arithmetic#1", "GSM8K"]


def test_env_entries_validate_weights_and_ids():
    cfg = TrainConfig.from_dict({"envs": [{"id": "MetaAgentX-Arithmetic-v0", "weight": 2, "name": "L1"}]})
    (env, weight, name), = cfg.env_entries()
    assert (env.id, weight, name) == ("MetaAgentX-Arithmetic-v0", 2.0, "L1")
    with pytest.raises(ValueError, match="weight must be a positive number"):
        TrainConfig.from_dict({"envs": [{"id": "MetaAgentX-Arithmetic-v0", "weight": 0}]}).validate()
    with pytest.raises(ValueError, match="needs an 'id'"):
        TrainConfig.from_dict({"envs": [{"weight": 1}]}).validate()
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"envs": [{"id": "MetaAgentX-Arithmetic-v0", "kwrags": {}}]}).validate()
    assert TrainConfig.from_dict({}).env_entries()[0][1] == 1.0  # no list: the single env


def _mix_config(tmp_path: Path, weights=(1.0, 3.0), steps=3) -> TrainConfig:
    return TrainConfig.from_dict({
        "seed": 0, "max_steps": steps, "out": str(tmp_path / "run"), "tensorboard": False, "save_every": 1,
        "envs": [
            {"id": "MetaAgentX-Arithmetic-v0", "name": "L1", "weight": weights[0],
             "kwargs": {"loader_kwargs": {"level": 1, "n": 10}}},
            {"id": "MetaAgentX-Arithmetic-v0", "name": "L3", "weight": weights[1],
             "kwargs": {"loader_kwargs": {"level": 3, "n": 10}}},
        ],
        "rollout": {"tasks_per_step": 4, "designs": 2, "executions": 1,
                    "designer": {"max_new_tokens": 4}, "executor": {"max_new_tokens": 4},
                    # the env's full API reference does not fit the tiny model's 1024-token context
                    "designer_prompt": {"system_prompt": "Write a MAS script."}},
        "learner": {"lr": 1e-3, "micro_batch_tokens": 512, "device": "cpu"},
        "schedule": {"mode": "joint"},
    })


def _mix_trainer(cfg: TrainConfig):
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama
    from mx_train.trainer import Trainer

    def make(spec: str):
        model, tok = tiny_llama(seed=0)
        return HFBackend(model, tok, device="cpu", dtype="float32")

    return Trainer(cfg, backend_factory=make, progress=False)


def test_trainer_mixes_envs_by_weight_with_per_env_metrics_and_resumes_position(tmp_path):
    pytest.importorskip("torch")
    cfg = _mix_config(tmp_path, steps=2)
    trainer = _mix_trainer(cfg)
    assert len(trainer.task_ids) == 20 and trainer.task_ids[0].startswith("0::arithmetic/L1/")
    history = trainer.run()
    for m in history:
        assert m["episodes"] == 8
        assert m["env/L1/tasks"] + m["env/L3/tasks"] == 4
        assert {"reward/designer", "reward/executor", "design/spread", "design/valid"} <= set(m)
    # Continuing from the checkpoint draws what the uninterrupted run draws next.
    expected = trainer.next_tasks()
    resumed = _mix_trainer(_mix_config(tmp_path, steps=2))
    assert resumed.resume() == 2
    assert resumed.next_tasks() == expected
    resumed.close()
    # Draws follow the weights (1 : 3), and each env goes through its tasks before repeating one.
    draws = [t for _ in range(100) for t in trainer.next_tasks()]
    share_l3 = sum(t.startswith("1::") for t in draws) / len(draws)
    assert 0.65 < share_l3 < 0.85
    from collections import Counter

    per_task = Counter(t for t in draws if t.startswith("0::"))
    assert len(per_task) == 10 and max(per_task.values()) - min(per_task.values()) <= 2  # epoch-wise cycling
