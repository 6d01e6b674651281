"""``mx heldout --run RUN``: the held-out Arithmetic evaluation of a training run
(:mod:`mx_train.eval.heldout`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from mx_train.eval import heldout

    p = subparsers.add_parser(
        "heldout",
        help="held-out Arithmetic evaluation of a run: base vs cold start vs trained, designer ablation",
        description=(heldout.__doc__ or "").split("\n\n", 1)[1],
    )
    p.add_argument("--run", required=True, help="training run directory (holds checkpoints/ and cold_start/)")
    p.add_argument("--levels", default="1,2,3", help="Arithmetic levels (default 1,2,3)")
    p.add_argument("--n", type=int, default=40, help="test tasks per level (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64,
                   help="episodes per batch and level, and rows per decoding batch (default 64)")
    p.add_argument("--out", default=None, help="JSON file (default RUN/heldout.json)")
    p.add_argument("--conditions", default=None,
                   help="comma-separated subset of base,cold_start,trained,trained_executor+cold_designer "
                        "(default: all the run has); finished episodes are reused by later calls")
    p.add_argument("--kv-cache-mb", type=float, default=None,
                   help=f"key/value budget of each model's running batch, MiB (default {heldout.EVAL_ENGINE['kv_cache_mb']:g})")
    p.add_argument("--prefix-cache-mb", type=float, default=None,
                   help=f"prefix cache of each model, MiB (default {heldout.EVAL_ENGINE['prefix_cache_mb']:g})")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mx_train.eval.heldout import render, run_heldout

    levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()] if args.conditions else None
    doc = run_heldout(args.run, levels=levels, n=args.n, seed=args.seed, batch_size=args.batch_size, out=args.out,
                      conditions=conds, progress=True,
                      engine_kwargs={k: v for k, v in (("kv_cache_mb", args.kv_cache_mb),
                                                       ("prefix_cache_mb", args.prefix_cache_mb)) if v is not None})
    print(render(doc))
    print(f"wrote {args.out or Path(args.run) / 'heldout.json'}")
    return 0
