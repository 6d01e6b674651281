"""Measure generation speed under each CPU thread policy, idle and with one competing busy process.

Each measurement runs in a fresh subprocess (OpenMP reads its variables once, when torch loads):
``python -m mx_agents.thread_bench --child POLICY`` generates a fixed greedy batch with the embedded
model and prints tokens/s. :func:`measure` runs every policy idle and then with one busy-looping
competitor process, so the ratios come from the same machine state; ``benchmarks/
test_generation_bench.py`` and ``python -m mx_agents.thread_bench`` print the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any

from mx_agents.threads import POLICIES, thread_policy_env

QUESTIONS = ["What is 17 + 25?", "Name three primary colors.", "Write a haiku about rain.",
             "What is the capital of France?", "Explain recursion in one sentence.", "What is 9 * 8?",
             "Give a synonym for 'happy'.", "How many days are in a leap year?"]


def _child(batch: int, new_tokens: int, threads: int) -> None:
    import torch

    from mx_agents.backends.base import ChatRequest, SamplingParams
    from mx_agents.backends.hf import HFBackend

    torch.set_num_threads(threads)
    backend = HFBackend("default", device="cpu", dtype="float32", max_batch_size=batch)
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    reqs = [ChatRequest([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], params) for i in range(batch)]
    backend.generate(reqs[:2])  # warm-up
    t0 = time.perf_counter()
    out = backend.generate(reqs)
    dt = time.perf_counter() - t0
    tokens = sum(len(c.response_ids) for c in out)
    print(json.dumps({"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}))


@contextmanager
def busy_competitor() -> Any:
    """One other process spinning on a core for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def run_child(policy: str, batch: int, new_tokens: int, threads: int, timeout: float = 600) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(thread_policy_env(policy))
    env["MX_THREAD_POLICY"] = policy
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mx_agents.thread_bench", "--child", "--batch", str(batch),
             "--new-tokens", str(new_tokens), "--threads", str(threads)],
            env=env, capture_output=True, text=True, timeout=timeout, check=True,
        )
    except subprocess.TimeoutExpired:
        # Slower than the whole batch in ``timeout`` s: report that bound, marked negative.
        return -(batch * new_tokens) / timeout
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"])


def measure(policies: tuple[str, ...] = POLICIES, batch: int = 16, new_tokens: int = 32, threads: int = 2,
            repeats: int = 1, timeout: float = 600) -> dict[str, dict[str, float]]:
    """``{policy: {"idle": tok/s, "contended": tok/s, "ratio": contended/idle}}`` (best of ``repeats``;
    a run that timed out counts as minus the speed it would have needed)."""
    table: dict[str, dict[str, float]] = {p: {} for p in policies}
    for p in policies:
        table[p]["idle"] = max(run_child(p, batch, new_tokens, threads, timeout) for _ in range(repeats))
    with busy_competitor():
        for p in policies:
            table[p]["contended"] = max(run_child(p, batch, new_tokens, threads, timeout) for _ in range(repeats))
    for p in policies:
        table[p]["ratio"] = table[p]["contended"] / table[p]["idle"]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.child:
        _child(args.batch, args.new_tokens, args.threads)
        return
    table = measure(tuple(args.policies.split(",")), args.batch, args.new_tokens, args.threads, args.repeats,
                    args.timeout)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
