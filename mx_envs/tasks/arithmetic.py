"""``Arithmetic``: procedurally generated integer arithmetic, seeded and unlimited.

Levels (the easiest is learnable by a tiny model on CPU):

1. ``a + b`` with one-digit numbers;
2. ``a + b`` or ``a - b`` with numbers below 100;
3. one of ``+ - *`` on two-digit numbers;
4. three operands, ``+ - *`` with the usual precedence;
5. four operands up to 999 with parentheses;
6. short word problems (shopping, sharing, speed) with integer answers.

**Held-out splits, disjoint by construction.** Every problem has a canonical *key* that leaves out
what does not change the problem: the order of the operands of ``+`` and ``*`` (``3 + 4`` and
``4 + 3`` are one problem) and, for word problems, the name and the item (only the story kind and
its numbers count). A keyed hash puts each key in exactly one split: ``test`` (20 %),
``validation`` (10 %) or ``train`` (the rest), and a stream of one split only ever yields problems
whose key belongs to it. So no test item is a training item, or a training item reordered or
renamed, whatever the seeds.

Level 1 is too small for sampling by hash alone (55 keys, 100 ordered sums): its keys are ranked by
the same hash and cut at fixed counts: 16 keys (31 ordered sums) for ``test``, 5 keys (8 sums) for
``validation``, 34 keys (61 sums) for ``train`` (:func:`level1_partition`); a level-1 stream cycles through its split's sums in a seeded order, each
sum once before any repeats, so a held-out evaluation of up to that many items sees distinct ones.
Level 2 has 20,000 problems and levels 3-6 more, so hash sampling leaves thousands in each split.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache

from mx_envs.tasks.record import Task

LEVELS = (1, 2, 3, 4, 5, 6)
SPLITS = ("train", "validation", "test")
_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "test"}
TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1
LEVEL1_COUNTS = {"test": 16, "validation": 5}  # of 55 unordered pairs; train gets the rest
_NAMES = ("Ann", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cards")
_COMMUTATIVE = "+*"


def _unit(level: int, key: str) -> float:
    digest = hashlib.blake2b(f"mx-arithmetic-split:{level}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def canonical_split(split: str) -> str:
    """``train``, ``validation`` or ``test`` (``val``/``dev`` and ``eval`` are accepted as aliases)."""
    s = _ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"arithmetic split must be one of {SPLITS} (or {sorted(_ALIASES)}), got {split!r}")
    return s


@lru_cache(maxsize=1)
def level1_partition() -> dict[str, tuple[tuple[int, int], ...]]:
    """The fixed level-1 partition: split -> the ordered sums ``(a, b)`` it holds (module docstring)."""
    pairs = sorted({(min(a, b), max(a, b)) for a in range(10) for b in range(10)},
                   key=lambda p: (_unit(1, f"{p[0]}+{p[1]}"), p))
    cut_test = LEVEL1_COUNTS["test"]
    cut_val = cut_test + LEVEL1_COUNTS["validation"]
    groups = {"test": pairs[:cut_test], "validation": pairs[cut_test:cut_val], "train": pairs[cut_val:]}
    return {split: tuple(sorted({(a, b) for x, y in ps for a, b in ((x, y), (y, x))})) for split, ps in groups.items()}


def split_of(level: int, key: str) -> str:
    """The split that problem ``key`` of ``level`` belongs to (one, always the same)."""
    if level == 1:
        a, b = (int(x) for x in key.split("+"))
        return next(s for s, sums in level1_partition().items() if (a, b) in sums)
    u = _unit(level, key)
    if u < TEST_FRACTION:
        return "test"
    if u < TEST_FRACTION + VALIDATION_FRACTION:
        return "validation"
    return "train"


def _binary_key(a: int, op: str, b: int) -> str:
    if op in _COMMUTATIVE:
        a, b = min(a, b), max(a, b)
    return f"{a}{op}{b}"


def _expr(rng: random.Random, level: int) -> tuple[str, str]:
    """(expression, key) of one level 2-5 problem."""
    if level == 2:
        a, op, b = rng.randint(0, 99), rng.choice("+-"), rng.randint(0, 99)
        return f"{a} {op} {b}", _binary_key(a, op, b)
    if level == 3:
        a, op, b = rng.randint(10, 99), rng.choice("+-*"), rng.randint(10, 99)
        return f"{a} {op} {b}", _binary_key(a, op, b)
    if level == 4:
        a, b, c = (rng.randint(1, 50) for _ in range(3))
        expr = f"{a} {rng.choice('+-*')} {b} {rng.choice('+-*')} {c}"
        return expr, expr.replace(" ", "")
    nums = [rng.randint(1, 999) for _ in range(4)]
    ops = [rng.choice("+-*") for _ in range(3)]
    form = rng.randrange(3)
    if form == 0:
        expr = f"({nums[0]} {ops[0]} {nums[1]}) {ops[1]} ({nums[2]} {ops[2]} {nums[3]})"
    elif form == 1:
        expr = f"({nums[0]} {ops[0]} {nums[1]} {ops[1]} {nums[2]}) {ops[2]} {nums[3]}"
    else:
        expr = f"{nums[0]} {ops[0]} ({nums[1]} {ops[1]} ({nums[2]} {ops[2]} {nums[3]}))"
    return expr, expr.replace(" ", "")


def _word_problem(rng: random.Random) -> tuple[str, int, str]:
    """(prompt, answer, key) of one level-6 problem; the key leaves out the name and the item."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(5, 40), rng.randint(1, 30), rng.randint(1, 5)
        return (f"{name} has {a} {item}. {name} buys {b} more and then gives away {c}. "
                f"How many {item} does {name} have now?", a + b - c, f"buy:{a},{b},{c}")
    if kind == 1:
        k, each, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(0, 9)
        return (f"{name} shares {item} among {k} friends so that each gets {each}, and {extra} are left over. "
                f"How many {item} did {name} have?", k * each + extra, f"share:{k},{each},{extra}")
    speed, hours = rng.randint(3, 90), rng.randint(2, 9)
    return (f"A train travels at {speed} km per hour for {hours} hours. How many km does it travel?",
            speed * hours, f"train:{speed},{hours}")


