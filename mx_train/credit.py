"""Hierarchical credit assignment for M designs x N executions per task.

The designer is credited per design, the executor per execution (MetaAgent-X recipe, DESIGN.md):

* **designer**: a design's reward is the mean of its N execution rewards; those M design rewards are
  normalised against each other within their task;
* **executor**: each execution's reward is normalised against all M*N executions of its task
  (``executor_group="task"``) or against the N executions of its own design
  (``executor_group="design"``).

"Normalised" is whatever the named advantage estimator does with a group (see
:mod:`mx_train.advantages`); for ``grpo``: ``(r - mean) / (std + 1e-6)`` with the population std, and
exactly 0 for a group whose rewards are all equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from mx_train.advantages import ADVANTAGE_ESTIMATORS

if TYPE_CHECKING:
    from mx_agents.transition import Transition

ExecutorGroup = Literal["task", "design"]


def hierarchical_advantages(
    rewards: object,
    estimator: str = "grpo",
    executor_group: ExecutorGroup = "task",
    normalize_std: bool = True,
    *,
    eps: float = 1e-6,
    std: str = "population",
) -> tuple[np.ndarray, np.ndarray]:
    """Designer and executor advantages from execution rewards.

    Args:
        rewards: array-like ``[T, M, N]``: reward of execution ``n`` of design ``m`` of task ``t``.
        estimator: a name registered in :data:`mx_train.advantages.ADVANTAGE_ESTIMATORS`
            (``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``, ...).
        executor_group: ``"task"`` (baseline over the M*N executions of the task) or ``"design"``
            (over the N executions of the design).
        normalize_std: divide by the group std (estimators without std normalisation ignore it).
        eps: added to the std before dividing. std: ``"population"`` (ddof 0) or ``"sample"``.

    Returns:
        ``(designer_adv [T, M], executor_adv [T, M, N])``, float64 numpy arrays.

    Worked example (``grpo``, one task, M=2 designs, N=2 executions)::

        rewards = [[[1, 0],      # design 0: one of its two executions succeeded
                    [0, 0]]]     # design 1: both failed
        # designer: design rewards [0.5, 0.0], mean 0.25, population std 0.25
        designer_adv  = [[+1.0, -1.0]]             # (0.5-0.25)/(0.25+1e-6) ~ 0.999996
        # executor, executor_group="task": the 4 rewards [1,0,0,0], mean 0.25, std 0.4330
        executor_adv  = [[[+1.732, -0.577],
                          [-0.577, -0.577]]]
        # executor, executor_group="design": [1,0] -> [+1,-1]; [0,0] is constant -> [0,0]
        executor_adv  = [[[+1.0, -1.0],
                          [ 0.0,  0.0]]]

    Other estimators take the same call, e.g. ``estimator="rloo"`` gives designer ``[[0.5, -0.5]]``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"rewards must be shaped [tasks, M, N], got shape {r.shape}")
    t, m, n = r.shape
    if min(t, m, n) == 0:
        raise ValueError(f"rewards must be non-empty in every dimension, got shape {r.shape}")
    fn = ADVANTAGE_ESTIMATORS.get(estimator)
    kw = {"normalize_std": normalize_std, "eps": eps, "std": std}

    designer_adv = fn(r.mean(axis=2), **kw)  # groups: tasks, members: the M designs
    if executor_group == "task":
        executor_adv = fn(r.reshape(t, m * n), **kw).reshape(t, m, n)
    elif executor_group == "design":
        executor_adv = fn(r.reshape(t * m, n), **kw).reshape(t, m, n)
    else:
        raise ValueError(f"executor_group must be 'task' or 'design', got {executor_group!r}")
    return np.asarray(designer_adv, dtype=np.float64), np.asarray(executor_adv, dtype=np.float64)


def reward_grid(
    transitions: Sequence[Transition],
    execution_rewards: Mapping[tuple[str, int, int], float] | None = None,
) -> tuple[np.ndarray, list[str], list[list[int]], list[list[list[int]]]]:
    """Arrange execution rewards as a ``[T, M, N]`` grid.

    Rewards come from ``execution_rewards[(task_uid, design_id, execution_id)]`` when given, else
    from the executor transitions' ``reward`` (all turns of one execution must agree). Tasks keep
    their order of first appearance; designs and executions are sorted by id. Every task must have
    the same M and every design the same N (the hierarchical rollout's shape), else ``ValueError``.

    Returns ``(grid, task_uids, design_ids[t], execution_ids[t][m])``.
    """
    cells: dict[tuple[str, int, int], float] = {}
    if execution_rewards is not None:
        cells = {(str(k[0]), int(k[1]), int(k[2])): float(v) for k, v in execution_rewards.items()}
    else:
        for tr in transitions:
            if tr.role != "executor":
                continue
            key = (tr.task_uid, tr.design_id, tr.execution_id)
            if key in cells and cells[key] != tr.reward:
                raise ValueError(f"execution {key} has turns with different rewards ({cells[key]} vs {tr.reward})")
            cells[key] = float(tr.reward)
    order: list[str] = []
    for tr in transitions:
        if tr.task_uid not in order:
            order.append(tr.task_uid)
    for k in cells:
        if k[0] not in order:
            order.append(k[0])
    designs = [sorted({k[1] for k in cells if k[0] == uid}) for uid in order]
    for uid, ds in zip(order, designs, strict=True):
        seen = {tr.design_id for tr in transitions if tr.task_uid == uid}
        if missing := seen - set(ds):
            raise ValueError(
                f"task {uid!r}: designs {sorted(missing)} have no execution rewards "
                "(pass execution_rewards for designs whose executions made no LLM turn)"
            )
    execs = [[sorted({k[2] for k in cells if k[0] == uid and k[1] == d}) for d in ds] for uid, ds in zip(order, designs, strict=True)]
    m_sizes = {len(ds) for ds in designs}
    n_sizes = {len(es) for per_task in execs for es in per_task}
    if len(m_sizes) != 1 or len(n_sizes) != 1:
        raise ValueError(f"ragged rollout: designs per task {sorted(m_sizes)}, executions per design {sorted(n_sizes)}")
    grid = np.array(
        [[[cells[(uid, d, e)] for e in es] for d, es in zip(ds, per, strict=True)] for uid, ds, per in zip(order, designs, execs, strict=True)],
        dtype=np.float64,
    )
    return grid, order, designs, execs


