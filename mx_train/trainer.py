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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mx_agents.transition import Transition
from mx_train.config import TrainConfig

logger = logging.getLogger(__name__)

EnvFactory = Callable[[], Any]


def _warm_start_batch(per_design: dict[str, list[Any]], data: list[Any], size: int, k: int, rng: random.Random) -> list[Any]:
    """One cold-start batch: every design once, on the same training prompt, then SFT data.

    Every step pushes each design's script equally for one prompt, so the cold-start designer samples
    them about equally often. Random batches are not balanced, and the last few steps decide which
    design it prefers (one run's designer wrote ``single`` in 5 of its first 6 designs), which can
    leave a run whose designs and executor never match (reward 0 everywhere: no signal to learn from).
    """
    designs = [ex for ex in per_design.values() if ex]
    batch = [ex[k % len(ex)] for ex in designs][:size]
    room = size - len(batch)
    if data and room > 0:
        batch += rng.sample(data, min(room, len(data)))
    elif room > 0 and designs:  # no SFT data: more prompts of every design
        pool = [e for ex in designs for e in ex]
        batch += rng.sample(pool, min(room, len(pool)))
    return batch


def _shared_model(backend: Any, learner: Any) -> bool:
    return getattr(backend, "model", None) is learner.model


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
        backend_factory: Callable[[str], Any] | None = None,
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
            from mx_train.env_mix import MixedEnv

            factories = [e.factory for e in self.mix]
            self.env_factory = lambda: MixedEnv(factories)
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

    # ------------------------------------------------------------------ construction
    def _build_policy(self, backend_factory: Callable[[str], Any] | None) -> None:
        from mx_train.fsdp import make_learner
        from mx_train.learner import Learner, PolicyGroup

        pc = self.config.policy
        if backend_factory is None:
            backend_factory = default_backend_factory(self.config)
        self.backends = build_backends(self.config, backend_factory)
        self.learners: dict[str, Learner] = {}
        self.syncs: dict[str, Any] = {}  # role -> mx_train.weight_sync.EngineSync (engines that get pushed weights)
        for role in ("designer", "executor"):
            backend = self.backends[role]
            existing = next((lr for r, lr in self.learners.items() if self.backends[r] is backend), None)
            if existing is not None:
                self.learners[role] = existing
                continue
            model = getattr(backend, "model", None)
            tokenizer = getattr(backend, "tokenizer", None)
            if model is None or not hasattr(model, "parameters"):
                # An engine that serves weights (vLLM): the learner trains its own copy and pushes it.
                model, tokenizer = _learner_copy(backend, role, pc.device)
            name = "policy" if not pc.executor_model else role
            # A LearnerGroup (FSDP over `--learner-procs` processes) when this process leads one.
            learner = make_learner(model, self.config.learner, tokenizer=tokenizer, name=name)
            if not _shared_model(backend, learner):
                from mx_train.weight_sync import EngineSync

                sync = EngineSync(learner, backend, probe=self.config.rollout.logprob_probe,
                                  pad_id=getattr(learner, "pad_token_id", 0) or 0)
                learner.on_weights_updated = sync.push
                self.syncs[role] = sync
            self.learners[role] = learner
        self.policy_group = PolicyGroup(self.learners)

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
        if self.mix is not None:
            return {"mix": self.mix_position, "epoch": self.epoch}
        return {"order": self.order, "position": self.position, "epoch": self.epoch}

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
        from mx_train.credit import assign_advantages, role_metrics

        r, a = self.config.rollout, self.config.algorithm
        version = self.learners["designer"].version
        uids = [f"s{step}-t{i}-{tid}" for i, tid in enumerate(task_ids)]
        labels: list[list[str]] | None = None
        valid: list[list[bool]] | None = None
        seed = (self.config.seed + step * 7919) % (2**31)
        if self.config.distributed.backend == "ray":
            from mx_train.distributed import ray_rollout

            transitions, exec_rewards, summary = ray_rollout(self, task_ids, uids, step, seed, version)
            self._step_records = None
        else:
            from mx_agents.design_groups import run_design_groups
            from mx_train.weight_sync import before_rollout

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
            transitions = result.transitions(policy_version=version)
            for t in transitions:  # split policy: each role's engine serves its own learner's version
                t.policy_version = self.learners[t.role].version if t.role in self.learners else version
            exec_rewards = result.execution_rewards()
            summary = summarize_records(result.records)
            self._step_records = result.records
            labels, valid = design_labels_and_validity(result)
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
        return transitions, summary

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
        step = self.step_index
        t0 = time.perf_counter()
        task_ids = self.next_tasks()
        transitions, metrics = self.rollout(task_ids, step)
        t_roll = time.perf_counter() - t0
        self._check_integrity(step, metrics)
        self.write_transitions(step, transitions)
        active = self.schedule.active_roles(step)
        from mx_train.weight_sync import after_rollout

        for sync in {id(s): s for s in self.syncs.values()}.values():
            metrics.update(sync.rollout_metrics(transitions))  # engine vs learner, same weights
        after_rollout(self.backends.values())
        t1 = time.perf_counter()
        update = self.policy_group.update(transitions, active_roles=active)
        t_update = time.perf_counter() - t1
        metrics.update(update)
        for sync in {id(s): s for s in self.syncs.values()}.values():
            metrics.update(sync.pop_metrics())  # stale/synced differences and transfer of the push
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
                "epoch": float(self.epoch),
            }
        )
        self.step_index += 1
        return metrics

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
        return save_checkpoint(
            root or self.out / "checkpoints",
            self.step_index,
            models=self._models(),
            learners=self.policy_group.learners(),
            schedule=self.schedule,
            rngs={"tasks": self.rng, "numpy": self.np_rng},
            data_position=self.data_position(),
            extra={"config": self.config.to_dict(), "policy_settings": self.policy_settings()},
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
        for role, learner in self.learners.items():
            if not _shared_model(self.backends[role], learner):
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
        from mx_agents.policies.fixed import fence
        from mx_envs.mas.designs import load_design
        from mx_train.sft import example_from_record, load_sft_jsonl

        learner = self.learners["designer"]
        tok = getattr(self.backends["designer"], "tokenizer", None)
        policy = self.make_policy(-1)
        designer = getattr(policy, "designer", policy)
        per_design: dict[str, list[Any]] = {name: [] for name in ws.designs}
        env = self._probe_env
        n_prompts = min(ws.tasks, len(self.task_ids))
        # Spread over the task list, so an env mix contributes prompts of every env.
        picks = [self.task_ids[(i * len(self.task_ids)) // n_prompts] for i in range(n_prompts)]
        for i, task_id in enumerate(picks):
            obs, _ = env.reset(seed=self.config.seed + i, options={"task_id": task_id})
            messages = designer.build_request(parse_observation(obs)).messages
            for name in ws.designs:
                if "def forward" in name:
                    source = name
                elif Path(name).is_file():
                    source = Path(name).read_text(encoding="utf-8")
                else:
                    source = load_design(name)
                rec = {"messages": messages, "response": fence(source)}
                per_design[name].append(example_from_record(rec, tok, where=f"warm start ({name})"))
        data = load_sft_jsonl(ws.data, tok, min_reward=None) if ws.data else []
        # A learner of its own (same model object, own AdamW at the warm-start lr), so the RL
        # optimizer's moments and LR schedule start fresh after the cold start.
        # derive: same model and fp32 masters (and shards, under FSDP), its own optimizer.
        sft = learner.derive(
            {**self.config.learner, "lr": ws.lr, "kl_coef": 0.0, "warmup_steps": 0, "lr_schedule": ws.lr_schedule,
             "total_steps": ws.steps, "min_lr_ratio": 0.0, "phase_lr": None},
            name="warm_start",
        )
        history = []
        rng = random.Random(self.config.seed)
        bar = _bar(ws.steps, "cold start (SFT)", "step") if self.progress else None
        for k in range(ws.steps):
            m = sft.sft_step(_warm_start_batch(per_design, data, ws.batch_size, k, rng))
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
            if not _shared_model(self.backends[role], lr):
                self.backends[role].load_weights(lr.weights_for_sync())
        return history

    def run(self, max_steps: int | None = None, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``max_steps`` completed steps; returns this invocation's step metrics."""
        from mx_train.metrics import MetricsLogger

        total = self.config.max_steps if max_steps is None else max_steps
        resumed = self.resume() if resume else None
        (self.out / "train_config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        if resumed is None and self.step_index == 0:
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
        bar = _bar(total, "RL steps", "step", initial=self.step_index) if self.progress else None
        try:
            while self.step_index < total:
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
        for env in self._envs or [self._probe_env]:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing must not mask the training result
                pass
        if self._workers is not None:
            from mx_train.distributed import shutdown_workers

            shutdown_workers(self._workers)
            self._workers = None


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


def _bar(total: int, desc: str, unit: str, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


def make_env_factory(config: TrainConfig) -> EnvFactory:
    """Envs of the training split, all sharing one task list (loaded once, not per env). With an env
    mix (``config.envs``), each env made is a :class:`~mx_train.env_mix.MixedEnv` over all of them."""
    entries = config.env_entries()
    if len(entries) > 1:
        from mx_train.env_mix import MixedEnv

        factories = [e.factory for e in make_env_mix(config)]
        return lambda: MixedEnv(factories)
    return _single_env_factory(entries[0][0])[0]


def make_env_mix(config: TrainConfig) -> list[Any]:
    """The :class:`~mx_train.env_mix.EnvEntry` list of ``config.envs`` (names unique, tasks loaded once)."""
    from mx_train.env_mix import EnvEntry, env_label, unique_names

    entries = config.env_entries()
    names = unique_names([name or env_label(cfg.id) for cfg, _, name in entries])
    out = []
    for (cfg, weight, _), name in zip(entries, names, strict=True):
        factory, tasks = _single_env_factory(cfg)
        if not tasks:
            raise ValueError(f"env {cfg.id!r} ({name}) has no training tasks")
        out.append(EnvEntry(name=name, env_id=cfg.id, weight=weight, factory=factory, task_ids=[t.id for t in tasks]))
    return out


def _single_env_factory(env_cfg: Any) -> tuple[EnvFactory, list[Any]]:
    import gymnasium as gym

    import mx_envs  # noqa: F401 - registers the ids
    from mx_envs.tasks.registry import TRAIN_SPLITS

    kwargs = dict(env_cfg.kwargs)
    kwargs.setdefault("split", env_cfg.split)
    if kwargs["split"] not in TRAIN_SPLITS and not env_cfg.allow_eval_split:
        raise ValueError(
            f"env split {kwargs['split']!r} is an evaluation split; training on it needs "
            "env.allow_eval_split: true (checkpoints are never selected on test data by default)"
        )
    probe = gym.make(env_cfg.id, disable_env_checker=True, **kwargs)
    tasks = list(probe.unwrapped.tasks)
    probe.close()
    kwargs["tasks"] = tasks
    return (lambda: gym.make(env_cfg.id, disable_env_checker=True, **kwargs)), tasks


def default_backend_factory(config: TrainConfig) -> Callable[[str], Any]:
    pc = config.policy

    def factory(spec: str) -> Any:
        from mx_agents.backends import get_backend

        return get_backend(spec, device=pc.device, dtype=pc.dtype, max_batch_size=pc.max_batch_size,
                           chat_template_kwargs={"enable_thinking": bool(pc.thinking)})

    return factory


def _learner_copy(backend: Any, role: str, device: str) -> tuple[Any, Any]:
    """The learner's own fp32 copy of a serving engine's model (read from the engine's model path)."""
    path = getattr(backend, "model_path", None)
    if path is None or not hasattr(backend, "load_weights"):
        raise ValueError(
            f"the {role} backend {getattr(backend, 'name', backend)!r} neither exposes a torch model nor "
            "a model_path and load_weights; train with an HF or vLLM backend (HTTP backends cannot be updated)"
        )
    import torch

    from mx_agents.backends.hf import load_hf_model, load_hf_tokenizer, resolve_device

    return load_hf_model(path, resolve_device(device), torch.float32), load_hf_tokenizer(path)


def build_backends(config: TrainConfig, backend_factory: Callable[[str], Any]) -> dict[str, Any]:
    """Role -> generation backend: one object for both roles (shared policy) unless
    ``policy.executor_model`` names a second model (split policy)."""
    pc = config.policy
    designer = backend_factory(pc.model)
    return {"designer": designer, "executor": backend_factory(pc.executor_model) if pc.executor_model else designer}


def build_rollout_policy(backends: dict[str, Any], config: TrainConfig, step: int) -> Any:
    """The rollout policy of ``step``. Sampling seeds derive from (run seed, step), so a resumed run
    samples what the uninterrupted one would have, and Ray workers get distinct seeds per worker."""
    from mx_agents.policies.design_prompt import DesignerPrompt
    from mx_agents.policies.llm import SharedPolicy, SplitPolicy

    r = config.rollout
    seed = (config.seed * 1_000_003 + step) % (2**31)
    d_params, e_params = r.designer.params(), r.executor.params()
    prompt = DesignerPrompt(**r.designer_prompt) if r.designer_prompt else None
    if backends["designer"] is backends["executor"]:
        policy: Any = SharedPolicy(backends["designer"], d_params, e_params, prompt=prompt, seed=seed)
    else:
        policy = SplitPolicy(backends["designer"], backends["executor"], d_params, e_params, prompt=prompt, seed=seed)
    if r.fixed_design:
        from mx_agents.policies.fixed import FixedDesignPolicy
        from mx_train.sft_data import design_source

        name, source = design_source(r.fixed_design)
        # Fixed designs make no designer transitions: only the executor is trained.
        return FixedDesignPolicy(None, policy.executor, source=source)
    return policy


def design_labels_and_validity(result: Any) -> tuple[list[list[str]], list[list[bool]]]:
    """Per task and design: the structure family (with ``+tools``) and whether its first execution
    found the design valid."""
    from mx_train.eval.design_structure import INVALID, design_family

    labels, valid = [], []
    for t, per_task in enumerate(result.designs):
        lab_row, val_row = [], []
        for m, action in enumerate(per_task):
            runs = result.executions(t, m)
            ok = bool(runs and runs[0].design_valid)
            script = getattr(action, "script", None)
            lab_row.append(design_family(script) if ok else INVALID)
            val_row.append(ok)
        labels.append(lab_row)
        valid.append(val_row)
    return labels, valid


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def summarize_records(records: Sequence[Any]) -> dict[str, Any]:
    """Episode-level rollout metrics: accuracy, design validity, termination reasons, LLM calls, and the
    reward-hack monitor's integrity/ rates (:func:`mx_train.hack_monitor.integrity_metrics`)."""
    n = max(len(records), 1)
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r.termination_reason] = reasons.get(r.termination_reason, 0) + 1
    out: dict[str, Any] = {
        "episodes": float(len(records)),
        "accuracy": sum(bool(r.correct) for r in records) / n,
        "design_valid_rate": sum(bool(r.design_valid) for r in records) / n,
        "llm_calls_per_episode": sum(r.llm_calls for r in records) / n,
    }
    for reason, count in sorted(reasons.items()):
        out[f"termination/{reason or 'unknown'}"] = count / n
    from mx_train.hack_monitor import integrity_metrics

    out.update(integrity_metrics(records))
    return out
