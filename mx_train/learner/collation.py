"""From transitions to padded micro-batches: the learner's view of a sequence, the plan of an
update's optimizer steps, the batch counts its loss is normalised by, and token budgets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mx_agents.transition import sampled_temperature
from mx_train.learner.losses import BatchCounts

if TYPE_CHECKING:
    import torch


class SequenceLike(Protocol):
    """What the learner reads from a transition (``mx_agents.transition.Transition`` fits)."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None
    loss_mask: list[int] | None
    advantage: float
    role: str


@dataclass
class Seq:
    """One trained sequence, with the per-token tensors the update fills in."""

    prompt: list[int]
    response: list[int]
    mask: list[float]
    advantage: float
    sampling_logprobs: list[float] | None
    old: torch.Tensor | None = None  # [len(response)]
    ref: torch.Tensor | None = None
    # The temperature this turn was sampled at (its log-probs are scored at it), from the turn itself.
    temperature: float = 1.0

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)

    @property
    def trained_tokens(self) -> float:
        return float(sum(self.mask))


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor  # [B, R] float, trained response tokens
    response_ids: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B]
    old: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    seqs: list[Seq] = field(default_factory=list)


def as_seq(t: SequenceLike) -> Seq:
    response = [int(x) for x in t.response_ids]
    mask = [1.0] * len(response) if t.loss_mask is None else [float(x) for x in t.loss_mask]
    if len(mask) != len(response):
        raise ValueError(f"loss_mask has {len(mask)} entries for {len(response)} response tokens")
    if t.logprobs is not None and len(t.logprobs) != len(response):
        raise ValueError(f"logprobs has {len(t.logprobs)} entries for {len(response)} response tokens")
    if not t.prompt_ids:
        raise ValueError("a transition needs a non-empty prompt (the first response token is predicted from it)")
    return Seq(
        prompt=[int(x) for x in t.prompt_ids],
        response=response,
        mask=mask,
        advantage=float(t.advantage),
        sampling_logprobs=None if t.logprobs is None else [float(x) for x in t.logprobs],
        temperature=sampled_temperature(t),
    )


def batch_counts(seqs: Sequence[Seq], norm_length: int | None = None) -> BatchCounts:
    """The global counts a batch's loss is normalised by (``norm_length`` default: the longest response)."""
    return BatchCounts(
        tokens=int(sum(s.trained_tokens for s in seqs)),
        sequences=len(seqs),
        norm_length=int(norm_length or max(len(s.response) for s in seqs)),
    )


def plan_mini_batches(
    seqs: Sequence[Seq], *, mini_batch_size: int | None, mini_batches: int, epochs: int, seed: int
) -> list[list[Seq]]:
    """Every optimizer step's sequences, all epochs: ``mini_batch_size`` sequences per step (or
    ``mini_batches`` equal parts), strided; reshuffled after the first epoch by ``seed`` and the
    epoch, so every data-parallel rank plans the same steps."""
    if mini_batch_size is not None:
        n_mini = max(1, -(-len(seqs) // mini_batch_size))
    else:
        n_mini = min(mini_batches, len(seqs))
    steps: list[list[Seq]] = []
    order = list(range(len(seqs)))
    for epoch in range(epochs):
        if epoch:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        steps.extend([[seqs[i] for i in order[k::n_mini]] for k in range(n_mini)])
    return steps


def pack_by_tokens(costs: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size fits ``budget``.

    ``costs[i] = (prompt_len, response_len)``; a micro-batch of ``B`` sequences costs
    ``B * (max prompt_len + max response_len)`` tokens (the aligned layout). Longest first, greedy;
    a sequence larger than the budget gets a micro-batch of its own.
    """
    order = sorted(range(len(costs)), key=lambda i: (-(costs[i][0] + costs[i][1]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_p = max_r = 0
    for i in order:
        p, r = costs[i]
        new_p, new_r = max(max_p, p), max(max_r, r)
        if cur and (len(cur) + 1) * (new_p + new_r) > budget:
            batches.append(cur)
            cur, new_p, new_r = [], p, r
        cur.append(i)
        max_p, max_r = new_p, new_r
    if cur:
        batches.append(cur)
    return batches


def collate(seqs: list[Seq], pad_id: int, device: torch.device) -> MicroBatch:
    """``[left pad | prompt | response | right pad]`` (the shared :func:`mx_agents.batching.left_pad`)."""
    import torch

    from mx_agents.batching import left_pad

    padded = left_pad([s.prompt for s in seqs], pad_id, tails=[s.response for s in seqs])
    b, r_max = len(seqs), padded.tail_width
    mask = torch.zeros((b, r_max), dtype=torch.float32)
    for i, s in enumerate(seqs):
        if s.response:
            mask[i, : len(s.response)] = torch.tensor(s.mask)
    resp = padded.input_ids[:, padded.head_width :].clone()
    mb = MicroBatch(
        input_ids=padded.input_ids.to(device),
        attention_mask=padded.attention_mask.to(device),
        position_ids=padded.position_ids.to(device),
        mask=mask.to(device),
        response_ids=resp.to(device),
        advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32, device=device),
        seqs=seqs,
    )
    for attr in ("old", "ref"):
        vals = [getattr(s, attr) for s in seqs]
        if all(v is not None for v in vals):
            t = torch.zeros((b, r_max), dtype=torch.float32)
            for i, v in enumerate(vals):
                t[i, : v.numel()] = v
            setattr(mb, attr, t.to(device))
    return mb


def micro_batches(seqs: list[Seq], budget: int, pad_id: int, device: torch.device) -> list[MicroBatch]:
    groups = pack_by_tokens([(len(s.prompt), len(s.response)) for s in seqs], budget)
    return [collate([seqs[i] for i in g], pad_id, device) for g in groups]
