"""Fixtures for the training tests: the tiny random-weight Llama of ``mx_agents.testing``."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny():
    """(model, tokenizer): fresh, bit-identical for every test (seeded generator, no global RNG)."""
    from mx_agents.testing import tiny_llama

    return tiny_llama(seed=0)
