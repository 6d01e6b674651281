"""Host-side comparison of what a candidate produced with what a test expects.

Everything here runs in the grading process on plain data (decoded by
:func:`mx_envs.tasks.code_harness.decode_value`: builtin types, ``Decimal``, ``Fraction`` and
:class:`~mx_envs.tasks.code_harness.Opaque`), so no candidate code runs during a comparison. Every
function returns a bool and never raises: an output that breaks a comparison (``sNaN``, a
20,000-level list, an overflowing exponent) is simply not a match.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

# ---------------------------------------------------------------- stdin/stdout


def stripped_lines(text: str) -> list[str]:
    """Lines of ``text`` with surrounding whitespace removed; leading/trailing blank lines dropped."""
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(tokens: list[str]) -> list[Decimal] | None:
    """The tokens as decimal numbers, or None. NaN (quiet or signalling) is not a number here:
    LiveCodeBench's ``Decimal`` comparison raises on ``sNaN`` and never equates ``nan``."""
    out = []
    for tok in tokens:
        try:
            d = Decimal(tok)
        except (InvalidOperation, ValueError):
            return None
        if d.is_nan():
            return None
        out.append(d)
    return out


def _close(a: Decimal, b: Decimal, tol: float) -> bool:
    try:
        if not (a.is_finite() and b.is_finite()):
            return a == b
        if a.as_tuple().exponent == 0 and b.as_tuple().exponent == 0:
            return a == b  # integers stay exact (a relative tolerance would accept 1000000010 for ...09)
        return abs(a - b) <= Decimal(repr(tol)) * max(Decimal(1), abs(b))
    except ArithmeticError:  # exponents beyond the context (1e999999999)
        return False


_YES_NO = frozenset({"yes", "no"})


def _tokens_match(out: list[str], exp: list[str], tol: float | None) -> bool:
    if out == exp:
        return True
    if len(out) != len(exp):
        return False
    if any(e.lower() in _YES_NO for e in exp):  # Codeforces' yes/no checker ignores letter case
        out = [o.lower() if e.lower() in _YES_NO else o for o, e in zip(out, exp, strict=True)]
        exp = [e.lower() if e.lower() in _YES_NO else e for e in exp]
        if out == exp:
            return True
    do, de = _decimals(out), _decimals(exp)
    if do is None or de is None:
        # non-numeric tokens must match as text; numeric ones may match as numbers
        return all(o == e or _tokens_match([o], [e], tol) for o, e in zip(out, exp, strict=True)) \
            if len(out) > 1 else False
    try:
        if do == de:
            return True
    except ArithmeticError:
        return False
    return tol is not None and all(_close(x, y, tol) for x, y in zip(do, de, strict=True))


def outputs_match(output: str, expected: str, float_tolerance: float | None = None, mode: str = "lines") -> bool:
    """stdin/stdout comparison.

    ``mode="lines"`` is LiveCodeBench's: the same number of lines after stripping; each line equal
    as text, or equal token by token as decimal numbers (``1.50`` matches ``1.5``, ``5e0`` matches
    ``5``; no rounding). ``mode="tokens"`` compares the whitespace-separated token sequences
    (line breaks are whitespace, as Codeforces' default checker does), each token equal as text
    or as a number, ``yes``/``no`` in any letter case (Codeforces' yes/no checker). With
    ``float_tolerance`` non-integer numeric tokens may also differ by that absolute error, or
    relative error for numbers above 1 ("absolute or relative error" judges); integers stay exact.
    """
    try:
        if mode == "tokens":
            return _tokens_match(output.split(), expected.split(), float_tolerance)
        out_lines, exp_lines = stripped_lines(output), stripped_lines(expected)
        if len(out_lines) != len(exp_lines):
            return False
        for o, e in zip(out_lines, exp_lines, strict=True):
            if o == e:
                continue
            do, de = _decimals(o.split()), _decimals(e.split())
            if do is None or de is None or len(do) != len(de):
                return False
            if do == de:
                continue
            if float_tolerance is None or not all(_close(x, y, float_tolerance) for x, y in zip(do, de, strict=True)):
                return False
        return True
    except (ArithmeticError, RecursionError, MemoryError, ValueError):
        return False


# ---------------------------------------------------------------- call-based (LiveCodeBench, APPS)


