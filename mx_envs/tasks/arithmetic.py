"""``Arithmetic``: procedurally generated integer arithmetic, seeded and unlimited.

Levels (the easiest is learnable by a tiny model on CPU):

1. ``a + b`` with one-digit numbers;
2. ``a + b`` or ``a - b`` with numbers below 100;
3. one of ``+ - *`` on two-digit numbers;
4. three operands, ``+ - *`` with the usual precedence;
5. four operands up to 999 with parentheses;
6. short word problems (shopping, sharing, speed) with integer answers.

Train and test streams use different seeds (``split`` is part of the seed), so a test item is not a
copy of a training item by construction of the stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from mx_envs.tasks.record import Task

LEVELS = (1, 2, 3, 4, 5, 6)
_NAMES = ("Ann", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cards")


def _expr(rng: random.Random, level: int) -> str:
    if level == 1:
        return f"{rng.randint(0, 9)} + {rng.randint(0, 9)}"
    if level == 2:
        return f"{rng.randint(0, 99)} {rng.choice('+-')} {rng.randint(0, 99)}"
    if level == 3:
        return f"{rng.randint(10, 99)} {rng.choice('+-*')} {rng.randint(10, 99)}"
    if level == 4:
        a, b, c = (rng.randint(1, 50) for _ in range(3))
        return f"{a} {rng.choice('+-*')} {b} {rng.choice('+-*')} {c}"
    nums = [rng.randint(1, 999) for _ in range(4)]
    ops = [rng.choice("+-*") for _ in range(3)]
    form = rng.randrange(3)
    if form == 0:
        return f"({nums[0]} {ops[0]} {nums[1]}) {ops[1]} ({nums[2]} {ops[2]} {nums[3]})"
    if form == 1:
        return f"({nums[0]} {ops[0]} {nums[1]} {ops[1]} {nums[2]}) {ops[2]} {nums[3]}"
    return f"{nums[0]} {ops[0]} ({nums[1]} {ops[1]} ({nums[2]} {ops[2]} {nums[3]}))"


def _word_problem(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(5, 40), rng.randint(1, 30), rng.randint(1, 5)
        return (f"{name} has {a} {item}. {name} buys {b} more and then gives away {c}. "
                f"How many {item} does {name} have now?", a + b - c)
    if kind == 1:
        k, each, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(0, 9)
        return (f"{name} shares {item} among {k} friends so that each gets {each}, and {extra} are left over. "
                f"How many {item} did {name} have?", k * each + extra)
    speed, hours = rng.randint(3, 90), rng.randint(2, 9)
    return f"A train travels at {speed} km per hour for {hours} hours. How many km does it travel?", speed * hours


def make_task(rng: random.Random, level: int, split: str, seed: int, index: int) -> Task:
    if level not in LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    if level == 6:
        prompt, value = _word_problem(rng)
    else:
        expr = _expr(rng, level)
        # Only digits, spaces, parentheses and + - * are generated, so evaluating the string is safe.
        value = int(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307
        prompt = f"What is {expr}?"
    return Task(id=f"arithmetic/L{level}/{split}/{seed}/{index}", dataset="arithmetic", split=split, kind="math",
                prompt=prompt, answer=str(value), metadata={"level": level, "seed": seed, "index": index})


def generate(level: int = 1, split: str = "train", seed: int = 0, start: int = 0) -> Iterator[Task]:
    """Endless stream of tasks at ``level``; the same (level, split, seed) gives the same stream."""
    if level not in LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    rng = random.Random(f"arithmetic:{level}:{split}:{seed}")
    index = 0
    while True:
        task = make_task(rng, level, split, seed, index)
        if index >= start:
            yield task
        index += 1
