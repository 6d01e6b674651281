"""Shared fixtures of the benchmark suites (see README.md for the pairing convention)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    """True under ``mx bench --quick`` (``MX_BENCH_QUICK=1``): suites should shrink their inputs."""
    return os.environ.get("MX_BENCH_QUICK", "") not in ("", "0", "false")
