"""MASSession on the real sandbox: request flow, every failure reason, budgets, tool isolation."""

from __future__ import annotations

import os
import time

import pytest
from mas_doubles import BrokenSandbox, ScriptedLLM, drive

from mx_envs.mas.protocol import Budgets, Finished, LLMRequest
from mx_envs.mas.protocol import TerminationReason as R
from mx_envs.mas.session import MASSession


def block(src: str) -> str:
    return f"Here is my design.\n```python\n{src}\n```\n"


EVERY_BLOCK = r'''
from mas import (Agent, debate, ensemble, extract_answer, extract_boxed, extract_code,
                 final_answer, majority_vote, pipeline, reflect, route)

def forward(task):
    planner = Agent("planner", system="Plan.", max_tokens=64)
    worker = Agent("worker", system="Work.")
    plan = pipeline([planner, worker], task)
    voters = [Agent("voter", temperature=0.9) for _ in range(3)]
    voted = ensemble(voters, task, aggregate="vote")
    for v in voters:
        v.reset()
    judge = Agent("judge", system="Judge.")
    judged = ensemble(voters[:2], task, aggregate=judge)
    counted = ensemble(voters[2:], task, aggregate=lambda replies: len(replies))
    reflected = reflect(Agent("solver"), Agent("critic"), task, rounds=3)
    debated = debate([Agent("d1"), Agent("d2")], judge, task, rounds=2)
    coder = Agent("coder", tools=("python",))
    routed = route(Agent("router"), task, {"math": Agent("mathematician"), "code": coder})
    code = extract_code(routed)
    answers = [extract_answer(x) for x in (voted, judged, reflected, debated)] + [extract_boxed(routed)]
    best = majority_vote(answers)
    return {"answer": final_answer(best, kind="math"), "plan": plan, "counted": counted, "code": code}
'''

EVERY_BLOCK_RULES = [
    ("planner", None, "plan: multiply"),
    ("worker", "Output of planner", r"work done \boxed{42}"),
    ("voter", None, lambda r: r"\boxed{42}" if r.agent != "voter#2" else r"\boxed{40}"),
    ("judge", "Candidate 2", r"judge says \boxed{42}"),
    ("solver", "reviewer found", r"revised \boxed{42}"),
    ("solver", None, r"first try \boxed{41}"),
    ("critic", "first try", "NOT APPROVED: 6*7 is not 41"),
    ("critic", "revised", "APPROVED"),
    ("d1", None, r"d1 \boxed{42}"),
    ("d2", None, r"d2 \boxed{42}"),
    ("router", None, "code"),
    ("coder", "Python output", "FINAL ANSWER \\boxed{42}\n```python\nprint(6 * 7)\n```"),
    ("coder", None, "```python\nprint(6 * 7)\n```"),
]

EXPECTED_AGENT_SEQUENCE = (
    ["planner", "worker", "voter", "voter#2", "voter#3", "voter", "voter#2", "judge", "voter#3"]
    + ["solver", "critic", "solver", "critic"]
    + ["d1", "d2", "d1", "d2", "judge"]
    + ["router", "coder", "coder"]
)


