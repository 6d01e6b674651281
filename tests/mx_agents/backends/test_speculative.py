"""Speculative decoding in the HF step engine: n-gram drafts, the exact acceptance rule, and the
batch cache with holes (rows that accepted different numbers of draft tokens)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mx_agents.backends.base import ChatRequest, SamplingParams  # noqa: E402
from mx_agents.backends.drafts import NgramDrafter, verify_draft  # noqa: E402
from mx_agents.backends.hf import HFBackend  # noqa: E402
from mx_agents.backends.sampling import _truncated_probs  # noqa: E402
from mx_agents.testing import tiny_llama  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)
SPEC = {"max_draft": 4, "min_match": 2}


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "abc abc abc abc abc abc " * (i + 1)}]


# -- the acceptance rule ----------------------------------------------------------------------------

@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.0, top_p=0.8),
                                    SamplingParams(temperature=1.0, top_k=2)])
@pytest.mark.parametrize("draft", [0, 1, 4])
def test_verify_draft_emits_tokens_distributed_exactly_as_the_model(params, draft):
    """Two positions: whatever the draft, the first token follows p1 and, after an accepted first draft
    token, the second follows p2 (the rule never changes the distribution, only the passes it takes).
    Draft 4 is outside the top-p / top-k set: it must never be emitted at the first position."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -3.0], [0.0, 1.5, 0.2, 1.0, 0.1]])
    p1 = _truncated_probs((logits[0] / params.temperature)[None], [params])[0]
    p2 = _truncated_probs((logits[1] / params.temperature)[None], [params])[0]
    gen = torch.Generator().manual_seed(0)
    n = 6_000
    first = torch.zeros(5)
    second = torch.zeros(5)
    for _ in range(n):
        out, lps = verify_draft(logits, [draft], params, gen)
        first[out[0]] += 1
        if out[0] == draft:
            assert len(out) >= 2
            second[out[1]] += 1
        assert lps[0] == pytest.approx(float(torch.log_softmax(logits[0] / params.temperature, -1)[out[0]]))
    assert torch.allclose(first / n, p1, atol=0.025), (first / n, p1)
    if p1[draft] > 0.2:
        assert torch.allclose(second / second.sum(), p2, atol=0.04), (second / second.sum(), p2)
    if p1[4] == 0:
        assert first[4] == 0


def test_verify_draft_greedy_accepts_only_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    gen = torch.Generator().manual_seed(0)
    assert verify_draft(logits, [1, 0], GREEDY, gen)[0] == [1, 0, 2]  # both accepted, then the argmax
    assert verify_draft(logits, [1, 2], GREEDY, gen)[0] == [1, 0]  # rejected at the second: argmax there
    assert verify_draft(logits[:1], [], GREEDY, gen)[0] == [1]


# -- drafts ---------------------------------------------------------------------------------------

def test_drafter_reads_drafts_off_the_rows_own_tokens_then_the_history():
    d = NgramDrafter(max_draft=3, min_match=2)
    own = d.row_index([5, 6, 7, 8, 9, 5, 6])
    assert d.draft(own, 10) == [7, 8, 9]  # prompt lookup: "5 6" was followed by 7 8 9
    assert d.draft(own, 2) == [7, 8]  # the row's room bounds the draft
    fresh = d.row_index([1, 2])
    assert d.draft(fresh, 10) == []
    d.remember([0, 1, 2, 3, 4, 5])
    assert d.draft(fresh, 10) == [3, 4, 5]  # from a finished sequence
    fresh.extend([3])
    assert d.draft(fresh, 10) == [4, 5]
    # the longer agreement before the n-gram wins between candidates
    d.remember([9, 9, 1, 2, 7, 7, 7])
    assert d.draft(d.row_index([0, 1, 2]), 3) == [3, 4, 5]
    assert d.draft(d.row_index([9, 1, 2]), 3) == [7, 7, 7]


