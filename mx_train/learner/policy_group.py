"""Which learner trains which role (shared policy: one learner; split policy: one per role)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mx_train.learner.collation import SequenceLike


class PolicyGroup:
    """Which learner trains which role.

    Shared policy: one learner for both roles (``PolicyGroup.shared(learner)``); its update sees the
    active roles' transitions together. Split policy: a learner per role
    (``PolicyGroup({"designer": l1, "executor": l2})``); each updates on its own role's transitions,
    and a learner none of whose roles is active is not stepped at all.
    """

    def __init__(self, learners: Mapping[str, Any]) -> None:
        if not learners:
            raise ValueError("a PolicyGroup needs at least one role -> learner")
        self.by_role = dict(learners)

    @classmethod
    def shared(cls, learner: Any, roles: Sequence[str] = ("designer", "executor")) -> PolicyGroup:
        return cls(dict.fromkeys(roles, learner))

    @property
    def is_shared(self) -> bool:
        return len({id(v) for v in self.by_role.values()}) == 1

    def learners(self) -> dict[str, Any]:
        """Distinct learners by name (role name for split policies, the learner's name if shared)."""
        if self.is_shared:
            only = next(iter(self.by_role.values()))
            return {only.name: only}
        return dict(self.by_role)

    def versions(self) -> dict[str, int]:
        """Role -> the weight version (optimizer steps) of the learner that trains it."""
        return {role: int(learner.version) for role, learner in self.by_role.items()}

    def _active_learners(self, active_roles: Iterable[str] | None) -> Iterator[tuple[Any, set[str]]]:
        """Each distinct learner with an active role, and its active roles (``None``: every role)."""
        active = set(self.by_role) if active_roles is None else set(active_roles)
        done: set[int] = set()
        for learner in self.by_role.values():
            if id(learner) in done:
                continue
            done.add(id(learner))
            roles = {r for r, lr in self.by_role.items() if lr is learner} & active
            if roles:
                yield learner, roles

    def prepare_phase(self, active_roles: Iterable[str] | None = None) -> None:
        """Start each learner's optimizer-state switch to the phase :meth:`update` with
        ``active_roles`` will select (``Learner.prepare_phase``), in the background."""
        for learner, roles in self._active_learners(active_roles):
            prepare = getattr(learner, "prepare_phase", None)
            if prepare is not None:
                prepare(roles)

    def update(
        self, transitions: Sequence[SequenceLike], active_roles: Iterable[str] | None = None
    ) -> dict[str, float]:
        """Update every learner that has an active role; metrics prefixed ``<learner>/``."""
        if unknown := {t.role for t in transitions} - set(self.by_role):
            raise ValueError(f"transitions for roles {sorted(unknown)} that no learner trains")
        metrics: dict[str, float] = {}
        for learner, roles in self._active_learners(active_roles):
            key = learner.name if self.is_shared else next(r for r, lr in self.by_role.items() if lr is learner)
            for k, v in learner.update(transitions, active_roles=roles).items():
                metrics[f"{key}/{k}"] = v
        return metrics
