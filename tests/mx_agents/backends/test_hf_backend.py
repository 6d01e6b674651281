"""HFBackend on the tiny random Llama: batching, seeds, stops, finish reasons, logprobs, weights."""

from __future__ import annotations

import copy
import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mx_agents.backends.base import Backend, ChatRequest, SamplingParams  # noqa: E402
from mx_agents.backends.hf import HFBackend  # noqa: E402
from mx_agents.testing import tiny_llama  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)

# Prompts of different lengths, so a batch really is left-padded.
PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 12 + 30? Think step by step."}],
    [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "def solve(x): return x"}],
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 3}],
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


@pytest.fixture
def backend(tiny):
    model, tok = tiny
    return HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", max_batch_size=16, seed=0)


def _req(messages, params=GREEDY, **meta):
    return ChatRequest(messages=messages, params=params, metadata=meta)


def test_is_a_backend(backend):
    assert isinstance(backend, Backend)


def test_prompt_ids_are_the_chat_template(backend, tiny):
    _, tok = tiny
    ids = backend.encode_chat(PROMPTS[1])
    text = tok.apply_chat_template(PROMPTS[1], add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids) == text
    assert text.endswith("<|im_start|>assistant\n")
    (comp,) = backend.generate([_req(PROMPTS[1])])
    assert comp.prompt_ids == ids


def test_greedy_batched_equals_one_at_a_time(backend):
    batched = backend.generate([_req(m) for m in PROMPTS])
    single = [backend.generate([_req(m)])[0] for m in PROMPTS]
    assert len({len(c.prompt_ids) for c in batched}) == len(PROMPTS)  # really padded
    for b, s in zip(batched, single, strict=True):
        assert b.prompt_ids == s.prompt_ids
        assert b.response_ids == s.response_ids
        assert b.text == s.text
        assert b.finish_reason == s.finish_reason
        assert max(abs(x - y) for x, y in zip(b.logprobs, s.logprobs, strict=True)) < 1e-4


def test_greedy_is_argmax_of_the_model(backend):
    (comp,) = backend.generate([_req(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=5))])
    ids = list(comp.prompt_ids)
    with torch.no_grad():
        for tok in comp.response_ids:
            logits = backend.model(torch.tensor([ids])).logits[0, -1]
            assert int(logits.argmax()) == tok
            ids.append(tok)


def test_batch_size_one_chunks_give_same_result(tiny):
    model, tok = tiny
    small = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", max_batch_size=3)
    big = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", max_batch_size=16)
    a = small.generate([_req(m) for m in PROMPTS])
    b = big.generate([_req(m) for m in PROMPTS])
    assert [c.response_ids for c in a] == [c.response_ids for c in b]


def test_seeded_sampling_is_reproducible_and_batch_independent(backend):
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=40, max_new_tokens=12, seed=123)
    first = backend.generate([_req(PROMPTS[1], params)])[0]
    again = backend.generate([_req(PROMPTS[1], params)])[0]
    in_batch = backend.generate([_req(PROMPTS[0]), _req(PROMPTS[1], params), _req(PROMPTS[3])])[1]
    assert first.response_ids == again.response_ids == in_batch.response_ids
    other = backend.generate([_req(PROMPTS[1], SamplingParams(temperature=1.0, max_new_tokens=12, seed=7))])[0]
    assert other.response_ids != first.response_ids


def test_unseeded_requests_follow_the_backend_seed(tiny):
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    runs = []
    for _ in range(2):
        b = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=5)
        runs.append([c.response_ids for c in b.generate([_req(PROMPTS[0], params), _req(PROMPTS[0], params)])])
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1]  # two requests draw different generator seeds


def test_top_k_one_is_greedy(backend):
    sampled = backend.generate([_req(PROMPTS[2], SamplingParams(temperature=1.5, top_k=1, max_new_tokens=10,
                                                                 seed=1))])[0]
    greedy = backend.generate([_req(PROMPTS[2], SamplingParams(temperature=0.0, max_new_tokens=10))])[0]
    assert sampled.response_ids == greedy.response_ids


