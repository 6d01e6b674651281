"""``mx eval``, ``mx table`` and ``mx trace``: evaluation runs, the baselines table, trace pages."""

from __future__ import annotations

import argparse

POLICY_HELP = (
    "policy spec: 'default' (embedded SmolLM2), an HF id/path or checkpoint dir, an http(s) URL, "
    "'design:NAME' (a fixed library design), 'scripted', 'random[:SEED]'"
)


def env_kwargs(items: list[str] | None) -> dict:
    """``--env-arg KEY=VALUE`` items as gym.make keywords (a value is JSON when it parses as JSON)."""
    from mx_agents.cli import env_kwargs as parse

    return parse(items, "--env-arg")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", "-K", type=int, default=None, help="samples per task (default 1, or the protocol's)")
    p.add_argument("--seed", type=int, default=0, help="seed of env episodes and sampling (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of each env")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on every reply (executor and designer; default: the policy's, or the protocol's)")
    p.add_argument("--designer-max-new-tokens", type=int, default=None, help="cap on design replies only")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature of both roles (default: the policy's, or the protocol's)")
    p.add_argument("--protocol", choices=["paper"], default=None,
                   help="evaluation preset. paper: LiveCodeBench (v6 window), APPS test[:100], CodeContests "
                        "test[:100], AIME24, AIME25, OlympiadBench[:100]; 1 sample per task; temperature 1.0, "
                        "top-p 0.9, top-k 20, repetition penalty 1.1 for both roles; 8192 new tokens per reply. ENV_IDs, when given, "
                        "pick a subset; explicit options override the preset (see mx_train/eval/protocols.py)")
    p.add_argument("--lcb-version", default="v6",
                   help="LiveCodeBench set of --protocol paper: v6 (default: the problems of the v6 release "
                        "window, as the paper took it) or release_v6 (cumulative v1-v6), or any vN/vN_vM tag")
    p.add_argument("--batch-size", type=int, default=8, help="episodes run together, LLM turns batched (default 8)")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE",
                   help="keyword for gym.make (JSON value), e.g. --env-arg fixture=true; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-trained-settings", action="store_true",
                   help="play a training checkpoint with the env's designer prompt and generic sampling instead "
                        "of the prompt and sampling it was trained with (recorded in the checkpoint)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a policy on env(s): accuracy, design validity, cost, design structures",
        description=(
            "Run K samples per task and write OUT/results.json, OUT/results.md, OUT/episodes.jsonl and "
            "one trace per episode under OUT/traces/. Re-running with the same --out resumes."
        ),
    )
    p.add_argument("env_ids", nargs="*", metavar="ENV_ID", help="e.g. MetaAgentX-GSM8K-v0 (optional with --protocol)")
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--executor", default=None, help="executor spec (default: the policy plays both roles; "
                   "for design:NAME the embedded model)")
    p.add_argument("--out", default=None, help="output directory (default runs/eval/<policy>)")
    _add_run_options(p)
    p.set_defaults(func=run_eval_cmd)

    t = subparsers.add_parser(
        "table",
        help="baselines table: fixed designs and a learned designer across benchmarks (paper-shaped)",
        description=(
            "Evaluate each fixed design and the learned designer (one mx eval run each, under OUT/runs/, "
            "resumed when present) and write OUT/table.md and OUT/table.json."
        ),
    )
    t.add_argument("--envs", required=True, help="comma-separated env ids (the table's columns)")
    t.add_argument("--designs", default="single,vote,reflection,debate",
                   help="comma-separated library designs (rows; 'single' is the Single Agent row)")
    t.add_argument("--learned", default=None, help="the learned designer's policy spec (the MetaAgentX row)")
    t.add_argument("--learned-executor", default=None,
                   help="executor of the learned row (default: the learned model plays both roles)")
    t.add_argument("--executor", default="default", help="executor spec of the fixed designs (default 'default')")
    t.add_argument("--single-grpo", default=None, metavar="SPEC",
                   help="'Single Agent + GRPO' row: an executor checkpoint trained with the design fixed to "
                        "single (e.g. mx train --config configs/baseline_single_grpo_cpu.yaml), played under single")
    t.add_argument("--select-design", action="store_true",
                   help="'Best library design' row: the --designs design with the best validation accuracy")
    t.add_argument("--adas-rounds", type=int, default=0,
                   help="ADAS-style search row: rounds of meta-agent proposals (0: no row; default 0)")
    t.add_argument("--meta", default=None, help="meta-agent model spec of the search (default: --executor)")
    t.add_argument("--val-split", default="train",
                   help="split of the validation slice for selection and search (default train: never test tasks)")
    t.add_argument("--val-limit", type=int, default=10, help="tasks per env in the validation slice (default 10)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--no-run", action="store_true", help="only tabulate existing run directories")
    _add_run_options(t)
    t.set_defaults(func=run_table_cmd)

    r = subparsers.add_parser(
        "trace",
        help="render an episode trace (from mx eval's traces/) as a self-contained HTML page",
        description=(
            "Render one episode trace JSON (written by `mx eval` under OUT/traces/) as a self-contained "
            "HTML page: the task, the designer's prompt and script, every sub-agent turn with its "
            "messages and reply, tool calls, the final answer and its grade."
        ),
    )
    r.add_argument("trace_file", metavar="TRACE_FILE", help="a trace JSON file")
    r.add_argument("--html", required=True, metavar="OUT", help="HTML file to write")
    r.set_defaults(func=run_trace_cmd)


