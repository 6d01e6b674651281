"""Async rollouts (``rollout.async``): k = 0 is the synchronous run, k = 1 overlaps and records staleness,
and a checkpoint mid-run resumes to the uninterrupted run (tiny random Llama, scripted env, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mx_envs.errors import ConfigError
from mx_train.config import TrainConfig
from tests.mx_train.test_trainer import _config, _trainer


def _async(tmp_path: Path, k: int | None, lockstep: bool = False, **over) -> TrainConfig:
    """The trainer tests' config for 3 steps, synchronous (``k=None``) or async. ``lockstep``: rounds
    of turns instead of the continuous schedule, which batches whatever requests are pending, so two
    synchronous runs already differ in sampling log-probs at float32 roundoff (same tokens)."""
    cfg = _config(tmp_path, max_steps=3, **over)
    rollout = cfg.to_dict()["rollout"]
    if k is not None:
        rollout["async"] = {"max_staleness": k}
    if lockstep:
        rollout["schedule"] = "lockstep"
    return TrainConfig.from_dict({**cfg.to_dict(), "rollout": rollout})


def _rows(run: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (run / "transitions" / f"step_{step:08d}.jsonl").read_text().splitlines()]


def _params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.learners["designer"].model.state_dict().items()}


def test_async_key_is_yaml_async_and_validated(tmp_path):
    cfg = TrainConfig.from_dict({"rollout": {"async": {"max_staleness": 2}}})
    assert cfg.rollout.async_.max_staleness == 2
    assert cfg.to_dict()["rollout"]["async"] == {"max_staleness": 2}
    assert TrainConfig.from_dict(cfg.to_dict()).rollout.async_.max_staleness == 2  # round trip (Ray workers)
    assert TrainConfig.from_dict({}).rollout.async_ is None  # absent: synchronous
    with pytest.raises(ConfigError, match=r"rollout\.async\.max_staleness: must be an integer >= 0"):
        TrainConfig.from_dict({"rollout": {"async": {"max_staleness": -1}}}).validate()
    with pytest.raises(ConfigError, match=r"rollout\.async\.max_staleness: expected an integer"):
        TrainConfig.from_dict({"rollout": {"async": {"max_staleness": 0.5}}})
    with pytest.raises(ConfigError, match=r"rollout: unknown key 'async_'; did you mean 'async'"):
        TrainConfig.from_dict({"rollout": {"async_": {"max_staleness": 1}}})


def test_rollout_thread_never_runs_ahead_of_its_weights():
    """k = 2: step s waits for W_{s-2}; draining stops exactly where the published weights end."""
    from mx_train.async_rollout import AsyncRollout, Published, RolloutResult

    made: list[tuple[int, int]] = []

    def produce(step: int, pub: Published) -> RolloutResult:
        made.append((step, pub.step))
        return RolloutResult(step, [], [], {}, pub.step, dict(pub.versions))

    loaded: list[int] = []
    ar = AsyncRollout(produce, lambda pub: loaded.append(pub.step), max_staleness=2, base=0, total=6)
    ar.publish(Published(0, {"designer": 0}))
    ar.start()
    try:
        assert [r.step for r in ar.drain()] == [0, 1, 2]  # W_0 serves steps 0..2; step 3 needs W_1
        assert made == [(0, 0), (1, 0), (2, 0)]
        assert ar.get(0)[0].weights_step == 0
        ar.publish(Published(1, {"designer": 1}, weights={"designer": {}}))
        assert [r.step for r in ar.drain()] == [1, 2, 3]
        assert made[-1] == (3, 1) and loaded == [1]  # the snapshot loaded once, before step 3
        for v in (2, 3):
            ar.publish(Published(v, {"designer": v}))
        assert [r.step for r in ar.drain()] == [1, 2, 3, 4, 5]  # total reached: the thread ends
        assert [w for _, w in made] == [0, 0, 0, 1, 2, 3]
    finally:
        ar.close(timeout=10)


def test_max_staleness_zero_is_the_synchronous_run_step_for_step(tmp_path):
    sync = _trainer(_async(tmp_path / "sync", None, lockstep=True))
    hist_sync = sync.run()
    lazy = _trainer(_async(tmp_path / "async", 0, lockstep=True))
    hist_async = lazy.run()
    for step in range(3):
        a, b = _rows(tmp_path / "sync" / "run", step), _rows(tmp_path / "async" / "run", step)
        assert [(r["episode_id"], r["turn"]) for r in a] == [(r["episode_id"], r["turn"]) for r in b]
        assert [r["reward"] for r in a] == [r["reward"] for r in b]
        assert a == b  # tokens, sampling log-probs, advantages, versions, staleness (0) included
    after_sync, after_async = _params(sync), _params(lazy)
    assert all(torch.equal(after_sync[k], after_async[k]) for k in after_sync)
    for ms, ma in zip(hist_sync, hist_async, strict=True):
        assert ms["policy/loss"] == ma["policy/loss"]
        assert ma["async/staleness_max"] == 0.0 and ma["async/overlap_s"] == 0.0
    assert "async/staleness_max" not in hist_sync[0]


def test_max_staleness_one_overlaps_and_records_staleness(tmp_path):
    trainer = _trainer(_async(tmp_path, 1))
    assert trainer.syncs, "the engine keeps its own weights (the learner trains a copy)"
    engine = trainer.backends["designer"].model
    assert engine is not trainer.learners["designer"].model
    before = _params(trainer)
    history = trainer.run()
    assert len(history) == 3
    run = tmp_path / "run"
    assert {r["staleness"] for r in _rows(run, 0)} == {0}
    for step in (1, 2):  # sampled with W_{step-1}, trained at W_step: one update behind
        rows = _rows(run, step)
        assert {r["staleness"] for r in rows} == {1}
        assert {r["policy_version"] for r in rows} == {step - 1}
        assert history[step]["async/staleness_mean"] == 1.0 and history[step]["async/staleness_max"] == 1.0
        assert history[step]["async/weights_step"] == step - 1
    for m in history:
        for key in ("async/rollout_wait_s", "async/weights_wait_s", "async/overlap_s", "async/publish_s"):
            assert m[key] >= 0.0
    # Step t's update ran while step t+1's rollout did.
    assert sum(m["async/overlap_s"] for m in history[:-1]) > 0.0
    # Stale samples: the learner corrects them (auto -> TIS: its sampler is not its own forward).
    assert trainer.learners["designer"].off_policy_correction() == "tis"
    assert history[1]["policy/off_policy/mismatch_abs"] > history[0]["policy/off_policy/mismatch_abs"]
    after = _params(trainer)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    # The engine was pushed W_2 before step 3's rollout would have started: it holds W_2, not W_3.
    assert any(not torch.equal(engine.state_dict()[k], after[k]) for k in after)


class _Crash(Exception):
    pass


def test_checkpoint_drains_and_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """k = 1, full checkpoints every step: killed after step 1's checkpoint (which holds step 2's
    rollout, sampled with W_1), the resumed run's step 2 is the uninterrupted run's."""
    full = _trainer(_async(tmp_path / "a", 1, lockstep=True, full_save_every=1))
    full.run()
    from mx_train.trainer import Trainer

    save = Trainer.save

    def save_then_crash(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        if self.step_index == 2:
            raise _Crash
        return path

    monkeypatch.setattr(Trainer, "save", save_then_crash)
    with pytest.raises(_Crash):
        _trainer(_async(tmp_path / "b", 1, lockstep=True, full_save_every=1)).run()
    monkeypatch.setattr(Trainer, "save", save)
    state = json.loads((tmp_path / "b" / "run" / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert [p["step"] for p in state["extra"]["async_pending"]] == [2]
    assert not (tmp_path / "b" / "run" / "transitions" / "step_00000002.jsonl").exists()
    with pytest.raises(ConfigError, match="rollout.async"):
        _trainer(_async(tmp_path / "b", None, full_save_every=1)).resume()
    resumed = _trainer(_async(tmp_path / "b", 1, lockstep=True, full_save_every=1))
    rest = resumed.run(resume=True)
    assert len(rest) == 1
    assert _rows(tmp_path / "a" / "run", 2) == _rows(tmp_path / "b" / "run", 2)
    pa, pb = _params(full), _params(resumed)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_ray_workers_sample_the_published_weights_while_the_learner_updates(tmp_path, tiny_model_dir, local_ray):
    """k = 1 with a Ray rollout worker (on conftest's shared local Ray instance): step s's rollout runs in
    the worker with W_{s-1} (pushed from a snapshot, checksummed there) while the driver trains step s-1."""
    from mx_train.trainer import Trainer

    cfg = TrainConfig.from_dict({
        "seed": 0, "max_steps": 3, "out": str(tmp_path / "run"), "tensorboard": False,
        "env": {"id": "MetaAgentX-Arithmetic-v0", "kwargs": {"loader_kwargs": {"level": 1, "n": 20}}},
        "policy": {"model": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
        "rollout": {"tasks_per_step": 2, "designs": 2, "executions": 1,
                    "designer": {"max_new_tokens": 8}, "executor": {"max_new_tokens": 8},
                    "designer_prompt": {"system_prompt": "Write a MAS script."},
                    "async": {"max_staleness": 1}},
        # An entropy bonus: the tiny model's designs all fail alike (zero advantages), and a skipped
        # update would leave the version, and so the staleness, unchanged.
        "learner": {"lr": 1e-3, "device": "cpu", "entropy_coef": 1e-3},
        "schedule": {"mode": "joint"},
        "distributed": {"backend": "ray", "num_rollout_workers": 1, "worker_cpus": 0.5},
    })
    trainer = Trainer(cfg, progress=False)
    history = trainer.run()
    assert len(history) == 3
    run = tmp_path / "run"
    assert [sorted({r["staleness"] for r in _rows(run, s)}) for s in range(3)] == [[0], [1], [1]]
    assert [sorted({r["policy_version"] for r in _rows(run, s)}) for s in range(3)] == [[0], [0], [1]]
    assert trainer.learners["designer"].version == 3
    assert [m["async/weights_step"] for m in history] == [0.0, 0.0, 1.0]
    assert history[2]["async/weights_load_s"] > 0.0  # W_1 pushed to the worker from its snapshot
