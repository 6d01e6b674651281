"""``get_backend``: build a backend from a one-string spec (what CLIs and configs pass around)."""

from __future__ import annotations

import json
from typing import Any

from mx_agents.backends.base import Backend

# One vLLM engine per (model, options) per process: an engine holds its KV cache and, in process,
# its model; building a second identical one (e.g. the same spec for two roles, or an eval that
# builds its policy again) would double both and take another engine start.
_VLLM_ENGINES: dict[str, Backend] = {}


def get_backend(spec: str | None = "default", **kwargs: Any) -> Backend:
    """Build the backend a spec names; ``kwargs`` go to its constructor.

    - ``None`` or ``"default"``: :class:`HFBackend` on the embedded SmolLM2-135M-Instruct;
    - ``"http://..."`` / ``"https://..."``: :class:`OpenAIBackend` on that base URL (include the
      ``/v1`` prefix); the served model's name comes from ``model=`` or the URL's ``#fragment``
      (``http://host:8000/v1#Qwen/Qwen3-8B``), else ``"default"``;
    - ``"vllm:<model>"``: :class:`VLLMBackend` (``"vllm:"`` or ``"vllm:default"`` = embedded model),
      one engine per process for the same model and options;
    - ``"hf:<model>"`` or anything else: :class:`HFBackend` on that HF id or local path.
    """
    if spec is None or spec == "default":
        from mx_agents.backends.hf import HFBackend

        return HFBackend("default", **kwargs)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backend spec must be a non-empty string, got {spec!r}")
    if spec.startswith(("http://", "https://")):
        from mx_agents.backends.openai_http import OpenAIBackend

        url, _, fragment = spec.partition("#")
        model = kwargs.pop("model", None) or fragment or "default"
        return OpenAIBackend(url, model, **kwargs)
    if spec.startswith("vllm:"):
        return _vllm_engine(spec[len("vllm:") :] or "default", kwargs)
    from mx_agents.backends.hf import HFBackend

    return HFBackend(spec[len("hf:") :] if spec.startswith("hf:") else spec, **kwargs)


def _vllm_engine(model: str, kwargs: dict[str, Any]) -> Backend:
    from mx_agents.backends.vllm_backend import VLLMBackend

    key = json.dumps([model, kwargs], sort_keys=True, default=str)
    if key not in _VLLM_ENGINES:
        _VLLM_ENGINES[key] = VLLMBackend(model, **kwargs)
    return _VLLM_ENGINES[key]
