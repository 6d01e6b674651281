"""Get a program out of a model response (markdown code blocks or bare code)."""

from __future__ import annotations

import re

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_NON_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "json", "yaml", "c", "cpp", "c++", "java", "js",
               "javascript", "rust", "go", "output", "plaintext", "input"}


def extract_code(text: str) -> str:
    """The candidate program in ``text``.

    The last complete fenced block tagged ``python``/``py``/``python3`` or untagged (as
    LiveCodeBench takes the last block); blocks tagged with another language are skipped. Text
    without any fence is taken as code. An unterminated final fence yields what follows it.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    usable = [body for lang, body in blocks if lang not in _NON_PYTHON]
    if usable:
        return usable[-1].rstrip() + "\n"
    if "```" not in text:
        return text
    tail = text.rsplit("```", 1)
    if not blocks and len(tail) == 2:  # unterminated: "```python\n<code>" then the text ended
        head, body = tail[1].split("\n", 1) if "\n" in tail[1] else ("", tail[1])
        if head.strip().lower() in ("", "python", "py", "python3"):
            return body
    return ""
