"""From transitions to micro-batches: the learner's view of a sequence, the plan of an update's
optimizer steps, the batch counts its loss is normalised by, and token budgets.

Two layouts of a micro-batch, both giving per-sequence response tensors ``[B, R]`` to the loss:

* **aligned** (:func:`collate`): ``[left pad | prompt | response | right pad]``, one sequence per
  row. Every row costs the longest prompt plus the longest response of the micro-batch, so a batch
  of mixed lengths trains on padding (a real executor batch: 2221 tokens in 4092 padded positions).
* **packed** (:func:`collate_packed`): several sequences concatenated in one row, each with its own
  position ids (0, 1, ...) and a 4-D block-diagonal causal attention mask that keeps them apart.
  Sequences that share prefixes (the N executions of one design, the M designs of one prompt,
  turns of one conversation) can form one :class:`PackUnit`, laid out as their token trie
  ("tree" training): every shared segment once, in depth-first order, each position attending to
  its own segment (causally) and to the segments on its path from the root only. A shared
  position's hidden state receives the gradient of every sequence that reads it, which is exactly
  the sum of the unshared copies' gradients.

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
# narrow rows leave more unfilled. Measured on the demo's real executor batch (SmolLM2-135M, CPU,
# budget 1024, forward+backward, no shared prefixes): 35 s at 256, 54 s at 512, 33 s with rows as
# wide as the longest sequence (155).
ROW_TOKENS = 256
# A trie may be wider than a row: its masked-out pairs are only between different branches, so one
# row holding k sequences' trie costs no more attention than the k sequences alone, and each shared
# prefix is one set of positions. The demo's designer batch (6 designs of one 148-token prompt):
# 414 positions for 1232 tokens with tries up to 1024 positions, 988 with two-level trees of 256.
TREE_TOKENS = 1024


@dataclass
class PackUnit:
    """Sequences laid out together in one row as their token trie (see module doc): ``members``
    sorted by tokens, ``length`` positions (each shared prefix counted once). A unit of one
    sequence is that sequence."""

    members: list[Seq]
    length: int


def _common_prefix(a: list[int], b: list[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pack_units(seqs: Sequence[Seq], min_shared: int, max_len: int) -> list[PackUnit]:
    """Group ``seqs`` into :class:`PackUnit` s. ``min_shared <= 0``: one unit per sequence. Else
    the sequences sorted by their tokens (shared prefixes become neighbours) are cut into units
    where a neighbour shares fewer than ``min_shared`` tokens or the unit would exceed ``max_len``
    positions. In sorted order a unit's trie has ``len(first) + sum(len(s) - lcp(previous, s))``
    positions, so each step adds exactly what the sequence does not share."""
    if min_shared <= 0:
        return [PackUnit([s], s.length) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: (seqs[i].tokens, i))
    units: list[PackUnit] = []
    cur: list[Seq] = []
    size = 0
    for i in order:
        s = seqs[i]
        if cur:
            shared = _common_prefix(cur[-1].tokens, s.tokens)
            if shared >= min_shared and size + s.length - shared <= max_len:
                cur.append(s)
                size += s.length - shared
                continue
            units.append(PackUnit(cur, size))
        cur, size = [s], s.length
    if cur:
        units.append(PackUnit(cur, size))
    return units


@dataclass
class _Segment:
    """A trie node: tokens ``[start, end)`` of ``owner``'s sequence (shared by its subtree)."""

    owner: int
    start: int
    end: int
    parent: int


def trie_segments(members: Sequence[Seq]) -> tuple[list[_Segment], list[list[int]]]:
    """The radix trie of ``members`` (sorted by tokens, sharing at least their first token when
    more than one): its segments in depth-first pre-order, and each member's path of segment ids
    from the root to where the member ends."""
    toks = [m.tokens for m in members]
    segments: list[_Segment] = []
    paths: list[list[int]] = [[] for _ in members]
    # (member indices sharing toks[:depth], depth, parent segment, path to the parent)
    stack: list[tuple[list[int], int, int, list[int]]] = [(list(range(len(members))), 0, -1, [])]
    while stack:
        idx, depth, parent, path = stack.pop()
        end = _common_prefix(toks[idx[0]], toks[idx[-1]])  # sorted: the group's common prefix
        seg = len(segments)
        segments.append(_Segment(idx[0], depth, end, parent))
        here = [*path, seg]
        groups: list[list[int]] = []
        for i in idx:
            if len(toks[i]) == end:
                paths[i] = here
            elif groups and toks[groups[-1][0]][end] == toks[i][end]:
                groups[-1].append(i)
            else:
                groups.append([i])
        stack.extend((g, end, seg, here) for g in reversed(groups))  # popped in sorted order
    return segments, paths


