"""Cold-start data from a teacher (the paper's recipe): play episodes, keep the correct ones, dedup.

``mx sft-data`` plays episodes of the given envs' **training** tasks with a teacher and writes every
LLM turn of the episodes graded correct as one JSONL line in the format ``mx sft`` (and a training
config's ``warm_start.data``) reads::

    {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...],   # what the model saw
     "response": "...",                                                          # what it answered
     "role": "designer"|"executor", "agent": "solver", "env_id": ..., "task_id": ...,
     "design": "vote" | "<model>", "reward": 1.0}

Teachers:

* the designer side: ``--teacher SPEC``, any policy spec ``mx eval`` takes (an OpenAI-compatible
  URL, ``vllm:MODEL``, an HF id or path, ``default``, a checkpoint); its designs are sampled and its
  designer turns are kept too. Or fixed designs, ``--designs NAME|FILE,...`` (library designs or
  script files): every task is played with each of them, and only the sub-agent turns are written
  (the designer side of fixed designs is ``warm_start.designs`` of a training config, which renders
  them under the training run's own designer prompt).
* the executor side: ``--executor SPEC`` (default: the teacher), a policy spec or ``rule:NAME``, a
  rule teacher of :data:`RULE_TEACHERS`. ``rule:arith_tool`` shows the Python-tool protocol on the
  procedural Arithmetic tasks (write ``print(EXPR)``, then box the printed value); it is the CPU
  stand-in for a strong teacher model where none is reachable, and knows nothing but that protocol.

Filtering: an episode is kept when its grader says correct (reward >= ``min_reward``); identical
(role, messages, response) turns are written once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TASK_EXPR = re.compile(r"What is ([0-9+\-*() ]+)\?")
_TOOL_OUT = re.compile(r"Python output[^\n]*:\n```output\n(.*?)\n?```", re.DOTALL)


def _arith_tool(turn: Any) -> str:
    last = str(turn.messages[-1].get("content", "")) if turn.messages else ""
    out = _TOOL_OUT.search(last)
    if out:
        value = out.group(1).strip().splitlines()
        return "\\boxed{" + (value[-1].strip() if value else "") + "}"
    m = _TASK_EXPR.search(last)
    if m:
        return "```python\nprint(" + m.group(1).strip() + ")\n```"
    return "I cannot answer this."


RULE_TEACHERS: dict[str, Callable[[Any], str]] = {"arith_tool": _arith_tool}


def rule_teacher(name: str) -> Any:
    """The executor policy of ``rule:NAME``."""
    from mx_agents.policies.scripted import ScriptedPolicy

    if name not in RULE_TEACHERS:
        raise ValueError(f"unknown rule teacher {name!r}; known: {', '.join(sorted(RULE_TEACHERS))}")
    return ScriptedPolicy(fn=RULE_TEACHERS[name], name=f"rule:{name}")


def design_source(item: str) -> tuple[str, str]:
    """``(name, source)`` of a library design name or a script file path."""
    from mx_envs.mas.designs import DESIGN_NAMES, load_design

    key = item.removeprefix("design:")
    if key in DESIGN_NAMES:
        return key, load_design(key)
    p = Path(item)
    if p.is_file():
        return p.stem, p.read_text(encoding="utf-8")
    raise ValueError(f"{item!r} is neither a library design ({', '.join(DESIGN_NAMES)}) nor a script file")


@dataclass
class SftDataConfig:
    envs: list[tuple[str, dict[str, Any]]]  # (env id, gym.make kwargs) per env; training split
    teacher: str | None = None  # designer-side policy spec (None: --designs only)
    designs: list[str] = field(default_factory=list)  # fixed designs (names or files)
    executor: str | None = None  # executor spec or rule:NAME (default: the teacher)
    tasks: int = 16  # first N training tasks per env
    samples: int = 1  # episodes per (task, design)
    min_reward: float = 1.0
    seed: int = 0
    batch_size: int = 16
    designer_prompt: dict[str, Any] = field(default_factory=dict)  # DesignerPrompt kwargs for model teachers
    max_new_tokens: int | None = None
    temperature: float | None = None

    def validate(self) -> None:
        if not self.envs:
            raise ValueError("give at least one env (--env ID or --config with env/envs)")
        if not self.teacher and not self.designs:
            raise ValueError("give a designer side: --teacher SPEC and/or --designs NAME|FILE,...")
        if self.teacher is None and self.executor is None:
            raise ValueError("fixed --designs need an --executor (a policy spec or rule:NAME) for their agents")
        if self.tasks < 1 or self.samples < 1 or self.batch_size < 1:
            raise ValueError("--tasks, --samples and --batch-size must be >= 1")


def _executor_policy(spec: str, cfg: SftDataConfig) -> Any:
    if spec.startswith("rule:"):
        return rule_teacher(spec.split(":", 1)[1])
    from mx_agents.policies.spec import parse_policy_spec

    return parse_policy_spec(spec, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)


def _teacher_policy(cfg: SftDataConfig) -> Any:
    from mx_agents.policies.base import RoutedPolicy
    from mx_agents.policies.design_prompt import DesignerPrompt
    from mx_agents.policies.spec import parse_policy_spec

    prompt = DesignerPrompt(**cfg.designer_prompt) if cfg.designer_prompt else None
    assert cfg.teacher is not None
    if cfg.executor and cfg.executor.startswith("rule:"):
        designer = parse_policy_spec(cfg.teacher, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     seed=cfg.seed, prompt=prompt)
        return RoutedPolicy(getattr(designer, "designer", designer), _executor_policy(cfg.executor, cfg))
    return parse_policy_spec(cfg.teacher, cfg.executor, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, seed=cfg.seed, prompt=prompt)


def generate_sft_data(cfg: SftDataConfig, out: str | Path, *, progress: bool = False,
                      env_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Play, filter, dedup and write ``out``; returns counts (episodes, kept, lines per role)."""
    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the env ids
    from mx_agents.policies.fixed import fence
    from mx_agents.rollout import run_episodes

    cfg.validate()
    make = env_factory or (lambda env_id, **kw: gym.make(env_id, disable_env_checker=True, **kw))
    fixed = [design_source(d) for d in cfg.designs]
    plays: list[tuple[str, dict[str, Any], Any, str, str | None]] = []  # env, kwargs, task, design name, source
    for env_id, kwargs in cfg.envs:
        kw = {"split": "train", **kwargs}
        probe = make(env_id, **kw)
        tasks = list(probe.unwrapped.tasks)[: cfg.tasks]
        probe.close()
        for task in tasks:
            for _ in range(cfg.samples):
                for name, src in fixed:
                    plays.append((env_id, {**kw, "tasks": tasks}, task, name, src))
                if cfg.teacher:
                    plays.append((env_id, {**kw, "tasks": tasks}, task, cfg.teacher, None))
    executor = _executor_policy(cfg.executor, cfg) if fixed and cfg.executor else None
    teacher = _teacher_policy(cfg) if cfg.teacher else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    counts = {"episodes": 0, "correct": 0, "designer": 0, "executor": 0, "duplicates": 0}
    by_design: dict[str, list[int]] = {}
    bar = None
    if progress:  # one bar over every episode of every chunk: rate and ETA
        from mx_agents.progress import progress_bar

        bar = progress_bar(len(plays), "teacher episodes")
    with open(out, "w", encoding="utf-8") as f:
        for start in range(0, len(plays), cfg.batch_size):
            chunk = plays[start : start + cfg.batch_size]
            # One call per policy kind, so fixed-design and teacher episodes batch among themselves.
            for kind_fixed in (True, False):
                sub = [p for p in chunk if (p[4] is not None) == kind_fixed]
                if not sub:
                    continue
                policy = executor if kind_fixed else teacher
                envs = [make(env_id, **kw) for env_id, kw, _, _, _ in sub]
                records = run_episodes(
                    envs, policy, seeds=[cfg.seed + start + i for i in range(len(sub))],
                    options=[{"task_id": p[2].id} for p in sub],
                    designs=[fence(p[4]) if p[4] is not None else None for p in sub],
                    progress=bar or False, close=True,
                )
                for (env_id, _, task, design, _), rec in zip(sub, records, strict=True):
                    counts["episodes"] += 1
                    ok = rec.reward >= cfg.min_reward and bool(rec.correct)
                    by_design.setdefault(design, [0, 0])[0] += 1
                    if not ok:
                        continue
                    counts["correct"] += 1
                    by_design[design][1] += 1
                    for turn in rec.turns:
                        if turn.given or turn.source not in ("llm", "scripted"):
                            continue
                        line = {"messages": turn.messages, "response": turn.text, "role": turn.role,
                                "agent": turn.agent, "env_id": env_id, "task_id": task.id, "design": design,
                                "reward": float(rec.reward)}
                        key = json.dumps([turn.role, turn.messages, turn.text], sort_keys=True)
                        if key in seen:
                            counts["duplicates"] += 1
                            continue
                        seen.add(key)
                        counts[turn.role] = counts.get(turn.role, 0) + 1
                        f.write(json.dumps(line) + "\n")
    if bar is not None:
        bar.close()
    counts["by_design"] = {k: {"episodes": v[0], "correct": v[1]} for k, v in by_design.items()}  # type: ignore[assignment]
    return counts


def envs_from_train_config(path: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """The training envs (id, kwargs with split) and designer prompt of a training config file."""
    from mx_train.config import TrainConfig

    tc = TrainConfig.from_yaml(path)
    envs = [(e.id, {**e.kwargs, "split": e.kwargs.get("split", e.split)}) for e, _, _ in tc.env_entries()]
    return envs, dict(tc.rollout.designer_prompt)


__all__: Sequence[str] = ("generate_sft_data", "SftDataConfig", "RULE_TEACHERS", "design_source")
