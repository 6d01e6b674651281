"""Learner throughput and peak memory on CPU: one policy update of SmolLM2-135M per round.

Model: the embedded SmolLM2-135M-Instruct (fp32, CPU; skipped when the wheel is not installed). The
batch is 8 sequences with 64-128 prompt and 32-64 response tokens (seeded). Each case runs
``Learner.update`` (old-logprob recomputation, forward+backward, clip, AdamW step) with a different
micro-batch token budget; ``naive`` is the baseline of one sequence per forward/backward
(budget 1). Reported in ``extra_info``: tokens/s (prompt+response tokens per second of update) and
the peak resident memory during the update above the memory before it (``/proc/self/statm`` polled
every 2 ms, Linux only), which includes the AdamW state allocated on the first step.

Two more groups, each case in a spawned process (clean RSS baseline; peak RSS growth of the timed
updates after a warm-up update that allocated the optimizer state):

* ``learner-logits``: full-vocabulary logits (``logits_chunk_tokens: 0``, the old path; ``naive``) vs
  the LM head in 64-position chunks, on 8 sequences with 128-256 response tokens;
* ``learner-procs``: one process with 2 threads (``naive``) vs the FSDP2 learner over 2 processes
  with 1 thread each (gloo): global tokens/s, and per rank the peak RSS growth and the bytes of
  parameters + optimizer state it holds.

* ``learner-packing``: the learner's layout on a **real batch** -- the 22 executor turns (2221
  prompt+response tokens) of step 2 of a ``configs/demo_cpu.yaml`` run (``data/demo_executor_batch.jsonl``),
  trained with the demo's learner settings (gradient checkpointing, sampler log-probs as old). The
  naive case is the old aligned, padded layout at the demo's ``micro_batch_tokens: 1024``; the
  others: padded at the old default 4096, packed rows (``shared_prefix_tokens: 0``) and packed
  with shared-prefix trees (32, the new default) at 1024 and 4096, and trees under bf16 autocast
  where the CPU has native bf16 (skipped otherwise). ``extra_info``: tokens/s (best timed round),
  positions computed per real token (> 1: padding; < 1: shared prefixes computed once), peak RSS
  growth (the first case's includes the AdamW state its warm-up allocates; later cases reuse freed
  memory). ``test_learner_packing_round_robin`` times the layouts in turn, round after round, for
  ratios that a drifting machine load does not skew.

``MX_BENCH_QUICK=1`` uses 4 sequences (the real batch: its first 8 turns).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

BUDGETS = {"naive": 1, "512": 512, "2048": 2048, "8192": 8192}
RESULTS: dict[str, dict[str, float]] = {}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Polls the resident set size in a thread; ``peak - start`` is the growth during the block."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


@pytest.fixture(scope="module")
def model_spec():
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("peak-memory measurement needs Linux /proc")
    from mx_agents.backends.embedded import EmbeddedModelUnavailable, resolve_model

    try:
        return resolve_model("default")
    except EmbeddedModelUnavailable as exc:
        pytest.skip(f"embedded SmolLM2 not installed: {exc}")


@pytest.fixture(scope="module")
def transitions(bench_quick):
    from mx_agents.transition import Transition

    rng = np.random.default_rng(0)
    n = 4 if bench_quick else 8
    out = []
    for i in range(n):
        p = rng.integers(100, 40000, size=int(rng.integers(64, 129))).tolist()
        r = rng.integers(100, 40000, size=int(rng.integers(32, 65))).tolist()
        out.append(Transition(episode_id=str(i), task_uid="t", task_id="t", design_id=0, execution_id=i,
                              role="executor", agent="a", turn=0, prompt_ids=p, response_ids=r, logprobs=None,
                              advantage=float(rng.normal())))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BUDGETS))
def test_learner_update_throughput(benchmark, model_spec, transitions, case):
    import torch

    from mx_agents.backends.hf import load_hf_model
    from mx_train.learner import Learner

    model = load_hf_model(model_spec, "cpu", torch.float32)
    learner = Learner(model, {"lr": 1e-6, "micro_batch_tokens": BUDGETS[case], "device": "cpu"})
    stats: dict[str, float] = {}

    def run() -> None:
        with PeakRSS() as mem:
            m = learner.update(transitions)
        stats["tokens_per_s"] = m["tokens_per_s"]
        stats["peak_rss_growth_mb"] = max(stats.get("peak_rss_growth_mb", 0.0), (mem.peak - mem.start) / 2**20)
        stats["loss"] = m["loss"]

    benchmark.group = "learner-update"  # mx bench pairing (benchmarks/README.md); set before timing
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert np.isfinite(stats["loss"])
    stats["total_tokens"] = float(sum(len(t.prompt_ids) + len(t.response_ids) for t in transitions))
    RESULTS[case] = stats
    benchmark.extra_info.update(stats)
    benchmark.extra_info["naive"] = case == "naive"
    if case != "naive" and "naive" in RESULTS:
        benchmark.extra_info["speedup_vs_naive"] = stats["tokens_per_s"] / RESULTS["naive"]["tokens_per_s"]
    print(f"\n[learner bench] {case}: {stats['tokens_per_s']:.0f} tok/s, peak RSS +{stats['peak_rss_growth_mb']:.0f} MiB")


LOGITS_CASES = {"full": 0, "chunked": 64}
PROC_CASES = {"1proc": 1, "2procs": 2}
SPAWN_RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def long_responses(bench_quick):
    rng = np.random.default_rng(1)
    n = 4 if bench_quick else 8
    out = []
    for i in range(n):
        p = rng.integers(100, 40000, size=int(rng.integers(64, 129))).tolist()
        r = rng.integers(100, 40000, size=int(rng.integers(128, 257))).tolist()
        out.append({"episode_id": str(i), "task_uid": "t", "task_id": "t", "design_id": 0, "execution_id": i,
                    "role": "executor", "agent": "a", "turn": 0, "prompt_ids": p, "response_ids": r,
                    "logprobs": None, "advantage": float(rng.normal())})
    return out


def _spawn_case(tmp_path, spec, transitions, config, world, threads, rounds=1):
    import torch
    from learner_bench_worker import run  # benchmarks/ is on sys.path (pytest rootdir import)

    from mx_train.learner.fsdp import free_port

    out = tmp_path / f"w{world}"
    out.mkdir()
    torch.multiprocessing.start_processes(
        run, args=(world, f"tcp://127.0.0.1:{free_port()}", spec, transitions, config, str(out), rounds, threads),
        nprocs=world, start_method="spawn", join=True,
    )
    import json

    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _record(benchmark, group, case, naive_case, stats):
    SPAWN_RESULTS[case] = stats
    benchmark.extra_info.update(stats)
    benchmark.extra_info["naive"] = case == naive_case
    if case != naive_case and naive_case in SPAWN_RESULTS:
        base = SPAWN_RESULTS[naive_case]
        benchmark.extra_info["speedup_vs_naive"] = stats["tokens_per_s"] / base["tokens_per_s"]
        benchmark.extra_info["peak_mem_ratio_vs_naive"] = stats["peak_rss_growth_mb"] / max(base["peak_rss_growth_mb"], 1e-9)
    print(f"\n[learner bench] {group} {case}: " + ", ".join(f"{k} {v:.1f}" for k, v in stats.items()))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LOGITS_CASES))
def test_learner_logits_chunking(benchmark, tmp_path, model_spec, long_responses, case):
    cfg = {"lr": 1e-6, "micro_batch_tokens": 4096, "device": "cpu", "logits_chunk_tokens": LOGITS_CASES[case]}
    out: list[dict[str, float]] = []
    benchmark.group = "learner-logits"
    benchmark.pedantic(lambda: out.append(_spawn_case(tmp_path, model_spec, long_responses, cfg, 1, 2)[0]),
                       rounds=1, iterations=1, warmup_rounds=0)
    assert np.isfinite(out[0]["loss"])
    _record(benchmark, "learner-logits", case, "full", out[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PROC_CASES))
def test_learner_processes(benchmark, tmp_path, model_spec, long_responses, case):
    world = PROC_CASES[case]
    cfg = {"lr": 1e-6, "micro_batch_tokens": 4096, "device": "cpu", "logits_chunk_tokens": 64}
    out: list[list[dict[str, float]]] = []
    benchmark.group = "learner-procs"
    benchmark.pedantic(lambda: out.append(_spawn_case(tmp_path, model_spec, long_responses, cfg, world, 2 // world)),
                       rounds=1, iterations=1, warmup_rounds=0)
    ranks = out[0]
    stats = {
        "tokens_per_s": ranks[0]["tokens_per_s"],
        "peak_rss_growth_mb": max(r["peak_rss_growth_mb"] for r in ranks),
        "state_mb_per_rank": max(r["state_mb"] for r in ranks),
        "rss_mb_per_rank": max(r["rss_mb"] for r in ranks),
    }
    assert all(np.isfinite(r["loss"]) for r in ranks)
    _record(benchmark, "learner-procs", case, "1proc", stats)


DEMO_LEARNER = {"lr": 2e-5, "max_grad_norm": 1.0, "gradient_checkpointing": True, "old_logprobs": "sampling",
                "device": "cpu"}
PACK_CASES: dict[str, dict[str, object]] = {
    "padded-1024": {"packing": "off", "micro_batch_tokens": 1024, "dtype": "float32"},  # the demo today
    "padded-4096": {"packing": "off", "micro_batch_tokens": 4096, "dtype": "float32"},  # the default budget today
    "packed-1024": {"packing": "on", "micro_batch_tokens": 1024, "shared_prefix_tokens": 0, "dtype": "float32"},
    "packed-4096": {"packing": "on", "micro_batch_tokens": 4096, "shared_prefix_tokens": 0, "dtype": "float32"},
    "tree-1024": {"packing": "on", "micro_batch_tokens": 1024, "shared_prefix_tokens": 32, "dtype": "float32"},
    "tree-4096": {"packing": "on", "micro_batch_tokens": 4096, "shared_prefix_tokens": 32, "dtype": "float32"},
    "tree-4096-bf16": {"packing": "on", "micro_batch_tokens": 4096, "shared_prefix_tokens": 32, "dtype": "auto"},
}
PACK_RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def real_batch(bench_quick):
    import json
    from pathlib import Path

    from mx_agents.transition import Transition

    path = Path(__file__).parent / "data" / "demo_executor_batch.jsonl"
    rows = [Transition(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return rows[:8] if bench_quick else rows


@pytest.fixture(scope="module")
def fp32_model(model_spec):
    import torch

    from mx_agents.backends.hf import load_hf_model

    return load_hf_model(model_spec, "cpu", torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PACK_CASES))
def test_learner_packing(benchmark, fp32_model, real_batch, bench_quick, case):
    import copy

    from mx_train.learner import Learner
    from mx_train.learner.collation import as_seq
    from mx_train.learner.precision import cpu_has_bf16

    if case.endswith("bf16") and not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU (avx512_bf16/AMX): bf16 would be emulated")
    learner = Learner(copy.deepcopy(fp32_model), {**DEMO_LEARNER, **PACK_CASES[case]})
    seqs = [as_seq(t) for t in real_batch]
    positions = sum(mb.positions for mb in learner.micro_batches(seqs))
    tps: list[float] = []
    stats: dict[str, float] = {"peak_rss_growth_mb": 0.0}

    def run() -> None:
        with PeakRSS() as mem:
            m = learner.update(real_batch)
        tps.append(m["tokens_per_s"])
        stats["loss"] = m["loss"]
        stats["peak_rss_growth_mb"] = max(stats["peak_rss_growth_mb"], (mem.peak - mem.start) / 2**20)

    benchmark.group = "learner-packing"
    # a first update allocates AdamW's state: a warm-up round, then the timed ones
    benchmark.pedantic(run, rounds=1 if bench_quick else 3, iterations=1, warmup_rounds=1)
    assert np.isfinite(stats["loss"])
    total = float(sum(s.length for s in seqs))
    stats.update({"tokens_per_s": max(tps[1:]), "total_tokens": total, "positions": float(positions),
                  "positions_per_token": positions / total, "micro_batches": float(len(learner.micro_batches(seqs)))})
    PACK_RESULTS[case] = stats
    benchmark.extra_info.update(stats)
    benchmark.extra_info["naive"] = case == "padded-1024"
    if case != "padded-1024" and "padded-1024" in PACK_RESULTS:
        benchmark.extra_info["speedup_vs_naive"] = stats["tokens_per_s"] / PACK_RESULTS["padded-1024"]["tokens_per_s"]
    print(f"\n[learner bench] packing {case}: {stats['tokens_per_s']:.1f} tok/s, {positions} positions for "
          f"{total:.0f} tokens, peak RSS +{stats['peak_rss_growth_mb']:.0f} MiB")


RR_CASES = ("padded-1024", "packed-1024", "tree-1024", "tree-4096")


@pytest.mark.slow
def test_learner_packing_round_robin(benchmark, fp32_model, real_batch, bench_quick):
    """The ``learner-packing`` layouts updated in turn, round after round, on one model: on a
    shared machine whose load drifts over minutes, the ratio of two cases timed in the same round
    is the fair figure (``ratio_vs_padded-1024``: the median over rounds of the per-round ratio)."""
    import copy
    import statistics

    from mx_train.learner import Learner

    model = copy.deepcopy(fp32_model)
    learners = {c: Learner(model, {**DEMO_LEARNER, **PACK_CASES[c]}) for c in RR_CASES}
    times: dict[str, list[float]] = {c: [] for c in RR_CASES}
    losses: list[float] = []

    def one_round() -> None:
        for c in RR_CASES:
            m = learners[c].update(real_batch)
            times[c].append(m["time_s"])
            losses.append(m["loss"])

    benchmark.group = "learner-packing-rr"
    benchmark.pedantic(one_round, rounds=1 if bench_quick else 3, iterations=1, warmup_rounds=1)
    assert all(np.isfinite(x) for x in losses)
    total = float(sum(len(t.prompt_ids) + len(t.response_ids) for t in real_batch))
    timed = {c: v[1:] for c, v in times.items()}  # the warm-up round allocated AdamW's state
    info: dict[str, float] = {}
    benchmark.extra_info["update_s"] = {c: [round(t, 2) for t in v] for c, v in timed.items()}
    for c in RR_CASES:
        info[f"tokens_per_s/{c}"] = total / min(timed[c])
        if c != "padded-1024":
            info[f"ratio_vs_padded-1024/{c}"] = statistics.median(
                old / new for old, new in zip(timed["padded-1024"], timed[c], strict=True))
    benchmark.extra_info.update(info)
    print("\n[learner bench] round robin: " + ", ".join(f"{k} {v:.2f}" for k, v in info.items()))
