"""Code grading: run a candidate on a task's test inputs in the sandbox, judge on the host.

The judge never shares a process, file or memory with the candidate (``mx_envs/tasks/README.md``,
"Code grading"): the candidate's sandbox run receives the test **inputs** only, under
``Limits(file_view="grading")`` (no checkout, no dataset directories, no installed packages'
data); what it produced comes back as data (stdout text, or return values in the harness codec)
and is compared here with the expected outputs, which never leave this process.

* stdin/stdout tests: all tests in one sandbox run with a forked child per test (the default), or
  one sandbox run per test (``mode="per_run"``); the output is compared here either way.
* call-based tests (LiveCodeBench LeetCode problems, APPS ``fn_name`` problems): one run; a worker
  loads the candidate once and calls the function on each input
  (:mod:`mx_envs.tasks.code_harness`); results are compared with LiveCodeBench's rule.
* assert-style tests (HumanEval, MBPP, MBPP+): converted once into input -> expected pairs by a
  trusted run of the reference (:mod:`mx_envs.tasks.code_reference`), then graded like
  call-based tests with EvalPlus' comparison (:func:`mx_envs.tasks.code_compare.evalplus_match`).

Verdicts: ``passed``, ``wrong_answer``, ``timeout``, ``runtime_error``, ``memory_exceeded``,
``syntax_error`` (and ``not_run`` after a failure with ``stop_on_failure``). The dataset's own
metric is :attr:`CodeGrade.pass_all`. What pays reward is :attr:`CodeGrade.solved` (every test
passes and some hidden test separates the program from a constant) and the shaping signal
:attr:`CodeGrade.fraction` (hidden tests passed beyond the best constant's share): tests shown in
the prompt never count there, so a constant output or a replay of the prompt's examples earns 0
(:mod:`mx_envs.tasks.code_reward`).

Problems with several correct outputs: set ``CodeTests.checker`` to Python source defining
``check(input: str, expected: str, output: str) -> bool``. It is dataset code, so it runs here on
the host (under a time limit, on the candidate's output as a string), never in the sandbox::

    tests.checker = '''
    def check(input, expected, output):
        n = int(input.split()[0])
        return sorted(map(int, output.split())) == list(range(1, n + 1))
    '''
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mx_envs.tasks import code_harness as H
from mx_envs.tasks.code_compare import evalplus_match, outputs_match, results_match
from mx_envs.tasks.code_extract import extract_code
from mx_envs.tasks.code_reference import harness_source
from mx_envs.tasks.code_reward import (
    RewardBasis,
    best_constant_passes,
    call_args_in_text,
    call_shown,
    compact,
    output_bucket,
    spaced,
    stdio_shown,
)
from mx_envs.tasks.record import CodeTests

NOT_RUN = "not_run"  # only with stop_on_failure: after the first failing test
VERDICTS = (H.PASSED, H.WRONG_ANSWER, H.TIMEOUT, H.RUNTIME_ERROR, H.MEMORY_EXCEEDED, H.SYNTAX_ERROR)
CHECKER_TIMEOUT_S = 10.0

# Standard-library modules candidate programs commonly import, preloaded in the grading sandbox's
# pool server: the LiveCodeBench prelude then costs nothing per run, and the modules are importable
# even where the sandbox user cannot read the interpreter's library directory.
CANDIDATE_PRELOAD: tuple[str, ...] = (
    "string", "re", "datetime", "collections", "collections.abc", "heapq", "bisect", "copy", "math", "cmath",
    "random", "statistics", "itertools", "functools", "operator", "io", "json", "typing", "decimal",
    "fractions", "array", "calendar", "textwrap", "dataclasses", "enum", "queue", "threading", "string",
    "time", "unicodedata", "struct", "hashlib", "pprint", "numbers", "contextlib", "sys", "os", "select",
    "ast", "traceback", "atexit",
)


def grading_sandbox() -> Any:
    """The shared sandbox used when :func:`grade_code` is given none (process backend + preload)."""
    from mx_envs.sandbox import get_sandbox

    return get_sandbox("process", extra_preload=CANDIDATE_PRELOAD)


@dataclass
class CodeGrade:
    """Outcome of grading one candidate program.

    ``shown[i]`` says whether test ``i`` was shown to the policy (its input is in the prompt or the
    dataset publishes it); ``constant_passes`` is the most hidden tests one constant output passes.
    """

    passed: int
    total: int
    verdicts: list[str]
    details: list[dict[str, Any]] = field(default_factory=list)  # per test: time_s, message, output
    program: str = ""  # the program that ran (after code-block extraction / completion)
    sandbox: dict[str, Any] = field(default_factory=dict)  # verdict/message of the sandbox run
    shown: list[bool] = field(default_factory=list)
    constant_passes: int = 0

    def _shown(self, i: int) -> bool:
        return i < len(self.shown) and self.shown[i]

    @property
    def pass_all(self) -> bool:
        """Every test passed (and there was at least one): the dataset's own metric."""
        return self.total > 0 and self.passed == self.total

    @property
    def hidden_total(self) -> int:
        return self.total - sum(self._shown(i) for i in range(self.total))

    @property
    def hidden_passed(self) -> int:
        return sum(v == H.PASSED and not self._shown(i) for i, v in enumerate(self.verdicts))

    @property
    def discriminating(self) -> int:
        """Hidden tests beyond the best constant's share: 0 means no program can earn reward here."""
        return max(0, self.hidden_total - self.constant_passes)

    @property
    def solved(self) -> bool:
        """Every test passed and some hidden test separates this from a constant or a replay: the
        verdict that pays reward."""
        return self.pass_all and self.discriminating > 0

    @property
    def fraction(self) -> float:
        """Reward shaping signal in [0, 1]: hidden tests passed beyond the best constant's share, over
        the hidden tests beyond it. A constant output and a replay of the prompt's examples get 0."""
        if self.discriminating == 0:
            return 0.0
        return min(1.0, max(0, self.hidden_passed - self.constant_passes) / self.discriminating)

    @property
    def raw_fraction(self) -> float:
        """Share of all tests passed (shown ones and the constant's included): a diagnostic, never a reward."""
        return self.passed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "total": self.total, "pass_all": self.pass_all, "solved": self.solved,
            "fraction": self.fraction, "raw_fraction": self.raw_fraction, "hidden_total": self.hidden_total,
            "hidden_passed": self.hidden_passed, "constant_passes": self.constant_passes,
            "discriminating": self.discriminating, "verdicts": self.verdicts, "details": self.details,
            "sandbox": self.sandbox,
        }


