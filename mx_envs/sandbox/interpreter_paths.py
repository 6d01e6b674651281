"""Keep the interpreter importable for a run's unprivileged uid without exposing its neighbours.

The run's uid owns nothing, so it can only traverse world-searchable directories. When Python lives
below one that is not (``/root/.pyenv/...`` under ``/root``, mode 0700), every module the pool
server did not preload fails to import inside a run. Inside the run's own mount namespace we mount a
fresh tmpfs over each such *hidden ancestor*, recreate only the path down to each directory the
interpreter needs (mode 0711: traversable, not listable), and bind-mount those directories back from
``O_PATH`` descriptors opened before the tmpfs covered them. Everything else below the ancestor
(``/root/.ssh``, ``/root/.cache``, ...) stays invisible; the whole tree is then made read-only with
the rest of the root file system.

The plan is computed once in the pool server (:func:`plan_masks`); each prefork child applies it
(:func:`apply_masks`) in its fresh mount namespace, off the critical path of a request.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from mx_envs.sandbox import _linux

SKELETON_MODE = 0o711


@dataclass
class Mask:
    """One hidden ancestor to cover with a tmpfs, and what to put back below it."""

    root: str  # the directory the tmpfs is mounted on
    binds: list[str] = field(default_factory=list)  # directories bound back (real paths)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (path, target) recreated
    mode: int = SKELETON_MODE  # of the tmpfs root
    size: str = "1m"  # of the tmpfs (the skeleton needs almost nothing)


def needed_dirs(extra: Iterable[str] = ()) -> list[str]:
    """Directories this interpreter reads at run time: prefixes, the executable's, ``sys.path``.

    Returns absolute, normalised paths (symlinks *not* resolved: :func:`plan_masks` handles both the
    literal path and its real path). Entries that do not exist are dropped; a file on ``sys.path``
    (a zip archive) contributes its directory.
    """
    cands = [
        sys.base_prefix,
        sys.prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.abspath(sys.executable)),
        os.path.dirname(os.path.realpath(sys.executable)),
        *sys.path,
        *extra,
    ]
    out: list[str] = []
    for c in cands:
        if not c or not os.path.isabs(c):
            continue
        p = os.path.normpath(c)
        if os.path.isfile(p):
            p = os.path.dirname(p)
        if os.path.isdir(p) and p not in out:
            out.append(p)
    return out


def _searchable(st: os.stat_result, uid: int | None, gids: frozenset[int]) -> bool:
    """Whether ``uid`` (``None``: a uid that owns nothing and has no groups) may traverse ``st``."""
    if uid == 0:
        return True
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]`` (proper ancestors below ``/``, outermost first)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _hidden_root(path: str, uid: int | None, gids: frozenset[int]) -> str | None:
    for anc in _ancestors(path):
        try:
            if not _searchable(os.stat(anc), uid, gids):
                return anc
        except OSError:
            return None
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def plan_masks(dirs: Iterable[str], uid: int | None = None, gids: Iterable[int] = ()) -> list[Mask]:
    """Which ancestors to cover and what to bind back so that ``uid`` reaches every dir in ``dirs``.

    ``uid=None`` plans for a foreign uid (the per-run uid of the root path); pass the host's uid
    and groups for a user-namespace run, which then typically needs nothing.
    """
    groups = frozenset(gids)
    masks: dict[str, Mask] = {}
    for literal in dirs:
        real = os.path.realpath(literal)
        for p in dict.fromkeys([literal, real]):
            root = _hidden_root(p, uid, groups)
            if root is None:
                continue
            m = masks.setdefault(root, Mask(root))
            # Symlinks on the literal path below the hidden root are recreated; the real path is bound.
            cur = root
            for comp in p[len(root) :].strip("/").split("/"):
                cur = os.path.join(cur, comp)
                if os.path.islink(cur):
                    link = (cur, os.readlink(cur))
                    if link not in m.symlinks:
                        m.symlinks.append(link)
                    break
            else:
                if p not in m.binds:
                    m.binds.append(p)
    for m in masks.values():
        # A bind covers its subtree: keep the outermost directories only.
        m.binds.sort(key=len)
        kept: list[str] = []
        for b in m.binds:
            if not any(_under(b, k) for k in kept):
                kept.append(b)
        m.binds = kept
        m.symlinks = [s for s in m.symlinks if not any(_under(s[0], k) for k in kept)]
    return sorted(masks.values(), key=lambda m: m.root)


def _skeleton(root: str, path: str) -> None:
    """Create the directories from ``root`` (exclusive) down to ``path`` (inclusive) on the tmpfs."""
    cur = root
    for comp in path[len(root) :].strip("/").split("/"):
        if not comp:
            continue
        cur = os.path.join(cur, comp)
        try:
            os.mkdir(cur, SKELETON_MODE)
        except FileExistsError:
            pass
        os.chmod(cur, SKELETON_MODE)  # mkdir's mode is filtered by the umask


def private_tmp_masks(roots: Iterable[str], dirs: Iterable[str]) -> list[Mask]:
    """Writable private tmpfs mounts on ``roots`` (``/tmp``, ...), keeping any of ``dirs`` below them."""
    dirs = list(dirs)
    masks = []
    for r in roots:
        if not os.path.isdir(r):
            continue
        below = sorted({d for d in dirs if _under(d, r) and d != r}, key=len)
        # Only the outermost: a bind is recursive, and a nested one would need a directory created
        # inside an already read-only bind (e.g. a checkout under /tmp and its .venv).
        outer = [d for i, d in enumerate(below) if not any(_under(d, o) and d != o for o in below[:i])]
        masks.append(Mask(r, binds=outer, mode=0o1777, size="512m"))
    return masks


def apply_masks(masks: list[Mask], readonly_binds: bool = False) -> list[str]:
    """Apply ``masks`` in the calling (private) mount namespace.

    ``readonly_binds`` marks each bound directory read-only right away (for masks applied after the
    root was made read-only). Returns the roots that were covered. Raises ``OSError`` if a mount
    fails; the caller reports it.
    """
    held: dict[str, int] = {}
    try:
        # Descriptors first: once a tmpfs covers the root, the directories below are unreachable.
        for m in masks:
            for b in m.binds:
                held[b] = os.open(b, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        done = []
        for m in masks:
            opts = _linux.MS_NOSUID | _linux.MS_NODEV
            _linux.mount("tmpfs", m.root, "tmpfs", opts, f"size={m.size},mode={m.mode:o}")
            for b in m.binds:
                _skeleton(m.root, b)
                _linux.mount(f"/proc/self/fd/{held[b]}", b, None, _linux.MS_BIND | _linux.MS_REC)
                if readonly_binds:
                    _linux.make_tree_readonly(b)
            for path, target in m.symlinks:
                _skeleton(m.root, os.path.dirname(path))
                os.symlink(target, path)
            done.append(m.root)
        return done
    finally:
        for fd in held.values():
            os.close(fd)
