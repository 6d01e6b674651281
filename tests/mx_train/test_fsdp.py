"""FSDP2 learner on 2 CPU processes (gloo): same update as one process, half the memory each."""

from __future__ import annotations

import pytest
import torch

from mx_train.learner import Learner
from tests.mx_train.test_learner import batch

CONFIG = {
    "lr": 1e-3, "weight_decay": 0.01, "micro_batch_tokens": 40, "mini_batches": 2,
    "old_logprobs": "recompute", "device": "cpu",
}


@pytest.mark.slow
def test_two_process_update_equals_single_process_and_halves_memory(tmp_path, tiny):
    from mx_train.fsdp import free_port, shard_bytes
    from tests.mx_train.fsdp_worker import run

    model, _ = tiny
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    single = Learner(model, CONFIG)
    m_single = single.update(batch(n=8))
    expected = {k: v.detach().clone() for k, v in single.model.state_dict().items()}
    full_mem = shard_bytes(single)
    single.compute_gradients(batch(seed=1, n=5))
    expected_grads = {n: p.grad.detach().clone() for n, p in single.model.named_parameters() if p.grad is not None}

    torch.multiprocessing.start_processes(
        run, args=(2, f"tcp://127.0.0.1:{free_port()}", str(tmp_path), CONFIG), nprocs=2,
        start_method="fork", join=True,  # fork: no re-import of torch/transformers
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["metrics"]["optimizer_steps"] == m_single["optimizer_steps"] == 2
    assert r0["metrics"]["loss"] == pytest.approx(m_single["loss"], rel=1e-4, abs=1e-6)
    assert r0["state"].keys() == expected.keys() and r1["state"] == {}  # full weights on rank 0 only
    for k, v in expected.items():
        assert not torch.equal(v, initial[k]), k  # the update moved every tensor ...
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-5, atol=1e-6)  # ... as one process did
    # gradients (not only Adam's scale-free steps): the ranks' shares add up to the full batch's
    assert r0["grads"].keys() == expected_grads.keys()
    for k, g in expected_grads.items():
        torch.testing.assert_close(r0["grads"][k], g, rtol=1e-4, atol=1e-6)
    for r in (r0, r1):
        for part in ("params", "optimizer"):
            share = r["mem"][part] / full_mem[part]
            assert 0.45 <= share <= 0.55, (part, share)
