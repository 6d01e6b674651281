"""GSPO as a plugin written outside the package: a sequence-level policy loss for ``mx train``.

Group Sequence Policy Optimization (Zheng et al., 2025, arXiv:2507.18071) clips a *sequence*
importance ratio ``s_i = exp(mean_t log(pi(y_t) / pi_old(y_t)))`` over the response tokens of
sequence ``i`` instead of per-token ratios. The mean runs over the response's real tokens only, which
is why the learner passes every policy loss the token ``mask`` (and the ``settings``: ``clip_low`` /
``clip_high``, GSPO's paper uses 3e-4 / 4e-4).

This is the GSPO-token form: ``s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]`` has the value ``s_i`` on
every token and the gradient ``s_i * grad log pi(y_t)``; with ``loss_agg: seq_mean_token_mean`` and
one advantage per sequence that is exactly the gradient of the sequence-level GSPO objective.

Run it (no change to the package)::

    mx train --config configs/smoke_cpu.yaml --plugin examples/gspo_plugin.py \\
        --set learner.policy_loss=gspo --set learner.loss_agg=seq_mean_token_mean \\
        --set learner.clip_low=3e-4 --set learner.clip_high=4e-4

or list it in the config: ``plugins: [examples/gspo_plugin.py]``.
"""

from __future__ import annotations

from typing import Any

from mx_train.learner.losses import POLICY_LOSSES


def gspo(logprobs: Any, old_logprobs: Any, advantages: Any, *, mask: Any, settings: Any, **_: Any) -> tuple[Any, dict]:
    """Per-token loss ``-min(s A, clip(s, 1 - clip_low, 1 + clip_high) A)`` with the sequence ratio ``s``."""
    import torch

    log_ratio = (logprobs - old_logprobs) * mask
    seq_log_ratio = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    ratio = torch.exp(seq_log_ratio.detach() + logprobs - logprobs.detach())  # value s_i, token gradients
    clipped = torch.clamp(ratio, 1.0 - settings.clip_low, 1.0 + settings.clip_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    with torch.no_grad():
        s = torch.exp(seq_log_ratio).expand_as(logprobs)
        is_clipped = ((s < 1.0 - settings.clip_low) & (advantages < 0)) | ((s > 1.0 + settings.clip_high) & (advantages > 0))
        approx_kl = (s - 1.0) - seq_log_ratio.expand_as(logprobs)
    return loss, {"clip_frac": is_clipped.to(logprobs.dtype), "approx_kl": approx_kl}


if "gspo" not in POLICY_LOSSES:  # importing the file twice (two names) registers it once
    POLICY_LOSSES.register("gspo")(gspo)
