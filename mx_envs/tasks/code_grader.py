"""Code grading: run a candidate against a task's tests in the sandbox, one verdict per test.

All tests of one candidate run in **one** sandbox run: :mod:`mx_envs.tasks.code_harness` forks a
child per test inside the sandbox, enforces the per-test wall-clock limit and reports per-test
verdicts as JSON lines; the sandbox's own limits (memory, processes, files, network) hold for the
whole run, and its wall-clock limit is the overall backstop. (Measured against one sandbox run per
test in ``benchmarks/test_grading_bench.py``.)

Verdicts: ``passed``, ``wrong_answer``, ``timeout``, ``runtime_error``, ``memory_exceeded``,
``syntax_error``. The benchmark metric is :attr:`CodeGrade.pass_all`; :attr:`CodeGrade.fraction` is
the optional shaping signal.

Problems with several correct outputs: set ``CodeTests.checker`` to Python source defining
``check(input: str, expected: str, output: str) -> bool``; it replaces the token comparison for
stdin/stdout tests and runs inside the sandbox too. Example::

    tests.checker = '''
    def check(input, expected, output):
        n = int(input.split()[0])
        return sorted(map(int, output.split())) == list(range(1, n + 1))
    '''
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mx_envs.tasks import code_harness as H
from mx_envs.tasks.code_extract import extract_code
from mx_envs.tasks.record import CodeTests

NOT_RUN = "not_run"  # only with stop_on_failure: after the first failing test
VERDICTS = (H.PASSED, H.WRONG_ANSWER, H.TIMEOUT, H.RUNTIME_ERROR, H.MEMORY_EXCEEDED, H.SYNTAX_ERROR)
_HARNESS_SOURCE: str | None = None

# Standard-library modules candidate programs commonly import, preloaded in the grading sandbox's
# pool server: the LiveCodeBench prelude then costs nothing per run, and the modules are importable
# even where the sandbox user cannot read the interpreter's library directory.
CANDIDATE_PRELOAD: tuple[str, ...] = (
    "string", "re", "datetime", "collections", "collections.abc", "heapq", "bisect", "copy", "math", "cmath",
    "random", "statistics", "itertools", "functools", "operator", "io", "json", "typing", "decimal",
    "fractions", "array", "calendar", "textwrap", "dataclasses", "enum", "queue", "threading", "string",
    "time", "unicodedata", "struct", "hashlib", "pprint", "numbers", "contextlib", "sys", "os",
)


def grading_sandbox() -> Any:
    """The shared sandbox used when :func:`grade_code` is given none (process backend + preload)."""
    from mx_envs.sandbox import get_sandbox

    return get_sandbox("process", extra_preload=CANDIDATE_PRELOAD)


def harness_source() -> str:
    """Source of the in-sandbox harness (read once)."""
    global _HARNESS_SOURCE
    if _HARNESS_SOURCE is None:
        _HARNESS_SOURCE = Path(H.__file__).read_text(encoding="utf-8")
    return _HARNESS_SOURCE


@dataclass
class CodeGrade:
    """Outcome of grading one candidate program."""

    passed: int
    total: int
    verdicts: list[str]
    details: list[dict[str, Any]] = field(default_factory=list)  # per test: time_s, message, output
    program: str = ""  # the program that ran (after code-block extraction / completion)
    sandbox: dict[str, Any] = field(default_factory=dict)  # verdict/message of the sandbox run

    @property
    def pass_all(self) -> bool:
        """Every test passed (and there was at least one): the benchmark metric."""
        return self.total > 0 and self.passed == self.total

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "total": self.total, "pass_all": self.pass_all, "fraction": self.fraction,
            "verdicts": self.verdicts, "details": self.details, "sandbox": self.sandbox,
        }


def _defines(source: str, name: str) -> bool | None:
    """Whether ``source`` defines function/class ``name`` (None when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name
        for node in ast.walk(tree)
    )


def _import_lines(source: str) -> str:
    return "".join(
        line + "\n" for line in source.splitlines() if line.startswith(("import ", "from ")) and "__future__" not in line
    )


