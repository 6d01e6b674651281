"""Code grading: LiveCodeBench comparison, the value codec, per-test verdicts in the real sandbox, checkers."""

from __future__ import annotations

import json

import pytest

from mx_envs.tasks import code_harness as H
from mx_envs.tasks.code_compare import evalplus_match, outputs_match, results_match
from mx_envs.tasks.code_extract import extract_code
from mx_envs.tasks.code_grader import grade_code, parse_records
from mx_envs.tasks.record import CodeTests


@pytest.mark.parametrize("out,exp,tol,ok", [
    ("3\n", "3", None, True), ("  3  \n\n", "3\n", None, True), ("1 2\n3", "1  2\n3", None, True),
    ("1.50", "1.5", None, True), ("5e0", "5", None, True), ("1.5000001", "1.5", None, False),
    ("1.5000001", "1.5", 1e-6, True), ("1.6", "1.5", 1e-6, False), ("YES", "yes", None, False),
    ("3\n4", "3", None, False), ("3\n\n4", "3\n4", None, False), ("50000000000000001", "50000000000000000", None, False),
    ("abc 1", "abc 1.0", None, False),  # a non-numeric token: the line must match as text
    ("sNaN", "1", None, False), ("sNaN", "sNaN", None, True), ("nan", "NaN", None, False),  # never raises
    ("1e999999999", "1", 1e-6, False), ("Infinity", "inf", None, True),
])
def test_outputs_match_lcb_semantics(out: str, exp: str, tol: float | None, ok: bool) -> None:
    assert outputs_match(out, exp, tol) is ok


@pytest.mark.parametrize("out,exp,tol,ok", [
    ("1 2\n3", "1\n2 3", None, True), ("1.0 x", "1 x", None, True), ("1 x", "1 y", None, False),
    ("0.3333334", "0.333333", 1e-6, True), ("1 2", "1 2 3", None, False), ("sNaN 1", "sNaN 1", None, True),
    ("Yes\nno", "YES\nNO", None, True), ("yes", "NO", None, False), ("Yes", "Yes!", None, False),
    ("1000000010", "1000000009", 1e-6, False),  # integers stay exact under a relative tolerance
])
def test_outputs_match_token_mode(out: str, exp: str, tol: float | None, ok: bool) -> None:
    assert outputs_match(out, exp, tol, mode="tokens") is ok


def test_results_match() -> None:
    assert results_match([0, 1], [0, 1]) and not results_match([1, 0], [0, 1]) and results_match(2.0, 2)
    assert results_match((0, 1), [0, 1]) and not results_match([(0, 1)], [[0, 1]])  # top-level tuple only
    from decimal import Decimal

    assert not results_match(Decimal("sNaN"), 1) and not results_match(H.Opaque("E"), H.Opaque("E"))


@pytest.mark.parametrize("value", [
    None, True, 0, -5, 2 ** 5000, -(3 ** 9000), 1.5, float("inf"), float("-inf"), "s", [1, [2, (3, 4)]], (), (1,),
    {1, 2}, frozenset({"a"}), {1: "a", (2, 3): [4]}, {"k": {"n": None}}, 1 + 2j, b"\x00\xff", bytearray(b"ab"),
])
def test_codec_round_trip(value) -> None:
    import json

    back = H.decode_value(H.strict_loads(json.dumps(H.encode_value(value))))
    assert back == value and type(back) is type(value)


def test_codec_never_trusts_objects() -> None:
    import json
    from decimal import Decimal
    from fractions import Fraction

    class AlwaysEqual(list):
        def __eq__(self, other):
            return True

    nan = H.decode_value(H.strict_loads(json.dumps(H.encode_value(float("nan")))))
    assert nan != nan
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    for v in (AlwaysEqual(), object(), deep, Decimal("sNaN"), Fraction(1, 3)):
        enc = json.dumps(H.encode_value(v))
        dec = H.decode_value(H.strict_loads(enc))
        assert not results_match(dec, []) and not results_match(dec, 0)
    cyclic: list = []
    cyclic.append(cyclic)
    assert H.encode_value(cyclic) is not None
    for bad in ('{"#":"t"}', '{"#":"x","v":1}', '{"#":"s","v":[[1]]}', '[NaN]', '{"#":"i","v":"zz"}',
                '{"#":"d","v":[[1]]}', '{"#":"t","v":[],"#":"s"}', "[" * 5000 + "]" * 5000):
        with pytest.raises(H.DecodeError):
            H.decode_value(H.strict_loads(bad))


