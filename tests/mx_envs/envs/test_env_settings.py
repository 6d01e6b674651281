"""The env's three settings groups (task, reward, budgets) and the flat keywords mapped into them."""

from __future__ import annotations

import gymnasium as gym
import pytest
from env_tasks import math_tasks

import mx_envs  # noqa: F401 - registers the ids
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.envs.reward import RewardConfig
from mx_envs.envs.settings import BudgetSettings, TaskSettings
from mx_envs.errors import ConfigError
from mx_envs.mas.protocol import Budgets


def test_grouped_settings_and_flat_keywords_build_the_same_env() -> None:
    grouped = MetaAgentXEnv(
        task=TaskSettings(tasks=tuple(math_tasks()), limit=3),
        reward=RewardConfig(invalid_design_penalty=0.5, llm_call_penalty=0.01),
        budgets=BudgetSettings(script=Budgets(max_llm_calls=5), max_observation_chars=50_000, max_action_chars=900),
    )
    flat = MetaAgentXEnv(tasks=math_tasks(), limit=3, invalid_design_penalty=0.5, llm_call_penalty=0.01,
                         budgets={"max_llm_calls": 5}, max_observation_chars=50_000, max_action_chars=900)
    for env in (grouped, flat):
        assert [t.id for t in env.tasks] == ["m0", "m1", "m2"]
        assert env.reward_config == RewardConfig(invalid_design_penalty=0.5, llm_call_penalty=0.01)
        assert env.budgets == Budgets(max_llm_calls=5)
        assert env.max_observation_chars == 50_000 and env.action_space.max_length == 900
    # A flat keyword overrides its group's field.
    env = MetaAgentXEnv(reward={"invalid_design_penalty": 0.5}, invalid_design_penalty=0.25, tasks=math_tasks())
    assert env.reward_config.invalid_design_penalty == 0.25


def test_gym_make_with_dataset_options_reward_limit_and_budgets() -> None:
    env = gym.make("MetaAgentX-Arithmetic-v0", level=3, invalid_design_penalty=0.25, limit=5,
                   budgets={"max_llm_calls": 3})
    inner = env.unwrapped
    assert len(inner.tasks) == 5 and inner.reward_config.invalid_design_penalty == 0.25
    assert inner.budgets.max_llm_calls == 3
    # ``level`` reached the loader: the same tasks as loading level 3 directly.
    direct = MetaAgentXEnv("arithmetic", task=TaskSettings(dataset="arithmetic", limit=5, options={"level": 3}))
    assert [t.prompt for t in inner.tasks] == [t.prompt for t in direct.tasks]
    assert [t.prompt for t in inner.tasks] != [t.prompt for t in MetaAgentXEnv("arithmetic", limit=5).tasks]
    env.close()


def test_limit_is_applied_once_by_whoever_holds_the_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    import mx_envs.tasks as tasks_pkg

    calls = []

    def load(name, **kwargs):
        calls.append(kwargs)
        return math_tasks()  # a loader that ignores the limit it was given

    monkeypatch.setattr(tasks_pkg, "load_tasks", load)
    env = MetaAgentXEnv("toy", limit=2)
    assert calls == [{"limit": 2}] and len(env.tasks) == 4  # the loader's answer is not sliced again
    assert [t.id for t in MetaAgentXEnv(tasks=math_tasks(), limit=2).tasks] == ["m0", "m1"]


def test_unknown_keywords_still_name_the_closest_one() -> None:
    with pytest.raises(ConfigError, match=r"^unknown env keyword 'limt'; did you mean 'limit'"):
        MetaAgentXEnv("arithmetic", limt=3)
    with pytest.raises(ConfigError, match=r"^unknown env keyword 'invalid_design_penalt'; did you mean "
                                          r"'invalid_design_penalty'"):
        MetaAgentXEnv(tasks=math_tasks(), invalid_design_penalt=0.1)
    with pytest.raises(ValueError, match="unknown budgets"):
        MetaAgentXEnv(tasks=math_tasks(), budgets={"max_llm_cals": 3})
