"""Training configuration: one YAML file maps onto :class:`TrainConfig`, checked when it is loaded.

Every value is checked against its dataclass field's annotation (``max_steps: "3"`` is an error,
not a ``TypeError`` minutes later), unknown keys and unknown registry names (estimator, policy loss,
env id, dataset options...) are :class:`~mx_envs.errors.ConfigError` s that name the key path and
suggest the closest known name. ``mx train --set a.b=value`` overrides any key (YAML-parsed value);
``plugins:`` / ``--plugin`` import user modules that register more names first.

Example (``configs/demo_cpu.yaml``)::

    seed: 0
    max_steps: 20
    env: {id: MetaAgentX-Arithmetic-v0, kwargs: {level: 1}}
    policy: {model: default}
    rollout: {tasks_per_step: 2, designs: 2, executions: 2}
    algorithm: {estimator: grpo, executor_group: task}
    learner: {lr: 1.0e-5, micro_batch_tokens: 4096}
    schedule: {mode: stagewise, phase_steps: 5, first: executor}
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mx_envs.errors import ConfigError, UnknownOption, unknown_name
from mx_train.learner.config import LearnerConfig

T = TypeVar("T")


@dataclass
class EnvConfig:
    id: str = "MetaAgentX-Arithmetic-v0"
    split: str = "train"  # training never draws from a test split unless the config says so
    kwargs: dict[str, Any] = field(default_factory=dict)  # env kwargs (data_path, budgets, reward, ...)
    allow_eval_split: bool = False  # explicit opt-in to train on an evaluation split


@dataclass
class PolicyConfig:
    model: str = "default"  # HF id / local path / "default" (embedded SmolLM2)
    executor_model: str | None = None  # None: shared policy (one model, both roles); else split policy
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    # Qwen3-style chat templates: ``enable_thinking`` (off, as the paper ran); ignored by templates without it.
    thinking: bool = False
    # Keyword arguments of the generation backend's constructor, e.g. for vLLM specs
    # ``{in_process: false}`` (engine core in a process of its own; weights reach it through shared
    # memory on CPU, CUDA IPC on GPU), ``max_model_len``, ``kv_cache_bytes``, ``tensor_parallel_size``;
    # for the HF engine ``kv_cache_mb``, ``prefix_cache_mb``, ``speculative: {max_draft: 8, min_match: 3}``
    # (n-gram drafts checked in one pass; replies keep the model's distribution, mx_agents/backends/drafts.py).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0  # the paper's designer: 1.1 (HF, vLLM; sent to vLLM-like servers)
    # Longer prompts get no reply (empty, finish "length"; SamplingParams.max_prompt_tokens). The paper: 8192.
    max_prompt_tokens: int | None = None

    def params(self) -> Any:
        """These settings as the backends' ``SamplingParams``."""
        from mx_agents.backends.base import SamplingParams

        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty, max_prompt_tokens=self.max_prompt_tokens,
        )


@dataclass
class AsyncRolloutConfig:
    """``rollout.async``: the rollout of step t+1 runs while step t's update does (mx_train.async_rollout).

    ``max_staleness`` (k >= 0): step s's rollout samples with the weights of step ``s - k`` (after
    ``s - k`` updates), so its samples are at most k updates older than the learner that trains on
    them; the rollout thread waits for those weights rather than running further ahead. k = 0 is the
    synchronous run, step for step; k >= 1 overlaps generation with the update (the engine then keeps
    its own copy of the weights: one more model in memory).
    """

    max_staleness: int = 1


@dataclass
class RolloutConfig:
    tasks_per_step: int = 8  # B
    designs: int = 4  # M designs per task
    executions: int = 4  # N executions per design (sampled, so they differ)
    designer: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    executor: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    step_workers: int = 1  # threads stepping envs (helps when scripts run tool calls)
    max_turns: int = 64
    # "continuous": one thread per episode, each LLM turn submitted when its sandbox asks (the engine
    # batches what is pending); "lockstep": rounds that wait for the slowest turn (mx_agents.rollout).
    schedule: str = "continuous"
    # Transitions per step on which engine vs learner log-probs are compared (rollout/logprob_diff_*).
    logprob_probe: int = 8
    # Extra designer prompt material (mx_agents DesignerPrompt): system_prompt replaces the env's
    # system message (e.g. a compact API reference for small models); examples: library design names.
    designer_prompt: dict[str, Any] = field(default_factory=dict)
    # A library design name or script file played on every designer turn (the executor is trained under
    # it, e.g. the "Single Agent + GRPO" baseline with `single`); None: the policy designs.
    fixed_design: str | None = None
    # YAML key ``async`` (a Python keyword, hence the field name): {max_staleness: k}; absent or null
    # = synchronous (rollout, then update, then push).
    async_: AsyncRolloutConfig | None = field(default=None, metadata={"key": "async"})


