"""The training loop: hierarchical rollout -> transitions -> credit assignment -> policy update.

One step (``Trainer.step``):

1. draw B training tasks (a seeded permutation of the training set; the position is checkpointed);
2. sample M designs per task and execute each N times (:func:`mx_agents.design_groups.run_design_groups`,
   every pending LLM turn of all B*M*N episodes batched per round; executions are sampled, not greedy);
3. turn every LLM turn into a :class:`~mx_agents.transition.Transition` with explicit group ids and write
   them to ``RUN/transitions/step_XXXXXXXX.jsonl`` (inspectable, replayable, consumable elsewhere);
4. hierarchical credit assignment (:func:`mx_train.credit.assign_advantages`): a design's reward is the
   mean of its N executions, normalised across the M designs of its task; executions are normalised
   across the task (or the design);
5. the co-evolution schedule names the active roles; the inactive role's transitions are left out of
   the loss; the learner(s) update and push the new weights to the generation backend;
6. metrics (reward by role, accuracy, validity, advantage stats, loss, KL, tokens/s, phase, timings, the
   reward-hack monitor's ``integrity/`` rates: :mod:`mx_train.hack_monitor`, whose jumps are logged as
   warnings) go to ``metrics.jsonl`` and TensorBoard; a checkpoint is written atomically every
   ``save_every`` steps.

With ``rollout.async: {max_staleness: k}`` the rollout of step t+1 runs in a thread while step t's
update runs (:mod:`mx_train.async_rollout`): drawing the tasks, the rollout and the credit assignment
(1, 2, 4) move to that thread; writing the transitions, the update and the metrics stay here.

``Trainer.run`` resumes from the newest checkpoint in ``RUN/checkpoints`` when asked: a run killed
with SIGKILL mid-step restarts at its last completed step with the same model, optimizer, schedule,
RNG and data position.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mx_agents.continuous import backends_metrics, snapshot_backends
from mx_agents.progress import progress_bar
from mx_agents.transition import Transition
from mx_train.assembly import (
    BackendFactory,
    EnvFactory,
    build_backends,
    build_learners,
    build_rollout_policy,
    default_backend_factory,
    make_env_factory,
    make_env_mix,
    mixed_env_factory,
    shares_model,
)
from mx_train.async_rollout import AsyncRollout, Published, RolloutResult, frozen_view, snapshot
from mx_train.config import TrainConfig
from mx_train.metrics import design_labels_and_validity, summarize_records

logger = logging.getLogger(__name__)


class Trainer:
    """Runs the MetaAgent-X recipe from a :class:`TrainConfig`.

    Args:
        config: the run's configuration.
        out: run directory (overrides ``config.out``).
        env_factory: makes one env (default: ``gym.make(config.env.id, **config.env.kwargs)`` on the
            training split; tests pass a scripted env here).
        backend_factory: ``(model_spec) -> Backend`` (default: an HF backend on the configured device);
            the backend's ``model`` is trained in place when it is a torch module (shared weights: no
            copy); otherwise the learner loads its own copy and pushes weights after each update.
        tasks: the training task ids to cycle through (default: every task of the env's split).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out: str | os.PathLike[str] | None = None,
        env_factory: EnvFactory | None = None,
        backend_factory: BackendFactory | None = None,
        tasks: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(out or config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.rng = random.Random(config.seed)  # task order; checkpointed
        self.np_rng = np.random.default_rng(config.seed)
        # Several envs (config.envs): each step's tasks are drawn by env weight; see mx_train.env_mix.
        self.mix = make_env_mix(config) if env_factory is None and len(config.env_entries()) > 1 else None
        if self.mix is not None:
            self.env_factory = mixed_env_factory(self.mix)
        else:
            self.env_factory = env_factory or make_env_factory(config)
        self._probe_env = self.env_factory()
        if self.mix is not None:
            from mx_train.env_mix import qualify

            self.task_ids = [qualify(k, t) for k, e in enumerate(self.mix) for t in e.task_ids]
        else:
            self.task_ids = list(tasks) if tasks is not None else [t.id for t in self._probe_env.unwrapped.tasks]
        if not self.task_ids:
            raise ValueError(f"env {config.env.id!r} has no training tasks")
        self.order: list[int] = []
        self.position = 0  # next index into self.order
        self.epoch = 0
        # Per env of a mix: its own permutation, position and epoch.
        self.mix_position: list[dict[str, Any]] = [
            {"order": [], "position": 0, "epoch": 0} for _ in (self.mix or [])
        ]
        # The async rollout thread draws tasks while a checkpoint may read the position.
        self._data_lock = threading.Lock()
        self._async: AsyncRollout | None = None
        self._restored_pending: list[RolloutResult] = []  # rollouts made ahead, from a checkpoint
        self._update_span = (0.0, 0.0)  # the last update's (start, end), for async/overlap_s
        self._build_policy(backend_factory)
        from mx_train.schedule import CoEvolutionSchedule

        s = config.schedule
        self.schedule = CoEvolutionSchedule(s.mode, s.phase_steps, s.first)
        self.step_index = 0  # completed steps
        self._envs: list[Any] | None = None
        self._workers: Any = None
        from mx_train.hack_monitor import HackMonitor

        # Reward-hack monitor (mx_train/HACK_MONITOR.md): jumps of the integrity/ rates are warnings.
        self.monitor = HackMonitor()
        self._step_records: list[Any] | None = None  # this step's EpisodeRecords (local rollout only)
        from mx_train.memory_watch import PhaseRSS

        # Peak resident memory per phase (memory/peak_rss_gb/<phase> in every step's metrics).
        self.rss = PhaseRSS().start()

    # ------------------------------------------------------------------ construction
    def _build_policy(self, backend_factory: BackendFactory | None) -> None:
        """Backends, learners (``mx_train.assembly``) and the policy group that routes updates."""
        from mx_train.learner import PolicyGroup

        factory = backend_factory or default_backend_factory(self.config)
        if self.config.distributed.backend == "ray" and backend_factory is None:
            factory = _learner_side_factory(self.config, factory)
        self.backends = build_backends(self.config, factory)
        k = self.max_staleness
        ray = self.config.distributed.backend == "ray"
        # role -> learner; role -> mx_train.weight_sync.EngineSync (engines that get pushed weights).
        # Overlapping rollouts need an engine that is not the model the learner updates meanwhile.
        self.learners, self.syncs = build_learners(self.config, self.backends,
                                                   engine_copy=bool(k) and not ray)
        if k:
            # The push waits for the rollout thread (mx_train.async_rollout); the hook stays set, so the
            # learner knows its samples come from another sampler (off_policy_correction auto -> TIS).
            for learner in {id(lr): lr for lr in self.learners.values()}.values():
                learner.on_weights_updated = _push_at_next_rollout
        self.policy_group = PolicyGroup(self.learners)

    @property
    def max_staleness(self) -> int | None:
        """``rollout.async.max_staleness``; ``None`` for a synchronous run."""
        a = self.config.rollout.async_
        return None if a is None else int(a.max_staleness)

    def make_policy(self, step: int) -> Any:
        return build_rollout_policy(self.backends, self.config, step)

    # ------------------------------------------------------------------ data
    def next_tasks(self) -> list[str]:
        """B task ids without replacement within an epoch (reshuffled each epoch); with an env mix,
        each task first picks its env by weight, then that env's next task."""
        if self.mix is not None:
            return self._next_mixed_tasks()
        out: list[str] = []
        while len(out) < self.config.rollout.tasks_per_step:
            if self.position >= len(self.order):
                self.order = list(range(len(self.task_ids)))
                self.rng.shuffle(self.order)
                self.position = 0
                self.epoch += 1
            out.append(self.task_ids[self.order[self.position]])
            self.position += 1
        return out

    def _next_mixed_tasks(self) -> list[str]:
        from mx_train.env_mix import qualify

        assert self.mix is not None
        weights = [e.weight for e in self.mix]
        out: list[str] = []
        for _ in range(self.config.rollout.tasks_per_step):
            k = self.rng.choices(range(len(self.mix)), weights=weights)[0]
            pos, ids = self.mix_position[k], self.mix[k].task_ids
            if pos["position"] >= len(pos["order"]):
                pos["order"] = list(range(len(ids)))
                self.rng.shuffle(pos["order"])
                pos["position"] = 0
                pos["epoch"] += 1
            out.append(qualify(k, ids[pos["order"][pos["position"]]]))
            pos["position"] += 1
        self.epoch = max(p["epoch"] for p in self.mix_position)
        return out

    def data_position(self) -> dict[str, Any]:
        with self._data_lock:  # a copy: the async rollout thread may draw the next step's tasks
            if self.mix is not None:
                return {"mix": [dict(p, order=list(p["order"])) for p in self.mix_position], "epoch": self.epoch}
            return {"order": list(self.order), "position": self.position, "epoch": self.epoch}

    def _set_data_position(self, pos: dict[str, Any] | None) -> None:
        if pos and "mix" in pos:
            if self.mix is None or len(pos["mix"]) != len(self.mix):
                raise ValueError("the checkpoint's data position is for another env mix than this config's")
            self.mix_position = [dict(p, order=list(p["order"])) for p in pos["mix"]]
            self.epoch = int(pos["epoch"])
        elif pos:
            self.order, self.position, self.epoch = list(pos["order"]), int(pos["position"]), int(pos["epoch"])

    # ------------------------------------------------------------------ rollout
    def _env_pool(self) -> list[Any]:
        r = self.config.rollout
        need = r.tasks_per_step * r.designs * r.executions
        if self._envs is None:
            self._envs = [self._probe_env] + [self.env_factory() for _ in range(need - 1)]
        return self._envs

    def rollout(self, task_ids: Sequence[str], step: int) -> tuple[list[Transition], dict[str, Any]]:
        """Run the M x N hierarchical rollout of ``task_ids``; transitions carry advantages."""
        transitions, summary, self._step_records = self._rollout(task_ids, step)
        return transitions, summary

    def _rollout(
        self, task_ids: Sequence[str], step: int, versions: dict[str, int] | None = None,
        learners: dict[str, Any] | None = None,
    ) -> tuple[list[Transition], dict[str, Any], list[Any] | None]:
        """:meth:`rollout` and the episode records (local rollout only). ``versions``: role -> the
        learner version of the weights the engines serve (default: the learners' own); ``learners``:
        what a Ray weight push reads (default: the live learners; an async rollout thread passes a
        frozen view of the published weights)."""
        from mx_train.credit import assign_advantages, role_metrics

        r, a = self.config.rollout, self.config.algorithm
        versions = dict(versions) if versions is not None else self.policy_group.versions()
        version = versions["designer"]
        records: list[Any] | None = None
        uids = [f"s{step}-t{i}-{tid}" for i, tid in enumerate(task_ids)]
        labels: list[list[str]] | None = None
        valid: list[list[bool]] | None = None
        seed = (self.config.seed + step * 7919) % (2**31)
        if self.config.distributed.backend == "ray":
            from mx_train.distributed import push_weights, ray_rollout, start_workers

            if self._workers is None:
                self._workers = start_workers(self.config)
            view = learners if learners is not None else self.learners
            pushed = push_weights(view, self._workers)  # the first step's (warm-started) weights
            transitions, exec_rewards, summary, labels, valid = ray_rollout(
                self._workers, view, task_ids, uids, step, seed)
            summary.update(pushed)
        else:
            transitions, exec_rewards, summary, labels, valid, records = self._local_rollout(
                task_ids, uids, step, seed, versions)
        d_adv, e_adv = assign_advantages(
            transitions,
            a.estimator,
            a.executor_group,  # type: ignore[arg-type]
            a.normalize_std,
            execution_rewards=exec_rewards,
        )
        grid = np.array(
            [[[exec_rewards[(uid, m, n)] for n in range(r.executions)] for m in range(r.designs)] for uid in uids]
        )
        summary.update(role_metrics(grid, labels, valid))
        summary.update(self._env_metrics(task_ids, grid))
        summary.update(
            {
                "adv/designer_abs_mean": float(np.abs(d_adv).mean()),
                "adv/executor_abs_mean": float(np.abs(e_adv).mean()),
                "adv/designer_nonzero": float((np.abs(d_adv) > 0).mean()),
                "adv/executor_nonzero": float((np.abs(e_adv) > 0).mean()),
                "policy_version": float(version),
                "transitions/designer": float(sum(t.role == "designer" for t in transitions)),
                "transitions/executor": float(sum(t.role == "executor" for t in transitions)),
            }
        )
        return transitions, summary, records

    def _local_rollout(
        self, task_ids: Sequence[str], uids: list[str], step: int, seed: int, versions: dict[str, int]
    ) -> tuple[list[Transition], dict[tuple[str, int, int], float], dict[str, Any], list[list[str]],
               list[list[bool]], list[Any]]:
        """The M x N rollout in this process: transitions, execution rewards, episode metrics, per
        task and design its structure label and validity, and the episode records (for the monitor)."""
        from mx_agents.design_groups import run_design_groups
        from mx_train.weight_sync import before_rollout

        r = self.config.rollout
        before_rollout(self.backends.values())
        result = run_design_groups(
            self._env_pool(),
            self.make_policy(step),
            task_ids,
            r.designs,
            r.executions,
            seed=seed,
            task_uids=uids,
            progress=self.progress,
            step_workers=r.step_workers,
            max_turns=r.max_turns,
            run_id=f"step{step}",
            schedule=r.schedule,
        )
        version = versions["designer"]
        transitions = result.transitions(policy_version=version)
        for t in transitions:  # split policy: each role's engine serves its own learner's version
            t.policy_version = versions.get(t.role, version)
        labels, valid = design_labels_and_validity(result)
        return (transitions, result.execution_rewards(), summarize_records(result.records), labels, valid,
                result.records)

    def _engine_transitions(self, transitions: Sequence[Transition]) -> dict[str, list[Transition]]:
        """Engine role (see :func:`mx_train.distributed.engine_roles`) -> the transitions it sampled."""
        from mx_train.distributed import engine_roles

        serves = engine_roles(self.learners)
        out: dict[str, list[Transition]] = {}
        for t in transitions:
            if t.role in serves:
                out.setdefault(serves[t.role], []).append(t)
        return out

    def _worker_sampling_metrics(self, transitions: Sequence[Transition]) -> dict[str, float]:
        """``rollout/logprob_diff_*`` of the Ray workers' sampling log-probs against the learner (the
        workers' engines are copies of it: the gap says whether they sampled with its weights)."""
        from mx_train.weight_sync import sampling_diff_metrics

        out: dict[str, float] = {}
        for role, ts in self._engine_transitions(transitions).items():
            learner = self.learners[role]
            out.update(sampling_diff_metrics(learner.model, ts, self.config.rollout.logprob_probe,
                                             getattr(learner, "pad_token_id", 0) or 0))
        return out

    def _push_to_workers(self, transitions: Sequence[Transition]) -> dict[str, float]:
        """After an update: the new weights to every Ray worker, checked there, with the engines'
        stale/synced log-prob gaps on this step's probe (the Ray twin of ``EngineSync.push``)."""
        if self._workers is None:
            return {}
        from mx_train.distributed import push_weights
        from mx_train.weight_sync import probe_pairs

        probe = self.config.rollout.logprob_probe
        probes = {role: probe_pairs(ts, probe) for role, ts in self._engine_transitions(transitions).items()}
        return push_weights(self.learners, self._workers, probes)

    def _env_metrics(self, task_ids: Sequence[str], grid: np.ndarray) -> dict[str, float]:
        """Per env of a mix: tasks drawn this step, mean execution reward, best-execution reward."""
        if self.mix is None:
            return {}
        from mx_train.env_mix import split_qualified

        env_of = [split_qualified(t)[0] for t in task_ids]
        out: dict[str, float] = {}
        for k, entry in enumerate(self.mix):
            rows = [i for i, e in enumerate(env_of) if e == k]
            out[f"env/{entry.name}/tasks"] = float(len(rows))
            if rows:
                out[f"env/{entry.name}/reward"] = float(grid[rows].mean())
                out[f"env/{entry.name}/design_best_execution"] = float(grid[rows].max(axis=2).mean())
        return out

    def write_transitions(self, step: int, transitions: Sequence[Transition]) -> Path:
        d = self.out / "transitions"
        d.mkdir(exist_ok=True)
        path = d / f"step_{step:08d}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for t in transitions:
                f.write(t.to_json() + "\n")
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, Any]:
        """One training step: the rollout (made here, or taken from the async rollout thread), the
        update, the weights to the engines; returns the step's metrics."""
        if self.max_staleness is not None:
            return self._async_step()
        t0 = time.perf_counter()
        # A phase change parks and restores optimizer moments (seconds on a CPU): beside the rollout
        self.policy_group.prepare_phase(self.schedule.active_roles(self.step_index))
        with self.rss.phase("rollout", release=True):
            result = self._produce(self.step_index)
        return self._train_on(result, t0, overlapping=False)

    def _produce(self, step: int, pub: Published | None = None) -> RolloutResult:
        """Step ``step``'s tasks and rollout: with the engines' current weights, or (async rollout
        thread) with the published weights ``pub``."""
        t0 = time.perf_counter()
        with self._data_lock:
            task_ids = self.next_tasks()
        engines = snapshot_backends(self.backends.values())
        versions = dict(pub.versions) if pub is not None else self.policy_group.versions()
        view = frozen_view(self.learners, pub) if pub is not None and self._workers is not None else None
        transitions, metrics, records = self._rollout(task_ids, step, versions, view)
        metrics.update(backends_metrics(engines))  # batch-width histogram, prefix-hit rate
        return RolloutResult(step=step, task_ids=list(task_ids), transitions=transitions, metrics=metrics,
                             weights_step=pub.step if pub is not None else step, versions=versions,
                             time_s=time.perf_counter() - t0, records=records)

    def _train_on(self, result: RolloutResult, t0: float, overlapping: bool) -> dict[str, Any]:
        """Steps 3-6 on ``result`` (the step ``self.step_index``): transitions written, credit already
        assigned, the update, the push; ``overlapping``: an async rollout may run meanwhile (the engines
        stay awake and the weights go to them when that rollout thread asks, not here)."""
        step = self.step_index
        if result.step != step:
            raise RuntimeError(f"rollout of step {result.step} handed to step {step}")
        transitions, metrics = result.transitions, dict(result.metrics)
        t_roll = result.time_s
        self._step_records = result.records
        self._check_integrity(step, metrics)
        now = self.policy_group.versions()
        for t in transitions:  # learner versions between the sampling weights and these
            t.staleness = int(now.get(t.role, t.policy_version)) - int(t.policy_version)
        self.write_transitions(step, transitions)
        active = self.schedule.active_roles(step)
        from mx_train.weight_sync import after_rollout

        for sync in {id(s): s for s in self.syncs.values()}.values():
            metrics.update(sync.rollout_metrics(transitions))  # engine vs learner (+ staleness when async)
        if self._workers is not None:
            metrics.update(self._worker_sampling_metrics(transitions))
        if not overlapping:
            after_rollout(self.backends.values())
            # The update is about to change these roles' weights, which makes every key/value state in
            # their engines' prefix caches stale (they are cleared at the next step anyway): freed now,
            # they are not resident beside the update's gradients and activations (up to 512 MiB per
            # HF engine). A skipped update loses the next step's hits on them; a frozen role keeps its.
            for backend in {id(b): b for r, b in self.backends.items() if r in active}.values():
                cache = getattr(backend, "prefix_cache", None)
                if cache is not None and hasattr(cache, "clear"):
                    cache.clear()
        t1 = time.perf_counter()
        with self.rss.phase("update", release=True):
            update = self.policy_group.update(transitions, active_roles=active)
        t_update = time.perf_counter() - t1
        self._update_span = (t1, t1 + t_update)
        metrics.update(update)
        for sync in {id(s): s for s in self.syncs.values()}.values():
            metrics.update(sync.pop_metrics())  # stale/synced differences and transfer of the push
        if self.max_staleness is None:
            metrics.update(self._push_to_workers(transitions))  # Ray: the same, for the workers' engines
        gen_tokens = sum(len(t.response_ids) for t in transitions)
        metrics.update(
            {
                "phase": self.schedule.phase(step),
                "active/designer": float("designer" in active),
                "active/executor": float("executor" in active),
                "time/rollout_s": t_roll,
                "time/update_s": t_update,
                "time/step_s": time.perf_counter() - t0,
                "rollout/generated_tokens": float(gen_tokens),
                "rollout/tokens_per_s": gen_tokens / max(t_roll, 1e-9),
                # < 1: the engine waited on the episodes (scripts, sandboxed tools) part of the rollout
                **({"rollout/engine_busy_frac": metrics["rollout/engine_s"] / max(t_roll, 1e-9)}
                   if "rollout/engine_s" in metrics else {}),
                "epoch": float(self.epoch),
                **self.rss.metrics(),  # peaks so far: a checkpoint's shows from the next step on
            }
        )
        self.step_index += 1
        return metrics

    # ------------------------------------------------------------------ async rollouts
    def _async_step(self) -> dict[str, Any]:
        """A step whose rollout the rollout thread made (or makes now) with ``W_{step-k}``; the weights
        it trains from are then published for step ``step + k``'s rollout."""
        ar = self._async if self._async is not None else self._start_async(self.config.max_steps)
        step = self.step_index
        t0 = time.perf_counter()
        publish_s = 0.0
        if ar.k == 0 and step > ar.base:  # step t's rollout samples W_t: the engines hold it already
            publish_s += self._publish_async(step)
        with self.rss.phase("rollout", release=True):
            result, waited = ar.get(step)
        if ar.k >= 1 and step > ar.base:  # W_t for step t+k's rollout (the engine idles when k = 1)
            publish_s += self._publish_async(step)
        metrics = self._train_on(result, t0, overlapping=ar.k >= 1)
        stale = [t.staleness for t in result.transitions] or [0]
        metrics.update({
            "async/max_staleness": float(ar.k),
            "async/weights_step": float(result.weights_step),
            "async/staleness_mean": float(np.mean(stale)),
            "async/staleness_max": float(max(stale)),
            "async/rollout_wait_s": waited,  # the learner waiting for this rollout
            "async/weights_wait_s": result.weights_wait_s,  # this rollout waiting for its weights
            "async/weights_load_s": result.load_s,  # its weights into the engines (snapshots)
            "async/publish_s": publish_s,  # this step's weights handed over (the k = 1 push included)
            "async/overlap_s": ar.overlap(*self._update_span),  # rollouts running during the update
        })
        return metrics

    def _start_async(self, total: int) -> AsyncRollout:
        """The rollout thread for steps ``step_index`` (plus any from a checkpoint) .. ``total - 1``."""
        k = self.max_staleness
        assert k is not None
        if self.config.distributed.backend == "ray" and self._workers is None:
            from mx_train.distributed import start_workers

            self._workers = start_workers(self.config)
        ar = AsyncRollout(self._produce, self._load_async, k, self.step_index, total, self._restored_pending)
        self._restored_pending = []
        self._async = ar
        self._publish_async(self.step_index)
        return ar.start()

    def _publish_async(self, step: int) -> float:
        """Hand ``W_step`` (the learners' current weights) to the rollout thread; seconds taken.

        k = 0: nothing to move (the engines hold it). k = 1, local engines: pushed now, straight from
        the learner (the engine idles until it has it). Otherwise a snapshot the rollout thread loads
        when it needs it (Ray: on CPU, also what a replaced worker is re-synced with)."""
        ar = self._async
        assert ar is not None
        t0 = time.perf_counter()
        versions = self.policy_group.versions()
        ray = self._workers is not None
        weights: dict[str, dict[str, Any]] | None = None
        if ar.k == 0 or (step == ar.base and not ray):
            pass  # synchronous order, or the engines were loaded from these weights (start, resume)
        elif ar.k == 1 and not ray:
            for sync in {id(s): s for s in self.syncs.values()}.values():
                sync.push()  # with its stale/synced log-prob checks (popped into this step's metrics)
        else:
            from mx_train.distributed import engine_roles

            roles = sorted(set(engine_roles(self.learners).values())) if ray else sorted(self.syncs)
            weights = {r: snapshot(self.learners[r].weights_for_sync(), "cpu" if ray else None) for r in roles}
        ar.publish(Published(step, versions, weights))
        return time.perf_counter() - t0

    def _load_async(self, pub: Published) -> None:
        """(Rollout thread) put a published snapshot into the engines before sampling with it."""
        assert pub.weights is not None
        if self._workers is not None:
            from mx_train.distributed import push_weights

            push_weights(frozen_view(self.learners, pub), self._workers)
            return
        for role, weights in pub.weights.items():
            self.syncs[role].transfer(weights)

    def _stop_async(self, timeout: float | None = 60.0) -> None:
        if self._async is not None:
            self._async.close(timeout)
            self._async = None

    def _check_integrity(self, step: int, metrics: dict[str, Any]) -> None:
        """Feed the step's integrity/ rates to the reward-hack monitor; log each jump as a warning and
        keep the traces of the step's flagged episodes beside it."""
        from mx_train.hack_monitor import ALERTS, EPISODES, save_flagged_traces

        if EPISODES not in metrics:  # envs without integrity records (test doubles)
            return
        alerts = self.monitor.check(step, metrics)
        metrics[ALERTS] = float(len(alerts))
        if not alerts:
            return
        where = ""
        if self._step_records:
            entries = self.config.env_entries()
            env_id = entries[0][0].id if len(entries) == 1 else "mix"
            directory = self.out / "integrity" / f"step_{step:08d}"
            paths = save_flagged_traces(self._step_records, directory, env_id=env_id)
            if paths:
                where = f"; traces of {len(paths)} flagged episodes under {directory} (mx trace FILE --html OUT)"
        for alert in alerts:
            logger.warning("reward-hack monitor: %s%s", alert.message(), where)

    # ------------------------------------------------------------------ checkpoints
    def _models(self) -> dict[str, Any]:
        return {name: lr.model for name, lr in self.policy_group.learners().items()}

    def policy_settings(self) -> dict[str, Any]:
        """What a checkpoint's weights were trained with, so evaluation can play them the same way:
        the designer prompt material and each role's sampling (read by ``mx eval``)."""
        r = self.config.rollout
        return {
            "designer_prompt": dict(r.designer_prompt),
            "designer": dataclasses.asdict(r.designer),
            "executor": dataclasses.asdict(r.executor),
        }

    def save(self, root: Path | None = None, keep_last: int | None = None, full: bool = True,
             keep_full: bool = True, weights_dtype: Any = None) -> Path:
        """Checkpoint the current step; ``full=False`` writes the weights only (no optimizer/RNG state);
        ``keep_full=False`` lets pruning remove the newest full checkpoint too."""
        from mx_train.checkpoint import save_checkpoint

        tok = getattr(self.backends["designer"], "tokenizer", None)
        extra: dict[str, Any] = {"config": self.config.to_dict(), "policy_settings": self.policy_settings()}
        if full and self._async is not None:
            # Drained, not discarded: the rollouts made ahead (steps t+1..t+k, sampled with older
            # weights than these) are part of the run; --resume trains on exactly them.
            extra["async_pending"] = [r.to_dict() for r in self._async.drain()]
        with self.rss.phase("checkpoint", release=True):
            return save_checkpoint(
                root or self.out / "checkpoints",
                self.step_index,
                models=self._models(),
                learners=self.policy_group.learners(),
                schedule=self.schedule,
                rngs={"tasks": self.rng, "numpy": self.np_rng},
                data_position=self.data_position(),
                extra=extra,
                keep_last=self.config.keep_last if keep_last is None else keep_last,
                tokenizer=tok,
                full=full,
                keep_full=keep_full,
                weights_dtype=weights_dtype,
            )

    def resume(self) -> int | None:
        """Load the newest checkpoint of this run; returns its step (``None`` when there is none)."""
        from mx_train.checkpoint import load_latest

        ckpt = load_latest(self.out / "checkpoints")
        if ckpt is None:
            return None
        ckpt.restore(
            models=self._models(),
            learners=self.policy_group.learners(),
            schedule=self.schedule,
            rngs={"tasks": self.rng, "numpy": self.np_rng},
        )
        self._set_data_position(ckpt.data_position)
        self.step_index = ckpt.step
        pending = ckpt.extra.get("async_pending") or []
        if pending and self.max_staleness is None:
            from mx_envs.errors import ConfigError

            raise ConfigError(
                f"checkpoint {ckpt.path} holds {len(pending)} rollouts made ahead by an async run "
                "(rollout.async); resume with rollout.async set (max_staleness: 0 trains on them, then "
                "continues synchronously)", key="rollout.async")
        self._restored_pending = [RolloutResult.from_dict(d) for d in pending]
        for role, learner in self.learners.items():
            if not shares_model(self.backends[role], learner):
                self.backends[role].load_weights(learner.weights_for_sync())
        logger.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
        return ckpt.step

    # ------------------------------------------------------------------ the run
    def warm_start(self) -> list[dict[str, float]]:
        """SFT cold start on library designs (``config.warm_start``): designer prompts of training
        tasks paired with the fenced source of each listed design."""
        ws = self.config.warm_start
        if not (ws.designs or ws.data) or ws.steps <= 0:
            return []
        from mx_agents.observation import parse_observation
        from mx_train.sft import design_examples, load_sft_jsonl, warm_start_batch

        learner = self.learners["designer"]
        tok = getattr(self.backends["designer"], "tokenizer", None)
        policy = self.make_policy(-1)
        designer = getattr(policy, "designer", policy)
        n_prompts = min(ws.tasks, len(self.task_ids))
        # Spread over the task list, so an env mix contributes prompts of every env.
        picks = [self.task_ids[(i * len(self.task_ids)) // n_prompts] for i in range(n_prompts)]
        prompts = []
        for i, task_id in enumerate(picks):
            obs, _ = self._probe_env.reset(seed=self.config.seed + i, options={"task_id": task_id})
            prompts.append(designer.build_request(parse_observation(obs)).messages)
        per_design = design_examples(ws.designs, prompts, tok)
        data = load_sft_jsonl(ws.data, tok, min_reward=None) if ws.data else []
        # A learner of its own (same model object, own AdamW at the warm-start lr), so the RL
        # optimizer's moments and LR schedule start fresh after the cold start.
        # derive: same model and fp32 masters (and shards, under FSDP), its own optimizer.
        sft = learner.derive(
            {"lr": ws.lr, "kl_coef": 0.0, "warmup_steps": 0, "lr_schedule": ws.lr_schedule,
             "total_steps": ws.steps, "min_lr_ratio": 0.0, "phase_lr": None},
            name="warm_start",
        )
        history = []
        rng = random.Random(self.config.seed)
        bar = progress_bar(ws.steps, "cold start (SFT)", "step") if self.progress else None
        for k in range(ws.steps):
            m = sft.sft_step(warm_start_batch(per_design, data, ws.batch_size, k, rng))
            history.append(m)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m.get('loss', float('nan')):.3f}")
            logger.info(
                "warm start %d/%d: loss %.4f (%.0f tokens, %.1fs)",
                k + 1, ws.steps, m.get("loss", float("nan")), m.get("total_tokens", 0), m.get("time_s", 0),
            )
        if bar is not None:
            bar.close()
        sft.release()  # its optimizer state, on every learner rank
        if ws.save and ws.save_dtype == "bfloat16":
            _round_trained_weights(self.policy_group.learners().values())
        del sft
        for role, lr in self.learners.items():
            if not shares_model(self.backends[role], lr):
                self.backends[role].load_weights(lr.weights_for_sync())
        return history

    def run(self, max_steps: int | None = None, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``max_steps`` completed steps; returns this invocation's step metrics."""
        from mx_train.metrics import MetricsLogger

        total = self.config.max_steps if max_steps is None else max_steps
        resumed = self.resume() if resume else None
        (self.out / "train_config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        if resumed is None and self.step_index == 0:
            with self.rss.phase("warm_start", release=True):
                warm = self.warm_start()
            if warm:
                with open(self.out / "warm_start.jsonl", "w") as f:
                    for i, m in enumerate(warm):
                        f.write(json.dumps({"step": i, **m}) + "\n")
                if self.config.warm_start.save:
                    # The cold-start policy, kept apart from the RL checkpoints (which rotate): the
                    # "before" of before-vs-after comparisons (e.g. the demo's designer ablation).
                    # Weights only: evaluations need no optimizer state, and a resumed run restarts
                    # from its RL checkpoints, never from here.
                    import torch

                    dtype = torch.bfloat16 if self.config.warm_start.save_dtype == "bfloat16" else None
                    self.save(self.out / "cold_start" / "checkpoints", keep_last=1, full=False, weights_dtype=dtype)
        history: list[dict[str, Any]] = []
        log = MetricsLogger(
            self.out, tensorboard=self.config.tensorboard, wandb=self.config.wandb, resume_step=resumed
        )
        if resumed is not None:  # the monitor's running means continue from the logged steps
            from mx_train.metrics import read_metrics

            self.monitor.seed(read_metrics(log.path))
        # Steps of this invocation, with rate and ETA (each step also shows its rollout's episode bar).
        bar = progress_bar(total, "RL steps", "step", initial=self.step_index) if self.progress else None
        try:
            if self.max_staleness is not None and self.step_index < total:
                self._start_async(total)
            while self.step_index < total:
                if self.config.distributed.backend == "ray":
                    from mx_train.distributed import check_learner_ranks

                    check_learner_ranks()  # a learner rank that died since the last step stops the run here
                metrics = self.step()
                log.log(self.step_index - 1, metrics)
                history.append(metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(phase=metrics["phase"], reward=f"{metrics['reward/executor']:.2f}")
                # Counted from 0 like metrics.jsonl, TensorBoard and the plots ("step 0 (1/20)").
                logger.info(
                    "step %d (%d/%d) [%s] reward designer %.3f executor %.3f valid %.2f loss %s (%.1fs)",
                    self.step_index - 1, self.step_index, total, metrics["phase"], metrics["reward/designer"],
                    metrics["reward/executor"], metrics.get("design_valid_rate", float("nan")),
                    _fmt(metrics.get("policy/loss", metrics.get("designer/loss"))), metrics["time/step_s"],
                )
                # Full checkpoints (resumable) every full_save_every steps and at the end; weights-only
                # ones every save_every steps in between (a third of the size: no AdamW moments).
                fse = self.config.full_save_every
                last = self.step_index == total
                if last and total == self.config.max_steps and self.config.final_checkpoint == "weights":
                    self.save(full=False, keep_last=1, keep_full=False)  # the completed run: its weights
                    continue
                full = last or (fse > 0 and self.step_index % fse == 0)
                if full or self.step_index % self.config.save_every == 0:
                    self.save(full=full)
        finally:
            if bar is not None:
                bar.close()
            log.close()
            self.close()
        return history

    def close(self) -> None:
        self._stop_async()  # before the envs close under it
        peaks = self.rss.metrics()
        logger.info("peak resident memory of this process: %s", ", ".join(
            f"{k.rsplit('/', 1)[-1]} {v:.2f} GB" for k, v in peaks.items()))
        self.rss.stop()
        for env in self._envs or [self._probe_env]:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing must not mask the training result
                pass
        if self._workers is not None:
            from mx_train.distributed import shutdown_workers

            shutdown_workers(self._workers)
            self._workers = None


def train(
    config: TrainConfig, *, resume: bool = False, progress: bool = True,
    on_done: Callable[[Trainer, list[dict[str, Any]]], None] | None = None,
) -> int:
    """Run ``config`` to ``max_steps`` in this process, as rank 0 of a learner group of
    ``distributed.learner_procs`` processes (spawned here, Ray actors with ``distributed.backend: ray``,
    or the ranks of ``torchrun``); ``on_done(trainer, history)`` runs on rank 0 after the run."""
    from mx_train.learner.fsdp import run_with_learner_group

    procs = config.distributed.learner_procs
    start_ranks: Callable[[str], Any] | None = None
    host = "127.0.0.1"
    reservation = None
    if config.distributed.backend == "ray" and os.environ.get("RANK", "0") == "0":
        # The whole run is placed (or refused, with the reason) before any model loads, and the
        # driver computes on the GPU Ray set aside for it (mx_train.placement).
        from mx_train.distributed import reserve_for_driver

        reservation = reserve_for_driver(config)
    if config.distributed.backend == "ray" and procs > 1 and "WORLD_SIZE" not in os.environ:
        # Learner ranks 1..N-1 as Ray actors (possibly on other nodes) instead of local processes.
        from mx_train.distributed import node_ip, start_learner_ranks

        host = node_ip()

        def start_ranks(init_method: str) -> Any:
            return start_learner_ranks(config, procs, init_method)

    def main() -> int:
        trainer = Trainer(config, progress=progress)
        history = trainer.run(resume=resume)
        if on_done is not None:
            on_done(trainer, history)
        return 0

    try:
        return run_with_learner_group(procs, main, device=config.policy.device, start_ranks=start_ranks, host=host)
    except Exception as exc:
        if reservation is not None and reservation.learner_runs:
            # A dead learner rank shows first as the driver's failed collective ("Connection closed by
            # peer"): name the rank and the way on (--resume) instead.
            from mx_train.distributed import check_learner_ranks

            check_learner_ranks(reservation, timeout=10.0, cause=exc)
        raise
    finally:
        if reservation is not None:
            from mx_train.distributed import release

            release(reservation)


def _push_at_next_rollout(state: dict[str, Any]) -> None:
    """A learner's ``on_weights_updated`` in an async run: nothing at the end of the update, which
    may run while the engine samples; the trainer hands the weights over when the rollout thread
    needs them (:meth:`Trainer._publish_async`)."""
    del state


def _learner_side_factory(config: TrainConfig, factory: BackendFactory) -> BackendFactory:
    """The driver's backends under Ray: the rollout engines live in the workers, so a serving-engine
    spec (``vllm:...``) becomes the learner's fp32 HF copy of the same model here (trained in place,
    no engine started in the driver); HF specs are already that."""

    def build(spec: str) -> Any:
        if not spec.startswith("vllm:"):
            return factory(spec)
        from mx_agents.backends.embedded import resolve_model
        from mx_agents.backends.hf import HFBackend

        return HFBackend(resolve_model(spec[len("vllm:"):] or "default"), device=config.policy.device, dtype="float32",
                         max_batch_size=config.policy.max_batch_size,
                         chat_template_kwargs={"enable_thinking": bool(config.policy.thinking)})

    return build


def _round_trained_weights(learners: Any) -> None:
    """Round every trained weight (the fp32 masters where a learner keeps them) to bf16 in place."""
    import torch

    with torch.no_grad():
        for learner in learners:
            master = getattr(learner, "master", None)
            params = master.masters if master is not None else list(learner.model.parameters())
            for p in params:
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
            if master is not None:
                master.master_to_model()


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"
