"""The learner on the tiny random Llama: updates, gradient equivalences, freezing, weight sync."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mx_agents.transition import Transition
from mx_train.learner import Learner, LearnerConfig, PolicyGroup, pack_by_tokens


def tr(prompt, response, adv, role="executor", logprobs=None, loss_mask=None, reward=0.0):
    return Transition(
        episode_id="e", task_uid="t", task_id="t", design_id=0, execution_id=0, role=role, agent=role, turn=0,
        prompt_ids=list(prompt), response_ids=list(response), logprobs=logprobs, loss_mask=loss_mask,
        advantage=adv, reward=reward,
    )


def batch(seed=0, n=6, roles=("designer", "executor")):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = rng.integers(5, 300, size=int(rng.integers(2, 9))).tolist()
        r = rng.integers(5, 300, size=int(rng.integers(1, 7))).tolist()
        out.append(tr(p, r, float(rng.normal()), role=roles[i % len(roles)]))
    return out


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_update_changes_parameters_and_reports_finite_metrics(tiny):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Learner(model, {"lr": 1e-3}, tokenizer=tok)
    m = learner.update(batch())
    for k in ("loss", "pg_loss", "clip_frac", "approx_kl", "entropy", "grad_norm", "tokens", "tokens_per_s", "lr"):
        assert np.isfinite(m[k]), k
    assert m["tokens"] > 0 and m["grad_norm"] > 0 and learner.version == 1
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_pack_by_tokens_respects_budget():
    costs = [(5, 3), (2, 2), (10, 1), (1, 1), (4, 4)]
    groups = pack_by_tokens(costs, budget=20)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for g in groups:
        cost = len(g) * (max(costs[i][0] for i in g) + max(costs[i][1] for i in g))
        assert cost <= 20 or len(g) == 1
    assert pack_by_tokens([(30, 5)], budget=8) == [[0]]  # oversize sequence: alone


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_token_budget_micro_batching_matches_one_big_batch(tiny, agg):
    model, tok = tiny
    data = batch(n=8)
    big = Learner(copy.deepcopy(model), {"micro_batch_tokens": 10_000, "loss_agg": agg, "entropy_coef": 0.01})
    small = Learner(copy.deepcopy(model), {"micro_batch_tokens": 12, "loss_agg": agg, "entropy_coef": 0.01})
    m_big = big.compute_gradients(data)
    m_small = small.compute_gradients(data)
    g_big, g_small = grads(big.model), grads(small.model)
    assert g_big.keys() == g_small.keys()
    for n in g_big:
        torch.testing.assert_close(g_small[n], g_big[n], rtol=1e-4, atol=1e-6)
    assert m_small["loss"] == pytest.approx(m_big["loss"], rel=1e-5, abs=1e-7)


def test_frozen_role_contributes_zero_gradient(tiny):
    model, _ = tiny
    data = batch(n=8)
    learner = Learner(model, {"micro_batch_tokens": 40})
    learner.compute_gradients(data, active_roles={"executor"})
    with_frozen = grads(model)
    learner.compute_gradients([t for t in data if t.role == "executor"])
    without = grads(model)
    for n in without:
        assert torch.equal(with_frozen[n], without[n]), n
    # sanity: the designer transitions do carry gradient when their role is active
    learner.compute_gradients(data)
    both = grads(model)
    assert any(not torch.allclose(both[n], without[n]) for n in without)
    m = learner.compute_gradients([t for t in data if t.role == "designer"], active_roles={"executor"})
    assert m["tokens"] == 0 and not grads(model)


def test_update_with_only_frozen_roles_skips_step(tiny):
    model, _ = tiny
    learner = Learner(model, {"lr": 1e-2})
    before = [p.detach().clone() for p in model.parameters()]
    m = learner.update(batch(roles=("designer",)), active_roles={"executor"})
    assert m["skipped"] == 1.0 and learner.version == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_recomputed_old_logprobs_match_backend_scores_at_temperature(tiny):
    from mx_agents.backends.hf import HFBackend

    model, tok = tiny
    backend = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32")
    data = batch(n=4)
    learner = Learner(model, {"temperature": 0.7})
    ours = learner.logprobs(data)
    for t, lp in zip(data, ours, strict=True):
        ref = backend.score(t.prompt_ids, t.response_ids, temperature=0.7)
        np.testing.assert_allclose(lp, ref, rtol=1e-4, atol=1e-5)


def test_weight_sync_pushes_new_weights_to_backend(tiny):
    from mx_agents.backends.hf import HFBackend

    model, tok = tiny
    backend = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32")
    calls = []

    def sync(state):
        calls.append(len(state))
        backend.load_weights(state)

    learner = Learner(model, {"lr": 1e-2}, on_weights_updated=sync)
    data = batch(n=4)
    learner.update(data)
    assert calls == [len(model.state_dict())]
    np.testing.assert_allclose(
        backend.score(data[0].prompt_ids, data[0].response_ids), learner.logprobs(data[:1])[0], rtol=1e-4, atol=1e-5
    )


def test_lora_trains_adapters_and_syncs_merged_weights(tiny):
    pytest.importorskip("peft")
    from mx_agents.backends.hf import HFBackend

    model, tok = tiny
    backend = HFBackend(copy.deepcopy(model), tok, device="cpu", dtype="float32")
    learner = Learner(model, {"lr": 5e-2, "lora": {"r": 4, "lora_alpha": 8}}, on_weights_updated=backend.load_weights)
    trainable = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    data = batch(n=4)
    before = backend.score(data[0].prompt_ids, data[0].response_ids)
    learner.update(data)
    learner.update(data)  # LoRA B starts at zero: the second step moves the merged weights
    after = backend.score(data[0].prompt_ids, data[0].response_ids)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, learner.logprobs(data[:1])[0], rtol=1e-4, atol=1e-5)


def test_sampling_logprobs_option_and_clipping(tiny):
    model, _ = tiny
    data = batch(n=4)
    probe = Learner(copy.deepcopy(model), {})
    for t, lp in zip(data, probe.logprobs(data), strict=True):
        t.logprobs = [x - 1.0 for x in lp]  # pretend the sampler was off: ratio = e > 1 + clip
    learner = Learner(model, {"old_logprobs": "sampling", "clip_high": 0.2, "clip_low": 0.2})
    m = learner.compute_gradients(data)
    pos_tokens = sum(len(t.response_ids) for t in data if t.advantage > 0)
    assert m["clip_frac"] == pytest.approx(pos_tokens / m["tokens"])
    data[0].logprobs = None
    with pytest.raises(ValueError, match="no sampling logprobs"):
        learner.compute_gradients(data)


def test_kl_penalty_and_mini_batches(tiny):
    model, _ = tiny
    learner = Learner(model, {"lr": 1e-2, "kl_coef": 0.1, "kl_estimator": "k3", "mini_batches": 2})
    data = batch(n=6)
    assert learner.compute_gradients(data)["kl"] == pytest.approx(0.0, abs=1e-7)  # still the reference
    learner.update(data)
    assert learner.version == 2  # two optimizer steps per update
    m = learner.update(data)
    assert m["kl"] > 0 and learner.version == 4


def test_split_policy_group_routes_roles(tiny):
    model, _ = tiny
    d_learner = Learner(copy.deepcopy(model), {"lr": 1e-2}, name="designer")
    e_learner = Learner(copy.deepcopy(model), {"lr": 1e-2}, name="executor")
    group = PolicyGroup({"designer": d_learner, "executor": e_learner})
    d_before = [p.detach().clone() for p in d_learner.model.parameters()]
    m = group.update(batch(n=6), active_roles={"executor"})
    assert e_learner.version == 1 and d_learner.version == 0
    assert all(torch.equal(a, b) for a, b in zip(d_before, d_learner.model.parameters(), strict=True))
    assert "executor/loss" in m and not any(k.startswith("designer/") for k in m)
    shared = PolicyGroup.shared(Learner(model, {}))
    assert set(shared.update(batch(n=4))) >= {"policy/loss", "policy/tokens"}
    with pytest.raises(ValueError, match="no learner trains"):
        PolicyGroup({"designer": d_learner}).update(batch(n=2))


def test_config_errors(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="unknown learner setting"):
        LearnerConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(KeyError, match="known: pg, ppo_clip"):
        Learner(model, {"policy_loss": "trpo"})
    with pytest.raises(KeyError, match="known: token_mean"):
        Learner(model, {"loss_agg": "sum"})
    with pytest.raises(KeyError, match="known: k1, k2, k3"):
        Learner(model, {"kl_estimator": "k4"})
    with pytest.raises(ValueError, match="total_steps"):
        Learner(model, {"lr_schedule": "cosine"})
    learner = Learner(model, {})
    with pytest.raises(ValueError, match="loss_mask has 1 entries"):
        learner.update([tr([1, 2], [3, 4], 1.0, loss_mask=[1])])


def test_warmup_cosine_schedule(tiny):
    model, _ = tiny
    learner = Learner(model, {"lr": 1.0, "warmup_steps": 2, "lr_schedule": "cosine", "total_steps": 6})
    lrs = []
    for _ in range(6):
        lrs.append(learner.current_lr())
        learner.update(batch(n=2))
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0


@pytest.mark.slow
def test_tiny_model_learns_a_bandit(tiny):
    """Reward 1 when the sampled (single) response token is the target: P(target) must rise."""
    from mx_train.credit import hierarchical_advantages

    model, tok = tiny
    prompt = tok("What is 12 + 30?", add_special_tokens=False)["input_ids"]
    learner = Learner(model, {"lr": 1e-3, "max_grad_norm": 1.0})
    gen = torch.Generator().manual_seed(0)

    def probs():
        with torch.no_grad():
            logits = learner.model(input_ids=torch.tensor([prompt])).logits[0, -1]
        return torch.softmax(logits, -1)

    p0 = probs()
    target = int(torch.argsort(p0, descending=True)[3])  # a plausible but not favoured token (p ~ 0.04)
    start = float(p0[target])
    mean_rewards = []
    for _ in range(30):
        samples = torch.multinomial(probs(), 16, replacement=True, generator=gen).tolist()
        rewards = np.array([[[1.0 if s == target else 0.0 for s in samples]]])
        _, adv = hierarchical_advantages(rewards, executor_group="design")
        learner.update([tr(prompt, [s], float(a)) for s, a in zip(samples, adv[0, 0], strict=True)])
        mean_rewards.append(rewards.mean())
    end = float(probs()[target])
    assert end > max(0.5, 3 * start), (start, end)
    assert np.mean(mean_rewards[-5:]) > np.mean(mean_rewards[:5])
