"""The learner on the tiny random Llama: updates, gradient equivalences, freezing, weight sync."""

from __future__ import annotations

import copy
import os

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
    for t in data:
        t.metadata["temperature"] = 0.7  # sampled at 0.7: the learner scores each turn at its own
    learner = Learner(model)
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
    lrs, logged = [], []
    for _ in range(6):
        lrs.append(learner.current_lr())
        logged.append(learner.update(batch(n=2))["lr"])
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0
    assert logged == pytest.approx(lrs)  # metrics report the LR each step applied, not the next one's


def test_sft_step_reports_the_lr_it_applied(tiny):
    from mx_train.sft import SFTExample

    model, _ = tiny
    learner = Learner(model, {"lr": 1.0, "lr_schedule": "cosine", "total_steps": 4})
    logged = [learner.sft_step([SFTExample([5, 6, 7], [8, 9])])["lr"] for _ in range(4)]
    assert logged[0] == pytest.approx(1.0) and logged[-1] > 0


def test_sft_examples_carry_temperature_one_and_turns_their_own(tiny):
    """SFT trains the model's own distribution: an example records T=1 and is scored at it, as a
    transition is scored at the temperature it records; the learner has no temperature of its own."""
    from mx_train.sft import SFTExample

    model, _ = tiny
    examples = [SFTExample([5, 6, 7], [8, 9, 10]), SFTExample([11, 12], [13])]
    assert all(e.metadata["temperature"] == 1.0 for e in examples)
    plain = [tr(e.prompt_ids, e.response_ids, 0.0) for e in examples]  # records none: not sampled hotter
    hot = [tr(e.prompt_ids, e.response_ids, 0.0) for e in examples]
    for t in hot:
        t.metadata["temperature"] = 0.5
    learner = Learner(copy.deepcopy(model), {"lr": 1e-3})
    assert learner.logprobs(examples)[0] == pytest.approx(learner.logprobs(plain)[0], rel=1e-6)
    assert learner.logprobs(hot)[0] != pytest.approx(learner.logprobs(examples)[0])
    assert learner.sft_step(examples)["loss"] > 0
    with pytest.raises(ValueError, match="no longer a learner setting"):
        Learner(copy.deepcopy(model), {"lr": 1e-3, "temperature": 0.5})


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


# ---------------------------------------------------------------- precision
def fp32_view(learner):
    """The learner's full-precision weights by name (the fp32 masters when it keeps them)."""
    view = getattr(learner, "fp32_weights", None)
    if view is not None:
        return view()
    return {n: p.detach().float().clone() for n, p in learner.model.named_parameters()}


def test_bf16_update_at_lr_5e6_is_not_lost(tiny):
    model, _ = tiny
    model = model.to(torch.bfloat16)  # the rollout engine's dtype
    ref = copy.deepcopy(model).float()  # same (bf16-representable) starting values, fp32 training
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    cfg = {"lr": 5e-6, "max_grad_norm": None, "logits_chunk_tokens": 0}
    learner = Learner(model, {**cfg, "dtype": "bfloat16"})
    reference = Learner(ref, cfg)
    data = batch(n=6)
    for _ in range(3):
        learner.update(data)
        reference.update(data)
    got, want = fp32_view(learner), fp32_view(reference)
    total = close = moved = 0
    for n, w0 in start.items():
        d_got, d_want = got[n] - w0, want[n] - w0
        sel = d_want.abs() > 1.5 * 5e-6  # what fp32 training moved (three Adam steps: ~3 lr each)
        total += int(sel.sum())
        moved += int((d_got.abs() > 1.5 * 5e-6)[sel].sum())
        close += int(((d_got - d_want).abs() < 2.5e-6)[sel].sum())
    assert total > 10_000
    assert moved / total > 0.9, moved / total  # a bf16 weight + AdamW in bf16 rounds these steps away
    assert close / total > 0.9, close / total
    # the model computing rollouts stays bf16 and holds the masters rounded to bf16
    for n, p in learner.model.named_parameters():
        assert p.dtype == torch.bfloat16
        assert torch.equal(p.detach(), got[n].to(torch.bfloat16)), n


