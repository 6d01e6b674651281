"""Math answer grading: one final answer, compared exactly with the reference, structure by structure.

The rules (each one closes a reward hack a policy found or could find; see ``tasks/README.md``):

1. **One final answer.** Every top-level box must be correct (several different boxed values score
   0); an unclosed last box is no answer (no fallback to an earlier box); without a box, the last
   "final answer" phrase, else a bare one-line answer. Disjunctions (``7 \\lor 8``, "7 or 8"),
   ``\\pm`` against a reference without one, ``\\approx`` and relations with no left side
   (``\\neq 5``, ``< 5``) are not answers.
2. **Structure first.** Answer and reference are normalised without deleting any character inside a
   number (:func:`~mx_envs.tasks.cleanup.normalize_math`) and parsed into the same shapes: matrices
   (entry by entry, row order kept), tuples and intervals (element-wise, bracket types kept), unions
   of intervals and sets/lists of solutions (as multisets), equations and relations (same relation,
   side by side; ``x = 5`` answers a reference ``5`` and the other way round when the left side is a
   name), ``a \\pm b`` (the set of both values), quantities with units (the unit may be omitted, never
   changed).
3. **Numbers exactly.** A reference that is a number literal is answered only by a number literal of
   the same value (:mod:`~mx_envs.tasks.math_numbers`): no tolerance, no rounding (``993`` is not
   ``997``; ``0.333`` is not ``\\frac{1}{3}``; ``0.5`` *is* ``\\frac{1}{2}``). An integer reference
   needs an integer written as one (``11``, ``011``, ``11.0``, ``1.1 \\times 10^1``): ``\\frac{22}{2}``,
   ``7 + 4``, ``(464) * ((477) + (841))``, ``\\sum``, ``\\sqrt{121}`` restate a computation and score
   0 however they are wrapped. A rational reference accepts any equal fraction or exact decimal. A
   tolerance applies only when the caller passes ``rel_tol`` (for a dataset that states one; none of
   ours does).
4. **Symbolic references** (radicals, pi, expressions, functions) are compared by exact sympy
   equality (:mod:`~mx_envs.tasks.math_symbolic`): decimals are read as the fractions they write, so a
   decimal approximation never equals an irrational reference.
5. **Always a verdict, quickly.** Inputs that could run away (power towers, huge factorials, very
   long answers) are rejected before evaluation; all sympy work of one grade shares one wall-clock
   limit (``timeout_s``); any exception inside grading becomes an incorrect verdict with
   ``method="error"``. Plain integer pairs never reach sympy.

Text answers (``\\text{Evelyn}``, ``(C)``) compare case- and markup-insensitively, never by deleting
characters other than spaces.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from mx_envs.tasks.cleanup import normalize_math
from mx_envs.tasks.math_extract import extract_all
from mx_envs.tasks.math_numbers import Literal, parse_literal, parse_numeral
from mx_envs.tasks.math_symbolic import (
    UNEVALUATED_OPERATORS,
    prepare_reference,
    symbolic_equal,
    too_large,
    warm_imports,
)
from mx_envs.tasks.timelimit import CallTimeout, call_with_timeout

log = logging.getLogger(__name__)

__all__ = ["MathGrade", "grade_math", "compare_answers", "bare_answer", "parse_numeral", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 2.0  # all sympy work of one grade together
REFERENCE_PARSE_S = 30.0  # parsing a reference, once per reference and thread; not the answer's time
MAX_RESPONSE_CHARS = 200_000
MAX_ANSWER_CHARS = 1_000
MAX_BOXES = 5
MAX_ITEMS = 24


@dataclass
class MathGrade:
    """Outcome of grading one math response.

    ``method`` says which rule decided: ``no_answer``, ``unclosed_box``, ``several_answers``,
    ``too_long``, ``too_large``, ``exact``, ``numeric``, ``symbolic``, ``structure``, ``text``,
    ``unit``, ``hedge``, ``relation``, ``approximation``, ``unevaluated``, ``not_a_number``,
    ``timeout``, ``error``.
    """

    correct: bool
    extracted: str | None
    method: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- shapes

_OPENERS, _CLOSERS = "([{", ")]}"
_RELATION_RE = re.compile(
    r"\\(?:leq|geq|neq|lt|gt|le|ge|ne|in|notin|approx|simeq|sim|equiv|subseteq|subset|supseteq|supset|to|"
    r"rightarrow|Rightarrow|implies|iff|Leftrightarrow|ll|gg|propto|cong)(?![A-Za-z])|<|>|="
)
_MATRIX_RE = re.compile(r"^\\begin\{([pbBvV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_HEDGE_RE = re.compile(r"\\(?:lor|vee|lxor|oplus)(?![A-Za-z])|(?<![A-Za-z\\])(?:or|either|and/or)(?![A-Za-z])", re.I)
_PM_RE = re.compile(r"\\pm(?![A-Za-z])|\\mp(?![A-Za-z])")
_APPROX_RE = re.compile(r"\\(?:approx|simeq|sim|thickapprox|doteq)(?![A-Za-z])|≈")
_NAME_RE = re.compile(r"^(?:\\?[A-Za-z]+)(?:\s*\(\s*[A-Za-z]\s*\))?$")
_SUBSCRIPT_RE = re.compile(r"_\s*(?:\{[^{}]*\}|\\?\w+)|'|\\prime|\^\s*\{\s*\\prime\s*\}")
_TEXT_NUMBER_RE = re.compile(r"\\text\{\s*([+-]?[\d.,]+)\s*\}")
_OPERATOR_RE = re.compile(r"[-+*/^!]|\\(?:times|cdot|div|frac|sqrt|sum|prod|binom|pm|mp)(?![A-Za-z])")


def _scan(s: str) -> list[tuple[int, int]]:
    """(index, depth before the character) for every position outside ``\\command`` names."""
    out: list[tuple[int, int]] = []
    depth = 0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "{}":
            out.append((i, depth))
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        out.append((i, depth))
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
        i += 1
    return out


def _split_top(s: str, sep: re.Pattern[str]) -> tuple[list[str], list[str]]:
    """Split ``s`` at matches of ``sep`` that lie outside every bracket; (parts, separators)."""
    top = {i for i, d in _scan(s) if d == 0}
    parts, seps, start, pos = [], [], 0, 0
    while True:
        m = sep.search(s, pos)
        if m is None:
            break
        if m.start() in top and m.end() > m.start():
            parts.append(s[start : m.start()])
            seps.append(m.group(0))
            start = m.end()
        pos = max(m.end(), m.start() + 1)
    parts.append(s[start:])
    return [p.strip() for p in parts], seps


def _wraps(s: str, open_len: int) -> bool:
    """Whether the bracket opening ``s`` closes at its very end."""
    if len(s) < 2:
        return False
    scan = _scan(s)
    for idx, (i, d) in enumerate(scan):
        if i == 0:
            continue
        if d == 1 and (s[i] in _CLOSERS or s.startswith("\\}", i)) and idx < len(scan) - 1:
            return False
    return True


_COMMA = re.compile(",")
_PLAIN_NUMBER_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$")
_OP_ALIASES = {"\\le": "\\leq", "\\ge": "\\geq", "\\ne": "\\neq", "\\lt": "<", "\\gt": ">"}
_CUP = re.compile(r"\\cup(?![A-Za-z])|∪")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


Node = tuple


def parse_shape(s: str, thousands: bool = True, depth: int = 0) -> Node:
    """The shape of a normalised answer: nested tuples ``(kind, ...)`` (see the module docstring).

    Kinds: ``leaf``, ``matrix``, ``set`` (unordered: solution lists, ``\\{..\\}``, ``\\pm``, unions),
    ``seq`` (ordered, with its brackets), ``rel`` (operands, operators). ``thousands``: ``1,000`` is a
    number, not a list (used when the reference is not a list).
    """
    s = s.strip()
    if depth > 8:
        return ("leaf", s)
    while s.startswith("{") and s.endswith("}") and _wraps(s, 1) and len(s) > 2:
        s = s[1:-1].strip()
    m = _MATRIX_RE.match(s)
    if m:
        body = m.group(2).strip()
        rows = [r.strip() for r in re.split(r"\\\\", body)]
        while rows and not rows[-1]:
            rows.pop()
        return ("matrix", tuple(tuple(e.strip() for e in r.split("&")) for r in rows))
    if s.startswith("\\{") and s.endswith("\\}") and _wraps(s, 2):
        inner = s[2:-2].strip()
        items = _split_top(inner, _COMMA)[0] if inner else []
        return _set([parse_shape(x, False, depth + 1) for x in items])
    if not (thousands and _THOUSANDS_RE.match(s.replace(" ", ""))):
        parts, _ = _split_top(s, re.compile(",|;"))
        if len(parts) > 1:
            return _set([parse_shape(x, False, depth + 1) for x in parts if x])
    parts, _ = _split_top(s, _CUP)
    if len(parts) > 1:
        return ("set", tuple(parse_shape(x, False, depth + 1) for x in parts))
    parts, ops = _split_top(s, _RELATION_RE)
    if ops:
        return ("rel", tuple(parts), tuple(_OP_ALIASES.get(o.strip(), o.strip()) for o in ops))
    if s[:1] in "([" and s[-1:] in ")]" and _wraps(s, 1):
        inner = s[1:-1].strip()
        items, _ = _split_top(inner, _COMMA)
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(parse_shape(x, False, depth + 1) for x in items))
        if s[0] == "(" and s[-1] == ")":
            return parse_shape(inner, thousands, depth + 1)
    pm = _PM_RE.search(s)
    if pm:
        plus, minus = ("+", "-") if pm.group(0) == "\\pm" else ("-", "+")
        head, tail = s[: pm.start()].strip(), s[pm.end() :].strip()
        left = head if head else ""
        return ("set", (("leaf", f"{left}{plus}{tail}".strip().lstrip("+")), ("leaf", f"{left}{minus}{tail}".strip())),
                "pm")
    return ("leaf", s)


def _set(items: list[Node]) -> Node:
    """A set node; ``a \\pm b`` items contribute both of their values."""
    flat: list[Node] = []
    for x in items:
        flat.extend(x[1] if x[0] == "set" and x[2:] == ("pm",) else (x,))
    return ("set", tuple(flat))


# ---------------------------------------------------------------- leaves


def text_key(s: str) -> str:
    """Markup-, space- and (for plain text) case-insensitive key; never drops digits or points."""
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    t = re.sub(r"\s+", "", t)
    if "\\" not in t:
        t = t.lower()
    if re.fullmatch(r"\(([A-Za-z])\)", t):
        t = t[1]
    return t


_TEXT_UNIT_RE = re.compile(r"^(.*?\S)\s*\\text\{\s*([A-Za-z][A-Za-z ./]*?)\s*\}\s*(\^\s*\{?\s*\d\s*\}?)?$")
_WORD_UNIT_RE = re.compile(r"^(.*?[\d}])\s+([A-Za-z]{2,14}(?: [A-Za-z]{2,14})?)\s*(\^\s*\{?\s*\d\s*\}?)?$")


# Words that qualify a value ("5 at most", "5 or more") are never a unit.
_NOT_UNITS = frozenset({
    "at", "least", "most", "more", "less", "fewer", "than", "about", "approximately", "approx",
    "around", "roughly", "nearly", "maybe", "perhaps", "or", "and", "not", "plus", "minus", "times",
    "over", "under", "above", "below", "between", "up", "to", "either", "neither", "nor"
})


def split_unit(s: str) -> tuple[str, str]:
    """(value, unit key) of a quantity: ``864 \\text{ inches}^2`` -> (``864``, ``inches^2``)."""
    s = _TEXT_NUMBER_RE.sub(r"\1", s).strip()
    if s.endswith("\\%"):
        return s[:-2].strip(), "%"
    if s.endswith("%"):
        return s[:-1].strip(), "%"
    m = _TEXT_UNIT_RE.match(s) or _WORD_UNIT_RE.match(s)
    if m and not _NOT_UNITS & set(m.group(2).lower().split()):
        unit = re.sub(r"\s+", "", m.group(2)).lower() + re.sub(r"[\s{}]", "", m.group(3) or "")
        return m.group(1).strip(), unit
    return s, ""


def _is_text(s: str) -> bool:
    """A text reference: a ``\\text{..}`` group, a choice letter, or plain words."""
    t = s.strip()
    if re.fullmatch(r"\\text\{[^{}]*\}", t) or re.fullmatch(r"\(?[A-Ea-e]\)", t):
        return True
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z ,.'-]*[A-Za-z]", t)) and bool(re.search(r"[A-Za-z]{3,}", t))


@dataclass
class _Ctx:
    """What one grade shares: the reference's flags, the tolerance and the sympy time budget."""

    rel_tol: float | None
    deadline: float | None
    ref_text: str
    method: str = ""


