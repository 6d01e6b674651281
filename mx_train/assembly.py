"""The assembly of a run: a :class:`~mx_train.config.TrainConfig` -> envs, generation backends, the
rollout policy, learners and the engine syncs that push their weights.

The trainer builds all of it; a Ray rollout worker (:mod:`mx_train.distributed`) builds the envs,
backends and policies from the same config, so both roll out the same way. Nothing here runs a step.

* envs: :func:`make_env_factory` (one env id, or a weighted mix: :func:`make_env_mix`), on the
  training split unless the config opts into an evaluation split; the task list is loaded once;
* backends: :func:`build_backends` (one object for both roles, or one per role for a split policy)
  through a ``(model_spec) -> Backend`` factory (:func:`default_backend_factory`);
* policy: :func:`build_rollout_policy` (the step's sampling seed, designer prompt, fixed design);
* learners: :func:`build_learners`, one per distinct backend, on the backend's own torch model when
  it has one (trained in place) or on an fp32 copy whose weights an :class:`~mx_train.weight_sync.EngineSync`
  pushes into the engine after each update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mx_train.config import EnvConfig, TrainConfig

EnvFactory = Callable[[], Any]
BackendFactory = Callable[[str], Any]


# ---------------------------------------------------------------------------- envs
def make_env_factory(config: TrainConfig) -> EnvFactory:
    """Envs of the training split, all sharing one task list (loaded once, not per env). With an env
    mix (``config.envs``), each env made is a :class:`~mx_train.env_mix.MixedEnv` over all of them."""
    entries = config.env_entries()
    if len(entries) > 1:
        return mixed_env_factory(make_env_mix(config))
    return _single_env_factory(entries[0][0])[0]


def mixed_env_factory(mix: list[Any]) -> EnvFactory:
    """Envs that each hold one env of every entry of ``mix`` (:class:`~mx_train.env_mix.MixedEnv`)."""
    from mx_train.env_mix import MixedEnv

    factories = [e.factory for e in mix]
    return lambda: MixedEnv(factories)


def make_env_mix(config: TrainConfig) -> list[Any]:
    """The :class:`~mx_train.env_mix.EnvEntry` list of ``config.envs`` (names unique, tasks loaded once)."""
    from mx_agents.design_groups import unique_names
    from mx_train.env_mix import EnvEntry, env_label

    entries = config.env_entries()
    names = unique_names([name or env_label(cfg.id) for cfg, _, name in entries])
    out = []
    for (cfg, weight, _), name in zip(entries, names, strict=True):
        factory, tasks = _single_env_factory(cfg)
        if not tasks:
            raise ValueError(f"env {cfg.id!r} ({name}) has no training tasks")
        out.append(EnvEntry(name=name, env_id=cfg.id, weight=weight, factory=factory, task_ids=[t.id for t in tasks]))
    return out


def _single_env_factory(env_cfg: EnvConfig) -> tuple[EnvFactory, list[Any]]:
    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the ids
    from mx_envs.tasks.registry import TRAIN_SPLITS

    kwargs = dict(env_cfg.kwargs)
    kwargs.setdefault("split", env_cfg.split)
    if kwargs["split"] not in TRAIN_SPLITS and not env_cfg.allow_eval_split:
        raise ValueError(
            f"env split {kwargs['split']!r} is an evaluation split; training on it needs "
            "env.allow_eval_split: true (checkpoints are never selected on test data by default)"
        )
    probe = gym.make(env_cfg.id, disable_env_checker=True, **kwargs)
    tasks = list(probe.unwrapped.tasks)
    probe.close()
    kwargs["tasks"] = tasks
    return (lambda: gym.make(env_cfg.id, disable_env_checker=True, **kwargs)), tasks


# ---------------------------------------------------------------------------- backends and policies
def default_backend_factory(config: TrainConfig) -> BackendFactory:
    """``(model_spec) -> Backend`` on the configured device, dtype, batch size and chat template."""
    pc = config.policy

    def factory(spec: str) -> Any:
        from mx_agents.backends import get_backend

        return get_backend(spec, device=pc.device, dtype=pc.dtype, max_batch_size=pc.max_batch_size,
                           chat_template_kwargs={"enable_thinking": bool(pc.thinking)}, **pc.engine_kwargs)

    return factory


def build_backends(config: TrainConfig, backend_factory: BackendFactory) -> dict[str, Any]:
    """Role -> generation backend: one object for both roles (shared policy) unless
    ``policy.executor_model`` names a second model (split policy)."""
    pc = config.policy
    designer = backend_factory(pc.model)
    return {"designer": designer, "executor": backend_factory(pc.executor_model) if pc.executor_model else designer}


def build_rollout_policy(backends: dict[str, Any], config: TrainConfig, step: int) -> Any:
    """The rollout policy of ``step``. Sampling seeds derive from (run seed, step), so a resumed run
    samples what the uninterrupted one would have, and a Ray worker's policy is the local one (its
    requests' seeds are keyed by episode and turn: :func:`mx_agents.design_groups.run_design_groups`)."""
    from mx_agents.policies.design_prompt import DesignerPrompt
    from mx_agents.policies.llm import SharedPolicy, SplitPolicy

    r = config.rollout
    seed = (config.seed * 1_000_003 + step) % (2**31)
    d_params, e_params = r.designer.params(), r.executor.params()
    prompt = DesignerPrompt(**r.designer_prompt) if r.designer_prompt else None
    if backends["designer"] is backends["executor"]:
        policy: Any = SharedPolicy(backends["designer"], d_params, e_params, prompt=prompt, seed=seed)
    else:
        policy = SplitPolicy(backends["designer"], backends["executor"], d_params, e_params, prompt=prompt, seed=seed)
    if r.fixed_design:
        from mx_agents.policies.fixed import FixedDesignPolicy
        from mx_train.sft_data import design_source

        name, source = design_source(r.fixed_design)
        # Fixed designs make no designer transitions: only the executor is trained. The LLM designer
        # stays as the prompter: a cold start pairs its prompts with the warm-start designs.
        return FixedDesignPolicy(None, policy.executor, source=source, prompter=policy.designer)
    return policy


