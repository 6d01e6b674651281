"""Packed micro-batches (several sequences per row, a 4-D block-diagonal causal mask, per-sequence
position ids) and shared-prefix trees train exactly what the aligned, padded layout trains.

Tolerances come from floating-point roundoff, not from tuning. The two layouts add the same terms in
different orders (and a trie adds the contributions of the sequences sharing a position before the
layer below instead of after). The classical bound on a chain of ``m`` rounded additions is
``gamma_m = m * eps`` relative to the magnitudes summed; behind a gradient entry there is a sum over
the batch's positions after a backward pass through every layer's dot products, so
``m = positions + layers * widest dot product`` and the tolerance is ``m * eps * max|g|`` of the
tensor. A layout bug (a token seeing another sequence) is off by the order of ``max|g|`` itself.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mx_train.learner.collation as collation
from mx_agents.transition import Transition
from mx_train.learner import Learner
from mx_train.learner.collation import (
    as_seq,
    collate_packed,
    mask_kind_for,
    pack_units,
    packing_support,
    plan_packed,
)
from tests.mx_train.test_learner import batch, grads, tr


@pytest.fixture(autouse=True)
def fp32_compute(monkeypatch):
    """fp32 compute whatever the host (these are exact comparisons; bf16 is tested in test_learner.py)."""
    monkeypatch.setenv("MX_CPU_BF16", "0")


def roundoff_tol(dtype: torch.dtype, n_terms: int, magnitude: float) -> float:
    """``gamma_n`` bound (see module doc): ``n * eps * magnitude``."""
    return n_terms * torch.finfo(dtype).eps * magnitude


def chain_length(model, positions: int) -> int:
    """``m`` of the module doc for ``model`` and a batch of ``positions`` tokens."""
    cfg = model.config
    return positions + cfg.num_hidden_layers * max(cfg.hidden_size, cfg.intermediate_size)


def assert_same_update(a: Learner, b: Learner, m_a: dict, m_b: dict, dtype: torch.dtype, n_terms: int) -> None:
    """Same gradients and loss up to the roundoff of summing ``n_terms`` terms at ``dtype``."""
    g_a, g_b = grads(a.model), grads(b.model)
    assert g_a.keys() == g_b.keys() and g_a
    for name, ga in g_a.items():
        tol = roundoff_tol(dtype, n_terms, float(ga.abs().max()))
        diff = float((g_b[name] - ga).abs().max())
        assert diff <= tol, (name, diff, tol)
    assert abs(m_a["loss"] - m_b["loss"]) <= roundoff_tol(dtype, n_terms, abs(m_a["loss"]) + 1.0)


def mixed_batch(seed=0, n=8):
    """Mixed lengths, two roles, per-turn temperatures, a partial loss mask: what the layouts must agree on."""
    data = batch(seed=seed, n=n)
    rng = np.random.default_rng(seed + 1)
    for i, t in enumerate(data):
        t.metadata["temperature"] = [1.0, 0.7, 1.3][i % 3]
        if i == 2 and len(t.response_ids) > 1:
            t.loss_mask = [0] + [1] * (len(t.response_ids) - 1)
        t.advantage = float(rng.normal())
    return data


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_packed_loss_and_gradients_equal_padded(tiny, dtype, agg):
    model, _ = tiny
    model = model.to(dtype)
    data = mixed_batch()
    cfg = {"loss_agg": agg, "entropy_coef": 0.01, "micro_batch_tokens": 40, "dtype": "auto", "master_weights": "none"}
    padded = Learner(copy.deepcopy(model), {**cfg, "packing": "off"})
    packed = Learner(copy.deepcopy(model), {**cfg, "packing": "on"})
    assert padded.mask_kind is None and packed.mask_kind == "bool"
    seqs = [as_seq(t) for t in data]
    mbs = packed.micro_batches(seqs)
    assert all(mb.response_index is not None and mb.positions <= 40 for mb in mbs)
    assert sum(mb.positions for mb in mbs) < sum(mb.positions for mb in padded.micro_batches(seqs))
    assert sum(len(mb.seqs) for mb in mbs) == len(seqs)
    assert max(len(mb.seqs) for mb in mbs) > max(mb.input_ids.shape[0] for mb in mbs)  # rows hold several
    m_pad = padded.compute_gradients(data)
    m_pack = packed.compute_gradients(data)
    assert_same_update(padded, packed, m_pad, m_pack, dtype, chain_length(model, sum(s.length for s in seqs)))


def test_packed_logprobs_equal_each_sequence_alone(tiny):
    """The mask keeps sequences apart: every packed sequence scores what it scores alone (no padding)."""
    model, _ = tiny
    model = model.double()
    data = batch(n=7)
    learner = Learner(model, {"micro_batch_tokens": 64, "packing": "on", "master_weights": "none"})
    packed = learner.logprobs(data)
    for t, lp in zip(data, packed, strict=True):
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(t.prompt_ids) - 1 : -1]
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(t.response_ids)[:, None])[:, 0]
        # the learner hands log-probs back as fp32: one rounding on top of the fp64 computation
        tol = roundoff_tol(torch.float64, chain_length(model, 64), 1.0 + float(want.abs().max())) + roundoff_tol(
            torch.float32, 1, float(want.abs().max()))
        torch.testing.assert_close(torch.tensor(lp, dtype=torch.float64), want, rtol=0, atol=tol)


def test_eager_attention_takes_the_additive_mask(tiny):
    model, _ = tiny  # fp32: HF's own eager mask for left padding overflows to NaN in fp64
    model.config._attn_implementation = "eager"
    data = mixed_batch(seed=3)
    cfg = {"micro_batch_tokens": 48, "master_weights": "none"}
    padded = Learner(copy.deepcopy(model), {**cfg, "packing": "off"})
    packed = Learner(copy.deepcopy(model), {**cfg, "packing": "on"})
    assert packed.mask_kind == "additive"
    m_pad, m_pack = padded.compute_gradients(data), packed.compute_gradients(data)
    assert_same_update(padded, packed, m_pad, m_pack, torch.float32,
                       chain_length(model, sum(as_seq(t).length for t in data)))


def design_group_batch(seed=0):
    """The N executions of two designs under one system prompt: a trie of several levels (system
    prompt -> design's task and script -> execution's own turn), with a duplicate turn, a turn whose
    whole prompt is a shared prefix (its first response token is predicted from a shared position,
    which other sequences read too) and an unrelated sequence."""
    rng = np.random.default_rng(seed)
    system = rng.integers(5, 300, size=10).tolist()
    out = []
    for d in range(2):
        design = system + rng.integers(5, 300, size=15).tolist()
        for e in range(3):
            own = rng.integers(5, 300, size=int(rng.integers(1, 4))).tolist()
            resp = rng.integers(5, 300, size=int(rng.integers(2, 6))).tolist()
            t = tr(design + own, resp, float(rng.normal()))
            t.design_id, t.execution_id = d, e
            out.append(t)
    twin = copy.deepcopy(out[1])
    twin.advantage = -0.3
    out.append(twin)
    out.append(tr(rng.integers(5, 300, size=9).tolist(), rng.integers(5, 300, size=4).tolist(), 0.5))
    out.append(tr(out[0].prompt_ids[:25], rng.integers(5, 300, size=3).tolist(), -0.7))
    return out


def trie_nodes(seqs) -> int:
    """Positions of the sequences' token trie, counted independently: distinct non-empty prefixes."""
    return len({tuple(s.tokens[: i + 1]) for s in seqs for i in range(s.length)})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shared_prefix_tree_equals_unshared(tiny, dtype):
    model, _ = tiny
    model = model.to(dtype)
    data = design_group_batch()
    cfg = {"micro_batch_tokens": 4096, "entropy_coef": 0.01, "master_weights": "none", "packing": "on"}
    flat = Learner(copy.deepcopy(model), {**cfg, "shared_prefix_tokens": 0})
    tree = Learner(copy.deepcopy(model), {**cfg, "shared_prefix_tokens": 8})
    seqs = [as_seq(t) for t in data]
    units = pack_units(seqs, 8, max_len=10_000)
    assert sorted(len(u.members) for u in units) == [1, 8]  # every design turn in one trie
    big = next(u for u in units if len(u.members) == 8)
    assert big.length == trie_nodes(big.members)
    pos_tree = sum(mb.positions for mb in tree.micro_batches(seqs))
    assert pos_tree == trie_nodes(seqs)  # one row, no padding: each distinct prefix computed once
    assert pos_tree < sum(s.length for s in seqs) // 2
    m_flat, m_tree = flat.compute_gradients(data), tree.compute_gradients(data)
    # The gradients of a shared position are summed before the backward of the layer below, and
    # Llama's RMSNorm computes in fp32 whatever the model's dtype (HF upcasts), so that sum is
    # rounded at fp32 even in an fp64 model: the roundoff unit is fp32's.
    eps_dtype = torch.float32 if dtype == torch.float64 else dtype
    assert_same_update(flat, tree, m_flat, m_tree, eps_dtype, chain_length(model, sum(s.length for s in seqs)))


