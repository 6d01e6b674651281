"""Exact symbolic equality of two LaTeX leaves (one scalar each), for references that are not literals.

LaTeX -> sympy with latex2sympy2 (math-verify's parser), then *exact* equality:

* decimal literals are read as the fractions they write (``0.333`` is ``333/1000``, never a float),
  so no rounding can make ``0.333`` equal ``1/3`` or ``1.414`` equal ``\\sqrt{2}``;
* ``simplify(a - b) == 0`` proves equality (needed when the answer holds a decimal or a
  floor/abs-like function);
* a rational answer equals only a reference whose value is that rational (``355/113`` is not ``\\pi``);
* a numeric disagreement (60 digits, at fresh random points for free symbols) rejects before any
  ``simplify``; without a proof, two *exact* forms (no decimals in the answer, no floor/abs-like
  functions) are equal when they agree to 45 digits at every point;
* infinities, sets, matrices and relations compare structurally (``==``), never by subtraction.

:func:`too_large` rejects, before any evaluation, inputs that would make sympy or Python's big
integers run for minutes or exhaust memory (``10^{10^{10}}``, ``99999!``). Everything else runs under
the caller's wall-clock limit (``timelimit.call_with_timeout``); this module itself never raises out
of :func:`symbolic_equal` (parse failures are "not equal").
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MAX_SYMBOLIC_CHARS = 600
MAX_NESTING = 24
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)")
_EXPONENT_RE = re.compile(r"\^\s*(\{|[+-]?\d+|\\?[A-Za-z])")
_BIG_FACTORIAL_RE = re.compile(r"\d{4,}\s*!|[})]\s*!")
_BIG_LITERAL_RE = re.compile(r"\d{7,}")
UNEVALUATED_OPERATORS = ("\\sum", "\\prod", "\\int", "\\lim", "\\iint", "\\oint", "\\coprod", "\\bigcup",
                         "\\bigcap")


def _has_variable(latex: str) -> bool:
    """Whether ``latex`` names a variable (``e``, ``\\pi`` and operator commands are numbers/operators)."""
    return bool(re.search(r"(?<![\\A-Za-z])(?!e(?![A-Za-z]))[A-Za-z]", _COMMAND_RE.sub(" ", latex)))


def too_large(latex: str) -> bool:
    """Whether evaluating ``latex`` could take unbounded time or memory (checked without evaluating).

    Numeric power towers (an exponent holding another ``^`` and no variable; ``e`` counts as a
    number), exponents of more than 5 digits, factorials of 4-digit numbers or of groups and
    ``\\binom`` of 7-digit literals or powers (all without variables), brackets nested deeper than 24.
    """
    if len(latex) > MAX_SYMBOLIC_CHARS:
        return True
    if _BIG_FACTORIAL_RE.search(latex) and not _has_variable(latex):
        return True
    if "\\binom" in latex and (_BIG_LITERAL_RE.search(latex) or "^" in latex) and not _has_variable(latex):
        return True
    depth = deepest = 0
    for c in latex:
        if c in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")}]":
            depth -= 1
    if deepest > MAX_NESTING:
        return True
    for m in _EXPONENT_RE.finditer(latex):
        tok = m.group(1)
        if tok == "{":
            depth, i = 0, m.start(1)
            while i < len(latex):
                c = latex[i]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            group = latex[m.start(1) + 1 : i]
        else:
            group = tok
        digits = re.sub(r"[^0-9]", "", group)
        letters = _has_variable(group)
        if ("^" in group or "!" in group or "\\uparrow" in group) and not letters:
            return True
        if len(digits) > 5 and not letters:
            return True
    return False


def _rationalize_decimals(latex: str) -> str:
    def repl(m: re.Match[str]) -> str:
        whole, frac = m.group(1) or "0", m.group(2)
        numerator = int(whole) * 10 ** len(frac) + int(frac)
        return f"{{\\frac{{{numerator}}}{{1{'0' * len(frac)}}}}}"

    return _DECIMAL_RE.sub(repl, latex)


def warm_imports() -> bool:
    """Import sympy and set up the LaTeX parser (about two seconds, once per process), outside any limit."""
    import sympy

    sympy.simplify(_to_sympy("\\frac{\\sqrt{2}}{2}") - _to_sympy("2^{-1/2}"))
    return True


@lru_cache(maxsize=4096)
def _to_sympy(latex: str) -> Any:
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    norm = NormalizationConfig(basic_latex=True, units=False, malformed_operators=False, nits=False, boxed="none")
    conv = ConversionConfig(interpret_as_mixed_fractions=False)
    return latex2sympy(_rationalize_decimals(latex), normalization_config=norm, conversion_config=conv)


def _is_plain_expr(x: Any) -> bool:
    import sympy

    return isinstance(x, sympy.Expr) and not isinstance(x, sympy.MatrixBase)


def _difference_at(d: Any, r: Any, point: dict) -> tuple[Any, Any] | None:
    """|d| and max(1, |r|) at ``point`` to 60 digits; ``None`` where either is not a finite number."""
    import sympy

    try:
        v = sympy.N(d.subs(point), 60)
        scale = sympy.N(r.subs(point), 30)
    except Exception:  # noqa: BLE001 - a point where the expression is undefined tells nothing
        return None
    if not (v.is_number and scale.is_number) or v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    if scale.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    return abs(v), max(abs(scale), 1)


_DISCONTINUOUS = ("floor", "ceiling", "Abs", "sign", "Mod", "Piecewise", "frac", "Heaviside", "re", "im")


def _exactly_equal(a: Any, r: Any, answer_has_decimal: bool) -> bool:
    """Exact equality (module docstring); a numeric disagreement rejects early, before ``simplify``."""
    import random

    import sympy

    if not (_is_plain_expr(a) and _is_plain_expr(r)):
        return bool(a == r)
    infinities = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
    if a.has(*infinities) or r.has(*infinities):
        return bool(a == r)
    d = a - r
    if d == 0:
        return True
    symbols = sorted(d.free_symbols, key=str)
    if a.is_Rational and not symbols:  # a written rational equals only that rational
        rs = sympy.simplify(r)
        return bool(rs.is_Rational and rs == a)
    tol = sympy.Float("1e-45")
    # Fresh random points each call (positive reals: away from the branch cuts of sqrt and log), so
    # no fixed point set can be aimed at.
    rng = random.SystemRandom()
    points = [{x: sympy.Rational(rng.randint(5_000, 20_000), 10_000) for x in symbols} for _ in range(3 if symbols else 1)]
    agreed = 0
    for point in points:
        got = _difference_at(d, r, point)
        if got is None:
            continue
        diff, scale = got
        if diff > tol * scale:
            return False  # they differ somewhere: no proof needed
        agreed += 1
    discontinuous = any(d.has(getattr(sympy, f)) for f in _DISCONTINUOUS)
    if agreed == len(points) and not answer_has_decimal and not discontinuous:
        # Exact forms that agree to 45 digits at every (fresh, random) point are equal; this also
        # spares a slow ``simplify`` of long expressions.
        return True
    return bool(sympy.simplify(d) == 0)


def prepare_reference(reference: str) -> bool:
    """Parse ``reference`` into this process's cache (run once per reference, outside the answer's limit).

    A long reference (Minerva's ODE solutions) can take seconds to parse on a busy machine; that
    time is not the answer's fault, and without the cache every grade would time out on it.
    """
    if too_large(reference):
        return False
    try:
        _to_sympy(reference)
        return True
    except Exception:  # noqa: BLE001 - an unparseable reference compares unequal later
        return False


def symbolic_equal(answer: str, reference: str) -> bool:
    """Whether the LaTeX scalars ``answer`` and ``reference`` are exactly equal (module docstring).

    Module-level and picklable: runs in the caller's thread under SIGALRM or in a worker process.
    """
    if too_large(answer) or too_large(reference):
        return False
    try:
        a = _to_sympy(answer)
        r = _to_sympy(reference)
        return _exactly_equal(a, r, bool(_DECIMAL_RE.search(answer)) and not _DECIMAL_RE.search(reference))
    except Exception:  # noqa: BLE001 - unparseable or unsupported LaTeX is "not equal", never an error
        return False
