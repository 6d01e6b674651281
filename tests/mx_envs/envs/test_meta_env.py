"""MetaAgentXEnv end to end: real sandbox, real graders, scripted LLM test doubles."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
from env_tasks import PARTIAL_PROGRAM, code_task, math_tasks
from gymnasium.error import ResetNeeded

from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.envs.observation import DESIGNER, EXECUTOR, decode_messages
from mx_envs.mas.designs import DESIGN_NAMES, load_design
from mx_envs.mas.protocol import TerminationReason
from mx_envs.sandbox.api import RunResult, Verdict
from mx_envs.testing import OracleLLM, ScriptedLLM, run_episode

TIMING_WORDS = ("time", "wall", "elapsed", "duration", "_s")


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


@pytest.mark.parametrize("design", DESIGN_NAMES)
@pytest.mark.parametrize("correct", [True, False])
def test_math_episode_through_every_library_design(math_env, design: str, correct: bool) -> None:
    llm = OracleLLM(math_env.tasks, policy=correct)
    reward, info, steps = run_episode(math_env, load_design(design), llm, options={"task_id": "m2"})
    assert info["termination_reason"] == "completed", info["error"]
    assert info["correct"] is correct and reward == (1.0 if correct else 0.0)
    assert info["task_id"] == "m2" and info["design_valid"] and info["designer_outcome"]["design_valid"]
    assert "valid_design" not in info and "valid_design" not in info["designer_outcome"]  # one name
    assert info["answer"] is not None and ("34" in info["answer"]) is correct
    assert steps == 1 + info["llm_calls"] == 1 + len(math_env.turns)
    assert info["design"] is not None and "def forward" in info["design"]
    assert set(info["trajectories"]) == set(math_env.trajectories)
    assert all(t.reply is not None for t in math_env.turns)
    assert info["designer_outcome"]["reward"] == reward
    assert info["executor_outcome"]["turns"] == info["llm_calls"]


@pytest.mark.parametrize("design", DESIGN_NAMES)
def test_code_episode_through_every_library_design(code_env, design: str) -> None:
    good, _, _ = run_episode(code_env, load_design(design), OracleLLM(code_env.tasks, policy=True))
    info = code_env.outcome
    assert info is not None and info["termination_reason"] == "completed", info["error"]
    assert good == 1.0 and info["correct"] and info["score"] == 1.0
    bad, info, _ = run_episode(code_env, load_design(design), OracleLLM(code_env.tasks, policy=False))
    assert bad == 0.0 and not info["correct"] and info["termination_reason"] == "completed"


def test_code_pass_fraction_reward() -> None:
    design = "```python\ndef forward(task):\n    return Agent('coder')(task)\n```"
    llm = ScriptedLLM(default=f"```python\n{PARTIAL_PROGRAM}```")
    strict = MetaAgentXEnv(tasks=[code_task()])
    frac = MetaAgentXEnv(tasks=[code_task()], code_pass_fraction=True)
    try:
        r_strict, info, _ = run_episode(strict, design, llm)
        # 2 of 3 tests pass; one constant output passes 1 of them (the outputs 3, 6, 0 differ), so
        # the program earns (2 - 1) / (3 - 1) of the reward range, not 2/3.
        assert r_strict == 0.0 and not info["correct"] and info["score"] == pytest.approx(1 / 2)
        assert info["grade_details"]["raw_fraction"] == pytest.approx(2 / 3)
        r_frac, info, _ = run_episode(frac, design, llm)
        assert r_frac == pytest.approx(1 / 2)
    finally:
        strict.close()
        frac.close()


def test_observations_follow_the_documented_layout(math_env) -> None:
    obs, info = math_env.reset(options={"index": 1})
    assert math_env.observation_space.contains(obs)
    assert int(obs["actor"]) == DESIGNER and obs["agent"] == "designer"
    msgs = decode_messages(obs)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "forward(task)" in msgs[0]["content"] and "MAS" in msgs[0]["content"]
    assert math_env.tasks[1].prompt in msgs[1]["content"]
    assert info == {"task_id": "m1", "dataset": "toy-math", "kind": "math"}
    design = "```python\ndef forward(task):\n    return Agent('solver', system='Be brief.')(task, temperature=0.5)\n```"
    obs, reward, term, trunc, info = math_env.step(design)
    assert not term and not trunc and reward == 0.0
    assert int(obs["actor"]) == EXECUTOR and obs["agent"] == "solver"
    assert decode_messages(obs) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": math_env.tasks[1].prompt}]
    assert json.loads(obs["options"]) == {"temperature": 0.5}
    assert info["agent"] == "solver" and info["call_index"] == 0
    assert math_env.phase == "execute" and math_env.actor == "executor"
    obs, reward, term, trunc, info = math_env.step("\\boxed{32}")
    assert term and reward == 1.0 and obs["agent"] == "" and decode_messages(obs) == []
    traj = math_env.trajectories["solver"]
    assert traj.num_turns == 1 and traj.turns[0].reply == "\\boxed{32}"
    assert info["trajectories"]["solver"]["turns"][0]["reply"] == "\\boxed{32}"


def test_info_is_deterministic_and_timings_are_separate(math_env) -> None:
    llm = OracleLLM(math_env.tasks)
    _, info1, _ = run_episode(math_env, load_design("vote"), llm, seed=3)
    timings = dict(math_env.timings)
    _, info2, _ = run_episode(math_env, load_design("vote"), llm, seed=3)
    assert info1 == info2
    assert not [k for k in _keys(info1) if any(w in str(k).lower() for w in ("wall", "elapsed", "duration"))]
    assert timings["episode_s"] > 0 and timings["script_s"] > 0
    assert set(timings) >= {"reset_s", "script_s", "grade_s", "episode_s"}


def test_seeding_and_task_options(math_env) -> None:
    ids = [math_env.reset(seed=s)[1]["task_id"] for s in range(12)]
    assert ids == [math_env.reset(seed=s)[1]["task_id"] for s in range(12)]
    assert len(set(ids)) > 1
    assert math_env.reset(options={"task_id": "m3"})[1]["task_id"] == "m3"
    assert math_env.reset(options={"index": -1})[1]["task_id"] == "m3"
    extra = copy.deepcopy(math_tasks()[0])
    extra.id = "outside"
    assert math_env.reset(options={"task": extra})[1]["task_id"] == "outside"
    with pytest.raises(KeyError, match="unknown task_id"):
        math_env.reset(options={"task_id": "nope"})
    with pytest.raises(IndexError):
        math_env.reset(options={"index": 99})
    with pytest.raises(ValueError, match="unknown reset options"):
        math_env.reset(options={"taskid": "m1"})
    with pytest.raises(ValueError, match="at most one"):
        math_env.reset(options={"task_id": "m1", "index": 0})


def test_step_errors_follow_gymnasium_conventions(math_env) -> None:
    with pytest.raises(ResetNeeded):
        math_env.step("x")
    math_env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        math_env.step(123)  # type: ignore[arg-type]
    obs, reward, term, trunc, info = math_env.step("no code here")
    assert term and info["termination_reason"] == "no_code"
    with pytest.raises(ResetNeeded, match="episode has ended"):
        math_env.step("again")
    math_env.close()
    math_env.close()  # idempotent
    with pytest.raises(gym.error.ClosedEnvironmentError):
        math_env.reset()


def test_random_actions_end_in_a_clean_failed_design(math_env) -> None:
    math_env.action_space.seed(0)
    for seed in range(20):
        math_env.reset(seed=seed)
        obs, reward, term, trunc, info = math_env.step(math_env.action_space.sample())
        assert term and not trunc and reward == 0.0
        assert info["termination_reason"] in {"no_code", "syntax_error", "missing_entry"}
        assert not info["design_valid"] and info["error"]
        assert math_env.observation_space.contains(obs)


class BrokenSandbox:
    """TEST DOUBLE of a sandbox whose every start/run fails (to provoke sandbox_error)."""

    name = "broken"

    def start(self, source, limits=None, files=None):
        raise OSError("sandbox backend is down")

    def run(self, source, stdin="", limits=None, files=None):
        return RunResult(Verdict.SANDBOX_ERROR, None, message="down")

    def close(self) -> None:
        pass


FAILURES = {
    "no_code": ("I would use a few agents here.", {}),
    "syntax_error": ("```python\ndef forward(task):\n    return (\n```", {}),
    "missing_entry": ("```python\ndef solve(task):\n    return 1\n```", {}),
    "exception": ("```python\ndef forward(task):\n    raise ValueError('boom')\n```", {}),
    "budget_exceeded": (load_design("vote"), {"budgets": {"max_llm_calls": 2}}),
    "timeout": ("```python\ndef forward(task):\n    while True:\n        pass\n```", {"budgets": {"wall_s": 0.5}}),
    "sandbox_error": (load_design("single"), {"sandbox": BrokenSandbox()}),
    "protocol_violation": ("```python\nfrom mx_envs.sandbox import channel\n\ndef forward(task):\n"
                           "    channel.send({'type': 'done', 'answer': '42'})\n    return '42'\n```", {}),
}


@pytest.mark.parametrize("reason", sorted(FAILURES))
def test_every_failure_termination_reason(reason: str) -> None:
    design, kwargs = FAILURES[reason]
    env = MetaAgentXEnv(tasks=math_tasks(), invalid_design_penalty=0.25, **kwargs)
    try:
        reward, info, _ = run_episode(env, design, OracleLLM(env.tasks), seed=0)
    finally:
        env.close()
    assert info["termination_reason"] == reason, info["error"]
    assert reward == -0.25 and not info["correct"] and not info["design_valid"]
    assert info["reward_terms"] == {"outcome": 0.0, "invalid_design_penalty": -0.25}
    assert info["answer"] is None and info["error"]
    if reason == "exception":
        assert "boom" in info["error"]


def test_oversized_observation_ends_with_budget_exceeded() -> None:
    env = MetaAgentXEnv(tasks=math_tasks(), max_observation_chars=80)
    try:
        _, info, steps = run_episode(env, load_design("single"), OracleLLM(env.tasks))
    finally:
        env.close()
    assert steps == 1 and info["termination_reason"] == "budget_exceeded"
    assert "max_observation_chars" in info["error"]


def test_reset_or_close_mid_episode_truncates_the_script(math_env) -> None:
    math_env.reset(seed=0)
    math_env.step(load_design("single"))
    session = math_env.session
    math_env.reset(seed=1)
    assert session.finished is not None and session.finished.reason is TerminationReason.TRUNCATED
    math_env.step(load_design("single"))
    assert math_env.turns[-1].reply is None  # pending turn, recorded
    math_env.close()
    assert session.finished.reason is TerminationReason.TRUNCATED


def test_llm_call_penalty_and_reward_validation() -> None:
    env = MetaAgentXEnv(tasks=math_tasks(), llm_call_penalty=0.01)
    try:
        reward, info, _ = run_episode(env, load_design("vote"), OracleLLM(env.tasks), seed=0)
        assert reward == pytest.approx(1.0 - 0.01 * info["llm_calls"])
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown reward settings"):
        MetaAgentXEnv(tasks=math_tasks(), reward={"bonus": 1})
    with pytest.raises(ValueError, match="unknown budgets"):
        MetaAgentXEnv(tasks=math_tasks(), budgets={"max_calls": 1})
    with pytest.raises(ValueError, match="no tasks"):
        MetaAgentXEnv(tasks=[])
    with pytest.raises(ValueError, match="render_mode"):
        MetaAgentXEnv(tasks=math_tasks(), render_mode="human")


def test_ansi_render(math_env) -> None:
    env = MetaAgentXEnv(tasks=math_tasks(), render_mode="ansi")
    try:
        env.reset(seed=0)
        text = env.render()
        assert text.startswith("[designer: designer]") and "--- user ---" in text
    finally:
        env.close()
    assert math_env.render() is None


def test_observation_arrays_are_fresh(math_env) -> None:
    o1, _ = math_env.reset(seed=0)
    o2, _ = math_env.reset(seed=0)
    assert o1 == o2 and o1 is not o2
    assert isinstance(o1["actor"], np.integer)
