"""The placement plan (mx_train.placement): the shipped paper configs replayed on 8- and 16-GPU
clusters of one and two nodes (pure plans), refusals with a reason and a working suggestion, and a
real Ray runtime with 8 fake GPUs on which the planned placement group becomes ready and every actor
gets the GPU the plan gave it."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from mx_envs.errors import ConfigError
from mx_train.config import TrainConfig
from mx_train.placement import NodeSpec, PlacementPlan, plan_placement

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = sorted(CONFIGS.glob("paper_*.yaml"))

CLUSTERS = {
    "1x8": [NodeSpec(96, 8)],
    "2x4": [NodeSpec(48, 4), NodeSpec(48, 4)],
    "1x16": [NodeSpec(192, 16)],
    "2x8": [NodeSpec(96, 8), NodeSpec(96, 8)],
}


def _cfg(path: Path | str, *overrides: str) -> TrainConfig:
    cfg = TrainConfig.from_yaml(path, overrides=list(overrides))
    cfg.validate()
    return cfg


def check_invariants(plan: PlacementPlan) -> None:
    """What must hold for any placeable plan: nothing oversubscribed, no two learner ranks on one GPU,
    the driver on its own node, NCCL only between processes with GPUs of their own."""
    assert plan.feasible, plan.reason
    for b, res in enumerate(plan.bundles):  # the actors of a bundle fit inside it
        members = [s for s in plan.slots if s.bundle == b]
        assert sum(s.cpus for s in members) <= res.get("CPU", 0) + 1e-9, (b, members)
        assert sum(s.gpus for s in members) <= res.get("GPU", 0) + 1e-9, (b, members)
        assert plan.bundle_nodes[b] is not None
    per_node_cpu: dict[int, float] = defaultdict(float)
    per_gpu: dict[tuple[int, int], float] = defaultdict(float)
    for b, res in enumerate(plan.bundles):
        node = plan.bundle_nodes[b]
        per_node_cpu[node] += res.get("CPU", 0)
        ids = [g for s in plan.slots if s.bundle == b for g in s.gpu_ids]
        for g in set(ids):
            share = res.get("GPU", 0) if res.get("GPU", 0) < 1 else 1.0
            per_gpu[(node, g)] += share
    for node, cpus in per_node_cpu.items():
        assert cpus <= plan.nodes[node].cpus + 1e-9
    for (node, g), used in per_gpu.items():
        assert g < plan.nodes[node].gpus and used <= 1 + 1e-9, (node, g, used)
    if plan.device == "cuda":
        learners = [(s.node, tuple(s.gpu_ids)) for s in plan.slots if s.role in ("driver", "learner")]
        assert len(set(learners)) == len(learners), f"two learner ranks on one GPU: {learners}"
        driver = plan.slot("driver", 0)
        assert driver.node == plan.driver_node and driver.gpu_ids
        shared = any(s.role == "engine" and s.node == driver.node and set(s.gpu_ids) & set(driver.gpu_ids)
                     for s in plan.slots)
        assert shared == (plan.mode == "colocated" and plan.engines_on_driver_gpu() > 0)
        if shared:
            assert plan.weight_channel == "gloo"


@pytest.mark.parametrize("cluster", sorted(CLUSTERS))
@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_configs_place_on_8_and_16_gpus(path, cluster):
    cfg = _cfg(path)
    nodes = CLUSTERS[cluster]
    plan = plan_placement(cfg, nodes)
    check_invariants(plan)
    gpus = sum(n.gpus for n in nodes)
    if cfg.distributed.backend != "ray":  # one GPU, the trainer's engine in process
        assert plan.mode == "local" and plan.learner_ranks == 1 and plan.engines_on_driver_gpu() == 1
        return
    assert plan.learner_ranks == 8 and plan.engines == 8
    if gpus >= 16:  # 8 learner GPUs + 8 engine GPUs: each on its own, weights over NCCL
        assert plan.mode == "split" and plan.weight_channel == "nccl" and plan.gpus_used() == 16
        assert plan.engines_on_driver_gpu() == 0
    else:  # 8 GPUs: learner rank r and engine r share GPU r (the old requests asked for 15 GPUs)
        assert plan.mode == "colocated" and plan.gpus_used() == 8
        for r in range(8):
            learner = plan.slot("driver" if r == 0 else "learner", r)
            engine = plan.slot("engine", r)
            assert (learner.node, learner.gpu_ids) == (engine.node, engine.gpu_ids)
            assert learner.gpus + engine.gpus <= 1
    if cluster == "2x8":  # PACK: learners fill the driver's node, engines the other one
        assert {plan.slot("engine", i).node for i in range(8)} == {1}
        assert plan.slot("driver", 0).node == 0


def test_forced_split_on_8_gpus_is_refused_with_a_working_suggestion():
    cfg = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml", "distributed.placement=split")
    plan = plan_placement(cfg, CLUSTERS["1x8"])
    assert not plan.feasible
    assert "16 GPUs" in plan.reason and "8 GPUs" in plan.reason
    assert "distributed.placement=colocated" in plan.suggestion
    fixed = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml", "distributed.placement=colocated")
    check_invariants(plan_placement(fixed, CLUSTERS["1x8"]))


def test_too_few_gpus_suggests_fewer_learner_ranks_and_that_fits():
    cfg = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml")
    plan = plan_placement(cfg, [NodeSpec(48, 4)])
    assert not plan.feasible and "neither split" in plan.reason
    assert "--learner-procs 4" in plan.suggestion
    check_invariants(plan_placement(cfg, [NodeSpec(48, 4)], learner_procs=4))


def test_fractional_engines_pack_two_per_gpu_beside_the_learners():
    cfg = _cfg(CONFIGS / "smoke_cpu.yaml", "policy.device=cuda", "distributed.backend=ray",
               "distributed.num_rollout_workers=4", "distributed.worker_gpus=0.5", "distributed.learner_procs=2")
    plan = plan_placement(cfg, [NodeSpec(16, 4)])
    check_invariants(plan)
    assert plan.mode == "split" and plan.gpus_used() == 4  # 2 learner GPUs + 4 x 0.5
    engine_gpus = [tuple(plan.slot("engine", i).gpu_ids) for i in range(4)]
    assert len(set(engine_gpus)) == 2 and all(engine_gpus.count(g) == 2 for g in set(engine_gpus))
    learner_gpus = {tuple(plan.slot("driver", 0).gpu_ids), tuple(plan.slot("learner", 1).gpu_ids)}
    assert not learner_gpus & set(engine_gpus)


def test_cpu_learner_procs_3_on_3_cpus_is_refused_and_a_sized_local_ray_fits():
    """The hang of issue 21 (3 CPUs: 2 learner ranks took 2, the workers' group waited 600 s)."""
    from mx_train.placement import local_node, requested_cpus

    cfg = _cfg(CONFIGS / "smoke_cpu.yaml", "distributed.backend=ray")
    plan = plan_placement(cfg, [NodeSpec(3, 0)], learner_procs=3)
    assert not plan.feasible and "5 CPUs" in plan.reason and "3 CPUs" in plan.reason
    assert "--learner-procs 1" in plan.suggestion
    assert "--set distributed.worker_cpus=0.6 --set distributed.learner_cpus=0.6" in plan.suggestion
    check_invariants(plan_placement(_cfg(CONFIGS / "smoke_cpu.yaml", "distributed.backend=ray",
                                         "distributed.worker_cpus=0.6", "distributed.learner_cpus=0.6"),
                                    [NodeSpec(3, 0)], learner_procs=3))
    need = requested_cpus(cfg, learner_procs=3)
    assert need == 5  # driver + 2 learner ranks + 2 engines, 1 CPU each
    sized = plan_placement(cfg, [local_node(cfg, need, 0)], learner_procs=3)
    check_invariants(sized)
    assert [s.role for s in sized.slots] == ["driver", "learner", "learner", "engine", "engine"]


def test_local_multi_gpu_learner_needs_its_gpus_on_the_driver_node():
    cfg = _cfg(CONFIGS / "paper_qwen3_4b_code.yaml")
    assert plan_placement(cfg, [NodeSpec(16, 2)], learner_procs=2).feasible
    plan = plan_placement(cfg, [NodeSpec(16, 2)], learner_procs=4)
    assert not plan.feasible and "--learner-procs 2" in plan.suggestion


def test_distributed_keys_named_in_the_docs_exist_and_are_checked():
    cfg = TrainConfig.from_dict({"distributed": {"learner_gpus": 0.5, "weight_bucket_mb": 64,
                                                 "placement": "colocated", "learner_cpus": 2}})
    cfg.validate()
    assert cfg.distributed.learner_gpus == 0.5 and cfg.distributed.weight_bucket_mb == 64
    bad = [({"learner_gpus": 1.5}, "distributed.learner_gpus"), ({"learner_gpus": 0}, "distributed.learner_gpus"),
           ({"worker_gpus": 1.5}, "distributed.worker_gpus"), ({"weight_bucket_mb": 0}, "distributed.weight_bucket_mb"),
           ({"worker_cpus": 0}, "distributed.worker_cpus"), ({"num_rollout_workers": 0}, "distributed.num_rollout_workers")]
    for keys, where in bad:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            TrainConfig.from_dict({"distributed": keys}).validate()
    with pytest.raises(ConfigError, match="placement"):
        TrainConfig.from_dict({"distributed": {"placement": "spread"}})
    with pytest.raises(ConfigError, match="learner_gpu"):  # a typo still names the known key
        TrainConfig.from_dict({"distributed": {"learner_gpu": 1}})


def test_memory_plan_counts_the_engines_the_placement_puts_on_rank_0():
    from mx_train.memory_plan import plan_memory

    cfg = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml")
    colo = plan_placement(cfg, CLUSTERS["1x8"])
    split = plan_placement(cfg, CLUSTERS["2x8"])
    with_engine = plan_memory(cfg, gpus=8, gpu_mem_gb=141, placement=colo)
    without = plan_memory(cfg, gpus=16, gpu_mem_gb=141, placement=split)
    assert any(k.startswith("KV cache") for k in with_engine.per_gpu_gb)
    assert not any(k.startswith("KV cache") for k in without.per_gpu_gb)
    assert without.total_gb < with_engine.total_gb
    assert with_engine.placement["mode"] == "colocated"


def test_dry_run_reports_placement_and_refuses_unplaceable_in_seconds(capsys):
    import json

    from mx_train.cli import main

    t0 = time.monotonic()
    rc = main(["train", "--config", str(CONFIGS / "paper_qwen3_8b_math.yaml"), "--dry-run", "--gpus", "8",
               "--set", "distributed.placement=split"])
    elapsed = time.monotonic() - t0
    text = capsys.readouterr().out
    assert rc == 3 and "NOT PLACEABLE" in text and "distributed.placement=colocated" in text
    assert "bundle 0" in text and "driver (learner rank 0)" in text
    assert elapsed < 10, elapsed
    rc = main(["train", "--config", str(CONFIGS / "paper_qwen3_8b_math.yaml"), "--dry-run", "--gpus", "16",
               "--nodes", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["placeable"] is True and out["placement"]["mode"] == "split"
    assert {b for b in out["placement"]["bundle_nodes"]} == {0, 1}


# ---------------------------------------------------------------------------- a real Ray runtime
@pytest.fixture(scope="module")
def ray8():
    """A local Ray runtime with 8 fake GPUs (Ray hands out GPU ids it does not check)."""
    ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=32, num_gpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _gpu_ids() -> list[int]:
    import ray

    return [int(g) for g in ray.get_gpu_ids()]


def _probe(ray, res, slot) -> list[int]:
    """The GPU ids Ray gives a task with ``slot``'s request in its bundle (tasks reuse worker
    processes: no process start per slot)."""
    task = ray.remote(_gpu_ids).options(num_cpus=slot.cpus, num_gpus=slot.gpus,
                                        scheduling_strategy=res.strategy(slot.bundle))
    return task.remote()


@pytest.mark.slow
def test_planned_placement_group_is_ready_and_gpus_are_as_planned(ray8):
    from mx_train import distributed as dist

    cfg = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml")
    res = dist.reserve(cfg)
    try:
        plan = res.plan
        assert plan.mode == "colocated" and len(plan.bundles) == 8
        driver_gpu = res.lease_gpus[0]
        assert len(driver_gpu) == 1
        # Each planned slot's request in its bundle: the GPU Ray gives it is the planned one.
        # One at a time, so one worker process serves them all.
        ids = {(s.role, s.index): ray8.get(_probe(ray8, res, s), timeout=60) for s in plan.slots if s.role != "driver"}
        learners = [driver_gpu] + [ids[("learner", r)] for r in range(1, 8)]
        assert sorted(g for gs in learners for g in gs) == list(range(8))  # one GPU per rank, all 8 used
        for r in range(8):  # engine r shares learner rank r's GPU, as planned
            assert ids[("engine", r)] == learners[r]
    finally:
        dist.release(res)
    assert dist.active_reservation() is None


@pytest.mark.slow
def test_unplaceable_run_is_refused_in_seconds_on_a_live_cluster(ray8):
    from mx_train import distributed as dist
    from mx_train.placement import PlacementError

    cfg = _cfg(CONFIGS / "paper_qwen3_8b_math.yaml", "distributed.placement=split")
    t0 = time.monotonic()
    with pytest.raises(PlacementError, match="16 GPUs") as info:
        dist.reserve(cfg)
    assert time.monotonic() - t0 < 10
    assert "distributed.placement=colocated" in str(info.value)
    assert dist.active_reservation() is None
    # Fractional engines in a split plan: engines pair up on GPUs the learners do not use.
    cfg = _cfg(CONFIGS / "smoke_cpu.yaml", "policy.device=cuda", "distributed.backend=ray",
               "distributed.num_rollout_workers=4", "distributed.worker_gpus=0.5", "distributed.learner_procs=2")
    res = dist.reserve(cfg)
    try:
        ids = [tuple(ray8.get(_probe(ray8, res, res.plan.slot("engine", i)), timeout=60)) for i in range(4)]
        assert len(set(ids)) == 2 and all(ids.count(g) == 2 for g in set(ids))
        assert not set(ids) & {tuple(res.lease_gpus[0])}
    finally:
        dist.release(res)
