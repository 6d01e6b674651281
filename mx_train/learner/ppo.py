"""The PPO/GRPO update: mini-batches, old/reference log-probs, gradient accumulation, steps.

``ppo_update(learner, transitions, active_roles)``:

1. drops transitions of inactive roles (the co-evolution freeze: they never enter the loss or its
   normaliser) and those with nothing to train, and selects the optimizer state of the active-role
   set (:mod:`mx_train.learner.optim`);
2. returns without touching the weights when the batch has no gradient signal (every advantage is
   zero and there is no KL or entropy term): no forward, no optimizer step, no version bump;
3. plans ``ppo_epochs`` passes of mini-batches (``mini_batch_size`` sequences, or ``mini_batches``
   equal parts; reshuffled after the first epoch);
4. old log-probs: ``current`` (one optimizer step: the detached log-probs of the training forward,
   no extra pass), ``sampling`` (the sampler's) or ``recompute`` (one no-grad pass before any
   parameter changes); reference log-probs when a KL penalty is on;
5. per mini-batch: micro-batches by a **token budget**, gradients accumulate across them, the loss
   is normalised by the mini-batch's token/sequence counts (so the gradient equals one big batch's),
   then clip and step (skipped on an all-zero gradient);
6. pushes the new weights to the engine if any step was taken.

Data parallel (FSDP): every rank receives the whole batch and computes the same plan and counts;
rank ``r`` trains the sequences ``r, r + W, ...`` of each mini-batch with the loss normalised by the
*global* counts, and FSDP sums the ranks' gradients (:func:`mx_train.fsdp.shard_scorer` sets the
divide factor to 1), so the gradient equals the single-process one. Ranks with fewer
micro-batches run padding batches so the collectives line up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mx_train.learner.collation import Seq, SequenceLike
from mx_train.losses import BatchCounts, policy_objective

if TYPE_CHECKING:
    from mx_train.learner.core import Learner


def counts_of(learner: Learner, seqs: list[Seq]) -> BatchCounts:
    return BatchCounts(
        tokens=int(sum(s.trained_tokens for s in seqs)),
        sequences=len(seqs),
        norm_length=int(learner.config.norm_length or max(len(s.response) for s in seqs)),
    )


def plan_mini_batches(learner: Learner, seqs: list[Seq]) -> list[list[Seq]]:
    """Every optimizer step's sequences, all epochs (identical on every rank)."""
    cfg = learner.config
    if cfg.mini_batch_size is not None:
        n_mini = max(1, -(-len(seqs) // cfg.mini_batch_size))
    else:
        n_mini = min(cfg.mini_batches, len(seqs))
    steps: list[list[Seq]] = []
    order = list(range(len(seqs)))
    for epoch in range(cfg.ppo_epochs):
        if epoch:
            random.Random(learner.version * 1_000_003 + epoch).shuffle(order)
        steps.extend([[seqs[i] for i in order[k::n_mini]] for k in range(n_mini)])
    return steps


def local_share(learner: Learner, seqs: list[Seq]) -> list[Seq]:
    return seqs[learner.rank :: learner.world_size]


def has_signal(learner: Learner, seqs: list[Seq]) -> bool:
    cfg = learner.config
    return cfg.kl_coef != 0.0 or cfg.entropy_coef != 0.0 or any(s.advantage != 0.0 for s in seqs)


def set_old_and_ref(learner: Learner, seqs: list[Seq], mode: str, local: list[Seq]) -> None:
    import torch

    if mode == "sampling":
        for s in seqs:
            if s.sampling_logprobs is None:
                raise ValueError("old_logprobs='sampling' but a transition has no sampling logprobs")
            s.old = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
    elif mode == "recompute":
        learner.fill_logprobs(local, "old")
    if learner.config.kl_coef != 0.0:
        learner.fill_logprobs(local, "ref", ref=True)


_STAT_KEYS = ("loss", "pg_loss", "clip_frac_sum", "approx_kl_sum")


def accumulate(learner: Learner, step_seqs: list[Seq], local: list[Seq]) -> dict[str, float]:
    """Backward over this rank's ``local`` part of ``step_seqs`` (normalised as the whole of
    ``step_seqs``); grads accumulate, no optimizer step. Metrics are summed over ranks."""
    cfg = learner.config
    settings = cfg.loss_settings()
    counts = counts_of(learner, step_seqs)
    want_entropy = cfg.log_entropy or cfg.entropy_coef != 0.0
    keys = list(_STAT_KEYS) + (["kl"] if cfg.kl_coef != 0.0 else []) + (["entropy"] if want_entropy else [])
    totals = dict.fromkeys(keys, 0.0)
    for mb in learner.aligned(learner.micro_batches(local) if local else []):
        if mb is None:
            logprobs, entropy = learner.forward(learner.padding_batch(), with_entropy=False)
            (logprobs.sum() * 0.0).backward()
            continue
        logprobs, entropy = learner.forward(mb, with_entropy=want_entropy, entropy_grad=cfg.entropy_coef != 0.0)
        old = mb.old if mb.old is not None else logprobs.detach()
        loss, stats = policy_objective(
            logprobs, old, mb.advantages, mb.mask, counts, settings, ref_logprobs=mb.ref, entropy=entropy
        )
        loss.backward()
        totals["loss"] += float(loss.detach())
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v
    if learner.dist is not None:
        totals = dict(zip(keys, learner.dist.all_sum([totals[k] for k in keys]), strict=True))
    metrics = {"loss": totals["loss"], "tokens": float(counts.tokens), "sequences": float(counts.sequences)}
    for k in keys[1:]:
        metrics[k.removesuffix("_sum")] = totals[k] / max(counts.tokens, 1) if k.endswith("_sum") else totals[k]
    return metrics


def ppo_update(
    learner: Learner, transitions: Iterable[SequenceLike], active_roles: Iterable[str] | None = None
) -> dict[str, float]:
    """One policy update (see module doc). Returns averaged metrics: loss, pg_loss, clip_frac,
    approx_kl, kl, entropy, grad_norm, lr, tokens, sequences, total_tokens, tokens_per_s, time_s,
    optimizer_steps, skipped (1.0 when no step was taken) and skip_reason codes."""
    t0 = time.perf_counter()
    seqs = learner.prepare(transitions, active_roles)
    if not seqs:
        return {"skipped": 1.0, "skipped_no_tokens": 1.0, "tokens": 0.0, "sequences": 0.0, "optimizer_steps": 0.0}
    learner.switch_phase(active_roles)
    if not has_signal(learner, seqs):
        # All advantages zero and no KL/entropy term: the gradient is exactly zero. AdamW would still
        # move the weights (momentum, weight decay), so no step at all.
        return {"skipped": 1.0, "skipped_zero_advantage": 1.0, "tokens": float(sum(s.trained_tokens for s in seqs)),
                "sequences": float(len(seqs)), "optimizer_steps": 0.0, "policy_version": float(learner.version)}
    steps = plan_mini_batches(learner, seqs)
    mode = learner.config.resolved_old_logprobs(len(steps))
    local_all = local_share(learner, seqs)
    if mode == "recompute" or learner.config.kl_coef != 0.0:
        # This rank's sequences across all steps, in a stable order (whole batch per rank is fine:
        # the same for every rank, so micro-batch counts line up).
        owned = {id(s) for st in steps for s in local_share(learner, st)}
        local_all = [s for s in seqs if id(s) in owned]
    set_old_and_ref(learner, seqs, mode, local_all)
    per_step: list[dict[str, float]] = []
    stepped = 0
    lr = learner.current_lr()  # the LR of this update's first optimizer step (the scheduler moves on per step)
    for st in steps:
        learner.opt.zero_grad()
        m = accumulate(learner, st, local_share(learner, st))
        m["grad_norm"], ok = learner.clip_and_step()
        stepped += int(ok)
        per_step.append(m)
    if stepped:
        learner.push_weights()
    elapsed = time.perf_counter() - t0
    keys = {k for m in per_step for k in m}
    metrics = {k: sum(m.get(k, 0.0) for m in per_step) / len(per_step) for k in keys}
    metrics["tokens"] = float(sum(s.trained_tokens for s in seqs))
    metrics["sequences"] = float(len(seqs))
    metrics["total_tokens"] = float(sum(s.length for s in seqs))
    metrics["time_s"] = elapsed
    metrics["tokens_per_s"] = metrics["total_tokens"] / max(elapsed, 1e-9)
    metrics["lr"] = lr
    metrics["policy_version"] = float(learner.version)
    metrics["optimizer_steps"] = float(stepped)
    metrics["skipped"] = 0.0 if stepped else 1.0
    return metrics
