"""Shared fixtures of the benchmark suites (see README.md for the pairing convention)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    """True under ``mx bench --quick`` (``MX_BENCH_QUICK=1``): suites should shrink their inputs."""
    return os.environ.get("MX_BENCH_QUICK", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def smollm2():
    """``smollm2(**kwargs)``: an ``HFBackend`` of the embedded SmolLM2-135M in float32 (``device`` "cpu"
    unless given), or the benchmark is skipped, saying why, when the model is not installed."""
    from mx_agents.backends.embedded import EmbeddedModelUnavailable
    from mx_agents.backends.hf import HFBackend

    def make(**kwargs):
        try:
            return HFBackend("default", **{"device": "cpu", "dtype": "float32", **kwargs})
        except EmbeddedModelUnavailable as exc:
            pytest.skip(f"embedded SmolLM2 not installed: {exc}")

    return make
