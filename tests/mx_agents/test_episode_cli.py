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


# ---- `--json` as a user pipes it: a real child process, JSON alone on stdout ----

def test_json_only_stdout_sends_every_other_write_to_stderr():
    """Python prints, raw fd-1 writes and a child process's output all land on stderr; the document on stdout."""
    import subprocess
    import sys

    code = (
        "import os, subprocess, sys\n"
        "from mx_envs.cli_output import emit_json, json_only_stdout\n"
        "with json_only_stdout():\n"
        "    print('python print')\n"
        "    os.write(1, b'raw fd write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child process\")'], check=True)\n"
        "    emit_json({'ok': True})\n"
        "print('after')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"ok": true}\nafter\n', proc.stdout  # fd 1 is restored afterwards
    for noise in ("python print", "raw fd write", "child process"):
        assert noise in proc.stderr


def test_cheap_json_commands_print_json_alone(tmp_path):
    from tests.cli_subprocess import mx_json

    doc, _ = mx_json("envs", "--json")
    assert any(r["env_id"] == "MetaAgentX-Arithmetic-v0" for r in doc["envs"])
    doc, _ = mx_json("grade", "math", "--answer", "\\boxed{3}", "--reference", "3", "--json")
    assert doc["correct"] is True
    prog = tmp_path / "p.py"
    prog.write_text("print(6 * 7)\n")
    doc, _ = mx_json("sandbox", "exec", str(prog), "--json")
    assert doc["stdout"] == "42\n" and doc["verdict"] == "ok"
    doc, _ = mx_json("episode", "MetaAgentX-Arithmetic-v0", "--policy", "scripted", "--json")
    assert doc["termination_reason"] == "completed"


def test_episode_json_with_the_hf_backend_is_json_alone():
    """The embedded SmolLM2 on the HF backend (the README's default policy), as a child process."""
    from tests.cli_subprocess import mx_json

    doc, err = mx_json("episode", "MetaAgentX-Arithmetic-v0", "--policy", "design:single", "--executor", "default",
                       "--json", "--max-new-tokens", "8", "--seed", "1")
    assert doc["llm_calls"] >= 1 and doc["termination_reason"], doc
