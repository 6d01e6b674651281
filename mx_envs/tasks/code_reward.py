"""Which of a code task's tests can pay reward: the hidden ones, beyond what a constant passes.

Two programs that solve nothing still pass tests: one that gives the same output for every input
(it passes every test whose expected output is that constant: ``return False`` passes 102 of
MBPP+'s 104 Mbpp/223 tests) and one that replays the examples of the prompt (a lookup table from
shown input to shown output, that constant elsewhere). The reward counts only what a program earns
beyond the better of them:

* **shown tests** are tests the policy saw: the dataset's public tests
  (:attr:`~mx_envs.tasks.record.CodeTests.shown`), every test whose input and expected output
  appear in the prompt (:attr:`~mx_envs.tasks.record.CodeTests.shown_text`; stdin/stdout: the
  input followed closely by the output, whitespace ignored; functions: a call ``fn(<literals>)``
  with the same arguments, or every argument and the result written out), and every test whose
  input equals a shown test's input. They never count towards the reward fraction.
* ``K``, the **constant's share**: the most hidden tests one output passes, under the judge's own
  comparison. The candidates are the hidden tests' expected outputs (an output that passes a test
  equals that test's expected output up to the judge's rule); tolerances are doubled for the count,
  so that a value between two expected numbers cannot pass more than counted.
* ``fraction = max(0, hidden_passed - K) / (hidden - K)``; a task is **solved** when every test
  passes and ``hidden > K``. A task whose hidden tests a constant passes (``hidden == K``, e.g.
  HumanEval/34, whose only test is its docstring example) pays nobody: no program can show there
  that it solved more than a replay.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_SCAN_CHARS = 20_000  # longest argument list read back from a call written in the prompt
MAX_OCCURRENCES = 64  # places one test input is looked for in the prompt
OUTPUT_GAP_CHARS = 200  # "Input ... Output" markup allowed between a shown input and its output
MIN_LITERAL_CHARS = 4  # shorter argument texts ("5", "[]") appear in any prompt by chance


@dataclass(frozen=True)
class RewardBasis:
    """Per test (the grader's order: stdin tests, call tests, assert-style pairs): shown or hidden,
    and the constant's share of the hidden ones."""

    shown: tuple[bool, ...]
    constant_passes: int

    @property
    def hidden(self) -> int:
        return len(self.shown) - sum(self.shown)

    @property
    def discriminating(self) -> int:
        """Hidden tests beyond what the best constant passes: what a program can earn reward on."""
        return max(0, self.hidden - self.constant_passes)


# ---------------------------------------------------------------- what the prompt shows


def spaced(text: str) -> str:
    """``text`` with every run of whitespace one space (layout never hides an example)."""
    return " ".join(text.split())


def compact(text: str) -> str:
    """``text`` without whitespace and with one quote character, for finding literals."""
    return re.sub(r"\s+", "", text).replace('"', "'")


def stdio_shown(prompt_spaced: str, inp: str, out: str) -> bool:
    """Whether the prompt writes ``inp`` followed, within a little markup, by ``out``."""
    ni, no = spaced(inp), spaced(out)
    if len(ni) + len(no) > len(prompt_spaced) or not no:
        return False
    start, seen = 0, 0
    while seen < MAX_OCCURRENCES:
        pos = prompt_spaced.find(ni, start) if ni else start
        if pos < 0:
            return False
        end = pos + len(ni)
        if no in prompt_spaced[end:end + len(no) + OUTPUT_GAP_CHARS]:
            return True
        if not ni:
            return False
        start, seen = pos + 1, seen + 1
    return False


def _matching_paren(text: str, open_at: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``open_at`` (brackets and quotes respected), or -1."""
    depth, quote, i = 0, "", open_at
    stop = min(len(text), open_at + MAX_SCAN_CHARS)
    while i < stop:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i if c == ")" else -1
        i += 1
    return -1


def call_args_in_text(text: str, fn_name: str) -> list[list[Any]]:
    """Argument lists of every call ``fn_name(<literals>)`` written in ``text`` (canonical form).

    ``>>> f(1, [2])`` in a docstring, ``assert f(1, [2]) == 3`` in an MBPP prompt and
    ``f(1, [2]) => 3`` in prose all count; calls with a non-literal argument do not.
    """
    if not fn_name or not text:
        return []
    out: list[list[Any]] = []
    for m in re.finditer(rf"(?<![\w]){re.escape(fn_name)}\s*\(", text):
        close = _matching_paren(text, m.end() - 1)
        if close < 0:
            continue
        try:
            call = ast.parse(f"_f({text[m.end():close]})", mode="eval").body
            assert isinstance(call, ast.Call)
            if call.keywords:
                continue
            out.append(canonical([ast.literal_eval(a) for a in call.args]))
        except (SyntaxError, ValueError, TypeError, AssertionError, MemoryError, RecursionError):
            continue
    return out


def canonical(value: Any) -> Any:
    """``value`` with tuples and sets as lists (recursively): the shape a prompt writes it in does not
    decide whether it was shown."""
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        try:
            return sorted(canonical(v) for v in value)
        except TypeError:
            return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def _literal_texts(value: Any) -> list[str]:
    forms = {compact(repr(value))}
    try:
        forms.add(compact(json.dumps(value)))
    except (TypeError, ValueError):
        pass
    return sorted(forms)


def _written(prompt_compact: str, value: Any) -> bool:
    return any(form in prompt_compact for form in _literal_texts(value))


def values_shown(prompt_compact: str, args: Sequence[Any], expected: Any) -> bool:
    """Whether every argument and the expected result are written in the prompt (an example in prose:
    "for lst = [1,2,3] the output should be 14"). Short argument texts do not count: they appear
    anywhere."""
    try:
        if sum(len(compact(repr(a))) for a in args) < MIN_LITERAL_CHARS:
            return False
        return all(_written(prompt_compact, a) for a in args) and _written(prompt_compact, expected)
    except (RecursionError, ValueError, MemoryError):
        return False


def call_shown(shown_calls: list[list[Any]], prompt_compact: str, args: Sequence[Any], expected: Any) -> bool:
    try:
        if canonical(list(args)) in shown_calls:
            return True
    except (RecursionError, TypeError, ValueError):
        pass
    return values_shown(prompt_compact, args, expected)


# ---------------------------------------------------------------- the best constant


def best_constant_passes(
    expected: Sequence[Any],
    passes: Callable[[Any, int], bool],
    key: Callable[[Any], Hashable] = repr,
    bucket: Callable[[Any], Hashable] | None = None,
    limit: int | None = None,
) -> int:
    """The most of the tests (``expected[i]`` is test i's expected output) that one constant passes.

    ``passes(c, i)`` says whether output ``c`` passes test ``i``; each distinct expected output
    (by ``key``) is tried as ``c`` (``limit``: only the most frequent ones), against the tests in
    its ``bucket`` (outputs in different buckets never match). Never raises: a comparison that fails
    counts as a pass, so the share is an upper bound.
    """
    groups: dict[Hashable, list[int]] = {}
    buckets: dict[Hashable, list[int]] = {}
    for i, e in enumerate(expected):
        try:
            k = key(e)
        except Exception:  # noqa: BLE001 - an unprintable value is its own group
            k = ("unkeyed", i)
        groups.setdefault(k, []).append(i)
        try:
            b = bucket(e) if bucket is not None else None
        except Exception:  # noqa: BLE001
            b = None
        buckets.setdefault(b, []).append(i)
    bucket_of = {i: b for b, members in buckets.items() for i in members}
    order = sorted(groups.values(), key=len, reverse=True)
    if limit is not None:
        order = order[:limit]
    best = 0
    for members in order:
        c = expected[members[0]]
        same = set(members)
        peers = buckets[bucket_of[members[0]]] if bucket is not None else range(len(expected))
        if len(peers) <= best:
            continue
        count = len(same)
        for i in peers:
            if i in same:
                continue
            try:
                ok = passes(c, i)
            except Exception:  # noqa: BLE001
                ok = True
            count += bool(ok)
        best = max(best, count)
        if best == len(expected):
            break
    return best


def output_bucket(text: str, mode: str) -> Hashable:
    """Outputs in different buckets never match under :func:`~mx_envs.tasks.code_compare.outputs_match`."""
    if mode == "tokens":
        return len(text.split())
    return len(text.strip().split("\n"))
