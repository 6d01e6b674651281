"""Grading throughput.

Math: answers graded per second on the fast path (plain numerals: AIME-style answers) and on the
sympy path (MATH-500-style LaTeX answers), each against the naive way (math-verify's own
``parse``/``verify`` on every pair, no fast path) and against the grader before issue 10 (loaded
from git revision ``OLD_MATH_REV``); and whole integer responses, extraction included.

Code: grading overhead per test beyond the program's own run time, for stdin/stdout tests (one
sandbox run per test, the default; or one run with a forked child per test) and call-based tests
(one run, one worker calling the function per input), each with the judge outside the candidate's
run (issue 10), against the pre-issue-10 harness that judged inside the run (its source read
from git, run on the same sandbox) and a bare loop over ``sandbox.run``. The programs are trivial,
so nearly all the time is overhead.

``MX_BENCH_QUICK=1`` shrinks the inputs.
"""

from __future__ import annotations

import pytest

from mx_envs.tasks.math_grader import compare_answers, grade_math
from mx_envs.tasks.record import CodeTests

NUMERIC = [(f"{n:03d}", str(n)) for n in range(0, 1000, 7)] + [(f"{n:,}.0", str(n)) for n in range(1000, 9000, 97)]
LATEX = [
    (r"\frac{11}{2}", r"\frac{11}{2}"), (r"\dfrac{33}{100}", "0.33"), (r"2\sqrt{5}", r"\sqrt{20}"),
    (r"(2,12) \cup (12,102)", r"(2,12)\cup(12,102)"), (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
                                                        r"\begin{pmatrix}-1 & 0 \\ 0 & -1\end{pmatrix}"),
    ("6+9i", "9i+6"), (r"1+2\sqrt{3}", r"2\sqrt{3}+1"), (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"), ("x^5 - x^4 + x^3", "x^3 - x^4 + x^5"),
]


def _pairs(quick: bool, pairs: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    reps = max(1, (n // 4 if quick else n) // len(pairs))
    return pairs * reps


def _naive_math_verify(pairs: list[tuple[str, str]]) -> int:
    import math_verify

    return sum(bool(math_verify.verify(math_verify.parse("$" + r + "$"), math_verify.parse("$" + a + "$")))
               for a, r in pairs)


def _ours(pairs: list[tuple[str, str]]) -> int:
    return sum(compare_answers(a, r)[0] for a, r in pairs)


def _ours_responses(pairs: list[tuple[str, str]]) -> int:
    return sum(grade_math(f"Thus the answer is \\boxed{{{a}}}.", r).correct for a, r in pairs)


# The math grader before the reward-integrity rewrite (issue 10), loaded from git into a temporary
# package, so the ratio old/new is measured in the same run on the same machine.
OLD_MATH_REV = "82a5774"
_OLD_FILES = ("math_grader", "math_extract", "cleanup", "timelimit")


@pytest.fixture(scope="module")
def old_math_grader(tmp_path_factory):
    import importlib
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot load the old math grader for the ratio")
    root = Path(__file__).resolve().parents[1]
    pkg = tmp_path_factory.mktemp("oldmath") / "old_mx_math"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in _OLD_FILES:
        out = subprocess.run(["git", "-C", str(root), "show", f"{OLD_MATH_REV}:mx_envs/tasks/{name}.py"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"git revision {OLD_MATH_REV} is not in this checkout: no old math grader to compare")
        (pkg / f"{name}.py").write_text(out.stdout.replace("from mx_envs.tasks.", "from old_mx_math."))
    sys.path.insert(0, str(pkg.parent))
    try:
        return importlib.import_module("old_mx_math.math_grader")
    finally:
        sys.path.remove(str(pkg.parent))


@pytest.mark.parametrize("path,pairs", [("fast_path", NUMERIC), ("math_verify_path", LATEX)])
@pytest.mark.parametrize("impl", ["naive_math_verify", "old_grader", "ours"])
def test_math_grading_rate(benchmark, bench_quick, path, pairs, impl, request) -> None:
    work = _pairs(bench_quick, pairs, 400 if path == "fast_path" else 200)
    if impl == "old_grader":
        old = request.getfixturevalue("old_math_grader")

        def fn(ps: list[tuple[str, str]]) -> int:
            return sum(old.compare_answers(a, r)[0] for a, r in ps)
    else:
        fn = _naive_math_verify if impl == "naive_math_verify" else _ours
    benchmark.group = f"grading-math-{path}"  # mx bench pairing (benchmarks/README.md)
    benchmark.extra_info["naive"] = impl == "naive_math_verify"
    fn(work[:5])  # warm imports and caches
    correct = benchmark.pedantic(fn, args=(work,), rounds=3, iterations=1)
    assert correct == len(work)
    benchmark.extra_info["pairs"] = len(work)
    benchmark.extra_info["pairs_per_s"] = round(len(work) / benchmark.stats.stats.mean, 1)


@pytest.mark.parametrize("impl", ["old_grader", "ours"])
def test_math_grading_rate_integer_responses(benchmark, bench_quick, impl, request) -> None:
    """Whole responses (extraction included) with integer answers: the rate an RL rollout sees."""
    work = _pairs(bench_quick, NUMERIC, 4000)
    if impl == "old_grader":
        old = request.getfixturevalue("old_math_grader")

        def fn(ps: list[tuple[str, str]]) -> int:
            return sum(old.grade_math(f"Thus the answer is \\boxed{{{a}}}.", r).correct for a, r in ps)
    else:
        fn = _ours_responses
    benchmark.group = "grading-math-integer-responses"
    benchmark.extra_info["naive"] = impl == "old_grader"
    correct = benchmark.pedantic(fn, args=(work,), rounds=3, iterations=1, warmup_rounds=1)
    assert correct == len(work)
    benchmark.extra_info["pairs"] = len(work)
    benchmark.extra_info["pairs_per_s"] = round(len(work) / benchmark.stats.stats.mean, 1)


N_TESTS = 20
PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
FUNCTION = "def add(a, b):\n    return a + b\n"
# The grader before issue 10 (judge inside the candidate's sandbox run): its harness, read from git
# so that old and new are measured in the same run on the same sandbox.
OLD_COMMIT = "82a5774"


@pytest.fixture(scope="module")
def sandbox():
    from mx_envs.tasks.code_grader import grading_sandbox

    sb = grading_sandbox()
    sb.warm_up()
    return sb


def _tests(n: int) -> CodeTests:
    return CodeTests(stdin_tests=[(f"{i} {i}\n", f"{2 * i}\n") for i in range(n)], time_limit_s=6.0)


def _call_tests(n: int) -> CodeTests:
    return CodeTests(call_tests=[(f"[{i}, {i}]", f"{2 * i}") for i in range(n)], fn_name="add", time_limit_s=6.0)


def _record(benchmark, n: int, own_s: float) -> None:
    benchmark.extra_info["tests"] = n
    benchmark.extra_info["overhead_ms_per_test"] = round(1000 * (benchmark.stats.stats.mean - own_s) / n, 2)
    benchmark.extra_info["total_ms_per_test"] = round(1000 * benchmark.stats.stats.mean / n, 2)
    benchmark.extra_info["program_ms_per_test"] = round(1000 * own_s / n, 2)


@pytest.mark.parametrize("kind,mode", [("stdio", "per_run"), ("stdio", "harness"), ("call", "auto")])
def test_code_grading_grade_code(benchmark, bench_quick, sandbox, kind, mode) -> None:
    from mx_envs.tasks.code_grader import grade_code

    n = N_TESTS // 2 if bench_quick else N_TESTS
    tests, program = (_tests(n), PROGRAM) if kind == "stdio" else (_call_tests(n), FUNCTION)
    benchmark.group = f"grading-code-{kind}"
    benchmark.extra_info["naive"] = False
    g = benchmark.pedantic(grade_code, args=(program, tests, sandbox), kwargs={"mode": mode}, rounds=5,
                           iterations=1, warmup_rounds=1)
    assert g.pass_all
    _record(benchmark, n, sum(d["time_s"] for d in g.details))  # the programs' own wall time


def _old_harness() -> str:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "-C", str(root), "show", f"{OLD_COMMIT}:mx_envs/tasks/code_harness.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"git and commit {OLD_COMMIT} are needed for the old-harness baseline: {exc}")


@pytest.mark.parametrize("kind", ["stdio", "call"])
def test_code_grading_old_in_sandbox_judge(benchmark, bench_quick, sandbox, kind) -> None:
    """The pre-issue-10 harness (tests and judge inside the candidate's run), same sandbox."""
    import json

    from mx_envs.sandbox.api import Limits

    harness = _old_harness()
    n = N_TESTS // 2 if bench_quick else N_TESTS
    if kind == "stdio":
        items = [{"kind": "stdio", "input": f"{i} {i}\n", "expected": f"{2 * i}\n"} for i in range(n)]
        program = PROGRAM
    else:
        items = [{"kind": "call", "args": f"[{i}, {i}]", "expected": f"{2 * i}"} for i in range(n)]
        program = FUNCTION
    job = {"tests": items, "fn_name": "add", "time_limit_s": 6.0, "checker": None, "float_tolerance": None,
           "stop_on_failure": False}
    limits = Limits(wall_s=n * 6.5 + 10, memory_mb=1024, max_processes=64, file_size_mb=64)

    def old() -> tuple[int, float]:
        r = sandbox.run(harness, stdin="", limits=limits, files={"solution.py": program, "mx_job.json": json.dumps(job)})
        recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        return sum(rec["verdict"] == "passed" for rec in recs), sum(rec["time_s"] for rec in recs)

    benchmark.group = f"grading-code-{kind}"
    benchmark.extra_info["naive"] = True
    ok, own = benchmark.pedantic(old, rounds=5, iterations=1, warmup_rounds=1)
    assert ok == n
    _record(benchmark, n, own)


def test_code_grading_one_run_per_test_naive(benchmark, bench_quick, sandbox) -> None:
    from mx_envs.sandbox.api import Limits
    from mx_envs.tasks.code_compare import outputs_match

    n = N_TESTS // 2 if bench_quick else N_TESTS
    tests = _tests(n)
    limits = Limits(wall_s=6.0)

    def naive() -> tuple[int, float]:
        ok, own = 0, 0.0
        for inp, exp in tests.stdin_tests:
            r = sandbox.run(PROGRAM, stdin=inp, limits=limits)
            ok += r.ok and outputs_match(r.stdout, exp)
            own += r.wall_s
        return ok, own

    benchmark.group = "grading-code-stdio"
    benchmark.extra_info["naive"] = True
    ok, own = benchmark.pedantic(naive, rounds=5, iterations=1, warmup_rounds=1)
    assert ok == n
    _record(benchmark, n, own)