def results_match(result: Any, expected: Any) -> bool:
    """LiveCodeBench call-based comparison: a top-level tuple counts as a list, then ``==``."""
    try:
        if type(result) is tuple:
            result = list(result)
        return bool(result == expected)
    except (ArithmeticError, RecursionError, MemoryError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------- assert-style datasets (EvalPlus)

# EvalPlus special oracles for MBPP+ (evalplus/eval/_special_oracle.py), applied by entry point.
# Two are deliberately not copied, because each accepts a constant and a reward that a constant
# gets teaches nothing: Mbpp/164 ``are_equivalent`` (EvalPlus accepts any output) and Mbpp/295
# ``sum_div`` (EvalPlus accepts ``0`` on every input, so ``return 0`` passed). Both are compared
# with the reference like any other task.
MBPP_SET_EQ = frozenset({"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                         "larg_nnum", "intersection_array", "find_dissimilar", "Diff"})
MBPP_NOT_NONE = frozenset({"check_str", "text_match_three", "text_starta_endb"})


def is_floats(x: Any) -> bool:
    """EvalPlus: a float, or a non-empty list/tuple of floats."""
    if type(x) is float:
        return True
    return type(x) in (list, tuple) and len(x) > 0 and all(type(v) is float for v in x)


def _allclose(out: Any, exp: Any, atol: float, rtol: float = 1e-7) -> bool:
    """``numpy.allclose(out, exp, rtol, atol)`` for numbers and flat sequences of numbers."""
    def num(v: Any) -> bool:
        return type(v) in (int, float, bool)

    def close(a: Any, b: Any) -> bool:
        if not (num(a) and num(b)):
            return False
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= atol + rtol * abs(b)

    if num(out) and num(exp):
        return close(out, exp)
    if type(out) in (list, tuple) and type(exp) in (list, tuple):
        return len(out) == len(exp) and all(close(a, b) for a, b in zip(out, exp, strict=True))
    return False


def _poly(xs: list[Any], x: float) -> float:
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def evalplus_match(out: Any, exp: Any, inputs: list[Any], entry_point: str, atol: float = 0.0) -> bool:
    """EvalPlus' comparison of a candidate's output with the reference's on the same inputs.

    Exact ``==``; floats (or lists of floats) within ``atol`` (1e-6 when the dataset gives 0) and
    rtol 1e-7 with matching types and lengths; EvalPlus' special oracles: HumanEval/32
    ``find_zero`` (a root: ``|poly(xs, out)| <= 1e-4``, the original test's bound), MBPP+ set
    comparisons and "output is not None" tasks, Mbpp/581 ``surface_Area``/Mbpp/558
    ``digit_distance_nums`` (EvalPlus' alternative formulas). No rule accepts an output that does
    not depend on the input (EvalPlus' ``sum_div``: ``out == 0``).
    """
    try:
        if entry_point == "find_zero" and len(inputs) == 1 and type(inputs[0]) is list:
            return type(out) in (int, float) and math.isfinite(out) and abs(_poly(inputs[0], out)) <= 1e-4
        exact = bool(out == exp)
        if entry_point in MBPP_SET_EQ:
            try:
                exact = type(out) in (list, tuple, set, frozenset) and set(out) == set(exp)
            except TypeError:
                exact = False
        elif entry_point in MBPP_NOT_NONE:
            flag = exp if type(exp) is bool else exp is not None  # EvalPlus stores "is not None"
            exact = out == flag if type(out) is bool else flag == (out is not None)
        elif entry_point == "surface_Area" and len(inputs) == 2:
            b, h = inputs
            alt = round(b ** 2 + 2 * b * math.sqrt((b / 2) ** 2 + h ** 2))
            exact = exact or (type(out) in (int, float) and abs(out - alt) <= atol)
        elif entry_point == "digit_distance_nums" and len(inputs) == 2:
            a, b = (str(v) for v in inputs)
            width = max(len(a), len(b))
            alt = sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width), strict=True))
            exact = exact or out == alt
        if exact:
            return True
        tol = atol if atol else (1e-6 if is_floats(exp) else 0.0)
        if tol == 0 or type(out) is not type(exp):
            return False
        return _allclose(out, exp, tol)
    except (ArithmeticError, RecursionError, MemoryError, TypeError, ValueError):
        return False
