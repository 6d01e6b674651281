"""Number literals in math answers, parsed to exact values (``fractions.Fraction``).

A *literal* is a written value, not a computation: an integer (``70``, ``070``, ``+70``, ``1,000``),
a decimal (``0.35625``, ``.5``, ``70.0``), scientific notation (``6.4e-5``, ``6.4 \\times 10^{-5}``,
``10^{-5}``) or a fraction of two integers (``\\frac{22}{7}``, ``-\\frac{1}{2}``, ``3/4``).
Scientific notation in an *answer* must be normalised (``1 <= |m| < 10``): ``37 \\times 10^{1}``
is the question "37 * 10" restated, not a value.

Everything here is regex plus ``Fraction``: no sympy, so the integer path stays fast (tens of
thousands of grades a second) and cannot hang. Exponents are limited to 4 digits and numbers to
Python's int-string limit; anything beyond is "not a literal", never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DEC = rf"(?:{_INT}(?:\.\d*)?|\.\d+)"
_EXP = r"([+-]?\d{1,4})"
_NUMERAL_RE = re.compile(rf"^[+-]?{_DEC}$")
_INT_RE = re.compile(rf"^[+-]?{_INT}(?:\.0*)?$")
_SCI_E_RE = re.compile(rf"^([+-]?{_DEC})[eE]{_EXP}$")
_SCI_TIMES_RE = re.compile(rf"^([+-]?{_DEC})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*(?:\{{\s*{_EXP}\s*\}}|([+-]?\d))$")
_POW10_RE = re.compile(rf"^([+-]?)10\s*\^\s*(?:\{{\s*{_EXP}\s*\}}|(\d))$")
_FRAC_RE = re.compile(r"^([+-]?)\s*\\frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)\s*/\s*(\d+)$")


@dataclass(frozen=True)
class Literal:
    """A written number: its exact ``value`` and ``kind`` (``int``, ``decimal``, ``sci``, ``pow10``, ``fraction``)."""

    value: Fraction
    kind: str


def _fraction(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _scaled(mantissa: str, exponent: str, strict: bool) -> Literal | None:
    m = _fraction(mantissa)
    if m is None:
        return None
    if strict and not 1 <= abs(m) < 10:
        return None
    return Literal(m * Fraction(10) ** int(exponent), "sci")


def parse_literal(s: str, strict: bool = True) -> Literal | None:
    """The exact value of the number literal ``s`` (see the module docstring); ``None`` otherwise.

    ``strict`` (answers) requires normalised scientific notation; references are trusted as written.
    """
    t = s.strip()
    if not t or len(t) > 4000:
        return None
    if _NUMERAL_RE.match(t):
        v = _fraction(t)
        if v is None:
            return None
        return Literal(v, "int" if _INT_RE.match(t) and "." not in t else "decimal")
    m = _SCI_E_RE.match(t)
    if m:
        return _scaled(m.group(1), m.group(2), strict)
    m = _SCI_TIMES_RE.match(t)
    if m:
        return _scaled(m.group(1), m.group(2) or m.group(3), strict)
    m = _POW10_RE.match(t)
    if m:
        return Literal((-1 if m.group(1) == "-" else 1) * Fraction(10) ** int(m.group(2) or m.group(3)), "pow10")
    m = _FRAC_RE.match(t) or _SLASH_RE.match(t)
    if m:
        groups = m.groups()
        sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
        num, den = (groups[1], groups[2]) if len(groups) == 3 else groups
        try:
            n, d = int(num), int(den)
        except ValueError:
            return None
        if d == 0:
            return None
        return Literal(sign * Fraction(n, d), "fraction")
    return None


def parse_numeral(s: str) -> Fraction | None:
    """The exact value of a plain numeral (``70``, ``1,000``, ``-0.5``); ``None`` otherwise."""
    t = s.replace(" ", "")
    return _fraction(t) if _NUMERAL_RE.match(t) else None
