"""The library designs: complete MAS scripts, also the fixed baseline designs (``design:NAME``)."""

from __future__ import annotations

from pathlib import Path

DESIGN_NAMES: tuple[str, ...] = ("single", "vote", "reflection", "debate", "ensemble_judge", "tool_solver")
_DIR = Path(__file__).resolve().parent


def load_design(name: str) -> str:
    """Source of the design ``name`` (``"vote"`` or ``"design:vote"``)."""
    key = name.removeprefix("design:") if isinstance(name, str) else name
    if key not in DESIGN_NAMES:
        raise ValueError(f"unknown design {name!r}; known designs: {', '.join(DESIGN_NAMES)}")
    return (_DIR / f"{key}.py").read_text(encoding="utf-8")
