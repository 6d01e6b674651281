"""Hierarchical credit assignment and advantage estimators against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mx_agents.transition import Transition
from mx_train.advantages import ADVANTAGE_ESTIMATORS
from mx_train.credit import assign_advantages, hierarchical_advantages, reward_grid

EPS = 1e-6


def test_docstring_worked_example_grpo_task_group():
    d, e = hierarchical_advantages([[[1, 0], [0, 0]]])
    assert d.shape == (1, 2) and e.shape == (1, 2, 2)
    # design rewards [0.5, 0]: mean 0.25, population std 0.25
    np.testing.assert_allclose(d, [[0.25 / (0.25 + EPS), -0.25 / (0.25 + EPS)]])
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)
    np.testing.assert_allclose(e, [[[0.75 / (std + EPS), -0.25 / (std + EPS)], [-0.25 / (std + EPS)] * 2]])


def test_executor_group_design_and_constant_group_is_exactly_zero():
    _, e = hierarchical_advantages([[[1, 0], [0, 0]]], executor_group="design")
    np.testing.assert_allclose(e[0, 0], [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS)])
    assert np.all(e[0, 1] == 0.0)


def test_all_equal_groups_give_zero_for_every_estimator():
    rewards = np.full((2, 3, 4), 0.1)  # 0.1 is not exact in binary: mean-subtraction noise must not leak
    for name in ADVANTAGE_ESTIMATORS:
        d, e = hierarchical_advantages(rewards, estimator=name)
        assert np.all(d == 0.0) and np.all(e == 0.0), name
        d, e = hierarchical_advantages(rewards, estimator=name, executor_group="design")
        assert np.all(e == 0.0), name


def test_tasks_are_normalised_independently():
    r = np.array([[[1, 1], [0, 0]], [[5, 5], [5, 5]], [[2, 0], [4, 0]]], dtype=float)
    d, e = hierarchical_advantages(r)
    np.testing.assert_allclose(d[0], [1 / (1 + 2 * EPS) * 1, -1 / (1 + 2 * EPS)], rtol=1e-5)
    assert np.all(d[1] == 0) and np.all(e[1] == 0)
    # task 2: design rewards [1, 2] -> [-1, +1]
    np.testing.assert_allclose(d[2], [-1, 1], rtol=1e-5)
    vals = r[2].ravel()
    np.testing.assert_allclose(e[2].ravel(), (vals - vals.mean()) / (vals.std() + EPS))


def test_normalize_std_false_and_dr_grpo_are_mean_centred():
    r = [[[3, 1], [0, 0]]]
    d1, e1 = hierarchical_advantages(r, normalize_std=False)
    d2, e2 = hierarchical_advantages(r, estimator="dr_grpo")
    np.testing.assert_allclose(d1, [[1.0, -1.0]])
    np.testing.assert_allclose(e1, [[[2.0, 0.0], [-1.0, -1.0]]])
    np.testing.assert_allclose(d1, d2)
    np.testing.assert_allclose(e1, e2)


def test_rloo_leave_one_out_by_hand():
    r = [[[1, 0, 0]]]  # one design, three executions
    _, e = hierarchical_advantages(r, estimator="rloo", executor_group="design")
    np.testing.assert_allclose(e[0, 0], [1 - 0, 0 - 0.5, 0 - 0.5])
    d, _ = hierarchical_advantages(r, estimator="rloo")
    assert np.all(d == 0)  # a single design has no leave-one-out baseline


def test_reinforce_pp_whitens_across_the_batch():
    r = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 0]]], dtype=float)
    _, e = hierarchical_advantages(r, estimator="reinforce_pp")
    centred = r.reshape(2, 4) - r.reshape(2, 4).mean(axis=1, keepdims=True)
    expect = (centred - centred.mean()) / (centred.std() + EPS)
    np.testing.assert_allclose(e.reshape(2, 4), expect)
    assert abs(e.mean()) < 1e-9 and abs(e.std() - 1) < 1e-5


def test_sample_std_option():
    d, _ = hierarchical_advantages([[[1], [0]]], std="sample", eps=1e-4)
    s = np.std([1, 0], ddof=1)
    np.testing.assert_allclose(d, [[0.5 / (s + 1e-4), -0.5 / (s + 1e-4)]])


def test_errors():
    with pytest.raises(KeyError, match="known: dr_grpo, grpo, reinforce_pp, rloo"):
        hierarchical_advantages([[[1.0]]], estimator="ppo2")
    with pytest.raises(ValueError, match=r"\[tasks, M, N\]"):
        hierarchical_advantages([[1.0, 2.0]])
    with pytest.raises(ValueError, match="executor_group"):
        hierarchical_advantages([[[1.0]]], executor_group="episode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        hierarchical_advantages([[[float("nan")]]])
    with pytest.raises(ValueError, match="non-empty"):
        hierarchical_advantages(np.zeros((1, 0, 2)))


def _t(task, d, e, role, reward, turn=0):
    return Transition(
        episode_id=f"{task}-{d}-{e}", task_uid=task, task_id=task, design_id=d, execution_id=e, role=role,
        agent=role, turn=turn, prompt_ids=[1], response_ids=[2], logprobs=None, reward=reward,
    )


def test_assign_advantages_to_transitions():
    ts = []
    rewards = {("A", 0, 0): 1.0, ("A", 0, 1): 0.0, ("A", 1, 0): 0.0, ("A", 1, 1): 0.0}
    for (task, d, e), r in rewards.items():
        ts.append(_t(task, d, e, "executor", r, 0))
        ts.append(_t(task, d, e, "executor", r, 1))  # a second sub-agent turn of the same execution
    ts += [_t("A", 0, 0, "designer", 0.0), _t("A", 1, 0, "designer", 0.0)]
    d, e = assign_advantages(ts, executor_group="design")
    by = {(t.role, t.design_id, t.execution_id, t.turn): t.advantage for t in ts}
    assert by[("designer", 0, 0, 0)] == pytest.approx(d[0, 0]) and d[0, 0] > 0
    assert by[("designer", 1, 0, 0)] == pytest.approx(d[0, 1]) and d[0, 1] < 0
    assert by[("executor", 0, 0, 1)] == pytest.approx(e[0, 0, 0]) and e[0, 0, 0] > 0
    assert by[("executor", 1, 1, 0)] == 0.0


def test_reward_grid_needs_explicit_rewards_for_silent_designs():
    ts = [_t("A", 0, 0, "executor", 1.0), _t("A", 1, 0, "designer", 0.0)]
    with pytest.raises(ValueError, match="no execution rewards"):
        reward_grid(ts)
    grid, *_ = reward_grid(ts, execution_rewards={("A", 0, 0): 1.0, ("A", 1, 0): 0.0})
    assert grid.tolist() == [[[1.0], [0.0]]]
    with pytest.raises(ValueError, match="ragged"):
        reward_grid(ts, execution_rewards={("A", 0, 0): 1.0, ("A", 0, 1): 1.0, ("A", 1, 0): 0.0})