def assemble_program(candidate: str, tests: CodeTests) -> str:
    """The program to run: the candidate, or ``starter_code + candidate`` for a completion.

    HumanEval/MBPP-style tasks give the function signature as ``starter_code``: a candidate that
    defines ``fn_name`` itself runs as is (with the starter's imports in front); one that does not
    (a function body) is appended to the starter code.
    """
    if not tests.starter_code or not tests.fn_name or not tests.assert_source:
        return candidate
    defines = _defines(candidate, tests.fn_name)
    if defines:
        return _import_lines(tests.starter_code) + candidate
    return tests.starter_code + candidate


def build_job(tests: CodeTests, time_limit_s: float | None, stop_on_failure: bool) -> dict[str, Any]:
    """The harness's job description for ``tests``."""
    items: list[dict[str, Any]] = [{"kind": "stdio", "input": i, "expected": o} for i, o in tests.stdin_tests]
    items += [{"kind": "call", "args": a, "expected": e} for a, e in tests.call_tests]
    if tests.assert_source:
        items.append({"kind": "assert", "source": tests.assert_source})
    return {
        "tests": items,
        "fn_name": tests.fn_name,
        "time_limit_s": float(time_limit_s if time_limit_s is not None else tests.time_limit_s),
        "checker": tests.checker,
        "float_tolerance": getattr(tests, "float_tolerance", None),
        "stop_on_failure": stop_on_failure,
    }


def parse_harness_output(stdout: str, n_tests: int, run_verdict: str, run_message: str = "") -> list[dict[str, Any]]:
    """Per-test records from the harness's JSON lines; tests it never reported get the run's fate."""
    recs: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("index"), int) and rec.get("verdict") in VERDICTS:
            recs[rec["index"]] = rec
    # A clean exit with tests missing means the harness stopped early on purpose (stop_on_failure).
    fill = {"ok": NOT_RUN, "timeout": H.TIMEOUT, "memory_exceeded": H.MEMORY_EXCEEDED}.get(run_verdict, H.RUNTIME_ERROR)
    out = []
    for i in range(n_tests):
        out.append(recs.get(i) or {"index": i, "verdict": fill, "time_s": 0.0,
                                   "message": f"not reached: sandbox run ended with {run_verdict} {run_message}".strip()})
    return out


def grade_code(
    candidate_text: str,
    tests: CodeTests,
    sandbox: Any = None,
    *,
    time_limit_s: float | None = None,
    overall_timeout_s: float | None = None,
    memory_mb: int = 1024,
    stop_on_failure: bool = False,
    extract: bool = True,
    mode: str = "auto",
) -> CodeGrade:
    """Grade ``candidate_text`` (a response with markdown code blocks, or bare code) on ``tests``.

    ``time_limit_s`` overrides ``tests.time_limit_s`` per test; ``overall_timeout_s`` caps the
    whole run (default: every test at its limit plus slack). ``stop_on_failure`` stops at the first
    failing test (enough for pass-all; the rest are then counted as not passed). ``sandbox``
    defaults to :func:`grading_sandbox`.

    ``mode``: ``"harness"`` runs all tests in one sandbox run (a forked child per test);
    ``"per_run"`` runs the program once per test as its own sandbox run and compares stdout here
    (stdin/stdout tests without a checker only; the pool pre-forks runs, which was faster in
    ``benchmarks/test_grading_bench.py``); ``"auto"`` picks ``per_run`` where it applies.
    """
    from mx_envs.sandbox.api import Limits

    job = build_job(tests, time_limit_s, stop_on_failure)
    n = len(job["tests"])
    code = extract_code(candidate_text) if extract else candidate_text
    program = assemble_program(code, tests) if code.strip() else ""
    if n == 0:
        return CodeGrade(0, 0, [], program=program)
    if not program.strip():
        verdicts = [H.SYNTAX_ERROR] * n
        return CodeGrade(0, n, verdicts, [{"index": i, "verdict": H.SYNTAX_ERROR, "message": "no code found"}
                                          for i in range(n)], program=program)
    if sandbox is None:
        sandbox = grading_sandbox()
    per_test = job["time_limit_s"]
    if mode == "auto":
        mode = "per_run" if (not tests.call_tests and not tests.assert_source and not tests.checker) else "harness"
    if mode == "per_run":
        if tests.call_tests or tests.assert_source or tests.checker:
            raise ValueError("mode='per_run' grades stdin/stdout tests without a checker only")
        return _grade_per_run(program, tests, sandbox, per_test, memory_mb, stop_on_failure, overall_timeout_s)
    if mode != "harness":
        raise ValueError(f"mode must be 'auto', 'harness' or 'per_run', not {mode!r}")
    backstop = overall_timeout_s if overall_timeout_s is not None else n * (per_test + 0.5) + 10.0
    limits = Limits(wall_s=backstop, cpu_s=backstop, memory_mb=memory_mb, max_processes=64,
                    output_bytes=max(1 << 20, 400 * n + 4096), file_size_mb=64)
    files = {"solution.py": program, "mx_job.json": json.dumps(job)}
    result = sandbox.run(harness_source(), stdin="", limits=limits, files=files)
    verdict = getattr(result.verdict, "value", str(result.verdict))
    details = parse_harness_output(result.stdout, n, verdict, result.message)
    verdicts = [d["verdict"] for d in details]
    passed = sum(v == H.PASSED for v in verdicts)
    return CodeGrade(
        passed, n, verdicts, details, program=program,
        sandbox={"verdict": verdict, "message": result.message, "wall_s": result.wall_s,
                 "stderr": result.stderr[-2000:]},
    )



