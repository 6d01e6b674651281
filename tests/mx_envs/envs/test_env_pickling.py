"""Pickling a MetaAgentXEnv: before reset, in the design phase and after an episode it round-trips
and the copy plays on; mid-execution (a live sandbox script) it is a clear TypeError."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import pytest

import mx_envs  # noqa: F401  (registers the ids)
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.tasks import load_tasks

TASKS = list(load_tasks("arithmetic", limit=3))
DESIGN = "```python\ndef forward(task):\n    return Agent('solver')(task)\n```"


def _answer(env: MetaAgentXEnv) -> str:
    return f"\\boxed{{{env.unwrapped.task.answer}}}"


def _finish(env) -> tuple[float, dict]:
    obs, reward, term, _, info = env.step(DESIGN)
    assert not term and obs["agent"] == "solver"
    _, reward, term, _, info = env.step(_answer(env))
    assert term
    return reward, info


def test_pickles_between_turns_and_the_copy_plays_on() -> None:
    env = MetaAgentXEnv(tasks=TASKS)
    copies = []
    try:
        copies.append(pickle.loads(pickle.dumps(env)))  # before reset
        obs, info = env.reset(seed=3)
        design_copy = pickle.loads(pickle.dumps(env))  # design phase
        copies.append(design_copy)
        assert design_copy.phase == "design" and design_copy.task == env.task
        reward, info = _finish(env)
        assert reward == 1.0 and info["correct"]
        done_copy = copy.deepcopy(env)  # after the episode (the env has a live session object now)
        copies.append(done_copy)
        assert done_copy.phase == "done" and done_copy.outcome == env.outcome
        # The design-phase copy continues the same episode in its own session.
        reward2, info2 = _finish(design_copy)
        assert reward2 == 1.0 and info2["task_id"] == info["task_id"]
        done_copy.reset(seed=0)
        assert _finish(done_copy)[0] == 1.0
        wrapped = gym.make("MetaAgentX-Arithmetic-v0", limit=3)
        wrapped.reset(seed=0)
        assert pickle.loads(pickle.dumps(wrapped)).unwrapped.task == wrapped.unwrapped.task
        wrapped.close()
    finally:
        for e in [env, *copies]:
            e.close()


def test_mid_execution_pickling_is_a_clear_error() -> None:
    env = MetaAgentXEnv(tasks=TASKS)
    try:
        env.reset(seed=0)
        env.step(DESIGN)
        assert env.phase == "execute"
        with pytest.raises(TypeError, match=r"cannot be pickled mid-execution.*sub-agent 'solver'"):
            pickle.dumps(env)
        _, reward, term, _, _ = env.step(_answer(env))  # the failed pickle did not disturb the episode
        assert term and reward == 1.0
    finally:
        env.close()
