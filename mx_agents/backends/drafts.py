"""N-gram drafts for speculative decoding in the HF step engine, and the exact verification rule.

Why: on a CPU a decode step of the 135M demo model costs about as much for 6 x 9 tokens as for 6 x 1
(the weights are streamed once either way), and RL rollouts repeat themselves. The designer's M
scripts of a step are near copies of the few designs it has learnt; an executor copies the task's
expression into its tool call. So a draft read off text already seen is often right: replayed on the
demo's recorded rollouts, drafts of up to 8 tokens (:class:`NgramDrafter`, ``min_match=3``) give the
designer 6.0 tokens per verify pass and the executor 2.3 (``benchmarks/results/rl_step_time.md``).

Where drafts come from (:class:`NgramDrafter`): the last ``min_match`` tokens of a row are looked up in
its own prompt and reply (prompt lookup), then in the prompts and replies the engine finished recently
(the suffix history); the continuation after the best match (the longest agreement further back) is
the draft.

**Exactness and reproducibility.** A draft only changes how many tokens one forward pass checks,
never what is sampled. At every position of a reply the engine draws one uniform ``u`` from the
row's generator and takes the token at quantile ``u`` of the row's distribution (temperature, then
top-k / top-p, the distribution :func:`~mx_agents.backends.sampling.select_tokens` draws from); a
draft token is accepted exactly when it is that token (:func:`verify_draft`). Each token is
therefore distributed as the model's (a draft token is accepted with probability ``p(d)``, the best a
point-mass draft can do, as in the speculative sampling of Leviathan et al. / Chen et al., 2023), and
beyond that the reply is the one the same sampler gives one token per pass: what was drafted, how
many columns a pass checked and which other rows shared it change nothing (up to float round-off
between batch shapes, as for any batching). Greedy rows accept a draft token only when it is the
argmax. Reported logprobs follow the :mod:`~mx_agents.backends.sampling` convention. So the history
may hold other episodes' text: none of it reaches a reply that the model would not have sampled
with the same random draws anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mx_agents.backends.base import SamplingParams
from mx_agents.backends.sampling import _truncated_probs, is_greedy

if TYPE_CHECKING:
    import torch

__all__ = ["NgramDrafter", "PassCost", "RowIndex", "verify_draft"]


class RowIndex:
    """Incremental n-gram index of one row's tokens (prompt, then reply as it grows):
    ``ngram -> end positions`` (most recent last)."""

    def __init__(self, n: int, tokens: Sequence[int] = ()) -> None:
        self.n = n
        self.tokens: list[int] = []
        self.where: dict[tuple[int, ...], list[int]] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        n, seq = self.n, self.tokens
        for t in tokens:
            seq.append(int(t))
            if len(seq) >= n:
                self.where.setdefault(tuple(seq[-n:]), []).append(len(seq))


class NgramDrafter:
    """Drafts of up to ``max_draft`` tokens for a row from n-gram matches of its last ``min_match``
    tokens: first in the row's own tokens, then in the last ``history_tokens`` tokens of finished
    sequences (:meth:`remember`). ``max_draft = 0`` drafts nothing."""

    #: how far back a match is compared to rank candidates, and candidates looked at per lookup
    LOOKBACK = 16
    CANDIDATES = 16

    def __init__(self, max_draft: int = 8, min_match: int = 3, history_tokens: int = 200_000) -> None:
        if max_draft < 0:
            raise ValueError(f"max_draft must be >= 0, got {max_draft}")
        if min_match < 1:
            raise ValueError(f"min_match must be >= 1, got {min_match}")
        self.max_draft = max_draft
        self.min_match = min_match
        self.history_tokens = history_tokens
        self._seqs: OrderedDict[int, list[int]] = OrderedDict()
        self._where: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        self._held = 0
        self._next = 0
        self._indexed = 0  # (seq, end) entries in _where, live or evicted

    def row_index(self, prompt_ids: Sequence[int]) -> RowIndex:
        """A new row's own index (extend it with each token the row emits)."""
        return RowIndex(self.min_match, prompt_ids)

    def remember(self, tokens: Sequence[int]) -> None:
        """Add a finished sequence (prompt and reply) to the history; the oldest leave past the budget."""
        n = self.min_match
        if self.max_draft == 0 or len(tokens) <= n:
            return
        sid, self._next = self._next, self._next + 1
        seq = [int(t) for t in tokens]
        self._seqs[sid] = seq
        self._held += len(seq)
        self._index(sid, seq)
        while self._held > self.history_tokens and len(self._seqs) > 1:
            _, old = self._seqs.popitem(last=False)
            self._held -= len(old)
        if self._indexed > 4 * max(self._held, 1):  # evicted entries dominate: rebuild the index
            self._where, self._indexed = {}, 0
            for s, q in self._seqs.items():
                self._index(s, q)

    def _index(self, sid: int, seq: list[int]) -> None:
        """Index every n-gram of ``seq`` that has a continuation (not the one at its very end)."""
        n = self.min_match
        for end in range(n, len(seq)):
            self._where.setdefault(tuple(seq[end - n : end]), []).append((sid, end))
        self._indexed += len(seq) - n

    def draft(self, own: RowIndex, limit: int) -> list[int]:
        """Up to ``min(limit, max_draft)`` tokens that may follow ``own.tokens``."""
        k = min(limit, self.max_draft)
        seq = own.tokens
        n = self.min_match
        if k <= 0 or len(seq) < n:
            return []
        key = tuple(seq[-n:])
        # own tokens first (earlier occurrences: the last one ends at len(seq) itself, no continuation),
        # then the history's sequences that are still held
        candidates = [(seq, end) for end in reversed(own.where.get(key, [])[-self.CANDIDATES - 1 :]) if end < len(seq)]
        candidates += [(self._seqs[sid], end) for sid, end in reversed(self._where.get(key, [])[-self.CANDIDATES :])
                       if sid in self._seqs]
        best: list[int] = []
        best_rank = (-1, -1)
        for other, end in candidates:
            cont = other[end : end + k]
            rank = (_agree(seq, other, end, n), len(cont))
            if rank > best_rank:
                best, best_rank = cont, rank
        return list(best)


