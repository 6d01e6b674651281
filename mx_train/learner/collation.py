"""From transitions to micro-batches: the learner's view of a sequence, the plan of an update's
optimizer steps, the batch counts its loss is normalised by, and token budgets.

Two layouts of a micro-batch, both giving per-sequence response tensors ``[B, R]`` to the loss:

* **aligned** (:func:`collate`): ``[left pad | prompt | response | right pad]``, one sequence per
  row. Every row costs the longest prompt plus the longest response of the micro-batch, so a batch
  of mixed lengths trains on padding (a real executor batch: 2221 tokens in 4092 padded positions).
* **packed** (:func:`collate_packed`): several sequences concatenated in one row, each with its own
  position ids (0, 1, ...) and a 4-D block-diagonal causal attention mask that keeps them apart.
  Sequences that share a prefix (the N executions of one design, turns of one conversation) can
  form one :class:`PackUnit`: the prefix is laid out and computed once, each member's remaining
  tokens (its *branch*) follow, and a branch attends to the prefix and to itself only ("tree"
  training). The hidden state of a shared prefix position receives the gradient of every branch
  that reads it, which is exactly the sum of the unshared copies' gradients.

Why an explicit 4-D mask and not flash-attention varlen or HF's packed-sequence detection: on CPU
(and with ``sdpa``/``eager`` attention on GPU) there is no varlen kernel; HF infers packing from
position ids only when no mask is passed and only for flat concatenation (it cannot express a
shared prefix); a 4-D mask is handed to the attention as is by Llama-family models (masking_utils:
"an already prepared 4D mask ... is returned as-is"), so one mechanism serves plain packing and
trees. :func:`packing_support` says which models qualify; others keep the aligned layout.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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
    role: str = ""

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.response

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
    # Packed layout: [B, R] flat position (row * width + column) in ``input_ids`` of the hidden state
    # that predicts each response token; -1 past a response's end. None: the aligned layout.
    response_index: torch.Tensor | None = None
    sampling: torch.Tensor | None = None  # [B, R] the sampler's log-probs, when every sequence has them

    @property
    def positions(self) -> int:
        """Token positions this micro-batch computes (real and padding)."""
        return int(self.input_ids.numel())


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
        role=str(getattr(t, "role", "")),
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
    _fill_per_token(mb, seqs, r_max, device)
    return mb


def _fill_per_token(mb: MicroBatch, seqs: list[Seq], r_max: int, device: torch.device) -> None:
    """``old``, ``ref`` and ``sampling`` as ``[B, R]`` tensors, where every sequence has them."""
    import torch

    for attr, get in (("old", lambda s: s.old), ("ref", lambda s: s.ref), ("sampling", lambda s: s.sampling_logprobs)):
        vals = [get(s) for s in seqs]
        if vals and all(v is not None for v in vals):
            t = torch.zeros((len(seqs), r_max), dtype=torch.float32)
            for i, v in enumerate(vals):
                t[i, : len(v)] = torch.as_tensor(v, dtype=torch.float32)
            setattr(mb, attr, t.to(device))


def micro_batches(
    seqs: list[Seq], budget: int, pad_id: int, device: torch.device, *, mask_kind: str | None = None,
    shared_prefix: int = 0,
) -> list[MicroBatch]:
    """``seqs`` as micro-batches of at most ``budget`` token positions each: packed rows when
    ``mask_kind`` is set (see :func:`collate_packed`; ``shared_prefix`` > 0 computes prefixes of at
    least that many tokens once), else the aligned layout."""
    if mask_kind is None:
        groups = pack_by_tokens([(len(s.prompt), len(s.response)) for s in seqs], budget)
        return [collate([seqs[i] for i in g], pad_id, device) for g in groups]
    return [collate_packed(rows, pad_id, device, mask_kind) for rows in plan_packed(seqs, budget, shared_prefix)]


# ---------------------------------------------------------------- packed layout
# Rows are filled up to max(longest sequence, min(budget, ROW_TOKENS)) positions. A row's attention
# costs its width squared whatever the mask lets through, so wide rows pay for masked-out pairs;
# narrow rows leave more unfilled and split trees. Measured on the demo's real executor batch
# (SmolLM2-135M, CPU, budget 1024, forward+backward): 256 vs 512 took 35 vs 54 s packed and 12 vs
# 21 s with shared-prefix trees (rows as wide as the longest sequence: 33 s packed).
ROW_TOKENS = 256


@dataclass
class PackUnit:
    """Sequences laid out together in one row: ``members[0].tokens[:prefix_len]`` (shared by every
    member) once, then each member's tokens after the prefix (its branch). A unit of one sequence
    has the whole sequence as its prefix and an empty branch."""

    prefix_len: int
    members: list[Seq]

    @property
    def length(self) -> int:
        return self.prefix_len + sum(m.length - self.prefix_len for m in self.members)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pack_units(seqs: Sequence[Seq], min_shared: int, max_len: int) -> list[PackUnit]:
    """Group ``seqs`` into :class:`PackUnit` s. ``min_shared <= 0``: one unit per sequence. Else
    sequences sorted by their tokens (shared prefixes become neighbours) join the current unit while
    their common prefix has at least ``min_shared`` tokens, the unit's saved positions
    (``(k - 1) * prefix``) do not shrink, and the unit stays within ``max_len`` positions."""
    if min_shared <= 0:
        return [PackUnit(s.length, [s]) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: (seqs[i].tokens, i))
    units: list[PackUnit] = []
    cur: list[Seq] = []
    p = 0
    for i in order:
        s = seqs[i]
        if cur:
            shared = _common_prefix(cur[0].tokens, s.tokens, min(p, s.length))
            k = len(cur)
            new_len = shared + sum(m.length - shared for m in cur) + s.length - shared
            if shared >= min_shared and k * shared >= (k - 1) * p and new_len <= max_len:
                cur.append(s)
                p = shared
                continue
            units.append(PackUnit(p, cur))
        cur, p = [s], s.length
    if cur:
        units.append(PackUnit(p, cur))
    return units


def plan_packed(seqs: Sequence[Seq], budget: int, shared_prefix: int = 0) -> list[list[list[PackUnit]]]:
    """Micro-batches of rows of units: units first-fit-decreasing into rows of
    ``max(longest sequence, min(budget, ROW_TOKENS))`` positions (a longer unit gets a row of its
    own), then consecutive rows while ``rows * widest row <= budget`` (at least one row each)."""
    if not seqs:
        return []
    cap = max(max(s.length for s in seqs), min(budget, ROW_TOKENS))
    units = pack_units(seqs, shared_prefix, cap)
    units.sort(key=lambda u: -u.length)  # stable: ties keep the deterministic unit order
    rows: list[list[PackUnit]] = []
    fill: list[int] = []
    for u in units:
        for k, f in enumerate(fill):
            if f + u.length <= cap:
                rows[k].append(u)
                fill[k] += u.length
                break
        else:
            rows.append([u])
            fill.append(u.length)
    order = sorted(range(len(rows)), key=lambda k: -fill[k])
    batches: list[list[list[PackUnit]]] = []
    cur: list[list[PackUnit]] = []
    width = 0
    for k in order:
        if cur and (len(cur) + 1) * max(width, fill[k]) > budget:
            batches.append(cur)
            cur, width = [], 0
        cur.append(rows[k])
        width = max(width, fill[k])
    if cur:
        batches.append(cur)
    return batches


def collate_packed(rows: list[list[PackUnit]], pad_id: int, device: torch.device, mask_kind: str) -> MicroBatch:
    """Packed rows (see module doc). ``mask_kind``: ``"bool"`` (True = may attend; what ``sdpa``
    takes) or ``"additive"`` (0 / float32 min added to the scores; what ``eager`` attention adds).
    Padding at a row's end forms its own block, so every query attends to at least itself."""
    import torch

    width = max(sum(u.length for u in row) for row in rows)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), int(pad_id), dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    block = torch.full((n_rows, width), -1, dtype=torch.long)  # unit within the row; -1: padding
    branch = torch.zeros((n_rows, width), dtype=torch.long)  # 0: a unit's prefix; k: its k-th member's branch
    seqs: list[Seq] = []
    index: list[torch.Tensor] = []
    for r, row in enumerate(rows):
        col = 0
        for u, unit in enumerate(row):
            p = unit.prefix_len
            prefix_at = r * width + col
            ids[r, col : col + p] = torch.as_tensor(unit.members[0].tokens[:p], dtype=torch.long)
            pos[r, col : col + p] = torch.arange(p)
            block[r, col : col + p] = u
            col += p
            for b, m in enumerate(unit.members, start=1):
                rest = m.tokens[p:]
                n = len(rest)
                if n:
                    ids[r, col : col + n] = torch.as_tensor(rest, dtype=torch.long)
                    pos[r, col : col + n] = torch.arange(p, p + n)
                    block[r, col : col + n] = u
                    branch[r, col : col + n] = b
                # response token j is predicted at position len(prompt) - 1 + j of the sequence
                at = torch.arange(len(m.prompt) - 1, m.length - 1)
                index.append(torch.where(at < p, prefix_at + at, r * width + col + (at - p)))
                seqs.append(m)
                col += n
        pos[r, col:] = torch.arange(width - col)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same_block = block[:, :, None] == block[:, None, :]
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    allowed = (same_block & visible & causal)[:, None]  # [rows, 1, width, width]
    if mask_kind == "bool":
        attn: torch.Tensor = allowed
    elif mask_kind == "additive":
        attn = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    else:
        raise ValueError(f"mask_kind must be 'bool' or 'additive', got {mask_kind!r}")
    b, r_max = len(seqs), max(len(s.response) for s in seqs)
    resp = torch.full((b, r_max), int(pad_id), dtype=torch.long)
    mask = torch.zeros((b, r_max), dtype=torch.float32)
    where = torch.full((b, r_max), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.response)
        if n:
            resp[i, :n] = torch.as_tensor(s.response, dtype=torch.long)
            mask[i, :n] = torch.as_tensor(s.mask, dtype=torch.float32)
            where[i, :n] = index[i]
    mb = MicroBatch(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=pos.to(device),
        mask=mask.to(device),
        response_ids=resp.to(device),
        advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32, device=device),
        seqs=seqs,
        response_index=where.to(device),
    )
    _fill_per_token(mb, seqs, r_max, device)
    return mb


def packing_support(lm: Any) -> str | None:
    """``None`` when ``lm`` computes a packed micro-batch exactly as its sequences alone, else why not.

    Qualifies: an attention implementation that applies a given 4-D mask as is (``sdpa``,
    ``eager``), no sliding window (a 4-D mask replaces the model's own window mask), and positions
    from position ids (rotary or learned; not ALiBi, whose bias follows the row).
    """
    cfg = getattr(lm, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} does not take a 4-D mask as is (sdpa and eager do)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if getattr(cfg, "alibi", False) or getattr(cfg, "position_embedding_type", None) == "alibi":
        return "ALiBi biases follow row positions, not per-sequence position ids"
    try:
        decoder = lm.get_decoder()
        params = inspect.signature(decoder.forward).parameters
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return "the model has no decoder to run on packed rows"
    if "position_ids" not in params:
        return "the decoder takes no position ids (each packed sequence must restart at 0)"
    return None


def mask_kind_for(lm: Any) -> str:
    """The 4-D mask form ``lm``'s attention takes (see :func:`collate_packed`)."""
    return "additive" if getattr(getattr(lm, "config", None), "_attn_implementation", None) == "eager" else "bool"
