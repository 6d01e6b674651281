"""User mistakes as one exception family, with the key path and "did you mean" suggestions.

A typo in a config (``learner.policy_loss: ppo_clipp``), an unknown registry name, a dataset
option the loader does not take, a split the dataset does not have, or data that no source can
supply are all mistakes the *user* can fix by editing what they wrote. They raise a
:class:`ConfigError` (a ``ValueError``) whose message starts with where the mistake is and, for a
misspelt name, the closest known names::

    learner.policy_loss: unknown policy loss 'ppo_clipp'; did you mean 'ppo_clip'? known: pg, ppo_clip

Subclasses keep the exception types older code caught (``KeyError`` for unknown names, ``TypeError``
for unknown options, ``FileNotFoundError`` for missing data), so ``except KeyError`` still works.
The ``mx`` command turns any of them into one line on stderr and exit status 2 (:func:`cli_errors`).

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
           "user_errors"]


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


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean a user mistake (reported in one line by the ``mx`` command).

    Besides :class:`ConfigError`: a missing file the user named, gymnasium's errors for an unknown or
    misused env id, and the embedded model or an optional extra being absent.
    """
    types: list[type[BaseException]] = [ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError]
    gym = sys.modules.get("gymnasium")
    if gym is not None:
        types.append(gym.error.Error)
    embedded = sys.modules.get("mx_agents.backends.embedded")
    if embedded is not None and hasattr(embedded, "EmbeddedModelUnavailable"):
        types.append(embedded.EmbeddedModelUnavailable)
    backends = sys.modules.get("mx_agents.backends.base")  # a model server down or failing (mx eval, ...)
    if backends is not None and hasattr(backends, "BackendError"):
        types.append(backends.BackendError)
    return tuple(types)


@contextmanager
def cli_errors(prog: str, *, traceback: bool = False) -> Iterator[Callable[[], int]]:
    """Turn a user mistake raised inside the block into ``PROG: message`` on stderr and exit status 2.

    Use as ``with cli_errors("mx train") as status: ...; return status()``: ``status()`` is 0 unless
    an error was reported (then 2). ``traceback=True`` (``mx -vv``) re-raises instead, for debugging.
    Anything that is not a user mistake propagates with its traceback: that is a bug to report.
    """
    failed = [False]
    try:
        yield lambda: 2 if failed[0] else 0
    except user_errors() as exc:
        if traceback:
            raise
        failed[0] = True
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError) and not isinstance(exc, ConfigError) and exc.args:
            text = str(exc.args[0])  # a plain KeyError's str() is the repr of its key
        print(f"{prog}: {text}", file=sys.stderr)


def run_cli(prog: str, func: Callable[[], int | None], *, traceback: bool = False) -> int:
    """``func()`` under :func:`cli_errors`: its return code, or 2 after reporting a user mistake."""
    rc: int | None = None
    with cli_errors(prog, traceback=traceback) as status:
        rc = func()
    return status() or int(rc or 0)