def _check_env_ids(env_ids: list[str]) -> None:
    """Every id registered, else a ConfigError with the closest ids (reported by `mx` in one line)."""
    from mx_envs.envs.registration import check_env_id

    for env_id in env_ids:
        check_env_id(env_id)


def _config(args: argparse.Namespace, env_ids: list[str], policy: str, executor: str | None):
    from mx_train.eval.runner import EvalConfig

    extra: dict = {}
    samples, max_new, temperature = args.samples, args.max_new_tokens, args.temperature
    if getattr(args, "protocol", None):
        from mx_train.eval.protocols import get_protocol

        proto = get_protocol(args.protocol, lcb_version=args.lcb_version)
        unknown = [e for e in env_ids if e not in proto.envs]
        if unknown:
            raise ValueError(f"{unknown} are not in protocol {proto.name!r}; its envs: {', '.join(proto.envs)}")
        env_ids = env_ids or list(proto.envs)
        samples = proto.samples if samples is None else samples
        max_new = proto.max_new_tokens if max_new is None else max_new
        temperature = proto.temperature if temperature is None else temperature
        limits = {e: proto.limits.get(e) for e in env_ids}
        if args.limit is not None:  # a CPU slice: at most --limit tasks of each benchmark
            limits = {e: args.limit if v is None else min(v, args.limit) for e, v in limits.items()}
        extra = {"per_env_kwargs": {e: proto.envs[e] for e in env_ids}, "per_env_limit": limits,
                 "top_p": proto.top_p, "top_k": proto.top_k,
                 "repetition_penalty": proto.repetition_penalty, "protocol": proto.name}
    if not env_ids:
        raise ValueError("give ENV_ID(s) or --protocol")
    return EvalConfig(
        env_ids=env_ids, policy=policy, executor=executor, samples=1 if samples is None else samples,
        seed=args.seed, limit=args.limit, max_new_tokens=max_new,
        designer_max_new_tokens=args.designer_max_new_tokens, temperature=temperature,
        batch_size=args.batch_size, env_kwargs=env_kwargs(args.env_arg),
        trained_settings=not getattr(args, "no_trained_settings", False), **extra,
    )


def run_eval_cmd(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_train.eval.runner import run_eval
    from mx_train.eval.trace import slug

    try:
        _check_env_ids(args.env_ids)
        cfg = _config(args, list(args.env_ids), args.policy, args.executor)
        out = Path(args.out or Path("runs") / "eval" / slug(args.policy))
        results = run_eval(cfg, out, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"mx eval: {exc}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {results['overall']['n_episodes']} traces "
          f"under {out / 'traces'}")
    return 0


def run_table_cmd(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_train.eval.baselines_table import (
        TableRow,
        build_table,
        plan_rows,
        render_table_markdown,
        write_table,
    )
    from mx_train.eval.runner import run_eval

    env_ids = [e.strip() for e in args.envs.split(",") if e.strip()]
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not env_ids:
        print("mx table: --envs is empty", file=sys.stderr)
        return 2
    _check_env_ids(env_ids)  # before any row runs (a typo in the last column must not cost the first rows)
    out = Path(args.out)
    rows = plan_rows(designs, args.learned, args.executor, args.learned_executor, out)
    learned_rows = [r for r in rows if r.label == "MetaAgentX"]
    rows = [r for r in rows if r.label != "MetaAgentX"]
    try:
        if args.single_grpo:
            rows.append(TableRow("Single Agent + GRPO", "design:single", args.single_grpo,
                                 out / "runs" / "single_grpo"))
        if not args.no_run:
            for row in rows + learned_rows:
                print(f"== {row.label}: {row.policy}" + (f" (executor {row.executor})" if row.executor else ""))
                run_eval(_config(args, env_ids, row.policy, row.executor), row.run_dir,
                         progress=not args.no_progress)
        if args.select_design or args.adas_rounds > 0:
            from mx_train.eval.design_search import search_rows

            rows += search_rows(
                _config(args, env_ids, "design:single", args.executor), designs, out,
                executor=args.executor, select_design=args.select_design, adas_rounds=args.adas_rounds,
                meta=args.meta, val_split=args.val_split, val_limit=args.val_limit, seed=args.seed,
                run=not args.no_run, progress=not args.no_progress,
            )
        rows += learned_rows
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"mx table: {exc}", file=sys.stderr)
        return 2
    table = build_table(rows, env_ids)
    jp, mp = write_table(out, table)
    print(render_table_markdown(table))
    print(f"wrote {jp} and {mp}")
    return 0


def run_trace_cmd(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_train.eval.trace import load_trace
    from mx_train.eval.trace_html import render_trace_html

    try:
        trace = load_trace(args.trace_file)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"mx trace: {exc}", file=sys.stderr)
        return 2
    out = Path(args.html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_trace_html(trace), encoding="utf-8")
    print(f"wrote {out}")
    return 0
