"""Where every process of a run goes: one resource plan from the config and the cluster.

:func:`plan_placement` turns a :class:`~mx_train.config.TrainConfig` and the cluster's nodes
(``nodes x {CPU, GPU}``) into a :class:`PlacementPlan`: how many learner ranks and rollout engines
there are, what each asks Ray for, which placement-group bundle (and so which node and GPU) each one
gets, and whether the whole run can be placed at all. :mod:`mx_train.distributed` builds its one
placement group and every actor's resource request from this plan; ``mx train --dry-run`` prints it
next to the memory plan and exits 3 when it cannot be placed. Pure Python: no Ray, no torch.

The processes of a Ray run:

* the **driver** (the ``mx train`` process): learner rank 0 and the trainer. On a GPU run its device
  is reserved in the placement group (bundle 0, on the driver's own node) and a small lease actor there
  tells the driver which GPU Ray set aside for it, so no engine is ever scheduled onto it;
* **learner ranks** 1..N-1 (``--learner-procs N``), one device each;
* **rollout engines** (``distributed.num_rollout_workers``), ``worker_gpus`` each: a fraction packs
  several engines onto one GPU, an integer above 1 gives an engine several GPUs (tensor parallel).

Two layouts on GPUs (``distributed.placement``):

* ``split``: learners and engines on their own GPUs (``N + E * worker_gpus`` GPUs);
* ``colocated``: each learner rank shares its GPU with the rollout engines assigned to it, as verl's
  hybrid engine does (``N`` GPUs); the learner asks for ``learner_gpus`` of it (below 1) or an equal
  share, the engines for the rest. Ray's GPU fractions are scheduling tokens, not memory limits: the
  memory plan counts what both hold. NCCL refuses two ranks on one GPU, so the driver's weight channel
  to colocated engines is gloo (through host memory);
* ``auto`` (default): ``split`` when it fits the cluster, else ``colocated``.

On CPU every process asks for CPUs only; a local Ray instance (no ``ray_address``) is started with
enough logical CPUs for the plan (oversubscribing the cores when the plan asks for more than there are).

Fitting follows Ray's ``PACK`` strategy with per-GPU accounting (a fractional request must fit inside
one GPU, as Ray's scheduler requires); the predicted node of each bundle is what Ray would do on an
idle cluster, the actual one is logged once the group is ready.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PLACEMENTS = ("auto", "split", "colocated")
# Ray keeps resource quantities at 1e-4 granularity: shares are rounded down to it so they never sum
# above the bundle that holds them.
_GRAIN = 10_000


@dataclass(frozen=True)
class NodeSpec:
    """One node of the cluster: its CPUs and GPUs (total, as Ray reports them) and a label."""

    cpus: float
    gpus: float = 0.0
    name: str = ""
    node_id: str = ""  # Ray's hex node id (a live cluster), for pinning the driver's bundle

    def label(self, index: int) -> str:
        return self.name or f"node{index}"


@dataclass
class Slot:
    """One process of the run: what it asks for and where it goes."""

    actor: str  # "driver (learner rank 0)", "learner rank 1", "rollout engine 0"
    role: str  # "driver" | "learner" | "engine"
    index: int  # learner rank, or engine index
    cpus: float
    gpus: float  # the actor's request (a share of its bundle's GPU when colocated)
    bundle: int | None  # placement-group bundle index; None: outside Ray (a local run)
    node: int | None = None  # predicted node (index into PlacementPlan.nodes)
    gpu_ids: list[int] = field(default_factory=list)  # predicted GPU indices on that node


@dataclass
class PlacementPlan:
    backend: str  # "ray" | "local"
    launcher: str  # "ray" (learner ranks are Ray actors), "spawn", "torchrun", "single"
    device: str  # "cuda" | "cpu"
    mode: str  # "split" | "colocated" | "local"
    nodes: list[NodeSpec]
    learner_ranks: int
    engines: int
    bundles: list[dict[str, float]]
    bundle_nodes: list[int | None]  # predicted node per bundle (None: does not fit)
    slots: list[Slot]
    feasible: bool
    reason: str
    suggestion: str = ""
    weight_channel: str = "gloo"  # "nccl" | "gloo" | "in-process"
    driver_node: int = 0
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ queries
    def slot(self, role: str, index: int) -> Slot:
        for s in self.slots:
            if s.role == role and s.index == index:
                return s
        raise KeyError(f"no {role} {index} in this plan")

    def engines_on_driver_gpu(self) -> int:
        """Rollout engines that share the driver's GPU (the memory plan's rank-0 engine count)."""
        if self.device != "cuda":
            return 0
        if self.backend == "local":
            return 1  # the trainer's own backend generates on its device
        driver = self.slot("driver", 0)
        return sum(1 for s in self.slots if s.role == "engine" and s.bundle == driver.bundle)

    def gpus_used(self) -> float:
        return sum(b.get("GPU", 0.0) for b in self.bundles)

    def cpus_used(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundles)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        nodes = ", ".join(f"{n.label(i)} {n.cpus:g} CPU {n.gpus:g} GPU" for i, n in enumerate(self.nodes))
        head = (f"placement: {self.backend}, {self.mode}" + (" (learner and rollout engines share GPUs)"
                if self.mode == "colocated" else "") + f", {self.learner_ranks} learner rank(s), "
                f"{self.engines} rollout engine(s) on {self.device}; launcher {self.launcher}; cluster: {nodes}")
        lines = [head]
        by_bundle: dict[int | None, list[Slot]] = {}
        for s in self.slots:
            by_bundle.setdefault(s.bundle, []).append(s)
        for b, slots in by_bundle.items():
            if b is None:
                for s in slots:
                    where = self._where(s.node, s.gpu_ids)
                    lines.append(f"  (no bundle)  {where:<16} {s.actor} ({_req(s.cpus, s.gpus)})")
                continue
            res = self.bundles[b]
            node = self.bundle_nodes[b]
            gpu_ids = sorted({g for s in slots for g in s.gpu_ids})
            where = self._where(node, gpu_ids)
            who = ", ".join(f"{s.actor} ({_req(s.cpus, s.gpus)})" for s in slots) or "(reserved)"
            lines.append(f"  bundle {b:<4} {where:<16} {_req(res.get('CPU', 0), res.get('GPU', 0)):<16} {who}")
        if self.backend == "ray" and self.feasible:
            lines.append(f"weights: driver -> engines over {self.weight_channel}")
        if self.feasible:
            lines.append(f"PLACEABLE: {self.reason}")
        else:
            lines.append(f"NOT PLACEABLE: {self.reason}" + (f" Try: {self.suggestion}" if self.suggestion else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _where(self, node: int | None, gpu_ids: Sequence[int]) -> str:
        if node is None:
            return "unplaced"
        label = self.nodes[node].label(node) if node < len(self.nodes) else f"node{node}"
        return label + (f" gpu{','.join(map(str, gpu_ids))}" if gpu_ids else "")


class PlacementError(RuntimeError):
    """A run that cannot be placed on the cluster (the message says why and what to change)."""

    def __init__(self, plan: PlacementPlan) -> None:
        self.plan = plan
        msg = f"cannot place this run: {plan.reason}"
        if plan.suggestion:
            msg += f" Try: {plan.suggestion}"
        super().__init__(msg)


def _req(cpus: float, gpus: float) -> str:
    return f"CPU {cpus:g}" + (f" GPU {gpus:g}" if gpus else "")


def _floor(x: float) -> float:
    return math.floor(x * _GRAIN + 1e-9) / _GRAIN


def uses_gpu(config: Any, nodes: Sequence[NodeSpec] | None = None, driver_node: int = 0) -> bool:
    """Whether the run computes on GPUs: ``policy.device`` cuda, or ``auto`` on a driver node with GPUs."""
    device = str(config.policy.device)
    if device.startswith("cuda"):
        return True
    if device == "auto" and nodes:
        return nodes[driver_node].gpus > 0 if driver_node < len(nodes) else False
    return False


def check_gpu_request(value: float, key: str) -> None:
    """A GPU request Ray accepts: a fraction in (0, 1] or a whole number (0 allowed: no GPU)."""
    if value < 0 or (value > 1 and value != int(value)):
        raise ValueError(f"{key} must be 0, a fraction up to 1, or a whole number of GPUs, got {value:g}")


# ---------------------------------------------------------------------------- fitting
class _Node:
    def __init__(self, spec: NodeSpec) -> None:
        self.cpus = float(spec.cpus)
        self.gpus = [1.0] * int(spec.gpus)  # free share of each GPU
        self.frac = float(spec.gpus) - int(spec.gpus)  # a node can report a fractional GPU total

    def take(self, cpus: float, gpus: float) -> list[int] | None:
        """Reserve ``cpus`` and ``gpus`` here (Ray's rules), returning the GPU indices; None: no room."""
        if cpus > self.cpus + 1e-9:
            return None
        if gpus <= 0:
            self.cpus -= cpus
            return []
        if gpus < 1:
            # Ray packs a fractional request onto the fullest GPU it fits in (fewest GPUs touched).
            fits = [i for i, free in enumerate(self.gpus) if free + 1e-9 >= gpus]
            if not fits:
                return None
            i = min(fits, key=lambda k: (self.gpus[k], k))
            self.gpus[i] -= gpus
            self.cpus -= cpus
            return [i]
        whole = [i for i, free in enumerate(self.gpus) if free >= 1 - 1e-9]
        if len(whole) < int(gpus):
            return None
        ids = whole[: int(gpus)]
        for i in ids:
            self.gpus[i] = 0.0
        self.cpus -= cpus
        return ids


def fit_bundles(
    bundles: Sequence[dict[str, float]], nodes: Sequence[NodeSpec], pinned: Sequence[int | None], driver_node: int = 0,
) -> tuple[list[int | None], list[list[int]], str]:
    """Place ``bundles`` on ``nodes`` as Ray's PACK would on an idle cluster: pinned bundles on their
    node, the others on the first node (the driver's first, then in order) with room. Returns each
    bundle's node (None when it fits nowhere), its GPU indices, and the first failure ("" if none)."""
    state = [_Node(n) for n in nodes]
    where: list[int | None] = [None] * len(bundles)
    gpu_ids: list[list[int]] = [[] for _ in bundles]
    order = [driver_node] + [i for i in range(len(nodes)) if i != driver_node]
    failure = ""
    for b, res in enumerate(bundles):
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        candidates = [pinned[b]] if pinned[b] is not None else order
        for i in candidates:
            if i is None or i >= len(state):
                continue
            ids = state[i].take(cpus, gpus)
            if ids is not None:
                where[b], gpu_ids[b] = i, ids
                break
        else:
            if not failure:
                failure = _why_not(b, cpus, gpus, nodes, state, pinned[b])
    return where, gpu_ids, failure


def _why_not(b: int, cpus: float, gpus: float, nodes: Sequence[NodeSpec], state: Sequence[_Node],
             pinned: int | None) -> str:
    need = _req(cpus, gpus)
    if pinned is not None:
        n = nodes[pinned]
        return (f"bundle {b} ({need}) must be on the driver's node {n.label(pinned)} ({n.cpus:g} CPU, "
                f"{n.gpus:g} GPU), which has no room for it")
    if not any(n.cpus >= cpus and _gpus_fit(n.gpus, gpus) for n in nodes):
        return f"bundle {b} ({need}) is larger than any node"
    free_cpu = sum(s.cpus for s in state)
    free_gpu = sum(sum(s.gpus) for s in state)
    return f"bundle {b} ({need}) finds no node with room (left on the cluster: {free_cpu:g} CPU, {free_gpu:g} GPU)"


def _gpus_fit(node_gpus: float, gpus: float) -> bool:
    if gpus <= 0:
        return True
    return int(node_gpus) >= (1 if gpus < 1 else int(gpus))


# ---------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class _Ask:
    """The numbers the plan is made of (from the config, with overrides)."""

    backend: str
    launcher: str
    gpu: bool
    learners: int
    engines: int
    learner_cpus: float
    learner_gpus: float
    worker_cpus: float
    worker_gpus: float
    placement: str
    driver_in_cluster: bool
    torchrun_local: int  # learner ranks of a torchrun launch on the driver's node (0: not torchrun)


def _ask(config: Any, nodes: Sequence[NodeSpec], learner_procs: int | None, launcher: str | None,
         driver_node: int) -> _Ask:
    d = config.distributed
    n = int(learner_procs or d.learner_procs or 1)
    gpu = uses_gpu(config, nodes, driver_node)
    torchrun_local = 0
    if launcher is None:
        if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
            launcher = "torchrun"
            n = int(os.environ["WORLD_SIZE"])
            torchrun_local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
        elif n == 1:
            launcher = "single"
        else:
            launcher = "ray" if d.backend == "ray" else "spawn"
    elif launcher == "torchrun":
        torchrun_local = n
    address = str(d.ray_address or "")
    return _Ask(
        backend=d.backend, launcher=launcher, gpu=gpu, learners=n, engines=int(d.num_rollout_workers),
        learner_cpus=float(d.learner_cpus), learner_gpus=float(d.learner_gpus) if gpu else 0.0,
        worker_cpus=float(d.worker_cpus), worker_gpus=float(d.worker_gpus) if gpu else 0.0,
        placement=str(d.placement), driver_in_cluster=not address.startswith("ray://"),
        torchrun_local=torchrun_local,
    )


def plan_placement(
    config: Any, nodes: Sequence[NodeSpec], *, learner_procs: int | None = None, launcher: str | None = None,
    driver_node: int = 0,
) -> PlacementPlan:
    """The :class:`PlacementPlan` of ``config`` on ``nodes`` (see module doc). ``learner_procs``
    overrides ``distributed.learner_procs`` (``--learner-procs``); ``launcher`` is how learner ranks
    start ("ray", "spawn", "torchrun", "single"; default: from the config and the environment)."""
    nodes = list(nodes)
    if not nodes:
        raise ValueError("a placement needs at least one node")
    ask = _ask(config, nodes, learner_procs, launcher, driver_node)
    if ask.backend != "ray":
        return _plan_local(ask, nodes, driver_node)
    if ask.gpu:
        return _plan_ray_gpu(config, ask, nodes, driver_node, suggest=True)
    return _plan_ray(ask, nodes, driver_node, "split", suggest_config=config)


def _plan_local(ask: _Ask, nodes: list[NodeSpec], driver_node: int) -> PlacementPlan:
    """No Ray: the driver generates in process; learner ranks 2.. are spawned (or torchrun) locally,
    one device each."""
    node = nodes[driver_node]
    slots = [Slot("driver (learner rank 0 + rollout engine)", "driver", 0, 1.0, 1.0 if ask.gpu else 0.0, None,
                  driver_node, [0] if ask.gpu else [])]
    for r in range(1, ask.learners):
        slots.append(Slot(f"learner rank {r} ({ask.launcher})", "learner", r, 1.0, 1.0 if ask.gpu else 0.0, None,
                          driver_node, [r] if ask.gpu else []))
    ok, reason, suggestion = True, "", ""
    if ask.gpu and ask.learners > node.gpus:
        ok = False
        reason = (f"{ask.learners} learner processes need one GPU each on the driver's node, which has "
                  f"{node.gpus:g}")
        suggestion = f"--learner-procs {int(node.gpus)}" if node.gpus >= 1 else "a node with a GPU"
    elif ask.gpu:
        reason = f"{ask.learners} of {node.gpus:g} GPUs on {node.label(driver_node)}, one per learner process"
    else:
        reason = f"{ask.learners} learner process(es) on {node.label(driver_node)} (CPU)"
    return PlacementPlan(
        backend="local", launcher=ask.launcher, device="cuda" if ask.gpu else "cpu", mode="local", nodes=nodes,
        learner_ranks=ask.learners, engines=1, bundles=[], bundle_nodes=[], slots=slots, feasible=ok,
        reason=reason, suggestion=suggestion, weight_channel="in-process", driver_node=driver_node,
    )


def _plan_ray_gpu(config: Any, ask: _Ask, nodes: list[NodeSpec], driver_node: int, suggest: bool) -> PlacementPlan:
    if ask.placement == "auto":
        split = _plan_ray(ask, nodes, driver_node, "split")
        if split.feasible:
            return split
        colo = _plan_ray(ask, nodes, driver_node, "colocated")
        if colo.feasible:
            colo.notes.insert(0, f"placement auto: split does not fit ({split.reason}); colocated does")
            return colo
        colo.reason = f"neither split ({split.gpus_used():g} GPUs) nor colocated placement fits: {colo.reason}"
        if suggest:
            colo.suggestion = _suggest(config, ask, nodes, driver_node)
        return colo
    return _plan_ray(ask, nodes, driver_node, ask.placement, suggest_config=config if suggest else None)


def _plan_ray(ask: _Ask, nodes: list[NodeSpec], driver_node: int, mode: str,
              suggest_config: Any = None) -> PlacementPlan:
    bundles: list[dict[str, float]] = []
    pinned: list[int | None] = []
    slots: list[Slot] = []
    notes: list[str] = []
    error = ""
    torchrun = ask.launcher == "torchrun"
    # Learner ranks Ray places: the driver (rank 0) and, unless torchrun started them, ranks 1..N-1.
    # torchrun's other local ranks hold GPUs of the driver's node that Ray must not hand out either.
    local_ranks = max(1, ask.torchrun_local) if torchrun else 1
    ray_ranks = ask.learners if ask.launcher == "ray" else local_ranks
    if torchrun and ask.learners > local_ranks:
        notes.append(f"torchrun ranks on other nodes ({ask.learners - local_ranks}) are outside this plan")
    pin = driver_node if ask.driver_in_cluster else None
    if not ask.driver_in_cluster:
        notes.append("Ray client address (ray://): the driver's device is outside the cluster and not reserved")
    if ask.gpu and ask.learner_gpus <= 0:
        error = "distributed.learner_gpus is 0 on a GPU run: every learner rank needs a GPU share"
    if mode == "split":
        if ask.gpu and ask.learner_gpus < 1:
            error = error or ("distributed.learner_gpus below 1 shares a GPU with rollout engines: that is the "
                              "colocated placement (distributed.placement: colocated)")
        for r in range(ray_ranks):
            if r == 0 and not ask.driver_in_cluster:
                continue
            g = 1.0 if ask.gpu else 0.0  # a learner rank never shares a GPU with another (NCCL refuses)
            name, role = _learner_name(r, torchrun)
            b = len(bundles)
            bundles.append({"CPU": ask.learner_cpus, **({"GPU": g} if g else {})})
            pinned.append(pin if (r == 0 or (torchrun and r < local_ranks)) else None)
            slots.append(Slot(name, role, r, ask.learner_cpus, g, b))
        for i in range(ask.engines):
            b = len(bundles)
            bundles.append({"CPU": ask.worker_cpus, **({"GPU": ask.worker_gpus} if ask.worker_gpus else {})})
            pinned.append(None)
            slots.append(Slot(f"rollout engine {i}", "engine", i, ask.worker_cpus, ask.worker_gpus, b))
    else:  # colocated: one bundle per learner GPU, engines spread over them
        if ask.worker_gpus > 1:
            error = error or (f"distributed.worker_gpus {ask.worker_gpus:g} (a multi-GPU engine) cannot share a "
                              "learner's GPU; use distributed.placement: split")
        groups = ray_ranks if ask.driver_in_cluster else max(1, ray_ranks - 1)
        first = 0 if ask.driver_in_cluster else 1
        per = [0] * groups
        for i in range(ask.engines):
            per[i % groups] += 1
        k = max(per) if per else 0
        l_share = ask.learner_gpus if ask.learner_gpus < 1 else _floor(1.0 / (1 + k))
        e_share = _floor((1.0 - l_share) / k) if k else 0.0
        if k and e_share <= 0:
            error = error or f"learner_gpus {ask.learner_gpus:g} leaves no GPU share for the colocated engines"
        engine = 0
        for gidx in range(groups):
            r = gidx + first
            name, role = _learner_name(r, torchrun)
            b = len(bundles)
            bundles.append({"CPU": ask.learner_cpus + per[gidx] * ask.worker_cpus, "GPU": 1.0})
            pinned.append(pin if (r == 0 or (torchrun and r < local_ranks)) else None)
            slots.append(Slot(name, role, r, ask.learner_cpus, l_share, b))
            for _ in range(per[gidx]):
                slots.append(Slot(f"rollout engine {engine}", "engine", engine, ask.worker_cpus, e_share, b))
                engine += 1
    where, gpu_ids, failure = fit_bundles(bundles, nodes, pinned, driver_node)
    for s in slots:
        if s.bundle is not None:
            s.node, s.gpu_ids = where[s.bundle], list(gpu_ids[s.bundle])
    # Ranks torchrun started outside Ray's bookkeeping are still listed (they hold their own devices).
    channel = _channel(ask, slots)
    reason = error or failure
    feasible = not reason
    total_gpu = sum(n.gpus for n in nodes)
    total_cpu = sum(n.cpus for n in nodes)
    used_gpu = sum(b.get("GPU", 0.0) for b in bundles)
    used_cpu = sum(b.get("CPU", 0.0) for b in bundles)
    gpu_part = f"{used_gpu:g} of {total_gpu:g} GPUs, " if ask.gpu else ""
    if feasible:
        reason = f"{gpu_part}{used_cpu:g} of {total_cpu:g} CPUs reserved in {len(bundles)} bundles"
    elif not error:
        needs = f"{used_gpu:g} GPUs and {used_cpu:g} CPUs" if ask.gpu else f"{used_cpu:g} CPUs"
        has = f"{total_gpu:g} GPUs and {total_cpu:g} CPUs" if ask.gpu else f"{total_cpu:g} CPUs"
        reason = (f"{mode} placement needs {needs} in {len(bundles)} bundles; the cluster has {has} over "
                  f"{len(nodes)} node(s): {failure}")
    if channel == "gloo" and ask.gpu and not reason:
        notes.append("weights go to the engines over gloo (host memory): NCCL refuses two ranks on one GPU")
    plan = PlacementPlan(
        backend="ray", launcher=ask.launcher, device="cuda" if ask.gpu else "cpu", mode=mode, nodes=list(nodes),
        learner_ranks=ask.learners, engines=ask.engines, bundles=bundles, bundle_nodes=where, slots=slots,
        feasible=feasible, reason=reason, weight_channel=channel, driver_node=driver_node, notes=notes,
    )
    if not feasible and suggest_config is not None:
        plan.suggestion = _suggest(suggest_config, ask, nodes, driver_node)
    return plan


def _learner_name(r: int, torchrun: bool) -> tuple[str, str]:
    if r == 0:
        return "driver (learner rank 0)", "driver"
    return (f"learner rank {r} (torchrun)" if torchrun else f"learner rank {r}"), "learner"


def _channel(ask: _Ask, slots: Sequence[Slot]) -> str:
    """NCCL between the driver and the engines only when every one of them has GPUs of its own."""
    if not ask.gpu:
        return "gloo"
    members = [s for s in slots if s.role in ("driver", "engine")]
    seen: set[tuple[int | None, int]] = set()
    for s in members:
        if not s.gpu_ids or s.gpus < 1:
            return "gloo"
        for g in s.gpu_ids:
            if (s.node, g) in seen:
                return "gloo"
            seen.add((s.node, g))
    return "nccl"


def _suggest(config: Any, ask: _Ask, nodes: list[NodeSpec], driver_node: int) -> str:
    """Changes that would make the run placeable, found by re-planning with them."""
    import dataclasses

    def fits(**changes: Any) -> bool:
        a = dataclasses.replace(ask, **changes)
        if a.gpu and a.placement == "auto":
            return _plan_ray_gpu(config, a, nodes, driver_node, suggest=False).feasible
        return _plan_ray(a, nodes, driver_node, "split" if a.placement == "auto" else a.placement).feasible

    out: list[str] = []
    if ask.gpu and ask.placement == "split" and fits(placement="colocated"):
        out.append("--set distributed.placement=colocated (learner ranks and engines share GPUs)")
    engines = _largest(ask.engines - 1, lambda k: fits(engines=k))
    if engines:
        out.append(f"--set distributed.num_rollout_workers={engines}")
    if ask.launcher == "ray":
        n = _largest(ask.learners - 1, lambda k: fits(learners=k, launcher="ray" if k > 1 else "single"))
        if n:
            out.append(f"--learner-procs {n}")
    if ask.gpu and 0 < ask.worker_gpus < 1 and fits(worker_gpus=_floor(ask.worker_gpus / 2)):
        out.append(f"--set distributed.worker_gpus={_floor(ask.worker_gpus / 2):g}")
    elif ask.gpu and ask.worker_gpus >= 1 and fits(worker_gpus=0.5):
        out.append("--set distributed.worker_gpus=0.5 (two engines per GPU)")
    total_cpu = sum(n.cpus for n in nodes)
    used_cpu = _plan_ray(ask, nodes, driver_node, "split").cpus_used()
    if used_cpu > total_cpu:  # fewer CPUs per process, both kinds scaled alike (Ray's CPUs are logical)
        f = total_cpu / used_cpu
        w, lc = _floor(ask.worker_cpus * f), _floor(ask.learner_cpus * f)
        if w > 0 and lc > 0 and fits(worker_cpus=w, learner_cpus=lc):
            out.append(f"--set distributed.worker_cpus={w:g} --set distributed.learner_cpus={lc:g}")
    if not out:
        out.append("a larger cluster (more GPUs or nodes)" if ask.gpu else "a larger cluster (more CPUs)")
    return "; or ".join(out)


def _largest(hi: int, ok: Any) -> int:
    """The largest k in 1..hi with ok(k) (fewer processes never fit worse), 0 if none: a binary search."""
    lo, best = 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if ok(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


# ---------------------------------------------------------------------------- clusters
def cluster_for_dry_run(config: Any, *, gpus: int | None, nodes: int | None, cpus_per_node: float | None,
                        learner_procs: int | None = None) -> list[NodeSpec]:
    """The nodes ``mx train --dry-run`` plans on: ``nodes`` nodes sharing ``gpus`` GPUs (default: one
    per learner process on a GPU config, none on a CPU one) with ``cpus_per_node`` CPUs each (default:
    this machine's CPUs without GPUs, 12 per GPU with them, as common 8-GPU nodes have ~96 or more)."""
    k = max(1, int(nodes or 1))
    device = str(config.policy.device)
    if gpus is None:
        gpus = int(learner_procs or config.distributed.learner_procs or 1) if device.startswith("cuda") else 0
    per_gpu, extra = divmod(int(gpus), k)
    out = []
    for i in range(k):
        g = per_gpu + (1 if i < extra else 0)
        c = cpus_per_node if cpus_per_node is not None else (12.0 * g if g else float(os.cpu_count() or 1))
        out.append(NodeSpec(cpus=float(c), gpus=float(g), name=f"node{i}"))
    return out


def local_node(config: Any, plan_cpus: float, gpus: int) -> NodeSpec:
    """The one node of a local Ray instance started for ``config``: at least this machine's CPUs,
    more logical CPUs when the plan asks for more, and ``gpus`` GPUs."""
    cpus = max(float(os.cpu_count() or 1), math.ceil(plan_cpus))
    return NodeSpec(cpus=cpus, gpus=float(gpus), name="local")


def requested_cpus(config: Any, *, learner_procs: int | None = None, gpus: int = 0) -> float:
    """CPUs the Ray plan of ``config`` reserves (whatever the cluster), to size a local Ray instance."""
    big = [NodeSpec(cpus=1e9, gpus=float(gpus), name="local")]
    plan = plan_placement(config, big, learner_procs=learner_procs)
    return plan.cpus_used()
