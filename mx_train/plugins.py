"""User plugins: modules imported before a run so that they can register algorithms and data.

A plugin is any Python module that, when imported, registers something in one of the registries
(``mx_train.advantages.ADVANTAGE_ESTIMATORS``, ``mx_train.learner.losses.POLICY_LOSSES``,
``mx_train.learner.losses.KL_ESTIMATORS``, ``mx_envs.tasks.registry.DATASETS``). ``mx train --plugin X``
(repeatable) and the config key ``plugins: [X, ...]`` name them; ``X`` is a dotted module name on
``sys.path`` or the path of a ``.py`` file (imported under a name derived from its path, so the same
file is imported once). Plugins are imported before the config's registry names are checked, so a
config can select what a plugin registers. See ``mx_train/ALGORITHMS.md`` and ``examples/gspo_plugin.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from mx_envs.errors import ConfigError


def load_plugin(spec: str, *, key: str | None = None) -> ModuleType:
    """Import one plugin (module name or ``.py`` path); a failure is a :class:`ConfigError` at ``key``."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("empty plugin name", key=key)
    looks_like_file = spec.endswith(".py") or "/" in spec or spec.startswith(".")
    if looks_like_file:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"plugin file {spec!r} not found", key=key)
        name = f"mx_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"cannot import plugin file {spec!r}", key=key)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}", key=key) from exc
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise ConfigError(
                f"plugin module {spec!r} not found (give a module on sys.path / PYTHONPATH, or a .py file path)",
                key=key,
            ) from None
        raise ConfigError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}", key=key) from exc
    except Exception as exc:
        raise ConfigError(f"plugin {spec!r} failed on import: {type(exc).__name__}: {exc}", key=key) from exc


def load_plugins(specs: Iterable[str], *, key: str | None = "plugins") -> list[ModuleType]:
    """Import every plugin in order (idempotent: a module is imported once per process)."""
    out = []
    for i, spec in enumerate(specs):
        out.append(load_plugin(spec, key=f"{key}[{i}]" if key else None))
    return out
