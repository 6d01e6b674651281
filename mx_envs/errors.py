"""User mistakes as one exception family, with the key path and "did you mean" suggestions.

A typo in a config (``learner.policy_loss: ppo_clipp``), an unknown registry name, a dataset
option the loader does not take, a split the dataset does not have, or data that no source can
supply are all mistakes the *user* can fix by editing what they wrote. They raise a
:class:`ConfigError` (a ``ValueError``) whose message starts with where the mistake is and, for a
misspelt name, the closest known names::

    learner.policy_loss: unknown policy loss 'ppo_clipp'; did you mean 'ppo_clip'? known: pg, ppo_clip

Subclasses keep the exception types older code caught (``KeyError`` for unknown names, ``TypeError``
for unknown options, ``FileNotFoundError`` for missing data), so ``except KeyError`` still works.
The ``mx`` command turns any of them into one line on stderr and exit status 2 (:func:`cli_errors`),
and so an optional package that is not installed, naming the extra that installs it.

This module lives in ``mx_envs`` (the bottom of the import chain) so every package can raise and
catch the same types; it imports nothing but the standard library.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ConfigError", "UnknownName", "UnknownOption", "did_you_mean", "unknown_name", "cli_errors",
           "user_errors", "register_user_error", "missing_extra"]


class ConfigError(ValueError):
    """A mistake in what the user wrote (config, registry name, dataset option/split, data location).

    ``key`` is the path of the offending setting (``"learner.policy_loss"``), ``None`` when the
    mistake has no config key (a direct API call); ``suggestions`` are the close known names.
    """

    def __init__(self, message: str, *, key: str | None = None, suggestions: Iterable[str] = ()) -> None:
        self.message = message
        self.key = key
        self.suggestions = list(suggestions)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message

    def at(self, key: str) -> ConfigError:
        """The same error located at ``key`` (a new instance of the same class; keeps suggestions)."""
        err = type(self).__new__(type(self))
        ConfigError.__init__(err, self.message, key=key, suggestions=self.suggestions)
        return err


class UnknownName(ConfigError, KeyError):
    """A name that no registry entry has (policy loss, estimator, dataset, env id, design...)."""

    __str__ = ConfigError.__str__  # KeyError would quote the message


class UnknownOption(ConfigError, TypeError):
    """A keyword argument (dataset option, loader option) that the callee does not take."""


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name`` (case-insensitive), best first; empty when none is close."""
    known = [str(k) for k in known]
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[c] for c in close]


def unknown_name(kind: str, name: Any, known: Iterable[str], *, key: str | None = None,
                 cls: type[ConfigError] = UnknownName) -> ConfigError:
    """The error for ``name`` missing from ``known``: ``unknown KIND 'x'; did you mean 'y'? known: ...``."""
    known = sorted(str(k) for k in known)
    close = did_you_mean(str(name), known)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    msg += f"{'' if close else ';'} known: {', '.join(known) if known else '(none)'}"
    return cls(msg, key=key, suggestions=close)


# Exception types of higher packages that mean a user mistake (a model server down or failing...),
# added by those packages with :func:`register_user_error`: this package does not know them.
_REGISTERED_USER_ERRORS: list[type[BaseException]] = []


def register_user_error(*types: type[BaseException]) -> None:
    """Count ``types`` as user mistakes in :func:`user_errors` (one line from ``mx``, not a traceback).

    Packages above ``mx_envs`` call this where they define such a type (``mx_agents`` registers
    ``BackendError``), so the ``mx`` command reports it without ``mx_envs`` importing them.
    """
    for exc_type in types:
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"register_user_error takes exception types, got {exc_type!r}")
        if exc_type not in _REGISTERED_USER_ERRORS:
            _REGISTERED_USER_ERRORS.append(exc_type)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean a user mistake (reported in one line by the ``mx`` command).

    Besides :class:`ConfigError`: a missing file the user named (the embedded model file too),
    gymnasium's errors for an unknown or misused env id, and the types registered with
    :func:`register_user_error`.
    """
    types: list[type[BaseException]] = [ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError]
    gym = sys.modules.get("gymnasium")  # not imported: none of its errors can have been raised
    if gym is not None:
        types.append(gym.error.Error)
    types += _REGISTERED_USER_ERRORS
    return tuple(types)


# Top-level modules of the packages the base install leaves out, and the extra of setup.cfg that
# installs each (tests/test_base_install.py checks them against setup.cfg). Every extra with torch
# includes `hf`.
OPTIONAL_PACKAGES: dict[str, str] = {
    "torch": "hf", "transformers": "hf", "accelerate": "hf", "gguf": "hf", "filelock": "hf",
    "matplotlib": "train", "tensorboard": "train",
    "vllm": "vllm", "ray": "dist", "docker": "docker", "peft": "peft",
    "stable_baselines3": "sb3", "sentence_transformers": "embeddings",
    "datasets": "hub", "huggingface_hub": "hub",
}


def missing_extra(exc: BaseException, prefer: str | None = None) -> str | None:
    """The one-line message for an import of an optional package that is not installed, else ``None``.

    ``prefer``: the extra a command needs as a whole (``mx train``: ``train``); it is named instead
    of the package's own extra when that one is ``hf`` or ``prefer`` itself (installing it then
    brings the rest of what the command needs, not one package per try).
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    package = exc.name.partition(".")[0]
    extra = OPTIONAL_PACKAGES.get(package)
    if extra is None:
        return None
    if prefer and extra in ("hf", prefer):
        extra = prefer
    return (f"this needs the '{package}' package, which the base install leaves out; "
            f"install the extra: pip install 'metaagentx[{extra}]'")


@contextmanager
def cli_errors(prog: str, *, traceback: bool = False, extra: str | None = None) -> Iterator[Callable[[], int]]:
    """Turn a user mistake raised inside the block into ``PROG: message`` on stderr and exit status 2.

    Use as ``with cli_errors("mx train") as status: ...; return status()``: ``status()`` is 0 unless
    an error was reported (then 2). An optional package that is not installed is reported the same
    way, naming the extra to install (``extra``: the one the command needs, see :func:`missing_extra`).
    ``traceback=True`` (``mx -vv``) re-raises instead, for debugging.
    Anything that is not a user mistake propagates with its traceback: that is a bug to report.
    """
    failed = [False]
    try:
        yield lambda: 2 if failed[0] else 0
    except ModuleNotFoundError as exc:
        text = missing_extra(exc, prefer=extra)
        if traceback or text is None:
            raise
        failed[0] = True
        print(f"{prog}: {text}", file=sys.stderr)
    except user_errors() as exc:
        if traceback:
            raise
        failed[0] = True
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError) and not isinstance(exc, ConfigError) and exc.args:
            text = str(exc.args[0])  # a plain KeyError's str() is the repr of its key
        print(f"{prog}: {text}", file=sys.stderr)


def run_cli(prog: str, func: Callable[[], int | None], *, traceback: bool = False,
            extra: str | None = None) -> int:
    """``func()`` under :func:`cli_errors`: its return code, or 2 after reporting a user mistake."""
    rc: int | None = None
    with cli_errors(prog, traceback=traceback, extra=extra) as status:
        rc = func()
    return status() or int(rc or 0)
