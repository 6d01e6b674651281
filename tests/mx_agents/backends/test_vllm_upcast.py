"""bf16 linears that vLLM's CPU build leaves on torch's ``F.linear`` fallback are computed in fp32 from
enough rows on (:func:`upcast_fallback_linears`): same result up to bf16 rounding, the native path for
decode-sized calls, vLLM's own kernels left alone. Runs without vLLM: it wraps plain modules shaped
as vLLM's layers (a ``weight`` and a ``cpu_linear``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mx_agents.backends.vllm_backend import upcast_fallback_linears  # noqa: E402


class _Layer(torch.nn.Module):
    """What vLLM's CPU dispatch leaves on a linear layer: its weight and the ``cpu_linear`` to call."""

    def __init__(self, n: int, k: int, cpu_linear, dtype=torch.bfloat16) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, k, generator=torch.Generator().manual_seed(n)).to(dtype) / 8,
                                         requires_grad=False)
        self.cpu_linear = cpu_linear
        self.calls: list[str] = []

    def forward(self, x):
        return self.cpu_linear(x, self.weight, None)


def _fallback(layer_calls):
    # The shape of vLLM's fallback (vllm/model_executor/layers/utils.py): a lambda over F.linear.
    return lambda x, weight, bias: (layer_calls.append("native"), torch.nn.functional.linear(x, weight, bias))[1]


def _model(*layers):
    return torch.nn.ModuleList(layers)


def test_fallback_linears_compute_in_fp32_from_min_rows_on_and_match_the_native_result():
    calls: list[str] = []
    layer = _Layer(64, 32, None)
    layer.cpu_linear = _fallback(calls)
    assert upcast_fallback_linears(_model(layer), min_rows=8) == 1
    assert upcast_fallback_linears(_model(layer), min_rows=8) == 0  # already wrapped: not twice

    gen = torch.Generator().manual_seed(0)
    for rows, path in ((1, ["native"]), (7, ["native"]), (8, []), (40, [])):
        calls.clear()
        x = torch.randn(rows, 32, generator=gen).to(torch.bfloat16)
        y = layer(x)
        assert calls == path, (rows, calls)
        assert y.dtype == torch.bfloat16 and y.shape == (rows, 64)
        exact = x.float() @ layer.weight.float().T  # fp32 reference of the same bf16 operands
        # Both paths round an fp32-accumulated result to bf16: within one bf16 ulp (2^-8 relative).
        assert torch.allclose(y.float(), exact, rtol=2**-7, atol=1e-6), (rows, (y.float() - exact).abs().max())
    # 3-D activations (batch, tokens, hidden) count rows over all leading dimensions.
    calls.clear()
    assert layer(torch.randn(2, 4, 32, generator=gen).to(torch.bfloat16)).shape == (2, 4, 64) and calls == []


def test_large_weights_need_more_rows_and_other_kernels_are_left_alone():
    calls: list[str] = []
    head = _Layer(1 << 18, 64, None)  # 16 Mi elements (an LM head's size): one row per Mi element
    head.cpu_linear = _fallback(calls)
    onednn = _Layer(64, 32, lambda x, weight, bias: torch.ops.aten.mm(x, weight.T))  # stands for onednn_mm
    fp32 = _Layer(64, 32, None, dtype=torch.float32)
    fp32.cpu_linear = _fallback(calls)
    plain = _Layer(64, 32, torch.nn.functional.linear)  # vLLM's skip-dispatch case: F.linear itself
    assert upcast_fallback_linears(_model(head, onednn, fp32, plain), min_rows=8) == 2  # head and plain
    assert onednn.cpu_linear.__name__ == "<lambda>" and fp32.cpu_linear.__name__ == "<lambda>"
    assert plain.cpu_linear is not torch.nn.functional.linear

    for rows, path in ((8, ["native"]), (15, ["native"]), (16, [])):
        calls.clear()
        assert head(torch.zeros(rows, 64, dtype=torch.bfloat16)).shape == (rows, 1 << 18)
        assert calls == path, (rows, calls)


class _RecordingLLM:
    """Test double of ``vllm.LLM`` for the weight push through an engine-core process: records each
    ``collective_rpc`` and, for a bucket, opens the shared-memory block by name as the worker does and
    reads the tensors from it (vLLM's worker-side ``load_weights`` is not run)."""

    def __init__(self, fail_on_bucket: int | None = None) -> None:
        self.calls: list[str] = []
        self.names: list[str] = []
        self.loaded: dict[str, torch.Tensor] = {}
        self.fail_on_bucket = fail_on_bucket

    def collective_rpc(self, fn, args=()):
        from multiprocessing import shared_memory

        self.calls.append(fn.__name__)
        if args:
            payload = args[0]
            if self.fail_on_bucket is not None and len(self.names) == self.fail_on_bucket:
                self.names.append(payload["name"])
                raise RuntimeError("engine core died")
            self.names.append(payload["name"])
            shm = shared_memory.SharedMemory(name=payload["name"])
            try:
                raw = torch.frombuffer(shm.buf, dtype=torch.uint8)
                for name, dtype, shape, offset in payload["entries"]:
                    dt = getattr(torch, dtype)
                    n = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
                    self.loaded[name] = raw[offset : offset + n].view(dt).view(shape).clone()
                del raw
            finally:
                shm.close()
        return [0]


def _rpc_backend(llm):
    from mx_agents.backends.vllm_backend import VLLMBackend

    backend = object.__new__(VLLMBackend)  # the push path only: no engine is started
    backend.llm, backend.on_cuda, backend._shm = llm, False, None
    return backend


@pytest.mark.parametrize("fail_on_bucket", [None, 1])
def test_weight_push_through_shared_memory_leaves_no_block_behind(fail_on_bucket):
    """Each push's shared-memory block is unlinked when the push ends, also when the engine core fails
    mid-push: a block kept between pushes outlived killed processes and filled /dev/shm."""
    import os

    weights = {f"layer{i}.weight": torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    llm = _RecordingLLM(fail_on_bucket)
    backend = _rpc_backend(llm)
    stats: dict[str, int] = {}
    bucket = 2 * 64 * 64 * 4  # two tensors per bucket
    if fail_on_bucket is None:
        backend._load_via_rpc(weights, bucket, stats)
        assert stats["buckets"] == 2 and set(llm.loaded) == set(weights)
        for name, t in weights.items():
            assert torch.equal(llm.loaded[name], t)
    else:
        with pytest.raises(RuntimeError, match="engine core died"):
            backend._load_via_rpc(weights, bucket, stats)
    assert llm.calls[0] == "_worker_begin_reload" and llm.calls[-1] == "_worker_end_reload"
    assert len(set(llm.names)) == 1  # one block, reused by the buckets of the push
    assert backend._shm is None
    if os.path.isdir("/dev/shm"):
        assert not os.path.exists(f"/dev/shm/{llm.names[0].lstrip('/')}")
