"""``--json`` means JSON alone on stdout: whatever else the process (or a library) prints goes to stderr.

Libraries print on stdout behind our back: vLLM's logger writes there by default, and engine processes
it spawns inherit file descriptor 1. So while a ``--json`` command runs, :func:`json_only_stdout` points
descriptor 1 at stderr (the process and every child it starts), and :func:`emit_json` writes the one
JSON document to the real stdout, kept aside on another descriptor. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

_json_fd: int | None = None  # the real stdout while json_only_stdout is active


@contextlib.contextmanager
def json_only_stdout(enabled: bool = True) -> Iterator[None]:
    """Send descriptor 1 to stderr for the duration; :func:`emit_json` still reaches the real stdout.

    A no-op when ``enabled`` is false or ``sys.stdout`` is not the process's own stdout (pytest's
    ``capsys``, an embedding application): there is no descriptor of ours to redirect then.
    """
    global _json_fd
    if not enabled or _json_fd is not None or sys.stdout is not sys.__stdout__:
        yield
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1/2 to work with (closed stdio): print as usual
        yield
        return
    _json_fd = saved
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        _json_fd = None
        os.dup2(saved, 1)
        os.close(saved)


def emit_json(obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``obj`` as one JSON document and a newline to the real stdout."""
    text = json.dumps(obj, **dumps_kwargs) + "\n"
    if _json_fd is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = text.encode("utf-8")
    while data:
        data = data[os.write(_json_fd, data):]