def test_every_building_block_requests_arrive_one_by_one(sandbox):
    budgets = Budgets(max_llm_calls=40, max_agents=20)
    session = MASSession(sandbox=sandbox, budgets=budgets)
    llm = ScriptedLLM(EVERY_BLOCK_RULES)
    seen: list[LLMRequest] = []
    out = session.start(block(EVERY_BLOCK), "What is 6 * 7?")
    while isinstance(out, LLMRequest):
        assert session.pending is out
        assert out.call_index == len(seen)  # strictly one request at a time, in order
        seen.append(out)
        out = session.reply(llm(out))
    assert isinstance(out, Finished)
    assert out.reason is R.COMPLETED, out.error
    assert [r.agent for r in seen] == EXPECTED_AGENT_SEQUENCE
    assert out.answer["answer"] == r"\boxed{42}"
    assert out.answer["plan"] == r"work done \boxed{42}"
    assert out.answer["counted"] == 1
    assert out.answer["code"] == "print(6 * 7)"
    assert out.answer_text.startswith('{"answer": "\\\\boxed{42}"')
    assert out.llm_calls == len(seen)
    assert out.agents == [
        "planner", "worker", "voter", "voter#2", "voter#3", "judge", "solver", "critic",
        "d1", "d2", "coder", "router", "mathematician",
    ]
    # messages: system prompt, task, hand-off, history kept per agent, per-call options
    assert seen[0].messages == [
        {"role": "system", "content": "Plan."},
        {"role": "user", "content": "What is 6 * 7?"},
    ]
    assert seen[0].options == {"max_tokens": 64}
    assert seen[1].messages[-1]["content"].startswith("Task:\nWhat is 6 * 7?\n\nOutput of planner:\nplan: multiply")
    assert seen[2].options == {"temperature": 0.9}
    assert seen[5].messages == [{"role": "user", "content": "What is 6 * 7?"}]  # after reset()
    assert len(seen[11].messages) == 3 and seen[11].messages[-1]["content"].startswith("A reviewer found")
    assert "revised" in seen[12].messages[-1]["content"] and len(seen[12].messages) == 3
    assert "### d2" in seen[15].messages[-1]["content"]
    # the judge's second call continues its own conversation
    assert seen[17].messages[:3] == seen[7].messages + [{"role": "assistant", "content": r"judge says \boxed{42}"}]
    assert "Python" in seen[19].messages[0]["content"]
    assert seen[20].messages[-1]["content"].startswith("Python output:\n```output\n42")
    # tool call ran on the host, recorded
    assert [(t.agent, t.tool, t.code, t.verdict, t.stdout) for t in out.tool_calls] == [
        ("coder", "python", "print(6 * 7)", "ok", "42\n")
    ]
    # per-agent trajectories (the nested execution envs)
    assert [t.call_index for t in session.trajectories["judge"]] == [7, 17]
    assert session.trajectories["coder"][1].reply.startswith("FINAL ANSWER")
    assert sum(len(v) for v in session.trajectories.values()) == len(seen)


# ------------------------------------------------------------------ failures before running


@pytest.mark.parametrize(
    "design, reason, words",
    [
        ("I would let three agents debate.", R.NO_CODE, "no script found"),
        (block("def forward(task)\n    return 1"), R.SYNTAX_ERROR, "line 1"),
        (block("def solve(task):\n    return 1"), R.MISSING_ENTRY, "forward"),
        (block("def forward():\n    return 1"), R.MISSING_ENTRY, "first argument"),
    ],
)
def test_static_failures(design, reason, words):
    fin = MASSession(sandbox=BrokenSandbox()).start(design, "task")  # the sandbox is never reached
    assert isinstance(fin, Finished) and fin.reason is reason and words in fin.error
    assert not fin.design_valid and fin.answer is None and fin.answer_text is None


# ------------------------------------------------------------------ failures while running


def run(sandbox, src: str, budgets: Budgets | None = None, reply: str = "ok", task: str = "T") -> Finished:
    session = MASSession(sandbox=sandbox, budgets=budgets)
    return drive(session, block(src), task, ScriptedLLM([], default=reply))


def test_exception_traceback_has_script_frames_only(sandbox):
    src = "def helper(x):\n    return 1 / x\n\ndef forward(task):\n    return helper(0)"
    fin = run(sandbox, src)
    assert fin.reason is R.EXCEPTION
    assert 'File "<design>", line 2, in helper' in fin.error
    assert 'File "<design>", line 5, in forward' in fin.error
    assert fin.error.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "mx_envs" not in fin.error and "runner" not in fin.error


def test_library_misuse_is_an_exception_with_a_clear_message(sandbox):
    fin = run(sandbox, "def forward(task):\n    return Agent('a', tools=('browser',))(task)")
    assert fin.reason is R.EXCEPTION and "available: python" in fin.error
    fin = run(sandbox, "a = Agent('early')\nx = a('hi')\n\ndef forward(task):\n    return x")
    assert fin.reason is R.EXCEPTION and "only be called while forward" in fin.error