def _defines(source: str, name: str) -> bool | None:
    """Whether ``source`` defines function/class ``name`` (None when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
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
    if _defines(candidate, tests.fn_name):
        return _import_lines(tests.starter_code) + candidate
    return tests.starter_code + candidate


# ---------------------------------------------------------------- what is judged, and how


@dataclass
class _Item:
    """One test as the host sees it: what the sandbox gets, and how its product is judged."""

    kind: str  # "stdio" | "call"
    limit_s: float
    payload: str  # stdin text, or encoded argument list (JSON text)
    judge: Callable[[dict[str, Any]], tuple[bool, str]]  # the record's "r" -> (passed, message)


def _stdio_judge(inp: str, expected: str, tests: CodeTests) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    mode = getattr(tests, "output_compare", "lines")

    def judge(r: dict[str, Any]) -> tuple[bool, str]:
        out = r.get("out")
        if not isinstance(out, str):
            return False, "no output"
        if tests.checker:
            return check_output(tests.checker, inp, expected, out)
        return outputs_match(out, expected, tests.float_tolerance, mode), ""
    return judge


def _value_of(r: dict[str, Any]) -> tuple[bool, Any, str]:
    if "v" not in r:
        return False, None, "no return value"
    try:
        return True, H.decode_value(r["v"]), ""
    except H.DecodeError as exc:
        return False, None, f"not a plain value: {exc}"


def _lcb_judge(expected_json: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    def judge(r: dict[str, Any]) -> tuple[bool, str]:
        ok, value, msg = _value_of(r)
        if not ok:
            return False, msg
        try:
            expected = H.strict_loads(expected_json)
        except H.DecodeError as exc:
            return False, f"dataset output is not JSON: {exc}"
        return results_match(value, expected), ""
    return judge


def _oracle_judge(oracle: Any, i: int, entry: str, atol: float) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    def judge(r: dict[str, Any]) -> tuple[bool, str]:
        ok, value, msg = _value_of(r)
        if not ok:
            return False, msg
        args, expected = oracle.decoded(i)
        return evalplus_match(value, expected, args, entry, atol), ""
    return judge


def _items(tests: CodeTests, sandbox: Any, per_test: float, time_limit_s: float | None,
           ) -> tuple[list[_Item], list[_Item], str, float | None, Any]:
    """(stdio items, call items, error that makes every call item fail, overall limit of the calls,
    the assert-style oracle or None)."""
    stdio = [_Item("stdio", per_test, i, _stdio_judge(i, o, tests)) for i, o in tests.stdin_tests]
    calls: list[_Item] = []
    bad: list[str] = []
    for args, exp in tests.call_tests:
        try:
            payload = json.dumps(H.plain_to_tagged(H.strict_loads(args)), separators=(",", ":"))
        except (H.DecodeError, ValueError) as exc:
            payload = "[]"
            bad.append(f"dataset arguments are not JSON: {exc}")
        calls.append(_Item("call", per_test, payload, _lcb_judge(exp)))
    overall: float | None = None
    error = ""
    oracle = None
    if tests.assert_source:
        from mx_envs.tasks.code_reference import OracleError, reference_oracle

        try:
            oracle = reference_oracle(tests, sandbox)
        except (OracleError, H.DecodeError, KeyError, TypeError, ValueError) as exc:
            error = f"tests unavailable: {type(exc).__name__}: {H._snip(str(exc))}"
            oracle = None
            calls.append(_Item("call", per_test, "[]", lambda r: (False, "tests unavailable")))
        else:
            limits = oracle.time_limits(time_limit_s)
            overall = oracle.overall_s(limits)
            atol = float(tests.float_tolerance or 0.0)
            for i, payload in enumerate(oracle.inputs):
                calls.append(_Item("call", limits[i], payload, _oracle_judge(oracle, i, tests.fn_name or "", atol)))
    return stdio, calls, error or (bad[0] if bad else ""), overall, oracle


# ---------------------------------------------------------------- what pays reward


_BASES: dict[Any, RewardBasis] = {}
_BASES_MAX = 4096


def _fingerprint(tests: CodeTests, oracle: Any) -> Any:
    from mx_envs.tasks.code_reference import oracle_key

    try:
        content = (hash(tuple(map(tuple, tests.stdin_tests))), hash(tuple(map(tuple, tests.call_tests))))
    except TypeError:  # tests built by hand with unhashable parts
        content = (hash(json.dumps([tests.stdin_tests, tests.call_tests], default=repr)), 0)
    return (len(tests.stdin_tests), len(tests.call_tests), content, hash(tests.shown_text), tuple(tests.shown), tests.output_compare, tests.float_tolerance,
            hash(tests.checker), tests.fn_name, oracle_key(tests) if oracle is not None else None,
            len(oracle.inputs) if oracle is not None else 0)


def reward_basis(tests: CodeTests, oracle: Any = None) -> RewardBasis:
    """Which tests were shown and the best constant's share of the hidden ones (grader order:
    stdin tests, call tests, then the oracle's pairs); cached per test content. Never raises."""
    fp = _fingerprint(tests, oracle)
    hit = _BASES.get(fp)
    if hit is not None:
        return hit
    text = tests.shown_text or ""
    prompt_sp, prompt_c = spaced(text), compact(text)
    in_text = call_args_in_text(text, tests.fn_name or "") if tests.fn_name else []
    explicit = set(tests.shown)
    shown: list[bool] = []
    keys: list[Any] = []
    for i, (inp, out) in enumerate(tests.stdin_tests):
        shown.append(i in explicit or stdio_shown(prompt_sp, inp, out))
        keys.append(("stdio", spaced(inp)))
    lcb_expected: list[Any] = []
    for j, (args_json, exp_json) in enumerate(tests.call_tests):
        try:
            args, exp = H.strict_loads(args_json), H.strict_loads(exp_json)
        except H.DecodeError:
            args, exp = None, None
        lcb_expected.append(exp)
        idx = len(tests.stdin_tests) + j
        shown.append(idx in explicit or (isinstance(args, list) and call_shown(in_text, prompt_c, args, exp)))
        keys.append(("call", compact(args_json)))
    pairs: list[tuple[Any, Any]] = []
    if oracle is not None:
        for i, payload in enumerate(oracle.inputs):
            try:
                args, exp = oracle.decoded(i)
            except (H.DecodeError, KeyError, TypeError, ValueError, RecursionError):
                args, exp = [], None
            pairs.append((args, exp))
            shown.append(isinstance(args, list | tuple) and call_shown(in_text, prompt_c, args, exp))
            keys.append(("call", payload))
    # a hidden test with a shown test's input is answered by the replay too
    shown_keys = {k for k, s in zip(keys, shown, strict=True) if s}
    shown = [s or k in shown_keys for k, s in zip(keys, shown, strict=True)]

    n_stdio, n_calls = len(tests.stdin_tests), len(tests.call_tests)
    k = 0
    hidden = [i for i in range(n_stdio) if not shown[i]]
    if hidden:
        k += _stdio_constant(tests, hidden)
    hidden = [j for j in range(n_calls) if not shown[n_stdio + j]]
    if hidden:
        exp = [lcb_expected[j] for j in hidden]
        k += best_constant_passes(exp, lambda c, i: results_match(c, exp[i]), key=_json_key)
    hidden = [i for i in range(len(pairs)) if not shown[n_stdio + n_calls + i]]
    if hidden:
        entry = tests.fn_name or ""
        atol = 2 * float(tests.float_tolerance) if tests.float_tolerance else 2e-6
        exp = [pairs[i][1] for i in hidden]
        args_of = [pairs[i][0] for i in hidden]
        k += best_constant_passes(exp, lambda c, i: evalplus_match(c, exp[i], args_of[i], entry, atol), key=_json_key)
    basis = RewardBasis(tuple(shown), k)
    if len(_BASES) >= _BASES_MAX:
        _BASES.pop(next(iter(_BASES)))
    _BASES[fp] = basis
    return basis


