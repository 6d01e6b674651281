"""The rollout's progress bar moves with every round and turn, not only when episodes end."""

from __future__ import annotations

import pytest

import mx_agents.rollout as rollout
from mx_agents.policies import builtin_scripted_policy
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.tasks import load_tasks

TWO_CALLS = "```python\ndef forward(task):\n    a = Agent('a')\n    a(task)\n    return a(task)\n```"


class RecordingBar:
    """Stands in for tqdm: records what the rollout shows, in order."""

    def __init__(self, total: int) -> None:
        self.total, self.events = total, []

    def update(self, n: int = 1) -> None:
        self.events.append(("update", n))

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.events.append(("postfix", values))

    def close(self) -> None:
        self.events.append(("close", None))


@pytest.mark.parametrize("schedule", ["lockstep", "continuous"])
def test_progress_shows_turns_before_episodes_finish(monkeypatch, schedule) -> None:
    bars: list[RecordingBar] = []
    monkeypatch.setattr(rollout, "_progress", lambda total, enabled: bars.append(RecordingBar(total)) or bars[-1])
    tasks = list(load_tasks("arithmetic", limit=2))
    records = rollout.run_episodes([lambda t=t: MetaAgentXEnv(tasks=[t]) for t in tasks], builtin_scripted_policy(),
                                   designs=[TWO_CALLS, TWO_CALLS], progress=True, schedule=schedule)
    assert all(r.done for r in records) and all(len(r.turns) == 3 for r in records)
    (bar,) = bars
    first_done = next(i for i, (kind, n) in enumerate(bar.events) if kind == "update" and n)
    shown = [v["turns"] for kind, v in bar.events[:first_done] if kind == "postfix" and "turns" in v]
    assert shown and max(shown) >= 2, bar.events  # turns were shown while both episodes still ran
    assert sum(n for kind, n in bar.events if kind == "update") == 2 and bar.events[-1][0] == "close"
