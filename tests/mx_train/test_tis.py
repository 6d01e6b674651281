"""Off-policy correction of a sampler that is not the learner: truncated (TIS) and masked (MIS)
importance sampling over ``pi_learner_old / pi_sampler``, its default, and its metrics.

The sampler is deliberately mismatched: its recorded log-probs are the learner's own minus a known
offset ``d`` per token, so the importance ratio of every token is ``exp(d)`` by construction.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mx_envs.errors import UnknownName
from mx_train.learner import Learner, LearnerConfig
from mx_train.learner.losses import OFF_POLICY_CORRECTIONS, masked_is, truncated_is
from tests.mx_train.test_learner import grads, tr

CAP = 2.0
# per-sequence offsets log(pi_learner / pi_sampler): below, at 1 and above the cap (log 2 = 0.69)
OFFSETS = [-0.5, 0.2, 0.0, 1.2, -1.0, 2.0, 0.4, 0.9]


@pytest.fixture(autouse=True)
def fp32_compute(monkeypatch):
    """fp32 compute whatever the host (these are exact comparisons; bf16 is tested in test_learner.py)."""
    monkeypatch.setenv("MX_CPU_BF16", "0")


def one_token_batch(seed=0, roles=("executor",)):
    """Single-token responses: a token's weight is its sequence's, so a weighted loss equals the
    plain loss with each advantage scaled by that weight (an independent reference)."""
    rng = np.random.default_rng(seed)
    return [tr(rng.integers(5, 300, size=int(rng.integers(2, 9))).tolist(), [int(rng.integers(5, 300))],
               float(rng.normal()), role=roles[i % len(roles)]) for i in range(len(OFFSETS))]


def with_sampler_logprobs(learner, data, offsets):
    """``data`` with sampler log-probs = the learner's own minus ``offsets`` (one per sequence)."""
    true = learner.logprobs(data)
    out = copy.deepcopy(data)
    for t, lp, d in zip(out, true, offsets, strict=True):
        t.logprobs = [x - d for x in lp]
    return out


def test_correction_weights_follow_the_definitions():
    log_rho = torch.log(torch.tensor([0.25, 1.0, 1.9, 2.0, 2.1, 7.0]))
    torch.testing.assert_close(truncated_is(log_rho, CAP), torch.tensor([0.25, 1.0, 1.9, 2.0, 2.0, 2.0]))
    torch.testing.assert_close(masked_is(log_rho, CAP), torch.tensor([0.25, 1.0, 1.9, 2.0, 0.0, 0.0]))
    assert OFF_POLICY_CORRECTIONS.names() == ["mis", "none", "tis"]


def test_unknown_correction_lists_the_known_ones():
    with pytest.raises(UnknownName) as err:
        LearnerConfig.from_dict({"off_policy_correction": "tsi"}).validate()
    msg = str(err.value)
    assert "'tis'" in msg and all(n in msg for n in ("auto", "mis", "none", "tis"))
    with pytest.raises(ValueError, match="off_policy_cap"):
        LearnerConfig.from_dict({"off_policy_cap": 0.0}).validate()


@pytest.mark.parametrize("name", ["tis", "mis"])
def test_corrected_gradient_is_the_advantage_reweighted_by_the_capped_ratio(tiny, name):
    model, _ = tiny
    data = one_token_batch()
    cfg = {"micro_batch_tokens": 64}
    probe = Learner(copy.deepcopy(model), cfg)
    mismatched = with_sampler_logprobs(probe, data, OFFSETS)

    corrected = Learner(copy.deepcopy(model), {**cfg, "off_policy_correction": name})
    m = corrected.compute_gradients(mismatched)  # on-policy: old = the learner's own, ratio 1
    weight = {"tis": lambda r: min(r, CAP), "mis": lambda r: r if r <= CAP else 0.0}[name]
    reference = copy.deepcopy(data)
    for t, d in zip(reference, OFFSETS, strict=True):
        t.advantage *= weight(math.exp(d))
    plain = Learner(copy.deepcopy(model), {**cfg, "off_policy_correction": "none"})
    plain.compute_gradients(reference)
    g_corr, g_ref = grads(corrected.model), grads(plain.model)
    for n in g_ref:
        # float summation order differs between the two losses: 1.5e-7 seen on an avx512 CPU
        torch.testing.assert_close(g_corr[n], g_ref[n], rtol=1e-4, atol=1e-6)
    # the correction does change the gradient: the uncorrected one on the same data differs
    uncorrected = Learner(copy.deepcopy(model), {**cfg, "off_policy_correction": "none"})
    uncorrected.compute_gradients(mismatched)
    assert any(not torch.allclose(grads(uncorrected.model)[n], g_ref[n], rtol=1e-3) for n in g_ref)
    # metrics: the mismatch is the offsets, the capped share those above log 2
    above = [d > math.log(CAP) for d in OFFSETS]
    assert m["off_policy/corrected"] == 1.0
    assert m["off_policy/mismatch_abs"] == pytest.approx(np.mean(np.abs(OFFSETS)), abs=1e-5)
    assert m["off_policy/mismatch_max"] == pytest.approx(max(abs(d) for d in OFFSETS), abs=1e-5)
    assert m["off_policy/is_clip_frac"] == pytest.approx(np.mean(above))
    assert m["off_policy/is_weight"] == pytest.approx(np.mean([weight(math.exp(d)) for d in OFFSETS]), rel=1e-5)
    k3 = [math.exp(d) - 1 - d for d in OFFSETS]
    assert m["off_policy/mismatch_kl"] == pytest.approx(np.mean(k3), rel=1e-4)


