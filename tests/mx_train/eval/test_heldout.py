"""``mx heldout``: every condition of a run on Arithmetic test tasks, with the run's prompt and sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_heldout_runs_every_condition_on_test_tasks(tmp_path: Path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama
    from mx_train.config import TrainConfig
    from mx_train.eval.heldout import render, run_heldout
    from mx_train.trainer import Trainer
    from tests.mx_train.scripted_env import ScriptedTwoLevelEnv

    cfg = TrainConfig.from_dict({
        "max_steps": 1, "out": str(tmp_path / "run"), "tensorboard": False,
        "rollout": {"tasks_per_step": 1, "designs": 2, "executions": 1,
                    "designer": {"max_new_tokens": 4}, "executor": {"max_new_tokens": 4},
                    "designer_prompt": {"system_prompt": "TINY"}},
        "learner": {"lr": 1e-3, "micro_batch_tokens": 512, "device": "cpu"},
        "schedule": {"mode": "joint"},
        "warm_start": {"designs": ["single"], "steps": 1, "tasks": 1, "batch_size": 1, "save": True},
    })

    def make(spec: str):
        model, tok = tiny_llama(seed=0)
        return HFBackend(model, tok, device="cpu", dtype="float32")

    run = tmp_path / "run"
    Trainer(cfg, env_factory=ScriptedTwoLevelEnv, backend_factory=make, progress=False).run()
    assert (run / "cold_start" / "checkpoints").is_dir()
    ckpt = sorted((run / "checkpoints").iterdir())[-1] / "models" / "policy"
    capsys.readouterr()
    import mx_train.eval.heldout as heldout_mod

    loaded: list[list[str]] = []  # the models held when each condition's policy is built
    real_policy = heldout_mod._policy

    def watched(designer, executor, settings, backends, *a):
        policy = real_policy(designer, executor, settings, backends, *a)
        loaded.append(sorted(backends))
        return policy

    monkeypatch.setattr(heldout_mod, "_policy", watched)
    doc = run_heldout(run, levels=(1, 3), n=2, batch_size=4, base_model=str(ckpt), progress=True)
    err = capsys.readouterr().err
    # Run order: a model is released after the last condition that plays it, so at most two are held.
    run_order = ("base", "cold_start", "trained_executor+cold_designer", "trained")
    for i, name in enumerate(run_order, 1):
        assert f"heldout {i}/4 {name}" in err and "4/4" in err, err  # a bar per condition, every episode counted
    cold, trained = str(run / "cold_start"), str(run)
    assert loaded == [[str(ckpt)], [cold], sorted([cold, trained]), [trained]]
    assert list(doc["conditions"]) == ["base", "cold_start", "trained", "trained_executor+cold_designer"]
    assert set(doc["memory"]["peak_rss_gb"]) == {*run_order, "peak_rss_gb"}
    assert doc["memory"]["engine"] == heldout_mod.EVAL_ENGINE
    assert doc["settings"]["designer_prompt"] == {"system_prompt": "TINY"}
    for c in doc["conditions"].values():
        assert set(c["levels"]) == {"1", "3"} and all(v["n"] == 2 for v in c["levels"].values())
        assert abs(sum(c["structures"].values()) - 1.0) < 1e-9
    assert {"system_gain_points", "designer_gain_points", "rl_gain_points"} <= set(doc["summary"])
    # Only test-split tasks were played.
    episodes = (run / "heldout" / "trained" / "L3" / "episodes.jsonl").read_text().splitlines()
    assert episodes and all("/L3/test/" in json.loads(e)["task_id"] for e in episodes)
    assert json.loads((run / "heldout.json").read_text())["tasks_per_level"] == 2
    assert "trained_executor+cold_designer" in render(doc)
