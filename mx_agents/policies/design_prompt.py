"""Designer-side text handling: extra prompt material the policy may add, and script extraction.

The env already puts the task, the MAS API reference and examples in the designer's messages; a
:class:`DesignerPrompt` adds configurable material on top (instructions, further library designs as
examples, a replacement system prompt) without re-stating what the env supplied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mx_agents.backends.base import Message


def library_design_source(name: str) -> str:
    """Source of the library design ``name`` (``single``, ``vote``, ...), as the designer would write it."""
    from mx_envs.mas.designs import load_design

    design = load_design(name)
    source = design if isinstance(design, str) else getattr(design, "source", None)
    if not isinstance(source, str):
        raise TypeError(f"load_design({name!r}) returned {type(design).__name__} without a source text")
    return source


def extract_script(text: str) -> str | None:
    """The design script in a designer's reply, or ``None``: exactly what the env will run.

    Delegates to :func:`mx_envs.mas.script.extract_script` so the policy's view (``Action.script``)
    and the env's never disagree.
    """
    from mx_envs.mas.script import extract_script as env_extract_script

    return env_extract_script(text)


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
