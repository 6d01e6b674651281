from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def grading_sandbox():
    """The real process sandbox used by the code grader (warm pool, shared by the session)."""
    from mx_envs.tasks.code_grader import grading_sandbox as make

    sb = make()
    sb.warm_up()
    return sb


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("MX_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("MX_DATA_DIR is not set to the benchmark data directory (see /work/shared/data/README.md)")
    return Path(value)
