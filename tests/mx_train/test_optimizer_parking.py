"""Phase switches with the optimizer parked on disk never hold two phases' AdamW moments at once."""

from __future__ import annotations

import copy
import weakref

from mx_train.learner import Learner
from tests.mx_train.test_learner import _role_batch


def test_the_leaving_phase_is_freed_before_the_arriving_one_is_read_back(tiny, monkeypatch):
    """At a switch the leaving phase's moments go to disk and must be released before the arriving
    phase's file is loaded: holding both made the update phase the demo's RSS peak (+8 bytes per
    trained parameter, 1.08 GB for SmolLM2-135M; issue 20)."""
    from mx_train.learner.optim import _Spilled

    model, _ = tiny
    learner = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": "disk"})
    learner.update(_role_batch("executor", 4, 0), active_roles={"executor"})
    learner.update(_role_batch("designer", 4, 1), active_roles={"designer"})  # executor parked
    designer_moments = [weakref.ref(v) for s in learner.opt.optimizer.state.values() for v in s.values()
                        if hasattr(v, "dim") and v.dim() > 0]
    assert designer_moments
    alive_at_load: list[int] = []
    load = _Spilled.load

    def checked_load(self, params):
        alive_at_load.append(sum(r() is not None for r in designer_moments))
        return load(self, params)

    monkeypatch.setattr(_Spilled, "load", checked_load)
    learner.update(_role_batch("executor", 4, 2), active_roles={"executor"})  # designer out, executor in
    assert alive_at_load == [0], f"{alive_at_load} designer moment tensors still alive when the executor's loaded"
    assert isinstance(learner.opt.parked["designer"], _Spilled)