def test_trie_mask_lets_a_token_see_its_own_path_only():
    def seq(tokens, n_prompt):
        return as_seq(tr(tokens[:n_prompt], tokens[n_prompt:], 1.0))

    a, b, d = seq([1, 2, 3, 4, 5], 3), seq([1, 2, 3, 7, 8, 9], 4), seq([1, 2, 3, 7, 8, 6], 5)
    c = seq([10, 11, 12], 1)
    rows = plan_packed([a, b, c, d], budget=64, shared_prefix=3)
    assert len(rows) == 1 and len(rows[0]) == 1
    mb = collate_packed(rows[0], pad_id=0, device=torch.device("cpu"), mask_kind="bool")
    ids = mb.input_ids[0].tolist()
    # the trie [1 2 3] -> ([4 5], [7 8] -> ([6], [9])) in depth-first order, then c
    assert ids[:9] == [1, 2, 3, 4, 5, 7, 8, 6, 9] and ids[9:12] == [10, 11, 12]
    m = mb.attention_mask[0, 0]
    col = {tok: ids.index(tok) for tok in (4, 5, 6, 7, 8, 9, 10, 11, 12)}
    assert m[col[9], :3].all() and m[col[9], col[7]] and m[col[9], col[8]] and m[col[9], col[9]]
    assert not m[col[9], col[6]] and not m[col[9], col[4]] and not m[col[9], col[5]]
    assert m[col[6], col[8]] and not m[col[6], col[9]] and not m[col[7], col[4]]
    assert m[col[5], col[4]] and not m[col[5], col[7]]
    assert not m[col[10], :3].any() and m[col[11], col[10]]  # another unit: no cross-attention
    pos = mb.position_ids[0]
    assert [int(pos[col[t]]) for t in (4, 7, 8, 6, 9, 10)] == [3, 3, 4, 5, 5, 0]
    # a's first response token (4) is predicted at shared position 2, d's (6) at shared 8's column
    order = [s.response for s in mb.seqs]
    assert mb.response_index[order.index([4, 5]), 0] == 2
    assert mb.response_index[order.index([6]), 0] == col[8]
    for i, s in enumerate(mb.seqs):  # each predictor is the previous token of that sequence
        for j in range(len(s.response)):
            prev = s.tokens[len(s.prompt) - 1 + j]
            assert ids[int(mb.response_index[i, j])] == prev


