"""Per-token log-probs (and entropies) of responses without materialising full fp32 logits.

The old path ran the LM head on every response position at once, upcast the ``[B, R, V]`` logits to
fp32 and kept them (and a log-softmax copy, and an entropy copy) for backward: about three fp32
copies of ``B * R * V`` floats, 5 GB for 8k response tokens of a 151k vocabulary.

:func:`chunked_token_logprobs` runs the LM head on ``chunk`` positions at a time under activation
checkpointing: forward keeps only the hidden states of the chunk (``chunk * H``), backward recomputes
the chunk's logits. Peak extra memory is one chunk's fp32 logits (``chunk * V * 4`` bytes, twice
while the softmax is formed), independent of the response length. Entropy is computed in the same
chunk, and only with a graph when its coefficient is non-zero.

:class:`ResponseScorer` wraps a causal LM so the decoder and the chunked head run inside one
``forward``: FSDP2 gathers the root's parameters (embeddings, final norm, LM head) for exactly that
call, which it would not do for a bare ``lm.lm_head(...)`` from outside.
"""

from __future__ import annotations

from typing import Any

import torch  # this module defines an nn.Module subclass: torch is needed at import time


def full_token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference computation on already-scaled fp32 logits ``[B, R, V]``."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logprobs, entropy


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 when it is in a lower precision (an fp64 model keeps fp64 log-probs)."""
    return x if x.dtype == torch.float64 else x.float()


def _chunk_stats(
    head: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor, with_entropy: bool,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = at_least_fp32(head(hidden))
    if isinstance(temperature, torch.Tensor):  # one temperature per position of this chunk
        logits = logits / temperature.unsqueeze(-1)
    elif temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logprobs, logprobs.new_zeros(())
    src = logits if entropy_grad else logits.detach()
    lse_e = lse if entropy_grad else lse.detach()
    probs = torch.exp(src - lse_e.unsqueeze(-1))
    entropy = lse_e - (probs * src).sum(-1)
    return logprobs, entropy


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: Any,
    targets: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    chunk: int = 1024,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, R]`` of ``targets`` under ``head(hidden) / temperature``, ``chunk`` positions
    at a time (see module doc); entropies ``[B, R]`` when ``with_entropy``."""
    from torch.utils.checkpoint import checkpoint

    b, r, h = hidden.shape
    flat_h = hidden.reshape(b * r, h)
    flat_t = targets.reshape(b * r)
    if isinstance(temperature, torch.Tensor):  # per sequence [B] or per position [B, R] -> [B * R]
        temperature = temperature.to(flat_h.device, torch.float32)
        if temperature.dim() == 1:
            temperature = temperature[:, None]
        temperature = temperature.expand(b, r).reshape(b * r)
    use_ckpt = torch.is_grad_enabled() and flat_h.requires_grad
    lps, ents = [], []
    step = max(int(chunk), 1)
    for s in range(0, b * r, step):
        hc, tc = flat_h[s : s + step], flat_t[s : s + step]
        tmp = temperature[s : s + step] if isinstance(temperature, torch.Tensor) else temperature
        if use_ckpt:
            lp, ent = checkpoint(
                _chunk_stats, head, hc, tc, tmp, with_entropy, entropy_grad, use_reentrant=False
            )
        else:
            lp, ent = _chunk_stats(head, hc, tc, tmp, with_entropy, entropy_grad)
        lps.append(lp)
        ents.append(ent)
    logprobs = torch.cat(lps).reshape(b, r) if lps else hidden.new_zeros((b, r), dtype=torch.float32)
    if not with_entropy:
        return logprobs, None
    entropy = torch.cat(ents).reshape(b, r) if ents else logprobs.new_zeros((b, r))
    return logprobs, entropy


def scatter_rows(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values`` (one per True of ``valid``, row-major) as a ``valid``-shaped tensor, 0 elsewhere
    (differentiable: the gradient flows back to ``values``)."""
    out = values.new_zeros(valid.shape)
    return out.masked_scatter(valid, values)


def supports_chunked_head(lm: Any) -> bool:
    """Models whose logits are exactly ``lm_head(last_hidden_state)`` (no soft-capping or scaling)."""
    cfg = getattr(lm, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return False
    try:
        return lm.get_output_embeddings() is not None and lm.get_decoder() is not None
    except (AttributeError, NotImplementedError):
        return False


class ResponseScorer(torch.nn.Module):
    """``forward(...) -> (logprobs [B, R], entropy [B, R] | None)`` of the responses of a micro-batch
    (see module doc). ``chunk = 0``: full logits. Without ``response_index`` the batch is in the
    aligned layout of :func:`mx_train.learner.collation.collate` (responses in the last columns);
    with it, in the packed layout of :func:`~mx_train.learner.collation.collate_packed`: the hidden
    states at those flat positions predict the response tokens, and only they reach the LM head."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        response_ids: torch.Tensor,
        temperature: float | torch.Tensor = 1.0,
        chunk: int = 1024,
        with_entropy: bool = False,
        entropy_grad: bool = False,
        response_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if response_index is not None:
            return self._packed(input_ids, attention_mask, position_ids, response_ids, temperature, chunk,
                                with_entropy, entropy_grad, response_index)
        r = response_ids.shape[1]
        if chunk <= 0 or not supports_chunked_head(self.lm):
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=r + 1, use_cache=False,
            )
            t = temperature[:, None, None] if isinstance(temperature, torch.Tensor) else temperature
            logits = at_least_fp32(out.logits[:, -(r + 1) : -1, :]) / t
            logprobs, entropy = full_token_logprobs(logits, response_ids, with_entropy)
            return logprobs.clone(), None if entropy is None else entropy.clone()
        out = self.lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state[:, -(r + 1) : -1, :]
        logprobs, entropy = chunked_token_logprobs(
            hidden, self.lm.get_output_embeddings(), response_ids, temperature=temperature, chunk=chunk,
            with_entropy=with_entropy, entropy_grad=entropy_grad,
        )
        # Fresh tensors, not views: FSDP2 hooks the outputs of a sharded module for backward.
        return logprobs.clone(), None if entropy is None else entropy.clone()

    def _packed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        response_ids: torch.Tensor, temperature: float | torch.Tensor, chunk: int, with_entropy: bool,
        entropy_grad: bool, response_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        valid = response_index >= 0
        at = response_index[valid]  # [N] flat positions, row-major over (sequence, response token)
        targets = response_ids[valid][None]  # [1, N]
        temp: float | torch.Tensor = temperature
        if isinstance(temperature, torch.Tensor):  # per sequence [B] -> per predicted token [1, N]
            temp = temperature.to(at.device, torch.float32)[:, None].expand(valid.shape)[valid][None]
        if chunk <= 0 or not supports_chunked_head(self.lm):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False)
            logits = at_least_fp32(out.logits.reshape(-1, out.logits.shape[-1])[at][None])
            logits = logits / (temp[..., None] if isinstance(temp, torch.Tensor) else temp)
            lp, ent = full_token_logprobs(logits, targets, with_entropy)
        else:
            out = self.lm.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
            hidden = out.last_hidden_state
            hidden = hidden.reshape(-1, hidden.shape[-1])[at][None]  # [1, N, H]
            lp, ent = chunked_token_logprobs(
                hidden, self.lm.get_output_embeddings(), targets, temperature=temp, chunk=chunk,
                with_entropy=with_entropy, entropy_grad=entropy_grad,
            )
        return scatter_rows(lp[0], valid), None if ent is None else scatter_rows(ent[0], valid)
