import pytest

from mx_train.eval.stats import bootstrap_accuracy, per_task_pass1


def test_per_task_pass1_is_fraction_correct_per_task():
    assert per_task_pass1({"a": [True, False, True, True], "b": [False], "c": []}) == {"a": 0.75, "b": 0.0}


def test_mean_is_over_tasks_not_episodes():
    # Task a has 4 samples all right, task b 1 sample wrong: per-episode mean would be 0.8.
    est = bootstrap_accuracy({"a": [True] * 4, "b": [False]}, seed=0)
    assert est.mean == pytest.approx(0.5)
    assert est.n_tasks == 2 and est.n_samples == 5


def test_interval_contains_mean_and_is_seeded():
    outcomes = {f"t{i}": [i % 3 == 0, i % 2 == 0] for i in range(30)}
    a = bootstrap_accuracy(outcomes, seed=1)
    b = bootstrap_accuracy(outcomes, seed=1)
    assert a == b
    assert 0.0 <= a.low < a.mean < a.high <= 1.0


def test_interval_shrinks_with_more_tasks():
    small = bootstrap_accuracy({f"t{i}": [i % 2 == 0] for i in range(10)}, seed=0)
    large = bootstrap_accuracy({f"t{i}": [i % 2 == 0] for i in range(400)}, seed=0)
    assert (large.high - large.low) < (small.high - small.low)


def test_degenerate_inputs():
    assert bootstrap_accuracy({}).n_tasks == 0
    one = bootstrap_accuracy({"a": [True, False]})
    assert one.low == one.mean == one.high == 0.5
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_accuracy({"a": [True]}, confidence=1.5)
