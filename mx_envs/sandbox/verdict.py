"""Verdict policy: how a run ended, from what the sandbox itself observed (standard library only).

Inputs are the supervisor's report (:mod:`mx_envs.sandbox.supervisor`): the wait status (exit code
or signal), the supervisor's own kill reason (``wall``, ``cpu``, ``output``, ``host``...), the run
cgroup's OOM-kill count, whether its memory reached the limit, and its CPU time; plus the host's
own output cap. Nothing the program wrote (stdout markers, messages on any descriptor) is an input:
a program can end itself with any exit status or signal, which is then what it gets, and nothing
else. A set-up failure reported before the program ran is the sandbox's (``sandbox_error``).
"""

from __future__ import annotations

import signal
from typing import Any

from mx_envs.sandbox.api import Limits, Verdict

_HOST_REASONS = ("host", "host_timeout", "host_gone")


def classify(r: dict[str, Any], limits: Limits, output_over: bool) -> tuple[Verdict, str]:
    """Verdict and reason for one supervisor report."""
    sig = r.get("signal")
    reason = r.get("reason")
    cpu_limit = limits.effective_cpu_s()
    if r.get("setup_error"):
        return Verdict.SANDBOX_ERROR, f"sandbox set-up failed: {str(r['setup_error'])[:300]}"
    if output_over:
        return Verdict.OUTPUT_EXCEEDED, f"output over the cap of {limits.output_bytes} bytes per stream"
    if reason == "wall":
        return Verdict.TIMEOUT, f"wall-clock limit of {limits.wall_s:g} s reached"
    if reason == "cpu" or sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and reason is None and float(r.get("cpu_s") or 0) >= cpu_limit - 0.05
    ):
        return Verdict.TIMEOUT, f"CPU-time limit of {cpu_limit:g} s reached"
    if int(r.get("oom_kills") or 0) > 0:
        return Verdict.MEMORY_EXCEEDED, f"memory limit of {limits.memory_mb} MB reached (OOM kill in the run's cgroup)"
    if r.get("memory_limit_hit") and (sig is not None or r.get("exit_code") not in (0, None)):
        return Verdict.MEMORY_EXCEEDED, f"memory limit of {limits.memory_mb} MB reached (allocation refused)"
    if sig == signal.SIGXFSZ:
        return Verdict.OUTPUT_EXCEEDED, f"file size limit of {limits.file_size_mb} MB reached"
    if reason in _HOST_REASONS:
        return Verdict.KILLED, f"killed by the host ({reason})"
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return Verdict.KILLED, f"terminated by signal {name}"
    code = r.get("exit_code")
    if code == 0:
        return Verdict.OK, ""
    return Verdict.RUNTIME_ERROR, f"exit status {code}"
