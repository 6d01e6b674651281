"""The hierarchical MetaAgentX env: a designer writes a MAS script, the executor plays its sub-agents.

One episode is one task. ``reset`` returns the designer's observation (see
:mod:`mx_envs.envs.observation` for the layout); ``step(design_text)`` starts the script in the
sandbox through a :class:`~mx_envs.mas.session.MASSession` and returns the first sub-agent's chat;
each ``step(reply)`` resumes the script until its next LLM request or its end. At the end the answer is
graded, the reward is the outcome plus optional shaping (:class:`~mx_envs.envs.reward.RewardConfig`),
and ``info`` holds the verdict, the termination reason, the design and the per-sub-agent trajectories.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import numbers
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium.error import ResetNeeded

from mx_envs.envs.integrity import episode_integrity
from mx_envs.envs.observation import (
    DESIGNER,
    DESIGNER_AGENT,
    EXECUTOR,
    make_observation,
    observation_space,
    terminal_observation,
)
from mx_envs.envs.reward import RewardConfig
from mx_envs.envs.settings import (  # noqa: F401 - DEFAULT_MAX_*: importable from here as before
    DEFAULT_MAX_ACTION_CHARS,
    DEFAULT_MAX_OBSERVATION_CHARS,
    BudgetSettings,
    TaskSettings,
    group_kwargs,
)
from mx_envs.envs.spaces import LLMText
from mx_envs.envs.trajectory import EpisodeTrace, SubAgentTrajectory, Turn
from mx_envs.mas.protocol import Budgets, Finished, LLMRequest, TerminationReason
from mx_envs.tasks.record import Task

logger = logging.getLogger(__name__)


class MetaAgentXEnv(gym.Env[dict[str, Any], str]):
    """Turn-based env over one benchmark's tasks (any dataset :func:`mx_envs.tasks.load_tasks` knows).

    Args: three typed groups (:mod:`mx_envs.envs.settings`), or their fields as flat keywords
    (what ``gym.make`` and YAML configs pass; a flat keyword overrides its group's field):

        dataset: dataset name for :func:`mx_envs.tasks.load_tasks` (ignored when tasks are given).
        task: :class:`~mx_envs.envs.settings.TaskSettings`; flat: ``tasks`` (the task list to draw
            from, instead of loading ``dataset``), ``split``, ``data_path``, ``fixture`` (the small
            packaged fixture set, for tests and ``check_env`` without downloaded data), ``limit``
            (first N tasks), ``loader_kwargs`` (further loader keywords), and the dataset's own loader
            options given directly (``level=3`` for Arithmetic, ``start_date=`` for LiveCodeBench:
            see ``DATASETS[name].options``); any other unknown keyword is a
            :class:`~mx_envs.errors.ConfigError` naming the closest one.
        reward: :class:`~mx_envs.envs.reward.RewardConfig` or a dict; flat: its fields
            (``invalid_design_penalty``, ``code_pass_fraction``, ``llm_call_penalty``, ``correct_reward``,
            ``incorrect_reward``).
        budgets: :class:`~mx_envs.envs.settings.BudgetSettings`, or the script's
            :class:`~mx_envs.mas.protocol.Budgets` (or a dict of its fields) for each episode; flat:
            ``max_observation_chars`` (bound of an observation's messages JSON; a sub-agent chat over
            it ends the episode with ``budget_exceeded``) and ``max_action_chars`` (longest accepted
            action text).
        sandbox: the :class:`~mx_envs.sandbox.api.Sandbox` scripts, tools and code tests run in
            (default: the shared process sandbox with the MAS library preloaded; code tests then
            use the grader's own default sandbox).
        grader_kwargs: options for :func:`mx_envs.tasks.grade` (e.g. ``stop_on_failure=True`` to
            stop a code run at its first failing test, ``time_limit_s``).
        designer_examples: names of library designs shown to the designer as examples.
        render_mode: ``None`` or ``"ansi"`` (``render()`` returns the current actor's chat as text).

    Attributes (besides the gymnasium ones): ``tasks``, ``task`` (the current one), ``trajectories``
    (``{agent: SubAgentTrajectory}`` of the current/last episode), ``turns`` (all executor turns in
    order), ``outcome`` (the last episode's final info, ``None`` mid-episode), ``session`` (the
    :class:`~mx_envs.mas.session.MASSession`), ``timings`` (wall-clock seconds of the last episode;
    kept out of ``info`` so that equal seeds and actions give equal ``info``).

    Pickling (``copy.deepcopy``, process pools, vector envs): an env pickles before ``reset``, in
    the design phase (after ``reset``, before the design step) and after an episode ends; the copy
    starts its own sandbox session on its next design. While a design script runs (the ``execute``
    phase) its state lives in a sandbox process, which cannot be serialised or replayed faithfully
    (scripts may use randomness, time and tools), so pickling then raises ``TypeError`` saying so.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # fps: declared for the checker; ansi has none

    def __init__(
        self,
        dataset: str | None = None,
        *,
        task: TaskSettings | None = None,
        reward: RewardConfig | dict[str, Any] | None = None,
        budgets: BudgetSettings | Budgets | dict[str, Any] | None = None,
        sandbox: Any = None,
        grader_kwargs: dict[str, Any] | None = None,
        designer_examples: Sequence[str] | None = None,
        render_mode: str | None = None,
        **flat: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        groups = group_kwargs(dataset, task, reward, budgets, flat)
        tasks = groups.task.load()
        self.tasks: list[Task] = tasks
        self.dataset = groups.task.dataset or tasks[0].dataset
        self._index_of = {t.id: i for i, t in enumerate(tasks)}

        self.budgets: Budgets = groups.budgets.script
        self.reward_config: RewardConfig = groups.reward
        from mx_envs.envs.prompts import DEFAULT_EXAMPLES

        self.designer_examples = tuple(DEFAULT_EXAMPLES if designer_examples is None else designer_examples)
        self.max_observation_chars = groups.budgets.max_observation_chars
        self.observation_space = observation_space(self.max_observation_chars)
        self.action_space = LLMText(groups.budgets.max_action_chars)
        self._sandbox = sandbox
        self.grader_kwargs = dict(grader_kwargs or {})
        self.session: Any = None  # MASSession, created on the first design turn

        self.task: Task | None = None
        self.outcome: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}
        self.design_text: str | None = None
        self.last_grade: Any = None  # the grader's full verdict of the last episode (details included)
        self._trace = EpisodeTrace()
        self._designer_messages: list[dict[str, str]] = []
        self._obs: dict[str, Any] | None = None
        self._phase = "idle"  # idle -> design -> execute -> done
        self._closed = False
        self._episode_t0 = 0.0

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode on a task: ``options`` may hold ``task_id`` (str), ``index`` (int) or
        ``task`` (a :class:`Task`); otherwise the task is drawn with ``self.np_random``.
        """
        super().reset(seed=seed)
        self._ensure_open()
        self._end_session()
        self.task = self._pick_task(options or {})
        self._trace = EpisodeTrace()
        self.outcome = None
        self.timings = {"reset_s": 0.0, "script_s": 0.0, "grade_s": 0.0, "episode_s": 0.0}
        self._episode_t0 = time.perf_counter()
        from mx_envs.envs.prompts import designer_messages

        self._designer_messages = designer_messages(self.task, self.designer_examples)
        self.design_text: str | None = None
        self.last_grade: Any = None
        self._phase = "design"
        self._obs = make_observation(DESIGNER, DESIGNER_AGENT, self._designer_messages)
        self.timings["reset_s"] = time.perf_counter() - self._episode_t0
        return self._obs, self._task_info()

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self._ensure_open()
        if self._phase == "idle":
            raise ResetNeeded("step() before reset(): call env.reset() first")
        if self._phase == "done":
            raise ResetNeeded("the episode has ended (terminated=True was returned): call env.reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"the action must be the actor's text (str), got {type(action).__name__}")
        if not self.action_space.contains(action):
            return self._end_now(TerminationReason.BUDGET_EXCEEDED,
                                 f"action of {len(action)} characters exceeds max_action_chars="
                                 f"{self.action_space.max_length}")
        try:
            return self._advance(action)
        except Exception as exc:  # noqa: BLE001 - no action may make step raise (DESIGN.md): the episode ends
            logger.warning("episode of %s ended by a host error", getattr(self.task, "id", "?"), exc_info=True)
            return self._end_now(TerminationReason.SANDBOX_ERROR,
                                 f"the host failed while running this episode: {type(exc).__name__}: {str(exc)[:300]}")

    def _advance(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert self.task is not None
        t0 = time.perf_counter()
        if self._phase == "design":
            self.design_text = action
            result = self._get_session().start(action, self.task.prompt)
        else:
            pending = self._trace.pending
            assert pending is not None
            pending.reply = action
            result = self.session.reply(action)
        self.timings["script_s"] += time.perf_counter() - t0
        if isinstance(result, LLMRequest):
            return self._executor_step(result)
        return self._final_step(result)

    def _end_now(self, reason: TerminationReason, error: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """End the episode here with ``reason`` (an invalid design's reward), whatever state it is in."""
        session = self.session
        if session is not None and self._phase == "execute":
            try:
                session.close()
            except Exception:  # noqa: BLE001 - the episode ends either way
                logger.warning("closing the session failed", exc_info=True)
        finished = Finished(
            reason=reason, error=error, llm_calls=len(self._trace.turns),
            agents=list(getattr(session, "agents", []) or []), tool_calls=list(getattr(session, "tool_calls", []) or []),
        )
        try:
            return self._final_step(finished)
        except Exception:  # noqa: BLE001 - the trace itself may be what broke (a structure too deep to copy)
            logger.warning("final step failed; ending without the trace", exc_info=True)
            self._trace = EpisodeTrace()
            return self._final_step(dataclasses.replace(finished, agents=[], tool_calls=[]))

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._obs is None:
            return None
        from mx_envs.envs.observation import actor_name, decode_messages

        head = f"[{actor_name(self._obs)}: {self._obs['agent'] or '(episode over)'}]"
        body = "\n".join(f"--- {m['role']} ---\n{m['content']}" for m in decode_messages(self._obs))
        return f"{head}\n{body}\n"

    def close(self) -> None:
        """End a running script (its episode counts as truncated) and release the session."""
        if self._closed:
            return
        self._end_session()
        self.session = None
        self._closed = True
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        if self._phase == "execute":
            agent = self._trace.pending.agent if self._trace.pending is not None else "?"
            raise TypeError(
                f"a MetaAgentXEnv cannot be pickled mid-execution: its design script is running in a "
                f"sandbox process (waiting for sub-agent {agent!r}), which cannot be serialised. Pickle it "
                "after reset() (before the design step) or after the episode ends."
            )
        state = self.__dict__.copy()
        state["session"] = None  # the sandbox session (pipes, processes): the copy makes its own
        return state

    # ------------------------------------------------------------------ structured access

    @property
    def trajectories(self) -> dict[str, SubAgentTrajectory]:
        """The nested execution envs: each sub-agent's turns (current or last episode)."""
        return self._trace.by_agent

    @property
    def sub_agents(self) -> list[str]:
        return list(self._trace.by_agent)

    @property
    def turns(self) -> list[Turn]:
        return self._trace.turns

    @property
    def phase(self) -> str:
        """``idle`` (before reset), ``design``, ``execute`` or ``done``."""
        return self._phase

    @property
    def actor(self) -> str | None:
        return {"design": "designer", "execute": "executor"}.get(self._phase)

    def task_index(self, task_id: str) -> int:
        try:
            return self._index_of[task_id]
        except KeyError:
            raise KeyError(f"unknown task_id {task_id!r} in {self.dataset!r} ({len(self.tasks)} tasks)") from None

    # ------------------------------------------------------------------ internals

    def _ensure_open(self) -> None:
        if self._closed:
            raise gym.error.ClosedEnvironmentError("this MetaAgentXEnv is closed")

    def _get_session(self) -> Any:
        if self.session is None:
            from mx_envs.mas.session import MASSession

            self.session = MASSession(sandbox=self._sandbox, budgets=self.budgets)
        return self.session

    def _end_session(self) -> None:
        if self.session is not None and self._phase == "execute":
            self.session.close()

    def _pick_task(self, options: dict[str, Any]) -> Task:
        unknown = set(options) - {"task_id", "index", "task"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; known: task_id, index, task")
        if sum(k in options for k in ("task_id", "index", "task")) > 1:
            raise ValueError("give at most one of the reset options task_id, index, task")
        if "task" in options:
            task = options["task"]
            if not isinstance(task, Task):
                raise TypeError(f"options['task'] must be a Task, got {type(task).__name__}")
            return task
        if "task_id" in options:
            return self.tasks[self.task_index(str(options["task_id"]))]
        if "index" in options:
            index = options["index"]
            if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                raise TypeError(f"options['index'] must be an int, got {type(index).__name__}")
            if not -len(self.tasks) <= int(index) < len(self.tasks):
                raise IndexError(f"task index {index} out of range for {len(self.tasks)} tasks")
            return self.tasks[int(index)]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _task_info(self) -> dict[str, Any]:
        assert self.task is not None
        return {"task_id": self.task.id, "dataset": self.task.dataset, "kind": self.task.kind}

    def _executor_step(self, req: LLMRequest) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs = make_observation(EXECUTOR, req.agent, req.messages, req.options)
        if len(obs["messages"]) > self.max_observation_chars:
            self.session.close()
            finished = Finished(
                reason=TerminationReason.BUDGET_EXCEEDED,
                error=(
                    f"the chat of {req.agent!r} ({len(obs['messages'])} characters as JSON) exceeds "
                    f"max_observation_chars={self.max_observation_chars}"
                ),
                llm_calls=req.call_index,
                agents=list(self.session.agents),
                tool_calls=list(self.session.tool_calls),
            )
            return self._final_step(finished)
        self._trace.open_turn(req.call_index, req.agent, req.messages, req.options,
                              tool_runs_before=len(self.session.tool_calls))
        self._phase = "execute"
        self._obs = obs
        info = self._task_info()
        info.update({"actor": "executor", "agent": req.agent, "call_index": req.call_index})
        return obs, -float(self.reward_config.llm_call_penalty), False, False, info

    def _final_step(self, finished: Finished) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        assert self.task is not None
        task = self.task
        t0 = time.perf_counter()
        answer = finished.answer_text if finished.reason is TerminationReason.COMPLETED else None
        grade = None
        if answer is not None:
            from mx_envs.tasks import grade as grade_fn

            opts = dict(self.grader_kwargs)
            if task.kind == "code" and self._sandbox is not None:
                opts.setdefault("sandbox", self._sandbox)
            grade = grade_fn(task, answer, **opts)
        self.last_grade = grade
        self.timings["grade_s"] = time.perf_counter() - t0
        correct = bool(grade.correct) if grade is not None else False
        score = float(grade.score) if grade is not None else 0.0
        outcome = self.reward_config.outcome(task.kind, correct, score)
        valid = finished.reason is TerminationReason.COMPLETED
        penalty = 0.0 if valid else float(self.reward_config.invalid_design_penalty)
        reward = outcome - penalty
        n_turns = len(self._trace.turns)
        info: dict[str, Any] = self._task_info()
        info.update(
            {
                "correct": correct,
                "score": score,
                "answer": answer,
                "extracted": None if grade is None else _jsonable(grade.extracted),
                "grade_details": {} if grade is None else _deterministic(grade.details),
                "termination_reason": finished.reason.value,
                "error": finished.error,
                "design_valid": valid,
                "design": self.session.script if self.session is not None and self.design_text is not None else None,
                "llm_calls": finished.llm_calls,
                "agents": list(finished.agents),
                "tool_calls": [dataclasses.asdict(tc) for tc in finished.tool_calls],
                "trajectories": self._trace.to_dict(),
                "outcome": outcome,
                "reward_terms": {"outcome": outcome, "invalid_design_penalty": -penalty},
                "designer_outcome": {"design_valid": valid, "outcome": outcome, "reward": reward},
                "executor_outcome": {"turns": n_turns, "outcome": outcome, "correct": correct},
                "integrity": episode_integrity(
                    task, answer_text=answer, extracted=None if grade is None else grade.extracted,
                    correct=correct, outcome=outcome, reason=finished.reason.value, error=finished.error,
                    llm_calls=finished.llm_calls, turns=self._trace.turns, tool_calls=finished.tool_calls,
                    run_verdict=getattr(self.session, "script_run_verdict", None),
                ),
            }
        )
        self.outcome = info
        self._phase = "done"
        self._obs = terminal_observation()
        self.timings["episode_s"] = time.perf_counter() - self._episode_t0
        if self.session is not None:
            self.timings["script_own_s"] = float(getattr(self.session, "script_time_s", 0.0))
        return self._obs, float(reward), True, False, _copy_info(info)


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


# Grader details may carry run times and memory peaks; those would make equal episodes give unequal
# info, so keys that name a measurement are dropped (they stay on env.last_grade).
_MEASURED_SUFFIXES = ("_s", "_ms", "_mb", "_seconds")
_MEASURED_WORDS = ("wall", "elapsed", "duration", "cpu", "peak", "timing")


def _is_measurement(key: Any) -> bool:
    k = str(key).lower()
    return k.endswith(_MEASURED_SUFFIXES) or any(w in k for w in _MEASURED_WORDS)


def _deterministic(details: Any) -> Any:
    if isinstance(details, dict):
        return {k: _deterministic(v) for k, v in details.items() if not _is_measurement(k)}
    if isinstance(details, list | tuple):
        return [_deterministic(v) for v in details]
    return _jsonable(details)


def _copy_info(info: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(info)
