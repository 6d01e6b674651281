"""Code grading: LiveCodeBench comparison, per-test verdicts in the real sandbox, checkers."""

from __future__ import annotations

import json

import pytest

from mx_envs.tasks.code_extract import extract_code
from mx_envs.tasks.code_grader import grade_code, parse_harness_output
from mx_envs.tasks.code_harness import outputs_match, results_match
from mx_envs.tasks.record import CodeTests


@pytest.mark.parametrize("out,exp,tol,ok", [
    ("3\n", "3", None, True), ("  3  \n\n", "3\n", None, True), ("1 2\n3", "1  2\n3", None, True),
    ("1.50", "1.5", None, True), ("5e0", "5", None, True), ("1.5000001", "1.5", None, False),
    ("1.5000001", "1.5", 1e-6, True), ("1.6", "1.5", 1e-6, False), ("YES", "yes", None, False),
    ("3\n4", "3", None, False), ("3\n\n4", "3\n4", None, False), ("50000000000000001", "50000000000000000", None, False),
    ("abc 1", "abc 1.0", None, False),  # a non-numeric token: the line must match as text
])
def test_outputs_match_lcb_semantics(out: str, exp: str, tol: float | None, ok: bool) -> None:
    assert outputs_match(out, exp, tol) is ok


def test_results_match() -> None:
    assert results_match([0, 1], [0, 1]) and not results_match([1, 0], [0, 1]) and results_match(2.0, 2)


def test_extract_code_from_markdown() -> None:
    text = "Idea...\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\n```bash\nrun\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"
    assert extract_code("```python\nprint(4)\n") == "print(4)\n"


def test_harness_output_parsing_fills_missing_tests() -> None:
    lines = json.dumps({"index": 0, "verdict": "passed", "time_s": 0.1}) + "\ngarbage\n"
    recs = parse_harness_output(lines, 3, "timeout")
    assert [r["verdict"] for r in recs] == ["passed", "timeout", "timeout"]
    assert [r["verdict"] for r in parse_harness_output(lines, 2, "ok")] == ["passed", "not_run"]


SUM_TESTS = CodeTests(stdin_tests=[("1 2\n", "3\n"), ("5 5\n", "10\n"), ("0 0", "0")], time_limit_s=2.0)


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_stdio_program_passes_and_wrong_one_fails(grading_sandbox, mode: str) -> None:
    g = grade_code("```python\na, b = map(int, input().split())\nprint(a + b)\n```", SUM_TESTS, grading_sandbox, mode=mode)
    assert g.verdicts == ["passed"] * 3 and g.pass_all and g.fraction == 1.0
    bad = grade_code("a, b = map(int, input().split())\nprint(a - b if a != b else a + b)", SUM_TESTS, grading_sandbox,
                     mode=mode)
    assert bad.verdicts == ["wrong_answer", "passed", "passed"] and not bad.pass_all
    assert bad.fraction == pytest.approx(2 / 3)


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_per_test_verdicts(grading_sandbox, mode: str) -> None:
    src = (
        "import sys\nv = sys.stdin.read().split()\n"
        "if v[0] == 'loop':\n    while True: pass\n"
        "if v[0] == 'mem':\n    x = bytearray(4 << 30)\n"
        "if v[0] == 'err':\n    raise KeyError(v[0])\n"
        "if v[0] == 'exit':\n    print('ok'); sys.exit(0)\n"
        "print(v[0])\n"
    )
    tests = CodeTests(stdin_tests=[("a", "a"), ("loop", "x"), ("mem", "x"), ("err", "x"), ("exit", "ok"), ("b", "c")],
                      time_limit_s=1.0)
    g = grade_code(src, tests, grading_sandbox, memory_mb=512, mode=mode)
    assert g.verdicts == ["passed", "timeout", "memory_exceeded", "runtime_error", "passed", "wrong_answer"]
    assert "KeyError" in g.details[3]["message"]
    assert 0.9 < g.details[1]["time_s"] < 3.0
    assert grade_code("def f(:\n", tests, grading_sandbox, mode=mode).verdicts == ["syntax_error"] * 6
    assert grade_code("Sorry, I cannot help with that.\n```\n", tests, grading_sandbox).verdicts == ["syntax_error"] * 6


