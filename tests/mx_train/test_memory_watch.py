"""Per-phase peak RSS: the figure that says which phase of a step to cut (issue 20's 4 GB budget)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from mx_train.memory_watch import PhaseRSS, current_rss_bytes, max_rss_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def test_each_phase_gets_its_own_peak_and_the_kernel_peak_bounds_them():
    watch = PhaseRSS(interval_s=0.01).start()
    try:
        with watch.phase("small"):
            small = bytearray(1 << 20)
        with watch.phase("big"):
            big = bytearray(300 << 20)
            big[::4096] = b"\x01" * len(big[::4096])  # touch every page
            # alive at the phase's closing edge: the edge sample sees it whatever the thread did
            # (allocating and touching hold the GIL, so under load the sampler may never run inside)
        del big
        with watch.phase("held"):
            held = bytearray(300 << 20)
            held[::4096] = b"\x01" * len(held[::4096])
            deadline = time.monotonic() + 10.0  # the sampler thread, not an edge, must see this one
            while watch.metrics().get("memory/peak_rss_gb/held", 0.0) < current_rss_bytes() / 1e9 - 0.01:
                assert time.monotonic() < deadline, "the sampler thread never ran during the phase"
                time.sleep(0.01)
            del held  # freed before the closing edge
        peaks = watch.metrics()
    finally:
        watch.stop()
    assert peaks["memory/peak_rss_gb/big"] - peaks["memory/peak_rss_gb/small"] > 0.25
    assert peaks["memory/peak_rss_gb/held"] - peaks["memory/peak_rss_gb/small"] > 0.25
    assert peaks["memory/peak_rss_gb"] >= peaks["memory/peak_rss_gb/big"] - 1e-3  # ru_maxrss: every moment
    assert current_rss_bytes() > 0 and max_rss_bytes() >= current_rss_bytes()
    del small


def test_release_returns_freed_heap_pages_to_the_kernel():
    """Many small blocks freed stay in glibc's arena (resident) until malloc_trim hands them back."""
    from mx_train.memory_watch import release_free_heap

    blocks = [bytearray(4000) for _ in range(40_000)]  # ~160 MB of sub-mmap-threshold allocations
    keep = bytearray(10)  # noqa: F841 - one live block near the top of the heap
    before = current_rss_bytes()
    del blocks
    if not release_free_heap():
        pytest.skip("no glibc malloc_trim in this C library")
    assert before - current_rss_bytes() > 100e6


def test_malloc_arenas_are_capped_unless_the_user_set_them():
    """The CLI caps glibc's arenas (a subprocess: mallopt changes the process for good)."""
    import subprocess

    code = "from mx_train.memory_watch import limit_malloc_arenas as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    users = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                           capture_output=True, text=True, check=True)
    import platform

    glibc = platform.libc_ver()[0] == "glibc"
    assert capped.stdout.strip() == str(glibc)  # mallopt accepted it wherever glibc is the C library
    assert users.stdout.strip() == "False"
