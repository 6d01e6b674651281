"""One left-padding collate for every place that batches token sequences for a causal LM.

Generation (prefill of prompts), scoring (prompt + response) and the learner (prompt, then response)
all need the same thing: rows aligned on one column, an attention mask that is 1 on real tokens, and
position ids that count only real tokens (so a padded row computes exactly what it would alone).
Keeping the layout in one function keeps the learner's log-probs and the sampler's on the same tokens
comparable bit for bit.

Layout of :func:`left_pad` with ``tails``::

    [left pad | head (prompt) | tail (response) | right pad]

Every head ends at column ``head_width``, so all tails start at one column and a caller needs the
logits of only the last ``tail_width + 1`` positions. Without ``tails`` it is plain left padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # [B, head_width + tail_width] long
    attention_mask: torch.Tensor  # [B, W] long, 1 on real tokens
    position_ids: torch.Tensor  # [B, W] long, 0 at each row's first real token
    head_width: int
    tail_width: int


def left_pad(
    heads: Sequence[Sequence[int]],
    pad_id: int,
    tails: Sequence[Sequence[int]] | None = None,
    device: str | torch.device | None = None,
) -> PaddedBatch:
    """Collate ``heads`` left-padded to one width, each followed by its tail (right-padded)."""
    import torch

    if not heads:
        raise ValueError("left_pad needs at least one row")
    if tails is not None and len(tails) != len(heads):
        raise ValueError(f"{len(heads)} heads but {len(tails)} tails")
    hw = max(len(h) for h in heads)
    tw = max((len(t) for t in tails), default=0) if tails is not None else 0
    b = len(heads)
    ids = torch.full((b, hw + tw), int(pad_id), dtype=torch.long)
    attn = torch.zeros((b, hw + tw), dtype=torch.long)
    for i, h in enumerate(heads):
        n = len(h)
        if n:
            ids[i, hw - n : hw] = torch.as_tensor(list(h), dtype=torch.long)
        r = len(tails[i]) if tails is not None else 0
        if r:
            ids[i, hw : hw + r] = torch.as_tensor(list(tails[i]), dtype=torch.long)  # type: ignore[index]
        attn[i, hw - n : hw + r] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    if device is not None:
        ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
    return PaddedBatch(ids, attn, pos, hw, tw)
