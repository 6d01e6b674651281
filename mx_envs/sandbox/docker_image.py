"""``mx sandbox build-image``: a local Docker image made from the host interpreter, no registry.

The Docker backend must work offline (no image can be pulled on the machines this project runs on),
and the program inside the container must see the same Python and the same allowed packages as the
process backend. So the image is *imported* (``docker import``), not built from a base image: we
tar a minimal root file system holding

- the host's base interpreter at its own absolute path (so its prefix and stdlib resolve unchanged),
  plus a ``/usr/local/bin/python3`` link to it;
- the stdlib, minus what a judged program never needs (``test``, ``idlelib``, ``tkinter``,
  ``ensurepip``, ``lib2to3``, ``turtledemo``, the base ``site-packages``); byte-code caches are kept
  so imports stay fast on a read-only root;
- the allowed packages and their installed requirements, copied into the base interpreter's own
  ``site-packages`` (their ``tests`` directories left out);
- every shared library the interpreter and the included extension modules link against (``ldd``),
  with the symlinks on the way (``/lib -> usr/lib``), the dynamic loader, ``libgcc_s`` and
  ``libseccomp`` (both ``dlopen``-ed);
- ``/etc/passwd`` and ``/etc/group`` naming uid 65534 (``nobody``), empty ``/tmp`` and ``/work``.

The image is tagged by a content hash of that tree (file bytes, modes, links), so a rebuild is only
done when something changed, and also as ``mx-sandbox:latest`` (what :class:`DockerSandbox` uses by
default). The interpreter path is stored as the image label ``mx.python``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mx_envs.sandbox.file_view import ALLOWED_PACKAGES

REPOSITORY = "mx-sandbox"
DEFAULT_TAG = f"{REPOSITORY}:latest"
# The same world as the process backend's: its allowed packages (those installed here).
DEFAULT_PACKAGES: tuple[str, ...] = tuple(p for p in ALLOWED_PACKAGES if importlib.util.find_spec(p) is not None)
PYTHON_LINK = "/usr/local/bin/python3"
LABEL_PYTHON = "mx.python"
LABEL_HASH = "mx.content-hash"
LABEL_FORMAT = "mx.format"
# Bump when the tree layout or the default packages change: DockerSandbox then rebuilds the default
# image (an image of an older format is never reused silently).
FORMAT_VERSION = "3"
_STDLIB_SKIP = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "__phello__",
}
_PACKAGE_SKIP_DIRS = {"tests"}
# Extension modules a judged program has no use for; _tkinter alone drags X11 and Tcl/Tk libraries in.
_SKIP_FILE = re.compile(
    r"(\.opt-[12]\.pyc$)|(^_tkinter\.)|(^_test)|(^xxlimited)|(^_xxtestfuzz)|(^_ctypes_test)"
)
# In packages only the optimised byte code: their own ``_test*`` modules are imported (scipy's
# ``_lib/_testutils.py`` on ``import scipy``).
_PACKAGE_SKIP_FILE = re.compile(r"\.opt-[12]\.pyc$")
_ETC_PASSWD = b"root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/work:/bin/false\n"
_ETC_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


@dataclass
class RootTree:
    """The planned image content: absolute path in the image -> host source (or literal data)."""

    files: dict[str, str] = field(default_factory=dict)  # image path -> host path (regular file)
    links: dict[str, str] = field(default_factory=dict)  # image path -> link target
    data: dict[str, bytes] = field(default_factory=dict)  # image path -> bytes
    dirs: dict[str, int] = field(default_factory=dict)  # image path -> mode
    python: str = ""  # the interpreter's path in the image
    packages: list[str] = field(default_factory=list)  # distributions included (resolved)

    def add_host_path(self, path: str, image_path: str | None = None) -> None:
        """Add a host file at the same path, recreating symlinked components on the way."""
        path = os.path.abspath(path)
        if image_path is None:
            self._add_resolving(path)
        else:
            self._add_dirs(os.path.dirname(image_path))
            self.files[image_path] = os.path.realpath(path)

    def _add_resolving(self, path: str, depth: int = 0) -> None:
        if depth > 16:
            raise ValueError(f"too many symlinks resolving {path}")
        parts = path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            if os.path.islink(cur):
                target = os.readlink(cur)
                self._add_dirs(os.path.dirname(cur))
                self.links[cur] = target
                resolved = os.path.normpath(os.path.join(os.path.dirname(cur), target))
                rest = "/".join(parts[i + 1 :])
                self._add_resolving(os.path.join(resolved, rest) if rest else resolved, depth + 1)
                return
            if i < len(parts) - 1:
                self.dirs.setdefault(cur, 0o755)
        if os.path.isdir(path):
            self.dirs.setdefault(path, 0o755)
        elif os.path.isfile(path):
            self.files[path] = path

    def _add_dirs(self, d: str) -> None:
        cur = ""
        for part in d.strip("/").split("/"):
            if part:
                cur = f"{cur}/{part}"
                self.dirs.setdefault(cur, 0o755)

    def add_tree(
        self, src: str, dst: str, skip_dirs: Iterable[str] = (), skip_file: re.Pattern[str] = _SKIP_FILE
    ) -> None:
        """Add every regular file and symlink below host ``src`` at image ``dst`` (but ``skip_file``)."""
        skip = set(skip_dirs)
        for root, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d not in skip)
            rel = os.path.relpath(root, src)
            target_dir = dst if rel == "." else os.path.join(dst, rel)
            self._add_dirs(target_dir)
            for name in dirnames:
                host = os.path.join(root, name)
                if os.path.islink(host):
                    self.links[os.path.join(target_dir, name)] = os.readlink(host)
            for name in sorted(filenames):
                if skip_file.search(name):
                    continue
                host = os.path.join(root, name)
                image = os.path.join(target_dir, name)
                if os.path.islink(host):
                    self.links[image] = os.readlink(host)
                elif os.path.isfile(host):
                    self.files[image] = host


def _requirement_names(dist: Any) -> list[str]:
    """Names of a distribution's unconditional requirements (markers evaluated, no extras)."""
    out = []
    for req in dist.requires or []:
        try:
            from packaging.requirements import Requirement

            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            out.append(r.name)
        except Exception:  # noqa: BLE001 - packaging missing or an odd string: a plain parse
            if ";" in req:
                continue
            m = re.match(r"\s*([A-Za-z0-9._-]+)", req)
            if m:
                out.append(m.group(1))
    return out


