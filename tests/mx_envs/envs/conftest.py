"""Env fixtures for the env tests (real sandbox, real graders)."""

from __future__ import annotations

import pytest
from env_tasks import code_task, math_tasks

from mx_envs.envs.meta_env import MetaAgentXEnv


@pytest.fixture
def math_env():
    env = MetaAgentXEnv(tasks=math_tasks())
    yield env
    env.close()


@pytest.fixture
def code_env():
    env = MetaAgentXEnv(tasks=[code_task()])
    yield env
    env.close()
