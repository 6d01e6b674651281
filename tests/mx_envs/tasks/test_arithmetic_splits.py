"""Arithmetic train/validation/test splits are disjoint by construction, on every level."""

from __future__ import annotations

import itertools

import pytest

from mx_envs.tasks import arithmetic
from mx_envs.tasks.arithmetic import LEVELS, SPLITS, generate, level1_partition, split_of


def _keys(level: int, split: str, seed: int, n: int) -> set[str]:
    tasks = list(itertools.islice(generate(level, split, seed), n))
    assert all(t.split == split for t in tasks)
    assert all(split_of(level, t.metadata["key"]) == split for t in tasks)
    return {t.metadata["key"] for t in tasks}


@pytest.mark.parametrize("level", LEVELS)
def test_splits_share_no_problem(level: int) -> None:
    # different seeds per split: disjointness must not depend on the streams being different
    keys = {split: _keys(level, split, seed, 300) for seed, split in enumerate(SPLITS)}
    assert keys["train"].isdisjoint(keys["test"])
    assert keys["train"].isdisjoint(keys["validation"])
    assert keys["validation"].isdisjoint(keys["test"])
    assert all(len(k) > 1 for k in keys.values())


@pytest.mark.parametrize("level", [2, 3])
def test_commuted_operands_are_the_same_problem(level: int) -> None:
    train = list(itertools.islice(generate(level, "train", 0), 300))
    test_prompts = {t.prompt for t in itertools.islice(generate(level, "test", 0), 300)}
    for t in train:
        a, op, b = t.prompt.removeprefix("What is ").removesuffix("?").split(" ")
        if op in "+*":
            assert f"What is {b} {op} {a}?" not in test_prompts


def test_level1_partition_is_fixed_disjoint_and_complete() -> None:
    part = level1_partition()
    sums = [s for split in SPLITS for s in part[split]]
    assert sorted(sums) == [(a, b) for a in range(10) for b in range(10)]  # every sum, exactly once
    assert {k: len(v) for k, v in part.items()} == {"test": 31, "validation": 8, "train": 61}
    for split, members in part.items():  # a sum and its commuted form are in the same split
        assert all((b, a) in members for a, b in members), split
    test = list(itertools.islice(generate(1, "test", 5), len(part["test"])))
    assert len({t.prompt for t in test}) == len(part["test"])  # distinct before any repeat


def test_word_problem_keys_ignore_names_and_items() -> None:
    t = next(generate(6, "test", 0))
    assert t.metadata["key"].split(":")[0] in ("buy", "share", "train")
    assert not any(name in t.metadata["key"] for name in arithmetic._NAMES)


def test_split_names() -> None:
    assert next(generate(2, "val", 0)).split == "validation"
    assert next(generate(2, "eval", 0)).split == "test"
    with pytest.raises(ValueError, match="split"):
        next(generate(2, "holdout", 0))
