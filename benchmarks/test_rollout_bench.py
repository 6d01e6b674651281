"""Rollout throughput: episodes/s with every pending LLM turn batched across envs, versus the same
episodes run one after another (one request per backend call), in the same run.

The workload: K arithmetic tasks played with the library ``vote`` design (3 voters + the vote), the
executor a real HF backend. ``tiny``: the in-process random Llama (measures the rollout machinery and
batching with little model time); ``smollm2``: the embedded SmolLM2-135M-Instruct on CPU with a small
token budget (skipped when the embedded model is not installed). Each case reports episodes/s, turns
and backend calls in ``extra_info``.
"""

from __future__ import annotations

import itertools

import pytest

from mx_agents.backends.base import SamplingParams
from mx_agents.policies import ExecutorPolicy, FixedDesignPolicy
from mx_agents.rollout import RolloutStats, run_episodes

N_ENVS = 8
CASES = {"tiny": 16, "smollm2": 12}  # max new tokens per executor turn


class CallCounter:
    """Wraps a real backend to count its ``generate`` calls (no behaviour change)."""

    def __init__(self, backend):
        self.backend, self.name, self.calls = backend, backend.name, []

    def generate(self, requests):
        self.calls.append(len(requests))
        return self.backend.generate(requests)

    def load_weights(self, state_dict):
        self.backend.load_weights(state_dict)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    from mx_agents.backends.hf import HFBackend

    if request.param == "tiny":
        from mx_agents.testing import tiny_llama

        model, tok = tiny_llama(seed=0, max_position_embeddings=4096)
        backend = HFBackend(model, tokenizer=tok, device="cpu", dtype="float32", max_batch_size=32)
    else:
        from mx_agents.backends.embedded import EmbeddedModelUnavailable

        try:
            backend = HFBackend("default", device="cpu", max_batch_size=32)
        except EmbeddedModelUnavailable as exc:
            pytest.skip(f"embedded SmolLM2 not installed: {exc}")
    return request.param, backend


@pytest.fixture(scope="module")
def envs():
    from mx_envs.envs.meta_env import MetaAgentXEnv
    from mx_envs.mas.session import PRELOAD
    from mx_envs.sandbox import get_sandbox
    from mx_envs.tasks.arithmetic import generate

    tasks = list(itertools.islice(generate(level=2, split="test", seed=0), N_ENVS))
    # One live script per env: the sandbox pool must hold all N_ENVS at once (default pool: 4).
    sandbox = get_sandbox("process", extra_preload=PRELOAD, pool_size=N_ENVS)
    made = [MetaAgentXEnv(tasks=tasks, sandbox=sandbox) for _ in range(N_ENVS)]
    yield made, tasks
    for env in made:
        env.close()


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_rollout_throughput(benchmark, case, envs, mode):
    name, backend = case
    env_list, tasks = envs
    counter = CallCounter(backend)
    params = SamplingParams(temperature=1.0, max_new_tokens=CASES[name])
    policy = FixedDesignPolicy("vote", ExecutorPolicy(counter, params, seed=0))
    stats = RolloutStats()

    def run():
        return run_episodes(env_list, policy, seeds=0, options=[{"task_id": t.id} for t in tasks],
                            progress=False, batch=mode == "batched", stats=stats)

    benchmark.group = f"rollout-{name}"
    benchmark.extra_info["naive"] = mode == "sequential"  # mx bench pairing (benchmarks/README.md)
    records = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert all(r.done and not r.error for r in records)
    rounds = benchmark.stats.stats.rounds
    benchmark.extra_info.update({
        "envs": N_ENVS,
        "episodes_per_s": round(N_ENVS / benchmark.stats.stats.mean, 3),
        "llm_turns_per_run": stats.turns // rounds,
        "backend_calls_per_run": len(counter.calls) // rounds,
        "max_batch": max(counter.calls),
        "max_new_tokens": CASES[name],
    })


# ---------------------------------------------------------------------------------------------------
# Continuous vs lock-step on a design mix with uneven turn counts and lengths (issue 12).

MIX = ["single", "vote", "reflection", "single", "vote", "reflection"]  # 1, 4 and 2-4 LLM turns
MIX_TOKENS = 24


def _mix_backend(kind: str):
    if kind == "hf":
        from mx_agents.backends.embedded import EmbeddedModelUnavailable
        from mx_agents.backends.hf import HFBackend

        try:
            return HFBackend("default", device="cpu", dtype="float32", max_batch_size=32)
        except EmbeddedModelUnavailable as exc:
            pytest.skip(f"embedded SmolLM2 not installed: {exc}")
    from mx_agents.backends.vllm_backend import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from mx_agents.backends import get_backend

    return get_backend("vllm:default")


@pytest.mark.parametrize("kind", ["hf", "vllm"])
@pytest.mark.parametrize("schedule", ["lockstep", "continuous"])
def test_design_mix_continuous_vs_lockstep(benchmark, kind, schedule):
    """Episodes/s of the same design mix (designs given, executor sampled at T=1 with per-turn seeds):
    lock-step rounds (every round waits for its slowest turn and env step) vs continuous (each episode
    submits its next turn when its sandbox asks). Lock-step is the naive baseline."""
    from mx_agents.policies.fixed import fence
    from mx_envs.envs.meta_env import MetaAgentXEnv
    from mx_envs.mas.designs import load_design
    from mx_envs.mas.session import PRELOAD
    from mx_envs.sandbox import get_sandbox
    from mx_envs.tasks.arithmetic import generate

    backend = _mix_backend(kind)
    tasks = list(itertools.islice(generate(level=2, split="test", seed=1), len(MIX)))
    sandbox = get_sandbox("process", extra_preload=PRELOAD, pool_size=len(MIX))
    envs = [MetaAgentXEnv(tasks=tasks, sandbox=sandbox) for _ in MIX]
    policy = ExecutorPolicy(backend, SamplingParams(temperature=1.0, max_new_tokens=MIX_TOKENS), seed=0)
    stats = RolloutStats()

    def run():
        return run_episodes(envs, policy, seeds=0, options=[{"task_id": t.id} for t in tasks],
                            designs=[fence(load_design(d)) for d in MIX], progress=False, stats=stats,
                            schedule=schedule, run_id="bench")

    benchmark.group = f"rollout-mix-{kind}"
    benchmark.extra_info["naive"] = schedule == "lockstep"
    try:
        records = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        for env in envs:
            env.close()
    assert all(r.done for r in records)
    benchmark.extra_info.update({
        "episodes": len(MIX), "designs": ",".join(MIX),
        "episodes_per_s": round(len(MIX) / benchmark.stats.stats.mean, 4),
        "llm_turns": stats.turns, "lockstep_rounds": stats.rounds,
        "max_new_tokens": MIX_TOKENS,
    })