class PassCost:
    """The time of a verify pass as ``base + per_column * rows * columns``, fitted by least squares to
    the engine's last ``window`` passes, and the pass width that maximises expected tokens per second.

    Why fitted: on a 2-core CPU a pass of 6 rows costs 113 ms for 1 column and 254 ms for 9 (the
    fixed part, streaming the weights, is worth ~32 row-columns); on a GPU the extra columns are
    nearly free. Until the passes vary enough to fit, ``prior_ratio`` (base / per_column) stands in.
    """

    def __init__(self, prior_ratio: float = 32.0, window: int = 256) -> None:
        self.prior_ratio = prior_ratio
        self.window = window
        self._obs: list[tuple[float, float]] = []

    def observe(self, row_columns: int, seconds: float) -> None:
        self._obs.append((float(row_columns), float(seconds)))
        if len(self._obs) > self.window:
            del self._obs[: len(self._obs) - self.window]

    def ratio(self) -> float:
        """Fitted ``base / per_column`` (row-columns a pass's fixed cost is worth)."""
        obs = self._obs
        if len(obs) < 8:
            return self.prior_ratio
        mx = sum(x for x, _ in obs) / len(obs)
        my = sum(y for _, y in obs) / len(obs)
        var = sum((x - mx) ** 2 for x, _ in obs)
        if var < 1e-9 * len(obs) or mx <= 0:
            return self.prior_ratio
        slope = sum((x - mx) * (y - my) for x, y in obs) / var
        base = my - slope * mx
        if slope <= 0:
            return 1e6  # extra columns cost nothing measurable: check every draft token
        return min(max(base / slope, 1.0), 1e6)

    def best_width(self, draft_lengths: Sequence[int], accept: Sequence[float]) -> int:
        """Columns (1 + draft tokens checked per row) for a pass over rows with these draft lengths
        and per-token acceptance rates: the width with the most expected tokens per unit of time, a row
        emitting ``1 + a + a^2 + ... + a^k`` tokens for ``k`` draft tokens checked."""
        longest = max(draft_lengths, default=0)
        if longest == 0:
            return 1
        ratio, rows = self.ratio(), len(draft_lengths)
        best, best_rate = 1, -1.0
        for cols in range(1, longest + 2):
            tokens = 0.0
            for k, a in zip(draft_lengths, accept, strict=True):
                k = min(k, cols - 1)
                a = min(max(a, 0.0), 0.999)
                tokens += (1.0 - a ** (k + 1)) / (1.0 - a)
            rate = tokens / (ratio + rows * cols)
            if rate > best_rate:
                best, best_rate = cols, rate
        return best


