"""The env's settings in three typed groups: which tasks (:class:`TaskSettings`), how an episode is
rewarded (:class:`~mx_envs.envs.reward.RewardConfig`) and what it may spend (:class:`BudgetSettings`).

:class:`~mx_envs.envs.meta_env.MetaAgentXEnv` takes the groups (``task=``, ``reward=``,
``budgets=``) or, as ``gym.make`` and YAML configs give them, flat keywords: :func:`group_kwargs`
sorts each flat keyword into its group (``limit`` -> task, ``invalid_design_penalty`` -> reward,
``max_action_chars`` -> budgets); keywords of none of them are the dataset's own loader options
(``level=3`` for Arithmetic) or a :class:`~mx_envs.errors.ConfigError` naming the closest keyword.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from mx_envs.envs.reward import RewardConfig
from mx_envs.mas.protocol import Budgets
from mx_envs.tasks.record import Task

DEFAULT_MAX_OBSERVATION_CHARS = 1_000_000
DEFAULT_MAX_ACTION_CHARS = 200_000


@dataclass(frozen=True)
class TaskSettings:
    """Which tasks an env draws from: ``tasks`` as given, or ``dataset`` loaded with ``split``,
    ``data_path``, ``fixture`` (the small packaged fixture set) and the loader's own ``options``.
    ``limit`` keeps the first N tasks; it is applied once, by the loader or to the given list."""

    dataset: str | None = None
    tasks: tuple[Task, ...] | None = None
    split: str | None = None
    data_path: str | None = None
    fixture: bool = False
    limit: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # loader options (``level``, ``n``, ...)

    def load(self) -> list[Task]:
        """The task list (checked: :class:`Task` records, unique ids, at least one)."""
        limit = None if self.limit is None else int(self.limit)
        if self.tasks is None:
            if not self.dataset:
                raise ValueError("MetaAgentXEnv needs a dataset name or a list of tasks")
            from mx_envs.errors import ConfigError, UnknownOption
            from mx_envs.tasks import load_tasks

            kwargs: dict[str, Any] = dict(self.options)
            if self.split is not None:
                kwargs["split"] = self.split
            if self.data_path is not None:
                kwargs["path"] = self.data_path
            if self.fixture:
                kwargs["fixture"] = True
            if limit is not None:
                kwargs["limit"] = limit
            try:
                tasks = list(load_tasks(self.dataset, **kwargs))
            except UnknownOption as exc:  # as a plain ConfigError: gym.make rewraps TypeErrors
                raise ConfigError(exc.message, key=exc.key, suggestions=exc.suggestions) from None
        else:
            tasks = list(self.tasks) if limit is None else list(self.tasks[:limit])
        if not tasks:
            raise ValueError(f"no tasks to draw from (dataset={self.dataset!r}, split={self.split!r}, "
                             f"limit={self.limit!r})")
        bad = [type(t).__name__ for t in tasks if not isinstance(t, Task)]
        if bad:
            raise TypeError(f"tasks must be mx_envs.tasks.record.Task records, got {bad[0]}")
        if len({t.id for t in tasks}) != len(tasks):
            raise ValueError("task ids must be unique within an env")
        return tasks


@dataclass(frozen=True)
class BudgetSettings:
    """What an episode may spend: the design script's :class:`~mx_envs.mas.protocol.Budgets` (LLM
    calls, agents, wall time, tools), the longest observation (its messages JSON; a sub-agent chat
    over it ends the episode with ``budget_exceeded``) and the longest accepted action text."""

    script: Budgets = field(default_factory=Budgets)
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS
    max_action_chars: int = DEFAULT_MAX_ACTION_CHARS

    @classmethod
    def of(cls, value: BudgetSettings | Budgets | Mapping[str, Any] | None, **limits: Any) -> BudgetSettings:
        """From a :class:`BudgetSettings`, a :class:`Budgets` or a dict of its fields (``budgets=``),
        with the flat ``max_observation_chars`` / ``max_action_chars`` keywords that are not ``None``."""
        given = {k: int(v) for k, v in limits.items() if v is not None}
        if isinstance(value, BudgetSettings):
            return dataclasses.replace(value, **given)
        return cls(script=_script_budgets(value), **given)


def _script_budgets(value: Budgets | Mapping[str, Any] | None) -> Budgets:
    if value is None:
        return Budgets()
    if isinstance(value, Budgets):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(Budgets)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown budgets {sorted(unknown)}; known: {sorted(known)}")
        return Budgets(**value)
    raise TypeError(f"budgets must be a Budgets or a dict, got {type(value).__name__}")


# Flat keywords per group, as gym.make / YAML configs give them.
TASK_KEYWORDS = ("tasks", "split", "data_path", "fixture", "limit", "loader_kwargs")
REWARD_KEYWORDS = tuple(f.name for f in fields(RewardConfig))
BUDGET_KEYWORDS = ("max_observation_chars", "max_action_chars")
# The constructor's own keywords besides the groups' flat ones.
ENV_OWN_KEYWORDS = ("dataset", "task", "reward", "budgets", "sandbox", "grader_kwargs", "designer_examples",
                    "render_mode")
ENV_KEYWORDS = (*ENV_OWN_KEYWORDS, *TASK_KEYWORDS, *REWARD_KEYWORDS, *BUDGET_KEYWORDS)


@dataclass(frozen=True)
class GroupedKwargs:
    """An env's flat keywords sorted into its three groups."""

    task: TaskSettings
    reward: RewardConfig
    budgets: BudgetSettings


