"""Run many envs to completion with one policy, batching every pending LLM turn across envs.

Each round, every unfinished env has one pending turn; :func:`run_episodes` hands all of them to
``policy.act`` at once, so an LLM policy sends them to its backend in one ``generate`` call (designer
and executor turns together when they share a backend), then steps each env with its action. The
result is one :class:`EpisodeRecord` per env, with every turn's text and token data, which
:meth:`EpisodeRecord.transitions` turns into :class:`~mx_agents.transition.Transition` s with explicit
group ids.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mx_agents.action import Action
from mx_agents.observation import ActorTurn, parse_observation
from mx_agents.policies.base import Policy
from mx_agents.transition import Role, Transition

EnvLike = Any  # a gymnasium.Env with the MetaAgentX observation layout, or a callable making one


@dataclass(frozen=True)
class GroupIds:
    """Where an episode sits in the learner's M x N block of a task."""

    task_uid: str
    design_id: int = 0
    execution_id: int = 0


@dataclass
class TurnRecord:
    """One turn as played: who acted, what it saw (as sent to the model), what it answered."""

    turn: int
    role: Role
    agent: str
    messages: list[dict[str, str]]
    text: str
    source: str
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str = ""
    given: bool = False  # a design supplied by the caller (``designs=``), not sampled in this episode
    metadata: dict[str, Any] = field(default_factory=dict)  # the action's (e.g. "sampling" parameters)

    @classmethod
    def from_action(cls, turn: int, action: Action, given: bool = False) -> TurnRecord:
        return cls(
            turn=turn,
            role=action.role,
            agent=action.agent,
            messages=action.messages,
            text=action.text,
            source=action.source,
            prompt_ids=action.prompt_ids,
            response_ids=action.response_ids,
            logprobs=action.logprobs,
            finish_reason=action.finish_reason,
            given=given,
            metadata=dict(action.metadata),
        )

    @property
    def from_llm(self) -> bool:
        return self.source == "llm"


