"""The designer-facing API reference (``API.md``), with the budgets of the actual episode."""

from __future__ import annotations

import re
from importlib import resources

from mx_envs.mas.protocol import Budgets

_BUDGET_RE = re.compile(r"at most \d+ LLM calls, \d+ agents, [\d.]+ s of script time")


def api_reference(budgets: Budgets | None = None) -> str:
    """The text of ``API.md``; with ``budgets``, its budget line states those numbers."""
    text = resources.files("mx_envs.mas").joinpath("API.md").read_text(encoding="utf-8")
    if budgets is not None:
        line = (
            f"at most {budgets.max_llm_calls} LLM calls, {budgets.max_agents} agents, "
            f"{budgets.wall_s:g} s of script time"
        )
        text = _BUDGET_RE.sub(line, text, count=1)
    return text
