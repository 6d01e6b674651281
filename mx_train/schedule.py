"""Co-evolution schedule: which role(s) the learner trains at each step.

Modes:

* ``stagewise``: phases of ``phase_steps`` (K) steps that alternate between the two roles, starting
  with ``first`` (the paper: executor first, K=30; switching every step collapses training);
* ``joint``: both roles every step;
* ``designer_only`` / ``executor_only``: one role throughout.

The inactive role is frozen for real: :func:`filter_active` (and ``Learner.update(...,
active_roles=...)``) leave its transitions out of the loss and of the loss normaliser, so they
contribute exactly zero gradient; it is not a smaller learning rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

ROLES = ("designer", "executor")
MODES = ("stagewise", "joint", "designer_only", "executor_only")

T = TypeVar("T")


class CoEvolutionSchedule:
    """``active_roles(step)`` / ``phase(step)`` for a 0-based training step."""

    def __init__(self, mode: str = "stagewise", phase_steps: int = 30, first: str = "executor") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown co-evolution mode {mode!r}; known: {', '.join(MODES)}")
        if first not in ROLES:
            raise ValueError(f"first must be one of {ROLES}, got {first!r}")
        if int(phase_steps) < 1:
            raise ValueError(f"phase_steps must be >= 1, got {phase_steps}")
        self.mode = mode
        self.phase_steps = int(phase_steps)
        self.first = first

    @property
    def second(self) -> str:
        return ROLES[1 - ROLES.index(self.first)]

    def phase(self, step: int) -> str:
        """``"executor"``, ``"designer"`` or ``"joint"``: the name logged for this step."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.mode == "joint":
            return "joint"
        if self.mode == "designer_only":
            return "designer"
        if self.mode == "executor_only":
            return "executor"
        return self.first if (step // self.phase_steps) % 2 == 0 else self.second

    def phase_index(self, step: int) -> int:
        """Index of the stagewise phase containing ``step`` (0 for the other modes)."""
        return step // self.phase_steps if self.mode == "stagewise" else 0

    def active_roles(self, step: int) -> set[str]:
        p = self.phase(step)
        return set(ROLES) if p == "joint" else {p}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "phase_steps": self.phase_steps, "first": self.first}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore; a resumed run keeps its original schedule (the phase follows from the step)."""
        self.__init__(state["mode"], state["phase_steps"], state["first"])  # type: ignore[misc]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CoEvolutionSchedule:
        data = dict(data or {})
        if unknown := sorted(set(data) - {"mode", "phase_steps", "first"}):
            raise ValueError(f"unknown schedule setting(s) {unknown}; known: ['first', 'mode', 'phase_steps']")
        return cls(**data)

    def __repr__(self) -> str:
        return f"CoEvolutionSchedule(mode={self.mode!r}, phase_steps={self.phase_steps}, first={self.first!r})"


def filter_active(transitions: Iterable[T], active_roles: Iterable[str]) -> list[T]:
    """The transitions whose ``role`` is active (the others are frozen for this step)."""
    active = set(active_roles)
    return [t for t in transitions if getattr(t, "role") in active]  # noqa: B009
