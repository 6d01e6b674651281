"""Math answer extraction and comparison, table-driven from the answer forms in the real data."""

from __future__ import annotations

import threading

import pytest

from mx_envs.tasks.cleanup import normalize_answer, strip_instructions
from mx_envs.tasks.math_extract import extract_answer, last_boxed
from mx_envs.tasks.math_grader import compare_answers, grade_math

EXTRACT = [
    (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3}, then corrected: \boxed{4}", "4"),  # the literal last box (grade_math: all boxes)
    (r"\boxed{3} \boxed{4} \boxed{3}", "3"),  # never a majority / de-duplicated box
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\fbox{7}", "7"),
    (r"answer \boxed 5 done", "5"),
    ("The final answer is $42$.", "42"),
    ("Final answer: 17", "17"),
    ("blah\nAnswer: (2, 3)", "(2, 3)"),
    ("18 - 7 = 11\n#### 11", "11"),
    ("no answer here at all", None),
    (r"unclosed \boxed{3", None),
    (r"\boxed{5} and later \boxed{3", None),  # an unclosed last box never falls back to an earlier one
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_last_boxed_nested_braces() -> None:
    assert last_boxed(r"\boxed{\frac{\sqrt{3}}{2}}") == r"\frac{\sqrt{3}}{2}"


# (answer, reference, correct): forms from AIME, MATH-500, OlympiadBench, Minerva and GSM8K answers.
COMPARE = [
    ("070", "70", True), ("70.0", "70", True), ("70", "070", True), ("+70", "70", True),
    ("1,000", "1000", True), ("1000", "1,000", True), ("993", "997", False), ("996", "997", False),
    ("70.0000001", "70", False), ("69.9999", "70", False), (r"\frac{140}{2}", "70", False),
    (r"336^\circ", "336", True), ("336", r"336^\circ", True), (r"76^{\circ}", "76", True),
    (r"\dfrac{33}{100}", r"\frac{33}{100}", True), ("0.33", r"\frac{33}{100}", True),
    (r"\frac{1}{2}", "0.5", True), (r"\frac{1}{3}", "0.33", False),
    (r"2\sqrt{5}", r"\sqrt{20}", True), (r"2 \sqrt{5}", r"2\sqrt{5}", True), (r"3\sqrt{5}", r"2\sqrt{5}", False),
    (r"(2,12) \cup (12,102)", r"(2,12)\cup(12,102)", True), (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)", True),
    (r"(2,12]", r"(2,12)", False),
    (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix}-1 & 0 \\ 0 & -1\end{pmatrix}", True),
    (r"\begin{pmatrix} 1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix}-1 & 0 \\ 0 & -1\end{pmatrix}", False),
    ("6+9i", "6+9i", True), ("9i+6", "6+9i", True), ("-2,1", "1,-2", True), ("-2,2", "-2,1", False),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", True),
    (r"\text{Evelyn}", "Evelyn", True), ("evelyn", r"\text{Evelyn}", True), (r"\text{(C)}", r"\text{(D)}", False),
    (r"15\mbox{ cm}^2", r"15\mbox{ cm}^2", True), ("2516_8", "2516_8", True),
    ("7.25e-11", "7.25e-11", True), ("1.6", "1.60", True), ("1.6", "1.7", False),
    ("$18", "18", True), ("18", "$18$", True), (r"\$18", "18", True),  # GSM8K dollar answers
]


@pytest.mark.parametrize("answer,reference,correct", COMPARE)
def test_compare_answers(answer: str, reference: str, correct: bool) -> None:
    assert compare_answers(answer, reference)[0] is correct


def test_grade_math_reports_extraction_and_bare_answers() -> None:
    g = grade_math(r"We get \boxed{070}.", "70")
    assert g.correct and g.extracted == "070" and g.method == "numeric"
    assert grade_math("70", "70").correct  # a bare one-line answer is the answer
    assert not grade_math("I think it is\nprobably big", "70").correct


def test_cleanup() -> None:
    p = "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert strip_instructions(p) == "Find x."
    assert strip_instructions("Find x. Let's think step by step and output the final answer within \\boxed{}.") == "Find x."
    assert normalize_answer(r"$336^\circ$") == "336"
    assert normalize_answer(r"\left( 3, \dfrac{\pi}{2} \right)") == r"( 3, \frac{\pi}{2} )"
    # a matrix row separator followed by a space is not a "\ " spacing command
    assert normalize_answer(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}") == r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"
    assert normalize_answer(r"1\,000\ m") == "1000 m"


def test_math_verify_path_works_off_the_main_thread() -> None:
    """math-verify's own limit needs the main thread; ours falls back to a worker process."""
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(compare_answers(r"\frac{2}{4}", "0.5", timeout_s=30)[0]))
    t.start()
    t.join(60)
    assert out == [True]


