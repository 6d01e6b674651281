"""Finding the script in a designer's text and the static checks before it runs."""

from __future__ import annotations

import pytest

from mx_envs.mas.protocol import TerminationReason as R
from mx_envs.mas.script import check_script, extract_script

GOOD = "def forward(task):\n    return task\n"


def test_last_python_block_that_defines_forward():
    text = f"Plan.\n```python\n{GOOD}```\nUsage:\n```python\nprint(forward('x'))\n```\n"
    assert extract_script(text) == GOOD
    two = "```python\ndef forward(task):\n    return 1\n```\n```py\ndef forward(task):\n    return 2\n```"
    assert "return 2" in extract_script(two)
    assert extract_script("```python\nx = 1\n```") == "x = 1\n"  # no forward anywhere: last block


def test_untagged_block_bare_script_and_no_code():
    assert extract_script(f"```\n{GOOD}```") == GOOD
    assert extract_script(GOOD) == GOOD  # whole text parses and defines forward
    assert extract_script("I would use a debate between three agents.") is None
    assert extract_script("x = 1\n") is None  # parses but defines nothing
    assert extract_script("") is None
    assert extract_script(None) is None  # type: ignore[arg-type]


def test_unclosed_fence_is_a_script_that_fails_to_parse():
    script = extract_script("```python\ndef forward(task):\n    return (")
    assert script is not None and check_script(script)[0] is R.SYNTAX_ERROR


@pytest.mark.parametrize(
    "src, reason, words",
    [
        ("def forward(task)\n    return 1\n", R.SYNTAX_ERROR, "line 1"),
        ("def forward(task):\nreturn 1\n", R.SYNTAX_ERROR, "IndentationError"),
        ("x = 1\0\n", R.SYNTAX_ERROR, ""),
        ("def solve(task):\n    return 1\n", R.MISSING_ENTRY, "def forward(task)"),
        ("forward = print\n", R.MISSING_ENTRY, "def forward(task)"),
        ("class A:\n    def forward(self, task):\n        return 1\n", R.MISSING_ENTRY, "top-level"),
        ("async def forward(task):\n    return 1\n", R.MISSING_ENTRY, "async"),
        ("def forward():\n    return 1\n", R.MISSING_ENTRY, "first argument"),
        ("def forward(task, n):\n    return 1\n", R.MISSING_ENTRY, "default values"),
        ("def forward(task, *, n):\n    return 1\n", R.MISSING_ENTRY, "default values"),
    ],
)
def test_check_script_failures(src, reason, words):
    got = check_script(src)
    assert got is not None and got[0] is reason and words in got[1]


@pytest.mark.parametrize(
    "src", [GOOD, "def forward(task, n=3):\n    return 1\n", "def forward(*args):\n    return 1\n"]
)
def test_check_script_accepts(src):
    assert check_script(src) is None
