"""Row parsers for code datasets, each in its public format.

* LiveCodeBench ``code_generation_lite``: ``public_test_cases`` (JSON list of ``{input, output,
  testtype}``), ``private_test_cases`` (the same list as JSON, or base64(zlib(pickle(json string)))),
  ``metadata`` (JSON with ``func_name`` for LeetCode problems), ``starter_code``, ``contest_date``.
  Functional tests: each input line is one JSON-encoded argument; the output is JSON.
* APPS: ``input_output`` JSON ``{inputs, outputs, fn_name?}``; ``difficulty``
  (introductory/interview/competition); ``solutions`` JSON list; ``starter_code``.
* CodeContests: the hub format (``public_tests``/``private_tests``/``generated_tests`` as
  ``{input: [...], output: [...]}``, ``solutions: {language, solution}``, ``time_limit``) and the flat
  format of ``codecontests_train300.jsonl`` (``tests: [{input, output}]``, ``solutions: [python]``).
* HumanEval (``prompt``, ``canonical_solution``, ``test``, ``entry_point``), MBPP (``text``/``prompt``,
  ``code``, ``test_list``, ``test_setup_code``/``test_imports``), MBPP+ (EvalPlus: the hub's ``test``
  source, or the flat ``base_input``/``plus_input``/``assertion``/``atol`` form).

Every code task records what its prompt shows (``CodeTests.shown_text``, and ``CodeTests.shown``
for the public tests of LiveCodeBench and CodeContests' hub rows): shown tests never pay reward
(:mod:`mx_envs.tasks.code_reward`). MBPP's prompt shows one of its asserts, chosen so that the
hidden ones still separate a solution from a constant, or only the signature where no single
example leaves that (``mx_envs/tasks/README.md``, "What the policy sees").
"""

from __future__ import annotations

import ast
import base64
import json
import pickle
import re
import zlib
from datetime import datetime
from typing import Any

from mx_envs.tasks.code_reward import canonical
from mx_envs.tasks.record import CodeTests, Task

STDIO_NOTE = "Read the input from standard input and write the answer to standard output."
PYTHON3 = 3  # CodeContests language id of Python 3 solutions


