"""In-loop rollout throughput of the HF backend vs its raw batched rate, whole-batch vs step engine.

Workload (issue 22): ``CALLERS`` threads play sub-agent conversations the way a continuous rollout
does. Each starts at a staggered time, submits a turn, waits for the reply, spends an env step
(sandbox-like think time), then submits the next turn of the same conversation (system prompt +
task + its earlier turns + a new user message). Callers come in groups of ``N_EXEC`` that share the
system prompt and task (the N executions of one design). Sampling at T=1 with a seed per (caller,
turn), so every case generates the same conversations (up to float round-off between batch shapes).

Per engine, on the embedded SmolLM2-135M (fp32, CPU; one model object shared by both engines), each
round runs, back to back:

- ``raw``: the same conversations in lock-step rounds, every caller's turn ``t`` in one ``generate``
  call, no think time: the engine's batched rate at the width of ``CALLERS`` rows (timed here);
- ``in_loop``: the threaded callers above (timed by pytest-benchmark);

for ``batching="batch"`` (the whole-batch loop before issue 22, the naive side: requests that arrive
while a batch runs wait for all of it; every turn re-prefills its conversation, left-padded) and
``batching="step"`` (requests join the running batch at each decode step; prompts reuse the prefix
cache; no padding in prefill). The prefix cache is emptied before every run. ``extra_info``:
generated tokens/s of each run, ``in_loop_vs_raw`` (median over rounds of in-loop tokens/s over the
neighbouring raw run's; target >= 0.8), ``in_loop_speedup_vs_batch``; the same per CPU second of
this process (``*_cpu``: less sensitive to other jobs on a shared machine, blind to idle time, which
neither engine has while requests wait), and for the last round of
each mode the mean decode batch width, the fraction of single-row decode steps and the prefix-hit
rate (prompt tokens whose key/value states came from the cache).

Run: ``.venv/bin/python -m pytest benchmarks/test_rollout_engine_bench.py --benchmark-only -q``
(``MX_BENCH_QUICK=1``: fewer callers, turns and tokens, one round).
"""

from __future__ import annotations

import random
import statistics
import threading
import time

import pytest

from mx_agents.backends.base import ChatRequest, SamplingParams
from mx_agents.continuous import batch_metrics

N_EXEC = 3  # callers per shared system prompt + task
TASKS = ["What is 37 + 48?", "Compute 12 * 13.", "What is 91 - 56?", "Compute (7 + 8) * 3.",
         "What is 144 / 12?", "Compute 25 * 4 + 3."]
SYSTEM = ("You are solver {g} of a multi-agent system. Solve the task step by step, check the "
          "arithmetic, and end with the final answer in \\boxed{{}}. Be brief.")
FOLLOW = "Check your last step and continue."
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def sizes(bench_quick) -> dict[str, float]:
    if bench_quick:
        return {"callers": 6, "turns": 2, "max_new": 24, "stagger_s": 0.5, "think_s": (0.02, 0.1), "rounds": 1}
    return {"callers": 12, "turns": 3, "max_new": 48, "stagger_s": 1.0, "think_s": (0.02, 0.1), "rounds": 3}


@pytest.fixture(scope="module")
def backends(smollm2):
    """``{"batch": ..., "step": ...}``: the two engines over one model object."""
    from mx_agents.backends.hf import HFBackend

    old = smollm2(max_batch_size=32, batching="batch")
    new = HFBackend(old.model, old.tokenizer, device="cpu", dtype="float32", max_batch_size=32, batching="step")
    warm = [ChatRequest([{"role": "user", "content": q}], SamplingParams(max_new_tokens=4, seed=0)) for q in TASKS[:3]]
    for b in (old, new):  # first calls pay one-off costs (allocator, kernels) that no case should carry
        b.generate(warm)
    return {"batch": old, "step": new}


