"""No action makes ``env.step`` raise, a failed episode costs what an invalid design costs, and a
code design that answers from the prompt's examples earns nothing (issue 19, item 6).

Each hostile action below once made ``step`` raise (``"-" * 1000 + "1"``: RecursionError in
``compile``; LLM options nested 700 deep: RecursionError in the final ``deepcopy``), and the rollout
then recorded ``rollout_error`` with reward 0, cheaper than a syntax error's penalty.
"""

from __future__ import annotations

import dataclasses

import pytest
from env_tasks import ADD_PROGRAM, code_task, math_tasks

from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.mas.session import MASSession
from mx_envs.tasks.code_datasets import mbpp_task
from mx_envs.testing import ScriptedLLM, run_episode

PENALTY = 0.25
SINGLE = "```python\ndef forward(task):\n    return final_answer(Agent('solver')(task))\n```"


@pytest.fixture
def env():
    e = MetaAgentXEnv(tasks=math_tasks(), invalid_design_penalty=PENALTY)
    yield e
    e.close()


def _end(env: MetaAgentXEnv, action: str) -> tuple[float, dict]:
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(action)
    assert terminated and not truncated
    return reward, info


@pytest.mark.parametrize("design", [
    "```python\n" + "-" * 1000 + "1\n```",  # RecursionError in compile
    "```python\nx = " + "(" * 300 + ")" * 300 + "\ndef forward(task):\n    return 1\n```",  # parser nesting limit
    "```python\n" + "def forward(task):\n    return " + "[" * 5000 + "]" * 5000 + "\n```",
    "-" * 1000 + "1",  # unfenced: no script
    "\x00" * 10,
])
def test_hostile_design_text_ends_the_episode_with_the_invalid_design_penalty(env, design: str) -> None:
    reward, info = _end(env, design)
    assert info["termination_reason"] in ("syntax_error", "no_code") and not info["design_valid"]
    assert reward == pytest.approx(-PENALTY)


def test_over_long_action_ends_the_episode(env) -> None:
    reward, info = _end(env, "x" * (env.action_space.max_length + 1))
    assert info["termination_reason"] == "budget_exceeded" and "max_action_chars" in info["error"]
    assert reward == pytest.approx(-PENALTY)
    env.reset(seed=0)  # and mid-execution: the script is stopped
    _, _, terminated, _, _ = env.step(SINGLE)
    assert not terminated
    _, reward, terminated, _, info = env.step("y" * (env.action_space.max_length + 1))
    assert terminated and info["termination_reason"] == "budget_exceeded" and reward == pytest.approx(-PENALTY)


DEEP_OPTIONS = '''```python
def forward(task):
    import mx_envs.mas.lib as L
    o = {}
    for _ in range(700):
        o = {"x": o}
    t = L._transport()
    t.request({"type": "llm", "agent": "a", "messages": [{"role": "user", "content": "hi"}],
               "options": {"temperature": o}})
    return final_answer("1")
```'''


def test_deeply_nested_request_ends_the_episode(env) -> None:
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(DEEP_OPTIONS)
    if not terminated:  # a host that lets the request through must still end cleanly on the reply
        _, reward, terminated, _, info = env.step("hello")
    assert terminated and info["termination_reason"] != "completed"
    assert reward == pytest.approx(-PENALTY)


def test_a_trace_too_deep_to_copy_ends_the_episode(env) -> None:
    """Whatever got into the trace (here: options nested 5,000 deep, planted past every check), the
    final step's copy of it cannot make step raise: the episode ends without the trace."""
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(SINGLE)
    assert not terminated
    deep: dict = {}
    for _ in range(5000):
        deep = {"x": deep}
    env._trace.turns[0].options = {"stop": deep}
    _, reward, terminated, _, info = env.step("\\boxed{30}")
    assert terminated and info["termination_reason"] == "sandbox_error" and "RecursionError" in info["error"]
    assert reward == pytest.approx(-PENALTY) and info["trajectories"] == {}


def test_host_error_ends_the_episode(env, monkeypatch) -> None:
    def broken(self, *args, **kwargs):
        raise OSError("pipe broke")

    monkeypatch.setattr(MASSession, "start", broken)
    reward, info = _end(env, SINGLE)
    assert info["termination_reason"] == "sandbox_error" and "pipe broke" in info["error"]
    assert reward == pytest.approx(-PENALTY)
    monkeypatch.undo()
    env.reset(seed=0)  # the env still works
    _, _, terminated, _, _ = env.step(SINGLE)
    assert not terminated


