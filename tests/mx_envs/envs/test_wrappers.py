"""DesignerOnly, ExecutorOnly, DesignChoice; gymnasium/SB3 checkers; make_vec sync and async."""

from __future__ import annotations

import functools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from env_tasks import math_tasks
from gymnasium.utils.env_checker import check_env

import mx_envs  # noqa: F401  (registers the ids)
from mx_envs.envs.embedding import HashingEmbedder
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.envs.observation import EXECUTOR, decode_messages
from mx_envs.mas.designs import load_design
from mx_envs.tasks import load_tasks
from mx_envs.testing import OracleLLM, correct_reply
from mx_envs.wrappers import DesignChoice, DesignerOnly, ExecutorOnly, play_executor, resolve_design

TASKS = math_tasks()
ARITH = list(load_tasks("arithmetic", limit=20))  # the tasks of gym.make("MetaAgentX-Arithmetic-v0", limit=20)
ORACLE = OracleLLM(TASKS + ARITH)


def oracle_executor(messages):
    """Module-level (picklable) executor: always the correct answer."""
    return ORACLE(messages)


def test_resolve_design() -> None:
    assert resolve_design("vote") == load_design("vote") == resolve_design("design:vote")
    script = "```python\ndef forward(task):\n    return '1'\n```"
    assert resolve_design(script) == script
    with pytest.raises(ValueError, match="unknown library design"):
        resolve_design("design:nope")
    with pytest.raises(TypeError):
        resolve_design(3)  # type: ignore[arg-type]


def test_designer_only_is_one_step() -> None:
    env = DesignerOnly(MetaAgentXEnv(tasks=TASKS), oracle_executor)
    try:
        obs, info = env.reset(seed=0)
        obs, reward, term, trunc, info = env.step(load_design("debate"))
        assert term and reward == 1.0 and info["correct"]
        assert info["executor_turns"] == info["llm_calls"] > 3
        env.reset(seed=1)
        _, reward, term, _, info = env.step("no code")
        assert term and info["termination_reason"] == "no_code" and info["executor_turns"] == 0
        with pytest.raises(TypeError):
            DesignerOnly(MetaAgentXEnv(tasks=TASKS), executor="not callable")  # type: ignore[arg-type]
    finally:
        env.close()


def test_executor_only_runs_a_fixed_design() -> None:
    env = ExecutorOnly(MetaAgentXEnv(tasks=TASKS, llm_call_penalty=0.1), "reflection")
    try:
        obs, info = env.reset(seed=0, options={"task_id": "m1"})
        assert int(obs["actor"]) == EXECUTOR and obs["agent"] == "solver"
        total, steps, term = 0.0, 0, False
        while not term:
            reply = "APPROVED" if obs["agent"] == "critic" else correct_reply(TASKS[1])
            obs, reward, term, trunc, info = env.step(reply)
            total += reward
            steps += 1
        assert info["correct"] and steps == info["llm_calls"] == 2
        assert total == pytest.approx(1.0 - 0.1 * 2)
    finally:
        env.close()
    bad = ExecutorOnly(MetaAgentXEnv(tasks=TASKS), "```python\ndef forward(task):\n    return '\\\\boxed{1}'\n```")
    with pytest.raises(ValueError, match="before any LLM request"):
        bad.reset(seed=0)
    bad.close()


def _design_choice(env: gym.Env) -> DesignChoice:
    return DesignChoice(env, ["single", "vote"], oracle_executor, embedder=HashingEmbedder(32))


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_design_choice_passes_both_checkers() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _design_choice(gym.make("MetaAgentX-Arithmetic-v0", limit=20))
    try:
        assert env.action_space == gym.spaces.Discrete(2)
        assert env.observation_space.shape == (32,) and env.observation_space.dtype == np.float32
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sb3_check_env(env, warn=True)
        assert not [str(w.message) for w in caught if "stable_baselines3" in str(w.filename)]
        check_env(env, skip_close_check=True)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        obs2, reward, term, trunc, info = env.step(np.int64(1))
        assert term and reward == 1.0 and info["design_name"] == "vote" and info["design_index"] == 1
        assert np.array_equal(obs, obs2)
        with pytest.raises(gym.error.ResetNeeded):
            env.step(0)
        env.reset(seed=0)
        with pytest.raises(ValueError, match="design index"):
            env.step(5)
    finally:
        env.close()


def test_async_shared_memory_error_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="shared_memory=False"):
        gym.make_vec("MetaAgentX-Arithmetic-v0", num_envs=2, vectorization_mode="async", limit=5)


