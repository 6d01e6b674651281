"""``mx sft-data``: teacher episodes graded correct become SFT lines ``mx sft`` reads; the rest are dropped."""

from __future__ import annotations

import json

import pytest

from mx_train.sft_data import SftDataConfig, design_source, generate_sft_data

ARITH = ("MetaAgentX-Arithmetic-v0", {"loader_kwargs": {"level": 3, "n": 20}})


def test_rule_teacher_on_tool_design_keeps_correct_conversations_only(tmp_path):
    out = tmp_path / "data.jsonl"
    cfg = SftDataConfig(envs=[ARITH], designs=["configs/demo_designs/calc.py", "configs/demo_designs/single.py"],
                        executor="rule:arith_tool", tasks=3, samples=2)
    counts = generate_sft_data(cfg, out)
    assert counts["episodes"] == 12
    # The rule teacher only knows the tool protocol: every calc episode is right, every single one wrong.
    assert counts["by_design"] == {"calc": {"episodes": 6, "correct": 6}, "single": {"episodes": 6, "correct": 0}}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert counts["executor"] == len(lines) == 6  # 3 tasks x 2 turns; the second sample is a duplicate
    assert counts["duplicates"] == 6
    assert {x["design"] for x in lines} == {"calc"} and all(x["role"] == "executor" for x in lines)
    first = [x for x in lines if len(x["messages"]) == 2]
    assert all(x["response"].startswith("```python\nprint(") for x in first)
    second = [x for x in lines if len(x["messages"]) == 4]
    for x in second:  # the boxed value is what Python printed, and the episode was graded correct
        printed = x["messages"][-1]["content"].split("```output\n")[1].split("\n")[0]
        assert x["response"] == "\\boxed{" + printed + "}"


def test_sft_data_lines_load_as_sft_examples(tmp_path):
    pytest.importorskip("torch")
    from mx_agents.testing import tiny_llama
    from mx_train.sft import load_sft_jsonl

    out = tmp_path / "data.jsonl"
    generate_sft_data(SftDataConfig(envs=[ARITH], designs=["configs/demo_designs/calc.py"],
                                    executor="rule:arith_tool", tasks=1), out)
    _, tok = tiny_llama(seed=0)
    examples = load_sft_jsonl(out, tok)
    assert len(examples) == 2 and all(e.response_ids for e in examples)


def test_config_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="designer side"):
        SftDataConfig(envs=[ARITH]).validate()
    with pytest.raises(ValueError, match="need an --executor"):
        SftDataConfig(envs=[ARITH], designs=["single"]).validate()
    with pytest.raises(ValueError, match="neither a library design"):
        design_source("no_such_design")
    with pytest.raises(ValueError, match="unknown rule teacher"):
        generate_sft_data(SftDataConfig(envs=[ARITH], designs=["single"], executor="rule:nope", tasks=1), "/dev/null")