def test_recorded_logprobs_match_rescoring(backend):
    reqs = [_req(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=16)),
            _req(PROMPTS[1], SamplingParams(temperature=0.7, max_new_tokens=16, seed=1)),
            _req(PROMPTS[2], SamplingParams(temperature=1.0, top_p=0.8, max_new_tokens=16, seed=2)),
            _req(PROMPTS[3], SamplingParams(temperature=1.3, top_k=20, max_new_tokens=16, seed=3))]
    comps = backend.generate(reqs)
    temps = [r.params.temperature for r in reqs]
    rescored = backend.score_batch([(c.prompt_ids, c.response_ids) for c in comps], temps)
    worst = 0.0
    for c, r, t in zip(comps, rescored, temps, strict=True):
        assert len(r) == len(c.response_ids) == len(c.logprobs)
        worst = max(worst, max(abs(x - y) for x, y in zip(c.logprobs, r, strict=True)))
        assert c.metadata["logprobs_temperature"] == (1.0 if t == 0 else t)
        assert all(lp <= 0.0 for lp in c.logprobs)
    assert worst < 1e-4
    single = backend.score(comps[1].prompt_ids, comps[1].response_ids, temperature=0.7)
    assert single == pytest.approx(rescored[1], abs=1e-5)
    # A different temperature gives different numbers: the logprobs are the tempered ones.
    untempered = backend.score(comps[1].prompt_ids, comps[1].response_ids, temperature=1.0)
    assert max(abs(x - y) for x, y in zip(untempered, comps[1].logprobs, strict=True)) > 1e-3


def test_max_new_tokens_and_length_finish(backend):
    comps = backend.generate([_req(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=n))
                              for n in (0, 1, 7)])
    assert [len(c.response_ids) for c in comps] == [0, 1, 7]
    assert all(c.finish_reason == "length" for c in comps)
    assert comps[0].text == "" and comps[0].logprobs == []


def test_eos_finishes_with_stop_and_is_kept_in_ids(backend, tiny):
    _, tok = tiny
    eos = tok.eos_token_id
    comp = _force_eos_generation(backend, eos)
    assert comp.finish_reason == "stop"
    assert comp.response_ids == [eos]
    assert comp.text == ""
    assert len(comp.logprobs) == 1


def _force_eos_generation(backend, eos):
    """Wrap the model's forward so that EOS has the highest logit (a test double of the model)."""
    model = backend.model
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits[..., eos] += 100.0
        return out

    model.forward = forward
    try:
        return backend.generate([_req(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=8))])[0]
    finally:
        model.forward = original


def test_stop_strings_cut_text_and_keep_completing_token(backend, tiny):
    _, tok = tiny
    free = backend.generate([_req(PROMPTS[1], SamplingParams(temperature=0.0, max_new_tokens=16))])[0]
    assert len(free.text) > 4
    stop = free.text[3:5]  # a string the greedy continuation is known to produce
    pos = free.text.find(stop)
    comp = backend.generate([_req(PROMPTS[1], SamplingParams(temperature=0.0, max_new_tokens=16,
                                                              stop=("@@never@@", stop)))])[0]
    assert comp.finish_reason == "stop"
    assert comp.metadata["stop"] == stop
    assert comp.text == free.text[:pos]
    assert comp.response_ids == free.response_ids[: len(comp.response_ids)]
    assert stop in tok.decode(comp.response_ids)
    assert stop not in tok.decode(comp.response_ids[:-1])  # the last kept token completed it
    assert len(comp.logprobs) == len(comp.response_ids)


def test_request_metadata_passes_through(backend):
    (comp,) = backend.generate([_req(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=2), turn=3)])
    assert comp.metadata["turn"] == 3
    assert comp.metadata["backend"] == "hf"


