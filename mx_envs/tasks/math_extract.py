"""Find the final answer in a model's response.

A response has **one** final answer:

* every top-level ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced) is a candidate; the
  grader accepts a response only when all of its boxes are correct, so several different boxed values
  never score (no "last" or majority box is chosen for it);
* a box that never closes, after the last complete one, means the response has no answer: it never
  falls back to an earlier box (a truncated response does not keep an earlier guess);
* without a box: the last explicit "final answer" phrase ("The final answer is X", "Answer: X",
  GSM8K's "#### X");
* nothing found -> no answer.

:func:`extract_answer` keeps the old single-string API (the last complete box, or the phrase).

This is the one extractor of the project: the grader (:mod:`~mx_envs.tasks.math_grader`) and the
library that MAS scripts are written against (:mod:`mx_envs.mas.lib`: ``extract_boxed``,
``extract_answer``, ``majority_vote``) both call it, so a vote inside a design counts exactly the
answer the grader will read. The library runs in the sandboxed script process and is preloaded in the
sandbox's warm server, so this module and :mod:`~mx_envs.tasks.cleanup` import nothing but the
standard library (a test holds them to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mx_envs.tasks.cleanup import brace_group, normalize_math

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_TOKEN_RE = re.compile(r"([^\s$]+)")  # compiled here: see cleanup's note on first-use compiles
_SENTENCE_END_RE = re.compile(r"[.。]\s*$")
_FINAL_RES: tuple[re.Pattern[str], ...] = (
    re.compile(r"final answer[ \t]*(?:is|:|=)[ \t]*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:^|\n)[ \t]*\**answer\**[ \t]*[:=]\s*(.+)", re.IGNORECASE),
    re.compile(r"the answer is[ \t]*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"####\s*(.+)"),
)


@dataclass
class Extraction:
    """What a response states as its final answer.

    ``answers``: the candidates (all top-level boxes in order, or one phrase); ``source``: ``boxed``,
    ``phrase`` or ``none``; ``unclosed``: the last box never closes (the response has no answer).
    """

    answers: list[str] = field(default_factory=list)
    source: str = "none"
    unclosed: bool = False


def boxes(text: str) -> tuple[list[str], bool]:
    """Contents of the top-level boxes of ``text`` in order, and whether a box after them is unclosed.

    ``\\boxed 42`` (a space, then a token) counts as a box of ``42``. A box inside another box is
    part of the outer one.
    """
    found: list[str] = []
    unclosed = False
    pos = 0
    n = len(text)
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            break
        end = m.end()
        if end < n and text[end] == "{":
            close = brace_group(text, end)
            if close is None:
                unclosed = True
                break
            found.append(text[end + 1 : close - 1].strip())
            unclosed = False
            pos = close
            continue
        tok = _TOKEN_RE.match(text, end)
        if tok and m.group(0)[-1:].isspace():
            found.append(tok.group(1).strip())
            pos = tok.end()
        else:
            pos = end
    return found, unclosed


def last_boxed(text: str) -> str | None:
    """Content of the last box in ``text``; ``None`` when there is none or the last one never closes."""
    found, unclosed = boxes(text)
    if unclosed or not found:
        return None
    return found[-1]


def _clean_phrase(ans: str) -> str:
    ans = ans.strip().splitlines()[0] if ans.strip() else ""
    ans = ans.strip().strip("*").strip()
    found, unclosed = boxes(ans)
    if found and not unclosed:
        return found[-1]
    ans = _SENTENCE_END_RE.sub("", ans).strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    return ans


def extract_all(text: str) -> Extraction:
    """Every final-answer candidate of ``text`` (see the module docstring)."""
    if not text:
        return Extraction()
    found, unclosed = boxes(text)
    if unclosed:
        return Extraction(found, "boxed", unclosed=True)
    if found:
        return Extraction(found, "boxed")
    for pattern in _FINAL_RES:
        last = None
        for last in pattern.finditer(text):  # noqa: B007 - only the last match is wanted
            pass
        if last is not None:
            ans = _clean_phrase(last.group(1))
            if ans:
                return Extraction([ans], "phrase")
    return Extraction()


def extract_answer(text: str) -> str | None:
    """The final answer of ``text``: last box, else last "final answer"-style phrase, else ``None``.

    ``None`` too when the last box never closes.
    """
    ex = extract_all(text)
    if ex.unclosed or not ex.answers:
        return None
    return ex.answers[-1]


def vote_key(answer: str) -> str:
    """What two answers must share to count as one vote: the form the grader compares.

    :func:`~mx_envs.tasks.math_grader.grade_math` compares the surface normalisation of an answer
    (:func:`~mx_envs.tasks.cleanup.normalize_math`: delimiters, sizing, spacing commands, cosmetic
    wrappers and nested boxes dropped, runs of spaces made one) and de-duplicates boxes by it, so
    answers with one key get one verdict against any reference. Not complete: ``0.5`` and
    ``\\frac{1}{2}`` (sympy-equal), or ``x+1`` and ``x + 1``, count apart; merging spacing variants would not be
    sound, since the grader's exact path tells them apart where sympy cannot parse the answer (measured
    on Minerva's ``\\lambda_{\\text {red}} / \\sqrt{2}``).
    """
    return normalize_math(answer)