def _json_key(value: Any) -> Any:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _stdio_constant(tests: CodeTests, hidden: list[int]) -> int:
    """The best constant output's share of the hidden stdin/stdout tests, under the judge's rule
    (tolerance doubled: a number between two expected ones passes both)."""
    mode = tests.output_compare
    pairs = [tests.stdin_tests[i] for i in hidden]
    exp = [o for _, o in pairs]
    if tests.checker:
        checker = tests.checker

        def passes(c: Any, i: int) -> bool:
            return check_output(checker, pairs[i][0], exp[i], c)[0]
        return best_constant_passes(exp, passes, key=spaced, limit=MAX_CHECKER_CONSTANTS)
    tol = 2 * tests.float_tolerance if tests.float_tolerance else None
    return best_constant_passes(exp, lambda c, i: outputs_match(c, exp[i], tol, mode), key=spaced,
                                bucket=lambda e: output_bucket(e, mode))


MAX_CHECKER_CONSTANTS = 16  # constants tried through a dataset checker (host code, each call timed)


# ---------------------------------------------------------------- host-side checker


_CHECKERS: dict[str, Any] = {}


def _run_checker(source: str, inp: str, expected: str, output: str) -> bool:
    fn = _CHECKERS.get(source)
    if fn is None:
        ns: dict[str, Any] = {"__name__": "checker"}
        exec(compile(source, "checker.py", "exec"), ns)
        fn = _CHECKERS[source] = ns["check"]
    return bool(fn(inp, expected, output))


