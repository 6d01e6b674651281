"""``mx grade math`` and ``mx grade code``: grade one answer from the command line."""

from __future__ import annotations

import argparse

CODE_DATASETS = ("livecodebench", "apps", "codecontests", "humaneval", "mbpp", "mbppplus")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("grade", help="grade a math answer or a program", description=__doc__)
    sub = p.add_subparsers(dest="grade_kind", metavar="KIND")
    m = sub.add_parser("math", help="compare a math answer with a reference")
    m.add_argument("--answer", required=True, help="the response or answer (\\boxed{} / 'final answer' extracted)")
    m.add_argument("--reference", required=True, help="the reference answer")
    m.add_argument("--timeout", type=float, default=5.0, help="seconds of sympy work for the whole grade")
    m.add_argument("--json", action="store_true", help="print JSON: correct, extracted, method")
    m.set_defaults(func=_math)
    c = sub.add_parser("code", help="run a program against one problem's tests in the sandbox")
    c.add_argument("--dataset", required=True, choices=CODE_DATASETS)
    c.add_argument("--data-file", required=True, help="JSONL/JSON/parquet file in the dataset's public format")
    c.add_argument("--index", type=int, required=True, help="row of the problem in the file (0-based)")
    c.add_argument("--solution", required=True, help="file with the program (markdown code blocks are extracted)")
    c.add_argument("--time-limit", type=float, default=None, help="seconds per test (default: the problem's)")
    c.add_argument("--json", action="store_true", help="print JSON: passed, total, pass_all, fraction, verdicts")
    c.set_defaults(func=_code)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _math(args: argparse.Namespace) -> int:
    from mx_envs.cli_output import emit_json
    from mx_envs.tasks.math_grader import grade_math

    g = grade_math(args.answer, args.reference, timeout_s=args.timeout)
    if args.json:
        emit_json({"correct": g.correct, "extracted": g.extracted, "method": g.method})
    else:
        print(f"{'correct' if g.correct else 'incorrect'} (extracted {g.extracted!r}, by {g.method})")
    return 0


def _code(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_envs.cli_output import emit_json
    from mx_envs.tasks.code_grader import grade_code
    from mx_envs.tasks.registry import load_tasks

    tasks = load_tasks(args.dataset, path=args.data_file)
    if not 0 <= args.index < len(tasks):
        print(f"mx grade code: --index {args.index} out of range (the file has {len(tasks)} problems)", file=sys.stderr)
        return 2
    try:
        solution = Path(args.solution).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"mx grade code: cannot read --solution: {exc}", file=sys.stderr)
        return 2
    task = tasks[args.index]
    g = grade_code(solution, task.tests, time_limit_s=args.time_limit)
    if args.json:
        out = {"task_id": task.id, "passed": g.passed, "total": g.total, "pass_all": g.pass_all,
               "fraction": g.fraction, "verdicts": g.verdicts}
        emit_json(out)
    else:
        print(f"{task.id}: {g.passed}/{g.total} passed ({'PASS' if g.pass_all else 'FAIL'})")
        for d in g.details:
            print(f"  test {d['index']}: {d['verdict']} {d.get('time_s', 0):.3f}s {d.get('message', '')}".rstrip())
    return 0
