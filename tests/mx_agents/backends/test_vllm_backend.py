"""VLLMBackend on a real GPU with the embedded SmolLM2 (skipped without vLLM and CUDA)."""

from __future__ import annotations

import pytest

from mx_agents.backends.base import ChatRequest, SamplingParams
from mx_agents.backends.vllm_backend import vllm_unavailable_reason

REASON = vllm_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a color."}]]


@pytest.fixture(scope="module")
def backend():
    from mx_agents.backends.vllm_backend import VLLMBackend

    return VLLMBackend("default", gpu_memory_utilization=0.3, max_model_len=2048, enforce_eager=True)


def test_token_ids_and_logprobs_match_hf_rescoring(backend):
    from mx_agents.backends.hf import HFBackend

    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    comps = backend.generate([ChatRequest(m, params) for m in PROMPTS])
    hf = HFBackend("default", device="cuda", dtype="float32")
    for c, m in zip(comps, PROMPTS, strict=True):
        assert c.prompt_ids == hf.encode_chat(m)
        assert len(c.logprobs) == len(c.response_ids) > 0
        rescored = hf.score(c.prompt_ids, c.response_ids)
        assert max(abs(a - b) for a, b in zip(rescored, c.logprobs, strict=True)) < 0.05


def test_seeded_sampling_reproducible_and_stop_strings(backend):
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    a = backend.generate([ChatRequest(PROMPTS[1], params)])[0]
    b = backend.generate([ChatRequest(PROMPTS[1], params)])[0]
    assert a.response_ids == b.response_ids
    stop = backend.generate([ChatRequest(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=16,
                                                                   stop=("2",)))])[0]
    assert "2" not in stop.text


def test_load_weights_without_restart(backend):
    import torch
    from transformers import AutoModelForCausalLM

    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    before = backend.generate([ChatRequest(PROMPTS[0], params)])[0]
    model = AutoModelForCausalLM.from_pretrained(backend.model_path)
    sd = model.state_dict()
    sd = {k: (v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0))) for k, v in sd.items()}
    backend.load_weights(sd)
    after = backend.generate([ChatRequest(PROMPTS[0], params)])[0]
    assert backend.weights_version == 1
    assert after.response_ids != before.response_ids
