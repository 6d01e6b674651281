"""CPU thread policy for torch generation that does not collapse when other processes compete.

Why: torch's CPU build uses GNU OpenMP, whose worker threads *spin* (busy-wait, ~300k iterations)
after every parallel region so that the next one starts without a futex wake-up. On an idle machine
that is a little faster; with one other busy process on a 2-core machine the spinning thread and the
competing process fight for a core and every small decode matmul waits a scheduler slice: measured
46x slower (8.3 ms vs 0.18 ms for a decode-sized matmul). ``OMP_WAIT_POLICY=PASSIVE`` makes idle
workers sleep at once, which survives contention but costs idle speed (futex wake-ups before every
op). A short bounded spin (``GOMP_SPINCOUNT``) lets a worker catch an op that follows within a
microsecond and otherwise sleeps: on the loaded 2-core development machine (load average ~20), a
decode-sized matmul (16x576 @ 576x1536, 2 threads) took 1.03 ms with 300 spins, 1.57 ms passive,
3.2 ms with 1000, 13.7 ms with 10000 and over 50 ms with OpenMP's default; the idle cost against the
default could not be measured there (no idle machine), see ``benchmarks/test_generation_bench.py``.

OpenMP reads these variables once, when the runtime initialises (first parallel region after torch
is imported), so :func:`configure_cpu_threads` must run before torch is imported: ``mx`` calls it at
entry, the backends call it before their lazy torch import (a no-op once torch is loaded, apart from
a warning in the log). Variables the user already set are never overridden.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

#: Spin iterations before an idle OpenMP worker sleeps (GNU OpenMP's default is 300000 when no wait
#: policy is set); see the module docstring for the measurement behind it.
DEFAULT_SPINCOUNT = "300"

POLICIES = ("bounded-spin", "passive", "off")


def thread_policy_env(policy: str = "bounded-spin") -> dict[str, str]:
    """The environment variables that ``policy`` sets (``"off"``: none, OpenMP's own defaults).

    - ``"bounded-spin"``: ``GOMP_SPINCOUNT`` (short spin, then sleep), the default;
    - ``"passive"``: ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once; best under heavy contention).
    """
    if policy == "bounded-spin":
        return {"GOMP_SPINCOUNT": DEFAULT_SPINCOUNT}
    if policy == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    if policy == "off":
        return {}
    if policy.startswith("spin:") and policy[5:].isdigit():  # an explicit spin count (benchmarks)
        return {"GOMP_SPINCOUNT": policy[5:]}
    raise ValueError(f"unknown thread policy {policy!r}; known: {', '.join(POLICIES)}")


def configure_cpu_threads(policy: str | None = None) -> dict[str, str]:
    """Set the thread policy's variables in ``os.environ`` unless the user set any OpenMP wait variable.

    ``policy`` defaults to ``$MX_THREAD_POLICY`` or ``"bounded-spin"``. Returns what was set. Must run
    before torch is imported to take effect; afterwards it only logs that it came too late.
    """
    policy = policy or os.environ.get("MX_THREAD_POLICY") or "bounded-spin"
    wanted = thread_policy_env(policy)
    if any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}  # the user chose; respect it
    if "torch" in sys.modules and wanted:
        logger.debug("thread policy %r set after torch was imported; OpenMP may ignore it", policy)
    os.environ.update(wanted)
    return wanted
