"""get_backend: which backend a spec string builds."""

from __future__ import annotations

import pytest

from mx_agents.backends import get_backend
from mx_agents.backends.openai_http import OpenAIBackend


def test_url_gives_openai_backend_with_model_from_fragment():
    b = get_backend("http://127.0.0.1:8000/v1#Qwen/Qwen3-8B", max_concurrency=3)
    assert isinstance(b, OpenAIBackend)
    assert b.base_url == "http://127.0.0.1:8000/v1" and b.model == "Qwen/Qwen3-8B" and b.max_concurrency == 3
    assert get_backend("https://api.example.com/v1", model="m").model == "m"


def test_local_path_gives_hf_backend(tmp_path):
    pytest.importorskip("transformers")
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    b = get_backend(f"hf:{tmp_path}", device="cpu", dtype="float32")
    assert isinstance(b, HFBackend)
    assert b.model.config.vocab_size == len(tok)
    assert b.encode_chat([{"role": "user", "content": "hi"}]) == tok(
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False),
        add_special_tokens=False)["input_ids"]


def test_missing_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(OSError, match="could not load model"):
        get_backend(str(tmp_path / "nothing-here"), device="cpu")


def test_vllm_spec_without_vllm_or_gpu_says_why():
    from mx_agents.backends.vllm_backend import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("vLLM and CUDA are available here; covered by test_vllm_backend.py")
    with pytest.raises(RuntimeError, match="unavailable"):
        get_backend("vllm:default")


def test_bad_spec():
    with pytest.raises(ValueError, match="non-empty"):
        get_backend("  ")
