"""Text cleanup shared by the loaders and the math grader.

Some public copies of the benchmarks append an instruction sentence to every problem ("Please reason
step by step, and put your final answer within \\boxed{}."). The environment adds its own
instructions, so loaders strip these. Reference answers are normalised only where a surface form
carries no meaning for grading (``336^\\circ`` is graded as ``336``; ``$...$`` delimiters dropped).
"""

from __future__ import annotations

import re

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
    s = re.sub(r"\\left\s*|\\right\s*", "", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ")
    return s.strip()