def test_evalplus_match() -> None:
    assert evalplus_match(0.1 + 0.2, 0.3, [], "f") and not evalplus_match(0.31, 0.3, [], "f")
    assert evalplus_match([1.0, 2.0000001], [1.0, 2.0], [], "f") and not evalplus_match((1.0,), [1.0], [], "f")
    assert evalplus_match(3, 3, [], "f") and not evalplus_match(True, 2, [], "f")
    assert evalplus_match((5, 4), (4, 5), [], "similar_elements")  # MBPP+ set-equality oracle
    assert evalplus_match(1.0, 2.0, [[-2, 0, 1]], "find_zero") is False  # poly(1) = -1
    assert evalplus_match(2 ** 0.5, 0.0, [[-2, 0, 1]], "find_zero")  # a root, not the reference's
    assert not evalplus_match(H.Opaque("Match"), None, [], "f") and evalplus_match(H.Opaque("Match"), True, [],
                                                                                  "check_str")


def test_extract_code_from_markdown() -> None:
    text = "Idea...\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\n```bash\nrun\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"
    assert extract_code("```python\nprint(4)\n") == "print(4)\n"


def test_record_parsing_is_strict() -> None:
    good = '{"i":0,"t":0.1,"r":{"v":3}}'
    recs, conflicts = parse_records(good + "\ngarbage\n" + '{"i":1,"t":0.1,"r":{"passed":true}}\n'
                                    + '{"i":2,"t":0,"r":{"v":1},"r":{"v":2}}\n' + '{"i":5,"t":0,"r":{"v":1}}', 3)
    assert list(recs) == [0] and not conflicts
    recs, conflicts = parse_records(good + "\n" + '{"i":0,"t":0.1,"r":{"v":4}}', 1)
    assert conflicts == {0}
    recs, _ = parse_records('{"i":0,"t":0,"r":{"e":"passed"}}\n{"i":1,"t":0,"r":{"e":"timeout","m":"x"}}', 2)
    assert list(recs) == [1]
    assert json.loads(good)["r"] == {"v": 3}


SUM_TESTS = CodeTests(stdin_tests=[("1 2\n", "3\n"), ("5 5\n", "10\n"), ("0 0", "0")], time_limit_s=2.0)


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_stdio_program_passes_and_wrong_one_fails(grading_sandbox, mode: str) -> None:
    g = grade_code("```python\na, b = map(int, input().split())\nprint(a + b)\n```", SUM_TESTS, grading_sandbox, mode=mode)
    assert g.verdicts == ["passed"] * 3 and g.pass_all and g.fraction == 1.0
    bad = grade_code("a, b = map(int, input().split())\nprint(a - b if a != b else a + b)", SUM_TESTS, grading_sandbox,
                     mode=mode)
    assert bad.verdicts == ["wrong_answer", "passed", "passed"] and not bad.pass_all
    assert bad.raw_fraction == pytest.approx(2 / 3)
    assert bad.fraction == pytest.approx(1 / 2)  # one constant passes one of the three (3, 10, 0 differ)


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
                      time_limit_s=6.0)  # an OOM kill under load takes seconds
    g = grade_code(src, tests, grading_sandbox, memory_mb=512, mode=mode)
    assert g.verdicts == ["passed", "timeout", "memory_exceeded", "runtime_error", "passed", "wrong_answer"]
    assert "KeyError" in g.details[3]["message"]
    assert 5.9 < g.details[1]["time_s"] < 10.0
    assert grade_code("def f(:\n", tests, grading_sandbox, mode=mode).verdicts == ["syntax_error"] * 6
    assert grade_code("Sorry, I cannot help with that.\n```\n", tests, grading_sandbox).verdicts == ["syntax_error"] * 6


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_stdio_tests_do_not_share_state(grading_sandbox, mode: str) -> None:
    tests = CodeTests(stdin_tests=[("", "1"), ("", "1")])
    # module state starts fresh in every stdin/stdout test
    assert grade_code("import builtins\nbuiltins.X = getattr(builtins, 'X', 0) + 1\nprint(builtins.X)", tests,
                      grading_sandbox, mode=mode).pass_all


