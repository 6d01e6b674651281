"""Per-role step metrics: the designer's numbers are not the executor's by construction."""

from __future__ import annotations

import pytest

from mx_train.credit import role_metrics
from mx_train.eval.design_structure import design_family


def test_designer_and_executor_rewards_differ_and_mean_what_they_say():
    # task 0: design 0 solves 1 of 2, design 1 none; task 1: both designs solve both.
    grid = [[[1, 0], [0, 0]], [[1, 1], [1, 1]]]
    m = role_metrics(grid, [["single", "ensemble"], ["single", "single"]], [[True, False], [True, True]])
    assert m["reward/executor"] == pytest.approx(5 / 8)  # per execution
    assert m["reward/designer"] == pytest.approx(3 / 4)  # designs that solve it at least once
    assert m["reward/designer"] != m["reward/executor"]
    assert m["reward/best_design"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["reward/design_gap"] == pytest.approx((0.5 - 0.25 + 0.0) / 2)
    assert m["design/spread"] == pytest.approx((0.25 + 0.0) / 2)  # population std of [0.5, 0]
    assert m["design/tasks_with_spread"] == pytest.approx(0.5)
    assert m["design/distinct"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert m["design/structure/single"] == pytest.approx(3 / 4)
    assert m["design/valid"] == pytest.approx(3 / 4)
    assert m["design/tasks_with_choice_signal"] == pytest.approx(0.5)


def test_spread_between_copies_of_one_structure_is_not_a_choice_signal():
    # Both tasks have spread, but task 1's comes from executor noise between two `single` designs.
    grid = [[[1, 1], [0, 0]], [[1, 0], [1, 1]]]
    m = role_metrics(grid, [["calc", "single"], ["single", "single"]])
    assert m["design/tasks_with_spread"] == pytest.approx(1.0)
    assert m["design/tasks_with_choice_signal"] == pytest.approx(0.5)


def test_role_metrics_checks_shapes():
    with pytest.raises(ValueError, match=r"\[T, M, N\]"):
        role_metrics([[1, 0]])
    with pytest.raises(ValueError, match="design_labels"):
        role_metrics([[[1], [0]]], [["single"]])


def test_design_family_marks_tool_use():
    plain = 'def forward(task):\n    a = Agent("s", system="x")\n    return final_answer(a(task))\n'
    tools = 'def forward(task):\n    a = Agent("s", system="x", tools=("python",))\n    return final_answer(a(task))\n'
    assert design_family(plain) == "single"
    assert design_family(tools) == "single+tools"
    assert design_family("def forward(:") == "invalid"