def test_drafter_history_stays_within_its_token_budget():
    d = NgramDrafter(max_draft=2, min_match=2, history_tokens=50)
    for i in range(100):
        d.remember([1000 + i, 1, 2, 3, 1000 + i])
    assert d._held <= 50 and len(d._seqs) == 10
    assert d._indexed <= 4 * 50 + 5  # evicted entries are dropped from the index as it is rebuilt
    assert d.draft(d.row_index([1, 2]), 5) == [3, 1099]  # the most recent sequence first
    assert NgramDrafter(max_draft=0).draft(NgramDrafter(max_draft=0).row_index([1, 2, 3, 1, 2]), 5) == []
    with pytest.raises(ValueError, match="min_match"):
        NgramDrafter(min_match=0)


# -- the engine -----------------------------------------------------------------------------------

def test_greedy_speculative_decoding_gives_the_plain_tokens_and_accepts_drafts(tiny):
    model, tok = tiny
    plain = HFBackend(model, tok, device="cpu", dtype="float32", batching="step")
    spec = HFBackend(model, tok, device="cpu", dtype="float32", batching="step", speculative=SPEC)
    reqs = [ChatRequest(_msgs(i), GREEDY) for i in range(4)]
    want = plain.generate(reqs)
    first = spec.generate(reqs)  # fills the history: the second call drafts from these replies
    before = spec.batch_stats.snapshot()
    again = spec.generate(reqs)
    for w, a, b in zip(want, first, again, strict=True):
        assert a.response_ids == w.response_ids and b.response_ids == w.response_ids
        assert b.logprobs == pytest.approx(w.logprobs, abs=1e-4)
        assert b.finish_reason == w.finish_reason
    stats = spec.batch_stats
    accepted = stats.accepted_tokens - before.accepted_tokens
    assert accepted > 20  # most of the replies came from verified drafts
    steps = sum(stats.width_hist.values()) - sum(before.width_hist.values())
    assert steps < 24 - accepted / 4  # fewer forward passes than tokens


def test_rows_with_holes_join_leave_and_feed_the_prefix_cache_exactly(tiny):
    """Rows accept different numbers of draft tokens (holes in the batch cache), others join and leave
    meanwhile, and a finished row's states (gathered from its valid columns) serve the next turn of
    its conversation: every reply equals the plain engine's, greedy."""
    model, tok = tiny
    plain = HFBackend(model, tok, device="cpu", dtype="float32", batching="step")
    spec = HFBackend(model, tok, device="cpu", dtype="float32", batching="step", speculative=SPEC)
    lengths = [24, 6, 15, 9]
    reqs = [ChatRequest(_msgs(i), SamplingParams(temperature=0.0, max_new_tokens=n)) for i, n in enumerate(lengths)]
    spec.generate(reqs[:2])  # history for some rows only: they accept, the others do not
    for backend in (plain, spec):
        backend.prefix_cache.clear()
    want, got = plain.generate(reqs), spec.generate(reqs)
    assert [c.response_ids for c in got] == [c.response_ids for c in want]
    follow = [ChatRequest(_msgs(i) + [{"role": "assistant", "content": c.text}, {"role": "user", "content": "abc again"}],
                          GREEDY) for i, c in enumerate(want)]
    hits = spec.batch_stats.cached_tokens
    want2, got2 = plain.generate(follow), spec.generate(follow)
    assert spec.batch_stats.cached_tokens > hits  # the second turns reused the first turns' states
    assert [c.response_ids for c in got2] == [c.response_ids for c in want2]
    for w, g in zip(want2, got2, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


def test_sampled_replies_do_not_depend_on_drafts_or_pass_widths(tiny, monkeypatch):
    """One uniform per emitted token: the replies of seeded sampling with drafts (filled history, a
    pass checking up to 5 columns) are those of the same engine checking one token per pass, token for
    token, and the generator is left in the same state."""
    from mx_agents.backends.drafts import PassCost

    model, tok = tiny
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=24, seed=11)
    reqs = [ChatRequest(_msgs(i), params) for i in range(4)]
    spec = HFBackend(model, tok, device="cpu", dtype="float32", batching="step", speculative=SPEC)
    spec.generate(reqs)
    before = spec.batch_stats.accepted_tokens
    drafted = spec.generate(reqs)
    assert spec.batch_stats.accepted_tokens > before  # drafts were accepted on the way
    monkeypatch.setattr(PassCost, "best_width", lambda self, lengths, accept: 1)
    single = HFBackend(model, tok, device="cpu", dtype="float32", batching="step", speculative=SPEC)
    one_by_one = single.generate(reqs)
    assert single.batch_stats.accepted_tokens == 0
    assert [c.response_ids for c in drafted] == [c.response_ids for c in one_by_one]
    for a, b in zip(drafted, one_by_one, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_sampled_speculative_logprobs_are_the_models_and_drafts_are_reported(tiny):
    model, tok = tiny
    spec = HFBackend(model, tok, device="cpu", dtype="float32", batching="step", speculative=SPEC)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=20, seed=3)
    reqs = [ChatRequest(_msgs(i), params) for i in range(3)]
    spec.generate(reqs)
    before = spec.batch_stats.snapshot()
    out = spec.generate(reqs)  # the same seeds and history: drafts are proposed
    from mx_agents.continuous import batch_metrics

    m = batch_metrics(spec.batch_stats, before)
    assert m["rollout/draft_tokens"] > 0 and 0.0 <= m["rollout/draft_accept_rate"] <= 1.0
    for c in out:
        rescored = spec.score(c.prompt_ids, c.response_ids, temperature=0.8)
        assert c.logprobs == pytest.approx(rescored, abs=1e-4)


