"""The seccomp filter of a sandboxed run: kernel interfaces a Python program never needs, closed.

Built once per pool server with ``pyseccomp`` (over the system's libseccomp), exported as a BPF
program, and installed in each run's child right before the program starts
(:func:`mx_envs.sandbox._linux.load_seccomp_bpf`: one ``prctl``, microseconds). Default action:
allow; each listed call fails with ``EPERM`` (``clone3`` with ``ENOSYS``), so a program sees an
ordinary error instead of being killed. Syscalls of a foreign architecture (e.g. ``int 0x80`` on
x86_64) kill the calling thread (libseccomp's bad-architecture action).

``clone3`` passes its flags in memory, which seccomp cannot inspect: it answers ``ENOSYS`` and
glibc falls back to ``clone``, whose flags are checked (no new namespaces).
"""

from __future__ import annotations

import errno
import os
import tempfile

# name -> why it is closed (README.md renders this table)
DENIED: dict[str, str] = {
    "io_uring_setup": "io_uring: a second syscall path with a long CVE history",
    "io_uring_enter": "io_uring",
    "io_uring_register": "io_uring",
    "userfaultfd": "stalls kernel copies at will (race-widening primitive)",
    "keyctl": "kernel keyrings persist per uid beyond the run",
    "add_key": "kernel keyrings",
    "request_key": "kernel keyrings",
    "bpf": "eBPF programs and maps",
    "perf_event_open": "performance counters (side channels, kernel attack surface)",
    "ptrace": "inspecting or steering other processes",
    "process_vm_readv": "reading another process's memory",
    "process_vm_writev": "writing another process's memory",
    "process_madvise": "acting on another process's memory",
    "pidfd_getfd": "stealing another process's descriptors",
    "kcmp": "comparing kernel objects of other processes",
    "unshare": "new namespaces (user namespaces in particular)",
    "setns": "joining other namespaces",
    "mount": "mount table changes",
    "umount2": "mount table changes",
    "pivot_root": "mount table changes",
    "chroot": "changing the root",
    "open_tree": "new mount API",
    "move_mount": "new mount API",
    "fsopen": "new mount API",
    "fsconfig": "new mount API",
    "fsmount": "new mount API",
    "fspick": "new mount API",
    "mount_setattr": "new mount API",
    "open_by_handle_at": "opening files by handle, around path permissions",
    "name_to_handle_at": "file handles",
    "kexec_load": "replacing the kernel",
    "kexec_file_load": "replacing the kernel",
    "init_module": "loading kernel modules",
    "finit_module": "loading kernel modules",
    "delete_module": "unloading kernel modules",
    "reboot": "rebooting",
    "swapon": "swap configuration",
    "swapoff": "swap configuration",
    "acct": "process accounting",
    "quotactl": "disk quotas",
    "syslog": "kernel log",
    "iopl": "raw I/O port access",
    "ioperm": "raw I/O port access",
    "settimeofday": "the host clock",
    "clock_settime": "the host clock",
    "clock_adjtime": "the host clock",
    "adjtimex": "the host clock",
    "sethostname": "host names",
    "setdomainname": "host names",
    "fanotify_init": "file system wide monitoring",
    "lookup_dcookie": "kernel profiling",
    "uselib": "legacy loader interface",
    "vhangup": "terminal hangup",
    "move_pages": "NUMA placement of other processes",
    "migrate_pages": "NUMA placement of other processes",
    "memfd_secret": "memory hidden from the kernel's own accounting views",
}
# clone(2) flags that create namespaces: clone with any of them fails with EPERM.
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
ENOSYS_CALLS = ("clone3",)


def build_bpf() -> tuple[bytes, list[str]]:
    """The filter as a BPF program, and the listed names this libseccomp/arch does not know.

    Raises ``ImportError`` / ``RuntimeError`` when pyseccomp or libseccomp is missing (the caller
    reports "no seccomp" in the run's isolation block).
    """
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    unknown: list[str] = []

    def rule(action: int, name: str, *args: object) -> None:
        try:
            flt.add_rule(action, name, *args)
        except (OSError, ValueError, RuntimeError):
            unknown.append(name)

    for name in DENIED:
        rule(sc.ERRNO(errno.EPERM), name)
    for name in ENOSYS_CALLS:
        rule(sc.ERRNO(errno.ENOSYS), name)
    for flag in CLONE_NS_FLAGS.values():
        # clone(flags, ...): flags is argument 0 on x86_64 and aarch64
        rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.flush()
        fh.seek(0)
        program = os.read(fh.fileno(), 1 << 20)
    return program, sorted(set(unknown))
