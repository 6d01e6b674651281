"""``mx sft-data``: cold-start SFT data from a teacher (:mod:`mx_train.sft_data`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from mx_train import sft_data

    p = subparsers.add_parser(
        "sft-data",
        help="cold-start SFT data from a teacher: play episodes, keep those graded correct, dedup",
        description=(sft_data.__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", default=None,
                   help="designer-side policy spec: http(s) URL, vllm:MODEL, HF id/path, 'default', a checkpoint")
    p.add_argument("--designs", default="", help="comma-separated fixed designs (library names or script files)")
    p.add_argument("--executor", default=None, help="executor spec or rule:NAME (default: the teacher)")
    p.add_argument("--env", action="append", default=[], metavar="ID", help="env id (repeatable); training split")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help="gym.make keyword (JSON value) for --env")
    p.add_argument("--config", default=None,
                   help="take the envs (env/envs) and designer prompt from this training config instead")
    p.add_argument("--tasks", type=int, default=16, help="first N training tasks per env (default 16)")
    p.add_argument("--samples", type=int, default=1, help="episodes per task and design (default 1)")
    p.add_argument("--min-reward", type=float, default=1.0, help="keep episodes with reward >= this (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import json
    import sys

    from mx_train.cli.eval import env_kwargs
    from mx_train.sft_data import SftDataConfig, envs_from_train_config, generate_sft_data

    try:
        if args.config:
            envs, prompt = envs_from_train_config(args.config)
        else:
            kw = env_kwargs(args.env_arg)
            envs, prompt = [(e, dict(kw)) for e in args.env], {}
        cfg = SftDataConfig(
            envs=envs, teacher=args.teacher, designs=[d.strip() for d in args.designs.split(",") if d.strip()],
            executor=args.executor, tasks=args.tasks, samples=args.samples, min_reward=args.min_reward,
            seed=args.seed, batch_size=args.batch_size, designer_prompt=prompt,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        )
        counts = generate_sft_data(cfg, args.out, progress=True)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"mx sft-data: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    print(f"wrote {counts['designer'] + counts['executor']} examples to {args.out}")
    return 0