def resolve_distributions(names: Iterable[str]) -> list[Any]:
    """Installed distributions for ``names`` (distribution or import names) and what they require."""
    from importlib import metadata

    by_import = metadata.packages_distributions()
    seen: dict[str, Any] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            dists = by_import.get(name)
            if not dists:
                raise ValueError(f"package {name!r} is not installed in {sys.prefix}") from None
            dist = metadata.distribution(dists[0])
        seen[key] = dist
        seen[re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()] = dist
        todo.extend(_requirement_names(dist))
    unique = {id(d): d for d in seen.values()}
    return sorted(unique.values(), key=lambda d: d.metadata["Name"].lower())


def _dist_roots(dist: Any) -> list[str]:
    """Top-level paths (package dirs, modules, .libs, .dist-info) a distribution installed."""
    roots: set[str] = set()
    for f in dist.files or []:
        parts = f.parts
        if not parts or parts[0] in ("..", "") or parts[0].endswith(".data") or parts[0] == "__pycache__":
            continue
        roots.add(parts[0])
    base = str(dist.locate_file(""))
    return sorted(os.path.join(base, r) for r in roots if os.path.exists(os.path.join(base, r)))


def _shared_libraries(binaries: list[str]) -> set[str]:
    """Every library ``ldd`` resolves for ``binaries``, plus the dynamic loader."""
    libs: set[str] = set()
    for i in range(0, len(binaries), 200):
        chunk = binaries[i : i + 200]
        proc = subprocess.run(["ldd", *chunk], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m:
                libs.add(m.group(1))
    # dlopen()ed, so not in ldd's output: libgcc_s by glibc for thread exit/cancel, libseccomp by the
    # runner (docker_runner.py) for the program's extra seccomp filter.
    for extra in ("libgcc_s.so.1", "libseccomp.so.2"):
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
            if os.path.exists(os.path.join(d, extra)):
                libs.add(os.path.join(d, extra))
                break
    return libs


def plan_tree(packages: Iterable[str] = DEFAULT_PACKAGES) -> RootTree:
    """What the image will hold for this interpreter and these packages (nothing is written)."""
    tree = RootTree()
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    tree.python = exe
    tree.add_host_path(exe)
    stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["stdlib"]
    for name in sorted(os.listdir(stdlib)):
        if name in _STDLIB_SKIP or name.startswith("config-"):
            continue
        host = os.path.join(stdlib, name)
        image = os.path.join(stdlib, name)
        if os.path.isdir(host) and not os.path.islink(host):
            tree.add_tree(host, image, skip_dirs=_STDLIB_SKIP)
        elif os.path.islink(host):
            tree.links[image] = os.readlink(host)
        else:
            tree.files[image] = host
    site = os.path.join(stdlib, "site-packages")
    tree._add_dirs(site)
    for dist in resolve_distributions(packages):
        tree.packages.append(f"{dist.metadata['Name']}=={dist.version}")
        for root in _dist_roots(dist):
            image = os.path.join(site, os.path.basename(root))
            if os.path.isdir(root):
                tree.add_tree(root, image, skip_dirs=_PACKAGE_SKIP_DIRS, skip_file=_PACKAGE_SKIP_FILE)
            else:
                tree.files[image] = root
    binaries = [exe] + [h for i, h in tree.files.items() if ".so" in os.path.basename(i)]
    for lib in sorted(_shared_libraries(binaries)):
        if not any(lib == h for h in tree.files.values()):
            tree.add_host_path(lib)
    tree.links[PYTHON_LINK] = exe
    tree._add_dirs("/usr/local/bin")
    tree.data["/etc/passwd"] = _ETC_PASSWD
    tree.data["/etc/group"] = _ETC_GROUP
    for d, mode in (
        ("/tmp", 0o1777),
        ("/work", 0o755),
        ("/dev", 0o755),
        ("/proc", 0o555),
        ("/sys", 0o555),
        ("/etc", 0o755),
    ):
        tree.dirs[d] = mode
    return tree


def content_hash(tree: RootTree) -> str:
    """SHA-256 over every path, mode, link target and file byte of the planned tree."""
    h = hashlib.sha256(f"mx-sandbox-image {FORMAT_VERSION}\n".encode())
    for path in sorted(tree.dirs):
        h.update(f"d {path} {tree.dirs[path]:o}\n".encode())
    for path in sorted(tree.links):
        h.update(f"l {path} {tree.links[path]}\n".encode())
    for path in sorted(tree.data):
        h.update(f"b {path} {hashlib.sha256(tree.data[path]).hexdigest()}\n".encode())
    for path in sorted(tree.files):
        host = tree.files[path]
        st = os.stat(host)
        fh_hash = hashlib.sha256()
        with open(host, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                fh_hash.update(chunk)
        h.update(f"f {path} {st.st_mode & 0o7777:o} {fh_hash.hexdigest()}\n".encode())
    return h.hexdigest()


def write_tar(tree: RootTree, out: str) -> int:
    """Write the tree as an uncompressed tar (owner root, host modes); returns its size in bytes."""

    def info(path: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 0 if kind != tarfile.REGTYPE else ti.mtime
        return ti

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.dirs):
            tar.addfile(info(path, tarfile.DIRTYPE, tree.dirs[path]))
        for path in sorted(tree.data):
            blob = tree.data[path]
            tar.addfile(info(path, tarfile.REGTYPE, 0o644, len(blob)), io.BytesIO(blob))
        for path in sorted(tree.files):
            host = tree.files[path]
            st = os.stat(host)
            ti = info(path, tarfile.REGTYPE, stat.S_IMODE(st.st_mode) | 0o444, st.st_size)
            ti.mtime = int(st.st_mtime)  # byte-code caches are checked against source mtimes
            with open(host, "rb") as fh:
                tar.addfile(ti, fh)
        for path in sorted(tree.links):
            if path in tree.files or path in tree.dirs:
                continue
            tar.addfile(info(path, tarfile.SYMTYPE, 0o777, link=tree.links[path]))
    return os.path.getsize(out)


def build_image(
    client: Any = None,
    tag: str | None = None,
    packages: Iterable[str] = DEFAULT_PACKAGES,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or reuse) the sandbox image; returns ``{"image", "tags", "hash", "built", ...}``.

    ``tag`` defaults to :data:`DEFAULT_TAG`; the image is also tagged ``mx-sandbox:<hash12>``.
    Nothing is built when an image with the same content hash exists (unless ``force``).
    """
    import time

    if client is None:
        import docker

        client = docker.from_env()
    t0 = time.monotonic()
    tree = plan_tree(tuple(packages))
    digest = content_hash(tree)
    hash_tag = f"{REPOSITORY}:{digest[:12]}"
    tag = tag or DEFAULT_TAG
    report: dict[str, Any] = {
        "hash": digest,
        "tags": [hash_tag, tag],
        "python": tree.python,
        "packages": tree.packages,
        "files": len(tree.files),
    }
    existing = None if force else _find(client, hash_tag)
    if existing is None:
        with tempfile.TemporaryDirectory(prefix="mx-image-") as tmp:
            tar_path = os.path.join(tmp, "rootfs.tar")
            report["tar_bytes"] = write_tar(tree, tar_path)
            repo, _, name = hash_tag.partition(":")
            changes = [
                "ENV PATH=/usr/local/bin:/usr/bin:/bin",
                "ENV LANG=C.UTF-8",
                "WORKDIR /work",
                f"LABEL {LABEL_PYTHON}={tree.python} {LABEL_HASH}={digest} {LABEL_FORMAT}={FORMAT_VERSION}",
                f'CMD ["{PYTHON_LINK}"]',
            ]
            client.api.import_image(src=tar_path, repository=repo, tag=name, changes=changes)
        existing = _find(client, hash_tag)
        if existing is None:
            raise RuntimeError(f"docker import did not produce {hash_tag}")
        report["built"] = True
    else:
        report["built"] = False
    if tag != hash_tag:
        repo, _, name = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        existing.tag(repo, name or "latest")
    report["image"] = existing.id
    report["pruned"] = _prune_old_hash_tags(client, keep=hash_tag)
    report["seconds"] = round(time.monotonic() - t0, 2)
    return report


def _prune_old_hash_tags(client: Any, keep: str) -> list[str]:
    """Untag earlier content-hash builds (``mx-sandbox:<12 hex>``) so rebuilds do not pile up.

    Names chosen by the user (``--tag``) are left alone; an image still used by a container stays.
    """
    removed = []
    try:
        images = client.images.list(name=REPOSITORY)
    except Exception:  # noqa: BLE001 - pruning is housekeeping only
        return removed
    for img in images:
        for t in img.tags:
            if t != keep and re.fullmatch(rf"{REPOSITORY}:[0-9a-f]{{12}}", t):
                try:
                    client.images.remove(t)
                    removed.append(t)
                except Exception:  # noqa: BLE001
                    continue
    return removed


def _find(client: Any, ref: str) -> Any:
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def main_json(report: dict[str, Any]) -> str:
    """One-line summary for the CLI."""
    return json.dumps(report, sort_keys=True)