def test_api_misuse_still_raises(env) -> None:
    """Calling step wrongly is the caller's bug, not an action: it raises as gymnasium expects."""
    from gymnasium.error import ResetNeeded

    with pytest.raises(ResetNeeded):
        env.step("x")
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(b"bytes")  # type: ignore[arg-type]


def test_rollout_error_costs_the_invalid_design_penalty() -> None:
    from mx_agents.policies import ScriptedPolicy
    from mx_agents.rollout import run_episodes

    class Boom(MetaAgentXEnv):
        """TEST DOUBLE: a real env whose step fails (no action of ours does that any more)."""

        def step(self, action):
            raise RuntimeError("boom")

    (rec,) = run_episodes([Boom(tasks=math_tasks(), invalid_design_penalty=PENALTY)],
                          ScriptedPolicy(design=SINGLE, default="\\boxed{1}"), progress=False)
    assert rec.termination_reason == "rollout_error" and rec.reward == pytest.approx(-PENALTY)
    (cut,) = run_episodes([MetaAgentXEnv(tasks=math_tasks(), invalid_design_penalty=PENALTY)],
                          ScriptedPolicy(design=SINGLE, default="\\boxed{1}"), max_turns=1, progress=False)
    assert "max_turns" in cut.error and cut.reward == pytest.approx(-PENALTY)


# A design with no LLM call: it reads the asserts in the task text and returns a lookup table.
LOOKUP_DESIGN = r'''```python
import re

def forward(task):
    table = [m.groups() for m in re.finditer(r"assert\s+(\w+)\((.*)\)\s*==\s*(.+)", task)]
    if not table:
        return final_answer("def f(*args):\n    return None\n", kind="code")
    rows = "".join(f"    if list(args) == list(({a},)):\n        return {r}\n" for _, a, r in table)
    return final_answer(f"def {table[0][0]}(*args):\n{rows}    return None\n", kind="code")
```'''

MBPP_ROW = {"task_id": 9001, "text": "Write a function to count the vowels (a, e, i, o, u in either case) in a string.",
            "code": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
            "test_list": ["assert count_vowels('hello') == 2", "assert count_vowels('sky') == 0",
                          "assert count_vowels('AEIOU x') == 5"], "test_setup_code": "", "challenge_test_list": []}


@pytest.mark.parametrize("shaping", [{}, {"code_pass_fraction": True}])
def test_lookup_table_design_earns_nothing_on_mbpp(shaping: dict) -> None:
    task = mbpp_task(MBPP_ROW, 0, "mbpp", "test")
    old_prompt = task.prompt.split("\n")[0] + "\nYour code should pass these tests:\n" + "\n".join(MBPP_ROW["test_list"])
    env = MetaAgentXEnv(tasks=[task], **shaping)
    try:
        reward, info, _ = run_episode(env, LOOKUP_DESIGN, ScriptedLLM(default="unused"))
        assert info["llm_calls"] == 0 and info["termination_reason"] == "completed"
        assert reward == 0.0 and not info["correct"] and info["grade_details"]["passed"] == 1  # the shown assert
        # control: under the old prompt (all three asserts shown) the same design passes every test,
        # and the reward still pays nothing, because every test it passes was shown
        env.tasks[0] = dataclasses.replace(task, prompt=old_prompt,
                                           tests=dataclasses.replace(task.tests, shown_text=old_prompt))
        reward, info, _ = run_episode(env, LOOKUP_DESIGN, ScriptedLLM(default="unused"))
        assert info["grade_details"]["pass_all"] and reward == 0.0 and not info["correct"]
    finally:
        env.close()


def test_solving_still_pays(code_env) -> None:
    design = "```python\ndef forward(task):\n    return final_answer(Agent('coder')(task), kind='code')\n```"
    reward, info, _ = run_episode(code_env, design, ScriptedLLM(default=f"```python\n{ADD_PROGRAM}```"))
    assert reward == 1.0 and info["correct"]
    assert code_task().tests.total == 3