def group_kwargs(
    dataset: str | None,
    task: TaskSettings | Mapping[str, Any] | None,
    reward: RewardConfig | Mapping[str, Any] | None,
    budgets: BudgetSettings | Budgets | Mapping[str, Any] | None,
    flat: Mapping[str, Any],
) -> GroupedKwargs:
    """The three groups from the grouped arguments and the flat keywords (which override single
    fields). A keyword of no group must be an option of the dataset's loader."""
    task_kw = {k: flat[k] for k in TASK_KEYWORDS if k in flat}
    reward_kw = {k: flat[k] for k in REWARD_KEYWORDS if k in flat}
    budget_kw = {k: flat[k] for k in BUDGET_KEYWORDS if k in flat}
    rest = {k: v for k, v in flat.items() if k not in task_kw and k not in reward_kw and k not in budget_kw}
    if isinstance(task, Mapping):  # a YAML config's ``task:`` block
        known = {f.name for f in fields(TaskSettings)}
        if unknown := sorted(set(task) - known):
            raise ValueError(f"unknown task settings {unknown}; known: {sorted(known)}")
        task = TaskSettings(**task)
    base = task or TaskSettings()
    name = base.dataset if dataset is None else dataset
    tasks = task_kw.get("tasks", base.tasks)
    if rest:
        _check_dataset_options(name if tasks is None else None, rest)
    options = {**base.options, **(task_kw.get("loader_kwargs") or {}), **rest}
    selected = dataclasses.replace(
        base,
        dataset=name,
        tasks=None if tasks is None else tuple(tasks),
        options=options,
        **{k: v for k, v in task_kw.items() if k in ("split", "data_path", "fixture", "limit") and v is not None},
    )
    if isinstance(reward, Mapping):
        reward = dict(reward)
    return GroupedKwargs(
        task=selected,
        reward=RewardConfig.from_kwargs(reward, **reward_kw),
        budgets=BudgetSettings.of(budgets, **budget_kw),
    )


def _check_dataset_options(dataset: str | None, options: Mapping[str, Any]) -> None:
    from mx_envs.errors import unknown_name
    from mx_envs.tasks.registry import DATASETS

    allowed: Sequence[str] = DATASETS[dataset].options if dataset in DATASETS else ()
    for name in options:
        if name not in allowed:
            raise unknown_name("env keyword", name, [*ENV_KEYWORDS, *allowed])
