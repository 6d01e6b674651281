"""A supervisor of the warm pool: prepares one child at a time and watches its run.

Every supervisor blocks in ``recvmsg`` on the pool's shared request socket; the kernel hands each
request (a JSON header plus descriptors) to one idle supervisor, which already holds a *prepared
child* (:class:`Prepared`): forked into a fresh PID namespace (whose init is its lifeline) and a
fresh cgroup, namespaces and mounts set up (:mod:`mx_envs.sandbox.child`). The run loop is a
selector with one handler per event: the host's control frames, the child's exit (pidfd), the
wall-clock deadline, the periodic CPU check, and the child's set-up report. What the supervisor
reports is what it observed: wait status, its own kill reason, the cgroup's CPU time, peak memory
and OOM kills; nothing the program can write reaches it.
"""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from mx_envs.sandbox import _linux, cgroups, child, pidns
from mx_envs.sandbox.api import FILE_VIEW_ALLOWLIST, canonical_file_view
from mx_envs.sandbox.uids import UidAllocator
from mx_envs.sandbox.wire import FrameReader, encode_frame, parse_bounded

CPU_CHECK_MIN_S = 0.02
PF_EXITING = 0x4  # task flag: in do_exit, never returns to user space
EXIT_CONFIRM_S = 0.02  # how long an exit notice may take to show in /proc before it is ignored
EXIT_NOTICES = 3  # notices examined per run (a program could send many)


def kernel_exit_code(pid: int) -> int | None:
    """The kernel's exit status of ``pid`` once it is inside ``do_exit`` (``PF_EXITING``), else None.

    ``/proc/PID/stat`` field 52 is the status as ``waitpid`` will report it; the kernel writes it
    before tearing the address space down, which is what makes an early, observed report possible.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        if not int(fields[6]) & PF_EXITING:
            return None
        return int(fields[49])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class PoolContext:
    """What the server hands every supervisor (inherited by fork)."""

    info: dict[str, Any]
    layout: cgroups.Layout
    factory_sock: socket.socket | None  # the init factory (None: no PID namespaces)
    ncpu: int = field(default_factory=lambda: max(1, len(os.sched_getaffinity(0))))


@dataclass
class Prepared:
    """A forked, isolated child waiting for its request."""

    pid: int
    sock: socket.socket  # status socket: the child's set-up report, closed before user code
    iso: dict[str, Any]
    network: bool
    view: str  # the file view the child prepared (api.FILE_VIEW_*)
    cgroup: cgroups.RunCgroup | None
    lifeline: socket.socket | None  # closing it ends the PID namespace's init: all of the run dies
    init_pid: int | None
    init_pidfd: int = -1
    ns_fds: list[int] = field(default_factory=list)

    def hold_namespaces(self) -> None:
        """Keep the child's mount and IPC namespaces referenced until :meth:`release`.

        Tearing a mount namespace down waits for RCU grace periods (milliseconds, far more on a
        loaded machine); the last process of the run would pay that in its exit, before the
        supervisor sees it. Holding a reference moves the teardown after the result is sent.
        """
        for ns in ("mnt", "ipc"):
            try:
                self.ns_fds.append(os.open(f"/proc/{self.pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass

    def end(self) -> None:
        """Kill everything of the run, on every path (idempotent)."""
        if self.lifeline is not None:
            self.lifeline.close()
            self.lifeline = None
        if self.cgroup is not None:
            self.cgroup.kill()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def try_release(self) -> bool:
        """After the child was reaped: free what is free now; True once nothing of the run is left.

        The namespace's init and the cgroup's killed processes take a moment to go; a supervisor
        keeps such remains aside and retries later instead of waiting (it is idle sooner).
        """
        self.end()
        for fd in self.ns_fds:
            os.close(fd)
        self.ns_fds = []
        if self.init_pidfd >= 0:
            if not select.select([self.init_pidfd], [], [], 0)[0]:
                return False
            os.close(self.init_pidfd)
            self.init_pidfd = -1
        if self.cgroup is not None:
            if not self.cgroup.try_destroy():
                return False
            self.cgroup = None
        if self.sock.fileno() >= 0:
            self.sock.close()
        return True

    def release(self) -> None:
        """After the child was reaped: wait for the namespace's init, free the cgroup."""
        self.end()
        if self.init_pidfd >= 0:
            _wait_fd(self.init_pidfd, 2.0)
            os.close(self.init_pidfd)
            self.init_pidfd = -1
        for fd in self.ns_fds:
            os.close(fd)
        self.ns_fds = []
        if self.cgroup is not None:
            self.cgroup.destroy()
        try:
            self.sock.close()
        except OSError:
            pass

    def discard(self) -> None:
        self.end()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.release()