@dataclass
class AlgorithmConfig:
    estimator: str = "grpo"  # a name in mx_train.advantages (grpo, dr_grpo, rloo, reinforce_pp, ...)
    executor_group: str = "task"  # "task" (all M*N of a task) or "design" (the N of a design)
    normalize_std: bool = True


@dataclass
class ScheduleConfig:
    mode: str = "stagewise"  # stagewise | joint | designer_only | executor_only
    phase_steps: int = 30  # K
    first: str = "executor"


@dataclass
class WarmStartConfig:
    """Optional SFT before RL: teach the model the script API on library designs (cold start)."""

    # Library design names, design script files, or inline design scripts (text defining `forward`).
    designs: list[str] = field(default_factory=list)
    # SFT JSONL (e.g. from `mx sft-data`: teacher conversations graded correct) mixed into the cold start.
    data: str | None = None
    steps: int = 0
    lr: float = 1e-4
    # "constant" or "cosine" (to 0 over ``steps``): a decaying LR ends the cold start near the average
    # of its last steps rather than wherever the last step threw it (which design the cold-start
    # designer prefers is decided by a handful of tokens, and moves a lot per step at a high LR).
    lr_schedule: str = "constant"
    tasks: int = 8  # designer prompts (training tasks) paired with each design
    batch_size: int = 4
    save: bool = False  # also save the cold-start policy under RUN/cold_start/checkpoints/
    # "bfloat16": round the cold-start weights to bf16 before RL starts and save them so: the saved
    # copy is then exactly the RL starting point at half the size (the CPU demo's run directory
    # holds it next to the trained weights). "float32": as trained.
    save_dtype: str = "float32"


