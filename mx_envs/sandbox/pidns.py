"""A PID namespace per run, with a tiny init as its pid 1 (standard library only).

The run's program must not be pid 1 of its namespace: the kernel drops signals with a default
action that pid 1 sends itself or gets from inside its namespace (``SIGXFSZ``, ``SIGXCPU``,
``kill(getpid(), SIGKILL)``), and verdicts come from those signals. So each run's namespace gets a
separate init: a small process forked from an *init factory* (a fork of the pool server taken before
it imports numpy and sympy, so forking it is cheap). The init reaps orphans of the run and exits
as soon as its *lifeline* (a socket whose other end only the run's supervisor holds) closes: at
the end of the run, or when the supervisor dies. When a namespace's pid 1 exits, the kernel
SIGKILLs every process left in it, so nothing of a run can outlive its supervisor.

The supervisor then enters the namespace (``setns`` on the init's ``/proc/PID/ns/pid``) just to
fork the run's child into it: the child is pid 2, the supervisor's own child (it observes its exit
status directly), and it sees only the processes of its run in its own ``/proc``.
"""

from __future__ import annotations

import os
import select
import signal
import socket

from mx_envs.sandbox import _linux


class InitFactory:
    """Forked by the pool server at start-up; hands out one init process per request."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                mine.close()
                _factory_main(theirs)
            except BaseException:  # noqa: BLE001
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = mine


def make_init(factory_sock: socket.socket, lifeline_fd: int) -> int:
    """Ask the factory for a new init holding ``lifeline_fd``; returns its pid (raises OSError)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        socket.send_fds(factory_sock, [b"init"], [lifeline_fd, theirs.fileno()])
        theirs.close()
        raw = mine.recv(64)
    finally:
        mine.close()
    try:
        pid = int(raw)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise OSError(-pid if pid < 0 else 0, f"init factory refused: {raw!r}")
    return pid


def _factory_main(sock: socket.socket) -> None:
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the pool server
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inits are reaped by the kernel
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    own_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 64, 2)
        except InterruptedError:
            continue
        if not msg:
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        lifeline, reply = fds
        try:
            _linux.unshare(_linux.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(reply)
                    _init_main(lifeline, sock.fileno())
                finally:
                    os._exit(0)
            _linux.setns(own_ns, _linux.CLONE_NEWPID)  # next unshare needs our own ns back
            answer = str(pid)
        except OSError as exc:
            answer = str(-(exc.errno or 1))
        try:
            os.write(reply, answer.encode())
        except OSError:
            pass
        os.close(reply)
        os.close(lifeline)


def _init_main(lifeline: int, factory_fd: int) -> None:
    """pid 1 of a run's namespace: reap orphans; exit when the lifeline closes."""
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.close(factory_fd)
    os.closerange(3, lifeline)
    os.closerange(lifeline + 1, 1 << 16)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_a: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            ready, _, _ = select.select([lifeline, wake_r], [], [])
        except InterruptedError:
            continue
        if lifeline in ready:
            os._exit(0)  # the kernel now kills every process of the namespace
        try:
            while os.read(wake_r, 256):
                pass
        except BlockingIOError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
