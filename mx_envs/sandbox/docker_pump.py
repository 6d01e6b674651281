"""Host side of one Docker run's attach socket: feed stdin, demultiplex and cap output, keep time.

The attach stream (``POST /containers/{id}/attach``, no TTY) carries stdin one way and both
output streams the other, each output chunk framed by an 8-byte header (stream id, 3 zero bytes,
big-endian length). :func:`pump` runs one non-blocking select loop over it:

- stdin (the runner's bundle, then the program's stdin) is written as the socket takes it and the
  write side is shut down at the end, which closes the container's stdin (``StdinOnce``);
- output is kept up to the cap and counted beyond it; once a stream goes over, the container is
  killed and the rest is read and dropped, so 1 GB of output never costs more than the cap in host
  memory (the daemon stores nothing either: the containers run with the ``none`` log driver);
- the wall clock starts when the runner's start marker (the first bytes on stderr, written just
  before the program starts) arrives; past the deadline the container is killed.

The caller gets the raw observations (:class:`PumpResult`); the verdict policy is elsewhere.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from mx_envs.sandbox.docker_runner import END, START

TRAILER_MAX = 512  # bytes of stderr kept beyond the cap, so the runner's trailer always fits
DRAIN_S = 10.0  # after a kill, how long to wait for the daemon to close the stream


@dataclass
class PumpResult:
    """What the host itself saw on the attach socket."""

    stdout: bytes = b""
    stderr: bytes = b""  # the program's stderr: start marker and trailer removed
    stdout_bytes: int = 0  # total seen, including what was dropped over the cap
    stderr_bytes: int = 0
    started: float | None = None  # monotonic time the start marker arrived
    ended: float | None = None  # monotonic time the stream closed
    timed_out: bool = False  # the host killed the container at the wall deadline
    startup_timed_out: bool = False  # no start marker within the start-up allowance
    output_exceeded: bool = False  # the host killed the container over the output cap
    trailer: bytes | None = None  # the runner's JSON report, when the nonce matched
    eof: bool = False  # the daemon closed the stream (the container's processes all ended)


class _Demux:
    """Incremental parser of the attach stream's frames; bounded buffers."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.out = bytearray()
        self.err = bytearray()
        self.head = bytearray()
        self.stream = 0
        self.left = 0
        self.out_n = 0
        self.err_n = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.left == 0:
                need = 8 - len(self.head)
                self.head += view[:need]
                view = view[need:]
                if len(self.head) == 8:
                    self.stream = self.head[0]
                    self.left = int.from_bytes(self.head[4:8], "big")
                    self.head.clear()
                continue
            chunk = view[: self.left]
            view = view[self.left :]
            self.left -= len(chunk)
            if self.stream == 1:
                self.out_n += len(chunk)
                room = self.cap + 1 - len(self.out)
                if room > 0:
                    self.out += chunk[:room]
            elif self.stream == 2:
                self.err_n += len(chunk)
                room = self.cap + len(START) + TRAILER_MAX + 1 - len(self.err)
                if room > 0:
                    self.err += chunk[:room]


def pump(
    sock: socket.socket,
    stdin: bytes,
    *,
    cap: int,
    wall_s: float,
    startup_s: float,
    nonce: bytes,
    kill: Callable[[], None],
) -> PumpResult:
    """Drive one run's attach socket to its end (see the module docstring)."""
    res = PumpResult()
    demux = _Demux(cap)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    view = memoryview(stdin)
    sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0))
    writing = bool(view)
    if not writing:
        _shut_wr(sock)
    t0 = time.monotonic()
    deadline = t0 + startup_s
    killed_at: float | None = None

    def do_kill() -> None:
        nonlocal killed_at
        if killed_at is None:
            killed_at = time.monotonic()
            kill()

    try:
        while True:
            now = time.monotonic()
            if res.started is None and len(demux.err) >= len(START):
                if bytes(demux.err[: len(START)]) == START:
                    res.started = now
                    deadline = now + wall_s
                else:  # the runner failed before starting anything: keep its words, stop waiting
                    res.started = -1.0
                    deadline = now + DRAIN_S
            if killed_at is None and now >= deadline:
                if res.started is None:
                    res.startup_timed_out = True
                else:
                    res.timed_out = True
                do_kill()
            if killed_at is None and (demux.out_n > cap or demux.err_n > cap + len(START) + TRAILER_MAX):
                res.output_exceeded = True
                do_kill()
            if killed_at is not None and now - killed_at > DRAIN_S:
                break
            wait = (killed_at + DRAIN_S if killed_at is not None else deadline) - now
            events = sel.select(timeout=max(0.0, min(wait, 1.0)))
            for _key, mask in events:
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 16)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        res.eof = True
                        break
                    if data:
                        demux.feed(data)
                if mask & selectors.EVENT_WRITE and writing:
                    try:
                        view = view[sock.send(view[: 1 << 16]) :]
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as exc:  # the container closed its stdin or is gone
                        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                            raise
                        view = view[len(view) :]
                    if not view:
                        writing = False
                        sel.modify(sock, selectors.EVENT_READ)
                        _shut_wr(sock)
            if res.eof:
                break
    finally:
        sel.close()
    res.ended = time.monotonic()
    err = bytes(demux.err)
    if res.started is not None and res.started > 0:
        err = err[len(START) :]
        i = err.rfind(END + nonce + b" ")
        if i >= 0 and err.endswith(b"\n"):
            res.trailer = err[i + len(END) + len(nonce) + 1 : -1]
            err = err[:i]
            res.stderr_bytes = i  # a trailer at the end means nothing was dropped
        else:
            res.stderr_bytes = demux.err_n - len(START)
    else:
        res.stderr_bytes = demux.err_n
    res.stdout, res.stdout_bytes = bytes(demux.out[:cap]), demux.out_n
    res.stderr = err[:cap]
    if res.started is not None and res.started < 0:
        res.started = None
    return res


def _shut_wr(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
