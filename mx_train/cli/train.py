"""``mx train``: run the MetaAgent-X training loop from a YAML config."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a designer/executor policy with hierarchical RL (YAML config)",
        description=(
            "Hierarchical RL on a MetaAgentX env: per step, B tasks x M designs x N executions, "
            "hierarchical credit assignment, stagewise co-evolution. Writes metrics.jsonl, TensorBoard "
            "events, transition shards, checkpoints and rewards.png to the run directory."
        ),
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--out", default=None, help="run directory (overrides the config's `out`)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config key, value parsed as YAML (e.g. --set learner.lr=1e-5 "
                        "--set rollout.designs=2); repeatable")
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import a module (dotted name or .py file) that registers estimators, losses or "
                        "datasets, before the config is checked (also the config key `plugins:`); repeatable")
    p.add_argument("--learner-procs", type=int, default=None, metavar="N",
                   help="shard the learner over N processes with FSDP2 (gloo on CPU, NCCL on GPUs); rank 0 "
                        "runs the trainer. Also works under `torchrun --nproc_per_node N` (default: "
                        "distributed.learner_procs, 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the placement (which process on which Ray bundle, node and GPU) and the memory "
                        "plan (per GPU on CUDA: params, grads, optimizer, activations, logits chunk, engine KV "
                        "cache; host memory of the trainer on the CPU), then exit (0: placeable and fits, 3: not, "
                        "with the reason and a suggestion)")
    p.add_argument("--gpus", type=int, default=None,
                   help="--dry-run: GPUs of the cluster to plan for, over all nodes (default: one per learner "
                        "process on a CUDA config, none on a CPU one)")
    p.add_argument("--nodes", type=int, default=None, help="--dry-run: nodes sharing --gpus (default 1)")
    p.add_argument("--cpus-per-node", type=float, default=None,
                   help="--dry-run: CPUs per node (default: this machine's without GPUs, 12 per GPU with them)")
    p.add_argument("--gpu-mem-gb", type=float, default=None, help="--dry-run: memory per GPU in GB (default 80)")
    p.add_argument("--host-mem-gb", type=float, default=None,
                   help="--dry-run of a CPU config: host memory in GB (default: this machine's)")
    p.add_argument("--cluster", action="store_true",
                   help="--dry-run: plan on the live cluster at distributed.ray_address (or a local Ray "
                        "instance) instead of --gpus/--nodes")
    p.add_argument("--json", action="store_true",
                   help="--dry-run: print the plan as JSON (top level: the memory plan with `fits`, plus "
                        "`placeable` and `placement`)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from mx_train.config import TrainConfig
    from mx_train.trainer import train

    try:
        cfg = TrainConfig.from_yaml(args.config, overrides=args.overrides, plugins=args.plugins)
        if args.max_steps is not None:
            cfg.max_steps = args.max_steps
        if args.out:
            cfg.out = args.out
        cfg.validate()
    except (FileNotFoundError, ValueError) as exc:
        print(f"mx train: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(cfg, args)
    procs = args.learner_procs if args.learner_procs is not None else cfg.distributed.learner_procs
    if procs < 1:
        print("mx train: --learner-procs must be >= 1", file=sys.stderr)
        return 2
    cfg.distributed.learner_procs = procs
    if os.environ.get("RANK", "0") == "0":  # the trainer's log; torchrun's other ranks only hold shards
        logging.getLogger("mx_train").setLevel(logging.INFO)
    from mx_train.distributed import LearnerRankDied
    from mx_train.placement import PlacementError

    try:
        return train(cfg, resume=args.resume, progress=not args.no_progress, on_done=_report)
    except LearnerRankDied as exc:  # the message names the rank and says how to go on (--resume)
        print(f"mx train: {exc}", file=sys.stderr)
        return 4
    except PlacementError as exc:
        print(f"mx train: cannot place this run on the cluster\n{exc.plan.render()}", file=sys.stderr)
        return 3
    except ConnectionError as exc:  # joining distributed.ray_address (the message says why and what to do)
        print(f"mx train: {exc}", file=sys.stderr)
        return 2


def _dry_run(cfg: Any, args: argparse.Namespace) -> int:
    import json
    import sys

    from mx_envs.cli_output import emit_json
    from mx_train.memory_plan import plan_memory

    try:
        placement = _placement(cfg, args)
        plan = plan_memory(cfg, gpus=args.gpus, gpu_mem_gb=args.gpu_mem_gb, learner_procs=args.learner_procs,
                           placement=placement, host_mem_gb=args.host_mem_gb)
    except (ValueError, ConnectionError) as exc:
        print(f"mx train: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = json.loads(plan.to_json())
        out["placeable"] = placement.feasible
        emit_json(out)
    else:
        print(placement.render())
        print(plan.render())
    return 0 if plan.fits and placement.feasible else 3


def _placement(cfg: Any, args: argparse.Namespace) -> Any:
    """The placement the dry run reports: on the live cluster (``--cluster``), on a local Ray instance
    sized for the run (a Ray config without an address or cluster flags), else on --gpus/--nodes."""
    from mx_train.placement import cluster_for_dry_run, local_node, plan_placement, requested_cpus

    d = cfg.distributed
    explicit = args.gpus is not None or args.nodes is not None or args.cpus_per_node is not None
    if args.cluster:
        from mx_train.distributed import cluster_nodes, connect

        ray = connect(cfg, args.learner_procs)
        try:
            nodes, driver = cluster_nodes(ray)
            return plan_placement(cfg, nodes, learner_procs=args.learner_procs, driver_node=driver)
        finally:
            ray.shutdown()
    if d.backend == "ray" and not d.ray_address and not explicit and not str(cfg.policy.device).startswith("cuda"):
        node = local_node(cfg, requested_cpus(cfg, learner_procs=args.learner_procs), 0)
        plan = plan_placement(cfg, [node], learner_procs=args.learner_procs)
        plan.notes.append(f"a local Ray instance with {node.cpus:g} logical CPUs (at least this machine's)")
        return plan
    nodes = cluster_for_dry_run(cfg, gpus=args.gpus, nodes=args.nodes, cpus_per_node=args.cpus_per_node,
                                learner_procs=args.learner_procs)
    return plan_placement(cfg, nodes, learner_procs=args.learner_procs)


def _report(trainer: Any, history: list[dict[str, Any]]) -> None:
    """The run's last rewards and its reward plot (rank 0, after the run)."""
    if history:
        from mx_train.plot import plot_run

        png = plot_run(trainer.out, trainer.out / "rewards.png")
        last = history[-1]
        print(
            f"done: {trainer.step_index} steps in {trainer.out}; last step reward designer "
            f"{last['reward/designer']:.3f} executor {last['reward/executor']:.3f}; plot {png}"
        )
    else:
        print(f"nothing to do: already at step {trainer.step_index} of {trainer.config.max_steps} ({trainer.out})")