def decode_lcb_tests(value: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or base64(zlib(pickle(json))) for private tests."""
    if isinstance(value, list):
        return value
    if not value:
        return []
    try:
        return json.loads(value)
    except ValueError:
        pass
    # Only reached for the hub's compressed field, which LiveCodeBench itself decodes the same way;
    # pickle is trusted here exactly as much as the dataset file is.
    raw = pickle.loads(zlib.decompress(base64.b64decode(value.encode("utf-8"))))  # noqa: S301
    return json.loads(raw) if isinstance(raw, str | bytes) else raw


def encode_lcb_tests(tests: list[dict[str, Any]]) -> str:
    """Inverse of :func:`decode_lcb_tests` for the compressed form (used to write fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("utf-8")


def _json_field(value: Any, default: Any) -> Any:
    if value in (None, ""):
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value


def _lines_to_args(text: str) -> str:
    return json.dumps([json.loads(line) for line in text.split("\n") if line.strip()])


def _code_prompt(statement: str, starter: str, fn_name: str | None) -> str:
    if starter.strip():
        return (f"{statement.rstrip()}\n\nComplete the following starter code (keep the names given):\n"
                f"```python\n{starter.rstrip()}\n```")
    if fn_name:
        return f"{statement.rstrip()}\n\nWrite a Python function named `{fn_name}`."
    return f"{statement.rstrip()}\n\n{STDIO_NOTE}"


def _shown(task: Task) -> Task:
    """Record the prompt as what the policy sees of the task's tests."""
    if task.tests is not None:
        task.tests.shown_text = task.prompt
    return task


def livecodebench_task(row: dict[str, Any], index: int, dataset: str, split: str) -> Task:
    meta = _json_field(row.get("metadata"), {})
    fn_name = meta.get("func_name") if isinstance(meta, dict) else None
    tests = CodeTests(fn_name=fn_name, starter_code=row.get("starter_code") or "")
    public = decode_lcb_tests(row.get("public_test_cases"))
    shown_stdin, shown_calls = [], []
    for k, case in enumerate(public + decode_lcb_tests(row.get("private_test_cases"))):
        if case.get("testtype") == "functional":
            if k < len(public):
                shown_calls.append(len(tests.call_tests))
            tests.call_tests.append((_lines_to_args(case["input"]), case["output"]))
        else:
            if k < len(public):
                shown_stdin.append(len(tests.stdin_tests))
            tests.stdin_tests.append((case["input"], case["output"]))
    tests.shown = shown_stdin + [len(tests.stdin_tests) + j for j in shown_calls]
    qid = row.get("question_id", index)
    return _shown(Task(
        id=f"{dataset}/{split}/{qid}", dataset=dataset, split=split, kind="code",
        prompt=_code_prompt(row.get("question_content", ""), tests.starter_code, None),
        tests=tests,
        metadata={k: row.get(k) for k in ("question_title", "platform", "contest_id", "contest_date", "difficulty")
                  if row.get(k) is not None} | {"row": index},
    ))


def lcb_date(task: Task) -> datetime | None:
    value = task.metadata.get("contest_date")
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def apps_task(row: dict[str, Any], index: int, dataset: str, split: str) -> Task:
    io = _json_field(row.get("input_output"), {})
    fn_name = io.get("fn_name") or None
    tests = CodeTests(fn_name=fn_name, starter_code=row.get("starter_code") or "",
                      solutions=list(_json_field(row.get("solutions"), [])))
    for inp, out in zip(io.get("inputs", []), io.get("outputs", []), strict=False):
        if fn_name:
            args = inp if isinstance(inp, list) else [inp]
            # APPS stores most call-based outputs wrapped in a one-element list (its own grader
            # accepts either form); unwrap so that the function's plain return value is compared.
            expected = out[0] if isinstance(out, list) and len(out) == 1 else out
            tests.call_tests.append((json.dumps(args), json.dumps(expected)))
        else:
            tests.stdin_tests.append((_as_text(inp), _as_text(out)))
    pid = row.get("problem_id", index)
    return _shown(Task(id=f"{dataset}/{split}/{pid}", dataset=dataset, split=split, kind="code",
                       prompt=_code_prompt(row.get("question", ""), tests.starter_code, fn_name), tests=tests,
                       metadata={"difficulty": row.get("difficulty"), "url": row.get("url"), "row": index}))


_TOLERANCE_RE = re.compile(
    r"(absolute|relative)\s+(or\s+relative\s+)?(measure\s+of\s+the\s+)?(error|inaccuracy)"
    r"|differs?\s+from\s+the\s+(correct|right|jury'?s?)(\s+(one|answer|value))?\s+by\s+(at\s+most|no\s+more\s+than)",
    re.IGNORECASE)
_EXPONENT_RE = re.compile(r"10\s*(?:\^\s*\{?\s*)?[-−]\s*(\d{1,2})|1e-(\d{1,2})")


def codecontests_task(row: dict[str, Any], index: int, dataset: str, split: str,
                      test_sets: tuple[str, ...] = ("public", "private", "generated"),
                      max_tests: int | None = None) -> Task:
    tests = CodeTests()
    public = 0  # leading pairs the dataset publishes with the statement
    if "tests" in row:  # flat format: which tests are the statement's examples is read off the text
        pairs = [(t["input"], t["output"]) for t in row["tests"]]
        sols = [s for s in row.get("solutions", []) if isinstance(s, str)]
    else:
        pairs = []
        for name in test_sets:
            block = row.get(f"{name}_tests") or {}
            got = list(zip(block.get("input", []), block.get("output", []), strict=False))
            if name == "public" and not pairs:
                public = len(got)
            pairs += got
        sol = row.get("solutions") or {}
        sols = [s for lang, s in zip(sol.get("language", []), sol.get("solution", []), strict=False) if lang == PYTHON3]
    tests.stdin_tests = pairs[:max_tests] if max_tests else pairs
    tests.shown = list(range(min(public, len(tests.stdin_tests))))
    tests.solutions = sols
    tests.output_compare = "tokens"  # Codeforces-style judges compare tokens, not line layout
    tl = row.get("time_limit")
    if isinstance(tl, dict) and tl.get("seconds") is not None:
        tests.time_limit_s = max(float(tl["seconds"]) + float(tl.get("nanos") or 0) / 1e9, 1.0) * 3
    description = row.get("description", "")
    m = _TOLERANCE_RE.search(description)
    if m:
        # the statement's own bound ("... does not exceed 10^{-9}"), else the common 1e-6
        bound = _EXPONENT_RE.search(description, m.start(), m.end() + 200)
        tests.float_tolerance = 10.0 ** -int(bound.group(1) or bound.group(2)) if bound else 1e-6
    rid = row.get("id") or row.get("name", index)
    return _shown(Task(id=f"{dataset}/{split}/{rid}", dataset=dataset, split=split, kind="code",
                       prompt=_code_prompt(description, "", None), tests=tests,
                       metadata={"name": row.get("name"), "difficulty": row.get("difficulty"),
                                 "tags": row.get("tags", row.get("cf_tags")), "row": index}))


def humaneval_task(row: dict[str, Any], index: int, dataset: str, split: str) -> Task:
    entry = row["entry_point"]
    tests = CodeTests(fn_name=entry, starter_code=row["prompt"],
                      solutions=[row["prompt"] + row.get("canonical_solution", "")],
                      assert_source=f"{row['test']}\n\ncheck({entry})\n")
    return _shown(Task(id=f"{dataset}/{split}/{row['task_id']}", dataset=dataset, split=split, kind="code",
                       prompt=("Complete the following Python function:\n```python\n" + row["prompt"].rstrip()
                               + "\n```"),
                       tests=tests, metadata={"task_id": row["task_id"], "row": index}))


_FN_RE = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|math\.isclose\(|abs\()?\s*([A-Za-z_]\w*)\s*\(")


def _fn_from_asserts(asserts: list[str], code: str) -> str | None:
    for a in asserts:
        m = _FN_RE.search(a)
        if m and m.group(1) not in ("set", "sorted", "abs", "math", "round", "list", "tuple", "str", "int", "float"):
            return m.group(1)
    m = re.search(r"^def\s+(\w+)", code, re.MULTILINE)
    return m.group(1) if m else None


def _assert_value(assertion: str, fn_name: str | None) -> tuple[bool, Any]:
    """``(True, value)`` for ``assert fn(...) == <literal>`` (canonical form), else ``(False, None)``."""
    try:
        tree = ast.parse(assertion.strip())
        node = tree.body[0]
        if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)):
            return False, None
        cmp = node.test
        call = cmp.left
        if not (len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq) and isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name) and call.func.id == fn_name):
            return False, None
        return True, canonical(ast.literal_eval(cmp.comparators[0]))
    except (SyntaxError, ValueError, TypeError, IndexError, MemoryError, RecursionError):
        return False, None