def test_learner_never_changes_the_given_models_dtype(tiny):
    model, _ = tiny
    model = model.to(torch.bfloat16)
    upcast = Learner(model, {"dtype": "float32"})
    assert upcast.model is not model and next(upcast.model.parameters()).dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    same = Learner(model, {})  # "auto": compute in the model's dtype, train it in place
    assert same.model is model and same.master is not None
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# ---------------------------------------------------------------- compute precision
def _dtype_seen_in_forward(learner, data):
    """The dtype a decoder projection computes in during ``learner.update(data)``."""
    seen = []
    proj = learner.model.model.layers[0].self_attn.q_proj
    handle = proj.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        metrics = learner.update(data)
    finally:
        handle.remove()
    assert seen
    return set(seen), metrics


def test_cpu_bf16_detection_follows_cpuinfo_and_the_override(monkeypatch):
    from mx_train.learner.precision import CPU_BF16_FLAGS, cpu_has_bf16, resolve_compute

    monkeypatch.setenv("MX_CPU_BF16", "1")
    assert cpu_has_bf16()
    cpu = torch.device("cpu")
    assert resolve_compute("auto", torch.float32, cpu) == (torch.float32, True)  # autocast over fp32 params
    assert resolve_compute("float32", torch.float32, cpu) == (torch.float32, False)
    assert resolve_compute("auto", torch.bfloat16, cpu) == (torch.bfloat16, False)
    assert resolve_compute("bfloat16", torch.float32, cpu) == (torch.bfloat16, False)
    monkeypatch.setenv("MX_CPU_BF16", "0")
    assert not cpu_has_bf16()
    assert resolve_compute("auto", torch.float32, cpu) == (torch.float32, False)
    monkeypatch.delenv("MX_CPU_BF16")
    with open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    assert cpu_has_bf16() == any(flag in flags for flag in CPU_BF16_FLAGS)


