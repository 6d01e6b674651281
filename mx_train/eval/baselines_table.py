"""The paper-shaped baselines table: fixed designs and a learned designer across benchmarks.

Rows: "Single Agent" (``design:single``), one row per other fixed library design, and the learned
designer ("MetaAgentX"); columns: one per benchmark plus the average over benchmarks; cells:
accuracy (mean pass@1, %). Each row is one ``mx eval`` run directory under ``OUT/runs/ROW/``, so
an interrupted table resumes, and a row whose directory already holds every episode is not rerun.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mx_train.eval.trace import slug

DESIGN_LABELS: dict[str, str] = {
    "single": "Single Agent",
    "vote": "Self-Consistency (vote)",
    "reflection": "Self-Refine (reflection)",
    "debate": "LLM Debate",
    "ensemble_judge": "Ensemble + Judge",
    "tool_solver": "Tool-using Solver",
}


@dataclass(frozen=True)
class TableRow:
    label: str
    policy: str  # policy spec for mx eval
    executor: str | None
    run_dir: Path


def benchmark_name(env_id: str) -> str:
    """``MetaAgentX-GSM8K-v0`` -> ``GSM8K``."""
    name = env_id.removeprefix("MetaAgentX-")
    head, sep, tail = name.rpartition("-v")
    return head if sep and tail.isdigit() else name


def plan_rows(designs: list[str], learned: str | None, executor: str, learned_executor: str | None,
              out: Path) -> list[TableRow]:
    """Single Agent first, then the other fixed designs in the order given, then the learned designer."""
    ordered = sorted(designs, key=lambda d: d != "single")
    rows = [
        TableRow(DESIGN_LABELS.get(d, f"design:{d}"), f"design:{d}", executor, out / "runs" / slug(f"design_{d}"))
        for d in ordered
    ]
    if learned:
        rows.append(TableRow("MetaAgentX", learned, learned_executor, out / "runs" / slug(f"learned_{learned}")))
    return rows


def read_row(run_dir: Path, env_ids: list[str]) -> dict[str, dict[str, float] | None]:
    """Accuracy per env from a run's ``results.json`` (``None`` where it has no episodes)."""
    path = run_dir / "results.json"
    envs: dict[str, Any] = {}
    if path.is_file():
        envs = json.loads(path.read_text(encoding="utf-8")).get("envs", {})
    out: dict[str, dict[str, float] | None] = {}
    for e in env_ids:
        s = envs.get(e)
        out[e] = None if not s or not s.get("n_episodes") else {
            "mean": s["accuracy"]["mean"], "low": s["accuracy"]["low"], "high": s["accuracy"]["high"],
            "n_tasks": s["n_tasks"], "n_episodes": s["n_episodes"], "design_valid_rate": s["design_valid_rate"],
        }
    return out


def build_table(rows: list[TableRow], env_ids: list[str]) -> dict[str, Any]:
    """The table document: columns, and per row the per-benchmark accuracy and the average."""
    table_rows = []
    for row in rows:
        cells = read_row(row.run_dir, env_ids)
        present = [c["mean"] for c in cells.values() if c is not None]
        table_rows.append({
            "label": row.label,
            "policy": row.policy,
            "executor": row.executor,
            "run_dir": str(row.run_dir),
            "scores": cells,
            # The average is over benchmarks; it is only defined when every benchmark has a score.
            "average": (sum(present) / len(present)) if present and len(present) == len(env_ids) else None,
        })
    return {"columns": [benchmark_name(e) for e in env_ids], "env_ids": env_ids, "rows": table_rows}


def render_table_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    lines = [
        "| Method | " + " | ".join(cols) + " | Avg. |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for row in table["rows"]:
        cells = []
        for env in table["env_ids"]:
            c = row["scores"].get(env)
            cells.append("-" if c is None else f"{100 * c['mean']:.1f}")
        avg = row["average"]
        label = f"**{row['label']}**" if row["label"] == "MetaAgentX" else row["label"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if avg is None else f'{100 * avg:.1f}'} |")
    lines.append("")
    lines.append("Accuracy = mean pass@1 (%) over tasks; per-row run directories hold intervals, traces and costs.")
    return "\n".join(lines) + "\n"


def write_table(out: Path, table: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "table.json", out / "table.md"
    jp.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    mp.write_text(render_table_markdown(table), encoding="utf-8")
    return jp, mp
