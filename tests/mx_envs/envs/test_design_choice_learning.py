"""SB3 PPO learns which design suits which kind of task on DesignChoice (real designs, real sandbox).

The executor is a scripted test double whose chance of answering correctly depends on the design it
plays in (recognised from its agent's system prompt) and on the task family: "single" is good at sum
questions, "tool_solver" at product word problems, a one-agent "guesser" script is mediocre at both
(one LLM call per design keeps the test fast). PPO sees only
a hashing embedding of the task text; on held-out tasks its chosen design must beat a uniform choice.
"""

from __future__ import annotations

import numpy as np
import pytest

from mx_envs.envs.embedding import HashingEmbedder
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.tasks.record import Task
from mx_envs.testing import OracleLLM
from mx_envs.wrappers import DesignChoice

GUESSER = (
    "```python\ndef forward(task):\n"
    "    return final_answer(Agent('guesser', system='Answer at once, no working.')(task))\n```"
)
DESIGNS = ["single", "tool_solver", GUESSER]
LABELS = ["single", "tool_solver", "guesser"]
# P(correct) by (design, family); the best design differs per family, uniform averages 0.5.
ACCURACY = {
    ("single", "sum"): 0.9, ("single", "product"): 0.1,
    ("tool_solver", "sum"): 0.1, ("tool_solver", "product"): 0.9,
    ("guesser", "sum"): 0.5, ("guesser", "product"): 0.5,
}
BEST = {"sum": "single", "product": "tool_solver"}


def family_tasks(numbers: range, split: str) -> list[Task]:
    tasks = []
    for n in numbers:
        a, b = n % 17 + 2, n % 13 + 3
        tasks.append(Task(f"sum-{split}-{n}", "toy", split, "math", f"Compute the sum of {a} and {b}.",
                          str(a + b), metadata={"family": "sum"}))
        tasks.append(Task(f"prod-{split}-{n}", "toy", split, "math",
                          f"A crate holds {a} rows of {b} apples each. How many apples are in the crate?",
                          str(a * b), metadata={"family": "product"}))
    return tasks


def design_of(messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "uses Python" in system:
        return "tool_solver"
    if "Answer at once" in system:
        return "guesser"
    if "expert problem solver" in system:
        return "single"
    raise AssertionError(f"unexpected agent: {system[:80]!r}")


class DesignSensitiveExecutor:
    """TEST DOUBLE of an executor: correct with probability ACCURACY[(design, family)] (seeded RNG)."""

    def __init__(self, tasks: list[Task], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.oracle = OracleLLM(tasks, policy=self._policy)

    def _policy(self, agent, messages, task) -> bool:
        design = design_of(messages)
        return bool(self.rng.random() < ACCURACY[(design, task.metadata["family"])])

    def __call__(self, messages):
        return self.oracle(messages)


@pytest.mark.slow
def test_ppo_picks_better_designs_than_uniform_on_held_out_tasks() -> None:
    from stable_baselines3 import PPO

    train, held_out = family_tasks(range(0, 40), "train"), family_tasks(range(100, 115), "test")
    executor = DesignSensitiveExecutor(train + held_out, seed=0)
    env = DesignChoice(MetaAgentXEnv(tasks=train), DESIGNS, executor, embedder=HashingEmbedder(64))
    try:
        model = PPO(
            "MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=8, learning_rate=3e-3, gamma=0.0,
            ent_coef=0.0, policy_kwargs={"net_arch": [32]}, seed=0, device="cpu", verbose=0,
        )
        # 4 updates; in a numpy simulation of this bandit 192 steps already sufficed for 10/10 seeds.
        model.learn(total_timesteps=256)

        eval_env = DesignChoice(MetaAgentXEnv(tasks=held_out), DESIGNS, executor, embedder=HashingEmbedder(64))
        chosen, uniform_acc, picked_acc = [], [], []
        for task in held_out:
            obs, _ = eval_env.reset(options={"task_id": task.id})
            action, _ = model.predict(obs, deterministic=True)
            design = LABELS[int(action)]
            chosen.append(design == BEST[task.metadata["family"]])
            picked_acc.append(ACCURACY[(design, task.metadata["family"])])
            uniform_acc.append(np.mean([ACCURACY[(d, task.metadata["family"])] for d in LABELS]))
        # Measured, not only expected: run the chosen designs on the held-out tasks.
        wins = 0
        for task in held_out:
            obs, _ = eval_env.reset(options={"task_id": task.id})
            action, _ = model.predict(obs, deterministic=True)
            _, reward, _, _, _ = eval_env.step(action)
            wins += reward
        eval_env.close()
    finally:
        env.close()
    assert np.mean(chosen) >= 0.9, f"best design chosen on {np.mean(chosen):.0%} of held-out tasks"
    assert np.mean(picked_acc) >= np.mean(uniform_acc) + 0.3
    assert wins / len(held_out) >= 0.7  # uniform choice expects 0.5
