"""The script library in-process, with a loopback transport (no sandbox): semantics of each block."""

from __future__ import annotations

import pytest
from mas_doubles import LoopbackTransport, ScriptedLLM

from mx_envs.mas import lib
from mx_envs.mas.lib import (
    Agent,
    MASError,
    debate,
    ensemble,
    extract_answer,
    extract_boxed,
    extract_code,
    final_answer,
    majority_vote,
    pipeline,
    reflect,
    route,
)


@pytest.fixture
def transport():
    """Installs a loopback transport answering from a per-test ScriptedLLM (``t.llm.rules``)."""
    t = LoopbackTransport(ScriptedLLM([]))
    lib._reset()
    lib._install(t)
    yield t
    lib._reset()


# ------------------------------------------------------------------ answer extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{ {a}_{b} } end", "{a}_{b}"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5 $", "5"),
        (r"\boxed{3} and a cut \boxed{\frac{1}{", None),  # last box unclosed: no answer (as the grader)
        ("no box", None),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_code_last_block_and_language():
    text = "```python\na = 1\n```\ntext\n```cpp\nint x;\n```\n```py\nb = 2\n```\n"
    assert extract_code(text) == "b = 2"
    assert extract_code(text, "cpp") == "int x;"
    assert extract_code(text, None) == "b = 2"
    assert extract_code("```\nplain\n```") == "plain"  # untagged fallback
    assert extract_code("```python\nprint(1)\n# cut at max tokens") == "print(1)\n# cut at max tokens"
    assert extract_code("nothing here") is None


def test_extract_answer_and_final_answer():
    assert extract_answer(r"x \boxed{4}") == "4"
    assert extract_answer("```python\nprint(1)\n```") == "print(1)"
    assert final_answer(r"work... \boxed{4}") == r"\boxed{4}"
    assert final_answer("4", kind="math") == r"\boxed{4}"
    assert final_answer(12, kind="math") == r"\boxed{12}"
    assert final_answer("see\n```python\nprint(1)\n```\n") == "```python\nprint(1)\n```"
    assert final_answer("print(2)", kind="code") == "```python\nprint(2)\n```"
    assert final_answer("  plain  ") == "plain"
    with pytest.raises(MASError, match="kind"):
        final_answer("x", kind="essay")


def test_majority_vote():
    assert majority_vote(["1", " 2", "2 ", None, "", "1", "$2$"]) == " 2"
    assert majority_vote(["a", "b"]) == "a"  # tie: first seen
    assert majority_vote([None, ""]) is None
    assert majority_vote(["A", "a", "b"], key=str.lower) == "A"


# ------------------------------------------------------------------ Agent


def test_agent_outside_forward_is_a_clear_error():
    lib._reset()
    a = Agent("solo")
    with pytest.raises(MASError, match="only be called while forward"):
        a("hi")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": ""}, "non-empty"),
        ({"name": "x" * 100}, "longer than"),
        ({"name": "a", "tools": ("web",)}, "available: python"),
        ({"name": "a", "max_tokens": 0}, "max_tokens"),
        ({"name": "a", "temperature": -1}, "temperature"),
        ({"name": "a", "system": 3}, "system"),
    ],
)
def test_agent_bad_arguments(kwargs, match):
    lib._reset()
    with pytest.raises(MASError, match=match):
        Agent(**kwargs)


def test_agent_history_options_reset_and_unique_names(transport):
    transport.llm.rules = [(None, None, lambda r: f"reply{r.call_index}")]
    a = Agent("a", system="sys", max_tokens=10)
    a2 = Agent("a")
    assert (a.name, a2.name) == ("a", "a#2")
    assert a("q1") == "reply0"
    assert a("q2", temperature=0.5) == "reply1"
    last = transport.sent[-1]
    assert last["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "reply0"},
        {"role": "user", "content": "q2"},
    ]
    assert last["options"] == {"max_tokens": 10, "temperature": 0.5}
    with pytest.raises(MASError, match="unknown LLM option"):
        a("q", seed=1)
    a.reset()
    assert a.ask("q3") == "reply2"
    assert transport.sent[-1]["messages"][1:] == [{"role": "user", "content": "q3"}]
    assert [m for m in transport.sent if m["type"] == "agent"] == [
        {"type": "agent", "name": "a", "tools": []},
        {"type": "agent", "name": "a#2", "tools": []},
    ]


