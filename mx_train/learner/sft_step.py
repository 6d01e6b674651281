"""One supervised step: token-mean NLL of the masked response tokens (temperature 1), with the
same micro-batching, accumulation, data-parallel split and skip rules as the PPO update."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mx_train.learner.collation import SequenceLike, as_seq
from mx_train.learner.ppo import counts_of, local_share
from mx_train.losses import aggregate

if TYPE_CHECKING:
    from mx_train.learner.core import Learner


def sft_step(learner: Learner, examples: Iterable[SequenceLike]) -> dict[str, float]:
    t0 = time.perf_counter()
    seqs = [s for s in (as_seq(e) for e in examples) if s.trained_tokens > 0]
    if not seqs:
        return {"skipped": 1.0, "tokens": 0.0}
    counts = counts_of(learner, seqs)
    learner.switch_phase(["sft"])
    learner.opt.zero_grad()
    temp, learner.config.temperature = learner.config.temperature, 1.0
    try:
        nll_total = 0.0
        for mb in learner.aligned(learner.micro_batches(local_share(learner, seqs))):
            if mb is None:
                logprobs, _ = learner.forward(learner.padding_batch(), with_entropy=False)
                (logprobs.sum() * 0.0).backward()
                continue
            logprobs, _ = learner.forward(mb, with_entropy=False)
            loss = aggregate(-logprobs, mb.mask, "token_mean", counts)
            loss.backward()  # ranks' shares of the global mean; FSDP sums them
            nll_total += float(loss.detach())
    finally:
        learner.config.temperature = temp
    if learner.dist is not None:
        nll_total = learner.dist.all_sum([nll_total])[0]
    lr = learner.current_lr()  # the LR this step applies (the scheduler moves on inside the step)
    grad_norm, stepped = learner.clip_and_step()
    if stepped:
        learner.push_weights()
    elapsed = time.perf_counter() - t0
    total = float(sum(s.length for s in seqs))
    return {
        "loss": nll_total,
        "grad_norm": grad_norm,
        "lr": lr,
        "tokens": float(counts.tokens),
        "total_tokens": total,
        "time_s": elapsed,
        "tokens_per_s": total / max(elapsed, 1e-9),
        "skipped": 0.0 if stepped else 1.0,
    }
