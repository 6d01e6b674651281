"""Gymnasium spaces for LLM text: any Python ``str`` (code, LaTeX, unicode, the empty string).

:class:`gymnasium.spaces.Text` only admits characters from a fixed charset, which rejects real model
output (``\\boxed{}``, backticks, ``≤``, emoji...). :class:`LLMText` keeps ``Text``'s interface and
length bounds but admits every character. It subclasses ``Text`` so that gymnasium's vector utilities
(batching, concatenation, empty arrays) treat it like text. ``AsyncVectorEnv`` needs
``shared_memory=False`` for it (see below).
"""

from __future__ import annotations

import multiprocessing as mp
from types import ModuleType
from typing import Any

import numpy as np
from gymnasium.error import CustomSpaceError
from gymnasium.spaces import Text
from gymnasium.vector.utils.shared_memory import create_shared_memory

# Fragments `sample` draws from: ASCII, whitespace, LaTeX, code syntax and non-ASCII characters, so
# sampled actions exercise the same code paths (code extraction, JSON, grading) real LLM text does.
_SAMPLE_FRAGMENTS: tuple[str, ...] = (
    *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    *" \n\t",
    *"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    *"αβγπΣ∑∫≤≥≠√∞±×÷→é漢字ü🙂",
    "```",
    "```python\n",
    "\\boxed{",
    "\\frac{1}{2}",
    "$",
    "def ",
    "return ",
    "import ",
    "forward(",
    "\n    ",
)
_SAMPLE_MAX_CHARS = 256


class LLMText(Text):
    """A ``str`` of ``min_length`` to ``max_length`` characters (inclusive), any characters allowed.

    ``sample()`` draws from ``self.np_random``: a length uniform in ``[min_length,
    min(max_length, sample_max_length)]`` filled with characters and short code/LaTeX fragments (the
    result is cut to that length). ``sample(mask=(length, None))`` fixes the length.
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        sample_max_length: int = _SAMPLE_MAX_CHARS,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(max_length, min_length=min_length, seed=seed)
        if sample_max_length < 0:
            raise ValueError(f"sample_max_length must be >= 0, got {sample_max_length}")
        self.sample_max_length = int(sample_max_length)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if probability is not None or (mask is not None and mask[1] is not None):
            raise ValueError("LLMText.sample accepts only a length mask: mask=(length, None)")
        if mask is not None and mask[0] is not None:
            length = int(mask[0])
            if not self.min_length <= length <= self.max_length:
                raise ValueError(f"mask length {length} outside [{self.min_length}, {self.max_length}]")
        else:
            high = max(self.min_length, min(self.max_length, self.sample_max_length))
            length = int(self.np_random.integers(self.min_length, high + 1))
        parts: list[str] = []
        size = 0
        while size < length:
            frag = _SAMPLE_FRAGMENTS[int(self.np_random.integers(len(_SAMPLE_FRAGMENTS)))]
            parts.append(frag)
            size += len(frag)
        return "".join(parts)[:length]

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"LLMText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object, /) -> bool:
        return (
            isinstance(other, LLMText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )

    def __hash__(self) -> int:
        return hash((LLMText, self.min_length, self.max_length))


# --- AsyncVectorEnv shared memory ------------------------------------------------------------------
# gymnasium reads a shared-memory buffer once, at construction, and relies on the result being a live
# numpy view; text cannot be such a view (gymnasium's own Text shared memory returns a fixed tuple and
# never shows new observations), so LLMText refuses shared memory and AsyncVectorEnv explains to pass
# `vector_kwargs={"shared_memory": False}`.


@create_shared_memory.register(LLMText)
def _create_llmtext_shared_memory(space: LLMText, n: int = 1, ctx: ModuleType = mp) -> Any:
    raise CustomSpaceError(
        f"{space} holds arbitrary text, which cannot live in shared memory: "
        'use gym.make_vec(..., vectorization_mode="async", vector_kwargs={"shared_memory": False})'
    )
