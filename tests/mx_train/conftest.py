"""Fixtures for the training tests: the tiny random-weight Llama of ``mx_agents.testing``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny():
    """(model, tokenizer): fresh, bit-identical for every test (seeded generator, no global RNG)."""
    from mx_agents.testing import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama saved as a model directory (what ``policy.model`` names in Ray workers)."""
    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