def test_timeout_limits_a_comparison() -> None:
    import time

    from mx_envs.tasks.timelimit import CallTimeout, call_with_timeout

    with pytest.raises(CallTimeout):
        call_with_timeout(time.sleep, (5,), 0.2)
    assert call_with_timeout(sum, ([1, 2],), 1.0) == 3


# ---------------------------------------------------------------- real data


def _forms(answer: str) -> list[str]:
    n = int(answer)
    return [f"\\boxed{{{n}}}", f"The final answer is {n}.", f"\\boxed{{{n:03d}}}", f"\\boxed{{{n}.0}}",
            f"\\boxed{{{n:,}}}", f"Answer: ${n}$", f"\\boxed{{{n}^\\circ}}", f"\\boxed{{\\mathbf{{{n}}}}}"]


@pytest.mark.data
@pytest.mark.parametrize("name", ["aime24", "aime25"])
def test_aime_reference_answers_in_equivalent_forms(name: str, data_dir) -> None:
    from mx_envs.tasks import load_tasks

    tasks = load_tasks(name, hub=False)
    assert len(tasks) == 30
    for t in tasks:
        for form in _forms(t.answer):
            assert grade_math(form, t.answer).correct, (t.id, form)
        for wrong in (int(t.answer) - 1, int(t.answer) + 1):
            assert not grade_math(f"\\boxed{{{wrong}}}", t.answer).correct, (t.id, wrong)


@pytest.mark.data
@pytest.mark.slow
def test_math500_reference_answers_accept_themselves(data_dir) -> None:
    from mx_envs.tasks import load_tasks

    tasks = load_tasks("math500", hub=False)
    assert len(tasks) == 500
    rejected = [t.id for t in tasks if not grade_math(f"\\boxed{{{t.answer}}}", t.answer).correct]
    assert rejected == []


# Reward-hack guards, found by the RL demo: SmolLM2 executor replies that restate the question.
@pytest.mark.parametrize(
    ("response", "reference", "correct"),
    [
        ("Several ways to calculate 7 + 4, but this is just one method.", "11", False),  # prose
        ("7 + 4", "11", False),  # unevaluated restatement
        ("\\boxed{7+4}", "11", False),
        ("\\boxed{2 \\times 3}", "6", False),
        ("8 + 9 = 17", "17", True),  # an equation's right-hand side is the answer
        ("8 + 9 = 16", "17", False),
        ("x = 5", "5", True),
        ("\\boxed{\\frac{22}{2}}", "11", False),  # an integer reference needs an integer literal
        ("\\boxed{\\frac{22}{4}}", "\\frac{11}{2}", True),  # a rational one accepts any equal fraction
        ("\\boxed{x+1}", "x+1", True),  # non-integer references keep expressions
        ("Evelyn", "\\text{Evelyn}", True),  # textual references keep bare text answers
    ],
)
def test_bare_and_unevaluated_answers(response, reference, correct):
    assert grade_math(response, reference).correct is correct
