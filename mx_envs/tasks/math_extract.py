"""Find the final answer in a model's response.

Order: the *last* ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced; the literal last
occurrence, never a de-duplicated or majority one); else the last explicit "final answer" phrase
("The final answer is X", "Answer: X", GSM8K's "#### X"). No answer found -> ``None``.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_FINAL_RES: tuple[re.Pattern[str], ...] = (
    re.compile(r"final answer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:^|\n)\s*\**answer\**\s*[:=]\s*(.+)", re.IGNORECASE),
    re.compile(r"the answer is\s*:?\s*(.+)", re.IGNORECASE),
    re.compile(r"####\s*(.+)"),
)


def _balanced(text: str, open_idx: int) -> str | None:
    """Contents of the brace group opening at ``open_idx``; ``None`` when it never closes.

    ``\\{`` and ``\\}`` (escaped braces, as in set answers) are content, not grouping.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\boxed 5``) in ``text``."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        end = m.end()
        if end < len(text) and text[end] == "{":
            inner = _balanced(text, end)
            if inner is not None:
                return inner.strip()
            continue
        # "\boxed 42" form: the next whitespace-free token
        tok = re.match(r"([^\s$]+)", text[end:])
        if tok and m.group(0).endswith((" ", "\t")):
            return tok.group(1).strip()
    return None


def _clean_phrase(ans: str) -> str:
    ans = ans.strip().splitlines()[0] if ans.strip() else ""
    ans = ans.strip().strip("*").strip()
    inner = last_boxed(ans)
    if inner is not None:
        return inner
    ans = re.sub(r"[.。]\s*$", "", ans).strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    return ans


def extract_answer(text: str) -> str | None:
    """The final answer of ``text``: last box, else last "final answer"-style phrase, else ``None``."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in _FINAL_RES:
        matches = list(pattern.finditer(text))
        if matches:
            ans = _clean_phrase(matches[-1].group(1))
            if ans:
                return ans
    return None
