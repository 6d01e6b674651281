"""The interpreter stays importable for a run's unprivileged uid; its hidden neighbours stay hidden."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mx_envs.sandbox import Limits, Verdict
from mx_envs.sandbox.interpreter_paths import Mask, needed_dirs, plan_masks

# Modules a tool call or candidate program plausibly imports; several are not preloaded by the pool.
MODULES = (
    "statistics", "calendar", "fractions", "decimal", "json", "csv", "heapq", "bisect", "collections",
    "itertools", "functools", "math", "re", "string", "colorsys", "tomllib", "numpy", "sympy",
)


@pytest.fixture
def searchable_tmp():
    """A fresh world-searchable directory (pytest's tmp_path may sit below a 0700 directory)."""
    path = tempfile.mkdtemp(prefix="mx-sbx-paths-")
    os.chmod(path, 0o755)
    yield Path(path)
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path)


def test_plan_masks_covers_the_topmost_unsearchable_ancestor(searchable_tmp):
    tmp_path = searchable_tmp
    top = tmp_path / "home"
    lib = top / "py" / "lib"
    lib.mkdir(parents=True)
    (top / "py" / "lib" / "sub").mkdir()
    (top / "secret").mkdir()
    (top / "link").symlink_to(top / "py")
    top.chmod(0o700)
    (top / "py").chmod(0o700)  # below the topmost hidden ancestor: recreated by the skeleton anyway
    dirs = [str(lib), str(lib / "sub"), str(top / "link" / "lib"), str(tmp_path)]
    plan = plan_masks(dirs)  # a foreign uid
    assert plan == [Mask(str(top), binds=[str(lib)], symlinks=[(str(top / "link"), str(top / "py"))])]
    # The owner can traverse its own 0700 directories: nothing to mask.
    assert plan_masks(dirs, uid=os.stat(top).st_uid, gids=()) == []
    # A group member can traverse a 0710 directory.
    top.chmod(0o710)
    (top / "py").chmod(0o710)
    assert plan_masks(dirs, uid=None, gids=[os.stat(top).st_gid]) == []


def test_needed_dirs_are_absolute_existing_directories():
    dirs = needed_dirs(["relative/path", "/nonexistent-mx-dir"])
    assert dirs and all(os.path.isabs(d) and os.path.isdir(d) for d in dirs)
    assert "/nonexistent-mx-dir" not in dirs


def test_any_stdlib_or_site_packages_module_imports(sandbox):
    src = f"""
import importlib, json, sys
fresh = [m for m in {MODULES!r} if m not in sys.modules]
for m in {MODULES!r}:
    importlib.import_module(m)
import statistics, fractions, calendar
print(json.dumps({{"fresh": fresh, "mean": str(statistics.mean([fractions.Fraction(1, 3), 1])),
                  "leap": calendar.isleap(2024)}}))
"""
    r = sandbox.run(src, limits=Limits(wall_s=20))
    assert r.verdict is Verdict.OK, r
    out = json.loads(r.stdout)
    assert out["mean"] == "2/3" and out["leap"] is True
    assert "tomllib" in out["fresh"] and len(out["fresh"]) >= 3, out  # really imported from disk
    assert r.isolation.get("uid") is None or r.isolation["uid"] != os.getuid()


def test_a_subprocess_of_the_interpreter_works(sandbox):
    src = "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import statistics; print(7)'],"
    src += " capture_output=True, text=True).stdout.strip())"
    r = sandbox.run(src, limits=Limits(wall_s=20))
    assert r.verdict is Verdict.OK and r.stdout == "7\n", r


def test_hidden_ancestor_contents_stay_hidden(sandbox):
    """In the host view, everything below a non-searchable ancestor of the interpreter, except the
    interpreter, is gone (the allow-list world never binds such an ancestor at all)."""
    masks = plan_masks(needed_dirs())
    if os.geteuid() != 0 or not masks:
        pytest.skip("the interpreter has no non-searchable ancestor here (or not running as root)")
    root = masks[0].root
    secret = os.path.join(root, f".mx-sandbox-test-secret-{os.getpid()}")
    with open(secret, "w") as fh:
        fh.write("top secret")
    os.chmod(secret, 0o644)  # readable by anyone who can reach it: only the mask protects it
    probes = [secret, os.path.join(root, ".cache"), os.path.join(root, ".ssh"), root]
    try:
        src = f"""
import json, os
res = {{}}
for p in {probes!r}:
    try:
        res[p] = sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read()
    except OSError as exc:
        res[p] = type(exc).__name__
import statistics
res["statistics"] = statistics.median([3, 1, 2])
print(json.dumps(res))
"""
        r = sandbox.run(src, limits=Limits(wall_s=20, file_view="host"))
    finally:
        os.unlink(secret)
    assert r.verdict is Verdict.OK, r
    res = json.loads(r.stdout)
    assert res["statistics"] == 2
    for p in probes:
        assert res[p] in ("FileNotFoundError", "PermissionError"), (p, res[p])
    assert root in r.isolation["masked"]
    # The covered ancestor is read-only and owned by root in the run: nothing can be planted there.
    r = sandbox.run(f"open({os.path.join(root, 'x')!r}, 'w')", limits=Limits(file_view="host"))
    assert r.verdict is Verdict.RUNTIME_ERROR and ("PermissionError" in r.stderr or "Read-only" in r.stderr)


def test_runs_get_the_no_register_flag(sandbox):
    r = sandbox.run("import os, sys; print(os.environ.get('MX_ENVS_NO_REGISTER'), 'gymnasium' in sys.modules)")
    assert r.verdict is Verdict.OK and r.stdout == "1 False\n", r