def _evaluate(expr: str) -> int:
    # Only digits, spaces, parentheses and + - * are generated, so evaluating the string is safe.
    return int(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307


def make_task(rng: random.Random, level: int, split: str, seed: int, index: int) -> Task:
    """The next task of ``split`` drawn from ``rng`` (problems of other splits are skipped)."""
    if level not in LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    split = canonical_split(split)
    if level == 1:
        sums = level1_partition()[split]
        a, b = sums[rng.randrange(len(sums))]
        prompt, value, key = f"What is {a} + {b}?", a + b, f"{min(a, b)}+{max(a, b)}"
    else:
        for _ in range(10_000):
            if level == 6:
                prompt, value, key = _word_problem(rng)
            else:
                expr, key = _expr(rng, level)
                prompt, value = f"What is {expr}?", 0
            if split_of(level, key) == split:
                break
        else:  # pragma: no cover - each split holds >= 10 % of a space of thousands
            raise RuntimeError(f"arithmetic level {level}: no {split} problem in 10,000 draws")
        if level != 6:
            value = _evaluate(expr)
    return Task(id=f"arithmetic/L{level}/{split}/{seed}/{index}", dataset="arithmetic", split=split, kind="math",
                prompt=prompt, answer=str(value), metadata={"level": level, "seed": seed, "index": index, "key": key})


def _level1_stream(split: str, seed: int) -> Iterator[tuple[int, int]]:
    rng = random.Random(f"arithmetic:1:{split}:{seed}")
    sums = list(level1_partition()[split])
    while True:
        rng.shuffle(sums)
        yield from sums


def generate(level: int = 1, split: str = "train", seed: int = 0, start: int = 0) -> Iterator[Task]:
    """Endless stream of tasks at ``level`` from ``split``; the same (level, split, seed) gives the same stream."""
    if level not in LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level}")
    split = canonical_split(split)
    if level == 1:
        for index, (a, b) in enumerate(_level1_stream(split, seed)):
            if index >= start:
                yield Task(id=f"arithmetic/L1/{split}/{seed}/{index}", dataset="arithmetic", split=split,
                           kind="math", prompt=f"What is {a} + {b}?", answer=str(a + b),
                           metadata={"level": 1, "seed": seed, "index": index, "key": f"{min(a, b)}+{max(a, b)}"})
        return
    rng = random.Random(f"arithmetic:{level}:{split}:{seed}")
    index = 0
    while True:
        task = make_task(rng, level, split, seed, index)
        if index >= start:
            yield task
        index += 1