def test_auto_corrects_only_when_the_sampler_is_not_the_learner(tiny, monkeypatch):
    model, _ = tiny
    same = Learner(copy.deepcopy(model), {})
    assert not same.sampler_differs() and same.off_policy_correction() == "none"
    same.on_weights_updated = lambda state: None  # a separate engine gets pushed weights (vLLM)
    assert same.off_policy_correction() == "tis"
    assert Learner(copy.deepcopy(model), {"dtype": "bfloat16"}).off_policy_correction() == "tis"  # other dtype
    monkeypatch.setenv("MX_CPU_BF16", "1")
    autocast = Learner(copy.deepcopy(model), {})
    assert autocast.autocast and autocast.off_policy_correction() == "tis"  # bf16 compute, fp32 sampler
    assert Learner(copy.deepcopy(model), {"off_policy_correction": "mis"}).off_policy_correction() == "mis"


def test_update_on_a_mismatched_engine_reports_per_role_metrics(tiny):
    model, _ = tiny
    data = one_token_batch(roles=("designer", "executor"))
    learner = Learner(copy.deepcopy(model), {"lr": 1e-3})
    offsets = [1.5 if t.role == "designer" else 0.0 for t in data]  # the designer's sampler is off
    mismatched = with_sampler_logprobs(learner, data, offsets)
    learner.on_weights_updated = lambda state: None
    m = learner.update(mismatched)
    assert m["off_policy/corrected"] == 1.0 and learner.version == 1
    assert m["off_policy/mismatch_abs/designer"] == pytest.approx(1.5, abs=1e-5)
    assert m["off_policy/mismatch_abs/executor"] == pytest.approx(0.0, abs=1e-5)
    assert m["off_policy/is_clip_frac/designer"] == 1.0 and m["off_policy/is_clip_frac/executor"] == 0.0
    assert m["off_policy/is_weight/designer"] == pytest.approx(CAP)
    for k in ("clip_frac", "approx_kl"):
        assert f"{k}/designer" in m and f"{k}/executor" in m


def test_per_role_clip_fractions(tiny):
    """old_logprobs = the sampler's: the designer's ratio is e (clipped where A > 0), the executor's 1."""
    model, _ = tiny
    data = one_token_batch(roles=("designer", "executor"))
    for t in data:
        t.advantage = abs(t.advantage) + 0.1
    learner = Learner(copy.deepcopy(model), {"old_logprobs": "sampling"})
    offsets = [1.0 if t.role == "designer" else 0.0 for t in data]
    m = learner.compute_gradients(with_sampler_logprobs(learner, data, offsets))
    assert m["clip_frac/designer"] == 1.0 and m["clip_frac/executor"] == 0.0
    assert m["clip_frac"] == pytest.approx(0.5)
    assert "off_policy/mismatch_abs" not in m and m["off_policy/corrected"] == 0.0  # old IS the sampler


def test_explicit_correction_without_sampler_logprobs_is_an_error(tiny):
    model, _ = tiny
    data = one_token_batch()
    learner = Learner(copy.deepcopy(model), {"off_policy_correction": "tis"})
    with pytest.raises(ValueError, match="sampler's log-probs"):
        learner.compute_gradients(data)
    auto = Learner(copy.deepcopy(model), {})
    auto.on_weights_updated = lambda state: None
    assert auto.compute_gradients(data)["off_policy/corrected"] == 0.0  # auto: nothing to correct with
