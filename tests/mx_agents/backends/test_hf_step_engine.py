"""HFBackend's step engine (batching="step"): requests join the running batch between decode steps,
prompts reuse the prefix cache, and the outcome is the plain per-request generation's."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mx_agents.backends.base import ChatRequest, SamplingParams  # noqa: E402
from mx_agents.backends.hf import HFBackend  # noqa: E402
from mx_agents.backends.hf_engine import cache_layers, step_engine_supported  # noqa: E402
from mx_agents.continuous import batch_metrics  # noqa: E402
from mx_agents.testing import tiny_llama  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)
SYSTEM = "You design a multi-agent system. Reply with one python block that defines forward. " * 4
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}]
         for u in ("Hi", "What is 12 + 30? Think step by step.", "def solve(x): return x", "7 * 8")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


def _backend(tiny, **kw) -> HFBackend:
    model, tok = tiny
    return HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0, **kw)


def _plain(tiny) -> HFBackend:
    """The reference: the whole-batch path with no prefix sharing, called with one request at a time."""
    return _backend(tiny, batching="batch", shared_prefix_min=0)


def _lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _drain(engine, out: dict, until: int) -> list[int]:
    """Step the engine until ``until`` requests are done; the widths of its decode steps."""
    widths = []
    while len(out) < until:
        out.update(engine.step())
        widths.append(engine.step_width())
    return widths


def test_joining_and_prefix_reuse_give_the_plain_generation(tiny):
    """Requests joining a running batch at different steps, prompts served from the prefix cache (the
    shared system prompt, a conversation's earlier turn): the same greedy tokens as one request at a
    time with no cache, and logprobs within the plain path's own fp32 round-off.

    Tolerance: the plain path's worst error against the same model in float64 (``delta``, measured
    here). The new path computes the same quantities in other shapes and orders, so its error against
    float64 must be of that size: it is allowed 2 * delta against float64 and 3 * delta against the
    plain path (triangle inequality)."""
    plain, new = _plain(tiny), _backend(tiny)
    model, tok = tiny
    exact = HFBackend(copy.deepcopy(model).double(), tok, device="cpu", dtype=torch.float64,
                      batching="batch", shared_prefix_min=0)
    prompts = [new.encode_chat(c) for c in CHATS]
    ref = [plain.generate_from_ids([p], [GREEDY])[0] for p in prompts]
    # The second turn of conversation 0: turn 1's prompt and reply, then the template's end of turn
    # and a user message (built from ids: the random model's reply is not valid text to re-render).
    follow = "<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    prompts.append(prompts[0] + ref[0].response_ids + tok(follow, add_special_tokens=False)["input_ids"])
    ref.append(plain.generate_from_ids([prompts[4]], [GREEDY])[0])

    engine, out, widths = new._batcher._engine, {}, []

    def steps(n):
        for _ in range(n):
            out.update(engine.step())
            widths.append(engine.step_width())

    engine.add(0, (prompts[0], GREEDY))
    steps(3)
    engine.add(1, (prompts[1], GREEDY))  # join request 0 after its third step
    engine.add(2, (prompts[2], GREEDY))
    steps(5)
    engine.add(3, (prompts[3], GREEDY))  # joins 1 and 2 (0 is five steps ahead of them)
    widths += _drain(engine, out, 4)
    engine.add(4, (prompts[4], GREEDY))  # conversation 0, turn 2, after turn 1 finished
    widths += _drain(engine, out, 5)
    assert widths[:3] == [1, 1, 1] and widths[3] == 3 and 4 in widths  # really joined mid-flight

    for i, r in enumerate(ref):
        assert out[i].response_ids == r.response_ids and out[i].text == r.text
        assert out[i].finish_reason == r.finish_reason and out[i].prompt_ids == r.prompt_ids
    exact_lps = exact.score_batch([(r.prompt_ids, r.response_ids) for r in ref], 1.0)

    def worst(a, b):
        return max(abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))

    delta = worst([r.logprobs for r in ref], exact_lps)
    assert 0 < delta < 1e-4  # fp32 round-off of this model, not an error
    assert worst([out[i].logprobs for i in range(5)], exact_lps) <= 2 * delta
    assert worst([out[i].logprobs for i in range(5)], [r.logprobs for r in ref]) <= 3 * delta

    # What the prefix cache served: each prompt's longest common prefix with the sequences whose
    # states were stored before it (earlier prompts; turn 1 of conversation 0 as prompt + reply less
    # the last token, which was never fed), at most all but its last token.
    stored = [prompts[0], prompts[1], prompts[2], prompts[3], prompts[0] + ref[0].response_ids[:-1]]
    served = [0] + [min(len(p) - 1, max(_lcp(p, s) for s in stored[: i if i < 4 else 5]))
                    for i, p in enumerate(prompts) if i]
    assert served[4] == len(prompts[0]) + len(ref[0].response_ids) - 1  # turn 2 reuses all of turn 1
    stats = new.batch_stats
    assert stats.prompt_tokens == sum(map(len, prompts)) and stats.cached_tokens == sum(served)


def test_a_request_arriving_mid_batch_joins_it_and_returns_first(tiny):
    """Through the public API with threads: a short request that arrives while a long one decodes
    shares its decode steps and returns before it (a whole-batch engine would make it wait)."""
    new = _backend(tiny)
    forward = new.model.forward

    def slow(*a, **k):  # ~5 ms per forward, so the long request is still decoding when the short one comes
        time.sleep(0.005)
        return forward(*a, **k)

    new.model.forward = slow
    done: dict[str, float] = {}
    results = {}

    def run(name, chat, max_new):
        results[name] = new.generate([ChatRequest(chat, SamplingParams(temperature=0.0, max_new_tokens=max_new))])[0]
        done[name] = time.perf_counter()

    long = threading.Thread(target=run, args=("long", CHATS[1], 120))
    long.start()
    while not new.batch_stats.width_hist:  # the long request is decoding
        time.sleep(0.001)
    run("short", CHATS[2], 3)
    long.join()
    assert len(results["long"].response_ids) == 120 and len(results["short"].response_ids) == 3
    assert done["short"] < done["long"]
    assert new.batch_stats.width_hist.get(2, 0) >= 2  # decode steps with both rows
    plain = _plain(tiny)
    for name, chat, max_new in (("long", CHATS[1], 120), ("short", CHATS[2], 3)):
        ref = plain.generate([ChatRequest(chat, SamplingParams(temperature=0.0, max_new_tokens=max_new))])[0]
        assert results[name].response_ids == ref.response_ids


def test_batch_width_is_capped_and_seeded_sampling_does_not_depend_on_the_batch(tiny):
    new, plain = _backend(tiny, max_batch_size=2), _plain(tiny)
    params = [SamplingParams(temperature=t, top_p=p, max_new_tokens=10, seed=i)
              for i, (t, p) in enumerate([(1.0, 1.0), (0.7, 0.9), (1.3, 1.0), (0.0, 1.0), (1.0, 0.5)])]
    reqs = [ChatRequest(CHATS[i % 4], p) for i, p in enumerate(params)]
    got = new.generate(reqs)  # five requests, at most two decoding at a time
    assert max(new.batch_stats.width_hist) == 2
    for r, c in zip(reqs, got, strict=True):
        ref = plain.generate([r])[0]
        assert c.response_ids == ref.response_ids
        assert max(abs(a - b) for a, b in zip(c.logprobs, ref.logprobs, strict=True)) < 1e-4


def test_key_value_budget_bounds_the_batch_cache_and_changes_no_result(tiny):
    """Rows join only while rows x longest row x bytes per token fits ``kv_cache_mb``: the batch
    cache stays near the budget however many requests wait, and every request gets the tokens it
    gets alone. A budget smaller than one row still runs that row (alone)."""
    model, tok = tiny
    probe = _backend(tiny)
    prompts = [probe.encode_chat(c) for c in CHATS]
    per_token = probe.kv_bytes_per_token
    assert per_token == 2 * model.config.num_hidden_layers * model.config.num_key_value_heads \
        * (model.config.hidden_size // model.config.num_attention_heads) * 4
    longest = max(len(p) for p in prompts) + 12
    budget_rows = 2
    mb = budget_rows * longest * per_token / 2**20
    new, plain = _backend(tiny, max_batch_size=16, kv_cache_mb=mb, prefix_cache_mb=0), _plain(tiny)
    params = [SamplingParams(temperature=1.0, max_new_tokens=12, seed=i) for i in range(8)]
    reqs = [ChatRequest(CHATS[i % 4], p) for i, p in enumerate(params)]
    engine, peak = new._batcher._engine, 0
    step = engine.step

    def watched_step():
        nonlocal peak
        out = step()
        if engine._cache is not None:
            # what is allocated, spare columns included (the layers hold views of larger buffers)
            peak = max(peak, sum(k.untyped_storage().nbytes() + v.untyped_storage().nbytes()
                                 for k, v in cache_layers(engine._cache)))
        return out

    engine.step = watched_step
    got = new.generate(reqs)
    assert max(new.batch_stats.width_hist) <= budget_rows  # 8 waiting, max_batch_size 16: the budget held
    assert peak <= new.kv_cache_bytes * 1.05  # rows admitted at their prompt length grow 12 columns at most
    for r, c in zip(reqs, got, strict=True):
        assert c.response_ids == plain.generate([r])[0].response_ids
    tight = _backend(tiny, kv_cache_mb=per_token / 2**20, prefix_cache_mb=0)  # one token's worth
    assert tight.generate([reqs[1]])[0].response_ids == got[1].response_ids
    assert max(tight.batch_stats.width_hist) == 1
    with pytest.raises(ValueError, match="kv_cache_mb"):
        _backend(tiny, kv_cache_mb=0)


def test_load_weights_waits_for_running_requests_and_empties_the_prefix_cache(tiny):
    new = _backend(tiny)
    other, _ = tiny_llama(seed=1)
    new.generate([ChatRequest(CHATS[0], GREEDY)])
    assert new.prefix_cache is not None and new.prefix_cache.tokens > 0
    new.load_weights(other.state_dict())
    assert new.prefix_cache.tokens == 0
    # The same prompt again: computed with the new weights only (stale cached states would differ).
    got = new.generate([ChatRequest(CHATS[0], GREEDY)])[0]
    fresh = HFBackend(copy.deepcopy(other), tiny[1], device="cpu", dtype="float32", batching="batch",
                      shared_prefix_min=0).generate([ChatRequest(CHATS[0], GREEDY)])[0]
    assert got.response_ids == fresh.response_ids
    assert max(abs(a - b) for a, b in zip(got.logprobs, fresh.logprobs, strict=True)) < 1e-4

    # A weight update during generation waits for the running request: it samples with one version.
    forward = new.model.forward
    started = threading.Event()

    def slow(*a, **k):
        started.set()
        time.sleep(0.005)
        return forward(*a, **k)

    new.model.forward = slow
    box = {}
    t = threading.Thread(target=lambda: box.update(c=new.generate([ChatRequest(CHATS[1], GREEDY)])[0]))
    t.start()
    started.wait()
    new.load_weights(tiny[0].state_dict())
    t.join()
    assert box["c"].metadata["weights_version"] == 1 and new.weights_version == 2
    assert len(box["c"].response_ids) == GREEDY.max_new_tokens


def test_weights_trained_in_place_invalidate_the_prefix_cache(tiny):
    """A learner that trains the served model object itself (no load_weights call): the next request
    is computed with the new weights only, not from states cached under the old ones."""
    new = _backend(tiny)
    other, _ = tiny_llama(seed=1)
    new.generate([ChatRequest(CHATS[0], GREEDY)])
    assert new.prefix_cache is not None and new.prefix_cache.tokens > 0
    with torch.no_grad():  # what an optimizer step does: in-place updates of the parameters
        for mine, theirs in zip(new.model.parameters(), other.parameters(), strict=True):
            mine.copy_(theirs)
    got = new.generate([ChatRequest(CHATS[0], GREEDY)])[0]
    fresh = HFBackend(copy.deepcopy(other), tiny[1], device="cpu", dtype="float32", batching="batch",
                      shared_prefix_min=0).generate([ChatRequest(CHATS[0], GREEDY)])[0]
    assert got.response_ids == fresh.response_ids
    assert max(abs(a - b) for a, b in zip(got.logprobs, fresh.logprobs, strict=True)) < 1e-4


def test_an_engine_error_fails_its_callers_and_the_engine_recovers(tiny):
    new = _backend(tiny)
    forward = new.model.forward
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device lost")
        return forward(*a, **k)

    new.model.forward = flaky
    with pytest.raises(RuntimeError, match="device lost"):
        new.generate([ChatRequest(c, GREEDY) for c in CHATS[:2]])
    again = new.generate([ChatRequest(CHATS[3], GREEDY)])[0]
    ref = _plain(tiny).generate([ChatRequest(CHATS[3], GREEDY)])[0]
    assert again.response_ids == ref.response_ids


def test_batch_metrics_report_the_width_histogram_and_prefix_hit_rate(tiny):
    new = _backend(tiny)
    new.generate([ChatRequest(c, GREEDY) for c in CHATS])
    before = new.batch_stats.snapshot()
    new.generate([ChatRequest(c, GREEDY) for c in CHATS[:2]])  # prompts seen before: all but one token cached
    m = batch_metrics(new.batch_stats, before)
    n_prompt = sum(len(new.encode_chat(c)) for c in CHATS[:2])
    assert m["rollout/prompt_tokens"] == n_prompt
    assert m["rollout/prefix_hit_rate"] == pytest.approx((n_prompt - 2) / n_prompt)
    assert m["rollout/batch_width_max"] == 2 and m["rollout/batch_width_hist_2"] == m["rollout/decode_steps"]


def test_models_with_windowed_or_linear_layers_fall_back_to_whole_batches():
    def model(**text):
        return SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: SimpleNamespace(**text)))

    assert step_engine_supported(model(layer_types=["full_attention"] * 2, sliding_window=None)) is None
    assert step_engine_supported(model(sliding_window=4096, use_sliding_window=False)) is None
    assert "sliding window" in step_engine_supported(model(sliding_window=4096))
    assert "layer types" in step_engine_supported(model(layer_types=["sliding_attention", "full_attention"]))


def test_slack_cache_writes_decode_columns_in_place_and_equals_concatenation(tiny):
    """The batch cache's layers write each decode step's column into spare capacity: the same
    logits as transformers' concatenating cache, and no re-allocation until the spare columns run
    out (then one, with new spare columns)."""
    from transformers import DynamicCache

    from mx_agents.backends.hf_engine import new_cache, slack_columns

    model, _ = tiny
    torch.manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (3, 40))
    with torch.inference_mode():
        kv = cache_layers(model(input_ids=x, use_cache=True).past_key_values)
        plain = DynamicCache()
        for i, (k, v) in enumerate(kv):
            plain.update(k.clone(), v.clone(), i)
        slack = new_cache([(k.clone(), v.clone()) for k, v in kv], slack=True)
        storages, steps = [], slack_columns(41) + 3
        for t in range(steps):
            tok = torch.randint(0, model.config.vocab_size, (3, 1))
            pos = torch.full((3, 1), 40 + t)
            a = model(input_ids=tok, position_ids=pos, past_key_values=plain, use_cache=True).logits
            b = model(input_ids=tok, position_ids=pos, past_key_values=slack, use_cache=True).logits
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
            k0 = cache_layers(slack)[0][0]
            assert k0.shape[2] == 41 + t
            storages.append(k0.untyped_storage().data_ptr())
    # the first step re-allocates (the prefill's tensors have no spare columns) to 41 columns plus
    # slack_columns(41) spare ones, which the next steps fill in place; then one re-allocation
    assert len(set(storages)) == 2
    assert storages.count(storages[0]) == 1 + slack_columns(41)


def test_rows_admitted_together_prefill_in_waves_and_equal_one_pass_per_row(tiny):
    """Rows admitted at one step prefill in one pass (cached prefixes of different lengths, tails of
    different lengths, masked in between); rows sharing a prompt prefix with an earlier admitted row
    take a second pass that reads it from the prefix cache. Greedy and seeded-sampled replies, their
    logprobs and the prefix-cache hits equal one pass per row."""
    params = [GREEDY, SamplingParams(temperature=0.9, max_new_tokens=16, seed=5)]

    def run(batch_prefill: bool):
        b = _backend(tiny)
        engine = b._batcher._engine
        engine.batch_prefill = batch_prefill
        passes = []  # rows per prefill forward pass
        single, batch = engine._prefill, engine._prefill_batch
        engine._prefill = lambda key, row, **kw: (passes.append(1), single(key, row, **kw))[1]
        engine._prefill_batch = lambda rows, matches: (passes.append(len(rows)) if len(rows) > 1 else None,
                                                       batch(rows, matches))[1]
        b.generate([ChatRequest(CHATS[0], GREEDY)])  # a cached prefix for the system prompt
        passes.clear()
        reqs = [ChatRequest(CHATS[i % 4] if i < 4 else CHATS[i % 4] + [{"role": "assistant", "content": "ok"},
                                                                          {"role": "user", "content": "again"}],
                            params[i % 2]) for i in range(7)]
        out = b.generate(reqs)
        return out, b.batch_stats.cached_tokens, passes

    want, hits_want, one_by_one = run(False)
    got, hits_got, waves = run(True)
    assert [c.response_ids for c in got] == [c.response_ids for c in want]
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    assert hits_got == hits_want  # the second wave found what the first one computed
    assert one_by_one == [1] * 7
    assert len(waves) == 2 and sum(waves) == 7  # two waves: rows 4-6 share rows 0-2's prompts


def test_a_wave_without_cached_prefixes_left_pads_and_equals_one_request_at_a_time(tiny):
    """No prefix cache: the shorter prompts of a wave start with padding columns whose queries see no
    valid key at all; the replies and logprobs still equal the plain per-request generation's."""
    msgs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is 12 + 30? Think step by step."}],
            [{"role": "user", "content": "abc " * 20}]]
    reqs = [ChatRequest(m, SamplingParams(temperature=0.0, max_new_tokens=12)) for m in msgs]
    got = _backend(tiny, prefix_cache_mb=0.0).generate(reqs)
    plain = _plain(tiny)
    want = [plain.generate([r])[0] for r in reqs]
    assert [c.response_ids for c in got] == [c.response_ids for c in want]
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
