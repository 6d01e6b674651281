"""Co-evolution schedule phases and the role filter."""

from __future__ import annotations

import pytest

from mx_train.schedule import CoEvolutionSchedule, filter_active


def test_stagewise_executor_first_phases_of_k():
    s = CoEvolutionSchedule("stagewise", phase_steps=3, first="executor")
    phases = [s.phase(i) for i in range(10)]
    assert phases == ["executor"] * 3 + ["designer"] * 3 + ["executor"] * 3 + ["designer"]
    assert s.active_roles(0) == {"executor"} and s.active_roles(3) == {"designer"}
    assert [s.phase_index(i) for i in (0, 2, 3, 9)] == [0, 0, 1, 3]


def test_paper_default_is_k30_executor_first():
    s = CoEvolutionSchedule()
    assert s.phase(29) == "executor" and s.phase(30) == "designer" and s.phase(60) == "executor"


def test_designer_first_and_other_modes():
    s = CoEvolutionSchedule("stagewise", phase_steps=1, first="designer")
    assert [s.phase(i) for i in range(4)] == ["designer", "executor", "designer", "executor"]
    assert CoEvolutionSchedule("joint").active_roles(5) == {"designer", "executor"}
    assert CoEvolutionSchedule("joint").phase(5) == "joint"
    assert CoEvolutionSchedule("designer_only").active_roles(100) == {"designer"}
    assert CoEvolutionSchedule("executor_only").active_roles(100) == {"executor"}


def test_state_dict_round_trip():
    s = CoEvolutionSchedule("stagewise", phase_steps=7, first="designer")
    t = CoEvolutionSchedule()
    t.load_state_dict(s.state_dict())
    assert [t.phase(i) for i in range(20)] == [s.phase(i) for i in range(20)]
    assert CoEvolutionSchedule.from_dict(s.state_dict()).state_dict() == s.state_dict()


def test_errors():
    with pytest.raises(ValueError, match="known: stagewise, joint"):
        CoEvolutionSchedule("alternating")
    with pytest.raises(ValueError, match="phase_steps"):
        CoEvolutionSchedule(phase_steps=0)
    with pytest.raises(ValueError, match="first"):
        CoEvolutionSchedule(first="critic")
    with pytest.raises(ValueError, match="unknown schedule setting"):
        CoEvolutionSchedule.from_dict({"k": 3})
    with pytest.raises(ValueError, match="step"):
        CoEvolutionSchedule().phase(-1)


def test_filter_active():
    class T:
        def __init__(self, role):
            self.role = role

    ts = [T("designer"), T("executor"), T("executor")]
    assert [t.role for t in filter_active(ts, {"executor"})] == ["executor", "executor"]
    assert filter_active(ts, set()) == []
