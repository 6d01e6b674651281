"""Hierarchical rollouts: per task, M designs x N executions ("design once, execute N times").

:func:`run_design_groups` asks the policy for M designs of each task in one batched call, then runs
every (task, design, execution) as its own episode, all N executions of a design replaying the same
design text (the env is reset on the same task and the design is played on its designer turn), with
every pending executor turn of all T*M*N episodes batched per round. Group ids are explicit:
``task_uid`` per task, ``design_id`` = m, ``execution_id`` = n.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mx_agents.action import Action
from mx_agents.observation import parse_observation
from mx_agents.policies.base import Policy
from mx_agents.rollout import EpisodeRecord, GroupIds, RolloutStats, _close_envs, run_episodes
from mx_agents.transition import Transition


@dataclass
class DesignGroupRollout:
    """The result: ``designs[t][m]`` (the sampled design actions) and ``records`` (T*M*N episodes,
    ordered by task, design, execution; ``record.groups`` says which)."""

    task_uids: list[str]
    task_ids: list[str]
    designs: list[list[Action]]
    records: list[EpisodeRecord]
    n_executions: int
    run_id: str
    stats: RolloutStats = field(default_factory=RolloutStats)
    task_positions: list[int] | None = None  # each task's position in the whole step (a shard's tasks)

    def executions(self, t: int, m: int) -> list[EpisodeRecord]:
        n = self.n_executions
        m_count = len(self.designs[t])
        start = (t * m_count + m) * n
        return self.records[start : start + n]

    def execution_rewards(self) -> dict[tuple[str, int, int], float]:
        """``{(task_uid, design_id, execution_id): reward}``, for designs whose executions had no LLM turn."""
        return {(r.groups.task_uid, r.groups.design_id, r.groups.execution_id): float(r.reward) for r in self.records}

    def design_reward(self, t: int, m: int) -> float:
        execs = self.executions(t, m)
        return sum(r.reward for r in execs) / len(execs)

    def transitions(self, policy_version: int = 0) -> list[Transition]:
        """Each sampled design once (reward: the mean of its N executions), then every executor LLM turn."""
        out: list[Transition] = []
        for t, per_task in enumerate(self.designs):
            for m, design in enumerate(per_task):
                if not design.from_llm:
                    continue
                execs = self.executions(t, m)
                first = execs[0]
                turn = next(x for x in first.turns if x.role == "designer")
                tr = first.transition(turn, policy_version, reward=self.design_reward(t, m))
                pos = self.task_positions[t] if self.task_positions is not None else t
                tr.episode_id = f"{self.run_id}-design-{pos}-{m}"
                tr.execution_id = 0
                tr.metadata["execution_rewards"] = [float(r.reward) for r in execs]
                tr.metadata["termination_reasons"] = [r.termination_reason for r in execs]
                out.append(tr)
        for r in self.records:
            out.extend(r.transitions(policy_version))
        return out


def run_design_groups(
    envs: Sequence[Any] | Callable[[], Any],
    policy: Policy,
    task_ids: Sequence[str],
    n_designs: int,
    n_executions: int,
    *,
    seed: int | None = None,
    task_uids: Sequence[str] | None = None,
    progress: bool = True,
    batch: bool = True,
    step_workers: int = 1,
    max_turns: int = 256,
    run_id: str | None = None,
    schedule: str = "lockstep",
    task_positions: Sequence[int] | None = None,
) -> DesignGroupRollout:
    """Sample ``n_designs`` designs per task, execute each ``n_executions`` times, return everything.

    ``envs``: a factory (called T*M*N times; those envs are closed at the end) or at least T*M*N
    envs (reused as they are; the first T*M also serve the design round). ``task_uids`` default to
    the task ids (made unique with ``#k`` when a task repeats). ``seed`` seeds the env resets
    (``seed + k`` for the k-th episode of the step). ``task_positions``: each task's position in
    the step's whole task list when this call plays a shard of it (a Ray rollout worker); default
    ``0..T-1``.

    Sampling seeds are the policy's; with a seeded policy and a named run (``run_id``) or seeded
    envs, every request's seed derives from (policy seed, run, task uid, design, execution, turn)
    (:attr:`~mx_agents.observation.ActorTurn.seed_key`), not from the order requests reach the
    policy: a shard of the tasks played in another process samples exactly what the whole list
    played here samples, in lock-step or continuous schedule alike.
    """
    if n_designs <= 0 or n_executions <= 0:
        raise ValueError("n_designs and n_executions must be positive")
    task_ids = [str(t) for t in task_ids]
    if not task_ids:
        raise ValueError("no task ids")
    total = len(task_ids) * n_designs * n_executions
    uids = _task_uids(task_ids, task_uids)
    env_list, owned = _env_list(envs, total, f"{len(task_ids)} tasks x {n_designs} x {n_executions}")
    positions = list(range(len(task_ids))) if task_positions is None else [int(p) for p in task_positions]
    if len(positions) != len(task_ids):
        raise ValueError(f"task_positions: got {len(positions)} for {len(task_ids)} tasks")
    # Keyed sampling seeds only when the run is reproducible anyway (named, or seeded envs).
    key_base = run_id or ("seeded" if seed is not None else None)
    run_id = run_id or uuid.uuid4().hex[:12]
    stats = RolloutStats()
    try:
        design_keys = None if key_base is None else [
            f"{key_base}|{uid}|{m}|design" for uid in uids for m in range(n_designs)]
        designs = sample_designs(env_list, policy, task_ids, n_designs, seed=seed, stats=stats,
                                 task_positions=positions, seed_keys=design_keys)
        records = execute_designs(
            env_list[:total], policy, task_ids, uids, designs, n_executions, seed=seed, stats=stats, run_id=run_id,
            progress=progress, batch=batch, step_workers=step_workers, max_turns=max_turns, schedule=schedule,
            task_positions=positions,
        )
    finally:
        if owned:
            _close_envs(env_list)
    return DesignGroupRollout(uids, task_ids, designs, records, n_executions, run_id, stats,
                              task_positions=None if task_positions is None else positions)


def sample_designs(
    envs: Sequence[Any], policy: Policy, task_ids: Sequence[str], n_designs: int, *, seed: int | None = None,
    stats: RolloutStats | None = None, task_positions: Sequence[int] | None = None,
    seed_keys: Sequence[str] | None = None,
) -> list[list[Action]]:
    """The design round: ``designs[t][m]`` for each task, from one batched ``policy.act`` call over
    the designer observations of ``envs[t * n_designs + m]`` (reset on task ``t`` with seed
    ``seed + p * n_designs + m``, ``p`` the task's position, default ``t``); ``seed_keys`` (one per
    design, task-major) key each request's sampling seed."""
    import dataclasses

    positions = list(range(len(task_ids))) if task_positions is None else list(task_positions)
    design_turns = []
    for t, tid in enumerate(task_ids):
        for m in range(n_designs):
            env = envs[t * n_designs + m]
            reset_seed = None if seed is None else seed + positions[t] * n_designs + m
            obs, _ = env.reset(seed=reset_seed, options={"task_id": tid})
            turn = parse_observation(obs)
            if turn.role != "designer":
                raise RuntimeError(f"reset of task {tid!r} did not return a designer turn (agent {turn.agent!r})")
            if seed_keys is not None:
                turn = dataclasses.replace(turn, seed_key=seed_keys[t * n_designs + m])
            design_turns.append(turn)
    actions = policy.act(design_turns)
    if stats is not None:
        stats.act_calls += 1
    if len(actions) != len(design_turns):
        raise RuntimeError(f"policy {policy.name!r} returned {len(actions)} actions for {len(design_turns)} turns")
    return [actions[t * n_designs : (t + 1) * n_designs] for t in range(len(task_ids))]


def execute_designs(
    envs: Sequence[Any], policy: Policy, task_ids: Sequence[str], task_uids: Sequence[str],
    designs: Sequence[Sequence[Action]], n_executions: int, *, seed: int | None = None, run_id: str,
    task_positions: Sequence[int] | None = None, **rollout: Any,
) -> list[EpisodeRecord]:
    """The execution round: every design of ``designs[t]`` played ``n_executions`` times, one episode
    per (task, design, execution) on ``envs`` in that order, by :func:`~mx_agents.rollout.run_episodes`
    with ``rollout`` (schedule, progress, stats...); the envs stay open. Episode ``(t, m, k)`` is reset
    with seed ``seed + (p * M + m) * N + k`` (``p`` the task's position, default ``t``): its index in
    the whole step, whichever shard plays it."""
    slots = [(t, m, k) for t in range(len(task_ids)) for m in range(len(designs[t])) for k in range(n_executions)]
    positions = list(range(len(task_ids))) if task_positions is None else list(task_positions)
    m_count = len(designs[0]) if designs else 0
    records = run_episodes(
        envs[: len(slots)],
        policy,
        seeds=None if seed is None else [seed + (positions[t] * m_count + m) * n_executions + k
                                         for t, m, k in slots],
        options=[{"task_id": task_ids[t]} for t, _, _ in slots],
        groups=[GroupIds(task_uids[t], m, k) for t, m, k in slots],
        designs=[designs[t][m] for t, m, _ in slots],
        close=False,
        run_id=run_id,
        **rollout,
    )
    for rec in records:
        rec.episode_id = f"{run_id}-{rec.groups.task_uid}-{rec.groups.design_id}-{rec.groups.execution_id}"
    return records


def _env_list(envs: Sequence[Any] | Callable[[], Any], total: int, what: str) -> tuple[list[Any], bool]:
    """``total`` envs from a factory (owned: closed at the end) or the caller's list (at least ``total``)."""
    if callable(envs) and not isinstance(envs, Sequence):
        return [envs() for _ in range(total)], True
    env_list = list(envs)
    if len(env_list) < total:
        raise ValueError(f"need {total} envs for {what}, got {len(env_list)}")
    return env_list, False


def _task_uids(task_ids: Sequence[str], task_uids: Sequence[str] | None) -> list[str]:
    """The caller's unique ``task_uids``, or the task ids made unique with ``#k`` where a task repeats."""
    if task_uids is not None:
        uids = [str(u) for u in task_uids]
        if len(uids) != len(task_ids) or len(set(uids)) != len(uids):
            raise ValueError("task_uids must be unique, one per task id")
        return uids
    return unique_names(task_ids)


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique by a ``#k`` suffix on repeats (``a, a, b`` -> ``a, a#1, b``): task uids here,
    env names of a mixed run (:mod:`mx_train.env_mix`)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}#{k}")
    return out
