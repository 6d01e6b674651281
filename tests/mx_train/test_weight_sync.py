"""Learner -> engine weight sync without vLLM: bounded buckets, the consistency metrics on an HF engine
holding its own copy of the weights, and the collective (gloo) path between two processes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_buckets_are_bounded_and_keep_every_tensor_once():
    from mx_agents.backends.weight_buckets import iter_weight_buckets

    sd = {f"w{i}": torch.zeros(n) for i, n in enumerate([10, 300, 5, 5, 1000, 7])}  # float32: 4 bytes each
    buckets = list(iter_weight_buckets(sd, bucket_bytes=1200))
    assert [n for b in buckets for n, _ in b] == list(sd)
    for b in buckets:
        size = sum(t.numel() * 4 for _, t in b)
        assert size <= 1200 or len(b) == 1  # a tensor larger than a bucket travels alone
    with pytest.raises(ValueError):
        list(iter_weight_buckets(sd, 0))


class _Learner:
    def __init__(self, model):
        self.model = model

    def weights_for_sync(self):
        return dict(self.model.state_dict())


def test_engine_sync_measures_stale_then_synced_on_an_hf_engine():
    from mx_agents.backends.base import ChatRequest, SamplingParams
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama
    from mx_train.weight_sync import EngineSync

    model, tok = tiny_llama(seed=0)
    engine = HFBackend(tiny_llama(seed=0)[0], tok, device="cpu", dtype="float32")  # its own copy
    comps = engine.generate([ChatRequest([{"role": "user", "content": "What is 1 + 2?"}],
                                         SamplingParams(temperature=0.7, max_new_tokens=6, seed=1))])

    class T:
        prompt_ids, response_ids, logprobs = comps[0].prompt_ids, comps[0].response_ids, comps[0].logprobs
        metadata = {"temperature": 0.7}

    sync = EngineSync(_Learner(model), engine, probe=2)
    assert sync.rollout_metrics([T()])["rollout/logprob_diff_mean"] < 1e-4  # same weights, same T
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    m = sync.push()
    assert m["rollout/logprob_diff_stale_mean"] > 1e-2
    assert m["rollout/logprob_diff_synced_mean"] < 1e-4 and engine.weights_version == 1


def _receiver(path: str, init: str) -> None:
    import torch.distributed as dist

    from mx_agents.testing import tiny_llama
    from mx_train.weight_sync import receive_weight_buckets

    dist.init_process_group("gloo", init_method=init, rank=1, world_size=2)
    model, _ = tiny_llama(seed=0)
    got = dict(receive_weight_buckets(src=0))
    own = model.state_dict()
    with torch.no_grad():
        for name, t in got.items():
            own[name].copy_(t)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    dist.destroy_process_group()


def test_weights_broadcast_over_gloo_to_another_process(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from mx_agents.testing import tiny_llama
    from mx_train.weight_sync import CollectiveWeightSender

    init = f"file://{tmp_path / 'rendezvous'}"
    out = tmp_path / "received.pt"
    proc = mp.get_context("spawn").Process(target=_receiver, args=(str(out), init))
    proc.start()
    try:
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=2)
        model, _ = tiny_llama(seed=1)
        stats = CollectiveWeightSender(src=0, bucket_bytes=64 << 10).send(model.state_dict())
        dist.destroy_process_group()
        proc.join(timeout=300)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0 and stats["buckets"] > 1
    received = torch.load(out)
    assert all(torch.equal(received[k], v) for k, v in model.state_dict().items())