_local = threading.local()


def _worker_id() -> int:
    """Which process runs this thread's sympy work: 0 for this one, else the worker's pid."""
    from mx_envs.tasks import timelimit

    worker = getattr(timelimit._local, "worker", None)
    if threading.current_thread() is threading.main_thread() or worker is None:
        return 0 if threading.current_thread() is threading.main_thread() else -1
    return worker.proc.pid or -1


def _symbolic(a: str, r: str, ctx: _Ctx) -> bool:
    if ctx.deadline is None:
        warm_imports()
        return symbolic_equal(a, r)
    if getattr(_local, "warm_for", None) != _worker_id():
        # Imports and parser set-up (or a new worker's start, after a timeout killed the last one)
        # are not the answer's time.
        t0 = time.monotonic()
        call_with_timeout(warm_imports, (), 120.0)
        _local.warm_for = _worker_id()
        _local.prepared = set()
        ctx.deadline += time.monotonic() - t0
    prepared: set[str] = _local.prepared
    if r not in prepared and len(prepared) < 100_000:
        t0 = time.monotonic()
        try:
            call_with_timeout(prepare_reference, (r,), REFERENCE_PARSE_S)
        except CallTimeout:
            pass  # the comparison below then runs out of time too: "timeout", not an error
        prepared.add(r)
        ctx.deadline += time.monotonic() - t0
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout()
    try:
        return bool(call_with_timeout(symbolic_equal, (a, r), left))
    except RuntimeError:  # the worker reported an exception: not equal
        return False


