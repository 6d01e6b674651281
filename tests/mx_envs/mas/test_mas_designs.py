"""The library designs: loadable by name, valid, and each runs end to end with a scripted LLM."""

from __future__ import annotations

import pytest
from mas_doubles import ScriptedLLM, drive

from mx_envs.mas.designs import DESIGN_NAMES, load_design
from mx_envs.mas.lib import extract_boxed, extract_code
from mx_envs.mas.protocol import TerminationReason
from mx_envs.mas.script import check_script, extract_script
from mx_envs.mas.session import MASSession

EXPECTED_AGENTS = {
    "single": ["solver"],
    "vote": [f"solver{i}" for i in range(1, 6)],
    "reflection": ["solver", "critic"],
    "debate": ["debater1", "debater2", "debater3", "judge"],
    "ensemble_judge": ["solver_direct", "solver_stepwise", "solver_checker", "judge"],
    "tool_solver": ["solver"],
}
PROGRAM = "n = int(input())\nprint(n * 2)"


def test_names_and_unknown_name():
    assert set(DESIGN_NAMES) == set(EXPECTED_AGENTS)
    assert load_design("design:vote") == load_design("vote")
    with pytest.raises(ValueError, match="known designs: single, vote"):
        load_design("swarm")


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_is_a_valid_script(name):
    text = load_design(name)
    assert extract_script(text) == text
    assert check_script(text) is None


def _math_llm() -> ScriptedLLM:
    calls = {"n": 0}

    def solver(req):  # the second reply dissents, so that voting has something to do
        calls["n"] += 1
        return r"6 times 7 is 42, so \boxed{42}." if calls["n"] != 2 else r"I get \boxed{41}."

    def tool_user(req):
        if req.messages[-1]["content"].startswith("Python output"):
            assert "42" in req.messages[-1]["content"]
            return r"The code printed 42. \boxed{42}"
        return "Let me compute.\n```python\nprint(6 * 7)\n```"

    return ScriptedLLM(
        [
            ("critic", None, "APPROVED"),
            ("judge", None, r"Candidate answers agree on 42: \boxed{42}"),
            ("solver", None, lambda r: tool_user(r) if "run Python" in r.messages[0]["content"] else solver(r)),
        ],
        default=solver,
    )


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_math_end_to_end(sandbox, name):
    llm = _math_llm()
    fin = drive(MASSession(sandbox=sandbox), load_design(name), "What is 6 * 7?", llm)
    assert fin.reason is TerminationReason.COMPLETED, fin.error
    assert extract_boxed(fin.answer_text) == "42"
    assert fin.agents == EXPECTED_AGENTS[name]
    assert all("What is 6 * 7?" in r.messages[-1]["content"] or r.call_index > 0 for r in llm.requests)
    if name == "tool_solver":
        assert [t.stdout.strip() for t in fin.tool_calls] == ["42"]


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_code_end_to_end(sandbox, name):
    final = f"Here is the program.\n```python\n{PROGRAM}\n```"

    def tool_user(req):
        if req.messages[-1]["content"].startswith("Python output"):
            return "FINAL ANSWER\n" + final
        return "Testing:\n```python\nprint(int('21') * 2)\n```"

    llm = ScriptedLLM(
        [
            ("critic", None, "APPROVED"),
            ("solver", None, lambda r: tool_user(r) if "run Python" in r.messages[0]["content"] else final),
        ],
        default=final,
    )
    task = "Read n from stdin and print 2n."
    fin = drive(MASSession(sandbox=sandbox), load_design(name), task, llm)
    assert fin.reason is TerminationReason.COMPLETED, fin.error
    assert extract_code(fin.answer_text) == PROGRAM


def test_api_reference_is_short_and_states_the_budgets():
    from mx_envs.mas.protocol import Budgets
    from mx_envs.mas.reference import api_reference

    text = api_reference()
    assert 60 <= len(text.splitlines()) <= 120
    for name in ("def forward(task)", "Agent(", "pipeline(", "ensemble(", "reflect(", "debate(", "route(",
                 "majority_vote(", "extract_boxed(", "extract_code(", "final_answer("):
        assert name in text
    assert "at most 5 LLM calls, 3 agents, 30 s of script time" in api_reference(
        Budgets(max_llm_calls=5, max_agents=3, wall_s=30)
    )


def test_api_reference_examples_run(sandbox):
    import re

    from mx_envs.mas.reference import api_reference

    examples = [b for b in re.findall(r"^```python\n(.*?)^```$", api_reference(), re.S | re.M) if "def forward" in b]
    assert len(examples) == 2
    llm = ScriptedLLM([("critic", None, "APPROVED")], default=r"\boxed{7}")
    for src in examples:
        fin = drive(MASSession(sandbox=sandbox), f"```python\n{src}```", "3 + 4?", llm)
        assert fin.reason is TerminationReason.COMPLETED and fin.answer_text == r"\boxed{7}", fin.error
