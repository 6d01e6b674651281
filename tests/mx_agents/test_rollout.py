"""The rollout helper on the real env: scripted-LLM episodes (math and code), batching across envs,
transitions with group ids, design-once-execute-N groups."""

from __future__ import annotations

import pytest
from agents_doubles import CountingBackend

from mx_agents.design_groups import run_design_groups
from mx_agents.policies import FixedDesignPolicy, ScriptedPolicy, SharedPolicy, builtin_scripted_policy
from mx_agents.policies.fixed import fence
from mx_agents.rollout import GroupIds, RolloutStats, run_episodes
from mx_envs.envs.meta_env import MetaAgentXEnv
from mx_envs.mas.designs import load_design
from mx_envs.tasks.record import CodeTests, Task

MATH = [Task(id=f"m{i}", dataset="toy", split="test", kind="math", prompt=f"What is {i} + 2?", answer=str(i + 2))
        for i in range(4)]
CODE = Task(
    id="c0", dataset="toy", split="test", kind="code",
    prompt="Read two integers from stdin and print their sum.",
    tests=CodeTests(stdin_tests=[("1 2\n", "3\n"), ("10 -4\n", "6\n")]),
)
SUM_PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def wide_sandbox():
    """The MAS sandbox with room for 16 live scripts: the default pool holds 4 suspended scripts at
    once, and more envs than that in one batched rollout would wait on each other."""
    from mx_envs.mas.session import PRELOAD
    from mx_envs.sandbox import get_sandbox

    return get_sandbox("process", extra_preload=PRELOAD, pool_size=16)


def math_env(**kw) -> MetaAgentXEnv:
    return MetaAgentXEnv(tasks=MATH, sandbox=wide_sandbox(), **kw)


def solve(messages) -> str:
    """Scripted executor/designer for the toy math tasks: answers `What is i + 2?` correctly."""
    if "Designer" in messages[0]["content"]:
        return fence(load_design("vote"))
    text = messages[-1]["content"]
    for t in MATH:
        if t.prompt in text:
            return f"So the answer is \\boxed{{{t.answer}}}."
    return "\\boxed{0}"  # judge/aggregator turns without the problem text


def test_scripted_math_episode_correct_and_incorrect():
    env = math_env()
    right = ScriptedPolicy(design=fence(load_design("single")), default=solve)
    (rec,) = run_episodes([env], right, seeds=0, options={"task_id": "m3"}, progress=False)
    assert rec.done and not rec.error
    assert rec.correct is True and rec.reward == 1.0 and rec.termination_reason == "completed"
    assert rec.design_valid is True and "def forward" in rec.design and rec.task_id == "m3"
    assert [t.role for t in rec.turns] == ["designer", "executor"] and rec.turns[1].agent == "solver"
    # Every transition records the temperature its turn was sampled at (a scripted turn: 1).
    assert [t.metadata["temperature"] for t in rec.transitions(include_non_llm=True)] == [1.0, 1.0]
    wrong = ScriptedPolicy(design=fence(load_design("single")), default="\\boxed{999}")
    (rec2,) = run_episodes([env], wrong, options={"task_id": "m3"}, progress=False)
    assert rec2.correct is False and rec2.reward == 0.0 and rec2.termination_reason == "completed"
    env.close()


def test_scripted_code_episode_and_bad_design():
    env = MetaAgentXEnv(tasks=[CODE])
    good = ScriptedPolicy(design=fence(load_design("single")), default=SUM_PROGRAM)
    (rec,) = run_episodes([env], good, progress=False)
    assert rec.correct is True and rec.reward == 1.0
    bad = ScriptedPolicy(design="I will not write code.")
    (rec2,) = run_episodes([env], bad, progress=False)
    assert rec2.correct is False and rec2.termination_reason == "no_code" and rec2.design_valid is False
    assert len(rec2.turns) == 1
    env.close()


def test_builtin_scripted_policy_runs_math_and_code():
    recs = run_episodes([math_env, lambda: MetaAgentXEnv(tasks=[CODE])], builtin_scripted_policy(), seeds=0,
                        progress=True)
    assert [r.termination_reason for r in recs] == ["completed", "completed"]
    assert all(r.design_valid for r in recs)


def test_batching_across_envs_makes_fewer_larger_backend_calls():
    n = 4
    batched_b, seq_b = CountingBackend(solve), CountingBackend(solve)
    stats = RolloutStats()
    batched = run_episodes([math_env for _ in range(n)], SharedPolicy(batched_b, seed=0),
                           options=[{"task_id": t.id} for t in MATH], progress=False, stats=stats)
    sequential = run_episodes([math_env for _ in range(n)], SharedPolicy(seq_b, seed=0),
                              options=[{"task_id": t.id} for t in MATH], progress=False, batch=False)
    assert [r.reward for r in batched] == [r.reward for r in sequential] == [1.0] * n
    turns = sum(len(r.turns) for r in batched)
    assert sum(batched_b.calls) == sum(seq_b.calls) == turns
    assert seq_b.calls == [1] * turns
    assert len(batched_b.calls) == stats.rounds < turns and batched_b.calls[0] == n
    # Every vote episode: 1 design + 3 voters (+ possible aggregation), all envs in lock step.
    assert max(batched_b.calls) == n