def _number_equal(a: Literal, r: Literal, ctx: _Ctx) -> tuple[bool, str]:
    if r.kind == "int" and a.kind in ("fraction", "pow10"):  # \frac{22}{2}, 10^{2}: computations
        return False, "unevaluated"
    if a.value == r.value:
        return True, "numeric"
    if ctx.rel_tol is not None and r.kind in ("decimal", "sci", "pow10") and a.kind != "fraction":
        return abs(a.value - r.value) <= Fraction(ctx.rel_tol) * abs(r.value), "numeric"
    return False, "numeric"


def compare_leaf(a: str, r: str, ctx: _Ctx) -> tuple[bool, str]:
    """One scalar answer against one scalar reference."""
    if not a:
        return False, "no_answer"
    if text_key(a) == text_key(r):
        return True, "exact"
    r_value, r_unit = split_unit(r)
    rl = parse_literal(r_value, strict=False)
    if rl is not None:
        a_value, a_unit = split_unit(a)
        if a_unit and r_unit and a_unit != r_unit:
            return False, "unit"
        al = parse_literal(a_value, strict=True)
        if al is None:
            return False, "unevaluated" if _OPERATOR_RE.search(a_value) else "not_a_number"
        return _number_equal(al, rl, ctx)
    if _is_text(r):
        return False, "text"
    if any(op in a and op not in r for op in UNEVALUATED_OPERATORS):
        return False, "unevaluated"
    if too_large(a):
        return False, "too_large"
    return _symbolic(a, r, ctx), "symbolic"


