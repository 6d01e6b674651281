"""The designer's chat: a system prompt with the MAS API reference and example designs, then the task."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

from mx_envs.tasks.record import Task

DEFAULT_EXAMPLES: tuple[str, ...] = ("single", "ensemble_judge")

_INTRO = """You are the Designer of a multi-agent system (MAS). Read the task, then write a Python script that \
builds agents and wires them together to solve it. Another model (the Executor) will play every agent you \
create, turn by turn; the script runs in a sandbox and its `forward(task)` return value is graded as the final \
answer.

Reply with exactly one ```python code block that defines `def forward(task):` and returns the final answer \
({answer_hint}). Use only the library described below; keep the number of LLM calls small.
"""

_ANSWER_HINT = {
    "math": "for math: the final answer, e.g. the content of \\boxed{...}",
    "code": "for code: a complete Python program or function as the task asks, as text",
}


@functools.lru_cache(maxsize=1)
def api_reference() -> str:
    """The MAS library reference (``mx_envs/mas/API.md``), as shipped with the package."""
    return resources.files("mx_envs.mas").joinpath("API.md").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=16)
def _example_block(names: tuple[str, ...]) -> str:
    from mx_envs.mas.designs import load_design

    parts = []
    for name in names:
        parts.append(f"### Example design: {name}\n\n```python\n{load_design(name).strip()}\n```")
    return "\n\n".join(parts)


def designer_system_prompt(kind: str, examples: Sequence[str] = DEFAULT_EXAMPLES) -> str:
    """The designer's system message for tasks of ``kind`` ("math" or "code")."""
    hint = _ANSWER_HINT.get(kind, "the answer the task asks for")
    text = _INTRO.format(answer_hint=hint) + "\n## MAS library reference\n\n" + api_reference().strip()
    if examples:
        text += "\n\n## Examples\n\n" + _example_block(tuple(examples))
    return text


def designer_messages(task: Task, examples: Sequence[str] = DEFAULT_EXAMPLES) -> list[dict[str, str]]:
    """System prompt (API reference + examples) and the task as the user message."""
    return [
        {"role": "system", "content": designer_system_prompt(task.kind, examples)},
        {"role": "user", "content": f"Task ({task.kind}):\n\n{task.prompt}"},
    ]
