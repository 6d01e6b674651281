"""Build an :class:`~mx_train.eval.trace.EpisodeTrace` from a played episode.

The source is a :class:`mx_agents.rollout.EpisodeRecord` (every turn as the policy played it, with
token ids) and the env's final ``info``. Info keys read, each optional: ``correct``, ``reward``,
``termination_reason``, ``design`` (the extracted script), ``design_valid``, ``answer``/
``answer_text``, ``error``, ``agents`` (sub-agents in creation order), ``tool_calls`` (dicts or
:class:`~mx_envs.mas.protocol.ToolCall`), ``integrity`` (:mod:`mx_envs.envs.integrity`), ``task`` (a
:class:`~mx_envs.tasks.record.Task` or its dict) or ``task_prompt``/``reference``.

Tool runs carry no call index; one is inferred: a tool run of agent A sits after A's call whose
*next* call starts with the tool's output (the library sends "Python output..." back as the next
user message), matched in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mx_train.eval.design_structure import classify_design
from mx_train.eval.trace import CallRecord, EpisodeTrace, ToolRecord

_TOOL_OUTPUT_PREFIX = "Python output"


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return {}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _calls(record: Any) -> list[CallRecord]:
    calls = []
    for t in record.turns:
        calls.append(
            CallRecord(
                index=int(t.turn),
                role=str(t.role),
                agent=str(t.agent),
                messages=[{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in t.messages],
                reply=str(t.text),
                prompt_tokens=len(t.prompt_ids or []),
                response_tokens=len(t.response_ids or []),
                finish_reason=str(t.finish_reason or ""),
                source=str(getattr(t, "source", "") or ""),
            )
        )
    return calls


def _tools(info: Mapping[str, Any], calls: list[CallRecord]) -> list[ToolRecord]:
    raw = info.get("tool_calls") or []
    tools = []
    for item in raw:
        d = _as_dict(item)
        if not d:
            continue
        tools.append(
            ToolRecord(
                agent=str(d.get("agent", "")),
                tool=str(d.get("tool", "")),
                code=str(d.get("code", "")),
                verdict=_text(d.get("verdict")) or "",
                stdout=str(d.get("stdout", "")),
                stderr=str(d.get("stderr", "")),
                after_call=d.get("after_call"),
            )
        )
    _place_tools(tools, calls)
    return tools


def _place_tools(tools: list[ToolRecord], calls: list[CallRecord]) -> None:
    by_agent: dict[str, list[CallRecord]] = {}
    for c in calls:
        if c.role != "designer":
            by_agent.setdefault(c.agent, []).append(c)
    slots: dict[str, list[int]] = {}
    for agent, cs in by_agent.items():
        slots[agent] = [
            prev.index
            for prev, nxt in zip(cs, cs[1:], strict=False)
            if nxt.messages and nxt.messages[-1]["content"].startswith(_TOOL_OUTPUT_PREFIX)
        ]
    for t in tools:
        if t.after_call is None and slots.get(t.agent):
            t.after_call = slots[t.agent].pop(0)


def _task_fields(info: Mapping[str, Any], calls: list[CallRecord], task: Any) -> tuple[str, str, str | None]:
    task = task if task is not None else info.get("task")
    d = _as_dict(task) if task is not None else {}
    prompt = d.get("prompt") or info.get("task_prompt")
    if prompt is None:  # the designer's last user message holds the task
        designer = next((c for c in calls if c.role == "designer"), None)
        users = [m["content"] for m in (designer.messages if designer else []) if m["role"] == "user"]
        prompt = users[-1] if users else ""
    reference = d.get("answer", info.get("reference"))
    return str(prompt), str(d.get("kind", info.get("kind", "")) or ""), _text(reference)


def build_trace(
    record: Any,
    *,
    env_id: str,
    task_id: str,
    sample: int,
    policy: str = "",
    executor: str = "",
    wall_s: float = 0.0,
    task: Any = None,
) -> EpisodeTrace:
    """The trace of one finished episode (``record``: a rollout ``EpisodeRecord``; ``task``: its
    :class:`~mx_envs.tasks.record.Task`, for the prompt and reference, else read from ``info``)."""
    info: Mapping[str, Any] = record.info or {}
    calls = _calls(record)
    designer = next((c for c in calls if c.role == "designer"), None)
    script = info.get("design")
    if script is None and designer is not None:
        from mx_agents.policies.design_prompt import extract_script

        script = extract_script(designer.reply)
    agents = [str(a) for a in (info.get("agents") or [])]
    if not agents:
        for c in calls:
            if c.role != "designer" and c.agent not in agents:
                agents.append(c.agent)
    reason = record.termination_reason or ""
    valid = info.get("design_valid")
    # An env without the flag (not a MetaAgentXEnv): a design is valid when it ran to completion.
    design_valid = bool(valid) if valid is not None else reason == "completed"
    # Runtime agents refine the static count only when the script got to create some.
    structure = classify_design(script, list(info["agents"]) if info.get("agents") else None)
    prompt, kind, reference = _task_fields(info, calls, task)
    answer = info.get("answer_text", info.get("answer"))
    return EpisodeTrace(
        episode_id=str(record.episode_id),
        env_id=env_id,
        task_id=task_id,
        sample=sample,
        seed=record.seed,
        task_prompt=prompt,
        task_kind=kind,
        reference=reference,
        policy=policy,
        executor=executor,
        design_text=designer.reply if designer else "",
        design_script=script,
        structure=structure.to_dict(),
        agents=agents,
        calls=calls,
        tool_calls=_tools(info, calls),
        answer=_text(answer),
        correct=bool(record.correct),
        reward=float(record.reward),
        termination_reason=reason,
        design_valid=design_valid,
        error=str(record.error or info.get("error") or ""),
        wall_s=wall_s,
        integrity=dict(info.get("integrity") or {}),
    )
