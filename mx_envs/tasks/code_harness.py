"""In-sandbox test runner for one candidate program (standard library only).

The grader runs this file as ``__main__`` inside the sandbox, with ``solution.py`` (the candidate)
and ``mx_job.json`` (the tests and options) in the working directory. The harness compiles the
candidate once, then forks one child per test: the child gets the test input on file descriptor 0,
writes to descriptor 1 (real descriptors, so ``input()``, ``sys.stdin.buffer`` and ``open(0)`` all
work), and runs in a fresh copy of the harness, so tests never share state. The parent enforces the
per-test wall-clock limit (kill on overrun) and prints one JSON line per finished test, flushed, so
a run stopped by the sandbox's overall limit still reports the tests that ended.

The same module is imported on the host for its comparison functions, so what is tested there is
what runs in the sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import Any

PASSED = "passed"
WRONG_ANSWER = "wrong_answer"
TIMEOUT = "timeout"
RUNTIME_ERROR = "runtime_error"
MEMORY_EXCEEDED = "memory_exceeded"
SYNTAX_ERROR = "syntax_error"

# Names a LiveCodeBench program may use without importing them (LCB runs candidates after the same
# star-imports). ``from builtins import *`` comes after ``operator``/``math`` so that ``pow`` and
# friends are the builtins again.
PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
    "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
    "from builtins import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics, "
    "itertools, functools, operator, io, sys, json\nsys.setrecursionlimit(50000)\n"
)
_PRELUDE_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                    "statistics", "itertools", "functools", "operator", "io", "json", "typing", "decimal",
                    "fractions")
SNIPPET = 300


def _snip(s: str) -> str:
    return s if len(s) <= SNIPPET else s[: SNIPPET // 2] + " ...(truncated)... " + s[-SNIPPET // 2 :]


# ---------------------------------------------------------------- comparison (host and sandbox)


def stripped_lines(text: str) -> list[str]:
    """Lines of ``text`` with surrounding whitespace removed; leading/trailing blank lines dropped."""
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def _close(a: Decimal, b: Decimal, tol: float) -> bool:
    if not (a.is_finite() and b.is_finite()):
        return a == b
    diff = abs(a - b)
    return diff <= Decimal(repr(tol)) * max(Decimal(1), abs(b))


def outputs_match(output: str, expected: str, float_tolerance: float | None = None) -> bool:
    """LiveCodeBench stdout comparison.

    Same number of lines after stripping; each line equal as text, or equal token by token as
    decimal numbers (``1.50`` matches ``1.5``, ``5e0`` matches ``5``; no rounding). With
    ``float_tolerance`` numeric tokens may also differ by that absolute error, or relative error
    for numbers above 1 (Codeforces-style "absolute or relative error" judges).
    """
    out_lines, exp_lines = stripped_lines(output), stripped_lines(expected)
    if len(out_lines) != len(exp_lines):
        return False
    for o, e in zip(out_lines, exp_lines, strict=True):
        if o == e:
            continue
        do, de = _decimals(o), _decimals(e)
        if do is None or de is None or len(do) != len(de):
            return False
        if do == de:
            continue
        if float_tolerance is None or not all(_close(x, y, float_tolerance) for x, y in zip(do, de, strict=True)):
            return False
    return True


def results_match(result: Any, expected: Any) -> bool:
    """LiveCodeBench call-based comparison of JSON-decoded values (tuples arrive as lists)."""
    return bool(result == expected)


# ---------------------------------------------------------------- sandbox side


def _child(code: Any, test: dict[str, Any], job: dict[str, Any], in_path: str, out_path: str, res_path: str) -> None:
    """Runs in the forked child: one test, result to ``res_path``, never returns."""
    status: dict[str, Any] = {"status": "ok"}
    try:
        fd_in = os.open(in_path, os.O_RDONLY)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_in, 0)
        os.dup2(fd_out, 1)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the child
        sys.stdout = real_out = open(1, "w", closefd=False)  # noqa: SIM115
        kind = test["kind"]
        ns: dict[str, Any] = {"__name__": "__main__" if kind == "stdio" else "solution", "__builtins__": __builtins__}
        try:
            exec(code, ns)
            if kind == "call":
                fn = _find_function(ns, job["fn_name"])
                result = fn(*json.loads(test["args"]))
                try:
                    status["result"] = json.dumps(result)
                except (TypeError, ValueError, RecursionError):
                    status["unserialisable"] = type(result).__name__  # cannot equal a JSON value
            elif kind == "assert":
                exec(compile(test["source"], "<tests>", "exec"), ns)
        except SystemExit as exc:
            if kind != "stdio":  # exiting before the tests ran must never count as passing them
                raise RuntimeError(f"SystemExit({exc.code!r}) in a function/assert test") from None
            # LiveCodeBench semantics: exit() ends a stdin/stdout program normally
        if kind == "stdio":
            import atexit

            # A normal interpreter exit runs atexit handlers (fast-IO templates write the output
            # there); os._exit below would skip them.
            atexit._run_exitfuncs()
        for stream in (sys.stdout, real_out):
            try:
                stream.flush()
            except (ValueError, AttributeError, OSError):
                pass  # closed by the program ("with sys.stdout as f"), which flushed it
    except MemoryError:
        status = {"status": MEMORY_EXCEEDED}
    except RecursionError as exc:
        status = {"status": RUNTIME_ERROR, "error": "RecursionError: " + _snip(str(exc))}
    except AssertionError as exc:
        status = {"status": WRONG_ANSWER if test["kind"] == "assert" else RUNTIME_ERROR,
                  "error": "AssertionError: " + _snip(str(exc))}
    except BaseException as exc:  # noqa: BLE001 - the candidate's exception is the result
        status = {"status": RUNTIME_ERROR, "error": f"{type(exc).__name__}: {_snip(str(exc))}"}
    try:
        with open(res_path, "w") as f:
            json.dump(status, f)
    except BaseException:  # noqa: BLE001
        os._exit(3)
    os._exit(0)


def _find_function(ns: dict[str, Any], fn_name: str) -> Any:
    solution = ns.get("Solution")
    if isinstance(solution, type) and hasattr(solution, fn_name):
        return getattr(solution(), fn_name)
    if fn_name in ns and callable(ns[fn_name]):
        return ns[fn_name]
    raise NameError(f"function {fn_name!r} is not defined")


def _wait(pid: int, limit_s: float) -> tuple[int | None, float]:
    """Wait for ``pid`` up to ``limit_s``; returns (wait status or None on timeout, seconds)."""
    start = time.monotonic()
    pidfd = -1
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1
    if pidfd >= 0:
        import select

        try:
            ready, _, _ = select.select([pidfd], [], [], limit_s)
        finally:
            os.close(pidfd)
        if ready:
            _, st = os.waitpid(pid, 0)
            return st, time.monotonic() - start
    else:
        delay = 0.0005
        while time.monotonic() - start < limit_s:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                return st, time.monotonic() - start
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
    elapsed = time.monotonic() - start
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    return None, elapsed


def run_test(code: Any, index: int, test: dict[str, Any], job: dict[str, Any], checker: Any) -> dict[str, Any]:
    """Run one test in a forked child and judge it."""
    in_path, out_path, res_path = f"_in{index}", f"_out{index}", f"_res{index}"
    with open(in_path, "w") as f:
        f.write(test.get("input", ""))
    for stale in (out_path, res_path):  # an earlier test's program may have planted these
        try:
            os.unlink(stale)
        except OSError:
            pass
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _child(code, test, job, in_path, out_path, res_path)
    st, elapsed = _wait(pid, float(job["time_limit_s"]))
    rec: dict[str, Any] = {"index": index, "time_s": round(elapsed, 4)}
    status: dict[str, Any] = {}
    try:
        with open(res_path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        status = {}
    if st is None:
        rec["verdict"] = TIMEOUT
        return _cleanup(rec, in_path, out_path, res_path)
    if not status:
        sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
        if sig in (signal.SIGXCPU,):
            rec["verdict"] = TIMEOUT
        elif sig == signal.SIGXFSZ:
            rec["verdict"], rec["message"] = RUNTIME_ERROR, "output file size limit exceeded"
        else:
            rec["verdict"] = RUNTIME_ERROR
            rec["message"] = f"killed by signal {sig}" if sig else f"exit status {os.WEXITSTATUS(st)}"
        return _cleanup(rec, in_path, out_path, res_path)
    if status["status"] != "ok":
        rec["verdict"] = status["status"]
        if status.get("error"):
            rec["message"] = status["error"]
        return _cleanup(rec, in_path, out_path, res_path)
    kind = test["kind"]
    if kind == "assert":
        rec["verdict"] = PASSED
    elif kind == "call":
        result = json.loads(status["result"]) if "result" in status else None
        ok = "result" in status and results_match(result, json.loads(test["expected"]))
        rec["verdict"] = PASSED if ok else WRONG_ANSWER
        if not ok:
            rec["output"] = _snip(status.get("result", f"<{status.get('unserialisable')}: not a JSON value>"))
    else:
        with open(out_path, "rb") as f:
            output = f.read().decode("utf-8", errors="replace")
        if checker is not None:
            try:
                ok = bool(checker(test.get("input", ""), test["expected"], output))
            except Exception as exc:  # noqa: BLE001 - a checker failure is a rejection, reported
                ok, rec["message"] = False, f"checker error: {type(exc).__name__}: {_snip(str(exc))}"
        else:
            ok = outputs_match(output, test["expected"], job.get("float_tolerance"))
        rec["verdict"] = PASSED if ok else WRONG_ANSWER
        if not ok:
            rec["output"] = _snip(output)
    return _cleanup(rec, in_path, out_path, res_path)


def _cleanup(rec: dict[str, Any], *paths: str) -> dict[str, Any]:
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
    return rec


def main() -> int:
    with open("mx_job.json") as f:
        job = json.load(f)
    with open("solution.py", encoding="utf-8", errors="replace") as f:
        source = f.read()
    tests = job["tests"]
    prelude = PRELUDE if job.get("prelude", True) else ""
    for name in _PRELUDE_MODULES:  # imported once here, so each forked child finds them loaded
        __import__(name)
    try:
        code = compile(prelude + source, "solution.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        for i in range(len(tests)):
            print(json.dumps({"index": i, "verdict": SYNTAX_ERROR, "time_s": 0.0, "message": _snip(repr(exc))}))
        return 0
    checker = None
    if job.get("checker"):
        checker_ns: dict[str, Any] = {"__name__": "checker"}
        exec(compile(job["checker"], "checker.py", "exec"), checker_ns)
        checker = checker_ns["check"]
    for i, test in enumerate(tests):
        rec = run_test(code, i, test, job, checker)
        print(json.dumps(rec), flush=True)
        if job.get("stop_on_failure") and rec["verdict"] != PASSED:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
