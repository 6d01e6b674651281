"""Backend tests run the tiny Llama with one intra-op thread.

Its matrices are a few dozen wide, so extra torch threads only add synchronisation; on a shared 2-core
CI machine their spin-waits made these tests several times slower. The previous setting is restored.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
