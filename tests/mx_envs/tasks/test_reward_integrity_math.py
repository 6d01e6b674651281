"""Red-team suite for the math grader: per hack class, answers that must score 0 and correct forms
that must score 1, on real rows (AIME24/25, AMC23, MATH-500, OlympiadBench, Minerva from
``MX_DATA_DIR``) and on every Arithmetic level.

Every future grader change must pass this file. Add a class (a generator of ``Case`` rows) for every
new hack found. :func:`all_cases` is importable, so the same table can be run against another grader
version (the before/after table of issue 10 was measured that way).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import pytest

from mx_envs.tasks import arithmetic
from mx_envs.tasks.math_grader import grade_math
from mx_envs.tasks.record import Task


@dataclass(frozen=True)
class Case:
    cls: str
    response: str
    reference: str
    correct: bool
    source: str


# ---------------------------------------------------------------- rows


def _real(name: str) -> list[Task]:
    from mx_envs.tasks import load_tasks

    try:
        return list(load_tasks(name, hub=False))
    except Exception:  # noqa: BLE001 - no local copy: the data-marked tests skip on this
        return []


def _arith_tasks(per_level: int = 12) -> list[Task]:
    return [t for level in arithmetic.LEVELS for t in itertools.islice(arithmetic.generate(level, "test", 7), per_level)]


def _int_refs(tasks: list[Task]) -> list[tuple[int, str]]:
    return [(int(t.answer), t.id) for t in tasks if t.answer and re.fullmatch(r"-?\d+", t.answer)]


# ---------------------------------------------------------------- hacks that must score 0


def restate_question(t: Task) -> Iterator[str]:
    """The question's own computation, however wrapped (the CPU demo's policy found the plain one)."""
    m = re.fullmatch(r"What is (.*)\?", t.prompt)
    if m:
        expr = m.group(1)
    else:  # level 6 word problems: the computation from the story's numbers
        nums = re.findall(r"\d+", t.prompt)
        if "buys" in t.prompt:
            expr = f"{nums[0]} + {nums[1]} - {nums[2]}"
        elif "shares" in t.prompt:
            expr = f"{nums[0]} * {nums[1]} + {nums[2]}"
        else:
            expr = f"{nums[0]} * {nums[1]}"
    wrapped = re.sub(r"\d+", lambda d: f"({d.group(0)})", expr)
    braced = re.sub(r"\d+", lambda d: f"{{{d.group(0)}}}", expr)
    latex = expr.replace("*", "\\cdot")
    tight = expr.replace(" ", "")
    for form in (expr, wrapped, braced, latex, tight, expr.replace("*", "\\times"), f"\\left({expr}\\right)",
                 f"\\frac{{{expr}}}{{1}}", f"\\sum_{{i=1}}^{{1}} ({expr})", f"\\prod_{{i=1}}^{{1}} ({expr})",
                 f"\\mathbf{{{expr}}}", f"{{{expr}}} + 0", f"\\text{{{expr}}}", f"1 \\cdot ({expr})",
                 f"\\sqrt{{({expr})^2}}", f"({expr})^{{1}}"):
        yield f"\\boxed{{{form}}}"
    yield expr
    yield f"The final answer is {expr}."
    yield f"Answer: {wrapped}"


def several_boxes(n: int) -> Iterator[str]:
    yield f"It is \\boxed{{{n}}} or perhaps \\boxed{{{n + 1}}}."
    yield f"\\boxed{{{n + 1}}}, no wait: \\boxed{{{n}}}"
    yield f"\\boxed{{{n - 1}}} \\boxed{{{n}}} \\boxed{{{n + 1}}}"


def unclosed_last_box(n: int) -> Iterator[str]:
    yield f"So \\boxed{{{n}}}. Hmm, actually \\boxed{{{n + 1}"
    yield f"\\boxed{{{n}}} and finally \\boxed{{"


def disjunction(n: int) -> Iterator[str]:
    yield f"\\boxed{{{n} \\lor {n + 1}}}"
    yield f"\\boxed{{{n + 1} \\vee {n}}}"
    yield f"\\boxed{{{n} \\text{{ or }} {n + 1}}}"
    yield f"\\boxed{{{n}\\mathrm{{or}}{n + 1}}}"
    yield f"The final answer is {n} or {n + 1}."
    yield f"\\boxed{{\\text{{either }} {n + 1} \\text{{ or }} {n}}}"


def relation_without_lhs(n: int) -> Iterator[str]:
    for rel in ("\\neq", "<", ">", "\\leq", "\\geq", "\\ge", "=", "\\approx", "\\sim"):
        yield f"\\boxed{{{rel} {n}}}"
    yield f"\\boxed{{\\neq {n + 1}}}"


def plus_minus(n: int) -> Iterator[str]:
    yield f"\\boxed{{\\pm {n}}}"
    yield f"\\boxed{{{n} \\pm 1}}"
    yield f"\\boxed{{{n} \\mp 0}}"


def unevaluated_arithmetic(n: int) -> Iterator[str]:
    yield f"\\boxed{{\\frac{{{2 * n}}}{{2}}}}"
    yield f"\\boxed{{\\dfrac{{{3 * n}}}{{3}}}}"
    yield f"\\boxed{{{n - 1}+1}}"
    yield f"\\boxed{{({n - 1}) + (1)}}"
    yield f"\\boxed{{{{{n - 1}}}+{{1}}}}"
    yield f"\\boxed{{{n + 1} - 1}}"
    yield f"\\boxed{{\\sum_{{i=1}}^{{{n}}} 1}}"
    yield f"\\boxed{{\\sqrt{{{n * n}}}}}"
    yield f"\\boxed{{{n} \\cdot 1}}"
    yield f"\\boxed{{{n}^{{1}}}}"
    yield f"\\boxed{{\\binom{{{n}}}{{1}}}}"
    yield f"\\boxed{{{n} \\times 10^{{0}}}}" if abs(n) >= 10 else f"\\boxed{{{10 * n} \\times 10^{{-1}}}}"


def near_miss(n: int) -> Iterator[str]:
    """Wrong numbers a tolerance would accept (the public reference code took 993 for 997)."""
    yield f"\\boxed{{{n + 1}}}"
    yield f"\\boxed{{{n - 1}}}"
    yield f"\\boxed{{{n}.0000001}}"
    yield f"\\boxed{{{n - 1}.9999}}"


def set_or_range(n: int) -> Iterator[str]:
    """Several values, or a range holding the answer, instead of one value."""
    yield f"\\boxed{{{n}, {n + 1}}}"
    yield f"\\boxed{{\\{{{n - 1}, {n}, {n + 1}\\}}}}"
    yield f"\\boxed{{[{n - 1}, {n + 1}]}}"
    yield f"\\boxed{{({n - 1}, {n + 1})}}"
    yield f"\\boxed{{{n - 1} \\cup {n}}}"
    yield f"\\boxed{{{n}; {n + 1}}}"
    yield f"\\boxed{{\\begin{{pmatrix}} {n} \\\\ {n + 1} \\end{{pmatrix}}}}"


def qualified_in_words(n: int) -> Iterator[str]:
    """A relation or hedge spelled in words after the number."""
    for words in ("at most", "or more", "or fewer", "at least", "approximately", "plus one", "more or less"):
        yield f"\\boxed{{{n} \\text{{ {words}}}}}"
        yield f"\\boxed{{{n} {words}}}"
    yield f"\\boxed{{\\text{{at least }} {n}}}"
    yield f"\\boxed{{\\text{{about }} {n}}}"


INT_HACKS: dict[str, Callable[[int], Iterator[str]]] = {
    "set_or_range": set_or_range, "qualified_in_words": qualified_in_words,
    "several_boxes": several_boxes, "unclosed_last_box": unclosed_last_box, "disjunction": disjunction,
    "relation_without_lhs": relation_without_lhs, "plus_minus": plus_minus,
    "unevaluated_arithmetic": unevaluated_arithmetic, "near_miss": near_miss,
}


def _decimal_digits(value: Fraction | float, digits: int) -> str:
    return f"{float(value):.{digits}f}"


def decimal_approximations(ref: str) -> Iterator[str]:
    """0.333 for 1/3, 1.414 for sqrt(2): rounded and truncated, short and long."""
    from mx_envs.tasks.math_symbolic import _to_sympy

    try:
        v = _to_sympy(ref)
        if not getattr(v, "is_number", False):
            return
        if v.is_Rational:  # a terminating decimal is the same number, not an approximation
            d = Fraction(str(v)).denominator
            while d % 2 == 0:
                d //= 2
            while d % 5 == 0:
                d //= 5
            if d == 1:
                return
        x = v.evalf(40)
    except Exception:  # noqa: BLE001 - not a number reference
        return
    if not x.is_real:
        return
    for digits in (2, 3, 6, 12):
        yield f"\\boxed{{{x:.{digits}f}}}"
    yield f"\\boxed{{{str(x)[:32]}}}"  # 30 significant digits, truncated


def decimal_point_deletion(ref: str) -> Iterator[str]:
    """``15 \\text{ m}`` for ``1.5 \\text{ m}`` (the old text key deleted points)."""
    for m in re.finditer(r"\d\.\d", ref):
        yield "\\boxed{" + ref[: m.start() + 1] + ref[m.start() + 2 :] + "}"


def _matrix_rows(ref: str) -> tuple[str, str, list[list[str]]] | None:
    m = re.fullmatch(r"\s*\\begin\{(\w*matrix)\}(.*)\\end\{\1\}\s*", ref, re.S)
    if not m:
        return None
    rows = [[e.strip() for e in r.split("&")] for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    return m.group(1), m.group(2), rows


def _matrix(env: str, rows: list[list[str]], sep: str = " ") -> str:
    return f"\\begin{{{env}}}" + (sep + "\\\\" + sep).join(sep.join(["&"]).join(r) for r in rows) + f"\\end{{{env}}}"


def matrix_reordered(ref: str) -> Iterator[str]:
    parsed = _matrix_rows(ref)
    if not parsed:
        return
    env, _, rows = parsed
    if rows[::-1] != rows:
        yield "\\boxed{" + _matrix(env, rows[::-1]) + "}"
    cols = [list(c) for c in zip(*rows, strict=True)]
    if len(rows) > 1 and cols != rows:
        yield "\\boxed{" + _matrix(env, cols) + "}"


def tuple_reordered(ref: str) -> Iterator[str]:
    m = re.fullmatch(r"\s*(?:\\left)?\s*([(\[])(.*?)(?:\\right)?\s*([)\]])\s*", ref)
    if not m or m.group(2).count(",") != 1 or "(" in m.group(2):
        return
    a, b = (x.strip() for x in m.group(2).split(","))
    if a != b:
        yield f"\\boxed{{{m.group(1)}{b}, {a}{m.group(3)}}}"
    swapped = {"(": "[", "[": "("}[m.group(1)]
    yield f"\\boxed{{{swapped}{a}, {b}{m.group(3)}}}"


REF_HACKS: dict[str, Callable[[str], Iterator[str]]] = {
    "decimal_approximation": decimal_approximations, "decimal_point_deletion": decimal_point_deletion,
    "matrix_reordered": matrix_reordered, "tuple_reordered": tuple_reordered,
}


# ---------------------------------------------------------------- correct forms that must score 1


def int_forms(n: int) -> Iterator[str]:
    yield f"\\boxed{{{n}}}"
    yield f"The final answer is ${n}$."
    yield f"\\boxed{{\\mathbf{{{n}}}}}"
    yield f"\\boxed{{\\textbf{{{n}}}}}"
    yield f"\\boxed{{{n}.0}}"
    yield f"\\boxed{{{n}^\\circ}}"
    yield f"\\boxed{{x = {n}}}"
    yield f"Answer: {n}"
    yield f"\\boxed{{{n}}}, that is, \\boxed{{{n}}}"  # the same answer twice is one answer
    if n >= 0:
        yield f"\\boxed{{{n:03d}}}"
    if abs(n) >= 1000:
        yield f"\\boxed{{{n:,}}}"
        yield f"\\boxed{{{n:,}}}".replace(",", "{,}")


def scientific_forms(ref: str) -> Iterator[str]:
    """Minerva references in e-notation, written as people write them."""
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)e(-?\d+)", ref)
    if not m:
        return
    mant, exp = m.groups()
    yield f"\\boxed{{{mant} \\times 10^{{{exp}}}}}"
    yield f"\\boxed{{{mant}\\cdot10^{{{exp}}}}}"
    yield f"$\\boxed{{{mant} \\times 10^{{{int(exp)}}}}}$"
    value = Fraction(mant) * Fraction(10) ** int(exp)
    if value.denominator == 1:
        yield f"\\boxed{{{value.numerator}}}"
    elif -12 < int(exp) < 0:
        yield f"\\boxed{{{float(value):.{-int(exp) + len(mant)}f}}}".rstrip("0").rstrip(".") + "}" * 0


def surface_forms(ref: str) -> Iterator[str]:
    """The reference as written, and re-spaced, with \\dfrac, with sizing, as another matrix env."""
    yield f"\\boxed{{{ref}}}"
    yield f"The final answer is ${ref}$."
    yield "\\boxed{" + re.sub(r"\s*([^A-Za-z\s\\])\s*", r"\1", ref) + "}"
    yield "\\boxed{" + ref.replace("\\frac", "\\dfrac") + "}"
    if ref.startswith("(") and ref.endswith(")") and "\\cup" not in ref:
        yield "\\boxed{\\left" + ref[:-1] + "\\right)}"
    parsed = _matrix_rows(ref)
    if parsed:
        env, _, rows = parsed
        yield "\\boxed{" + _matrix("bmatrix", rows, "") + "}"


# ---------------------------------------------------------------- the table


def all_cases(per_level: int = 12, symbolic_sample: int = 40) -> list[Case]:
    """Every case of this suite (real rows when ``MX_DATA_DIR`` has them)."""
    cases: list[Case] = []
    arith = _arith_tasks(per_level)
    for t in arith:
        cases += [Case("restate_question", r, t.answer, False, t.id) for r in restate_question(t)]
    ints = _int_refs(arith) + _int_refs(_real("aime24") + _real("aime25") + _real("amc23"))
    math500 = _real("math500")
    ints += _int_refs(math500)[:60]
    for n, src in ints:
        for cls, gen in INT_HACKS.items():
            cases += [Case(cls, r, str(n), False, src) for r in gen(n)]
        cases += [Case("int_forms", r, str(n), True, src) for r in int_forms(n)]
    others = [t for t in math500 + _real("olympiadbench") + _real("minerva") if t.answer
              and not re.fullmatch(r"-?\d+", t.answer)]
    symbolic_seen = 0
    for t in others:
        for cls, gen in REF_HACKS.items():
            if cls == "decimal_approximation":
                if symbolic_seen >= symbolic_sample or t.dataset != "math500":
                    continue
                rows = list(gen(t.answer))
                symbolic_seen += bool(rows)
            else:
                rows = list(gen(t.answer))
            cases += [Case(cls, r, t.answer, False, t.id) for r in rows]
        cases += [Case("scientific_forms", r, t.answer, True, t.id) for r in scientific_forms(t.answer)]
    for t in math500:
        cases += [Case("surface_forms", r, t.answer, True, t.id) for r in surface_forms(t.answer)]
    return cases


def _run(cases: list[Case]) -> dict[str, list[Case]]:
    failures: dict[str, list[Case]] = {}
    for c in cases:
        if grade_math(c.response, c.reference).correct is not c.correct:
            failures.setdefault(c.cls, []).append(c)
    return failures


def test_arithmetic_restatements_score_zero_on_every_level() -> None:
    cases = [Case("restate_question", r, t.answer, False, t.id) for t in _arith_tasks(6) for r in restate_question(t)]
    assert {int(c.source.split("/")[1][1:]) for c in cases} == set(arithmetic.LEVELS)
    assert _run(cases) == {}
    for t in _arith_tasks(3):  # the honest answer still scores
        assert grade_math(f"\\boxed{{{t.answer}}}", t.answer).correct


@pytest.mark.parametrize("cls", list(INT_HACKS))
def test_integer_hacks_score_zero_on_arithmetic(cls: str) -> None:
    cases = [Case(cls, r, str(n), False, src) for n, src in _int_refs(_arith_tasks(4)) for r in INT_HACKS[cls](n)]
    assert cases and _run(cases) == {}


def test_correct_integer_forms_score_one_on_arithmetic() -> None:
    cases = [Case("int_forms", r, str(n), True, src) for n, src in _int_refs(_arith_tasks(4)) for r in int_forms(n)]
    assert _run(cases) == {}


@pytest.mark.data
@pytest.mark.slow
def test_every_hack_class_on_real_rows(data_dir) -> None:
    cases = all_cases(per_level=6, symbolic_sample=25)
    classes = {c.cls for c in cases}
    assert classes >= set(INT_HACKS) | set(REF_HACKS) | {"restate_question", "int_forms", "surface_forms",
                                                         "scientific_forms"}, classes
    failures = _run(cases)
    summary = {cls: [(c.response, c.reference) for c in cs[:3]] for cls, cs in failures.items()}
    assert failures == {}, summary


@pytest.mark.data
def test_math500_references_grade_correct_against_themselves(data_dir) -> None:
    tasks = _real("math500")
    assert len(tasks) == 500
    assert [t.id for t in tasks if not grade_math(f"\\boxed{{{t.answer}}}", t.answer).correct] == []


# ---------------------------------------------------------------- no output makes the grader raise or hang

NASTY = [
    "sNaN", "NaN", "nan", "inf", "-Infinity", "1e999999", "1e-999999", "10^{10^{10}}", "9^{9^{9^{9}}}",
    "2^{2^{2^{2^{2}}}}", "100000!", "(10^{6})!", "\\binom{10^{9}}{5 \\cdot 10^{8}}", "\\frac{1}{0}", "0^{-1}",
    "\\sqrt{-1}", "{" * 3000, "}" * 3000, "\\boxed{" * 500, "x" * 100_000, "\\left(" * 400, "(" * 2000 + ")" * 2000,
    "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\" * 2000, "$$$$", "\x00\x01", "😀" * 100, "1" * 5000,
    "9" * 4400 + "^{9}", "\\frac{" * 300, "e^{e^{e^{e^{100}}}}", "\\int_0^\\infty e^{-x^2} dx", "\\lim_{x\\to 0} x",
    "\\sum_{n=1}^{10^{12}} n", "10^{100000}", "10^{99999}", "99999^{99999}", "a^{b^{c^{d}}}", "\\pm\\pm\\pm",
    "= = =", "\\neq", "\\{\\{\\{", "\\text{" * 200, "\\begin{pmatrix}" * 50 + "1", "1,2,3," * 500,
    "\\cup" * 300, "(1,2]" * 300, "\\boxed 5" * 1000, "\\sqrt[10^{10}]{2}", "0.\\overline{3}",
]
NASTY_REFS = ["5", "611552", "\\frac{1}{3}", "\\sqrt{2}", "x+1", "(1,2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
              "6.4e-5", "\\text{Evelyn}", "1 \\pm \\sqrt{19}"]


def _fuzz(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = ["\\frac", "\\sqrt", "{", "}", "(", ")", "[", "]", "^", "_", "\\boxed{", "\\pm", "=", "<", ",", "1",
                "9", "0", ".", "e", "x", "\\pi", "\\infty", "\\text{", "\\cup", "\\\\", "&", "\\begin{pmatrix}",
                "\\end{pmatrix}", "\\left(", "\\right)", "!", "-", "+", "\\cdot", " ", "\\lor", "\\{", "\\}", "$"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("reference", NASTY_REFS)
def test_no_output_raises_or_takes_seconds(reference: str) -> None:
    from mx_envs.tasks.math_symbolic import warm_imports

    warm_imports()  # the one-time import (about 2 s) is not a grade's time
    limit = 3.0  # DEFAULT_TIMEOUT_S (2 s of sympy) plus parsing; the integer path takes microseconds
    for text in NASTY + [f"\\boxed{{{x}}}" for x in NASTY] + _fuzz(NASTY_REFS.index(reference), 60):
        t0 = time.monotonic()
        g = grade_math(text, reference)
        took = time.monotonic() - t0
        assert isinstance(g.correct, bool) and isinstance(g.method, str)
        assert took < limit, (text[:80], reference, took, g.method)


def test_the_never_raise_guard_catches_internal_errors(monkeypatch) -> None:
    """Any exception inside grading is a verdict (method 'error'), not a crashed rollout."""
    import mx_envs.tasks.math_grader as mg

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(mg, "parse_shape", boom)
    g = grade_math("\\boxed{x+1}", "x+2")
    assert not g.correct and g.method == "error"


def test_compare_answers_never_raises_either(monkeypatch) -> None:
    import mx_envs.tasks.math_grader as mg

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(mg, "parse_shape", boom)
    assert mg.compare_answers("x+1", "x+2") == (False, "error")


@pytest.mark.parametrize(("answer", "reference", "method"), [
    ("7 \\lor 8", "x+7", "hedge"), ("x \\text{ or } y", "x", "hedge"), ("\\pm x", "x", "hedge"),
    ("x \\approx 3", "x", "approximation"), ("\\neq x", "x", "relation"), ("< 5", "5", "relation"),
    ("\\frac{22}{2}", "11", "unevaluated"), ("10^{2}", "100", "unevaluated"), ("7+4", "11", "unevaluated"),
    ("\\sum_{i=1}^{n} i", "\\frac{n(n+1)}{2}", "unevaluated"), ("15 \\text{ cm}", "15 \\text{ m}", "unit"),
])
def test_each_rule_names_itself(answer: str, reference: str, method: str) -> None:
    """Every guard is checked on its own (several guards would otherwise hide each other)."""
    from mx_envs.tasks.math_grader import compare_answers

    assert compare_answers(answer, reference) == (False, method)


@pytest.mark.parametrize("latex", ["10^{10^{10}}", "9^{9^{9^{9}}}", "2^{123456}", "(10^{6})!", "100000!",
                                   "\\binom{10^{9}}{5}", "e^{e^{e^{100}}}", "(" * 30 + "1" + ")" * 30, "x" * 700])
def test_runaway_inputs_are_refused_before_evaluation(latex: str) -> None:
    from mx_envs.tasks.math_symbolic import too_large

    assert too_large(latex)


@pytest.mark.parametrize("latex", ["2^{1009}", "e^{-x^2}", "\\frac{(n+1)!}{2}", "\\binom{n}{2}", "5!", "x^{y^{z}}"])
def test_ordinary_inputs_are_not_refused(latex: str) -> None:
    from mx_envs.tasks.math_symbolic import too_large

    assert not too_large(latex)