@pytest.mark.parametrize(
    "params, match",
    [(SamplingParams(temperature=-1.0), "temperature"), (SamplingParams(top_p=0.0), "top_p"),
     (SamplingParams(top_k=-2), "top_k"), (SamplingParams(max_new_tokens=-1), "max_new_tokens"),
     (SamplingParams(stop=("",)), "stop"), (SamplingParams(max_prompt_tokens=0), "max_prompt_tokens")],
)
def test_bad_params_raise_clear_errors(backend, params, match):
    with pytest.raises(ValueError, match=match):
        backend.generate([_req(PROMPTS[0], params)])


def test_bad_messages_and_oversized_prompts_raise(backend):
    with pytest.raises(ValueError, match="at least one message"):
        backend.generate([ChatRequest(messages=[])])
    with pytest.raises(ValueError, match="role"):
        backend.generate([ChatRequest(messages=[{"text": "hi"}])])
    with pytest.raises(ValueError, match="context"):
        backend.generate_from_ids([[5] * 5000], [GREEDY])


def test_prompt_over_max_prompt_tokens_gets_an_empty_length_reply(backend):
    short, long_ = PROMPTS[0], PROMPTS[3]
    n_short, n_long = (len(backend.encode_chat(m)) for m in (short, long_))
    limit = dataclasses.replace(GREEDY, max_prompt_tokens=(n_short + n_long) // 2)
    out = backend.generate([_req(long_, limit, i=0), _req(short, limit, i=1), _req(long_, GREEDY, i=2)])
    assert out[0].text == "" and out[0].response_ids == [] and out[0].finish_reason == "length"
    assert out[0].metadata["prompt_tokens"] == n_long and out[0].prompt_ids == backend.encode_chat(long_)
    assert [c.metadata["i"] for c in out] == [0, 1, 2]  # order and metadata kept around the skipped row
    plain = backend.generate([_req(short), _req(long_)])
    assert out[1].response_ids == plain[0].response_ids and out[2].response_ids == plain[1].response_ids
    # Over the context too: the limit answers first (a length reply, not an error).
    assert backend.generate_from_ids([[5] * 5000], [limit])[0].finish_reason == "length"


def test_load_weights_replaces_the_served_model(tiny):
    model, tok = tiny
    backend = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32")
    before = backend.generate([_req(PROMPTS[1])])[0]
    other, _ = tiny_llama(seed=1)
    backend.load_weights(other.state_dict())
    assert backend.weights_version == 1
    after = backend.generate([_req(PROMPTS[1])])[0]
    reference = HFBackend(other, tok, device="cpu", dtype="float32").generate([_req(PROMPTS[1])])[0]
    assert after.response_ids == reference.response_ids != before.response_ids
    assert after.metadata["weights_version"] == 1


def test_load_weights_rejects_bad_state_dicts(backend):
    sd = backend.model.state_dict()
    with pytest.raises(ValueError, match="unknown"):
        backend.load_weights({**sd, "nope.weight": torch.zeros(1)})
    partial = dict(sd)
    partial.pop("model.norm.weight")
    with pytest.raises(ValueError, match="missing"):
        backend.load_weights(partial)
    backend.load_weights(partial, strict=False)  # partial updates are allowed when asked for
    with pytest.raises(ValueError, match="shape"):
        backend.load_weights({"model.norm.weight": torch.zeros(3)}, strict=False)


def test_pretrained_model_without_tokenizer_is_a_clear_error(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="tokenizer"):
        HFBackend(copy.deepcopy(model), None, device="cpu")


# A long shared system prompt (the designer's API reference in real runs) and different user turns,
# of different lengths so the tails are padded after the shared part.
SHARED_SYSTEM = "You design a multi-agent system. Reply with one python block that defines forward. " * 4
SHARED = [[{"role": "system", "content": SHARED_SYSTEM}, {"role": "user", "content": u}]
          for u in ("Hi", "What is 12 + 30? Think step by step.", "def solve(x): return x", "7 * 8")]


def test_shared_prefix_is_prefilled_once_and_changes_nothing(tiny):
    """The whole-batch path (batching="batch"); the step engine's prefix cache: test_hf_step_engine."""
    model, tok = tiny
    shared = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0, shared_prefix_min=16,
                       batching="batch")
    plain = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0, shared_prefix_min=0,
                      batching="batch")
    calls: list[tuple[int, int]] = []
    forward = shared.model.forward

    def spy(*args, **kwargs):
        ids = kwargs["input_ids"]
        calls.append(tuple(ids.shape))
        return forward(*args, **kwargs)

    shared.model.forward = spy
    reqs = [_req(m, SamplingParams(temperature=t, max_new_tokens=12, seed=i))
            for i, (m, t) in enumerate(zip(SHARED, (0.0, 0.7, 1.0, 1.3), strict=True))]
    a, b = shared.generate(reqs), plain.generate(reqs)
    prompts = [c.prompt_ids for c in a]
    common = next(i for i in range(min(map(len, prompts))) if len({p[i] for p in prompts}) > 1)
    assert common >= 16 and len({len(p) for p in prompts}) > 1
    # One forward over the shared prefix (batch 1), one over the tails only, then decode steps.
    assert calls[0] == (1, common) and calls[1] == (4, max(len(p) for p in prompts) - common)
    for x, y in zip(a, b, strict=True):
        assert x.prompt_ids == y.prompt_ids and x.response_ids == y.response_ids and x.text == y.text
        assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True)) < 1e-4
    rescored = plain.score_batch([(c.prompt_ids, c.response_ids) for c in a], [r.params.temperature for r in reqs])
    assert max(abs(p - q) for c, r in zip(a, rescored, strict=True) for p, q in zip(c.logprobs, r, strict=True)) < 1e-4


