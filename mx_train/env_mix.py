"""Several training envs in one run (the paper trains one policy on math and code together).

A config's ``envs: [{id, weight, kwargs, split, name}]`` lists the envs; each of the B tasks of a step
picks an env with probability proportional to ``weight`` and then that env's next task (each env keeps
its own epoch-wise permutation), so one batch mixes envs and every LLM turn of the mix is batched
together.

The rollout engine hands one env per episode slot and resets it with a ``task_id``; a slot must play
whichever env the task of that slot belongs to. :class:`MixedEnv` is that slot: task ids are
qualified as ``"<env index>::<task id>"`` and ``reset`` routes to the sub-env of that index (made on
first use, then reused), every other call goes to the sub-env of the current episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SEP = "::"


@dataclass(frozen=True)
class EnvEntry:
    """One env of a mix: how to make it, its sampling weight and the name its metrics carry."""

    name: str
    env_id: str
    weight: float
    factory: Callable[[], Any]
    task_ids: list[str]


def qualify(index: int, task_id: str) -> str:
    return f"{index}{SEP}{task_id}"


def split_qualified(key: str) -> tuple[int, str]:
    """``"2::arithmetic/L3/train/0/7"`` -> ``(2, "arithmetic/L3/train/0/7")``."""
    head, sep, tail = key.partition(SEP)
    if not sep or not head.isdigit():
        raise KeyError(f"task id {key!r} is not qualified with an env index (expected 'K{SEP}TASK_ID')")
    return int(head), tail


class MixedEnv:
    """An episode slot that plays tasks of several envs (see the module docstring)."""

    def __init__(self, factories: Sequence[Callable[[], Any]]) -> None:
        if not factories:
            raise ValueError("MixedEnv needs at least one env factory")
        self._factories = list(factories)
        self._envs: dict[int, Any] = {}
        self._active: Any = None

    def _env(self, index: int) -> Any:
        if not 0 <= index < len(self._factories):
            raise KeyError(f"env index {index} out of range for a mix of {len(self._factories)} envs")
        if index not in self._envs:
            self._envs[index] = self._factories[index]()
        return self._envs[index]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        opts = dict(options or {})
        if "task_id" not in opts:
            raise ValueError("a MixedEnv episode needs options={'task_id': 'K::TASK_ID'} (which env plays it)")
        index, task_id = split_qualified(str(opts["task_id"]))
        self._active = self._env(index)
        opts["task_id"] = task_id
        return self._active.reset(seed=seed, options=opts)

    def step(self, action: Any) -> Any:
        if self._active is None:
            raise RuntimeError("step() before reset()")
        return self._active.step(action)

    @property
    def unwrapped(self) -> Any:
        return (self._active if self._active is not None else self._env(0)).unwrapped

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._active = None

    def __getattr__(self, name: str) -> Any:  # render, timings, trajectories...: the current episode's env
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._active if self._active is not None else self._env(0), name)


def env_label(env_id: str) -> str:
    """``MetaAgentX-Arithmetic-v0`` -> ``Arithmetic``."""
    name = env_id.removeprefix("MetaAgentX-")
    head, sep, tail = name.rpartition("-v")
    return head if sep and tail.isdigit() else name