def plan_packed(seqs: Sequence[Seq], budget: int, shared_prefix: int = 0) -> list[list[list[PackUnit]]]:
    """Micro-batches of rows of units. Units (trees up to ``max(longest sequence, min(budget,
    TREE_TOKENS))`` positions) go first-fit-decreasing into rows of ``max(longest sequence,
    min(budget, ROW_TOKENS))`` positions; a longer unit (a tree) gets a row of its own. Then
    consecutive rows while ``rows * widest row <= budget`` (at least one row each)."""
    if not seqs:
        return []
    longest = max(s.length for s in seqs)
    cap = max(longest, min(budget, ROW_TOKENS))
    units = pack_units(seqs, shared_prefix, max(longest, min(budget, TREE_TOKENS)))
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
        # a row padded to more than twice its fill starts a micro-batch of narrower rows instead
        if cur and ((len(cur) + 1) * max(width, fill[k]) > budget or 2 * fill[k] < width):
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
    Padding at a row's end forms its own block, so every query attends to at least itself.

    Mask: query ``q`` may attend key ``k`` when both are in the same unit, ``k``'s trie segment is
    on ``q``'s path (its pre-order number ``enter`` is at most ``q``'s and its subtree's last,
    ``leave``, at least ``q``'s) and ``k <= q``. Position ids are token depths in the sequences.
    """
    import torch

    width = max(sum(u.length for u in row) for row in rows)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), int(pad_id), dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    block = torch.full((n_rows, width), -1, dtype=torch.long)  # unit within the row; -1: padding
    enter = torch.zeros((n_rows, width), dtype=torch.long)
    leave = torch.zeros((n_rows, width), dtype=torch.long)
    seqs: list[Seq] = []
    index: list[torch.Tensor] = []
    for r, row in enumerate(rows):
        col = 0
        for u, unit in enumerate(row):
            segments, paths = trie_segments(unit.members)
            last = list(range(len(segments)))
            for k in range(len(segments) - 1, 0, -1):  # reverse pre-order: children before parents
                par = segments[k].parent
                last[par] = max(last[par], last[k])
            at_col = []
            for k, seg in enumerate(segments):
                n = seg.end - seg.start
                at_col.append(col)
                ids[r, col : col + n] = torch.as_tensor(unit.members[seg.owner].tokens[seg.start : seg.end])
                pos[r, col : col + n] = torch.arange(seg.start, seg.end)
                block[r, col : col + n] = u
                enter[r, col : col + n] = k
                leave[r, col : col + n] = last[k]
                col += n
            for m, path in zip(unit.members, paths, strict=True):
                # row column of each of the member's tokens, then the predictor of response token j
                # (position len(prompt) - 1 + j of the sequence)
                where = torch.cat([at_col[k] + torch.arange(segments[k].end - segments[k].start) for k in path])
                index.append(r * width + where[len(m.prompt) - 1 : m.length - 1])
                seqs.append(m)
        pos[r, col:] = torch.arange(width - col)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same_block = block[:, :, None] == block[:, None, :]
    on_path = (enter[:, None, :] <= enter[:, :, None]) & (enter[:, :, None] <= leave[:, None, :])
    allowed = (same_block & on_path & causal)[:, None]  # [rows, 1, width (query), width (key)]
    if mask_kind == "bool":
        attn: torch.Tensor = allowed
    elif mask_kind == "additive":
        attn = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    else:
        raise ValueError(f"mask_kind must be 'bool' or 'additive', got {mask_kind!r}")
    b, r_max = len(seqs), max(len(s.response) for s in seqs)
    resp = torch.full((b, r_max), int(pad_id), dtype=torch.long)
    mask = torch.zeros((b, r_max), dtype=torch.float32)
    where_all = torch.full((b, r_max), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.response)
        if n:
            resp[i, :n] = torch.as_tensor(s.response, dtype=torch.long)
            mask[i, :n] = torch.as_tensor(s.mask, dtype=torch.float32)
            where_all[i, :n] = index[i]
    mb = MicroBatch(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=pos.to(device),
        mask=mask.to(device),
        response_ids=resp.to(device),
        advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32, device=device),
        seqs=seqs,
        response_index=where_all.to(device),
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