# ---------------------------------------------------------------- shapes against shapes


def _is_name(s: str) -> bool:
    return bool(_NAME_RE.match(_SUBSCRIPT_RE.sub("", s).strip()))


def _match_all(a_items: tuple, r_items: tuple, ctx: _Ctx) -> tuple[bool, str]:
    """Multiset equality: every reference item matched by a distinct answer item."""
    if len(a_items) != len(r_items):
        return False, "structure"
    if len(r_items) > MAX_ITEMS:
        return sorted(map(repr, a_items)) == sorted(map(repr, r_items)), "structure"
    used: set[int] = set()
    for r in r_items:
        for j, a in enumerate(a_items):
            if j not in used and compare_shapes(a, r, ctx)[0]:
                used.add(j)
                break
        else:
            return False, "structure"
    return True, "structure"


def compare_shapes(a: Node, r: Node, ctx: _Ctx) -> tuple[bool, str]:
    """Whether answer shape ``a`` equals reference shape ``r`` (module docstring, rule 2)."""
    if a[0] == "rel" and any(not p for p in a[1][:1]):
        return False, "relation"  # "\neq 5", "< 5", "= 5": no left side
    if r[0] == "rel":
        if a[0] == "rel":
            if len(a[2]) != len(r[2]) or a[2] != r[2]:
                return False, "relation"
            if all(compare_leaf(x, y, ctx)[0] for x, y in zip(a[1], r[1], strict=True)):
                return True, "structure"
            if len(r[1]) == 2 and r[2] == ("=",):  # the same equation rearranged: lhs - rhs equal
                diff_a = f"{{{a[1][0]}}}-({a[1][1]})"
                diff_r = f"{{{r[1][0]}}}-({r[1][1]})"
                return compare_leaf(diff_a, diff_r, ctx)[0], "structure"
            return False, "relation"
        if len(r[1]) == 2 and r[2][0] in ("=", "\\in") and _is_name(r[1][0]):
            return compare_shapes(a, parse_shape(r[1][1]), ctx)
        return False, "relation"
    if a[0] == "rel":
        if all(op == "=" for op in a[2]) or (a[2] == ("\\in",) and _is_name(a[1][0])):
            return compare_shapes(parse_shape(a[1][-1], r[0] != "set"), r, ctx)
        return False, "relation"
    if a[0] != r[0]:
        return False, "structure"
    if r[0] == "leaf":
        return compare_leaf(a[1], r[1], ctx)
    if r[0] == "matrix":
        if len(a[1]) != len(r[1]) or any(len(x) != len(y) for x, y in zip(a[1], r[1], strict=True)):
            return False, "structure"
        for ra, rr in zip(a[1], r[1], strict=True):
            for x, y in zip(ra, rr, strict=True):
                if not compare_shapes(parse_shape(x), parse_shape(y), ctx)[0]:
                    return False, "structure"
        return True, "structure"
    if r[0] == "seq":
        if (a[1], a[2]) != (r[1], r[2]) or len(a[3]) != len(r[3]):
            return False, "structure"
        ok = all(compare_shapes(x, y, ctx)[0] for x, y in zip(a[3], r[3], strict=True))
        return ok, "structure"
    if r[0] == "set":
        return _match_all(a[1], r[1], ctx)
    return False, "structure"


