"""The repository holds no path of a development machine: what works only there fails for a newcomer."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces so this file does not match itself.
MACHINE_PATHS = ("/" + "work/shared", "/" + "work/main/", "/" + "tmp/ci/")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_development_machine_path_in_tracked_files():
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (plots) and files removed in the work tree
        for n, line in enumerate(text.splitlines(), 1):
            if any(p in line for p in MACHINE_PATHS):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "paths of a development machine:\n" + "\n".join(hits)
