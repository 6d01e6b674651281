"""``mx plot RUN_DIR [--out PNG]``: reward curves by role, accuracy, design validity and the
reward-hack monitor's signals."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot a run's reward curves by role (PNG)",
        description="Draw designer/executor reward curves, accuracy and design validity rate from "
        "RUN_DIR/metrics.jsonl; stagewise phases are shaded. Runs that logged the reward-hack monitor's "
        "integrity/ metrics also get its flag rates (alerts marked) and the script/tool runs by sandbox "
        "verdict (see mx_train/HACK_MONITOR.md).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/rewards.png)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default 1: raw)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_train.plot import plot_run

    out = Path(args.out) if args.out else Path(args.run_dir) / "rewards.png"
    try:
        plot_run(args.run_dir, out, smooth=args.smooth)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mx plot: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
