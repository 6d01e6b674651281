"""``mx eval`` end to end on the real env with toy tasks and scripted/fixed policies (no model)."""

import json

import pytest

from mx_train.eval.runner import EvalConfig, episode_seed, run_eval
from mx_train.eval.trace import load_trace
from mx_train.eval.trace_html import render_trace_html

EVIL = "<script>alert(1)</script>"


def toy_tasks():
    from mx_envs.tasks.record import Task

    return [Task(id=f"toy/{i}", dataset="toy", split="test", kind="math", prompt=f"What is {i} + {i}?",
                 answer=str(2 * i)) for i in range(3)]


class EnvFactory:
    """Makes real MetaAgentXEnvs over the toy tasks (ignores gym.make-only kwargs); counts creations."""

    def __init__(self):
        self.made = 0

    def __call__(self, env_id, **kwargs):
        from mx_envs.envs.meta_env import MetaAgentXEnv

        kwargs.pop("limit", None)
        tasks = kwargs.pop("tasks", None) or toy_tasks()
        self.made += 1
        return MetaAgentXEnv(tasks=tasks, **kwargs)


def answer_right(turn):
    """Scripted executor: the right sum for task 0 and 2, a wrong one for task 1, plus untrusted text."""
    text = turn.messages[-1]["content"]
    import re

    m = re.search(r"What is (\d+) \+ (\d+)", text)
    n = int(m.group(1)) * 2 if m else 0
    if n == 2:
        n = 99
    return f"{EVIL} so the answer is \\boxed{{{n}}}"


def policy(design="single"):
    from mx_agents.policies import FixedDesignPolicy
    from mx_agents.policies.scripted import ScriptedPolicy

    return FixedDesignPolicy(design, ScriptedPolicy(fn=answer_right))


@pytest.mark.slow
def test_eval_writes_results_traces_and_resumes(tmp_path):
    factory = EnvFactory()
    cfg = EvalConfig(["MetaAgentX-Toy-v0"], "design:single", executor="scripted", samples=2, seed=3,
                     batch_size=4)
    res = run_eval(cfg, tmp_path, policy=policy(), env_factory=factory, progress=False)
    env = res["envs"]["MetaAgentX-Toy-v0"]
    assert env["n_tasks"] == 3 and env["n_episodes"] == 6
    assert env["accuracy"]["mean"] == pytest.approx(2 / 3)
    assert env["design_valid_rate"] == 1.0
    assert env["structures"]["single"] == 1.0
    assert env["mean_llm_calls"] == 1.0  # the fixed designer is not an LLM call
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 6
    md = (tmp_path / "results.md").read_text()
    assert "MetaAgentX-Toy-v0 | 3 | 6 | 66.7" in md

    rec = json.loads(lines[0])
    trace = load_trace(tmp_path / rec["trace"])
    assert trace.seed == episode_seed(3, "MetaAgentX-Toy-v0", trace.task_id, trace.sample)
    assert trace.design_script and "def forward" in trace.design_script
    assert trace.reference == str(2 * int(trace.task_id.split("/")[1]))
    assert [c.role for c in trace.calls] == ["designer", "executor"]
    page = render_trace_html(trace)
    assert "<script" not in page.lower() and "&lt;script&gt;" in page and "solver" in page

    # Resume: nothing left to run, so no env beyond the task-listing one is made, results unchanged.
    made = factory.made
    again = run_eval(cfg, tmp_path, policy=policy(), env_factory=factory, progress=False)
    assert factory.made == made + 1
    assert again["envs"] == res["envs"]
    # More samples: only the new (task, sample) pairs run.
    cfg3 = EvalConfig(**{**cfg.to_dict(), "samples": 3})
    more = run_eval(cfg3, tmp_path, policy=policy(), env_factory=factory, progress=False)
    assert more["envs"]["MetaAgentX-Toy-v0"]["n_episodes"] == 9
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 9


def test_resume_refuses_other_settings(tmp_path):
    cfg = EvalConfig(["MetaAgentX-Toy-v0"], "design:single", samples=1, limit=1)
    run_eval(cfg, tmp_path, policy=policy(), env_factory=EnvFactory(), progress=False)
    other = EvalConfig(["MetaAgentX-Toy-v0"], "design:vote", samples=1, limit=1)
    with pytest.raises(ValueError, match="other settings"):
        run_eval(other, tmp_path, policy=policy(), env_factory=EnvFactory(), progress=False)


@pytest.mark.parametrize("bad", [{"samples": 0}, {"limit": 0}, {"env_ids": []}, {"batch_size": 0}])
def test_bad_config(tmp_path, bad):
    cfg = EvalConfig(**{"env_ids": ["X"], "policy": "scripted", **bad})
    with pytest.raises(ValueError):
        run_eval(cfg, tmp_path, env_factory=EnvFactory(), progress=False)


def test_episode_seed_is_stable_and_distinct():
    a = episode_seed(0, "E", "t", 0)
    assert a == episode_seed(0, "E", "t", 0)
    assert len({episode_seed(0, "E", "t", s) for s in range(50)}) == 50
    assert a != episode_seed(1, "E", "t", 0)
