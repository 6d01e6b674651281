"""Run ``mx`` as a user does, in a child process, and hold its ``--json`` output to "JSON alone on stdout".

In-process CLI tests with ``capsys`` cannot see what libraries write to file descriptor 1 (vLLM's
logging, engine processes): only a real process shows whether ``mx ... --json | jq`` works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def mx_json(*argv: str, timeout: float = 300, env: dict[str, str] | None = None,
            expect_rc: int | None = 0) -> tuple[dict[str, Any], str]:
    """``python -m mx_train.cli ARGV`` in a child; returns (the JSON document, stderr).

    Fails unless stdout is exactly one JSON document (whitespace around it allowed).
    """
    child_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mx_train.cli", *argv], cwd=ROOT, env=child_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{proc.stdout[:3000]}") from exc
    assert isinstance(doc, dict), doc
    return doc, proc.stderr
