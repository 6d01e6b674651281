"""``get_backend``: build a backend from a one-string spec (what CLIs and configs pass around)."""

from __future__ import annotations

from typing import Any

from mx_agents.backends.base import Backend


def get_backend(spec: str | None = "default", **kwargs: Any) -> Backend:
    """Build the backend a spec names; ``kwargs`` go to its constructor.

    - ``None`` or ``"default"``: :class:`HFBackend` on the embedded SmolLM2-135M-Instruct;
    - ``"http://..."`` / ``"https://..."``: :class:`OpenAIBackend` on that base URL (include the
      ``/v1`` prefix); the served model's name comes from ``model=`` or the URL's ``#fragment``
      (``http://host:8000/v1#Qwen/Qwen3-8B``), else ``"default"``;
    - ``"vllm:<model>"``: :class:`VLLMBackend` (``"vllm:"`` or ``"vllm:default"`` = embedded model);
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
        from mx_agents.backends.vllm_backend import VLLMBackend

        return VLLMBackend(spec[len("vllm:") :] or "default", **kwargs)
    from mx_agents.backends.hf import HFBackend

    return HFBackend(spec[len("hf:") :] if spec.startswith("hf:") else spec, **kwargs)
