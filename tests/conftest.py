"""Suite-wide rules: which tests need benchmark data, and what a missing data set means.

A test needs the benchmark data (``$MX_DATA_DIR``, e.g. ``../shared/data`` of the development
machines) when it asks for the ``data_dir`` fixture or its module says ``pytestmark = pytest.mark.data``.
Those tests get the ``data`` marker, so ``pytest -m data`` selects exactly them (``.ci/run`` runs that
second, with the data). Without data they skip, naming what is missing; with ``MX_REQUIRE_DATA=1``
a missing data set is a failure, so a run that is meant to exercise real data cannot pass without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_DATA_ENV = "MX_REQUIRE_DATA"


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