# ---------------------------------------------------------------------------- learners
def shares_model(backend: Any, learner: Any) -> bool:
    """Whether ``learner`` trains the backend's own model object (no weights to push)."""
    return getattr(backend, "model", None) is learner.model


def build_learners(
    config: TrainConfig, backends: dict[str, Any], engine_copy: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(role -> learner, role -> EngineSync)``: one learner per distinct backend (a shared policy's
    two roles get the same one), a :class:`~mx_train.learner.fsdp.LearnerGroup` when this process
    leads an FSDP group (``--learner-procs``); a sync for each engine whose model is not the learner's.
    ``engine_copy``: the learner never trains the engine's own model object but a deep copy of it
    (async rollouts: the engine samples the next step while the learner updates), so every engine
    gets a sync; one more model in memory."""
    from mx_train.learner.fsdp import make_learner
    from mx_train.weight_sync import EngineSync

    pc = config.policy
    learners: dict[str, Any] = {}
    syncs: dict[str, Any] = {}
    for role in ("designer", "executor"):
        backend = backends[role]
        existing = next((lr for r, lr in learners.items() if backends[r] is backend), None)
        if existing is not None:
            learners[role] = existing
            continue
        model = getattr(backend, "model", None)
        tokenizer = getattr(backend, "tokenizer", None)
        if model is None or not hasattr(model, "parameters"):
            # An engine that serves weights (vLLM): the learner trains its own copy and pushes it.
            model, tokenizer = _learner_copy(backend, role, pc.device)
        elif engine_copy:
            import copy

            model = copy.deepcopy(model)
        name = "policy" if not pc.executor_model else role
        learner = make_learner(model, config.learner, tokenizer=tokenizer, name=name)
        if not shares_model(backend, learner):
            sync = EngineSync(learner, backend, probe=config.rollout.logprob_probe,
                              pad_id=getattr(learner, "pad_token_id", 0) or 0)
            learner.on_weights_updated = sync.push
            syncs[role] = sync
        learners[role] = learner
    return learners, syncs


def _learner_copy(backend: Any, role: str, device: str) -> tuple[Any, Any]:
    """The learner's own fp32 copy of a serving engine's model (read from the engine's model path)."""
    path = getattr(backend, "model_path", None)
    if path is None or not hasattr(backend, "load_weights"):
        raise ValueError(
            f"the {role} backend {getattr(backend, 'name', backend)!r} neither exposes a torch model nor "
            "a model_path and load_weights; train with an HF or vLLM backend (HTTP backends cannot be updated)"
        )
    import torch

    from mx_agents.backends.hf import load_hf_model, load_hf_tokenizer, resolve_device

    return load_hf_model(path, resolve_device(device), torch.float32), load_hf_tokenizer(path)
