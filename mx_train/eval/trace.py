"""The episode trace: everything that happened in one evaluated episode, as one JSON document.

A trace records the task, the designer's raw output and the extracted script, every LLM call in
order (who was asked, the full chat it saw, its reply, token counts), every tool run, the final
answer and the verdict. ``mx eval`` writes one file per episode under ``OUT/traces/``;
``mx trace`` renders one as HTML. The format is versioned by :data:`TRACE_SCHEMA`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRACE_SCHEMA = "mx-trace/1"
# Keys renamed since mx-trace/1 files were first written: stored traces and episode records
# (``episodes.jsonl``) keep their old spelling, so the readers of stored files map it.
RENAMED_KEYS = {"valid_design": "design_valid"}


def upgrade_stored(d: dict[str, Any]) -> dict[str, Any]:
    """A stored trace or episode record with the keys of this version (old spellings mapped)."""
    out = dict(d)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    return out


@dataclass
class CallRecord:
    """One LLM call: the designer's (index 0 when present) or a sub-agent's."""

    index: int  # order in the episode, designer included
    role: str  # "designer" | "executor"
    agent: str  # "designer" or the sub-agent's name
    messages: list[dict[str, str]]
    reply: str
    prompt_tokens: int = 0
    response_tokens: int = 0
    finish_reason: str = ""
    source: str = "llm"  # who answered: "llm", "fixed" (a library design), "scripted", "random"

    @property
    def counts_as_llm_call(self) -> bool:
        """A fixed design's designer turn is not a model call; every other answered turn is."""
        return self.source != "fixed"


@dataclass
class ToolRecord:
    """One tool run made on behalf of a sub-agent."""

    agent: str
    tool: str
    code: str
    verdict: str
    stdout: str = ""
    stderr: str = ""
    after_call: int | None = None  # index of the last LLM call before the tool ran, when known


@dataclass
class EpisodeTrace:
    episode_id: str
    env_id: str
    task_id: str
    sample: int
    seed: int | None
    task_prompt: str
    task_kind: str = ""
    reference: str | None = None  # math reference answer (code tasks: None)
    policy: str = ""
    executor: str = ""
    design_text: str = ""  # the designer's raw output
    design_script: str | None = None  # the script extracted from it (None: no code found)
    structure: dict[str, Any] = field(default_factory=dict)  # DesignStructure.to_dict()
    agents: list[str] = field(default_factory=list)  # sub-agents in creation order
    calls: list[CallRecord] = field(default_factory=list)
    tool_calls: list[ToolRecord] = field(default_factory=list)
    answer: str | None = None
    correct: bool = False
    reward: float = 0.0
    termination_reason: str = ""
    design_valid: bool = False
    error: str = ""
    wall_s: float = 0.0
    # The env's info["integrity"] (mx_envs.envs.integrity): how the answer came about; the page
    # shows the reward-hack monitor's flags from it. Empty for traces written before it existed.
    integrity: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    schema: str = TRACE_SCHEMA

    @property
    def llm_calls(self) -> int:
        """Turns answered by the policy, the designer's included unless it was a fixed design."""
        return sum(c.counts_as_llm_call for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def response_tokens(self) -> int:
        return sum(c.response_tokens for c in self.calls)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeTrace:
        d = upgrade_stored(d)
        schema = d.get("schema", TRACE_SCHEMA)
        if schema != TRACE_SCHEMA:
            raise ValueError(f"unsupported trace schema {schema!r} (this version reads {TRACE_SCHEMA!r})")
        d["calls"] = [CallRecord(**c) for c in d.get("calls", [])]
        d["tool_calls"] = [ToolRecord(**t) for t in d.get("tool_calls", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def slug(text: str, max_len: int = 80) -> str:
    """A file-name-safe rendering of ``text`` (task ids may hold slashes, spaces, colons)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return (s or "x")[:max_len]


def trace_path(traces_dir: Path, trace: EpisodeTrace) -> Path:
    return traces_dir / slug(trace.env_id) / f"{slug(trace.task_id)}__s{trace.sample}.json"


def save_trace(traces_dir: Path, trace: EpisodeTrace) -> Path:
    """Write ``trace`` as pretty JSON under ``traces_dir``; returns the file written."""
    path = trace_path(traces_dir, trace)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(trace.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a trace
    return path


def load_trace(path: str | Path) -> EpisodeTrace:
    """Read a trace file (a JSON object; a JSONL file's first line is also accepted)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no trace file at {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        first = text.strip().splitlines()[0] if text.strip() else ""
        try:
            data = json.loads(first)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not a JSON trace: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p} holds a {type(data).__name__}, expected a JSON object trace")
    return EpisodeTrace.from_dict(data)
