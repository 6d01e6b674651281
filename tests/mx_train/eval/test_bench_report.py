import json

import pytest

from mx_train.eval.bench_report import format_table, load_report, pair_benchmarks


def bench(name, mean, module="benchmarks/test_grading_bench.py", group=None, **extra):
    return {"name": name, "fullname": f"{module}::{name}", "group": group, "extra_info": extra,
            "stats": {"mean": mean, "stddev": mean / 10, "rounds": 5}}


def test_pairing_by_name_and_by_group():
    report = {"benchmarks": [
        bench("test_grade_naive", 2.0),
        bench("test_grade_fast", 0.5, baseline="test_grade_naive"),
        bench("test_pool[8]", 0.1, module="benchmarks/test_sandbox_bench.py", baseline="test_spawn"),
        bench("test_spawn[8]", 0.4, module="benchmarks/test_sandbox_bench.py"),
        bench("test_loop", 3.0, module="benchmarks/test_rollout_bench.py", group="rollout", naive=True),
        bench("test_batched", 1.0, module="benchmarks/test_rollout_bench.py", group="rollout"),
        bench("test_alone", 1.0, module="benchmarks/test_env_bench.py"),
        bench("test_orphan", 1.0, module="benchmarks/test_env_bench.py", baseline="test_missing"),
    ]}
    rows = {r.name: r for r in pair_benchmarks(report)}
    assert rows["test_grade_fast"].speedup == pytest.approx(4.0)
    assert rows["test_grade_naive"].is_baseline and rows["test_grade_naive"].speedup is None
    assert rows["test_pool[8]"].baseline == "test_spawn[8]"  # same parameters matched
    assert rows["test_pool[8]"].speedup == pytest.approx(4.0)
    assert rows["test_batched"].speedup == pytest.approx(3.0) and rows["test_loop"].is_baseline
    assert rows["test_alone"].speedup is None and not rows["test_alone"].is_baseline
    assert "did not run" in rows["test_orphan"].note
    table = format_table(list(rows.values()))
    assert "4.00x" in table and "(naive baseline)" in table and "grading" in table
    md = format_table(list(rows.values()), markdown=True)
    assert md.splitlines()[1].startswith("|---")


def test_load_report_errors(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"nope": 1}))
    with pytest.raises(ValueError, match="not a pytest-benchmark"):
        load_report(p)
    with pytest.raises(ValueError, match="cannot read"):
        load_report(tmp_path / "missing.json")
