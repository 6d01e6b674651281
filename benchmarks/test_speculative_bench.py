"""Speculative decoding with n-gram drafts in the HF step engine vs plain decoding (issue 22).

Workload: the embedded SmolLM2-135M (fp32, CPU), ``ROWS`` designer-like requests: the three demo
designs (``configs/demo_designs``) in the system prompt and a different task each, asking for a design
script. What an RL designer does after its cold start: write near copies of designs it has seen. One
untimed round (other tasks, sampled) fills the drafter's history, as the earlier steps of a run do,
and every timed round starts from that history (not from the previous round's identical replies);
each round runs plain and speculative decoding alternately over the same model object, greedy, so both sides must
produce the same tokens (asserted) and the time is the only difference. ``extra_info``: per-round
seconds, decode tokens/s, forward passes and draft acceptance of both sides, the speedup (median of
per-round ratios).

Run: ``.venv/bin/python -m pytest benchmarks/test_speculative_bench.py --benchmark-only -q``
(``MX_BENCH_QUICK=1``: fewer rows, tokens and rounds).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from mx_agents.backends.base import ChatRequest, SamplingParams

DESIGNS = Path(__file__).resolve().parents[1] / "configs" / "demo_designs"
TASKS = ["What is 37 + 48?", "Compute 12 * 13.", "What is 91 - 56?", "Compute (7 + 8) * 3.",
         "What is 144 / 12?", "Compute 25 * 4 + 3.", "What is 17 * 19?", "Compute 1000 - 387."]


def _system() -> str:
    designs = "\n\n".join(f"```python\n{p.read_text().strip()}\n```" for p in sorted(DESIGNS.glob("*.py")))
    return ("You design a multi-agent system. Reply with one ```python block that defines `def forward(task):` "
            "like these designs:\n\n" + designs)


@pytest.fixture(scope="module")
def sizes(bench_quick) -> dict[str, int]:
    return {"rows": 4, "max_new": 48, "rounds": 2} if bench_quick else {"rows": 6, "max_new": 96, "rounds": 3}


@pytest.fixture(scope="module")
def backends(smollm2):
    from mx_agents.backends.hf import HFBackend

    plain = smollm2(max_batch_size=32, batching="step")
    spec = HFBackend(plain.model, plain.tokenizer, device="cpu", dtype="float32", max_batch_size=32,
                     batching="step", speculative={"max_draft": 8, "min_match": 3})
    return plain, spec


def _requests(sizes, offset: int, temperature: float) -> list[ChatRequest]:
    return [ChatRequest([{"role": "system", "content": _system()},
                         {"role": "user", "content": TASKS[(i + offset) % len(TASKS)]}],
                        SamplingParams(temperature=temperature, max_new_tokens=sizes["max_new"], seed=i, stop=()))
            for i in range(sizes["rows"])]


def _run(backend, reqs) -> tuple[float, int, list[list[int]], int]:
    backend.prefix_cache.clear()
    steps0 = sum(backend.batch_stats.width_hist.values())
    t0 = time.perf_counter()
    comps = backend.generate(reqs)
    secs = time.perf_counter() - t0
    steps = sum(backend.batch_stats.width_hist.values()) - steps0
    return secs, sum(len(c.response_ids) for c in comps), [c.response_ids for c in comps], steps


def test_speculative_decoding_vs_plain(benchmark, backends, sizes):
    import copy

    plain, spec = backends
    engine = spec._batcher._engine
    spec.generate(_requests(sizes, 1, temperature=1.0))  # an earlier step's replies: the drafter's history
    history = copy.deepcopy(engine.drafter)  # every round starts from it (not from the last round's replies)
    secs: dict[str, list[float]] = {"plain": [], "spec": []}
    toks: dict[str, list[int]] = {"plain": [], "spec": []}
    passes: dict[str, list[int]] = {"plain": [], "spec": []}
    same: list[bool] = []
    plain_ids: list[list[list[int]]] = []
    reqs = _requests(sizes, 0, temperature=0.0)

    def plain_first() -> None:  # untimed by pytest-benchmark, timed here: the neighbouring plain run
        s, n, ids, steps = _run(plain, reqs)
        secs["plain"].append(s)
        toks["plain"].append(n)
        passes["plain"].append(steps)
        plain_ids.append(ids)

    def new() -> None:
        engine.drafter = copy.deepcopy(history)
        s, n, ids, steps = _run(spec, reqs)
        secs["spec"].append(s)
        toks["spec"].append(n)
        passes["spec"].append(steps)
        same.append(ids == plain_ids[-1])

    drafted0, accepted0 = spec.batch_stats.draft_tokens, spec.batch_stats.accepted_tokens
    benchmark.group = "speculative-smollm2"
    benchmark.pedantic(new, setup=plain_first, rounds=sizes["rounds"], iterations=1, warmup_rounds=0)
    ratios = [a / b for a, b in zip(secs["plain"], secs["spec"], strict=True)]
    drafted = spec.batch_stats.draft_tokens - drafted0
    benchmark.extra_info.update({
        "rows": sizes["rows"], "max_new_tokens": sizes["max_new"],
        "spec_s": [round(x, 2) for x in secs["spec"]], "plain_s": [round(x, 2) for x in secs["plain"]],
        "spec_tokens_per_s": [round(n / s, 1) for n, s in zip(toks["spec"], secs["spec"], strict=True)],
        "plain_tokens_per_s": [round(n / s, 1) for n, s in zip(toks["plain"], secs["plain"], strict=True)],
        "forward_passes": {k: v for k, v in passes.items()},
        "draft_tokens": drafted,
        "draft_accept_rate": round((spec.batch_stats.accepted_tokens - accepted0) / max(drafted, 1), 3),
        "speedup": round(statistics.median(ratios), 3), "speedup_per_round": [round(r, 3) for r in ratios],
        "same_tokens_per_round": same,
    })
    assert all(same), "greedy speculative decoding must give the plain tokens"
    assert all(t > 0 for t in toks["spec"])


def test_prefill_in_waves_vs_one_pass_per_row(benchmark, backends, sizes):
    """12 executor-like turns admitted at one step (a cached system prompt, then 2 tasks x 3 designs x 2
    executions: each design's script is shared by its two executions), prefilled to their first token:
    in waves (one forward pass per wave) vs one pass per row, the same engine alternately."""
    plain, _ = backends
    engine = plain._batcher._engine
    system = _system()
    rows = 6 if sizes["rows"] < 6 else 12
    reqs = [ChatRequest([{"role": "system", "content": system},
                         {"role": "user", "content": f"{TASKS[i // 6]}\n\nScript {i // 2 % 3}: "
                                                     + "x = compute(task)\n" * (3 + i // 2 % 3)}],
                        SamplingParams(temperature=0.0, max_new_tokens=1)) for i in range(rows)]
    warm = ChatRequest([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
                       SamplingParams(temperature=0.0, max_new_tokens=1))
    secs: dict[bool, list[float]] = {True: [], False: []}
    firsts: dict[bool, list[list[int]]] = {True: [], False: []}

    def run(waves: bool) -> None:
        engine.batch_prefill = waves
        plain.prefix_cache.clear()
        plain.generate([warm])  # the system prompt is cached, as after earlier turns
        t0 = time.perf_counter()
        out = plain.generate(reqs)
        secs[waves].append(time.perf_counter() - t0)
        firsts[waves].append([c.response_ids for c in out])

    benchmark.group = "prefill-waves-smollm2"
    try:
        benchmark.pedantic(lambda: run(True), setup=lambda: run(False), rounds=sizes["rounds"], iterations=1)
    finally:
        engine.batch_prefill = True
    ratios = [a / b for a, b in zip(secs[False], secs[True], strict=True)]
    benchmark.extra_info.update({
        "rows": rows, "waves_s": [round(x, 3) for x in secs[True]], "per_row_s": [round(x, 3) for x in secs[False]],
        "speedup": round(statistics.median(ratios), 3), "speedup_per_round": [round(r, 3) for r in ratios],
    })
    assert firsts[True] == firsts[False]