def test_tests_do_not_share_state(grading_sandbox) -> None:
    tests = CodeTests(stdin_tests=[("", "1"), ("", "1")])
    src = "import os\nn = int(open('counter').read()) if os.path.exists('counter') else 0\nopen('counter','w').write(str(n+1))\nprint(n+1)"
    # files persist within the run's working directory (a real program could do the same), but
    # module state does not: a global counter starts fresh in every test
    assert grade_code("import builtins\nbuiltins.X = getattr(builtins, 'X', 0) + 1\nprint(builtins.X)", tests,
                      grading_sandbox).pass_all
    assert grade_code(src, tests, grading_sandbox).verdicts[0] == "passed"


def test_call_based_function_and_solution_class(grading_sandbox) -> None:
    tests = CodeTests(call_tests=[("[[2, 7, 11, 15], 9]", "[0, 1]"), ("[[3, 3], 6]", "[0, 1]")], fn_name="twoSum")
    cls = ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
           "        d = {}\n        for i, x in enumerate(nums):\n            if target - x in d: return (d[target - x], i)\n"
           "            d[x] = i\n")
    assert grade_code(cls, tests, grading_sandbox).pass_all  # tuple result == list expected; List from prelude
    assert grade_code("def twoSum(nums, target):\n    return [0, 1]\n", tests, grading_sandbox).pass_all
    wrong = grade_code("def twoSum(nums, target):\n    return [1, 0]\n", tests, grading_sandbox)
    assert wrong.verdicts == ["wrong_answer", "wrong_answer"]
    missing = grade_code("def other():\n    pass\n", tests, grading_sandbox)
    assert missing.verdicts == ["runtime_error"] * 2 and "twoSum" in missing.details[0]["message"]
    # an object that claims equality with everything is not a JSON value: rejected
    cheat = "class E:\n    def __eq__(self, o): return True\ndef twoSum(nums, target):\n    return E()\n"
    assert grade_code(cheat, tests, grading_sandbox).verdicts == ["wrong_answer"] * 2


def test_checker_accepts_any_valid_output(grading_sandbox) -> None:
    tests = CodeTests(stdin_tests=[("3\n", "1 2 3\n")], time_limit_s=2.0)
    perm = "n = int(input())\nprint(*range(n, 0, -1))"
    assert not grade_code(perm, tests, grading_sandbox).pass_all
    tests.checker = ("def check(input, expected, output):\n    n = int(input)\n"
                     "    return sorted(map(int, output.split())) == list(range(1, n + 1))\n")
    assert grade_code(perm, tests, grading_sandbox).pass_all
    assert not grade_code("print(1, 1, 1)", tests, grading_sandbox).pass_all


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_stop_on_failure_and_backstop(grading_sandbox, mode: str) -> None:
    g = grade_code("print(0)", SUM_TESTS, grading_sandbox, stop_on_failure=True, mode=mode)
    assert g.verdicts == ["wrong_answer", "not_run", "not_run"]
    slow = grade_code("import time\ntime.sleep(0.8)\nprint(3)", SUM_TESTS, grading_sandbox, overall_timeout_s=1.2,
                      mode=mode)
    assert slow.verdicts[0] == "passed" and slow.verdicts[-1] == "timeout"


def test_humaneval_style_completion_and_full_function(grading_sandbox) -> None:
    tests = CodeTests(fn_name="add", starter_code="from typing import List\n\ndef add(a: int, b: int) -> int:\n",
                      assert_source="assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    assert grade_code("    return a + b\n", tests, grading_sandbox).pass_all
    assert grade_code("```python\ndef add(a, b):\n    return a + b\n```", tests, grading_sandbox).pass_all
    assert grade_code("def add(a, b):\n    return a * b\n", tests, grading_sandbox).verdicts == ["wrong_answer"]


@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_early_never_passes_assert_or_call_tests(escape: str, grading_sandbox) -> None:
    asserts = CodeTests(fn_name="f", assert_source="assert f() == 1\n")
    calls = CodeTests(fn_name="f", call_tests=[("[]", "1")])
    for tests in (asserts, calls):
        g = grade_code("def f():\n    return 2\n" + escape, tests, grading_sandbox)
        assert g.verdicts == ["runtime_error"], (escape, g.details)