def test_transitions_carry_group_ids_and_token_fields():
    backend = CountingBackend(solve)
    recs = run_episodes([math_env, math_env], SharedPolicy(backend), options=[{"task_id": "m1"}, {"task_id": "m2"}],
                        groups=[GroupIds("t-a", 0, 0), GroupIds("t-b", 5, 2)], progress=False)
    trs = [tr for r in recs for tr in r.transitions(policy_version=7)]
    assert len(trs) == sum(len(r.turns) for r in recs)
    for r in recs:
        for tr in r.transitions():
            assert (tr.task_uid, tr.design_id, tr.execution_id) == (r.groups.task_uid, r.groups.design_id,
                                                                    r.groups.execution_id)
            assert tr.reward == r.reward == 1.0 and tr.task_id == r.task_id and tr.episode_id == r.episode_id
            assert tr.response_ids and tr.prompt_ids and len(tr.logprobs) == len(tr.response_ids)
            assert tr.termination_reason == "completed"
    assert {tr.policy_version for tr in trs} == {7}
    assert trs[0].role == "designer" and trs[1].role == "executor" and trs[1].agent == recs[0].turns[1].agent != "designer"
    # Fixed designs and scripted replies carry no tokens: no transitions unless asked for.
    (fixed,) = run_episodes([math_env()], FixedDesignPolicy("single", ScriptedPolicy(default=solve)), progress=False)
    assert fixed.transitions() == [] and len(fixed.transitions(include_non_llm=True)) == 2


def test_design_groups_design_once_execute_n():
    backend = CountingBackend(solve)
    out = run_design_groups(math_env, SharedPolicy(backend, seed=1), ["m0", "m1"], n_designs=2, n_executions=3,
                            seed=0, progress=False)
    assert backend.calls[0] == 4  # the design round: T*M designs in one call
    assert len(out.records) == 12
    assert [(r.groups.task_uid, r.groups.design_id, r.groups.execution_id) for r in out.records[:4]] == [
        ("m0", 0, 0), ("m0", 0, 1), ("m0", 0, 2), ("m0", 1, 0)]
    for t in range(2):
        for m in range(2):
            execs = out.executions(t, m)
            assert {r.turns[0].text for r in execs} == {out.designs[t][m].text}
            assert all(r.turns[0].given and r.task_id == out.task_ids[t] for r in execs)
    trs = out.transitions(policy_version=1)
    designer = [tr for tr in trs if tr.role == "designer"]
    assert len(designer) == 4 and {(tr.task_uid, tr.design_id) for tr in designer} == {
        ("m0", 0), ("m0", 1), ("m1", 0), ("m1", 1)}
    assert all(tr.reward == 1.0 and tr.metadata["execution_rewards"] == [1.0] * 3 for tr in designer)
    executor = [tr for tr in trs if tr.role == "executor"]
    assert len({(tr.task_uid, tr.design_id, tr.execution_id) for tr in executor}) == 12
    # The learner's credit assignment accepts them as an M x N block.
    from mx_train import credit

    d_adv, e_adv = credit.assign_advantages(trs, execution_rewards=out.execution_rewards())
    assert d_adv.shape == (2, 2) and e_adv.shape == (2, 2, 3)


def test_env_errors_and_turn_cap_are_recorded_not_raised():
    class Boom(MetaAgentXEnv):
        """TEST DOUBLE: a real env whose step fails, to check the helper records the failure."""

        def step(self, action):
            raise RuntimeError("boom")

    recs = run_episodes([Boom(tasks=MATH), math_env()], ScriptedPolicy(design=fence(load_design("single")),
                                                                      default=solve), progress=False)
    assert "boom" in recs[0].error and recs[0].termination_reason == "rollout_error"
    assert recs[1].correct
    (cut,) = run_episodes([math_env()], ScriptedPolicy(design=fence(load_design("vote")), default=solve),
                          max_turns=2, progress=False)
    assert "max_turns" in cut.error and len(cut.turns) == 2
    with pytest.raises(ValueError, match="seeds"):
        run_episodes([math_env()], ScriptedPolicy(default="x"), seeds=[1, 2], progress=False)


def test_each_schedule_is_its_own_runner_and_run_episodes_picks_it():
    """run_lockstep / run_sequential / run_continuous play the same episodes to the same outcome;
    run_episodes(schedule=..., batch=...) is each of them, call for call."""
    from mx_agents.rollout import run_continuous, run_lockstep, run_sequential

    def play(runner, **kw):
        backend = CountingBackend(solve)
        stats = RolloutStats()
        recs = runner([math_env for _ in range(3)], SharedPolicy(backend, seed=0),
                      options=[{"task_id": t.id} for t in MATH[:3]], progress=False, stats=stats, run_id="r", **kw)
        return [(r.task_id, r.reward, r.termination_reason, len(r.turns)) for r in recs], backend.calls, stats

    lock, lock_calls, lock_stats = play(run_lockstep)
    seq, seq_calls, _ = play(run_sequential)
    cont, cont_calls, _ = play(run_continuous)
    assert lock == seq == cont and all(reward == 1.0 for _, reward, _, _ in lock)
    turns = sum(n for *_, n in lock)
    assert seq_calls == [1] * turns and max(lock_calls) == 3 and lock_stats.rounds == len(lock_calls)
    assert sum(cont_calls) == turns
    assert play(run_episodes)[:2] == (lock, lock_calls)
    assert play(run_episodes, batch=False)[:2] == (seq, seq_calls)
    assert play(run_episodes, schedule="continuous")[0] == cont
    with pytest.raises(ValueError, match="unknown rollout schedule"):
        run_episodes([], SharedPolicy(CountingBackend(solve)), schedule="eager")
