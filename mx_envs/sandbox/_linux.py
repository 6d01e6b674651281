"""Thin ctypes wrappers for the Linux calls the process sandbox needs and Python 3.11 lacks.

``unshare``, ``mount``, ``mount_setattr`` (read-only recursive remount), ``prctl`` and ``capset``.
Each raises ``OSError`` with the kernel's errno on failure. x86_64 / aarch64 syscall numbers.
"""

from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (unified syscall table)
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def make_tree_readonly(path: str = "/") -> None:
    """Mark every mount at and below ``path`` read-only (this mount namespace only)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    rc = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc == 0:
        return
    # Older kernels (< 5.12): remount each mount point read-only one by one.
    targets = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                targets.append(mp)
    for mp in targets:
        try:
            mount(None, mp, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        except OSError:
            pass
    try:
        os.stat(path)
        mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    except OSError as exc:
        raise OSError(exc.errno, f"read-only remount of {path} failed") from exc


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def drop_all_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets of the calling thread."""
    if _SYS_CAPSET is None:
        raise OSError(0, "capset: unknown syscall number on this architecture")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct, all zero
    _check(_libc.syscall(ctypes.c_long(_SYS_CAPSET), header, data), "capset")


MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux >= 6.1
_HUGE = 2 << 20
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def collapse_anonymous_memory() -> int:
    """Back the calling process's private anonymous memory with transparent huge pages.

    Every 2 MiB-aligned stretch of a writable anonymous mapping (heap, arenas) is marked
    ``MADV_HUGEPAGE`` and collapsed now with ``MADV_COLLAPSE``. A process forked afterwards copies
    one page-table entry per 2 MiB instead of 512, and tears them down as fast when it exits, which
    is most of what a warm pool's fork and exit cost. Best effort: returns the bytes collapsed
    (0 where the kernel lacks the calls or THP is disabled).
    """
    done = 0
    with open("/proc/self/maps") as fh:
        regions = [line.split() for line in fh]
    for parts in regions:
        path = parts[5] if len(parts) > 5 else ""
        if not parts[1].startswith("rw") or parts[1][3] != "p" or (path and path != "[heap]"):
            continue
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        lo = (lo + _HUGE - 1) & ~(_HUGE - 1)
        hi &= ~(_HUGE - 1)
        if hi <= lo:
            continue
        if _libc.madvise(lo, hi - lo, MADV_HUGEPAGE) != 0:
            continue
        # Per huge page: one failure (e.g. a page pinned or not collapsible) must not lose the rest.
        for addr in range(lo, hi, _HUGE):
            if _libc.madvise(addr, _HUGE, MADV_COLLAPSE) == 0:
                done += _HUGE
    return done
