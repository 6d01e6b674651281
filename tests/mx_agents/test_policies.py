"""Policies: observation parsing, role routing and batching, designer prompt, baselines, specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from agents_doubles import CountingBackend

from mx_agents.backends.base import SamplingParams
from mx_agents.observation import ActorTurn, parse_observation
from mx_agents.policies import (
    DesignerPolicy,
    DesignerPrompt,
    ExecutorPolicy,
    FixedDesignPolicy,
    RandomPolicy,
    ScriptedPolicy,
    SharedPolicy,
    SplitPolicy,
    builtin_scripted_policy,
    extract_script,
    parse_policy_spec,
    resolve_model_path,
)
from mx_agents.policies.scripted import SCRIPTED_CODE_REPLY, SCRIPTED_MATH_REPLY

DESIGN_REPLY = "Here is my design:\n```python\nfrom mas import Agent\n\ndef forward(task):\n    return Agent('a')(task)\n```"


def obs(actor: int, agent: str, content: str, options: dict | None = None) -> dict:
    """An observation in the env's layout (actor index, JSON messages, JSON options)."""
    return {
        "actor": np.int64(actor),
        "agent": agent,
        "messages": json.dumps([{"role": "system", "content": "sys"}, {"role": "user", "content": content}]),
        "options": json.dumps(options or {}),
    }


def reply(messages):
    return DESIGN_REPLY if messages[0]["content"].startswith("sys") and "DESIGN" in messages[-1]["content"] else "\\boxed{7}"


def test_parse_observation_reads_env_layout_and_rejects_bad_input():
    t = parse_observation(obs(1, "solver", "hi", {"max_tokens": 5}))
    assert (t.role, t.agent, t.options) == ("executor", "solver", {"max_tokens": 5})
    assert t.messages[-1] == {"role": "user", "content": "hi"}
    assert parse_observation(obs(0, "designer", "x")).role == "designer"
    assert parse_observation({"role": "designer", "messages": [{"role": "user", "content": "q"}]}).agent == "designer"
    with pytest.raises(ValueError, match="role"):
        parse_observation({"actor": 5, "agent": "a", "messages": "[]"})
    with pytest.raises(ValueError, match="JSON"):
        parse_observation({"actor": 1, "agent": "a", "messages": "[not json"})
    with pytest.raises(ValueError, match="agent name"):
        parse_observation({"actor": 1, "agent": "", "messages": "[]"})
    with pytest.raises(ValueError, match="dict observation"):
        parse_observation("text")


def test_shared_policy_sends_mixed_roles_in_one_call_with_token_data():
    backend = CountingBackend(reply)
    policy = SharedPolicy(backend, seed=3)
    observations = [obs(0, "designer", "DESIGN it"), obs(1, "solver", "2+5?"), obs(0, "designer", "DESIGN 2")]
    actions = policy.act(observations)
    assert backend.calls == [3]
    assert [a.role for a in actions] == ["designer", "executor", "designer"]
    assert actions[0].script is not None and "def forward" in actions[0].script
    assert actions[1].text == "\\boxed{7}" and actions[1].script is None
    for a in actions:
        assert a.from_llm and a.response_ids and len(a.logprobs) == len(a.response_ids) and a.prompt_ids
    seeds = [r.params.seed for r in backend.requests]
    assert None not in seeds and len(set(seeds)) == 3  # seeded policy: distinct per-request seeds
    # The same seed reproduces the same request seeds.
    backend2 = CountingBackend(reply)
    SharedPolicy(backend2, seed=3).act(observations)
    assert [r.params.seed for r in backend2.requests] == seeds


def test_split_policy_uses_each_backend_once_per_round():
    designer_b, executor_b = CountingBackend(reply, "d"), CountingBackend(reply, "e")
    policy = SplitPolicy(designer_b, executor_b)
    policy.act([obs(0, "designer", "DESIGN"), obs(1, "a", "q"), obs(1, "b", "q")])
    assert designer_b.calls == [1] and executor_b.calls == [2]
    policy.act([obs(1, "a", "q")])
    assert designer_b.calls == [1] and executor_b.calls == [2, 1]


