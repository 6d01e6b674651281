"""Step time of a synchronous run vs an async one (``rollout.async.max_staleness: k``), back to back in
one process on the same config, seeds and data (results: ``benchmarks/results/async_rollout.md``).

    .venv/bin/python benchmarks/async_rollout_bench.py --config configs/demo_cpu.yaml --steps 4 \\
        --out /tmp/async_bench --json /tmp/async_bench/summary.json

The cold start is skipped (``warm_start.steps=0``) and only the final weights are saved, so the
figures are the RL steps themselves. Step 0 of an async run has nothing to overlap with (its rollout
is the first thing that runs), so the comparison is over steps 1..N-1; the whole run's wall time is
given too. The load average before and after each run is recorded: on a shared machine compare the
two runs of one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_once(config: str, out: Path, steps: int, k: int | None, sets: list[str]) -> dict[str, Any]:
    from mx_train.config import TrainConfig
    from mx_train.trainer import Trainer

    overrides = [f"max_steps={steps}", "warm_start.steps=0", "tensorboard=false", f"out={out}",
                 "save_every=100000", "full_save_every=0", "final_checkpoint=weights", *sets]
    if k is not None:
        overrides.append(f"rollout.async.max_staleness={k}")
    cfg = TrainConfig.from_yaml(config, overrides=overrides)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    t_built = time.perf_counter()
    cpu0 = _cpu_s()
    history = trainer.run()
    wall = time.perf_counter() - t_built
    cpu = _cpu_s() - cpu0
    load1 = os.getloadavg()
    keys = ("time/step_s", "time/rollout_s", "time/update_s", "async/overlap_s", "async/rollout_wait_s",
            "async/weights_wait_s", "async/publish_s", "async/staleness_mean", "rollout/generated_tokens",
            "memory/peak_rss_gb")
    per_step = [{k2: float(m[k2]) for k2 in keys if k2 in m} for m in history]
    later = per_step[1:] or per_step
    return {
        "mode": "sync" if k is None else f"async k={k}",
        "build_s": t_built - t0,
        "run_wall_s": wall,
        # CPU seconds of this process and its children (sandboxed tool calls) per wall second: how
        # much of the machine the run kept busy, the room an overlap has on a CPU-only machine.
        "cpu_s": cpu,
        "cores_busy": cpu / max(wall, 1e-9),
        "load_before": load0,
        "load_after": load1,
        "steps": per_step,
        "mean_step_s_after_first": statistics.fmean(s["time/step_s"] for s in later),
        "sum_step_s": sum(s["time/step_s"] for s in per_step),
        "mean_rollout_s": statistics.fmean(s["time/rollout_s"] for s in per_step),
        "mean_update_s": statistics.fmean(s["time/update_s"] for s in per_step),
        "peak_rss_gb": max(s.get("memory/peak_rss_gb", 0.0) for s in per_step),
    }


def _cpu_s() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo_cpu.yaml")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--k", type=int, default=1, help="max_staleness of the async run")
    ap.add_argument("--out", default="/tmp/async_bench")
    ap.add_argument("--json", default=None, help="write the summary here too")
    ap.add_argument("--rounds", type=int, default=1,
                    help="pairs of runs, alternating which mode goes first (load on a shared machine drifts)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(args.out)
    results = []
    ratios = []
    for rnd in range(args.rounds):
        order = (None, args.k) if rnd % 2 == 0 else (args.k, None)
        pair = {}
        for k in order:
            name = "sync" if k is None else f"async_k{k}"
            res = run_once(args.config, out / f"r{rnd}" / name, args.steps, k, args.sets)
            res["round"] = rnd
            results.append(res)
            pair[k is None] = res
            print(json.dumps({x: y for x, y in res.items() if x != "steps"}), flush=True)
        ratios.append(pair[False]["mean_step_s_after_first"] / pair[True]["mean_step_s_after_first"])
    print(f"\n| round | mode | step time, steps 1..{args.steps - 1} (mean s) | sum of step times (s) | "
          "rollout (mean s) | update (mean s) | overlap (mean s) | cores busy | peak RSS (GB) | "
          "load avg before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        overlap = statistics.fmean(s.get("async/overlap_s", 0.0) for s in r["steps"])
        print(f"| {r['round']} | {r['mode']} | {r['mean_step_s_after_first']:.1f} | {r['sum_step_s']:.1f} | "
              f"{r['mean_rollout_s']:.1f} | {r['mean_update_s']:.1f} | {overlap:.1f} | {r['cores_busy']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | "
              f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} |")
    print("\nasync / sync, mean step time after the first, per round: " + ", ".join(f"{x:.2f}" for x in ratios))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
