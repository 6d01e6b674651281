"""Designer-side text handling: extra prompt material the policy may add, and script extraction.

The env already puts the task, the MAS API reference and examples in the designer's messages; a
:class:`DesignerPrompt` adds configurable material on top (instructions, further library designs as
examples, a replacement system prompt) without re-stating what the env supplied.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mx_agents.backends.base import Message

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def library_design_source(name: str) -> str:
    """Source of the library design ``name`` (``single``, ``vote``, ...), as the designer would write it."""
    from mx_envs.mas.designs import load_design

    design = load_design(name)
    source = design if isinstance(design, str) else getattr(design, "source", None)
    if not isinstance(source, str):
        raise TypeError(f"load_design({name!r}) returned {type(design).__name__} without a source text")
    return source


def extract_script(text: str) -> str | None:
    """The design script in a designer's reply, or ``None``.

    The last fenced code block (``python``/``py`` or untagged) that parses and defines ``forward``;
    failing that, the last fenced Python block at all; failing that, the whole text when it parses and
    defines ``forward``. The env does its own extraction: this is the policy's view, used for
    reporting (``Action.script``) and for checks before spending an episode on a design.
    """
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    for body in reversed(blocks):
        if _defines_forward(body):
            return body.strip("\n")
    if blocks:
        return blocks[-1].strip("\n")
    if _defines_forward(text):
        return text.strip("\n")
    return None


def _defines_forward(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "forward" for n in tree.body)


@dataclass(frozen=True)
class DesignerPrompt:
    """Extra designer prompt material.

    ``system_prompt`` replaces the env's system message (or is inserted when there is none);
    ``examples`` names library designs whose source is appended to the last user message;
    ``instructions`` is appended after them. All empty: the env's messages go to the model unchanged.
    """

    system_prompt: str | None = None
    examples: Sequence[str] = field(default_factory=tuple)
    instructions: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.examples, str):
            raise TypeError("DesignerPrompt.examples is a sequence of design names, not one string")

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        out = [dict(m) for m in messages]
        if self.system_prompt is not None:
            if out and out[0]["role"] == "system":
                out[0]["content"] = self.system_prompt
            else:
                out.insert(0, {"role": "system", "content": self.system_prompt})
        extra: list[str] = []
        for name in self.examples:
            extra.append(f"Example design `{name}`:\n```python\n{library_design_source(name).strip()}\n```")
        if self.instructions:
            extra.append(self.instructions)
        if extra:
            users = [i for i, m in enumerate(out) if m["role"] == "user"]
            if users:
                last = out[users[-1]]
                last["content"] = last["content"].rstrip() + "\n\n" + "\n\n".join(extra)
            else:
                out.append({"role": "user", "content": "\n\n".join(extra)})
        return out
