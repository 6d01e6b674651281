"""The warm pool server of the process sandbox: preloads, plans, and keeps supervisors.

Process tree (all standard library; started by :class:`mx_envs.sandbox.process.ProcessSandbox`)::

    host ──unix SEQPACKET──▶ server (imports numpy, sympy, ...; gc.freeze)
                              ├── init factory (forked before the imports: small, forks each
                              │   run's PID-namespace init)
                              ├── supervisor 1 (own empty netns) ── prepared child (pid 2 of its
                              ├── supervisor 2 ...                   PID ns, in its run cgroup)

The server decides once what every run needs (cgroup layout, seccomp program, interpreter masks,
the allow-list world), then forks ``pool_size`` supervisors (:mod:`mx_envs.sandbox.supervisor`) and
keeps exactly one idle: supervisors report busy/idle with their pid, and a dead supervisor's busy
mark is dropped with it, so the count never drifts.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

# ``channel``: the in-run half of ``Sandbox.start``. Runs live in the allow-list world, which holds
# no source of mx_envs, so the sandbox's own in-run API must be in memory when a run is forked.
from mx_envs.sandbox import _linux, cgroups, child, file_view, interpreter_paths, pidns
from mx_envs.sandbox import channel as _channel  # noqa: F401
from mx_envs.sandbox.supervisor import PoolContext, Supervisor

# ----------------------------------------------------------------------------- server


def _plan_isolation(info: dict[str, Any]) -> None:
    """Fill :data:`child.PLAN` (inherited by every child) and describe it in ``info``."""
    needed = interpreter_paths.needed_dirs()
    if os.geteuid() == 0:
        masks = interpreter_paths.plan_masks(needed)  # for a per-run uid that owns nothing
    else:
        masks = interpreter_paths.plan_masks(needed, os.getuid(), [os.getgid(), *os.getgroups()])
    plan = child.PoolPlan(needed_dirs=needed, masks=masks)
    try:
        plan.view = file_view.plan()
        info["allowed_packages"] = plan.view.packages
    except Exception as exc:  # noqa: BLE001 - runs in the world then fail with the reason
        plan.view_error = f"{type(exc).__name__}: {exc}"
        info["world_error"] = plan.view_error
    if plan.view is not None and os.geteuid() == 0:
        try:
            plan.world_ns_fd = file_view.make_template(plan.view)
            info["world_template"] = "a mount namespace holding the world; each child joins a private copy"
        except OSError as exc:  # each child then builds the world itself
            info["world_template"] = f"none, the world is built in each child ({exc})"
    try:
        from mx_envs.sandbox import seccomp_policy

        plan.seccomp_bpf, unknown = seccomp_policy.build_bpf()
        plan.seccomp = _linux.SeccompProgram(plan.seccomp_bpf)
        info["seccomp"] = f"libseccomp filter, {len(seccomp_policy.DENIED)} calls denied + clone namespace flags"
        if unknown:
            info["seccomp_unknown_calls"] = unknown
    except Exception as exc:  # noqa: BLE001 - e.g. pyseccomp or libseccomp missing
        plan.seccomp_error = f"{type(exc).__name__}: {exc}"
        info["seccomp"] = f"none ({plan.seccomp_error})"
    child.PLAN = plan


def main(config_json: str) -> None:
    """Entry point of the pool server process (see :class:`~mx_envs.sandbox.process.ProcessSandbox`)."""
    cfg = json.loads(config_json)
    request_sock = socket.socket(fileno=int(cfg["fd"]))
    # Cgroups first (on v2 this moves us into a leaf), then the init factory, while we are small.
    layout = cgroups.detect(str(os.getpid())) if cfg.get("cgroups", True) else cgroups.Layout("none", notes=["disabled"])
    factory: pidns.InitFactory | None = None
    pid_ns_note = "own PID namespace per run (init: factory-forked pid 1, program pid 2)"
    if os.geteuid() == 0 and cfg.get("pid_ns", True):
        try:
            factory = pidns.InitFactory()
        except OSError as exc:
            pid_ns_note = f"none: {exc}"
    else:
        pid_ns_note = "none (needs root)" if os.geteuid() != 0 else "none (disabled)"
    preloaded, failed = [], {}
    for name in cfg.get("preload", []):
        try:
            importlib.import_module(name)
            preloaded.append(name)
        except Exception as exc:  # noqa: BLE001 - reported to the host, not fatal
            failed[name] = f"{type(exc).__name__}: {exc}"
    for snippet in cfg.get("warmup", []):
        try:
            exec(compile(snippet, "<warmup>", "exec"), {"__name__": "__warmup__"})
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs speed
            failed["<warmup>"] = f"{type(exc).__name__}: {exc}"
    # Keep the imported heap out of the collector so forks do not copy pages the GC would touch.
    gc.collect()
    gc.freeze()
    huge = _linux.collapse_anonymous_memory() if cfg.get("huge_pages", True) else 0
    try:
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    info: dict[str, Any] = {"preloaded": preloaded, "huge_page_mb": huge >> 20, **layout.describe()}
    info["pid_namespace"] = pid_ns_note
    _plan_isolation(info)
    # The path finders cached the host's directory listings (site-packages, the checkout): drop
    # them before any run is forked, so that an import in the allow-list world lists what the world
    # holds (once here: freeing them in every child would copy pages, 3 ms of CPU per run).
    sys.path_importer_cache.clear()
    ctx = PoolContext(info=info, layout=layout, factory_sock=factory.sock if factory is not None else None)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    stopping = False

    def on_term(*_a: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    supervisors: set[int] = set()
    base_size = max(1, int(cfg.get("pool_size", 2)))
    max_size = max(base_size, int(cfg.get("max_pool_size", 256)))
    busy_r, busy_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    busy: set[int] = set()  # pids of supervisors running a request
    pending = b""

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(wake_r)
                os.close(wake_w)
                os.close(busy_r)
                os.set_blocking(busy_w, True)
                Supervisor(request_sock, ctx, busy_w).serve()
            except SystemExit:
                pass
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        supervisors.add(pid)

    for _ in range(base_size):
        spawn()
    sys.stdout.write(json.dumps({"ok": True, "pid": os.getpid(), "preloaded": preloaded, "failed": failed}) + "\n")
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "lifeline")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    sel.register(busy_r, selectors.EVENT_READ, "busy")
    while not stopping:
        for key, _ in sel.select(1.0):
            if key.data == "lifeline":
                if not os.read(sys.stdin.fileno(), 4096):
                    stopping = True
            elif key.data == "busy":
                try:
                    while marks := os.read(busy_r, 4095):
                        pending += marks
                except BlockingIOError:
                    pass
                while len(pending) >= 5:  # b"+" or b"-", then the supervisor's pid
                    mark, who = pending[:1], int.from_bytes(pending[1:5], "little")
                    pending = pending[5:]
                    if mark == b"+" and who in supervisors:
                        busy.add(who)
                    else:
                        busy.discard(who)
                # Elastic pool: keep one idle supervisor while below the cap.
                while len(busy) >= len(supervisors) and len(supervisors) < max_size and not stopping:
                    spawn()
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in supervisors:
                supervisors.discard(pid)
                busy.discard(pid)  # a supervisor that died busy never sends its idle mark
                if not stopping and (len(supervisors) < base_size or len(busy) >= len(supervisors)):
                    spawn()
    for pid in supervisors:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 3.0
    while supervisors and time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            sel.select(max(0.0, end - time.monotonic()))  # woken by SIGCHLD through the wakeup pipe
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        supervisors.discard(pid)
    for pid in supervisors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cgroups.remove_tree(layout)
    os._exit(0)
