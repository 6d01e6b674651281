"""Scale-out on Ray (extra ``dist``): rollout engines and learner ranks as actors in one placement group.

* **Placement** comes from one plan (:mod:`mx_train.placement`): from the config and the cluster's
  nodes it decides the learner ranks, the rollout engines, each one's CPUs and GPU share, the layout
  (``split``: GPUs of their own; ``colocated``: a learner rank and its engines share a GPU, as verl's
  hybrid engine) and the bundle each process gets. :func:`reserve` checks the plan against the live
  cluster (a run that cannot be placed stops at once with the reason and a suggestion, never a silent
  wait), makes the run's one placement group (``PACK``) and, on GPUs, a :class:`DeviceLease` in the
  driver's bundle (on the driver's node) that tells the driver which GPU Ray set aside for it
  (:func:`pin_driver_device`): no engine is ever scheduled onto the driver's device. Every actor below
  asks for exactly its plan slot (CPUs, GPU share, bundle), so Ray sets its ``CUDA_VISIBLE_DEVICES``.
  ``worker_gpus: 0`` with a CUDA policy is refused: the actors would see every GPU and all load the
  model onto ``cuda:0``.
* **Clusters**: without ``distributed.ray_address`` a local Ray is started with this machine's GPUs and
  the logical CPUs the plan reserves; with it the driver joins that cluster (:func:`connect`: Ray's
  token authentication switched on when a token is at hand, a refused join explained in one line).
* **Rollout workers** (:class:`RolloutWorker`) own envs, sandboxes and a generation engine. Each
  step the driver splits the B tasks across them; each runs the M x N hierarchical rollout of its
  tasks and returns plain transition dicts plus execution rewards.
* **Learner ranks**: with ``--learner-procs N`` the driver is learner rank 0 and ranks 1..N-1 are
  :class:`LearnerRank` actors (``learner_cpus`` CPUs and ``learner_gpus`` of a GPU each) running the
  FSDP worker loop of :mod:`mx_train.learner.fsdp`; they join the driver's process group over TCP, so
  they may sit on other nodes.
* **Weights**: after an update the driver (learner rank 0, holding the gathered full weights)
  broadcasts them to every worker over a collective channel of its own (:class:`WeightChannel`:
  NCCL when the driver and every engine have GPUs of their own, else gloo, as the plan says: NCCL
  refuses two ranks on one GPU), in buckets of ``distributed.weight_bucket_mb``; the object store
  (``ray.put``) is the fallback. Versions are tracked **per role**: in split-policy mode each
  role's engine is refreshed when *its* learner stepped (a designer-only phase no longer leaves the
  executor engines stale, nor the reverse), and transitions carry their role's version.

The same config runs without Ray (``distributed.backend: local``) with the same results: workers
play the configured ``rollout.schedule``, every sampling seed derives from (run seed, step, task uid,
design, execution, turn) and env resets from each task's position in the step, never from the worker
(:func:`ray_rollout`), so the transitions are the local run's (tokens exactly; log-probs to float
roundoff, a row's logits depending in the last bits on its batch), and so are the metrics. After each
push the weights are checked on the workers (:func:`verify_weights`: checksums of what arrived, the
engine's parameters where it shows them) and the engines' log-probs compared with the learner's
(:func:`push_weights`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mx_agents.transition import Transition

logger = logging.getLogger(__name__)

WEIGHT_BUCKET_MB = 256  # the default of distributed.weight_bucket_mb
CHANNEL_TIMEOUT_S = 300.0  # bound on one weight-channel collective (and on forming the channel)
# After the driver closes a broken channel, surviving workers' receives fail at once; one still busy
# past this is taken for hung on its dead peer and replaced as well.
CHANNEL_GRACE_S = 60.0


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
        timeout = datetime.timedelta(seconds=CHANNEL_TIMEOUT_S)
        self.store: Any = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        self.pg: Any
        if backend == "nccl":  # pragma: no cover - needs GPUs
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)
            self.device = "cuda"
        else:
            # An explicit bound (gloo's default is 30 min): a peer that dies mid-broadcast fails the
            # others' receive within it at worst (the driver closing its end fails them at once).
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
            self.device = "cpu"

    def close(self) -> None:
        """Drop this end of the group: its connections close, so a peer still waiting in a broadcast
        from here fails at once instead of at the timeout (how a broken channel is torn down)."""
        self.pg = None
        self.store = None

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
        self.weight_check: dict[str, dict[str, Any]] = {}

    def gpu_ids(self) -> list[int]:
        """What Ray assigned (an empty list on a CPU bundle)."""
        import ray

        return [int(g) for g in ray.get_gpu_ids()]

    def pid(self) -> int:
        """This worker's process id: a cheap liveness probe (a dead actor's call fails at once)."""
        return os.getpid()

    def join_channel(self, host: str, port: int, rank: int, world_size: int, backend: str) -> bool:
        if self.channel is not None:  # re-formed after a worker restart: the old group has a dead peer
            self.channel.close()
        self.channel = WeightChannel(host, port, rank, world_size, backend)
        return True

    def _apply(self, weights: Mapping[str, Mapping[str, Any]], versions: Mapping[str, int]) -> dict[str, int]:
        for role, state in weights.items():  # roles not sent keep their check: their weights did not change
            received = weights_crc(state)  # what arrived, before the engine converts it
            self.backends[role].load_weights(state)
            self.weight_check[role] = {"received_crc": received, "engine_equal": engine_holds(self.backends[role], state)}
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

    def weights_check(self) -> dict[str, dict[str, Any]]:
        """Per role, what the last weight load saw: the checksum of the tensors received and whether the
        engine's own parameters now equal them (``None``: an engine that does not expose its weights,
        e.g. vLLM; its log-probs are compared with the learner's instead, :meth:`score`)."""
        return dict(self.weight_check)

    def score(self, role: str, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]] | None:
        """The ``role`` engine's log-probs of each response given its prompt, at temperature 1
        (``None`` when the engine cannot score)."""
        score = getattr(self.backends[role], "score_batch", None)
        return None if score is None else score(pairs, 1.0)

    def rollout(self, task_ids: Sequence[str], task_uids: Sequence[str], step: int, seed: int,
                task_positions: Sequence[int] | None = None) -> dict[str, Any]:
        """The M x N rollout of a shard of the step's tasks, exactly as the local trainer plays it:
        the same rollout policy seed, run id, schedule and env-reset seeds; ``task_positions`` (each
        task's position in the step) key the sampling seeds and resets, so the shard samples what the
        whole step played in one process samples."""
        from mx_agents.continuous import snapshot_backends
        from mx_agents.design_groups import run_design_groups
        from mx_train.assembly import build_rollout_policy
        from mx_train.metrics import design_labels_and_validity
        from mx_train.weight_sync import before_rollout

        r = self.config.rollout
        need = len(task_ids) * r.designs * r.executions
        while len(self.envs) < need:
            self.envs.append(self.env_factory())
        before_rollout(self.backends.values())
        engines = snapshot_backends(self.backends.values())
        policy = build_rollout_policy(self.backends, self.config, step)
        result = run_design_groups(
            self.envs[:need], policy, list(task_ids), r.designs, r.executions,
            seed=seed, task_uids=list(task_uids), progress=False, step_workers=r.step_workers,
            max_turns=r.max_turns, run_id=f"step{step}", schedule=r.schedule,
            task_positions=None if task_positions is None else list(task_positions),
        )
        transitions = result.transitions(policy_version=self.versions["designer"])
        for t in transitions:  # each role's engine serves its own learner's version
            t.policy_version = self.versions.get(t.role, t.policy_version)
        labels, valid = design_labels_and_validity(result)
        return {
            "transitions": [dataclasses.asdict(t) for t in transitions],
            "execution_rewards": [[k[0], k[1], k[2], v] for k, v in result.execution_rewards().items()],
            "records": [r.summary() for r in result.records],
            "design_labels": labels,
            "design_valid": valid,
            # The engines' batching counters of this rollout (now, before): the driver sums all workers'.
            "engine_stats": [(now.snapshot(), then) for now, then in engines],
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
    reservation: Reservation | None = None  # the run's placement group (None: actors made elsewhere)
    pushed: dict[str, int] = dataclasses.field(default_factory=dict)  # engine role -> version sent
    channel: WeightChannel | None = None
    pushes: int = 0
    bucket_mb: int = WEIGHT_BUCKET_MB  # distributed.weight_bucket_mb
    config_dict: dict[str, Any] = dataclasses.field(default_factory=dict)  # what a replacement is built from
    channel_backend: str | None = None  # "gloo"/"nccl" when the weights go over a WeightChannel
    max_restarts: int = 3  # distributed.max_worker_restarts
    restarts: int = 0  # workers replaced in this run
    restart_s: float = 0.0  # seconds spent replacing workers (new actor, channel) in this run
    rerun_episodes: int = 0  # episodes run again this step because their worker died


def check_gpu_assignment(config: Any) -> None:
    """Refuse a CUDA policy whose Ray workers would get no GPU (all would land on cuda:0)."""
    d, device = config.distributed, str(config.policy.device)
    if d.worker_gpus <= 0 and device.startswith("cuda"):
        raise ValueError(
            "distributed.worker_gpus is 0 but policy.device is cuda: Ray would give the rollout workers no GPU "
            "and every worker would load its model onto cuda:0. Set distributed.worker_gpus (e.g. 1.0, or 0.5 "
            "for two engines per GPU)."
        )


# ---------------------------------------------------------------------------- joining a cluster
def _token_source() -> str | None:
    """Where this process would find a Ray auth token (env var, token file), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return path
    if (Path.home() / ".ray" / "auth_token").is_file():
        return str(Path.home() / ".ray" / "auth_token")
    return None


def enable_token_auth() -> bool:
    """Switch this process to Ray's token authentication when ``RAY_AUTH_MODE`` is unset and a token
    is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``): ``ray start`` turns
    token auth on by default in this Ray, but a joining driver does not, and is then refused after
    ~20 s of retries with a bare ``ConnectionError``. Returns whether token auth is on."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if _token_source() is None:
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config at import: refresh it so this process sees token mode too
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # noqa: BLE001 - an older Ray without token auth: the variable is harmless
        pass
    return True


