"""Our GRPO advantages and clipped policy loss against TRL's GRPOTrainer on the same inputs.

The real TRL code runs here: a ``GRPOTrainer`` is built around the tiny random Llama, its
``_generate_and_score_completions`` produces group-normalised advantages for rewards fed through a
reward function, and its ``_compute_loss`` scores prepared completions with the real model forward.
Our side: :func:`mx_train.credit.hierarchical_advantages` and ``Learner.compute_gradients`` on the
same sequences. Known, deliberate differences are configured away rather than hidden: TRL divides by
the *sample* std plus 1e-4 (we default to the population std plus 1e-6, the paper's choice), so the
advantage check passes ``std="sample", eps=1e-4``. Loss mapping: TRL ``loss_type="grpo"`` =
our ``seq_mean_token_mean``; ``"bnpo"`` = ``token_mean``; ``"dr_grpo"`` = ``seq_mean_token_sum_norm``
with the max completion length; TRL's ``beta`` = our ``kl_coef`` with the ``k3`` estimator (TRL's default importance re-weighting of
the KL term, ``use_bias_correction_kl``, is switched off: we do not apply it).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

trl = pytest.importorskip("trl", reason="TRL (dev dependency) is not installed")
datasets = pytest.importorskip("datasets", reason="TRL's trainer needs the datasets package")
torch = pytest.importorskip("torch")

from mx_agents.transition import Transition  # noqa: E402
from mx_train.credit import hierarchical_advantages  # noqa: E402
from mx_train.learner import Learner  # noqa: E402

pytestmark = pytest.mark.slow

TEMPERATURE = 0.7
MAX_COMPLETION = 6
REWARDS = [1.0, 0.0, 0.5, 0.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 1.0, 0.0]  # 3 prompts x 4 generations
PROMPTS = ["What is 12 + 30?", "Hello world", "def solve(x):"]


@pytest.fixture(scope="module")
def trainer():
    import warnings

    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    fed: list[int] = []

    def reward(prompts, completions, **kwargs):
        # Test double: returns the fixed REWARDS in order, whatever the completions say.
        start = len(fed)
        fed.extend(range(len(prompts)))
        return REWARDS[start : start + len(prompts)]

    args = trl.GRPOConfig(
        output_dir="/tmp/mx-trl-parity", per_device_train_batch_size=12, num_generations=4,
        max_completion_length=MAX_COMPLETION, temperature=TEMPERATURE, beta=0.0, loss_type="grpo",
        epsilon=0.2, report_to=[], use_cpu=True, bf16=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args,
                             train_dataset=datasets.Dataset.from_dict({"prompt": PROMPTS}), processing_class=tok)
    tr.current_gradient_accumulation_steps = 1  # set by the training loop, which we do not run
    return tr


def test_grpo_advantages_match_trl(trainer):
    inputs = [{"prompt": p} for p in PROMPTS for _ in range(4)]
    out = trainer._generate_and_score_completions(inputs)
    theirs = out["advantages"].detach().cpu().numpy()
    # TRL's groups (the generations of one prompt) = our executor groups of one design.
    _, ours = hierarchical_advantages(np.array(REWARDS).reshape(1, 3, 4), executor_group="design",
                                      std="sample", eps=1e-4)
    np.testing.assert_allclose(ours.ravel(), theirs, rtol=1e-5, atol=1e-6)
    assert np.all(ours[0, 1] == 0)  # the all-equal group


def _prepared(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, p = 4, 5
    prompt_ids = torch.randint(5, 300, (b, p), generator=g)
    prompt_mask = torch.ones(b, p, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding, as TRL lays prompts out
    prompt_mask[2, :1] = 0
    completion_ids = torch.randint(5, 300, (b, MAX_COMPLETION), generator=g)
    completion_mask = torch.ones(b, MAX_COMPLETION, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[3, 5:] = 0
    advantages = torch.tensor([1.0, -0.5, 0.3, -1.2])
    # Old log-probs far enough from the current ones that both clip branches are exercised.
    old = torch.randn(b, MAX_COMPLETION, generator=g) * 0.3 - 6.2
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask, advantages=advantages, old_per_token_logps=old)


def _transitions(inp):
    out = []
    for i in range(inp["prompt_ids"].shape[0]):
        p = inp["prompt_ids"][i][inp["prompt_mask"][i].bool()].tolist()
        n = int(inp["completion_mask"][i].sum())
        out.append(Transition(
            episode_id=str(i), task_uid="t", task_id="t", design_id=0, execution_id=i, role="executor",
            agent="a", turn=0, prompt_ids=p, response_ids=inp["completion_ids"][i, :n].tolist(),
            logprobs=inp["old_per_token_logps"][i, :n].tolist(), advantage=float(inp["advantages"][i]),
            metadata={"temperature": TEMPERATURE},  # what TRL sampled at: the learner reads it here
        ))
    return out


@pytest.mark.parametrize(
    ("loss_type", "agg", "beta"),
    [("grpo", "seq_mean_token_mean", 0.0), ("bnpo", "token_mean", 0.0), ("dr_grpo", "seq_mean_token_sum_norm", 0.0),
     ("bnpo", "token_mean", 0.05)],
)
def test_clipped_loss_and_gradients_match_trl(trainer, loss_type, agg, beta):
    from mx_agents.testing import tiny_llama

    inp = _prepared()
    transitions = _transitions(inp)
    # TRL patches its model's forward (a closure over that very instance), so our side gets its own,
    # unpatched copy of the same weights: tiny_llama(seed=0) is bit-identical to the trainer's model.
    policy, ref_model = tiny_llama(seed=0)[0], tiny_llama(seed=0)[0]
    trl_model = copy.deepcopy(trainer.model)
    # Move the policy away from the reference so the KL term is non-trivial (same noise both sides).
    with torch.no_grad():
        for m in (policy, trl_model):
            gen = torch.Generator().manual_seed(1)
            for _, prm in sorted(m.named_parameters()):
                prm.add_(torch.randn(prm.shape, generator=gen) * 0.01)
    cfg = {"loss_agg": agg, "old_logprobs": "sampling", "clip_low": 0.2,
           "clip_high": 0.2, "kl_coef": beta, "kl_estimator": "k3", "norm_length": MAX_COMPLETION}
    ours = Learner(policy, cfg)
    if beta:
        ours.ref_model = ref_model  # the same reference both sides
        ref_lp = Learner(copy.deepcopy(ref_model)).logprobs(transitions)
        ref = torch.zeros_like(inp["old_per_token_logps"])
        for i, lp in enumerate(ref_lp):
            ref[i, : len(lp)] = torch.tensor(lp)
        inp["ref_per_token_logps"] = ref
    metrics = ours.compute_gradients(transitions)

    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.args.use_bias_correction_kl = False  # TRL's default re-weights the KL by the ratio; ours does not
    trl_model.train()
    loss = trainer._compute_loss(trl_model, inp)
    loss.backward()
    assert metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-6)
    assert 0 < metrics["clip_frac"] < 1  # the clipped branch was active for some tokens
    named = dict(trl_model.named_parameters())
    for n, prm in ours.model.named_parameters():
        torch.testing.assert_close(prm.grad, named[n].grad, rtol=1e-3, atol=1e-6, msg=n)
