"""Policy specs, as the CLIs take them: ``default``, an HF id or path, a URL, ``design:NAME``, ...

=====================  =============================================================================
spec                   policy
=====================  =============================================================================
``default``            the embedded model (SmolLM2-135M-Instruct) plays both roles (:class:`SharedPolicy`)
HF id or local path    that model, both roles; a training checkpoint directory works too (the HF
                       ``save_pretrained`` folder in it, or in its ``model``/``policy``/``hf`` subfolder)
``http(s)://...``      a served OpenAI-compatible model, both roles
``vllm:MODEL``         MODEL on the vLLM engine, both roles (``vllm:default``: the embedded model;
                       a checkpoint directory works as for HF)
``design:NAME``        the library design NAME as the designer; ``executor_spec`` (default
                       ``default``) answers its agents (:class:`FixedDesignPolicy`)
``scripted``           the ``single`` design with fixed replies (smoke tests; no model)
``random[:SEED]``      :class:`RandomPolicy` (random text)
=====================  =============================================================================

With ``executor_spec`` the designer spec writes designs and ``executor_spec`` answers the agents
(:class:`SplitPolicy` for two models); the same spec twice shares one backend.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from mx_agents.backends.base import Backend, SamplingParams
from mx_agents.policies.base import Policy, RoutedPolicy
from mx_agents.policies.design_prompt import DesignerPrompt
from mx_agents.policies.llm import (
    DEFAULT_DESIGNER_PARAMS,
    DEFAULT_EXECUTOR_PARAMS,
    DesignerPolicy,
    ExecutorPolicy,
    SharedPolicy,
)

_CHECKPOINT_SUBDIRS = ("model", "policy", "hf")


def resolve_model_path(spec: str) -> str:
    """``spec`` itself, or for a directory without ``config.json`` the HF model folder inside it.

    Understands training output too: a run directory (``RUN/checkpoints/step_*/``: the newest step), a
    checkpoint directory (``step_*/models/<name>/``: ``policy`` for a shared policy, else the only
    model, else ``designer``), and the ``model``/``policy``/``hf`` subfolder of an export.
    """
    if not os.path.isdir(spec) or os.path.isfile(os.path.join(spec, "config.json")):
        return spec
    for sub in _CHECKPOINT_SUBDIRS:
        if os.path.isfile(os.path.join(spec, sub, "config.json")):
            return os.path.join(spec, sub)
    ckpts = os.path.join(spec, "checkpoints")
    if os.path.isdir(ckpts):
        steps = sorted(d for d in os.listdir(ckpts) if d.startswith("step_") and os.path.isdir(os.path.join(ckpts, d)))
        if steps:
            return resolve_model_path(os.path.join(ckpts, steps[-1]))
    models = os.path.join(spec, "models")
    if os.path.isdir(models):
        names = sorted(d for d in os.listdir(models) if os.path.isfile(os.path.join(models, d, "config.json")))
        for pick in ("policy", *(names if len(names) == 1 else ()), "designer"):
            if pick in names:
                return os.path.join(models, pick)
    raise ValueError(
        f"{spec!r} is a directory but holds no HF model (no config.json in it, in its "
        f"{'/'.join(_CHECKPOINT_SUBDIRS)} subfolder, in models/<name>/ or in checkpoints/step_*/); "
        "save one with save_pretrained"
    )


def _is_model_spec(spec: str) -> bool:
    return not (spec == "scripted" or spec.startswith("design:") or spec == "random" or spec.startswith("random:"))


def parse_policy_spec(
    spec: str,
    executor_spec: str | None = None,
    *,
    max_new_tokens: int | None = None,
    designer_max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    prompt: DesignerPrompt | None = None,
    backend_kw: dict[str, Any] | None = None,
    backend_factory: Callable[..., Backend] | None = None,
    thinking: bool | None = None,
) -> Policy:
    """Build the policy ``spec`` names (see the module docstring).

    ``max_new_tokens`` caps executor replies and, unless ``designer_max_new_tokens`` is given,
    designs too; ``temperature``/``top_p`` apply to both roles. ``backend_kw`` goes to the backend
    factory (default :func:`mx_agents.backends.get_backend`), e.g. ``device``/``dtype``.
    ``thinking``: the chat template's ``enable_thinking`` switch (Qwen3); ``None`` leaves the
    template's default.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("a policy spec must be a non-empty string")
    spec = spec.strip()
    executor_spec = executor_spec.strip() if executor_spec else None
    common: dict[str, Any] = {}
    if temperature is not None:
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        common["temperature"] = float(temperature)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        common["top_p"] = float(top_p)
    for value in (max_new_tokens, designer_max_new_tokens):
        if value is not None and value <= 0:
            raise ValueError("max new tokens must be positive")
    d_tokens = designer_max_new_tokens or max_new_tokens
    d_params = dataclasses.replace(DEFAULT_DESIGNER_PARAMS, **common, **({"max_new_tokens": d_tokens} if d_tokens else {}))
    e_params: SamplingParams = dataclasses.replace(
        DEFAULT_EXECUTOR_PARAMS, **common, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})
    )
    backends: dict[str, Backend] = {}
    kw = dict(backend_kw or {})
    if thinking is not None:
        kw["chat_template_kwargs"] = {**kw.get("chat_template_kwargs", {}), "enable_thinking": bool(thinking)}

    def backend(model_spec: str) -> Backend:
        if model_spec not in backends:
            factory = backend_factory
            if factory is None:
                from mx_agents.backends import get_backend

                factory = get_backend
            if model_spec.startswith("vllm:"):
                target = "vllm:" + resolve_model_path(model_spec[len("vllm:") :] or "default")
            else:
                target = resolve_model_path(model_spec)
            backends[model_spec] = factory(target, **kw)
        return backends[model_spec]

    def executor_policy(model_spec: str, seed_: int | None) -> Policy:
        if model_spec.startswith("design:"):
            raise ValueError(f"{model_spec!r} is a designer; an executor spec names a model, 'scripted' or 'random'")
        if model_spec == "scripted":
            from mx_agents.policies.scripted import builtin_scripted_policy

            return builtin_scripted_policy()
        if model_spec == "random" or model_spec.startswith("random:"):
            return _random(model_spec)
        return ExecutorPolicy(backend(model_spec), e_params, seed=seed_)

    sub_seed = None if seed is None else seed + 1
    if spec.startswith("design:"):
        from mx_agents.policies.fixed import FixedDesignPolicy

        name = spec.split(":", 1)[1]
        if not name:
            raise ValueError("design:NAME needs a library design name (single, vote, reflection, ...)")
        return FixedDesignPolicy(name, executor_policy(executor_spec or "default", sub_seed))
    if spec == "scripted":
        from mx_agents.policies.scripted import builtin_scripted_policy

        scripted = builtin_scripted_policy()
        if executor_spec is None or executor_spec == "scripted":
            return scripted
        return RoutedPolicy(scripted, executor_policy(executor_spec, sub_seed))
    if spec == "random" or spec.startswith("random:"):
        rnd = _random(spec)
        return rnd if executor_spec is None else RoutedPolicy(rnd, executor_policy(executor_spec, sub_seed))
    if executor_spec is None or executor_spec == spec:
        return SharedPolicy(backend(spec), d_params, e_params, prompt=prompt, seed=seed)
    designer = DesignerPolicy(backend(spec), d_params, prompt, seed=seed)
    executor = executor_policy(executor_spec, sub_seed)
    # Two model specs -> two backends (a SplitPolicy); a router also covers scripted/random executors.
    return RoutedPolicy(designer, executor, name=f"split:{spec}|{executor_spec}") if _is_model_spec(
        executor_spec
    ) else RoutedPolicy(designer, executor)


def _random(spec: str) -> Policy:
    from mx_agents.policies.random_policy import RandomPolicy

    _, _, seed_text = spec.partition(":")
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise ValueError(f"random:SEED needs an integer seed, got {seed_text!r}") from None
    return RandomPolicy(seed=seed)
