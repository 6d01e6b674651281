"""``mx envs [--json]``: the registered env ids and how many tasks each has where its data is available."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "envs",
        help="list the MetaAgentX env ids and their task counts",
        description=(
            "List the registered gymnasium env ids (gym.make('MetaAgentX-...-v0')) with their dataset, "
            "kind and the number of tasks found locally (MX_DATA_DIR, packaged data; the hub is not contacted) and in the packaged "
            "fixture set. Sources that are not available show why."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--split", default=None, help="dataset split to count (default: each dataset's default)")
    p.set_defaults(func=_run)


def _count(dataset: str, **kwargs: object) -> tuple[int | None, str]:
    from mx_envs.tasks import load_tasks

    try:
        return len(load_tasks(dataset, **kwargs)), ""
    except Exception as exc:  # noqa: BLE001 - any unavailable source is reported, not raised
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, first[:200]


def env_rows(split: str | None = None) -> list[dict[str, object]]:
    """One row per registered id: ``env_id, dataset, kind, description, tasks, fixture_tasks, note``."""
    from mx_envs.envs.registration import ENVS

    rows = []
    for entry in ENVS:
        kwargs: dict[str, object] = {"hub": False}  # counting must not start downloads
        if split:
            kwargs["split"] = split
        n, why = _count(entry.dataset, **kwargs)
        n_fix, why_fix = _count(entry.dataset, fixture=True)
        rows.append(
            {
                "env_id": entry.env_id,
                "dataset": entry.dataset,
                "kind": entry.kind,
                "description": entry.description,
                "tasks": n,
                "fixture_tasks": n_fix,
                "note": why or (f"fixture: {why_fix}" if why_fix else ""),
            }
        )
    return rows


def _run(args: argparse.Namespace) -> int:
    from mx_envs.cli_output import emit_json

    rows = env_rows(args.split)
    if args.json:
        emit_json({"envs": rows}, indent=2)
        return 0
    print(f"{'env id':<30} {'kind':<5} {'tasks':>6} {'fixture':>7}  note")
    for r in rows:
        tasks = "-" if r["tasks"] is None else str(r["tasks"])
        fix = "-" if r["fixture_tasks"] is None else str(r["fixture_tasks"])
        print(f"{r['env_id']:<30} {r['kind']:<5} {tasks:>6} {fix:>7}  {r['note']}")
    return 0
