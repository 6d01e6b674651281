"""Assert-style tests (HumanEval, MBPP, MBPP+) as input -> expected pairs, as EvalPlus grades them.

A candidate must never run next to the tests or the reference solution, and assert-style tests
carry both (``assert f(x) == y``; MBPP+'s plus inputs are judged against the reference). So a
**trusted** sandbox run (the reference only, never a candidate) executes the dataset's test
source with ``fn_name`` replaced by a recorder around the reference solution: every top-level call
becomes a test whose input is the call's arguments (encoded before the call) and whose expected
output is the reference's result. The candidate's sandbox later receives the inputs only, and the
host compares its results with :func:`mx_envs.tasks.code_compare.evalplus_match`.

Pairs are cached per (reference, test source, function, codec version): in memory, and on disk
under ``$MX_CACHE_DIR/code_oracles`` (default ``~/.cache/metaagentx/code_oracles``), directory
0700 and files 0600, so that a sandboxed run (another uid) cannot read expected outputs even
where its file view would show that directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mx_envs.tasks import code_harness as H
from mx_envs.tasks.record import CodeTests

ORACLE_VERSION = 1  # bump when the recording or the codec changes: old cache entries are ignored
# EvalPlus' time limits (evalplus/config.py): per input max(4 s, 4 x the reference's time); the
# whole set at most 60 s (here: or 8 x the reference's total, for inputs that are slow by design).
MIN_TIME_LIMIT_S = 4.0
TIME_LIMIT_FACTOR = 4.0
TASK_TIME_CAP_S = 60.0
REFERENCE_WALL_S = 600.0


_HARNESS_SOURCE: str | None = None


def harness_source() -> str:
    """Source of the in-sandbox harness (:mod:`mx_envs.tasks.code_harness`), read once: the trusted
    reference runs here and the candidates' runs (:mod:`mx_envs.tasks.code_grader`) both send it."""
    global _HARNESS_SOURCE
    if _HARNESS_SOURCE is None:
        _HARNESS_SOURCE = Path(H.__file__).read_text(encoding="utf-8")
    return _HARNESS_SOURCE


class OracleError(RuntimeError):
    """The dataset's tests could not be turned into input -> expected pairs (a dataset problem)."""


@dataclass
class Oracle:
    """Input -> expected pairs of one task (all values in the harness codec, as JSON text)."""

    inputs: list[str]  # encoded argument lists: what the candidate's sandbox receives
    expected: list[str]  # encoded reference results: host only
    ref_time_s: list[float]
    _decoded: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)

    def decoded(self, i: int) -> tuple[Any, Any]:
        """(arguments, expected result) of pair ``i``, decoded (cached)."""
        if i not in self._decoded:
            self._decoded[i] = (H.decode_value(H.strict_loads(self.inputs[i])),
                                H.decode_value(H.strict_loads(self.expected[i])))
        return self._decoded[i]

    def time_limits(self, override_s: float | None = None) -> list[float]:
        if override_s is not None:
            return [float(override_s)] * len(self.inputs)
        return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in self.ref_time_s]

    def overall_s(self, limits: list[float]) -> float:
        return min(sum(limits), max(TASK_TIME_CAP_S, 8.0 * sum(self.ref_time_s))) + 5.0


_memo: dict[str, Oracle] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_MEMO_MAX = 4096


def cache_dir() -> Path:
    base = os.environ.get("MX_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "metaagentx"
    return root / "code_oracles"


def oracle_key(tests: CodeTests) -> str:
    reference = tests.solutions[0] if tests.solutions else ""
    blob = json.dumps([ORACLE_VERSION, reference, tests.assert_source, tests.fn_name])
    return hashlib.sha256(blob.encode("utf-8", errors="surrogatepass")).hexdigest()


def _read_cache(path: Path) -> Oracle | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Oracle(list(data["inputs"]), list(data["expected"]), [float(t) for t in data["ref_time_s"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, oracle: Oracle) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"inputs": oracle.inputs, "expected": oracle.expected, "ref_time_s": oracle.ref_time_s}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a trusted run per process


def record_pairs(tests: CodeTests, sandbox: Any) -> Oracle:
    """Run the trusted recording (no cache); raises :class:`OracleError` when it cannot."""
    from mx_envs.sandbox.api import Limits

    if not tests.solutions or not tests.fn_name or not tests.assert_source:
        raise OracleError("assert-style tests need a reference solution, fn_name and the test source")
    job = {"mode": "reference", "reference": tests.solutions[0], "test": tests.assert_source, "fn_name": tests.fn_name}
    limits = Limits(wall_s=REFERENCE_WALL_S, cpu_s=REFERENCE_WALL_S, memory_mb=4096, max_processes=64,
                    output_bytes=512 << 20, file_size_mb=64)
    result = sandbox.run(harness_source(), stdin=json.dumps(job), limits=limits)
    verdict = getattr(result.verdict, "value", str(result.verdict))
    if verdict != "ok":
        raise OracleError(f"reference run ended with {verdict}: {result.message} {result.stderr[-500:]}".strip())
    inputs, expected, times = [], [], []
    for line in result.stdout.splitlines():
        rec = H.strict_loads(line)
        if "x" in rec:
            continue  # the reference rejects this input: not a test (as EvalPlus' contracts)
        inputs.append(json.dumps(rec["a"], separators=(",", ":")))
        expected.append(json.dumps(rec["r"], separators=(",", ":")))
        times.append(float(rec["t"]))
    if not inputs:
        raise OracleError(f"the tests never call {tests.fn_name!r} with a result")
    return Oracle(inputs, expected, times)


def reference_oracle(tests: CodeTests, sandbox: Any) -> Oracle:
    """The task's input -> expected pairs: memory, then disk cache, then a trusted run."""
    key = oracle_key(tests)
    hit = _memo.get(key)
    if hit is not None:
        return hit
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _memo.get(key)
        if hit is not None:
            return hit
        path = cache_dir() / f"{key}.json"
        oracle = _read_cache(path)
        if oracle is None:
            oracle = record_pairs(tests, sandbox)
            _write_cache(path, oracle)
        if len(_memo) >= _MEMO_MAX:
            _memo.pop(next(iter(_memo)))
        _memo[key] = oracle
        return oracle