def test_exit_without_answer_and_sys_exit(sandbox):
    fin = run(sandbox, "import os\n\ndef forward(task):\n    os._exit(3)")
    assert fin.reason is R.EXCEPTION and "without an answer" in fin.error and "exit code 3" in fin.error
    fin = run(sandbox, "import sys\n\ndef forward(task):\n    sys.exit(0)")
    assert fin.reason is R.EXCEPTION and "SystemExit" in fin.error


def test_llm_call_budget(sandbox):
    src = "def forward(task):\n    a = Agent('looper')\n    while True:\n        a(task)"
    fin = run(sandbox, src, Budgets(max_llm_calls=3))
    assert fin.reason is R.BUDGET_EXCEEDED and "max_llm_calls=3" in fin.error and fin.llm_calls == 3


def test_agent_budget(sandbox):
    src = "def forward(task):\n    agents = [Agent(f'a{i}') for i in range(5)]\n    return 'x'"
    fin = run(sandbox, src, Budgets(max_agents=2))
    assert fin.reason is R.BUDGET_EXCEEDED and "'a2'" in fin.error and "max_agents=2" in fin.error
    assert fin.agents == ["a0", "a1"]


def test_message_size_budget(sandbox):
    src = "def forward(task):\n    return Agent('big')(task * 1000)"
    fin = run(sandbox, src, Budgets(max_message_chars=500), task="0123456789")
    assert fin.reason is R.BUDGET_EXCEEDED and "10000 characters" in fin.error and fin.llm_calls == 0


def test_answer_size_budget(sandbox):
    fin = run(sandbox, "def forward(task):\n    return 'x' * 5000", Budgets(max_message_chars=1000))
    assert fin.reason is R.BUDGET_EXCEEDED and "answer of 5000 characters" in fin.error


def test_tool_call_budget(sandbox):
    src = "def forward(task):\n    return Agent('t', tools=('python',), max_tool_rounds=5)(task)"
    fin = run(sandbox, src, Budgets(max_tool_calls=2), reply="```python\nprint(1)\n```")
    assert fin.reason is R.BUDGET_EXCEEDED and "max_tool_calls=2" in fin.error
    assert len(fin.tool_calls) == 2


@pytest.mark.parametrize(
    "src",
    [
        "def forward(task):\n    while True:\n        pass",
        "while True:\n    pass\n\ndef forward(task):\n    return 1",
        "import time\n\ndef forward(task):\n    time.sleep(60)",
    ],
    ids=["busy-forward", "busy-module-level", "sleeping"],
)
def test_timeout_without_llm_calls(sandbox, src):
    t0 = time.monotonic()
    fin = run(sandbox, src, Budgets(wall_s=1.0))
    elapsed = time.monotonic() - t0
    assert fin.reason is R.TIMEOUT and "1 s" in fin.error
    assert elapsed < 4.0


def test_llm_time_is_not_script_time(sandbox):
    src = "def forward(task):\n    a = Agent('slow')\n    return a('1') + a('2')"
    session = MASSession(sandbox=sandbox, budgets=Budgets(wall_s=1.0))
    out = session.start(block(src), "T")
    for _ in range(2):
        assert isinstance(out, LLMRequest)
        time.sleep(0.8)  # a slow LLM: 1.6 s in all, over the 1 s script budget
        out = session.reply("x")
    assert isinstance(out, Finished) and out.reason is R.COMPLETED, out.error
    assert session.script_time_s < 1.0


def test_sandbox_error():
    fin = MASSession(sandbox=BrokenSandbox()).start(block("def forward(task):\n    return 1"), "T")
    assert fin.reason is R.SANDBOX_ERROR and "sandbox server unavailable" in fin.error


def test_structured_and_odd_answers(sandbox):
    fin = run(sandbox, "def forward(task):\n    return {'answer': 42, 'why': [1, 2]}")
    assert fin.answer == {"answer": 42, "why": [1, 2]} and fin.answer_text == '{"answer": 42, "why": [1, 2]}'
    fin = run(sandbox, "def forward(task):\n    return None")
    assert fin.reason is R.COMPLETED and fin.answer_text == ""
    fin = run(sandbox, "class A:\n    def __str__(self):\n        return 'an A'\n\ndef forward(task):\n    return A()")
    assert fin.answer == "an A"


