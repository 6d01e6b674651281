"""Fixtures of the MAS runtime tests: the real process sandbox with the script library preloaded.

``MX_MAS_TEST_SANDBOX=pipe`` swaps in the unisolated PipeSandbox TEST DOUBLE (debugging the
session logic only; the isolation tests skip then).
"""

from __future__ import annotations

import os

import pytest
from mas_doubles import PipeSandbox

from mx_envs.mas.session import default_mas_sandbox


@pytest.fixture(scope="session")
def sandbox():
    if os.environ.get("MX_MAS_TEST_SANDBOX") == "pipe":
        yield PipeSandbox()
        return
    sb = default_mas_sandbox()
    yield sb


@pytest.fixture
def real_sandbox(sandbox):
    if isinstance(sandbox, PipeSandbox):
        pytest.skip("needs the real sandbox (MX_MAS_TEST_SANDBOX=pipe selects the unisolated double)")
    return sandbox
