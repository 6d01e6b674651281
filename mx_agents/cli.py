"""``mx episode``: run one episode of an env with a policy and print its summary.

Only argparse is imported at module level (``mx --help`` stays fast); the handler imports the rest.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "episode",
        help="run one episode of a MetaAgentX env with a policy and print its summary",
        description=(
            "Run one design + execution episode and print reward, termination reason, number of LLM "
            "calls, whether the design was valid and the answer. SPEC: 'default' (embedded "
            "SmolLM2-135M-Instruct), an HF model id or path (a checkpoint directory works), an "
            "http(s):// URL of an OpenAI-compatible server, 'vllm:MODEL', 'design:NAME' (a library "
            "design: single, vote, reflection, debate, ensemble_judge, tool_solver; --executor answers "
            "its agents), 'scripted' (single-agent design, fixed replies, no model) or 'random[:SEED]'."
        ),
    )
    p.add_argument("env_id", metavar="ENV_ID", help="e.g. MetaAgentX-Arithmetic-v0 (see `mx envs`)")
    p.add_argument("--policy", default="default", metavar="SPEC", help="designer (and executor) policy")
    p.add_argument("--executor", default=None, metavar="SPEC", help="executor policy (default: same as --policy)")
    p.add_argument("--seed", type=int, default=0, help="env reset seed and sampling seed (default 0)")
    p.add_argument("--task-id", default=None, help="pin the task (default: drawn from the seed)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="T",
                   help="token budget of each executor reply (and of the design unless --design-tokens)")
    p.add_argument("--design-tokens", type=int, default=None, metavar="T",
                   help="token budget of the design (default: --max-new-tokens)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature of both roles")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--device", default=None, help="backend device for local models (cpu, cuda, ...)")
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                   help="the chat template's enable_thinking switch (Qwen3); default: the template's own")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra gym.make kwarg (VALUE parsed as JSON when it can be), repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace", action="store_true", help="include every turn (messages, reply) in the output")
    p.set_defaults(func=run)


def env_kwargs(items: list[str] | None, flag: str = "--env-kwarg") -> dict:
    """``FLAG KEY=VALUE`` items as gym.make keywords (a value is JSON when it parses as JSON); also
    ``mx eval --env-arg`` and ``mx sft-data --env-arg``."""
    import json

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import sys

    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the env ids
    from mx_agents.backends.base import BackendError
    from mx_agents.policies.spec import parse_policy_spec
    from mx_agents.rollout import RolloutStats, run_episodes
    from mx_envs.cli_output import emit_json

    try:
        from mx_envs.envs.registration import check_env_id

        check_env_id(args.env_id)  # before a model loads: a typo costs no model load
        make_kwargs = env_kwargs(args.env_kwarg)
        backend_kw = {"device": args.device} if args.device else None
        policy = parse_policy_spec(
            args.policy,
            args.executor,
            max_new_tokens=args.max_new_tokens,
            designer_max_new_tokens=args.design_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            backend_kw=backend_kw,
            thinking=args.thinking,
        )
        env = gym.make(args.env_id, **make_kwargs)
    except (ValueError, TypeError, LookupError, OSError, RuntimeError, gym.error.Error) as exc:
        print(f"mx episode: {exc}", file=sys.stderr)
        return 2
    stats = RolloutStats()
    options = {"task_id": args.task_id} if args.task_id is not None else None
    try:
        (record,) = run_episodes([env], policy, seeds=[args.seed], options=[options], progress=False, stats=stats)
    except BackendError as exc:
        print(f"mx episode: the model failed: {exc}", file=sys.stderr)
        return 3
    finally:
        env.close()
    summary = {"env_id": args.env_id, "policy": policy.name, **record.summary(), "wall_s": round(stats.wall_s, 3)}
    warnings = turn_warnings(record.turns)
    if warnings:
        summary["warnings"] = warnings
    if args.trace:
        summary["trace"] = [
            {"turn": t.turn, "role": t.role, "agent": t.agent, "messages": t.messages, "reply": t.text,
             "source": t.source, "response_tokens": len(t.response_ids or []),
             **({"token_ids": bool(t.response_ids), "logprobs": t.logprobs is not None} if t.from_llm else {}),
             **({"warning": t.metadata["warning"]} if t.metadata.get("warning") else {})}
            for t in record.turns
        ]
        summary["design"] = record.design
    if args.json:
        emit_json(summary, ensure_ascii=False, default=str)
    else:
        for key in ("env_id", "task_id", "policy", "reward", "correct", "termination_reason", "design_valid",
                    "llm_calls", "turns", "answer", "extracted", "wall_s"):
            print(f"{key:>18}: {summary[key]}")
        if record.error:
            print(f"{'error':>18}: {record.error}")
        for w in warnings:
            print(f"{'warning':>18}: {w}")
        if args.trace:
            for t in summary["trace"]:
                print(f"--- turn {t['turn']} {t['role']}:{t['agent']} ({t['source']}) ---\n{t['reply']}")
    return 1 if record.error else 0


def turn_warnings(turns: list) -> list[str]:
    """One line per LLM turn that cannot be used for token-level training as played: missing
    response token ids or logprobs (e.g. a server without vLLM's extensions), with the backend's own
    warning when it gave one."""
    out = []
    for t in turns:
        if not t.from_llm:
            continue
        missing = [name for name, ok in (("token ids", bool(t.response_ids) or not t.text),
                                         ("logprobs", t.logprobs is not None)) if not ok]
        if missing or t.metadata.get("warning"):
            what = t.metadata.get("warning") or f"no {' and no '.join(missing)} returned"
            out.append(f"turn {t.turn} ({t.role}:{t.agent}): {what}")
    return out