# ------------------------------------------------------------------ isolation


def test_tool_runs_in_a_separate_sandbox_run(real_sandbox):
    src = r'''
import os

def forward(task):
    with open("script_secret.txt", "w") as f:
        f.write("only the script has this")
    solver = Agent("solver", tools=("python",))
    reply = solver(task)
    return {"pid": os.readlink("/proc/self/ns/mnt"), "cwd": os.getcwd(), "reply": reply,
            "tool_file_seen": os.path.exists("tool_marker.txt")}
'''
    tool_code = (
        "import os\nopen('tool_marker.txt', 'w').write('x')\n"
        "print(os.readlink('/proc/self/ns/mnt'), os.getcwd(), sorted(os.listdir('.')))"
    )
    llm = ScriptedLLM([("solver", "Python output", r"\boxed{done}"), ("solver", None, f"```python\n{tool_code}\n```")])
    session = MASSession(sandbox=real_sandbox)
    fin = drive(session, block(src), "T", llm)
    assert fin.reason is R.COMPLETED, fin.error
    (call,) = fin.tool_calls
    tool_pid, tool_cwd, listing = call.stdout.split(" ", 2)
    assert "script_secret.txt" not in listing  # the tool does not see the script's files
    assert fin.answer["tool_file_seen"] is False  # nor the script the tool's
    # Every run is pid 2 of its own PID namespace: tell runs apart by their mount namespaces.
    assert tool_pid != fin.answer["pid"]


def test_script_cannot_read_host_secrets(real_sandbox, monkeypatch):
    monkeypatch.setenv("MX_TEST_API_KEY", "sk-host-secret-123")
    src = r'''
import os

def forward(task):
    seen = dict(os.environ)
    try:
        seen["proc"] = open("/proc/self/environ", "rb").read().decode(errors="replace")
    except OSError as exc:
        seen["proc"] = str(exc)
    return seen
'''
    fin = run(real_sandbox, src)
    assert fin.reason is R.COMPLETED, fin.error
    assert "sk-host-secret-123" not in fin.answer_text
    assert "MX_TEST_API_KEY" not in fin.answer
    assert os.environ["MX_TEST_API_KEY"] == "sk-host-secret-123"


# ------------------------------------------------------------------ resumability and lifecycle


def test_sessions_resume_independently_and_keep_script_state(sandbox):
    src = "def forward(task):\n    a = Agent('counter')\n    got = [a(f'{task}-{i}') for i in range(3)]\n    return '|'.join(got)"
    s1, s2 = MASSession(sandbox=sandbox), MASSession(sandbox=sandbox)
    r1, r2 = s1.start(block(src), "A"), s2.start(block(src), "B")
    for i in range(3):
        assert r1.messages[-1]["content"] == f"A-{i}" and r2.messages[-1]["content"] == f"B-{i}"
        r2 = s2.reply(f"b{i}")  # interleaved, in the other order
        r1 = s1.reply(f"a{i}")
    assert (r1.answer, r2.answer) == ("a0|a1|a2", "b0|b1|b2")


def test_close_mid_episode_restart_and_misuse(sandbox):
    session = MASSession(sandbox=sandbox)
    src = "def forward(task):\n    return Agent('a')(task)"
    assert isinstance(session.start(block(src), "T"), LLMRequest)
    session.close()
    assert session.finished.reason is R.TRUNCATED
    with pytest.raises(RuntimeError, match="without a pending"):
        session.reply("late")
    fin = drive(session, block(src), "again", ScriptedLLM([], default="fine"))  # reuse the session
    assert fin.reason is R.COMPLETED and fin.answer == "fine"
    assert list(session.trajectories) == ["a"] and session.trajectories["a"][0].messages[-1]["content"] == "again"
    with MASSession(sandbox=sandbox) as s:
        s.start(block(src), "T")
    assert s.finished.reason is R.TRUNCATED