def test_executor_honours_script_options_but_never_raises_the_token_budget():
    backend = CountingBackend(reply)
    pol = ExecutorPolicy(backend, SamplingParams(temperature=0.7, max_new_tokens=64))
    pol.act([obs(1, "a", "q", {"max_tokens": 16, "temperature": 0.0, "stop": "END"}), obs(1, "b", "q", {"max_tokens": 999})])
    p0, p1 = (r.params for r in backend.requests)
    assert (p0.max_new_tokens, p0.temperature, p0.stop) == (16, 0.0, ("END",))
    assert (p1.max_new_tokens, p1.temperature) == (64, 0.7)
    with pytest.raises(ValueError, match="designer turn"):
        pol.act([obs(0, "designer", "x")])
    with pytest.raises(ValueError, match="executor turn"):
        DesignerPolicy(backend).act([obs(1, "a", "x")])


def test_designer_prompt_adds_system_examples_and_instructions():
    backend = CountingBackend(reply)
    prompt = DesignerPrompt(system_prompt="NEW SYS", examples=("vote",), instructions="Keep it short.")
    DesignerPolicy(backend, prompt=prompt).act([obs(0, "designer", "DESIGN task")])
    sent = backend.requests[0].messages
    assert sent[0] == {"role": "system", "content": "NEW SYS"}
    assert sent[-1]["content"].startswith("DESIGN task") and sent[-1]["content"].endswith("Keep it short.")
    assert "Example design `vote`" in sent[-1]["content"] and "def forward" in sent[-1]["content"]
    assert DesignerPrompt().apply([{"role": "user", "content": "u"}]) == [{"role": "user", "content": "u"}]
    with pytest.raises(TypeError):
        DesignerPrompt(examples="vote")
    with pytest.raises(ValueError, match="unknown design"):
        DesignerPrompt(examples=("nope",)).apply([])


_BODY = "def forward(task):\n    return '\\\\boxed{1}'\n"
EXTRACTION_CASES = [
    DESIGN_REPLY,
    f"```python\n{_BODY}```\nand a helper:\n```python\ndef helper():\n    pass\n```",  # the block with forward
    f"```\n{_BODY}```",  # untagged
    f"```text\nnotes\n```\n```py\n{_BODY}```",  # tagged py beats text
    _BODY,  # bare code that parses and defines forward
    f"```python\n{_BODY}    x = (\n",  # unclosed final fence: extracted, then a syntax error
    "no code here",
    "```text\njust words\n```",
]


@pytest.mark.parametrize("reply", EXTRACTION_CASES)
def test_extract_script_matches_the_env(reply):
    """The policy's script (Action.script) is the one the env runs: compared with a real env step."""
    from mx_envs.envs.meta_env import MetaAgentXEnv
    from mx_envs.tasks import load_tasks

    env = MetaAgentXEnv(tasks=list(load_tasks("arithmetic", limit=1)))
    try:
        env.reset(seed=0)
        _, _, terminated, _, info = env.step(reply)
        run = env.session.script if env.session is not None else None  # the script the env started
    finally:
        env.close()
    ours = extract_script(reply)
    if ours is None:
        assert terminated and info["termination_reason"] == "no_code" and info["design"] is None
    else:
        assert run == ours and (not terminated or info["termination_reason"] != "no_code")


def test_fixed_design_policy_plays_library_design_and_delegates_agents():
    backend = CountingBackend(reply)
    policy = FixedDesignPolicy("vote", ExecutorPolicy(backend))
    actions = policy.act([obs(0, "designer", "t"), obs(1, "voter_0", "q"), obs(1, "voter_1", "q")])
    assert actions[0].source == "fixed" and actions[0].text.startswith("```python") and "def forward" in actions[0].script
    assert actions[0].prompt_ids is None
    assert [a.source for a in actions[1:]] == ["llm", "llm"] and backend.calls == [2]
    with pytest.raises(ValueError, match="unknown design"):
        FixedDesignPolicy("no_such_design", ExecutorPolicy(backend))