def _answers(address: str, timeout: float = 2.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def join_failure(address: str, token_auth: bool) -> str:
    """One line on why joining the cluster at ``address`` failed and what to do."""
    if not _answers(address):
        return (f"cannot join the Ray cluster at {address}: nothing answers there (start one with "
                f"`ray start --head --port {address.rpartition(':')[2]}` on that host, or fix distributed.ray_address)")
    if not token_auth:
        return (f"cannot join the Ray cluster at {address}: it answers but refused this driver; clusters started "
                "with `ray start` require token authentication in this Ray: set RAY_AUTH_MODE=token and put the "
                "cluster's token (`ray get-auth-token` on the head node) in ~/.ray/auth_token or RAY_AUTH_TOKEN")
    return (f"cannot join the Ray cluster at {address}: it answers but refused the token from "
            f"{_token_source() or 'nowhere'} (RAY_AUTH_MODE=token); use the head node's (`ray get-auth-token` there)")


def connect(config: Any, learner_procs: int | None = None) -> Any:
    """Ray, initialised for ``config``: joined to ``distributed.ray_address`` (token auth handled, a
    failure explained in one line), or a local instance with the GPUs of this machine the run uses and
    as many logical CPUs as the placement plan reserves (at least this machine's)."""
    ray = _require_ray()
    if ray.is_initialized():
        return ray
    d = config.distributed
    if d.ray_address:
        token = enable_token_auth()
        address = str(d.ray_address)
        if not address.startswith(("ray://", "auto")) and not _answers(address):
            raise ConnectionError(join_failure(address, token))  # at once, not after Ray's retries
        try:
            ray.init(address=d.ray_address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise ConnectionError(join_failure(str(d.ray_address), token)) from exc
        return ray
    node = local_ray_node(config, learner_procs)
    gpus = int(node.gpus)
    if node.cpus > (os.cpu_count() or 1):
        logger.info("local Ray: %g logical CPUs on %d cores (the placement plan reserves them)",
                    node.cpus, os.cpu_count() or 1)
    ray.init(num_cpus=int(node.cpus), num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    return ray


def local_ray_node(config: Any, learner_procs: int | None = None) -> Any:
    """The one node of the local Ray instance :func:`connect` starts for ``config``: this machine's
    GPUs (on a GPU run) and the logical CPUs the plan reserves (at least this machine's)."""
    from mx_train.placement import local_node, requested_cpus, uses_gpu

    gpus = 0
    if uses_gpu(config) or str(config.policy.device) == "auto":
        gpus = visible_gpus()
    return local_node(config, requested_cpus(config, learner_procs=learner_procs, gpus=gpus), gpus)


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, counted without starting CUDA here: CUDA reads
    ``CUDA_VISIBLE_DEVICES`` once, when it starts, and :func:`pin_driver_device` still has to set it."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))  # the NVIDIA driver's list (Linux)
    except OSError:
        try:  # Ray's own count (NVML, no CUDA), where a container hides /proc/driver
            from ray._private.accelerators import NvidiaGPUAcceleratorManager

            present = int(NvidiaGPUAcceleratorManager.get_current_node_num_accelerators())
        except Exception:  # noqa: BLE001 - no NVIDIA driver, or another Ray layout: no GPU
            present = 0
    if env is None:
        return present
    ids = []
    for item in env.split(","):  # CUDA stops at the first entry that names no device
        item = item.strip()
        if not item or item.startswith("-"):
            break
        ids.append(item)
    return min(len(ids), present) if present else 0


def cluster_nodes(ray: Any) -> tuple[list[Any], int]:
    """The live cluster as :class:`~mx_train.placement.NodeSpec` s, and the driver's node index."""
    from mx_train.placement import NodeSpec

    here = ray.get_runtime_context().get_node_id()
    nodes = []
    driver = 0
    for n in ray.nodes():
        if not n.get("Alive", False):
            continue
        res = n.get("Resources", {})
        if n["NodeID"] == here:
            driver = len(nodes)
        nodes.append(NodeSpec(cpus=float(res.get("CPU", 0.0)), gpus=float(res.get("GPU", 0.0)),
                              name=f"{n.get('NodeManagerAddress', '?')}/{n['NodeID'][:6]}", node_id=n["NodeID"]))
    return nodes, driver


# ---------------------------------------------------------------------------- the run's reservation
class DeviceLease:
    """Holds the driver's (or a torchrun rank's) GPU share in its bundle and says which GPU it is."""

    def gpu_ids(self) -> list[int]:
        import ray

        return [int(g) for g in ray.get_gpu_ids()]


@dataclasses.dataclass
class Reservation:
    """The run's placement group, made from its :class:`~mx_train.placement.PlacementPlan`."""

    plan: Any
    placement_group: Any
    leases: dict[int, Any] = dataclasses.field(default_factory=dict)  # learner rank -> DeviceLease
    lease_gpus: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # learner rank -> GPU ids
    learner_ranks: list[Any] = dataclasses.field(default_factory=list)
    learner_runs: list[Any] = dataclasses.field(default_factory=list)  # futures of LearnerRank.run
    bundle_nodes: list[str] = dataclasses.field(default_factory=list)  # actual node id per bundle
    job_id: str = ""  # the Ray job that made it (a later ray.init is another cluster session)

    def strategy(self, bundle: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.placement_group,
                                                placement_group_bundle_index=bundle)


_ACTIVE: Reservation | None = None


def active_reservation() -> Reservation | None:
    global _ACTIVE
    if _ACTIVE is not None:
        import ray

        # The cluster went away under it, or this is a later Ray session (a test's shutdown and init).
        if not ray.is_initialized() or ray.get_runtime_context().get_job_id() != _ACTIVE.job_id:
            _ACTIVE = None
    return _ACTIVE


def reserve(config: Any, learner_procs: int | None = None) -> Reservation:
    """The run's placement, checked against the cluster and reserved (once per run; later calls return
    it): a plan that cannot be placed raises :class:`~mx_train.placement.PlacementError` at once with
    the reason and a suggestion; one that fits the cluster's totals but waits on resources other jobs
    hold waits at most ``distributed.placement_timeout_s``."""
    global _ACTIVE
    existing = active_reservation()
    if existing is not None:
        return existing
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    from mx_train.placement import PlacementError, plan_placement

    check_gpu_assignment(config)
    d = config.distributed
    procs = learner_procs or d.learner_procs
    ray = _require_ray()
    if not ray.is_initialized() and not d.ray_address:
        # The local instance is known before it starts: refuse an unplaceable run without starting it.
        before = plan_placement(config, [local_ray_node(config, procs)], learner_procs=procs)
        if not before.feasible:
            raise PlacementError(before)
    ray = connect(config, procs)
    nodes, driver = cluster_nodes(ray)
    plan = plan_placement(config, nodes, learner_procs=procs, driver_node=driver)
    if not plan.feasible:
        raise PlacementError(plan)
    logger.info("%s", plan.render())
    free = ray.available_resources()
    short = {k: (need, free.get(k, 0.0)) for k, need in (("CPU", plan.cpus_used()), ("GPU", plan.gpus_used()))
             if need > free.get(k, 0.0) + 1e-9}
    if short:
        logger.warning("the cluster has the resources but other jobs hold some (%s); waiting up to %gs",
                       ", ".join(f"{k} {n:g} needed, {f:g} free" for k, (n, f) in short.items()),
                       d.placement_timeout_s)
    driver_id = nodes[driver].node_id
    selectors = [{"ray.io/node-id": driver_id} if _pinned(plan, b) else {} for b in range(len(plan.bundles))]
    pg = placement_group([dict(b) for b in plan.bundles], strategy="PACK",
                         bundle_label_selector=selectors if any(selectors) else None)
    try:
        ray.get(pg.ready(), timeout=d.placement_timeout_s)
    except Exception as exc:  # noqa: BLE001 - GetTimeoutError and its Ray-version spellings
        free = ray.available_resources()
        remove_placement_group(pg)
        raise PlacementError(dataclasses.replace(
            plan, feasible=False, suggestion="free the resources other jobs hold, or raise distributed.placement_timeout_s",
            reason=(f"the placement group was not ready after {d.placement_timeout_s:g}s although the cluster's "
                    f"totals fit (free now: CPU {free.get('CPU', 0.0):g}, GPU {free.get('GPU', 0.0):g})"),
        )) from exc
    res = Reservation(plan, pg, job_id=ray.get_runtime_context().get_job_id())
    table = placement_group_table(pg)
    res.bundle_nodes = [str(table.get("bundles_to_node_id", {}).get(b, "?")) for b in range(len(plan.bundles))]
    _lease_devices(ray, res)
    _ACTIVE = res
    return res


def _pinned(plan: Any, bundle: int) -> bool:
    """Bundles of processes that run on the driver's machine (the driver, torchrun's local ranks)."""
    return any(s.bundle == bundle and (s.role == "driver" or "torchrun" in s.actor) for s in plan.slots)


def _lease_devices(ray: Any, res: Reservation) -> None:
    """On a GPU run, a :class:`DeviceLease` in the bundle of each learner rank that is not a Ray actor
    (the driver; torchrun's ranks) holds its share and reports the GPU Ray set aside for it."""
    plan = res.plan
    if plan.device != "cuda":
        return
    cls = ray.remote(DeviceLease)
    for s in plan.slots:
        if s.role == "driver" or (s.role == "learner" and "torchrun" in s.actor):
            res.leases[s.index] = cls.options(num_cpus=0, num_gpus=s.gpus,
                                              scheduling_strategy=res.strategy(s.bundle)).remote()
    ids = ray.get([a.gpu_ids.remote() for a in res.leases.values()], timeout=60)
    res.lease_gpus = dict(zip(res.leases, ids, strict=True))


def pin_driver_device(res: Reservation) -> None:
    """Make the driver compute on the GPU its lease holds (set before CUDA starts in this process; a
    process that already uses another GPU is refused rather than silently sharing one)."""
    ids = res.lease_gpus.get(0)
    if not ids:
        return
    gpu = ids[0]
    if "WORLD_SIZE" in os.environ:  # torchrun chose the devices: they must be the ones Ray reserved
        visible = [int(x) for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip().isdigit()]
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        used = sorted(visible[i] if i < len(visible) else i for i in range(local))
        held = sorted(g for gs in res.lease_gpus.values() for g in gs)
        if used != held:
            raise RuntimeError(
                f"torchrun's ranks on this node compute on GPUs {used} but Ray reserved {held} for them; start "
                "Ray with only the other GPUs visible (CUDA_VISIBLE_DEVICES for `ray start`), or use `mx train "
                "--learner-procs N` without torchrun, which places every rank through Ray")
        return
    import torch

    if torch.cuda.is_initialized():
        visible = [int(x) for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip().isdigit()]
        current = torch.cuda.current_device()
        mine = visible[current] if visible else current
        if mine != gpu:
            raise RuntimeError(f"the driver already computes on GPU {mine}, but Ray reserved GPU {gpu} for it: "
                               "reserve before any model loads (mx_train.trainer.train does)")
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logger.info("driver pinned to GPU %d (reserved for it in the placement group)", gpu)


def reserve_for_driver(config: Any) -> Reservation:
    """:func:`reserve`, then the driver moves onto its reserved GPU (call before any model loads)."""
    res = reserve(config)
    pin_driver_device(res)
    return res


def release(res: Reservation | None = None) -> None:
    """Give the run's placement group back (its actors go with it)."""
    global _ACTIVE
    res = res or _ACTIVE
    if res is None:
        return
    if res is _ACTIVE:
        _ACTIVE = None
    import ray

    if not ray.is_initialized():
        return
    from ray.util.placement_group import remove_placement_group

    for a in [*res.leases.values(), *res.learner_ranks]:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        remove_placement_group(res.placement_group)
    except Exception:  # noqa: BLE001 - already removed with the cluster
        pass


# ---------------------------------------------------------------------------- actors from the plan
def start_workers(config: Any, channel: bool = True) -> WorkerGroup:
    """Rollout workers in the run's placement group, each in the bundle (and with the GPU share) the
    plan gives it; with ``channel`` a :class:`WeightChannel` between the driver and them."""
    res = reserve(config)
    plan = res.plan
    backend = "nccl" if plan.weight_channel == "nccl" and str(config.policy.device).startswith("cuda") else "gloo"
    group = WorkerGroup([], reservation=res, bucket_mb=int(config.distributed.weight_bucket_mb),
                        config_dict=config.to_dict(), channel_backend=backend if channel else None,
                        max_restarts=int(config.distributed.max_worker_restarts))
    group.actors = [_spawn_worker(group, i) for i in range(plan.engines)]
    # Built first (an engine start takes minutes on a loaded CPU; a failed one raises here with its
    # error): the channel's rendezvous timeout then bounds only the join itself.
    _require_ray().get([a.pid.remote() for a in group.actors])
    if channel:
        _form_channel(group)
    return group


def _spawn_worker(group: WorkerGroup, index: int) -> Any:
    """Rollout worker ``index`` in its plan slot (bundle, CPUs, GPU share): at the start, and as the
    replacement of a dead one (its slot's resources come back to the bundle when its process is gone)."""
    ray = _require_ray()
    res = group.reservation
    assert res is not None, "workers are placed from the run's reservation"
    s = res.plan.slot("engine", index)
    # No Ray-managed restart (max_restarts=0): the driver replaces a dead worker itself, so the bound
    # (distributed.max_worker_restarts) is one count for the run and a replacement never takes a call
    # meant for the dead actor before it has the current weights.
    return (ray.remote(RolloutWorker)
            .options(num_cpus=s.cpus, num_gpus=s.gpus, scheduling_strategy=res.strategy(s.bundle), max_restarts=0)
            .remote(group.config_dict, index))


def _form_channel(group: WorkerGroup) -> None:
    """A new :class:`WeightChannel` (fresh port and store) between the driver and every current worker."""
    from mx_train.learner.fsdp import free_port

    ray = _require_ray()
    assert group.channel_backend is not None
    if group.channel is not None:
        group.channel.close()
        group.channel = None
    host, port = node_ip(), free_port()
    world = len(group.actors) + 1
    futures = [a.join_channel.remote(host, port, i + 1, world, group.channel_backend)
               for i, a in enumerate(group.actors)]
    group.channel = WeightChannel(host, port, 0, world, group.channel_backend)
    ray.get(futures, timeout=CHANNEL_TIMEOUT_S)


class WorkerDied(RuntimeError):
    """Rollout workers (by index) whose actor died; ``cause`` is Ray's error for the first."""

    def __init__(self, indices: Sequence[int], cause: BaseException | None) -> None:
        super().__init__(f"rollout workers {sorted(indices)} died: {cause}")
        self.indices = sorted(set(indices))
        self.cause = cause


def _is_death(exc: BaseException) -> bool:
    ray = _require_ray()
    return isinstance(exc, ray.exceptions.RayActorError)  # ActorDiedError, ActorUnavailableError


def dead_workers(group: WorkerGroup, timeout: float = 60.0) -> list[int]:
    """Workers whose actor no longer answers (a call to a dead actor fails at once; idle ones answer
    in milliseconds)."""
    ray = _require_ray()
    dead = []
    for i, a in enumerate(group.actors):
        try:
            ray.get(a.pid.remote(), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - sorted below: only a dead actor is replaced
            if not _is_death(exc):
                raise
            dead.append(i)
    return dead


def restart_workers(group: WorkerGroup, indices: Sequence[int], cause: BaseException | str | None = None) -> None:
    """Replace the dead workers ``indices`` with fresh actors in their slots (bounded by
    ``distributed.max_worker_restarts`` for the run) and re-form the weight channel.

    Weights: a replacement starts from the config's weights, and the old channel's group has a dead
    peer (a gloo/NCCL group cannot take a new member), so the channel is formed anew with every worker
    and ``pushed`` is cleared: the next :func:`sync_weights` sends each role's current version to all of
    them over it. Survivors get a redundant full push too; that is the price of one code path for every
    worker (the object store would need a second path and the channel re-formed all the same)."""
    import time

    ray = _require_ray()
    t0 = time.perf_counter()
    indices = sorted(set(indices))
    why = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else "no reason given"
    if group.restarts + len(indices) > group.max_restarts:
        raise RuntimeError(
            f"rollout workers {indices} died ({why}); {group.restarts} of distributed.max_worker_restarts="
            f"{group.max_restarts} restarts already used, so the run stops here. Look at the worker's log "
            "(out of memory? a node lost?), raise the bound, and continue with `mx train --resume`"
        ) from (cause if isinstance(cause, BaseException) else None)
    for i in indices:
        logger.warning("rollout worker %d died (%s): starting a fresh one in its slot (restart %d of at most %d)",
                       i, why, group.restarts + 1, group.max_restarts)
        try:
            ray.kill(group.actors[i], no_restart=True)  # one that only stopped answering must not linger
        except Exception:  # noqa: BLE001 - already gone
            pass
        group.actors[i] = _spawn_worker(group, i)
        group.restarts += 1
    ray.get([group.actors[i].pid.remote() for i in indices])  # built: model loaded, envs factory ready
    t1 = time.perf_counter()
    if group.channel_backend is not None:
        _form_channel(group)
    group.pushed = {}
    t2 = time.perf_counter()
    group.restart_s += t2 - t0
    # Nearly all of it is the new process starting (Ray worker, torch, the engine's model), not the channel.
    logger.warning("rollout workers %s replaced in %.1fs (new actors ready %.1fs, weight channel re-formed %.1fs)",
                   indices, t2 - t0, t1 - t0, t2 - t1)


def start_learner_ranks(config: Any, n_procs: int, init_method: str) -> list[Any]:
    """Learner ranks 1..N-1 as Ray actors, each with the CPUs, GPU share and bundle of its plan slot.
    Their ``run`` futures stay on the reservation (a rank that dies is then visible)."""
    res = reserve(config, n_procs)
    ray = _require_ray()
    cls = ray.remote(LearnerRank)
    device = res.plan.device
    for r in range(1, n_procs):
        s = res.plan.slot("learner", r)
        actor = cls.options(num_cpus=s.cpus, num_gpus=s.gpus, scheduling_strategy=res.strategy(s.bundle)).remote()
        res.learner_ranks.append(actor)
        res.learner_runs.append(actor.run.remote(r, n_procs, init_method, device))
    return list(res.learner_ranks)


class LearnerRankDied(RuntimeError):
    """A learner rank's actor died: its parameter and optimizer shards are gone with it, so the run
    stops; ``mx train --resume`` continues from the last full checkpoint."""


def check_learner_ranks(res: Reservation | None = None, timeout: float = 0.0,
                        cause: BaseException | None = None) -> None:
    """Raise :class:`LearnerRankDied` when a learner rank's ``run`` ended in an error (its actor died,
    or its worker loop raised), waiting up to ``timeout`` seconds for one to end; a rank that returned
    (the driver's ``stop``) or still runs is fine. Called before each step (``timeout`` 0) and, with a
    few seconds, when the driver's own work failed (a dead peer fails its collectives first)."""
    import time

    res = res or active_reservation()
    if res is None or not res.learner_runs:
        return
    ray = _require_ray()
    rank_of = {f: r for r, f in enumerate(res.learner_runs, start=1)}
    pending = list(res.learner_runs)
    deadline = time.monotonic() + timeout
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            return
        for f in done:
            try:
                ray.get(f)
            except Exception as exc:  # noqa: BLE001 - any way a rank ends in error stops the run
                rank = rank_of.get(f, "?")
                raise LearnerRankDied(
                    f"learner rank {rank} of {len(res.learner_runs) + 1} died ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); its shards of the weights and optimizer "
                    "are lost, so the run stopped. Continue from the last full checkpoint with "
                    "`mx train --resume` (same --config and --out)"
                    + (f"; the driver saw: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                       if cause is not None else "")
                ) from (cause or exc)


def shutdown_workers(group: WorkerGroup) -> None:
    """Stop the rollout workers; the placement group goes too unless learner ranks still run in it
    (then :func:`release` at the end of the run gives it back)."""
    ray = _require_ray()
    try:
        ray.get([a.close.remote() for a in group.actors], timeout=60)
    except Exception:  # noqa: BLE001 - workers may already be gone
        pass
    for a in group.actors:
        ray.kill(a)
    res = group.reservation
    if res is not None and not res.learner_ranks:
        release(res)


def sync_weights(learners: Mapping[str, Any], group: WorkerGroup) -> list[str]:
    """Send every stale role's weights to all workers (see module doc); returns the roles sent. A
    worker that dies on the way, or died since the last call, is replaced (:func:`restart_workers`)
    and the push done again, in full."""
    dead = dead_workers(group)  # a broadcast towards a dead peer would fail (or, unlucky, hang) first
    if dead:
        restart_workers(group, dead, "found dead before the weight push")
    while True:
        try:
            return _push_weights(learners, group)
        except WorkerDied as exc:
            restart_workers(group, exc.indices, exc.cause)


def _push_weights(learners: Mapping[str, Any], group: WorkerGroup) -> list[str]:
    ray = _require_ray()
    roles = stale_roles(learners, group.pushed)
    if not roles:
        return []
    versions = {role: int(learners[role].version) for role in roles}
    states = {role: {k: v.detach().cpu() for k, v in learners[role].weights_for_sync().items()} for role in roles}
    if group.channel is not None:
        layouts = {role: WeightChannel.layout(st, group.bucket_mb) for role, st in states.items()}
        futures = [a.receive_weights.remote(layouts, versions) for a in group.actors]
        try:
            for role in roles:
                group.channel.send(states[role], layouts[role])
        except Exception as exc:  # noqa: BLE001 - a peer gone mid-broadcast (gloo: "Connection closed")
            group.channel.close()  # the survivors' receives fail now, not at the channel's timeout
            dead = _settle(group, futures, CHANNEL_GRACE_S)
            if not dead:
                raise
            raise WorkerDied(dead, exc) from exc
    else:
        ref = ray.put(states)
        futures = [a.load_weights.remote(ref, versions) for a in group.actors]
    dead = _settle(group, futures, None)
    if dead:
        raise WorkerDied(dead, None)
    group.pushed.update(versions)
    group.pushes += 1
    return roles


def _settle(group: WorkerGroup, futures: Sequence[Any], timeout: float | None) -> list[int]:
    """Wait for one call per worker; the indices of workers that died (or, with ``timeout``, still
    hang past it: they are then replaced too). Any other error is raised."""
    ray = _require_ray()
    done, _ = ray.wait(list(futures), num_returns=len(futures), timeout=timeout)
    finished = set(done)
    dead = []
    for i, f in enumerate(futures):
        if f not in finished:
            dead.append(i)
            continue
        try:
            ray.get(f)
        except Exception as exc:  # noqa: BLE001 - sorted: a dead actor vs. a failed call
            if _is_death(exc):
                dead.append(i)
            elif timeout is None:
                raise
    return dead


def run_shards(group: WorkerGroup, learners: Mapping[str, Any], shards: Mapping[int, tuple[Any, ...]]) -> list[Any]:
    """``RolloutWorker.rollout(*shards[i])`` on worker ``i`` for each shard, results in shard order.

    A worker that died before or during the step is replaced (:func:`restart_workers`), the current
    weights go to it (:func:`sync_weights`, which also finds workers that died since the last step:
    same versions as the others used, since the update comes after the rollout) and only its shard
    runs again, with the same arguments (seeds included); the step's re-run episodes are left on
    ``group``."""
    group.rerun_episodes = 0
    outs: dict[int, Any] = {}
    todo = sorted(shards)
    while todo:
        sync_weights(learners, group)
        futures = {i: group.actors[i].rollout.remote(*shards[i]) for i in todo}
        failed: list[int] = []
        cause: BaseException | None = None
        for i, f in futures.items():
            try:
                outs[i] = _gather(f)
            except Exception as exc:  # noqa: BLE001 - sorted: a dead worker is replaced, other errors raise
                if not _is_death(exc):
                    raise
                failed.append(i)
                cause = cause or exc
        if failed:
            restart_workers(group, failed, cause)
            group.rerun_episodes += sum(_shard_episodes(group, shards[i]) for i in failed)
        todo = failed
    return [outs[i] for i in sorted(shards)]


def _gather(future: Any) -> Any:
    """One worker's rollout result (a seam of its own: tests kill a worker while its call is in flight)."""
    return _require_ray().get(future)


def _shard_episodes(group: WorkerGroup, shard: tuple[Any, ...]) -> int:
    r = group.config_dict.get("rollout", {})
    return len(shard[0]) * int(r.get("designs", 1)) * int(r.get("executions", 1))


def worker_metrics(group: WorkerGroup) -> dict[str, float]:
    """Workers replaced and seconds spent on it so far in the run; episodes re-run in the last step."""
    return {"distributed/worker_restarts": float(group.restarts),
            "distributed/rerun_episodes": float(group.rerun_episodes),
            "distributed/restart_s": float(group.restart_s)}


def ray_rollout(
    group: WorkerGroup, learners: Mapping[str, Any], task_ids: Sequence[str], task_uids: Sequence[str],
    step: int, seed: int,
) -> tuple[list[Transition], dict[tuple[str, int, int], float], dict[str, Any], list[list[str]], list[list[bool]]]:
    """One step's rollout spread over ``group``'s workers (see module doc), after sending them the
    weights of every role whose learner stepped since the last push: transitions in the order the
    local rollout makes them (designs task by task, then each episode's turns), execution rewards,
    episode metrics, and per task and design its structure label and validity. Every worker gets the
    same reset seed and each task's position in the step, so the result is the local rollout's."""
    from mx_agents.continuous import backends_metrics
    from mx_train.metrics import summarize_records

    k = len(group.actors)
    positions = list(range(len(task_ids)))
    # run_shards pushes stale weights first and replaces a worker that dies (its shard runs again).
    calls = {i: (list(task_ids[i::k]), list(task_uids[i::k]), step, seed, positions[i::k])
             for i in range(k) if task_ids[i::k]}
    transitions: list[Transition] = []
    exec_rewards: dict[tuple[str, int, int], float] = {}
    records: list[_RecordView] = []
    labels: list[list[str]] = [[] for _ in task_ids]
    valid: list[list[bool]] = [[] for _ in task_ids]
    engine_stats: list[Any] = []
    for i, out in zip(sorted(calls), run_shards(group, learners, calls), strict=True):
        engine_stats.extend(out["engine_stats"])
        transitions.extend(Transition(**t) for t in out["transitions"])
        exec_rewards.update({(u, int(m), int(n)): float(v) for u, m, n, v in out["execution_rewards"]})
        records.extend(_RecordView(r["correct"], r["design_valid"], r["termination_reason"], r["llm_calls"],
                                   r.get("integrity")) for r in out["records"])
        for p, lab, val in zip(calls[i][4], out["design_labels"], out["design_valid"], strict=True):
            labels[p], valid[p] = list(lab), [bool(v) for v in val]
    where = {uid: p for p, uid in enumerate(task_uids)}
    # Local order: the design round's transitions (task, design), then every episode's turns in order.
    transitions.sort(key=lambda t: (t.role != "designer" or t.execution_id != 0 or "-design-" not in t.episode_id,
                                    where.get(t.task_uid, -1), t.design_id, t.execution_id, t.turn))
    summary = summarize_records(records)
    summary.update(backends_metrics(engine_stats))  # batch widths, prefix hits: all workers' engines
    summary.update(worker_metrics(group))
    return transitions, exec_rewards, summary, labels, valid


# ---------------------------------------------------------------------------- weight checks
def weights_crc(state: Mapping[str, Any]) -> int:
    """CRC-32 of a state dict's bytes (names sorted; each tensor's dtype, shape and raw bytes): equal
    exactly when the tensors are bit-identical. About 1 GB/s: a fraction of a second for a 135M model."""
    import zlib

    import torch

    crc = 0
    for name in sorted(state):
        t = state[name].detach()
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        flat = t.contiguous().cpu().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(flat.numpy().data, crc)
    return crc


def engine_holds(backend: Any, state: Mapping[str, Any]) -> bool | None:
    """Whether ``backend``'s own torch parameters equal ``state`` (cast to each parameter's dtype);
    ``None`` when the engine does not expose them (vLLM fuses and repacks its weights)."""
    import torch

    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "state_dict"):
        return None
    own = model.state_dict()
    for name, t in state.items():
        mine = own.get(name)
        if mine is None or not torch.equal(mine.detach().cpu(), t.detach().to(mine.dtype).cpu()):
            return False
    return True


def verify_weights(learners: Mapping[str, Any], group: WorkerGroup) -> dict[str, float]:
    """After a push: every worker received, bit for bit, each engine role's current learner weights
    (checksums compared) and, where the engine shows its parameters, holds them. Raises
    ``RuntimeError`` naming the worker and role otherwise."""
    ray = _require_ray()
    roles = sorted(set(engine_roles(learners).values()))
    want = {role: weights_crc({k: v.detach().cpu() for k, v in learners[role].weights_for_sync().items()})
            for role in roles}
    checks = ray.get([a.weights_check.remote() for a in group.actors])
    held = 0
    for i, check in enumerate(checks):
        for role in roles:
            got = check.get(role)
            if got is None:
                raise RuntimeError(f"rollout worker {i} has not loaded the {role} weights of version "
                                   f"{int(learners[role].version)}")
            if got["received_crc"] != want[role]:
                raise RuntimeError(f"rollout worker {i} received {role} weights that differ from the learner's "
                                   f"(crc {got['received_crc']:#010x} vs {want[role]:#010x})")
            if got["engine_equal"] is False:
                raise RuntimeError(f"rollout worker {i}'s {role} engine does not hold the weights it received")
            held += got["engine_equal"] is True
    return {"distributed/weights_verified": float(len(checks) * len(roles)),
            "distributed/weights_held_checked": float(held)}


def push_weights(learners: Mapping[str, Any], group: WorkerGroup,
                 probes: Mapping[str, Sequence[tuple[Sequence[int], Sequence[int]]]] | None = None) -> dict[str, float]:
    """Send each stale role's weights to every worker (:func:`sync_weights`), then check them there
    (:func:`verify_weights`). With ``probes`` (engine role -> (prompt, response) pairs of the last
    rollout), the Ray twin of :meth:`mx_train.weight_sync.EngineSync.push`'s metrics: each worker's
    engine scores them before (``rollout/logprob_diff_stale_*``: old weights vs the learner's new
    ones) and after the push (``rollout/logprob_diff_synced_*``: back at the numerical floor when the
    engines follow the learner); mean over workers, max of maxima."""
    import time

    from mx_train.weight_sync import diff_stats, score_with_model

    ray = _require_ray()
    stale = stale_roles(learners, group.pushed)
    if not stale:
        return {}
    probes = {r: list(p) for r, p in (probes or {}).items() if r in stale and p}

    def engine_scores() -> dict[str, list[Any]]:
        return {r: ray.get([a.score.remote(r, pairs) for a in group.actors]) for r, pairs in probes.items()}

    def diffs(scores: dict[str, list[Any]], tag: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for role, per_worker in scores.items():
            pairs = probes[role]
            ref = score_with_model(learners[role].model, pairs, [1.0] * len(pairs))
            stats = [diff_stats(s, ref) for s in per_worker if s is not None]
            if stats:
                out[f"rollout/logprob_diff_{tag}mean"] = sum(m for m, _, _ in stats) / len(stats)
                out[f"rollout/logprob_diff_{tag}max"] = max(w for _, w, _ in stats)
        return out

    metrics = diffs(engine_scores(), "stale_")
    t0 = time.perf_counter()
    sync_weights(learners, group)
    metrics["rollout/weight_sync_s"] = time.perf_counter() - t0
    metrics.update(verify_weights(learners, group))
    metrics.update(diffs(engine_scores(), "synced_"))
    return metrics
