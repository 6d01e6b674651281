"""Per-phase peak RSS: the figure that says which phase of a step to cut (issue 20's 4 GB budget)."""

from __future__ import annotations

import sys

import pytest

from mx_train.memory_watch import PhaseRSS, current_rss_bytes, max_rss_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def test_each_phase_gets_its_own_peak_and_the_kernel_peak_bounds_them():
    watch = PhaseRSS(interval_s=0.01).start()
    try:
        with watch.phase("small"):
            small = bytearray(1 << 20)
        with watch.phase("big"):
            big = bytearray(300 << 20)  # touched: bytearray zero-fills every page
            big[::4096] = b"\x01" * len(big[::4096])
            del big
        peaks = watch.metrics()
    finally:
        watch.stop()
    assert peaks["memory/peak_rss_gb/big"] - peaks["memory/peak_rss_gb/small"] > 0.25
    assert peaks["memory/peak_rss_gb"] >= peaks["memory/peak_rss_gb/big"] - 1e-3  # ru_maxrss: every moment
    assert current_rss_bytes() > 0 and max_rss_bytes() >= current_rss_bytes()
    del small