@dataclass
class DistributedConfig:
    """Processes of a run and their resources; :mod:`mx_train.placement` turns them into one plan."""

    backend: str = "local"  # "local" or "ray"
    num_rollout_workers: int = 2  # Ray rollout engines (actors)
    # None: start a local Ray instance sized for the plan; "HOST:PORT": join that cluster (token auth
    # is switched on when ~/.ray/auth_token exists; see mx_train.distributed.connect).
    ray_address: str | None = None
    worker_cpus: float = 1.0  # CPUs per rollout engine
    # GPUs per rollout engine on a GPU run: a fraction packs engines onto one GPU, a whole number > 1 is
    # a multi-GPU engine. Ray pins each engine to its own GPU id(s).
    worker_gpus: float = 0.0
    learner_procs: int = 1  # FSDP learner processes (`mx train --learner-procs N` overrides)
    learner_cpus: float = 1.0  # CPUs per learner rank (the driver's included)
    # Share of a GPU per learner rank on a GPU run: 1.0 its own GPU; below 1 the rest of that GPU goes to
    # rollout engines (colocated placement).
    learner_gpus: float = 1.0
    # "auto": learners and engines on GPUs of their own when the cluster has enough, else colocated;
    # "split" / "colocated" force one (mx_train.placement).
    placement: str = "auto"
    # Bound on the wait for the placement group once the plan fits the cluster's totals (other jobs may
    # hold resources): past it the run stops with what was free.
    placement_timeout_s: float = 120.0
    weight_bucket_mb: int = 256  # driver -> engine weight broadcast bucket size (MiB)
    # Rollout workers that die (process killed, node lost) are replaced by a fresh actor in the same
    # slot, given the current weights, and their episodes of the step re-run: at most this many times in
    # a run (counted in the metrics as distributed/worker_restarts); one more death stops the run.
    max_worker_restarts: int = 3


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 20
    out: str = "runs/train"
    save_every: int = 1  # weights-only checkpoint (enough for `mx eval --policy RUN`) every N steps
    # A full checkpoint (weights + optimizer + RNG states: what --resume needs) every N steps and at the
    # end; 0 = only at the end. Weights-only saves in between keep a small model's run light on disk.
    full_save_every: int = 10
    keep_last: int = 3  # newest checkpoints kept (the newest full one is always kept as well)
    # The checkpoint of the last step when the run completes: "full" (resumable: `--resume --max-steps`
    # can extend the run) or "weights" (enough to evaluate; the run's other checkpoints, full ones
    # included, are then removed). A run killed before its end resumes either way from its newest full
    # checkpoint. "weights" keeps a small run's directory at its models' size (the CPU demo).
    final_checkpoint: str = "full"
    # Modules (dotted names or .py files) imported before the config's names are checked: they may
    # register advantage estimators, policy losses or datasets (also `mx train --plugin`).
    plugins: list[str] = field(default_factory=list)
    tensorboard: bool = True
    wandb: dict[str, Any] | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    # Several envs in one run (mx_train.env_mix): a list of {id, weight, split, kwargs, name,
    # allow_eval_split}; each task of a step picks an env by weight. Empty: the single `env`.
    envs: list[dict[str, Any]] = field(default_factory=list)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # built once here, passed to the learners
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: Sequence[str] = (), plugins: Sequence[str] = ()) -> TrainConfig:
        """A checked config from a mapping: ``overrides`` are ``a.b=value`` strings (YAML values),
        ``plugins`` are modules imported (after the config's own ``plugins:``) before registry names
        are checked. Every mistake is a :class:`~mx_envs.errors.ConfigError` naming its key."""
        data = apply_overrides(data, overrides)
        if plugins:
            data["plugins"] = [*(data.get("plugins") or []), *plugins]
        learner = data.get("learner")
        retired = learner.pop("temperature", None) if isinstance(learner, dict) else None
        cfg = _build(cls, data, "config")
        if retired is not None:
            cfg._retire_learner_temperature(retired)
        cfg.check_names()
        return cfg

    def _retire_learner_temperature(self, value: Any) -> None:
        """``learner.temperature`` of older configs: the learner scores each turn at the temperature
        recorded on its transition, so the key says nothing. Accepted (with a warning) where it
        repeats the rollout temperatures, as older loads forced; anything else is an error."""
        import warnings

        from mx_train.learner.config import RETIRED_TEMPERATURE

        temps = {self.rollout.designer.temperature, self.rollout.executor.temperature}
        if not isinstance(value, int | float) or isinstance(value, bool) or {float(value)} != temps:
            raise ConfigError(f"{RETIRED_TEMPERATURE}; this config has rollout temperatures {sorted(temps)}",
                              key="learner.temperature")
        warnings.warn(f"learner.temperature is ignored (remove it): {RETIRED_TEMPERATURE}", UserWarning,
                      stacklevel=3)

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], overrides: Sequence[str] = (), plugins: Sequence[str] = ()
    ) -> TrainConfig:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level of a config must be a mapping")
        return cls.from_dict(data, overrides, plugins)

    def check_names(self) -> None:
        """Registry names and choices, checked at load time with their key paths (after importing
        ``plugins``, which may register more names)."""
        from mx_train.plugins import load_plugins

        load_plugins(self.plugins, key="plugins")
        from mx_train.advantages import ADVANTAGE_ESTIMATORS
        from mx_train.learner.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
        from mx_train.schedule import MODES, ROLES

        ADVANTAGE_ESTIMATORS.get(self.algorithm.estimator, key="algorithm.estimator")
        _choice("algorithm.executor_group", self.algorithm.executor_group, ("task", "design"))
        _choice("schedule.mode", self.schedule.mode, MODES, "co-evolution mode")
        _choice("schedule.first", self.schedule.first, ROLES, "role")
        _choice("distributed.backend", self.distributed.backend, ("local", "ray"), "backend")
        from mx_train.placement import PLACEMENTS

        _choice("distributed.placement", self.distributed.placement, PLACEMENTS, "placement")
        lc = self.learner
        POLICY_LOSSES.get(lc.policy_loss, key="learner.policy_loss")
        KL_ESTIMATORS.get(lc.kl_estimator, key="learner.kl_estimator")
        _choice("learner.loss_agg", lc.loss_agg, AGGREGATIONS, "loss aggregation")
        # Other learner choices are the learner's own (LearnerConfig.validate, in validate()).
        for i, (env, _weight, _name) in enumerate(self.env_entries()):
            _check_env(env, "env" if not self.envs else f"envs[{i}]")

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML would write it (fields under their YAML keys: ``rollout.async``)."""
        return _as_yaml_dict(self)

    def env_entries(self) -> list[tuple[EnvConfig, float, str | None]]:
        """``(env config, sampling weight, metrics name or None)`` per training env: the ``envs``
        list when given, else the single ``env`` with weight 1."""
        if not self.envs:
            return [(self.env, 1.0, None)]
        out = []
        for i, raw in enumerate(self.envs):
            if not isinstance(raw, dict):
                raise ValueError(f"config.envs[{i}]: expected a mapping, got {type(raw).__name__}")
            entry = dict(raw)
            weight = entry.pop("weight", 1.0)
            name = entry.pop("name", None)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
                raise ValueError(f"config.envs[{i}].weight must be a positive number, got {weight!r}")
            if "id" not in entry:
                raise ValueError(f"config.envs[{i}] needs an 'id' (a registered env id)")
            out.append((_build(EnvConfig, entry, f"config.envs[{i}]"), float(weight), name))
        return out

    def validate(self) -> None:
        self.env_entries()
        r = self.rollout
        for name in ("tasks_per_step", "designs", "executions"):
            if getattr(r, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(r, name)}", key=f"rollout.{name}")
        if r.async_ is not None:
            k = r.async_.max_staleness
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ConfigError(f"must be an integer >= 0 (0: the synchronous run, step for step), got {k!r}",
                                  key="rollout.async.max_staleness")
        if r.schedule not in ("continuous", "lockstep"):
            raise ConfigError(f"must be 'continuous' or 'lockstep', got {r.schedule!r}", key="rollout.schedule")
        from mx_agents.backends.sampling import validate_params

        for role in ("designer", "executor"):
            try:  # at load time, with the key path, rather than at the first generation
                validate_params(getattr(r, role).params())
            except ValueError as exc:
                raise ConfigError(str(exc), key=f"rollout.{role}") from None
        if self.max_steps < 0:
            raise ConfigError(f"must be >= 0, got {self.max_steps}", key="max_steps")
        if self.save_every < 1:
            raise ConfigError(f"must be >= 1, got {self.save_every}", key="save_every")
        if self.full_save_every < 0:
            raise ConfigError(f"must be >= 0 (0: only at the end), got {self.full_save_every}", key="full_save_every")
        if self.warm_start.save_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"must be 'float32' or 'bfloat16', got {self.warm_start.save_dtype!r}",
                              key="warm_start.save_dtype")
        if self.final_checkpoint not in ("full", "weights"):
            raise ConfigError(f"must be 'full' or 'weights', got {self.final_checkpoint!r}", key="final_checkpoint")
        self.check_names()
        self._validate_distributed()
        from mx_train.schedule import CoEvolutionSchedule

        lc = self.learner
        try:
            lc.validate()
        except ConfigError:
            raise
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc.args[0] if isinstance(exc, KeyError) else exc), key="learner") from None
        try:
            CoEvolutionSchedule(self.schedule.mode, self.schedule.phase_steps, self.schedule.first)
        except ValueError as exc:
            raise ConfigError(str(exc), key="schedule") from None

    def _validate_distributed(self) -> None:
        from mx_train.placement import check_gpu_request

        d = self.distributed
        if d.num_rollout_workers < 1:
            raise ConfigError(f"must be >= 1, got {d.num_rollout_workers}", key="distributed.num_rollout_workers")
        if d.learner_procs < 1:
            raise ConfigError(f"must be >= 1, got {d.learner_procs}", key="distributed.learner_procs")
        for name in ("worker_cpus", "learner_cpus", "placement_timeout_s"):
            if not getattr(d, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(d, name):g}", key=f"distributed.{name}")
        try:
            check_gpu_request(d.worker_gpus, "distributed.worker_gpus")
        except ValueError as exc:
            raise ConfigError(str(exc), key="distributed.worker_gpus") from None
        if not 0 < d.learner_gpus <= 1:
            raise ConfigError(f"must be in (0, 1] (a learner rank uses one GPU, or a share of it), got "
                              f"{d.learner_gpus:g}", key="distributed.learner_gpus")
        if d.max_worker_restarts < 0:
            raise ConfigError(f"must be >= 0 (0: a dead rollout worker stops the run), got {d.max_worker_restarts}",
                              key="distributed.max_worker_restarts")
        if d.weight_bucket_mb < 1:
            raise ConfigError(f"must be >= 1 (MiB), got {d.weight_bucket_mb}", key="distributed.weight_bucket_mb")
        if d.ray_address is not None and not str(d.ray_address).strip():
            raise ConfigError("is empty: leave it out (null) for a local Ray instance", key="distributed.ray_address")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``a.b.c=value`` overrides applied (``value`` parsed as YAML, so
    ``max_steps=3`` is an int and ``designs=[single, vote]`` a list). Unknown keys are caught later,
    by the typed build, with a suggestion."""
    import copy

    import yaml

    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set wants KEY.PATH=VALUE (e.g. learner.lr=1e-5), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"value {raw!r} is not valid YAML: {' '.join(str(exc).split())}", key=key) from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"is {type(child).__name__}, not a mapping: cannot set {key}",
                                  key=".".join(parts[: i + 1]))
            node = child
        node[parts[-1]] = value
    return out


