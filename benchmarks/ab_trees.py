"""Old vs new on the same minutes: one worker per source tree, driven alternately in small blocks.

Every tree sees the same machine load (matched pairs), which a loaded shared machine needs: there
separate runs minutes apart differ by more than the change measured. Figures per tree: tool
``print(1)`` back to back on the MAS pool with the executor's tool limits (p50), warm episode start
through ``MASSession`` (single design, runs 20 ms apart; p50, p90), and the episode of
``benchmarks/test_env_bench.py::test_env_episode`` (3-agent vote, instant scripted LLM; p50 and
episodes/s).

    git archive <base-commit> | tar -x -C /tmp/old       # the old tree (outside the checkout)
    .venv/bin/python benchmarks/ab_trees.py --rounds 10 /tmp/old .

Each tree is put first on ``PYTHONPATH`` (its pool server runs that tree's sandbox too). Prints one
JSON line per tree and the 1-minute load average seen at each round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker() -> None:
    """Serve ``OP N`` lines on stdin with a JSON list of N latencies (s) each; ``OP`` in tool/start/env."""
    from mx_envs.envs.meta_env import MetaAgentXEnv
    from mx_envs.mas.protocol import Budgets, Finished, LLMRequest
    from mx_envs.mas.session import PRELOAD, MASSession
    from mx_envs.sandbox import Limits, ProcessSandbox
    from mx_envs.tasks.record import Task

    budgets = Budgets()
    tool = Limits(wall_s=budgets.tool_wall_s, memory_mb=budgets.tool_memory_mb)
    mas = ProcessSandbox(extra_preload=PRELOAD)
    mas.warm_up()
    session = MASSession(sandbox=mas)
    single = "```python\ndef forward(task):\n    return Agent('solver')(task)\n```"
    ensemble3 = (
        "```python\ndef forward(task):\n"
        "    solvers = [Agent(f'solver{i}', system='Solve; end with \\\\boxed{}.') for i in range(3)]\n"
        "    return final_answer(ensemble(solvers, task, aggregate='vote'))\n```"
    )
    env = MetaAgentXEnv(tasks=[Task("bench-0", "bench", "test", "math", "What is 12 + 30?", "42")], sandbox=mas)

    def tool_run() -> float:
        t = time.perf_counter()
        r = mas.run("print(1)", limits=tool)
        dt = time.perf_counter() - t
        assert r.ok, r
        return dt

    def start() -> float:
        time.sleep(0.02)
        t = time.perf_counter()
        out = session.start(single, "What is 6 * 7?")
        dt = time.perf_counter() - t
        assert isinstance(out, LLMRequest), out
        assert isinstance(session.reply("\\boxed{42}"), Finished)
        return dt

    def env_episode() -> float:
        t = time.perf_counter()
        env.reset(seed=0)
        _, reward, term, _, _ = env.step(ensemble3)
        while not term:
            _, reward, term, _, _ = env.step("Adding them: \\boxed{42}")
        assert reward == 1.0
        return time.perf_counter() - t

    ops = {"tool": tool_run, "start": start, "env": env_episode}
    for _ in range(10):
        for op in ops.values():
            op()
    view = mas.run("print(1)").isolation.get("file_view")
    print(json.dumps({"ready": True, "view": view}), flush=True)
    for line in sys.stdin:
        op, n = line.split()
        print(json.dumps([ops[op]() for _ in range(int(n))]), flush=True)
    env.close()
    session.close()
    mas.close()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[int(q * (len(xs) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="source trees to compare (each holds mx_envs/)")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    trees = [os.path.abspath(t) for t in args.trees]
    procs = {}
    for t in trees:
        env = {**os.environ, "PYTHONPATH": t, "OMP_WAIT_POLICY": "PASSIVE"}
        procs[t] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], cwd=t, env=env,
                                    text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    views = {t: json.loads(p.stdout.readline())["view"] for t, p in procs.items()}  # type: ignore[union-attr]
    lat: dict[str, dict[str, list[float]]] = {t: {"tool": [], "start": [], "env": []} for t in trees}
    loads = []
    for r in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 1))
        for op, n in (("tool", 20), ("start", 10), ("env", 10)):
            for t in trees if r % 2 == 0 else trees[::-1]:
                p = procs[t]
                p.stdin.write(f"{op} {n}\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
                lat[t][op] += json.loads(p.stdout.readline())  # type: ignore[union-attr]
    for p in procs.values():
        p.stdin.close()  # type: ignore[union-attr]
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    for t in trees:
        got = lat[t]
        print(json.dumps({
            "tree": t, "view": views[t],
            "tool_print1_b2b_p50_ms": round(_pct(got["tool"], 0.5) * 1e3, 2),
            "episode_start_p50_ms": round(_pct(got["start"], 0.5) * 1e3, 2),
            "episode_start_p90_ms": round(_pct(got["start"], 0.9) * 1e3, 2),
            "env_episode_p50_ms": round(_pct(got["env"], 0.5) * 1e3, 2),
            "env_episodes_per_s_at_p50": round(1 / _pct(got["env"], 0.5), 1),
            "n": {k: len(v) for k, v in got.items()},
        }))
    print(json.dumps({"load_avg_1min": loads}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker()
    else:
        main()
