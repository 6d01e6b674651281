"""One task record for every benchmark, math or code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TaskKind = Literal["math", "code"]


@dataclass
class CodeTests:
    """How a code task is judged.

    ``stdin_tests`` are (input, expected_output) pairs compared LiveCodeBench-style;
    ``call_tests`` are (json_args, json_expected) pairs: ``fn_name`` is called with the decoded
    argument list (a method of class ``Solution`` when the starter code defines one).
    ``checker`` is an optional Python source defining ``check(input, expected, output) -> bool`` for
    problems that accept several outputs (special judges).
    """

    stdin_tests: list[tuple[str, str]] = field(default_factory=list)
    call_tests: list[tuple[str, str]] = field(default_factory=list)
    fn_name: str | None = None
    starter_code: str = ""
    time_limit_s: float = 6.0
    solutions: list[str] = field(default_factory=list)
    checker: str | None = None
    # Plain-assert harness (HumanEval / MBPP style): source run after the candidate.
    assert_source: str | None = None
    # None: LiveCodeBench comparison (numeric tokens equal as decimals, no rounding). A number:
    # numeric tokens may also differ by this absolute error (relative above 1), as judges that
    # accept "absolute or relative error" do.
    float_tolerance: float | None = None
    # stdin/stdout comparison: "lines" (LiveCodeBench: line by line) or "tokens" (the
    # whitespace-separated token sequence, line breaks included, as Codeforces' default checker).
    output_compare: str = "lines"
    # What the policy is shown (the task's prompt): tests whose input (and output) it writes are
    # *shown* and never pay reward (see mx_envs.tasks.code_reward).
    shown_text: str = ""
    # Indices (stdin tests, then call tests) of the tests the dataset publishes with the statement
    # (LiveCodeBench and CodeContests public tests): shown whether or not the text writes them.
    shown: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.stdin_tests) + len(self.call_tests) + (1 if self.assert_source else 0)


@dataclass
class Task:
    """A benchmark item: what the designer sees (``prompt``) and how the outcome is graded."""

    id: str
    dataset: str
    split: str
    kind: TaskKind
    prompt: str
    answer: str | None = None  # math reference answer
    tests: CodeTests | None = None  # code reference tests
    metadata: dict[str, Any] = field(default_factory=dict)  # difficulty, tags, year, contest_date, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        d = dict(d)
        if d.get("tests") is not None and not isinstance(d["tests"], CodeTests):
            t = dict(d["tests"])
            t["stdin_tests"] = [tuple(x) for x in t.get("stdin_tests", [])]
            t["call_tests"] = [tuple(x) for x in t.get("call_tests", [])]
            d["tests"] = CodeTests(**t)
        return cls(**d)