# ---------------------------------------------------------------- answers against references


@dataclass(frozen=True)
class _Reference:
    text: str
    shape: Node
    has_pm: bool
    has_hedge_word: bool
    has_approx: bool


@lru_cache(maxsize=8192)
def _reference(reference: str) -> _Reference:
    r = normalize_math(reference)
    return _Reference(r, parse_shape(r), bool(_PM_RE.search(r)), bool(_HEDGE_RE.search(r)),
                      bool(_APPROX_RE.search(r)))


def _compare(answer: str, reference: str, ctx: _Ctx) -> tuple[bool, str]:
    if len(answer) > MAX_ANSWER_CHARS:
        return False, "too_long"
    ref = _reference(reference)
    ctx.ref_text = ref.text
    a = normalize_math(answer)
    if not a:
        return False, "no_answer"
    if text_key(a) == text_key(ref.text):
        return True, "exact"
    if _HEDGE_RE.search(a) and not ref.has_hedge_word:
        return False, "hedge"
    if _PM_RE.search(a) and not ref.has_pm:
        return False, "hedge"
    if _APPROX_RE.search(a) and not ref.has_approx:
        return False, "approximation"
    shape = parse_shape(a, thousands=ref.shape[0] != "set")
    return compare_shapes(shape, ref.shape, ctx)


def _plain_integer(s: str) -> int | None:
    """The value of a plain numeral that is an integer (``070``, ``1,000``, ``70.0``); else ``None``."""
    t = s.replace(",", "")
    head, _, tail = t.partition(".")
    if tail.strip("0") or not head.lstrip("+-"):
        return None
    try:
        return int(head)
    except ValueError:  # over Python's int-string limit: the exact path decides
        return None


