"""``mx eval``'s engine: K samples per task on one or more envs, traces, resumable results.

Output directory layout::

    OUT/config.json      the run's settings (a resumed run must match them)
    OUT/episodes.jsonl   one EpisodeRecord per finished (env, task, sample), appended per batch
    OUT/traces/ENV/TASK__sSAMPLE.json   one EpisodeTrace per episode
    OUT/results.json, OUT/results.md    the report (rewritten after every batch)

Resuming: pairs already in ``episodes.jsonl`` are skipped, so a killed run continues where it
stopped (the batch in flight when it died is run again). Episodes run in batches of ``batch_size``
envs through :func:`mx_agents.rollout.run_episodes`, which sends every pending LLM turn of the batch
to the backend at once. Each (env, task, sample) gets its own env seed derived from ``seed``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mx_train.eval.results import EpisodeRecord, read_records, summarize, write_results
from mx_train.eval.trace import save_trace
from mx_train.eval.trace_build import build_trace

log = logging.getLogger(__name__)

# Settings that change what an episode is; a resumed run must agree on them.
_IDENTITY_KEYS = ("policy", "executor", "seed", "max_new_tokens", "designer_max_new_tokens",
                  "temperature", "env_kwargs", "trained_settings", "per_env_kwargs", "top_p", "top_k",
                  "repetition_penalty")


@dataclass
class EvalConfig:
    env_ids: list[str]
    policy: str
    executor: str | None = None
    samples: int = 1
    seed: int = 0
    limit: int | None = None
    max_new_tokens: int | None = None
    designer_max_new_tokens: int | None = None
    temperature: float | None = None
    batch_size: int = 8
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # Checkpoint specs are played with the designer prompt and sampling they were trained with
    # (mx_train.eval.trained_settings); False: the env's prompt and the generic defaults.
    trained_settings: bool = True
    # Per-env overrides (e.g. a protocol's splits and slices): gym.make kwargs merged over env_kwargs,
    # and a per-env task limit replacing `limit`.
    per_env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_env_limit: dict[str, int | None] = field(default_factory=dict)
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    protocol: str | None = None

    def env_kwargs_for(self, env_id: str) -> dict[str, Any]:
        return {**self.env_kwargs, **self.per_env_kwargs.get(env_id, {})}

    def limit_for(self, env_id: str) -> int | None:
        return self.per_env_limit.get(env_id, self.limit)

    def validate(self) -> None:
        if not self.env_ids:
            raise ValueError("give at least one env id")
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("--temperature must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_seed(seed: int, env_id: str, task_id: str, sample: int) -> int:
    """A stable per-episode env seed (independent of batch layout and of resuming)."""
    key = zlib.crc32(f"{env_id}\0{task_id}\0{sample}".encode())
    return (seed * 1_000_003 + key) % (2**31 - 1)


def _check_resume(out: Path, cfg: EvalConfig) -> None:
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; remove it or pick another --out") from None
    for key, default in (("trained_settings", True), ("per_env_kwargs", {}), ("top_p", None), ("top_k", None),
                         ("repetition_penalty", None)):
        old.setdefault(key, default)  # runs written before the setting existed
    new = cfg.to_dict()
    diff = [k for k in _IDENTITY_KEYS if old.get(k) != new.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ValueError(f"{out} holds a run with other settings ({detail}); use another --out to compare")


def _append(path: Path, records: Sequence[EpisodeRecord]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def default_env_factory(env_id: str, **kwargs: Any) -> Any:
    """``gym.make(env_id, **kwargs)`` after the MetaAgentX ids are registered."""
    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the env ids

    return gym.make(env_id, **kwargs)


def load_env_tasks(env_id: str, env_kwargs: dict[str, Any], limit: int | None,
                   env_factory: Callable[..., Any]) -> list[Any]:
    """The tasks ``env_id`` draws from (its first ``limit``), loaded once for the whole run."""
    kwargs = dict(env_kwargs)
    if limit is not None:
        kwargs["limit"] = limit
    env = env_factory(env_id, **kwargs)
    try:
        return list(env.unwrapped.tasks)
    finally:
        env.close()


def run_eval(
    cfg: EvalConfig,
    out: Path,
    *,
    policy: Any = None,
    env_factory: Callable[..., Any] = default_env_factory,
    progress: bool = True,
    bar: Any = None,
) -> dict[str, Any]:
    """Run (or resume) the evaluation ``cfg`` into ``out``; returns the ``results.json`` document.

    ``policy`` overrides building one from ``cfg.policy``/``cfg.executor`` (tests pass a scripted
    policy); ``env_factory(env_id, **kwargs)`` makes an env. ``bar``: a progress bar of the caller,
    advanced by one per finished episode (instead of this function's own bar, advanced per chunk).
    """
    cfg.validate()
    out = Path(out)
    _check_resume(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    episodes_path = out / "episodes.jsonl"
    traces_dir = out / "traces"
    records = {r.key: r for r in read_records(episodes_path)}

    tasks_by_env = {e: load_env_tasks(e, cfg.env_kwargs_for(e), cfg.limit_for(e), env_factory) for e in cfg.env_ids}
    todo = [
        (env_id, task, s)
        for env_id, tasks in tasks_by_env.items()
        for task in tasks
        for s in range(cfg.samples)
        if (env_id, task.id, s) not in records
    ]
    total = sum(len(t) for t in tasks_by_env.values()) * cfg.samples
    log.info("eval: %d episodes to run, %d already done", len(todo), total - len(todo))
    if todo and policy is None and cfg.trained_settings:
        from mx_train.eval.trained_settings import build_trained_policy

        built = build_trained_policy(
            cfg.policy, cfg.executor, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            designer_max_new_tokens=cfg.designer_max_new_tokens, seed=cfg.seed,
        )
        if built is not None:
            policy, applied = built
            (out / "policy_settings.json").write_text(json.dumps(applied, indent=2) + "\n", encoding="utf-8")
            log.info("eval: playing %s with its training settings (%s)", cfg.policy, applied["designer_from"])
    if todo and policy is None:
        from mx_agents.policies.spec import parse_policy_spec

        policy = parse_policy_spec(
            cfg.policy, cfg.executor, max_new_tokens=cfg.max_new_tokens,
            designer_max_new_tokens=cfg.designer_max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
        )
    if policy is not None and (cfg.top_p is not None or cfg.top_k is not None or cfg.repetition_penalty is not None):
        from mx_train.eval.protocols import apply_sampling

        apply_sampling(policy, top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty)
    outer_bar, bar = bar, None
    if outer_bar is not None:
        outer_bar.update(total - len(todo))  # resumed episodes
    elif progress:
        from mx_agents.progress import progress_bar

        bar = progress_bar(total, "eval", initial=total - len(todo))
    try:
        for env_id in cfg.env_ids:
            batch_items = [x for x in todo if x[0] == env_id]
            if not batch_items:
                continue
            n_envs = min(cfg.batch_size, len(batch_items))
            envs = [env_factory(env_id, tasks=tasks_by_env[env_id], **cfg.env_kwargs_for(env_id)) for _ in range(n_envs)]
            try:
                for start in range(0, len(batch_items), cfg.batch_size):
                    chunk = batch_items[start : start + cfg.batch_size]
                    new = _run_chunk(cfg, env_id, chunk, envs[: len(chunk)], policy, traces_dir, out, outer_bar)
                    _append(episodes_path, new)
                    for r in new:
                        records[r.key] = r
                    write_results(out, summarize(records.values(), cfg.to_dict(), seed=cfg.seed))
                    if bar is not None:
                        bar.update(len(new))
                        acc = sum(r.correct for r in records.values()) / max(len(records), 1)
                        bar.set_postfix(acc=f"{acc:.2f}", refresh=False)
            finally:
                for env in envs:
                    env.close()
    finally:
        if bar is not None:
            bar.close()
    results = summarize(records.values(), cfg.to_dict(), seed=cfg.seed)
    write_results(out, results)
    return results


def _run_chunk(cfg: EvalConfig, env_id: str, chunk: list[tuple[str, Any, int]], envs: list[Any],
               policy: Any, traces_dir: Path, out: Path, bar: Any = None) -> list[EpisodeRecord]:
    from mx_agents.rollout import GroupIds, run_episodes

    seeds = [episode_seed(cfg.seed, env_id, task.id, s) for _, task, s in chunk]
    options = [{"task_id": task.id} for _, task, _ in chunk]
    groups = [GroupIds(task_uid=f"{env_id}/{task.id}", design_id=s) for _, task, s in chunk]
    t0 = time.perf_counter()
    played = run_episodes(envs, policy, seeds=seeds, options=options, groups=groups, progress=bar or False,
                          close=False)
    chunk_wall = time.perf_counter() - t0
    new: list[EpisodeRecord] = []
    for (_, task, s), ep, env in zip(chunk, played, envs, strict=True):
        timings = getattr(env.unwrapped, "timings", {}) or {}
        wall = float(timings.get("episode_s", chunk_wall))
        trace = build_trace(ep, env_id=env_id, task_id=task.id, sample=s, policy=cfg.policy,
                            executor=cfg.executor or "", wall_s=wall, task=task)
        path = save_trace(traces_dir, trace)
        new.append(
            EpisodeRecord(
                env_id=env_id, task_id=task.id, sample=s, correct=trace.correct, reward=trace.reward,
                design_valid=trace.design_valid, termination_reason=trace.termination_reason,
                structure=trace.structure.get("label", "invalid"), llm_calls=trace.llm_calls,
                prompt_tokens=trace.prompt_tokens, response_tokens=trace.response_tokens, wall_s=wall,
                trace=str(path.relative_to(out)),
            )
        )
    return new
