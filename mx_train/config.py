"""Training configuration: one YAML file maps onto :class:`TrainConfig` (unknown keys are errors).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256


@dataclass
class RolloutConfig:
    tasks_per_step: int = 8  # B
    designs: int = 4  # M designs per task
    executions: int = 4  # N executions per design (sampled, so they differ)
    designer: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    executor: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512))
    step_workers: int = 1  # threads stepping envs (helps when scripts run tool calls)
    max_turns: int = 64
    # Extra designer prompt material (mx_agents DesignerPrompt): system_prompt replaces the env's
    # system message (e.g. a compact API reference for small models); examples: library design names.
    designer_prompt: dict[str, Any] = field(default_factory=dict)


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

    # Library design names or inline design scripts (text defining `forward`); empty = no warm start.
    designs: list[str] = field(default_factory=list)
    steps: int = 0
    lr: float = 1e-4
    tasks: int = 8  # designer prompts (training tasks) paired with each design
    batch_size: int = 4


@dataclass
class DistributedConfig:
    backend: str = "local"  # "local" or "ray"
    num_rollout_workers: int = 2
    ray_address: str | None = None  # None: start/attach a local Ray instance
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 20
    out: str = "runs/train"
    save_every: int = 1
    keep_last: int = 3
    tensorboard: bool = True
    wandb: dict[str, Any] | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: dict[str, Any] = field(default_factory=dict)  # mx_train.learner.LearnerConfig fields
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: the top level of a config must be a mapping")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        r = self.rollout
        if min(r.tasks_per_step, r.designs, r.executions) < 1:
            raise ValueError("rollout.tasks_per_step, designs and executions must be >= 1")
        if self.algorithm.executor_group not in ("task", "design"):
            raise ValueError(f"algorithm.executor_group must be 'task' or 'design', got {self.algorithm.executor_group!r}")
        if self.distributed.backend not in ("local", "ray"):
            raise ValueError(f"distributed.backend must be 'local' or 'ray', got {self.distributed.backend!r}")
        if self.max_steps < 0 or self.save_every < 1:
            raise ValueError("max_steps must be >= 0 and save_every >= 1")
        from mx_train.advantages import ADVANTAGE_ESTIMATORS

        if self.algorithm.estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"unknown advantage estimator {self.algorithm.estimator!r}; known: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}"
            )
        from mx_train.learner import LearnerConfig
        from mx_train.schedule import CoEvolutionSchedule

        lc = LearnerConfig.from_dict(self.learner)
        lc.validate()
        if lc.old_logprobs == "sampling":
            temps = {r.designer.temperature, r.executor.temperature}
            if temps != {lc.temperature}:
                raise ValueError(
                    f"learner.old_logprobs: sampling needs the rollout temperatures {sorted(temps)} to equal "
                    f"learner.temperature {lc.temperature} (the sampling logprobs are at the sampling temperature)"
                )
        CoEvolutionSchedule(self.schedule.mode, self.schedule.phase_steps, self.schedule.first)


def _build(cls: type[T], data: Any, where: str) -> T:
    if data is None:
        return cls()  # type: ignore[call-arg]
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub is not None else value
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "EnvConfig": EnvConfig,
    "PolicyConfig": PolicyConfig,
    "SamplingConfig": SamplingConfig,
    "RolloutConfig": RolloutConfig,
    "AlgorithmConfig": AlgorithmConfig,
    "ScheduleConfig": ScheduleConfig,
    "WarmStartConfig": WarmStartConfig,
    "DistributedConfig": DistributedConfig,
}