def _separating(values: list[tuple[bool, Any]]) -> int:
    """How many of these tests a solution passes beyond the best constant (unreadable values count
    as distinct)."""
    counts: dict[str, int] = {}
    for known, value in values:
        if known:
            try:
                key = json.dumps(value, sort_keys=True, default=repr)
            except (TypeError, ValueError, RecursionError):  # tuple keys, mixed key types
                key = repr(value)
            counts[key] = counts.get(key, 0) + 1
    top = max(counts.values(), default=0)
    return len(values) - max(top, 1) if values else 0


def mbpp_example(asserts: list[str], fn_name: str | None) -> int | None:
    """Which assert an MBPP prompt shows: the first one whose removal leaves hidden asserts that a
    constant cannot all pass; ``None`` (signature only) when no single example leaves that but
    hiding all does; the first one when nothing separates (a task no program can earn reward on)."""
    values = [_assert_value(a, fn_name) for a in asserts]
    best, choice = 0, None
    for i in range(len(asserts)):
        gain = _separating(values[:i] + values[i + 1:])
        if gain > best:
            best, choice = gain, i
    if choice is not None:
        return choice
    if _separating(values) > 0:
        return None
    return 0 if asserts else None


def _signature(code: str, fn_name: str | None) -> str:
    try:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.FunctionDef) and node.name == fn_name:
                return f"def {fn_name}({ast.unparse(node.args)}):"
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        pass
    return f"def {fn_name}(...):"


def mbpp_task(row: dict[str, Any], index: int, dataset: str, split: str) -> Task:
    """MBPP: graded on all of ``test_list``; the prompt shows one assert (:func:`mbpp_example`), not
    the three of the original prompt format, which were the whole test set (a lookup table of
    them passed every task)."""
    asserts = list(row.get("test_list") or [])
    setup = (row.get("test_setup_code") or "") + "\n" + "\n".join(row.get("test_imports") or [])
    code = row.get("code", "")
    fn_name = _fn_from_asserts(asserts, code)
    text = row.get("text") or row.get("prompt") or ""
    tests = CodeTests(fn_name=fn_name, solutions=[code] if code else [],
                      assert_source=setup.strip() + "\n" + "\n".join(asserts) + "\n")
    shown = mbpp_example(asserts, fn_name)
    if shown is not None:
        prompt = (f"{text.strip()}\nYour code should pass this test (and others that are not shown):\n"
                  f"{asserts[shown].strip()}")
    else:
        prompt = (f"{text.strip()}\nWrite a Python function `{_signature(code, fn_name)}` "
                  "(it is tested on inputs that are not shown).")
    return _shown(Task(id=f"{dataset}/{split}/{row.get('task_id', index)}", dataset=dataset, split=split,
                       kind="code", prompt=prompt, tests=tests,
                       metadata={"row": index, "shown_assert": shown}))


