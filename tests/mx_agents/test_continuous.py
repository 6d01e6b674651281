"""Continuous rollouts: one thread per episode, each LLM turn submitted when its env asks for it, the
backend batching whatever is pending; no episode waits for another's turn or env step."""

from __future__ import annotations

import time

from agents_doubles import CountingBackend
from test_rollout import MATH, math_env, solve

from mx_agents.continuous import DynamicBatcher
from mx_agents.policies import FixedDesignPolicy, SharedPolicy
from mx_agents.rollout import RolloutStats, run_episodes


class BatchingCounting(CountingBackend):
    """TEST DOUBLE: :class:`CountingBackend` behind the real :class:`DynamicBatcher`, with a fixed
    generation time per call (so that concurrent episodes really overlap)."""

    def __init__(self, delay_s: float = 0.05) -> None:
        super().__init__(solve)
        self.delay_s = delay_s
        self._batcher = DynamicBatcher(self._run)

    def _run(self, requests):
        time.sleep(self.delay_s)
        return CountingBackend.generate(self, requests)

    def generate(self, requests):
        return self._batcher.submit(requests)


class SlowEnv:
    """Wraps an env: every step of this env takes ``delay_s`` longer; records when it finished."""

    def __init__(self, env, delay_s: float) -> None:
        self.env, self.delay_s, self.finished_at = env, delay_s, None

    def reset(self, **kw):
        return self.env.reset(**kw)

    def step(self, action):
        time.sleep(self.delay_s)
        out = self.env.step(action)
        if out[2] or out[3]:
            self.finished_at = time.perf_counter()
        return out

    def close(self):
        self.env.close()


def _run(schedule: str, delays: list[float]):
    backend = BatchingCounting()
    envs = [SlowEnv(math_env(), d) for d in delays]
    t0 = time.perf_counter()
    stats = RolloutStats()
    records = run_episodes(envs, SharedPolicy(backend, seed=0), options=[{"task_id": t.id} for t in MATH],
                           progress=False, stats=stats, schedule=schedule, close=True)
    return records, [e.finished_at - t0 for e in envs], backend, stats


def test_continuous_batches_across_episodes_and_never_waits_for_a_slow_one():
    delays = [1.0, 0.0, 0.0, 0.0]  # env 0's sandbox is slow on every step
    lock, lock_done, _, _ = _run("lockstep", delays)
    cont, cont_done, backend, stats = _run("continuous", delays)
    assert [r.reward for r in cont] == [r.reward for r in lock] == [1.0] * 4
    turns = sum(len(r.turns) for r in cont)
    assert sum(backend.calls) == stats.act_calls == turns - 0  # every turn asked the backend once
    assert max(backend.calls) > 1  # concurrent episodes shared backend calls
    # Lock-step: the fast episodes finish with the slow one (every round waits for its step);
    # continuous: they finish before the slow episode's second step.
    assert max(cont_done[1:]) < min(lock_done[1:])
    assert max(cont_done[1:]) < cont_done[0]


def test_continuous_rollout_samples_reproducibly_with_a_real_backend():
    from mx_agents.backends.base import SamplingParams
    from mx_agents.backends.hf import HFBackend
    from mx_agents.policies.llm import ExecutorPolicy
    from mx_agents.testing import tiny_llama

    def play():
        model, tok = tiny_llama(seed=0)
        backend = HFBackend(model, tok, device="cpu", dtype="float32")
        policy = FixedDesignPolicy("single", ExecutorPolicy(backend, SamplingParams(max_new_tokens=8), seed=3))
        recs = run_episodes([math_env() for _ in range(3)], policy, seeds=0, progress=False,
                            options=[{"task_id": t.id} for t in MATH[:3]], schedule="continuous", close=True)
        return [[t.response_ids for t in r.turns if t.from_llm] for r in recs]

    first, second = play(), play()
    assert first == second and any(ids for ep in first for ids in ep)
    assert first[0] != first[1]  # episodes got different seeds