def test_speculative_options_are_checked(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown speculative option"):
        HFBackend(model, tok, device="cpu", dtype="float32", speculative={"draft": 3})
    assert HFBackend(model, tok, device="cpu", dtype="float32", speculative={"max_draft": 0}).drafter is None
    assert HFBackend(model, tok, device="cpu", dtype="float32", batching="batch", speculative=True).drafter is None


@pytest.mark.parametrize("params", [SamplingParams(top_p=0.9), SamplingParams(top_p=0.5, top_k=20),
                                    SamplingParams(top_k=7), SamplingParams(), SamplingParams(top_p=0.99)])
@pytest.mark.parametrize("scale", [4.0, 0.05])  # peaked, and flat (the nucleus is beyond the top-64 candidates)
def test_support_is_the_sampling_distribution_of_select_tokens(params, scale):
    from mx_agents.backends.drafts import _support

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5000, generator=gen) * scale
    want = _truncated_probs(logits, [params] * 3)
    for j in range(3):
        ids, probs = _support(logits[j], params)
        dense = probs if ids is None else torch.zeros(5000).index_put_((ids,), probs)
        assert torch.allclose(dense, want[j], atol=1e-6)


def test_holes_are_closed_when_they_fill_half_the_batch_cache(tiny, monkeypatch):
    """Drafts that are always rejected leave up to max_draft holes per pass: the batch cache is
    compacted (rows right-aligned again) before it reaches twice its rows' states + 64 columns, and
    the replies stay the plain engine's."""
    from mx_agents.backends.drafts import NgramDrafter, PassCost

    model, tok = tiny
    monkeypatch.setattr(NgramDrafter, "draft", lambda self, own, limit: [7] * min(limit, self.max_draft))
    monkeypatch.setattr(PassCost, "best_width", lambda self, lengths, accept: 1 + max(lengths))
    spec = HFBackend(model, tok, device="cpu", dtype="float32", batching="step",
                     speculative={"max_draft": 8, "min_match": 2})
    engine = spec._batcher._engine
    widths = []
    decode = engine._decode_speculative

    def watched():
        out = decode()
        if engine._live:
            widths.append((engine._width, max(r.n_kv for r in engine._live)))
        return out

    monkeypatch.setattr(engine, "_decode_speculative", watched)
    compactions = []
    compact = engine._compact
    monkeypatch.setattr(engine, "_compact", lambda: (compactions.append(engine._width), compact())[1])
    plain = HFBackend(model, tok, device="cpu", dtype="float32", batching="step")
    reqs = [ChatRequest(_msgs(i), SamplingParams(temperature=0.0, max_new_tokens=40)) for i in range(3)]
    assert [c.response_ids for c in spec.generate(reqs)] == [c.response_ids for c in plain.generate(reqs)]
    assert compactions and all(w <= 2 * n + 64 for w, n in widths)