def _input_loop(entry: str, inputs: list[Any]) -> str:
    """Test source that calls ``entry`` on each argument list (the recording run's input set).

    The inputs travel in the harness codec (tuples stay tuples). Inputs the reference rejects
    (it raises) are skipped, as EvalPlus' input contracts do.
    """
    from mx_envs.tasks.code_harness import encode_value

    text = json.dumps(encode_value(inputs), separators=(",", ":"))
    return (f"for _mx_args in _mx_decode({text!r}):\n"
            f"    try:\n        {entry}(*_mx_args)\n    except Exception:\n        pass\n")


def _kind(v: Any) -> str:
    return "seq" if isinstance(v, list | tuple | set | frozenset) else "map" if isinstance(v, dict) else "scalar"


def like_template(value: Any, template: Any) -> Any:
    """A JSON-decoded input given the Python types of an example: lists become tuples or sets, and
    strings complex or float numbers, where ``template`` (a literal argument of the dataset's own
    asserts) has them. MBPP+ stores every input as JSON, which loses tuples; EvalPlus restores
    them per task, here they are read off the task's base assertion."""
    if isinstance(value, list) and isinstance(template, list | tuple | set | frozenset):
        elems = list(template)

        def pick(k: int, v: Any) -> Any:
            if isinstance(template, tuple) and len(elems) == len(value):
                return elems[k]
            return next((e for e in elems if _kind(e) == _kind(v)), None)

        conv = [like_template(v, pick(k, v)) for k, v in enumerate(value)]
        if isinstance(template, tuple):
            return tuple(conv)
        if isinstance(template, set | frozenset):
            try:
                return set(conv)
            except TypeError:
                return conv
        return conv
    if isinstance(value, dict) and isinstance(template, dict) and template:
        tk, tv = next(iter(template.items()))
        out = {}
        for k, v in value.items():
            if isinstance(tk, int) and not isinstance(tk, bool) and isinstance(k, str) and k.lstrip("-").isdigit():
                k = int(k)
            out[k] = like_template(v, tv)
        return out
    if isinstance(value, str) and type(template) in (int, float, complex):
        try:
            return complex(value) if type(template) is complex else float(value)
        except ValueError:
            return value
    return value


def _assert_template(assertion: str, entry: str) -> list[Any] | None:
    """Literal arguments of the first call of ``entry`` in ``assertion`` (None where not literal)."""
    import ast

    try:
        tree = ast.parse(assertion)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry:
            out = []
            for arg in node.args:
                try:
                    out.append(ast.literal_eval(arg))
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    out.append(None)
            return out
    return None


def mbppplus_task(row: dict[str, Any], index: int, dataset: str, split: str, plus: bool = True) -> Task:
    """MBPP+ (EvalPlus): the reference's outputs on ``base_input`` (+ ``plus_input``) are the tests.

    The flat form lists the inputs; the hub form's ``test`` program calls the function on them
    (its own expected ``results`` are not used: EvalPlus compares with the reference's outputs).
    Either way the tests become input -> expected pairs in a trusted run of the reference
    (:mod:`mx_envs.tasks.code_reference`); the candidate's sandbox gets the inputs only.
    """
    if "entry_point" in row:  # flat EvalPlus form
        entry = row["entry_point"]
        inputs = list(row.get("base_input") or []) + (list(row.get("plus_input") or []) if plus else [])
        template = _assert_template(row.get("assertion", ""), entry)
        if template is not None:
            inputs = [[like_template(a, t) for a, t in zip(inp, template, strict=True)]
                      if isinstance(inp, list) and len(inp) == len(template) else inp for inp in inputs]
        source = _input_loop(entry, inputs)
        solution = row.get("canonical_solution", "")
        text = row.get("prompt", "").strip().strip('"').strip()
    else:  # hub form (evalplus/mbppplus): ``test`` is a complete test program
        code = row.get("code", "")
        entry = _fn_from_asserts(list(row.get("test_list") or []), code) or ""
        source = "\n".join(row.get("test_imports") or []) + "\n" + row.get("test", "")
        solution = code
        text = row.get("prompt", "")
    atol = float(row.get("atol") or 0) or None
    tests = CodeTests(fn_name=entry, solutions=[solution] if solution else [], assert_source=source,
                      float_tolerance=atol)
    prompt = f"{text}\n\nWrite a Python function named `{entry}`."
    return _shown(Task(id=f"{dataset}/{split}/{row.get('task_id', index)}", dataset=dataset, split=split,
                       kind="code", prompt=prompt, tests=tests, metadata={"row": index, "atol": row.get("atol")}))