def test_plan_packed_covers_every_sequence_within_the_budget():
    rng = np.random.default_rng(0)
    seqs = [as_seq(tr(rng.integers(1, 99, size=int(rng.integers(1, 40))).tolist(),
                      rng.integers(1, 99, size=int(rng.integers(1, 20))).tolist(), 1.0)) for _ in range(40)]
    longest = max(s.length for s in seqs)
    for budget in (1, 50, 200, 1000):
        plan = plan_packed(seqs, budget)
        ids = sorted(id(m) for mb in plan for row in mb for u in row for m in u.members)
        assert ids == sorted(id(s) for s in seqs)
        for mb in plan:
            width = max(sum(u.length for u in row) for row in mb)
            assert len(mb) * width <= max(budget, longest) or len(mb) == 1
            assert width <= max(longest, min(budget, collation.ROW_TOKENS))


def test_packing_support_and_fallback(tiny):
    model, _ = tiny

    class Cfg:
        def __init__(self, impl, **kw):
            self._attn_implementation = impl
            self.__dict__.update(kw)

    class Decoder:
        def forward(self, input_ids=None, attention_mask=None, position_ids=None): ...

    class BloomLikeDecoder:  # positions from the mask's cumsum (ALiBi), no position ids
        def forward(self, input_ids=None, attention_mask=None): ...

    class LM:
        def __init__(self, cfg, decoder=Decoder):
            self.config = cfg
            self.decoder = decoder()

        def get_decoder(self):
            return self.decoder

    assert packing_support(model) is None and mask_kind_for(model) == "bool"
    assert "flash_attention_2" in packing_support(LM(Cfg("flash_attention_2")))
    assert "sliding" in packing_support(LM(Cfg("sdpa", sliding_window=4096)))
    assert packing_support(LM(Cfg("sdpa", sliding_window=4096, use_sliding_window=False))) is None
    assert "position ids" in packing_support(LM(Cfg("eager"), BloomLikeDecoder))
    assert "ALiBi" in packing_support(LM(Cfg("sdpa", alibi=True)))
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="packing is 'on'"):
        Learner(copy.deepcopy(model), {"packing": "on"})
    assert Learner(copy.deepcopy(model), {}).mask_kind is None  # auto: the aligned layout
    from mx_train.learner import LearnerConfig

    assert LearnerConfig.from_dict({"packing": False}).packing == "off"
    with pytest.raises(ValueError, match="packing must be"):
        LearnerConfig.from_dict({"packing": "yes"}).validate()


