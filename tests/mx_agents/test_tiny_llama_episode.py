"""End to end through the real HF backend with the tiny random Llama (fast: a few new tokens)."""

from __future__ import annotations

import pytest

from mx_agents.backends.base import SamplingParams
from mx_agents.backends.hf import HFBackend
from mx_agents.policies import ExecutorPolicy, FixedDesignPolicy, SharedPolicy
from mx_agents.rollout import run_episodes
from mx_agents.testing import tiny_llama
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.tasks.record import Task

TASKS = [Task(id=f"t{i}", dataset="toy", split="test", kind="math", prompt=f"What is {i} + 1?", answer=str(i + 1))
         for i in range(3)]


@pytest.fixture(scope="module")
def backend():
    model, tok = tiny_llama(seed=0, max_position_embeddings=8192)
    return HFBackend(model, tokenizer=tok, device="cpu", dtype="float32", seed=0)


@pytest.mark.slow
def test_tiny_llama_fixed_design_episodes_record_rescorable_tokens(backend):
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    policy = FixedDesignPolicy("vote", ExecutorPolicy(backend, params, seed=0))
    envs = [MetaAgentXEnv(tasks=TASKS) for _ in range(3)]
    recs = run_episodes(envs, policy, options=[{"task_id": t.id} for t in TASKS], progress=False)
    for rec in recs:
        assert rec.done and not rec.error and rec.design_valid
        assert rec.termination_reason == "completed" and rec.llm_calls >= 3
        trs = rec.transitions()
        assert trs and all(tr.role == "executor" for tr in trs)
        for tr in trs:
            assert 0 < len(tr.response_ids) <= 6 and len(tr.logprobs) == len(tr.response_ids)
            assert tr.prompt_ids == backend.encode_chat(tr.messages)
            # The vote design samples its solvers at temperature 0.8: the logprobs are at that temperature.
            rescored = backend.score(tr.prompt_ids, tr.response_ids, temperature=tr.metadata["temperature"])
            assert max(abs(a - b) for a, b in zip(rescored, tr.logprobs, strict=True)) < 1e-3
    for env in envs:
        env.close()


@pytest.mark.slow
def test_tiny_llama_shared_policy_designs_and_fails_cleanly(backend):
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    policy = SharedPolicy(backend, designer_params=params, executor_params=params, seed=0)
    recs = run_episodes([lambda: MetaAgentXEnv(tasks=TASKS, designer_examples=())] * 2, policy, seeds=0,
                        progress=False)
    for rec in recs:
        # Random weights write no script: a clean failed-design episode with one designer transition.
        assert rec.done and rec.design_valid is False and rec.termination_reason in ("no_code", "syntax_error",
                                                                                   "missing_entry")
        (tr,) = rec.transitions()
        assert tr.role == "designer" and 0 < len(tr.response_ids) <= 8 and tr.reward == 0.0