def _request(caller: int, history: list[dict[str, str]], turn: int, max_new: int) -> ChatRequest:
    messages = [{"role": "system", "content": SYSTEM.format(g=caller // N_EXEC)},
                {"role": "user", "content": TASKS[(caller // N_EXEC) % len(TASKS)]}, *history]
    return ChatRequest(messages, SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=1000 * caller + turn))


def _advance(history: list[dict[str, str]], text: str) -> None:
    history += [{"role": "assistant", "content": text}, {"role": "user", "content": FOLLOW}]


def _raw(backend, sizes) -> int:
    """Lock-step rounds: all callers' turn t in one call. Returns the tokens generated."""
    n, tokens = int(sizes["callers"]), 0
    histories: list[list[dict[str, str]]] = [[] for _ in range(n)]
    for turn in range(int(sizes["turns"])):
        comps = backend.generate([_request(c, histories[c], turn, int(sizes["max_new"])) for c in range(n)])
        for c, comp in enumerate(comps):
            tokens += len(comp.response_ids)
            _advance(histories[c], comp.text)
    return tokens


def _in_loop(backend, sizes) -> int:
    """Threaded callers with staggered starts and think time between turns. Returns the tokens generated."""
    n = int(sizes["callers"])
    rng = random.Random(0)
    starts = sorted(rng.uniform(0, sizes["stagger_s"]) for _ in range(n))
    thinks = [[rng.uniform(*sizes["think_s"]) for _ in range(int(sizes["turns"]))] for _ in range(n)]
    counts = [0] * n
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def play(c: int) -> None:
        try:
            time.sleep(max(0.0, t0 + starts[c] - time.perf_counter()))
            history: list[dict[str, str]] = []
            for turn in range(int(sizes["turns"])):
                comp = backend.generate([_request(c, history, turn, int(sizes["max_new"]))])[0]
                counts[c] += len(comp.response_ids)
                _advance(history, comp.text)
                time.sleep(thinks[c][turn])  # the env step (sandbox) before the next turn
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts)


@pytest.mark.parametrize("engine", ["batch", "step"])
def test_rollout_engine_tokens_per_s(benchmark, backends, sizes, engine):
    """Timed: the in-loop run. Before each round (untimed by the benchmark, timed here) the raw run of
    the same conversations, so every in-loop figure has a raw neighbour on a machine whose load
    drifts over minutes; ``in_loop_vs_raw`` is the median of the per-round ratios."""
    backend = backends[engine]
    rounds = int(sizes["rounds"])
    raw_s: list[float] = []
    counts: dict[str, list[int]] = {"raw": [], "in_loop": []}
    cpu_s: dict[str, list[float]] = {"raw": [], "in_loop": []}
    stats: dict[str, dict[str, float]] = {}

    def cold() -> None:  # every run starts with an empty prefix cache (the other runs had the same prompts)
        if backend.prefix_cache is not None:
            backend.prefix_cache.clear()

    def raw_then_cold() -> None:
        cold()
        before = backend.batch_stats.snapshot()
        t0, c0 = time.perf_counter(), time.process_time()
        counts["raw"].append(_raw(backend, sizes))
        raw_s.append(time.perf_counter() - t0)
        cpu_s["raw"].append(time.process_time() - c0)
        stats["raw"] = batch_metrics(backend.batch_stats, before, prefix="")
        cold()
        stats["before_in_loop"] = backend.batch_stats.snapshot()  # type: ignore[assignment]

    def run() -> None:
        c0 = time.process_time()
        counts["in_loop"].append(_in_loop(backend, sizes))
        cpu_s["in_loop"].append(time.process_time() - c0)

    benchmark.group = "rollout-engine-smollm2"
    benchmark.extra_info["naive"] = engine == "batch"
    benchmark.pedantic(run, setup=raw_then_cold, rounds=rounds, iterations=1, warmup_rounds=0)
    loop_s = list(benchmark.stats.stats.data)
    stats["in_loop"] = batch_metrics(backend.batch_stats, stats["before_in_loop"], prefix="")  # last round
    raw_tps = [n / t for n, t in zip(counts["raw"], raw_s, strict=True)]
    loop_tps = [n / t for n, t in zip(counts["in_loop"], loop_s, strict=True)]
    ratios = sorted(a / b for a, b in zip(loop_tps, raw_tps, strict=True))
    cpu_tps = {m: [n / c for n, c in zip(counts[m], cpu_s[m], strict=True)] for m in counts}
    RESULTS[engine] = {"in_loop_tps": statistics.mean(loop_tps)}
    info: dict[str, float | int | str] = {
        "engine": engine, "callers": int(sizes["callers"]), "turns": int(sizes["turns"]),
        "max_new_tokens": int(sizes["max_new"]), "rounds": rounds, "tokens": counts["in_loop"][-1],
        "in_loop_tokens_per_s": [round(x, 2) for x in loop_tps], "raw_tokens_per_s": [round(x, 2) for x in raw_tps],
        "in_loop_vs_raw": round(statistics.median(ratios), 3),
        "in_loop_vs_raw_per_round": [round(x, 3) for x in ratios],
        "in_loop_tokens_per_cpu_s": [round(x, 2) for x in cpu_tps["in_loop"]],
        "raw_tokens_per_cpu_s": [round(x, 2) for x in cpu_tps["raw"]],
        "in_loop_vs_raw_cpu": round(statistics.median(a / b for a, b in zip(cpu_tps["in_loop"], cpu_tps["raw"],
                                                                              strict=True)), 3),
    }
    for mode in ("raw", "in_loop"):
        m = stats[mode]
        info[f"{mode}_batch_width_mean"] = round(m.get("batch_width_mean", 0.0), 2)
        info[f"{mode}_single_row_steps"] = round(m.get("single_row_steps", 0.0), 3)
        info[f"{mode}_decode_steps"] = int(m.get("decode_steps", 0))
        info[f"{mode}_prefix_hit_rate"] = round(m.get("prefix_hit_rate", 0.0), 3)
    RESULTS[engine]["in_loop_cpu_tps"] = statistics.mean(cpu_tps["in_loop"])
    if engine == "step" and "batch" in RESULTS:
        for key, name in (("in_loop_tps", "in_loop_speedup_vs_batch"), ("in_loop_cpu_tps", "in_loop_cpu_speedup_vs_batch")):
            info[name] = round(RESULTS["step"][key] / RESULTS["batch"][key], 3)
    benchmark.extra_info.update(info)