def test_call_tests_share_one_loaded_module_like_lcb(grading_sandbox) -> None:
    tests = CodeTests(call_tests=[("[]", "1"), ("[]", "2"), ("[]", "3")], fn_name="f")
    # LiveCodeBench loads the solution once and calls it per test; a hung test gets a fresh worker
    src = "N = [0]\ndef f():\n    N[0] += 1\n    if N[0] == 2:\n        while True: pass\n    return N[0]\n"
    g = grade_code(src, tests, grading_sandbox, time_limit_s=0.5)
    assert g.verdicts == ["passed", "timeout", "passed"]  # the timer ended test 2; the module lives on
    # a test that ignores the timer is killed at the hard deadline and a fresh worker takes test 3
    hard = src.replace("while True: pass", "import signal; signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                           "        while True: pass")
    g = grade_code(hard, tests, grading_sandbox, time_limit_s=0.5)
    assert g.verdicts == ["passed", "timeout", "wrong_answer"] and g.details[1]["time_s"] < 2.5


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
    # an object that claims equality with everything is not plain data: rejected
    cheat = "class E:\n    def __eq__(self, o): return True\ndef twoSum(nums, target):\n    return E()\n"
    assert grade_code(cheat, tests, grading_sandbox).verdicts == ["wrong_answer"] * 2
    syntax = grade_code("def twoSum(:\n", tests, grading_sandbox)
    assert syntax.verdicts == ["syntax_error"] * 2
    crash = grade_code("raise ValueError('at import')\n", tests, grading_sandbox)
    assert crash.verdicts == ["runtime_error"] * 2 and "at import" in crash.details[1]["message"]


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_checker_accepts_any_valid_output(grading_sandbox, mode: str) -> None:
    tests = CodeTests(stdin_tests=[("3\n", "1 2 3\n")], time_limit_s=2.0)
    perm = "n = int(input())\nprint(*range(n, 0, -1))"
    assert not grade_code(perm, tests, grading_sandbox, mode=mode).pass_all
    tests.checker = ("def check(input, expected, output):\n    n = int(input)\n"
                     "    return sorted(map(int, output.split())) == list(range(1, n + 1))\n")
    assert grade_code(perm, tests, grading_sandbox, mode=mode).pass_all
    assert not grade_code("print(1, 1, 1)", tests, grading_sandbox, mode=mode).pass_all
    # a checker that fails on an output rejects it (on the host; grading does not raise)
    assert grade_code("print('x')", tests, grading_sandbox, mode=mode).details[0]["verdict"] == "wrong_answer"


@pytest.mark.parametrize("mode", ["harness", "per_run"])
def test_stop_on_failure_and_backstop(grading_sandbox, mode: str) -> None:
    g = grade_code("print(0)", SUM_TESTS, grading_sandbox, stop_on_failure=True, mode=mode)
    assert g.verdicts == ["wrong_answer", "not_run", "not_run"]
    slow = grade_code("import time\ntime.sleep(0.8)\nprint(3)", SUM_TESTS, grading_sandbox, overall_timeout_s=1.2,
                      mode=mode)
    assert slow.verdicts[0] == "passed" and slow.verdicts[-1] == "timeout"


def test_humaneval_style_completion_and_full_function(grading_sandbox, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MX_CACHE_DIR", str(tmp_path))
    starter = "from typing import List\n\ndef add(a: int, b: int) -> int:\n"
    tests = CodeTests(fn_name="add", starter_code=starter, solutions=[starter + "    return a + b\n"],
                      assert_source="assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    assert grade_code("    return a + b\n", tests, grading_sandbox).pass_all
    assert grade_code("```python\ndef add(a, b):\n    return a + b\n```", tests, grading_sandbox).pass_all
    g = grade_code("def add(a, b):\n    return a + b if a > 0 else 7\n", tests, grading_sandbox)
    assert g.verdicts == ["passed", "wrong_answer"]  # one test per call the asserts make
    # the pairs were cached on disk, readable by this user only
    files = list((tmp_path / "code_oracles").glob("*.json"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_early_never_passes_assert_or_call_tests(escape: str, grading_sandbox) -> None:
    asserts = CodeTests(fn_name="f", assert_source="assert f() == 1\n", solutions=["def f():\n    return 1\n"])
    calls = CodeTests(fn_name="f", call_tests=[("[]", "1")])
    for tests in (asserts, calls):
        g = grade_code("def f():\n    return 2\n" + escape, tests, grading_sandbox)
        assert g.verdicts == ["runtime_error"], (escape, g.details)


def test_lcb_fifty_thousand_digit_ints(grading_sandbox) -> None:
    """LiveCodeBench's evaluation process allows 50,000-digit int<->str conversions: so does the
    candidate's run (prelude) and the host's parsing of expected outputs (its own default is 4,300)."""
    big = "7" * 20_000
    tests = CodeTests(call_tests=[("[]", big)], fn_name="f")
    assert grade_code(f"def f():\n    return int('{big[:10]}' * 2000)\n", tests, grading_sandbox).pass_all
    assert not grade_code("def f():\n    return 7\n", tests, grading_sandbox).pass_all
    stdio = CodeTests(stdin_tests=[("", big)])
    assert grade_code("print(int('7' * 20000))\n", stdio, grading_sandbox).pass_all
