"""Scale-out on Ray (extra ``dist``): rollout engines and learner ranks as actors in a placement group.

* **Rollout workers** (:class:`RolloutWorker`) own envs, sandboxes and a generation engine. Each
  step the driver splits the B tasks across them; each runs the M x N hierarchical rollout of its
  tasks and returns plain transition dicts plus execution rewards.
* **Placement and GPUs**: the workers' bundles (``worker_cpus`` CPUs, ``worker_gpus`` GPUs each) are
  reserved in one placement group (``PACK``: fill a node before the next), and each actor is pinned to
  its bundle, so Ray sets its ``CUDA_VISIBLE_DEVICES`` and its ``cuda`` is its own GPU.
  ``worker_gpus: 0`` with a CUDA policy is refused: the actors would see every GPU and all load the
  model onto ``cuda:0``.
* **Learner ranks**: with ``--learner-procs N`` the driver is learner rank 0 and ranks 1..N-1 are
  :class:`LearnerRank` actors (``learner_gpus`` each) running the FSDP worker loop of
  :mod:`mx_train.learner.fsdp`; they join the driver's process group over TCP, so they may sit on other
  nodes.
* **Weights**: after an update the driver (learner rank 0, holding the gathered full weights)
  broadcasts them to every worker over a collective channel of its own (:class:`WeightChannel`:
  gloo on CPU, NCCL between GPUs), in buckets of ``weight_bucket_mb``; the object store
  (``ray.put``) is the fallback. Versions are tracked **per role**: in split-policy mode each
  role's engine is refreshed when *its* learner stepped (a designer-only phase no longer leaves the
  executor engines stale, nor the reverse), and transitions carry their role's version.

The same config runs without Ray (``distributed.backend: local``); results differ only in sampling
seeds, which are per worker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mx_agents.transition import Transition

WEIGHT_BUCKET_MB = 256


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("distributed.backend: ray needs Ray: pip install 'metaagentx[dist]'") from exc
    return ray


# ---------------------------------------------------------------------------- weight versions
def engine_roles(learners: Mapping[str, Any]) -> dict[str, str]:
    """Role -> the role whose engine serves it: a shared policy has one engine (under "designer")."""
    if learners.get("executor") is learners.get("designer"):
        return {"designer": "designer", "executor": "designer"}
    return {role: role for role in learners}


def stale_roles(learners: Mapping[str, Any], pushed: Mapping[str, int]) -> list[str]:
    """Engine roles whose learner's version differs from what the workers last received."""
    out = []
    for role in sorted(set(engine_roles(learners).values())):
        if pushed.get(role) != int(learners[role].version):
            out.append(role)
    return out