def check_output(source: str, inp: str, expected: str, output: str,
                 timeout_s: float = CHECKER_TIMEOUT_S) -> tuple[bool, str]:
    """Run a dataset checker on the host on the candidate's output (a string); never raises."""
    from mx_envs.tasks.timelimit import CallTimeout, call_with_timeout

    try:
        return bool(call_with_timeout(_run_checker, (source, inp, expected, output), timeout_s)), ""
    except CallTimeout:
        return False, "checker timed out"
    except Exception as exc:  # noqa: BLE001 - a checker that fails on this output rejects it
        return False, f"checker error: {type(exc).__name__}: {H._snip(str(exc))}"


# ---------------------------------------------------------------- records from the sandbox


def parse_records(stdout: str, n: int) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Per-test records ``{"i", "t", "r"}`` from the harness's stdout, strictly parsed.

    Lines that are not well-formed records are ignored. An index reported twice with different
    content is a conflict (a candidate cannot hedge by claiming several results).
    """
    recs: dict[int, dict[str, Any]] = {}
    raw: dict[int, str] = {}
    conflicts: set[int] = set()
    for line in stdout.split("\n"):
        if not line.startswith('{"i":'):
            continue
        try:
            rec = H.strict_loads(line)
        except H.DecodeError:
            continue
        if not (isinstance(rec, dict) and set(rec) == {"i", "t", "r"} and type(rec["i"]) is int
                and 0 <= rec["i"] < n and type(rec["t"]) in (int, float) and isinstance(rec["r"], dict)):
            continue
        r = rec["r"]
        if "e" in r and not (r["e"] in H.ERROR_VERDICTS and set(r) <= {"e", "m"}):
            continue
        if "e" not in r and set(r) not in ({"v"}, {"out"}):
            continue
        i = rec["i"]
        if i in raw and raw[i].split(',"r":', 1)[1] != line.split(',"r":', 1)[1]:
            conflicts.add(i)
        raw[i] = line
        recs[i] = rec
    return recs, conflicts


def _fill_verdict(run_verdict: str) -> str:
    return {"timeout": H.TIMEOUT, "memory_exceeded": H.MEMORY_EXCEEDED}.get(run_verdict, H.RUNTIME_ERROR)


def _judge_records(items: list[_Item], stdout: str, run_verdict: str, run_message: str,
                   offset: int) -> list[dict[str, Any]]:
    recs, conflicts = parse_records(stdout, len(items))
    details = []
    for i, item in enumerate(items):
        d: dict[str, Any] = {"index": offset + i}
        rec = recs.get(i)
        if rec is None:
            d.update(verdict=_fill_verdict(run_verdict), time_s=0.0,
                     message=f"not reached: sandbox run ended with {run_verdict} {run_message}".strip())
        elif i in conflicts:
            d.update(verdict=H.WRONG_ANSWER, time_s=float(rec["t"]), message="several different results reported")
        else:
            d["time_s"] = round(float(rec["t"]), 4)
            r = rec["r"]
            if "e" in r:
                d["verdict"] = r["e"]
                if r.get("m"):
                    d["message"] = H._snip(str(r["m"]))
            else:
                try:
                    ok, msg = item.judge(r)
                except Exception as exc:  # noqa: BLE001 - no output may make grading raise
                    ok, msg = False, f"comparison failed: {type(exc).__name__}"
                d["verdict"] = H.PASSED if ok else H.WRONG_ANSWER
                if msg:
                    d["message"] = msg
                if not ok:
                    shown = r.get("out") if "out" in r else r.get("v")
                    d["output"] = H._snip(shown if isinstance(shown, str) else _short_json(shown))
        details.append(d)
    return details


def _short_json(value: Any) -> str:
    try:
        return json.dumps(value)[:SNIP_CHARS]
    except (TypeError, ValueError, RecursionError):
        return "<unprintable>"


SNIP_CHARS = 2000


# ---------------------------------------------------------------- running


def _grading_limits(wall_s: float, memory_mb: int, output_bytes: int, per_test_cpu: float | None = None) -> Any:
    from mx_envs.sandbox.api import Limits

    return Limits(wall_s=wall_s, cpu_s=per_test_cpu if per_test_cpu is not None else wall_s, memory_mb=memory_mb,
                  max_processes=64, output_bytes=output_bytes, file_size_mb=64, file_view="grading")


def _run_harness(kind: str, program: str, items: list[_Item], fn_name: str | None, sandbox: Any, memory_mb: int,
                 overall_s: float, stop_on_failure: bool, offset: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tests = ([{"input": it.payload, "limit": it.limit_s} for it in items] if kind == "stdio"
             else [{"args": it.payload, "limit": it.limit_s} for it in items])
    job = {"mode": "stdio" if kind == "stdio" else "calls", "source": program, "fn_name": fn_name, "tests": tests,
           "load_s": min(10.0, max(it.limit_s for it in items)), "stop_on_error": stop_on_failure}
    out_cap = min(512 << 20, max(8 << 20, len(items) * (1 << 20)))
    result = sandbox.run(harness_source(), stdin=json.dumps(job), limits=_grading_limits(overall_s, memory_mb, out_cap))
    verdict = getattr(result.verdict, "value", str(result.verdict))
    details = _judge_records(items, result.stdout, verdict, result.message, offset)
    return details, {"verdict": verdict, "message": result.message, "wall_s": result.wall_s,
                     "stderr": result.stderr[-2000:]}


def _run_per_test(program: str, items: list[_Item], sandbox: Any, memory_mb: int, deadline: float,
                  stop_on_failure: bool) -> list[dict[str, Any]]:
    """One sandbox run per stdin/stdout test; the output is compared here."""
    try:
        compile(program, "solution.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as exc:
        return [{"index": i, "verdict": H.SYNTAX_ERROR, "message": H._snip(repr(exc))} for i in range(len(items))]
    source = H.PRELUDE + H.STDIO_HEADER + program
    by_sandbox = {"timeout": H.TIMEOUT, "memory_exceeded": H.MEMORY_EXCEEDED}
    details: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        failed_before = bool(details) and details[-1]["verdict"] not in (H.PASSED, NOT_RUN)
        if (stop_on_failure and details and (failed_before or details[-1]["verdict"] == NOT_RUN)) \
                or time.monotonic() > deadline:
            verdict = NOT_RUN if stop_on_failure and details else H.TIMEOUT
            details.append({"index": i, "verdict": verdict, "time_s": 0.0, "message": "not reached"})
            continue
        limits = _grading_limits(item.limit_s, memory_mb, 1 << 26, item.limit_s + 1.0)
        r = sandbox.run(source, stdin=item.payload, limits=limits)
        v = getattr(r.verdict, "value", str(r.verdict))
        rec: dict[str, Any] = {"index": i, "time_s": round(r.wall_s, 4)}
        normal_exit = v == "ok" or (v == "runtime_error" and r.exit_code is not None and not r.stderr.strip())
        if normal_exit:  # sys.exit(n) without a traceback: LiveCodeBench treats exit() as a normal end
            try:
                ok, msg = item.judge({"out": r.stdout})
            except Exception as exc:  # noqa: BLE001
                ok, msg = False, f"comparison failed: {type(exc).__name__}"
            rec["verdict"] = H.PASSED if ok else H.WRONG_ANSWER
            if msg:
                rec["message"] = msg
            if not ok:
                rec["output"] = H._snip(r.stdout)
        elif v == "runtime_error" and "MemoryError" in r.stderr[-500:]:
            rec["verdict"] = H.MEMORY_EXCEEDED
        else:
            rec["verdict"] = by_sandbox.get(v, H.RUNTIME_ERROR)
            rec["message"] = (r.stderr.strip().splitlines() or [r.message])[-1][:300]
        details.append(rec)
    return details


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

    ``time_limit_s`` overrides the per-test limit (``tests.time_limit_s``; for assert-style
    datasets EvalPlus' limits from the reference's run time); ``overall_timeout_s`` caps each
    sandbox run (default: every test at its limit plus slack). ``stop_on_failure`` stops at the
    first failing test (enough for pass-all; the rest are then ``not_run``). ``sandbox`` defaults
    to :func:`grading_sandbox`.

    ``mode`` (stdin/stdout tests): ``"harness"`` runs all tests in one sandbox run, a forked child
    per test; ``"per_run"`` runs the program once per test as its own sandbox run; ``"auto"`` is
    ``harness`` (``benchmarks/test_grading_bench.py``: 9 ms of overhead per test against 28 ms for
    one run per test on a loaded 2-core machine). Call-based and assert-style tests always run in
    one harness run. Never raises for anything in ``candidate_text``.
    """
    if mode not in ("auto", "harness", "per_run"):
        raise ValueError(f"mode must be 'auto', 'harness' or 'per_run', not {mode!r}")
    code = extract_code(candidate_text) if extract else candidate_text
    program = assemble_program(code, tests) if code.strip() else ""
    if sandbox is None:
        sandbox = grading_sandbox()
    per_test = float(time_limit_s if time_limit_s is not None else tests.time_limit_s)
    stdio, calls, call_error, calls_overall, oracle = _items(tests, sandbox, per_test, time_limit_s)
    n = len(stdio) + len(calls)
    if n == 0:
        return CodeGrade(0, 0, [], program=program)
    basis = reward_basis(tests, oracle)
    shown = list(basis.shown[:n]) + [False] * max(0, n - len(basis.shown))
    if not program.strip():
        return CodeGrade(0, n, [H.SYNTAX_ERROR] * n, [{"index": i, "verdict": H.SYNTAX_ERROR, "message": "no code found"}
                                                      for i in range(n)], program=program, shown=shown,
                         constant_passes=basis.constant_passes)
    details: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    if stdio:
        overall = overall_timeout_s if overall_timeout_s is not None else len(stdio) * (per_test + 0.5) + 10.0
        if mode in ("harness", "auto"):
            d, info = _run_harness("stdio", program, stdio, None, sandbox, memory_mb, overall, stop_on_failure, 0)
        else:
            d = _run_per_test(program, stdio, sandbox, memory_mb, time.monotonic() + overall, stop_on_failure)
            info = {"mode": "per_run"}
        details += d
    if calls:
        if call_error:
            details += [{"index": len(stdio) + i, "verdict": H.RUNTIME_ERROR, "time_s": 0.0, "message": call_error}
                        for i in range(len(calls))]
        else:
            overall = (overall_timeout_s if overall_timeout_s is not None else
                       calls_overall if calls_overall is not None else
                       sum(it.limit_s for it in calls) + 0.05 * len(calls) + 10.0)
            d, info_calls = _run_harness("calls", program, calls, tests.fn_name, sandbox, memory_mb, overall,
                                         stop_on_failure, len(stdio))
            details += d
            info = info_calls if not info else {**info, "calls": info_calls}
    if stop_on_failure:
        failed = False
        for d in details:
            if failed:
                d.update(verdict=NOT_RUN, message="not run: an earlier test failed")
            elif d["verdict"] != H.PASSED:
                failed = True
    verdicts = [d["verdict"] for d in details]
    for d, s in zip(details, shown, strict=False):
        if s:
            d["shown"] = True
    return CodeGrade(sum(v == H.PASSED for v in verdicts), n, verdicts, details, program=program, sandbox=info,
                     shown=shown, constant_passes=basis.constant_passes)
