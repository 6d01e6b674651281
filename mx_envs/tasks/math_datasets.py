"""Row parsers for math datasets (every public format we know of maps to one :class:`Task`)."""

from __future__ import annotations

from typing import Any

from mx_envs.tasks.cleanup import normalize_answer, strip_instructions
from mx_envs.tasks.math_extract import last_boxed
from mx_envs.tasks.record import Task

_PROBLEM_KEYS = ("problem", "question", "Problem", "Question", "prompt", "input")
_ANSWER_KEYS = ("answer", "final_answer", "expected_answer", "Answer", "gt_answer", "ground_truth", "target")
_META_KEYS = ("year", "level", "subject", "type", "difficulty", "url", "source", "data_source", "unique_id")


def _problem_text(row: dict[str, Any]) -> str | None:
    for key in _PROBLEM_KEYS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and isinstance(value[-1], dict):  # chat messages (verl format)
            users = [m.get("content", "") for m in value if m.get("role") == "user"]
            if users:
                return users[-1]
    return None


def _answer_text(row: dict[str, Any]) -> str | None:
    value: Any = None
    for key in _ANSWER_KEYS:
        if row.get(key) not in (None, "", []):
            value = row[key]
            break
    if value is None and isinstance(row.get("reward_model"), dict):
        value = row["reward_model"].get("ground_truth")
    if value is None and isinstance(row.get("solution"), str):
        value = last_boxed(row["solution"])
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else ", ".join(str(v) for v in value)
    if value is None:
        return None
    text = str(value)
    if "####" in text:  # GSM8K: worked solution, then "#### <answer>"
        text = text.rsplit("####", 1)[1]
    return normalize_answer(text)


def math_task(row: dict[str, Any], index: int, dataset: str, split: str) -> Task:
    """A math :class:`Task` from a row in any of the supported public formats."""
    problem = _problem_text(row)
    answer = _answer_text(row)
    if problem is None or answer is None:
        raise ValueError(
            f"{dataset} row {index}: need a problem ({'/'.join(_PROBLEM_KEYS)}) and an answer "
            f"({'/'.join(_ANSWER_KEYS)}); got keys {sorted(row)}"
        )
    rid = row.get("id", row.get("unique_id", row.get("problem_id", index)))
    meta = {k: row[k] for k in _META_KEYS if k in row and isinstance(row[k], str | int | float)}
    meta["row"] = index
    return Task(id=f"{dataset}/{split}/{rid}", dataset=dataset, split=split, kind="math",
                prompt=strip_instructions(problem), answer=answer, metadata=meta)
