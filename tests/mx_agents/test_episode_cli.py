"""`mx episode`: JSON summary and exit codes (scripted policies; no model)."""

from __future__ import annotations

import json

from mx_train.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["episode", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_episode_json_scripted(capsys):
    rc, out, _ = run_cli(capsys, "MetaAgentX-Arithmetic-v0", "--policy", "scripted", "--seed", "3", "--json")
    assert rc == 0
    summary = json.loads(out)
    for key in ("reward", "termination_reason", "llm_calls", "design_valid", "answer", "task_id", "correct"):
        assert key in summary
    assert summary["termination_reason"] == "completed" and summary["design_valid"] is True
    assert summary["llm_calls"] == 0 and summary["turns"] == 2  # scripted: no LLM turns
    assert summary["answer"] == "\\boxed{0}" and summary["extracted"] == "0"


def test_episode_fixed_design_with_scripted_executor_and_task_id(capsys):
    rc, out, _ = run_cli(capsys, "MetaAgentX-Arithmetic-v0", "--policy", "design:vote", "--executor", "scripted",
                         "--json", "--trace")
    assert rc == 0
    summary = json.loads(out)
    assert summary["policy"].startswith("design:vote") and summary["turns"] >= 4
    assert summary["trace"][0]["role"] == "designer" and "def forward" in summary["design"]
    task_id = summary["task_id"]
    rc, out, _ = run_cli(capsys, "MetaAgentX-Arithmetic-v0", "--policy", "scripted", "--task-id", task_id, "--json")
    assert rc == 0 and json.loads(out)["task_id"] == task_id


def test_episode_text_output_and_bad_input(capsys):
    rc, out, _ = run_cli(capsys, "MetaAgentX-Arithmetic-v0", "--policy", "random:1")
    assert rc == 0 and "termination_reason" in out and "llm_calls" in out
    rc, _, err = run_cli(capsys, "MetaAgentX-Arithmetic-v0", "--policy", "design:nope", "--executor", "scripted")
    assert rc == 2 and "unknown design" in err
    rc, _, err = run_cli(capsys, "MetaAgentX-NoSuch-v0", "--policy", "scripted")
    assert rc == 2 and "NoSuch" in err
