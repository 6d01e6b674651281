"""Suite-wide rules: which tests need benchmark data, and what a missing data set means.

A test needs the benchmark data (``$MX_DATA_DIR``, e.g. ``../shared/data`` of the development
machines) when it asks for the ``data_dir`` fixture or its module says ``pytestmark = pytest.mark.data``.
Those tests get the ``data`` marker, so ``pytest -m data`` selects exactly them (``.ci/run`` runs that
second, with the data). Without data they skip, naming what is missing; with ``MX_REQUIRE_DATA=1``
a missing data set is a failure, so a run that is meant to exercise real data cannot pass without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REQUIRE_DATA_ENV = "MX_REQUIRE_DATA"

# The learner's default compute dtype follows the host (bf16 autocast on a CPU with avx512_bf16 or
# AMX: mx_train/learner/precision.py). The suite's exact comparisons assume fp32, so it pins that
# detection off unless the caller set it; tests of the bf16 path switch it on themselves.
os.environ.setdefault("MX_CPU_BF16", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


def missing_data(reason: str) -> None:
    """Skip (the newcomer's run) or fail (``MX_REQUIRE_DATA=1``) for a missing data set."""
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        pytest.fail(f"{REQUIRE_DATA_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data directory (``$MX_DATA_DIR``); skips (or fails, see above) without it."""
    value = os.environ.get("MX_DATA_DIR")
    if not value or not Path(value).is_dir():
        missing_data("MX_DATA_DIR is not set to a benchmark data directory (see the README's Data paragraph)")
    return Path(value)


# Security tests: the sandbox, the graders' red-team suites and the env-level red team. On Linux as
# root (what CI is) every kernel feature they rely on exists, so a skip or an xfail there hides a
# missing protection: it is reported as a failure naming the reason. Not counted: a missing data set
# (the `data` marker: the newcomer's run has none) and the Docker backend (optional: no daemon).
SECURITY_PATHS = ("tests/mx_envs/sandbox/", "tests/mx_envs/tasks/test_reward_integrity_",
                  "tests/mx_envs/envs/test_redteam", "tests/mx_envs/mas/")
OPTIONAL_BACKEND_FILES = ("test_docker_backend.py",)


def is_security_test(item: pytest.Item) -> bool:
    path = Path(str(item.fspath)).resolve().as_posix()
    root = Path(__file__).resolve().parents[1].as_posix() + "/"
    rel = path[len(root):] if path.startswith(root) else path
    return (rel.startswith(SECURITY_PATHS) and not rel.endswith(OPTIONAL_BACKEND_FILES)
            and item.get_closest_marker("data") is None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not is_security_test(item):
        return
    if not (sys.platform.startswith("linux") and os.geteuid() == 0):
        return
    kind = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    reason = getattr(report, "wasxfail", "") or (report.longrepr[2] if isinstance(report.longrepr, tuple)
                                                else str(report.longrepr))
    report.outcome = "failed"
    report.longrepr = (f"security test {kind} on Linux as root, where it must run: {reason}. A missing kernel "
                       f"feature or package here is a failure, not a skip (tests/conftest.py).")
    if hasattr(report, "wasxfail"):
        del report.wasxfail
