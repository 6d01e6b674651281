"""Small tasks for the env tests: toy math problems and a stdin/stdout code task with a reference solution."""

from __future__ import annotations

from mx_envs.tasks.record import CodeTests, Task

ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
# Passes 2 of the 3 tests below (wrong when b is negative).
PARTIAL_PROGRAM = "a, b = map(int, input().split())\nprint(abs(a) + abs(b))\n"


def math_tasks() -> list[Task]:
    return [
        Task(id=f"m{i}", dataset="toy-math", split="test", kind="math", prompt=f"What is {i} + {i + 30}?", answer=str(2 * i + 30))
        for i in range(4)
    ]


def code_task() -> Task:
    return Task(
        id="c0",
        dataset="toy-code",
        split="test",
        kind="code",
        prompt="Read two integers a and b from one line of standard input and print a + b.",
        tests=CodeTests(
            stdin_tests=[("1 2\n", "3\n"), ("10 -4\n", "6\n"), ("0 0\n", "0\n")],
            solutions=[ADD_PROGRAM],
            time_limit_s=5.0,
        ),
    )
