import html
import re
import xml.etree.ElementTree as ET

from mx_train.eval.trace import CallRecord, EpisodeTrace, ToolRecord, load_trace, save_trace
from mx_train.eval.trace_html import render_sequence_svg, render_trace_html

SCRIPT = '''from mas import Agent, final_answer

def forward(task):
    solver = Agent("solver", tools=("python",))
    critic = Agent("critic")
    ans = solver(task)
    return final_answer(critic("Check: " + ans))
'''
EVIL = "<script>alert('pwned')</script> & <img src=x onerror=alert(1)>"


def make_trace() -> EpisodeTrace:
    sys_msg = {"role": "system", "content": "You solve problems."}
    first = [sys_msg, {"role": "user", "content": "What is 2+2? " + EVIL}]
    reply1 = "```python\nprint(2+2)\n```"
    second = [*first, {"role": "assistant", "content": reply1},
              {"role": "user", "content": "Python output:\n```output\n4\n```"}]
    return EpisodeTrace(
        episode_id="e1", env_id="MetaAgentX-Toy-v0", task_id="toy/1", sample=0, seed=7,
        task_prompt="What is 2+2? " + EVIL, task_kind="math", reference="4", policy="design:custom",
        executor="scripted", design_text="```python\n" + SCRIPT + "```", design_script=SCRIPT,
        structure={"label": "reflection", "features": {"agent_sites": 2}},
        agents=["solver", "critic"],
        calls=[
            CallRecord(0, "designer", "designer", [{"role": "user", "content": "design please"}],
                       "```python\n" + SCRIPT + "```", 10, 50, "stop", "llm"),
            CallRecord(1, "executor", "solver", first, reply1, 20, 8, "stop", "llm"),
            CallRecord(2, "executor", "solver", second, "So \\boxed{4} " + EVIL, 40, 9, "length", "llm"),
            CallRecord(3, "executor", "critic", [{"role": "user", "content": "Check: \\boxed{4}"}],
                       "APPROVED \\boxed{4}", 12, 4, "stop", "llm"),
        ],
        tool_calls=[ToolRecord("solver", "python", "print(2+2)", "ok", "4\n" + EVIL, "", after_call=1)],
        answer="\\boxed{4}", correct=True, reward=1.0, termination_reason="completed", design_valid=True,
        wall_s=1.5,
    )


def test_page_holds_every_part_and_escapes_untrusted_text():
    page = render_trace_html(make_trace())
    assert page.startswith("<!DOCTYPE html>")
    # No script element, no external asset: the only "<script" text is the escaped one.
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "<img" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "default-src 'none'" in page
    # task, highlighted design, diagram, conversations, tool output, answer and verdict
    assert "What is 2+2?" in page
    assert '<span class="tok-kw">def</span> <span class="tok-def">forward</span>' in page
    assert "<svg" in page and "#1 ask" in page and "python: ok" in page
    assert page.count('class="call"') == 3
    # The 2nd solver call repeats system + user + the 1st reply: only the tool output is new.
    assert "(3 earlier message(s)" in page
    assert "Python output" in page and "4\n" in page
    assert "\\boxed{4}" in page and "correct" in page and "completed" in page
    assert "finish: length" in page and "(cut)" in page


def test_svg_is_well_formed_xml_in_call_order():
    svg = render_sequence_svg(make_trace())
    root = ET.fromstring(svg)
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[:4] == ["designer", "script", "solver", "critic"]
    assert texts[4].startswith("writes script (50 tok)")
    order = [t for t in texts if t.startswith("#")]
    assert [o.split()[0] for o in order] == ["#1", "#2", "#3"]
    # the tool run is drawn between the first and second solver calls
    flat = " | ".join(texts)
    assert flat.index("#1 ask") < flat.index("python: ok") < flat.index("#2 ask")


def test_trace_json_round_trip_and_rendering_from_file(tmp_path):
    trace = make_trace()
    path = save_trace(tmp_path / "traces", trace)
    assert path.name == "toy_1__s0.json"
    again = load_trace(path)
    assert again == trace
    assert again.llm_calls == 4 and again.prompt_tokens == 82


def test_bad_trace_files(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON trace"):
        load_trace(bad)
    bad.write_text('{"schema": "other/9"}')
    with pytest.raises(ValueError, match="unsupported trace schema"):
        load_trace(bad)


def test_failed_design_page():
    t = make_trace()
    t.design_script, t.calls, t.tool_calls, t.agents = None, t.calls[:1], [], []
    t.correct, t.termination_reason, t.error, t.answer = False, "no_code", "no ```python block" + EVIL, None
    page = render_trace_html(t)
    assert "No script could be extracted" in page and "no sub-agent calls" in page
    assert "incorrect" in page and html.escape(EVIL) in page and "<script" not in page.lower()