def assign_advantages(
    transitions: Sequence[Transition],
    estimator: str = "grpo",
    executor_group: ExecutorGroup = "task",
    normalize_std: bool = True,
    *,
    execution_rewards: Mapping[tuple[str, int, int], float] | None = None,
    eps: float = 1e-6,
    std: str = "population",
) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``transition.advantage`` in place: designer turns get their design's advantage, executor
    turns their execution's. Returns ``(designer_adv, executor_adv)`` as from
    :func:`hierarchical_advantages` on the :func:`reward_grid`."""
    grid, order, designs, execs = reward_grid(transitions, execution_rewards)
    d_adv, e_adv = hierarchical_advantages(grid, estimator, executor_group, normalize_std, eps=eps, std=std)
    t_index = {uid: i for i, uid in enumerate(order)}
    for tr in transitions:
        ti = t_index[tr.task_uid]
        mi = designs[ti].index(tr.design_id)
        if tr.role == "designer":
            tr.advantage = float(d_adv[ti, mi])
        elif tr.role == "executor":
            ni = execs[ti][mi].index(tr.execution_id)
            tr.advantage = float(e_adv[ti, mi, ni])
        else:
            raise ValueError(f"unknown role {tr.role!r} in transition {tr.episode_id}")
    return d_adv, e_adv


def role_metrics(
    grid: object,
    design_labels: Sequence[Sequence[str]] | None = None,
    design_valid: Sequence[Sequence[bool]] | None = None,
) -> dict[str, float]:
    """Metrics that say something per role, from the ``[T, M, N]`` reward grid of one step.

    The mean of equal-sized design means is the grand mean, so "mean design reward" would repeat the
    executor's number. Instead:

    * ``reward/executor``: mean per-execution reward (how often one execution solves its task);
    * ``reward/designer``: a design's best execution, averaged over designs (how often a design can
      solve its task at all; ``reward/designer - reward/executor`` is what executor noise costs);
    * ``reward/best_design`` / ``reward/design_gap``: per task, the best design's mean reward, and its
      gap to the mean design (what choosing better among the M designs is worth);
    * ``design/spread``: per task, the std of the M design rewards (zero spread = zero designer
      advantages: the designer's signal); ``design/tasks_with_spread``: share of tasks with any spread;
    * ``design/distinct``: distinct design structures per task over M; ``design/valid``: valid designs;
      ``design/structure/<label>``: share of designs per structure label;
    * ``design/tasks_with_choice_signal``: share of tasks where designs of *different* structures
      scored differently. Spread alone can come from executor noise between copies of one script,
      whose opposite advantages cancel in the designer's gradient; this is the part that pays a choice.
    """
    r = np.asarray(grid, dtype=np.float64)
    if r.ndim != 3 or min(r.shape) == 0:
        raise ValueError(f"grid must be a non-empty [T, M, N] array, got shape {r.shape}")
    t, m, _ = r.shape
    design_mean = r.mean(axis=2)
    out = {
        "reward/executor": float(r.mean()),
        "reward/designer": float(r.max(axis=2).mean()),
        "reward/best_design": float(design_mean.max(axis=1).mean()),
        "reward/design_gap": float((design_mean.max(axis=1) - design_mean.mean(axis=1)).mean()),
        "design/spread": float(design_mean.std(axis=1).mean()),
        "design/tasks_with_spread": float((design_mean.std(axis=1) > 0).mean()),
    }
    if design_labels is not None:
        if len(design_labels) != t or any(len(row) != m for row in design_labels):
            raise ValueError(f"design_labels must be [T={t}][M={m}]")
        out["design/distinct"] = float(np.mean([len(set(row)) / m for row in design_labels]))
        out["design/tasks_with_choice_signal"] = float(np.mean([
            any(la != lb and design_mean[i, a] != design_mean[i, b]
                for a, la in enumerate(row) for b, lb in enumerate(row) if a < b)
            for i, row in enumerate(design_labels)
        ]))
        flat = [lab for row in design_labels for lab in row]
        for lab in sorted(set(flat)):
            out[f"design/structure/{lab}"] = flat.count(lab) / len(flat)
    if design_valid is not None:
        out["design/valid"] = float(np.mean([bool(v) for row in design_valid for v in row]))
    return out
