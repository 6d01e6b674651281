"""Env overhead per episode: MetaAgentXEnv vs driving the MAS session and the grader by hand.

Design: a 3-agent ensemble (three solvers, majority vote): 3 LLM turns per episode. The LLM is an
instant scripted test double (a constant reply), so what is timed is the machinery: the sandboxed
script, the host protocol, grading, and (for the env) observations, trajectories and info.

- ``test_session_episode`` (naive baseline): ``MASSession.start`` / ``reply`` and ``grade`` directly;
- ``test_env_episode``: ``env.reset`` + ``env.step`` for the design and each turn (same work through the
  gymnasium API); ``extra_info`` has episodes/s, the env's overhead per LLM turn in ms as the
  difference of means (``(env mean - session mean) / 3``, noisy: it is small next to the sandbox
  time) and measured directly (``env_own_ms_per_llm_turn``: episode time outside the session and the
  grader, from ``env.timings``, per turn);
- ``test_designer_only_episode``: the same episode through the ``DesignerOnly`` wrapper (one step).
"""

from __future__ import annotations

import pytest

from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.mas.protocol import Finished
from mx_envs.mas.session import MASSession, default_mas_sandbox
from mx_envs.tasks import grade
from mx_envs.tasks.record import Task
from mx_envs.wrappers import DesignerOnly

ENSEMBLE3 = (
    "```python\ndef forward(task):\n"
    "    solvers = [Agent(f'solver{i}', system='Solve; end with \\\\boxed{}.') for i in range(3)]\n"
    "    return final_answer(ensemble(solvers, task, aggregate='vote'))\n```"
)
REPLY = "Adding them: \\boxed{42}"
TASK = Task("bench-0", "bench", "test", "math", "What is 12 + 30?", "42")
TURNS = 3
MEANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def sandbox():
    sb = default_mas_sandbox()
    sb.warm_up()
    return sb


@pytest.fixture(scope="module")
def rounds(bench_quick) -> int:
    return 10 if bench_quick else 30


def _record(benchmark, name: str) -> None:
    mean = benchmark.stats.stats.mean
    MEANS[name] = mean
    benchmark.extra_info["episodes_per_s"] = round(1.0 / mean, 2)
    benchmark.extra_info["llm_turns_per_episode"] = TURNS
    if "session" in MEANS and name != "session":
        benchmark.extra_info["overhead_per_llm_turn_ms"] = round((mean - MEANS["session"]) / TURNS * 1000, 3)


def test_session_episode(benchmark, sandbox, rounds) -> None:
    session = MASSession(sandbox=sandbox)

    def episode() -> None:
        out = session.start(ENSEMBLE3, TASK.prompt)
        while not isinstance(out, Finished):
            out = session.reply(REPLY)
        assert grade(TASK, out.answer_text or "").correct

    benchmark.pedantic(episode, rounds=rounds, iterations=1, warmup_rounds=2)
    benchmark.extra_info["naive"] = True
    _record(benchmark, "session")
    session.close()


def test_env_episode(benchmark, sandbox, rounds) -> None:
    env = MetaAgentXEnv(tasks=[TASK], sandbox=sandbox)
    own: list[float] = []

    def episode() -> None:
        env.reset(seed=0)
        _, reward, term, _, _ = env.step(ENSEMBLE3)
        while not term:
            _, reward, term, _, _ = env.step(REPLY)
        assert reward == 1.0
        t = env.timings
        own.append(t["episode_s"] - t["script_s"] - t["grade_s"])

    benchmark.pedantic(episode, rounds=rounds, iterations=1, warmup_rounds=2)
    benchmark.extra_info["baseline"] = "test_session_episode"
    benchmark.extra_info["env_own_ms_per_llm_turn"] = round(sum(own) / len(own) / TURNS * 1000, 4)
    _record(benchmark, "env")
    env.close()


def test_designer_only_episode(benchmark, sandbox, rounds) -> None:
    env = DesignerOnly(MetaAgentXEnv(tasks=[TASK], sandbox=sandbox), lambda messages: REPLY)

    def episode() -> None:
        env.reset(seed=0)
        _, reward, term, _, _ = env.step(ENSEMBLE3)
        assert term and reward == 1.0

    benchmark.pedantic(episode, rounds=rounds, iterations=1, warmup_rounds=2)
    benchmark.extra_info["baseline"] = "test_session_episode"
    _record(benchmark, "designer_only")
    env.close()
