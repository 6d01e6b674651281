"""The training loop end to end on a scripted env with a tiny random Llama (fast, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch  # a core dependency: a broken install must fail, not skip

from mx_train.config import TrainConfig
from tests.mx_train.scripted_env import ScriptedTwoLevelEnv


def _config(tmp_path: Path, **over) -> TrainConfig:
    data = {
        "seed": 0,
        "max_steps": 2,
        "out": str(tmp_path / "run"),
        "tensorboard": False,
        "rollout": {
            "tasks_per_step": 2, "designs": 2, "executions": 2,
            "designer": {"temperature": 1.0, "max_new_tokens": 6},
            "executor": {"temperature": 1.0, "max_new_tokens": 8},
        },
        "learner": {"lr": 5e-3, "micro_batch_tokens": 512, "device": "cpu"},
        "schedule": {"mode": "joint"},
    }
    data.update(over)
    return TrainConfig.from_dict(data)


def _backend_factory():
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama

    def make(spec: str):
        model, tok = tiny_llama(seed=0)
        return HFBackend(model, tok, device="cpu", dtype="float32")

    return make


def _trainer(cfg: TrainConfig):
    from mx_train.trainer import Trainer

    return Trainer(cfg, env_factory=ScriptedTwoLevelEnv, backend_factory=_backend_factory(), progress=False)


def test_config_rejects_unknown_keys_and_names(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"rollout": {"desings": 3}})
    with pytest.raises(ValueError, match="known: .*grpo"):
        TrainConfig.from_dict({"algorithm": {"estimator": "nope"}}).validate()
    with pytest.raises(ValueError, match="learner: unknown key 'lrr'; did you mean 'lr'"):
        TrainConfig.from_dict({"learner": {"lrr": 1}}).validate()


def test_learner_config_is_built_once_and_passed(tmp_path, monkeypatch):
    """Loading, checking and assembling a run build one LearnerConfig; every learner holds that object."""
    from mx_train.learner import LearnerConfig

    built = []
    init = LearnerConfig.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(LearnerConfig, "__init__", counting_init)
    cfg = _config(tmp_path)
    cfg.validate()
    trainer = _trainer(cfg)
    assert len(built) == 1, built
    assert trainer.learners["designer"].config is cfg.learner
    assert trainer.learners["executor"].config is cfg.learner


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        TrainConfig.from_yaml(f).validate()


def test_training_steps_change_parameters_and_write_everything(tmp_path):
    trainer = _trainer(_config(tmp_path))
    before = {k: v.detach().clone() for k, v in trainer.learners["designer"].model.state_dict().items()}
    history = trainer.run()
    assert len(history) == 2
    for m in history:
        assert m["episodes"] == 8
        assert m["transitions/designer"] == 4 and m["transitions/executor"] == 8
        assert all(torch.isfinite(torch.tensor(v)) for k, v in m.items() if isinstance(v, float))
    after = trainer.learners["designer"].model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    run = tmp_path / "run"
    shard = run / "transitions" / "step_00000000.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    assert {r["role"] for r in rows} == {"designer", "executor"}
    # Group ids are explicit: 2 tasks x 2 designs x 2 executions.
    ex = [r for r in rows if r["role"] == "executor"]
    assert len({(r["task_uid"], r["design_id"], r["execution_id"]) for r in ex}) == 8
    assert all(r["response_ids"] and r["logprobs"] for r in rows)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    assert (run / "checkpoints" / "step_00000002").is_dir()
    # The run directory is a policy spec: the newest checkpoint's model, with its tokenizer beside it.
    from mx_agents.backends.hf import HFBackend
    from mx_agents.policies.spec import resolve_model_path

    path = resolve_model_path(str(run))
    assert path == str(run / "checkpoints" / "step_00000002" / "models" / "policy")
    reloaded = HFBackend(path, device="cpu", dtype="float32").model.state_dict()
    assert all(torch.equal(after[k], reloaded[k]) for k in after)


def test_stagewise_schedule_freezes_inactive_role(tmp_path):
    cfg = _config(tmp_path, schedule={"mode": "stagewise", "phase_steps": 1, "first": "executor"}, max_steps=2)
    trainer = _trainer(cfg)
    # The engine's prefix cache is full after a rollout and empty when the update starts: the update
    # changes the weights its states were computed with, so they are freed before the update's peak.
    seen: list[int] = []
    update = trainer.policy_group.update

    def watched(transitions, active_roles=None):
        seen.append(trainer.backends["executor"].prefix_cache.bytes)
        return update(transitions, active_roles=active_roles)

    trainer.policy_group.update = watched
    history = trainer.run()
    assert seen == [0, 0] and history[0]["rollout/prefix_hit_rate"] > 0
    # the engine's working time is part of the rollout's: busy fraction in (0, 1]
    assert 0 < history[0]["rollout/engine_s"] <= history[0]["time/rollout_s"]
    assert history[0]["rollout/engine_busy_frac"] == pytest.approx(
        history[0]["rollout/engine_s"] / history[0]["time/rollout_s"])
    assert [m["phase"] for m in history] == ["executor", "designer"]
    assert history[0]["active/designer"] == 0.0 and history[0]["active/executor"] == 1.0
    # Only the active role's transitions reach the loss: step 0 trains 8 executor sequences, step 1 4 designs.
    assert history[0]["policy/sequences"] == 8
    assert history[1]["policy/sequences"] == 4


def test_resume_continues_exactly(tmp_path):
    full = _trainer(_config(tmp_path / "a", max_steps=3)).run()
    first = _trainer(_config(tmp_path / "b", max_steps=2))
    first.run()
    resumed = _trainer(_config(tmp_path / "b", max_steps=3))
    rest = resumed.run(resume=True)
    assert len(rest) == 1
    assert rest[0]["reward/executor"] == pytest.approx(full[2]["reward/executor"])
    assert rest[0]["policy/loss"] == pytest.approx(full[2]["policy/loss"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_sigkill_mid_step_loses_no_completed_step(tmp_path):
    """A training process SIGKILLed mid-step resumes from its last checkpoint and loses nothing else.

    The kill lands deterministically (no sleeps, no polling): the child kills itself after step 2's
    update and metrics line, as its checkpoint is about to be written, the worst place: the metrics
    file then has a step that no checkpoint holds, and resume must drop and redo it."""
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.mx_train.test_trainer import _config, _trainer
        from pathlib import Path
        import mx_train.trainer as tr
        orig = tr.Trainer.save
        def save_or_die(self, *args, **kwargs):
            if self.step_index == 3:  # step 2 updated and logged, its checkpoint not written yet
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, *args, **kwargs)
        tr.Trainer.save = save_or_die
        _trainer(_config(Path({str(tmp_path)!r}), max_steps=5, full_save_every=1)).run()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001", "step_00000002"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    resumed = _trainer(_config(tmp_path, max_steps=4, full_save_every=1))
    assert resumed.resume() == 2
    rest = _trainer(_config(tmp_path, max_steps=4, full_save_every=1)).run(resume=True)
    assert len(rest) == 2
    steps_after = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_after == [0, 1, 2, 3]
