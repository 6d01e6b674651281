"""Play a trained checkpoint the way it was trained: its designer prompt and each role's sampling.

A training checkpoint (``RUN/checkpoints/step_*/trainer_state.json``) records the designer prompt
material (e.g. the compact API reference a small model was trained on) and the designer's and
executor's sampling settings (``extra.policy_settings``; older checkpoints: ``extra.config.rollout``).
Evaluating the weights with the env's default prompt instead measures a different policy (the demo's
model scores 0.20 instead of 0.75 that way), so ``mx eval`` applies these settings to checkpoint and
run-directory specs unless told not to; explicit CLI options (temperature, token caps) still win.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def find_trainer_state(spec: str) -> Path | None:
    """The ``trainer_state.json`` behind a run dir, checkpoint dir or its ``models/<name>`` folder."""
    p = Path(spec)
    if not p.is_dir():
        return None
    candidates = [p, p.parent.parent if p.parent.name == "models" else None]
    ckpts = p / "checkpoints"
    if ckpts.is_dir():
        steps = sorted(d for d in ckpts.iterdir() if d.name.startswith("step_") and (d / "trainer_state.json").is_file())
        if steps:
            candidates.insert(0, steps[-1])
    for c in candidates:
        if c is not None and (c / "trainer_state.json").is_file():
            return c / "trainer_state.json"
    return None


def trained_settings(spec: str | None) -> dict[str, Any] | None:
    """``{"designer_prompt": {...}, "designer": {...}, "executor": {...}, "source": path}`` of the
    checkpoint behind ``spec``, or ``None`` when ``spec`` is not a training checkpoint."""
    if not spec:
        return None
    path = find_trainer_state(spec)
    if path is None:
        return None
    extra = json.loads(path.read_text(encoding="utf-8")).get("extra", {})
    settings = extra.get("policy_settings")
    if settings is None:  # checkpoints written before policy_settings: read the run's config
        rollout = extra.get("config", {}).get("rollout")
        if rollout is None:
            return None
        settings = {k: rollout.get(k, {}) for k in ("designer_prompt", "designer", "executor")}
    return {**settings, "source": str(path)}


def _params(raw: dict[str, Any], default: Any, temperature: float | None, max_new_tokens: int | None) -> Any:
    fields = {f.name for f in dataclasses.fields(default)}
    kw = {k: v for k, v in raw.items() if k in fields}
    if temperature is not None:
        kw["temperature"] = temperature
    if max_new_tokens is not None:
        kw["max_new_tokens"] = max_new_tokens
    return dataclasses.replace(default, **kw)


def build_trained_policy(
    spec: str,
    executor_spec: str | None,
    *,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    designer_max_new_tokens: int | None = None,
    seed: int | None = None,
    backend_factory: Any = None,
) -> tuple[Any, dict[str, Any]] | None:
    """The policy of checkpoint ``spec`` (designer; also executor unless ``executor_spec`` names
    another model, whose own checkpoint settings then drive the executor), or ``None`` when neither
    spec is a training checkpoint. Returns ``(policy, applied settings)``."""
    from mx_agents.policies.design_prompt import DesignerPrompt
    from mx_agents.policies.llm import (
        DEFAULT_DESIGNER_PARAMS,
        DEFAULT_EXECUTOR_PARAMS,
        SharedPolicy,
        SplitPolicy,
    )
    from mx_agents.policies.spec import resolve_model_path

    d_set = trained_settings(spec)
    e_set = trained_settings(executor_spec) if executor_spec and executor_spec != spec else d_set
    if d_set is None and e_set is None:
        return None
    if executor_spec and not _is_model(executor_spec):
        return None  # scripted/random executors: the generic spec parser handles them
    if not _is_model(spec):
        return None
    d_raw = (d_set or {}).get("designer", {})
    e_raw = (e_set or {}).get("executor", {})
    d_params = _params(d_raw, DEFAULT_DESIGNER_PARAMS, temperature, designer_max_new_tokens or max_new_tokens)
    e_params = _params(e_raw, DEFAULT_EXECUTOR_PARAMS, temperature, max_new_tokens)
    prompt_kw = (d_set or {}).get("designer_prompt") or {}
    prompt = DesignerPrompt(**prompt_kw) if prompt_kw else None
    if backend_factory is None:
        from mx_agents.backends import get_backend

        backend_factory = get_backend
    designer_backend = backend_factory(resolve_model_path(spec))
    applied = {
        "designer_from": (d_set or {}).get("source"),
        "executor_from": (e_set or {}).get("source"),
        "designer_prompt": prompt_kw,
        "designer": dataclasses.asdict(d_params),
        "executor": dataclasses.asdict(e_params),
    }
    if not executor_spec or executor_spec == spec:
        return SharedPolicy(designer_backend, d_params, e_params, prompt=prompt, seed=seed), applied
    executor_backend = backend_factory(resolve_model_path(executor_spec))
    return SplitPolicy(designer_backend, executor_backend, d_params, e_params, prompt=prompt, seed=seed), applied


def _is_model(spec: str) -> bool:
    return not (spec == "scripted" or spec.startswith(("design:", "random")))