def test_short_or_absent_common_prefix_takes_the_plain_path(tiny):
    model, tok = tiny
    b = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0, shared_prefix_min=10_000,
                  batching="batch")
    rows = [_req(m) for m in SHARED]
    calls = []
    forward = b.model.forward
    b.model.forward = lambda *a, **k: (calls.append(tuple(k["input_ids"].shape)), forward(*a, **k))[1]
    b.generate(rows)
    assert calls[0][0] == 4  # the whole prompts, batched: no separate prefix pass
    one = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0, shared_prefix_min=16,
                    batching="batch")
    assert one.generate([rows[0]])[0].response_ids == b.generate([rows[0]])[0].response_ids


def test_repetition_penalty_changes_choices_not_logprobs(tiny):
    model, tok = tiny
    b = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32", seed=0)
    prompt = [{"role": "user", "content": "a a a a a a a a"}]
    plain = b.generate([_req(prompt, SamplingParams(temperature=0.0, max_new_tokens=24))])[0]
    strong = b.generate([_req(prompt, SamplingParams(temperature=0.0, max_new_tokens=24, repetition_penalty=50.0))])[0]
    # A greedy tiny model repeats itself; a huge penalty forbids every token seen, so no token repeats.
    assert len(set(plain.response_ids)) < len(plain.response_ids)
    assert len(set(strong.response_ids)) == len(strong.response_ids)
    assert not set(strong.response_ids) & set(strong.prompt_ids)
    # Logprobs stay those of the unpenalised model (what the learner re-scores).
    rescored = b.score(strong.prompt_ids, strong.response_ids, temperature=1.0)
    assert max(abs(x - y) for x, y in zip(strong.logprobs, rescored, strict=True)) < 1e-4
    with pytest.raises(ValueError, match="repetition_penalty"):
        b.generate([_req(prompt, SamplingParams(repetition_penalty=0.0))])


def test_select_tokens_penalty_rule_matches_hf():
    from mx_agents.backends.sampling import select_tokens

    logits = torch.tensor([[2.0, -1.0, 1.5, 0.5]])
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    gen = [torch.Generator().manual_seed(0)]
    # Token 0 seen: 2.0 / 2 = 1.0 < 1.5, so token 2 wins; token 1 seen: -1 * 2, still last.
    tok, lp = select_tokens(logits, [p], gen, histories=[[0, 1]])
    assert int(tok[0]) == 2
    assert float(lp[0]) == pytest.approx(float(torch.log_softmax(logits, -1)[0, 2]))
    with pytest.raises(ValueError, match="histories"):
        select_tokens(logits, [p], gen)
