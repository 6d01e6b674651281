"""Stream a model's weights in bounded buckets (for pushing learner weights into a generation engine).

Why buckets: a whole state dict moved at once (pickled through an RPC, or cast to the engine's dtype
in one go) needs a second full copy of the model in memory; for an 8B model that is 16-32 GB at the
moment the learner's optimizer state is also resident. A bucket holds at most ``bucket_bytes`` of
tensors (a single tensor larger than that travels alone), so the extra memory of a weight update is
one bucket, whatever the model size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

#: 256 MiB: a few transformer layers of an 8B model per bucket; the whole SmolLM2 in two.
DEFAULT_BUCKET_BYTES = 256 << 20


def named_tensors(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` pairs of a state dict or of an iterable of pairs, detached."""
    items = weights.items() if isinstance(weights, Mapping) else weights
    for name, tensor in items:
        yield str(name), tensor.detach()


def tensor_bytes(tensor: Any) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


def iter_weight_buckets(
    weights: Mapping[str, Any] | Iterable[tuple[str, Any]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, Any]]]:
    """Group ``weights`` into lists whose tensors add up to at most ``bucket_bytes`` (in order)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[tuple[str, Any]] = []
    size = 0
    for name, tensor in named_tensors(weights):
        n = tensor_bytes(tensor)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket


def stream_buckets(
    weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    *,
    device: Any = None,
    dtype: Any = None,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` one bucket at a time, each bucket moved to ``device``/``dtype`` only when
    the consumer reaches it (the previous bucket's copies are released by then). ``stats`` receives
    ``buckets``, ``tensors``, ``bytes`` and ``max_bucket_bytes``."""
    for bucket in iter_weight_buckets(weights, bucket_bytes):
        moved = [(n, t.to(device=device or t.device, dtype=dtype or t.dtype)) for n, t in bucket]
        if stats is not None:
            b = sum(tensor_bytes(t) for _, t in moved)
            stats["buckets"] = stats.get("buckets", 0) + 1
            stats["tensors"] = stats.get("tensors", 0) + len(moved)
            stats["bytes"] = stats.get("bytes", 0) + b
            stats["max_bucket_bytes"] = max(stats.get("max_bucket_bytes", 0), b)
        yield from moved
        del moved
