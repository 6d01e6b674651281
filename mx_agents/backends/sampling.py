"""Next-token selection for a batch of rows, each with its own sampling parameters and RNG.

What ``logprobs`` mean, for every backend of this package that computes them itself:

    logprob(token) = log_softmax(logits / T)[token]

the log-probability of the chosen token under the model's distribution at the request's temperature
``T``, *before* top-k / top-p truncation. A learner that divides its logits by the same ``T`` gets the
same numbers when it re-scores the sequence (``HFBackend.score`` does exactly that), which is what a
PPO/GRPO importance ratio needs. For greedy decoding (``T == 0``) the logprob is taken at ``T = 1``
(the untempered model). Truncation by top-k/top-p is not folded into the reported value because a
learner cannot reproduce it from logits alone and a truncated distribution gives ``-inf`` ratios for
tokens outside the nucleus under the updated policy. The repetition penalty is a filter of the same
kind (it depends on the row's history, which the learner's forward pass does not apply): it changes
which token is drawn (greedy rows included), not the reported logprob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mx_agents.backends.base import Completion, SamplingParams

if TYPE_CHECKING:
    import torch

GREEDY_EPS = 1e-5  # temperatures at or below this decode greedily


def validate_params(params: SamplingParams) -> None:
    """Raise ``ValueError`` with a precise message for out-of-range sampling parameters."""
    if not params.temperature >= 0.0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0, got {params.temperature!r}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p!r}")
    if not isinstance(params.top_k, int) or params.top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {params.top_k!r}")
    if not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {params.max_new_tokens!r}")
    if not params.repetition_penalty > 0.0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {params.repetition_penalty!r}")
    if params.max_prompt_tokens is not None and (
        not isinstance(params.max_prompt_tokens, int) or params.max_prompt_tokens < 1
    ):
        raise ValueError(f"max_prompt_tokens must be an int >= 1 or None, got {params.max_prompt_tokens!r}")
    if isinstance(params.stop, str) or any(not isinstance(s, str) or not s for s in params.stop):
        raise ValueError(f"stop must be a tuple of non-empty strings, got {params.stop!r}")


def prompt_too_long(ids: Sequence[int], params: SamplingParams) -> bool:
    return params.max_prompt_tokens is not None and len(ids) > params.max_prompt_tokens


def over_prompt_limit(prompt_ids: Sequence[int], params: SamplingParams, metadata: dict[str, Any],
                      n_tokens: int | None = None, logprobs: list[float] | None = None) -> Completion:
    """The reply every backend gives a prompt over ``params.max_prompt_tokens``: empty, ``"length"``,
    with the prompt's token count in the metadata (``n_tokens`` when the ids are not known here)."""
    meta = {**metadata, "prompt_tokens": len(prompt_ids) if n_tokens is None else n_tokens,
            "max_prompt_tokens": params.max_prompt_tokens}
    return Completion(text="", prompt_ids=[int(t) for t in prompt_ids], response_ids=[],
                      logprobs=[] if logprobs is None else logprobs, finish_reason="length", metadata=meta)


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature <= GREEDY_EPS


def select_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    histories: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` (shape ``[B, V]``) and return ``(tokens, logprobs)``.

    Row ``i`` uses ``params[i]`` and draws from ``generators[i]`` only, so a request's sample does not
    depend on which other requests share its batch. ``logprobs`` follow the module docstring.
    ``histories[i]``: the token ids row ``i`` has seen (prompt and reply so far), needed by a
    ``repetition_penalty`` other than 1.
    """
    import torch

    logits = logits.float()
    batch = logits.shape[0]
    temps = torch.tensor(
        [1.0 if is_greedy(p) else p.temperature for p in params], dtype=logits.dtype, device=logits.device
    )
    scaled = logits / temps[:, None]
    logprobs_all = torch.log_softmax(scaled, dim=-1)
    penalised = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if penalised:
        if histories is None:
            raise ValueError("repetition_penalty needs the rows' token histories")
        logits = logits.clone()
        for i in penalised:
            seen = torch.tensor(sorted(set(histories[i])), dtype=torch.long, device=logits.device)
            if seen.numel():
                vals = logits[i, seen]
                pen = params[i].repetition_penalty
                logits[i, seen] = torch.where(vals > 0, vals / pen, vals * pen)
        scaled = logits / temps[:, None]

    tokens = torch.empty(batch, dtype=torch.long, device=logits.device)
    greedy_rows = [i for i, p in enumerate(params) if is_greedy(p)]
    sample_rows = [i for i, p in enumerate(params) if not is_greedy(p)]
    if greedy_rows:
        idx = torch.tensor(greedy_rows, device=logits.device)
        tokens[idx] = logits[idx].argmax(dim=-1)
    if sample_rows:
        idx = torch.tensor(sample_rows, device=logits.device)
        probs = _truncated_probs(scaled[idx], [params[i] for i in sample_rows])
        for j, i in enumerate(sample_rows):
            tokens[i] = torch.multinomial(probs[j], 1, generator=generators[i])[0]
    chosen = logprobs_all.gather(1, tokens[:, None])[:, 0]
    return tokens, chosen


def _truncated_probs(scaled: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Softmax of temperature-scaled logits after each row's top-k and top-p filtering."""
    import torch

    vocab = scaled.shape[-1]
    if all(p.top_k in (0,) or p.top_k >= vocab for p in params) and all(p.top_p >= 1.0 for p in params):
        return torch.softmax(scaled, dim=-1)
    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=scaled.device)
    remove = ranks >= top_k[:, None]
    sorted_probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    top_p = torch.tensor([p.top_p for p in params], dtype=scaled.dtype, device=scaled.device)
    # Drop a token when the mass strictly before it already reaches top_p; the top token always stays.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove |= mass_before >= top_p[:, None]
    remove[:, 0] = False
    filtered = sorted_logits.masked_fill(remove, float("-inf"))
    out = torch.full_like(scaled, float("-inf")).scatter(1, sorted_idx, filtered)
    return torch.softmax(out, dim=-1)