def test_packed_update_on_smollm2_equals_padded():
    """The embedded SmolLM2-135M (Llama, sdpa, 30 layers) honours the packed mask: same loss and
    gradients. In fp64: at fp32 the bound of the module doc (30 layers of 1536-wide products) is
    ~5e-3 of the largest entry, too loose to catch a small leak between sequences; at fp64 ~1e-11."""
    from mx_agents.backends.embedded import EmbeddedModelUnavailable, resolve_model

    try:
        spec = resolve_model("default")
    except EmbeddedModelUnavailable as exc:
        pytest.skip(f"embedded SmolLM2 not installed: {exc}")
    from mx_agents.backends.hf import load_hf_model

    model = load_hf_model(spec, "cpu", torch.float64)
    rng = np.random.default_rng(0)
    data = [Transition(episode_id="e", task_uid="t", task_id="t", design_id=0, execution_id=i, role="executor",
                       agent="a", turn=0, prompt_ids=rng.integers(100, 40000, size=int(rng.integers(3, 12))).tolist(),
                       response_ids=rng.integers(100, 40000, size=int(rng.integers(2, 6))).tolist(), logprobs=None,
                       advantage=float(rng.normal())) for i in range(4)]
    cfg = {"micro_batch_tokens": 64, "master_weights": "none"}
    padded = Learner(model, {**cfg, "packing": "off"})
    m_pad = padded.compute_gradients(data)
    g_pad = grads(model)
    packed = Learner(model, {**cfg, "packing": "on"})
    m_pack = packed.compute_gradients(data)
    g_pack = grads(model)
    assert packed.mask_kind == "bool" and next(model.parameters()).dtype == torch.float64
    n_terms = chain_length(model, sum(len(t.prompt_ids) + len(t.response_ids) for t in data))
    for name, ga in g_pad.items():
        tol = roundoff_tol(torch.float64, n_terms, float(ga.abs().max()))
        assert float((g_pack[name] - ga).abs().max()) <= tol, name
    assert abs(m_pack["loss"] - m_pad["loss"]) <= roundoff_tol(torch.float64, n_terms, abs(m_pad["loss"]) + 1.0)


def test_a_mask_that_leaks_across_sequences_is_caught(tiny, monkeypatch):
    """Negative control of the tolerance: a plain causal mask over the whole row (sequences see
    their row-mates) must fail the equality the real mask passes."""
    model, _ = tiny
    model = model.double()
    data = mixed_batch()
    cfg = {"micro_batch_tokens": 40, "master_weights": "none"}
    padded = Learner(copy.deepcopy(model), {**cfg, "packing": "off"})
    m_pad = padded.compute_gradients(data)
    real = collation.collate_packed

    def leaky(rows, pad_id, device, mask_kind):
        mb = real(rows, pad_id, device, mask_kind)
        w = mb.input_ids.shape[1]
        mb.attention_mask = torch.ones((w, w), dtype=torch.bool).tril().expand_as(mb.attention_mask).clone()
        return mb

    monkeypatch.setattr(collation, "collate_packed", leaky)
    packed = Learner(copy.deepcopy(model), {**cfg, "packing": "on"})
    m_pack = packed.compute_gradients(data)
    with pytest.raises(AssertionError):
        assert_same_update(padded, packed, m_pad, m_pack, torch.float64,
                           chain_length(model, sum(as_seq(t).length for t in data)))
