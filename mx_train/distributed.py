"""Scale-out on Ray (extra ``dist``): rollout workers own envs, sandboxes and a generation engine.

The learner stays in the driver process (on its own GPU(s) in a cluster). Each step the driver splits
the B tasks of the step across ``num_rollout_workers`` Ray actors; each actor runs the M x N
hierarchical rollout of its tasks with its own backend and envs (script sandboxes and tool runs are
local to the worker's node) and returns plain transition dicts plus execution rewards. After an
update, the new weights are put in the object store once and every worker loads them before its next
rollout (``Backend.load_weights``: in place for HF and vLLM engines).

The same config runs without Ray (``distributed.backend: local``); results differ only in sampling
seeds, which are per worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mx_agents.transition import Transition


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("distributed.backend: ray needs Ray: pip install 'metaagentx[dist]'") from exc
    return ray


class RolloutWorker:
    """One rollout worker: envs + a generation backend, driven by the trainer (a Ray actor body)."""

    def __init__(self, config_dict: dict[str, Any], worker_index: int) -> None:
        from mx_train.config import TrainConfig
        from mx_train.trainer import build_backends, default_backend_factory, make_env_factory

        self.config = TrainConfig.from_dict(config_dict)
        self.index = worker_index
        self.env_factory = make_env_factory(self.config)
        self.backends = build_backends(self.config, default_backend_factory(self.config))
        self.envs: list[Any] = []
        self.version = 0

    def load_weights(self, weights: dict[str, dict[str, Any]], version: int) -> int:
        """``weights``: role -> state dict (a shared policy sends one under "designer")."""
        for role, state in weights.items():
            self.backends[role].load_weights(state)
        self.version = version
        return version

    def rollout(self, task_ids: Sequence[str], task_uids: Sequence[str], step: int, seed: int) -> dict[str, Any]:
        from mx_agents.design_groups import run_design_groups
        from mx_train.trainer import build_rollout_policy

        r = self.config.rollout
        need = len(task_ids) * r.designs * r.executions
        while len(self.envs) < need:
            self.envs.append(self.env_factory())
        # Distinct sampling seeds per worker: derive the policy's step seed from (step, worker).
        policy = build_rollout_policy(self.backends, self.config, step * 1009 + self.index)
        result = run_design_groups(
            self.envs[:need], policy, list(task_ids), r.designs, r.executions,
            seed=seed, task_uids=list(task_uids), progress=False, step_workers=r.step_workers,
            max_turns=r.max_turns, run_id=f"step{step}-w{self.index}",
        )
        return {
            "transitions": [dataclasses.asdict(t) for t in result.transitions(policy_version=self.version)],
            "execution_rewards": [[k[0], k[1], k[2], v] for k, v in result.execution_rewards().items()],
            "records": [r.summary() for r in result.records],
        }

    def close(self) -> bool:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        return True


@dataclasses.dataclass
class _RecordView:
    """The fields :func:`mx_train.trainer.summarize_records` reads, from a worker's plain dict."""

    correct: bool | None
    design_valid: bool | None
    termination_reason: str
    llm_calls: int


@dataclasses.dataclass
class WorkerGroup:
    actors: list[Any]
    version: int = -1


def start_workers(config: Any) -> WorkerGroup:
    ray = _require_ray()
    d = config.distributed
    if not ray.is_initialized():
        ray.init(address=d.ray_address, include_dashboard=False, log_to_driver=False,
                 **({} if d.ray_address else {"num_cpus": max(2, int(d.num_rollout_workers * d.worker_cpus) + 1)}))
    actor_cls = ray.remote(num_cpus=d.worker_cpus, num_gpus=d.worker_gpus)(RolloutWorker)
    cfg = config.to_dict()
    return WorkerGroup([actor_cls.remote(cfg, i) for i in range(d.num_rollout_workers)])


def shutdown_workers(group: WorkerGroup) -> None:
    ray = _require_ray()
    try:
        ray.get([a.close.remote() for a in group.actors], timeout=60)
    except Exception:  # noqa: BLE001 - workers may already be gone
        pass
    for a in group.actors:
        ray.kill(a)


def ray_rollout(
    trainer: Any, task_ids: Sequence[str], task_uids: Sequence[str], step: int, seed: int, version: int
) -> tuple[list[Transition], dict[tuple[str, int, int], float], dict[str, Any]]:
    """The trainer's rollout, spread over Ray workers (see module doc)."""
    from mx_train.trainer import summarize_records

    ray = _require_ray()
    if trainer._workers is None:
        trainer._workers = start_workers(trainer.config)
    group: WorkerGroup = trainer._workers
    if group.version != version:
        weights = {}
        for role in ("designer", "executor"):
            learner = trainer.learners[role]
            if role == "executor" and trainer.learners["executor"] is trainer.learners["designer"]:
                break
            weights[role] = {k: v.detach().cpu() for k, v in learner.weights_for_sync().items()}
        ref = ray.put(weights)
        ray.get([a.load_weights.remote(ref, version) for a in group.actors])
        group.version = version
    k = len(group.actors)
    shards = [(list(task_ids[i::k]), list(task_uids[i::k])) for i in range(k)]
    futures = [
        a.rollout.remote(ids, uids, step, seed + i * 104_729)
        for i, (a, (ids, uids)) in enumerate(zip(group.actors, shards, strict=True))
        if ids
    ]
    transitions: list[Transition] = []
    exec_rewards: dict[tuple[str, int, int], float] = {}
    records: list[_RecordView] = []
    for out in ray.get(futures):
        transitions.extend(Transition(**t) for t in out["transitions"])
        exec_rewards.update({(u, int(m), int(n)): float(v) for u, m, n, v in out["execution_rewards"]})
        records.extend(_RecordView(r["correct"], r["design_valid"], r["termination_reason"], r["llm_calls"]) for r in out["records"])
    return transitions, exec_rewards, summarize_records(records)