def test_base_env_passes_check_env_when_wrapped_by_make() -> None:
    env = gym.make("MetaAgentX-Arithmetic-v0", limit=10)
    try:
        assert isinstance(env.unwrapped, MetaAgentXEnv) and len(env.unwrapped.tasks) == 10
        check_env(env.unwrapped)  # raises on any API violation
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and info["task_id"].startswith("arithmetic/")
        _, reward, term, _, info = play_executor(env, env.step(load_design("single")), oracle_executor)
        assert term and reward == 1.0 and info["correct"] and info["executor_turns"] == 1
    finally:
        env.close()


OPTION_DESIGN = (
    "```python\ndef forward(task):\n"
    "    a = Agent('solver', max_tokens=7, temperature=0.3)\n"
    "    b = Agent('checker')\n"
    "    b(task)\n"
    "    return a(task)\n```"
)


def test_design_choice_passes_per_agent_options_to_the_executor() -> None:
    """The script's per-agent options (max_tokens, temperature) reach an executor that takes them."""
    seen: list[tuple[str, dict]] = []

    def executor(messages, options, agent):
        seen.append((agent, options))
        return ORACLE(messages)

    env = DesignChoice(gym.make("MetaAgentX-Arithmetic-v0", limit=20), ["single", OPTION_DESIGN], executor,
                       embedder=HashingEmbedder(16))
    try:
        env.reset(seed=0)
        _, reward, term, _, info = env.step(1)
        assert term and reward == 1.0 and info["design_name"] == "custom"
        assert seen == [("checker", {}), ("solver", {"max_tokens": 7, "temperature": 0.3})]
    finally:
        env.close()
    positional: list[dict] = []
    env = DesignerOnly(MetaAgentXEnv(tasks=ARITH), lambda m, o: positional.append(o) or ORACLE(m))
    try:
        env.reset(seed=0)
        assert env.step(OPTION_DESIGN)[1] == 1.0
        assert positional == [{}, {"max_tokens": 7, "temperature": 0.3}]
    finally:
        env.close()


def test_make_executor_turns_a_policy_spec_into_an_executor() -> None:
    from mx_agents.policies import make_executor
    from mx_agents.policies.scripted import SCRIPTED_MATH_REPLY
    from mx_envs.errors import ConfigError

    ex = make_executor("scripted")
    assert ex([{"role": "user", "content": "What is 2 + 2?"}], {"max_tokens": 5}, "solver") == SCRIPTED_MATH_REPLY
    env = DesignerOnly(MetaAgentXEnv(tasks=ARITH[:3]), ex)
    try:
        env.reset(seed=0)
        _, _, term, _, info = env.step(load_design("vote"))
        assert term and info["termination_reason"] == "completed" and info["executor_turns"] == info["llm_calls"] >= 3
    finally:
        env.close()
    with pytest.raises(ConfigError, match="is a designer"):
        make_executor("design:vote")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_base_env(mode: str) -> None:
    vector_kwargs = {"shared_memory": False} if mode == "async" else {}
    venv = gym.make_vec(
        "MetaAgentX-Arithmetic-v0", num_envs=2, vectorization_mode=mode, vector_kwargs=vector_kwargs, limit=10
    )
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert list(obs["agent"]) == ["designer", "designer"]
        assert all(decode_messages({"messages": m})[1]["role"] == "user" for m in obs["messages"])
        design = "```python\ndef forward(task):\n    return Agent('s#🙂')(task)\n```"
        obs, reward, term, trunc, info = venv.step((design, "no code at all"))
        assert list(obs["actor"]) == [EXECUTOR, 0]
        assert obs["agent"][0].startswith("s")
        assert list(term) == [False, True] and info["termination_reason"][1] == "no_code"
        obs, reward, term, trunc, info = venv.step(("\\boxed{ünïcode ∑}", "ignored: autoreset"))
        assert term[0] and not info["correct"][0]
    finally:
        venv.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec_wrappers(mode: str) -> None:
    venv = gym.make_vec(
        "MetaAgentX-Arithmetic-v0", num_envs=2, vectorization_mode=mode, limit=20, wrappers=[_design_choice]
    )
    try:
        obs, _ = venv.reset(seed=0)
        assert obs.shape == (2, 32) and obs.dtype == np.float32
        obs, reward, term, trunc, info = venv.step(np.array([0, 1]))
        assert term.all() and reward.tolist() == [1.0, 1.0]
        assert list(info["design_name"]) == ["single", "vote"]
    finally:
        venv.close()
    dvenv = gym.make_vec(
        "MetaAgentX-Arithmetic-v0",
        num_envs=2,
        vectorization_mode=mode,
        vector_kwargs={"shared_memory": False} if mode == "async" else {},
        limit=20,
        wrappers=[functools.partial(DesignerOnly, executor=oracle_executor)],
    )
    try:
        dvenv.reset(seed=0)
        _, reward, term, _, info = dvenv.step((load_design("single"), "nothing"))
        assert term.all() and list(info["termination_reason"]) == ["completed", "no_code"]
    finally:
        dvenv.close()
