"""FSDP2 learner on 2 CPU processes (gloo): same update as one process, half the memory each."""

from __future__ import annotations

import pytest
import torch

from mx_train.learner import Learner
from tests.mx_train.test_learner import batch

CONFIG = {
    "lr": 1e-3, "weight_decay": 0.01, "micro_batch_tokens": 40, "mini_batches": 2,
    "old_logprobs": "recompute", "device": "cpu",
    # eps 1: Adam's step lr*m/(sqrt(v)+eps) is then Lipschitz in the gradient (|d step/d g| <= lr), so a
    # gradient that differs by fp32 rounding gives weights that differ by at most steps*lr*that much. At
    # eps 1e-8 an element whose gradient cancels to rounding noise may step +lr or -lr on another CPU's
    # reduction order: no tolerance follows from the computation there.
    "adam_eps": 1.0,
}
FP32_U = 2.0**-24  # unit roundoff of fp32


def reduction_bound(batch_rows, model) -> float:
    """Relative error of one fp32 gradient element under another summation order (another CPU's blocking).

    Each gradient element sums over the batch's tokens products that themselves reduce over the
    widest dimension (vocab, hidden or MLP) of every layer: K terms. Rounding errors of a length-K
    sum stay below ``lambda * sqrt(K) * u`` of its magnitude except with probability
    ``2 exp(-lambda^2 / 2)`` (Higham & Mary's probabilistic bound); lambda 8 makes that 3e-14 per
    element. Relative to the tensor's largest element, which only loosens it. (The worst case
    ``K * u`` is so loose here that it would accept a wrong update.)
    """
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in batch_rows)
    cfg = model.config
    widest = max(cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) * cfg.num_hidden_layers
    return 8 * (tokens * widest) ** 0.5 * FP32_U


@pytest.mark.slow
def test_two_process_update_equals_single_process_and_halves_memory(tmp_path, tiny):
    from mx_train.learner.fsdp import free_port, shard_bytes
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
    # Weights: each of the optimizer steps moves an element by at most lr * (its gradient's error),
    # and that error is bounded relative to the largest gradient, which Adam at eps 1 keeps below 1.
    update_bound = m_single["optimizer_steps"] * CONFIG["lr"] * reduction_bound(batch(n=8), model)
    for k, v in expected.items():
        assert not torch.equal(v, initial[k]), k  # the update moved every tensor ...
        moved = (v - initial[k]).abs().max().item()
        assert moved > 10 * update_bound, (k, moved, update_bound)  # ... by far more than the tolerance
        torch.testing.assert_close(r0["state"][k], v, rtol=0, atol=update_bound)  # ... as one process did
    # gradients (not only Adam's steps): the ranks' shares add up to the full batch's
    assert r0["grads"].keys() == expected_grads.keys()
    grad_rel = reduction_bound(batch(seed=1, n=5), model)
    for k, g in expected_grads.items():
        torch.testing.assert_close(r0["grads"][k], g, rtol=0, atol=grad_rel * g.abs().max().item())
    for r in (r0, r1):
        for part in ("params", "optimizer"):
            share = r["mem"][part] / full_mem[part]
            assert 0.45 <= share <= 0.55, (part, share)