def _own_children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _hunt_strays(keep: set[int], timeout: float = 3.0) -> int:
    """Fallback without PID namespace and cgroup: kill and reap every child of this subreaper but
    ``keep`` (orphans of the run are re-parented here, ``PR_SET_CHILD_SUBREAPER``)."""
    hunted = 0
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        strays = [p for p in _own_children() if p not in keep]
        if not strays:
            break
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hunted += 1
            except (ProcessLookupError, ChildProcessError):
                pass
    return hunted


def _wait_fd(fd: int, timeout: float) -> None:
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        sel.select(timeout)
    finally:
        sel.close()


class Supervisor:
    def __init__(self, request_sock: socket.socket, ctx: PoolContext, busy_fd: int = -1) -> None:
        self.request_sock = request_sock
        self.ctx = ctx
        self.busy_fd = busy_fd  # write end of the server's busy/idle pipe (-1: none)
        self.current: Prepared | None = None
        self.stopping = False
        self.uids = UidAllocator() if os.geteuid() == 0 else None
        self.seq = 0
        # The view the next child is prepared with: the last request's (the world unless a caller
        # asked for the host view explicitly), so a pool used one way never re-prepares.
        self.view = FILE_VIEW_ALLOWLIST
        self.last_limits: tuple[int, int] | None = None  # (memory_mb, max_processes) last requested
        self.graves: list[Prepared] = []  # finished runs whose init/cgroup are still going away
        self.idle_marked = True
        self.own_pidns = -1
        self.host_netns = -1
        self.shared_netns = False

    # ------------------------------------------------------------------ lifecycle

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.current is not None:
            self.current.end()
        else:
            raise SystemExit(0)

    def serve(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
        self._enter_namespaces()
        pre = self._await(self._spawn(False))
        while not self.stopping:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.request_sock, 1 << 16, 16)
            except InterruptedError:
                continue
            if not msg:
                break  # host closed the request socket
            self._notify(b"+")
            self.idle_marked = False
            try:
                header = json.loads(msg)
                limits = header["limits"]
                network = bool(limits.get("network"))
                view = canonical_file_view(limits.get("file_view"))
                self.view = view
                if network != pre.network or view != pre.view:
                    pre.discard()
                    pre = self._await(self._spawn(network))
                nxt = self._run(header, msg, fds, pre)
            except Exception:  # noqa: BLE001 - never let one bad request kill the supervisor
                traceback.print_exc()
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                pre.discard()
                nxt = None
            if not self.stopping:
                pre = self._await(nxt if nxt is not None else self._spawn(False))
                self._bury()
            elif nxt is not None:
                pre = nxt
            if not self.idle_marked:
                self._notify(b"-")
        pre.discard()
        self._bury(block=True)

    def _enter_namespaces(self) -> None:
        """One empty network (and UTS) namespace for this supervisor's runs, and our PID ns fd.

        Runs of one supervisor follow each other and leave nothing behind in an empty network
        namespace they cannot configure (no capability), so it is created once here instead of per
        run (a network namespace costs about a millisecond to make and more to tear down).
        """
        try:
            self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.own_pidns = -1
        if os.geteuid() != 0:
            return
        try:
            self.host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _linux.unshare(_linux.CLONE_NEWNET | _linux.CLONE_NEWUTS)
            self.shared_netns = True
        except OSError:
            self.shared_netns = False

    def _notify(self, mark: bytes) -> None:
        # One record per transition (atomic on a pipe): the server counts busy supervisors by pid,
        # adds one when none is idle, and forgets a dead supervisor's mark, so the count stays exact.
        if self.busy_fd >= 0:
            try:
                os.write(self.busy_fd, mark + os.getpid().to_bytes(4, "little"))
            except OSError:
                pass

    # ------------------------------------------------------------------ preparing a child

    def _spawn(self, network: bool) -> Prepared:
        """Fork the next child into a fresh cgroup and PID namespace; it prepares itself meanwhile."""
        self.seq += 1
        uid = self.uids.next() if self.uids is not None else None
        cg: cgroups.RunCgroup | None = None
        errors: list[str] = []
        if self.ctx.layout.mode != "none":
            try:
                cg = cgroups.RunCgroup(self.ctx.layout, f"run-{os.getpid()}-{self.seq}")
                cg.open_procs()
            except OSError as exc:
                errors.append(f"run cgroup: {exc}")
                cg = None
        lifeline: socket.socket | None = None
        init_pid: int | None = None
        init_pidfd = -1
        entered = False
        if self.ctx.factory_sock is not None and self.own_pidns >= 0:
            theirs = None
            try:
                lifeline, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                init_pid = pidns.make_init(self.ctx.factory_sock, theirs.fileno())
                init_pidfd = os.pidfd_open(init_pid)
                ns = os.open(f"/proc/{init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _linux.setns(ns, _linux.CLONE_NEWPID)  # our next fork lands in the run's namespace
                finally:
                    os.close(ns)
                entered = True
            except OSError as exc:
                errors.append(f"PID namespace: {exc}")
                if lifeline is not None:
                    lifeline.close()
                lifeline, init_pid = None, None
                if init_pidfd >= 0:
                    os.close(init_pidfd)
                    init_pidfd = -1
            finally:
                if theirs is not None:
                    theirs.close()
        spec = child.ChildSpec(
            uid=uid,
            network=network,
            pid_ns=entered,
            host_netns_fd=self.host_netns if network else -1,
            cgroup_fds=cg.procs_fds if cg is not None else [],
            view=self.view,
            shared_netns=self.shared_netns,
        )
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                parent_sock.close()
                iso = child.prepare(spec, child_sock)
                # "Ready" only once fully prepared: the supervisor accepts no request before that.
                child_sock.send(json.dumps(iso).encode())
                msg, fds, _flags, _addr = socket.recv_fds(child_sock, 1 << 16, 8)
                if not msg:
                    os._exit(0)
                status_fd = child_sock.detach()
                child.run(json.loads(msg), fds, iso, status_fd)
            except BaseException:  # noqa: BLE001
                try:
                    traceback.print_exc()
                finally:
                    os._exit(child.SETUP_FAILED)
        if entered:
            _linux.setns(self.own_pidns, _linux.CLONE_NEWPID)
        child_sock.close()
        if cg is not None:
            cg.close_procs()
        return Prepared(pid, parent_sock, {"errors": errors}, network, self.view, cg, lifeline, init_pid, init_pidfd)

    def _await(self, pre: Prepared) -> Prepared:
        """Wait for the child's "ready" report (requests are taken only with a prepared child)."""
        raw = pre.sock.recv(1 << 16)
        iso = parse_bounded(raw) if raw else None
        if not isinstance(iso, dict):
            iso = {"errors": ["prepared child died during set-up"]}
        errors = pre.iso.get("errors", [])
        iso.setdefault("errors", [])
        iso["errors"] = list(iso["errors"]) + errors
        pre.iso = iso
        pre.hold_namespaces()
        if pre.cgroup is not None and self.last_limits is not None:
            # Most requests repeat the previous one's budget: set it now, off the critical path.
            try:
                pre.cgroup.set_limits(*self.last_limits)
            except (OSError, ValueError):
                pass
        return pre

    # ------------------------------------------------------------------ one run

    def _run(self, header: dict[str, Any], msg: bytes, fds: list[int], pre: Prepared) -> Prepared | None:
        """Run the request on ``pre``; returns the next child, forked once this run has started."""
        run = _Run(self, header, fds, pre)
        self.current = pre
        nxt = None
        try:
            run.start(msg)
            run.loop()
            result = run.report()
        finally:
            self.current = None
        try:
            run.ctl.sendall(encode_frame(result))
        except OSError:
            pass
        run.ctl.close()
        # Idle as far as the pool is concerned: the next request waits at most for the child
        # being prepared now, which is sooner than a new supervisor could be forked and prepared.
        # (Busy means "running a request", so runs suspended on the host grow the pool, as meant.)
        self._notify(b"-")
        self.idle_marked = True
        if run.early is not None:
            os.waitpid(pre.pid, 0)  # the confirmed, SIGKILLed child: reaped off the critical path
        if not self.stopping:
            # Fork the next child before cleaning up: it prepares itself (namespaces, mounts, cgroup
            # attach: milliseconds, mostly waiting on the kernel) while this run's remains go.
            nxt = self._spawn(False)
        if pre.lifeline is None and pre.cgroup is None:
            _hunt_strays({nxt.pid} if nxt is not None else set())
        self.graves.append(pre)
        self._bury()
        return nxt

    def _bury(self, block: bool = False) -> None:
        """Free the remains of finished runs that are gone (all of them, waiting, with ``block``)."""
        deadline = time.monotonic() + (3.0 if block else 0.0)
        while True:
            self.graves = [g for g in self.graves if not g.try_release()]
            if not self.graves or time.monotonic() >= deadline:
                return
            time.sleep(0.005)


class _Run:
    """One run's event loop in the supervisor: one handler per event."""

    def __init__(self, sup: Supervisor, header: dict[str, Any], fds: list[int], pre: Prepared) -> None:
        self.sup = sup
        self.pre = pre
        self.ctl = socket.socket(fileno=fds[0])
        self.child_fds = fds[1:]
        self.limits = header["limits"]
        self.wall = float(self.limits["wall_s"])
        self.cpu_limit = float(self.limits.get("cpu_s") or self.wall)
        self.reader = FrameReader()
        self.reason: str | None = None
        self.paused_at: float | None = None
        self.paused_total = 0.0
        self.exited = False
        self.status = 0
        self.rusage: Any = None
        self.setup_error: str | None = None
        self.went = False  # the child reported "set-up done, program starts"
        self.early: int | None = None  # exit status confirmed in /proc before the child was reaped
        self.notices = 0
        self.setup_ms: dict[str, float] = {}  # request-time set-up cost, supervisor and child
        self.cpu0 = 0.0
        self.cgroup_ok = False
        self.errors: list[str] = []

    def start(self, msg: bytes) -> None:
        pre = self.pre
        if pre.cgroup is not None:
            try:
                t = time.perf_counter()
                want = (int(self.limits["memory_mb"]), int(self.limits["max_processes"]))
                pre.cgroup.set_limits(*want)
                self.sup.last_limits = want
                self.setup_ms["cgroup_limits"] = round((time.perf_counter() - t) * 1e3, 3)
                self.cpu0 = pre.cgroup.cpu_seconds()
                self.cgroup_ok = True
            except (OSError, ValueError) as exc:
                self.errors.append(f"cgroup limits: {exc}")
        header = json.loads(msg)
        header["cgroup"] = self.cgroup_ok
        self.ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.wall
        self.next_cpu = self.t0 + max(CPU_CHECK_MIN_S, self.cpu_limit / self.sup.ctx.ncpu)
        socket.send_fds(pre.sock, [json.dumps(header).encode()], self.child_fds)
        for fd in self.child_fds:
            os.close(fd)
        try:
            self.ctl.sendall(encode_frame({"op": "started"}))
        except OSError:
            pass

    def kill(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.pre.end()

    # -- event handlers

    def on_exit(self) -> None:
        _, self.status, self.rusage = os.wait4(self.pre.pid, 0)
        self.exited = True

    def on_status(self) -> None:
        try:
            raw = self.pre.sock.recv(4096)
        except OSError:
            raw = b""
        if not raw:
            self.sel.unregister(self.pre.sock)
            return
        msg = parse_bounded(raw)  # the program can write here too: bounded, and only a hint
        if not isinstance(msg, dict):
            return
        if not self.went:
            if msg.get("go"):
                self.went = True
                ms = msg.get("ms")
                if isinstance(ms, dict):  # written before any user code ran
                    self.setup_ms.update({str(k)[:32]: float(v) for k, v in list(ms.items())[:4]})
            elif "setup_error" in msg:
                self.setup_error = str(msg["setup_error"])[:500]
            return
        code = msg.get("exit")
        if isinstance(code, int) and 0 <= code <= 255 and self.reason is None and self.notices < EXIT_NOTICES:
            self.notices += 1
            self.confirm_exit(code)

    def confirm_exit(self, code: int) -> None:
        """An exit notice: believe it only once the kernel shows the same status for an exiting child."""
        end = time.monotonic() + EXIT_CONFIRM_S
        while True:
            status = kernel_exit_code(self.pre.pid)
            if status is not None and status == code << 8:
                self.early = status
                self.exited = True
                self.pre.end()  # no process of the run runs user code from here on
                return
            if time.monotonic() >= end:
                return
            time.sleep(0.0002)

    def on_ctl(self) -> None:
        try:
            data = self.ctl.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(self.ctl)
            self.kill("host_gone")
            return
        try:
            frames = self.reader.feed(data)
        except ValueError:
            frames = []
            self.kill("host_gone")
        for frame in frames:
            op = frame.get("op")
            if op == "kill":
                self.kill(str(frame.get("reason") or "host")[:32])
            elif op == "pause" and self.paused_at is None:
                self.paused_at = time.monotonic()
            elif op == "resume" and self.paused_at is not None:
                dt = time.monotonic() - self.paused_at
                self.paused_total += dt
                self.deadline += dt
                self.paused_at = None

    def on_deadline(self, now: float) -> None:
        if self.paused_at is None and now >= self.deadline and self.reason is None:
            self.kill("wall")

    def on_cpu_check(self, now: float) -> None:
        if not self.cgroup_ok or self.reason is not None:
            return
        used = self.cpu_used()
        if used >= self.cpu_limit:
            self.kill("cpu")
            return
        # The run can use at most ncpu CPU-seconds per second: no check is needed before then.
        self.next_cpu = now + max(CPU_CHECK_MIN_S, (self.cpu_limit - used) / self.sup.ctx.ncpu)

    def cpu_used(self) -> float:
        assert self.pre.cgroup is not None
        return max(0.0, self.pre.cgroup.cpu_seconds() - self.cpu0)

    # -- the loop

    def loop(self) -> None:
        pidfd = os.pidfd_open(self.pre.pid)
        self.sel = sel = selectors.DefaultSelector()
        sel.register(self.ctl, selectors.EVENT_READ, self.on_ctl)
        sel.register(pidfd, selectors.EVENT_READ, self.on_exit)
        sel.register(self.pre.sock, selectors.EVENT_READ, self.on_status)
        try:
            while not self.exited:
                now = time.monotonic()
                self.on_deadline(now)
                if now >= self.next_cpu:
                    self.on_cpu_check(now)
                timeout = None
                if self.reason is None:
                    timers = [self.next_cpu] if self.cgroup_ok else []
                    if self.paused_at is None:
                        timers.append(self.deadline)
                    if timers:
                        timeout = max(0.0, min(timers) - now)
                for key, _ in sel.select(timeout):
                    if self.exited:
                        break
                    key.data()
        finally:
            sel.close()
            os.close(pidfd)

    def report(self) -> dict[str, Any]:
        t1 = time.monotonic()
        pre = self.pre
        if self.paused_at is not None:
            self.paused_total += t1 - self.paused_at
        pre.end()  # the program's own exit does not end its children: the namespace's init does
        while not self.went:  # a set-up report may still be queued
            try:
                raw = pre.sock.recv(4096, socket.MSG_DONTWAIT)
            except OSError:
                break
            if not raw:
                break
            msg = parse_bounded(raw)
            if isinstance(msg, dict) and msg.get("go"):
                self.went = True
                ms = msg.get("ms")
                if isinstance(ms, dict):
                    self.setup_ms.update({str(k)[:32]: float(v) for k, v in list(ms.items())[:4]})
            elif isinstance(msg, dict) and "setup_error" in msg:
                self.setup_error = str(msg["setup_error"])[:500]
        st = self.status if self.early is None else self.early
        exit_code = os.WEXITSTATUS(st) if os.WIFEXITED(st) else None
        sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
        oom = 0
        mem_hit = False
        if self.cgroup_ok and pre.cgroup is not None:
            cpu_s = self.cpu_used()
            peak_mb = pre.cgroup.peak_bytes() / (1 << 20)
            oom = pre.cgroup.oom_kills() - pre.cgroup.oom0
            mem_hit = pre.cgroup.hit_limit()
        else:
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (ru1.ru_utime - self.ru0.ru_utime) + (ru1.ru_stime - self.ru0.ru_stime)
            peak_mb = (self.rusage.ru_maxrss / 1024.0) if self.rusage is not None else 0.0
        setup_error = self.setup_error
        if setup_error is None and not self.went and self.reason is None:
            setup_error = f"the child died during set-up (status {st})"
        iso = {**pre.iso, **self.sup.ctx.info}
        iso["errors"] = list(iso.get("errors", [])) + self.errors
        iso["request_setup_ms"] = dict(self.setup_ms)
        iso["exit_seen"] = "exit notice confirmed in /proc" if self.early is not None else "reaped"
        iso["memory_limit"] = "cgroup (resident, whole run)" if self.cgroup_ok else "RLIMIT_AS per process (fallback)"
        iso["pids_limit"] = "cgroup pids.max" if self.cgroup_ok else "RLIMIT_NPROC per uid (fallback)"
        return {
            "op": "result",
            "exit_code": exit_code,
            "signal": sig,
            "reason": self.reason,
            "setup_error": setup_error if not self.went else None,
            "oom_kills": max(0, oom),
            "memory_limit_hit": mem_hit,
            "wall_s": t1 - self.t0 - self.paused_total,
            "paused_s": self.paused_total,
            "cpu_s": cpu_s,
            "peak_memory_mb": peak_mb,
            "isolation": iso,
        }
