"""Math answer grading: extract the final answer, compare it with the reference.

Comparison, in order:

1. identical after :func:`~mx_envs.tasks.cleanup.normalize_answer` -> correct;
2. fast path: both sides plain numerals (``70``, ``070``, ``70.0``, ``1,000``, ``-0.5``) -> exact
   decimal equality, no tolerance (``993`` is not ``997``);
3. otherwise math-verify (fractions, radicals, intervals, sets, matrices, text) under a wall-clock
   limit per comparison. When the reference is an integer (AIME-style), a math-verify "equal" is
   re-checked exactly, because math-verify rounds floats to 6 decimals;
4. text answers math-verify cannot parse are compared case- and ``\\text{}``-insensitively.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from mx_envs.tasks.cleanup import normalize_answer
from mx_envs.tasks.math_extract import extract_answer
from mx_envs.tasks.timelimit import CallTimeout, call_with_timeout

log = logging.getLogger(__name__)

_NUMERAL_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[+-]?\.\d+$")
_INT_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0*)?$")
DEFAULT_TIMEOUT_S = 5.0


@dataclass
class MathGrade:
    """Outcome of grading one math response."""

    correct: bool
    extracted: str | None
    method: str = ""  # which rule decided: no_answer, exact, numeric, math_verify, text, timeout
    details: dict[str, Any] = field(default_factory=dict)


def _strip_wrappers(s: str) -> str:
    s = normalize_answer(s)
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[-+\d.])", "", s)  # "x = 5" -> "5" for plain numbers
    return s.replace(" ", "") if _NUMERAL_RE.match(s.replace(" ", "")) else s


def parse_numeral(s: str) -> Decimal | None:
    """The exact value of a plain numeral (thousands separators allowed); ``None`` otherwise."""
    t = s.replace(" ", "")
    if not _NUMERAL_RE.match(t):
        return None
    try:
        return Decimal(t.replace(",", ""))
    except InvalidOperation:
        return None


def _quiet_math_verify() -> Any:
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # We enforce the limit ourselves (see timelimit.py); this only silences the one-time notice
    # that math-verify's own signal-based limit is off.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def _mv_compare(reference: str, answer: str, integer_reference: bool) -> tuple[bool, bool]:
    """(equal, parsed) by math-verify; runs in the caller's process or a worker (picklable)."""
    mv = _quiet_math_verify()
    gold = mv.parse("$" + reference + "$", parsing_timeout=None)
    pred = mv.parse("$" + answer + "$", parsing_timeout=None)
    if not gold or not pred:
        return False, False
    equal = bool(mv.verify(gold, pred, timeout_seconds=None))
    if equal and integer_reference:
        equal = _exactly_integer(pred[0], int(Decimal(reference.replace(",", ""))))
    return equal, True


def _exactly_integer(value: Any, target: int) -> bool:
    import sympy

    if isinstance(value, str):
        d = parse_numeral(value)
        return d is not None and d == target
    try:
        expr = sympy.sympify(value)
        if expr.free_symbols:
            return False
        if isinstance(expr, sympy.Float):
            return Decimal(str(expr)) == target
        return bool(sympy.simplify(expr - target) == 0)
    except Exception:  # noqa: BLE001 - anything unparseable is not exactly the integer
        return False


def _text_key(s: str) -> str:
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", s)
    return re.sub(r"[\s.]+", "", s).lower().strip("()")


def compare_answers(answer: str, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """Whether ``answer`` (already extracted) equals ``reference``; returns (equal, method)."""
    a, r = _strip_wrappers(answer), _strip_wrappers(reference)
    if a == r:
        return True, "exact"
    ra, rr = parse_numeral(a), parse_numeral(r)
    if rr is not None and ra is not None:
        return ra == rr, "numeric"
    integer_reference = bool(_INT_RE.match(r.replace(" ", "")))
    if integer_reference and _UNEVALUATED.search(a):
        # "7 + 4" for 11 restates the computation instead of answering it (a reward hack on
        # arithmetic); a value form such as \frac{140}{2} is still compared below.
        return False, "unevaluated"
    try:
        equal, parsed = call_with_timeout(_mv_compare, (r, a, integer_reference), timeout_s)
    except CallTimeout:
        return False, "timeout"
    if equal:
        return True, "math_verify"
    # text answers ("Evelyn", "\text{(C)}") and forms math-verify could not parse
    if (not parsed or rr is None) and _text_key(a) and _text_key(a) == _text_key(r):
        return True, "text"
    return False, "math_verify" if parsed else "unparsed"


# A number, an arithmetic operator, a number: an unevaluated sum/difference/product.
_UNEVALUATED = re.compile(r"\d\s*(?:[-+*×]|\\times|\\cdot)\s*-?\d")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")


def _has_words(text: str) -> bool:
    return bool(_WORD.search(_LATEX_CMD.sub(" ", text)))


def bare_answer(response: str, reference: str) -> str | None:
    """A response without a box or answer phrase, taken as the answer itself when it is one.

    Only a single line of at most 64 characters qualifies ("70", "$\\frac{1}{2}$", "8 + 9 = 17" ->
    "17"). Prose never does when the reference has no words: math-verify would otherwise read
    "Several ways to calculate 7 + 4" as the expression 7 + 4 and accept it for 11, which teaches a
    policy to restate the question. For an equation the right-hand side is the answer, unless the
    reference is an equation too.
    """
    line = response.strip()
    if not line or "\n" in line or len(line) > 64:
        return None
    core = line.strip("$").strip().rstrip(".").strip()
    if _has_words(core) and not _has_words(reference):
        return None
    if "=" in core and "=" not in reference:
        core = core.rsplit("=", 1)[1].strip()
    return core or None


def grade_math(response: str, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> MathGrade:
    """Extract the final answer from ``response`` and compare it with ``reference``.

    A response without a box or "final answer" phrase counts as the answer itself only when it is
    a single line of at most 64 characters.

    ``timeout_s`` bounds each math-verify comparison (a timeout grades as incorrect).
    """
    extracted = extract_answer(response)
    if extracted is None:
        extracted = bare_answer(response, reference)
    if extracted is None:
        return MathGrade(False, None, "no_answer")
    correct, method = compare_answers(extracted, reference, timeout_s)
    return MathGrade(correct, extracted, method)
