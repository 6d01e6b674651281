"""A scripted two-level env (test double) with the MetaAgentX observation layout.

Designer turn: any non-empty design "runs" and hands the task to one sub-agent ``solver``; an empty
design ends the episode as ``no_code``. Executor turn: the reward is the fraction of the reply's
characters that are in ``TARGET`` (an easy, dense signal a tiny random model can learn), and the
episode counts as correct when that fraction is at least one half.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from mx_envs.envs.observation import (
    DESIGNER,
    EXECUTOR,
    make_observation,
    observation_space,
    terminal_observation,
)
from mx_envs.envs.spaces import LLMText

TARGET = set("aeiou")


class ScriptedTwoLevelEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, n_tasks: int = 8) -> None:
        self.observation_space = observation_space(100_000)
        self.action_space = LLMText(100_000)
        self.tasks = [type("T", (), {"id": f"task{i}", "prompt": f"say vowels {i}"})() for i in range(n_tasks)]
        self._task: Any = None
        self._design: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        tid = (options or {}).get("task_id")
        self._task = next(t for t in self.tasks if t.id == tid) if tid else self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._design = None
        obs = make_observation(DESIGNER, "designer", [{"role": "user", "content": self._task.prompt}])
        return obs, {"task_id": self._task.id}

    def step(self, action: str):
        if self._design is None:
            self._design = action
            if not action.strip():
                return terminal_observation(), 0.0, True, False, self._info(0.0, "no_code", False)
            obs = make_observation(EXECUTOR, "solver", [{"role": "user", "content": self._task.prompt}])
            return obs, 0.0, False, False, {}
        frac = sum(c in TARGET for c in action) / max(len(action), 1)
        return terminal_observation(), float(frac), True, False, self._info(frac, "completed", True)

    def _info(self, reward: float, reason: str, valid: bool) -> dict[str, Any]:
        return {"task_id": self._task.id, "correct": reward >= 0.5, "termination_reason": reason,
                "design_valid": valid, "design": self._design, "answer": None}
