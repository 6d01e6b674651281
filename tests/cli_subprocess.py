"""Run ``mx`` as a user does, in a child process, and hold its ``--json`` output to "JSON alone on stdout".

In-process CLI tests with ``capsys`` cannot see what libraries write to file descriptor 1 (vLLM's
logging, engine processes): only a real process shows whether ``mx ... --json | jq`` works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class MxChild:
    """``python -m mx_train.cli ARGV`` started in a child now, its result taken later (:meth:`json`):
    a slow command (a vLLM engine start) runs while the caller does other work. Output goes to
    temporary files, not pipes, so a child nobody reads yet never blocks on a full pipe."""

    def __init__(self, *argv: str, env: dict[str, str] | None = None) -> None:
        child_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        # Open as long as the child writes them; closed once read (json) or the child is killed.
        self._out = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._err = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "mx_train.cli", *argv], cwd=ROOT, env=child_env,
                                     stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, text=True)

    def json(self, timeout: float = 300, expect_rc: int | None = 0) -> tuple[dict[str, Any], str]:
        """Wait for the child (killed after ``timeout`` seconds, as ``subprocess.run`` does); returns
        (the JSON document, stderr). Fails unless stdout is exactly one JSON document."""
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._out.seek(0)
        self._err.seek(0)
        stdout, stderr = self._out.read(), self._err.read()
        self._close()
        if expect_rc is not None:
            assert returncode == expect_rc, (returncode, stdout[-2000:], stderr[-4000:])
        try:
            doc = json.loads(stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"stdout is not one JSON document ({exc}):\n{stdout[:3000]}") from exc
        assert isinstance(doc, dict), doc
        return doc, stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        self._out.close()
        self._err.close()


def mx_json(*argv: str, timeout: float = 300, env: dict[str, str] | None = None,
            expect_rc: int | None = 0) -> tuple[dict[str, Any], str]:
    """``python -m mx_train.cli ARGV`` in a child; returns (the JSON document, stderr).

    Fails unless stdout is exactly one JSON document (whitespace around it allowed).
    """
    return MxChild(*argv, env=env).json(timeout=timeout, expect_rc=expect_rc)
