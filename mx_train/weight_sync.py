"""Learner -> rollout engine weight sync, and the engine/learner log-prob consistency it is checked by.

Why measure every step: an importance ratio ``pi_learner / pi_sampler`` is only meaningful when the
sampler's log-probs are the learner's up to numerical noise. A stale engine (weights not pushed, or
pushed but not used: a prefix cache of old KV, CPU kernels packed from the old weights), a dtype or
temperature mismatch, or a chat-template difference all show up here as a jump in the difference
long before they show up in the reward curve. Metrics (per token, absolute difference of log-probs):

- ``rollout/logprob_diff_mean|max``: the engine's *sampling* log-probs of this step's rollout vs the
  learner's log-probs of the same tokens at each turn's recorded temperature, before the update
  (the engine should be serving exactly the learner's weights here);
- ``rollout/logprob_diff_stale_mean|max``: after the update, before the push: the engine (old
  weights) vs the learner (new weights), both at temperature 1; how far one update moved the policy;
- ``rollout/logprob_diff_synced_mean|max``: the same after the push; back at the numerical floor
  (bf16 engine vs fp32 learner) when the engine follows the new weights.

The probe is a few of the step's transitions (``probe`` per step), so the cost is a few extra
forward passes. Transfer: :meth:`EngineSync.push` hands the learner's state dict to the backend's
``load_weights``, which streams it in bounded buckets (:mod:`mx_agents.backends.weight_buckets`).
For engines in other processes or on other hosts, :class:`CollectiveWeightSender` and
:func:`receive_weight_buckets` broadcast the buckets over a torch.distributed group (gloo on CPU, NCCL
on GPU): metadata first, then one flat buffer per bucket, never the object store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mx_agents.backends.weight_buckets import DEFAULT_BUCKET_BYTES, iter_weight_buckets
from mx_agents.transition import sampled_temperature

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- scoring


def score_with_model(
    model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], temperatures: Sequence[float], pad_id: int = 0
) -> list[list[float]]:
    """Log-probs of each response given its prompt under ``model`` at its own temperature (0 = 1),
    one forward per pair (only the response positions' logits are materialised); no grad.
    Independent of the learner's internals on purpose: the check must not share code with what it
    checks. ``pad_id`` is unused (no padding) and kept for call-site symmetry."""
    import torch

    out: list[list[float]] = [[] for _ in pairs]
    device = next(model.parameters()).device
    for i, (prompt, response) in enumerate(pairs):
        n = len(response)
        if n == 0 or not prompt:
            continue
        ids = torch.tensor([[int(t) for t in prompt] + [int(t) for t in response]], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits.float()
        t = float(temperatures[i]) if temperatures[i] and temperatures[i] > 1e-5 else 1.0
        lp = torch.log_softmax(logits[0, :n, :] / t, dim=-1)
        out[i] = lp.gather(1, ids[0, -n:, None])[:, 0].tolist()
    return out


def diff_stats(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> tuple[float, float, int]:
    """(mean, max, tokens) of ``|a - b|`` over all tokens of paired sequences."""
    total, worst, n = 0.0, 0.0, 0
    for x, y in zip(a, b, strict=True):
        if len(x) != len(y):
            raise ValueError(f"log-prob sequences of different lengths: {len(x)} vs {len(y)}")
        for u, v in zip(x, y, strict=True):
            d = abs(float(u) - float(v))
            total += d
            worst = max(worst, d)
            n += 1
    return (total / n if n else float("nan")), (worst if n else float("nan")), n


def probe_pairs(transitions: Sequence[Any], probe: int) -> list[tuple[list[int], list[int]]]:
    """Up to ``probe`` (prompt, response) pairs of LLM transitions with token data, spread over the list."""
    usable = [t for t in transitions if t.prompt_ids and t.response_ids]
    k = min(max(0, int(probe)), len(usable))
    return [(list(usable[(i * len(usable)) // k].prompt_ids), list(usable[(i * len(usable)) // k].response_ids))
            for i in range(k)]


def sampling_diff_metrics(model: Any, transitions: Sequence[Any], probe: int, pad_id: int = 0) -> dict[str, float]:
    """``rollout/logprob_diff_mean|max|tokens``: the sampling log-probs of up to ``probe`` of the
    transitions (spread over the list) vs ``model``'s log-probs of the same tokens at each turn's
    temperature. Wherever the engine runs (this process, a Ray rollout worker), a gap above the
    numerical floor means it did not sample with the learner's weights."""
    usable = [t for t in transitions if t.prompt_ids and t.response_ids and t.logprobs is not None]
    if not usable or probe <= 0:
        return {}
    k = min(int(probe), len(usable))
    picks = [usable[(i * len(usable)) // k] for i in range(k)]
    learner = score_with_model(model, [(t.prompt_ids, t.response_ids) for t in picks],
                               [sampled_temperature(t) for t in picks], pad_id)
    mean, worst, n = diff_stats([list(t.logprobs) for t in picks], learner)
    return {"rollout/logprob_diff_mean": mean, "rollout/logprob_diff_max": worst,
            "rollout/logprob_diff_tokens": float(n)}


# ----------------------------------------------------------------------------- colocated sync


class EngineSync:
    """Pushes a learner's weights into one generation backend and measures their consistency.

    ``learner``: has ``model`` (the trained torch module) and ``weights_for_sync()``. ``backend``:
    has ``load_weights`` and, for the post-sync checks, ``score_batch(pairs, temperature=1.0)``.
    """

    def __init__(self, learner: Any, backend: Any, probe: int = 8, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 pad_id: int = 0) -> None:
        self.learner = learner
        self.backend = backend
        self.probe = max(0, int(probe))
        self.bucket_bytes = bucket_bytes
        self.pad_id = pad_id
        self.syncs = 0
        self._probe_pairs: list[tuple[list[int], list[int]]] = []
        self._metrics: dict[str, float] = {}

    # -- the step's probe ------------------------------------------------------------------
    def set_probe(self, transitions: Sequence[Any]) -> None:
        """Pick up to ``probe`` LLM transitions with token data (spread over the list)."""
        self._probe_pairs = probe_pairs(transitions, self.probe)

    def rollout_metrics(self, transitions: Sequence[Any]) -> dict[str, float]:
        """``rollout/logprob_diff_*``: sampling log-probs vs the learner's, at each turn's temperature."""
        self.set_probe(transitions)
        return sampling_diff_metrics(self.learner.model, transitions, self.probe, self.pad_id)

    def _engine_vs_learner(self) -> tuple[float, float] | None:
        score = getattr(self.backend, "score_batch", None)
        if score is None or not self._probe_pairs:
            return None
        engine = score(self._probe_pairs, 1.0)
        learner = score_with_model(self.learner.model, self._probe_pairs, [1.0] * len(self._probe_pairs), self.pad_id)
        mean, worst, _ = diff_stats(engine, learner)
        return mean, worst

    # -- the push ----------------------------------------------------------------------------
    def push(self, state_dict: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Measure (stale), load the weights into the engine in buckets, measure (synced)."""
        metrics: dict[str, float] = {}
        stale = self._engine_vs_learner()
        if stale is not None:
            metrics["rollout/logprob_diff_stale_mean"], metrics["rollout/logprob_diff_stale_max"] = stale
        metrics.update(self.transfer(state_dict if state_dict is not None else self.learner.weights_for_sync()))
        synced = self._engine_vs_learner()
        if synced is not None:
            metrics["rollout/logprob_diff_synced_mean"], metrics["rollout/logprob_diff_synced_max"] = synced
        self.syncs += 1
        self._metrics.update(metrics)
        return metrics

    def transfer(self, weights: Mapping[str, Any]) -> dict[str, float]:
        """Load ``weights`` into the engine in buckets, nothing measured or kept: :meth:`push` without
        its checks (an async rollout thread loading an older snapshot while the learner trains)."""
        t0 = time.perf_counter()
        try:
            stats = self.backend.load_weights(weights, bucket_bytes=self.bucket_bytes)
        except TypeError:  # a backend without bucketed loading (e.g. a test double, HFBackend)
            stats = self.backend.load_weights(weights)
        metrics = {"rollout/weight_sync_s": time.perf_counter() - t0}
        if isinstance(stats, Mapping):
            metrics["rollout/weight_sync_buckets"] = float(stats.get("buckets", 0))
            metrics["rollout/weight_sync_max_bucket_mb"] = float(stats.get("max_bucket_bytes", 0)) / 2**20
        return metrics

    def pop_metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out


def before_rollout(backends: Iterable[Any]) -> None:
    """Wake engines put to sleep for the previous update (no-op where sleep is unsupported)."""
    for b in {id(b): b for b in backends}.values():
        if getattr(b, "sleeping", False):
            b.wake_up()


def after_rollout(backends: Iterable[Any]) -> None:
    """Free engine memory (KV cache, weights offloaded) while the learner updates (CUDA sleep mode)."""
    for b in {id(b): b for b in backends}.values():
        if getattr(b, "sleep_supported", False):
            b.sleep(level=1)


# ----------------------------------------------------------------------------- collectives


class CollectiveWeightSender:
    """Rank ``src`` of a torch.distributed group broadcasting weights to engine ranks, bucket by bucket.

    Each bucket: a small header (names, dtypes, shapes) by ``broadcast_object_list``, then the
    tensors packed into one flat byte buffer by ``broadcast`` (gloo on CPU, NCCL on GPU). Memory
    beyond the model itself: one bucket.
    """

    def __init__(self, group: Any = None, src: int = 0, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.group = group
        self.src = src
        self.bucket_bytes = bucket_bytes

    def send(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, int]:
        import torch
        import torch.distributed as dist

        stats = {"buckets": 0, "bytes": 0, "max_bucket_bytes": 0}
        for bucket in iter_weight_buckets(weights, self.bucket_bytes):
            header = [(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in bucket]
            dist.broadcast_object_list([header], src=self.src, group=self.group)
            flat = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for _, t in bucket])
            dist.broadcast(flat, src=self.src, group=self.group)
            stats["buckets"] += 1
            stats["bytes"] += int(flat.numel())
            stats["max_bucket_bytes"] = max(stats["max_bucket_bytes"], int(flat.numel()))
        dist.broadcast_object_list([None], src=self.src, group=self.group)  # end of stream
        return stats


def receive_weight_buckets(group: Any = None, src: int = 0, device: Any = "cpu") -> Iterator[tuple[str, Any]]:
    """The receiving side of :class:`CollectiveWeightSender`: ``(name, tensor)`` pairs, one bucket at
    a time, for an engine's ``load_weights``/``reload_weights`` iterator."""
    import torch
    import torch.distributed as dist

    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=src, group=group)
        header = box[0]
        if header is None:
            return
        sizes = []
        for _, dtype, shape in header:
            dt = getattr(torch, dtype)
            sizes.append(int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size())
        flat = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for (name, dtype, shape), n in zip(header, sizes, strict=True):
            yield name, flat[offset : offset + n].view(getattr(torch, dtype)).view(shape)
            offset += n
