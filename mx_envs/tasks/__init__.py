"""Tasks, datasets and graders.

* :func:`load_tasks` / :data:`DATASETS`: benchmark and training data as :class:`TaskSet`;
* :func:`grade`: grade any task; :func:`grade_math` and :func:`grade_code` for each kind.

Imports here are cheap; heavy dependencies (sympy, math-verify, datasets) load on first use.
"""

from __future__ import annotations

from typing import Any

from mx_envs.tasks.record import CodeTests, Task

__all__ = ["CodeTests", "Task", "TaskSet", "DATASETS", "DatasetNotFound", "load_tasks", "grade", "Grade",
           "grade_math", "MathGrade", "grade_code", "CodeGrade", "extract_answer", "extract_code"]

_LAZY = {
    "TaskSet": "mx_envs.tasks.registry", "DATASETS": "mx_envs.tasks.registry", "load_tasks": "mx_envs.tasks.registry",
    "DatasetNotFound": "mx_envs.tasks.sources", "grade": "mx_envs.tasks.grading", "Grade": "mx_envs.tasks.grading",
    "grade_math": "mx_envs.tasks.math_grader", "MathGrade": "mx_envs.tasks.math_grader",
    "grade_code": "mx_envs.tasks.code_grader", "CodeGrade": "mx_envs.tasks.code_grader",
    "extract_answer": "mx_envs.tasks.math_extract", "extract_code": "mx_envs.tasks.code_extract",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mx_envs.tasks' has no attribute {name!r}")
