"""Checkpoints sized for the job: weights-only saves between full ones, keep-last that never drops
the newest full checkpoint, and the trainer's save schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from mx_train.checkpoint import list_checkpoints, load_latest, save_checkpoint


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _learner():
    from mx_agents.testing import tiny_llama
    from mx_agents.transition import Transition
    from mx_train.learner import Learner

    model, _ = tiny_llama(seed=0)
    learner = Learner(model, {"lr": 1e-3, "micro_batch_tokens": 64, "device": "cpu"})
    batch = [Transition(episode_id="e", task_uid="t", task_id="t", design_id=0, execution_id=0, role="executor",
                        agent="a", turn=0, prompt_ids=[5, 6, 7], response_ids=[8, 9], logprobs=None, advantage=1.0)]
    learner.update(batch, active_roles=("designer", "executor"))  # AdamW moments exist now
    return learner


def test_weights_only_between_full_saves_and_keep_last(tmp_path) -> None:
    learner = _learner()
    kw = {"models": {"policy": learner.model}, "learners": {"policy": learner}, "keep_last": 2}
    save_checkpoint(tmp_path, 1, **kw, full=True)
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, **kw, full=False)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000001", "step_00000003", "step_00000004"]  # newest full kept beyond keep_last
    full, weights = tmp_path / "step_00000001", tmp_path / "step_00000004"
    assert not (weights / "learners").exists() and not (weights / "rng.pt").exists()
    assert _size(weights) < 0.5 * _size(full), (_size(weights), _size(full))  # no AdamW moments
    latest = load_latest(tmp_path)
    assert latest is not None and latest.step == 1 and latest.full  # resume needs optimizer state
    newest = load_latest(tmp_path, full=False)
    assert newest is not None and newest.step == 4 and not newest.full
    with pytest.raises(ValueError, match="weights-only"):
        newest.restore(models={"policy": learner.model}, learners={"policy": learner})
    newest.restore(models={"policy": learner.model})  # weights alone restore fine
    save_checkpoint(tmp_path, 5, **kw, full=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_trainer_saves_full_every_n_and_at_the_end(tmp_path) -> None:
    from tests.mx_train.test_trainer import _config, _trainer

    _trainer(_config(tmp_path, max_steps=3, save_every=1, full_save_every=2, keep_last=5)).run()
    kinds = {p.name: load_latest(p.parent, full=False) is not None and (p / "rng.pt").exists()
             for p in list_checkpoints(tmp_path / "run" / "checkpoints")}
    assert kinds == {"step_00000001": False, "step_00000002": True, "step_00000003": True}


def test_completed_run_keeps_only_its_final_weights_when_asked(tmp_path) -> None:
    """`final_checkpoint: weights`: full checkpoints while running (a killed run resumes), then only the
    last step's weights once the run completes."""
    from tests.mx_train.test_trainer import _config, _trainer

    run = tmp_path / "run" / "checkpoints"
    trainer = _trainer(_config(tmp_path, max_steps=3, save_every=1, full_save_every=1, keep_last=2,
                               final_checkpoint="weights"))
    trainer.run(max_steps=2)  # stopped early (as if killed after step 2): resumable
    assert load_latest(run) is not None and load_latest(run).step == 2
    trainer = _trainer(_config(tmp_path, max_steps=3, save_every=1, full_save_every=1, keep_last=2,
                               final_checkpoint="weights"))
    trainer.run(resume=True)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003"]
    assert load_latest(run) is None and load_latest(run, full=False).step == 3
    assert not (run / "step_00000003" / "learners").exists()


def test_bf16_cold_start_is_exactly_the_rl_starting_point_at_half_the_size(tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    from tests.mx_train.test_trainer import _config, _trainer

    ws = {"designs": ["single"], "steps": 1, "tasks": 1, "batch_size": 1, "save": True, "lr": 1e-2}
    trainer = _trainer(_config(tmp_path, max_steps=0, warm_start={**ws, "save_dtype": "bfloat16"}))
    trainer.run()
    model = trainer.learners["designer"].model
    (ckpt,) = list_checkpoints(tmp_path / "run" / "cold_start" / "checkpoints")
    saved = load_file(str(ckpt / "models" / "policy" / "model.safetensors"))
    assert saved and all(t.dtype == torch.bfloat16 for t in saved.values())
    params = dict(model.named_parameters())
    for name, t in saved.items():  # what RL starts from is what was saved, bit for bit
        assert torch.equal(params[name].detach(), t.to(params[name].dtype)), name
    fp32 = _trainer(_config(tmp_path / "b", max_steps=0, warm_start=ws))
    fp32.run()
    (ckpt32,) = list_checkpoints(tmp_path / "b" / "run" / "cold_start" / "checkpoints")
    half = _size(ckpt / "models" / "policy") / _size(ckpt32 / "models" / "policy")
    assert 0.4 < half < 0.7, half