def test_scripted_policy_lookup_order_and_missing_reply():
    policy = ScriptedPolicy(
        design="D",
        replies={"solver": "S", "judge": lambda m: f"J{len(m)}"},
        rules=[("^critic", "wrong", "R")],
        fn=lambda t: "F" if t.agent == "special" else None,
    )
    acts = policy.act([obs(0, "designer", "t"), obs(1, "solver", "q"), obs(1, "judge", "q"),
                       obs(1, "critic_1", "is it wrong?"), obs(1, "special", "q")])
    assert [a.text for a in acts] == ["D", "S", "J2", "R", "F"]
    assert policy.calls == {"designer": 1, "solver": 1, "judge": 1, "critic_1": 1, "special": 1}
    with pytest.raises(LookupError, match="critic_2"):
        policy.act([obs(1, "critic_2", "fine")])


def test_builtin_scripted_policy_gives_single_design_and_fixed_replies():
    policy = builtin_scripted_policy()
    d, m, c = policy.act([obs(0, "designer", "t"), obs(1, "solver", "What is 2+2? Put it in \\boxed{}."),
                          obs(1, "solver", "Write a program reading stdin.")])
    assert "def forward" in extract_script(d.text)
    assert m.text == SCRIPTED_MATH_REPLY and c.text == SCRIPTED_CODE_REPLY


def test_random_policy_is_seeded():
    observations = [obs(0, "designer", "t"), obs(1, "a", "q"), obs(1, "b", "q")]
    a = [x.text for x in RandomPolicy(seed=1).act(observations)]
    b = [x.text for x in RandomPolicy(seed=1).act(observations)]
    c = [x.text for x in RandomPolicy(seed=2).act(observations)]
    assert a == b and a != c
    designs = RandomPolicy(seed=0, designs=("single", "vote")).act([obs(0, "designer", "t")] * 4)
    assert all("def forward" in extract_script(x.text) for x in designs)


def test_parse_policy_spec_kinds(tmp_path):
    made: list[tuple[str, dict]] = []

    def factory(spec, **kw):
        made.append((spec, kw))
        return CountingBackend(reply, name=spec)

    shared = parse_policy_spec("some/model", max_new_tokens=32, temperature=0.5, backend_factory=factory,
                               backend_kw={"device": "cpu"})
    assert isinstance(shared, SharedPolicy) and made == [("some/model", {"device": "cpu"})]
    assert shared.designer.params.max_new_tokens == 32 and shared.executor.params.temperature == 0.5
    same = parse_policy_spec("m", "m", backend_factory=factory)
    assert isinstance(same, SharedPolicy)
    split = parse_policy_spec("m1", "m2", designer_max_new_tokens=100, max_new_tokens=10, backend_factory=factory)
    assert split.designer.backend.name == "m1" and split.executor.backend.name == "m2"
    assert split.designer.params.max_new_tokens == 100 and split.executor.params.max_new_tokens == 10
    fixed = parse_policy_spec("design:debate", "scripted")
    assert isinstance(fixed, FixedDesignPolicy) and fixed.executor.name == "scripted"
    fixed_llm = parse_policy_spec("design:single", backend_factory=factory)
    assert fixed_llm.executor.backend.name == "default"
    assert parse_policy_spec("scripted").name == "scripted"
    assert isinstance(parse_policy_spec("random:4"), RandomPolicy)
    # A checkpoint directory: the HF folder inside it is used.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path / "model")
    parse_policy_spec(str(tmp_path), backend_factory=factory)
    assert made[-1][0] == str(tmp_path / "model")
    for bad, match in [("", "non-empty"), ("design:", "library design name"), ("random:x", "integer seed")]:
        with pytest.raises(ValueError, match=match):
            parse_policy_spec(bad, backend_factory=factory)
    with pytest.raises(ValueError, match="is a designer"):
        parse_policy_spec("design:single", "design:vote")
    with pytest.raises(ValueError, match="temperature"):
        parse_policy_spec("m", temperature=-1, backend_factory=factory)
    with pytest.raises(ValueError, match="no HF model"):
        (tmp_path / "empty").mkdir()
        parse_policy_spec(str(tmp_path / "empty"), backend_factory=factory)


def test_actor_turn_passes_through():
    t = ActorTurn("executor", "a", [{"role": "user", "content": "x"}])
    assert parse_observation(t) is t
