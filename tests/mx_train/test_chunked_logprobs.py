"""Chunked LM-head log-probs/entropy equal the full-logits computation, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from mx_train.learner import Learner
from mx_train.learner.logprobs import chunked_token_logprobs, full_token_logprobs
from tests.mx_train.test_learner import batch, grads


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_equals_full_on_random_head(chunk):
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 16, generator=gen))
    hidden = torch.randn(3, 5, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (3, 5), generator=gen)
    lp, ent = chunked_token_logprobs(hidden, head, targets, temperature=0.7, chunk=chunk, with_entropy=True,
                                     entropy_grad=True)
    (lp.sum() + 0.1 * ent.sum()).backward()
    g_chunk, gw_chunk = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    ref_lp, ref_ent = full_token_logprobs(head(hidden).float() / 0.7, targets, with_entropy=True)
    (ref_lp.sum() + 0.1 * ref_ent.sum()).backward()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_chunk, hidden.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw_chunk, head.weight.grad, rtol=1e-5, atol=1e-5)


def test_learner_chunked_gradients_equal_full_logits(tiny):
    model, _ = tiny
    data = batch(n=6)
    for t in data:  # scored at the temperature each turn records (not a learner setting)
        t.metadata["temperature"] = 0.8
    cfg = {"entropy_coef": 0.01, "micro_batch_tokens": 64}
    full = Learner(copy.deepcopy(model), {**cfg, "logits_chunk_tokens": 0})
    chunked = Learner(copy.deepcopy(model), {**cfg, "logits_chunk_tokens": 3})
    m_full, m_chunk = full.compute_gradients(data), chunked.compute_gradients(data)
    assert m_chunk["loss"] == pytest.approx(m_full["loss"], rel=1e-5, abs=1e-7)
    assert m_chunk["entropy"] == pytest.approx(m_full["entropy"], rel=1e-5)
    g_full, g_chunk = grads(full.model), grads(chunked.model)
    assert g_full.keys() == g_chunk.keys()
    for n in g_full:
        torch.testing.assert_close(g_chunk[n], g_full[n], rtol=1e-4, atol=1e-6)
    for a, b in zip(full.logprobs(data), chunked.logprobs(data), strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_entropy_has_no_graph_when_its_coefficient_is_zero():
    head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    targets = torch.zeros(2, 3, dtype=torch.long)
    _, ent = chunked_token_logprobs(hidden, head, targets, chunk=2, with_entropy=True, entropy_grad=False)
    assert not ent.requires_grad
    lp, none = chunked_token_logprobs(hidden, head, targets, chunk=2, with_entropy=False)
    assert none is None and lp.requires_grad