def test_python_tool_rounds(transport):
    replies = iter(["```python\nprint(6*7)\n```", "```python\nprint(1)\n```", r"so \boxed{42}"])
    transport.llm.rules = [(None, None, lambda r: next(replies))]
    transport.tool = lambda code: "42\n" if "6*7" in code else "1\n"
    a = Agent("calc", tools=("python",))
    assert a("compute") == r"so \boxed{42}"
    tools = [m for m in transport.sent if m["type"] == "tool"]
    assert [t["code"] for t in tools] == ["print(6*7)", "print(1)"]
    assert "```output\n42\n```" in a.history[2]["content"]
    assert "Python" in a.system  # tool instructions added to the system prompt


def test_python_tool_stops_at_final_marker_and_round_limit(transport):
    transport.llm.rules = [(None, None, "```python\nwhile True: pass\n```")]
    a = Agent("looper", tools=("python",), max_tool_rounds=2)
    a("go")
    assert sum(m["type"] == "tool" for m in transport.sent) == 2
    transport.sent.clear()
    transport.llm.rules = [(None, None, "FINAL ANSWER\n```python\nprint(input())\n```")]
    Agent("coder", tools="python")("write it")
    assert not any(m["type"] == "tool" for m in transport.sent)


# ------------------------------------------------------------------ patterns


def test_pipeline_hands_off(transport):
    transport.llm.rules = [("a", None, "A-out"), ("b", "A-out", "B-out")]
    assert pipeline([Agent("a"), Agent("b")], "T") == "B-out"
    assert "Task:\nT" in transport.sent[-1]["messages"][-1]["content"]


def test_ensemble_vote_judge_and_callable(transport):
    answers = iter([r"\boxed{1}", r"x \boxed{2}", r"y \boxed{2}"])
    transport.llm.rules = [("judge", None, r"judged \boxed{2}"), (None, None, lambda r: next(answers))]
    agents = [Agent("s") for _ in range(3)]
    assert ensemble(agents, "T") == r"x \boxed{2}"
    for a in agents:
        a.reset()
    answers = iter(["c1", "c2", "c3"])
    assert ensemble(agents, "T", aggregate=Agent("judge")) == r"judged \boxed{2}"
    judge_prompt = transport.sent[-1]["messages"][-1]["content"]
    assert "Candidate 1" in judge_prompt and "c3" in judge_prompt
    answers = iter(["c1", "c2", "c3"])
    assert ensemble(agents, "T", aggregate=len) == 3
    with pytest.raises(MASError, match="aggregate"):
        ensemble(agents, "T", aggregate="median")


def test_reflect_early_stop_and_rounds(transport):
    transport.llm.rules = [("critic", None, "APPROVED"), ("solver", None, "sol")]
    assert reflect(Agent("solver"), Agent("critic"), "T", rounds=3) == "sol"
    assert [m["agent"] for m in transport.sent if m["type"] == "llm"] == ["solver", "critic"]
    transport.sent.clear()
    transport.llm.rules = [("critic", None, "NOT APPROVED: wrong"), ("solver", None, "sol")]
    reflect(Agent("solver"), Agent("critic"), "T", rounds=2)
    assert [m["agent"] for m in transport.sent if m["type"] == "llm"] == [
        "solver#2", "critic#2", "solver#2", "critic#2", "solver#2"
    ]


def test_debate_rounds_and_judge(transport):
    transport.llm.rules = [
        ("judge", None, r"final \boxed{5}"),
        ("d1", None, r"\boxed{5}"),
        ("d2", None, r"\boxed{6}"),
    ]
    ds = [Agent("d1"), Agent("d2")]
    assert debate(ds, Agent("judge"), "T", rounds=3) == r"final \boxed{5}"
    agents = [m["agent"] for m in transport.sent if m["type"] == "llm"]
    assert agents == ["d1", "d2"] * 3 + ["judge"]
    second_round_d1 = [m for m in transport.sent if m.get("agent") == "d1" and m["type"] == "llm"][1]
    assert "### d2" in second_round_d1["messages"][-1]["content"]
    for d in ds:
        d.reset()
    assert extract_boxed(debate(ds, None, "T", rounds=1)) == "5"
    with pytest.raises(MASError, match="rounds"):
        debate(ds, None, "T", rounds=0)


def test_route_picks_named_route(transport):
    transport.llm.rules = [("router", None, "I pick Geometry, not algebra"), ("geo", None, "g")]
    routes = {"algebra": Agent("alg"), "geometry": Agent("geo")}
    assert route(Agent("router"), "T", routes) == "g"
    transport.llm.rules = [("router", None, "no idea")]
    assert route(Agent("router"), "T", {"x": lambda t: "fx", "y": lambda t: "fy"}, default="y") == "fy"
    with pytest.raises(MASError, match="default route"):
        route(Agent("router"), "T", {"x": lambda t: t}, default="z")