def compare_answers(answer: str, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                    rel_tol: float | None = None) -> tuple[bool, str]:
    """Whether ``answer`` (already extracted) equals ``reference``; returns (equal, method).

    ``timeout_s`` bounds all sympy work of this comparison (``None``: no limit); ``rel_tol`` is a
    relative tolerance for decimal references, for datasets that state one. Never raises.
    """
    if _PLAIN_NUMBER_RE.match(answer) and _PLAIN_NUMBER_RE.match(reference):  # the integer fast path
        a_int, r_int = _plain_integer(answer), _plain_integer(reference)
        if a_int is not None and r_int is not None and rel_tol is None:
            return a_int == r_int, "numeric"
        al, rl = parse_literal(answer), parse_literal(reference, strict=False)
        if al is not None and rl is not None:
            return _number_equal(al, rl, _Ctx(rel_tol, None, reference))
    deadline = None if timeout_s is None or timeout_s <= 0 else time.monotonic() + timeout_s
    ctx = _Ctx(rel_tol, deadline, "")
    try:
        return _compare(str(answer), str(reference), ctx)
    except CallTimeout:
        return False, "timeout"
    except Exception as exc:  # noqa: BLE001 - a grader returns a verdict for every output
        log.warning("math grading error on %.80r vs %.80r: %r", answer, reference, exc)
        return False, "error"


_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")


def _has_words(text: str) -> bool:
    return bool(_WORD.search(_LATEX_CMD.sub(" ", text)))


def bare_answer(response: str, reference: str) -> str | None:
    """A response without a box or answer phrase, taken as the answer itself when it is one.

    Only a single line of at most 64 characters qualifies ("70", "$\\frac{1}{2}$", "8 + 9 = 17").
    Prose never does when the reference has no words: "Several ways to calculate 7 + 4" is not an
    answer (a policy would otherwise learn to restate the question).
    """
    line = response.strip()
    if not line or "\n" in line or len(line) > 64:
        return None
    core = line.strip("$").strip().rstrip(".").strip()
    if _has_words(core) and not _has_words(reference):
        return None
    return core or None


def _one_plain_integer_box(response: str, reference: str) -> MathGrade | None:
    """The verdict for the common RL case, one ``\\boxed{<integer>}`` against an integer; else ``None``."""
    i = response.find("\\boxed{")
    if i < 0 or response.find("\\boxed", i + 6) >= 0 or "\\fbox" in response:
        return None
    j = response.find("}", i + 7)
    content = response[i + 7 : j].strip()
    if j < 0 or not _PLAIN_NUMBER_RE.match(content) or not _PLAIN_NUMBER_RE.match(reference):
        return None
    a, r = _plain_integer(content), _plain_integer(reference)
    if a is None or r is None:
        return None
    return MathGrade(a == r, content, "numeric")


def grade_math(response: str, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S,
               rel_tol: float | None = None) -> MathGrade:
    """Extract the final answer of ``response`` and compare it with ``reference`` (module docstring).

    ``timeout_s`` bounds the sympy work of the whole grade (a timeout grades as incorrect);
    ``rel_tol``: see :func:`compare_answers`. Never raises: any output gets a verdict.
    """
    try:
        response = "" if response is None else str(response)
        fast = _one_plain_integer_box(response, reference) if rel_tol is None else None
        if fast is not None:
            return fast
        if len(response) > MAX_RESPONSE_CHARS:
            return MathGrade(False, None, "too_long")
        ex = extract_all(response)
        if ex.unclosed:
            return MathGrade(False, None, "unclosed_box")
        answers = ex.answers
        if not answers:
            bare = bare_answer(response, str(reference))
            answers = [bare] if bare is not None else []
        if not answers:
            return MathGrade(False, None, "no_answer")
        distinct = list(dict.fromkeys(a if _PLAIN_NUMBER_RE.match(a) else normalize_math(a) for a in answers))
        if len(distinct) > MAX_BOXES:
            return MathGrade(False, answers[-1], "several_answers")
        start = time.monotonic()
        verdicts = []
        for a in distinct:
            left = None if timeout_s is None else max(timeout_s - (time.monotonic() - start), 1e-3)
            verdicts.append(compare_answers(a, reference, left, rel_tol))
        if len(distinct) > 1:
            ok = all(v[0] for v in verdicts)
            return MathGrade(ok, answers[-1], "several_answers" if not ok else verdicts[-1][1],
                             {"answers": distinct})
        return MathGrade(verdicts[0][0], answers[-1], verdicts[0][1])
    except Exception as exc:  # noqa: BLE001 - a grader returns a verdict for every output
        log.warning("math grading error: %r", exc)
        return MathGrade(False, None, "error", {"error": repr(exc)[:200]})