def _choice(key: str, value: Any, known: Sequence[str], kind: str = "value") -> None:
    if value not in known:
        raise unknown_name(kind, value, known, key=key)


def _check_env(env: EnvConfig, key: str) -> None:
    """The env id is registered and, for a MetaAgentX id, its kwargs and loader options exist."""

    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the ids
    from mx_envs.envs.registration import check_env_id

    check_env_id(env.id, key=f"{key}.id")
    entry_point = gym.spec(env.id).entry_point
    if not (isinstance(entry_point, str) and entry_point.startswith("mx_envs.")):
        return
    from mx_envs.envs.settings import ENV_KEYWORDS
    from mx_envs.tasks.registry import DATASETS, check_load_options, check_split

    dataset = env.kwargs.get("dataset") or (gym.spec(env.id).kwargs or {}).get("dataset")
    params = list(ENV_KEYWORDS)
    options = DATASETS[dataset].options if dataset in DATASETS and "tasks" not in env.kwargs else ()
    for name in env.kwargs:
        if name not in params and name not in options:
            raise unknown_name("env keyword", name, [*params, *options], key=f"{key}.kwargs", cls=UnknownOption)
    loader = {**(env.kwargs.get("loader_kwargs") or {}), **{k: v for k, v in env.kwargs.items() if k in options}}
    if dataset and "tasks" not in env.kwargs:
        spec = check_load_options(dataset, loader, key=f"{key}.kwargs.loader_kwargs")
        split_key = f"{key}.kwargs.split" if "split" in env.kwargs else f"{key}.split"
        check_split(spec, env.kwargs.get("split", env.split), split_key)


