"""Aggregate per-episode records into ``results.json`` and ``results.md``.

An *episode record* is one line of ``episodes.jsonl`` (see :class:`EpisodeRecord`): the outcome and
cost of one (env, task, sample) episode plus the path of its trace. Per env the report gives:

- ``accuracy``: mean pass@1 over tasks (each task's fraction of correct samples), with a 95 %
  percentile-bootstrap interval over tasks (:func:`mx_train.eval.stats.bootstrap_accuracy`);
- ``design_valid_rate``: fraction of episodes whose design ran to completion (termination
  ``completed``: it parsed, had ``forward`` and returned an answer within budgets);
- ``mean_llm_calls``, ``mean_prompt_tokens``, ``mean_response_tokens``, ``mean_tokens`` per
  episode, the designer's call included;
- ``structures``: fraction of episodes per design family (:mod:`mx_train.eval.design_structure`,
  ``invalid`` when no script parsed) and ``termination_reasons`` counts.

``overall`` averages the per-env accuracies (each benchmark weighs the same, like the paper's
"Avg." column) and pools episodes for the other figures.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mx_train.eval.design_structure import INVALID, STRUCTURES
from mx_train.eval.stats import bootstrap_accuracy
from mx_train.eval.trace import upgrade_stored


@dataclass
class EpisodeRecord:
    env_id: str
    task_id: str
    sample: int
    correct: bool
    reward: float
    design_valid: bool
    termination_reason: str
    structure: str
    llm_calls: int
    prompt_tokens: int
    response_tokens: int
    wall_s: float = 0.0
    trace: str = ""  # path relative to the output directory
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.env_id, self.task_id, self.sample)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeRecord:
        d = upgrade_stored(d)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def read_records(path: Path) -> list[EpisodeRecord]:
    """Records from an ``episodes.jsonl``; a torn last line (killed mid-write) is ignored.

    A later record for the same (env, task, sample) replaces an earlier one.
    """
    if not path.is_file():
        return []
    by_key: dict[tuple[str, str, int], EpisodeRecord] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = EpisodeRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}:{i + 1}: not an episode record ({exc})") from None
        by_key[rec.key] = rec
    return list(by_key.values())


def _summary(records: Sequence[EpisodeRecord], seed: int) -> dict[str, Any]:
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        outcomes[r.task_id].append(bool(r.correct))
    acc = bootstrap_accuracy(outcomes, seed=seed)
    n = len(records)
    counts = Counter(r.structure for r in records)
    families = [*STRUCTURES, INVALID]
    return {
        "accuracy": acc.to_dict(),
        "n_tasks": acc.n_tasks,
        "n_episodes": n,
        "design_valid_rate": (sum(r.design_valid for r in records) / n) if n else 0.0,
        "mean_llm_calls": (sum(r.llm_calls for r in records) / n) if n else 0.0,
        "mean_prompt_tokens": (sum(r.prompt_tokens for r in records) / n) if n else 0.0,
        "mean_response_tokens": (sum(r.response_tokens for r in records) / n) if n else 0.0,
        "mean_tokens": (sum(r.prompt_tokens + r.response_tokens for r in records) / n) if n else 0.0,
        "mean_wall_s": (sum(r.wall_s for r in records) / n) if n else 0.0,
        "structures": {k: (counts.get(k, 0) / n if n else 0.0) for k in families},
        "structure_counts": {k: counts.get(k, 0) for k in families},
        "termination_reasons": dict(sorted(Counter(r.termination_reason for r in records).items())),
    }


def summarize(
    records: Iterable[EpisodeRecord], config: dict[str, Any], *, seed: int = 0
) -> dict[str, Any]:
    """The ``results.json`` document for ``records`` (grouped by env, plus ``overall``)."""
    recs = list(records)
    by_env: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for r in recs:
        by_env[r.env_id].append(r)
    envs = {env: _summary(rs, seed) for env, rs in sorted(by_env.items())}
    overall = _summary(recs, seed)
    if envs:
        overall["accuracy"]["mean"] = sum(e["accuracy"]["mean"] for e in envs.values()) / len(envs)
        overall["accuracy"]["macro_over_envs"] = True
    return {"config": config, "envs": envs, "overall": overall}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the config, a per-env table, and the design-structure distribution."""
    cfg = results.get("config", {})
    lines = ["# Evaluation results", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in cfg.items()]
    lines += [
        "",
        "Accuracy = mean pass@1 over tasks (%), 95 % bootstrap interval over tasks in brackets.",
        "",
        "| env | tasks | episodes | accuracy | design valid % | LLM calls/ep | tokens/ep (prompt+reply) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    rows = [*results.get("envs", {}).items()]
    if len(rows) > 1:
        rows.append(("**overall**", results["overall"]))
    for env, s in rows:
        a = s["accuracy"]
        lines.append(
            f"| {env} | {s['n_tasks']} | {s['n_episodes']} | {_pct(a['mean'])} "
            f"[{_pct(a['low'])}, {_pct(a['high'])}] | {_pct(s['design_valid_rate'])} | "
            f"{s['mean_llm_calls']:.2f} | {s['mean_tokens']:.0f} "
            f"({s['mean_prompt_tokens']:.0f}+{s['mean_response_tokens']:.0f}) |"
        )
    families = [*STRUCTURES, INVALID]
    lines += ["", "## Design structures (% of episodes)", "",
              "| env | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for env, s in rows:
        lines.append(f"| {env} | " + " | ".join(_pct(s["structures"][k]) for k in families) + " |")
    lines += ["", "## Termination reasons (episodes)", ""]
    for env, s in rows:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["termination_reasons"].items()) or "-"
        lines.append(f"- {env}: {reasons}")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / "results.json", out_dir / "results.md"
    jp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    mp.write_text(render_markdown(results), encoding="utf-8")
    return jp, mp
