"""``mx bench``: run the performance suites under ``benchmarks/`` and print speedups over naive baselines.

Runs ``pytest benchmarks/ --benchmark-only`` in a subprocess with a JSON report
(:func:`mx_train.eval.bench_report.run_benchmarks`), then prints one row per benchmark with its mean
time and its speedup over the naive benchmark it is paired with (pairing convention:
:mod:`mx_train.eval.bench_report`, ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the benchmark suites (pytest-benchmark) and print speedups over naive baselines",
        description=(
            "Run `pytest benchmarks/ --benchmark-only` and print a table of mean times and speedups "
            "of each benchmark over its naive baseline (see benchmarks/README.md for the convention)."
        ),
    )
    p.add_argument("--quick", action="store_true",
                   help="few rounds, short max time, no warmup; sets MX_BENCH_QUICK=1 so suites shrink inputs")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select benchmarks")
    p.add_argument("--dir", default="benchmarks", help="benchmark directory (default: benchmarks)")
    p.add_argument("--json", dest="json_out", default=None,
                   help="also keep pytest-benchmark's JSON report at this path")
    p.add_argument("--from-json", default=None,
                   help="do not run anything: print the table of an existing pytest-benchmark JSON report")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("pytest_args", nargs="*", help="extra arguments passed to pytest (after --)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_train.eval.bench_report import format_table, load_report, pair_benchmarks, run_benchmarks

    if args.from_json:
        try:
            report = load_report(Path(args.from_json))
        except ValueError as exc:
            print(f"mx bench: {exc}", file=sys.stderr)
            return 2
        print(format_table(pair_benchmarks(report), markdown=args.markdown))
        return 0

    bench_dir = Path(args.dir)
    if not bench_dir.is_dir():
        print(f"mx bench: no benchmark directory {bench_dir} (run from the repository root or pass --dir)",
              file=sys.stderr)
        return 2
    rc, report = run_benchmarks(bench_dir, quick=args.quick, keyword=args.keyword, pytest_args=args.pytest_args,
                                json_out=Path(args.json_out) if args.json_out else None)
    if report is None:
        print(f"mx bench: pytest exited with {rc} and wrote no report", file=sys.stderr)
        return rc or 1
    rows = pair_benchmarks(report)
    print()
    print(format_table(rows, markdown=args.markdown) if rows else "mx bench: no benchmark ran")
    return rc  # pytest's own: 1 = a benchmark failed, 5 = nothing collected
