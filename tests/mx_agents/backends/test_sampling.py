"""Token selection: temperature, top-k, top-p, per-row generators, reported logprobs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mx_agents.backends.base import SamplingParams  # noqa: E402
from mx_agents.backends.sampling import _truncated_probs, select_tokens  # noqa: E402

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_takes_argmax_and_reports_untempered_logprob():
    tokens, lps = select_tokens(LOGITS, [SamplingParams(temperature=0.0)], [_gen()])
    assert tokens.tolist() == [0]
    assert lps.item() == pytest.approx(torch.log(torch.tensor(0.5)).item(), abs=1e-6)


def test_logprob_is_tempered_and_ignores_truncation():
    p = SamplingParams(temperature=0.5, top_k=1)
    tokens, lps = select_tokens(LOGITS, [p], [_gen()])
    expected = torch.log_softmax(LOGITS[0] / 0.5, dim=-1)[0].item()
    assert tokens.tolist() == [0]
    assert lps.item() == pytest.approx(expected, abs=1e-6)  # not 0.0, the truncated value


@pytest.mark.parametrize(
    "params, support",
    [(SamplingParams(top_k=2), {0, 1}), (SamplingParams(top_p=0.7), {0, 1}),
     (SamplingParams(top_p=0.5), {0}), (SamplingParams(top_p=0.81), {0, 1, 2}),
     (SamplingParams(top_k=3, top_p=0.6), {0, 1}), (SamplingParams(), {0, 1, 2, 3})],
)
def test_truncation_support(params, support):
    probs = _truncated_probs(LOGITS, [params])[0]
    assert {i for i, p in enumerate(probs.tolist()) if p > 0} == support
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_sampling_frequencies_follow_the_distribution():
    n = 4000
    logits = LOGITS.expand(n, -1)
    params = [SamplingParams(temperature=1.0)] * n
    gen = _gen(1)
    tokens, _ = select_tokens(logits, params, [gen] * n)
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)


def test_rows_use_their_own_generators():
    logits = torch.zeros(3, 50)
    params = [SamplingParams(temperature=1.0)] * 3
    a, _ = select_tokens(logits, params, [_gen(1), _gen(2), _gen(1)])
    b, _ = select_tokens(logits[:1], params[:1], [_gen(1)])
    assert a[0] == a[2] == b[0]
