"""Continuous rollouts: one thread per episode, each LLM turn submitted when its env asks for it, the
backend batching whatever is pending; no episode waits for another's turn or env step."""

from __future__ import annotations

import time

import pytest
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


class CountdownEngine:
    """TEST DOUBLE of a step engine: item ``n`` finishes after ``n`` steps; records what each step ran."""

    def __init__(self, step_s: float = 0.002) -> None:
        self.left: dict[int, int] = {}
        self.step_s = step_s
        self.log: list[tuple[str, tuple[int, ...]]] = []

    def add(self, key, item):
        self.left[key] = item

    def step(self):
        time.sleep(self.step_s)
        self.log.append(("step", tuple(sorted(self.left))))
        for k in self.left:
            self.left[k] -= 1
        done = [(k, f"done{k}") for k, n in self.left.items() if n <= 0]
        for k, _ in done:
            del self.left[k]
        return done

    def abort(self, keys):
        for k in keys:
            self.left.pop(k, None)


def test_step_batcher_exclusive_lets_running_requests_finish_and_admits_none_meanwhile():
    """A weight update (exclusive) waits for the running request and holds back a new one, so no
    request runs across the update; the held-back one starts after it."""
    import threading

    from mx_agents.continuous import StepBatcher

    engine = CountdownEngine()
    batcher = StepBatcher(engine)
    results = {}
    first = threading.Thread(target=lambda: results.update(a=batcher.submit([40])))
    first.start()
    while not engine.log:
        time.sleep(0.001)
    second = []

    def late():
        time.sleep(0.01)  # arrives while exclusive() is draining
        second.append(batcher.submit([3]))

    t = threading.Thread(target=late)
    t.start()
    with batcher.exclusive():
        engine.log.append(("exclusive", ()))
        assert not engine.left  # the running request is done, the late one not admitted
        time.sleep(0.03)  # the late request does not start while the engine is held
        assert engine.log[-1] == ("exclusive", ())
    first.join()
    t.join()
    at = engine.log.index(("exclusive", ()))
    assert all(keys == (0,) for _, keys in engine.log[:at])  # the late request (key 1) never ran before
    assert any(1 in keys for _, keys in engine.log[at + 1 :]) and second == [["done1"]]
    assert batcher.stats.width_hist == {1: len(engine.log) - 1}


def test_batch_metrics_diff_snapshots_into_a_width_histogram_and_hit_rate():
    from mx_agents.continuous import BatchStats, batch_metrics

    stats = BatchStats()
    for w in (1, 1, 3):
        stats.record_step(w)
    stats.record_prompt(100, 0)
    before = stats.snapshot()
    for w in (1, 2, 3, 4, 5, 8, 9):
        stats.record_step(w)
    stats.record_prompt(200, 150)
    m = batch_metrics(stats, before)
    assert m["rollout/decode_steps"] == 7 and m["rollout/batch_width_mean"] == pytest.approx(32 / 7)
    assert m["rollout/batch_width_max"] == 9 and m["rollout/single_row_steps"] == pytest.approx(1 / 7)
    hist = {k.rsplit("_", 1)[1]: v for k, v in m.items() if "hist" in k}
    assert hist == {"1": 1, "2": 1, "3-4": 2, "5-8": 2, "9-16": 1}
    assert m["rollout/prefix_hit_rate"] == pytest.approx(0.75) and m["rollout/prompt_tokens"] == 200
    assert "rollout/engine_s" not in m  # the engine did not work between the snapshots
    stats.engine_s += 1.5
    assert batch_metrics(stats, before)["rollout/engine_s"] == pytest.approx(1.5)
    assert batch_metrics(BatchStats()) == {}


def test_step_batcher_counts_the_seconds_its_engine_works_not_the_seconds_callers_wait():
    import threading

    from mx_agents.continuous import StepBatcher

    engine = CountdownEngine(step_s=0.01)
    batcher = StepBatcher(engine)
    batcher.submit([5])
    worked = batcher.stats.engine_s
    assert 0.05 <= worked < 0.5  # five steps of 10 ms
    idle = threading.Event()
    t = threading.Thread(target=lambda: (idle.wait(0.2), batcher.submit([2])))
    t.start()
    t.join()
    # the 0.2 s the second caller spent before submitting is not engine time
    assert 0.02 <= batcher.stats.engine_s - worked < 0.15
