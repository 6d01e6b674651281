"""Learner -> engine weight sync on the real engine: after an update the engine's log-probs follow the
learner's new weights (back to the bf16-vs-fp32 floor), streamed in bounded buckets; a stale engine
fails. Then one trainer step with the engine as rollout backend logs the consistency metrics."""

from __future__ import annotations

import pytest

from mx_agents.backends.base import ChatRequest, SamplingParams

PROMPTS = [[{"role": "user", "content": "What is 12 + 30?"}], [{"role": "user", "content": "Say hello."}]]
BUCKET = 32 << 20


@pytest.fixture(scope="module")
def learner_model():
    import torch

    from mx_agents.backends.embedded import resolve_model
    from mx_agents.backends.hf import load_hf_model

    return load_hf_model(resolve_model("default"), "cpu", torch.float32)


class _Learner:
    """What EngineSync needs of a learner: the trained model and its weights for the push."""

    def __init__(self, model):
        self.model = model

    def weights_for_sync(self):
        return dict(self.model.state_dict())


def test_engine_follows_learner_after_sync_and_stale_engine_is_caught(engine, learner_model):
    import torch

    from mx_train.weight_sync import EngineSync

    comps = engine.generate([ChatRequest(m, SamplingParams(temperature=0.0, max_new_tokens=16)) for m in PROMPTS])
    sync = EngineSync(_Learner(learner_model), engine, probe=4, bucket_bytes=BUCKET)

    class T:  # transitions as the trainer has them
        def __init__(self, c):
            self.prompt_ids, self.response_ids, self.logprobs = c.prompt_ids, c.response_ids, c.logprobs
            self.metadata = {"temperature": 0.0}

    transitions = [T(c) for c in comps]
    floor = sync.rollout_metrics(transitions)  # same weights: numerical floor (bf16 engine, fp32 learner)
    assert floor["rollout/logprob_diff_mean"] < 0.1
    original = {k: v.clone() for k, v in learner_model.state_dict().items()}
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # "an update": every weight moves
            for p in learner_model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        version = engine.weights_version
        m = sync.push()
        assert engine.weights_version == version + 1
        # The reload re-dispatched vLLM's CPU GEMMs; the torch-fallback bf16 ones were wrapped again
        # (computed in fp32 from enough rows on): none is left on the slow native path.
        assert engine._upcast_linears() == 0
        stale, synced = m["rollout/logprob_diff_stale_mean"], m["rollout/logprob_diff_synced_mean"]
        assert stale > 5 * max(floor["rollout/logprob_diff_mean"], 0.02)  # the engine had old weights
        assert synced < 0.1 and synced < stale / 5  # and now serves the new ones
        assert m["rollout/weight_sync_buckets"] > 1 and m["rollout/weight_sync_max_bucket_mb"] * 2**20 <= max(
            BUCKET, max(t.numel() * t.element_size() for t in learner_model.state_dict().values()))
        # The generation path too (not just scoring): sampling logprobs follow the new weights.
        after = engine.generate([ChatRequest(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=8))])[0]
        assert after.metadata["weights_version"] == engine.weights_version
        fresh = sync.rollout_metrics([T(after)])
        assert fresh["rollout/logprob_diff_mean"] < 0.1
    finally:
        with torch.no_grad():
            learner_model.load_state_dict(original)
        engine.load_weights(original, bucket_bytes=BUCKET)


def test_trainer_step_with_vllm_rollout_engine(engine, tmp_path):
    from mx_train.config import TrainConfig
    from mx_train.trainer import Trainer

    cfg = TrainConfig.from_dict({
        "seed": 0, "max_steps": 1, "out": str(tmp_path / "run"), "tensorboard": False,
        "env": {"id": "MetaAgentX-Arithmetic-v0", "kwargs": {"budgets": {"max_llm_calls": 2, "wall_s": 20}}},
        "policy": {"model": "vllm:default", "device": "cpu"},
        # A one-line designer prompt (as the smoke config's): the default one with the API reference is
        # ~1.8k tokens, and each push scores the probe through the bf16 engine twice (stale, synced),
        # whose CPU matmuls without avx512_bf16 run at a few GFLOP/s: 5+ minutes of this test's 6.
        "rollout": {"tasks_per_step": 1, "designs": 2, "executions": 1, "logprob_probe": 4,
                    "designer_prompt": {"system_prompt": "Write a MAS script."},
                    "designer": {"temperature": 1.0, "max_new_tokens": 48},
                    "executor": {"temperature": 0.8, "max_new_tokens": 16}},
        "learner": {"lr": 1e-5, "micro_batch_tokens": 4096, "device": "cpu"},
        "schedule": {"mode": "joint"},
    })
    import torch

    trainer = Trainer(cfg, backend_factory=lambda spec: engine, progress=False)
    learner, original = trainer.learners["designer"], None
    try:
        metrics = trainer.step()
        assert metrics["rollout/logprob_diff_mean"] < 0.1  # sampled by the engine, scored by the learner
        assert metrics["rollout/logprob_diff_tokens"] > 0
        # The push the trainer wired into its learner (the update itself may be skipped when all
        # advantages are 0, as with this untrained model): move the learner, push, measure.
        sync = trainer.syncs["designer"]
        assert learner.model is not getattr(engine, "model", None)  # the learner trains its own copy
        original = {k: v.clone() for k, v in learner.model.state_dict().items()}
        with torch.no_grad():
            for p in learner.model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        before = engine.weights_version
        learner.on_weights_updated(learner.weights_for_sync())
        pushed = sync.pop_metrics()
        assert engine.weights_version == before + 1
        assert pushed["rollout/logprob_diff_stale_mean"] > 5 * pushed["rollout/logprob_diff_synced_mean"]
        assert pushed["rollout/logprob_diff_synced_mean"] < 0.1
    finally:
        trainer.close()
        if original is not None:
            with torch.no_grad():
                learner.model.load_state_dict(original)
            engine.load_weights(original)
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "transitions" / "step_00000000.jsonl").open()]
    assert rows and all(r["policy_version"] == 0 and r["metadata"]["engine_weights_version"] is not None
                        for r in rows)