def _get(info: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in info and info[key] is not None:
            return info[key]
    return default


@dataclass
class EpisodeRecord:
    """One finished (or cut) episode."""

    index: int
    episode_id: str
    groups: GroupIds
    seed: int | None
    task_id: str | None
    turns: list[TurnRecord] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # set when the rollout itself stopped the episode (max_turns, policy/env error)

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def correct(self) -> bool | None:
        value = _get(self.info, "correct")
        return None if value is None else bool(value)

    @property
    def termination_reason(self) -> str:
        if self.error:
            return "rollout_error"
        reason = _get(self.info, "termination_reason", default="")
        return str(getattr(reason, "value", reason))

    @property
    def design(self) -> str | None:
        return _get(self.info, "design")

    @property
    def design_valid(self) -> bool | None:
        value = _get(self.info, "design_valid")
        return None if value is None else bool(value)

    @property
    def answer(self) -> Any:
        return _get(self.info, "answer", "answer_text", "extracted_answer")

    @property
    def llm_calls(self) -> int:
        """Turns answered by an LLM (designer and executor)."""
        return sum(t.from_llm for t in self.turns)

    def summary(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "task_id": self.task_id,
            "reward": self.reward,
            "correct": self.correct,
            "termination_reason": self.termination_reason,
            "design_valid": self.design_valid,
            "answer": self.answer,
            "extracted": _get(self.info, "extracted"),
            "turns": len(self.turns),
            "llm_calls": self.llm_calls,
            "error": self.error,
            "integrity": _get(self.info, "integrity"),  # for the trainer's reward-hack monitor
        }

    def transitions(
        self, policy_version: int = 0, include_non_llm: bool = False, include_given: bool = False
    ) -> list[Transition]:
        """One transition per LLM turn of this episode, its reward filled in.

        ``include_non_llm`` adds turns without token data (fixed designs, scripted replies) with an
        all-zero loss mask; ``include_given`` adds a design supplied by the caller (normally emitted
        once per design by :meth:`DesignGroupRollout.transitions` instead of once per execution).
        """
        return [
            self.transition(t, policy_version)
            for t in self.turns
            if (t.from_llm or include_non_llm) and (include_given or not t.given)
        ]

    def transition(self, t: TurnRecord, policy_version: int = 0, reward: float | None = None) -> Transition:
        return Transition(
            episode_id=self.episode_id,
            task_uid=self.groups.task_uid,
            task_id=self.task_id or "",
            design_id=self.groups.design_id,
            execution_id=self.groups.execution_id,
            role=t.role,
            agent=t.agent,
            turn=t.turn,
            prompt_ids=list(t.prompt_ids or []),
            response_ids=list(t.response_ids or []),
            logprobs=None if t.logprobs is None else list(t.logprobs),
            loss_mask=None if t.from_llm else [0] * len(t.response_ids or []),
            reward=float(self.reward if reward is None else reward),
            termination_reason=self.termination_reason,
            policy_version=policy_version,
            messages=[dict(m) for m in t.messages],
            response_text=t.text,
            metadata={
                "source": t.source,
                "finish_reason": t.finish_reason,
                "correct": self.correct,
                # Logprobs are of the temperature-scaled distribution: the learner re-scores at this
                # temperature (1 for a turn no model sampled: its tokens are not trained).
                "temperature": float(t.metadata.get("sampling", {}).get("temperature", 1.0)),
                "sampling": dict(t.metadata.get("sampling", {})),
                # The weights the engine sampled this turn with (backend's counter of loads).
                "engine_weights_version": t.metadata.get("weights_version"),
            },
        )


def _per_env(value: Any, n: int, what: str) -> list[Any]:
    if value is None or isinstance(value, int | Mapping):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: got {len(values)} values for {n} envs")
    return values


@dataclass
class RolloutStats:
    """Counters of one :func:`run_episodes` call (wall time is not part of any record)."""

    rounds: int = 0
    act_calls: int = 0
    turns: int = 0
    wall_s: float = 0.0


SCHEDULES = ("lockstep", "continuous")


def run_episodes(
    envs: Sequence[EnvLike],
    policy: Policy,
    seeds: int | Sequence[int | None] | None = None,
    options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    *,
    schedule: str = "lockstep",
    batch: bool = True,
    step_workers: int = 1,
    **common: Any,
) -> list[EpisodeRecord]:
    """Reset every env, play all of them to the end with ``policy``, return one record per env.

    The schedule picks one of the runners, which share everything else (their arguments:
    :func:`run_lockstep`): ``"lockstep"`` -> :func:`run_lockstep` (with ``step_workers``),
    ``"continuous"`` -> :func:`run_continuous`; ``batch=False`` -> :func:`run_sequential` (the
    unbatched baseline, whatever the schedule). ``schedule`` is a config's ``rollout.schedule``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown rollout schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if not batch:
        return run_sequential(envs, policy, seeds, options, **common)
    if schedule == "continuous":
        return run_continuous(envs, policy, seeds, options, **common)
    return run_lockstep(envs, policy, seeds, options, step_workers=step_workers, **common)


def run_lockstep(
    envs: Sequence[EnvLike],
    policy: Policy,
    seeds: int | Sequence[int | None] | None = None,
    options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    *,
    groups: Sequence[GroupIds] | None = None,
    designs: Sequence[Action | str | None] | None = None,
    progress: bool | Any = True,
    max_turns: int = 256,
    step_workers: int = 1,
    close: bool | None = None,
    stats: RolloutStats | None = None,
    run_id: str | None = None,
) -> list[EpisodeRecord]:
    """Play every env to the end in rounds: each round all pending turns go to one ``policy.act``
    call, and the next round waits for the slowest turn and env step of this one.

    ``envs`` holds envs or zero-argument callables making one (those are closed afterwards unless
    ``close=False``). ``seeds``: one int (each env gets ``seed + i``), one per env, or ``None``.
    ``options``: one mapping for all or one per env (e.g. ``{"task_id": ...}``). ``groups``: the
    learner's group ids per env (default: ``task_uid`` = the task id, ``design_id`` = env index).
    ``designs``: per env, a design (an :class:`Action`, e.g. one sampled earlier with its token data,
    or plain text) played on the designer turn instead of asking the policy ("design once, execute N
    times"); ``None`` entries let the policy design. An env still running after ``max_turns`` turns
    is cut (``error`` says so). An exception from ``env.step``/``reset`` is recorded on that episode
    (``error``) and the others go on; an exception from ``policy.act`` is raised (it is the caller's
    model/backend failing). ``step_workers > 1`` steps envs in threads (useful when scripts run tool
    calls). ``stats`` receives round/call counters and wall time.

    Capacity: every env mid-episode keeps its design script alive (suspended) in the sandbox, and a
    :class:`~mx_envs.sandbox.ProcessSandbox` serves ``pool_size`` live scripts at once (default 4);
    with more envs than that on one sandbox, a script start waits for a slot that the lock-stepped
    rollout never frees, until the episode's wall budget ends it. Give the envs a sandbox with
    ``pool_size >= len(envs)`` (env kwarg ``sandbox=``).
    """
    with _episodes(envs, seeds, options, groups, designs, progress, max_turns, close, stats, run_id) as run:
        _play_rounds(run, policy, max_turns, lambda pending: list(pending), step_workers)
    return run.records


def run_sequential(
    envs: Sequence[EnvLike],
    policy: Policy,
    seeds: int | Sequence[int | None] | None = None,
    options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    *,
    groups: Sequence[GroupIds] | None = None,
    designs: Sequence[Action | str | None] | None = None,
    progress: bool | Any = True,
    max_turns: int = 256,
    close: bool | None = None,
    stats: RolloutStats | None = None,
    run_id: str | None = None,
) -> list[EpisodeRecord]:
    """:func:`run_lockstep`'s episodes one after another, one turn per ``policy.act`` call, in env
    order: the unbatched baseline."""
    with _episodes(envs, seeds, options, groups, designs, progress, max_turns, close, stats, run_id) as run:
        _play_rounds(run, policy, max_turns, lambda pending: [min(pending)], 1)
    return run.records


def run_continuous(
    envs: Sequence[EnvLike],
    policy: Policy,
    seeds: int | Sequence[int | None] | None = None,
    options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    *,
    groups: Sequence[GroupIds] | None = None,
    designs: Sequence[Action | str | None] | None = None,
    progress: bool | Any = True,
    max_turns: int = 256,
    close: bool | None = None,
    stats: RolloutStats | None = None,
    run_id: str | None = None,
) -> list[EpisodeRecord]:
    """:func:`run_lockstep`'s episodes with one thread per episode: each asks ``policy.act`` for its
    next turn as soon as its env returns the observation, and the backend batches whatever is pending
    at that moment (HF and vLLM: requests join the running batch between decode steps; see
    :mod:`mx_agents.continuous`). No episode waits for another's turn or env step. The policy
    must be thread-safe (the LLM policies and backends of this package are); sampling seeds are
    derived from (run id or the env seeds, env seed, episode, turn), so a seeded run draws the same
    seeds, but which requests share a batch depends on thread timing."""
    with _episodes(envs, seeds, options, groups, designs, progress, max_turns, close, stats, run_id) as run:
        _drive_threads(run, policy, max_turns)
    return run.records


@dataclass
class _Run:
    """The shared state of one runner call: live envs, their records, the observations waiting
    for an action, the given designs, per-episode sampling seed keys and the counters."""

    live: list[Any]
    records: list[EpisodeRecord]
    pending: dict[int, Any]
    given: list[Action | None]
    seed_keys: list[str]
    stats: RolloutStats
    bar: Any
    keyed: bool = False  # the keys are reproducible: batched rounds key their requests by them too


@contextmanager
def _episodes(
    envs: Sequence[EnvLike],
    seeds: int | Sequence[int | None] | None,
    options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None,
    groups: Sequence[GroupIds] | None,
    designs: Sequence[Action | str | None] | None,
    progress: bool | Any,
    max_turns: int,
    close: bool | None,
    stats: RolloutStats | None,
    run_id: str | None,
) -> Iterator[_Run]:
    """Check the arguments, make and reset the envs, yield the run; then close the bar (and the envs
    made here, or all with ``close=True``) and add the wall time."""
    if max_turns <= 0:
        raise ValueError("max_turns must be positive")
    n = len(envs)
    if isinstance(seeds, int):
        seed_list: list[int | None] = [seeds + i for i in range(n)]
    else:
        seed_list = _per_env(seeds, n, "seeds")
    option_list = _per_env(options, n, "options")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups: got {len(groups)} for {n} envs")
    given = _given_designs(designs, n)
    made = [callable(e) and not hasattr(e, "step") for e in envs]
    live = [e() if m else e for e, m in zip(envs, made, strict=True)]
    close = any(made) if close is None else close
    # Continuous rollouts derive sampling seeds from (key base, env seed, episode, turn): reproducible
    # when the caller names the run or seeds the envs, fresh otherwise.
    seed_base = run_id or ("seeded" if all(sd is not None for sd in seed_list) else uuid.uuid4().hex)
    run_id = run_id or uuid.uuid4().hex[:12]
    stats = stats if stats is not None else RolloutStats()
    start = time.perf_counter()
    records: list[EpisodeRecord] = []
    pending: dict[int, Any] = {}
    for i, env in enumerate(live):
        rec = EpisodeRecord(index=i, episode_id=f"{run_id}-{i}", groups=GroupIds(""), seed=seed_list[i], task_id=None)
        try:
            obs, info = env.reset(seed=seed_list[i], options=dict(option_list[i]) if option_list[i] else None)
            rec.task_id = _task_id(info, option_list[i])
            pending[i] = obs
        except Exception as exc:  # noqa: BLE001 - recorded on the episode, the others go on
            rec.error, rec.truncated = f"reset failed: {type(exc).__name__}: {exc}", True
        rec.groups = groups[i] if groups is not None else GroupIds(rec.task_id or f"env{i}", design_id=i)
        records.append(rec)
    bar = _progress(n, progress)
    if bar is not None:
        bar.update(sum(r.done for r in records))
    # An episode's key names it by its group ids when the caller gives them (a shard of a step played
    # elsewhere then keys its episodes as the whole step would), else by env seed and index.
    keys = [f"{seed_base}|{g.task_uid}|{g.design_id}|{g.execution_id}" for g in groups or []]
    if len(set(keys)) != n:  # no groups, or groups that do not tell the episodes apart
        keys = [f"{seed_base}|{seed_list[i]}|{i}" for i in range(n)]
    run = _Run(live, records, pending, given, keys, stats, bar, keyed=bool(run_id) or seed_base == "seeded")
    try:
        yield run
    finally:
        if bar is not None:
            bar.close()
        if close:
            _close_envs(live)
    stats.wall_s += time.perf_counter() - start


def _given_designs(designs: Sequence[Action | str | None] | None, n: int) -> list[Action | None]:
    given: list[Action | None] = [None] * n
    if designs is None:
        return given
    if len(designs) != n:
        raise ValueError(f"designs: got {len(designs)} for {n} envs")
    for i, d in enumerate(designs):
        if isinstance(d, str):
            given[i] = Action(text=d, role="designer", agent="designer", source="fixed")
        elif isinstance(d, Action):
            if d.role != "designer":
                raise ValueError(f"designs[{i}] is a {d.role} action, not a design")
            given[i] = d
        elif d is not None:
            raise TypeError(f"designs[{i}] must be an Action, a str or None, got {type(d).__name__}")
    return given


def _after_step(run: _Run, i: int, result: Any, exc: BaseException | None, max_turns: int) -> tuple[bool, Any]:
    """Record env ``i``'s step on its episode: ``(ended, next observation)``."""
    rec = run.records[i]
    if exc is not None:
        _rollout_error(rec, run.live[i], f"step failed: {type(exc).__name__}: {exc}")
        return True, None
    obs, reward, terminated, truncated, info = result
    rec.reward += float(reward)
    rec.terminated, rec.truncated = bool(terminated), bool(truncated)
    if rec.done:
        rec.info = dict(info)
        rec.task_id = rec.task_id or _task_id(info, None)
        return True, None
    if len(rec.turns) >= max_turns:
        _rollout_error(rec, run.live[i], f"cut after max_turns={max_turns} turns")
        return True, None
    return False, obs


def _play_rounds(
    run: _Run, policy: Policy, max_turns: int, select: Callable[[dict[int, Any]], list[int]], step_workers: int
) -> None:
    """Rounds until no episode is pending: the ``select``-ed pending turns go to one ``policy.act``
    call (a given design is played instead of asking), then their envs are stepped."""
    stats, bar, records = run.stats, run.bar, run.records
    pool = ThreadPoolExecutor(step_workers) if step_workers > 1 else None
    try:
        while run.pending:
            active = select(run.pending)
            turns: dict[int, ActorTurn] = {i: parse_observation(run.pending[i]) for i in active}
            if run.keyed:  # each request's sampling seed from its episode and turn, not its place in the batch
                turns = {i: dataclasses.replace(t, seed_key=f"{run.seed_keys[i]}|{len(records[i].turns)}")
                         for i, t in turns.items()}
            forced = {i for i in active if run.given[i] is not None and turns[i].role == "designer"}
            asked = [i for i in active if i not in forced]
            actions_by_env: dict[int, Action] = {}
            if bar is not None:  # a round may take minutes on CPU: show it starting, not only episodes ending
                bar.set_postfix(round=stats.rounds + 1, turns=stats.turns, acting=len(active))
            if asked:
                out = policy.act([turns[i] for i in asked])
                stats.act_calls += 1
                if len(out) != len(asked):
                    raise RuntimeError(f"policy {policy.name!r} returned {len(out)} actions for {len(asked)} turns")
                actions_by_env.update(zip(asked, out, strict=True))
            for i in forced:
                actions_by_env[i] = run.given[i]  # type: ignore[assignment]
            stats.rounds += 1
            actions = [actions_by_env[i] for i in active]
            for i, action in zip(active, actions, strict=True):
                rec = records[i]
                rec.turns.append(TurnRecord.from_action(len(rec.turns), action, given=i in forced))
            stats.turns += len(active)
            jobs = list(zip(active, actions, strict=True))
            if pool is not None:
                results = list(pool.map(lambda ja: _step(run.live, *ja), jobs))
            else:
                results = [_step(run.live, i, a) for i, a in jobs]
            for i, out, exc in results:
                ended, obs = _after_step(run, i, out, exc, max_turns)
                if not ended:
                    run.pending[i] = obs
                    continue
                del run.pending[i]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(turns=stats.turns, refresh=False)
    finally:
        if pool is not None:
            pool.shutdown()


def _rollout_error(rec: EpisodeRecord, env: Any, message: str) -> None:
    """End ``rec`` as a rollout error, charged what an invalid design costs: an episode the rollout
    had to stop must not earn more than a design that failed on its own."""
    config = getattr(getattr(env, "unwrapped", env), "reward_config", None)
    rec.error, rec.truncated = message, True
    rec.reward -= float(getattr(config, "invalid_design_penalty", 0.0) or 0.0)


def _close_envs(envs: Sequence[Any]) -> None:
    """Close every env; a failing close must not mask the rollout's result."""
    for env in envs:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - closing must not mask the result
            pass


def _drive_threads(run: _Run, policy: Policy, max_turns: int) -> None:
    """One thread per live episode: act, step, repeat; the backend batches across threads."""
    import threading

    from mx_agents.policies.llm import turn_seed_key

    lock = threading.Lock()
    failures: list[BaseException] = []
    stats, bar = run.stats, run.bar

    def drive(i: int) -> None:
        rec, obs, given = run.records[i], run.pending[i], run.given[i]
        while True:
            turn = parse_observation(obs)
            forced = given is not None and turn.role == "designer"
            if forced:
                action = given
            else:
                with turn_seed_key(f"{run.seed_keys[i]}|{len(rec.turns)}"):
                    out = policy.act([turn])
                if len(out) != 1:
                    raise RuntimeError(f"policy {policy.name!r} returned {len(out)} actions for 1 turn")
                action = out[0]
            rec.turns.append(TurnRecord.from_action(len(rec.turns), action, given=forced))  # type: ignore[arg-type]
            with lock:
                stats.act_calls += not forced
                stats.turns += 1
                if bar is not None:  # every turn shows, not only finished episodes
                    bar.set_postfix(turns=stats.turns)
            _, result, exc = _step(run.live, i, action)  # type: ignore[arg-type]
            ended, obs = _after_step(run, i, result, exc, max_turns)
            if ended:
                break
        if bar is not None:
            with lock:
                bar.update(1)
                bar.set_postfix(turns=stats.turns, refresh=False)

    def guarded(i: int) -> None:
        try:
            drive(i)
        except BaseException as exc:  # noqa: BLE001 - the policy/backend failing: re-raised below
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), name=f"episode-{i}", daemon=True)
               for i in sorted(run.pending)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.pending.clear()
    if failures:
        raise failures[0]


def _step(envs: Sequence[Any], i: int, action: Action) -> tuple[int, Any, BaseException | None]:
    try:
        return i, envs[i].step(action.text), None
    except Exception as exc:  # noqa: BLE001 - the caller records it on the episode
        return i, None, exc


def _task_id(info: Mapping[str, Any], options: Mapping[str, Any] | None) -> str | None:
    value = _get(info, "task_id") if isinstance(info, Mapping) else None
    if value is None and options:
        value = options.get("task_id")
    return None if value is None else str(value)


def _progress(total: int, enabled: bool | Any) -> Any:
    if not enabled:
        return None
    from mx_agents.progress import OuterBar, progress_bar

    if hasattr(enabled, "update"):  # a bar of the caller (e.g. one per held-out condition)
        return OuterBar(enabled)
    return progress_bar(total, "episodes")


EnvFactory = Callable[[], Any]
