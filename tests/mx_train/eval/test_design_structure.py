import pytest

from mx_train.eval.design_structure import classify_design

LIBRARY_EXPECTED = {
    "single": "single",
    "vote": "ensemble",
    "reflection": "reflection",
    "debate": "debate",
    "ensemble_judge": "ensemble",
    "tool_solver": "single",
}


@pytest.mark.parametrize("name,label", sorted(LIBRARY_EXPECTED.items()))
def test_library_designs(name, label):
    from mx_envs.mas.designs import load_design

    assert classify_design(load_design(name)).label == label


HAND_WRITTEN = {
    "ensemble": '''
from mas import Agent, majority_vote, extract_answer
def forward(task):
    answers = []
    for i in range(3):
        a = Agent(f"s{i}", system="Solve it, check your work.")
        answers.append(extract_answer(a(task)))
    return majority_vote(answers)
''',
    "reflection": '''
from mas import Agent
def forward(task):
    solver = Agent("solver")
    critic = Agent("critic")
    ans = solver(task)
    for _ in range(2):
        fb = critic.ask("Find errors: " + ans)
        ans = solver("Revise using this feedback: " + fb)
    return ans
''',
    "debate": '''
from mas import Agent
def forward(task):
    a, b = Agent("pro"), Agent("con")
    x, y = a(task), b(task)
    for rnd in range(2):
        x = a("Your opponent said: " + y)
        y = b("Your opponent said: " + x)
    return x
''',
    "other": '''
from mas import Agent
def forward(task):
    planner = Agent("planner")
    coder = Agent("coder")
    plan = planner(task)
    return coder(plan)
''',
    "self_refine_loop": '''
from mas import Agent
def forward(task):
    s = Agent("solver")
    ans = s(task)
    for _ in range(3):
        ans = s("Again: " + ans)
    return ans
''',
}


@pytest.mark.parametrize("expected", sorted(HAND_WRITTEN))
def test_hand_written_scripts(expected):
    label = classify_design(HAND_WRITTEN[expected]).label
    assert label == ("reflection" if expected == "self_refine_loop" else expected)


def test_prompt_prose_does_not_make_a_structure():
    # "check"/"debate" only inside a long system prompt: still one agent called once.
    script = '''
from mas import Agent
def forward(task):
    s = Agent("solver", system="Think, check your answer twice, debate with yourself.")
    first = s(task)
    return s("Give the final answer only.")
'''
    assert classify_design(script).label == "single"


def test_invalid_scripts():
    assert classify_design(None).label == "invalid"
    assert classify_design("   ").label == "invalid"
    assert classify_design("def forward(task:\n  return 1").label == "invalid"
    assert classify_design("x = '\\x00'\0").label in ("invalid", "other")


def test_runtime_agents_override_static_count():
    script = '''
from mas import Agent
def make(n):
    return [Agent(f"a{i}") for i in range(n)]
def forward(task):
    agents = make(1)
    return agents[0](task)
'''
    d = classify_design(script, runtime_agents=["a0", "a1", "a2"])
    assert d.features.n_agents == 3
    assert d.to_dict()["features"]["n_agents"] == 3