def _build(cls: type[T], data: Any, where: str) -> T:
    """An instance of dataclass ``cls`` from ``data``, every value checked against the field's
    annotation (nested dataclasses recursively). ``where`` is the key path, for messages.

    The types come from the dataclass annotations themselves, so a field added to any config
    dataclass is validated without further code."""
    key = _key(where)
    if data is None:
        return cls()  # type: ignore[call-arg]
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__} {data!r}", key=key or None)
    # A field's YAML key is its name unless its metadata says otherwise (``async``: a keyword).
    fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            raise unknown_name("key", name, fields, key=key or None)
        attr = fields[name].name
        kwargs[attr] = _coerce(value, hints.get(attr, Any), sub)
    return cls(**kwargs)


def _yaml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _as_yaml_dict(obj: Any) -> Any:
    """``dataclasses.asdict`` with each field under its YAML key, so ``from_dict(to_dict())`` round-trips."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {_yaml_key(f): _as_yaml_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return type(obj)(_as_yaml_dict(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _as_yaml_dict(v) for k, v in obj.items()}
    import copy

    return copy.deepcopy(obj)


def _key(where: str) -> str:
    return "" if where == "config" else where.removeprefix("config.")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                "list": "a list", "dict": "a mapping", "tuple": "a list"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp``; returns it (tuples and floats normalised)."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"expected {' or '.join(_type_name(a) for a in args)}, got {_show(value)}", key=key)
    if origin is typing.Literal:
        if value not in args:
            raise unknown_name("value", value, [str(a) for a in args], key=key)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_show(value)}", key=key)
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_show(value)}", key=key)
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"expected a list of {len(args)} items, got {len(value)}: {value!r}", key=key)
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        return tuple(_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_show(value)}", key=key)
        kt, vt = (args + (Any, Any))[:2] if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true/false, got {_show(value)}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_show(value)}", key=key)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {_show(value)}", key=key)
        if isinstance(value, int | float):
            return float(value)
        # YAML 1.1 reads an unquoted 1e-5 (no dot) as a string: accept what is written as a number.
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        raise ConfigError(f"expected a number, got {_show(value)}", key=key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_show(value)}", key=key)
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"expected {_type_name(tp)}, got {_show(value)}", key=key)
    return value


def _show(value: Any) -> str:
    kind = {str: "the string", bool: "the boolean", int: "the integer", float: "the number",
            list: "the list", dict: "the mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return kind if value is None else f"{kind} {value!r}"
