"""Text cleanup shared by the loaders and the math grader.

Some public copies of the benchmarks append an instruction sentence to every problem ("Please reason
step by step, and put your final answer within \\boxed{}."). The environment adds its own
instructions, so loaders strip these. Reference answers are normalised only where a surface form
carries no meaning for grading (``336^\\circ`` is graded as ``336``; ``$...$`` delimiters dropped).

:func:`normalize_math` is the grader's surface normalisation. It is *structure preserving*: it only
removes markup that carries no value (delimiters, sizing, spacing commands, bold/roman wrappers,
degree marks) and never deletes a character inside a number or between the rows of a matrix, so
``15 \\text{ m}`` stays different from ``1.5 \\text{ m}``.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Sentences appended by public copies; matched case-insensitively at the end of the problem text.
_INSTRUCTION_PATTERNS: tuple[str, ...] = (
    r"please reason step by step,? and put your final answer within \\boxed\{\}\.?",
    r"let'?s think step by step and output the final answer within \\boxed\{\}\.?",
    r"put your final answer within \\boxed\{\}\.?",
    r"(?:please )?(?:write|present|give) (?:the|your) final answer (?:with)?in \\boxed\{\}\.?",
    r"return your final response as 'final answer: \\boxed\{<answer>\}'.*",
    r"remember to put your answer on its own line after \"answer:\"\.?",
)
_INSTRUCTION_RE = re.compile(r"(?:\s*(?:" + "|".join(_INSTRUCTION_PATTERNS) + r"))+\s*$", re.IGNORECASE | re.DOTALL)


def strip_instructions(problem: str) -> str:
    """Remove trailing answer-format instructions that some dataset copies append to a problem."""
    return _INSTRUCTION_RE.sub("", problem).rstrip()


_DEGREE_RE = re.compile(r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree|\^\s*\{\s*\\degree\s*\})\s*")


def normalize_answer(answer: str) -> str:
    """Canonical surface form of a reference answer, meaning unchanged.

    Drops surrounding ``$``/``\\(``/``\\[`` delimiters, degree marks (``336^\\circ`` -> ``336``), ``\\dfrac``/``\\tfrac`` -> ``\\frac`` and
    ``\\left``/``\\right`` sizing.
    """
    s = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
            break
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left(?![A-Za-z])\s*|\\right(?![A-Za-z])\s*", "", s)
    # Spacing commands only: a backslash that ends a matrix row separator (``\\\\ 2``) is kept.
    s = re.sub(r"(?<!\\)\\[!,;]", "", s)
    s = re.sub(r"(?<!\\)\\ ", " ", s)
    return s.strip()


# ---------------------------------------------------------------- grader normalisation


def brace_group(text: str, open_idx: int) -> int | None:
    """Index just past the ``}`` closing the group that opens at ``text[open_idx] == "{"``.

    ``\\{`` and ``\\}`` (escaped braces, as in set answers) are content, not grouping. ``None`` when
    the group never closes. Iterative: deep nesting cannot overflow the stack.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


@lru_cache(maxsize=16)
def _wrapper_re(commands: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\\(?:" + "|".join(commands) + r")\s*(?=\{)")


def unwrap_commands(s: str, commands: tuple[str, ...]) -> str:
    """Replace every ``\\cmd{X}`` (for ``cmd`` in ``commands``) by ``X``; unbalanced ones stay."""
    pattern = _wrapper_re(tuple(commands))
    pos = 0
    for _ in range(10_000):  # bounded: each round removes one wrapper
        m = pattern.search(s, pos)
        if m is None:
            break
        end = brace_group(s, m.end())
        if end is None:
            break
        s = s[: m.start()] + s[m.end() + 1 : end - 1] + s[end:]
        pos = m.start()
    return s


# Wrappers that change how a value looks, never what it is.
_COSMETIC = ("mathbf", "textbf", "boldsymbol", "bm", "boxed", "fbox", "emph", "textit", "mathit", "underline")
# Compiled at import, not at first use: the MAS library's answer votes run normalize_math in sandboxed
# processes forked from a server that imported this module, where a first-use compile costs every episode.
_wrapper_re(_COSMETIC)
_STYLE_RE = re.compile(r"\\(?:displaystyle|textstyle|scriptstyle)(?![A-Za-z])")
_WHITESPACE_RE = re.compile(r"\s+")
_FULL_STOP_RE = re.compile(r"(?<![\d])\.$")
_TEXTLIKE_RE = re.compile(r"\\(?:mathrm|mbox|textrm|textnormal|textup|textsf|mathsf)\s*(?=\{)")
_SPACING_RE = re.compile(r"(?<!\\)\\(?:[!,;:>\s]|(?:quad|qquad|enspace|thinspace|medspace)(?![A-Za-z]))|~")
_THOUSANDS_SPACING_RE = re.compile(r"(?<=\d)(?:\\,|\{,\}|\\;|\\!|\\ )(?=\d{3}(?!\d))")
_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|bigl|bigr|Bigl|Bigr)(?![A-Za-z])\s*")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d)")
_RELATION_ALIASES = (
    ("<=", "\\leq "), (">=", "\\geq "),
    ("\\geqslant", "\\geq"), ("\\leqslant", "\\leq"), ("\\ge ", "\\geq "), ("\\le ", "\\leq "), ("≥", "\\geq "),
    ("≤", "\\leq "), ("≠", "\\neq "), ("\\ne ", "\\neq "), ("\\varnothing", "\\emptyset"), ("∞", "\\infty"),
    ("\\lbrace", "\\{"), ("\\rbrace", "\\}"), ("×", "\\times "), ("·", "\\cdot "), ("−", "-"), ("±", "\\pm "),
)


def normalize_math(s: str) -> str:
    """The grader's structure-preserving surface form of an answer (see the module docstring).

    Drops ``$`` delimiters everywhere (OlympiadBench lists are ``$a$,$b$``) and ``\\$`` currency
    marks, ``\\left``/``\\right``, spacing commands (thin spaces between digit groups join them:
    ``1\\,000`` -> ``1000``), degree marks, cosmetic wrappers (``\\mathbf{5}`` -> ``5``, nested
    boxes), and writes ``\\dfrac``/``\\tfrac`` as ``\\frac``, ``\\frac12`` as ``\\frac{1}{2}``,
    ``\\mathrm{..}``/``\\mbox{..}`` as ``\\text{..}``; runs of whitespace become one space.
    """
    s = s.strip()
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)]
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\left.", "").replace("\\right.", "")
    s = _SIZING_RE.sub("", s)
    s = _THOUSANDS_SPACING_RE.sub("", s)
    s = s.replace("{,}", ",")
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    for old, new in _RELATION_ALIASES:
        s = s.replace(old, new)
    s = _STYLE_RE.sub(" ", s)
    s = unwrap_commands(s, _COSMETIC)
    s = _TEXTLIKE_RE.sub(r"\\text", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_RE.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = _WHITESPACE_RE.sub(" ", s).strip()
    s = _FULL_STOP_RE.sub("", s).strip()  # a sentence's full stop, never a decimal point
    return s
