from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def grading_sandbox():
    """The real process sandbox used by the code grader (warm pool, shared by the session)."""
    from mx_envs.tasks.code_grader import grading_sandbox as make

    sb = make()
    sb.warm_up()
    return sb
