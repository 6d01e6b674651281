"""LLM backends: a batch of chat requests in, completions with token ids and logprobs out.

Cheap to import: the heavy libraries (torch, transformers, httpx, vllm) load inside the backends.

- :class:`~mx_agents.backends.hf.HFBackend`: transformers, batched, CPU or GPU (the default);
- :class:`~mx_agents.backends.vllm_backend.VLLMBackend`: the vLLM offline engine (extra ``gpu``);
- :class:`~mx_agents.backends.openai_http.OpenAIBackend`: an OpenAI-compatible HTTP server;
- :func:`get_backend`: any of them from a spec string (``"default"``, an HF id/path, a URL, ``vllm:...``).
"""

from mx_agents.backends.base import Backend, ChatRequest, Completion, Message, SamplingParams
from mx_agents.backends.factory import get_backend

__all__ = ["Backend", "ChatRequest", "Completion", "Message", "SamplingParams", "get_backend"]