# ---------------------------------------------------------------------------- weight channel
class WeightChannel:
    """A collective group of its own between the driver (rank 0) and the rollout workers.

    Separate from the learner's process group (a process has one default group; the workers are not
    learner ranks), built on a ``TCPStore`` at the driver. ``send`` on rank 0 and ``receive`` on the
    others must be entered together: the driver first tells the workers (a Ray call) what is coming.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo") -> None:
        import datetime

        import torch.distributed as dist

        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.store = dist.TCPStore(host, port, world_size, rank == 0, timeout=datetime.timedelta(seconds=300))
        if backend == "nccl":  # pragma: no cover - needs GPUs
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)
            self.device = "cuda"
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size)
            self.device = "cpu"

    @staticmethod
    def layout(state: Mapping[str, Any], bucket_mb: int = WEIGHT_BUCKET_MB) -> list[list[tuple[str, list[int], str]]]:
        """Buckets of ``(name, shape, dtype)``, each one dtype and at most ``bucket_mb`` (or one tensor)."""
        buckets: list[list[tuple[str, list[int], str]]] = []
        cur: list[tuple[str, list[int], str]] = []
        size, dtype = 0, None
        limit = bucket_mb * 2**20
        for name, t in state.items():
            nbytes = t.numel() * t.element_size()
            if cur and (dtype != str(t.dtype) or size + nbytes > limit):
                buckets.append(cur)
                cur, size = [], 0
            cur.append((name, list(t.shape), str(t.dtype)))
            size += nbytes
            dtype = str(t.dtype)
        if cur:
            buckets.append(cur)
        return buckets

    def _broadcast(self, flat: Any) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([flat], opts).wait()

    def send(self, state: Mapping[str, Any], layout: list[list[tuple[str, list[int], str]]]) -> None:
        import torch

        for bucket in layout:
            flat = torch.cat([state[n].detach().reshape(-1) for n, _, _ in bucket]).to(self.device)
            self._broadcast(flat)

    def receive(self, layout: list[list[tuple[str, list[int], str]]]) -> dict[str, Any]:
        import math

        import torch

        out: dict[str, Any] = {}
        for bucket in layout:
            dtype = getattr(torch, bucket[0][2].removeprefix("torch."))
            numel = sum(math.prod(s) for _, s, _ in bucket)
            flat = torch.empty(numel, dtype=dtype, device=self.device)
            self._broadcast(flat)
            offset = 0
            for name, shape, _ in bucket:
                n = math.prod(shape)
                out[name] = flat[offset : offset + n].view(shape)
                offset += n
        return out


def node_ip() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - not under Ray: a local run
        return "127.0.0.1"


# ---------------------------------------------------------------------------- actors
class RolloutWorker:
    """One rollout worker: envs + a generation backend, driven by the trainer (a Ray actor body)."""

    def __init__(self, config_dict: dict[str, Any], worker_index: int) -> None:
        from mx_train.assembly import build_backends, default_backend_factory, make_env_factory
        from mx_train.config import TrainConfig

        self.config = TrainConfig.from_dict(config_dict)
        self.index = worker_index
        self.env_factory = make_env_factory(self.config)
        self.backends = build_backends(self.config, default_backend_factory(self.config))
        self.envs: list[Any] = []
        self.versions: dict[str, int] = {"designer": 0, "executor": 0}
        self.channel: WeightChannel | None = None

    def gpu_ids(self) -> list[int]:
        """What Ray assigned (an empty list on a CPU bundle)."""
        import ray

        return [int(g) for g in ray.get_gpu_ids()]

    def join_channel(self, host: str, port: int, rank: int, world_size: int, backend: str) -> bool:
        self.channel = WeightChannel(host, port, rank, world_size, backend)
        return True

    def _apply(self, weights: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int]) -> dict[str, int]:
        for role, state in weights.items():
            self.backends[role].load_weights(state)
        self.versions.update({k: int(v) for k, v in versions.items()})
        if self.backends["executor"] is self.backends["designer"]:
            self.versions["executor"] = self.versions["designer"]
        return dict(self.versions)

    def load_weights(self, weights: dict[str, dict[str, Any]], versions: Mapping[str, int]) -> dict[str, int]:
        """Object-store path: ``weights`` is role -> state dict (a shared policy sends "designer")."""
        return self._apply(weights, versions)

    def receive_weights(self, layouts: Mapping[str, Any], versions: Mapping[str, int]) -> dict[str, int]:
        """Collective path: receive each role's buckets from the driver, then load them."""
        assert self.channel is not None, "join_channel first"
        weights = {role: self.channel.receive(layout) for role, layout in layouts.items()}
        return self._apply(weights, versions)

    def rollout(self, task_ids: Sequence[str], task_uids: Sequence[str], step: int, seed: int) -> dict[str, Any]:
        from mx_agents.design_groups import run_design_groups
        from mx_train.assembly import build_rollout_policy

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
        transitions = result.transitions(policy_version=self.versions["designer"])
        for t in transitions:  # each role's engine serves its own learner's version
            t.policy_version = self.versions.get(t.role, t.policy_version)
        return {
            "transitions": [dataclasses.asdict(t) for t in transitions],
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


class LearnerRank:
    """Learner rank ``r`` >= 1 as a Ray actor: joins the driver's process group and runs the FSDP
    worker loop until the driver stops it (see :mod:`mx_train.learner.fsdp`)."""

    def run(self, rank: int, world_size: int, init_method: str, device: str) -> int:
        from mx_train.learner.fsdp import destroy_group, init_group, worker_loop

        os.environ.setdefault("LOCAL_RANK", "0")  # Ray pins one GPU per actor: it is cuda:0 here
        ctx = init_group(rank, world_size, init_method, device)
        try:
            worker_loop(ctx)
        finally:
            destroy_group()
        return rank


@dataclasses.dataclass
class _RecordView:
    """The fields :func:`mx_train.metrics.summarize_records` reads, from a worker's plain dict."""

    correct: bool | None
    design_valid: bool | None
    termination_reason: str
    llm_calls: int
    integrity: dict[str, Any] | None = None  # the env's info["integrity"] (mx_train.hack_monitor)


@dataclasses.dataclass
class WorkerGroup:
    actors: list[Any]
    placement_group: Any = None
    pushed: dict[str, int] = dataclasses.field(default_factory=dict)  # engine role -> version sent
    channel: WeightChannel | None = None
    pushes: int = 0


def check_gpu_assignment(config: Any) -> None:
    """Refuse a CUDA policy whose Ray workers would get no GPU (all would land on cuda:0)."""
    d, device = config.distributed, str(config.policy.device)
    if d.worker_gpus <= 0 and device.startswith("cuda"):
        raise ValueError(
            "distributed.worker_gpus is 0 but policy.device is cuda: Ray would give the rollout workers no GPU "
            "and every worker would load its model onto cuda:0. Set distributed.worker_gpus (e.g. 1.0, or 0.5 "
            "for two engines per GPU)."
        )


def _init_ray(config: Any, gpus_needed: float) -> Any:
    ray = _require_ray()
    d = config.distributed
    if not ray.is_initialized():
        kw: dict[str, Any] = {}
        if not d.ray_address:
            kw["num_cpus"] = max(2, int(d.num_rollout_workers * d.worker_cpus) + 1)
            if gpus_needed == 0:
                kw["num_gpus"] = 0
        ray.init(address=d.ray_address, include_dashboard=False, log_to_driver=False, **kw)
    return ray


def start_workers(config: Any, channel: bool = True) -> WorkerGroup:
    """Rollout workers in a placement group, each pinned to its bundle (and GPU); with ``channel``
    a :class:`WeightChannel` between the driver and them."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    check_gpu_assignment(config)
    d = config.distributed
    ray = _init_ray(config, d.worker_gpus * d.num_rollout_workers)
    bundle: dict[str, float] = {"CPU": d.worker_cpus}
    if d.worker_gpus > 0:
        bundle["GPU"] = d.worker_gpus
    pg = placement_group([dict(bundle) for _ in range(d.num_rollout_workers)], strategy="PACK")
    ray.get(pg.ready(), timeout=600)
    actor_cls = ray.remote(num_cpus=d.worker_cpus, num_gpus=d.worker_gpus)(RolloutWorker)
    cfg = config.to_dict()
    actors = [
        actor_cls.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)
        ).remote(cfg, i)
        for i in range(d.num_rollout_workers)
    ]
    group = WorkerGroup(actors, placement_group=pg)
    if channel:
        from mx_train.learner.fsdp import free_port

        host, port = node_ip(), free_port()
        backend = "nccl" if d.worker_gpus > 0 and str(config.policy.device).startswith("cuda") else "gloo"
        world = len(actors) + 1
        futures = [a.join_channel.remote(host, port, i + 1, world, backend) for i, a in enumerate(actors)]
        group.channel = WeightChannel(host, port, 0, world, backend)
        ray.get(futures)
    return group


def start_learner_ranks(config: Any, n_procs: int, init_method: str) -> list[Any]:
    """Learner ranks 1..N-1 as Ray actors (``learner_gpus`` GPU each on a CUDA policy)."""
    device = str(config.policy.device)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    ray = _init_ray(config, gpus * (n_procs - 1))
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(LearnerRank)
    actors = [actor_cls.remote() for _ in range(1, n_procs)]
    for r, a in enumerate(actors, start=1):
        a.run.remote(r, n_procs, init_method, "cuda" if gpus else "cpu")
    return actors


def shutdown_workers(group: WorkerGroup) -> None:
    ray = _require_ray()
    try:
        ray.get([a.close.remote() for a in group.actors], timeout=60)
    except Exception:  # noqa: BLE001 - workers may already be gone
        pass
    for a in group.actors:
        ray.kill(a)
    if group.placement_group is not None:
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(group.placement_group)
        except Exception:  # noqa: BLE001 - already removed with the cluster
            pass


def sync_weights(learners: Mapping[str, Any], group: WorkerGroup) -> list[str]:
    """Send every stale role's weights to all workers (see module doc); returns the roles sent."""
    ray = _require_ray()
    roles = stale_roles(learners, group.pushed)
    if not roles:
        return []
    versions = {role: int(learners[role].version) for role in roles}
    states = {role: {k: v.detach().cpu() for k, v in learners[role].weights_for_sync().items()} for role in roles}
    if group.channel is not None:
        layouts = {role: WeightChannel.layout(st) for role, st in states.items()}
        futures = [a.receive_weights.remote(layouts, versions) for a in group.actors]
        for role in roles:
            group.channel.send(states[role], layouts[role])
        ray.get(futures)
    else:
        ref = ray.put(states)
        ray.get([a.load_weights.remote(ref, versions) for a in group.actors])
    group.pushed.update(versions)
    group.pushes += 1
    return roles


def ray_rollout(
    group: WorkerGroup, learners: Mapping[str, Any], task_ids: Sequence[str], task_uids: Sequence[str],
    step: int, seed: int,
) -> tuple[list[Transition], dict[tuple[str, int, int], float], dict[str, Any]]:
    """One step's rollout spread over ``group``'s workers (see module doc), after sending them the
    weights of every role whose learner stepped since the last push."""
    from mx_train.metrics import summarize_records

    ray = _require_ray()
    sync_weights(learners, group)
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
        records.extend(_RecordView(r["correct"], r["design_valid"], r["termination_reason"], r["llm_calls"],
                                   r.get("integrity")) for r in out["records"])
    return transitions, exec_rewards, summarize_records(records)