def _grade_per_run(program: str, tests: CodeTests, sandbox: Any, per_test: float, memory_mb: int,
                   stop_on_failure: bool, overall_timeout_s: float | None) -> CodeGrade:
    """One sandbox run per stdin/stdout test; the output is compared on the host."""
    import time

    from mx_envs.sandbox.api import Limits

    n = len(tests.stdin_tests)
    try:
        compile(program, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return CodeGrade(0, n, [H.SYNTAX_ERROR] * n,
                         [{"index": i, "verdict": H.SYNTAX_ERROR, "message": H._snip(repr(exc))} for i in range(n)],
                         program=program)
    source = H.PRELUDE + program
    limits = Limits(wall_s=per_test, cpu_s=per_test + 1.0, memory_mb=memory_mb, max_processes=64, file_size_mb=64)
    deadline = time.monotonic() + (overall_timeout_s if overall_timeout_s is not None else n * (per_test + 0.5) + 10.0)
    by_sandbox = {"timeout": H.TIMEOUT, "memory_exceeded": H.MEMORY_EXCEEDED}
    details: list[dict[str, Any]] = []
    for i, (inp, exp) in enumerate(tests.stdin_tests):
        if (stop_on_failure and details and details[-1]["verdict"] != H.PASSED) or time.monotonic() > deadline:
            verdict = NOT_RUN if stop_on_failure and details and details[-1]["verdict"] != H.PASSED else H.TIMEOUT
            details.append({"index": i, "verdict": verdict, "time_s": 0.0, "message": "not reached"})
            continue
        r = sandbox.run(source, stdin=inp, limits=limits)
        v = getattr(r.verdict, "value", str(r.verdict))
        rec: dict[str, Any] = {"index": i, "time_s": round(r.wall_s, 4)}
        if v == "ok":
            ok = H.outputs_match(r.stdout, exp, tests.float_tolerance)
            rec["verdict"] = H.PASSED if ok else H.WRONG_ANSWER
            if not ok:
                rec["output"] = H._snip(r.stdout)
        elif v == "runtime_error" and "MemoryError" in r.stderr[-500:]:
            rec["verdict"] = H.MEMORY_EXCEEDED
        elif v == "runtime_error" and r.exit_code is not None and "SystemExit" not in r.stderr[-200:] and not r.stderr.strip():
            # sys.exit(n) with n != 0 but no traceback: LiveCodeBench treats exit() as a normal end
            ok = H.outputs_match(r.stdout, exp, tests.float_tolerance)
            rec["verdict"] = H.PASSED if ok else H.WRONG_ANSWER
        else:
            rec["verdict"] = by_sandbox.get(v, H.RUNTIME_ERROR)
            rec["message"] = (r.stderr.strip().splitlines() or [r.message])[-1][:300]
        details.append(rec)
    verdicts = [d["verdict"] for d in details]
    return CodeGrade(sum(v == H.PASSED for v in verdicts), n, verdicts, details, program=program,
                     sandbox={"mode": "per_run"})
