"""One entry point for grading any task: :func:`grade`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mx_envs.tasks.record import Task


@dataclass
class Grade:
    """Outcome of grading an answer to a task.

    ``score`` is 1.0/0.0 for math and, for code, the share of hidden tests passed beyond the best
    constant's (:attr:`~mx_envs.tasks.code_grader.CodeGrade.fraction`); ``correct`` is exact-match
    for math and, for code, :attr:`~mx_envs.tasks.code_grader.CodeGrade.solved` (every test passes
    and a hidden test separates the program from a constant or a replay of the prompt's examples;
    the dataset's plain pass-all is ``details["pass_all"]``).
    """

    correct: bool
    score: float
    extracted: str | None
    details: dict[str, Any] = field(default_factory=dict)


def grade(task: Task, answer_text: str, **opts: Any) -> Grade:
    """Grade ``answer_text`` (a final response or a program) against ``task``'s reference.

    Math options: ``timeout_s``. Code options: those of :func:`~mx_envs.tasks.code_grader.grade_code`
    (``sandbox``, ``time_limit_s``, ``overall_timeout_s``, ``memory_mb``, ``stop_on_failure``,
    ``extract``).
    """
    if task.kind == "math":
        if task.answer is None:
            raise ValueError(f"math task {task.id} has no reference answer")
        from mx_envs.tasks.math_grader import grade_math

        g = grade_math(answer_text, task.answer, **opts)
        return Grade(g.correct, 1.0 if g.correct else 0.0, g.extracted, {"method": g.method})
    if task.kind == "code":
        if task.tests is None:
            raise ValueError(f"code task {task.id} has no tests")
        from mx_envs.tasks.code_grader import grade_code

        c = grade_code(answer_text, task.tests, **opts)
        return Grade(c.solved, c.fraction, c.program, c.to_dict())
    raise ValueError(f"task {task.id}: unknown kind {task.kind!r}")