def test_bf16_compute_trains_with_fp32_masters_and_optimizer_state(tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setenv("MX_CPU_BF16", "1")  # as on a CPU with avx512_bf16 / AMX
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Learner(model, {"lr": 1e-3})  # dtype: auto
    assert learner.autocast and learner.compute_dtype == torch.bfloat16
    assert learner.model is model and learner.master is None  # the fp32 parameters are the masters
    seen, m = _dtype_seen_in_forward(learner, batch())
    assert seen == {torch.bfloat16}
    assert np.isfinite(m["loss"]) and m["grad_norm"] > 0 and learner.version == 1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the engine's model keeps its dtype
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    states = list(learner.optimizer.state.values())
    assert states and all(st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
                          for st in states)
    # bf16 compute is really used: its log-probs differ from fp32 compute by more than fp32 roundoff
    fp32 = Learner(copy.deepcopy(model), {"dtype": "float32"})
    data = batch(seed=5)
    diff = np.abs(np.concatenate([np.subtract(a, b) for a, b in zip(learner.logprobs(data), fp32.logprobs(data),
                                                                     strict=True)]))
    assert diff.max() > 1e-4


def test_fp32_stays_the_default_without_native_bf16(tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setenv("MX_CPU_BF16", "0")
    learner = Learner(model, {"lr": 1e-3})
    assert not learner.autocast and learner.compute_dtype == torch.float32
    seen, m = _dtype_seen_in_forward(learner, batch())
    assert seen == {torch.float32} and np.isfinite(m["loss"])


def test_bf16_copy_masters_start_from_the_fp32_weights(tiny):
    model, _ = tiny
    learner = Learner(model, {"dtype": "bfloat16", "lr": 0.0})
    assert learner.private_copy and next(learner.model.parameters()).dtype == torch.bfloat16
    for m, p in zip(learner.master.masters, model.parameters(), strict=True):
        assert m.dtype == torch.float32 and torch.equal(m, p.detach())  # not the bf16-rounded copy
    assert any(not torch.equal(p.detach().to(torch.bfloat16).float(), p.detach()) for p in model.parameters())


# ---------------------------------------------------------------- co-evolution phases
def _role_batch(role, n, seed, zero=False):
    out = batch(seed=seed, n=n, roles=(role,))
    if zero:
        for t in out:
            t.advantage = 0.0
    return out


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_zero_gradient_designer_step_after_executor_steps_keeps_weights_bit_identical(tiny):
    model, _ = tiny
    group = PolicyGroup.shared(Learner(model, {"lr": 1e-3, "weight_decay": 0.01}))
    for k in range(3):
        group.update(_role_batch("executor", 4, k) + _role_batch("designer", 2, 10 + k), active_roles={"executor"})
    before = _weights(model)
    m = group.update(_role_batch("designer", 4, 20, zero=True) + _role_batch("executor", 4, 21),
                     active_roles={"designer"})
    assert m["policy/skipped"] == 1.0 and m["policy/optimizer_steps"] == 0.0
    after = _weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("mode", ["per_role", "reset"])
def test_phase_switch_does_not_carry_the_other_roles_momentum(tiny, mode):
    model, _ = tiny
    cfg = {"lr": 1e-3, "phase_optimizer": mode}
    learner = Learner(model, cfg)
    for k in range(3):
        learner.update(_role_batch("executor", 4, k), active_roles={"executor"})
    fresh = Learner(copy.deepcopy(model), cfg)  # same weights, no optimizer history
    designer = _role_batch("designer", 4, 30)
    learner.update(designer, active_roles={"designer"})
    fresh.update(designer, active_roles={"designer"})
    for n, p in fresh.model.named_parameters():
        torch.testing.assert_close(dict(learner.model.named_parameters())[n], p, rtol=0, atol=1e-7)
    learner.update(_role_batch("executor", 4, 40), active_roles={"executor"})
    steps = {int(s["step"]) for s in learner.optimizer.state.values()}
    assert steps == ({4} if mode == "per_role" else {1})  # per_role resumes the executor's moments


def test_phase_lr_sets_each_roles_learning_rate(tiny):
    model, _ = tiny
    learner = Learner(model, {"lr": 1e-3, "phase_lr": {"designer": 1e-4}})
    learner.update(_role_batch("executor", 4, 0), active_roles={"executor"})
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    fresh = Learner(copy.deepcopy(model), {"lr": 1e-4})  # what the designer phase must equal
    designer = _role_batch("designer", 4, 30)
    learner.update(designer, active_roles={"designer"})
    fresh.update(designer, active_roles={"designer"})
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    for n, p in fresh.model.named_parameters():
        torch.testing.assert_close(dict(learner.model.named_parameters())[n], p, rtol=0, atol=1e-7)
    learner.update(_role_batch("executor", 4, 1), active_roles={"executor"})
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="not a phase"):
        Learner(copy.deepcopy(model), {"lr": 1e-3, "phase_lr": {"critic": 1e-4}})
    with pytest.raises(ValueError, match="must be > 0"):
        Learner(copy.deepcopy(model), {"lr": 1e-3, "phase_lr": {"designer": 0}})


def test_per_phase_optimizer_state_survives_a_checkpoint(tiny):
    model, _ = tiny
    a = Learner(model, {"lr": 1e-3})
    a.update(_role_batch("executor", 4, 0), active_roles={"executor"})
    a.update(_role_batch("designer", 4, 1), active_roles={"designer"})
    b = Learner(copy.deepcopy(model), {"lr": 1e-3})
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as torch.save + torch.load would
    nxt = _role_batch("executor", 4, 2)
    a.update(nxt, active_roles={"executor"})
    b.update(nxt, active_roles={"executor"})
    wa, wb = _weights(a.model), _weights(b.model)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_parking_on_disk_equals_parking_in_memory_and_holds_nothing_resident(tiny):
    """CPU training parks the inactive phase's AdamW moments in a file: the same updates bit for bit,
    and between switches the parked phase costs no memory (issue: 4 model-sized tensors resident)."""
    from mx_train.learner.optim import _Spilled

    model, _ = tiny
    runs = {}
    for where in ("memory", "disk"):
        learner = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": where})
        for k, role in enumerate(["executor", "executor", "designer", "executor", "designer", "designer"]):
            learner.update(_role_batch(role, 4, k), active_roles={role})
            parked = learner.opt.parked.get("executor" if role == "designer" else "designer")
            if parked is not None:
                assert isinstance(parked, _Spilled) == (where == "disk"), (where, type(parked))
                if where == "disk":
                    assert os.path.getsize(parked.path) > 0
        state = copy.deepcopy(learner.state_dict()["optimizer_phases"])  # a checkpoint reads the spilled phase back
        assert set(state["parked"]) == {"executor"} and state["parked"]["executor"]
        runs[where] = (_weights(learner.model), state)
        learner.release()
        assert learner.opt.parked == {} and not any(
            os.path.exists(p.path) for p in [parked] if isinstance(p, _Spilled))
    (wm, sm), (wd, sd) = runs["memory"], runs["disk"]
    assert all(torch.equal(wm[n], wd[n]) for n in wm)
    for i, st in sm["parked"]["executor"].items():
        assert all(torch.equal(v, sd["parked"]["executor"][i][k]) for k, v in st.items())


def test_phase_switch_prepared_in_the_background_equals_the_inline_switch(tiny):
    """``prepare_phase`` (called by the trainer as a rollout starts) parks and restores the moments on
    another thread; the updates, the parked state and the logged switches are those of switching
    inside ``update``; a checkpoint taken while it runs waits for it."""
    import threading

    model, _ = tiny
    roles = ["executor", "executor", "designer", "designer", "executor", "designer"]
    runs = {}
    for ahead in (False, True):
        learner = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": "disk"})
        group = PolicyGroup.shared(learner)
        threads: list[str] = []
        real_switch = learner.opt.switch

        def switch(phase, _real=real_switch, _seen=threads):
            _seen.append(threading.current_thread().name)
            return _real(phase)

        learner.opt.switch = switch
        changed = []
        for k, role in enumerate(roles):
            before = learner.opt.switches
            if ahead:
                group.prepare_phase({role})
            if ahead and k == 4:  # a checkpoint while the switch may still run
                state = copy.deepcopy(learner.state_dict()["optimizer_phases"])
                assert state["phase"] == "executor"
            group.update(_role_batch(role, 4, k), active_roles={role})
            changed.append(learner.opt.switches - before)
        runs[ahead] = (_weights(learner.model), copy.deepcopy(learner.state_dict()["optimizer_phases"]), changed)
        if ahead:  # the first selection and the three phase changes ran on the prepare thread
            assert sum(name.endswith("-phase-switch") for name in threads) == 4
        learner.release()
    (w0, s0, c0), (w1, s1, c1) = runs[False], runs[True]
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    assert c0 == c1 == [0, 0, 1, 0, 1, 1]
    assert s0["phase"] == s1["phase"] and set(s0["parked"]) == set(s1["parked"])
    for phase, st in s0["parked"].items():
        for i, entry in st.items():
            assert all(torch.equal(v, s1["parked"][phase][i][key]) for key, v in entry.items())


# ---------------------------------------------------------------- PPO mini-batches and old log-probs
def test_mini_batch_size_and_epochs_set_the_optimizer_steps_and_free_gradients(tiny):
    model, _ = tiny
    learner = Learner(model, {"lr": 1e-5, "mini_batch_size": 2, "ppo_epochs": 2})  # small: nothing clipped
    m = learner.update(batch(n=6))
    assert m["optimizer_steps"] == 6 and learner.version == 6
    assert all(p.grad is None for p in learner.model.parameters())  # nothing held through the rollout


def test_on_policy_update_skips_the_recompute_pass_with_the_same_result(tiny):
    model, _ = tiny
    auto = Learner(copy.deepcopy(model), {"lr": 1e-2, "micro_batch_tokens": 30})
    recompute = Learner(copy.deepcopy(model), {"lr": 1e-2, "micro_batch_tokens": 30, "old_logprobs": "recompute"})
    calls = []
    orig = auto.fill_logprobs
    auto.fill_logprobs = lambda *a, **k: (calls.append(a[1]), orig(*a, **k))[1]
    data = batch(n=6)
    auto.update(data)
    recompute.update(data)
    assert calls == []  # one optimizer step: old log-probs are the training forward's own
    wa, wr = _weights(auto.model), _weights(recompute.model)
    for n in wa:
        torch.testing.assert_close(wa[n], wr[n], rtol=0, atol=1e-7)


def test_gradient_checkpointing_same_update_and_eval_mode_between_updates(tiny):
    """Checkpointed activations change memory, not the update; between updates the (possibly
    shared, generating) model is in eval mode, where HF keeps its KV cache."""
    model, _ = tiny
    runs = {}
    for gc in (False, True):
        learner = Learner(copy.deepcopy(model), {"lr": 1e-3, "gradient_checkpointing": gc})
        assert learner.model.training is False
        seen: list[bool] = []
        layer = dict(learner.model.named_modules())["model.layers.0"]
        hook = layer.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(mod.training))
        learner.update(batch(n=6))
        hook.remove()
        assert learner.model.training is False  # back to eval for generation
        assert seen and all(t is gc for t in seen)  # train mode (checkpointing) only inside the update
        runs[gc] = _weights(learner.model)
    for n, w in runs[False].items():
        torch.testing.assert_close(runs[True][n], w, rtol=1e-5, atol=1e-6)
