"""Rank body for tests/mx_train/test_fsdp.py: one sharded update of the tiny Llama (spawned)."""

from __future__ import annotations

import sys
from pathlib import Path


def run(rank: int, world: int, init_method: str, out_dir: str, config: dict) -> None:
    import torch

    torch.set_num_threads(1)
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from mx_agents.testing import tiny_llama
    from mx_train.learner.fsdp import build_sharded_learner, destroy_group, init_group, shard_bytes
    from tests.mx_train.test_learner import batch

    ctx = init_group(rank, world, init_method, "cpu")
    try:
        model, _ = tiny_llama(seed=0)
        learner = build_sharded_learner(model, config, ctx)
        metrics = learner.update(batch(n=8))
        state = learner.weights_for_sync()
        mem = shard_bytes(learner)
        learner.compute_gradients(batch(seed=1, n=5))  # 5 sequences: the ranks get 3 and 2
        grads = {n: p.grad.full_tensor() for n, p in learner.model.named_parameters() if p.grad is not None}
        torch.save({"metrics": metrics, "state": state, "mem": mem, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        destroy_group()
