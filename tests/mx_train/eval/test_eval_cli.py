"""The mx eval / table / trace / bench subcommands: argument handling and file outputs."""

import json

from mx_train.cli import main
from mx_train.eval.baselines_table import benchmark_name, build_table, plan_rows, render_table_markdown
from mx_train.eval.results import EpisodeRecord, summarize, write_results


def test_commands_are_registered(capsys):
    for cmd in ("eval", "table", "trace", "bench"):
        try:
            main([cmd, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
    assert "--benchmark" not in capsys.readouterr().err


def test_eval_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert main(["eval", "MetaAgentX-GSM8K-v0", "--policy", "scripted", "--samples", "0",
                 "--out", str(tmp_path)]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    assert main(["eval", "MetaAgentX-GSM8K-v0", "--policy", "scripted", "--env-arg", "nokey",
                 "--out", str(tmp_path)]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_trace_command(tmp_path, capsys):
    from test_trace_html import make_trace

    from mx_train.eval.trace import save_trace

    path = save_trace(tmp_path, make_trace())
    out = tmp_path / "page" / "t.html"
    assert main(["trace", str(path), "--html", str(out)]) == 0
    assert "<svg" in out.read_text()
    assert main(["trace", str(tmp_path / "nope.json"), "--html", str(out)]) == 2
    assert "no trace file" in capsys.readouterr().err


def _fake_run(run_dir, env_accs):
    """Writes a results.json as mx eval would (the records are real, synthetic outcomes)."""
    recs = []
    for env, acc_tasks in env_accs.items():
        for i, ok in enumerate(acc_tasks):
            recs.append(EpisodeRecord(env, f"t{i}", 0, ok, float(ok), True, "completed", "single", 1, 10, 5))
    write_results(run_dir, summarize(recs, {}))


def test_table_from_existing_runs(tmp_path, capsys):
    envs = ["MetaAgentX-GSM8K-v0", "MetaAgentX-AIME-v0"]
    rows = plan_rows(["vote", "single"], "ckpt/dir", "default", None, tmp_path)
    assert [r.label for r in rows] == ["Single Agent", "Self-Consistency (vote)", "MetaAgentX"]
    _fake_run(rows[0].run_dir, {envs[0]: [True, False], envs[1]: [False, False]})
    _fake_run(rows[1].run_dir, {envs[0]: [True, True], envs[1]: [True, False]})
    table = build_table(rows, envs)
    assert table["columns"] == ["GSM8K", "AIME"]
    assert table["rows"][0]["average"] == 0.25 and table["rows"][1]["average"] == 0.75
    assert table["rows"][2]["average"] is None  # the learned row has not run
    md = render_table_markdown(table)
    assert "| Single Agent | 50.0 | 0.0 | 25.0 |" in md and "| **MetaAgentX** | - | - | - |" in md
    rc = main(["table", "--envs", ",".join(envs), "--designs", "single,vote", "--learned", "ckpt/dir",
               "--out", str(tmp_path), "--no-run"])
    assert rc == 0
    assert json.loads((tmp_path / "table.json").read_text())["rows"][1]["label"] == "Self-Consistency (vote)"
    assert benchmark_name("MetaAgentX-LiveCodeBench-v0") == "LiveCodeBench"


def test_bench_from_json(tmp_path, capsys):
    report = {"benchmarks": [
        {"name": "test_a_naive", "fullname": "benchmarks/test_a_bench.py::test_a_naive", "group": "a",
         "extra_info": {"naive": True}, "stats": {"mean": 1.0, "stddev": 0.1, "rounds": 3}},
        {"name": "test_a_fast", "fullname": "benchmarks/test_a_bench.py::test_a_fast", "group": "a",
         "extra_info": {}, "stats": {"mean": 0.25, "stddev": 0.01, "rounds": 3}},
    ]}
    p = tmp_path / "b.json"
    p.write_text(json.dumps(report))
    assert main(["bench", "--from-json", str(p)]) == 0
    out = capsys.readouterr().out
    assert "4.00x" in out and "test_a_fast" in out
    assert main(["bench", "--dir", str(tmp_path / "none")]) == 2