def _agree(seq: Sequence[int], other: Sequence[int], end: int, n: int) -> int:
    """How many tokens just before ``seq``'s last ``n`` agree with those before ``other[end - n : end]``
    (the same n-gram), up to :attr:`NgramDrafter.LOOKBACK`: a longer agreement ranks a match higher."""
    m = 0
    a, b = len(seq) - n - 1, end - n - 1
    while m < NgramDrafter.LOOKBACK and a - m >= 0 and b - m >= 0 and seq[a - m] == other[b - m]:
        m += 1
    return m


#: candidates looked at before a top-p distribution falls back to sorting the whole vocabulary
NUCLEUS_CANDIDATES = 64


def _support(scaled: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The row's sampling distribution after top-k / top-p, exactly as
    :func:`~mx_agents.backends.sampling._truncated_probs` computes it, as ``(token ids, probabilities)``
    over its support (``ids`` ``None``: dense over the vocabulary).

    Why not ``_truncated_probs``: it sorts the vocabulary (5 ms for 49k tokens on the 2-core CPU) and a
    verify step needs one distribution per checked position. The nucleus of a language model's
    distribution is nearly always within its top ``NUCLEUS_CANDIDATES`` tokens, which ``topk`` finds
    in 0.1 ms; when it is not, the full sort decides."""
    import torch

    vocab = scaled.shape[-1]
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    if top_k == 0 and params.top_p >= 1.0:
        return None, torch.softmax(scaled, dim=-1)
    m = min(vocab, top_k or NUCLEUS_CANDIDATES)
    vals, ids = scaled.topk(m)
    probs = torch.softmax(vals, dim=-1) if top_k else torch.exp(vals - torch.logsumexp(scaled, dim=-1))
    if params.top_p < 1.0:
        cums = probs.cumsum(dim=-1)
        if not top_k and m < vocab and float(cums[-1]) < params.top_p:
            return None, _truncated_probs(scaled[None], [params])[0]  # a flat distribution: sort it all
        keep = (cums - probs) < params.top_p
        keep[0] = True
        ids, probs = ids[keep], probs[keep]
    return ids, probs / probs.sum()


def _inverse_cdf(ids: torch.Tensor | None, probs: torch.Tensor, u: float) -> int:
    """The token at quantile ``u`` in [0, 1) of the distribution ``(ids, probs)``."""
    import torch

    cums = probs.double().cumsum(dim=-1)
    j = int(torch.searchsorted(cums, torch.tensor([u * float(cums[-1])], dtype=torch.float64), right=True)[0])
    j = min(j, probs.shape[-1] - 1)
    while float(probs[j]) <= 0.0 and j > 0:  # a quantile on a zero-width step belongs to the token before
        j -= 1
    return j if ids is None else int(ids[j])


def verify_draft(
    logits: torch.Tensor,
    draft: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator,
) -> tuple[list[int], list[float]]:
    """One row's verify step: ``logits`` ``[len(draft) + 1, V]`` (position ``j`` predicts the token
    after the pending one and ``draft[:j]``). Each position draws one uniform from ``generator`` and
    takes the token at that quantile of the row's distribution (greedy: the argmax); a draft token is
    accepted when it is that token, and the first token that differs from the draft ends the step. So
    the tokens, and the generator's state after them, are those of decoding one token per pass with
    the same generator, whatever was drafted (module docstring). Returns the tokens and their logprobs."""
    import torch

    logits = logits.float()
    greedy = is_greedy(params)
    scaled = logits if greedy else logits / params.temperature
    out: list[int] = []
    for j in range(len(draft) + 1):
        if greedy:
            x = int(logits[j].argmax())
        else:
            ids, probs = _support(scaled[j], params)
            x = _inverse_cdf(ids, probs, float(torch.rand((), generator=generator, dtype=torch.float64)))
        out.append(x)
        if j == len(draft) or x != int(draft[j]):
            break
    # logprob(token) = log_softmax(logits / T)[token] at its position (sampling's convention)
    rows = scaled[: len(out)]
    picked = torch.tensor(out, device=logits.device)
    lps = rows.gather(1, picked[:, None])[:, 0] - torch.logsumexp(rows, dim=-1)
    return out, lps.tolist()
